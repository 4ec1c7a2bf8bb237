//! Binance spot trade streams.
//!
//! [`stream`]: the WebSocket endpoint, subscriptions and frame classification (ingest-gateway);
//! [`trades`]: the trades in a frame (normalizer). Each file opens with the provider's
//! documentation and the payloads it shows; its tests use those payloads.

pub mod stream;
pub mod trades;

use crate::{ParseResult, Provider, ProviderId, ProviderTrade, WebSocket};

pub const ID: ProviderId = ProviderId::new("binance");

pub struct Binance;

impl Provider for Binance {
    fn id(&self) -> ProviderId {
        ID
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a> {
        trades::parse(payload)
    }

    /// `t`, "trade id", is consecutive per symbol (historical trades are fetched by `fromId`).
    fn trade_number(&self, trade: &ProviderTrade<'_>) -> Option<u64> {
        trade.trade_id.as_deref()?.parse().ok()
    }

    fn websocket(&self) -> Option<&dyn WebSocket> {
        Some(self)
    }
}
