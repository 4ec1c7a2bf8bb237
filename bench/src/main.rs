//! tickflow-bench — the benchmark against Apache Flink and the hardware ceiling (bench/README.md).
//!
//! One seeded workload is put on a fresh topic once; then, one after the other on that same
//! topic:
//! - **ceiling**: a bare rdkafka consumer that reads every record to the end and discards it;
//! - **tickflow**: the trade-aggregator binary (release build) computing 1-minute candles into
//!   Cassandra and Kafka;
//! - **Flink**: a Flink SQL job (`bench/flink/run`) computing the same candles per
//!   (instrument, exchange) into a CSV file;
//! - **Spark**: a Spark Structured Streaming job (`bench/spark/run`) doing the same.
//!
//! Each is measured as events per CPU-second of its own processes (from /proc: Kafka and
//! Cassandra are not counted), peak RSS and wall time. Flink's and Spark's candles are then
//! compared with ours row by row.
//!
//! Then the normalizer on a raw topic of the same trades as simulator frames, beside a bare
//! exactly-once consume-and-produce pipe (`normalizer.rs`), and the four services live as one
//! pipeline on the simulated feed for the latencies (`live.rs`). `bench/run` builds and runs it.

mod live;
mod normalizer;
mod profile;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rust_decimal::Decimal;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::domain::Candle;
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

#[derive(Parser, Debug)]
#[command(
    name = "tickflow-bench",
    about = "Benchmark: tickflow's trade-aggregator against a Flink SQL job and a Spark \
             Structured Streaming job computing the same 1-minute candles, and against a bare Kafka consumer (the ceiling), all on one \
             pre-filled, seeded topic; then the normalizer beside an exactly-once \
             consume-and-produce pipe; then the four services live on the simulated feed for \
             latency percentiles. Prints events per CPU-second, peak RSS and wall time, and \
             compares the candles row by row. Needs `scripts/stack up`; run it through \
             `bench/run`, which builds tickflow in release mode and installs Flink and Spark \
             first.",
    after_help = "Exit status: 0 when every system read everything, the candles match, the \
                  normalizer made one trade per frame and every latency series has samples; \
                  1 otherwise."
)]
struct Args {
    /// Trades in the workload.
    #[arg(long, default_value_t = 2_000_000)]
    trades: usize,
    /// Distinct instruments (each trade on one of 3 venues).
    #[arg(long, default_value_t = 1_000)]
    instruments: u64,
    /// Event-time spacing of consecutive trades in µs (trades are up to 1 s out of order).
    #[arg(long, default_value_t = 600)]
    spacing_us: i64,
    /// Skip the Flink run (the ceiling and tickflow only).
    #[arg(long)]
    no_flink: bool,
    /// Skip the Spark Structured Streaming run.
    #[arg(long)]
    no_spark: bool,
    /// Spark's local parallelism (`local[N]`).
    #[arg(long, default_value_t = 1)]
    spark_parallelism: u32,
    /// Flink parallelism (tickflow runs one instance on the topic's one partition).
    #[arg(long, default_value_t = 1)]
    flink_parallelism: u32,
    /// Flink's checkpoint interval; the aggregator checkpoints on its own default.
    #[arg(long, default_value_t = 10_000)]
    flink_checkpoint_ms: u64,
    /// Directory of the trade-aggregator binary (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// A TOML file of extra settings (`[aggregator]` ...) for the aggregator's full run.
    #[arg(long, value_name = "PATH")]
    aggregator_config: Option<PathBuf>,
    /// Skip the aggregator's second run with Flink's work only.
    #[arg(long)]
    no_lean: bool,
    /// Frames for the normalizer and the pipe ceiling (the workload's first trades as simulator
    /// frames); 0 skips that part.
    #[arg(long, default_value_t = 2_000_000)]
    normalizer_frames: usize,
    /// Seconds the live pipeline is measured, after a 15 s warm-up; 0 skips the live run.
    #[arg(long, default_value_t = 120)]
    live_seconds: u64,
    /// Frames per second of the simulated feed in the live run.
    #[arg(long, default_value_t = 5_000)]
    live_rate: u32,
    /// Instruments of the simulated feed in the live run (each on 3 venues).
    #[arg(long, default_value_t = 50)]
    live_instruments: u64,
    /// Sample each tickflow service with `perf record` while it is measured, and write its top
    /// functions by self time to DIR/<run>.txt (needs `perf`; the samples cost a little CPU).
    #[arg(long, value_name = "DIR")]
    perf: Option<PathBuf>,
    /// With `--perf`: record call stacks too (DWARF unwinding, more CPU while sampled) and write
    /// each function's time with everything it calls to DIR/<run>.callers.txt.
    #[arg(long, requires = "perf")]
    perf_callers: bool,
    /// An extra setting for the tickflow services run, as its environment variable (repeatable),
    /// e.g. `--service-env TICKFLOW_KAFKA__LIBRDKAFKA__QUEUED_MIN_MESSAGES=100000` to measure
    /// another client setting beside the defaults. A service's own section
    /// (`TICKFLOW_AGGREGATOR__...`, `_NORMALIZER__`, `_FAIR_PRICE__`, `_GATEWAY__`) goes to that
    /// service only; the others to every service.
    #[arg(long = "service-env", value_name = "TICKFLOW_KEY=VALUE")]
    service_env: Vec<String>,
}

/// The `--service-env` settings as (variable, value); an error names the one not of the form
/// `TICKFLOW_KEY=VALUE`.
fn service_env(settings: &[String]) -> Result<Vec<(String, String)>, String> {
    settings
        .iter()
        .map(|setting| match setting.split_once('=') {
            Some((key, value)) if key.starts_with("TICKFLOW_") && key.len() > "TICKFLOW_".len() => {
                Ok((key.to_string(), value.to_string()))
            }
            _ => Err(format!(
                "--service-env {setting:?}: expected TICKFLOW_KEY=VALUE (a service setting as its environment variable)"
            )),
        })
        .collect()
}

/// The config sections of one service each, as they start an environment variable
/// (`TICKFLOW_AGGREGATOR__...`).
const SERVICE_SECTIONS: [&str; 4] = ["GATEWAY", "NORMALIZER", "AGGREGATOR", "FAIR_PRICE"];

/// The environment of the service whose own config section is `section` (one of
/// [`SERVICE_SECTIONS`]), with the `--service-env` settings after it (so they win). A setting of
/// another service's own section is left out (a service refuses a section it does not have);
/// the shared ones (`TICKFLOW_KAFKA__...`, `TICKFLOW_SERVICE__...`) go to every service.
pub fn with_extra<'a>(
    env: &[(&'a str, String)],
    extra: &'a [(String, String)],
    section: &str,
) -> Vec<(&'a str, String)> {
    let mut all = env.to_vec();
    all.extend(
        extra
            .iter()
            .filter(|(key, _)| {
                let theirs = key
                    .strip_prefix("TICKFLOW_")
                    .and_then(|rest| rest.split_once("__"))
                    .map(|(s, _)| s);
                !theirs.is_some_and(|s| SERVICE_SECTIONS.contains(&s) && s != section)
            })
            .map(|(key, value)| (key.as_str(), value.clone())),
    );
    all
}

/// The aggregator doing what the Flink job does: final 1-minute candles only. No trade rows, no
/// roll-ups, no early (in-progress) firings; candles still go to Cassandra and Kafka.
const LEAN: &str =
    "[aggregator]\nwrite_trades = false\nrollups = []\nearly_firing_interval_ms = 0\n";

/// What one system cost to read the whole topic.
struct Measured {
    system: String,
    events: usize,
    cpu_seconds: f64,
    peak_rss: u64,
    wall_seconds: f64,
    note: String,
}

impl Measured {
    /// Events per CPU-second.
    fn rate(&self) -> f64 {
        self.events as f64 / self.cpu_seconds
    }
}

/// A file name for a system's profile: `tickflow, Flink's work only` → `tickflow-flink-s-work-only`.
fn profile_name(system: &str) -> String {
    let mut name = String::new();
    for c in system.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    name.trim_matches('-').to_string()
}

fn log(text: impl AsRef<str>) {
    println!("[bench] {}", text.as_ref());
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.perf {
        if let Err(e) = std::fs::create_dir_all(dir) {
            log(format!("error: cannot create {}: {e}", dir.display()));
            return ExitCode::from(1);
        }
        let _ = profile::DIR.set(dir.clone());
        let _ = profile::CALLERS.set(args.perf_callers);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            log(format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let extra = service_env(&args.service_env)?;
    let stack = Stack::require().await;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .expect("the program's directory")
            .to_path_buf(),
    };
    for binary in [
        "ingest-gateway",
        "normalizer",
        "trade-aggregator",
        "fair-price",
    ] {
        if !bin_dir.join(binary).exists() {
            return Err(format!(
                "{} is missing: `bench/run` builds it",
                bin_dir.join(binary).display()
            ));
        }
    }
    let aggregator = bin_dir.join("trade-aggregator");

    // The workload, once, on one partition so that every system reads the same order.
    let topic = testkit::unique_topic("bench-trades");
    one_partition_topic(&stack, &topic, Some(avro::TRADE)).await?;
    log(format!(
        "pre-filling {topic} with {} seeded trades over {} instruments × 3 venues",
        args.trades, args.instruments
    ));
    let filling = Instant::now();
    let trades = testkit::synthetic_trades(args.trades, args.instruments, args.spacing_us);
    let workload = Workload {
        topic: topic.clone(),
        trades: args.trades,
        windows: trades
            .iter()
            .map(|t| {
                let start = t.event_time - t.event_time.rem_euclid(WINDOW_US);
                (t.instrument.clone(), t.exchange.clone(), start)
            })
            .collect(),
    };
    testkit::produce_trades(&stack, &topic, trades.into_iter().map(|t| (None, t)))
        .await
        .map_err(|e| e.to_string())?;
    log(format!(
        "pre-filled in {:.1} s",
        filling.elapsed().as_secs_f64()
    ));

    let mut results = Vec::new();
    results.push(ceiling(&stack, &topic, args.trades)?);
    log(format!(
        "ceiling: {:.0} records per CPU-second",
        results[0].events as f64 / results[0].cpu_seconds
    ));
    let (ours, candles) = tickflow(
        &stack,
        &aggregator,
        &workload,
        "tickflow trade-aggregator",
        "defaults: per venue + consolidated candles, early firings, 3 roll-ups, trade rows; Cassandra + Kafka; checkpoints",
        args.aggregator_config.as_deref(),
        &extra,
    )
    .await?;
    log(format!(
        "tickflow: {:.0} trades per CPU-second, {} candles",
        ours.events as f64 / ours.cpu_seconds,
        candles.len()
    ));
    results.push(ours);
    let mut lean_candles = None;
    if !args.no_lean {
        let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        std::fs::write(file.path(), LEAN).map_err(|e| e.to_string())?;
        let (lean, candles) = tickflow(
            &stack,
            &aggregator,
            &workload,
            "tickflow, Flink's work only",
            "final per venue + consolidated candles only (no early firings, roll-ups, trade rows); Cassandra + Kafka; checkpoints",
            Some(file.path()),
            &extra,
        )
        .await?;
        log(format!(
            "tickflow, Flink's work only: {:.0} trades per CPU-second",
            lean.events as f64 / lean.cpu_seconds
        ));
        results.push(lean);
        lean_candles = Some(candles);
    }
    let mut ok = true;
    let mut engines = Vec::new();
    if !args.no_flink {
        engines.push(Engine::Flink);
    }
    if !args.no_spark {
        engines.push(Engine::Spark);
    }
    let mut comparison: Vec<String> = Vec::new();
    for which in engines {
        let (measured, rows) = engine(which, &topic, &args)?;
        let name = which.name();
        let (same, differing, only_ours, only_theirs) = compare(&candles, &rows);
        comparison.push(format!(
            "{name}'s candles compared row by row with tickflow's: {same} equal, {differing} differ, {only_ours} only in tickflow, {only_theirs} only in {name}"
        ));
        ok &= differing == 0 && only_ours == 0 && only_theirs == 0;
        if let Some(lean) = &lean_candles {
            let (same, differing, only_lean, only_theirs) = compare(lean, &rows);
            comparison.push(format!(
                "  and with the Flink's-work-only run's: {same} equal, {differing} differ, {only_lean} only in tickflow, {only_theirs} only in {name}"
            ));
            ok &= differing == 0 && only_lean == 0 && only_theirs == 0;
        }
        results.push(measured);
    }
    if comparison.is_empty() {
        comparison.push("Flink and Spark not run (--no-flink, --no-spark)".into());
    }
    ok &= results.iter().all(|r| r.events == args.trades);

    // The normalizer beside the exactly-once pipe, on the workload's first trades as frames.
    let mut normalizing = Vec::new();
    if args.normalizer_frames > 0 {
        let frames =
            testkit::synthetic_trades(args.normalizer_frames, args.instruments, args.spacing_us);
        log(format!(
            "pre-filling a raw topic with {} simulator frames",
            frames.len()
        ));
        let raw = normalizer::prefill(&stack, &frames).await?;
        drop(frames);
        normalizing.push(
            normalizer::normalizer(
                &stack,
                &bin_dir.join("normalizer"),
                &raw,
                args.normalizer_frames,
                args.instruments,
                &extra,
            )
            .await?,
        );
        log(format!(
            "normalizer: {:.0} frames per CPU-second",
            normalizing[0].rate()
        ));
        normalizing.push(normalizer::pipe(&stack, &raw, args.normalizer_frames).await?);
        log(format!(
            "pipe: {:.0} records per CPU-second",
            normalizing[1].rate()
        ));
        ok &= normalizing
            .iter()
            .all(|r| r.events == args.normalizer_frames);
    }

    // The four services live, for the latencies.
    let live = if args.live_seconds > 0 {
        Some(
            live::run(
                &stack,
                &bin_dir,
                args.live_rate,
                args.live_seconds,
                args.live_instruments,
                &extra,
            )
            .await?,
        )
    } else {
        None
    };

    println!();
    println!(
        "trade-aggregator: {} trades, {} instruments, 1 partition, on this machine ({} cores)",
        args.trades,
        args.instruments,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    table(&results, 1, "ratio to ours");
    println!("{}", comparison.join("\n"));
    let rate_of = |name: &str| {
        results
            .iter()
            .find(|r| r.system.starts_with(name))
            .map(Measured::rate)
    };
    if let Some(lean) = rate_of("tickflow, Flink's work only") {
        for name in ["Apache Flink", "Apache Spark"] {
            if let Some(theirs) = rate_of(name) {
                println!(
                    "same work (final 1-minute candles): tickflow {lean:.0} vs {name} {theirs:.0} trades per CPU-second, {:.1}× (each count includes its system's start-up)",
                    lean / theirs
                );
            }
        }
    }
    if !normalizing.is_empty() {
        println!();
        println!(
            "normalizer: {} simulator frames, 1 partition, transactions of {}",
            args.normalizer_frames,
            normalizer::MAX_BATCH
        );
        table(&normalizing, 0, "ratio");
    }
    if let Some(live) = &live {
        println!();
        println!(
            "live pipeline: simulated feed at {} frames/s asked, {:.0} trades/s reached, {} instruments × 3 venues, {} s after a {} s warm-up",
            args.live_rate,
            live.rate,
            args.live_instruments,
            args.live_seconds,
            live::WARM_UP.as_secs()
        );
        let mut rows: Vec<&Measured> = live.services.iter().collect();
        rows.push(&live.pipeline);
        println!(
            "{:<30} {:>14} {:>14} {:>10}  note",
            "service", "events/CPU-s", "CPU-s/million", "peak RSS"
        );
        for r in rows {
            println!(
                "{:<30} {:>14.0} {:>14.1} {:>6.0} MiB  {} {}",
                r.system,
                r.rate(),
                r.cpu_seconds / r.events.max(1) as f64 * 1e6,
                r.peak_rss as f64 / (1024.0 * 1024.0),
                r.events,
                r.note
            );
        }
        println!(
            "{:<52} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "latency (ms)", "p50", "p99", "p99.9", "max", "samples"
        );
        for series in &live.latencies {
            let mut sorted = series.samples.clone();
            sorted.sort_by(f64::total_cmp);
            let pct = |p: f64| testkit::percentile(&sorted, p);
            println!(
                "{:<52} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8}",
                series.stage,
                pct(0.5),
                pct(0.99),
                pct(0.999),
                pct(1.0),
                sorted.len()
            );
            ok &= !sorted.is_empty();
        }
        println!("{}", live.transactions);
        println!("{}", live.gateway_acks);
    }
    println!(
        "reproduce: bench/run -- --trades {} --instruments {} --spacing-us {} --flink-parallelism {} --flink-checkpoint-ms {} --normalizer-frames {} --live-seconds {} --live-rate {} --live-instruments {}{}",
        args.trades,
        args.instruments,
        args.spacing_us,
        args.flink_parallelism,
        args.flink_checkpoint_ms,
        args.normalizer_frames,
        args.live_seconds,
        args.live_rate,
        args.live_instruments,
        reproduce_rest(&args),
    );
    println!("result: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// The reproduce line's options after the sizes: the runs left out, the binaries and settings
/// given, as they were given.
fn reproduce_rest(args: &Args) -> String {
    let mut rest = String::new();
    for (set, flag) in [
        (args.no_flink, "--no-flink"),
        (args.no_spark, "--no-spark"),
        (args.no_lean, "--no-lean"),
        (args.perf_callers, "--perf-callers"),
    ] {
        if set {
            rest += &format!(" {flag}");
        }
    }
    if args.spark_parallelism != 1 {
        rest += &format!(" --spark-parallelism {}", args.spark_parallelism);
    }
    for (path, flag) in [
        (&args.bin_dir, "--bin-dir"),
        (&args.aggregator_config, "--aggregator-config"),
        (&args.perf, "--perf"),
    ] {
        if let Some(path) = path {
            rest += &format!(" {flag} {}", path.display());
        }
    }
    for setting in &args.service_env {
        rest += &format!(" --service-env {setting}");
    }
    rest
}

/// One table of measured systems, each with its ratio to `rows[reference]`.
fn table(rows: &[Measured], reference: usize, ratio: &str) {
    println!(
        "{:<36} {:>14} {:>14} {:>10} {:>8}  note",
        "system", "events/CPU-s", ratio, "peak RSS", "wall s"
    );
    let base = rows[reference].rate();
    for r in rows {
        println!(
            "{:<36} {:>14.0} {:>13.2}× {:>6.0} MiB {:>8.1}  {}",
            r.system,
            r.rate(),
            r.rate() / base,
            r.peak_rss as f64 / (1024.0 * 1024.0),
            r.wall_seconds,
            r.note
        );
    }
}

/// Creates `topic` with one partition (one order for every reader), and registers `schema` for
/// its values if given.
async fn one_partition_topic(
    stack: &Stack,
    topic: &str,
    schema: Option<avro::SchemaDef>,
) -> Result<(), String> {
    let admin = kafka::admin(&stack.kafka).map_err(|e| e.to_string())?;
    kafka::ensure_topics(&admin, &[TopicSpec::new(topic, 1)], &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(schema) = schema {
        Registry::new(&stack.registry)
            .map_err(|e| e.to_string())?
            .register(topic, schema)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Waits until the service's counter `metric` reaches `expected` (at most 30 min, and only while
/// the process runs); its last `/metrics` text.
async fn until_counted(
    service: &mut ServiceProcess,
    metric: &str,
    expected: usize,
    who: &str,
) -> Result<String, String> {
    until_counted_watching(service, metric, expected, who, |_| {}).await
}

/// [`until_counted`], showing every /metrics page read to `watch`.
async fn until_counted_watching(
    service: &mut ServiceProcess,
    metric: &str,
    expected: usize,
    who: &str,
    watch: impl Fn(&str),
) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let (_, metrics) = service.get("/metrics").await.unwrap_or_default();
        watch(&metrics);
        if testkit::metric_total(&metrics, metric) >= expected as f64 {
            return Ok(metrics);
        }
        if !service.is_running() {
            return Err(format!("{who} exited before the end:\n{}", service.log()));
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!(
                "{who} did not finish in 30 min:\n{}",
                service.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU seconds (user + system) this process has used so far.
fn own_cpu_seconds() -> f64 {
    testkit::process_usage(std::process::id()).0
}

/// A bare consumer: every record fetched and dropped, nothing decoded.
fn ceiling(stack: &Stack, topic: &str, expected: usize) -> Result<Measured, String> {
    let consumer: BaseConsumer = kafka::consumer_config(
        &stack.kafka,
        "bench-ceiling",
        &testkit::unique_name("bench", "ceiling", '-'),
    )
    .set("enable.partition.eof", "true")
    .create()
    .map_err(|e| e.to_string())?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let mut events = 0usize;
    let mut bytes = 0usize;
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                events += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(format!("ceiling consumer: {e}")),
            None => {
                return Err(format!(
                    "ceiling consumer: nothing for 10 s after {events} records"
                ))
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu_before;
    let (_, peak_rss) = testkit::process_usage(std::process::id());
    if events != expected {
        log(format!(
            "ceiling read {events} records, expected {expected}"
        ));
    }
    Ok(Measured {
        system: "ceiling: bare rdkafka consumer".into(),
        events,
        cpu_seconds: cpu,
        peak_rss,
        wall_seconds: wall,
        note: format!(
            "reads and drops {:.0} MiB, decodes nothing (RSS of the bench process)",
            bytes as f64 / 1048576.0
        ),
    })
}

/// A candle's length, in µs.
const WINDOW_US: i64 = 60_000_000;

/// The pre-filled topic: its name, its trade count, and every (instrument, venue, window start)
/// that has a trade (the candles to wait for).
struct Workload {
    topic: String,
    trades: usize,
    windows: BTreeSet<(String, String, i64)>,
}

/// The trade-aggregator on the topic until every trade is counted and every window in
/// `windows` has a final candle; its final per-venue candles by (instrument, venue, window
/// start).
async fn tickflow(
    stack: &Stack,
    binary: &std::path::Path,
    workload: &Workload,
    system: &str,
    note: &str,
    config_file: Option<&std::path::Path>,
    extra: &[(String, String)],
) -> Result<(Measured, BTreeMap<(String, String, i64), Candle>), String> {
    let mut cassandra_config = stack.cassandra.clone();
    cassandra_config.keyspace = testkit::unique_keyspace("bench");
    let session = cassandra::connect(&cassandra_config)
        .await
        .map_err(|e| e.to_string())?;
    cassandra::migrate(&session, &cassandra_config)
        .await
        .map_err(|e| e.to_string())?;
    let candles_topic = testkit::unique_topic("bench-candles");
    let env = vec![
        (
            "TICKFLOW_CASSANDRA__CONTACT_POINTS",
            stack.cassandra.contact_points.join(","),
        ),
        (
            "TICKFLOW_CASSANDRA__KEYSPACE",
            cassandra_config.keyspace.clone(),
        ),
        ("TICKFLOW_AGGREGATOR__INPUT_TOPIC", workload.topic.clone()),
        ("TICKFLOW_AGGREGATOR__CANDLES_TOPIC", candles_topic.clone()),
        (
            "TICKFLOW_AGGREGATOR__LATE_TOPIC",
            testkit::unique_topic("bench-late"),
        ),
        (
            "TICKFLOW_AGGREGATOR__OPERATOR_ID",
            testkit::unique_name("bench", "agg", '-'),
        ),
        // The last windows close once the partition is idle this long.
        ("TICKFLOW_AGGREGATOR__IDLE_TIMEOUT_MS", "1000".into()),
        ("TICKFLOW_SERVICE__LOG_LEVEL", "warn".into()),
    ];
    let mut env = env;
    if let Some(path) = config_file {
        env.push(("TICKFLOW_CONFIG", path.display().to_string()));
    }
    // Measured from the process's start, start-up included, as Flink's and Spark's are: a
    // service that catches up before it answers /readyz does that work in its count.
    let started = Instant::now();
    let mut service = ServiceProcess::spawn(
        &binary.display().to_string(),
        stack,
        &with_extra(&env, extra, "AGGREGATOR"),
    );
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    // Sampling starts once the service is up: perf attached right after the spawn recorded
    // nothing in some runs. The start-up is counted in the CPU figure, not profiled.
    let profile = profile::start(&profile_name(system), service.pid());
    let (_, ready_metrics) = service.get("/metrics").await.unwrap_or_default();
    let by_ready = testkit::metric_total(&ready_metrics, "tickflow_aggregator_trades_total") as u64;
    // The checkpoint's size, sampled at each poll, for the note: the largest one is the
    // largest buffer a checkpoint needs.
    let largest_checkpoint = std::cell::Cell::new(0f64);
    until_counted_watching(
        &mut service,
        "tickflow_aggregator_trades_total",
        workload.trades,
        "the aggregator",
        |metrics| {
            let size = testkit::metric_total(metrics, "tickflow_aggregator_checkpoint_size_bytes");
            largest_checkpoint.set(largest_checkpoint.get().max(size));
        },
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, peak_rss) = testkit::process_usage(service.pid());
    if let Some(profile) = profile {
        profile.finish();
    }

    // Its output, from the candle topic: the last record of each window, which must be final.
    let registry = Registry::new(&stack.registry).map_err(|e| e.to_string())?;
    let codec = AvroCodec::new(&registry, &[]);
    let consumer: BaseConsumer = kafka::consumer_config(
        &stack.kafka,
        "bench",
        &testkit::unique_name("bench", "candles", '-'),
    )
    .create()
    .map_err(|e| e.to_string())?;
    consumer
        .subscribe(&[&candles_topic])
        .map_err(|e| e.to_string())?;
    let mut candles: BTreeMap<(String, String, i64), Candle> = BTreeMap::new();
    let mut quiet_since = Instant::now();
    // Until every window with a trade has a candle, all of them final, and nothing new for 5 s
    // (a correction would follow its window's first final value within that). The last windows
    // close on the idle timeout, after the trade rows have landed: quiet alone is no sign of it.
    while quiet_since.elapsed() < Duration::from_secs(5)
        || candles.values().any(|c| !c.is_final)
        || !workload.windows.iter().all(|k| candles.contains_key(k))
    {
        if started.elapsed() > Duration::from_secs(1800) {
            return Err("the candles did not all become final".into());
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|e| e.to_string())?;
        let candle = codec
            .decode_candle(message.payload().unwrap_or_default())
            .await
            .map_err(|e| e.to_string())?;
        quiet_since = Instant::now();
        if candle.venue != "*" {
            candles.insert(
                (
                    candle.instrument.clone(),
                    candle.venue.clone(),
                    candle.window_start,
                ),
                candle,
            );
        }
    }
    service.terminate(Duration::from_secs(30));
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
        .await;
    Ok((
        Measured {
            system: system.into(),
            events: workload.trades,
            cpu_seconds: cpu_after,
            peak_rss,
            wall_seconds: wall,
            note: format!(
                "{note}; largest checkpoint seen {:.1} MiB; from its start: {cpu_after:.1} CPU-s and {by_ready} trades by /readyz",
                largest_checkpoint.get() / (1024.0 * 1024.0)
            ),
        },
        candles,
    ))
}

/// A JVM engine run by its own script, `bench/<dir>/run`, which writes the candles to a CSV and
/// prints a JSON summary line.
#[derive(Clone, Copy)]
enum Engine {
    Flink,
    Spark,
}

impl Engine {
    fn dir(self) -> &'static str {
        match self {
            Engine::Flink => "flink",
            Engine::Spark => "spark",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Engine::Flink => "Apache Flink",
            Engine::Spark => "Apache Spark",
        }
    }
}

/// The engine's job (bench/<dir>/run) on the same topic: its measurement and candle rows.
fn engine(
    engine: Engine,
    topic: &str,
    args: &Args,
) -> Result<(Measured, Vec<BTreeMap<String, String>>), String> {
    let dir = engine.dir();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("tickflow-bench-{dir}-{}.csv", std::process::id()));
    let (parallelism, mut extra) = match engine {
        Engine::Flink => (
            args.flink_parallelism,
            vec![
                "--checkpoint-ms".to_string(),
                args.flink_checkpoint_ms.to_string(),
            ],
        ),
        Engine::Spark => (args.spark_parallelism, vec![]),
    };
    // The aggregator's default out-of-orderness: nothing in this workload is later.
    extra.extend(["--out-of-orderness-ms".to_string(), "2000".to_string()]);
    log(format!(
        "running the {} job (bench/{dir}/run)",
        engine.name()
    ));
    let output = std::process::Command::new(root.join(dir).join("run"))
        .args(["--topic", topic, "--out"])
        .arg(&out)
        .args(["--parallelism", &parallelism.to_string()])
        .args(&extra)
        .output()
        .map_err(|e| format!("cannot run bench/{dir}/run: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "bench/{dir}/run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("no JSON summary from bench/{dir}/run:\n{stdout}"))?;
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let rows: Vec<BTreeMap<String, String>> = lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect();
    let number = |key: &str| summary[key].as_f64().unwrap_or(0.0);
    let version = summary[format!("{dir}_version").as_str()]
        .as_str()
        .unwrap_or("?");
    let kind = match engine {
        Engine::Flink => "SQL",
        Engine::Spark => "Structured Streaming",
    };
    Ok((
        Measured {
            system: format!("{} {version} {kind}, p={parallelism}", engine.name()),
            events: summary["trades_in_windows"].as_u64().unwrap_or(0) as usize,
            cpu_seconds: number("cpu_seconds"),
            peak_rss: number("peak_rss_bytes") as u64,
            wall_seconds: number("wall_seconds"),
            note: format!(
                "per venue candles to CSV; includes JVM start-up and planning; heap {}",
                summary["heap"].as_str().unwrap_or("?")
            ),
        },
        rows,
    ))
}

/// (equal, differing, only ours, only theirs), comparing decimals as numbers.
fn compare(
    ours: &BTreeMap<(String, String, i64), Candle>,
    flink: &[BTreeMap<String, String>],
) -> (usize, usize, usize, usize) {
    let decimal = |row: &BTreeMap<String, String>, key: &str| -> Option<Decimal> {
        row.get(key).and_then(|v| v.parse().ok())
    };
    let mut seen = std::collections::BTreeSet::new();
    let (mut same, mut differing, mut only_flink) = (0, 0, 0);
    for row in flink {
        let key = (
            row.get("instrument").cloned().unwrap_or_default(),
            row.get("exchange").cloned().unwrap_or_default(),
            row.get("window_start_us")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        );
        let Some(c) = ours.get(&key) else {
            only_flink += 1;
            continue;
        };
        seen.insert(key.clone());
        let equal = decimal(row, "open") == Some(c.open)
            && decimal(row, "high") == Some(c.high)
            && decimal(row, "low") == Some(c.low)
            && decimal(row, "close") == Some(c.close)
            && row.get("count").and_then(|v| v.parse::<i64>().ok()) == Some(c.count)
            && decimal(row, "volume") == Some(c.volume)
            && decimal(row, "vwap") == Some(c.vwap);
        if equal {
            same += 1;
        } else {
            if differing < 3 {
                log(format!("differs: {key:?}: theirs {row:?}, tickflow {c:?}"));
            }
            differing += 1;
        }
    }
    (same, differing, ours.len() - seen.len(), only_flink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_env_takes_tickflow_settings_and_names_the_bad_one() {
        let good = vec![
            "TICKFLOW_KAFKA__LIBRDKAFKA__QUEUED_MIN_MESSAGES=100000".to_string(),
            "TICKFLOW_SERVICE__LOG_LEVEL=a=b".to_string(),
        ];
        assert_eq!(
            service_env(&good).unwrap(),
            vec![
                (
                    "TICKFLOW_KAFKA__LIBRDKAFKA__QUEUED_MIN_MESSAGES".to_string(),
                    "100000".to_string()
                ),
                ("TICKFLOW_SERVICE__LOG_LEVEL".to_string(), "a=b".to_string()),
            ]
        );
        for bad in ["QUEUED_MIN_MESSAGES=1", "TICKFLOW_=1", "TICKFLOW_X"] {
            let error = service_env(&[bad.to_string()]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn extra_settings_come_last_so_they_win() {
        let extra = vec![("TICKFLOW_A".to_string(), "2".to_string())];
        let env = with_extra(&[("TICKFLOW_A", "1".to_string())], &extra, "AGGREGATOR");
        assert_eq!(env.last(), Some(&("TICKFLOW_A", "2".to_string())));
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn a_service_section_goes_to_its_service_only() {
        let extra: Vec<(String, String)> = [
            "TICKFLOW_AGGREGATOR__MAX_IN_FLIGHT",
            "TICKFLOW_FAIR_PRICE__MAX_IN_FLIGHT",
            "TICKFLOW_KAFKA__LINGER_MS",
        ]
        .map(|k| (k.to_string(), "1".to_string()))
        .into();
        let keys = |section| -> Vec<&str> {
            with_extra(&[], &extra, section)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            keys("AGGREGATOR"),
            [
                "TICKFLOW_AGGREGATOR__MAX_IN_FLIGHT",
                "TICKFLOW_KAFKA__LINGER_MS"
            ]
        );
        assert_eq!(
            keys("FAIR_PRICE"),
            [
                "TICKFLOW_FAIR_PRICE__MAX_IN_FLIGHT",
                "TICKFLOW_KAFKA__LINGER_MS"
            ]
        );
        assert_eq!(keys("GATEWAY"), ["TICKFLOW_KAFKA__LINGER_MS"]);
    }
}
