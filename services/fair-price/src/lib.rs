//! fair-price: a robust cross-provider fair price per instrument, and data-quality monitoring.
//!
//! Reads `md.trades`; publishes FairPrice records to `md.fairprice` (compacted) and Cassandra
//! `fair_prices` / `fair_price_latest`, Anomaly records to `md.anomalies` and Cassandra
//! `anomalies`; serves the latest prices over HTTP (`/v1/fairprice`) and gRPC.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod query_feed;
pub mod records;
pub mod sink;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tickflow_shared::avro::{self, SchemaDef};
use tickflow_shared::error::Error;
use tickflow_shared::kafka::TopicSpec;
use tickflow_shared::proto::fairprice::fair_price_service_server::FairPriceServiceServer;
use tickflow_shared::service::Startup;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

pub use config::Config;

pub const NAME: &str = "fair-price";
/// Port of `/metrics`, `/healthz`, `/readyz`, `/v1/fairprice` unless `service.http_listen` says
/// otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9104;

/// The topics this service writes, as created when missing.
pub fn topics(config: &config::FairPriceConfig) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(&config.output_topic, 6).compacted(),
        TopicSpec::new(&config.anomalies_topic, 1).retention(Duration::from_secs(30 * 24 * 3600)),
    ]
}

/// The schemas this service registers, by topic.
pub fn schemas(config: &config::FairPriceConfig) -> Vec<(&str, SchemaDef)> {
    vec![
        (config.output_topic.as_str(), avro::FAIR_PRICE),
        (config.anomalies_topic.as_str(), avro::ANOMALY),
    ]
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let latest = Arc::new(api::Latest::default());
    let schemas = schemas(&config.fair_price);
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: config
            .fair_price
            .write_cassandra
            .then_some(&config.cassandra),
        topics: topics(&config.fair_price),
        schemas: &schemas,
        routes: api::routes(latest.clone()),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    metrics::describe();
    metrics::zero_error_counters(started.cassandra.is_some());

    let grpc_addr: std::net::SocketAddr = config
        .fair_price
        .grpc_listen
        .parse()
        .map_err(|e| Error::Config(format!("`fair_price.grpc_listen`: {e}")))?;
    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "`fair_price.grpc_listen`: cannot listen on {grpc_addr}: {e}"
            ))
        })?;
    let grpc_addr = listener.local_addr().unwrap_or(grpc_addr);
    let grpc = tonic::transport::Server::builder()
        .add_service(FairPriceServiceServer::new(api::Grpc {
            latest: latest.clone(),
            shutdown: shutdown.clone(),
        }))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), {
            let shutdown = shutdown.clone();
            async move { shutdown.triggered().await }
        });
    let grpc = tokio::spawn(grpc);
    tracing::info!(http = %started.telemetry.http_addr, grpc = %grpc_addr, "started");

    // The query API serves what every instance publishes, read back from the output topic.
    let feed = {
        let fp = &config.fair_price;
        let (kafka, topic) = (config.kafka.clone(), fp.output_topic.clone());
        let (history_ms, group) = (
            fp.query_history_ms,
            format!("{}-query-{}", fp.group_id, fp.instance_id()),
        );
        let codec = tickflow_shared::avro::AvroCodec::new(&started.registry, &[]);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let followed = query_feed::follow(
                &kafka, &topic, history_ms, &group, &codec, latest, &shutdown,
            )
            .await;
            if let Err(e) = followed {
                tracing::error!(error = %e, "the query API stopped following the output topic; it serves what it had");
            }
        })
    };

    let result = pipeline::run(
        &config,
        &started.registry,
        started.cassandra.as_ref(),
        started.telemetry.instruments.clone(),
        &shutdown,
    )
    .await;
    shutdown.trigger();
    match tokio::time::timeout(Duration::from_secs(3), feed).await {
        Ok(Err(e)) if e.is_panic() => {
            tracing::error!(error = %e, "the query API's feed task panicked")
        }
        Err(_) => tracing::warn!("the query API's feed task did not stop within 3 s"),
        _ => {}
    }
    match tokio::time::timeout(Duration::from_secs(3), grpc).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
        Err(_) => tracing::warn!("gRPC connections still open after 3 s; closing them"),
        _ => {}
    }
    result
}
