//! The simulator's wire format: what ingest-gateway's built-in simulated provider sends and the
//! normalizer parses. One JSON object per frame; prices and sizes are strings so that exact
//! decimals (and, on purpose, bad ones such as `"NaN"` or `"-1"`) travel untouched.
//!
//! ```json
//! {"type":"trade","venue":"sim-a","symbol":"BTC-USD","trade_id":"sim-a-42","price":"67012.34","size":"0.015","side":"buy","ts_us":1763769600000000,"seq":42}
//! {"type":"heartbeat","ts_us":1763769600000000}
//! ```

use serde::{Deserialize, Serialize};

/// One simulator frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SimMessage {
    Trade(SimTrade),
    Heartbeat { ts_us: i64 },
}

/// A simulated trade on one venue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimTrade {
    /// The simulated venue (exchange) of the trade.
    pub venue: String,
    /// Canonical instrument; the simulator's symbol is the canonical id.
    pub symbol: String,
    pub trade_id: String,
    pub price: String,
    pub size: String,
    /// Aggressor side: `buy` or `sell`.
    pub side: String,
    /// Event time, µs since the epoch.
    pub ts_us: i64,
    /// Per-venue sequence number.
    pub seq: i64,
}
