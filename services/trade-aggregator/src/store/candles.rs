//! The `candles_1m` and `candles_rollup` tables: idempotent upserts keyed by (instrument, venue,
//! [interval,] day, window_start), and the single-partition read of an instrument's candles of
//! one day.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp};

use tickflow_shared::cassandra::{day_of, err, from_cql_decimal, prepare, select, to_cql_decimal};
use tickflow_shared::domain::{Candle, Micros};
use tickflow_shared::Result;

const COLUMNS: &str = "instrument, venue, day, window_start, window_end, open, high, low, close, \
    count, volume, notional, vwap, avg_price, buy_volume, sell_volume, first_trade_us, \
    last_trade_us, is_final, revision";

/// One row of `candles_1m` (and, with the interval, of `candles_rollup`); fields match the
/// columns by name.
#[derive(Debug, scylla::SerializeRow, scylla::DeserializeRow)]
struct CandleRow {
    instrument: String,
    venue: String,
    day: CqlDate,
    window_start: CqlTimestamp,
    window_end: CqlTimestamp,
    open: CqlDecimal,
    high: CqlDecimal,
    low: CqlDecimal,
    close: CqlDecimal,
    count: i64,
    volume: CqlDecimal,
    notional: CqlDecimal,
    vwap: CqlDecimal,
    avg_price: CqlDecimal,
    buy_volume: CqlDecimal,
    sell_volume: CqlDecimal,
    first_trade_us: i64,
    last_trade_us: i64,
    is_final: bool,
    revision: i32,
}

/// One row of `candles_rollup`.
#[derive(Debug, scylla::SerializeRow)]
struct RollupRow {
    interval: String,
    #[scylla(flatten)]
    row: CandleRow,
}

/// A 1-minute candle's row and its write timestamp (the `USING TIMESTAMP` marker).
#[derive(Debug, scylla::SerializeRow)]
struct StampedCandle {
    #[scylla(flatten)]
    row: CandleRow,
    #[scylla(rename = "[timestamp]")]
    stamp: i64,
}

/// A roll-up's row and its write timestamp.
#[derive(Debug, scylla::SerializeRow)]
struct StampedRollup {
    #[scylla(flatten)]
    row: RollupRow,
    #[scylla(rename = "[timestamp]")]
    stamp: i64,
}

/// The interval of the candles in `candles_1m`; every other interval is a roll-up.
pub const ONE_MINUTE: &str = "1m";

#[derive(Clone)]
pub struct CandleStore {
    session: Arc<Session>,
    upsert: PreparedStatement,
    select_day: PreparedStatement,
    upsert_rollup: PreparedStatement,
    select_rollup_day: PreparedStatement,
    select_revision: PreparedStatement,
    select_rollup_revision: PreparedStatement,
}

impl CandleStore {
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        let marks = vec!["?"; COLUMNS.split(',').count()].join(", ");
        // The same window written again with its latest value: safe for the driver to retry.
        let upsert = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.candles_1m ({COLUMNS}) VALUES ({marks}) USING TIMESTAMP ?"
            ),
            "candles upsert",
        )
        .await?;
        let select_day = prepare(
            &session,
            format!("SELECT {COLUMNS} FROM {keyspace}.candles_1m WHERE instrument = ? AND venue = ? AND day = ?"),
            "candles select",
        )
        .await?;
        let upsert_rollup = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.candles_rollup (interval, {COLUMNS}) VALUES (?, {marks}) USING TIMESTAMP ?"
            ),
            "roll-up upsert",
        )
        .await?;
        let select_rollup_day = prepare(
            &session,
            format!("SELECT {COLUMNS} FROM {keyspace}.candles_rollup WHERE instrument = ? AND venue = ? AND interval = ? AND day = ?"),
            "roll-up select",
        )
        .await?;
        let select_revision = prepare(
            &session,
            format!("SELECT revision FROM {keyspace}.candles_1m WHERE instrument = ? AND venue = ? AND day = ? AND window_start = ?"),
            "candle revision select",
        )
        .await?;
        let select_rollup_revision = prepare(
            &session,
            format!("SELECT revision FROM {keyspace}.candles_rollup WHERE instrument = ? AND venue = ? AND interval = ? AND day = ? AND window_start = ?"),
            "roll-up revision select",
        )
        .await?;
        Ok(Self {
            session,
            upsert,
            select_day,
            upsert_rollup,
            select_rollup_day,
            select_revision,
            select_rollup_revision,
        })
    }

    /// Upserts a 1-minute candle into `candles_1m`, any other interval into `candles_rollup`, at
    /// write timestamp `stamp` (µs): of two writes of a window, the one stamped later stays,
    /// whichever lands last.
    pub async fn upsert(&self, c: &Candle, stamp: Micros) -> Result<()> {
        let row = Self::row(c)?;
        let result = if c.interval == ONE_MINUTE {
            self.session
                .execute_unpaged(&self.upsert, StampedCandle { row, stamp })
                .await
        } else {
            let row = RollupRow {
                interval: c.interval.clone(),
                row,
            };
            self.session
                .execute_unpaged(&self.upsert_rollup, StampedRollup { row, stamp })
                .await
        };
        result.map_err(|e| err("upsert candle", e))?;
        Ok(())
    }

    /// The revision of the stored candle of `c`'s window (same instrument, venue, interval and
    /// start), if one is stored.
    pub async fn stored_revision(&self, c: &Candle) -> Result<Option<i32>> {
        let day = day_of(c.window_start)?;
        let start = CqlTimestamp(c.window_start.div_euclid(1000));
        let rows: Vec<(Option<i32>,)> = if c.interval == ONE_MINUTE {
            select(
                &self.session,
                &self.select_revision,
                (&c.instrument, &c.venue, day, start),
                "select candle revision",
            )
            .await?
        } else {
            select(
                &self.session,
                &self.select_rollup_revision,
                (&c.instrument, &c.venue, &c.interval, day, start),
                "select roll-up revision",
            )
            .await?
        };
        Ok(rows.into_iter().next().and_then(|(r,)| r))
    }

    fn row(c: &Candle) -> Result<CandleRow> {
        Ok(CandleRow {
            instrument: c.instrument.clone(),
            venue: c.venue.clone(),
            day: day_of(c.window_start)?,
            window_start: CqlTimestamp(c.window_start.div_euclid(1000)),
            window_end: CqlTimestamp(c.window_end.div_euclid(1000)),
            open: to_cql_decimal(&c.open),
            high: to_cql_decimal(&c.high),
            low: to_cql_decimal(&c.low),
            close: to_cql_decimal(&c.close),
            count: c.count,
            volume: to_cql_decimal(&c.volume),
            notional: to_cql_decimal(&c.notional),
            vwap: to_cql_decimal(&c.vwap),
            avg_price: to_cql_decimal(&c.avg_price),
            buy_volume: to_cql_decimal(&c.buy_volume),
            sell_volume: to_cql_decimal(&c.sell_volume),
            first_trade_us: c.first_trade_time,
            last_trade_us: c.last_trade_time,
            is_final: c.is_final,
            revision: c.revision,
        })
    }

    /// Every 1-minute candle of (instrument, venue) in the UTC day containing `time`, newest first.
    pub async fn day(&self, instrument: &str, venue: &str, time: Micros) -> Result<Vec<Candle>> {
        let rows: Vec<CandleRow> = select(
            &self.session,
            &self.select_day,
            (instrument, venue, day_of(time)?),
            "select candles",
        )
        .await?;
        Self::candles(rows, ONE_MINUTE)
    }

    /// Every `interval` roll-up of (instrument, venue) starting in the UTC day containing
    /// `time`, newest first.
    pub async fn rollup_day(
        &self,
        instrument: &str,
        venue: &str,
        interval: &str,
        time: Micros,
    ) -> Result<Vec<Candle>> {
        let rows: Vec<CandleRow> = select(
            &self.session,
            &self.select_rollup_day,
            (instrument, venue, interval, day_of(time)?),
            "select roll-ups",
        )
        .await?;
        Self::candles(rows, interval)
    }

    fn candles(rows: Vec<CandleRow>, interval: &str) -> Result<Vec<Candle>> {
        let mut candles = Vec::new();
        for r in rows {
            candles.push(Candle {
                instrument: r.instrument,
                venue: r.venue,
                interval: interval.into(),
                window_start: r.window_start.0 * 1000,
                window_end: r.window_end.0 * 1000,
                open: from_cql_decimal(&r.open)?,
                high: from_cql_decimal(&r.high)?,
                low: from_cql_decimal(&r.low)?,
                close: from_cql_decimal(&r.close)?,
                count: r.count,
                volume: from_cql_decimal(&r.volume)?,
                notional: from_cql_decimal(&r.notional)?,
                vwap: from_cql_decimal(&r.vwap)?,
                avg_price: from_cql_decimal(&r.avg_price)?,
                buy_volume: from_cql_decimal(&r.buy_volume)?,
                sell_volume: from_cql_decimal(&r.sell_volume)?,
                first_trade_time: r.first_trade_us,
                last_trade_time: r.last_trade_us,
                is_final: r.is_final,
                revision: r.revision,
            });
        }
        Ok(candles)
    }
}
