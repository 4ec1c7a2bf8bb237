"""1-minute candles per (instrument, exchange) as a Flink SQL job: the Flink side of the
trade-aggregator benchmark.

Reads a trades topic (Avro in Confluent wire format) from the earliest offset up to the end
offsets present at start, so the job ends when it has read everything; Flink then emits a final
MAX watermark and every window fires. Writes one CSV row per (instrument, exchange,
window_start) with exact decimal strings, and prints a JSON line with what it did.

Open and close are the first and last trade by (event_time, provider, trade_id) - the
aggregator's order - taken with two window Top-1 queries joined to the window aggregate: Flink
SQL has no ARG_MIN/ARG_MAX, and FIRST_VALUE/LAST_VALUE follow arrival order. See NOTES.md.

Run it with the Flink venv's python (bench/flink/install); bench/flink/run wraps it with CPU and
memory accounting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from pyflink.table import EnvironmentSettings, TableEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from candles_csv import (  # noqa: E402  (bench/candles_csv.py)
    NOTIONAL_FOR_DIVISION, PRICE_NARROW, SIZE_NARROW, VOLUME_FOR_DIVISION, write_candles,
)

# Flink gives a DECIMAL(38,18) x DECIMAL(38,18) product the type DECIMAL(38,6), and a
# DECIMAL(38,18) / DECIMAL(38,18) quotient DECIMAL(38,6) (precision is capped at 38 and the scale
# cut to make room for the integer digits): hence the narrower types of candles_csv.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081/apis/ccompat/v7",
                        help="Confluent-compatible schema registry URL")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--jars", required=True,
                        help="directory holding the Kafka connector and avro-confluent jars")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--checkpoint-ms", type=int, default=10_000,
                        help="checkpoint interval in milliseconds; 0 turns checkpoints off")
    parser.add_argument("--out-of-orderness-ms", type=int, default=5_000,
                        help="bounded out-of-orderness of the watermark, in milliseconds")
    parser.add_argument("--watermark-emit", choices=["on-event", "on-periodic"],
                        default="on-event",
                        help="on-event: a watermark after every record, so which trades are late "
                             "depends on record order only (what selftest checks); on-periodic: "
                             "Flink's usual every-200-ms watermark, cheaper, timing-dependent")
    parser.add_argument("--explain", action="store_true",
                        help="print the optimized plan to stderr before running")
    args = parser.parse_args(argv)
    if args.parallelism < 1:
        parser.error("--parallelism must be at least 1")
    if args.checkpoint_ms < 0 or args.out_of_orderness_ms < 0:
        parser.error("--checkpoint-ms and --out-of-orderness-ms must not be negative")
    return args


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def table_environment(args: argparse.Namespace) -> TableEnvironment:
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    jars = sorted(Path(args.jars).glob("*.jar"))
    if len(jars) < 2:
        sys.exit(f"candles: expected the connector jars in {args.jars}; run bench/flink/install")
    config.set("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in jars))
    config.set("pipeline.name", f"candles-1m {args.topic}")
    config.set("parallelism.default", str(args.parallelism))
    # Window start/end of a TIMESTAMP_LTZ rowtime are local times of the session zone.
    config.set("table.local-time-zone", "UTC")
    config.set("state.backend.type", "hashmap")
    # A failure ends the job (and the run, with Flink's error) instead of restarting it forever.
    config.set("restart-strategy.type", "none")
    if args.checkpoint_ms > 0:
        config.set("execution.checkpointing.interval", f"{args.checkpoint_ms} ms")
        # Checkpoints to files, as a production job keeps them: the default in-memory storage
        # refuses a state over 5 MiB, which 1,000 instruments' open windows pass.
        config.set("execution.checkpointing.storage", "filesystem")
        config.set("execution.checkpointing.dir", Path(args.checkpoint_dir).resolve().as_uri())
    return env


def create_source(env: TableEnvironment, args: argparse.Namespace) -> None:
    # Only the fields the job needs. The reader schema Flink derives from this DDL resolves
    # against the registry's writer schema by Avro's rules: the other fields are skipped, and
    # event_time reads as the plain long under timestamp-micros. Giving the exact writer schema
    # ('avro-confluent.schema') does not work in Flink 2.0: it must then equal the DDL field for
    # field, where timestamp-micros is TIMESTAMP(6), and the format fails on TIMESTAMP(6) anyway
    # (see NOTES.md). The rowtime must be TIMESTAMP(3)/TIMESTAMP_LTZ(3): event_time cut to
    # milliseconds, which keeps every trade in its minute; ordering uses the full micros.
    env.execute_sql(f"""
        CREATE TEMPORARY TABLE trades (
            instrument STRING NOT NULL,
            exchange STRING NOT NULL,
            provider STRING NOT NULL,
            trade_id STRING NOT NULL,
            price DECIMAL(38, 18) NOT NULL,
            size DECIMAL(38, 18) NOT NULL,
            event_time BIGINT NOT NULL,
            rowtime AS TO_TIMESTAMP_LTZ(event_time / 1000, 3),
            WATERMARK FOR rowtime AS rowtime - INTERVAL '{args.out_of_orderness_ms / 1000}' SECOND
        ) WITH (
            'connector' = 'kafka',
            'topic' = {sql_string(args.topic)},
            'properties.bootstrap.servers' = {sql_string(args.bootstrap)},
            'properties.group.id' = 'flink-bench-candles',
            'scan.startup.mode' = 'earliest-offset',
            'scan.bounded.mode' = 'latest-offset',
            'scan.watermark.emit.strategy' = {sql_string(args.watermark_emit)},
            'value.format' = 'avro-confluent',
            'value.avro-confluent.url' = {sql_string(args.registry)}
        )""")


CANDLES_SQL = f"""
WITH windowed AS (
    SELECT * FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(rowtime), INTERVAL '1' MINUTE))
),
sums AS (
    SELECT instrument, exchange, window_start, window_end,
           MAX(price) AS high,
           MIN(price) AS low,
           COUNT(*) AS trade_count,
           SUM(size) AS volume,
           SUM(CAST(price AS {PRICE_NARROW}) * CAST(size AS {SIZE_NARROW})) AS notional,
           -- A narrowing CAST rounds (too many decimals) or gives NULL (too many integer
           -- digits); either way the comparison is not TRUE and the trade is counted.
           SUM(CASE WHEN CAST(price AS {PRICE_NARROW}) = price
                     AND CAST(size AS {SIZE_NARROW}) = size
                    THEN 0 ELSE 1 END) AS narrowed
    FROM windowed
    GROUP BY instrument, exchange, window_start, window_end
),
firsts AS (
    SELECT instrument, exchange, window_start, window_end, price AS open_price FROM (
        SELECT *, ROW_NUMBER() OVER (
            PARTITION BY window_start, window_end, instrument, exchange
            ORDER BY event_time ASC, provider ASC, trade_id ASC) AS rank_in_window
        FROM windowed)
    WHERE rank_in_window = 1
),
lasts AS (
    SELECT instrument, exchange, window_start, window_end, price AS close_price FROM (
        SELECT *, ROW_NUMBER() OVER (
            PARTITION BY window_start, window_end, instrument, exchange
            ORDER BY event_time DESC, provider DESC, trade_id DESC) AS rank_in_window
        FROM windowed)
    WHERE rank_in_window = 1
),
opened AS (
    SELECT s.*, f.open_price
    FROM sums AS s JOIN firsts AS f
      ON s.window_start = f.window_start AND s.window_end = f.window_end
     AND s.instrument = f.instrument AND s.exchange = f.exchange
)
SELECT o.instrument, o.exchange, o.window_start,
       o.open_price, o.high, o.low, l.close_price, o.trade_count, o.volume,
       CAST(o.notional AS {NOTIONAL_FOR_DIVISION}) / CAST(o.volume AS {VOLUME_FOR_DIVISION})
           AS vwap,
       o.narrowed
FROM opened AS o JOIN lasts AS l
  ON o.window_start = l.window_start AND o.window_end = l.window_end
 AND o.instrument = l.instrument AND o.exchange = l.exchange
"""


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tickflow-flink-checkpoints-") as checkpoints:
        args.checkpoint_dir = checkpoints
        run(args)


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    env = table_environment(args)
    create_source(env, args)
    if args.explain:
        print(env.explain_sql(CANDLES_SQL), file=sys.stderr)
    # to_pandas fetches the result as Arrow batches; iterating execute_sql().collect() instead
    # costs a py4j round trip per row, which for 30,000 candles took longer than the job.
    candles = env.sql_query(CANDLES_SQL).to_pandas()
    decimals = ["open_price", "high", "low", "close_price", "volume", "vwap"]
    nulls = int(candles[decimals].isna().sum().sum())
    narrowed = int(candles["narrowed"].sum()) if len(candles) else 0
    # window_start is a naive TIMESTAMP(3) in the session zone, UTC.
    # pandas may hold it in ms or ns: go through a Timedelta, whatever the unit.
    epoch = pd.Timestamp(0)
    starts_us = [(start - epoch) // pd.Timedelta(microseconds=1) for start in candles["window_start"]]
    write_candles(args.out, (
        {
            "instrument": row.instrument, "exchange": row.exchange, "window_start_us": int(start_us),
            "open": row.open_price, "high": row.high, "low": row.low, "close": row.close_price,
            "count": int(row.trade_count), "volume": row.volume, "vwap": row.vwap,
        }
        for row, start_us in zip(candles.itertuples(index=False), starts_us)
    ))
    rows = len(candles)
    print(json.dumps({
        "rows": rows,
        "narrowed_trades": narrowed,
        "null_decimals": nulls,
        "job_seconds": round(time.monotonic() - started, 3),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
