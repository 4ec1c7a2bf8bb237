//! ingest-gateway's configuration: `[service]`, `[kafka]`, `[registry]` and `[gateway]` (with
//! `[gateway.admin]`, one table per provider and `[gateway.simulator]`). Layering and error
//! reporting come from `tickflow_shared::config`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tickflow_providers::websocket::Defaults;
use tickflow_shared::config::{KafkaConfig, Problems, RegistryConfig, ServiceConfig, Validate};
use tickflow_shared::service::ServiceRoot;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[service]`: HTTP endpoint, logs, shutdown deadline, metric label guard.
    pub service: ServiceConfig,
    /// `[kafka]`: brokers, security, producer settings, topic overrides.
    pub kafka: KafkaConfig,
    /// `[registry]`: the Confluent-compatible schema registry.
    pub registry: RegistryConfig,
    /// `[gateway]`: reference data, queue, frame limits, and the providers.
    pub gateway: GatewayConfig,
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// This replica's shard, from 0, and the number of replicas: an instrument belongs to the
    /// replica `hash(instrument) mod replica_count`, so replicas share the work with no overlap
    /// and no gap. In Kubernetes the StatefulSet passes the pod's ordinal.
    pub replica_index: u32,
    pub replica_count: u32,
    /// Instruments file (`[[instrument]]` tables): which symbols each provider is subscribed to.
    pub instruments_file: Option<PathBuf>,
    /// Frames held between the connections and the Kafka producer. When full, connections wait
    /// (backpressure) unless `drop_when_full`.
    pub queue_capacity: usize,
    /// Drop frames instead of waiting when the queue is full. Every drop is counted and logged.
    pub drop_when_full: bool,
    /// Frames larger than this are not forwarded: counted, logged with a sample. Bytes.
    pub max_frame_bytes: usize,
    /// Raw topics are `<raw_topic_prefix><provider>`.
    pub raw_topic_prefix: String,
    /// Where malformed frames (not JSON, invalid UTF-8, oversized, not a known message) are kept,
    /// with the reason in headers; empty = counted and logged only.
    pub dlq_topic: String,
    /// A dead-lettered frame keeps at most this many bytes of its payload (the header
    /// `tickflow.original_length` says how long it was). Bytes.
    pub dlq_max_payload_bytes: usize,
    /// The config file (and the instruments file) are checked for changes this often; a change
    /// updates the subscriptions without restart. 0 = never.
    pub reload_interval_ms: u64,
    /// `[gateway.admin]`: the admin HTTP API.
    pub admin: AdminConfig,
    /// One table per provider: `[gateway.binance]`, `[gateway.coinbase]`, `[gateway.kraken]`,
    /// `[gateway.finnhub]`, `[gateway.grpc]`.
    pub binance: ProviderConfig,
    pub coinbase: ProviderConfig,
    pub kraken: ProviderConfig,
    pub finnhub: ProviderConfig,
    pub grpc: ProviderConfig,
    /// `[gateway.simulator]`: the built-in simulated provider.
    pub simulator: SimulatorConfig,
    /// `[gateway.backfill]`: filling gaps from the providers' REST APIs.
    pub backfill: BackfillConfig,
}

/// `[gateway.backfill]`: the trades of each gap the normalizer publishes, fetched from the
/// provider's REST API (Binance, Coinbase) and put on the raw topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    pub enabled: bool,
    /// Where the normalizer publishes gaps.
    pub gaps_topic: String,
    /// Consumer group of the backfill, shared by the replicas (one of them walks a gap).
    pub group_id: String,
    /// Trades asked per request (the provider's own maximum applies: Binance and Coinbase 1000).
    pub page_limit: u32,
    /// A gap larger than this is not fetched (logged and counted as failed).
    pub max_trades_per_gap: u64,
    /// Failed requests in a row before a gap is given up.
    pub max_attempts: u32,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            gaps_topic: tickflow_shared::kafka::names::GAPS.into(),
            group_id: "ingest-gateway-backfill".into(),
            page_limit: 1000,
            max_trades_per_gap: 1_000_000,
            max_attempts: 10,
        }
    }
}

/// `[gateway.admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin API; bound to localhost unless configured. Empty = no admin API.
    pub listen: String,
    /// Environment variable holding the bearer token.
    pub token_env: String,
    /// File holding the bearer token (a mounted secret); read when the variable is unset.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9111".into(),
            token_env: "TICKFLOW_GATEWAY_ADMIN_TOKEN".into(),
            token_file: None,
        }
    }
}

/// One provider's table. Unset values take the provider's own default (docs/configuration.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub enabled: bool,
    /// Endpoint (`wss://...` for WebSocket providers, `http(s)://host:port` for gRPC).
    pub url: Option<String>,
    /// Canonical instruments to subscribe; empty = every active instrument that the instruments
    /// file lists for this provider.
    pub instruments: Vec<String>,
    /// Streams per connection before another connection is opened (Binance allows 1024).
    pub max_streams_per_connection: Option<usize>,
    /// Subscribe and unsubscribe requests the gateway sends per second and connection (Binance
    /// allows 5 messages, its pings included; pings go out every `ping_interval_ms`, unpaced).
    pub max_messages_per_s: Option<f64>,
    /// A WebSocket ping is sent this often. ms.
    pub ping_interval_ms: Option<u64>,
    /// No frame at all for this long: the connection is dead, reconnect. ms.
    pub silence_timeout_ms: Option<u64>,
    /// No market data (pings and heartbeats do not count) for this long while subscribed:
    /// reconnect. 0 = never. ms.
    pub data_silence_timeout_ms: Option<u64>,
    /// Reconnect backoff: first delay, ceiling (exponential, with full jitter). ms.
    pub reconnect_initial_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    /// After the provider says "too many requests", wait at least this long. ms.
    pub rate_limit_backoff_ms: Option<u64>,
    /// Connect (TCP + TLS + handshake) must finish within this. ms.
    pub connect_timeout_ms: Option<u64>,
    /// Environment variable with the API token (Finnhub), and a file read when it is unset.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Base URL of the provider's REST API, where the backfill fetches past trades (Binance,
    /// Coinbase). Unset: the provider's production API.
    pub rest_url: Option<String>,
    /// `[gateway.grpc.tls]`: how the gRPC feed's `https://` server is trusted, and this client's
    /// certificate. WebSocket providers' `wss://` use the system's roots.
    pub tls: TlsConfig,
}

/// TLS of the gRPC feed client, used with an `https://` url.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates that sign the server's certificate, trusted instead of
    /// the system's roots. Unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM files of this client's certificate (chain) and private key, for servers that ask for
    /// one (mutual TLS). Both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the url's host.
    pub domain: Option<String>,
}

impl TlsConfig {
    fn is_set(&self) -> bool {
        *self != TlsConfig::default()
    }
}

/// A provider's settings with its defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    pub url: String,
    pub max_streams_per_connection: usize,
    pub max_messages_per_s: f64,
    pub ping_interval: Duration,
    pub silence_timeout: Duration,
    pub data_silence_timeout: Option<Duration>,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    pub rate_limit_backoff: Duration,
    pub connect_timeout: Duration,
}

impl ProviderConfig {
    pub fn settings(&self, d: &Defaults) -> ProviderSettings {
        let ms = Duration::from_millis;
        ProviderSettings {
            url: self.url.clone().unwrap_or_else(|| d.url.to_string()),
            max_streams_per_connection: self
                .max_streams_per_connection
                .unwrap_or(d.max_streams_per_connection),
            max_messages_per_s: self.max_messages_per_s.unwrap_or(d.max_messages_per_s),
            ping_interval: ms(self.ping_interval_ms.unwrap_or(15_000)),
            silence_timeout: ms(self.silence_timeout_ms.unwrap_or(45_000)),
            data_silence_timeout: Some(
                self.data_silence_timeout_ms
                    .unwrap_or(d.data_silence_timeout_ms),
            )
            .filter(|&v| v > 0)
            .map(ms),
            reconnect_initial: ms(self.reconnect_initial_ms.unwrap_or(500)),
            reconnect_max: ms(self.reconnect_max_ms.unwrap_or(30_000)),
            rate_limit_backoff: ms(self.rate_limit_backoff_ms.unwrap_or(60_000)),
            connect_timeout: ms(self.connect_timeout_ms.unwrap_or(10_000)),
        }
    }

    fn validate(&self, name: &str, problems: &mut Problems) {
        let key = |k: &str| format!("gateway.{name}.{k}");
        if let Some(url) = &self.rest_url {
            let backfilled =
                tickflow_providers::by_id(name).is_some_and(|p| p.backfill().is_some());
            problems.check(
                backfilled,
                &key("rest_url"),
                "this provider has no backfill: only Binance and Coinbase are fetched from REST",
            );
            problems.check(
                url.starts_with("http://") || url.starts_with("https://"),
                &key("rest_url"),
                "must start with http:// or https://",
            );
        }
        if let Some(url) = &self.url {
            let ok = if name == "grpc" {
                url.starts_with("http://") || url.starts_with("https://")
            } else {
                url.starts_with("ws://") || url.starts_with("wss://")
            };
            problems.check(
                ok,
                &key("url"),
                if name == "grpc" {
                    "must start with http:// or https://"
                } else {
                    "must start with ws:// or wss://"
                },
            );
        }
        if name != "grpc" {
            problems.check(
                !self.tls.is_set(),
                &key("tls"),
                "only the gRPC feed reads it; WebSocket providers trust the system's roots",
            );
        } else if self.tls.is_set() {
            problems.check(
                self.url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
                &key("tls"),
                "is set, but the url is not https://: it would not be used",
            );
            problems.check(
                self.tls.cert_file.is_some() == self.tls.key_file.is_some(),
                &key(if self.tls.cert_file.is_some() {
                    "tls.key_file"
                } else {
                    "tls.cert_file"
                }),
                "a client certificate needs both tls.cert_file and tls.key_file",
            );
            for (k, file) in [
                ("tls.ca_file", &self.tls.ca_file),
                ("tls.cert_file", &self.tls.cert_file),
                ("tls.key_file", &self.tls.key_file),
            ] {
                if let Some(file) = file {
                    problems.check(
                        file.is_file(),
                        &key(k),
                        format!("{} is not a readable file", file.display()),
                    );
                }
            }
        }
        if let Some(n) = self.max_streams_per_connection {
            problems.check(n >= 1, &key("max_streams_per_connection"), "must be >= 1");
        }
        if let Some(r) = self.max_messages_per_s {
            problems.check(
                r.is_finite() && r > 0.0,
                &key("max_messages_per_s"),
                "must be > 0",
            );
        }
        for (k, v, min) in [
            ("ping_interval_ms", self.ping_interval_ms, 100),
            ("silence_timeout_ms", self.silence_timeout_ms, 100),
            ("reconnect_initial_ms", self.reconnect_initial_ms, 1),
            ("reconnect_max_ms", self.reconnect_max_ms, 1),
            ("connect_timeout_ms", self.connect_timeout_ms, 100),
        ] {
            if let Some(v) = v {
                problems.check(v >= min, &key(k), format!("must be >= {min}"));
            }
        }
        if let (Some(a), Some(b)) = (self.reconnect_initial_ms, self.reconnect_max_ms) {
            problems.check(
                a <= b,
                &key("reconnect_max_ms"),
                "must be >= reconnect_initial_ms",
            );
        }
        let mut seen = BTreeSet::new();
        for i in &self.instruments {
            problems.check(
                seen.insert(i),
                &key("instruments"),
                format!("{i:?} is listed twice"),
            );
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            replica_index: 0,
            replica_count: 1,
            instruments_file: None,
            queue_capacity: 65_536,
            drop_when_full: false,
            max_frame_bytes: 1 << 20,
            raw_topic_prefix: tickflow_shared::kafka::names::RAW_PREFIX.into(),
            dlq_topic: tickflow_shared::kafka::names::DLQ_GATEWAY.into(),
            dlq_max_payload_bytes: 64 * 1024,
            reload_interval_ms: 2_000,
            admin: AdminConfig::default(),
            binance: ProviderConfig::default(),
            coinbase: ProviderConfig::default(),
            kraken: ProviderConfig::default(),
            finnhub: ProviderConfig::default(),
            grpc: ProviderConfig::default(),
            simulator: SimulatorConfig::default(),
            backfill: BackfillConfig::default(),
        }
    }
}

/// `[gateway.simulator]`: several venues per instrument with correlated random-walk prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    pub enabled: bool,
    /// Messages per second, all venues and instruments together (up to 200,000).
    pub rate: u32,
    /// Same seed, same stream of prices, sizes, ids and faults.
    pub seed: u64,
    /// Simulated venues; every instrument trades on each.
    pub venues: Vec<String>,
    /// Canonical instruments to simulate; empty means every instrument with a `simulator`
    /// listing in the instruments file (or BTC-USD, ETH-USD, SOL-USD without a file).
    pub instruments: Vec<String>,
    /// Every this many seconds the rate is multiplied by `burst_factor` for one second; 0 = never.
    pub burst_every_s: u64,
    pub burst_factor: u32,
    /// Fraction of trades sent a second time (a duplicate, as after a provider reconnect).
    pub duplicate_ratio: f64,
    /// Fraction of trades whose event time is pushed up to 2 s into the past (out of order).
    pub out_of_order_ratio: f64,
    /// Fraction of trades with a bad price (`NaN`, negative, zero or absurdly large).
    pub bad_price_ratio: f64,
    /// A venue whose prices drift away from the others by `drift_pct` percent; empty = none.
    pub drift_venue: String,
    pub drift_pct: f64,
    /// A venue that sends nothing; empty = none.
    pub silent_venue: String,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 200,
            seed: 42,
            venues: vec!["sim-a".into(), "sim-b".into(), "sim-c".into()],
            instruments: Vec::new(),
            burst_every_s: 0,
            burst_factor: 5,
            duplicate_ratio: 0.0,
            out_of_order_ratio: 0.0,
            bad_price_ratio: 0.0,
            drift_venue: String::new(),
            drift_pct: 0.0,
            silent_venue: String::new(),
        }
    }
}

impl GatewayConfig {
    /// The provider tables by provider id.
    pub fn providers(&self) -> [(&'static str, &ProviderConfig); 5] {
        use tickflow_providers::{binance, coinbase, finnhub, grpc, kraken};
        [
            (binance::ID.as_str(), &self.binance),
            (coinbase::ID.as_str(), &self.coinbase),
            (kraken::ID.as_str(), &self.kraken),
            (finnhub::ID.as_str(), &self.finnhub),
            (grpc::ID.as_str(), &self.grpc),
        ]
    }

    fn validate(&self, problems: &mut Problems) {
        problems.check(
            self.replica_count >= 1,
            "gateway.replica_count",
            "must be >= 1",
        );
        problems.check(
            self.replica_index < self.replica_count.max(1),
            "gateway.replica_index",
            format!(
                "must be below gateway.replica_count ({})",
                self.replica_count
            ),
        );
        problems.check(
            self.dlq_max_payload_bytes >= 256,
            "gateway.dlq_max_payload_bytes",
            "must be >= 256",
        );
        if !self.admin.listen.is_empty() {
            problems.check(
                self.admin.listen.parse::<std::net::SocketAddr>().is_ok(),
                "gateway.admin.listen",
                "must be an address like 127.0.0.1:9111 (or empty to turn the admin API off)",
            );
        }
        for (name, provider) in self.providers() {
            provider.validate(name, problems);
        }
        let b = &self.backfill;
        problems.check(
            !b.gaps_topic.trim().is_empty(),
            "gateway.backfill.gaps_topic",
            "must not be empty",
        );
        problems.check(
            !b.group_id.trim().is_empty(),
            "gateway.backfill.group_id",
            "must not be empty",
        );
        problems.check(
            b.page_limit >= 1,
            "gateway.backfill.page_limit",
            "must be >= 1",
        );
        problems.check(
            b.max_attempts >= 1,
            "gateway.backfill.max_attempts",
            "must be >= 1",
        );
        if self.grpc.enabled {
            problems.check(
                self.grpc.url.is_some(),
                "gateway.grpc.url",
                "is required when gateway.grpc.enabled: the feed server's address",
            );
        }
        if let Some(path) = &self.instruments_file {
            if let Err(e) = tickflow_shared::instruments::load_file(path) {
                problems.check(false, "gateway.instruments_file", e);
            }
        }
        problems.check(
            self.queue_capacity > 0,
            "gateway.queue_capacity",
            "must be > 0",
        );
        problems.check(
            self.max_frame_bytes >= 1024,
            "gateway.max_frame_bytes",
            "must be >= 1024",
        );
        let sim = &self.simulator;
        problems.check(
            (1..=200_000).contains(&sim.rate),
            "gateway.simulator.rate",
            "must be between 1 and 200000 messages/s",
        );
        problems.check(
            !sim.venues.is_empty(),
            "gateway.simulator.venues",
            "needs at least one venue",
        );
        for (key, ratio) in [
            ("gateway.simulator.duplicate_ratio", sim.duplicate_ratio),
            (
                "gateway.simulator.out_of_order_ratio",
                sim.out_of_order_ratio,
            ),
            ("gateway.simulator.bad_price_ratio", sim.bad_price_ratio),
        ] {
            problems.check((0.0..=1.0).contains(&ratio), key, "must be between 0 and 1");
        }
        problems.check(
            sim.drift_venue.is_empty() || sim.venues.contains(&sim.drift_venue),
            "gateway.simulator.drift_venue",
            "must be one of gateway.simulator.venues",
        );
        problems.check(
            sim.silent_venue.is_empty() || sim.venues.contains(&sim.silent_venue),
            "gateway.simulator.silent_venue",
            "must be one of gateway.simulator.venues",
        );
        problems.check(
            sim.burst_factor >= 1,
            "gateway.simulator.burst_factor",
            "must be >= 1",
        );
    }
}

impl Validate for Config {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.kafka.validate(problems);
        self.registry.validate(problems);
        self.gateway.validate(problems);
    }
}

impl ServiceRoot for Config {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }

    fn service_mut(&mut self) -> &mut ServiceConfig {
        &mut self.service
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems `p` has as provider `name`, as the error message lists them.
    fn problems(name: &str, p: &ProviderConfig) -> String {
        let mut problems = Problems::new();
        p.validate(name, &mut problems);
        problems
            .into_result()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// A provider added to `tickflow_providers::ALL` with a WebSocket feed needs its table here,
    /// or the gateway could never enable it.
    #[test]
    fn every_websocket_provider_has_a_table() {
        let config = GatewayConfig::default();
        let tables: Vec<&str> = config.providers().iter().map(|(id, _)| *id).collect();
        for p in tickflow_providers::ALL {
            if p.websocket().is_some() {
                assert!(
                    tables.contains(&p.id().as_str()),
                    "provider {} has no [gateway.{}] table in GatewayConfig::providers()",
                    p.id(),
                    p.id()
                );
            }
        }
    }

    #[test]
    fn grpc_tls_settings_are_checked_and_name_their_key() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let https = |tls: TlsConfig| ProviderConfig {
            url: Some("https://feed.example:443".into()),
            tls,
            ..Default::default()
        };
        let ca_only = TlsConfig {
            ca_file: Some(file.path().into()),
            ..Default::default()
        };
        assert_eq!(problems("grpc", &https(ca_only.clone())), "");
        assert_eq!(problems("grpc", &https(TlsConfig::default())), "");

        let cert_only = TlsConfig {
            cert_file: Some(file.path().into()),
            ..Default::default()
        };
        let e = problems("grpc", &https(cert_only));
        assert!(e.contains("`gateway.grpc.tls.key_file`"), "{e}");

        let missing = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = problems("grpc", &https(missing));
        assert!(e.contains("`gateway.grpc.tls.ca_file`"), "{e}");

        let plain = ProviderConfig {
            url: Some("http://feed.example:80".into()),
            tls: ca_only.clone(),
            ..Default::default()
        };
        let e = problems("grpc", &plain);
        assert!(
            e.contains("`gateway.grpc.tls`") && e.contains("not https://"),
            "{e}"
        );

        let websocket = ProviderConfig {
            tls: ca_only,
            ..Default::default()
        };
        let e = problems("binance", &websocket);
        assert!(e.contains("`gateway.binance.tls`"), "{e}");
    }
}
