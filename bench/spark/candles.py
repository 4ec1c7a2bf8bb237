"""1-minute candles per (instrument, exchange) as a Spark Structured Streaming job: the Spark side
of the trade-aggregator benchmark, beside bench/flink.

Reads a trades topic (Avro in Confluent wire format) from the earliest offset up to the end
offsets present at start (trigger availableNow), in micro-batches of at most
--max-offsets-per-trigger records, so the job ends when it has read everything. Aggregates in
update mode and keeps, per (instrument, exchange, window_start), the newest row any micro-batch
emitted: that is the window's final state, also for the last windows that the watermark never
closes (append mode would leave them in the state store). Writes one CSV row per candle with
exact decimal strings, and prints a JSON line with what it did.

Open and close are the price of the first and last trade by (event_time, provider, trade_id) -
the aggregator's order - with min_by/max_by over that struct, in the same aggregate as the rest.
See NOTES.md.

Run it with the Spark venv's python (bench/spark/install); bench/spark/run wraps it with CPU and
memory accounting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.avro.functions import from_avro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from candles_csv import (  # noqa: E402  (bench/candles_csv.py)
    COLUMNS, DECIMAL_COLUMNS, NOTIONAL_FOR_DIVISION, PRICE_NARROW, SIZE_NARROW,
    VOLUME_FOR_DIVISION, write_candles,
)

# Spark caps DECIMAL at precision 38: DECIMAL(38,18) x DECIMAL(38,18) would need (77,36), and
# Spark cuts it to DECIMAL(38,6) (allowPrecisionLoss=true, the default) or to DECIMAL(38,36),
# which overflows above 99 (allowPrecisionLoss=false): hence the narrower types of candles_csv,
# whose product DECIMAL(21,10) x DECIMAL(16,8) is exactly DECIMAL(38,18) (no adjustment). The
# VWAP, DECIMAL(30,18) / DECIMAL(28,8), has the exact type (67,47); with allowPrecisionLoss=true
# Spark keeps its 20 integer digits and gives it scale 38 - 20 = 18, rounded HALF_UP.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081/apis/ccompat/v7",
                        help="Confluent-compatible schema registry URL")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--jars", required=True,
                        help="directory holding the Kafka source and spark-avro jars")
    parser.add_argument("--parallelism", type=int, default=1,
                        help="local[N] master and N shuffle partitions (state store partitions)")
    parser.add_argument("--heap", default="1g", help="driver heap (spark.driver.memory)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=100_000,
                        help="records per micro-batch (Kafka maxOffsetsPerTrigger); 0 = the "
                             "whole topic in one batch, where nothing can be late")
    parser.add_argument("--out-of-orderness-ms", type=int, default=5_000,
                        help="watermark delay behind the largest event time, in milliseconds")
    parser.add_argument("--explain", action="store_true",
                        help="print the first micro-batch's physical plan to stderr")
    args = parser.parse_args(argv)
    if args.parallelism < 1:
        parser.error("--parallelism must be at least 1")
    if args.max_offsets_per_trigger < 0 or args.out_of_orderness_ms < 0:
        parser.error("--max-offsets-per-trigger and --out-of-orderness-ms must not be negative")
    return args


def writer_schema(registry: str, topic: str) -> tuple[int, str]:
    """(schema id, schema JSON) of the latest `<topic>-value` version in the registry."""
    url = f"{registry.rstrip('/')}/subjects/{topic}-value/versions/latest"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    return int(body["id"]), body["schema"]


def spark_session(args: argparse.Namespace) -> SparkSession:
    jars = sorted(Path(args.jars).glob("*.jar"))
    if len(jars) < 5:
        sys.exit(f"candles: expected the Kafka and Avro jars in {args.jars}; run bench/spark/install")
    return (
        SparkSession.builder
        .master(f"local[{args.parallelism}]")
        .appName(f"candles-1m {args.topic}")
        .config("spark.jars", ",".join(str(jar.resolve()) for jar in jars))
        # Read by the launcher before the JVM starts (-Xmx); no -Xms, so RSS shows what is used.
        .config("spark.driver.memory", args.heap)
        # The state store has one partition per shuffle partition; Spark's default of 200 would
        # mean 200 state-store tasks a micro-batch on 2 cores.
        .config("spark.sql.shuffle.partitions", str(args.parallelism))
        .config("spark.sql.session.timeZone", "UTC")
        # Spelled out because the decimal types above depend on them (see PRICE_NARROW).
        .config("spark.sql.decimalOperations.allowPrecisionLoss", "true")
        # Spark 4 turns ANSI on by default: an overflowing SUM or CAST would then fail the job.
        # Off, they give NULL, counted like in bench/flink (`null_decimals`, `narrowed_trades`).
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Streaming turns adaptive execution off anyway (with a warning at every start).
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .getOrCreate()
    )


def trades(spark: SparkSession, args: argparse.Namespace, schema_id: int,
           schema_json: str) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
    )
    if args.max_offsets_per_trigger > 0:
        reader = reader.option("maxOffsetsPerTrigger", str(args.max_offsets_per_trigger))
    raw = reader.load()
    # Confluent wire format: magic byte 0, the 4-byte big-endian schema id, then the Avro body.
    # from_avro takes the schema as both writer and reader schema, so only records written with
    # the schema fetched at start can be decoded; the others are counted and skipped.
    header = bytearray(b"\x00" + schema_id.to_bytes(4, "big"))
    has_header = F.substring("value", 1, 5) == F.lit(header)
    observed = raw.observe(
        "input",
        F.count(F.lit(1)).alias("records"),
        F.sum(F.when(has_header, 0).otherwise(1)).alias("foreign_records"),
    )
    body = F.expr("substring(value, 6, length(value) - 5)")
    # timestamp-micros decodes to TIMESTAMP (microseconds, UTC): no precision lost.
    return (
        observed.where(has_header)
        .select(from_avro(body, schema_json, {"mode": "FAILFAST"}).alias("trade"))
        .select("trade.instrument", "trade.exchange", "trade.provider", "trade.trade_id",
                "trade.price", "trade.size", "trade.event_time")
    )


def candles(trades_df: DataFrame, args: argparse.Namespace) -> DataFrame:
    order = F.struct("event_time", "provider", "trade_id")
    price_narrow = F.col("price").cast(PRICE_NARROW)
    size_narrow = F.col("size").cast(SIZE_NARROW)
    # NULL (overflow) or FALSE (rounded): either way the trade is counted as narrowed.
    exact: Column = F.coalesce((price_narrow == F.col("price")) & (size_narrow == F.col("size")),
                               F.lit(False))
    sums = (
        trades_df
        .withWatermark("event_time", f"{args.out_of_orderness_ms} milliseconds")
        .groupBy(F.window("event_time", "1 minute"), "instrument", "exchange")
        .agg(
            # Struct order is field by field; strings compare as UTF-8 bytes, like Rust's str.
            F.min_by("price", order).alias("open"),
            F.max("price").alias("high"),
            F.min("price").alias("low"),
            F.max_by("price", order).alias("close"),
            F.count(F.lit(1)).alias("trade_count"),
            F.sum("size").alias("volume"),
            F.sum(price_narrow * size_narrow).alias("notional"),
            F.sum(F.when(exact, 0).otherwise(1)).alias("narrowed"),
        )
    )
    return sums.select(
        "instrument", "exchange",
        F.unix_micros(F.col("window.start")).alias("window_start_us"),
        "open", "high", "low", "close", "trade_count", "volume",
        (F.col("notional").cast(NOTIONAL_FOR_DIVISION)
         / F.col("volume").cast(VOLUME_FOR_DIVISION)).alias("vwap"),
        "narrowed",
    )


class LatestRows:
    """foreachBatch sink keeping the newest row per candle. In update mode each micro-batch emits
    the full aggregate of every window it touched, so the row from the latest batch is the
    window's final state; a window's state is evicted only after its last emission."""

    def __init__(self, explain: bool) -> None:
        self.rows: dict[tuple[str, str, int], tuple] = {}
        self.batches = 0
        self.emitted = 0
        self.explain = explain

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if self.explain and self.batches == 0:
            batch.explain(mode="formatted")
        for row in batch.collect():
            self.rows[(row.instrument, row.exchange, row.window_start_us)] = tuple(row)
            self.emitted += 1
        self.batches += 1


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tickflow-spark-checkpoints-") as checkpoints:
        run(args, checkpoints)


def run(args: argparse.Namespace, checkpoint_dir: str) -> None:
    started = time.monotonic()
    schema_id, schema_json = writer_schema(args.registry, args.topic)
    spark = spark_session(args)
    sink = LatestRows(args.explain)
    query = (
        candles(trades(spark, args, schema_id, schema_json), args)
        .writeStream
        .queryName("candles_1m")
        .outputMode("update")
        .option("checkpointLocation", checkpoint_dir)
        .trigger(availableNow=True)
        .foreachBatch(sink)
        .start()
    )
    query.awaitTermination()
    if query.exception() is not None:
        sys.exit(f"candles: the streaming query failed: {query.exception()}")
    progress = query.recentProgress
    spark_version = spark.version
    spark.stop()

    # numInputRows counts what the source read; the observed metrics what reached the decoder.
    records = sum(update.numInputRows for update in progress)
    observed = foreign = 0
    for update in progress:
        metrics = update.observedMetrics.get("input")
        if metrics is not None:
            observed += metrics["records"] or 0
            foreign += metrics["foreign_records"] or 0
    if observed != records:
        print(f"candles: the source read {records} records, the observed metrics saw {observed}",
              file=sys.stderr)
    rows = [dict(zip(COLUMNS + ["narrowed"], values)) for values in sink.rows.values()]
    nulls = sum(row[name] is None for row in rows for name in DECIMAL_COLUMNS)
    narrowed = sum(row["narrowed"] or 0 for row in rows)
    write_candles(args.out, rows)
    print(json.dumps({
        "rows": len(sink.rows),
        "records_read": records,
        "foreign_schema_records": foreign,
        "micro_batches": sink.batches,
        "rows_emitted": sink.emitted,
        "narrowed_trades": narrowed,
        "null_decimals": nulls,
        "schema_id": schema_id,
        "spark_version": spark_version,
        "job_seconds": round(time.monotonic() - started, 3),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
