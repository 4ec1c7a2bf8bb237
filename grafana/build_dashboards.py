#!/usr/bin/env python3
"""Writes the tickflow Grafana dashboards (grafana/dashboards/*.json) from this one description.

    build_dashboards.py           rewrite the JSON files
    build_dashboards.py --check   exit 1 when a JSON file differs from what this script writes

Dashboards as code: panels are declared below with small helpers, so the three dashboards stay
consistent (datasource uids, template variables, units) and reviewable. scripts/validate-deploy
runs --check, parses every PromQL expression with promtool, checks every metric name against
grafana/metrics.txt and every CQL query against shared/cql/*.cql, and decodes every dashboard
strictly with Grafana's generated types (deploy/validate/grafana_schema.sh): a field the
schema of a panel's type does not know, or a required one missing, fails there.

Conventions:
- Datasources by fixed uid: tickflow-prometheus and tickflow-cassandra (provisioning/).
- Template variables instrument (single: CQL reads one partition), provider and exchange
  (multi, All). `job` is the service name (PodMonitor jobLabel).
- Latencies are Prometheus histograms (`_bucket` series), so a panel's p99 is
  histogram_quantile() over the buckets' rate summed across pods.
- CQL reads one partition: candles_1m (instrument, venue, day), fair_prices (instrument, day),
  fair_price_latest (shard = 0), anomalies (day). `day` is the UTC day of the time range's end:
  the dashboards' timezone is UTC.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "dashboards")

PROM = {"type": "prometheus", "uid": "tickflow-prometheus"}
CASS = {"type": "hadesarchitect-cassandra-datasource", "uid": "tickflow-cassandra"}
DAY = "'${__to:date:YYYY-MM-DD}'"
SRC = 'provider=~"$provider", exchange=~"$exchange"'


class Board:
    """Lays panels out on Grafana's 24-column grid, row by row."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title):
        self._newline()
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def add(self, panel, w=12, h=8):
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)

    def _newline(self):
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def finish(self):
        for number, panel in enumerate(self.panels, start=1):
            panel["id"] = number
        return self.panels


def prom(expr, legend="", ref="A", instant=False):
    return {"datasource": PROM, "refId": ref, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant}


def cql(query, ref="A", alias=""):
    target = {"datasource": CASS, "refId": ref, "rawQuery": True, "target": " ".join(query.split())}
    if alias:
        target["alias"] = alias
    return target


def timeseries(title, targets, unit="short", description="", bars=False, min_zero=False,
               thresholds=None):
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
              "fillOpacity": 60 if bars else 10, "showPoints": "never", "spanNulls": False}
    defaults = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    if thresholds:
        defaults["thresholds"] = thresholds
        custom["thresholdsStyle"] = {"mode": "line"}
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": targets[0]["datasource"], "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title, targets, unit="short", description="", decimals=None, thresholds=None):
    defaults = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if thresholds:
        defaults["thresholds"] = thresholds
        defaults["color"] = {"mode": "thresholds"}
    return {"type": "stat", "title": title, "description": description,
            "datasource": targets[0]["datasource"], "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto",
                        "justifyMode": "auto", "orientation": "auto", "wideLayout": True,
                        "showPercentChange": False, "percentChangeColorMode": "standard"}}


def table(title, targets, description="", unit="short", transformations=None):
    return {"type": "table", "title": title, "description": description,
            "datasource": targets[0]["datasource"], "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"frameIndex": 0, "showHeader": True, "cellHeight": "sm"},
            "transformations": transformations or []}


def candlestick(title, targets, description=""):
    """Grafana's candlestick panel: OHLC candles over volume bars, its fields mapped by name to
    the query's columns (open, high, low, close, volume), so no guessing from field order."""
    return {"type": "candlestick", "title": title, "description": description,
            "datasource": targets[0]["datasource"], "targets": targets,
            "fieldConfig": {"defaults": {"unit": "none", "custom": {"lineWidth": 1, "fillOpacity": 80}},
                            "overrides": [{"matcher": {"id": "byName", "options": "volume"},
                                           "properties": [{"id": "unit", "value": "short"}]}]},
            "options": {"mode": "candles+volume", "candleStyle": "candles", "colorStrategy": "open-close",
                        "fields": {"open": "open", "high": "high", "low": "low", "close": "close",
                                   "volume": "volume"},
                        "colors": {"up": "green", "down": "red", "flat": "gray"},
                        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom",
                                   "calcs": []},
                        "tooltip": {"mode": "multi", "sort": "none"}, "includeAllFields": False}}


def steps(*pairs):
    """Thresholds: steps(("green", None), ("red", 5)) -> absolute steps."""
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in pairs]}


def custom_var(name, label, values):
    """A fixed list of values (no datasource), the first selected."""
    return {"name": name, "label": label, "type": "custom", "query": ",".join(values),
            "multi": False, "includeAll": False, "hide": 0,
            "current": {"text": values[0], "value": values[0], "selected": True},
            "options": [{"text": v, "value": v, "selected": i == 0} for i, v in enumerate(values)]}


def variables(include_job=False, extra=()):
    def query_var(name, query, multi, include_all, label):
        return {"name": name, "label": label, "type": "query", "datasource": PROM,
                "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
                "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all,
                "allValue": ".*" if include_all else None, "options": [], "hide": 0}

    out = [
        query_var("instrument", "label_values(tickflow_normalizer_trades_total, instrument)",
                  False, False, "Instrument"),
        query_var("provider",
                  'label_values(tickflow_normalizer_trades_total{instrument="$instrument"}, provider)',
                  True, True, "Provider"),
        query_var("exchange",
                  'label_values(tickflow_normalizer_trades_total{instrument="$instrument", provider=~"$provider"}, exchange)',
                  True, True, "Exchange"),
    ]
    if include_job:
        out.append(query_var("namespace", "label_values(tickflow_build_info, namespace)",
                             False, True, "Namespace"))
    return out + list(extra)


def dashboard(uid, title, description, board, include_job=False, refresh="10s", time_from="now-1h",
              extra_variables=()):
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["tickflow"], "timezone": "utc", "editable": False, "graphTooltip": 1,
        "refresh": refresh, "schemaVersion": 39, "version": 1,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables(include_job, extra_variables)},
        "annotations": {"list": [{
            "name": "Alerts", "datasource": PROM, "enable": True, "iconColor": "red",
            "expr": 'ALERTS{alertname=~"Tickflow.*", alertstate="firing"}',
            "titleFormat": "{{ alertname }}", "textFormat": "{{ summary }}",
        }]},
        "links": [{"title": "tickflow", "type": "dashboards", "tags": ["tickflow"], "asDropdown": True,
                   "icon": "external link", "tooltip": "", "targetBlank": False,
                   "includeVars": True, "keepTime": True}],
        "panels": board.finish(),
    }


# --- Trading ----------------------------------------------------------------------------------

def trading():
    b = Board()
    b.row("Price — $instrument")
    b.add(timeseries(
        "Fair price and the sources around it",
        [prom('max by (instrument) (tickflow_fairprice_price{instrument="$instrument"})', "fair price"),
         prom('max by (provider, exchange) (tickflow_fairprice_source_price_ratio{instrument="$instrument", ' + SRC + '})'
              ' * on () group_left () max(tickflow_fairprice_price{instrument="$instrument"})',
              "{{provider}}/{{exchange}}", "B")],
        unit="none", description="The fair price (fair-price's gauge) and each source's last price, "
        "as its ratio to the fair price times the fair price."), w=16, h=10)
    b.add(table(
        "Latest fair price of every instrument",
        [cql("SELECT instrument, CAST(price AS double) AS price, computed_at, method, sources_used, "
             "sources_excluded, dispersion, confidence, stale FROM market.fair_price_latest WHERE shard = 0")],
        description="Cassandra fair_price_latest: one partition holds every instrument."), w=8, h=10)
    b.add(timeseries(
        "Price, 1-minute close (consolidated)",
        [cql("SELECT instrument, CAST(close AS double) AS close, window_start FROM market.candles_1m "
             f"WHERE instrument = '$instrument' AND venue = '*' AND day = {DAY} "
             "AND window_start >= $__timeFrom AND window_start <= $__timeTo", alias="close")],
        unit="none", description="Cassandra candles_1m, venue '*' (all exchanges), UTC day of the range's end."),
        w=12, h=9)
    b.add(timeseries(
        "Volume per minute (consolidated)",
        [cql("SELECT instrument, CAST(volume AS double) AS volume, window_start FROM market.candles_1m "
             f"WHERE instrument = '$instrument' AND venue = '*' AND day = {DAY} "
             "AND window_start >= $__timeFrom AND window_start <= $__timeTo", alias="volume")],
        bars=True, min_zero=True, description="Cassandra candles_1m: base-currency volume per minute."),
        w=12, h=9)
    b.row("Past minute — $instrument")
    b.add(stat("Trades, past minute",
               [prom('sum(increase(tickflow_normalizer_trades_total{instrument="$instrument", ' + SRC + '}[1m]))')],
               decimals=0, description="Normalized trades of the selected providers and exchanges over the last 60 s."),
          w=4, h=5)
    b.add(stat("Trades per second",
               [prom('sum(rate(tickflow_normalizer_trades_total{instrument="$instrument", ' + SRC + '}[1m]))')],
               unit="reqps", decimals=1), w=4, h=5)
    b.add(stat("Average price, current minute",
               [cql("SELECT instrument, CAST(avg_price AS double) AS avg_price, window_start FROM market.candles_1m "
                    f"WHERE instrument = '$instrument' AND venue = '*' AND day = {DAY} LIMIT 1")],
               unit="none", description="avg_price of the newest consolidated candle (in progress, updated by early firings)."),
          w=4, h=5)
    b.add(stat("Trade count, current minute",
               [cql("SELECT instrument, count, window_start FROM market.candles_1m "
                    f"WHERE instrument = '$instrument' AND venue = '*' AND day = {DAY} LIMIT 1")],
               decimals=0), w=4, h=5)
    b.add(stat("Active sources",
               [prom('max(tickflow_fairprice_active_sources{instrument="$instrument"})')],
               decimals=0, thresholds=steps(("red", None), ("orange", 2), ("green", 3))), w=4, h=5)
    b.add(stat("Confidence",
               [prom('max(tickflow_fairprice_confidence_ratio{instrument="$instrument"})')],
               unit="percentunit", thresholds=steps(("red", None), ("orange", 0.5), ("green", 0.8))),
          w=4, h=5)
    b.row("Candles and history — $instrument")
    # instrument first: the plugin makes one frame per value of the first column. Ascending, as
    # a time axis wants it (the table clusters newest first).
    b.add(candlestick(
        "1-minute candles (consolidated)",
        [cql("SELECT instrument, window_start, CAST(open AS double) AS open, CAST(high AS double) AS high, "
             "CAST(low AS double) AS low, CAST(close AS double) AS close, CAST(volume AS double) AS volume "
             f"FROM market.candles_1m WHERE instrument = '$instrument' AND venue = '*' AND day = {DAY} "
             "AND window_start >= $__timeFrom AND window_start <= $__timeTo ORDER BY window_start ASC")],
        description="Cassandra candles_1m, venue '*' (all exchanges): open, high, low, close and base-currency "
        "volume per minute, UTC day of the range's end. The newest candle is the minute in progress."),
        w=24, h=12)
    b.add(table(
        "Past 1-minute candles (consolidated)",
        [cql("SELECT window_start, CAST(open AS double) AS open, CAST(high AS double) AS high, "
             "CAST(low AS double) AS low, CAST(close AS double) AS close, CAST(volume AS double) AS volume, "
             "count, CAST(vwap AS double) AS vwap, CAST(avg_price AS double) AS avg_price, is_final, revision "
             f"FROM market.candles_1m WHERE instrument = '$instrument' AND venue = '*' AND day = {DAY} LIMIT 60")],
        description="Newest first; is_final = false for the minute in progress."), w=14, h=12)
    b.add(timeseries(
        "Trades per second by source",
        [prom('sum by (provider, exchange) (rate(tickflow_normalizer_trades_total{instrument="$instrument", ' + SRC + '}[$__rate_interval]))',
              "{{provider}}/{{exchange}}")],
        unit="reqps", min_zero=True), w=10, h=12)
    b.add(timeseries(
        "Fair price history (published)",
        [cql("SELECT instrument, CAST(price AS double) AS price, computed_at FROM market.fair_prices "
             f"WHERE instrument = '$instrument' AND day = {DAY} "
             "AND computed_at_us >= ${__from}000 AND computed_at_us <= ${__to}000", alias="fair price")],
        unit="none", description="Cassandra fair_prices: every published fair price (changes and heartbeats)."),
        w=24, h=9)
    b.add(table(
        "Roll-up candles ($rollup, consolidated)",
        [cql("SELECT window_start, CAST(open AS double) AS open, CAST(high AS double) AS high, "
             "CAST(low AS double) AS low, CAST(close AS double) AS close, CAST(volume AS double) AS volume, "
             "count, CAST(vwap AS double) AS vwap, is_final, revision "
             "FROM market.candles_rollup WHERE instrument = '$instrument' AND venue = '*' "
             f"AND interval = '$rollup' AND day = {DAY} LIMIT 48")],
        description="Cassandra candles_rollup: the trade-aggregator's roll-ups of the 1-minute candles "
        "(aggregator.rollups), newest first, UTC day of the range's end."), w=24, h=10)
    return dashboard("tickflow-trading", "tickflow — Trading",
                     "Prices, volumes and candles per instrument; the fair price with the providers' prices around it.",
                     b, extra_variables=[custom_var("rollup", "Roll-up", ["5m", "15m", "1h"])])


# --- Data quality -----------------------------------------------------------------------------

def data_quality():
    b = Board()
    sel = 'instrument=~"$instrument", ' + SRC
    b.row("Sources — $instrument")
    b.add(timeseries("Last trade age by source",
                     [prom(f"max by (provider, exchange, instrument) (tickflow_fairprice_source_last_trade_age_seconds{{{sel}}})",
                           "{{provider}}/{{exchange}} {{instrument}}")],
                     unit="s", min_zero=True, thresholds=steps(("green", None), ("red", 10)),
                     description="Event time since each source's last trade, as fair-price sees it."))
    b.add(timeseries("Update rate by source",
                     [prom(f"max by (provider, exchange, instrument) (tickflow_fairprice_source_update_rate_per_second{{{sel}}})",
                           "{{provider}}/{{exchange}} {{instrument}}")],
                     unit="reqps", min_zero=True))
    b.add(timeseries("Price ratio to the fair price",
                     [prom(f"max by (provider, exchange, instrument) (tickflow_fairprice_source_price_ratio{{{sel}}})",
                           "{{provider}}/{{exchange}} {{instrument}}")],
                     unit="none", thresholds=steps(("red", None), ("green", 0.99), ("red", 1.01)),
                     description="1 = on the fair price. Sources beyond the outlier band are excluded."))
    b.add(timeseries("Active sources per instrument",
                     [prom('min by (instrument) (tickflow_fairprice_active_sources{instrument=~"$instrument"})',
                           "{{instrument}}")],
                     unit="short", min_zero=True, thresholds=steps(("red", None), ("green", 2))))
    b.row("Anomalies and gaps")
    b.add(table("Active anomalies",
                [prom(f"tickflow_fairprice_anomaly_active{{{sel}}} == 1", instant=True)],
                description="NO_DATA, PRICE_DIVERGENCE and RATE_DROP currently raised (\"*\" = a whole provider or exchange).",
                transformations=[{"id": "labelsToFields", "options": {}},
                                 {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}]),
          w=12, h=8)
    b.add(timeseries("Anomalies raised (per 5 minutes)",
                     [prom(f"sum by (kind) (increase(tickflow_fairprice_anomalies_total{{{sel}}}[5m]))", "{{kind}}")],
                     bars=True, min_zero=True), w=12, h=8)
    b.add(timeseries("Gaps: sources silent for more than 10 s",
                     [prom(f"count by (instrument) (tickflow_fairprice_source_last_trade_age_seconds{{{sel}}} > 10)",
                           "{{instrument}}"),
                      prom('max by (provider) (tickflow_gateway_last_message_age_seconds{provider=~"$provider"}) > 10',
                           "gateway: {{provider}} silent (s)", "B")],
                     min_zero=True), w=12, h=8)
    b.add(timeseries("Sources excluded from the fair price, by reason",
                     [prom(f"sum by (reason, provider, exchange) (rate(tickflow_fairprice_sources_excluded_total{{{sel}}}[$__rate_interval]))",
                           "{{reason}} {{provider}}/{{exchange}}")],
                     unit="reqps", min_zero=True), w=12, h=8)
    b.add(table("Anomaly log (today, UTC)",
                [cql("SELECT detected_at, kind, provider, exchange, instrument, observed, threshold, started_at, detail "
                     f"FROM market.anomalies WHERE day = {DAY} "
                     "AND detected_at_us >= ${__from}000 AND detected_at_us <= ${__to}000 LIMIT 500")],
                description="Cassandra anomalies: one partition per UTC day, newest first."), w=24, h=9)
    b.row("Missing trades: holes in the providers' trade numbering")
    b.add(timeseries("Gaps found and filled (per 5 minutes)",
                     [prom(f'sum by (provider, status) (increase(tickflow_normalizer_gaps_total{{{sel}}}[5m]))',
                           "{{provider}} {{status}}")],
                     bars=True, min_zero=True,
                     description="OPEN: a gap found (trades printed and not received); FILLED: all its trades arrived later; "
                                 "DROPPED: no longer tracked. The records are on md.gaps."), w=8)
    b.add(timeseries("Trades missing and recovered (per 5 minutes)",
                     [prom(f'sum by (provider) (increase(tickflow_normalizer_gap_trades_missing_total{{{sel}}}[5m]))',
                           "missing {{provider}}"),
                      prom(f'sum by (provider) (increase(tickflow_normalizer_gap_trades_recovered_total{{{sel}}}[5m]))',
                           "recovered {{provider}}", "B")],
                     min_zero=True), w=8)
    b.add(timeseries("Open gaps and the trades they miss",
                     [prom('sum by (provider) (tickflow_normalizer_gaps_open{provider=~"$provider"})', "gaps {{provider}}"),
                      prom('sum by (provider) (tickflow_normalizer_gap_trades_open{provider=~"$provider"})',
                           "trades {{provider}}", "B")],
                     min_zero=True, thresholds=steps(("green", None), ("red", 1))), w=8)
    b.row("Fair price health")
    b.add(timeseries("Dispersion of the used sources",
                     [prom('max by (instrument) (tickflow_fairprice_dispersion_ratio{instrument=~"$instrument"})', "{{instrument}}")],
                     unit="percentunit", min_zero=True), w=8)
    b.add(timeseries("Confidence",
                     [prom('max by (instrument) (tickflow_fairprice_confidence_ratio{instrument=~"$instrument"})', "{{instrument}}")],
                     unit="percentunit", min_zero=True), w=8)
    b.add(timeseries("Stale fair prices",
                     [prom('max by (instrument) (tickflow_fairprice_stale{instrument=~"$instrument"})', "{{instrument}}")],
                     min_zero=True), w=8)
    b.row("Input quality (normalizer)")
    b.add(timeseries("Dead letters by reason",
                     [prom('sum by (provider, reason) (rate(tickflow_normalizer_dead_letters_total{provider=~"$provider"}[$__rate_interval]))',
                           "{{provider}}: {{reason}}")],
                     unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Duplicates dropped",
                     [prom(f'sum by (provider, exchange) (rate(tickflow_normalizer_duplicates_total{{{SRC}}}[$__rate_interval]))',
                           "{{provider}}/{{exchange}}")],
                     unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Control frames skipped",
                     [prom('sum by (provider, kind) (rate(tickflow_normalizer_skipped_frames_total{provider=~"$provider"}[$__rate_interval]))',
                           "{{provider}}: {{kind}}")],
                     unit="reqps", min_zero=True), w=8)
    return dashboard("tickflow-data-quality", "tickflow — Data quality",
                     "Per provider, exchange and instrument: when data stops, lags or diverges.", b)


# --- Operations -------------------------------------------------------------------------------

def operations():
    b = Board()
    ns = 'namespace=~"$namespace"'
    b.row("Throughput")
    b.add(timeseries("Gateway frames received",
                     [prom(f'sum by (provider) (rate(tickflow_gateway_messages_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "{{provider}}")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Normalizer records in / trades out",
                     [prom(f'sum by (provider) (rate(tickflow_normalizer_records_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "in {{provider}}"),
                      prom(f'sum by (provider) (rate(tickflow_normalizer_trades_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "out {{provider}}", "B")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Aggregator trades in / candles out",
                     [prom(f'sum(rate(tickflow_aggregator_trades_total{{{ns}}}[$__rate_interval]))', "trades"),
                      prom(f'sum by (kind) (rate(tickflow_aggregator_candles_emitted_total{{{ns}}}[$__rate_interval]))',
                           "candles {{kind}}", "B")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("fair-price trades in / prices published",
                     [prom(f'sum(rate(tickflow_fairprice_trades_total{{{ns}}}[$__rate_interval]))', "trades"),
                      prom(f'sum by (trigger) (rate(tickflow_fairprice_published_total{{{ns}}}[$__rate_interval]))',
                           "published ({{trigger}})", "B")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Kafka messages in per topic",
                     [prom(f'sum by (topic) (rate(kafka_server_brokertopicmetrics_messagesinpersec_total{{topic=~"md\\\\..*", {ns}}}[$__rate_interval]))',
                           "{{topic}}")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Gateway queue depth",
                     [prom(f'max by (pod) (tickflow_gateway_queue_depth{{{ns}}})', "{{pod}}")], min_zero=True), w=8)
    b.row("Latency per hop (p50 / p99)")
    b.add(timeseries("Gateway receive → Kafka ack",
                     [prom(f'histogram_quantile(0.99, sum by (le, provider) (rate(tickflow_gateway_receive_to_ack_seconds_bucket{{provider=~"$provider", {ns}}}[$__rate_interval])))', "p99 {{provider}}"),
                      prom(f'histogram_quantile(0.5, sum by (le, provider) (rate(tickflow_gateway_receive_to_ack_seconds_bucket{{provider=~"$provider", {ns}}}[$__rate_interval])))', "p50 {{provider}}", "B")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Ingest → normalized",
                     [prom(f'histogram_quantile(0.99, sum by (le, provider) (rate(tickflow_normalizer_ingest_to_normalized_seconds_bucket{{provider=~"$provider", {ns}}}[$__rate_interval])))', "p99 {{provider}}"),
                      prom(f'histogram_quantile(0.5, sum by (le, provider) (rate(tickflow_normalizer_ingest_to_normalized_seconds_bucket{{provider=~"$provider", {ns}}}[$__rate_interval])))', "p50 {{provider}}", "B")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Event time → normalized",
                     [prom(f'histogram_quantile(0.99, sum by (le, provider) (rate(tickflow_normalizer_event_to_normalized_seconds_bucket{{provider=~"$provider", {ns}}}[$__rate_interval])))', "p99 {{provider}}")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Trade → fair price on Kafka",
                     [prom(f'histogram_quantile(0.99, sum by (le, stage) (rate(tickflow_fairprice_latency_seconds_bucket{{{ns}}}[$__rate_interval])))', "p99 from {{stage}} time"),
                      prom(f'histogram_quantile(0.5, sum by (le, stage) (rate(tickflow_fairprice_latency_seconds_bucket{{{ns}}}[$__rate_interval])))', "p50 from {{stage}} time", "B")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Normalizer transaction duration",
                     [prom(f'histogram_quantile(0.99, sum by (le) (rate(tickflow_normalizer_transaction_duration_seconds_bucket{{{ns}}}[$__rate_interval])))', "p99"),
                      prom(f'histogram_quantile(0.5, sum by (le) (rate(tickflow_normalizer_transaction_duration_seconds_bucket{{{ns}}}[$__rate_interval])))', "p50", "B")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Aggregator watermark lag",
                     [prom(f'max by (partition) (tickflow_aggregator_watermark_lag_seconds{{{ns}}})', "partition {{partition}}")],
                     unit="s", min_zero=True), w=8)
    b.row("Consumer lag")
    b.add(timeseries("Normalizer lag (own metric)",
                     [prom(f'sum by (topic) (tickflow_normalizer_consumer_lag_messages{{{ns}}})', "{{topic}}")],
                     min_zero=True), w=8)
    b.add(timeseries("fair-price lag (own metric)",
                     [prom(f'sum(tickflow_fairprice_consumer_lag_messages{{{ns}}})', "md.trades")],
                     min_zero=True), w=8)
    b.add(timeseries("Consumer groups (Kafka Exporter)",
                     [prom(f'sum by (consumergroup, topic) (kafka_consumergroup_lag{{topic=~"md\\\\..*", {ns}}})',
                           "{{consumergroup}} {{topic}}")], min_zero=True), w=8)
    b.row("Errors")
    b.add(timeseries("Dead letters by reason",
                     [prom(f'sum by (reason) (rate(tickflow_normalizer_dead_letters_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "{{reason}}")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Gateway: malformed, dropped, Kafka errors",
                     [prom(f'sum by (provider, reason) (rate(tickflow_gateway_malformed_frames_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "malformed {{provider}} {{reason}}"),
                      prom(f'sum by (provider) (rate(tickflow_gateway_dropped_frames_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "dropped {{provider}}", "B"),
                      prom(f'sum by (provider, error_type) (rate(tickflow_gateway_kafka_errors_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "kafka {{provider}} {{error_type}}", "C")], unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Service input and sink errors",
                     [prom(f'sum by (reason) (rate(tickflow_aggregator_input_errors_total{{{ns}}}[$__rate_interval]))', "aggregator input {{reason}}"),
                      prom(f'sum by (sink, error_type) (rate(tickflow_aggregator_sink_errors_total{{{ns}}}[$__rate_interval]))', "aggregator {{sink}} {{error_type}}", "B"),
                      prom(f'sum by (reason) (rate(tickflow_fairprice_input_errors_total{{{ns}}}[$__rate_interval]))', "fair-price input {{reason}}", "C"),
                      prom(f'sum by (sink, error_type) (rate(tickflow_fairprice_sink_errors_total{{{ns}}}[$__rate_interval]))', "fair-price {{sink}} {{error_type}}", "D"),
                      prom(f'sum by (reason) (rate(tickflow_aggregator_trades_rejected_total{{{ns}}}[$__rate_interval]))', "aggregator rejected {{reason}}", "E"),
                      prom(f'sum by (exchange) (rate(tickflow_aggregator_late_trades_dropped_total{{{ns}}}[$__rate_interval]))', "too late {{exchange}}", "F")],
                     unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Normalizer transactions by outcome",
                     [prom(f'sum by (outcome) (rate(tickflow_normalizer_transactions_total{{{ns}}}[$__rate_interval]))', "{{outcome}}"),
                      prom(f'sum by (kind) (increase(tickflow_normalizer_partition_handovers_total{{{ns}}}[$__rate_interval]))', "partitions {{kind}}", "B")],
                     unit="reqps", min_zero=True), w=8)
    b.add(timeseries("Dependencies up",
                     [prom(f'min by (job, dependency) (tickflow_dependency_up{{{ns}}})', "{{job}} → {{dependency}}"),
                      prom(f'sum by (job, dependency) (increase(tickflow_dependency_check_failures_total{{{ns}}}[$__rate_interval]))',
                           "{{job}} → {{dependency}} failed checks", "B")], min_zero=True), w=8)
    b.add(timeseries("Gateway reconnects and connection state",
                     [prom(f'sum by (provider, reason) (increase(tickflow_gateway_reconnects_total{{provider=~"$provider", {ns}}}[$__rate_interval]))',
                           "reconnects {{provider}} {{reason}}"),
                      prom(f'min by (provider, connection) (tickflow_gateway_connection_state{{provider=~"$provider", {ns}}})',
                           "state {{provider}} {{connection}}", "B"),
                      prom(f'sum by (provider) (tickflow_gateway_active_subscriptions{{provider=~"$provider", {ns}}})',
                           "subscriptions {{provider}}", "C")], min_zero=True), w=8)
    b.row("Cassandra and checkpoints")
    b.add(timeseries("Cassandra write latency (p99)",
                     [prom(f'histogram_quantile(0.99, sum by (le, sink) (rate(tickflow_aggregator_sink_write_duration_seconds_bucket{{{ns}}}[$__rate_interval])))', "aggregator {{sink}}"),
                      prom(f'histogram_quantile(0.99, sum by (le, sink) (rate(tickflow_fairprice_sink_write_duration_seconds_bucket{{{ns}}}[$__rate_interval])))', "fair-price {{sink}}", "B")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Checkpoint duration",
                     [prom(f'histogram_quantile(0.99, sum by (le) (rate(tickflow_aggregator_checkpoint_duration_seconds_bucket{{{ns}}}[$__rate_interval])))', "p99"),
                      prom(f'histogram_quantile(0.5, sum by (le) (rate(tickflow_aggregator_checkpoint_duration_seconds_bucket{{{ns}}}[$__rate_interval])))', "p50", "B")],
                     unit="s", min_zero=True), w=8)
    b.add(timeseries("Checkpoint size and open windows",
                     [prom(f'max(tickflow_aggregator_checkpoint_size_bytes{{{ns}}})', "checkpoint size (bytes)"),
                      prom(f'sum(tickflow_aggregator_open_windows{{{ns}}})', "open windows", "B")],
                     min_zero=True), w=8)
    b.row("Resources")
    b.add(timeseries("CPU by pod",
                     [prom(f'sum by (pod) (rate(container_cpu_usage_seconds_total{{container!="", {ns}}}[$__rate_interval]))', "{{pod}}")],
                     unit="cores", min_zero=True, description="cAdvisor through kube-prometheus-stack."), w=8)
    b.add(timeseries("Memory (working set) by pod",
                     [prom(f'sum by (pod) (container_memory_working_set_bytes{{container!="", {ns}}})', "{{pod}}")],
                     unit="bytes", min_zero=True), w=8)
    b.add(timeseries("Restarts and memory state",
                     [prom(f'changes(tickflow_process_start_time_seconds{{{ns}}}[1h])', "restarts/h {{job}} {{pod}}"),
                      prom(f'sum(tickflow_normalizer_dedup_entries{{{ns}}})', "normalizer dedup entries", "B"),
                      prom(f'max(tickflow_normalizer_instruments{{{ns}}})', "instruments known", "C")],
                     min_zero=True), w=8)
    b.add(table("Running versions",
                [prom(f'tickflow_build_info{{{ns}}}', instant=True)],
                transformations=[{"id": "labelsToFields", "options": {}},
                                 {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}]),
          w=12, h=6)
    b.add(timeseries("Scrape targets up",
                     [prom(f'up{{job=~"ingest-gateway|normalizer|trade-aggregator|fair-price", {ns}}}', "{{job}} {{pod}}")],
                     min_zero=True), w=12, h=6)
    return dashboard("tickflow-operations", "tickflow — Operations",
                     "Throughput, latency per hop, lag, errors, Cassandra and checkpoints, resources.",
                     b, include_job=True)


def render_all():
    return {
        "trading.json": trading(),
        "data-quality.json": data_quality(),
        "operations.json": operations(),
    }


def main(argv):
    stale = []
    for name, board in render_all().items():
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        path = os.path.join(OUT, name)
        if "--check" in argv:
            try:
                with open(path, encoding="utf-8") as handle:
                    if handle.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        else:
            os.makedirs(OUT, exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            print(f"wrote grafana/dashboards/{name}")
    if stale:
        print("out of date with grafana/build_dashboards.py: " + ", ".join(stale)
              + " (run grafana/build_dashboards.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
