//! Coinbase Exchange WebSocket feed, `matches` channel.
//!
//! <https://docs.cdp.coinbase.com/exchange/websocket-feed/channels#match>
//!
//! ```json
//! {"type":"match","trade_id":10,"sequence":50,
//!  "maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8",
//!  "taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1",
//!  "time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512",
//!  "price":"400.23","side":"sell"}
//! ```
//! `side` is the maker's order side, so the aggressor is the opposite. Right after subscribing
//! the feed sends the latest trade as `last_match` (same fields): a trade seen again, which the
//! duplicate filter drops. `subscriptions` is the ack, `heartbeat` and `error` are documented.

use std::borrow::Cow;

use serde::Deserialize;
use tickflow_shared::domain::Side;

use crate::trades::{kind, rfc3339_micros, Frame, FrameError, ParseResult, ProviderTrade};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    trade_id: Option<i64>,
    #[serde(default)]
    sequence: Option<i64>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    size: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    price: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    side: Option<Cow<'a, str>>,
}

pub fn parse(payload: &[u8]) -> ParseResult<'_> {
    let m: Message = serde_json::from_slice(payload).map_err(FrameError::unparsable)?;
    match m.kind.as_ref() {
        "match" | "last_match" => {}
        "subscriptions" => return Ok(Frame::NonTrade(kind::ACK)),
        "heartbeat" => return Ok(Frame::NonTrade(kind::HEARTBEAT)),
        "error" => return Ok(Frame::NonTrade(kind::PROVIDER_ERROR)),
        other => return Err(FrameError::unsupported(other)),
    }
    let time = m.time.ok_or_else(|| FrameError::missing("time"))?;
    Ok(Frame::Trades(vec![ProviderTrade {
        symbol: m
            .product_id
            .ok_or_else(|| FrameError::missing("product_id"))?,
        venue: None,
        trade_id: Some(
            m.trade_id
                .ok_or_else(|| FrameError::missing("trade_id"))?
                .to_string(),
        ),
        price: m.price.ok_or_else(|| FrameError::missing("price"))?,
        size: m.size.ok_or_else(|| FrameError::missing("size"))?,
        side: match m.side.as_deref() {
            Some("sell") => Side::Buy,
            Some("buy") => Side::Sell,
            _ => Side::Unknown,
        },
        event_time: rfc3339_micros(&time)?,
        provider_sequence: m.sequence,
        number: None,
        identity_extra: None,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trades::FrameErrorKind;

    const DOC: &str = r#"{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}"#;

    #[test]
    fn documented_match() {
        let Frame::Trades(trades) = parse(DOC.as_bytes()).unwrap() else {
            panic!()
        };
        let t = &trades[0];
        assert_eq!(t.symbol, "BTC-USD");
        assert_eq!(t.trade_id.as_deref(), Some("10"));
        assert_eq!((t.price.as_ref(), t.size.as_ref()), ("400.23", "5.23512"));
        assert_eq!(t.side, Side::Buy, "the maker sold: the aggressor bought");
        assert_eq!(t.event_time, 1_415_348_367_028_459);
        assert_eq!(t.provider_sequence, Some(50));
        let last = DOC.replace("\"match\"", "\"last_match\"");
        assert!(matches!(parse(last.as_bytes()).unwrap(), Frame::Trades(_)));
    }

    #[test]
    fn control_and_bad_frames() {
        for (frame, kind) in [
            (
                r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}"#,
                kind::ACK,
            ),
            (
                r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#,
                kind::HEARTBEAT,
            ),
            (
                r#"{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}"#,
                kind::PROVIDER_ERROR,
            ),
        ] {
            assert_eq!(parse(frame.as_bytes()).unwrap(), Frame::NonTrade(kind));
        }
        for (frame, reason) in [
            (r#"{"type":"l2update"}"#, FrameErrorKind::Unsupported),
            (
                &DOC.replace(r#""price":"400.23","#, "") as &str,
                FrameErrorKind::MissingField,
            ),
            (
                &DOC.replace("2014-11-07T08:19:27.028459Z", "yesterday"),
                FrameErrorKind::Unparsable,
            ),
            ("[1,2]", FrameErrorKind::Unparsable),
        ] {
            assert_eq!(parse(frame.as_bytes()).unwrap_err().kind, reason, "{frame}");
        }
    }
}
