//! fair-price: Computes a robust cross-provider fair price per instrument and watches data quality.
//!
//! The fair-price operator is not implemented yet (issue 6): today the binary loads its configuration, creates md.fairprice (compacted) and md.anomalies, registers their schemas, connects to Cassandra, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#![forbid(unsafe_code)]

pub mod config;
pub mod operator;

use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, SchemaDef};
use tickflow_shared::kafka::{names, TopicSpec};
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "fair-price";
/// Port of `/metrics`, `/healthz`, `/readyz` unless `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9104;

/// The topics this service writes, as created when missing.
pub fn topics() -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(names::FAIR_PRICE, 6).compacted(),
        TopicSpec::new(names::ANOMALIES, 1).retention(Duration::from_secs(30 * 24 * 3600)),
    ]
}

/// The schemas this service registers, by topic.
pub const SCHEMAS: [(&str, SchemaDef); 2] = [
    (names::FAIR_PRICE, avro::FAIR_PRICE),
    (names::ANOMALIES, avro::ANOMALY),
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
        "started; the processing pipeline of this service is not implemented yet (issue 6)"
    );
    shutdown.triggered().await;
    Ok(())
}
