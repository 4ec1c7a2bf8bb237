//! The fair-price tables: `fair_prices` (history), `fair_price_latest` (one partition, every
//! instrument) and `anomalies`. Every write is an idempotent upsert keyed by the result's identity;
//! the latest row is written with `USING TIMESTAMP computed_at_us`, so an older price arriving
//! late (a replay, a slow retry) never replaces a newer one.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDecimal, CqlTimestamp};

use tickflow_shared::cassandra::{day_of, err, from_cql_decimal, prepare, select, to_cql_decimal};
use tickflow_shared::domain::Micros;
use tickflow_shared::Result;

use crate::records::{Anomaly, FairPrice};

const FP_COLUMNS: &str = "computed_at_us, computed_at, price, method, sources_used, \
    sources_excluded, dispersion, confidence, lookback_volume, newest_event_us, stale, trigger, detail";

/// The columns both fair-price tables share, in `FP_COLUMNS` order.
#[derive(Debug, scylla::DeserializeRow)]
struct FairPriceCols {
    instrument: String,
    computed_at_us: i64,
    computed_at: CqlTimestamp,
    price: Option<CqlDecimal>,
    method: String,
    sources_used: i32,
    sources_excluded: i32,
    dispersion: f64,
    confidence: f64,
    lookback_volume: CqlDecimal,
    newest_event_us: Option<i64>,
    stale: bool,
    trigger: String,
    detail: String,
}

/// A fair price as a table row: the figures, and the sources as JSON in `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct FairPriceRow {
    pub instrument: String,
    pub computed_at: Micros,
    pub price: Option<rust_decimal::Decimal>,
    pub method: String,
    pub sources_used: i32,
    pub sources_excluded: i32,
    pub stale: bool,
    pub trigger: String,
    pub detail: String,
}

fn cols(fp: &FairPrice) -> Result<FairPriceCols> {
    let detail = serde_json::json!({
        "used": fp.sources_used,
        "excluded": fp.sources_excluded,
    });
    Ok(FairPriceCols {
        instrument: fp.instrument.clone(),
        computed_at_us: fp.computed_at,
        computed_at: CqlTimestamp(fp.computed_at.div_euclid(1000)),
        price: fp.price.as_ref().map(to_cql_decimal),
        method: fp.method.as_str().into(),
        sources_used: i32::try_from(fp.sources_used.len()).unwrap_or(i32::MAX),
        sources_excluded: i32::try_from(fp.sources_excluded.len()).unwrap_or(i32::MAX),
        dispersion: fp.dispersion,
        confidence: fp.confidence,
        lookback_volume: to_cql_decimal(&fp.lookback_volume),
        newest_event_us: fp.newest_event_time,
        stale: fp.stale,
        trigger: fp.trigger.as_str().into(),
        detail: detail.to_string(),
    })
}

fn row(c: FairPriceCols) -> Result<FairPriceRow> {
    Ok(FairPriceRow {
        instrument: c.instrument,
        computed_at: c.computed_at_us,
        price: c.price.as_ref().map(from_cql_decimal).transpose()?,
        method: c.method,
        sources_used: c.sources_used,
        sources_excluded: c.sources_excluded,
        stale: c.stale,
        trigger: c.trigger,
        detail: c.detail,
    })
}

#[derive(Clone)]
pub struct FairPriceStore {
    session: Arc<Session>,
    upsert_history: PreparedStatement,
    upsert_latest: PreparedStatement,
    insert_anomaly: PreparedStatement,
    select_day: PreparedStatement,
    select_latest: PreparedStatement,
    select_anomalies: PreparedStatement,
}

impl FairPriceStore {
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        let n = FP_COLUMNS.split(',').count();
        let marks = |extra: usize| vec!["?"; n + extra].join(", ");
        let upsert_history = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.fair_prices (instrument, day, {FP_COLUMNS}) VALUES ({})",
                marks(2)
            ),
            "fair_prices upsert",
        )
        .await?;
        let upsert_latest = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.fair_price_latest (shard, instrument, {FP_COLUMNS}) VALUES ({}) USING TIMESTAMP ?",
                marks(2)
            ),
            "fair_price_latest upsert",
        )
        .await?;
        let insert_anomaly = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.anomalies (day, detected_at_us, kind, provider, exchange, \
                 instrument, detected_at, started_at, observed, threshold, detail) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            "anomalies insert",
        )
        .await?;
        let select_day = prepare(
            &session,
            format!("SELECT instrument, {FP_COLUMNS} FROM {keyspace}.fair_prices WHERE instrument = ? AND day = ?"),
            "fair_prices select",
        )
        .await?;
        let select_latest = prepare(
            &session,
            format!(
                "SELECT instrument, {FP_COLUMNS} FROM {keyspace}.fair_price_latest WHERE shard = 0"
            ),
            "fair_price_latest select",
        )
        .await?;
        let select_anomalies = prepare(
            &session,
            format!(
                "SELECT kind, provider, exchange, instrument, detected_at_us, started_at, observed, \
                 threshold, detail FROM {keyspace}.anomalies WHERE day = ?"
            ),
            "anomalies select",
        )
        .await?;
        Ok(Self {
            session,
            upsert_history,
            upsert_latest,
            insert_anomaly,
            select_day,
            select_latest,
            select_anomalies,
        })
    }

    /// Writes a fair price to the history and, if it is the newest, to the latest table.
    pub async fn upsert(&self, fp: &FairPrice) -> Result<()> {
        let c = cols(fp)?;
        let day = day_of(fp.computed_at)?;
        // Tuples bind by position, in FP_COLUMNS order.
        self.session
            .execute_unpaged(
                &self.upsert_history,
                (
                    &fp.instrument,
                    day,
                    c.computed_at_us,
                    c.computed_at,
                    &c.price,
                    &c.method,
                    c.sources_used,
                    c.sources_excluded,
                    c.dispersion,
                    c.confidence,
                    &c.lookback_volume,
                    c.newest_event_us,
                    c.stale,
                    &c.trigger,
                    &c.detail,
                ),
            )
            .await
            .map_err(|e| err("upsert fair price", e))?;
        self.session
            .execute_unpaged(
                &self.upsert_latest,
                (
                    0i32,
                    &fp.instrument,
                    c.computed_at_us,
                    c.computed_at,
                    &c.price,
                    &c.method,
                    c.sources_used,
                    c.sources_excluded,
                    c.dispersion,
                    c.confidence,
                    &c.lookback_volume,
                    c.newest_event_us,
                    c.stale,
                    &c.trigger,
                    &c.detail,
                    fp.computed_at,
                ),
            )
            .await
            .map_err(|e| err("upsert latest fair price", e))?;
        Ok(())
    }

    pub async fn insert_anomaly(&self, a: &Anomaly) -> Result<()> {
        self.session
            .execute_unpaged(
                &self.insert_anomaly,
                (
                    day_of(a.detected_at)?,
                    a.detected_at,
                    a.kind.as_str(),
                    &a.provider,
                    &a.exchange,
                    &a.instrument,
                    CqlTimestamp(a.detected_at.div_euclid(1000)),
                    CqlTimestamp(a.started_at.div_euclid(1000)),
                    a.observed,
                    a.threshold,
                    &a.detail,
                ),
            )
            .await
            .map_err(|e| err("insert anomaly", e))?;
        Ok(())
    }

    /// Every fair price of `instrument` in the UTC day containing `time`, newest first.
    pub async fn day(&self, instrument: &str, time: Micros) -> Result<Vec<FairPriceRow>> {
        let rows: Vec<FairPriceCols> = select(
            &self.session,
            &self.select_day,
            (instrument, day_of(time)?),
            "select fair prices",
        )
        .await?;
        rows.into_iter().map(row).collect()
    }

    /// The latest fair price of every instrument.
    pub async fn latest(&self) -> Result<Vec<FairPriceRow>> {
        let rows: Vec<FairPriceCols> =
            select(&self.session, &self.select_latest, (), "select latest").await?;
        rows.into_iter().map(row).collect()
    }

    /// (kind, provider, exchange, instrument, detected_at) of the anomalies of the UTC day
    /// containing `time`.
    pub async fn anomalies(
        &self,
        time: Micros,
    ) -> Result<Vec<(String, String, String, String, Micros)>> {
        #[derive(scylla::DeserializeRow)]
        #[allow(dead_code)]
        struct A {
            kind: String,
            provider: String,
            exchange: String,
            instrument: String,
            detected_at_us: i64,
            started_at: CqlTimestamp,
            observed: f64,
            threshold: f64,
            detail: String,
        }
        let rows: Vec<A> = select(
            &self.session,
            &self.select_anomalies,
            (day_of(time)?,),
            "select anomalies",
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|a| {
                (
                    a.kind,
                    a.provider,
                    a.exchange,
                    a.instrument,
                    a.detected_at_us,
                )
            })
            .collect())
    }
}
