//! The fair-price service's results: `FairPrice` (md.fairprice, Cassandra `fair_prices`) and
//! `Anomaly` (md.anomalies, Cassandra `anomalies`), with their Avro form (the schemas are in
//! `shared/schemas/`, with every topic's) and [`FairPriceCodec`], their registry wire format.
//!
//! Prices and volumes are exact decimals; dispersion and confidence are statistics (`f64`).

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use apache_avro::types::Value;
use rust_decimal::Decimal;
use serde::Serialize;
use tickflow_shared::avro::{decimal_value, AvroCodec, Fields};
use tickflow_shared::domain::Micros;
use tickflow_shared::{Error, Result};

/// How the sources' trades become one price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The volume-weighted median of every trade of the used sources in the lookback (default).
    VwMedian,
    /// The median of the used sources' last prices.
    Median,
    /// Σ price × size / Σ size over every trade of the used sources in the lookback.
    Vwap,
    /// The mean of the used sources' last prices after dropping a share at each end.
    TrimmedMean,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::VwMedian,
        Method::Median,
        Method::Vwap,
        Method::TrimmedMean,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Method::VwMedian => "vw_median",
            Method::Median => "median",
            Method::Vwap => "vwap",
            Method::TrimmedMean => "trimmed_mean",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::Avro(format!("unknown fair-price method {s:?}")))
    }
}

/// Why a source did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Exclusion {
    /// No trade within the staleness limit.
    Stale,
    /// Too far from the cross-source median.
    Outlier,
}

impl Exclusion {
    pub const fn as_str(self) -> &'static str {
        match self {
            Exclusion::Stale => "STALE",
            Exclusion::Outlier => "OUTLIER",
        }
    }
}

impl FromStr for Exclusion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "STALE" => Ok(Exclusion::Stale),
            "OUTLIER" => Ok(Exclusion::Outlier),
            other => Err(Error::Avro(format!("unknown exclusion reason {other:?}"))),
        }
    }
}

/// A source that contributed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceUsed {
    pub provider: String,
    pub exchange: String,
    /// The source's last trade price at or before the fair price's instant.
    pub price: Decimal,
    /// The source's traded size within the lookback.
    pub volume: Decimal,
    pub last_event_time: Micros,
}

/// A source that did not contribute, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceExcluded {
    pub provider: String,
    pub exchange: String,
    pub reason: Exclusion,
    pub detail: String,
}

/// Why a fair price was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Change,
    Heartbeat,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Change => "change",
            Trigger::Heartbeat => "heartbeat",
        }
    }
}

/// One instrument's fair price as of an instant of event time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FairPrice {
    pub instrument: String,
    /// `None` when no source is usable (then `stale` is set).
    pub price: Option<Decimal>,
    pub method: Method,
    pub sources_used: Vec<SourceUsed>,
    pub sources_excluded: Vec<SourceExcluded>,
    /// (max − min) / price over the used sources' prices; 0 with one source.
    pub dispersion: f64,
    /// 0..1: more agreeing sources → closer to 1.
    pub confidence: f64,
    pub lookback_volume: Decimal,
    pub newest_event_time: Option<Micros>,
    /// The event-time instant this price is as of.
    pub computed_at: Micros,
    pub stale: bool,
    pub trigger: Trigger,
}

impl FairPrice {
    /// The same result, ignoring why and when it was published: what "changed" compares.
    pub fn same_result(&self, other: &FairPrice) -> bool {
        self.price == other.price
            && self.stale == other.stale
            && self.sources_used.len() == other.sources_used.len()
            && self
                .sources_used
                .iter()
                .zip(&other.sources_used)
                .all(|(a, b)| a.provider == b.provider && a.exchange == b.exchange)
            && self.sources_excluded.len() == other.sources_excluded.len()
            && self
                .sources_excluded
                .iter()
                .zip(&other.sources_excluded)
                .all(|(a, b)| {
                    a.provider == b.provider && a.exchange == b.exchange && a.reason == b.reason
                })
    }
}

/// What kind of data-quality event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnomalyKind {
    NoData,
    PriceDivergence,
    RateDrop,
    Recovered,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 4] = [
        AnomalyKind::NoData,
        AnomalyKind::PriceDivergence,
        AnomalyKind::RateDrop,
        AnomalyKind::Recovered,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::NoData => "NO_DATA",
            AnomalyKind::PriceDivergence => "PRICE_DIVERGENCE",
            AnomalyKind::RateDrop => "RATE_DROP",
            AnomalyKind::Recovered => "RECOVERED",
        }
    }
}

impl FromStr for AnomalyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AnomalyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::Avro(format!("unknown anomaly kind {s:?}")))
    }
}

/// Scope value meaning "not about one provider / exchange / instrument".
pub const ANY: &str = "*";

/// A data-quality event. `RECOVERED` names the kind that cleared in `detail`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub provider: String,
    pub exchange: String,
    pub instrument: String,
    pub observed: f64,
    pub threshold: f64,
    pub detail: String,
    pub started_at: Micros,
    pub detected_at: Micros,
}

pub fn fair_price_to_value(fp: &FairPrice) -> Result<Value> {
    let used = fp
        .sources_used
        .iter()
        .map(|s| {
            Ok(Value::Record(vec![
                ("provider".into(), Value::String(s.provider.clone())),
                ("exchange".into(), Value::String(s.exchange.clone())),
                ("price".into(), decimal_value(&s.price)?),
                ("volume".into(), decimal_value(&s.volume)?),
                (
                    "last_event_time".into(),
                    Value::TimestampMicros(s.last_event_time),
                ),
            ]))
        })
        .collect::<Result<Vec<_>>>()?;
    let excluded = fp
        .sources_excluded
        .iter()
        .map(|s| {
            Value::Record(vec![
                ("provider".into(), Value::String(s.provider.clone())),
                ("exchange".into(), Value::String(s.exchange.clone())),
                ("reason".into(), Value::String(s.reason.as_str().into())),
                ("detail".into(), Value::String(s.detail.clone())),
            ])
        })
        .collect();
    let price = match &fp.price {
        Some(p) => Value::Union(1, Box::new(decimal_value(p)?)),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let newest = match fp.newest_event_time {
        Some(t) => Value::Union(1, Box::new(Value::TimestampMicros(t))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    Ok(Value::Record(vec![
        ("instrument".into(), Value::String(fp.instrument.clone())),
        ("price".into(), price),
        ("method".into(), Value::String(fp.method.as_str().into())),
        ("sources_used".into(), Value::Array(used)),
        ("sources_excluded".into(), Value::Array(excluded)),
        ("dispersion".into(), Value::Double(fp.dispersion)),
        ("confidence".into(), Value::Double(fp.confidence)),
        (
            "lookback_volume".into(),
            decimal_value(&fp.lookback_volume)?,
        ),
        ("newest_event_time".into(), newest),
        ("computed_at".into(), Value::TimestampMicros(fp.computed_at)),
        ("stale".into(), Value::Boolean(fp.stale)),
        ("trigger".into(), Value::String(fp.trigger.as_str().into())),
    ]))
}

pub fn fair_price_from_value(value: Value) -> Result<FairPrice> {
    let mut f = Fields::of(value, "FairPrice")?;
    let mut sources_used = Vec::new();
    for item in f.array("sources_used")? {
        let mut s = Fields::of(item, "SourceUsed")?;
        sources_used.push(SourceUsed {
            provider: s.string("provider")?,
            exchange: s.string("exchange")?,
            price: s.decimal("price")?,
            volume: s.decimal("volume")?,
            last_event_time: s.long("last_event_time")?,
        });
    }
    let mut sources_excluded = Vec::new();
    for item in f.array("sources_excluded")? {
        let mut s = Fields::of(item, "SourceExcluded")?;
        sources_excluded.push(SourceExcluded {
            provider: s.string("provider")?,
            exchange: s.string("exchange")?,
            reason: s.string("reason")?.parse()?,
            detail: s.string("detail")?,
        });
    }
    Ok(FairPrice {
        instrument: f.string("instrument")?,
        price: f.opt_decimal("price")?,
        method: f.string("method")?.parse()?,
        sources_used,
        sources_excluded,
        dispersion: f.double("dispersion")?,
        confidence: f.double("confidence")?,
        lookback_volume: f.decimal("lookback_volume")?,
        newest_event_time: f.opt_long("newest_event_time")?,
        computed_at: f.long("computed_at")?,
        stale: f.boolean("stale")?,
        trigger: match f.string("trigger")?.as_str() {
            "heartbeat" => Trigger::Heartbeat,
            _ => Trigger::Change,
        },
    })
}

pub fn anomaly_to_value(a: &Anomaly) -> Value {
    Value::Record(vec![
        ("kind".into(), Value::String(a.kind.as_str().into())),
        ("provider".into(), Value::String(a.provider.clone())),
        ("exchange".into(), Value::String(a.exchange.clone())),
        ("instrument".into(), Value::String(a.instrument.clone())),
        ("observed".into(), Value::Double(a.observed)),
        ("threshold".into(), Value::Double(a.threshold)),
        ("detail".into(), Value::String(a.detail.clone())),
        ("started_at".into(), Value::TimestampMicros(a.started_at)),
        ("detected_at".into(), Value::TimestampMicros(a.detected_at)),
    ])
}

pub fn anomaly_from_value(value: Value) -> Result<Anomaly> {
    let mut f = Fields::of(value, "Anomaly")?;
    Ok(Anomaly {
        kind: f.string("kind")?.parse()?,
        provider: f.string("provider")?,
        exchange: f.string("exchange")?,
        instrument: f.string("instrument")?,
        observed: f.double("observed")?,
        threshold: f.double("threshold")?,
        detail: f.string("detail")?,
        started_at: f.long("started_at")?,
        detected_at: f.long("detected_at")?,
    })
}

/// The fair-price records in the registry's wire format, beside the codec's shared records.
pub trait FairPriceCodec {
    fn encode_fair_price(
        &self,
        topic: &str,
        fp: &FairPrice,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;
    fn decode_fair_price(&self, bytes: &[u8]) -> impl Future<Output = Result<FairPrice>> + Send;
    fn encode_anomaly(
        &self,
        topic: &str,
        a: &Anomaly,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;
    fn decode_anomaly(&self, bytes: &[u8]) -> impl Future<Output = Result<Anomaly>> + Send;
}

impl FairPriceCodec for AvroCodec {
    async fn encode_fair_price(&self, topic: &str, fp: &FairPrice) -> Result<Vec<u8>> {
        self.encode(topic, fair_price_to_value(fp)?).await
    }

    async fn decode_fair_price(&self, bytes: &[u8]) -> Result<FairPrice> {
        fair_price_from_value(self.decode(bytes).await?)
    }

    async fn encode_anomaly(&self, topic: &str, a: &Anomaly) -> Result<Vec<u8>> {
        self.encode(topic, anomaly_to_value(a)).await
    }

    async fn decode_anomaly(&self, bytes: &[u8]) -> Result<Anomaly> {
        anomaly_from_value(self.decode(bytes).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;
    use tickflow_shared::avro::{ANOMALY, FAIR_PRICE};
    use tickflow_shared::domain::parse_decimal;

    /// Writes `value` with `schema` and reads it back.
    fn round_trip(schema: &Schema, value: Value) -> Value {
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut body.as_slice())
            .unwrap()
    }

    #[test]
    fn fair_price_round_trips_through_avro_bytes() {
        let schema = FAIR_PRICE.parse().unwrap();
        let d = |t: &str| parse_decimal(t).unwrap();
        let fp = FairPrice {
            instrument: "BTC-USD".into(),
            price: Some(d("67000.125")),
            method: Method::VwMedian,
            sources_used: vec![SourceUsed {
                provider: "kraken".into(),
                exchange: "kraken".into(),
                price: d("67000.125"),
                volume: d("1.5"),
                last_event_time: 1_763_769_600_000_001,
            }],
            sources_excluded: vec![SourceExcluded {
                provider: "sim".into(),
                exchange: "sim-c".into(),
                reason: Exclusion::Outlier,
                detail: "6.1% from the median".into(),
            }],
            dispersion: 0.0,
            confidence: 0.33,
            lookback_volume: d("1.5"),
            newest_event_time: Some(1_763_769_600_000_001),
            computed_at: 1_763_769_600_000_001,
            stale: false,
            trigger: Trigger::Heartbeat,
        };
        let back = fair_price_from_value(round_trip(&schema, fair_price_to_value(&fp).unwrap()));
        assert_eq!(back.unwrap(), fp);
        let stale = FairPrice {
            price: None,
            newest_event_time: None,
            sources_used: vec![],
            stale: true,
            trigger: Trigger::Change,
            ..fp
        };
        let back = fair_price_from_value(round_trip(&schema, fair_price_to_value(&stale).unwrap()));
        assert_eq!(back.unwrap(), stale);
    }

    #[test]
    fn anomaly_round_trips_through_avro_bytes() {
        let schema = ANOMALY.parse().unwrap();
        let a = Anomaly {
            kind: AnomalyKind::PriceDivergence,
            provider: "sim".into(),
            exchange: "sim-c".into(),
            instrument: "BTC-USD".into(),
            observed: 6.02,
            threshold: 2.0,
            detail: "above the fair price".into(),
            started_at: 1,
            detected_at: 2,
        };
        assert_eq!(
            anomaly_from_value(round_trip(&schema, anomaly_to_value(&a))).unwrap(),
            a
        );
    }
}
