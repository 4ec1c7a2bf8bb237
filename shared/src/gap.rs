//! A gap: trades a provider printed and tickflow did not receive, as the normalizer publishes it
//! on `md.gaps` (Avro `Gap`, `shared/schemas/gap.avsc`) and the gateway's backfill reads it.

use apache_avro::types::Value;

use crate::avro::Fields;
use crate::domain::Micros;
use crate::Result;

/// The RawEnvelope channel of the gateway's word that trades of a gap can no longer be fetched:
/// a frame keyed by the symbol (so it follows the backfilled trades in their partition) whose
/// payload is an [`Unrecoverable`] in JSON. The normalizer closes the gap with it.
pub const UNRECOVERABLE_CHANNEL: &str = "backfill-unrecoverable";

/// Trades `first..=last` of `symbol` that the provider no longer serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unrecoverable {
    pub symbol: String,
    pub first: u64,
    pub last: u64,
}

/// A record of the gaps topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRecord {
    pub provider: String,
    pub exchange: String,
    pub symbol: String,
    pub instrument: String,
    pub first_missing: i64,
    pub last_missing: i64,
    /// The event time of the trade before the gap: where a provider whose REST API pages by
    /// time (Kraken) starts looking. 0 in records written before the field existed.
    pub after_time: Micros,
    /// `OPEN`, `FILLED` or `DROPPED`.
    pub status: String,
    pub still_missing: i64,
    /// `connection` or `reconnect`.
    pub found: String,
    pub reason: String,
    /// `<topic>/<partition>@<offset>` of the raw record that caused it.
    pub source: String,
    pub at: Micros,
}

impl GapRecord {
    /// `OPEN`: found; `FILLED`: every missing trade arrived; `DROPPED`: no longer tracked.
    pub const OPEN: &str = "OPEN";

    /// The Kafka key: `<provider>/<symbol>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.provider, self.symbol)
    }

    pub fn to_value(&self) -> Value {
        let s = |v: &str| Value::String(v.to_string());
        Value::Record(vec![
            ("provider".into(), s(&self.provider)),
            ("exchange".into(), s(&self.exchange)),
            ("symbol".into(), s(&self.symbol)),
            ("instrument".into(), s(&self.instrument)),
            ("first_missing".into(), Value::Long(self.first_missing)),
            ("last_missing".into(), Value::Long(self.last_missing)),
            ("status".into(), s(&self.status)),
            ("still_missing".into(), Value::Long(self.still_missing)),
            ("found".into(), s(&self.found)),
            ("reason".into(), s(&self.reason)),
            ("source".into(), s(&self.source)),
            ("at".into(), Value::TimestampMicros(self.at)),
            ("after_time".into(), Value::TimestampMicros(self.after_time)),
        ])
    }

    pub fn from_value(value: Value) -> Result<Self> {
        let mut f = Fields::of(value, "Gap")?;
        Ok(Self {
            provider: f.string("provider")?,
            exchange: f.string("exchange")?,
            symbol: f.string("symbol")?,
            instrument: f.string("instrument")?,
            first_missing: f.long("first_missing")?,
            last_missing: f.long("last_missing")?,
            status: f.string("status")?,
            still_missing: f.long("still_missing")?,
            found: f.string("found")?,
            reason: f.string("reason")?,
            source: f.string("source")?,
            at: f.long("at")?,
            after_time: f.long_or("after_time", 0)?,
        })
    }
}
