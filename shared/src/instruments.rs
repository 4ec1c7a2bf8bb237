//! Reference data: which instruments exist and what each provider calls them.
//!
//! The same list drives the gateway's subscriptions (canonical instrument → provider symbol) and
//! the normalizer's lookup (provider symbol → canonical instrument). It comes from a TOML file
//! (`config/instruments.toml`) and, live, from the compacted topic `md.instruments` (Avro
//! `Instrument`, key = instrument, a tombstone removes one).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use apache_avro::types::Value;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::avro::decimal_value;
use crate::domain::{decimal_from_avro_bytes, AssetClass, AVRO_DECIMAL_SCALE};
use crate::error::{Error, Result};

/// One provider's name for an instrument.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    /// Provider id: `binance`, `coinbase`, `kraken`, `finnhub`, `grpc`, `simulator`.
    pub provider: String,
    /// The symbol exactly as the provider writes it in its messages (`BTCUSDT`, `BTC/USD`).
    pub symbol: String,
    /// Venue of this provider's trades. Omit it when the provider names the venue in each
    /// message (the simulator) or is the venue itself (then the provider id is used).
    #[serde(default)]
    pub exchange: Option<String>,
}

/// An instrument and its listings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instrument {
    /// Canonical id, e.g. `BTC-USD`, `AAPL`: the Kafka key everywhere.
    pub instrument: String,
    pub base: String,
    pub quote: String,
    #[serde(deserialize_with = "asset_class_from_str")]
    pub asset_class: AssetClass,
    #[serde(default, deserialize_with = "decimal_from_str")]
    pub tick_size: Option<Decimal>,
    #[serde(default, deserialize_with = "decimal_from_str")]
    pub lot_size: Option<Decimal>,
    #[serde(default = "default_active")]
    pub active: bool,
    #[serde(default)]
    pub listings: Vec<Listing>,
}

fn default_active() -> bool {
    true
}

/// Tick and lot sizes are written as strings (`"0.01"`) and parsed exactly.
fn decimal_from_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Decimal>, D::Error> {
    let text = String::deserialize(d)?;
    crate::domain::parse_decimal(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn asset_class_from_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<AssetClass, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "asset_class {text:?}: expected CRYPTO, EQUITY, FX or OTHER"
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstrumentFile {
    #[serde(default)]
    instrument: Vec<Instrument>,
}

/// Parses an instruments file (`[[instrument]]` tables). Errors name the file and the field.
pub fn load_file(path: &Path) -> Result<Vec<Instrument>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
        path: path.into(),
        message: format!("cannot read: {e}"),
    })?;
    parse_toml(&text).map_err(|message| Error::ConfigFile {
        path: path.into(),
        message,
    })
}

/// Parses the text of an instruments file and checks it (see [`check`]).
pub fn parse_toml(text: &str) -> std::result::Result<Vec<Instrument>, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    let file: InstrumentFile = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| format!("at {}: {}", e.path(), e.inner()))?;
    check(&file.instrument)?;
    Ok(file.instrument)
}

/// Refuses lists that would make a lookup ambiguous: an instrument twice, or one provider symbol
/// naming two instruments.
pub fn check(instruments: &[Instrument]) -> std::result::Result<(), String> {
    let mut ids = BTreeMap::new();
    let mut symbols: HashMap<(&str, &str), &str> = HashMap::new();
    for (i, inst) in instruments.iter().enumerate() {
        if inst.instrument.trim().is_empty() {
            return Err(format!("instrument[{i}].instrument is empty"));
        }
        if ids.insert(inst.instrument.as_str(), i).is_some() {
            return Err(format!("instrument {} is listed twice", inst.instrument));
        }
        for listing in &inst.listings {
            let key = (listing.provider.as_str(), listing.symbol.as_str());
            if let Some(other) = symbols.insert(key, &inst.instrument) {
                return Err(format!(
                    "{} symbol {:?} names both {other} and {}",
                    listing.provider, listing.symbol, inst.instrument
                ));
            }
        }
    }
    Ok(())
}

/// What the normalizer learns about a provider symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub instrument: Arc<Instrument>,
    /// The listing's venue, if it names one.
    pub exchange: Option<String>,
}

/// Instruments indexed both ways. Later updates of an instrument replace it whole.
#[derive(Debug, Clone, Default)]
pub struct InstrumentIndex {
    by_id: BTreeMap<String, Arc<Instrument>>,
    /// provider → symbol → instrument: nested so a lookup by `&str` allocates nothing.
    by_symbol: HashMap<String, HashMap<String, Resolved>>,
}

impl InstrumentIndex {
    pub fn new(instruments: impl IntoIterator<Item = Instrument>) -> Self {
        let mut index = Self::default();
        for inst in instruments {
            index.upsert(inst);
        }
        index
    }

    /// Adds or replaces an instrument (its old listings go with it).
    pub fn upsert(&mut self, instrument: Instrument) {
        self.remove(&instrument.instrument.clone());
        let instrument = Arc::new(instrument);
        for listing in &instrument.listings {
            self.by_symbol
                .entry(listing.provider.clone())
                .or_default()
                .insert(
                    listing.symbol.clone(),
                    Resolved {
                        instrument: instrument.clone(),
                        exchange: listing.exchange.clone(),
                    },
                );
        }
        self.by_id.insert(instrument.instrument.clone(), instrument);
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            for listing in &old.listings {
                if let Some(symbols) = self.by_symbol.get_mut(&listing.provider) {
                    if symbols
                        .get(&listing.symbol)
                        .is_some_and(|r| r.instrument.instrument == id)
                    {
                        symbols.remove(&listing.symbol);
                    }
                }
            }
        }
    }

    pub fn resolve(&self, provider: &str, symbol: &str) -> Option<&Resolved> {
        self.by_symbol.get(provider)?.get(symbol)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Instrument>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Instrument>> {
        self.by_id.values()
    }

    /// Each active instrument listed by `provider`, with that provider's symbol for it.
    pub fn symbols_of(&self, provider: &str) -> Vec<(String, String)> {
        self.by_id
            .values()
            .filter(|i| i.active)
            .flat_map(|i| {
                i.listings
                    .iter()
                    .filter(|l| l.provider == provider)
                    .map(|l| (i.instrument.clone(), l.symbol.clone()))
            })
            .collect()
    }
}

const ASSET_CLASSES: [AssetClass; 4] = [
    AssetClass::Crypto,
    AssetClass::Equity,
    AssetClass::Fx,
    AssetClass::Other,
];

fn optional_decimal(d: &Option<Decimal>) -> Result<Value> {
    Ok(match d {
        Some(d) => Value::Union(1, Box::new(decimal_value(d)?)),
        None => Value::Union(0, Box::new(Value::Null)),
    })
}

/// The Avro value of an instrument (schema `Instrument`).
pub fn instrument_to_value(i: &Instrument) -> Result<Value> {
    let class = ASSET_CLASSES
        .iter()
        .position(|c| *c == i.asset_class)
        .unwrap_or(3);
    let listings = i
        .listings
        .iter()
        .map(|l| {
            Value::Record(vec![
                ("provider".into(), Value::String(l.provider.clone())),
                ("symbol".into(), Value::String(l.symbol.clone())),
                (
                    "exchange".into(),
                    match &l.exchange {
                        Some(e) => Value::Union(1, Box::new(Value::String(e.clone()))),
                        None => Value::Union(0, Box::new(Value::Null)),
                    },
                ),
            ])
        })
        .collect();
    Ok(Value::Record(vec![
        ("instrument".into(), Value::String(i.instrument.clone())),
        ("base".into(), Value::String(i.base.clone())),
        ("quote".into(), Value::String(i.quote.clone())),
        (
            "asset_class".into(),
            Value::Enum(class as u32, i.asset_class.as_str().into()),
        ),
        ("tick_size".into(), optional_decimal(&i.tick_size)?),
        ("lot_size".into(), optional_decimal(&i.lot_size)?),
        ("active".into(), Value::Boolean(i.active)),
        ("listings".into(), Value::Array(listings)),
    ]))
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        v => v,
    }
}

fn field_map(value: Value, what: &str) -> Result<HashMap<String, Value>> {
    match value {
        Value::Record(fields) => Ok(fields
            .into_iter()
            .map(|(k, v)| (k, unwrap_union(v)))
            .collect()),
        other => Err(Error::Avro(format!(
            "{what}: expected a record, got {other:?}"
        ))),
    }
}

fn string_field(f: &mut HashMap<String, Value>, name: &str) -> Result<String> {
    match f.remove(name) {
        Some(Value::String(s) | Value::Enum(_, s)) => Ok(s),
        other => Err(Error::Avro(format!(
            "field {name}: expected a string, got {other:?}"
        ))),
    }
}

fn optional_decimal_field(f: &mut HashMap<String, Value>, name: &str) -> Result<Option<Decimal>> {
    match f.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Decimal(d)) => {
            let bytes = <Vec<u8>>::try_from(&d).map_err(|e| Error::Avro(e.to_string()))?;
            Ok(Some(decimal_from_avro_bytes(&bytes, AVRO_DECIMAL_SCALE)?))
        }
        Some(other) => Err(Error::Avro(format!(
            "field {name}: expected a decimal, got {other:?}"
        ))),
    }
}

/// Reads an instrument back from its Avro value.
pub fn instrument_from_value(value: Value) -> Result<Instrument> {
    let mut f = field_map(value, "Instrument")?;
    let listings = match f.remove("listings") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| {
                let mut l = field_map(item, "Listing")?;
                Ok(Listing {
                    provider: string_field(&mut l, "provider")?,
                    symbol: string_field(&mut l, "symbol")?,
                    exchange: match l.remove("exchange") {
                        Some(Value::String(s)) => Some(s),
                        _ => None,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?,
        other => {
            return Err(Error::Avro(format!(
                "field listings: expected an array, got {other:?}"
            )))
        }
    };
    Ok(Instrument {
        instrument: string_field(&mut f, "instrument")?,
        base: string_field(&mut f, "base")?,
        quote: string_field(&mut f, "quote")?,
        asset_class: string_field(&mut f, "asset_class")?.parse()?,
        tick_size: optional_decimal_field(&mut f, "tick_size")?,
        lot_size: optional_decimal_field(&mut f, "lot_size")?,
        active: matches!(f.remove("active"), Some(Value::Boolean(true))),
        listings,
    })
}

/// Publishes instruments to the compacted topic (key = instrument, Avro `Instrument`), and a
/// tombstone for each id in `remove`; waits for every acknowledgement.
pub async fn publish(
    kafka: &crate::config::KafkaConfig,
    registry: &crate::config::RegistryConfig,
    topic: &str,
    instruments: &[Instrument],
    remove: &[String],
) -> Result<usize> {
    use rdkafka::producer::FutureRecord;
    let registry = crate::avro::Registry::new(registry)?;
    registry.register(topic, crate::avro::INSTRUMENT).await?;
    let codec = crate::avro::AvroCodec::new(&registry, &[(topic, crate::avro::INSTRUMENT)]);
    let producer = crate::kafka::producer(kafka, "admin")?;
    let timeout = std::time::Duration::from_secs(30);
    for instrument in instruments {
        let bytes = codec
            .encode(topic, instrument_to_value(instrument)?)
            .await?;
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&instrument.instrument)
                    .payload(&bytes),
                timeout,
            )
            .await
            .map_err(|(e, _)| Error::Kafka(e))?;
    }
    for id in remove {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(topic).key(id.as_str()),
                timeout,
            )
            .await
            .map_err(|(e, _)| Error::Kafka(e))?;
    }
    Ok(instruments.len() + remove.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[instrument]]
instrument = "BTC-USD"
base = "BTC"
quote = "USD"
asset_class = "CRYPTO"
tick_size = "0.01"
listings = [
  { provider = "coinbase", symbol = "BTC-USD" },
  { provider = "kraken", symbol = "BTC/USD" },
  { provider = "finnhub", symbol = "COINBASE:BTC-USD", exchange = "coinbase" },
]

[[instrument]]
instrument = "AAPL"
base = "AAPL"
quote = "USD"
asset_class = "EQUITY"
active = false
listings = [{ provider = "finnhub", symbol = "AAPL", exchange = "nasdaq" }]
"#;

    #[test]
    fn file_resolves_both_ways() {
        let index = InstrumentIndex::new(parse_toml(FILE).unwrap());
        let r = index.resolve("kraken", "BTC/USD").unwrap();
        assert_eq!(r.instrument.instrument, "BTC-USD");
        assert_eq!(r.instrument.tick_size.unwrap().to_string(), "0.01");
        assert_eq!(r.exchange, None);
        assert_eq!(
            index
                .resolve("finnhub", "COINBASE:BTC-USD")
                .unwrap()
                .exchange
                .as_deref(),
            Some("coinbase")
        );
        assert!(index.resolve("kraken", "XBT/USD").is_none());
        // Inactive instruments are not subscribed.
        assert_eq!(
            index.symbols_of("finnhub"),
            vec![("BTC-USD".into(), "COINBASE:BTC-USD".into())]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = FILE.replace("\"EQUITY\"", "\"STOCK\"");
        let e = parse_toml(&bad).unwrap_err();
        assert!(e.contains("asset_class") && e.contains("STOCK"), "{e}");
        let e = parse_toml(&FILE.replace("tick_size", "tick")).unwrap_err();
        assert!(e.contains("tick"), "{e}");
        let twice = format!("{FILE}\n[[instrument]]\ninstrument = \"X\"\nbase = \"X\"\nquote = \"USD\"\nasset_class = \"OTHER\"\nlistings = [{{ provider = \"kraken\", symbol = \"BTC/USD\" }}]\n");
        let e = parse_toml(&twice).unwrap_err();
        assert!(e.contains("BTC/USD") && e.contains("both"), "{e}");
    }

    #[test]
    fn upsert_replaces_listings_and_remove_forgets() {
        let mut index = InstrumentIndex::new(parse_toml(FILE).unwrap());
        let mut btc = (**index.get("BTC-USD").unwrap()).clone();
        btc.listings = vec![Listing {
            provider: "binance".into(),
            symbol: "BTCUSD".into(),
            exchange: None,
        }];
        index.upsert(btc);
        assert!(index.resolve("kraken", "BTC/USD").is_none());
        assert!(index.resolve("binance", "BTCUSD").is_some());
        index.remove("BTC-USD");
        assert!(index.resolve("binance", "BTCUSD").is_none());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn avro_round_trip() {
        let schema = crate::avro::INSTRUMENT.parse().unwrap();
        for inst in parse_toml(FILE).unwrap() {
            let value = instrument_to_value(&inst).unwrap();
            let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .unwrap()
                .write_value_to_vec(value)
                .unwrap();
            let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
                .build()
                .unwrap()
                .read_value(&mut body.as_slice())
                .unwrap();
            assert_eq!(instrument_from_value(back).unwrap(), inst);
        }
    }
}
