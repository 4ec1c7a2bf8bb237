//! The data providers tickflow reads, one folder each.
//!
//! A provider's folder holds everything about it: the documentation links and the payloads its
//! docs show, its WebSocket subscription protocol (`stream.rs`, used by ingest-gateway), its
//! trade parsing (`trades.rs`, used by the normalizer) and the tests of both against those
//! documented payloads. The services know providers only through [`Provider`] and the list
//! [`ALL`]:
//!
//! - ingest-gateway connects every enabled provider that has a [`Provider::websocket`] protocol
//!   (the gRPC feed and the simulator have transports of their own in the gateway) and forwards
//!   each frame, untouched, to `md.raw.<id>`;
//! - the normalizer reads the provider id from each raw envelope, finds the provider with
//!   [`by_id`] and asks it for the trades in the frame ([`Provider::parse`]).
//!
//! Adding a provider: a new folder beside `binance/` with the struct, its `Provider` impl (and
//! `WebSocket` impl for a WebSocket feed), and one line in [`ALL`]. `docs/providers.md` walks
//! through it.

pub mod backfill;
pub mod trades;
pub mod websocket;

pub mod binance;
pub mod coinbase;
pub mod finnhub;
pub mod grpc;
pub mod kraken;
pub mod simulator;

use std::fmt;

pub use backfill::Backfill;
pub use trades::{Frame, FrameError, FrameErrorKind, ParseResult, ProviderTrade};
pub use websocket::{Inbound, WebSocket};

/// Every provider, in the order they are listed in logs and docs. The one place a provider is
/// registered.
pub static ALL: &[&dyn Provider] = &[
    &binance::Binance,
    &coinbase::Coinbase,
    &kraken::Kraken,
    &finnhub::Finnhub,
    &grpc::Grpc,
    &simulator::Simulator,
];

/// A provider's id: the `provider` metric label, the raw topic suffix (`md.raw.<id>`), the
/// RawEnvelope's `provider` field, the gateway's config table (`[gateway.<id>]`) and the
/// instruments file's listing key. Only the providers' own constants make one, so an id in hand
/// always names a provider that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(&'static str);

impl ProviderId {
    pub(crate) const fn new(id: &'static str) -> Self {
        Self(id)
    }

    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The id named by `text`, if a provider has it.
    pub fn parse(text: &str) -> Option<Self> {
        by_id(text).map(|p| p.id())
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl AsRef<str> for ProviderId {
    fn as_ref(&self) -> &str {
        self.0
    }
}

/// One data provider.
pub trait Provider: Send + Sync + 'static {
    fn id(&self) -> ProviderId;

    /// The trades in one frame, exactly as the gateway received it, still in the provider's
    /// terms (its symbol, the price as the text it sent); or the kind of a documented non-trade
    /// frame; or why the frame cannot be read.
    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a>;

    /// The trade's number in a sequence the provider documents as consecutive per symbol, so
    /// that a number skipped is a trade printed and never received (the normalizer reports the
    /// hole as a gap). `None` for a provider that promises no such numbering.
    fn trade_number(&self, _trade: &ProviderTrade<'_>) -> Option<u64> {
        None
    }

    /// How to fetch the provider's past trades by trade id, when its REST API serves them.
    fn backfill(&self) -> Option<&dyn Backfill> {
        None
    }

    /// The provider's WebSocket protocol, when it is reached over WebSocket through the
    /// gateway's shared connection loop.
    fn websocket(&self) -> Option<&dyn WebSocket> {
        None
    }
}

/// The provider with this id.
pub fn by_id(id: &str) -> Option<&'static dyn Provider> {
    ALL.iter().copied().find(|p| p.id().as_str() == id)
}

/// Every provider id, as text (for messages that list them).
pub fn ids() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|p| p.id().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_found() {
        let mut seen = std::collections::BTreeSet::new();
        for p in ALL {
            assert!(seen.insert(p.id()), "{} listed twice", p.id());
            assert_eq!(by_id(p.id().as_str()).map(|q| q.id()), Some(p.id()));
            assert!(
                p.id()
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{}: an id is a topic suffix and a config key",
                p.id()
            );
            if let Some(ws) = p.websocket() {
                assert_eq!(ws.provider(), p.id().as_str());
            }
        }
        assert!(by_id("nasdaq").is_none());
        assert_eq!(ProviderId::parse("kraken"), Some(kraken::ID));
    }
}
