//! Kraken WebSocket API v2, the `trade` channel.
//!
//! [`stream`]: the WebSocket endpoint, subscriptions and frame classification (ingest-gateway);
//! [`trades`]: the trades in a frame (normalizer); [`rest`]: past trades by time, to fill a gap
//! (ingest-gateway's backfill). Each file opens with the provider's
//! documentation and the payloads it shows; its tests use those payloads.

pub mod rest;
pub mod stream;
pub mod trades;

use crate::{ParseResult, Provider, ProviderId, ProviderTrade, WebSocket};

pub const ID: ProviderId = ProviderId::new("kraken");

pub struct Kraken;

impl Provider for Kraken {
    fn id(&self) -> ProviderId {
        ID
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a> {
        trades::parse(payload)
    }

    /// `trade_id` is sequential per pair.
    fn trade_number(&self, trade: &ProviderTrade<'_>) -> Option<u64> {
        trade.trade_id.as_deref()?.parse().ok()
    }

    fn websocket(&self) -> Option<&dyn WebSocket> {
        Some(self)
    }

    fn backfill(&self) -> Option<&dyn crate::Backfill> {
        Some(self)
    }
}
