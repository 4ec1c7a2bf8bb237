//! Binance spot trade streams, raw (`/ws/<symbol>@trade`) or combined
//! (`/stream?streams=...`, each event wrapped as `{"stream": ..., "data": ...}`).
//!
//! <https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams#trade-streams>
//!
//! ```json
//! {"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,
//!  "p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}
//! ```
//! `m` is "is the buyer the market maker": when true the aggressor sold. Replies to
//! SUBSCRIBE/UNSUBSCRIBE (`{"result":null,"id":1}`) are acks; `{"error":{...},"id":1}` and
//! `{"code":...,"msg":...}` are the provider's errors.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tickflow_shared::domain::Side;

use crate::trades::{epoch_to_micros, kind, Frame, FrameError, ParseResult, ProviderTrade};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// Replies to requests carry the request's id (their `result` is often `null`).
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
    #[serde(borrow, default)]
    e: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Event<'a> {
    #[serde(borrow)]
    e: Cow<'a, str>,
    #[serde(borrow, default)]
    s: Option<Cow<'a, str>>,
    #[serde(default)]
    t: Option<i64>,
    #[serde(borrow, default)]
    p: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    q: Option<Cow<'a, str>>,
    #[serde(default)]
    T: Option<i64>,
    #[serde(default)]
    m: Option<bool>,
}

pub fn parse(payload: &[u8]) -> ParseResult<'_> {
    let envelope: Envelope = serde_json::from_slice(payload).map_err(FrameError::unparsable)?;
    if envelope.error.is_some() || envelope.code.is_some() {
        return Ok(Frame::NonTrade(kind::PROVIDER_ERROR));
    }
    if envelope.id.is_some() {
        return Ok(Frame::NonTrade(kind::ACK));
    }
    let event: Event = match (envelope.stream, envelope.data, envelope.e) {
        (Some(_), Some(data), _) => {
            serde_json::from_str(data.get()).map_err(FrameError::unparsable)?
        }
        (_, _, Some(_)) => serde_json::from_slice(payload).map_err(FrameError::unparsable)?,
        _ => return Err(FrameError::missing("e")),
    };
    if event.e != "trade" {
        return Err(FrameError::unsupported(&event.e));
    }
    let trade_id = event.t.ok_or_else(|| FrameError::missing("t"))?;
    Ok(Frame::Trades(vec![ProviderTrade {
        symbol: event.s.ok_or_else(|| FrameError::missing("s"))?,
        venue: None,
        trade_id: Some(trade_id.to_string()),
        price: event.p.ok_or_else(|| FrameError::missing("p"))?,
        size: event.q.ok_or_else(|| FrameError::missing("q"))?,
        side: match event.m {
            Some(true) => Side::Sell,
            Some(false) => Side::Buy,
            None => Side::Unknown,
        },
        event_time: epoch_to_micros(event.T.ok_or_else(|| FrameError::missing("T"))?),
        provider_sequence: Some(trade_id),
        number: None,
        identity_extra: None,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trades::FrameErrorKind;

    /// The documented payload, in a combined-stream wrapper.
    const DOC: &str = r#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}"#;

    #[test]
    fn documented_trade() {
        let Frame::Trades(trades) = parse(DOC.as_bytes()).unwrap() else {
            panic!()
        };
        let t = &trades[0];
        assert_eq!(t.symbol, "BNBBTC");
        assert_eq!(t.trade_id.as_deref(), Some("12345"));
        assert_eq!((t.price.as_ref(), t.size.as_ref()), ("0.001", "100"));
        assert_eq!(t.side, Side::Sell, "buyer is maker: the aggressor sold");
        assert_eq!(t.event_time, 1_672_515_782_136_000);
    }

    #[test]
    fn raw_stream_and_control_frames() {
        let raw = r#"{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"67000.10","q":"0.5","T":1672515782136123,"m":false,"M":true}"#;
        let Frame::Trades(trades) = parse(raw.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(trades[0].side, Side::Buy);
        assert_eq!(trades[0].event_time, 1_672_515_782_136_123, "µs kept");
        for (frame, kind) in [
            (r#"{"result":null,"id":1}"#, kind::ACK),
            (
                r#"{"error":{"code":2,"msg":"Invalid request"},"id":1}"#,
                kind::PROVIDER_ERROR,
            ),
            (
                r#"{"code":1008,"msg":"Too many requests"}"#,
                kind::PROVIDER_ERROR,
            ),
        ] {
            assert_eq!(
                parse(frame.as_bytes()).unwrap(),
                Frame::NonTrade(kind),
                "{frame}"
            );
        }
    }

    #[test]
    fn bad_frames_say_why() {
        for (frame, reason) in [
            ("not json", FrameErrorKind::Unparsable),
            (
                r#"{"stream":"x","data":{"e":"kline","s":"BTCUSDT"}}"#,
                FrameErrorKind::Unsupported,
            ),
            (
                r#"{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"q":"1","T":1}}"#,
                FrameErrorKind::MissingField,
            ),
            (
                r#"{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":1.5,"q":"1","T":1}}"#,
                FrameErrorKind::Unparsable,
            ),
            (r#"{"hello":1}"#, FrameErrorKind::MissingField),
        ] {
            assert_eq!(parse(frame.as_bytes()).unwrap_err().kind, reason, "{frame}");
        }
    }
}
