//! normalizer: turns every provider's raw frames (`md.raw.*`, RawEnvelope) into one exact Avro
//! trade stream on `md.trades`, exactly once, with bad input dead-lettered on
//! `md.dlq.normalizer` and reference data joined live from `md.instruments`.
#![forbid(unsafe_code)]

pub mod config;
pub mod dedup;
pub mod fuzzing;
pub mod gaps;
pub mod metrics;
pub mod normalize;
pub mod operator;
pub mod pipeline;
pub mod reason;
pub mod reference;
pub mod warmup;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, AvroCodec, SchemaDef, TradeEncoder};
use tickflow_shared::instruments;
use tickflow_shared::kafka::TopicSpec;
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "normalizer";
/// Port of `/metrics`, `/healthz`, `/readyz` unless `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9102;

/// The topics this service writes, as created when missing.
pub fn topics(config: &Config) -> Vec<TopicSpec> {
    let n = &config.normalizer;
    vec![
        TopicSpec::new(&n.output_topic, 6).retention(Duration::from_secs(7 * 24 * 3600)),
        TopicSpec::new(&n.dlq_topic, 1).retention(Duration::from_secs(14 * 24 * 3600)),
        TopicSpec::new(&n.gaps_topic, 1).retention(Duration::from_secs(30 * 24 * 3600)),
        TopicSpec::new(&n.instruments_topic, 1).compacted(),
    ]
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let n = config.normalizer.clone();
    let initial = match &n.instruments_file {
        Some(path) => instruments::load_file(path)?,
        None => Vec::new(),
    };
    let schemas: [(&str, SchemaDef); 3] = [
        (n.output_topic.as_str(), avro::TRADE),
        (n.instruments_topic.as_str(), avro::INSTRUMENT),
        (n.gaps_topic.as_str(), avro::GAP),
    ];
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: None,
        topics: topics(&config),
        schemas: &schemas,
        routes: Router::new(),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    // After start: the metrics recorder is installed there.
    metrics::describe();
    pipeline::RUNTIME_METRICS.zero();
    let codec = Arc::new(AvroCodec::new(&started.registry, &schemas));
    // The output schema was registered at start; registering again returns its id.
    let encoder = TradeEncoder::registered(&started.registry, &n.output_topic).await?;
    tracing::info!(instruments = initial.len(), input = %n.input_topics, output = %n.output_topic, "normalizing");
    let reference = reference::start(
        &config.kafka,
        &n.instruments_topic,
        &n.group_id,
        initial,
        codec.clone(),
        &shutdown,
    )?;
    let labels = started.telemetry.instruments.clone();
    let outcome = pipeline::run(config, codec, encoder, reference, labels, &shutdown).await;
    if outcome.is_err() {
        shutdown.trigger();
    }
    outcome
}
