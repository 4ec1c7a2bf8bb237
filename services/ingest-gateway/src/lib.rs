//! ingest-gateway: holds the connections to market-data providers and puts every frame on Kafka
//! untouched, with its receive time, as a RawEnvelope on `md.raw.<provider>`.
//!
//! Today the built-in simulator is the provider that runs (issue 3 continues with the WebSocket
//! and gRPC providers). Frames go through one bounded queue to the idempotent producer.
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod simulator;
pub mod sink;
pub mod sources;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, AvroCodec, SchemaDef};
use tickflow_shared::instruments::{self, InstrumentIndex};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "ingest-gateway";
/// Port of `/metrics`, `/healthz`, `/readyz` unless `service.http_listen` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9101;

/// The instruments the simulator trades: the configured list, else every instrument listed for
/// the simulator, else three crypto pairs.
pub fn simulator_symbols(config: &Config, index: &InstrumentIndex) -> Vec<String> {
    let sim = &config.gateway.simulator;
    if !sim.instruments.is_empty() {
        return sim.instruments.clone();
    }
    let listed: Vec<String> = index
        .symbols_of(sources::SIMULATOR)
        .into_iter()
        .map(|(_, symbol)| symbol)
        .collect();
    if listed.is_empty() {
        vec!["BTC-USD".into(), "ETH-USD".into(), "SOL-USD".into()]
    } else {
        listed
    }
}

/// Runs the service until `shutdown` is triggered; frames in hand are delivered before it returns.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    metrics::describe();
    let g = config.gateway.clone();
    let index = InstrumentIndex::new(match &g.instruments_file {
        Some(path) => instruments::load_file(path)?,
        None => Vec::new(),
    });
    let raw_topic = format!("{}{}", g.raw_topic_prefix, sources::SIMULATOR);
    let schemas: [(&str, SchemaDef); 1] = [(raw_topic.as_str(), avro::RAW_ENVELOPE)];
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: None,
        topics: vec![TopicSpec::new(&raw_topic, 6).retention(Duration::from_secs(24 * 3600))],
        schemas: &schemas,
        routes: Router::new(),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    let codec = Arc::new(AvroCodec::new(&started.registry, &schemas));
    let producer: sink::RawProducer =
        kafka::producer_config(&config.kafka, "gateway").create_with_context(sink::Deliveries)?;
    let (output, frames) = sink::queue(g.queue_capacity, g.drop_when_full, g.max_frame_bytes);

    // Connections stop on shutdown; the sink then drains what they handed over and flushes.
    let connections = Shutdown::new();
    let mut sources = Vec::new();
    if g.simulator.enabled {
        let symbols = simulator_symbols(&config, &index);
        let sim = simulator::Simulator::new(&g.simulator, &symbols);
        sources.push(tokio::spawn(sources::run_simulator(
            sim,
            symbols,
            output.clone(),
            connections.clone(),
        )));
    } else {
        tracing::warn!("no provider is enabled: nothing will be received");
    }
    drop(output);
    let sink = tokio::spawn(sink::run(
        frames,
        producer,
        codec,
        g.raw_topic_prefix.clone(),
        shutdown.clone(),
    ));
    shutdown.triggered().await;
    connections.trigger();
    for source in sources {
        let _ = source.await;
    }
    match sink.await {
        Ok(result) => result,
        Err(e) => Err(tickflow_shared::Error::Config(format!("sink task: {e}"))),
    }
}
