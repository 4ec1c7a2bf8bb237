//! fair-price's configuration: `[service]`, `[kafka]`, `[registry]`, `[cassandra]` and
//! `[fair_price]` (with `[fair_price.quality]` and per-asset-class overrides in
//! `[fair_price.quality_by_class.<class>]`). Layering and error reporting come from
//! `tickflow_shared::config`.

use std::collections::BTreeMap;

use crate::records::Method;
use serde::Deserialize;
use tickflow_shared::config::{
    CassandraConfig, KafkaConfig, Problems, RegistryConfig, ServiceConfig, Validate,
};
use tickflow_shared::domain::{AssetClass, Micros};
use tickflow_shared::kafka::names;
use tickflow_shared::service::ServiceRoot;

use crate::operator::{OutlierRule, Quality, Settings};

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
    /// `[fair_price]`: method, windows, publication, data-quality thresholds, query API.
    pub fair_price: FairPriceConfig,
}

/// How sources far from the cross-source median are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutlierMode {
    /// Farther than `outlier_band_pct` percent from the median.
    Band,
    /// Farther than `outlier_mad_k` × the median absolute deviation (never closer than
    /// `outlier_band_pct` / 4 percent, so agreeing sources are not split hairs apart).
    Mad,
}

/// `[fair_price]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairPriceConfig {
    /// Trades in (Avro `Trade`, key = instrument), read `read_committed`.
    pub input_topic: String,
    /// Fair prices out (Avro `FairPrice`, key = instrument, compacted).
    pub output_topic: String,
    /// Data-quality events out (Avro `Anomaly`, key = instrument or `*`).
    pub anomalies_topic: String,
    /// The consumer group the instances share the input partitions through, and the operator id
    /// of their checkpoints: each partition's state is handed over through its checkpoint when
    /// it moves to another instance.
    pub group_id: String,
    /// This instance's `group.instance.id` (static membership): stable across its restarts, so a
    /// restarted instance takes its partitions back at once; unique among the live instances.
    /// Default: `<group_id>-<hostname>` (on Kubernetes, the pod's name).
    pub instance_id: Option<String>,
    /// Input partitions this instance owns. Empty (the default): shared by the instances of the
    /// group; a list: exactly these (instances must own disjoint sets).
    pub partitions: Vec<i32>,
    /// How often each owned partition's state and next offset are checkpointed (in Cassandra,
    /// after every output before them has landed). Milliseconds.
    pub checkpoint_interval_ms: u64,
    /// vw_median (default), median, vwap or trimmed_mean.
    pub method: Method,
    /// Share of sources dropped at each end by trimmed_mean, 0 ≤ x < 0.5.
    pub trimmed_share: f64,
    /// Trades of each source older than this (event time) no longer count. Milliseconds.
    pub lookback_ms: u64,
    /// A source without a trade for this long (event time) is excluded as STALE. Milliseconds,
    /// at most `lookback_ms`.
    pub staleness_ms: u64,
    /// band or mad.
    pub outlier_mode: OutlierMode,
    /// Band mode: a source this many percent from the cross-source median is an OUTLIER.
    pub outlier_band_pct: f64,
    /// Mad mode: a source this many median absolute deviations from the median is an OUTLIER.
    pub outlier_mad_k: f64,
    /// Outliers are only looked for among at least this many fresh sources (with two, nobody can
    /// tell which one is wrong).
    pub min_sources_for_outliers: usize,
    /// At most one change-driven publication per instrument per this much event time.
    /// Milliseconds.
    pub throttle_ms: u64,
    /// Every instrument is published at least this often (event time), trades or not.
    /// Milliseconds.
    pub heartbeat_ms: u64,
    /// An upstream source (raw partition) without a record for this long (wall clock, while the
    /// service reads) stops holding the event-time clock back until it sends again.
    /// Milliseconds.
    pub idle_after_ms: u64,
    /// Once every source is idle and nothing has arrived for this long (wall clock), the
    /// event-time clock advances with the wall clock, so heartbeats go on and show staleness.
    /// Milliseconds.
    pub wall_clock_after_ms: u64,
    /// A partition without a checkpoint (the first start, or `write_cassandra` off, which keeps
    /// no checkpoints) starts this much input before the group's committed offset, read again
    /// without publishing to rebuild the lookback and the data-quality state. Milliseconds; at
    /// least `lookback_ms`.
    pub replay_ms: u64,
    /// Also write fair prices and anomalies to Cassandra, and keep the checkpoints there.
    pub write_cassandra: bool,
    /// Cassandra writes in flight at once.
    pub max_in_flight: usize,
    /// Records processed between two flushes of the outputs at most.
    pub max_batch: usize,
    /// How far back the query API reads the output topic at start (every instrument that
    /// published within it is served at once). Milliseconds; at least `heartbeat_ms`.
    pub query_history_ms: u64,
    /// The gRPC query API (`proto/tickflow/fairprice/v1/fair_price.proto`). Loopback unless set.
    pub grpc_listen: String,
    /// Data-quality thresholds for every instrument.
    pub quality: QualityConfig,
    /// Overrides by asset class (`crypto`, `equity`, `fx`, `other`): only the keys given change.
    pub quality_by_class: BTreeMap<String, QualityOverride>,
}

impl Default for FairPriceConfig {
    fn default() -> Self {
        Self {
            input_topic: names::TRADES.into(),
            output_topic: names::FAIR_PRICE.into(),
            anomalies_topic: names::ANOMALIES.into(),
            group_id: "fair-price".into(),
            instance_id: None,
            partitions: Vec::new(),
            checkpoint_interval_ms: 2_000,
            method: Method::VwMedian,
            trimmed_share: 0.2,
            lookback_ms: 5_000,
            staleness_ms: 5_000,
            outlier_mode: OutlierMode::Band,
            outlier_band_pct: 2.0,
            outlier_mad_k: 5.0,
            min_sources_for_outliers: 3,
            throttle_ms: 100,
            heartbeat_ms: 1_000,
            idle_after_ms: 2_000,
            wall_clock_after_ms: 2_000,
            replay_ms: 60_000,
            write_cassandra: true,
            max_in_flight: 64,
            max_batch: 5_000,
            query_history_ms: 600_000,
            grpc_listen: "127.0.0.1:9204".into(),
            quality: QualityConfig::default(),
            quality_by_class: BTreeMap::new(),
        }
    }
}

/// `[fair_price.quality]`: when a source counts as silent, diverging or slowing down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// NO_DATA when a source has had no trade for this long (event time). Milliseconds.
    pub no_data_after_ms: u64,
    /// PRICE_DIVERGENCE when a source's last price is this many percent off the fair price ...
    pub divergence_pct: f64,
    /// ... for at least this long. Milliseconds.
    pub divergence_for_ms: u64,
    /// RATE_DROP when a source's trade rate over `rate_window_ms` falls below this fraction of
    /// its trailing average ...
    pub rate_drop_fraction: f64,
    /// ... measured over this window (milliseconds) ...
    pub rate_window_ms: u64,
    /// ... against an average over this much trailing time (milliseconds) ...
    pub rate_trailing_ms: u64,
    /// ... and only when the trailing average is at least this many trades per second.
    pub rate_min_trailing_per_s: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            no_data_after_ms: 10_000,
            divergence_pct: 2.0,
            divergence_for_ms: 5_000,
            rate_drop_fraction: 0.2,
            rate_window_ms: 10_000,
            rate_trailing_ms: 300_000,
            rate_min_trailing_per_s: 1.0,
        }
    }
}

/// `[fair_price.quality_by_class.<class>]`: the keys of `[fair_price.quality]`, each optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityOverride {
    pub no_data_after_ms: Option<u64>,
    pub divergence_pct: Option<f64>,
    pub divergence_for_ms: Option<u64>,
    pub rate_drop_fraction: Option<f64>,
    pub rate_window_ms: Option<u64>,
    pub rate_trailing_ms: Option<u64>,
    pub rate_min_trailing_per_s: Option<f64>,
}

const CLASSES: [(&str, AssetClass); 4] = [
    ("crypto", AssetClass::Crypto),
    ("equity", AssetClass::Equity),
    ("fx", AssetClass::Fx),
    ("other", AssetClass::Other),
];

fn ms(v: u64) -> Micros {
    Micros::try_from(v).unwrap_or(Micros::MAX / 1000) * 1000
}

impl QualityConfig {
    fn with(&self, o: &QualityOverride) -> QualityConfig {
        QualityConfig {
            no_data_after_ms: o.no_data_after_ms.unwrap_or(self.no_data_after_ms),
            divergence_pct: o.divergence_pct.unwrap_or(self.divergence_pct),
            divergence_for_ms: o.divergence_for_ms.unwrap_or(self.divergence_for_ms),
            rate_drop_fraction: o.rate_drop_fraction.unwrap_or(self.rate_drop_fraction),
            rate_window_ms: o.rate_window_ms.unwrap_or(self.rate_window_ms),
            rate_trailing_ms: o.rate_trailing_ms.unwrap_or(self.rate_trailing_ms),
            rate_min_trailing_per_s: o
                .rate_min_trailing_per_s
                .unwrap_or(self.rate_min_trailing_per_s),
        }
    }

    fn quality(&self) -> Quality {
        Quality {
            no_data_after: ms(self.no_data_after_ms),
            divergence_pct: self.divergence_pct,
            divergence_for: ms(self.divergence_for_ms),
            rate_drop_fraction: self.rate_drop_fraction,
            rate_window: ms(self.rate_window_ms),
            rate_trailing: ms(self.rate_trailing_ms),
            rate_min_trailing_per_s: self.rate_min_trailing_per_s,
        }
    }

    fn validate(&self, key: &str, problems: &mut Problems) {
        let k = |name: &str| format!("{key}.{name}");
        problems.check(
            self.no_data_after_ms > 0,
            &k("no_data_after_ms"),
            "must be > 0",
        );
        problems.check(
            self.divergence_pct.is_finite() && self.divergence_pct > 0.0,
            &k("divergence_pct"),
            "must be a percentage > 0",
        );
        problems.check(
            (0.0..1.0).contains(&self.rate_drop_fraction),
            &k("rate_drop_fraction"),
            "must be in [0, 1)",
        );
        problems.check(
            self.rate_window_ms >= 1_000,
            &k("rate_window_ms"),
            "must be >= 1000",
        );
        problems.check(
            self.rate_trailing_ms > self.rate_window_ms,
            &k("rate_trailing_ms"),
            "must be longer than rate_window_ms",
        );
        problems.check(
            self.rate_min_trailing_per_s.is_finite() && self.rate_min_trailing_per_s >= 0.0,
            &k("rate_min_trailing_per_s"),
            "must be >= 0",
        );
    }
}

impl FairPriceConfig {
    /// `instance_id`, or its default.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.group_id, tickflow_shared::kafka::host_name()))
    }

    /// The operator's settings, in microseconds of event time.
    pub fn settings(&self) -> Settings {
        let mut by_class = BTreeMap::new();
        for (name, class) in CLASSES {
            let q = match self.quality_by_class.get(name) {
                Some(o) => self.quality.with(o),
                None => self.quality.clone(),
            };
            by_class.insert(class.as_str(), q.quality());
        }
        Settings {
            method: self.method,
            trimmed_share: self.trimmed_share,
            lookback: ms(self.lookback_ms),
            staleness: ms(self.staleness_ms),
            outliers: match self.outlier_mode {
                OutlierMode::Band => OutlierRule::Band {
                    pct: self.outlier_band_pct,
                },
                OutlierMode::Mad => OutlierRule::Mad {
                    k: self.outlier_mad_k,
                    floor_pct: self.outlier_band_pct / 4.0,
                },
            },
            min_sources_for_outliers: self.min_sources_for_outliers,
            throttle: ms(self.throttle_ms),
            heartbeat: ms(self.heartbeat_ms),
            idle_after: ms(self.idle_after_ms),
            wall_clock_after: ms(self.wall_clock_after_ms),
            quality_by_class: by_class,
        }
    }

    fn validate(&self, problems: &mut Problems) {
        for (key, topic) in [
            ("fair_price.input_topic", &self.input_topic),
            ("fair_price.output_topic", &self.output_topic),
            ("fair_price.anomalies_topic", &self.anomalies_topic),
            ("fair_price.group_id", &self.group_id),
        ] {
            problems.check(!topic.trim().is_empty(), key, "must not be empty");
        }
        problems.check(
            self.partitions.iter().all(|p| *p >= 0),
            "fair_price.partitions",
            "must be partition numbers >= 0",
        );
        problems.check(
            self.checkpoint_interval_ms > 0,
            "fair_price.checkpoint_interval_ms",
            "must be > 0",
        );
        problems.check(
            (0.0..0.5).contains(&self.trimmed_share),
            "fair_price.trimmed_share",
            "must be in [0, 0.5)",
        );
        problems.check(
            self.lookback_ms > 0,
            "fair_price.lookback_ms",
            "must be > 0",
        );
        problems.check(
            self.staleness_ms > 0 && self.staleness_ms <= self.lookback_ms,
            "fair_price.staleness_ms",
            format!("must be > 0 and at most lookback_ms ({})", self.lookback_ms),
        );
        problems.check(
            self.outlier_band_pct.is_finite() && self.outlier_band_pct > 0.0,
            "fair_price.outlier_band_pct",
            "must be a percentage > 0",
        );
        problems.check(
            self.outlier_mad_k.is_finite() && self.outlier_mad_k > 0.0,
            "fair_price.outlier_mad_k",
            "must be > 0",
        );
        problems.check(
            self.min_sources_for_outliers >= 3,
            "fair_price.min_sources_for_outliers",
            "must be >= 3 (with two sources a median cannot tell which is wrong)",
        );
        problems.check(
            self.heartbeat_ms > 0,
            "fair_price.heartbeat_ms",
            "must be > 0",
        );
        problems.check(
            self.throttle_ms <= self.heartbeat_ms,
            "fair_price.throttle_ms",
            "must be at most heartbeat_ms",
        );
        problems.check(
            self.idle_after_ms > 0,
            "fair_price.idle_after_ms",
            "must be > 0",
        );
        problems.check(
            self.wall_clock_after_ms > 0,
            "fair_price.wall_clock_after_ms",
            "must be > 0",
        );
        problems.check(
            self.replay_ms >= self.lookback_ms,
            "fair_price.replay_ms",
            "must be at least lookback_ms",
        );
        problems.check(
            self.max_in_flight > 0,
            "fair_price.max_in_flight",
            "must be > 0",
        );
        problems.check(self.max_batch > 0, "fair_price.max_batch", "must be > 0");
        problems.check(
            self.query_history_ms >= self.heartbeat_ms,
            "fair_price.query_history_ms",
            "must be at least heartbeat_ms",
        );
        problems.check(
            self.grpc_listen.parse::<std::net::SocketAddr>().is_ok(),
            "fair_price.grpc_listen",
            "must be host:port, e.g. 127.0.0.1:9204",
        );
        self.quality.validate("fair_price.quality", problems);
        for (class, o) in &self.quality_by_class {
            let key = format!("fair_price.quality_by_class.{class}");
            if CLASSES.iter().any(|(name, _)| name == class) {
                self.quality.with(o).validate(&key, problems);
            } else {
                problems.push(&key, "unknown asset class (crypto, equity, fx or other)");
            }
        }
    }
}

impl Validate for Config {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.kafka.validate(problems);
        self.registry.validate(problems);
        self.cassandra.validate(problems);
        self.fair_price.validate(problems);
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

    fn problems(toml: &str) -> String {
        let config: Config = toml::from_str(toml).unwrap();
        let mut problems = Problems::new();
        config.validate(&mut problems);
        match problems.into_result() {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problems(""), "");
    }

    #[test]
    fn errors_name_the_key() {
        let p = problems("[fair_price]\nstaleness_ms = 9000\nlookback_ms = 5000\n");
        assert!(p.contains("fair_price.staleness_ms"), "{p}");
        let p = problems("[fair_price.quality_by_class.bonds]\ndivergence_pct = 1.0\n");
        assert!(p.contains("fair_price.quality_by_class.bonds"), "{p}");
        let p = problems("[fair_price.quality_by_class.equity]\nrate_drop_fraction = 2.0\n");
        assert!(
            p.contains("fair_price.quality_by_class.equity.rate_drop_fraction"),
            "{p}"
        );
    }

    #[test]
    fn class_overrides_change_only_their_keys() {
        let config: Config =
            toml::from_str("[fair_price.quality_by_class.equity]\nno_data_after_ms = 60000\n")
                .unwrap();
        let s = config.fair_price.settings();
        assert_eq!(s.quality_by_class["EQUITY"].no_data_after, 60_000_000);
        assert_eq!(s.quality_by_class["CRYPTO"].no_data_after, 10_000_000);
        assert_eq!(
            s.quality_by_class["EQUITY"].divergence_pct,
            s.quality_by_class["CRYPTO"].divergence_pct
        );
    }
}
