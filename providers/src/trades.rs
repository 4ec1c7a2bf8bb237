//! What a provider's parser answers: the frame's bytes, exactly as the gateway received them,
//! into the trades they carry, still in the provider's terms (its symbol, the price as the text
//! it sent). Mapping to canonical instruments and validation happen after, in the normalizer.
//!
//! A parser answers one of three things: the trades in the frame, a documented non-trade frame
//! (heartbeat, subscription ack, status, the provider's own error message: skipped and counted),
//! or why the frame cannot be read (dead-lettered by the normalizer with that reason).

use std::borrow::Cow;

use rust_decimal::Decimal;
use tickflow_shared::domain::{parse_decimal, Micros, Side};

/// A trade as a provider wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTrade<'a> {
    pub symbol: Cow<'a, str>,
    /// The venue, when the message names it (simulator, Finnhub's exchange prefix is mapped by the
    /// instrument listing instead).
    pub venue: Option<Cow<'a, str>>,
    /// `None` when the provider gives no id: a deterministic identity is derived later.
    pub trade_id: Option<String>,
    /// The price exactly as sent (a JSON string's content or a JSON number's text).
    pub price: Cow<'a, str>,
    pub size: Cow<'a, str>,
    pub side: Side,
    pub event_time: Micros,
    pub provider_sequence: Option<i64>,
    /// The trade's number in a numbering without holes that the message carries apart from its
    /// id (the gRPC feed's `number`); `None` for the others.
    pub number: Option<u64>,
    /// Extra fields that belong to the trade's identity when the provider has no trade id
    /// (Finnhub's trade conditions).
    pub identity_extra: Option<Cow<'a, str>>,
}

/// What a frame holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Trades(Vec<ProviderTrade<'a>>),
    /// A documented non-trade frame; the `&str` is its kind, a bounded metric label.
    NonTrade(&'static str),
}

/// The kinds of unreadable frame; each is a dead-letter reason of the normalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameErrorKind {
    /// Not the provider's format (not its JSON or protobuf, a value of the wrong type).
    Unparsable,
    /// A field every trade must have is absent.
    MissingField,
    /// A message type the provider documents as neither a trade nor a control message.
    Unsupported,
}

/// Why a frame cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub kind: FrameErrorKind,
    pub detail: String,
}

impl FrameError {
    pub fn unparsable(e: impl std::fmt::Display) -> Self {
        Self {
            kind: FrameErrorKind::Unparsable,
            detail: e.to_string(),
        }
    }

    pub fn missing(field: &str) -> Self {
        Self {
            kind: FrameErrorKind::MissingField,
            detail: format!("field {field:?} is missing"),
        }
    }

    pub fn unsupported(kind: &str) -> Self {
        Self {
            kind: FrameErrorKind::Unsupported,
            detail: format!("message type {kind:?} is not a trade and not a known control message"),
        }
    }
}

pub type ParseResult<'a> = Result<Frame<'a>, FrameError>;

/// The non-trade kinds, as metric labels.
pub mod kind {
    pub const HEARTBEAT: &str = "heartbeat";
    pub const ACK: &str = "subscription_ack";
    pub const STATUS: &str = "status";
    pub const PROVIDER_ERROR: &str = "provider_error";
}

/// RFC 3339 text (`2023-09-25T07:48:36.925533Z`) to µs since the epoch, UTC. Digits below the
/// microsecond are truncated.
pub fn rfc3339_micros(text: &str) -> Result<Micros, FrameError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| FrameError {
            kind: FrameErrorKind::Unparsable,
            detail: format!("time {text:?}: {e}"),
        })
}

/// Epoch milliseconds to µs; values already in µs (Binance with `timeUnit=MICROSECOND`) are
/// recognised by their magnitude (after 1973 in µs, after year 5138 in ms).
pub fn epoch_to_micros(value: i64) -> Micros {
    if value.unsigned_abs() >= 100_000_000_000_000 {
        value
    } else {
        value.saturating_mul(1_000)
    }
}

/// A decimal from a provider's text: plain notation as strings carry it, and the exponent form a
/// JSON number may take (`1.5e-7`), both exact.
pub fn provider_decimal(text: &str) -> Result<Decimal, String> {
    if text.contains(['e', 'E']) && !text.eq_ignore_ascii_case("inf") {
        return Decimal::from_scientific(text).map_err(|e| format!("{text:?}: {e}"));
    }
    parse_decimal(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_from_provider_text() {
        assert_eq!(provider_decimal("0.5147").unwrap().to_string(), "0.5147");
        assert_eq!(
            provider_decimal("1.5e-7").unwrap().to_string(),
            "0.00000015"
        );
        assert_eq!(
            provider_decimal("67012.34000000").unwrap().to_string(),
            "67012.34000000"
        );
        for bad in ["NaN", "inf", "Infinity", "", "1.2.3", "e5"] {
            assert!(provider_decimal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(
            rfc3339_micros("2023-09-25T07:48:36.925533Z").unwrap(),
            1_695_628_116_925_533
        );
        assert_eq!(
            rfc3339_micros("2023-09-25T07:48:36.925533789Z").unwrap(),
            1_695_628_116_925_533
        );
        assert!(rfc3339_micros("yesterday").is_err());
        assert_eq!(epoch_to_micros(1_672_515_782_136), 1_672_515_782_136_000);
        assert_eq!(
            epoch_to_micros(1_672_515_782_136_123),
            1_672_515_782_136_123
        );
    }
}
