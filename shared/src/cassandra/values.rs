//! Column values every table's code shares: the CQL `date` of a UTC day, and exact decimals.

use rust_decimal::Decimal;
use scylla::value::{CqlDate, CqlDecimal};

use crate::domain::{
    decimal_from_unscaled, epoch_day, i128_from_be_bytes, i128_to_be_bytes_min, Micros,
};
use crate::error::{Error, Result};

/// The CQL `date` of the UTC day containing `time` (CQL dates count days from 2^31 = epoch).
pub fn day_of(time: Micros) -> Result<CqlDate> {
    let day = epoch_day(time) + (1i64 << 31);
    u32::try_from(day)
        .map(CqlDate)
        .map_err(|_| Error::Cassandra(format!("time {time} is outside the CQL date range")))
}

/// A CQL decimal with the value's own scale (so `67012.34000000` stays exactly that).
pub fn to_cql_decimal(value: &Decimal) -> CqlDecimal {
    let scale = i32::try_from(value.scale()).unwrap_or(0);
    CqlDecimal::from_signed_be_bytes_and_exponent(i128_to_be_bytes_min(value.mantissa()), scale)
}

pub fn from_cql_decimal(value: &CqlDecimal) -> Result<Decimal> {
    let (bytes, scale) = value.as_signed_be_bytes_slice_and_exponent();
    let unscaled = i128_from_be_bytes(bytes)
        .ok_or_else(|| Error::Cassandra("decimal wider than 128 bits".into()))?;
    let scale = u32::try_from(scale)
        .map_err(|_| Error::Cassandra(format!("negative decimal scale {scale}")))?;
    decimal_from_unscaled(unscaled, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{parse_decimal, MICROS_PER_DAY};

    #[test]
    fn cql_decimal_keeps_value_and_scale() {
        for text in [
            "67012.34000000",
            "0.000012345678",
            "-1.5",
            "0",
            "123456789012345678.9",
        ] {
            let d = parse_decimal(text).unwrap();
            let back = from_cql_decimal(&to_cql_decimal(&d)).unwrap();
            assert_eq!(back.to_string(), text);
        }
    }

    #[test]
    fn day_counts_from_the_cql_epoch() {
        assert_eq!(day_of(0).unwrap(), CqlDate(1 << 31));
        assert_eq!(day_of(MICROS_PER_DAY + 5).unwrap(), CqlDate((1 << 31) + 1));
        assert_eq!(day_of(-1).unwrap(), CqlDate((1 << 31) - 1));
    }
}
