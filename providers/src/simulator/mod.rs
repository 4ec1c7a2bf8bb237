//! ingest-gateway's built-in simulated venues (`ingest_gateway::simulator` writes the frames).
//!
//! [`trades`]: the trades in a frame (normalizer). Each file opens with the provider's
//! documentation and the payloads it shows; its tests use those payloads.

pub mod trades;

use crate::{ParseResult, Provider, ProviderId};

pub const ID: ProviderId = ProviderId::new("simulator");

pub struct Simulator;

impl Provider for Simulator {
    fn id(&self) -> ProviderId {
        ID
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a> {
        trades::parse(payload)
    }
}
