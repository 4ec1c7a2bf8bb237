//! normalizer: Turns every provider's raw frames into one exact Avro trade stream on md.trades, exactly once.
//!
//! Normalization is not implemented yet (issue 4): today the binary loads its configuration, creates md.trades and md.dlq.normalizer, registers the Trade schema, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#![forbid(unsafe_code)]

pub mod config;
pub mod dedup;
pub mod normalize;
pub mod providers;
pub mod reason;

use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, SchemaDef};
use tickflow_shared::kafka::{names, TopicSpec};
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "normalizer";
/// Port of `/metrics`, `/healthz`, `/readyz` unless `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9102;

/// The topics this service writes, as created when missing.
pub fn topics() -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(names::TRADES, 6).retention(Duration::from_secs(7 * 24 * 3600)),
        TopicSpec::new(names::DLQ_NORMALIZER, 1).retention(Duration::from_secs(14 * 24 * 3600)),
    ]
}

/// The schemas this service registers, by topic.
pub const SCHEMAS: [(&str, SchemaDef); 1] = [(names::TRADES, avro::TRADE)];

/// Runs the service until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: None,
        topics: topics(),
        schemas: &SCHEMAS,
        routes: Router::new(),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        http = %started.telemetry.http_addr,
        "started; the processing pipeline of this service is not implemented yet (issue 4)"
    );
    shutdown.triggered().await;
    Ok(())
}
