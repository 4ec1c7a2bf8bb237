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
use crate::rollup::Interval;

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
    /// Name of this operator's checkpoints and of its consumer group (which shares out the
    /// partitions; input offsets live in the checkpoints, not in the group).
    pub operator_id: String,
    /// Input partitions this instance owns. Empty (the default): the instances of one
    /// `operator_id` share the partitions through their consumer group, with state hand-over on
    /// rebalances. A list: exactly these (static; instances must own disjoint sets).
    pub partitions: Vec<i32>,
    /// This instance's identity in the consumer group (`group.instance.id`, static
    /// membership): stable across its restarts, so a restarted instance takes its partitions
    /// back at once instead of after the dead one's session timeout; different between live
    /// instances. Default: `<operator_id>-<hostname>` (on Kubernetes, the pod's name).
    pub instance_id: Option<String>,
    /// Bounded out-of-orderness of event times, in milliseconds.
    pub out_of_orderness_ms: u64,
    /// How long after a window closes a late trade still corrects it, in milliseconds.
    pub allowed_lateness_ms: u64,
    /// An upstream source (a raw partition the trades were normalized from) without records
    /// this long (processing time, while the input is read) stops holding its partition's
    /// watermark back until it sends again; when every source of a partition is idle, the
    /// watermark follows the wall clock, so its last windows close. Milliseconds.
    pub idle_timeout_ms: u64,
    /// A trade beyond the allowed lateness has its windows recomputed from Cassandra `trades`
    /// this long after it arrived, together with every other such trade of the same windows
    /// meanwhile: each window is recomputed at most once per this interval. Milliseconds.
    pub correction_delay_ms: u64,
    /// Emit in-progress (not final) candles this often, in milliseconds; 0 turns it off. Only
    /// live windows fire early: those that ended less than a window length ago by the wall clock.
    pub early_firing_interval_ms: u64,
    /// How often operator state and input offsets are checkpointed to Cassandra, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Also write every trade to Cassandra `trades`.
    pub write_trades: bool,
    /// Cassandra writes in flight at once.
    pub max_in_flight: usize,
    /// Records processed between two flushes of the sinks at most.
    pub max_batch: usize,
    /// Longer candles derived exactly from the 1-minute windows, written to Cassandra
    /// `candles_rollup`: whole minutes, hours or days (`5m`, `15m`, `1h`, `4h`, `1d`), each a
    /// multiple of a minute that divides a day. Empty turns roll-ups off.
    pub rollups: Vec<String>,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            input_topic: names::TRADES.into(),
            candles_topic: names::CANDLES_1M.into(),
            late_topic: names::TRADES_LATE.into(),
            operator_id: "trade-aggregator".into(),
            instance_id: None,
            partitions: Vec::new(),
            out_of_orderness_ms: 2_000,
            allowed_lateness_ms: 60_000,
            idle_timeout_ms: 30_000,
            correction_delay_ms: 1_000,
            early_firing_interval_ms: 1_000,
            checkpoint_interval_ms: 5_000,
            write_trades: true,
            max_in_flight: 64,
            max_batch: 5_000,
            rollups: vec!["5m".into(), "15m".into(), "1h".into()],
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
            correction_delay: ms(self.correction_delay_ms),
            early_firing_interval: (self.early_firing_interval_ms > 0)
                .then(|| ms(self.early_firing_interval_ms)),
        }
    }

    /// `instance_id`, or its default.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                self.operator_id,
                tickflow_shared::kafka::host_name()
            )
        })
    }

    /// The roll-up intervals (those that parse; `validate` reports the others).
    pub fn rollup_intervals(&self) -> Vec<Interval> {
        self.rollups
            .iter()
            .filter_map(|label| Interval::parse(label))
            .collect()
    }

    fn validate(&self, problems: &mut Problems) {
        let day = 86_400_000_000;
        for (i, label) in self.rollups.iter().enumerate() {
            let key = format!("aggregator.rollups[{i}]");
            match Interval::parse(label) {
                None => problems.check(
                    false,
                    &key,
                    format!("{label:?} is not an interval like 5m, 1h or 1d"),
                ),
                Some(interval) => problems.check(
                    interval.length > 60_000_000 && day % interval.length == 0,
                    &key,
                    format!("{label} must be longer than 1m and divide a day evenly"),
                ),
            }
            problems.check(
                !self.rollups[..i].contains(label),
                &key,
                format!("{label} is listed twice"),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(aggregator: &str) -> String {
        let config: Config = toml::from_str(&format!("[aggregator]\n{aggregator}")).unwrap();
        let mut problems = Problems::new();
        config.validate(&mut problems);
        match problems.into_result() {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rollups_default_to_5m_15m_1h() {
        let labels: Vec<String> = AggregatorConfig::default()
            .rollup_intervals()
            .into_iter()
            .map(|i| i.label)
            .collect();
        assert_eq!(labels, ["5m", "15m", "1h"]);
        assert_eq!(problems(""), "");
        assert_eq!(problems("rollups = []"), "");
    }

    #[test]
    fn bad_rollups_name_the_entry() {
        let p = problems(r#"rollups = ["5m", "7x"]"#);
        assert!(
            p.contains("aggregator.rollups[1]") && p.contains("7x"),
            "{p}"
        );
        let p = problems(r#"rollups = ["1m"]"#);
        assert!(p.contains("aggregator.rollups[0]"), "{p}");
        let p = problems(r#"rollups = ["7m"]"#);
        assert!(p.contains("divide a day"), "{p}");
        let p = problems(r#"rollups = ["5m", "5m"]"#);
        assert!(
            p.contains("aggregator.rollups[1]") && p.contains("twice"),
            "{p}"
        );
    }
}
