//! What a WebSocket provider says and expects: its endpoint, its subscribe and unsubscribe
//! messages, its limits, and what each frame it sends is (market data, an acknowledgement, a
//! control frame, an error). ingest-gateway's connection loop is the same for every provider and
//! asks the provider's [`WebSocket`] for each of these.
//!
//! Classification reads only the few fields it needs, and leniently: the frame itself goes to
//! Kafka untouched and the normalizer's parsing ([`crate::Provider::parse`]) is what judges a
//! trade and names the reason it cannot be read. That is why a provider's `stream.rs` reads its
//! frames through a view of its own, smaller than the one `trades.rs` reads trades with.

use crate::Provider;

/// What a provider chooses where its gateway table (`[gateway.<id>]`) is silent.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub url: &'static str,
    pub max_streams_per_connection: usize,
    pub max_messages_per_s: f64,
    pub data_silence_timeout_ms: u64,
}

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
pub trait WebSocket: Provider {
    /// The provider id as text: the `provider` label, the raw topic suffix, the config table.
    fn provider(&self) -> &'static str {
        self.id().as_str()
    }
    fn defaults(&self) -> Defaults;
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
