//! What tickflow's tests, the chaos suite and the benchmark share, as a dev-dependency (never
//! in a service binary).
//!
//! At the root, helpers for integration tests against the real local stack (`scripts/stack up`):
//! endpoints, unique topic and keyspace names, free ports, service processes, and a clear failure
//! when the stack is not running. Tests never skip: without the stack they fail and say how to
//! start it. Beside them, per service:
//!
//! - [`aggregator`]: an aggregator process's environment, stored candles, and the seeded
//!   scenario with its recomputation;
//! - [`fair_price`]: the multi-provider scenario, the independent recomputation of a fair price,
//!   and reading topics back;
//! - [`providers`]: local servers that speak the providers' documented WebSocket protocols.

pub mod aggregator;
pub mod fair_price;
pub mod providers;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tickflow_shared::config::{CassandraConfig, KafkaConfig, RegistryConfig};
use tickflow_shared::domain::{parse_decimal, AssetClass, Side, Trade};

/// A realistic trade with the awkward cases in it: a price with trailing zeros, a size with 12
/// fractional digits, microsecond times and a provider sequence.
pub fn sample_trade() -> Trade {
    Trade {
        instrument: "BTC-USD".into(),
        base: "BTC".into(),
        quote: "USD".into(),
        asset_class: AssetClass::Crypto,
        exchange: "coinbase".into(),
        provider: "coinbase".into(),
        provider_symbol: "BTC-USD".into(),
        trade_id: "548923011".into(),
        price: parse_decimal("67012.34000000").expect("decimal"),
        size: parse_decimal("0.000012345678").expect("decimal"),
        side: Side::Buy,
        event_time: 1_763_769_600_123_457,
        ingest_time: 1_763_769_600_124_001,
        normalized_time: 1_763_769_600_125_999,
        provider_sequence: Some(8_812_345_678),
    }
}

/// Reference data for tests and benches: every provider format, an inactive instrument.
pub const INSTRUMENTS_FIXTURE: &str = r#"
[[instrument]]
instrument = "BTC-USD"
base = "BTC"
quote = "USD"
asset_class = "CRYPTO"
listings = [
  { provider = "coinbase", symbol = "BTC-USD" },
  { provider = "kraken", symbol = "BTC/USD" },
  { provider = "finnhub", symbol = "COINBASE:BTC-USD", exchange = "coinbase" },
  { provider = "binance", symbol = "BTCUSD" },
  { provider = "simulator", symbol = "BTC-USD" },
]
[[instrument]]
instrument = "ETH-USD"
base = "ETH"
quote = "USD"
asset_class = "CRYPTO"
listings = [{ provider = "simulator", symbol = "ETH-USD" }, { provider = "kraken", symbol = "ETH/USD" }]
[[instrument]]
instrument = "BTC-USDT"
base = "BTC"
quote = "USDT"
asset_class = "CRYPTO"
listings = [
  { provider = "binance", symbol = "BTCUSDT" },
  { provider = "finnhub", symbol = "BINANCE:BTCUSDT", exchange = "binance" },
]
[[instrument]]
instrument = "OLD-USD"
base = "OLD"
quote = "USD"
asset_class = "CRYPTO"
active = false
listings = [{ provider = "coinbase", symbol = "OLD-USD" }]
"#;

/// The stack's endpoints, from the same `TICKFLOW_*` variables the services read, defaulting to
/// the ports `scripts/stack` uses.
pub struct Stack {
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub cassandra: CassandraConfig,
}

const HOW_TO_START: &str =
    "the local stack is not running: start it with `scripts/stack up` (or run everything with `scripts/test`)";

impl Stack {
    /// The stack's endpoints. Panics with instructions when Kafka, the registry or Cassandra
    /// does not answer a real request.
    pub async fn require() -> Stack {
        let mut kafka = KafkaConfig::default();
        if let Ok(v) = std::env::var("TICKFLOW_KAFKA__BOOTSTRAP_SERVERS") {
            kafka.bootstrap_servers = v;
        }
        kafka.client_id = "tickflow-it".into();
        let mut registry = RegistryConfig::default();
        if let Ok(v) = std::env::var("TICKFLOW_REGISTRY__URL") {
            registry.url = v;
        }
        let mut cassandra = CassandraConfig::default();
        if let Ok(v) = std::env::var("TICKFLOW_CASSANDRA__CONTACT_POINTS") {
            cassandra.contact_points = v.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Err(e) = tickflow_shared::kafka::check(&kafka, Duration::from_secs(5)).await {
            panic!("{HOW_TO_START}\nKafka at {}: {e}", kafka.bootstrap_servers);
        }
        let client = tickflow_shared::avro::Registry::new(&registry).expect("registry client");
        if let Err(e) = client.check().await {
            panic!("{HOW_TO_START}\nschema registry at {}: {e}", registry.url);
        }
        match tickflow_shared::cassandra::connect(&cassandra).await {
            Ok(session) => {
                if let Err(e) = tickflow_shared::cassandra::check(&session).await {
                    panic!("{HOW_TO_START}\nCassandra: {e}");
                }
            }
            Err(e) => panic!("{HOW_TO_START}\nCassandra: {e}"),
        }
        Stack {
            kafka,
            registry,
            cassandra,
        }
    }

    /// The Python interpreter of the stack's venv (with fastavro and confluent-kafka).
    pub fn python() -> String {
        std::env::var("TICKFLOW_STACK_PYTHON").unwrap_or_else(|_| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let home = std::env::var("TICKFLOW_STACK_HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| root.join(".stack"));
            home.join("venv/bin/python").display().to_string()
        })
    }
}

/// A name no other test run uses: `<prefix><sep><test><sep><pid><sep><time><sep><n>`.
pub fn unique_name(prefix: &str, test: &str, sep: char) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = tickflow_shared::domain::now_micros() / 1000 % 100_000_000;
    format!(
        "{prefix}{sep}{test}{sep}{}{sep}{millis}{sep}{n}",
        std::process::id()
    )
}

/// A unique topic name, e.g. `it.trade-roundtrip.1234.5678.0`.
pub fn unique_topic(test: &str) -> String {
    unique_name("it", test, '.')
}

/// A unique keyspace name (a CQL identifier), e.g. `it_trades_1234_5678_0`.
pub fn unique_keyspace(test: &str) -> String {
    unique_name("it", &test.replace('-', "_"), '_')
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A service binary started for a test, talking to the real stack, stopped on drop.
pub struct ServiceProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>` of its `/metrics`, `/healthz`, `/readyz`.
    pub http: String,
    log: tempfile::NamedTempFile,
    binary: String,
}

/// Where [`ServiceProcess`] saves each service's last `/metrics` before stopping it, if set.
pub const METRICS_DIR_ENV: &str = "TICKFLOW_TEST_METRICS_DIR";

impl ServiceProcess {
    /// Starts `binary` with the stack's Kafka and registry, a free HTTP port and `env` on top
    /// (services refuse sections they do not have, so Cassandra is only given by `env`).
    pub fn spawn(binary: &str, stack: &Stack, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = std::process::Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TICKFLOW_SERVICE__HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("TICKFLOW_SERVICE__SHUTDOWN_TIMEOUT_MS", "5000")
            .env(
                "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS",
                &stack.kafka.bootstrap_servers,
            )
            .env("TICKFLOW_REGISTRY__URL", &stack.registry.url)
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"));
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Self {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
            binary: binary.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GET `path`; `None` while the server does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.http))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// Waits until the log contains `text`; panics with the log after `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.log().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{text}` in the log within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of the samples of metric `name` whose labels contain `labels` (say
    /// `kind="assigned"`) on `/metrics`; 0 while the server does not answer.
    pub async fn metric_sum(&self, name: &str, labels: &str) -> f64 {
        let Some((_, exposition)) = self.get("/metrics").await else {
            return 0.0;
        };
        exposition
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `path` answers `status`; panics with the log after `timeout`.
    pub async fn wait_for(&mut self, path: &str, status: u16, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "the service exited ({exit}) while waiting for {path}:\n{}",
                    self.log()
                );
            }
            if let Some((got, body)) = self.get(path).await {
                if got == status {
                    return body;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{path} did not answer {status} within {timeout:?}; last: {:?}\nlog:\n{}",
                    self.get(path).await,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// CPU seconds (user + system) the process has used, from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// With `TICKFLOW_TEST_METRICS_DIR` set (scripts/test sets it), saves what `/metrics` says
    /// now to `<dir>/<binary>-<pid>.txt`, so the dashboards and alerts can be checked against
    /// what the services really exported during the tests, faults included. Called before a
    /// service is stopped or killed; a service that does not answer leaves no file.
    fn save_metrics(&mut self) {
        let Some(dir) = std::env::var_os(METRICS_DIR_ENV) else {
            return;
        };
        if !self.is_running() {
            return;
        }
        let name = std::path::Path::new(&self.binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "service".into());
        let path = std::path::Path::new(&dir).join(format!("{name}-{}.txt", self.pid()));
        // curl, not an async client: this runs from sync code (terminate, drop) inside a runtime.
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "3", "-o"])
            .arg(&path)
            .arg(format!("{}/metrics", self.http))
            .status();
    }

    /// SIGKILL: the crash a checkpoint must survive. Waits for the process to be gone.
    pub fn kill_hard(&mut self) {
        self.save_metrics();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns its code and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        self.save_metrics();
        let started = std::time::Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal the service");
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return (exit.code(), started.elapsed());
            }
            if started.elapsed() > timeout {
                panic!(
                    "the service did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.save_metrics();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lifecycle every service must pass against the real stack: it becomes ready (its
/// dependencies answer, its topics and schemas are in place), exports the shared metrics, and
/// exits 0 within its shutdown deadline on SIGTERM.
pub async fn check_service_lifecycle(binary: &str, dependencies: &[&str]) {
    check_service_lifecycle_with(binary, dependencies, &[]).await;
}

/// [`check_service_lifecycle`] with extra environment (e.g. a free port for a second listener).
pub async fn check_service_lifecycle_with(
    binary: &str,
    dependencies: &[&str],
    extra_env: &[(&str, String)],
) {
    let stack = Stack::require().await;
    let mut env: Vec<(&str, String)> = extra_env.to_vec();
    if dependencies.contains(&"cassandra") {
        // A fresh, migrated keyspace, as `tickflow-admin migrate` leaves it.
        let mut cassandra = stack.cassandra.clone();
        cassandra.keyspace = unique_keyspace("lifecycle");
        let session = tickflow_shared::cassandra::connect(&cassandra)
            .await
            .expect("cassandra");
        tickflow_shared::cassandra::migrate(&session, &cassandra)
            .await
            .expect("migrate");
        env.push((
            "TICKFLOW_CASSANDRA__CONTACT_POINTS",
            cassandra.contact_points.join(","),
        ));
        env.push(("TICKFLOW_CASSANDRA__KEYSPACE", cassandra.keyspace));
    }
    let mut service = ServiceProcess::spawn(binary, &stack, &env);
    service
        .wait_for("/healthz", 200, Duration::from_secs(30))
        .await;
    let ready = service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("readyz JSON");
    for dependency in dependencies
        .iter()
        .chain(&[tickflow_shared::service::STARTUP])
    {
        assert_eq!(
            ready["dependencies"][dependency]["ready"],
            serde_json::Value::Bool(true),
            "{dependency} in {ready}"
        );
    }
    let (_, metrics) = service.get("/metrics").await.expect("metrics");
    for dependency in dependencies {
        let line = format!("tickflow_dependency_up{{dependency=\"{dependency}\"}} 1");
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    assert!(metrics.contains("tickflow_build_info{"), "{metrics}");
    let (code, took) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code; log:\n{}", service.log());
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} (deadline 5 s)"
    );
    assert!(
        service.log().contains("stopped cleanly"),
        "{}",
        service.log()
    );
}

/// A binary of the workspace beside `beside` (one cargo built for the running test, say
/// `env!("CARGO_BIN_EXE_ingest-gateway")`): `cargo test --workspace` builds them all; built here
/// when it is missing (a test run with `-p`).
pub fn workspace_binary(beside: &str, package: &str, bin: &str) -> String {
    let path = std::path::Path::new(beside).with_file_name(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", bin])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {bin}");
    }
    path.display().to_string()
}

/// The environment of a normalizer a test runs as a process: reading `input` (a topic, or a
/// pattern starting with `^`), writing `trades` and `gaps`, with its own dead-letter and
/// reference topics, group and transactional id named after `test`, and the instruments file.
pub fn normalizer_env(
    test: &str,
    input: &str,
    trades: &str,
    gaps: &str,
    instruments_file: &str,
) -> Vec<(&'static str, String)> {
    let group = unique_name(test, "norm", '-');
    vec![
        ("TICKFLOW_NORMALIZER__INPUT_TOPICS", input.to_string()),
        ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", trades.to_string()),
        (
            "TICKFLOW_NORMALIZER__DLQ_TOPIC",
            unique_topic(&format!("{test}-dlq")),
        ),
        ("TICKFLOW_NORMALIZER__GAPS_TOPIC", gaps.to_string()),
        (
            "TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC",
            unique_topic(&format!("{test}-ref")),
        ),
        (
            "TICKFLOW_NORMALIZER__INSTRUMENTS_FILE",
            instruments_file.to_string(),
        ),
        (
            "TICKFLOW_NORMALIZER__TRANSACTIONAL_ID",
            format!("{group}-a"),
        ),
        ("TICKFLOW_NORMALIZER__GROUP_ID", group),
    ]
}

/// A SIGTERM in the middle of start-up (right after the service logs `moment`, while it may be
/// blocked on a Kafka client call) stops it cleanly within the 5 s shutdown deadline too.
pub async fn check_stop_during_startup(binary: &str, moment: &str) {
    check_stop_during_startup_with(binary, moment, &[]).await;
}

/// [`check_stop_during_startup`] with extra environment (e.g. an identity of its own).
pub async fn check_stop_during_startup_with(
    binary: &str,
    moment: &str,
    extra_env: &[(&str, String)],
) {
    let stack = Stack::require().await;
    let mut service = ServiceProcess::spawn(binary, &stack, extra_env);
    service.wait_for_log(moment, Duration::from_secs(30)).await;
    let (code, took) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code; log:\n{}", service.log());
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} (deadline 5 s); log:\n{}",
        service.log()
    );
}

/// Produces trades to `topic` (Avro, Confluent wire format, key = instrument), each to the given
/// partition or by key when `None`, and waits until the broker has acknowledged all of them.
pub async fn produce_trades(
    stack: &Stack,
    topic: &str,
    trades: impl IntoIterator<Item = (Option<i32>, Trade)>,
) -> tickflow_shared::Result<usize> {
    let registry = tickflow_shared::avro::Registry::new(&stack.registry)?;
    let codec =
        tickflow_shared::avro::AvroCodec::new(&registry, &[(topic, tickflow_shared::avro::TRADE)]);
    let producer = tickflow_shared::kafka::producer(&stack.kafka, "it-producer")?;
    let mut pending = Vec::new();
    let mut sent = 0;
    for (partition, trade) in trades {
        let bytes = codec.encode_trade(topic, &trade).await?;
        pending.push(enqueue(&producer, topic, &trade.instrument, &bytes, partition).await);
        sent += 1;
        if pending.len() >= 10_000 {
            confirm(&mut pending).await?;
        }
    }
    confirm(&mut pending).await?;
    Ok(sent)
}

/// The sum of metric `name` over all its label sets in a Prometheus text exposition (`/metrics`);
/// 0 when it is absent. Matches the exact name (not `name_sum` or a longer name).
pub fn metric_total(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // A float sum starts at -0.0: no series is 0.
        .fold(0.0, |sum, v| sum + v)
}

/// The `p` quantile (0..=1, nearest rank) of `sorted` (ascending); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Hands one record to `producer` without waiting for the broker; a full local queue is waited
/// out (deliveries drain) rather than refused, so every record counted was really handed over.
/// `partition`: `None` partitions by key.
pub async fn enqueue(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    partition: Option<i32>,
) -> rdkafka::producer::DeliveryFuture {
    loop {
        let mut record = rdkafka::producer::FutureRecord::to(topic)
            .key(key)
            .payload(payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn confirm(
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
) -> tickflow_shared::Result<()> {
    for delivery in pending.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => {
                return Err(tickflow_shared::Error::Task {
                    task: "producer",
                    message: "closed".into(),
                })
            }
        }
    }
    Ok(())
}

/// Deterministic synthetic trades for benches: `count` trades over `instruments` instruments and
/// three venues, `spacing` µs of event time apart, up to 1 s out of order.
pub fn synthetic_trades(
    count: usize,
    instruments: u64,
    spacing: tickflow_shared::domain::Micros,
) -> Vec<Trade> {
    let venues = ["coinbase", "kraken", "binance"];
    // xorshift64, seeded: the same trades on every run and machine.
    let mut seed: u64 = 42;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|i| {
            let r = next();
            Trade {
                instrument: format!("I{:04}", r % instruments.max(1)),
                exchange: venues[(r >> 10) as usize % 3].into(),
                trade_id: i.to_string(),
                event_time: 1_763_769_600_000_000 + i as i64 * spacing
                    - (r >> 20) as i64 % 1_000_000,
                price: rust_decimal::Decimal::new(6_700_000 + (r >> 30) as i64 % 10_000, 2),
                size: rust_decimal::Decimal::new(1 + (r >> 40) as i64 % 100_000, 6),
                side: if r & 1 == 0 { Side::Buy } else { Side::Sell },
                ..sample_trade()
            }
        })
        .collect()
}

/// (CPU seconds: utime + stime, peak RSS bytes: VmHWM) of a process, from /proc.
pub fn process_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    ((ticks(11) + ticks(12)) / 100.0, hwm_kib * 1024)
}
