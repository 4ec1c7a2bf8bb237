//! trade-aggregator: Computes 1-minute OHLC / count / volume / VWAP candles in event time, late data included, into Cassandra and Kafka.
//!
//! Windowing is not implemented yet (issue 5): today the binary loads its configuration, creates md.candles.1m and md.trades.late, registers their schemas, connects to Cassandra, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#![forbid(unsafe_code)]

pub mod config;
pub mod operator;
pub mod reference;
pub mod window;

use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, SchemaDef};
use tickflow_shared::kafka::{names, TopicSpec};
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "trade-aggregator";
/// Port of `/metrics`, `/healthz`, `/readyz` unless `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9103;

/// The topics this service writes, as created when missing.
pub fn topics() -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(names::CANDLES_1M, 6).retention(Duration::from_secs(7 * 24 * 3600)),
        TopicSpec::new(names::TRADES_LATE, 1).retention(Duration::from_secs(7 * 24 * 3600)),
    ]
}

/// The schemas this service registers, by topic.
pub const SCHEMAS: [(&str, SchemaDef); 2] = [
    (names::CANDLES_1M, avro::CANDLE),
    (names::TRADES_LATE, avro::TRADE),
];

/// Runs the service until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: Some(&config.cassandra),
        topics: topics(),
        schemas: &SCHEMAS,
        routes: Router::new(),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        http = %started.telemetry.http_addr,
        "started; the processing pipeline of this service is not implemented yet (issue 5)"
    );
    shutdown.triggered().await;
    Ok(())
}
