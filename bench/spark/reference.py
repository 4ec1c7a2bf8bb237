"""Candles as Spark Structured Streaming computes them, recomputed in plain Python.

Runs with the stack's venv (confluent-kafka, fastavro), like bench/flink/testdata.py, whose topic
reader and candle arithmetic it reuses; only the late-data rule is Spark's:

  - the topic is read in micro-batches of --max-offsets-per-trigger offsets (one batch when 0);
  - after each batch the watermark becomes max(watermark, largest event time of the batch in ms
    - out_of_orderness); it starts at 0 and never goes back;
  - batch b judges lateness by the watermark in force for batch b - 1 (Spark 3.4+ keeps one
    watermark for late events, the previous batch's, and one for state eviction, the current
    one): a trade is dropped when its window's end <= that watermark. So nothing is dropped in
    the first two batches, and a trade in batch b is judged by the maxima of batches 0..b-2.

Exact for a single-partition topic with consecutive offsets (no transaction markers), where
Spark's rate limit cuts batches at fixed offsets; with several partitions the cut is spread over
partitions by lag.

  reference.py --topic T --out reference.csv [--out-of-orderness-ms 5000] \
      [--max-offsets-per-trigger 2000]
"""

from __future__ import annotations

import argparse
import decimal
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flink"))

import testdata  # noqa: E402  (bench/flink/testdata.py)

WINDOW_MS = 60_000
# Passed to testdata.reference_candles so that Flink's rule drops nothing: the trades given to
# it are already the ones Spark keeps.
NO_LATENESS_MS = 10**15


def spark_kept(trades: list[dict], out_of_orderness_ms: int,
               batch_size: int) -> tuple[list[dict], int]:
    """The trades Spark aggregates, in topic order, and how many it drops as late."""
    size = batch_size if batch_size > 0 else max(1, len(trades))
    kept = []
    dropped = 0
    watermark_ms = 0              # in force for the current batch (eviction)
    previous_watermark_ms = 0     # in force for the previous batch (late events)
    for first in range(0, len(trades), size):
        batch = trades[first:first + size]
        for trade in batch:
            start_ms = trade["event_time"] // 1000 // WINDOW_MS * WINDOW_MS
            if start_ms + WINDOW_MS <= previous_watermark_ms:
                dropped += 1
            else:
                kept.append(trade)
        # Spark's EventTimeWatermarkExec sees every row of the batch, late ones included.
        batch_max_ms = max(trade["event_time"] // 1000 for trade in batch)
        previous_watermark_ms = watermark_ms
        watermark_ms = max(watermark_ms, batch_max_ms - out_of_orderness_ms)
    return kept, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081/apis/ccompat/v7")
    parser.add_argument("--out", required=True)
    parser.add_argument("--out-of-orderness-ms", type=int, default=5_000)
    parser.add_argument("--max-offsets-per-trigger", type=int, default=100_000)
    args = parser.parse_args()
    partitions = testdata.read_topic(args.bootstrap, args.topic, args.registry)
    if len(partitions) != 1:
        sys.exit("reference: Spark's batch cuts are reproduced only for a single-partition topic")
    trades = partitions[0][1]
    kept, dropped = spark_kept(trades, args.out_of_orderness_ms, args.max_offsets_per_trigger)
    rows, _ = testdata.reference_candles([(partitions[0][0], kept)], NO_LATENESS_MS)
    testdata.write_candles(args.out, rows)
    print(json.dumps({"trades": len(trades), "dropped_late": dropped, "rows": len(rows)}))


if __name__ == "__main__":
    # testdata sets this in its own __main__ only; notional and vwap need the digits.
    decimal.getcontext().prec = 80
    main()
