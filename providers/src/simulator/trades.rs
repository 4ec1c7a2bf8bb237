//! The gateway's built-in simulator (format in `tickflow_shared::simfeed`): one trade or one
//! heartbeat per frame, the venue named in each trade.

use std::borrow::Cow;

use serde::Deserialize;
use tickflow_shared::domain::Side;

use crate::trades::{kind, Frame, FrameError, ParseResult, ProviderTrade};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    venue: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    symbol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    trade_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    price: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    size: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    side: Option<Cow<'a, str>>,
    #[serde(default)]
    ts_us: Option<i64>,
    #[serde(default)]
    seq: Option<i64>,
}

pub fn parse(payload: &[u8]) -> ParseResult<'_> {
    let m: Message = serde_json::from_slice(payload).map_err(FrameError::unparsable)?;
    match m.kind.as_ref() {
        "trade" => {}
        "heartbeat" => return Ok(Frame::NonTrade(kind::HEARTBEAT)),
        other => return Err(FrameError::unsupported(other)),
    }
    Ok(Frame::Trades(vec![ProviderTrade {
        symbol: m.symbol.ok_or_else(|| FrameError::missing("symbol"))?,
        venue: Some(m.venue.ok_or_else(|| FrameError::missing("venue"))?),
        trade_id: Some(
            m.trade_id
                .ok_or_else(|| FrameError::missing("trade_id"))?
                .into_owned(),
        ),
        price: m.price.ok_or_else(|| FrameError::missing("price"))?,
        size: m.size.ok_or_else(|| FrameError::missing("size"))?,
        side: match m.side.as_deref() {
            Some("buy") => Side::Buy,
            Some("sell") => Side::Sell,
            _ => Side::Unknown,
        },
        event_time: m.ts_us.ok_or_else(|| FrameError::missing("ts_us"))?,
        provider_sequence: m.seq,
        number: None,
        identity_extra: None,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trades::FrameErrorKind;
    use tickflow_shared::simfeed::{SimMessage, SimTrade};

    #[test]
    fn what_the_simulator_writes_is_read_back() {
        let sim = SimTrade {
            venue: "sim-a".into(),
            symbol: "BTC-USD".into(),
            trade_id: "sim-a-42".into(),
            price: "67012.340".into(),
            size: "0.015".into(),
            side: "sell".into(),
            ts_us: 1_763_769_600_000_001,
            seq: 42,
        };
        let bytes = serde_json::to_vec(&SimMessage::Trade(sim)).unwrap();
        let Frame::Trades(trades) = parse(&bytes).unwrap() else {
            panic!()
        };
        let t = &trades[0];
        assert_eq!(t.venue.as_deref(), Some("sim-a"));
        assert_eq!((t.price.as_ref(), t.side), ("67012.340", Side::Sell));
        assert_eq!(
            (t.event_time, t.provider_sequence),
            (1_763_769_600_000_001, Some(42))
        );
        let beat = serde_json::to_vec(&SimMessage::Heartbeat { ts_us: 1 }).unwrap();
        assert_eq!(parse(&beat).unwrap(), Frame::NonTrade(kind::HEARTBEAT));
        assert_eq!(
            parse(br#"{"type":"trade","symbol":"X"}"#).unwrap_err().kind,
            FrameErrorKind::MissingField
        );
    }
}
