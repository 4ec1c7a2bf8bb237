//! The `trades` table: idempotent upserts keyed by the trade's identity, and the single-partition
//! read of one instrument's day. Decimals go to CQL `decimal` with their own scale, times to
//! microsecond `bigint` columns, so nothing is rounded on the way.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp};

use tickflow_shared::cassandra::{day_of, err, from_cql_decimal, prepare, select, to_cql_decimal};
use tickflow_shared::domain::{epoch_day, Micros, Trade, MICROS_PER_DAY};
use tickflow_shared::{Error, Result};

const COLUMNS: &str = "instrument, day, event_time_us, exchange, provider, trade_id, event_time, \
    price, size, side, base, quote, asset_class, provider_symbol, ingest_time_us, \
    normalized_time_us, provider_sequence";

#[derive(Clone)]
pub struct TradeStore {
    session: Arc<Session>,
    insert: PreparedStatement,
    select_day: PreparedStatement,
    select_range: PreparedStatement,
}

/// One row of `trades`; fields match the columns by name.
#[derive(Debug, scylla::SerializeRow, scylla::DeserializeRow)]
struct TradeRow {
    instrument: String,
    day: CqlDate,
    event_time_us: i64,
    exchange: String,
    provider: String,
    trade_id: String,
    event_time: CqlTimestamp,
    price: CqlDecimal,
    size: CqlDecimal,
    side: String,
    base: String,
    quote: String,
    asset_class: String,
    provider_symbol: String,
    ingest_time_us: i64,
    normalized_time_us: i64,
    provider_sequence: Option<i64>,
}

impl TradeStore {
    /// Prepares the statements against `keyspace`.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        // An upsert of the same row with the same values: safe for the driver to retry.
        let insert = prepare(
            &session,
            format!("INSERT INTO {keyspace}.trades ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            "trades insert",
        )
        .await?;
        let select_day = prepare(
            &session,
            format!("SELECT {COLUMNS} FROM {keyspace}.trades WHERE instrument = ? AND day = ?"),
            "trades select",
        )
        .await?;
        let select_range = prepare(
            &session,
            format!("SELECT {COLUMNS} FROM {keyspace}.trades WHERE instrument = ? AND day = ? AND event_time_us >= ? AND event_time_us < ?"),
            "trades select range",
        )
        .await?;
        Ok(Self {
            session,
            insert,
            select_day,
            select_range,
        })
    }

    pub async fn insert(&self, trade: &Trade) -> Result<()> {
        self.session
            .execute_unpaged(&self.insert, row_of(trade)?)
            .await
            .map_err(|e| err("insert trade", e))?;
        Ok(())
    }

    /// Inserts trades of one `trades` partition (one instrument, one UTC day) in one unlogged
    /// batch: one request instead of one per trade, applied by the partition's replicas as one
    /// mutation. Keep batches small (see [`PARTITION_BATCH`]); trades of different partitions
    /// are refused.
    pub async fn insert_partition(&self, trades: &[&Trade]) -> Result<()> {
        let Some(first) = trades.first() else {
            return Ok(());
        };
        let day = epoch_day(first.event_time);
        if let Some(other) = trades
            .iter()
            .find(|t| t.instrument != first.instrument || epoch_day(t.event_time) != day)
        {
            return Err(Error::Cassandra(format!(
                "insert trades: {} at {} is not in the partition of {} at {}",
                other.instrument, other.event_time, first.instrument, first.event_time
            )));
        }
        let rows = trades
            .iter()
            .map(|t| row_of(t))
            .collect::<Result<Vec<_>>>()?;
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(self.insert.clone());
        }
        // Upserts of the same values: safe to retry.
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, rows)
            .await
            .map_err(|e| err("insert trades", e))?;
        Ok(())
    }

    /// Every trade of `instrument` on the UTC day containing `time`, newest first.
    pub async fn day(&self, instrument: &str, time: Micros) -> Result<Vec<Trade>> {
        let rows: Vec<TradeRow> = select(
            &self.session,
            &self.select_day,
            (instrument, day_of(time)?),
            "select trades",
        )
        .await?;
        trades_of(rows)
    }

    /// Every trade of `instrument` with `from <= event_time < to`, newest first: one partition
    /// read per UTC day the range touches.
    pub async fn range(&self, instrument: &str, from: Micros, to: Micros) -> Result<Vec<Trade>> {
        let mut trades = Vec::new();
        if from >= to {
            return Ok(trades);
        }
        let mut day = epoch_day(from);
        while day <= epoch_day(to - 1) {
            let rows: Vec<TradeRow> = select(
                &self.session,
                &self.select_range,
                (instrument, day_of(day * MICROS_PER_DAY)?, from, to),
                "select trades range",
            )
            .await?;
            trades.extend(trades_of(rows)?);
            day += 1;
        }
        Ok(trades)
    }
}

/// The default TTL of the `trades` table (V001): older trades are gone, and windows older than
/// that cannot be recomputed from them.
pub const TRADES_TTL: Micros = 30 * MICROS_PER_DAY;

fn trades_of(rows: Vec<TradeRow>) -> Result<Vec<Trade>> {
    let mut trades = Vec::new();
    for r in rows {
        trades.push(Trade {
            price: from_cql_decimal(&r.price)?,
            size: from_cql_decimal(&r.size)?,
            side: r.side.parse()?,
            asset_class: r.asset_class.parse()?,
            instrument: r.instrument,
            event_time: r.event_time_us,
            exchange: r.exchange,
            provider: r.provider,
            trade_id: r.trade_id,
            base: r.base,
            quote: r.quote,
            provider_symbol: r.provider_symbol,
            ingest_time: r.ingest_time_us,
            normalized_time: r.normalized_time_us,
            provider_sequence: r.provider_sequence,
        });
    }
    Ok(trades)
}

/// How many trades [`TradeStore::insert_partition`] callers put in one batch: about 4 KB of
/// rows, under Cassandra's batch size warning (`batch_size_warn_threshold`, 5 KiB by default).
pub const PARTITION_BATCH: usize = 16;

fn row_of(trade: &Trade) -> Result<TradeRow> {
    Ok(TradeRow {
        instrument: trade.instrument.clone(),
        day: day_of(trade.event_time)?,
        event_time_us: trade.event_time,
        exchange: trade.exchange.clone(),
        provider: trade.provider.clone(),
        trade_id: trade.trade_id.clone(),
        event_time: CqlTimestamp(trade.event_time.div_euclid(1000)),
        price: to_cql_decimal(&trade.price),
        size: to_cql_decimal(&trade.size),
        side: trade.side.as_str().to_string(),
        base: trade.base.clone(),
        quote: trade.quote.clone(),
        asset_class: trade.asset_class.as_str().to_string(),
        provider_symbol: trade.provider_symbol.clone(),
        ingest_time_us: trade.ingest_time,
        normalized_time_us: trade.normalized_time,
        provider_sequence: trade.provider_sequence,
    })
}
