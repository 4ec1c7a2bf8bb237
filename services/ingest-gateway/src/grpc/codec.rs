//! The feed's messages on the wire: a codec that hands every ServerMessage over as the bytes that
//! arrived (they go to Kafka untouched), and the classification of a decoded copy.

use bytes::{Buf, Bytes};
use tickflow_shared::proto::feed::{
    server_message, subscription_status, ClientMessage, ServerMessage,
};
use tickflow_shared::proto::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Encodes what the gateway sends with prost; hands what the server sends over as its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = ClientMessage;
    type Decode = Bytes;
    type Encoder = ClientEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ClientEncoder {
        ClientEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ClientEncoder;

impl Encoder for ClientEncoder {
    type Item = ClientMessage;
    type Error = Status;

    fn encode(&mut self, item: ClientMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a ClientMessage: {e}")))
    }
}

/// One gRPC message (the bytes after the 5-byte length prefix), as it arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What a ServerMessage is, as far as the connection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A trade; the symbol when it has one (the Kafka key).
    Trade {
        symbol: Option<String>,
    },
    Subscribed(String),
    /// The server stopped a symbol: after our Unsubscribe, or on its own.
    Unsubscribed {
        symbol: String,
        message: String,
    },
    Rejected {
        symbol: String,
        message: String,
    },
    /// Heartbeat, pong, a status without state, or a kind this version does not know: kept, no
    /// effect. The name is a bounded metric label.
    Control(&'static str),
    Error {
        code: String,
        message: String,
        rate_limited: bool,
    },
    /// Not a ServerMessage: dead-lettered.
    Malformed(String),
}

/// Reads a copy of the bytes; they themselves are forwarded untouched.
pub fn classify(payload: &[u8]) -> Received {
    use server_message::Kind;
    use subscription_status::State;
    let message = match ServerMessage::decode(payload) {
        Ok(m) => m,
        Err(e) => return Received::Malformed(format!("not a tickflow.feed.v1.ServerMessage: {e}")),
    };
    match message.kind {
        Some(Kind::Trade(t)) => Received::Trade {
            symbol: Some(t.symbol).filter(|s| !s.is_empty()),
        },
        Some(Kind::SubscriptionStatus(s)) => match State::try_from(s.state) {
            Ok(State::Subscribed) => Received::Subscribed(s.symbol),
            Ok(State::Unsubscribed) => Received::Unsubscribed {
                symbol: s.symbol,
                message: s.message,
            },
            Ok(State::Rejected) => Received::Rejected {
                symbol: s.symbol,
                message: s.message,
            },
            Ok(State::Unspecified) | Err(_) => Received::Control("status"),
        },
        Some(Kind::Heartbeat(_)) => Received::Control("heartbeat"),
        Some(Kind::Pong(_)) => Received::Control("pong"),
        Some(Kind::Error(e)) => Received::Error {
            code: e.code,
            message: e.message,
            rate_limited: e.rate_limited,
        },
        None => Received::Control("unknown"),
    }
}
