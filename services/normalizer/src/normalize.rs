//! The pure step: a parsed frame, the reference data and the duplicate filter in; unified trades,
//! dead letters (with reason), skipped control frames and dropped duplicates out. No I/O, so it
//! is tested with case tables and benchmarked alone.

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tickflow_shared::domain::{Micros, RawEnvelope, Trade};
use tickflow_shared::instruments::InstrumentIndex;

use crate::dedup::{trade_key, Dedup};
use crate::reason::Reason;
use tickflow_providers::trades::provider_decimal;
use tickflow_providers::{Frame, ParseResult, Provider, ProviderTrade};

/// Validation limits (from `[normalizer]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Event time may be at most this far after receive time (clock skew), µs.
    pub max_future: Micros,
    /// Event time may be at most this far before receive time, µs.
    pub max_age: Micros,
    pub max_price: Decimal,
    pub max_size: Decimal,
}

/// What became of one input (a frame, or one trade of a frame).
// Trades are the common case; boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Trade(Trade),
    /// Seen within the dedup horizon: dropped and counted.
    Duplicate {
        exchange: String,
    },
    /// To the DLQ. `trade_index` is the trade's position in a frame carrying several.
    Rejected {
        trade_index: Option<usize>,
        reason: Reason,
        detail: String,
    },
    /// A documented control frame, skipped and counted by kind.
    Skipped(&'static str),
}

/// Largest fractional precision the Avro `decimal(38,18)` holds.
const MAX_SCALE: u32 = 18;

/// What a frame is checked against: the reference data, the limits, and the time stamped as
/// `normalized_time`.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub index: &'a InstrumentIndex,
    pub limits: &'a Limits,
    pub now: Micros,
}

/// Turns one parsed frame into outcomes, appended to `out`.
pub fn normalize(
    provider: &dyn Provider,
    envelope: &RawEnvelope,
    parsed: ParseResult<'_>,
    rules: Rules<'_>,
    dedup: &mut Dedup,
    out: &mut Vec<Outcome>,
) {
    let trades = match parsed {
        Ok(Frame::Trades(trades)) => trades,
        Ok(Frame::NonTrade(kind)) => {
            out.push(Outcome::Skipped(kind));
            return;
        }
        Err(e) => {
            out.push(Outcome::Rejected {
                trade_index: None,
                reason: e.kind.into(),
                detail: e.detail,
            });
            return;
        }
    };
    let several = trades.len() > 1;
    for (i, raw) in trades.into_iter().enumerate() {
        let outcome = match unify(provider, envelope, raw, rules) {
            Ok(trade) => {
                let key = trade_key(
                    &trade.provider,
                    &trade.exchange,
                    &trade.provider_symbol,
                    &trade.trade_id,
                );
                if dedup.insert(key, envelope.received_at) {
                    Outcome::Trade(trade)
                } else {
                    Outcome::Duplicate {
                        exchange: trade.exchange,
                    }
                }
            }
            Err((reason, detail)) => Outcome::Rejected {
                trade_index: several.then_some(i),
                reason,
                detail,
            },
        };
        out.push(outcome);
    }
}

type Refusal = (Reason, String);

fn unify(
    provider: &dyn Provider,
    envelope: &RawEnvelope,
    raw: ProviderTrade<'_>,
    rules: Rules<'_>,
) -> Result<Trade, Refusal> {
    let Rules { index, limits, now } = rules;
    let resolved = index
        .resolve(provider.id().as_str(), &raw.symbol)
        .ok_or_else(|| {
            (
                Reason::UnknownSymbol,
                format!(
                    "no instrument lists {} symbol {:?}",
                    provider.id(),
                    raw.symbol
                ),
            )
        })?;
    let instrument = &resolved.instrument;
    if !instrument.active {
        return Err((
            Reason::InactiveInstrument,
            format!("instrument {} is inactive", instrument.instrument),
        ));
    }
    let price = amount(
        &raw.price,
        limits.max_price,
        Reason::InvalidPrice,
        Reason::PriceOutOfRange,
        "price",
    )?;
    let size = amount(
        &raw.size,
        limits.max_size,
        Reason::InvalidSize,
        Reason::SizeOutOfRange,
        "size",
    )?;
    let received = envelope.received_at;
    if raw.event_time > received.saturating_add(limits.max_future) {
        return Err((
            Reason::EventTimeFuture,
            format!(
                "event time {} is {} ms after receive time {received}",
                raw.event_time,
                (raw.event_time - received) / 1000
            ),
        ));
    }
    if raw.event_time < received.saturating_sub(limits.max_age) {
        return Err((
            Reason::EventTimePast,
            format!(
                "event time {} is {} ms before receive time {received}",
                raw.event_time,
                received.saturating_sub(raw.event_time) / 1000
            ),
        ));
    }
    let exchange = resolved
        .exchange
        .clone()
        .or_else(|| raw.venue.as_ref().map(|v| v.to_string()))
        .unwrap_or_else(|| provider.id().to_string());
    let trade_id = match raw.trade_id {
        Some(id) => id,
        None => derived_id(&raw),
    };
    Ok(Trade {
        instrument: instrument.instrument.clone(),
        base: instrument.base.clone(),
        quote: instrument.quote.clone(),
        asset_class: instrument.asset_class,
        exchange,
        provider: provider.id().to_string(),
        provider_symbol: raw.symbol.into_owned(),
        trade_id,
        price,
        size,
        side: raw.side,
        event_time: raw.event_time,
        ingest_time: received,
        normalized_time: now,
        provider_sequence: raw.provider_sequence,
    })
}

fn amount(
    text: &str,
    max: Decimal,
    invalid: Reason,
    too_large: Reason,
    what: &str,
) -> Result<Decimal, Refusal> {
    let value = provider_decimal(text).map_err(|e| (invalid, format!("{what} {e}")))?;
    if value <= Decimal::ZERO {
        return Err((invalid, format!("{what} {text} is not positive")));
    }
    if value.normalize().scale() > MAX_SCALE {
        return Err((
            invalid,
            format!("{what} {text} has more than {MAX_SCALE} fractional digits"),
        ));
    }
    if value > max {
        return Err((
            too_large,
            format!("{what} {text} is above the maximum {max}"),
        ));
    }
    Ok(value)
}

/// The identity of a trade that came without an id: a hash of what the provider said about it.
fn derived_id(raw: &ProviderTrade<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        raw.symbol.as_ref(),
        raw.price.as_ref(),
        raw.size.as_ref(),
        &raw.event_time.to_string(),
        raw.identity_extra.as_deref().unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

#[cfg(test)]
mod tests;
