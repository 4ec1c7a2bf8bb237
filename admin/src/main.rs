//! tickflow-admin: operator commands that are not part of any one service.
//!
//!   tickflow-admin migrate            apply shared/cql migrations to the configured keyspace
//!   tickflow-admin register-schemas   register every Avro schema under its topic's subject
//!   tickflow-admin check              check that Kafka, the registry and Cassandra answer
//!   tickflow-admin feed-trades        random-walk trades straight to md.trades
//!   tickflow-admin publish-instruments   instruments from a file to md.instruments (live update)
//!   tickflow-admin topics             topics with offsets, consumer groups with lag (Kafdrop's view)
//!   tickflow-admin read TOPIC         records of a topic decoded through the registry, or its tail
//!   tickflow-admin serve-feed         a demo gRPC market-data feed (tickflow.feed.v1) with holes

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use tickflow_shared::avro::{self, Registry};
use tickflow_shared::config::{
    self, CassandraConfig, KafkaConfig, Problems, RegistryConfig, ServiceConfig, Validate,
};
use tickflow_shared::kafka::names;

mod feed;
mod read;
mod render;
mod serve_feed;
mod topics;

#[derive(Parser)]
#[command(
    name = "tickflow-admin",
    version,
    about = "Operator commands for tickflow: Cassandra migrations, schema registration, dependency checks, topic inspection.",
    long_about = "Operator commands for tickflow.\n\nConfiguration is layered like the services': built-in defaults, then the TOML file given with --config (or TICKFLOW_CONFIG), then TICKFLOW_<SECTION>__<KEY> environment variables. Only the [kafka], [registry], [cassandra] and [service] sections are read.\n\n`topics` and `read` give what Kafdrop shows, on a machine without Docker: offsets and consumer-group lag, and records decoded through the schema registry. Both only read: they never join a group or commit an offset."
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "PATH", env = "TICKFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the keyspace (replication from [cassandra.replication]) and apply every CQL
    /// migration not applied yet. Safe to run again.
    Migrate,
    /// Register every Avro schema under `<topic>-value` with the configured compatibility.
    /// Fails, naming the subject, when the registry refuses a schema as incompatible.
    RegisterSchemas,
    /// Check that Kafka, the schema registry and Cassandra answer a real request.
    Check,
    /// Produce random-walk trades straight to md.trades (event time = now), to drive the
    /// aggregator and fair-price without the gateway and the normalizer.
    FeedTrades {
        /// Trades per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Stop after this many seconds; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Comma-separated canonical instruments.
        #[arg(long, default_value = "BTC-USD,ETH-USD,SOL-USD")]
        instruments: String,
    },
    /// Publish instruments to the compacted reference-data topic; running normalizers apply them
    /// from their next record on, without restart. Also removes instruments (tombstones).
    PublishInstruments {
        /// An instruments file (`[[instrument]]` tables, see config/instruments.toml).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Remove this instrument (repeatable).
        #[arg(long, value_name = "INSTRUMENT")]
        remove: Vec<String>,
        /// The reference-data topic.
        #[arg(long, default_value = names::INSTRUMENTS)]
        topic: String,
    },
    /// List topics with partitions, offsets and message counts, and consumer groups with lag.
    ///
    /// For each topic: its partitions with the low offset (oldest record kept), the high
    /// watermark (next offset) and their difference; then every consumer group that committed
    /// offsets on it (or those named with --group), with each partition's committed offset and
    /// lag, the high watermark minus the committed offset. Read-only: offsets are fetched without
    /// joining any group.
    Topics(topics::TopicsArgs),
    /// Show a range or the tail of a topic, decoded through the schema registry.
    ///
    /// Reads from where --from-beginning/--from-offset/--from-time/--last says (default: the
    /// last 10 records of each partition) to the end the partitions have when the command
    /// starts, or on with --follow. Avro values (trades, candles, fair prices, anomalies,
    /// instruments, raw envelopes) are decoded with the writer schema the registry has under
    /// the record's schema id; a raw frame's payload, and anything that is not Avro (what the
    /// gateway dead-letters), shows as text. Headers show with each record: a dead letter's
    /// `tickflow.reason`, `tickflow.reason.text` and source. One line per record:
    /// `partition:offset  time  key  [headers]  Schema field=value…`, or with --json an object
    /// with topic, partition, offset, timestamp_ms, key, headers, schema, schema_id, value (and
    /// decode_error when a value looked like Avro but could not be decoded). Committed records
    /// only (read_committed); never commits an offset.
    #[command(
        after_help = "Examples:\n  tickflow-admin read md.trades --last 5 --instrument BTC-USD\n  tickflow-admin read md.raw.kraken --follow\n  tickflow-admin read md.dlq.normalizer --from-beginning --json | jq '.headers'\n  tickflow-admin read md.candles.1m --from-time 2025-11-22T09:30:00Z --venue coinbase --count 20"
    )]
    Read(read::ReadArgs),
    /// Serve a demo tickflow.feed.v1 MarketFeed (the gRPC feed the gateway reads as provider
    /// `grpc`): made-up trades numbered per symbol, with a hole now and then that the streams
    /// leave out and Replay serves, so the normalizer finds gaps and the gateway fills them.
    ServeFeed {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// Comma-separated symbols it trades.
        #[arg(long, default_value = "MSFT")]
        symbols: String,
        /// Trades per second and symbol.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Seconds between holes; 0: none.
        #[arg(long, default_value_t = 15)]
        hole_every_s: u64,
        /// Trades left out of the streams per hole.
        #[arg(long, default_value_t = 5)]
        hole_len: u32,
        /// Stop printing after this many seconds; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// After printing stopped, go on serving (heartbeats, Replay) this many seconds.
        #[arg(long, default_value_t = 0)]
        linger_s: u64,
        /// Keep each symbol's next number in this file, so that the next run goes on from it.
        #[arg(long, value_name = "PATH")]
        state_file: Option<PathBuf>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AdminConfig {
    service: ServiceConfig,
    kafka: KafkaConfig,
    registry: RegistryConfig,
    cassandra: CassandraConfig,
}

impl Validate for AdminConfig {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.kafka.validate(problems);
        self.registry.validate(problems);
        self.cassandra.validate(problems);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config::load::<AdminConfig>(args.config.as_deref())
        .and_then(AdminConfig::validated)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tickflow-admin: {e}");
            return ExitCode::from(2);
        }
    };
    // `topics` and `read` write data to stdout, where the json log format goes too: they report
    // their problems on stderr themselves instead.
    if !matches!(args.command, Command::Topics(_) | Command::Read(_)) {
        let _ = tickflow_shared::telemetry::init_logging(
            config.service.log_format,
            &config.service.log_level,
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tickflow-admin: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickflow-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: AdminConfig) -> tickflow_shared::Result<()> {
    match command {
        Command::Topics(args) => topics::run(&config.kafka, &args).await?,
        Command::ServeFeed {
            listen,
            symbols,
            rate,
            hole_every_s,
            hole_len,
            seconds,
            linger_s,
            state_file,
        } => {
            serve_feed::run(serve_feed::Options {
                listen,
                symbols: symbols
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                rate,
                hole_every: Duration::from_secs(hole_every_s),
                hole_len,
                seconds,
                linger: Duration::from_secs(linger_s),
                state_file,
            })
            .await?
        }
        Command::Read(args) => read::run(&config.kafka, &config.registry, &args).await?,
        Command::FeedTrades {
            rate,
            seconds,
            instruments,
        } => {
            let instruments: Vec<String> = instruments
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            feed::run(&config.kafka, &config.registry, &instruments, rate, seconds).await?;
        }
        Command::PublishInstruments {
            file,
            remove,
            topic,
        } => {
            let instruments = match &file {
                Some(path) => tickflow_shared::instruments::load_file(path)?,
                None => Vec::new(),
            };
            if instruments.is_empty() && remove.is_empty() {
                return Err(tickflow_shared::Error::Config(
                    "nothing to publish: give --file with instruments and/or --remove".into(),
                ));
            }
            let n = tickflow_shared::instruments::publish(
                &config.kafka,
                &config.registry,
                &topic,
                &instruments,
                &remove,
            )
            .await?;
            println!(
                "{topic}: published {} instrument(s), removed {}",
                instruments.len(),
                n - instruments.len()
            );
        }
        Command::Migrate => {
            let session = tickflow_shared::cassandra::connect(&config.cassandra).await?;
            let report = tickflow_shared::cassandra::migrate(&session, &config.cassandra).await?;
            println!(
                "keyspace {}: applied {:?}, already applied {:?}",
                config.cassandra.keyspace, report.applied, report.already_applied
            );
        }
        Command::RegisterSchemas => {
            let registry = Registry::new(&config.registry)?;
            for (topic, schema) in names::SCHEMA_OF_TOPIC {
                let id = registry.register(topic, schema).await?;
                println!(
                    "{} -> {} (id {id})",
                    avro::value_subject(topic),
                    schema.name
                );
            }
        }
        Command::Check => {
            let mut failed = false;
            let kafka = tickflow_shared::kafka::check(&config.kafka, Duration::from_secs(5)).await;
            let registry = match Registry::new(&config.registry) {
                Ok(r) => r.check().await,
                Err(e) => Err(e),
            };
            let cassandra = match tickflow_shared::cassandra::connect(&config.cassandra).await {
                Ok(s) => tickflow_shared::cassandra::check(&s).await,
                Err(e) => Err(e),
            };
            for (name, result) in [
                ("kafka", kafka),
                ("schema registry", registry),
                ("cassandra", cassandra),
            ] {
                match result {
                    Ok(detail) => println!("{name:16} ok    {detail}"),
                    Err(e) => {
                        failed = true;
                        println!("{name:16} DOWN  {e}");
                    }
                }
            }
            if failed {
                return Err(tickflow_shared::Error::Config(
                    "a dependency is down (see above)".into(),
                ));
            }
        }
    }
    Ok(())
}
