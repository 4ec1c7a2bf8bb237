//! End to end through the real stack (`scripts/stack up`) at a steady rate: trades go to a
//! `md.trades`-like topic with receive time (`ingest_time`) = event time = the wall clock when
//! produced, the fair-price binary reads them, and every fair price it publishes on Kafka is read
//! back. Prints the rate reached, the latency from the newest contributing trade's receive time
//! to the fair price's Kafka record timestamp (p50/p99/max of change-triggered records, after a
//! warm-up), the service's own receive → Kafka-ack histogram, CPU-seconds per million trades and
//! peak RSS of the fair-price process (Kafka, Cassandra and this bench are not counted).
//!
//!     cargo bench -p fair-price --bench e2e                        # 30,000 trades/s for 60 s
//!     TICKFLOW_BENCH_RATE=10000 TICKFLOW_BENCH_SECONDS=120 cargo bench -p fair-price --bench e2e
//!
//! Workload: 100 instruments × 5 exchanges (sources), default settings (vw_median, 100 ms
//! throttle, 1 s heartbeat), writing to Cassandra as in production. The producer runs in this
//! process on the same two cores, so the rate it reaches is printed next to the one asked.
//! The gateway and normalizer are not in this path: receive time is set here, where they would
//! set it, so the number is the fair-price hop plus Kafka on both sides.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fair_price::records::{FairPriceCodec, Trigger};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rust_decimal::Decimal;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, Trade};
use tickflow_shared::kafka;
use tickflow_testkit::{self as testkit, sample_trade, ServiceProcess, Stack};

use tickflow_testkit::fair_price::{migrated_keyspace, service_env, Topics};

const PARTITIONS: i32 = 4;
const INSTRUMENTS: u64 = 100;
const EXCHANGES: [&str; 5] = ["coinbase", "kraken", "binance", "bitstamp", "okx"];
/// Latencies of the first seconds (start-up, replay, connection set-up) are left out.
const WARM_UP: Duration = Duration::from_secs(5);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One quantile of the service's latency summary for `stage`, in ms.
fn own_quantile(metrics: &str, stage: &str, quantile: &str) -> f64 {
    let needle = format!("stage=\"{stage}\",quantile=\"{quantile}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(fair_price::metrics::LATENCY) && l.contains(&needle))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |s| s * 1000.0)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rate = env_or("TICKFLOW_BENCH_RATE", 30_000);
    let seconds = env_or("TICKFLOW_BENCH_SECONDS", 60);
    let stack = Stack::require().await;
    // Side by side: the fair-price hop alone, then writing to Cassandra as in production.
    for write_cassandra in [false, true] {
        run(&stack, rate, seconds, write_cassandra).await;
    }
}

async fn run(stack: &Stack, rate: u64, seconds: u64, write_cassandra: bool) {
    let (session, cassandra_config) = migrated_keyspace(stack, "bench_fp").await;
    let topics = Topics::create(stack, "bench-fp", PARTITIONS).await;
    let (input, output) = (topics.input.clone(), topics.output.clone());
    let registry = Registry::new(&stack.registry).unwrap();
    let mut env = service_env(
        &cassandra_config,
        &topics,
        &testkit::unique_name("bench", "fp", '-'),
        testkit::free_port(),
    );
    env.push(("TICKFLOW_SERVICE__LOG_LEVEL", "warn".into()));
    env.push((
        "TICKFLOW_FAIR_PRICE__WRITE_CASSANDRA",
        write_cassandra.to_string(),
    ));
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_fair-price"), stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "bench",
        &testkit::unique_name("bench", "fp-read", '-'),
    )
    .unwrap();
    consumer.subscribe(&[&output]).unwrap();
    println!(
        "fair-price e2e, write_cassandra={write_cassandra}: asked {rate} trades/s for {seconds} s over {INSTRUMENTS} instruments x {} exchanges",
        EXCHANGES.len()
    );

    // The producer: trades due by elapsed time × rate, so a slow moment is caught up.
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producing = {
        let (stack_kafka, input, done, sent) = (
            stack.kafka.clone(),
            input.clone(),
            done.clone(),
            sent.clone(),
        );
        let codec = AvroCodec::new(&registry, &[(&input, avro::TRADE)]);
        tokio::spawn(async move {
            let producer = kafka::producer(&stack_kafka, "bench-fp").unwrap();
            let started = Instant::now();
            let mut n: u64 = 0;
            let mut seed: u64 = 42;
            while started.elapsed() < Duration::from_secs(seconds) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while n < due {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let now = now_micros();
                    let trade = Trade {
                        instrument: format!("I{:03}", seed % INSTRUMENTS),
                        exchange: EXCHANGES[(seed >> 10) as usize % EXCHANGES.len()].into(),
                        trade_id: n.to_string(),
                        event_time: now,
                        ingest_time: now,
                        price: Decimal::new(6_700_000 + (seed >> 30) as i64 % 1_000, 2),
                        size: Decimal::new(1 + (seed >> 40) as i64 % 100_000, 6),
                        ..sample_trade()
                    };
                    let bytes = codec.encode_trade(&input, &trade).await.unwrap();
                    // Deliveries are not awaited (the rate must hold).
                    drop(
                        testkit::enqueue(&producer, &input, &trade.instrument, &bytes, None).await,
                    );
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))
            })
            .await;
            done.store(true, Ordering::SeqCst);
        })
    };

    let codec = AvroCodec::new(&registry, &[]);
    let started = Instant::now();
    let (mut cpu_start, mut trades_start) = (None, 0.0);
    let mut latencies_ms: Vec<f64> = Vec::new();
    let (mut changes, mut heartbeats) = (0u64, 0u64);
    while !done.load(Ordering::SeqCst) {
        if cpu_start.is_none() && started.elapsed() >= WARM_UP {
            let (_, metrics) = service.get("/metrics").await.unwrap_or_default();
            trades_start = testkit::metric_total(&metrics, fair_price::metrics::TRADES_IN);
            cpu_start = Some(testkit::process_usage(service.pid()).0);
        }
        let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        else {
            continue;
        };
        let fp = codec
            .decode_fair_price(message.payload().unwrap_or_default())
            .await
            .unwrap();
        match fp.trigger {
            Trigger::Change => changes += 1,
            Trigger::Heartbeat => heartbeats += 1,
        }
        if let (Trigger::Change, Some(newest), Some(at_ms), true) = (
            fp.trigger,
            fp.newest_event_time,
            message.timestamp().to_millis(),
            cpu_start.is_some(),
        ) {
            latencies_ms.push((at_ms * 1000 - newest) as f64 / 1000.0);
        }
    }
    producing.await.unwrap();
    // Let the service read what is left, then take its numbers.
    let produced = sent.load(Ordering::Relaxed) as f64;
    let drained = Instant::now();
    let mut metrics = String::new();
    while drained.elapsed() < Duration::from_secs(30) {
        metrics = service.get("/metrics").await.unwrap_or_default().1;
        if testkit::metric_total(&metrics, fair_price::metrics::TRADES_IN) >= produced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumed = testkit::metric_total(&metrics, fair_price::metrics::TRADES_IN);
    let (cpu_end, peak_rss) = testkit::process_usage(service.pid());
    service.terminate(Duration::from_secs(30));

    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| testkit::percentile(&latencies_ms, p);
    let steady_trades = (consumed - trades_start).max(1.0);
    println!(
        "produced {produced:.0} trades = {:.0} trades/s (asked {rate}); fair-price consumed {consumed:.0}; published {changes} changes, {heartbeats} heartbeats",
        produced / seconds as f64
    );
    println!(
        "newest trade's receive time -> fair price record on Kafka (change-triggered, after {} s): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} records)",
        WARM_UP.as_secs(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        latencies_ms.len()
    );
    println!(
        "fair-price's own histogram, triggering trade's receive time -> Kafka ack (last minute): p50 {:.1} ms  p99 {:.1} ms",
        own_quantile(&metrics, "ingest", "0.5"),
        own_quantile(&metrics, "ingest", "0.99")
    );
    println!(
        "fair-price process: {:.1} CPU-s per million trades   peak RSS {:.0} MiB",
        (cpu_end - cpu_start.unwrap_or(0.0)) / steady_trades * 1e6,
        peak_rss as f64 / (1024.0 * 1024.0)
    );
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
        .await;
}
