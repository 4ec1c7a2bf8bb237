//! ingest-gateway's configuration: `[service]`, `[kafka]`, `[registry]` and `[gateway]` (with
//! `[gateway.simulator]`). Layering and error reporting come from `tickflow_shared::config`.

use std::path::PathBuf;

use serde::Deserialize;
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
    /// `[gateway.simulator]`: the built-in simulated provider.
    pub simulator: SimulatorConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            instruments_file: None,
            queue_capacity: 65_536,
            drop_when_full: false,
            max_frame_bytes: 1 << 20,
            raw_topic_prefix: tickflow_shared::kafka::names::RAW_PREFIX.into(),
            simulator: SimulatorConfig::default(),
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
    fn validate(&self, problems: &mut Problems) {
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
