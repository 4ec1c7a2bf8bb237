//! Finnhub WebSocket trades.
//!
//! <https://finnhub.io/docs/api/websocket-trades>
//!
//! ```json
//! {"data":[{"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467,"c":null}],
//!  "type":"trade"}
//! ```
//! `p` price and `v` volume are JSON numbers (their text is kept), `t` is epoch ms, `c` the
//! trade conditions. There is no trade id and no side: the identity of a trade is derived from
//! its own fields, so the same trade delivered again (Finnhub does that) is recognised. Two
//! genuinely different trades with the same symbol, price, volume, millisecond and conditions
//! cannot be told apart by anyone and count once. `{"type":"ping"}` is the heartbeat and
//! `{"type":"error","msg":...}` the provider's error.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tickflow_shared::domain::Side;

use crate::trades::{epoch_to_micros, kind, Frame, FrameError, ParseResult, ProviderTrade};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<Vec<Item<'a>>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    p: Option<&'a RawValue>,
    #[serde(borrow, default)]
    s: Option<Cow<'a, str>>,
    #[serde(default)]
    t: Option<i64>,
    #[serde(borrow, default)]
    v: Option<&'a RawValue>,
    #[serde(borrow, default)]
    c: Option<&'a RawValue>,
}

pub fn parse(payload: &[u8]) -> ParseResult<'_> {
    let m: Message = serde_json::from_slice(payload).map_err(FrameError::unparsable)?;
    match m.kind.as_ref() {
        "trade" => {}
        "ping" => return Ok(Frame::NonTrade(kind::HEARTBEAT)),
        "error" => return Ok(Frame::NonTrade(kind::PROVIDER_ERROR)),
        other => return Err(FrameError::unsupported(other)),
    }
    let items = m.data.ok_or_else(|| FrameError::missing("data"))?;
    items
        .into_iter()
        .map(|item| {
            Ok(ProviderTrade {
                symbol: item.s.ok_or_else(|| FrameError::missing("s"))?,
                venue: None,
                trade_id: None,
                price: Cow::Borrowed(item.p.ok_or_else(|| FrameError::missing("p"))?.get()),
                size: Cow::Borrowed(item.v.ok_or_else(|| FrameError::missing("v"))?.get()),
                side: Side::Unknown,
                event_time: epoch_to_micros(item.t.ok_or_else(|| FrameError::missing("t"))?),
                provider_sequence: None,
                number: None,
                identity_extra: item.c.map(|c| Cow::Borrowed(c.get())),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Frame::Trades)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trades::FrameErrorKind;

    const DOC: &str = r#"{"data":[{"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467,"c":null},{"c":["1","8","24","12"],"p":190.21,"s":"AAPL","t":1575526691135,"v":100}],"type":"trade"}"#;

    #[test]
    fn documented_trades() {
        let Frame::Trades(trades) = parse(DOC.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(trades.len(), 2);
        let t = &trades[0];
        assert_eq!(t.symbol, "BINANCE:BTCUSDT");
        assert_eq!((t.price.as_ref(), t.size.as_ref()), ("7296.89", "0.011467"));
        assert_eq!(t.event_time, 1_575_526_691_134_000);
        assert_eq!((t.side, t.trade_id.as_deref()), (Side::Unknown, None));
        assert_eq!(
            trades[1].identity_extra.as_deref(),
            Some(r#"["1","8","24","12"]"#)
        );
    }

    #[test]
    fn control_and_bad_frames() {
        assert_eq!(
            parse(br#"{"type":"ping"}"#).unwrap(),
            Frame::NonTrade(kind::HEARTBEAT)
        );
        assert_eq!(
            parse(br#"{"type":"error","msg":"Invalid token"}"#).unwrap(),
            Frame::NonTrade(kind::PROVIDER_ERROR)
        );
        for (frame, reason) in [
            (r#"{"type":"news"}"#, FrameErrorKind::Unsupported),
            (r#"{"type":"trade"}"#, FrameErrorKind::MissingField),
            (
                r#"{"type":"trade","data":[{"s":"AAPL","t":1,"v":1}]}"#,
                FrameErrorKind::MissingField,
            ),
            ("\u{0}\u{1}", FrameErrorKind::Unparsable),
        ] {
            assert_eq!(parse(frame.as_bytes()).unwrap_err().kind, reason, "{frame}");
        }
    }
}
