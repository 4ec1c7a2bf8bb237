//! ingest-gateway: Holds live connections to market-data providers and puts every frame on Kafka untouched, with its receive time.
//!
//! Provider connections are not implemented yet (issue 3): today the binary loads its configuration, creates its raw topic, registers the RawEnvelope schema, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#![forbid(unsafe_code)]

pub mod config;

use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, SchemaDef};
use tickflow_shared::kafka::{names, TopicSpec};
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "ingest-gateway";
/// Port of `/metrics`, `/healthz`, `/readyz` unless `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9101;

/// The topics this service writes, as created when missing.
pub fn topics() -> Vec<TopicSpec> {
    vec![TopicSpec::new(names::raw("simulator"), 6).retention(Duration::from_secs(24 * 3600))]
}

/// The schemas this service registers, by topic.
pub const SCHEMAS: [(&str, SchemaDef); 1] = [("md.raw.simulator", avro::RAW_ENVELOPE)];

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
        "started; the processing pipeline of this service is not implemented yet (issue 3)"
    );
    shutdown.triggered().await;
    Ok(())
}
