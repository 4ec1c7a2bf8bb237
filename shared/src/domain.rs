//! Domain types shared by every service: the unified trade, exact decimals and event times.
//!
//! Prices and sizes are `rust_decimal::Decimal` parsed straight from the provider's text, never
//! through `f64`. On the wire (Avro) every decimal is `decimal(38, 18)`: the value is exact, the
//! representation has 18 fractional digits. Times are integer microseconds since the Unix epoch,
//! UTC, with the kind of time in the field name.

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::error::{Error, Result};

/// Scale of every Avro decimal in tickflow's schemas.
pub const AVRO_DECIMAL_SCALE: u32 = 18;
/// Precision of every Avro decimal in tickflow's schemas.
pub const AVRO_DECIMAL_PRECISION: u32 = 38;

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

pub const MICROS_PER_SECOND: Micros = 1_000_000;
pub const MICROS_PER_DAY: Micros = 86_400 * MICROS_PER_SECOND;

/// The current wall-clock time in microseconds. Only for liveness and processing-time stamps;
/// results that depend on time use event time.
pub fn now_micros() -> Micros {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// Days since the Unix epoch of a time (floor, so times before 1970 land in the right day).
pub fn epoch_day(time: Micros) -> i64 {
    time.div_euclid(MICROS_PER_DAY)
}

/// Parses a provider's decimal text exactly: no rounding, no exponent, no NaN or infinity.
pub fn parse_decimal(text: &str) -> Result<Decimal> {
    let trimmed = text.trim();
    Decimal::from_str_exact(trimmed).map_err(|e| Error::Decimal {
        text: text.to_string(),
        reason: e.to_string(),
    })
}

/// The unscaled value of `value` at scale 18, as Avro's `decimal(38, 18)` stores it: big-endian
/// two's complement, shortest form. Fails if the value needs more than 18 fractional digits or
/// more than 38 digits in all.
pub fn decimal_to_avro_bytes(value: &Decimal) -> Result<Vec<u8>> {
    let unscaled = unscaled_at(value, AVRO_DECIMAL_SCALE)?;
    Ok(i128_to_be_bytes_min(unscaled))
}

/// The inverse of [`decimal_to_avro_bytes`] for any scale: reads big-endian two's complement.
/// The result is normalized (no trailing zeros): the schema's fixed scale says nothing about the
/// value, and products of un-normalized values would need needless digits.
pub fn decimal_from_avro_bytes(bytes: &[u8], scale: u32) -> Result<Decimal> {
    let unscaled = i128_from_be_bytes(bytes).ok_or_else(|| Error::Decimal {
        text: format!("{bytes:02x?}"),
        reason: "more than 16 bytes of unscaled value".into(),
    })?;
    decimal_from_unscaled(unscaled, scale).map(|d| d.normalize())
}

/// Builds a `Decimal` from an unscaled integer and a scale, dropping trailing zeros when the
/// value would not fit `Decimal`'s 96-bit mantissa or 28-digit scale otherwise. Never rounds.
pub fn decimal_from_unscaled(mut unscaled: i128, mut scale: u32) -> Result<Decimal> {
    const MAX_MANTISSA: i128 = (1i128 << 96) - 1;
    while (unscaled.abs() > MAX_MANTISSA || scale > 28) && scale > 0 && unscaled % 10 == 0 {
        unscaled /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(unscaled, scale).map_err(|e| Error::Decimal {
        text: format!("{unscaled}e-{scale}"),
        reason: e.to_string(),
    })
}

fn unscaled_at(value: &Decimal, target_scale: u32) -> Result<i128> {
    let out_of_range = |reason: &str| Error::Decimal {
        text: value.to_string(),
        reason: reason.to_string(),
    };
    let normalized = value.normalize();
    let scale = normalized.scale();
    if scale > target_scale {
        return Err(out_of_range("more than 18 fractional digits"));
    }
    let factor = 10i128.pow(target_scale - scale);
    let unscaled = normalized
        .mantissa()
        .checked_mul(factor)
        .ok_or_else(|| out_of_range("more than 38 digits"))?;
    if unscaled.unsigned_abs() >= 10u128.pow(AVRO_DECIMAL_PRECISION) {
        return Err(out_of_range("more than 38 digits"));
    }
    Ok(unscaled)
}

/// Shortest big-endian two's complement bytes of `v` (at least one byte).
pub fn i128_to_be_bytes_min(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let sign_byte = if v < 0 { 0xff } else { 0x00 };
    let mut start = 0;
    // Drop a leading sign byte while the next byte still carries the same sign bit.
    while start < 15 && bytes[start] == sign_byte && (bytes[start + 1] & 0x80) == (sign_byte & 0x80)
    {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Reads big-endian two's complement of up to 16 bytes; `None` if longer. Empty means zero.
pub fn i128_from_be_bytes(bytes: &[u8]) -> Option<i128> {
    if bytes.len() > 16 {
        return None;
    }
    if bytes.is_empty() {
        return Some(0);
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0x00 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(buf))
}

/// Aggressor side of a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Buy,
    Sell,
    Unknown,
}

impl Side {
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
            Side::Unknown => "UNKNOWN",
        }
    }
}

impl FromStr for Side {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "BUY" => Ok(Side::Buy),
            "SELL" => Ok(Side::Sell),
            "UNKNOWN" => Ok(Side::Unknown),
            other => Err(Error::Avro(format!("unknown side {other:?}"))),
        }
    }
}

/// Asset class of an instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssetClass {
    Crypto,
    Equity,
    Fx,
    Other,
}

impl AssetClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            AssetClass::Crypto => "CRYPTO",
            AssetClass::Equity => "EQUITY",
            AssetClass::Fx => "FX",
            AssetClass::Other => "OTHER",
        }
    }
}

impl FromStr for AssetClass {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "CRYPTO" => Ok(AssetClass::Crypto),
            "EQUITY" => Ok(AssetClass::Equity),
            "FX" => Ok(AssetClass::Fx),
            "OTHER" => Ok(AssetClass::Other),
            other => Err(Error::Avro(format!("unknown asset class {other:?}"))),
        }
    }
}

/// One trade in the unified format (the `Trade` Avro schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    /// Canonical instrument, e.g. `BTC-USD`; the Kafka key.
    pub instrument: String,
    pub base: String,
    pub quote: String,
    pub asset_class: AssetClass,
    /// Venue of the trade.
    pub exchange: String,
    /// Who delivered it.
    pub provider: String,
    pub provider_symbol: String,
    pub trade_id: String,
    pub price: Decimal,
    pub size: Decimal,
    pub side: Side,
    pub event_time: Micros,
    pub ingest_time: Micros,
    pub normalized_time: Micros,
    pub provider_sequence: Option<i64>,
}

/// An event-time candle (the `Candle` Avro schema). `venue` is an exchange, or
/// [`CONSOLIDATED_VENUE`] for all venues of the instrument together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candle {
    pub instrument: String,
    pub venue: String,
    /// `1m`, `5m`, ...
    pub interval: String,
    pub window_start: Micros,
    /// Exclusive.
    pub window_end: Micros,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub count: i64,
    pub volume: Decimal,
    /// Sum of price × size.
    pub notional: Decimal,
    /// notional / volume, rounded half away from zero to 18 fractional digits.
    pub vwap: Decimal,
    /// Mean of the trade prices, rounded like `vwap`.
    pub avg_price: Decimal,
    pub buy_volume: Decimal,
    pub sell_volume: Decimal,
    pub first_trade_time: Micros,
    pub last_trade_time: Micros,
    /// False for early (in-progress) firings.
    pub is_final: bool,
    /// 0 for the first emission of this window, +1 for each later one. It counts emissions and
    /// may restart after a crash: a window's current value is its last write (Cassandra) or its
    /// last record in the partition (Kafka), not its highest revision.
    pub revision: i32,
}

/// The `venue` of a candle over every venue of an instrument.
pub const CONSOLIDATED_VENUE: &str = "*";

/// Fractional digits of derived candle statistics (vwap, average price): the Avro scale.
pub const DERIVED_SCALE: u32 = AVRO_DECIMAL_SCALE;

/// Rounds a derived statistic the one way tickflow does everywhere: half away from zero, to
/// [`DERIVED_SCALE`] fractional digits.
pub fn round_derived(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(
        DERIVED_SCALE,
        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
    )
}

/// One frame exactly as a provider sent it (the `RawEnvelope` Avro schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEnvelope {
    pub provider: String,
    pub connection_id: String,
    pub sequence: i64,
    pub received_at: Micros,
    pub channel: String,
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_every_digit_and_rejects_non_numbers() {
        assert_eq!(
            parse_decimal("0.000012345678").unwrap().to_string(),
            "0.000012345678"
        );
        assert_eq!(
            parse_decimal("67012.34000000").unwrap().to_string(),
            "67012.34000000"
        );
        for bad in ["NaN", "inf", "-inf", "1e5", "", "12,5", "0x10", "1.2.3"] {
            assert!(parse_decimal(bad).is_err(), "{bad:?} must be refused");
        }
        // 30 significant digits cannot be held exactly: refused, not rounded.
        assert!(parse_decimal("99999999999999999999999999999.9").is_err());
    }

    #[test]
    fn avro_bytes_round_trip_case_table() {
        let cases = [
            "0",
            "1",
            "-1",
            "0.000012345678",
            "67012.34000000",
            "-0.000000000000000001",
            "9999999999.999999999999999999",
            "-99999999999999999999",
            "123456789012.5",
        ];
        for text in cases {
            let value = parse_decimal(text).unwrap();
            let bytes = decimal_to_avro_bytes(&value).unwrap();
            let back = decimal_from_avro_bytes(&bytes, AVRO_DECIMAL_SCALE).unwrap();
            assert_eq!(back, value, "{text}");
            assert_eq!(back.normalize().to_string(), value.normalize().to_string());
        }
    }

    #[test]
    fn avro_bytes_are_shortest_twos_complement() {
        assert_eq!(i128_to_be_bytes_min(0), vec![0x00]);
        assert_eq!(i128_to_be_bytes_min(127), vec![0x7f]);
        assert_eq!(i128_to_be_bytes_min(128), vec![0x00, 0x80]);
        assert_eq!(i128_to_be_bytes_min(-1), vec![0xff]);
        assert_eq!(i128_to_be_bytes_min(-128), vec![0x80]);
        assert_eq!(i128_to_be_bytes_min(-129), vec![0xff, 0x7f]);
        for v in [
            0i128,
            1,
            -1,
            255,
            -255,
            i64::MAX as i128,
            i128::MAX,
            i128::MIN,
        ] {
            assert_eq!(i128_from_be_bytes(&i128_to_be_bytes_min(v)), Some(v));
        }
        // 1 at scale 18 is 10^18 = 0x0DE0B6B3A7640000.
        assert_eq!(
            decimal_to_avro_bytes(&Decimal::ONE).unwrap(),
            vec![0x0d, 0xe0, 0xb6, 0xb3, 0xa7, 0x64, 0x00, 0x00]
        );
    }

    #[test]
    fn avro_bytes_refuse_what_does_not_fit() {
        let too_fine = parse_decimal("0.0000000000000000001").unwrap();
        assert!(decimal_to_avro_bytes(&too_fine).is_err());
        let too_big = parse_decimal("100000000000000000000").unwrap();
        assert!(decimal_to_avro_bytes(&too_big).is_err());
        assert!(decimal_from_avro_bytes(&[1u8; 17], 18).is_err());
        // Avro's decimal(38, 18) can hold 38 digits, Decimal 28: such a value is refused on
        // decoding with a clear error, never rounded.
        let wide = i128_to_be_bytes_min(99_999_999_999_999_999_999_999_999_999_999_999i128);
        let err = decimal_from_avro_bytes(&wide, 18).unwrap_err().to_string();
        assert!(err.contains("invalid decimal"), "{err}");
    }

    #[test]
    fn epoch_day_floors() {
        assert_eq!(epoch_day(0), 0);
        assert_eq!(epoch_day(MICROS_PER_DAY - 1), 0);
        assert_eq!(epoch_day(MICROS_PER_DAY), 1);
        assert_eq!(epoch_day(-1), -1);
    }
}
