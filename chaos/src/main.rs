//! tickflow-chaos — the chaos suite (docs/testing.md, "Chaos suite").
//!
//! Runs the four services on the real local stack (Kafka, the schema registry, Cassandra) with
//! a steady load from local Binance, Coinbase and Kraken servers (their documented WebSocket
//! protocols, live timestamps; exchanges that number each symbol's trades, go on trading while
//! no connection carries a symbol, and serve past trades from their documented REST
//! endpoints), and does its worst while they run: kill -9 of every service in
//! turn, several rounds, at random moments; provider connections dropped; the normalizer away
//! for longer than the allowed lateness; the Kafka broker restarted; Cassandra stopped for a
//! minute. After each of the last three, every candle of a window that ended before it must
//! equal the batch recomputation within a stated time. Then the load stops, the pipeline
//! drains, and everything is checked against what the providers really printed:
//! - every trade printed reached the raw topics, live or filled by the gateway's backfill from
//!   the REST endpoint after the normalizer found the gap, whatever fault it was printed during;
//! - every trade the gateway received is on the Trade topic exactly once (read_committed), with
//!   its price and size, and nothing else is;
//! - every 1-minute candle and roll-up in Cassandra equals a batch recomputation from the Trade
//!   topic;
//! - every fair price published equals its recomputation from the trades before it;
//! - every restarted service was ready again within its bound, and every Kafka consumer killed
//!   with -9 (normalizer, aggregator, fair-price) consumed again within 10 s of its restart.
//!
//! It prints a summary and exits 1 if anything failed. `scripts/chaos` builds and runs it.

use tickflow_testkit::aggregator as agg;
use tickflow_testkit::fair_price as fair;
use tickflow_testkit::providers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use fair_price::records::{FairPrice, FairPriceCodec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::Value;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, Candle, Micros, Trade, MICROS_PER_SECOND as S};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};
use trade_aggregator::config::AggregatorConfig;
use trade_aggregator::reference::{batch_candles, batch_rollups};
use trade_aggregator::store::CandleStore;

use providers::{Dialect, Fault, ProviderServer, Sent};

#[derive(Parser, Debug)]
#[command(
    name = "tickflow-chaos",
    about = "The chaos suite: the four services on the real local stack under steady load, \
             while processes are killed, Kafka restarts, Cassandra stops and provider \
             connections drop; then checks that nothing was lost or doubled and that every \
             candle and fair price equals its recomputation. Needs `scripts/stack up`; run it \
             through `scripts/chaos`, which builds the services first.",
    after_help = "Exit status: 0 when every check passed, 1 when one failed (the summary says \
                  which), 2 on bad arguments. A run takes about 11 minutes with the defaults."
)]
struct Args {
    /// Seed of the fault schedule (the moments, the dropped provider). Printed at the start,
    /// so that a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// kill -9 rounds; each round kills every service once, in turn, and restarts it.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Provider connections to drop (a random provider each time).
    #[arg(long, default_value_t = 3)]
    drops: u32,
    /// Restart the Kafka broker mid-stream (`scripts/stack stop kafka`, then `start kafka`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    kafka_restart: bool,
    /// Seconds the normalizer stays killed mid-stream: longer than the aggregator's idle
    /// timeout plus its allowed lateness (92 s with the defaults), so that part of what it then
    /// delivers is too late and corrected from the stored trades (0: no such outage).
    #[arg(long, default_value_t = 105)]
    normalizer_outage_s: u64,
    /// After the normalizer outage, the Kafka restart and the Cassandra outage, every candle and
    /// roll-up of a window that had ended must equal the batch recomputation within this many
    /// seconds of the service or dependency being back.
    #[arg(long, default_value_t = 120)]
    settle_within_s: u64,
    /// Seconds Cassandra stays stopped mid-stream (0: no Cassandra outage).
    #[arg(long, default_value_t = 60)]
    cassandra_outage_s: u64,
    /// Each provider connection sends one trade every this many milliseconds.
    #[arg(long, default_value_t = 20)]
    trade_every_ms: u64,
    /// A service restarted after kill -9 must answer /readyz 200 within this many seconds.
    #[arg(long, default_value_t = 30)]
    ready_within_s: u64,
    /// A Kafka consumer (normalizer, aggregator, fair-price) restarted after kill -9 must have
    /// consumed its first record within this many seconds of its restart.
    #[arg(long, default_value_t = 10)]
    consuming_within_s: u64,
    /// After Kafka or Cassandra is back, every service must be ready within this many seconds.
    #[arg(long, default_value_t = 60)]
    recover_within_s: u64,
    /// Where the service binaries are (default: next to this program, i.e. the cargo target
    /// directory `scripts/chaos` built).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The `scripts/stack` that runs the local stack (default: this repository's).
    #[arg(long)]
    stack_script: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    Gateway,
    Normalizer,
    Aggregator,
    FairPrice,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::Gateway,
        Service::Normalizer,
        Service::Aggregator,
        Service::FairPrice,
    ];

    fn binary(self) -> &'static str {
        match self {
            Service::Gateway => "ingest-gateway",
            Service::Normalizer => "normalizer",
            Service::Aggregator => "trade-aggregator",
            Service::FairPrice => "fair-price",
        }
    }

    /// The counter of records a Kafka consumer has read since it started (`None`: the gateway,
    /// which consumes no topic).
    fn consumed_counter(self) -> Option<&'static str> {
        match self {
            Service::Gateway => None,
            Service::Normalizer => Some("tickflow_normalizer_records_total"),
            Service::Aggregator => Some("tickflow_aggregator_trades_total"),
            Service::FairPrice => Some("tickflow_fairprice_trades_total"),
        }
    }
}

const INSTRUMENTS: [(&str, &str); 4] = [
    ("BTC-USD", "BTC"),
    ("ETH-USD", "ETH"),
    ("SOL-USD", "SOL"),
    ("XRP-USD", "XRP"),
];
const DIALECTS: [(Dialect, &str); 3] = [
    (Dialect::Binance, "binance"),
    (Dialect::Coinbase, "coinbase"),
    (Dialect::Kraken, "kraken"),
];
/// The providers whose REST API the gateway backfills gaps from: nothing they sent may be
/// missing, fault or not.
const BACKFILLED: [&str; 3] = ["binance", "coinbase", "kraken"];

fn log(text: impl AsRef<str>) {
    println!("[chaos] {}", text.as_ref());
}

/// The four services, each with its environment, restarted as the schedule says.
struct Pipeline {
    stack: Stack,
    bin_dir: PathBuf,
    env: BTreeMap<Service, Vec<(&'static str, String)>>,
    running: BTreeMap<Service, ServiceProcess>,
}

impl Pipeline {
    fn spawn(&mut self, service: Service) {
        let binary = self.bin_dir.join(service.binary());
        let process = ServiceProcess::spawn(
            &binary.display().to_string(),
            &self.stack,
            &self.env[&service],
        );
        self.running.insert(service, process);
    }

    /// How long until `service` answers /readyz 200, or why not within `within`.
    async fn ready(&mut self, service: Service, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let process = self.running.get_mut(&service).expect("a spawned service");
        loop {
            if !process.is_running() {
                return Err(format!(
                    "{} exited; its log ends:\n{}",
                    service.binary(),
                    tail(&process.log(), 30)
                ));
            }
            if let Some((200, _)) = process.get("/readyz").await {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                let last = process.get("/readyz").await;
                return Err(format!(
                    "{} not ready within {within:?}; /readyz says {last:?}; its log ends:\n{}",
                    service.binary(),
                    tail(&process.log(), 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How long from `restarted` until `service` has consumed a record (its counter is above
    /// zero), or why not within `within` of `restarted`; polled every 50 ms.
    async fn consuming(
        &mut self,
        service: Service,
        restarted: Instant,
        within: Duration,
    ) -> Result<Duration, String> {
        let counter = service.consumed_counter().expect("a Kafka consumer");
        let process = self.running.get_mut(&service).expect("a spawned service");
        loop {
            let (_, metrics) = process.get("/metrics").await.unwrap_or_default();
            if testkit::metric_total(&metrics, counter) > 0.0 {
                return Ok(restarted.elapsed());
            }
            if restarted.elapsed() > within {
                return Err(format!(
                    "{} consumed nothing within {within:?} of its restart; its log ends:\n{}",
                    service.binary(),
                    tail(&process.log(), 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How long until every service is ready.
    async fn all_ready(&mut self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut when = Vec::new();
        for service in Service::ALL {
            let left = within.saturating_sub(started.elapsed());
            self.ready(service, left).await?;
            when.push(format!(
                "{} {:.1} s",
                service.binary(),
                started.elapsed().as_secs_f64()
            ));
        }
        log(format!("  ready: {}", when.join(", ")));
        Ok(started.elapsed())
    }

    fn kill_hard(&mut self, service: Service) {
        if let Some(process) = self.running.get_mut(&service) {
            process.kill_hard();
        }
    }

    /// SIGTERM; the exit code. Logs how long the stop took, and whether it ran into the
    /// service's shutdown deadline (exactly-once holds either way; a deadline stop is worth a look).
    fn terminate(&mut self, service: Service) -> Option<i32> {
        let process = self.running.get_mut(&service)?;
        let (code, took) = process.terminate(Duration::from_secs(30));
        let how = if process.log().contains("shutdown deadline passed") {
            "ran into its shutdown deadline"
        } else {
            "clean"
        };
        log(format!(
            "  {} stopped in {:.1} s, exit {code:?}, {how}",
            service.binary(),
            took.as_secs_f64()
        ));
        code
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One fault injected, and how the system came back.
struct Injected {
    what: String,
    /// Seconds since the load started.
    at_s: f64,
    /// How long the process or dependency was away.
    down: Duration,
    /// From its restart to every affected service ready (`Err`: not within the bound).
    recovered: Result<Duration, String>,
    bound: Duration,
    /// For a Kafka consumer killed with -9: from its restart to its first record consumed.
    consuming: Option<(Result<Duration, String>, Duration)>,
}

/// While the gateway was down, or a provider connection was being dropped, trades the provider
/// sent may never reach the gateway: a live feed has no replay. Wall-clock µs.
struct LossWindow {
    from: Micros,
    to: Micros,
    why: String,
}

/// A provider's trade, from its frame: (provider, symbol, trade id) → (event time µs, price,
/// size). The providers number each symbol's trades on their own.
type TradeKey = (String, String, String);

fn trades_in_frame(provider: &str, text: &str) -> Vec<(TradeKey, Micros, Decimal, Decimal)> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let decimal = |v: &Value| -> Decimal {
        match v {
            Value::String(s) => s.parse().unwrap_or_default(),
            other => other.to_string().parse().unwrap_or_default(),
        }
    };
    let iso = |v: &Value| -> Micros {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
            .unwrap_or_default()
    };
    let key = |symbol: &Value, id: &Value| {
        (
            provider.to_string(),
            symbol.as_str().unwrap_or_default().to_string(),
            id.to_string(),
        )
    };
    // A live Binance frame comes in the combined stream's envelope, a backfilled one without.
    let binance = if v["data"].is_object() {
        &v["data"]
    } else {
        &v
    };
    match provider {
        "binance" if binance["e"] == "trade" => {
            let d = binance;
            vec![(
                key(&d["s"], &d["t"]),
                d["T"].as_i64().unwrap_or_default() * 1000,
                decimal(&d["p"]),
                decimal(&d["q"]),
            )]
        }
        "coinbase" if v["type"] == "match" => vec![(
            key(&v["product_id"], &v["trade_id"]),
            iso(&v["time"]),
            decimal(&v["price"]),
            decimal(&v["size"]),
        )],
        "kraken" if v["channel"] == "trade" => v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                (
                    key(&d["symbol"], &d["trade_id"]),
                    iso(&d["timestamp"]),
                    decimal(&d["price"]),
                    decimal(&d["qty"]),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn instruments_toml() -> String {
    let mut out = String::new();
    for (instrument, base) in INSTRUMENTS {
        out.push_str(&format!(
            "[[instrument]]\ninstrument = \"{instrument}\"\nbase = \"{base}\"\nquote = \"USD\"\n\
             asset_class = \"CRYPTO\"\nlistings = [\n  {{ provider = \"binance\", symbol = \"{base}USDT\" }},\n  \
             {{ provider = \"coinbase\", symbol = \"{base}-USD\" }},\n  {{ provider = \"kraken\", symbol = \"{base}/USD\" }},\n]\n\n"
        ));
    }
    out
}

/// Stops a stack component (`scripts/stack stop`), keeps it down for `down_for`, starts it again
/// and waits until every service is ready (at most `bound`).
#[allow(clippy::too_many_arguments)]
async fn outage(
    stack_script: &PathBuf,
    pipeline: &mut Pipeline,
    component: &str,
    name: &str,
    down_for: Duration,
    bound: Duration,
    at_s: f64,
    what: String,
) -> Result<Injected, String> {
    log(format!(
        "stopping {name} for {:.1} s at +{at_s:.1} s",
        down_for.as_secs_f64()
    ));
    stack_command(stack_script, &["stop", component])?;
    let down_from = Instant::now();
    tokio::time::sleep(down_for).await;
    stack_command(stack_script, &["start", component])?;
    let down = down_from.elapsed();
    let recovered = pipeline.all_ready(bound).await;
    log(format!(
        "{name} was down {:.1} s; {}",
        down.as_secs_f64(),
        match &recovered {
            Ok(d) => format!(
                "every service ready {:.1} s after it was back",
                d.as_secs_f64()
            ),
            Err(e) => e.clone(),
        }
    ));
    Ok(Injected {
        what,
        at_s,
        down,
        recovered,
        bound,
        consuming: None,
    })
}

/// What the candle check after a fault needs.
struct CandleCheck<'a> {
    stack: &'a Stack,
    trades_topic: &'a str,
    codec: &'a AvroCodec,
    store: &'a CandleStore,
    agg: &'a AggregatorConfig,
}

impl CandleCheck<'_> {
    /// The expected candles and roll-ups of windows ended by `ended_by`, recomputed from every
    /// trade on the Trade topic now, against those stored; the mismatches and how many compared.
    async fn mismatches(&self, ended_by: Micros) -> Result<(Vec<String>, usize), String> {
        let timing = self.agg.timing();
        let intervals = self.agg.rollup_intervals();
        let mut expected: BTreeMap<(String, String, i64), Candle> = BTreeMap::new();
        let mut expected_rollups: BTreeMap<(String, String, String, i64), Candle> = BTreeMap::new();
        let mut by_partition: BTreeMap<i32, Vec<Trade>> = BTreeMap::new();
        for (partition, bytes) in fair::read_partitions_to_end(self.stack, self.trades_topic).await
        {
            let trade = self
                .codec
                .decode_trade(&bytes)
                .await
                .map_err(|e| e.to_string())?;
            by_partition.entry(partition).or_default().push(trade);
        }
        for trades in by_partition.values() {
            expected.extend(batch_candles(trades, &timing).0);
            for interval in &intervals {
                expected_rollups.extend(
                    batch_rollups(trades, interval.length, &interval.label)
                        .into_iter()
                        .map(|((i, v, start), c)| ((i, v, interval.label.clone(), start), c)),
                );
            }
        }
        expected.retain(|_, c| c.window_end <= ended_by);
        expected_rollups.retain(|_, c| c.window_end <= ended_by);
        let instruments: Vec<&str> = INSTRUMENTS.iter().map(|(i, _)| *i).collect();
        let venues: Vec<&str> = DIALECTS.iter().map(|(_, n)| *n).chain(["*"]).collect();
        let days = agg::days_of(&expected);
        let mut stored = agg::stored_candles(self.store, &instruments, &venues, &days)
            .await
            .map_err(|e| e.to_string())?;
        stored.retain(|_, c| c.window_end <= ended_by);
        let mut stored_rollups =
            agg::stored_rollups(self.store, &instruments, &venues, &intervals, &days)
                .await
                .map_err(|e| e.to_string())?;
        stored_rollups.retain(|_, c| c.window_end <= ended_by);
        let mut mismatches = Vec::new();
        agg::scenario::compare(&expected, &stored, &mut mismatches);
        agg::scenario::compare(&expected_rollups, &stored_rollups, &mut mismatches);
        Ok((mismatches, expected.len() + expected_rollups.len()))
    }

    /// After `what` recovered at `back`: waits until every candle and roll-up of a window that
    /// ended before it equals the batch recomputation from every trade on the Trade topic
    /// (too-late ones included, through the aggregator's corrections), at most `within` after
    /// `back`. The time it took from `back`, or why not.
    async fn settle(&self, what: &str, back: Instant, within: Duration) -> Settled {
        let ended_by = now_micros() - Micros::try_from(back.elapsed().as_micros()).unwrap_or(0);
        loop {
            match self.mismatches(ended_by).await {
                Ok((wrong, compared)) if wrong.is_empty() => {
                    log(format!(
                        "  after the {what}: all {compared} candles and roll-ups of windows ended before it equal the recomputation, {:.1} s after recovery",
                        back.elapsed().as_secs_f64()
                    ));
                    return Settled {
                        what: what.to_string(),
                        outcome: Ok((back.elapsed(), compared)),
                        within,
                    };
                }
                Ok((wrong, compared)) if back.elapsed() > within => {
                    return Settled {
                        what: what.to_string(),
                        outcome: Err(format!(
                            "after the {what}: {} of {compared} candles and roll-ups still differ from the recomputation {within:?} after recovery, e.g.\n{}",
                            wrong.len(),
                            wrong.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
                        )),
                        within,
                    }
                }
                Err(e) if back.elapsed() > within => {
                    return Settled {
                        what: what.to_string(),
                        outcome: Err(format!("after the {what}: {e}")),
                        within,
                    }
                }
                _ => tokio::time::sleep(Duration::from_secs(3)).await,
            }
        }
    }
}

/// A candle check after a fault: (time to settle, candles compared), or what still differed.
struct Settled {
    what: String,
    outcome: Result<(Duration, usize), String>,
    within: Duration,
}

fn stack_command(script: &PathBuf, args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new(script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`scripts/stack {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // On Ctrl-C or SIGTERM the run is dropped, and with it the service processes it started.
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(args) => outcome,
            () = interrupted => Err("interrupted: the services it started are stopped; Kafka or Cassandra may need `scripts/stack up`".to_string()),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            log(format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let seed = args.seed.unwrap_or_else(|| now_micros() as u64 % 1_000_000);
    let mut rng = StdRng::seed_from_u64(seed);
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .expect("the program's directory")
            .to_path_buf(),
    };
    for service in Service::ALL {
        let path = bin_dir.join(service.binary());
        if !path.exists() {
            return Err(format!(
                "{} is missing: build the services first (`scripts/chaos` does), or pass --bin-dir",
                path.display()
            ));
        }
    }
    let stack_script = args
        .stack_script
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack"));
    log(format!(
        "seed {seed} (repeat with --seed {seed}); {} kill -9 rounds over 4 services, {} provider drops, Kafka restart {}, Cassandra outage {} s",
        args.rounds,
        args.drops,
        if args.kafka_restart { "yes" } else { "no" },
        args.cassandra_outage_s
    ));
    let stack = Stack::require().await;

    // Topics and keyspace of this run only (`scripts/stack prune-tests` removes them later).
    let raw_prefix = format!("{}.", testkit::unique_topic("chaos-raw"));
    let topics = fair::Topics {
        input: testkit::unique_topic("chaos-trades"),
        output: testkit::unique_topic("chaos-fairprice"),
        anomalies: testkit::unique_topic("chaos-anomalies"),
    };
    let gateway_dlq = testkit::unique_topic("chaos-dlq-gateway");
    let normalizer_dlq = testkit::unique_topic("chaos-dlq-normalizer");
    let admin = kafka::admin(&stack.kafka).map_err(|e| e.to_string())?;
    let mut specs = vec![TopicSpec::new(&topics.input, 2)];
    let raw_topics: Vec<String> = DIALECTS
        .iter()
        .map(|(_, name)| format!("{raw_prefix}{name}"))
        .collect();
    specs.extend(raw_topics.iter().map(|t| TopicSpec::new(t, 1)));
    kafka::ensure_topics(&admin, &specs, &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?;
    let registry = Registry::new(&stack.registry).map_err(|e| e.to_string())?;
    registry
        .register(&topics.input, avro::TRADE)
        .await
        .map_err(|e| e.to_string())?;
    let (session, cassandra_config) = fair::migrated_keyspace(&stack, "chaos").await;
    let agg_config = AggregatorConfig {
        input_topic: topics.input.clone(),
        candles_topic: testkit::unique_topic("chaos-candles"),
        late_topic: testkit::unique_topic("chaos-late"),
        operator_id: testkit::unique_name("chaos", "agg", '-'),
        ..AggregatorConfig::default()
    };
    let instruments = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(instruments.path(), instruments_toml()).map_err(|e| e.to_string())?;
    let instruments_path = instruments.path().display().to_string();

    // The providers: a steady live feed on every subscribed symbol.
    let every = Duration::from_millis(args.trade_every_ms);
    let mut servers = Vec::new();
    for (dialect, name) in DIALECTS {
        let server = ProviderServer::start(dialect, u64::MAX / 4, every, None).await;
        server.live_clock();
        // An exchange's numbering: each symbol's trades 1, 2, 3, ... across connections.
        server.number_per_symbol();
        servers.push((name, server));
    }

    let mut env: BTreeMap<Service, Vec<(&'static str, String)>> = BTreeMap::new();
    let gaps_topic = testkit::unique_topic("chaos-gaps");
    let mut gateway = vec![
        ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", raw_prefix.clone()),
        ("TICKFLOW_GATEWAY__DLQ_TOPIC", gateway_dlq.clone()),
        ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "false".into()),
        // Gaps are filled from the providers' REST APIs.
        ("TICKFLOW_GATEWAY__BACKFILL__GAPS_TOPIC", gaps_topic.clone()),
        (
            "TICKFLOW_GATEWAY__BACKFILL__GROUP_ID",
            testkit::unique_name("chaos", "backfill", '-'),
        ),
        (
            "TICKFLOW_GATEWAY__INSTRUMENTS_FILE",
            instruments_path.clone(),
        ),
        ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
    ];
    for (name, server) in &servers {
        let keys: [&'static str; 3] = match *name {
            "binance" => [
                "TICKFLOW_GATEWAY__BINANCE__ENABLED",
                "TICKFLOW_GATEWAY__BINANCE__URL",
                "TICKFLOW_GATEWAY__BINANCE__RECONNECT_MAX_MS",
            ],
            "coinbase" => [
                "TICKFLOW_GATEWAY__COINBASE__ENABLED",
                "TICKFLOW_GATEWAY__COINBASE__URL",
                "TICKFLOW_GATEWAY__COINBASE__RECONNECT_MAX_MS",
            ],
            _ => [
                "TICKFLOW_GATEWAY__KRAKEN__ENABLED",
                "TICKFLOW_GATEWAY__KRAKEN__URL",
                "TICKFLOW_GATEWAY__KRAKEN__RECONNECT_MAX_MS",
            ],
        };
        gateway.push((keys[0], "true".into()));
        gateway.push((keys[1], server.url()));
        gateway.push((keys[2], "500".into()));
        match *name {
            "binance" => gateway.push((
                "TICKFLOW_GATEWAY__BINANCE__REST_URL",
                server.serve_rest().await,
            )),
            "coinbase" => gateway.push((
                "TICKFLOW_GATEWAY__COINBASE__REST_URL",
                server.serve_rest().await,
            )),
            _ => gateway.push((
                "TICKFLOW_GATEWAY__KRAKEN__REST_URL",
                server.serve_rest().await,
            )),
        }
    }
    env.insert(Service::Gateway, gateway);
    env.insert(
        Service::Normalizer,
        vec![
            (
                "TICKFLOW_NORMALIZER__INPUT_TOPICS",
                format!("^{}.*", raw_prefix.replace('.', "\\.")),
            ),
            ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", topics.input.clone()),
            ("TICKFLOW_NORMALIZER__DLQ_TOPIC", normalizer_dlq.clone()),
            ("TICKFLOW_NORMALIZER__GAPS_TOPIC", gaps_topic.clone()),
            (
                "TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC",
                testkit::unique_topic("chaos-instruments"),
            ),
            (
                "TICKFLOW_NORMALIZER__INSTRUMENTS_FILE",
                instruments_path.clone(),
            ),
            (
                "TICKFLOW_NORMALIZER__GROUP_ID",
                testkit::unique_name("chaos", "normalizer", '-'),
            ),
            (
                "TICKFLOW_NORMALIZER__TRANSACTIONAL_ID",
                testkit::unique_name("chaos", "normalizer-tx", '-'),
            ),
        ],
    );
    // The aggregator runs with its default timing: trades that come too late after an outage
    // (its sources went idle, the watermark followed the wall clock) are recomputed from the
    // stored trades, so every candle still equals the batch recomputation.
    env.insert(
        Service::Aggregator,
        agg::aggregator_env(&stack, &cassandra_config.keyspace, &agg_config, &[]),
    );
    env.insert(
        Service::FairPrice,
        fair::service_env(
            &cassandra_config,
            &topics,
            &testkit::unique_name("chaos", "fp", '-'),
            testkit::free_port(),
        ),
    );
    let mut pipeline = Pipeline {
        stack: Stack::require().await,
        bin_dir,
        env,
        running: BTreeMap::new(),
    };
    for service in Service::ALL {
        pipeline.spawn(service);
    }
    let startup = pipeline.all_ready(Duration::from_secs(90)).await?;
    let load_started = Instant::now();
    let load_origin = now_micros();
    log(format!(
        "the four services are ready ({:.1} s); load: 3 providers × {} symbols, one trade per {} ms per connection",
        startup.as_secs_f64(),
        INSTRUMENTS.len(),
        args.trade_every_ms
    ));

    let mut injected: Vec<Injected> = Vec::new();
    let mut windows: Vec<LossWindow> = Vec::new();
    let ready_bound = Duration::from_secs(args.ready_within_s);
    let consuming_bound = Duration::from_secs(args.consuming_within_s);
    let recover_bound = Duration::from_secs(args.recover_within_s);
    let at_s = |i: Instant| i.duration_since(load_started).as_secs_f64();
    let pause = |rng: &mut StdRng, from_ms: u64, to_ms: u64| {
        Duration::from_millis(rng.random_range(from_ms..to_ms))
    };

    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut drops_left = args.drops;
    for round in 0..args.rounds {
        for service in Service::ALL {
            tokio::time::sleep(pause(&mut rng, 2_000, 7_000)).await;
            let killed_at = Instant::now();
            let killed_us = now_micros();
            pipeline.kill_hard(service);
            let down = pause(&mut rng, 200, 3_000);
            tokio::time::sleep(down).await;
            let restarted = Instant::now();
            pipeline.spawn(service);
            let recovered = pipeline.ready(service, ready_bound).await;
            let consuming = match (&recovered, service.consumed_counter()) {
                (Ok(_), Some(_)) => Some((
                    pipeline
                        .consuming(service, restarted, consuming_bound)
                        .await,
                    consuming_bound,
                )),
                _ => None,
            };
            let what = format!("kill -9 {} (round {})", service.binary(), round + 1);
            log(format!(
                "{what} at +{:.1} s: {}{}",
                at_s(killed_at),
                match &recovered {
                    Ok(d) => format!("ready again {:.1} s after its restart", d.as_secs_f64()),
                    Err(e) => e.clone(),
                },
                match &consuming {
                    Some((Ok(d), _)) => format!(", consuming again after {:.1} s", d.as_secs_f64()),
                    Some((Err(e), _)) => format!("; {e}"),
                    None => String::new(),
                }
            ));
            if service == Service::Gateway {
                windows.push(LossWindow {
                    from: killed_us - 2 * S,
                    to: now_micros() + 3 * S,
                    why: "gateway killed".into(),
                });
            }
            injected.push(Injected {
                what,
                at_s: at_s(killed_at),
                down,
                recovered,
                bound: ready_bound,
                consuming,
            });
            if drops_left > 0 && rng.random_bool(0.5) {
                drops_left -= 1;
                drop_connection(
                    &servers,
                    &mut rng,
                    &mut windows,
                    &mut injected,
                    at_s(Instant::now()),
                )
                .await;
            }
        }
    }
    while drops_left > 0 {
        drops_left -= 1;
        tokio::time::sleep(pause(&mut rng, 1_000, 4_000)).await;
        drop_connection(
            &servers,
            &mut rng,
            &mut windows,
            &mut injected,
            at_s(Instant::now()),
        )
        .await;
    }

    // Candles after each long fault: the normalizer away for longer than the allowed lateness,
    // Kafka restarted, Cassandra stopped.
    let check_codec = AvroCodec::new(&registry, &[]);
    let check_store = CandleStore::new(session.clone(), &cassandra_config.keyspace)
        .await
        .map_err(|e| e.to_string())?;
    let check_stack = Stack::require().await;
    let check = CandleCheck {
        stack: &check_stack,
        trades_topic: &topics.input,
        codec: &check_codec,
        store: &check_store,
        agg: &agg_config,
    };
    let settle_within = Duration::from_secs(args.settle_within_s);
    let mut settled: Vec<Settled> = Vec::new();

    if args.normalizer_outage_s > 0 {
        tokio::time::sleep(pause(&mut rng, 2_000, 5_000)).await;
        let killed_at = Instant::now();
        pipeline.kill_hard(Service::Normalizer);
        let down = Duration::from_secs(args.normalizer_outage_s);
        log(format!(
            "normalizer killed for {} s at +{:.1} s (longer than the idle timeout, {} s, plus the allowed lateness, {} s)",
            down.as_secs(),
            at_s(killed_at),
            agg_config.idle_timeout_ms / 1000,
            agg_config.allowed_lateness_ms / 1000
        ));
        tokio::time::sleep(down).await;
        let restarted = Instant::now();
        pipeline.spawn(Service::Normalizer);
        let recovered = pipeline.ready(Service::Normalizer, ready_bound).await;
        let consuming = match &recovered {
            Ok(_) => Some((
                pipeline
                    .consuming(Service::Normalizer, restarted, consuming_bound)
                    .await,
                consuming_bound,
            )),
            Err(_) => None,
        };
        injected.push(Injected {
            what: "normalizer killed past the lateness".into(),
            at_s: at_s(killed_at),
            down,
            recovered,
            bound: ready_bound,
            consuming,
        });
        settled.push(
            check
                .settle("normalizer outage", restarted, settle_within)
                .await,
        );
        if let Some(aggregator) = pipeline.running.get(&Service::Aggregator) {
            let (_, metrics) = aggregator.get("/metrics").await.unwrap_or_default();
            let recomputed: f64 = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("tickflow_aggregator_corrections_total")
                        && l.contains("outcome=\"recomputed\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            log(format!(
                "  the aggregator so far: {:.0} trades beyond the allowed lateness, {recomputed:.0} windows recomputed from the stored trades",
                testkit::metric_total(&metrics, "tickflow_aggregator_late_trades_dropped_total")
                    .abs()
            ));
        }
    }

    if args.kafka_restart {
        tokio::time::sleep(pause(&mut rng, 3_000, 8_000)).await;
        let down_for = pause(&mut rng, 1_000, 5_000);
        let at = at_s(Instant::now());
        injected.push(
            outage(
                &stack_script,
                &mut pipeline,
                "kafka",
                "Kafka",
                down_for,
                recover_bound,
                at,
                "Kafka broker restart".into(),
            )
            .await?,
        );
        settled.push(
            check
                .settle("Kafka restart", Instant::now(), settle_within)
                .await,
        );
    }

    if args.cassandra_outage_s > 0 {
        tokio::time::sleep(pause(&mut rng, 3_000, 8_000)).await;
        let down_for = Duration::from_secs(args.cassandra_outage_s);
        let at = at_s(Instant::now());
        let what = format!("Cassandra stopped for {} s", args.cassandra_outage_s);
        injected.push(
            outage(
                &stack_script,
                &mut pipeline,
                "cassandra",
                "Cassandra",
                down_for,
                recover_bound,
                at,
                what,
            )
            .await?,
        );
        settled.push(
            check
                .settle("Cassandra outage", Instant::now(), settle_within)
                .await,
        );
    }

    // Steady load once more, then stop it and let the pipeline drain.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (_, server) in &servers {
        server.stop_trades();
        server.quiet();
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    log(format!("load stopped after {load_seconds:.0} s; draining"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let codec = AvroCodec::new(&registry, &[]);
    let mut failures: Vec<String> = Vec::new();

    // What the providers sent, and what the gateway received (the raw topics).
    log("reading what the providers sent and what the raw topics hold");
    // Every trade the exchanges printed: those their connections sent, and those printed while
    // no connection carried the symbol (the gateway reconnecting, or down).
    let mut sent: BTreeMap<TradeKey, (Micros, Decimal, Decimal)> = BTreeMap::new();
    let mut sent_live = 0usize;
    for (name, server) in &servers {
        for frame in server.sent() {
            if let Sent::Text(text) = frame {
                for (key, time, price, size) in trades_in_frame(name, &text) {
                    sent_live += 1;
                    sent.insert(key, (time, price, size));
                }
            }
        }
        for text in server.printed() {
            for (key, time, price, size) in trades_in_frame(name, &text) {
                sent.insert(key, (time, price, size));
            }
        }
    }
    // A gap found late is still being filled from the REST API: read until nothing a
    // backfilled provider sent is missing, or for 90 s.
    let backfill_deadline = Instant::now() + Duration::from_secs(90);
    let mut received: BTreeMap<TradeKey, u32>;
    let mut backfilled_frames;
    loop {
        received = BTreeMap::new();
        backfilled_frames = 0;
        for ((_, name), topic) in DIALECTS.iter().zip(&raw_topics) {
            for (_, bytes) in fair::read_partitions_to_end(&pipeline.stack, topic).await {
                let raw = codec.decode_raw(&bytes).await.map_err(|e| e.to_string())?;
                if raw.channel == "backfill" {
                    backfilled_frames += 1;
                }
                for (key, ..) in trades_in_frame(name, &String::from_utf8_lossy(&raw.payload)) {
                    *received.entry(key).or_default() += 1;
                }
            }
        }
        let awaited = sent
            .keys()
            .filter(|k| BACKFILLED.contains(&k.0.as_str()) && !received.contains_key(*k))
            .count();
        if awaited == 0 || Instant::now() > backfill_deadline {
            break;
        }
        log(format!(
            "{awaited} trades of backfilled providers not on the raw topics yet; waiting for the backfill"
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // The gaps the normalizer found, by provider and status.
    let mut gaps: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, bytes) in fair::read_partitions_to_end(&pipeline.stack, &gaps_topic).await {
        let value = codec.decode(&bytes).await.map_err(|e| e.to_string())?;
        let gap = tickflow_shared::gap::GapRecord::from_value(value).map_err(|e| e.to_string())?;
        *gaps.entry((gap.provider, gap.status)).or_default() += 1;
    }
    let mut missed_in_windows: BTreeMap<&str, usize> = BTreeMap::new();
    let mut missed_outside: Vec<String> = Vec::new();
    let mut missed_backfilled: Vec<String> = Vec::new();
    for (key, (time, ..)) in &sent {
        if received.contains_key(key) {
            continue;
        }
        if BACKFILLED.contains(&key.0.as_str()) {
            missed_backfilled.push(format!("{key:?} sent at {time}"));
        } else if let Some(w) = windows.iter().find(|w| w.from <= *time && *time <= w.to) {
            *missed_in_windows.entry(&w.why).or_default() += 1;
        } else {
            missed_outside.push(format!("{key:?} sent at {time}"));
        }
    }
    let raw_repeats: usize = received
        .values()
        .map(|n| (*n as usize).saturating_sub(1))
        .sum();
    let not_sent_on_raw = received.keys().filter(|k| !sent.contains_key(*k)).count();
    if !missed_backfilled.is_empty() {
        failures.push(format!(
            "{} trades of providers with a backfill never reached the raw topics, e.g. {}",
            missed_backfilled.len(),
            missed_backfilled[0]
        ));
    }
    if !missed_outside.is_empty() {
        failures.push(format!(
            "{} trades the providers sent never reached the raw topics, outside any fault window, e.g. {}",
            missed_outside.len(),
            missed_outside[0]
        ));
    }
    if not_sent_on_raw > 0 {
        failures.push(format!(
            "{not_sent_on_raw} trades on the raw topics were never sent"
        ));
    }

    // The Trade topic, once the normalizer has caught up: stable for 5 s.
    log("reading the Trade topic until the normalizer has caught up");
    let mut by_partition: BTreeMap<i32, Vec<Trade>> = BTreeMap::new();
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let mut last_count = usize::MAX;
    loop {
        let records = fair::read_partitions_to_end(&pipeline.stack, &topics.input).await;
        if records.len() == last_count || Instant::now() > drain_deadline {
            by_partition.clear();
            for (partition, bytes) in records {
                let trade = codec
                    .decode_trade(&bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                by_partition.entry(partition).or_default().push(trade);
            }
            break;
        }
        last_count = records.len();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut on_trades: BTreeMap<TradeKey, u32> = BTreeMap::new();
    let mut wrong_values = Vec::new();
    for trade in by_partition.values().flatten() {
        let key = (
            trade.provider.clone(),
            trade.provider_symbol.clone(),
            trade.trade_id.clone(),
        );
        *on_trades.entry(key.clone()).or_default() += 1;
        if let Some((time, price, size)) = sent.get(&key) {
            if trade.price != *price || trade.size != *size || trade.event_time != *time {
                wrong_values.push(format!(
                    "{key:?}: {} {} at {} on md.trades, sent {price} {size} at {time}",
                    trade.price, trade.size, trade.event_time
                ));
            }
        }
    }
    let trades_checked: usize = on_trades.values().map(|n| *n as usize).sum();
    let lost: Vec<&TradeKey> = received
        .keys()
        .filter(|k| !on_trades.contains_key(*k))
        .collect();
    let duplicated = on_trades.values().filter(|n| **n > 1).count();
    let foreign = on_trades
        .keys()
        .filter(|k| !received.contains_key(*k))
        .count();
    if !lost.is_empty() {
        failures.push(format!(
            "LOST: {} trades the gateway received are not on the Trade topic, e.g. {:?}",
            lost.len(),
            lost[0]
        ));
    }
    if duplicated > 0 {
        failures.push(format!(
            "DUPLICATED: {duplicated} trades are on the Trade topic more than once"
        ));
    }
    if foreign > 0 {
        failures.push(format!(
            "{foreign} trades on the Trade topic were never received"
        ));
    }
    if !wrong_values.is_empty() {
        failures.push(format!(
            "{} trades differ from what was sent, e.g. {}",
            wrong_values.len(),
            wrong_values[0]
        ));
    }

    // Candles: the load has stopped, so the aggregator's sources go idle after its idle timeout
    // and the last windows close by the wall clock; corrections still due run meanwhile.
    log("waiting for the aggregator to close the last windows (its idle timeout, 30 s by default)");
    let timing = agg_config.timing();
    let intervals = agg_config.rollup_intervals();
    let mut expected: BTreeMap<(String, String, i64), Candle> = BTreeMap::new();
    let mut expected_rollups: BTreeMap<(String, String, String, i64), Candle> = BTreeMap::new();
    let mut too_late = 0usize;
    for trades in by_partition.values() {
        let (candles, late) = batch_candles(trades, &timing);
        expected.extend(candles);
        too_late += late.len();
        for interval in &intervals {
            expected_rollups.extend(
                batch_rollups(trades, interval.length, &interval.label)
                    .into_iter()
                    .map(|((i, v, start), c)| ((i, v, interval.label.clone(), start), c)),
            );
        }
    }
    let store = CandleStore::new(session.clone(), &cassandra_config.keyspace)
        .await
        .map_err(|e| e.to_string())?;
    let instrument_names: Vec<&str> = INSTRUMENTS.iter().map(|(i, _)| *i).collect();
    let venues: Vec<&str> = DIALECTS.iter().map(|(_, n)| *n).chain(["*"]).collect();
    let days = agg::days_of(&expected);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut mismatches: Vec<String>;
    // Only windows that have ended can be final: a 15-minute or 1-hour roll-up of the last
    // minutes is still open when the run ends.
    let mut compared: (usize, usize);
    loop {
        mismatches = Vec::new();
        let ended_by = now_micros() - 5 * S;
        let expected_closed: BTreeMap<_, _> = expected
            .iter()
            .filter(|(_, c)| c.window_end <= ended_by)
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let expected_rollups_closed: BTreeMap<_, _> = expected_rollups
            .iter()
            .filter(|(_, c)| c.window_end <= ended_by)
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        compared = (expected_closed.len(), expected_rollups_closed.len());
        let mut stored = agg::stored_candles(&store, &instrument_names, &venues, &days)
            .await
            .map_err(|e| e.to_string())?;
        stored.retain(|_, c| c.window_end <= ended_by);
        agg::scenario::compare(&expected_closed, &stored, &mut mismatches);
        let mut stored_rollups =
            agg::stored_rollups(&store, &instrument_names, &venues, &intervals, &days)
                .await
                .map_err(|e| e.to_string())?;
        stored_rollups.retain(|_, c| c.window_end <= ended_by);
        agg::scenario::compare(&expected_rollups_closed, &stored_rollups, &mut mismatches);
        if mismatches.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if !mismatches.is_empty() {
        failures.push(format!(
            "{} of {} candles and roll-ups in Cassandra differ from the batch recomputation, e.g.\n{}",
            mismatches.len(),
            compared.0 + compared.1,
            mismatches.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
        ));
    }

    // Fair prices: everything published, once fair-price has seen the last trades.
    log("checking the fair prices");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let code = pipeline.terminate(Service::FairPrice);
    if code != Some(0) {
        failures.push(format!("fair-price exited {code:?} on SIGTERM"));
    }
    let mut published = Vec::new();
    for (_, bytes) in fair::read_partitions_to_end(&pipeline.stack, &topics.output).await {
        published.push(
            codec
                .decode_fair_price(&bytes)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let fair_check = check_fair_prices(&by_partition, &published, load_origin);
    if !fair_check.mismatches.is_empty() {
        failures.push(format!(
            "{} of {} fair prices differ from every recomputation from the trades before them, e.g.\n{}",
            fair_check.mismatches.len(),
            published.len(),
            fair_check.mismatches.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        ));
    }
    for service in [Service::Gateway, Service::Normalizer, Service::Aggregator] {
        if let Some(process) = pipeline.running.get_mut(&service) {
            if !process.is_running() {
                failures.push(format!(
                    "{} exited before the final SIGTERM; its log ends:\n{}",
                    service.binary(),
                    tail(&process.log(), 40)
                ));
                continue;
            }
        }
        let code = pipeline.terminate(service);
        if code != Some(0) {
            failures.push(format!("{} exited {code:?} on SIGTERM", service.binary()));
        }
    }
    for fault in &injected {
        if let Err(e) = &fault.recovered {
            failures.push(format!("{}: {e}", fault.what));
        }
        if let Some((Err(e), _)) = &fault.consuming {
            failures.push(format!("{}: {e}", fault.what));
        }
    }
    for check in &settled {
        if let Err(e) = &check.outcome {
            failures.push(e.clone());
        }
    }

    // The summary.
    println!();
    println!("chaos summary (seed {seed}, load {load_seconds:.0} s)");
    println!("faults injected: {}", injected.len());
    for fault in &injected {
        println!(
            "  +{:>6.1} s  {:<40} down {:>5.1} s  {}",
            fault.at_s,
            fault.what,
            fault.down.as_secs_f64(),
            match &fault.recovered {
                Ok(d) => format!(
                    "ready after {:>5.1} s (bound {} s)",
                    d.as_secs_f64(),
                    fault.bound.as_secs()
                ),
                Err(_) => format!("NOT ready within {} s", fault.bound.as_secs()),
            } + &match &fault.consuming {
                Some((Ok(d), bound)) => format!(
                    ", consuming after {:>5.1} s (bound {} s)",
                    d.as_secs_f64(),
                    bound.as_secs()
                ),
                Some((Err(_), bound)) => {
                    format!(", NOT consuming within {} s", bound.as_secs())
                }
                None => String::new(),
            }
        );
    }
    for check in &settled {
        println!(
            "  candles after the {}: {}",
            check.what,
            match &check.outcome {
                Ok((d, n)) => format!(
                    "all {n} of the windows ended before it equal the recomputation {:.1} s after recovery (bound {} s)",
                    d.as_secs_f64(),
                    check.within.as_secs()
                ),
                Err(_) => format!("NOT settled within {} s", check.within.as_secs()),
            }
        );
    }
    let consuming: Vec<f64> = injected
        .iter()
        .filter_map(|f| {
            f.consuming
                .as_ref()?
                .0
                .as_ref()
                .ok()
                .map(|d| d.as_secs_f64())
        })
        .collect();
    if !consuming.is_empty() {
        let mut sorted = consuming.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "kill -9 to consuming again (from the restart): median {:.1} s, max {:.1} s",
            testkit::percentile(&sorted, 0.5),
            sorted[sorted.len() - 1]
        );
    }
    let recoveries: Vec<f64> = injected
        .iter()
        .filter_map(|f| f.recovered.as_ref().ok().map(|d| d.as_secs_f64()))
        .collect();
    if !recoveries.is_empty() {
        let mut sorted = recoveries.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "recovery times: median {:.1} s, max {:.1} s",
            testkit::percentile(&sorted, 0.5),
            sorted[sorted.len() - 1]
        );
    }
    println!(
        "trades printed by the providers: {} ({sent_live} sent on a live connection, the others while no connection carried the symbol); received by the gateway (raw topics): {}",
        sent.len(),
        received.len()
    );
    println!(
        "  providers with a backfill ({}; gaps filled from their REST APIs): not received {}; frames backfilled {backfilled_frames}",
        BACKFILLED.join(", "),
        missed_backfilled.len()
    );
    println!(
        "  gap records: {}",
        if gaps.is_empty() {
            "none".to_string()
        } else {
            gaps.iter()
                .map(|((provider, status), n)| format!("{provider} {status} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "  providers without a backfill: not received (a live feed has no replay), sent while: {}; outside those windows: {}",
        if missed_in_windows.is_empty() {
            "none".to_string()
        } else {
            missed_in_windows
                .iter()
                .map(|(why, n)| format!("{why} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        missed_outside.len()
    );
    println!("  raw frames repeated by the gateway: {raw_repeats} (the normalizer drops repeats)");
    println!(
        "Trade topic (read_committed): {trades_checked} trades checked: lost {}, duplicated {duplicated}, never received {foreign}, values differing {}",
        lost.len(),
        wrong_values.len()
    );
    println!(
        "candles in Cassandra: {} 1-minute and {} roll-ups compared with the batch recomputation ({} too-late trades), {} differ; {} still open at the end, not compared",
        compared.0,
        compared.1,
        too_late,
        mismatches.len(),
        expected.len() + expected_rollups.len() - compared.0 - compared.1
    );
    println!(
        "fair prices: {} published; {} equal the recomputation from every trade up to their instant, {} the recomputation from the trades that had arrived before them (later arrivals excluded); {} differ",
        published.len(),
        fair_check.full,
        fair_check.arrived,
        fair_check.mismatches.len()
    );
    let ok = failures.is_empty();
    if ok {
        println!("result: PASS");
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
            .await;
    } else {
        println!("result: FAIL");
        for failure in &failures {
            println!("  - {failure}");
        }
        println!(
            "(keyspace {} and topics it.chaos-* kept for inspection)",
            cassandra_config.keyspace
        );
    }
    Ok(ok)
}

async fn drop_connection(
    servers: &[(&str, ProviderServer)],
    rng: &mut StdRng,
    windows: &mut Vec<LossWindow>,
    injected: &mut Vec<Injected>,
    at_s: f64,
) {
    let (name, server) = &servers[rng.random_range(0..servers.len())];
    let from = now_micros();
    let before = server.connections();
    server.fault(Fault::Kill);
    let started = Instant::now();
    let back = server
        .wait(Duration::from_secs(30), "the gateway reconnects", |s| {
            s.connections() > before && !s.subscribed_now().is_empty()
        })
        .await;
    let recovered = back.map(|_| started.elapsed());
    log(format!(
        "dropped the {name} connection at +{at_s:.1} s: {}",
        match &recovered {
            Ok(d) => format!("reconnected and subscribed after {:.1} s", d.as_secs_f64()),
            Err(e) => e.clone(),
        }
    ));
    windows.push(LossWindow {
        from: from - S,
        to: now_micros() + S,
        why: format!("{name} connection dropped"),
    });
    injected.push(Injected {
        what: format!("{name} connection dropped"),
        at_s,
        down: recovered.as_ref().copied().unwrap_or_default(),
        recovered,
        bound: Duration::from_secs(30),
        consuming: None,
    });
}

struct FairCheck {
    full: usize,
    arrived: usize,
    mismatches: Vec<String>,
}

/// Each published fair price as of `T` must equal the recomputation (docs/architecture.md, "How the fair
/// price is computed") from its instrument's trades that had arrived when it was computed: a
/// prefix, in partition order, of the instrument's trades, restricted to event time ≤ T (a
/// trade that arrives out of order after the computation cannot be in it). Records of one
/// instrument are published in the order they are computed, so the prefix only grows from one
/// record to the next, except after a restart, when the replay publishes earlier instants again.
fn check_fair_prices(
    by_partition: &BTreeMap<i32, Vec<Trade>>,
    published: &[FairPrice],
    origin: Micros,
) -> FairCheck {
    // Beyond the lookback and staleness (5 s each), a trade only says its source is stale.
    const HISTORY: Micros = 10 * S;
    // How far the search for the prefix goes from the previous record's, each way.
    const REACH: usize = 800;
    let mut by_instrument: BTreeMap<&str, Vec<&Trade>> = BTreeMap::new();
    for trade in by_partition.values().flatten() {
        by_instrument
            .entry(&trade.instrument)
            .or_default()
            .push(trade);
    }
    let mut check = FairCheck {
        full: 0,
        arrived: 0,
        mismatches: Vec::new(),
    };
    // Per instrument: how many of its trades (in partition order) the previous record had seen.
    let mut previous: BTreeMap<&str, usize> = BTreeMap::new();
    for fp in published {
        let at = fp.computed_at;
        let sequence = by_instrument
            .get(fp.instrument.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The trades a computation as of `at` looks at, with their positions in the sequence:
        // the recent ones, and of each source the first older one. An older trade only makes
        // its source known, and STALE unless a recent trade is in the prefix too, so which one
        // does not matter; the first makes the source known in every prefix that knows it. (A
        // backlog caught up provider by provider can leave a source far behind.)
        let mut known: std::collections::BTreeSet<(&str, &str)> = Default::default();
        let (positions, relevant): (Vec<usize>, Vec<Trade>) = sequence
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                if t.event_time > at {
                    return false;
                }
                if t.event_time > at - HISTORY {
                    return true;
                }
                known.insert((t.provider.as_str(), t.exchange.as_str()))
            })
            .map(|(i, t)| (i, (*t).clone()))
            .unzip();
        let observed = fair::observed(fp);
        let seen_before = previous.get(fp.instrument.as_str()).copied().unwrap_or(0);
        let start = positions.partition_point(|&i| i < seen_before);
        // Every trade up to the instant first (the common case), then the nearest prefixes.
        let every = std::iter::once(relevant.len());
        let upward = start..relevant.len().min(start + REACH);
        let downward = (start.saturating_sub(REACH)..start).rev();
        let found = every
            .chain(upward)
            .chain(downward)
            .find(|&j| fair::recompute(&relevant[..j], at) == observed);
        match found {
            Some(j) => {
                if j == relevant.len() {
                    check.full += 1;
                } else {
                    check.arrived += 1;
                }
                // The computation had seen at least the sequence up to its j-th relevant trade;
                // below the previous record's prefix only when a restart replayed.
                let seen = if j == 0 { 0 } else { positions[j - 1] + 1 };
                let seen = if j >= start {
                    seen.max(seen_before)
                } else {
                    seen
                };
                previous.insert(&fp.instrument, seen);
            }
            None => check.mismatches.push(format!(
                "{} as of {at} (+{:.1} s): published {:?}\nrecomputed from every trade: {:?}",
                fp.instrument,
                (at - origin) as f64 / S as f64,
                observed,
                fair::recompute(&relevant, at)
            )),
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trades_are_read_from_each_providers_frames() {
        let binance = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000001,"s":"BTCUSDT","t":7,"p":"100.07","q":"0.01000000","T":1700000000001,"m":true,"M":true}}"#;
        let got = trades_in_frame("binance", binance);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].0,
            (
                "binance".to_string(),
                "BTCUSDT".to_string(),
                "7".to_string()
            )
        );
        // A backfilled frame: the event without the combined stream's envelope.
        let backfilled = r#"{"e":"trade","E":1700000000001,"s":"BTCUSDT","t":7,"p":"100.07","q":"0.01000000","T":1700000000001,"m":true,"M":true}"#;
        assert_eq!(trades_in_frame("binance", backfilled), got);
        assert_eq!(got[0].1, 1_700_000_000_001_000);
        assert_eq!(got[0].2, "100.07".parse::<Decimal>().unwrap());
        let kraken = r#"{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":101.5,"qty":0.5,"ord_type":"limit","trade_id":9,"timestamp":"2023-11-14T22:13:20.000123Z"}]}"#;
        let got = trades_in_frame("kraken", kraken);
        assert_eq!(got[0].1, 1_700_000_000_000_123);
        assert_eq!(got[0].3, "0.5".parse::<Decimal>().unwrap());
        assert!(trades_in_frame("coinbase", r#"{"type":"heartbeat"}"#).is_empty());
        assert!(trades_in_frame("binance", "}{ garbage").is_empty());
    }
}
