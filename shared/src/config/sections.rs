//! The configuration sections that several services share. Every field is documented, every
//! struct refuses unknown keys, and defaults live in named functions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::Problems;

/// `[service]`: the process itself — HTTP endpoint, logs, shutdown, metric labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address of the HTTP server with `/metrics`, `/healthz` and `/readyz`.
    /// Default: 127.0.0.1 on the service's own port (gateway 9101, normalizer 9102,
    /// trade-aggregator 9103, fair-price 9104).
    pub http_listen: Option<SocketAddr>,
    /// How long a graceful shutdown may take before the process exits anyway, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `info,tickflow_shared=debug`.
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// Cardinality guard of the `instrument` metric label.
    pub metrics: MetricsConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            http_listen: None,
            shutdown_timeout_ms: 10_000,
            log_format: LogFormat::Human,
            log_level: "info".into(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl ServiceConfig {
    /// The configured address, or loopback on the service's default port.
    pub fn http_listen_or(&self, default_port: u16) -> SocketAddr {
        self.http_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn validate(&self, problems: &mut Problems) {
        problems.check(
            self.shutdown_timeout_ms > 0,
            "service.shutdown_timeout_ms",
            "must be > 0",
        );
        problems.check(
            tracing_subscriber::EnvFilter::try_new(&self.log_level).is_ok(),
            "service.log_level",
            format!("{:?} is not a tracing filter directive", self.log_level),
        );
        problems.check(
            !self.metrics.instrument_allow_list.is_empty() || self.metrics.instrument_top_n > 0,
            "service.metrics.instrument_top_n",
            "must be > 0 when instrument_allow_list is empty",
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[service.metrics]`: keeps the `instrument` label bounded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When not empty, only these instruments get their own label value; all others are `other`.
    pub instrument_allow_list: Vec<String>,
    /// With no allow-list: the first N distinct instruments seen keep their label, later ones
    /// are `other`.
    pub instrument_top_n: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            instrument_allow_list: Vec::new(),
            instrument_top_n: 200,
        }
    }
}

/// `[kafka]`: brokers, security and producer defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Client id prefix; the service appends its own role.
    pub client_id: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`, for the SASL protocols.
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    /// Never logged. Prefer `TICKFLOW_KAFKA__SASL_PASSWORD` to putting it in a file.
    pub sasl_password: Option<SecretString>,
    /// CA bundle that signs the brokers' certificates (PEM).
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (PEM).
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    /// Producer compression: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: Compression,
    /// Idempotent producer (acks=all, no duplicates from retries). Keep on.
    pub enable_idempotence: bool,
    /// How long the producer waits to fill a batch, in milliseconds.
    pub linger_ms: u64,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Per-topic overrides of the built-in topic settings, keyed by topic name.
    pub topics: BTreeMap<String, TopicOverride>,
    /// Extra librdkafka properties passed through (for what no key above covers). librdkafka
    /// names never contain `_`, so `_` may stand for `.`: that is how an environment variable
    /// sets one, e.g. `TICKFLOW_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS=6000`.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "tickflow".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            compression: Compression::Lz4,
            enable_idempotence: true,
            linger_ms: 5,
            create_topics: true,
            topics: BTreeMap::new(),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.bootstrap_servers.trim().is_empty()
                && self
                    .bootstrap_servers
                    .split(',')
                    .all(|s| s.trim().contains(':')),
            "kafka.bootstrap_servers",
            format!(
                "{:?} must be a comma-separated list of host:port",
                self.bootstrap_servers
            ),
        );
        let sasl = matches!(
            self.security_protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl {
            problems.check(
                self.sasl_mechanism.is_some(),
                "kafka.sasl_mechanism",
                "required with a SASL security_protocol",
            );
            problems.check(
                self.sasl_username.is_some(),
                "kafka.sasl_username",
                "required with a SASL security_protocol",
            );
            problems.check(
                self.sasl_password.is_some(),
                "kafka.sasl_password",
                "required with a SASL security_protocol (set TICKFLOW_KAFKA__SASL_PASSWORD)",
            );
        }
        for (key, path) in [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ] {
            if let Some(path) = path {
                problems.check(
                    path.is_file(),
                    key,
                    format!("{} is not a file", path.display()),
                );
            }
        }
        for (topic, spec) in &self.topics {
            let key = format!("kafka.topics.\"{topic}\"");
            if let Some(p) = spec.partitions {
                problems.check(p > 0, &format!("{key}.partitions"), "must be > 0");
            }
            if let Some(r) = spec.replication_factor {
                problems.check(r > 0, &format!("{key}.replication_factor"), "must be > 0");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub const fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `[kafka.topics."<name>"]`: what to change from the service's built-in topic settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicOverride {
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: Option<i64>,
    /// `delete` or `compact`.
    pub cleanup_policy: Option<CleanupPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub const fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// `[registry]`: the Confluent-compatible schema registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API (for Apicurio: `.../apis/ccompat/v7`).
    pub url: String,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<SecretString>,
    /// Bearer token, instead of username/password. Never logged.
    pub token: Option<SecretString>,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Compatibility level set on each subject this service registers.
    pub compatibility: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081/apis/ccompat/v7".into(),
            username: None,
            password: None,
            token: None,
            timeout_ms: 5_000,
            compatibility: "BACKWARD".into(),
        }
    }
}

impl RegistryConfig {
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(
            self.url.starts_with("http://") || self.url.starts_with("https://"),
            "registry.url",
            format!("{:?} must start with http:// or https://", self.url),
        );
        problems.check(self.timeout_ms > 0, "registry.timeout_ms", "must be > 0");
        const LEVELS: [&str; 7] = [
            "BACKWARD",
            "BACKWARD_TRANSITIVE",
            "FORWARD",
            "FORWARD_TRANSITIVE",
            "FULL",
            "FULL_TRANSITIVE",
            "NONE",
        ];
        problems.check(
            LEVELS.contains(&self.compatibility.as_str()),
            "registry.compatibility",
            format!(
                "{:?} must be one of {}",
                self.compatibility,
                LEVELS.join(", ")
            ),
        );
        problems.check(
            self.password.is_none() || self.username.is_some(),
            "registry.username",
            "required when registry.password is set",
        );
    }
}

/// `[cassandra]`: the cluster and the keyspace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// `host:port` contact points, as a list or a comma-separated string.
    #[serde(deserialize_with = "string_or_list")]
    pub contact_points: Vec<String>,
    /// Data center whose nodes are preferred (token-aware, DC-aware load balancing).
    pub local_dc: Option<String>,
    pub keyspace: String,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<SecretString>,
    pub tls: CassandraTlsConfig,
    /// Keyspace replication used by `migrate` when it creates the keyspace.
    pub replication: ReplicationConfig,
    /// Per-request timeout in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            local_dc: Some("datacenter1".into()),
            keyspace: "market".into(),
            username: None,
            password: None,
            tls: CassandraTlsConfig::default(),
            replication: ReplicationConfig::default(),
            request_timeout_ms: 10_000,
        }
    }
}

impl CassandraConfig {
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.contact_points.is_empty(),
            "cassandra.contact_points",
            "at least one host:port",
        );
        problems.check(
            is_cql_identifier(&self.keyspace),
            "cassandra.keyspace",
            format!(
                "{:?} must be a CQL identifier: a letter, then letters, digits or _ (48 at most)",
                self.keyspace
            ),
        );
        problems.check(
            self.password.is_none() || self.username.is_some(),
            "cassandra.username",
            "required when cassandra.password is set",
        );
        if let Some(ca) = &self.tls.ca_file {
            problems.check(
                ca.is_file(),
                "cassandra.tls.ca_file",
                format!("{} is not a file", ca.display()),
            );
        }
        match self.replication.class {
            ReplicationClass::SimpleStrategy => problems.check(
                self.replication.replication_factor > 0,
                "cassandra.replication.replication_factor",
                "must be > 0",
            ),
            ReplicationClass::NetworkTopologyStrategy => problems.check(
                !self.replication.datacenters.is_empty(),
                "cassandra.replication.datacenters",
                "NetworkTopologyStrategy needs at least one datacenter = factor",
            ),
        }
        for dc in self.replication.datacenters.keys() {
            problems.check(
                dc.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "cassandra.replication.datacenters",
                format!("{dc:?} is not a plain data center name"),
            );
        }
    }
}

/// Whether `name` can be used unquoted as a keyspace or table name.
pub fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

/// `[cassandra.tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraTlsConfig {
    pub enabled: bool,
    /// CA bundle (PEM) that signs the nodes' certificates; the system roots when absent.
    pub ca_file: Option<PathBuf>,
}

/// `[cassandra.replication]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    pub class: ReplicationClass,
    /// For SimpleStrategy.
    pub replication_factor: u32,
    /// For NetworkTopologyStrategy: data center name = replication factor.
    pub datacenters: BTreeMap<String, u32>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            class: ReplicationClass::SimpleStrategy,
            replication_factor: 1,
            datacenters: BTreeMap::new(),
        }
    }
}

impl ReplicationConfig {
    /// The CQL map literal for `CREATE KEYSPACE ... WITH replication = ...`.
    pub fn to_cql(&self) -> String {
        match self.class {
            ReplicationClass::SimpleStrategy => format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            ),
            ReplicationClass::NetworkTopologyStrategy => {
                let dcs: Vec<String> = self
                    .datacenters
                    .iter()
                    .map(|(dc, rf)| format!("'{dc}': {rf}"))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ReplicationClass {
    SimpleStrategy,
    NetworkTopologyStrategy,
}

/// Accepts `["a:1", "b:2"]` or `"a:1,b:2"` (the form environment variables can give).
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(deserializer)? {
        Form::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Form::Many(v) => v,
    })
}
