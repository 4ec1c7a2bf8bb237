//! Kraken WebSocket API v2, `trade` channel.
//!
//! <https://docs.kraken.com/api/docs/websocket-v2/trade>
//!
//! ```json
//! {"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"buy",
//!  "price":0.5147,"qty":6423.46326,"ord_type":"limit","trade_id":4665846,
//!  "timestamp":"2023-09-25T07:48:36.925533Z"}]}
//! ```
//! Prices and quantities are JSON numbers: their text is kept exactly as sent (never through
//! `f64`). `side` is the taker's side. `type` is `snapshot` (recent trades at subscribe) or
//! `update`. Method replies (`{"method":"subscribe","success":true,...}`), `heartbeat` and
//! `status` channels are control frames; a reply with `"success":false` is the provider's error.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tickflow_shared::domain::Side;

use crate::trades::{kind, rfc3339_micros, Frame, FrameError, ParseResult, ProviderTrade};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(borrow, default)]
    data: Option<Vec<Item<'a>>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    symbol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    side: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    price: Option<&'a RawValue>,
    #[serde(borrow, default)]
    qty: Option<&'a RawValue>,
    #[serde(default)]
    trade_id: Option<i64>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

pub fn parse(payload: &[u8]) -> ParseResult<'_> {
    // Only the trade channel's `data` is an array of trades; others are read without it.
    let m: Message = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            #[derive(Deserialize)]
            struct Head<'a> {
                #[serde(borrow, default)]
                channel: Option<Cow<'a, str>>,
            }
            return match serde_json::from_slice::<Head>(payload) {
                Ok(Head {
                    channel: Some(channel),
                }) if channel != "trade" => control(Some(&channel), None, None),
                _ => Err(FrameError::unparsable(e)),
            };
        }
    };
    if m.channel.as_deref() != Some("trade") || m.method.is_some() {
        return control(m.channel.as_deref(), m.method.as_deref(), m.success);
    }
    let items = m.data.ok_or_else(|| FrameError::missing("data"))?;
    let mut trades = Vec::with_capacity(items.len());
    for item in items {
        let trade_id = item
            .trade_id
            .ok_or_else(|| FrameError::missing("trade_id"))?;
        let time = item
            .timestamp
            .ok_or_else(|| FrameError::missing("timestamp"))?;
        trades.push(ProviderTrade {
            symbol: item.symbol.ok_or_else(|| FrameError::missing("symbol"))?,
            venue: None,
            trade_id: Some(trade_id.to_string()),
            price: number_text(item.price, "price")?,
            size: number_text(item.qty, "qty")?,
            side: match item.side.as_deref() {
                Some("buy") => Side::Buy,
                Some("sell") => Side::Sell,
                _ => Side::Unknown,
            },
            event_time: rfc3339_micros(&time)?,
            provider_sequence: Some(trade_id),
            number: None,
            identity_extra: None,
        });
    }
    Ok(Frame::Trades(trades))
}

/// A number's text is the decimal; a string's content is accepted too.
fn number_text<'a>(value: Option<&'a RawValue>, name: &str) -> Result<Cow<'a, str>, FrameError> {
    let raw = value.ok_or_else(|| FrameError::missing(name))?.get();
    Ok(Cow::Borrowed(raw.trim_matches('"')))
}

fn control<'a>(
    channel: Option<&str>,
    method: Option<&str>,
    success: Option<bool>,
) -> ParseResult<'a> {
    match (channel, method) {
        (_, Some(_)) if success == Some(false) => Ok(Frame::NonTrade(kind::PROVIDER_ERROR)),
        (_, Some("subscribe" | "unsubscribe" | "pong")) => Ok(Frame::NonTrade(kind::ACK)),
        (Some("heartbeat"), _) => Ok(Frame::NonTrade(kind::HEARTBEAT)),
        (Some("status"), _) => Ok(Frame::NonTrade(kind::STATUS)),
        (Some(other), _) | (None, Some(other)) => Err(FrameError::unsupported(other)),
        (None, None) => Err(FrameError::missing("channel")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trades::FrameErrorKind;

    const DOC: &str = r#"{"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"buy","price":0.5147,"qty":6423.46326,"ord_type":"limit","trade_id":4665846,"timestamp":"2023-09-25T07:48:36.925533Z"},{"symbol":"MATIC/USD","side":"sell","price":0.51470000,"qty":1.2e-7,"ord_type":"market","trade_id":4665847,"timestamp":"2023-09-25T07:48:36.925533Z"}]}"#;

    #[test]
    fn documented_update_keeps_number_text() {
        let Frame::Trades(trades) = parse(DOC.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(trades.len(), 2);
        assert_eq!(trades[0].symbol, "MATIC/USD");
        assert_eq!(
            (trades[0].price.as_ref(), trades[0].size.as_ref()),
            ("0.5147", "6423.46326")
        );
        assert_eq!(trades[0].side, Side::Buy);
        assert_eq!(trades[0].trade_id.as_deref(), Some("4665846"));
        assert_eq!(trades[0].event_time, 1_695_628_116_925_533);
        assert_eq!(
            trades[1].price, "0.51470000",
            "trailing zeros are the provider's text"
        );
        assert_eq!(trades[1].size, "1.2e-7");
        assert_eq!(trades[1].side, Side::Sell);
    }

    #[test]
    fn control_and_bad_frames() {
        for (frame, kind) in [
            (
                r#"{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"MATIC/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#,
                kind::ACK,
            ),
            (
                r#"{"method":"subscribe","error":"Currency pair not supported","success":false,"symbol":"X/Y"}"#,
                kind::PROVIDER_ERROR,
            ),
            (r#"{"channel":"heartbeat"}"#, kind::HEARTBEAT),
            (
                r#"{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":1,"system":"online","version":"2.0.0"}]}"#,
                kind::STATUS,
            ),
        ] {
            assert_eq!(
                parse(frame.as_bytes()).unwrap(),
                Frame::NonTrade(kind),
                "{frame}"
            );
        }
        for (frame, reason) in [
            (
                r#"{"channel":"book","type":"update","data":[]}"#,
                FrameErrorKind::Unsupported,
            ),
            (
                r#"{"channel":"trade","type":"update","data":[{"symbol":"X/Y","side":"buy","qty":1,"trade_id":1,"timestamp":"2023-09-25T07:48:36Z"}]}"#,
                FrameErrorKind::MissingField,
            ),
            (
                r#"{"channel":"trade","type":"update","data":[{"symbol":"X/Y","price":NaN}]}"#,
                FrameErrorKind::Unparsable,
            ),
            (r#"{}"#, FrameErrorKind::MissingField),
        ] {
            assert_eq!(parse(frame.as_bytes()).unwrap_err().kind, reason, "{frame}");
        }
    }
}
