//! The frame every service binary runs in: arguments, config loading and validation, logging,
//! the metrics/health endpoint, dependency watches, start-up bootstrap (topics, schemas) with
//! retry, and the graceful shutdown with its deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use scylla::client::session::Session;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::avro::{Registry, SchemaDef};
use crate::config::{self, CassandraConfig, KafkaConfig, LogFormat, ServiceConfig, Validate};
use crate::error::Result;
use crate::health::{self, Readiness};
use crate::kafka::{self, TopicSpec};
use crate::retry::{self, RetryPolicy};
use crate::shutdown::{self, Drained, Shutdown};
use crate::telemetry::{self, InstrumentLabels};

/// Arguments every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file. Built-in defaults apply without one; `TICKFLOW_<SECTION>__<KEY>`
    /// environment variables override both.
    #[arg(long, value_name = "PATH", env = "TICKFLOW_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format, overriding `service.log_format`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,

    /// Load and validate the configuration, print it (secrets hidden) and exit:
    /// 0 when valid, 2 when not.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Readable lines on stderr.
    Human,
    /// Cloud Logging's structured JSON (`severity`, `time`, `message`) on stdout.
    Json,
}

/// A service's configuration root.
pub trait ServiceRoot: DeserializeOwned + Validate + std::fmt::Debug + Send + 'static {
    fn service(&self) -> &ServiceConfig;
    fn service_mut(&mut self) -> &mut ServiceConfig;
}

/// Runs a service: loads its config, sets up logging, runs `run` until it returns or a signal
/// asks for shutdown; from then on `run` and its tasks get `service.shutdown_timeout_ms`
/// together, and the process exits when they are done or the deadline has passed.
/// Exit code 0 on a clean stop, 1 on a runtime error, 2 on a configuration error.
pub fn main<C, F, Fut>(name: &'static str, args: CommonArgs, run: F) -> ExitCode
where
    C: ServiceRoot,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut config: C = match config::load::<C>(args.config.as_deref()).and_then(C::validated) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(format) = args.log_format {
        config.service_mut().log_format = match format {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    if args.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) =
        telemetry::init_logging(config.service().log_format, &config.service().log_level)
    {
        eprintln!("{name}: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = config.service().shutdown_timeout();
    let code = runtime.block_on(async move {
        tracing::info!(service = name, version = env!("CARGO_PKG_VERSION"), sources = ?config::describe_sources(args.config.as_deref()), "starting");
        let shutdown = Shutdown::new();
        shutdown.trigger_on(shutdown::signal());
        // Past the deadline the process exits even if the runtime itself can no longer make
        // progress (a client call blocking every worker): a plain thread watches from the
        // moment stopping begins.
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.triggered().await;
            exit_after(deadline + EXIT_GRACE, name);
        });
        // On a worker thread, not the main one: its wake-ups to and from the driver tasks
        // (Cassandra connections, the HTTP server) then stay among the runtime's workers instead
        // of crossing to a thread parked outside the runtime at every request. Once shutdown is
        // asked for, it gets the deadline and no more.
        let (outcome, drained) = shutdown
            .finish(tokio::spawn(run(config, shutdown.clone())), deadline)
            .await;
        match (outcome, drained) {
            (Some(Ok(Ok(()))), Drained::Clean) => {
                tracing::info!(service = name, "stopped cleanly");
                ExitCode::SUCCESS
            }
            (Some(Ok(Ok(()))), Drained::TimedOut) => {
                tracing::warn!(service = name, deadline_ms = deadline.as_millis() as u64, "shutdown deadline passed with tasks still running; exiting anyway");
                ExitCode::SUCCESS
            }
            (None, _) => {
                tracing::warn!(service = name, deadline_ms = deadline.as_millis() as u64, "shutdown deadline passed before the service stopped; exiting anyway (input not committed yet is read again by the next owner)");
                ExitCode::SUCCESS
            }
            (Some(Ok(Err(e))), _) => {
                tracing::error!(service = name, error = %e, error_type = e.kind(), retryable = e.is_retryable(), "stopped on error");
                ExitCode::FAILURE
            }
            // A panic goes on unwinding from here, as it would have on the main thread.
            (Some(Err(e)), _) => std::panic::resume_unwind(e.into_panic()),
        }
    });
    // A blocking call abandoned at shutdown (a Kafka client call racing the signal) must not
    // hold the exit: its thread is left to the process's end instead of being joined.
    runtime.shutdown_background();
    code
}

/// How long past the shutdown deadline the watch thread lets a stuck process live.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Exits the process `after` from now, on a thread of its own, whatever the async runtime is
/// doing. The normal path returns long before.
fn exit_after(after: Duration, name: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        tracing::error!(
            service = name,
            after_ms = after.as_millis() as u64,
            "still running past the shutdown deadline (the runtime is blocked); exiting"
        );
        std::process::exit(1);
    });
}

/// What a running service holds for telemetry.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: PrometheusHandle,
    pub readiness: Readiness,
    pub instruments: InstrumentLabels,
    pub http_addr: SocketAddr,
}

/// Installs the metrics recorder and serves `/metrics`, `/healthz`, `/readyz` plus `routes`.
pub async fn start_telemetry(
    name: &str,
    service: &ServiceConfig,
    default_port: u16,
    routes: Router,
    readiness: Readiness,
    shutdown: &Shutdown,
) -> Result<Telemetry> {
    let metrics = telemetry::init_metrics(name)?;
    let listen = service.http_listen_or(default_port);
    let http_addr =
        health::serve(listen, metrics.clone(), readiness.clone(), routes, shutdown).await?;
    Ok(Telemetry {
        metrics,
        readiness,
        instruments: InstrumentLabels::new(&service.metrics),
        http_addr,
    })
}

/// Watches Kafka for `/readyz`.
pub fn watch_kafka(config: &KafkaConfig, readiness: &Readiness, shutdown: &Shutdown) {
    let config = config.clone();
    health::watch_dependency("kafka", readiness, shutdown, move || {
        let config = config.clone();
        async move { kafka::check(&config, Duration::from_secs(5)).await }
    });
}

/// Watches the schema registry for `/readyz`.
pub fn watch_registry(registry: &Registry, readiness: &Readiness, shutdown: &Shutdown) {
    let registry = registry.clone();
    health::watch_dependency("schema_registry", readiness, shutdown, move || {
        let registry = registry.clone();
        async move { registry.check().await }
    });
}

/// A Cassandra session that is connected in the background and replaced when lost.
#[derive(Clone)]
pub struct CassandraHandle {
    session: watch::Receiver<Option<Arc<Session>>>,
}

impl CassandraHandle {
    /// Waits for a connected session; `None` if shutdown comes first.
    pub async fn session(&self, shutdown: &Shutdown) -> Option<Arc<Session>> {
        let mut rx = self.session.clone();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|s| s.clone()),
            () = shutdown.triggered() => None,
        }
    }
}

/// Connects to Cassandra (retrying with backoff) and watches it for `/readyz`.
pub fn watch_cassandra(
    config: &CassandraConfig,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> CassandraHandle {
    let (tx, rx) = watch::channel(None::<Arc<Session>>);
    let tx = Arc::new(tx);
    let config = config.clone();
    health::watch_dependency("cassandra", readiness, shutdown, move || {
        let config = config.clone();
        let tx = tx.clone();
        async move {
            let current = tx.borrow().clone();
            let session = match current {
                Some(s) => s,
                None => {
                    let s = crate::cassandra::connect(&config).await?;
                    tx.send_replace(Some(s.clone()));
                    s
                }
            };
            crate::cassandra::check(&session).await
        }
    });
    CassandraHandle { session: rx }
}

/// Creates the service's topics (retrying while Kafka is down). `Ok(false)` if shutdown came
/// first.
pub async fn bootstrap_topics(
    config: &KafkaConfig,
    specs: &[TopicSpec],
    shutdown: &Shutdown,
) -> Result<bool> {
    if !config.create_topics || specs.is_empty() {
        return Ok(true);
    }
    let admin = kafka::admin(config)?;
    let created = retry::until_ok(
        "create kafka topics",
        RetryPolicy::DEPENDENCY,
        shutdown,
        || kafka::ensure_topics(&admin, specs, &config.topics),
    )
    .await;
    match created {
        Some(created) => {
            if !created.is_empty() {
                tracing::info!(topics = ?created, "created kafka topics");
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Registers the schemas of the topics the service writes (retrying while the registry is
/// unreachable). An incompatible schema is returned at once as an error: it needs a human.
pub async fn bootstrap_schemas(
    registry: &Registry,
    topics: &[(&str, SchemaDef)],
    shutdown: &Shutdown,
) -> Result<bool> {
    for (topic, schema) in topics {
        let mut delays = RetryPolicy::DEPENDENCY.delays();
        loop {
            match registry.register(topic, *schema).await {
                Ok(id) => {
                    tracing::info!(subject = %crate::avro::value_subject(topic), schema = schema.name, id, "schema registered");
                    break;
                }
                Err(e) if e.is_retryable() => {
                    let delay = delays.next().unwrap_or(RetryPolicy::DEPENDENCY.ceiling);
                    tracing::warn!(topic, error = %e, retry_in_ms = delay.as_millis() as u64, "schema registration failed, will retry");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.triggered() => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(true)
}

/// The readiness check that stays false until a service's start-up work is done.
pub const STARTUP: &str = "startup";

/// What a service depends on, and what it creates at start.
pub struct Startup<'a> {
    pub name: &'static str,
    pub default_http_port: u16,
    pub service: &'a ServiceConfig,
    pub kafka: &'a KafkaConfig,
    pub registry: &'a crate::config::RegistryConfig,
    /// `None` for services that do not use Cassandra.
    pub cassandra: Option<&'a CassandraConfig>,
    /// Topics the service writes, created when missing.
    pub topics: Vec<TopicSpec>,
    /// (topic, schema) pairs the service writes, registered under `<topic>-value`.
    pub schemas: &'a [(&'a str, SchemaDef)],
    /// The service's own HTTP routes, served beside `/metrics`, `/healthz`, `/readyz`.
    pub routes: Router,
}

/// A started service: telemetry served, dependencies watched, topics and schemas in place.
pub struct Started {
    pub telemetry: Telemetry,
    pub registry: Registry,
    pub cassandra: Option<CassandraHandle>,
}

impl Startup<'_> {
    /// Serves telemetry, starts the dependency watches, then creates topics and registers
    /// schemas (each retried while its dependency is down). `Ok(None)` when shutdown came first.
    pub async fn start(self, shutdown: &Shutdown) -> Result<Option<Started>> {
        // Every check is known before /readyz answers, so it never says ready too early.
        let readiness = Readiness::new();
        readiness.register(STARTUP);
        for dependency in ["kafka", "schema_registry"] {
            readiness.register(dependency);
        }
        if self.cassandra.is_some() {
            readiness.register("cassandra");
        }
        let telemetry = start_telemetry(
            self.name,
            self.service,
            self.default_http_port,
            self.routes,
            readiness,
            shutdown,
        )
        .await?;
        telemetry
            .readiness
            .set(STARTUP, false, "creating topics and registering schemas");
        watch_kafka(self.kafka, &telemetry.readiness, shutdown);
        let registry = Registry::new(self.registry)?;
        watch_registry(&registry, &telemetry.readiness, shutdown);
        let cassandra = self
            .cassandra
            .map(|c| watch_cassandra(c, &telemetry.readiness, shutdown));
        if !bootstrap_topics(self.kafka, &self.topics, shutdown).await? {
            return Ok(None);
        }
        if !bootstrap_schemas(&registry, self.schemas, shutdown).await? {
            return Ok(None);
        }
        telemetry
            .readiness
            .set(STARTUP, true, "topics created, schemas registered");
        Ok(Some(Started {
            telemetry,
            registry,
            cassandra,
        }))
    }
}
