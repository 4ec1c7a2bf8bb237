//! trade-aggregator: 1-minute OHLC / count / volume / notional / VWAP / average candles in event
//! time, per instrument and venue and consolidated across venues (`*`), late data included, into
//! Cassandra `candles_1m` and Kafka `md.candles.1m`, with checkpoints that give the effect of
//! exactly-once across crashes.
//!
//! Roll-ups of the 1-minute candles (`rollup.rs`, `aggregator.rollups`) go to Cassandra
//! `candles_rollup` (not to Kafka). The window operator (`operator/`) runs on the shared stream
//! runtime (`tickflow_shared::runtime`), which shares the input partitions among the instances
//! through the consumer group, each partition's state handed over through a checkpoint on revoke
//! and assign; `pipeline.rs` is the wiring: the sinks and the recomputations of each tick.
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod operator;
pub mod output;
pub mod pipeline;
pub mod query;
pub mod reference;
pub mod rollup;
pub mod sink;
pub mod store;
pub mod window;

use std::time::Duration;

use tickflow_shared::avro::{self, SchemaDef};
use tickflow_shared::kafka::TopicSpec;
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::{Error, Result};

pub use config::Config;

pub const NAME: &str = "trade-aggregator";
/// Port of `/metrics`, `/healthz`, `/readyz`, `/candles/{instrument}` unless
/// `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9103;

/// The topics this service writes, as created when missing.
pub fn topics(config: &config::AggregatorConfig) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(&config.candles_topic, 6).retention(Duration::from_secs(7 * 24 * 3600)),
        TopicSpec::new(&config.late_topic, 1).retention(Duration::from_secs(7 * 24 * 3600)),
    ]
}

/// The schemas this service registers, by topic.
pub fn schemas(config: &config::AggregatorConfig) -> Vec<(&str, SchemaDef)> {
    vec![
        (config.candles_topic.as_str(), avro::CANDLE),
        (config.late_topic.as_str(), avro::TRADE),
    ]
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let (queries, query_rx) = tokio::sync::mpsc::channel(16);
    let schemas = schemas(&config.aggregator);
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: Some(&config.cassandra),
        topics: topics(&config.aggregator),
        schemas: &schemas,
        routes: query::routes(queries),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    metrics::describe();
    metrics::zero_error_counters();
    let cassandra = started
        .cassandra
        .ok_or_else(|| Error::Config("cassandra is required".into()))?;
    tracing::info!(http = %started.telemetry.http_addr, "started");
    pipeline::run(
        &config,
        &started.registry,
        &cassandra,
        started.telemetry.instruments.clone(),
        query_rx,
        &shutdown,
    )
    .await
}
