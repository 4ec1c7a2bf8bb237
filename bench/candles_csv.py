"""The candle CSV that bench/flink and bench/spark write and their references recompute, and the
decimal types both engines narrow to. Standard library only: imported by each engine's job under
its own venv and by the stack's python (testdata.py, reference.py).

Columns: instrument, exchange, window_start_us, open, high, low, close, count, volume, vwap; the
decimals in plain notation without trailing fractional zeros (`canonical`), so equal values print
alike, and "NULL" where an engine reported a DECIMAL overflow.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from typing import Iterable

COLUMNS = [
    "instrument", "exchange", "window_start_us", "open", "high", "low", "close",
    "count", "volume", "vwap",
]
DECIMAL_COLUMNS = ["open", "high", "low", "close", "volume", "vwap"]

# Both engines cap DECIMAL at precision 38, so DECIMAL(38,18) x DECIMAL(38,18) cannot stay exact.
# price x size is computed on narrower types whose exact product fits: DECIMAL(21,10) x
# DECIMAL(16,8) -> DECIMAL(38,18), i.e. prices below 10^11 with at most 10 decimals, sizes below
# 10^8 with at most 8. A narrowing CAST rounds half-up, or gives NULL on overflow (which SUM
# skips): each job counts such trades (`narrowed_trades`) rather than trust them.
PRICE_NARROW = "DECIMAL(21, 10)"
SIZE_NARROW = "DECIMAL(16, 8)"
# VWAP = notional / volume with 18 fractional digits: notional below 10^12 a window, volume with
# at most 8 decimals.
NOTIONAL_FOR_DIVISION = "DECIMAL(30, 18)"
VOLUME_FOR_DIVISION = "DECIMAL(28, 8)"


def canonical(value: Decimal | None) -> str:
    """Plain notation without trailing fractional zeros; "NULL" for None or NaN (pandas)."""
    if value is None or value != value:
        return "NULL"
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def write_candles(path: str, rows: Iterable[dict]) -> None:
    """Writes candle rows (dicts keyed by COLUMNS) to `path`, the decimals made canonical."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({
                name: canonical(row[name]) if name in DECIMAL_COLUMNS else row[name]
                for name in COLUMNS
            })
