//! Kafka clients built from `[kafka]`: the idempotent producer (acks=all), consumers that read
//! committed data with manual offset handling, topic creation at start, and a liveness check.

mod topics;

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use secrecy::ExposeSecret;

pub use topics::{ensure_topics, TopicSpec};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// Settings every client shares: brokers, client id and security.
pub fn base_client_config(config: &KafkaConfig, role: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("{}-{role}", config.client_id))
        .set(
            "security.protocol",
            config.security_protocol.as_librdkafka(),
        )
        .set_log_level(RDKafkaLogLevel::Warning);
    if let Some(mechanism) = config.sasl_mechanism {
        client.set("sasl.mechanism", mechanism.as_librdkafka());
    }
    if let Some(user) = &config.sasl_username {
        client.set("sasl.username", user);
    }
    if let Some(password) = &config.sasl_password {
        client.set("sasl.password", password.expose_secret());
    }
    for (key, path) in [
        ("ssl.ca.location", &config.ssl_ca_location),
        ("ssl.certificate.location", &config.ssl_certificate_location),
        ("ssl.key.location", &config.ssl_key_location),
    ] {
        if let Some(path) = path {
            client.set(key, path.display().to_string());
        }
    }
    passthrough(config, &mut client);
    client
}

/// The `[kafka.librdkafka]` properties, `_` read as `.` (see `KafkaConfig::librdkafka`).
fn passthrough(config: &KafkaConfig, client: &mut ClientConfig) {
    for (key, value) in &config.librdkafka {
        client.set(key.replace('_', "."), value);
    }
}

/// The producer configuration: idempotent, acks=all, compression and linger from config.
pub fn producer_config(config: &KafkaConfig, role: &str) -> ClientConfig {
    let mut client = base_client_config(config, role);
    client
        .set("enable.idempotence", config.enable_idempotence.to_string())
        .set("acks", "all")
        .set("compression.type", config.compression.as_librdkafka())
        .set("linger.ms", config.linger_ms.to_string());
    // Extra properties win over the defaults above.
    passthrough(config, &mut client);
    client
}

/// The consumer configuration: `read_committed`, no auto-commit (offsets go with transactions or
/// checkpoints), start from the earliest offset of a new group.
pub fn consumer_config(config: &KafkaConfig, role: &str, group_id: &str) -> ClientConfig {
    let mut client = base_client_config(config, role);
    client
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    passthrough(config, &mut client);
    client
}

pub fn producer(config: &KafkaConfig, role: &str) -> Result<FutureProducer> {
    Ok(producer_config(config, role).create()?)
}

pub fn stream_consumer(config: &KafkaConfig, role: &str, group_id: &str) -> Result<StreamConsumer> {
    Ok(consumer_config(config, role, group_id).create()?)
}

/// The partitions of `topic`, waiting (with backoff) until it exists; `None` if shutdown comes
/// first.
pub async fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    shutdown: &crate::shutdown::Shutdown,
) -> Option<Vec<i32>> {
    crate::retry::until_ok(
        "read input topic metadata",
        crate::retry::RetryPolicy::DEPENDENCY,
        shutdown,
        || async {
            let metadata = tokio::task::block_in_place(|| {
                consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            })?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                Err(Error::TopicAdmin {
                    topic: topic.to_string(),
                    message: "does not exist yet".into(),
                })
            } else {
                Ok(partitions)
            }
        },
    )
    .await
}

pub fn admin(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    Ok(base_client_config(config, "admin").create()?)
}

/// A real request to the cluster: its metadata. Returns a short description for `/readyz`.
pub async fn check(config: &KafkaConfig, timeout: Duration) -> Result<String> {
    let client: BaseConsumer = base_client_config(config, "health").create()?;
    tokio::task::spawn_blocking(move || {
        let metadata = client.fetch_metadata(None, timeout)?;
        Ok(format!(
            "{} broker(s), {} topic(s)",
            metadata.brokers().len(),
            metadata.topics().len()
        ))
    })
    .await
    .map_err(|e| Error::Config(format!("kafka check task: {e}")))?
}

/// Topic names, as the design gives them.
pub mod names {
    use crate::avro::{self, SchemaDef};

    /// Raw frames of one provider: `md.raw.<provider>`.
    pub fn raw(provider: &str) -> String {
        format!("{RAW_PREFIX}{provider}")
    }
    pub const RAW_PREFIX: &str = "md.raw.";
    pub const TRADES: &str = "md.trades";
    pub const DLQ_NORMALIZER: &str = "md.dlq.normalizer";
    /// Frames the gateway could not forward (malformed, oversized), with the reason in headers.
    pub const DLQ_GATEWAY: &str = "md.dlq.gateway";
    pub const INSTRUMENTS: &str = "md.instruments";
    pub const CANDLES_1M: &str = "md.candles.1m";
    pub const TRADES_LATE: &str = "md.trades.late";
    pub const FAIR_PRICE: &str = "md.fairprice";
    pub const ANOMALIES: &str = "md.anomalies";

    /// The Avro schema of each fixed topic's values (raw topics use RawEnvelope).
    pub const SCHEMA_OF_TOPIC: [(&str, SchemaDef); 7] = [
        ("md.raw.simulator", avro::RAW_ENVELOPE),
        (INSTRUMENTS, avro::INSTRUMENT),
        (TRADES, avro::TRADE),
        (CANDLES_1M, avro::CANDLE),
        (TRADES_LATE, avro::TRADE),
        (FAIR_PRICE, avro::FAIR_PRICE),
        (ANOMALIES, avro::ANOMALY),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compression, SaslMechanism, SecurityProtocol};

    fn secured() -> KafkaConfig {
        KafkaConfig {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("svc".into()),
            sasl_password: Some("pw".to_string().into()),
            ssl_ca_location: Some("/etc/ssl/ca.pem".into()),
            compression: Compression::Zstd,
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn security_settings_reach_librdkafka() {
        let producer = producer_config(&secured(), "gateway");
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("sasl.password", "pw"),
            ("ssl.ca.location", "/etc/ssl/ca.pem"),
            ("client.id", "tickflow-gateway"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.type", "zstd"),
        ] {
            assert_eq!(producer.get(key), Some(value), "{key}");
        }
    }

    #[test]
    fn consumers_read_committed_without_auto_commit() {
        let consumer = consumer_config(&KafkaConfig::default(), "normalizer", "g1");
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some("g1"));
        assert_eq!(consumer.get("security.protocol"), Some("plaintext"));
        assert_eq!(consumer.get("sasl.password"), None);
    }

    #[test]
    fn passthrough_properties_win() {
        let mut config = KafkaConfig::default();
        config.librdkafka.insert("linger.ms".into(), "50".into());
        config
            .librdkafka
            .insert("session_timeout_ms".into(), "6000".into());
        assert_eq!(producer_config(&config, "x").get("linger.ms"), Some("50"));
        assert_eq!(
            consumer_config(&config, "x", "g").get("session.timeout.ms"),
            Some("6000")
        );
    }
}
