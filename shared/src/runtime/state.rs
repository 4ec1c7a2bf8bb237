//! Operator state in checkpoints, compact: the state's serde form in `postcard` (structs as
//! their fields in order, integers as varints, no field names), streamed through an LZ4 frame
//! encoder, so the uncompressed bytes never exist whole in memory. Decimals go as their exact
//! 16 bytes ([`exact`]), not as text. The JSON an operator wrote before in an LZ4 block stays
//! readable ([`decode_json_lz4`]).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An LZ4 stream expands at most about 255 times (one byte of a match length stands for 255
/// bytes): a checkpoint that decompresses to more is garbage, not an allocation to make.
const LZ4_MAX_RATIO: u64 = 255;

/// `value` in the binary state format. `reserve` carries the largest encoding so far from one
/// checkpoint to the next, so the output buffer is reserved once instead of grown by doubling
/// (the copy at a doubling holds both buffers at once).
pub fn encode<T: Serialize>(value: &T, reserve: &AtomicUsize) -> Result<Vec<u8>, String> {
    let out = Vec::with_capacity(reserve.load(Ordering::Relaxed));
    // The content checksum makes a changed byte an error on restore, not a different state.
    let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
    let mut frame = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
    postcard::to_io(value, &mut frame).map_err(|e| format!("encoding the state: {e}"))?;
    let out = frame
        .finish()
        .map_err(|e| format!("compressing the state: {e}"))?;
    reserve.fetch_max(out.len() + out.len() / 8, Ordering::Relaxed);
    Ok(out)
}

/// Reads what [`encode`] wrote. Corrupt or truncated bytes are an error (the frame's content
/// checksum, or a value that ends early), never a panic or an allocation out of proportion to
/// the input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut raw = Vec::new();
    let limit = (bytes.len() as u64).saturating_mul(LZ4_MAX_RATIO);
    lz4_flex::frame::FrameDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("decompressing the state: {e}"))?;
    if raw.len() as u64 > limit {
        return Err(format!(
            "the state decompresses to more than {limit} bytes from {} bytes",
            bytes.len()
        ));
    }
    let (value, rest) =
        postcard::take_from_bytes(&raw).map_err(|e| format!("decoding the state: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes left over after the state", rest.len()));
    }
    Ok(value)
}

/// Reads the JSON state an operator wrote before the binary format: one LZ4 block with its
/// uncompressed size prepended. A size no block of this length can give is refused before
/// anything is allocated.
pub fn decode_json_lz4<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (size, _) = lz4_flex::block::uncompressed_size(bytes).map_err(|e| e.to_string())?;
    if size as u64 > (bytes.len() as u64).saturating_mul(LZ4_MAX_RATIO) {
        return Err(format!(
            "{size} bytes cannot come from {} compressed",
            bytes.len()
        ));
    }
    let json = lz4_flex::decompress_size_prepended(bytes).map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// An exact decimal in state: its text in a human-readable format (JSON checkpoints, as they
/// always were), its 16 bytes ([`rust_decimal::Decimal::serialize`]) in a binary one. Use as
/// `#[serde(with = "tickflow_shared::runtime::state::exact")]`.
pub mod exact {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(value)
        } else {
            value.serialize().serialize(serializer)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        if deserializer.is_human_readable() {
            rust_decimal::serde::str::deserialize(deserializer)
        } else {
            let bytes = <[u8; 16]>::deserialize(deserializer)?;
            // `Decimal::deserialize` takes any flags; a scale beyond 28 is not a decimal.
            let scale = bytes[2];
            if scale > 28 || bytes[0] != 0 || bytes[1] != 0 || bytes[3] & 0x7f != 0 {
                return Err(serde::de::Error::custom(format!(
                    "not a decimal: flags {:02x?}",
                    &bytes[..4]
                )));
            }
            Ok(Decimal::deserialize(bytes))
        }
    }
}

/// [`exact`] for an optional decimal.
pub mod exact_option {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Exact(#[serde(with = "super::exact")] Decimal);

    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(Exact).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        Ok(Option::<Exact>::deserialize(deserializer)?.map(|e| e.0))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde::{Deserialize, Serialize};

    use std::io::Write;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        #[serde(with = "exact")]
        price: Decimal,
        #[serde(with = "exact_option")]
        size: Option<Decimal>,
        #[serde(with = "exact_option")]
        missing: Option<Decimal>,
        at: i64,
    }

    fn sample(price: &str) -> Sample {
        Sample {
            name: "BTC-USD".into(),
            price: Decimal::from_str(price).unwrap(),
            size: Some(Decimal::from_str("-0.000000000000000001").unwrap()),
            missing: None,
            at: -1_700_000_000_000_000,
        }
    }

    #[test]
    fn round_trips_exactly() {
        let reserve = AtomicUsize::new(0);
        for price in [
            "0",
            "123456789012.123456789012345678",
            "79228162514264337593543950335",
            "-0.0000000000000000000000000001",
            "1.50",
        ] {
            let value = sample(price);
            let bytes = encode(&value, &reserve).unwrap();
            let back: Sample = decode(&bytes).unwrap();
            assert_eq!(back, value);
            // Trailing zeros are part of the value's scale: kept.
            assert_eq!(back.price.to_string(), value.price.to_string());
        }
        assert!(reserve.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn json_keeps_decimals_as_text() {
        let json = serde_json::to_string(&sample("1.50")).unwrap();
        assert!(json.contains(r#""price":"1.50""#), "{json}");
        assert!(json.contains(r#""missing":null"#), "{json}");
        let back: Sample = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample("1.50"));
    }

    /// `raw` in an LZ4 frame as [`encode`] writes one.
    fn framed(raw: &[u8]) -> Vec<u8> {
        let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
        let mut frame = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        frame.write_all(raw).unwrap();
        frame.finish().unwrap()
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let reserve = AtomicUsize::new(0);
        let good = encode(&sample("1"), &reserve).unwrap();
        assert!(decode::<Sample>(&[]).is_err());
        assert!(decode::<Sample>(b"not lz4 at all").is_err());
        for cut in [1, 4, 9, good.len() / 2] {
            assert!(
                decode::<Sample>(&good[..good.len() - cut]).is_err(),
                "cut {cut}"
            );
        }
        for at in [good.len() / 2, good.len() - 9, good.len() - 1] {
            let mut changed = good.clone();
            changed[at] ^= 0x01;
            assert!(decode::<Sample>(&changed).is_err(), "byte {at} changed");
        }
        // A valid frame around bytes that are not a `Sample`.
        let other = encode(&(1u8, 2u8), &reserve).unwrap();
        assert!(decode::<Sample>(&other).is_err());
        // A valid `Sample` with something after it.
        let longer = encode(&(sample("1"), 7u8), &reserve).unwrap();
        assert!(decode::<Sample>(&longer).unwrap_err().contains("left over"));
        // Flags with a scale of 29 are not a decimal.
        let mut bad = sample("1");
        bad.price = Decimal::ONE;
        let mut raw = postcard::to_allocvec(&bad).unwrap();
        // The name's length (1 byte) and its 7 bytes, then the price's flags: the scale is byte 2.
        raw[1 + 7 + 2] = 29;
        let bytes = framed(&raw);
        // (postcard drops the message of a custom error: only that it failed comes through.)
        assert!(decode::<Sample>(&bytes).is_err());
        raw[1 + 7 + 2] = 28;
        assert_eq!(
            decode::<Sample>(&framed(&raw)).unwrap().price.to_string(),
            "0.0000000000000000000000000001"
        );
    }
}
