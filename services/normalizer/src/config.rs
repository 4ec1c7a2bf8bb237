//! normalizer's configuration: `[service]`, `[kafka]`, `[registry]` and `[normalizer]`.
//! Layering and error reporting come from `tickflow_shared::config`.

use std::path::PathBuf;

use rust_decimal::Decimal;
use serde::Deserialize;
use tickflow_shared::config::{KafkaConfig, Problems, RegistryConfig, ServiceConfig, Validate};
use tickflow_shared::domain::Micros;
use tickflow_shared::kafka::names;
use tickflow_shared::service::ServiceRoot;

use crate::normalize::Limits;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[service]`: HTTP endpoint, logs, shutdown deadline, metric label guard.
    pub service: ServiceConfig,
    /// `[kafka]`: brokers, security, producer settings, topic overrides.
    pub kafka: KafkaConfig,
    /// `[registry]`: the Confluent-compatible schema registry.
    pub registry: RegistryConfig,
    /// `[normalizer]`: topics, reference data, validation limits, duplicates, transactions.
    pub normalizer: NormalizerConfig,
}

/// `[normalizer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizerConfig {
    /// Raw input: one topic name, or a regular expression when it starts with `^`
    /// (librdkafka's convention). Default: every `md.raw.<provider>` topic.
    pub input_topics: String,
    /// Trades out (Avro `Trade`, key = instrument).
    pub output_topic: String,
    /// Dead letters: the original record, reason in headers.
    pub dlq_topic: String,
    /// Gaps in providers' trade numbering (Avro `Gap`, key = `<provider>/<symbol>`).
    pub gaps_topic: String,
    /// Reference data topic (compacted, Avro `Instrument`, key = instrument).
    pub instruments_topic: String,
    /// Reference data file loaded at start (`[[instrument]]` tables); the topic's records are
    /// applied on top of it.
    pub instruments_file: Option<PathBuf>,
    /// Consumer group shared by all normalizer instances.
    pub group_id: String,
    /// Transactional id of this instance: stable across its restarts (so a restart fences the
    /// previous incarnation), different between instances. Default: `normalizer-<hostname>`.
    /// It is also the instance's `group.instance.id` (static membership): a restarted instance
    /// takes its partitions back at once instead of after the dead one's session timeout.
    pub transactional_id: Option<String>,
    /// A transaction starts as soon as records are ready and takes every record already
    /// fetched, up to this many...
    pub max_batch: usize,
    /// ...and for at most this long after its first record, in milliseconds (a bound under a
    /// continuous stream, not a wait: a batch ends as soon as no record is ready).
    pub commit_interval_ms: u64,
    /// Trades with an event time later than their receive time plus this are refused
    /// (`event_time_future`), in milliseconds.
    pub max_future_ms: u64,
    /// Trades with an event time older than their receive time minus this are refused
    /// (`event_time_past`), in milliseconds.
    pub max_age_ms: u64,
    /// Prices above this are refused (`price_out_of_range`). Decimal string.
    #[serde(deserialize_with = "decimal_text")]
    pub max_price: Decimal,
    /// Sizes above this are refused (`size_out_of_range`). Decimal string.
    #[serde(deserialize_with = "decimal_text")]
    pub max_size: Decimal,
    /// A trade whose (provider, exchange, trade id) was kept this recently (receive time) is a
    /// duplicate and dropped. Milliseconds.
    pub dedup_horizon_ms: u64,
    /// Before dead-lettering an unknown symbol, catch up with the instruments topic (so an
    /// instrument published just before its first trade is known), at most this often. Ms.
    pub instruments_sync_interval_ms: u64,
}

fn decimal_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let text = String::deserialize(d)?;
    tickflow_shared::domain::parse_decimal(&text).map_err(serde::de::Error::custom)
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        Self {
            input_topics: format!("^{}.*", names::RAW_PREFIX.replace('.', "\\.")),
            output_topic: names::TRADES.into(),
            dlq_topic: names::DLQ_NORMALIZER.into(),
            gaps_topic: names::GAPS.into(),
            instruments_topic: names::INSTRUMENTS.into(),
            instruments_file: None,
            group_id: "normalizer".into(),
            transactional_id: None,
            max_batch: 10_000,
            commit_interval_ms: 100,
            max_future_ms: 10_000,
            max_age_ms: 24 * 3_600_000,
            max_price: Decimal::new(1_000_000_000_000, 0),
            max_size: Decimal::new(1_000_000_000_000, 0),
            dedup_horizon_ms: 120_000,
            instruments_sync_interval_ms: 1_000,
        }
    }
}

impl NormalizerConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_future: ms(self.max_future_ms),
            max_age: ms(self.max_age_ms),
            max_price: self.max_price,
            max_size: self.max_size,
        }
    }

    pub fn dedup_horizon(&self) -> Micros {
        ms(self.dedup_horizon_ms)
    }

    pub fn transactional_id(&self) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("normalizer-{}", tickflow_shared::kafka::host_name()))
    }

    fn validate(&self, problems: &mut Problems) {
        for (key, topic) in [
            ("normalizer.input_topics", &self.input_topics),
            ("normalizer.output_topic", &self.output_topic),
            ("normalizer.dlq_topic", &self.dlq_topic),
            ("normalizer.gaps_topic", &self.gaps_topic),
            ("normalizer.instruments_topic", &self.instruments_topic),
            ("normalizer.group_id", &self.group_id),
        ] {
            problems.check(!topic.trim().is_empty(), key, "must not be empty");
        }
        if let Some(path) = &self.instruments_file {
            if let Err(e) = tickflow_shared::instruments::load_file(path) {
                problems.check(false, "normalizer.instruments_file", e);
            }
        }
        problems.check(self.max_batch > 0, "normalizer.max_batch", "must be > 0");
        problems.check(
            self.commit_interval_ms > 0,
            "normalizer.commit_interval_ms",
            "must be > 0",
        );
        problems.check(
            self.max_price > Decimal::ZERO,
            "normalizer.max_price",
            "must be > 0",
        );
        problems.check(
            self.max_size > Decimal::ZERO,
            "normalizer.max_size",
            "must be > 0",
        );
    }
}

fn ms(v: u64) -> Micros {
    Micros::try_from(v)
        .unwrap_or(Micros::MAX / 1000)
        .saturating_mul(1000)
}

impl Validate for Config {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.kafka.validate(problems);
        self.registry.validate(problems);
        self.normalizer.validate(problems);
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
