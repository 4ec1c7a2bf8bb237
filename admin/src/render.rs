//! How `tickflow-admin read` shows a record: Avro values, decoded with the writer schema the
//! registry gives for the id in the record, become a tree that keeps the schema's field order,
//! decimals exact (as text) and times as integer microseconds; bytes that are UTF-8 (a provider's
//! frame inside a RawEnvelope, a gateway dead letter) become text. Rendered as one JSON object per
//! line or as one compact table line. Pure, so it is tested without a broker.

use apache_avro::schema::{NamesRef, Schema};
use apache_avro::types::Value;
use serde_json::json;
use tickflow_shared::domain::decimal_from_avro_bytes;

/// A value as shown: the Avro value with what its schema says about it applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// An exact decimal, already scaled.
    Decimal(String),
    /// A timestamp logical type, in microseconds since the epoch.
    Micros(i64),
    /// Bytes that are not UTF-8 (UTF-8 bytes become [`Node::Text`]).
    Bytes(Vec<u8>),
    List(Vec<Node>),
    /// A record or map: fields in schema order.
    Fields(Vec<(String, Node)>),
}

/// Bytes as text when they are UTF-8, which every provider frame tickflow handles is.
pub fn bytes_node(bytes: &[u8]) -> Node {
    match std::str::from_utf8(bytes) {
        Ok(text) => Node::Text(text.to_string()),
        Err(_) => Node::Bytes(bytes.to_vec()),
    }
}

/// `value` read with its writer `schema` (`names` resolves named references inside it).
pub fn node(value: &Value, schema: Option<&Schema>, names: &NamesRef<'_>) -> Node {
    let schema = match schema {
        Some(Schema::Ref { name }) => names.get(name).copied(),
        other => other,
    };
    match value {
        Value::Null => Node::Null,
        Value::Boolean(b) => Node::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Node::Int(i64::from(*i)),
        Value::Long(i) | Value::TimeMicros(i) => Node::Int(*i),
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => Node::Micros(*us),
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            Node::Micros(ms.saturating_mul(1000))
        }
        Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => Node::Micros(ns / 1000),
        Value::Float(f) => Node::Float(f64::from(*f)),
        Value::Double(f) => Node::Float(*f),
        Value::String(s) | Value::Enum(_, s) => Node::Text(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => bytes_node(b),
        Value::Decimal(d) => {
            let bytes = <Vec<u8>>::try_from(d).unwrap_or_default();
            match schema {
                Some(Schema::Decimal(ds)) => {
                    let scale = u32::try_from(ds.scale).unwrap_or(u32::MAX);
                    match decimal_from_avro_bytes(&bytes, scale) {
                        Ok(d) => Node::Decimal(d.to_string()),
                        Err(_) => Node::Bytes(bytes),
                    }
                }
                _ => Node::Bytes(bytes),
            }
        }
        Value::Union(i, inner) => {
            let variant = match schema {
                Some(Schema::Union(u)) => {
                    usize::try_from(*i).ok().and_then(|i| u.variants().get(i))
                }
                _ => None,
            };
            node(inner, variant, names)
        }
        Value::Array(items) => {
            let item = match schema {
                Some(Schema::Array(a)) => Some(a.items.as_ref()),
                _ => None,
            };
            Node::List(items.iter().map(|v| node(v, item, names)).collect())
        }
        Value::Map(entries) => {
            let item = match schema {
                Some(Schema::Map(m)) => Some(m.types.as_ref()),
                _ => None,
            };
            let mut fields: Vec<(String, Node)> = entries
                .iter()
                .map(|(k, v)| (k.clone(), node(v, item, names)))
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Node::Fields(fields)
        }
        Value::Record(fields) => {
            let record = match schema {
                Some(Schema::Record(r)) => Some(r),
                _ => None,
            };
            Node::Fields(
                fields
                    .iter()
                    .map(|(name, v)| {
                        let field =
                            record.and_then(|r| r.lookup.get(name).and_then(|i| r.fields.get(*i)));
                        (name.clone(), node(v, field.map(|f| &f.schema), names))
                    })
                    .collect(),
            )
        }
        Value::BigDecimal(d) => Node::Decimal(d.to_string()),
        Value::Uuid(u) => Node::Text(u.to_string()),
        other => Node::Text(format!("{other:?}")),
    }
}

impl Node {
    /// A top-level field of a record.
    pub fn field(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Fields(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Node::Text(t) => Some(t),
            _ => None,
        }
    }

    /// JSON: decimals as strings (exact), times as integer microseconds, non-UTF-8 bytes as
    /// `{"hex": "…"}`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Null => serde_json::Value::Null,
            Node::Bool(b) => json!(b),
            Node::Int(i) | Node::Micros(i) => json!(i),
            Node::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| json!(f.to_string())),
            Node::Text(t) | Node::Decimal(t) => json!(t),
            Node::Bytes(b) => json!({ "hex": hex(b) }),
            Node::List(items) => items.iter().map(Node::to_json).collect(),
            Node::Fields(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// One line of text: `name=value` pairs in schema order, times in RFC 3339, text quoted
    /// only when it has spaces, quotes or control characters.
    pub fn compact(&self) -> String {
        match self {
            Node::Null => "null".into(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::Float(f) => f.to_string(),
            Node::Micros(us) => rfc3339_micros(*us),
            Node::Text(t) => quoted(t),
            Node::Decimal(d) => d.clone(),
            Node::Bytes(b) => format!("0x{}", hex(b)),
            Node::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Node::compact)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Node::Fields(fields) => fields
                .iter()
                .map(|(k, v)| match v {
                    Node::Fields(_) => format!("{k}={{{}}}", v.compact()),
                    _ => format!("{k}={}", v.compact()),
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Text as it is, or Rust-quoted when it would be ambiguous in a space-separated line.
pub fn quoted(text: &str) -> String {
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        format!("{text:?}")
    } else {
        text.to_string()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2025-11-22T00:00:00.123457Z`; the number itself when it is outside chrono's range.
pub fn rfc3339_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| us.to_string())
}

/// `2025-11-22T00:00:00.123Z`, for Kafka's millisecond record timestamps.
pub fn rfc3339_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// What a record's value turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// No value: a tombstone on a compacted topic (an instrument removed).
    Tombstone,
    /// A value in the Confluent wire format, decoded with its registered writer schema.
    Avro {
        schema: String,
        schema_id: u32,
        value: Node,
    },
    /// Anything else, shown as text when it is UTF-8; `note` says why it is not Avro when it
    /// looked like it.
    Plain { value: Node, note: Option<String> },
}

/// One record as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Node>,
    /// In the order the producer added them (dead letters carry their reason here).
    pub headers: Vec<(String, Option<Node>)>,
    pub payload: Payload,
}

impl Shown {
    /// The decoded value, whatever it was.
    pub fn value(&self) -> Option<&Node> {
        match &self.payload {
            Payload::Tombstone => None,
            Payload::Avro { value, .. } | Payload::Plain { value, .. } => Some(value),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref()?.as_text())
    }

    pub fn key_text(&self) -> Option<&str> {
        self.key.as_ref()?.as_text()
    }

    /// One JSON object (a line of `--json` output).
    pub fn to_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref()
                        .map(Node::to_json)
                        .unwrap_or(serde_json::Value::Null),
                )
            })
            .collect();
        let (schema, schema_id, value, note) = match &self.payload {
            Payload::Tombstone => (None, None, serde_json::Value::Null, None),
            Payload::Avro {
                schema,
                schema_id,
                value,
            } => (
                Some(schema.as_str()),
                Some(*schema_id),
                value.to_json(),
                None,
            ),
            Payload::Plain { value, note } => (None, None, value.to_json(), note.as_deref()),
        };
        let mut out = json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key.as_ref().map(Node::to_json),
            "headers": headers,
            "schema": schema,
            "schema_id": schema_id,
            "value": value,
        });
        if let (Some(note), Some(map)) = (note, out.as_object_mut()) {
            map.insert("decode_error".into(), json!(note));
        }
        out
    }

    /// One table line: `partition:offset  time  key  [headers]  Schema fields…`.
    pub fn to_line(&self) -> String {
        let time = self
            .timestamp_ms
            .map(rfc3339_millis)
            .unwrap_or_else(|| "-".into());
        let key = self
            .key
            .as_ref()
            .map(Node::compact)
            .unwrap_or_else(|| "-".into());
        let mut line = format!("{}:{}  {time}  {key}", self.partition, self.offset);
        if !self.headers.is_empty() {
            let headers: Vec<String> = self
                .headers
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={}", v.compact()),
                    None => k.clone(),
                })
                .collect();
            line.push_str(&format!("  [{}]", headers.join(" ")));
        }
        match &self.payload {
            Payload::Tombstone => line.push_str("  (tombstone)"),
            Payload::Avro { schema, value, .. } => {
                let short = schema.rsplit('.').next().unwrap_or(schema);
                line.push_str(&format!("  {short} {}", value.compact()));
            }
            Payload::Plain { value, note } => {
                line.push_str(&format!("  {}", value.compact()));
                if let Some(note) = note {
                    line.push_str(&format!("  (not decoded: {note})"));
                }
            }
        }
        line
    }
}

/// Which records `read` shows. Every given filter must match; text compares without regard to
/// ASCII case.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// The value's `instrument` field.
    pub instrument: Option<String>,
    /// The value's `exchange` or `venue` field, or a fair price's sources.
    pub venue: Option<String>,
    /// The value's `provider` field, or a gateway dead letter's `tickflow.provider` header.
    pub provider: Option<String>,
    /// The record key.
    pub key: Option<String>,
}

fn same(a: Option<&str>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b))
}

impl Filter {
    pub fn matches(&self, record: &Shown) -> bool {
        let field = |name: &str| record.value().and_then(|v| v.field(name)?.as_text());
        if let Some(want) = &self.key {
            if !same(record.key_text(), want) {
                return false;
            }
        }
        if let Some(want) = &self.instrument {
            if !same(field("instrument"), want) {
                return false;
            }
        }
        if let Some(want) = &self.provider {
            if !same(field("provider"), want) && !same(record.header("tickflow.provider"), want) {
                return false;
            }
        }
        if let Some(want) = &self.venue {
            let in_sources = match record.value().and_then(|v| v.field("sources_used")) {
                Some(Node::List(sources)) => sources
                    .iter()
                    .any(|s| same(s.field("exchange").and_then(Node::as_text), want)),
                _ => false,
            };
            if !same(field("exchange"), want) && !same(field("venue"), want) && !in_sources {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema::ResolvedSchema;
    use tickflow_shared::avro::{self, raw_envelope_to_value, trade_to_value};
    use tickflow_shared::domain::RawEnvelope;
    use tickflow_testkit::sample_trade;

    fn shown(schema: &avro::SchemaDef, value: &Value) -> Shown {
        let parsed = schema.parse().unwrap();
        let resolved = ResolvedSchema::try_from(&parsed).unwrap();
        Shown {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            timestamp_ms: Some(1_763_769_600_123),
            key: Some(Node::Text("BTC-USD".into())),
            headers: vec![],
            payload: Payload::Avro {
                schema: schema.name.into(),
                schema_id: 3,
                value: node(value, Some(&parsed), resolved.get_names()),
            },
        }
    }

    #[test]
    fn a_trade_keeps_exact_decimals_and_integer_times() {
        let trade = sample_trade();
        let record = shown(&avro::TRADE, &trade_to_value(&trade).unwrap());
        let json = record.to_json();
        assert_eq!(json["value"]["price"], "67012.34");
        assert_eq!(json["value"]["size"], "0.000012345678");
        assert_eq!(json["value"]["side"], "BUY");
        assert_eq!(json["value"]["event_time"], 1_763_769_600_123_457_i64);
        assert_eq!(json["value"]["provider_sequence"], 8_812_345_678_i64);
        assert_eq!(json["schema"], "dev.tickflow.md.Trade");
        assert_eq!(json["key"], "BTC-USD");
        let line = record.to_line();
        assert!(
            line.starts_with("1:7  2025-11-22T00:00:00.123Z  BTC-USD  Trade instrument=BTC-USD "),
            "{line}"
        );
        assert!(
            line.contains(" price=67012.34 size=0.000012345678 side=BUY event_time=2025-11-22T00:00:00.123457Z "),
            "{line}"
        );
    }

    #[test]
    fn a_raw_frame_shows_its_payload_as_text() {
        let raw = RawEnvelope {
            provider: "kraken".into(),
            connection_id: "c-1".into(),
            sequence: 4,
            received_at: 1_763_769_600_000_001,
            channel: "trade".into(),
            payload: br#"{"channel":"trade","data":[]}"#.to_vec(),
        };
        let record = shown(&avro::RAW_ENVELOPE, &raw_envelope_to_value(&raw));
        assert_eq!(
            record.to_json()["value"]["payload"],
            r#"{"channel":"trade","data":[]}"#
        );
        assert!(record
            .to_line()
            .contains(r#"payload="{\"channel\":\"trade\",\"data\":[]}""#));
        let binary = bytes_node(&[0xff, 0x00]);
        assert_eq!(binary.to_json(), json!({"hex": "ff00"}));
    }

    #[test]
    fn filters_match_fields_headers_and_key() {
        let trade = sample_trade();
        let record = shown(&avro::TRADE, &trade_to_value(&trade).unwrap());
        let cases = [
            (Filter::default(), true),
            (filter(Some("btc-usd"), None, None, None), true),
            (filter(Some("ETH-USD"), None, None, None), false),
            (filter(None, Some("coinbase"), None, None), true),
            (filter(None, Some("kraken"), None, None), false),
            (filter(None, None, Some("coinbase"), None), true),
            (filter(None, None, None, Some("BTC-USD")), true),
            (filter(None, None, None, Some("ETH-USD")), false),
            (filter(Some("BTC-USD"), Some("kraken"), None, None), false),
        ];
        for (i, (f, want)) in cases.iter().enumerate() {
            assert_eq!(f.matches(&record), *want, "case {i}: {f:?}");
        }
        let dead = Shown {
            headers: vec![
                (
                    "tickflow.reason".into(),
                    Some(Node::Text("malformed".into())),
                ),
                (
                    "tickflow.provider".into(),
                    Some(Node::Text("binance".into())),
                ),
            ],
            payload: Payload::Plain {
                value: Node::Text("{not json".into()),
                note: None,
            },
            ..record
        };
        assert!(filter(None, None, Some("binance"), None).matches(&dead));
        assert!(!filter(Some("BTC-USD"), None, None, None).matches(&dead));
        assert_eq!(dead.to_json()["headers"]["tickflow.reason"], "malformed");
        assert!(
            dead.to_line()
                .ends_with("[tickflow.reason=malformed tickflow.provider=binance]  \"{not json\""),
            "{}",
            dead.to_line()
        );
    }

    fn filter(
        instrument: Option<&str>,
        venue: Option<&str>,
        provider: Option<&str>,
        key: Option<&str>,
    ) -> Filter {
        Filter {
            instrument: instrument.map(Into::into),
            venue: venue.map(Into::into),
            provider: provider.map(Into::into),
            key: key.map(Into::into),
        }
    }
}
