//! The vendor-neutral gRPC feed, `tickflow.feed.v1.ServerMessage` (protobuf), as ingest-gateway
//! stored it: one message per frame, the bytes the feed server sent.
//!
//! The contract, with every field documented: `proto/tickflow/feed/v1/feed.proto`.
//!
//! ```text
//! ServerMessage { trade: Trade { symbol: "AAPL", exchange: "XNAS", trade_id: "8812",
//!   price: "189.9700", size: "100", side: SIDE_BUY, event_time_us: 1763769600123457,
//!   sequence: 8812 } }
//! ```
//! Prices and sizes are decimal strings in the protocol: their text is kept as sent. An empty
//! `trade_id` means the source has none (an identity is derived later). Status, heartbeat, pong
//! and error messages are control messages; a message with no kind set (a kind this build does
//! not know) is unsupported.

use std::borrow::Cow;

use tickflow_shared::domain::Side;
use tickflow_shared::proto::feed::{server_message, subscription_status, ServerMessage, Trade};
use tickflow_shared::proto::Message as _;

use crate::trades::{kind, Frame, FrameError, ParseResult, ProviderTrade};

pub fn parse(payload: &[u8]) -> ParseResult<'_> {
    use server_message::Kind;
    let message = ServerMessage::decode(payload).map_err(|e| {
        FrameError::unparsable(format!("not a tickflow.feed.v1.ServerMessage: {e}"))
    })?;
    match message.kind {
        Some(Kind::Trade(trade)) => Ok(Frame::Trades(vec![self::trade(trade)?])),
        Some(Kind::SubscriptionStatus(status)) => {
            match subscription_status::State::try_from(status.state) {
                Ok(subscription_status::State::Rejected) => {
                    Ok(Frame::NonTrade(kind::PROVIDER_ERROR))
                }
                _ => Ok(Frame::NonTrade(kind::ACK)),
            }
        }
        Some(Kind::Heartbeat(_) | Kind::Pong(_)) => Ok(Frame::NonTrade(kind::HEARTBEAT)),
        Some(Kind::Error(_)) => Ok(Frame::NonTrade(kind::PROVIDER_ERROR)),
        None => Err(FrameError::unsupported("unknown (no kind set)")),
    }
}

fn trade<'a>(t: Trade) -> Result<ProviderTrade<'a>, FrameError> {
    let required = |value: String, name: &str| {
        if value.is_empty() {
            Err(FrameError::missing(name))
        } else {
            Ok(Cow::Owned(value))
        }
    };
    if t.event_time_us == 0 {
        return Err(FrameError::missing("event_time_us"));
    }
    let side = match t.side() {
        tickflow_shared::proto::feed::Side::Buy => Side::Buy,
        tickflow_shared::proto::feed::Side::Sell => Side::Sell,
        tickflow_shared::proto::feed::Side::Unspecified => Side::Unknown,
    };
    Ok(ProviderTrade {
        symbol: required(t.symbol, "symbol")?,
        venue: t.exchange.filter(|e| !e.is_empty()).map(Cow::Owned),
        trade_id: Some(t.trade_id).filter(|id| !id.is_empty()),
        price: required(t.price, "price")?,
        size: required(t.size, "size")?,
        side,
        event_time: t.event_time_us,
        provider_sequence: t.sequence,
        number: t.number,
        identity_extra: None,
    })
}

#[cfg(test)]
mod tests {
    use tickflow_shared::proto::feed::{self, subscription_status::State};

    use super::*;
    use crate::trades::FrameErrorKind;

    fn bytes(kind: server_message::Kind) -> Vec<u8> {
        ServerMessage { kind: Some(kind) }.encode_to_vec()
    }

    fn documented() -> feed::Trade {
        feed::Trade {
            symbol: "AAPL".into(),
            exchange: Some("XNAS".into()),
            trade_id: "8812".into(),
            price: "189.9700".into(),
            size: "0.000012345678".into(),
            side: feed::Side::Buy as i32,
            event_time_us: 1_763_769_600_123_457,
            sequence: Some(8812),
            number: None,
        }
    }

    #[test]
    fn a_trade_keeps_its_decimal_text() {
        let payload = bytes(server_message::Kind::Trade(documented()));
        let Frame::Trades(trades) = parse(&payload).unwrap() else {
            panic!()
        };
        assert_eq!(
            trades,
            vec![ProviderTrade {
                symbol: "AAPL".into(),
                venue: Some("XNAS".into()),
                trade_id: Some("8812".into()),
                price: "189.9700".into(),
                size: "0.000012345678".into(),
                side: Side::Buy,
                event_time: 1_763_769_600_123_457,
                provider_sequence: Some(8812),
                number: None,
                identity_extra: None,
            }]
        );

        // Optional parts left out: no venue, no id, no sequence, side unknown (also for a side
        // value this build does not know).
        for side in [0, 7] {
            let sparse = feed::Trade {
                exchange: None,
                trade_id: String::new(),
                sequence: None,
                side,
                ..documented()
            };
            let payload = bytes(server_message::Kind::Trade(sparse));
            let Frame::Trades(trades) = parse(&payload).unwrap() else {
                panic!()
            };
            let t = &trades[0];
            assert_eq!(
                (&t.venue, &t.trade_id, t.provider_sequence, t.side),
                (&None, &None, None, Side::Unknown)
            );
        }
    }

    #[test]
    fn control_messages() {
        let status = |state: State| {
            server_message::Kind::SubscriptionStatus(feed::SubscriptionStatus {
                symbol: "AAPL".into(),
                state: state as i32,
                message: String::new(),
            })
        };
        for (message, expected) in [
            (status(State::Subscribed), kind::ACK),
            (status(State::Unsubscribed), kind::ACK),
            (status(State::Rejected), kind::PROVIDER_ERROR),
            (
                server_message::Kind::Heartbeat(feed::Heartbeat { server_time_us: 1 }),
                kind::HEARTBEAT,
            ),
            (
                server_message::Kind::Pong(feed::Pong { id: 1 }),
                kind::HEARTBEAT,
            ),
            (
                server_message::Kind::Error(feed::Error {
                    code: "RATE_LIMITED".into(),
                    message: "slow down".into(),
                    rate_limited: true,
                }),
                kind::PROVIDER_ERROR,
            ),
        ] {
            assert_eq!(
                parse(&bytes(message.clone())).unwrap(),
                Frame::NonTrade(expected),
                "{message:?}"
            );
        }
    }

    #[test]
    fn bad_messages() {
        let without = |edit: fn(&mut feed::Trade)| {
            let mut t = documented();
            edit(&mut t);
            bytes(server_message::Kind::Trade(t))
        };
        for (payload, reason, detail) in [
            (
                without(|t| t.symbol.clear()),
                FrameErrorKind::MissingField,
                "symbol",
            ),
            (
                without(|t| t.price.clear()),
                FrameErrorKind::MissingField,
                "price",
            ),
            (
                without(|t| t.size.clear()),
                FrameErrorKind::MissingField,
                "size",
            ),
            (
                without(|t| t.event_time_us = 0),
                FrameErrorKind::MissingField,
                "event_time_us",
            ),
            // Truncated: a length of 5 with one byte behind it.
            (vec![0x0a, 0x05, 0x01], FrameErrorKind::Unparsable, "Server"),
            // JSON is not this feed.
            (
                br#"{"type":"trade"}"#.to_vec(),
                FrameErrorKind::Unparsable,
                "Server",
            ),
            // A kind a newer server knows and this build does not (field 15).
            (
                vec![0x7a, 0x01, b'x'],
                FrameErrorKind::Unsupported,
                "unknown",
            ),
        ] {
            let e = parse(&payload).unwrap_err();
            assert_eq!(e.kind, reason, "{payload:?}: {e:?}");
            assert!(e.detail.contains(detail), "{payload:?}: {e:?}");
        }
    }

    /// Only `number` (a numbering without holes, per the proto) is the trade's number for gap
    /// detection; `sequence` promises no such thing.
    #[test]
    fn the_number_is_what_gaps_are_found_in() {
        use crate::Provider as _;
        for (number, expected) in [(Some(41), Some(41)), (None, None)] {
            let payload = bytes(server_message::Kind::Trade(feed::Trade {
                number,
                ..documented()
            }));
            let Frame::Trades(trades) = parse(&payload).unwrap() else {
                panic!()
            };
            assert_eq!(super::super::Grpc.trade_number(&trades[0]), expected);
        }
    }
}
