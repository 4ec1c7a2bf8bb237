"""Test data for the Flink benchmark: produce trades, recompute their candles, compare.

Runs with the stack's venv (confluent-kafka, fastavro), not Flink's. Three subcommands:

  produce    writes N seeded trades to a topic (Avro, Confluent wire format, key = instrument),
             registering the schema under `<topic>-value`; about 5% out of order within 2 s,
             a few far later than the watermark allows, and some event-time ties.
  reference  reads the topic back and recomputes the 1-minute candles in plain Python with the
             same late-data rule as Flink (see `reference_candles`).
  compare    compares two candle CSVs row by row, numerically for decimals.

Decimals never go through float: prices are generated as integers of ticks and kept as
`decimal.Decimal`; the reference divides with 18 fractional digits, ROUND_HALF_UP.
"""

from __future__ import annotations

import argparse
import csv
import decimal
import io
import json
import random
import struct
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from candles_csv import COLUMNS, DECIMAL_COLUMNS, write_candles  # noqa: E402  (bench/candles_csv.py)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "trade.avsc"
SCALE = 18
WINDOW_US = 60_000_000
# A minute boundary (2024-01-02T00:00:00Z), so the first window is whole.
START_US = 1_704_153_600_000_000

INSTRUMENTS = [
    # (instrument, asset class, starting price, price decimals, size decimals)
    ("BTC-USD", "CRYPTO", "42000.5", 2, 8), ("ETH-USD", "CRYPTO", "2250.25", 2, 6),
    ("SOL-USD", "CRYPTO", "98.123", 3, 4), ("XRP-USD", "CRYPTO", "0.61234", 5, 1),
    ("DOGE-USD", "CRYPTO", "0.0912345", 7, 0), ("ADA-USD", "CRYPTO", "0.5123", 4, 2),
    ("SHIB-USD", "CRYPTO", "0.0000102345", 10, 0), ("LTC-USD", "CRYPTO", "71.55", 2, 5),
    ("BTC-USDT", "CRYPTO", "42001.12", 2, 8), ("ETH-USDT", "CRYPTO", "2250.11", 2, 8),
    ("AAPL", "EQUITY", "185.64", 2, 0), ("MSFT", "EQUITY", "370.87", 2, 0),
    ("TSLA", "EQUITY", "248.42", 2, 0), ("NVDA", "EQUITY", "481.68", 2, 3),
    ("AMZN", "EQUITY", "151.94", 2, 0), ("EUR-USD", "FX", "1.10412", 5, 2),
    ("GBP-USD", "FX", "1.27301", 5, 2), ("USD-JPY", "FX", "141.012", 3, 2),
    ("AUD-USD", "FX", "0.68213", 5, 2), ("XAU-USD", "OTHER", "2062.35", 2, 3),
]
EXCHANGES = [("coinbase", "coinbase"), ("kraken", "kraken"), ("binance", "binance")]


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def register_schema(registry: str, subject: str, schema: dict) -> int:
    body = json.dumps({"schema": json.dumps(schema)}).encode()
    request = urllib.request.Request(
        f"{registry.rstrip('/')}/subjects/{subject}/versions",
        data=body,
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.load(response)["id"])


def to_unscaled(value: Decimal) -> bytes:
    """Two's-complement big-endian unscaled bytes at scale 18 (Avro decimal)."""
    unscaled = int(value.scaleb(SCALE).to_integral_exact())
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return unscaled.to_bytes(length, "big", signed=True)


def from_unscaled(raw: bytes) -> Decimal:
    return Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-SCALE)


def generate(count: int, seed: int) -> list[dict]:
    """Trades in production order. Event times advance ~30 ms a trade; 5% are moved back by up
    to 2 s, 0.5% by 6-40 s (later than a 5 s watermark: Flink drops those whose window closed),
    and 2% repeat the previous trade's instrument, exchange and event time (a tie, broken by
    provider then trade id)."""
    rng = random.Random(seed)
    prices = {name: Decimal(start) for name, _, start, _, _ in INSTRUMENTS}
    trades = []
    clock = START_US
    previous_time = clock
    previous_instrument, previous_exchange = INSTRUMENTS[0], EXCHANGES[0]
    for number in range(count):
        clock += int(rng.expovariate(1 / 30_000))
        roll = rng.random()
        tie = 0.055 <= roll < 0.075 and trades
        if tie:
            name, asset_class, _, price_dp, size_dp = previous_instrument
            exchange, provider = previous_exchange
        else:
            previous_instrument = rng.choice(INSTRUMENTS)
            previous_exchange = rng.choice(EXCHANGES)
            name, asset_class, _, price_dp, size_dp = previous_instrument
            exchange, provider = previous_exchange
        tick = Decimal(1).scaleb(-price_dp)
        step = max(tick, (prices[name] * Decimal("0.0005")).quantize(tick))
        prices[name] = max(tick, prices[name] + step * rng.randint(-3, 3))
        size = (Decimal(rng.randint(1, 5_000)) * Decimal(1).scaleb(-size_dp)).quantize(
            Decimal(1).scaleb(-size_dp)
        ) if size_dp else Decimal(rng.randint(1, 500))
        if roll < 0.05:
            event_time = clock - rng.randint(1, 2_000_000)
        elif roll < 0.055:
            event_time = clock - rng.randint(6_000_000, 40_000_000)
        elif tie:
            event_time = previous_time
        else:
            event_time = clock
        previous_time = event_time
        base, _, quote = name.partition("-")
        trades.append({
            "instrument": name,
            "base": base,
            "quote": quote or "USD",
            "asset_class": asset_class,
            "exchange": exchange,
            "provider": provider,
            "provider_symbol": name.replace("-", ""),
            # Not in time order on purpose, so ties cannot be broken by arrival by accident.
            "trade_id": f"t{rng.randrange(10**9):09d}-{number}",
            "price": prices[name],
            "size": size,
            "side": rng.choice(["BUY", "SELL", "UNKNOWN"]),
            "event_time": event_time,
            "ingest_time": clock + 1_000,
            "normalized_time": clock + 2_000,
            "provider_sequence": number if rng.random() < 0.5 else None,
        })
    return trades


def produce(args: argparse.Namespace) -> None:
    schema = load_schema()
    parsed = fastavro.parse_schema(schema)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    futures = admin.create_topics([NewTopic(args.topic, args.partitions, 1)])
    futures[args.topic].result(timeout=60)
    schema_id = register_schema(args.registry, f"{args.topic}-value", schema)
    header = struct.pack(">bI", 0, schema_id)
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "linger.ms": 20,
        "compression.type": "lz4",
    })
    for trade in generate(args.count, args.seed):
        record = dict(trade, price=to_unscaled(trade["price"]), size=to_unscaled(trade["size"]))
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        while True:
            try:
                producer.produce(args.topic, key=trade["instrument"].encode(),
                                 value=header + out.getvalue())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        sys.exit(f"produce: {remaining} trades not delivered")
    print(json.dumps({"topic": args.topic, "trades": args.count, "schema_id": schema_id}))


def read_topic(bootstrap: str, topic: str, registry: str) -> list[tuple[int, list[dict]]]:
    """Every trade of `topic`, per partition in offset order."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"flink-bench-reference-{random.randrange(10**9)}",
        "enable.auto.commit": False,
    })
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions)
    schemas: dict[int, object] = {}
    result = []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        consumer.assign([TopicPartition(topic, partition, low)])
        trades = []
        offset = low
        while offset < high:
            message = consumer.poll(10)
            if message is None:
                sys.exit(f"reference: no record at {topic}/{partition}@{offset}")
            if message.error():
                sys.exit(f"reference: {message.error()}")
            value = message.value()
            magic, schema_id = struct.unpack(">bI", value[:5])
            if magic != 0:
                sys.exit(f"reference: magic byte {magic} at offset {message.offset()}")
            if schema_id not in schemas:
                url = f"{registry.rstrip('/')}/schemas/ids/{schema_id}"
                with urllib.request.urlopen(url, timeout=30) as response:
                    schemas[schema_id] = fastavro.parse_schema(
                        json.loads(json.load(response)["schema"]))
            trade = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id])
            for field in ("price", "size"):
                if isinstance(trade[field], bytes):
                    trade[field] = from_unscaled(trade[field])
            for field in ("event_time",):
                if not isinstance(trade[field], int):  # fastavro may decode timestamp-micros
                    trade[field] = int(trade[field].timestamp() * 1_000_000)
            trades.append(trade)
            offset = message.offset() + 1
        result.append((partition, trades))
    consumer.close()
    return result


def reference_candles(partitions: list[tuple[int, list[dict]]], out_of_orderness_ms: int):
    """Candles as Flink computes them, for a topic read by a single source split per partition.

    Flink's rule, in milliseconds (the rowtime is event_time truncated to ms): the watermark
    after a trade is max(rowtime) - out_of_orderness, emitted on every event; a trade is dropped
    when its window [start, end) has fired, i.e. end - 1 <= watermark at its arrival. Exact only
    for a topic with one partition: with several, Flink's watermark is the minimum over
    partitions, which depends on how the reader interleaves them.
    """
    if len(partitions) != 1:
        sys.exit("reference: the late-data rule is exact only for a single-partition topic")
    windows: dict[tuple[str, str, int], dict] = {}
    watermark = None
    dropped = 0
    for trade in partitions[0][1]:
        rowtime_ms = trade["event_time"] // 1000
        start_ms = rowtime_ms - rowtime_ms % 60_000
        if watermark is not None and start_ms + 60_000 - 1 <= watermark:
            dropped += 1
        else:
            key = (trade["instrument"], trade["exchange"], start_ms * 1000)
            order = (trade["event_time"], trade["provider"], trade["trade_id"])
            price, size = trade["price"], trade["size"]
            window = windows.get(key)
            if window is None:
                windows[key] = {
                    "first": order, "open": price, "last": order, "close": price,
                    "high": price, "low": price, "count": 1, "volume": size,
                    "notional": price * size,
                }
            else:
                if order < window["first"]:
                    window["first"], window["open"] = order, price
                if order > window["last"]:
                    window["last"], window["close"] = order, price
                window["high"] = max(window["high"], price)
                window["low"] = min(window["low"], price)
                window["count"] += 1
                window["volume"] += size
                window["notional"] += price * size
        mark = rowtime_ms - out_of_orderness_ms
        watermark = mark if watermark is None else max(watermark, mark)
    rows = []
    quantum = Decimal(1).scaleb(-SCALE)
    for (instrument, exchange, start_us), window in sorted(windows.items()):
        vwap = (window["notional"] / window["volume"]).quantize(quantum, decimal.ROUND_HALF_UP)
        rows.append({
            "instrument": instrument, "exchange": exchange, "window_start_us": start_us,
            "open": window["open"], "high": window["high"], "low": window["low"],
            "close": window["close"], "count": window["count"], "volume": window["volume"],
            "vwap": vwap,
        })
    return rows, dropped


def reference(args: argparse.Namespace) -> None:
    partitions = read_topic(args.bootstrap, args.topic, args.registry)
    rows, dropped = reference_candles(partitions, args.out_of_orderness_ms)
    write_candles(args.out, rows)
    trades = sum(len(trades) for _, trades in partitions)
    print(json.dumps({"trades": trades, "dropped_late": dropped, "rows": len(rows)}))


def read_candles(path: str) -> dict[tuple[str, str, int], dict]:
    with open(path, newline="") as handle:
        rows = {}
        for row in csv.DictReader(handle):
            key = (row["instrument"], row["exchange"], int(row["window_start_us"]))
            if key in rows:
                sys.exit(f"compare: {path} has {key} twice")
            rows[key] = row
        return rows


def compare(args: argparse.Namespace) -> None:
    expected, actual = read_candles(args.expected), read_candles(args.actual)
    problems = []
    for key in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing {key}")
    for key in sorted(actual.keys() - expected.keys()):
        problems.append(f"unexpected {key}")
    for key in sorted(expected.keys() & actual.keys()):
        for name in COLUMNS[3:]:
            want, got = expected[key][name], actual[key][name]
            same = Decimal(want) == Decimal(got) if name in DECIMAL_COLUMNS else want == got
            if not same:
                problems.append(f"{key} {name}: expected {want}, got {got}")
    for line in problems[:20]:
        print(f"  {line}", file=sys.stderr)
    matched = len(expected.keys() & actual.keys())
    print(json.dumps({"expected_rows": len(expected), "actual_rows": len(actual),
                      "matched_keys": matched, "mismatches": len(problems)}))
    sys.exit(1 if problems else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "reference"):
        sub = commands.add_parser(name)
        sub.add_argument("--topic", required=True)
        sub.add_argument("--bootstrap", default="127.0.0.1:9092")
        sub.add_argument("--registry", default="http://127.0.0.1:8081/apis/ccompat/v7")
    produce_parser = commands.choices["produce"]
    produce_parser.add_argument("--count", type=int, default=20_000)
    produce_parser.add_argument("--seed", type=int, default=1)
    produce_parser.add_argument("--partitions", type=int, default=1)
    reference_parser = commands.choices["reference"]
    reference_parser.add_argument("--out", required=True)
    reference_parser.add_argument("--out-of-orderness-ms", type=int, default=5_000)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("expected")
    compare_parser.add_argument("actual")
    args = parser.parse_args()
    {"produce": produce, "reference": reference, "compare": compare}[args.command](args)


if __name__ == "__main__":
    decimal.getcontext().prec = 80
    main()
