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

/// Records a sink hands the producer before it waits for their acknowledgements. The producer
/// batches what it holds (`linger.ms`), so a sink that handed over a few dozen records and
/// waited for them would wait one linger and one round trip per few dozen: an early firing of
/// 3,500 candles at 64 in flight took 0.4 s to land. The records are handed over in the
/// sink's order, and the idempotent producer keeps a partition's order through its own retries;
/// only a record the producer gives up on (its queue, `queue.buffering.max.messages`, full
/// past the send's timeout, or `message.timeout.ms` spent) is sent again by the sink's retry,
/// possibly after later ones, as with any number in flight above one.
pub const SENDS_IN_FLIGHT: usize = 10_000;

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

/// How far a consumer reads ahead. librdkafka stops fetching a partition once
/// `queued.min.messages` records wait in its queue, then looks again only after
/// `fetch.queue.backoff.ms` (1 s by default): a consumer catching up on a backlog faster than
/// that idles for most of each second. Checking every 10 ms with a smaller queue keeps the
/// fetcher busy and holds less memory (measured in `bench/README.md`, "The consumer's
/// prefetch"). `[kafka.librdkafka]` overrides both.
pub const CONSUMER_PREFETCH: [(&str, &str); 2] = [
    ("fetch.queue.backoff.ms", "10"),
    ("queued.min.messages", "10000"),
];

/// The consumer configuration: `read_committed`, no auto-commit (offsets go with transactions or
/// checkpoints), start from the earliest offset of a new group, and [`CONSUMER_PREFETCH`].
pub fn consumer_config(config: &KafkaConfig, role: &str, group_id: &str) -> ClientConfig {
    let mut client = base_client_config(config, role);
    client
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (key, value) in CONSUMER_PREFETCH {
        client.set(key, value);
    }
    passthrough(config, &mut client);
    client
}

/// This host's name: `HOSTNAME`, else `/etc/hostname`, else `0`. On Kubernetes it is the pod's
/// name, which a container restarted in its pod keeps.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "0".into())
}

/// Static group membership (KIP-345) for a consumer that subscribes: `instance_id` is this
/// instance's identity in the group, stable across its restarts and unique among the group's
/// live members. A restarted instance gets its partitions back as soon as it rejoins, without a
/// rebalance and without waiting for its dead incarnation's session to expire (librdkafka's
/// default is 45 s). The trade-offs: a static member does not leave the group when it is killed,
/// so the partitions of an instance that dies for good (a pod rescheduled under a new name) wait
/// for its session timeout, 30 s here (a stopping instance leaves with [`leave_group`]); and a
/// second live instance with the same identity fences the first, which then stops with
/// [`fatal_consumer_error`]. The session timeout is longer than a broker restart on purpose:
/// when a static member's session times out while the broker is away, librdkafka rejoins under a
/// new member id and can then be fenced by its own identity, a fatal error (seen in the chaos
/// suite with 10 s and an 11 s Kafka restart). `[kafka.librdkafka]` overrides every value set
/// here.
pub fn static_membership(client: &mut ClientConfig, instance_id: &str) {
    for (key, value) in [
        ("group.instance.id", instance_id),
        ("session.timeout.ms", "30000"),
        ("heartbeat.interval.ms", "3000"),
    ] {
        if client.get(key).is_none() {
            client.set(key, value);
        }
    }
}

/// Leaves the consumer group, as a stopping instance should: a static member
/// ([`static_membership`]) that only closes keeps its partitions until its session times out,
/// while one that leaves hands them on at once. Serves the consumer's callbacks until its
/// assignment is empty (at most `within`); records read meanwhile are dropped, so the caller
/// saves its progress first. A restart of the same instance then joins as a new member.
pub async fn leave_group<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    within: Duration,
) {
    consumer.unsubscribe();
    let deadline = tokio::time::Instant::now() + within;
    while consumer.assignment().is_ok_and(|a| a.count() > 0)
        && tokio::time::Instant::now() < deadline
    {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
}

/// A consumer error the consumer cannot recover from (librdkafka's fatal errors, such as this
/// instance fenced by another with the same `group.instance.id`, the config key `key`), as the
/// error that stops the service; `None` for the transient errors, which are logged and waited
/// out.
pub fn fatal_consumer_error<C: rdkafka::ClientContext>(
    e: &rdkafka::error::KafkaError,
    client: &rdkafka::client::Client<C>,
    key: &str,
    instance_id: &str,
) -> Option<Error> {
    if !matches!(e, rdkafka::error::KafkaError::MessageConsumptionFatal(_)) {
        return None;
    }
    let (code, reason) = client
        .fatal_error()
        .unwrap_or((rdkafka::types::RDKafkaErrorCode::Fatal, e.to_string()));
    if code == rdkafka::types::RDKafkaErrorCode::FencedInstanceId {
        return Some(Error::Fenced(format!(
            "the Kafka consumer stopped ({code}: {reason}): another live instance of this group has the same {key} ({instance_id:?}); give every instance its own"
        )));
    }
    Some(Error::KafkaFatal(format!(
        "the consumer stopped ({code}: {reason})"
    )))
}

pub fn producer(config: &KafkaConfig, role: &str) -> Result<FutureProducer> {
    Ok(producer_config(config, role).create()?)
}

pub fn stream_consumer(config: &KafkaConfig, role: &str, group_id: &str) -> Result<StreamConsumer> {
    Ok(consumer_config(config, role, group_id).create()?)
}

/// Each of `partitions`' first offset with a record time at most `history_ms` ago (`None`: no
/// record that recent).
pub fn offsets_since<C: rdkafka::consumer::ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    partitions: &[i32],
    history_ms: u64,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<i32, Option<i64>>> {
    let now_ms = crate::domain::now_micros() / 1000;
    let since = (now_ms - i64::try_from(history_ms).unwrap_or(i64::MAX)).max(0);
    let mut query = rdkafka::TopicPartitionList::new();
    for &p in partitions {
        query
            .add_partition_offset(topic, p, rdkafka::Offset::Offset(since))
            .map_err(crate::error::Error::Kafka)?;
    }
    let found = tokio::task::block_in_place(|| consumer.offsets_for_times(query, timeout))?;
    Ok(partitions
        .iter()
        .map(|&p| {
            let offset = match found.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            };
            (p, offset)
        })
        .collect())
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
    .map_err(|e| Error::Task {
        task: "kafka check",
        message: e.to_string(),
    })?
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
    /// Holes in providers' trade numbering, found by the normalizer.
    pub const GAPS: &str = "md.gaps";

    /// The Avro schema of each fixed topic's values (raw topics use RawEnvelope).
    pub const SCHEMA_OF_TOPIC: [(&str, SchemaDef); 8] = [
        ("md.raw.simulator", avro::RAW_ENVELOPE),
        (INSTRUMENTS, avro::INSTRUMENT),
        (TRADES, avro::TRADE),
        (CANDLES_1M, avro::CANDLE),
        (TRADES_LATE, avro::TRADE),
        (FAIR_PRICE, avro::FAIR_PRICE),
        (ANOMALIES, avro::ANOMALY),
        (GAPS, avro::GAP),
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
    fn static_membership_fills_what_the_passthrough_leaves_unset() {
        let mut client = consumer_config(&KafkaConfig::default(), "normalizer", "g");
        static_membership(&mut client, "normalizer-0");
        assert_eq!(client.get("group.instance.id"), Some("normalizer-0"));
        assert_eq!(client.get("session.timeout.ms"), Some("30000"));
        assert_eq!(client.get("heartbeat.interval.ms"), Some("3000"));

        let config = KafkaConfig {
            librdkafka: [("session_timeout_ms".to_string(), "6000".to_string())].into(),
            ..KafkaConfig::default()
        };
        let mut client = consumer_config(&config, "normalizer", "g");
        static_membership(&mut client, "normalizer-0");
        assert_eq!(client.get("session.timeout.ms"), Some("6000"));
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
        config
            .librdkafka
            .insert("queued_min_messages".into(), "100000".into());
        assert_eq!(
            consumer_config(&config, "x", "g").get("queued.min.messages"),
            Some("100000")
        );
    }

    #[test]
    fn consumers_prefetch_without_idling_and_producers_are_left_alone() {
        let config = KafkaConfig::default();
        let consumer = consumer_config(&config, "x", "g");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(consumer.get("queued.min.messages"), Some("10000"));
        let producer = producer_config(&config, "x");
        assert_eq!(producer.get("fetch.queue.backoff.ms"), None);
        assert_eq!(producer.get("queued.min.messages"), None);
    }
}
