//! The vendor-neutral gRPC feed, `tickflow.feed.v1` (its contract:
//! `proto/tickflow/feed/v1/feed.proto`). The gateway reads it through its own gRPC client
//! (`ingest_gateway::grpc`), not the WebSocket loop.
//!
//! [`trades`]: the trades in a frame (normalizer). Each file opens with the provider's
//! documentation and the payloads it shows; its tests use those payloads.

pub mod trades;

use crate::{ParseResult, Provider, ProviderId, ProviderTrade};

pub const ID: ProviderId = ProviderId::new("grpc");

pub struct Grpc;

impl Provider for Grpc {
    fn id(&self) -> ProviderId {
        ID
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a> {
        trades::parse(payload)
    }

    /// `number`, when the feed sets it: a numbering without holes per symbol (the proto says so),
    /// so its gaps are found, and replayed by the feed's Replay call.
    fn trade_number(&self, trade: &ProviderTrade<'_>) -> Option<u64> {
        trade.number
    }
}
