//! What each WebSocket provider says and expects: its endpoint, its subscribe and unsubscribe
//! messages, its limits, and what each frame it sends is (market data, an acknowledgement, a
//! control frame, an error). The connection loop in `ws` is the same for every provider; adding a
//! provider means adding a module here and a line in [`by_name`].
//!
//! Classification reads only the few fields it needs; the frame itself goes to Kafka untouched.

pub mod binance;
pub mod coinbase;
pub mod finnhub;
pub mod kraken;

use std::sync::Arc;

use crate::config::ProviderDefaults;

/// What a frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Market data. `symbol`: the provider symbol when the frame has one (the Kafka key).
    Data { symbol: Option<String> },
    /// A documented frame that is not market data (heartbeat, status, pong, info); the name is
    /// a bounded metric label. Forwarded too: the raw topic keeps everything the provider said.
    Control(&'static str),
    /// The provider confirmed subscriptions: by request id and/or by symbol.
    Subscribed {
        request_id: Option<u64>,
        symbols: Vec<String>,
    },
    /// The provider refused a request. No request id and no symbols: it does not say which, so
    /// every pending subscription of the connection is marked failed.
    Rejected {
        request_id: Option<u64>,
        symbols: Vec<String>,
        message: String,
    },
    /// An error about the connection as a whole. `rate_limited`: the provider says we send too
    /// much; the reconnect then waits at least `rate_limit_backoff_ms`.
    Error { message: String, rate_limited: bool },
    /// Valid UTF-8 but not a frame this provider sends: dead-lettered with the reason.
    Malformed(String),
}

/// One WebSocket provider's protocol.
pub trait Protocol: Send + Sync + 'static {
    /// Provider id: the `provider` label, the raw topic suffix, the config table.
    fn provider(&self) -> &'static str;
    fn defaults(&self) -> ProviderDefaults;
    /// The URL actually dialled (Finnhub puts its token in the query string).
    fn connect_url(&self, url: &str, _token: Option<&str>) -> String {
        url.to_string()
    }
    /// Whether connecting needs an API token.
    fn needs_token(&self) -> bool {
        false
    }
    /// Symbols per subscribe or unsubscribe message.
    fn symbols_per_request(&self) -> usize;
    /// Messages that subscribe `symbols`; `request_id` is echoed by providers that acknowledge.
    fn subscribe(&self, symbols: &[String], request_id: u64) -> Vec<String>;
    fn unsubscribe(&self, symbols: &[String], request_id: u64) -> Vec<String>;
    fn classify(&self, text: &str) -> Inbound;
    /// The `channel` written into the RawEnvelope of a data frame.
    fn data_channel(&self) -> &'static str;
}

/// Every WebSocket provider.
pub const NAMES: [&str; 4] = ["binance", "coinbase", "kraken", "finnhub"];

pub fn by_name(name: &str) -> Option<Arc<dyn Protocol>> {
    Some(match name {
        "binance" => Arc::new(binance::Binance),
        "coinbase" => Arc::new(coinbase::Coinbase),
        "kraken" => Arc::new(kraken::Kraken),
        "finnhub" => Arc::new(finnhub::Finnhub),
        _ => return None,
    })
}

/// `text` read as `T` (only the fields a classifier needs; the rest is skipped unread), or why
/// it cannot be.
pub(crate) fn read<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, Inbound> {
    serde_json::from_str(text)
        .map_err(|e| Inbound::Malformed(format!("not a JSON object of this provider: {e}")))
}

/// Whether an error text says "too many requests" in one of the ways providers word it.
pub(crate) fn says_rate_limited(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "rate limit",
        "too many",
        "exceeded msg rate",
        "rate-limit",
        "ratelimit",
    ]
    .iter()
    .any(|p| m.contains(p))
}
