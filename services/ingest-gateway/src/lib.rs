//! ingest-gateway: holds the connections to market-data providers and puts every frame on Kafka
//! untouched, with its receive time, as a RawEnvelope on `md.raw.<provider>`.
//!
//! Providers (each in its folder of the `tickflow-providers` crate): Binance, Coinbase, Kraken v2
//! and Finnhub over WebSocket, read by one connection loop (`ws`, `provider`) that asks the
//! provider's protocol what to send and what a frame is; the tickflow.feed.v1 gRPC feed (`grpc`);
//! and the built-in simulator. Subscriptions are split across replicas (`plan`) and
//! change at runtime through the admin API or a config file edit (`control`). Frames go through
//! one bounded queue to the idempotent producer (`sink`); frames that cannot be forwarded go to
//! the dead-letter topic with the reason.
#![forbid(unsafe_code)]

pub mod backfill;
pub mod config;
pub mod control;
pub mod grpc;
pub mod metrics;
pub mod plan;
pub mod provider;
mod session;
pub mod simulator;
pub mod sink;
pub mod sources;
pub mod state;
pub mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tickflow_shared::avro::{self, AvroCodec, SchemaDef};
use tickflow_shared::domain::now_micros;
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
/// the simulator, else three crypto pairs; then only those of this replica's shard.
pub fn simulator_symbols(config: &Config, index: &InstrumentIndex) -> Vec<String> {
    let sim = &config.gateway.simulator;
    let shard = plan::Shard {
        index: config.gateway.replica_index,
        count: config.gateway.replica_count,
    };
    let all: Vec<String> = if !sim.instruments.is_empty() {
        sim.instruments.clone()
    } else {
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
    };
    all.into_iter().filter(|s| shard.owns(s)).collect()
}

/// The providers' token: the environment variable (`token_env`, default
/// `TICKFLOW_<PROVIDER>_TOKEN`), else the file.
fn provider_token(name: &str, p: &config::ProviderConfig) -> Option<String> {
    let variable = p
        .token_env
        .clone()
        .unwrap_or_else(|| format!("TICKFLOW_{}_TOKEN", name.to_ascii_uppercase()));
    std::env::var(variable)
        .ok()
        .or_else(|| {
            p.token_file
                .as_ref()
                .and_then(|f| std::fs::read_to_string(f).ok())
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Keeps the per-provider gauges current: seconds since the last market data, subscriptions
/// confirmed.
async fn update_gauges(book: state::Book, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.triggered() => return,
            _ = tick.tick() => {}
        }
        let now = now_micros();
        for (provider, last) in book.last_data_by_provider() {
            ::metrics::gauge!(metrics::LAST_MESSAGE_AGE, "provider" => provider)
                .set((now - last).max(0) as f64 / 1e6);
        }
        for (provider, active) in book.active_by_provider() {
            ::metrics::gauge!(metrics::ACTIVE_SUBSCRIPTIONS, "provider" => provider)
                .set(active as f64);
        }
    }
}

/// Runs the service until `shutdown` is triggered; frames in hand are delivered before it returns.
/// `config_path`: the file the configuration came from, watched for changes.
pub async fn run(config: Config, shutdown: Shutdown, config_path: Option<PathBuf>) -> Result<()> {
    let g = config.gateway.clone();
    let index = InstrumentIndex::new(match &g.instruments_file {
        Some(path) => instruments::load_file(path)?,
        None => Vec::new(),
    });
    let mut enabled: Vec<&'static str> = Vec::new();
    if g.simulator.enabled {
        enabled.push(sources::SIMULATOR);
    }
    for (name, p) in g.providers() {
        if p.enabled {
            enabled.push(name);
        }
    }
    let raw_topics: Vec<String> = enabled
        .iter()
        .map(|p| format!("{}{}", g.raw_topic_prefix, p))
        .collect();
    let schemas: Vec<(&str, SchemaDef)> = raw_topics
        .iter()
        .map(|t| (t.as_str(), avro::RAW_ENVELOPE))
        .collect();
    let mut topics: Vec<TopicSpec> = raw_topics
        .iter()
        .map(|t| TopicSpec::new(t, 6).retention(Duration::from_secs(24 * 3600)))
        .collect();
    if !g.dlq_topic.is_empty() {
        topics.push(TopicSpec::new(&g.dlq_topic, 1).retention(Duration::from_secs(7 * 24 * 3600)));
    }
    let startup = Startup {
        name: NAME,
        default_http_port: DEFAULT_HTTP_PORT,
        service: &config.service,
        kafka: &config.kafka,
        registry: &config.registry,
        cassandra: None,
        topics,
        schemas: &schemas,
        routes: Router::new(),
    };
    let Some(started) = startup.start(&shutdown).await? else {
        return Ok(());
    };
    // After start: the metrics recorder is installed there.
    metrics::describe();
    metrics::zero_error_counters(&enabled);
    let codec = Arc::new(AvroCodec::new(&started.registry, &schemas));
    let producer: sink::RawProducer =
        kafka::producer_config(&config.kafka, "gateway").create_with_context(sink::Deliveries)?;
    let (output, frames) = sink::queue(
        g.queue_capacity,
        g.drop_when_full,
        g.max_frame_bytes,
        !g.dlq_topic.is_empty(),
    );

    // Connections stop on shutdown; the sink then drains what they handed over and flushes.
    let connections = Shutdown::new();
    let book = state::Book::default();
    let control = Arc::new(control::Control::new(
        g.clone(),
        index.clone(),
        book.clone(),
    ));
    let mut sources = Vec::new();
    if g.simulator.enabled {
        let symbols = simulator_symbols(&config, &index);
        let sim = simulator::Simulator::new(&g.simulator, &symbols)
            .ids_after(tickflow_shared::domain::now_micros().max(0) as u64 / 1_000);
        sources.push(tokio::spawn(sources::run_simulator(
            sim,
            symbols,
            output.clone(),
            connections.clone(),
        )));
    }
    for protocol in tickflow_providers::ALL
        .iter()
        .copied()
        .filter_map(|p| p.websocket())
    {
        let name = protocol.provider();
        let Some((_, p)) = g.providers().into_iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if !p.enabled {
            continue;
        }
        let token = provider_token(name, p);
        if protocol.needs_token() && token.is_none() {
            return Err(tickflow_shared::Error::Config(format!(
                "gateway.{name}: no API token (set TICKFLOW_{}_TOKEN or gateway.{name}.token_file)",
                name.to_ascii_uppercase()
            )));
        }
        let settings = p.settings(&protocol.defaults());
        let provider = protocol.provider();
        tracing::info!(provider, url = %settings.url, max_streams_per_connection = settings.max_streams_per_connection, "provider enabled");
        let ctx = ws::Context {
            protocol,
            settings,
            token,
            output: output.clone(),
            book: book.clone(),
            labels: started.telemetry.instruments.clone(),
            shutdown: connections.clone(),
        };
        let desired = control.register(provider);
        sources.push(tokio::spawn(provider::run(ctx, desired)));
    }
    if g.grpc.enabled {
        let settings = g.grpc.settings(&grpc::DEFAULTS);
        let ctx = grpc::Context {
            tls: grpc::client_tls(&settings.url, &g.grpc.tls)?,
            settings,
            token: provider_token(grpc::PROVIDER, &g.grpc),
            output: output.clone(),
            book: book.clone(),
            labels: started.telemetry.instruments.clone(),
            shutdown: connections.clone(),
        };
        tracing::info!(provider = grpc::PROVIDER, url = %ctx.settings.url, "provider enabled");
        let desired = control.register(grpc::PROVIDER);
        sources.push(tokio::spawn(grpc::run(ctx, desired)));
    }
    let mut backfilled: Vec<backfill::Source> = g
        .providers()
        .into_iter()
        .filter(|(_, p)| p.enabled)
        .filter_map(|(name, p)| {
            let provider = tickflow_providers::by_id(name)?;
            let rest = provider.backfill()?;
            let settings = p.settings(&provider.websocket()?.defaults());
            Some(backfill::Source {
                provider,
                via: backfill::Via::Rest(
                    p.rest_url
                        .clone()
                        .unwrap_or_else(|| rest.default_rest_url().to_string()),
                ),
                rate_limit_backoff: settings.rate_limit_backoff,
                retry: tickflow_shared::retry::RetryPolicy {
                    initial: settings.reconnect_initial,
                    factor: 2.0,
                    ceiling: settings.reconnect_max,
                },
            })
        })
        .collect();
    if g.grpc.enabled {
        // The feed's Replay call, for the gaps in its `number`s.
        let settings = g.grpc.settings(&grpc::DEFAULTS);
        let limit = output.max_frame_bytes().saturating_mul(4).max(16 << 20);
        backfilled.push(backfill::Source {
            provider: &tickflow_providers::grpc::Grpc,
            via: backfill::Via::Replay(grpc::Replayer::new(
                &settings,
                grpc::client_tls(&settings.url, &g.grpc.tls)?,
                provider_token(grpc::PROVIDER, &g.grpc),
                limit,
            )?),
            rate_limit_backoff: settings.rate_limit_backoff,
            retry: tickflow_shared::retry::RetryPolicy {
                initial: settings.reconnect_initial,
                factor: 2.0,
                ceiling: settings.reconnect_max,
            },
        });
    }
    if g.backfill.enabled && !backfilled.is_empty() {
        sources.push(tokio::spawn(backfill::run(backfill::Context {
            config: g.backfill.clone(),
            kafka: config.kafka.clone(),
            codec: codec.clone(),
            sources: backfilled,
            output: output.clone(),
            shutdown: connections.clone(),
        })));
    }
    if enabled.is_empty() {
        tracing::warn!("no provider is enabled: nothing will be received");
    }
    drop(output);
    let reloader = Arc::new(control::Reloader::new(control.clone(), config_path));
    control::serve_admin(control.clone(), &g, reloader.clone(), shutdown.clone()).await?;
    tokio::spawn(reloader.watch(
        Duration::from_millis(g.reload_interval_ms),
        shutdown.clone(),
    ));
    tokio::spawn(update_gauges(book, shutdown.clone()));
    let sink = tokio::spawn(sink::run(
        frames,
        producer,
        codec,
        sink::Topics {
            raw_prefix: g.raw_topic_prefix.clone(),
            dlq: Some(g.dlq_topic.clone()).filter(|t| !t.is_empty()),
            dlq_max_payload_bytes: g.dlq_max_payload_bytes,
        },
        shutdown.clone(),
    ));
    // A provider task that ends before shutdown (a panic is a bug) is said at once, never dropped.
    let mut running: futures::stream::FuturesUnordered<_> = sources.into_iter().collect();
    loop {
        tokio::select! {
            () = shutdown.triggered() => break,
            Some(ended) = futures::StreamExt::next(&mut running) => source_ended(ended, false),
        }
    }
    connections.trigger();
    while let Some(ended) = futures::StreamExt::next(&mut running).await {
        source_ended(ended, true);
    }
    match sink.await {
        Ok(result) => result,
        Err(e) => Err(tickflow_shared::Error::Task {
            task: "sink",
            message: e.to_string(),
        }),
    }
}

/// Reports how a provider task ended: a panic as an error with its message; an end before
/// shutdown (its subscriptions are no longer served) as a warning.
fn source_ended(ended: std::result::Result<(), tokio::task::JoinError>, stopping: bool) {
    match ended {
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "a provider task panicked; its subscriptions are no longer served until the gateway restarts")
        }
        Err(e) => tracing::warn!(error = %e, "a provider task was cancelled"),
        Ok(()) if !stopping => tracing::warn!("a provider task ended before shutdown"),
        Ok(()) => {}
    }
}
