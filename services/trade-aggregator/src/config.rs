//! trade-aggregator's configuration: `[service]`, `[kafka]`, `[registry]`, `[cassandra]` and
//! `[aggregator]`. Layering and error reporting come from `tickflow_shared::config`.

use serde::Deserialize;
use tickflow_shared::config::{
    CassandraConfig, KafkaConfig, Problems, RegistryConfig, ServiceConfig, Validate,
};
use tickflow_shared::domain::Micros;
use tickflow_shared::kafka::names;
use tickflow_shared::service::ServiceRoot;

use crate::operator::Timing;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[service]`: HTTP endpoint, logs, shutdown deadline, metric label guard.
    pub service: ServiceConfig,
    /// `[kafka]`: brokers, security, producer settings, topic overrides.
    pub kafka: KafkaConfig,
    /// `[registry]`: the Confluent-compatible schema registry.
    pub registry: RegistryConfig,
    /// `[cassandra]`: cluster and keyspace.
    pub cassandra: CassandraConfig,
    /// `[aggregator]`: topics, event-time settings, checkpoints, sinks.
    pub aggregator: AggregatorConfig,
}

/// `[aggregator]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Trades in (Avro `Trade`, key = instrument).
    pub input_topic: String,
    /// Candles out (Avro `Candle`).
    pub candles_topic: String,
    /// Trades beyond the allowed lateness, and trades that cannot be aggregated (Avro `Trade`,
    /// reason in the `tickflow.reason` header).
    pub late_topic: String,
    /// Name of this operator's checkpoints and of its consumer group (used for lag display only:
    /// input offsets live in the checkpoints).
    pub operator_id: String,
    /// Input partitions this instance owns; empty means all of them. Instances of one operator
    /// must own disjoint sets.
    pub partitions: Vec<i32>,
    /// Bounded out-of-orderness of event times, in milliseconds.
    pub out_of_orderness_ms: u64,
    /// How long after a window closes a late trade still corrects it, in milliseconds.
    pub allowed_lateness_ms: u64,
    /// A partition without records this long (processing time) lets its watermark follow the
    /// wall clock, so its last windows close. Milliseconds.
    pub idle_timeout_ms: u64,
    /// Emit in-progress (not final) candles this often, in milliseconds; 0 turns it off.
    pub early_firing_interval_ms: u64,
    /// How often operator state and input offsets are checkpointed to Cassandra, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Also write every trade to Cassandra `trades`.
    pub write_trades: bool,
    /// Cassandra writes in flight at once.
    pub max_in_flight: usize,
    /// Records processed between two flushes of the sinks at most.
    pub max_batch: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            input_topic: names::TRADES.into(),
            candles_topic: names::CANDLES_1M.into(),
            late_topic: names::TRADES_LATE.into(),
            operator_id: "trade-aggregator".into(),
            partitions: Vec::new(),
            out_of_orderness_ms: 2_000,
            allowed_lateness_ms: 60_000,
            idle_timeout_ms: 30_000,
            early_firing_interval_ms: 1_000,
            checkpoint_interval_ms: 5_000,
            write_trades: true,
            max_in_flight: 64,
            max_batch: 5_000,
        }
    }
}

impl AggregatorConfig {
    pub fn timing(&self) -> Timing {
        let ms = |v: u64| Micros::try_from(v).unwrap_or(Micros::MAX / 1000) * 1000;
        Timing {
            window: 60_000_000,
            out_of_orderness: ms(self.out_of_orderness_ms),
            allowed_lateness: ms(self.allowed_lateness_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            early_firing_interval: (self.early_firing_interval_ms > 0)
                .then(|| ms(self.early_firing_interval_ms)),
        }
    }

    fn validate(&self, problems: &mut Problems) {
        for (key, topic) in [
            ("aggregator.input_topic", &self.input_topic),
            ("aggregator.candles_topic", &self.candles_topic),
            ("aggregator.late_topic", &self.late_topic),
        ] {
            problems.check(!topic.trim().is_empty(), key, "must not be empty");
        }
        problems.check(
            !self.operator_id.is_empty(),
            "aggregator.operator_id",
            "must not be empty",
        );
        problems.check(
            self.partitions.iter().all(|p| *p >= 0),
            "aggregator.partitions",
            "partition numbers are >= 0",
        );
        problems.check(
            self.checkpoint_interval_ms > 0,
            "aggregator.checkpoint_interval_ms",
            "must be > 0",
        );
        problems.check(
            self.idle_timeout_ms > 0,
            "aggregator.idle_timeout_ms",
            "must be > 0",
        );
        problems.check(
            self.max_in_flight > 0,
            "aggregator.max_in_flight",
            "must be > 0",
        );
        problems.check(self.max_batch > 0, "aggregator.max_batch", "must be > 0");
    }
}

impl Validate for Config {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.kafka.validate(problems);
        self.registry.validate(problems);
        self.cassandra.validate(problems);
        self.aggregator.validate(problems);
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
