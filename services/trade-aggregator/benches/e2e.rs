//! End to end through the real stack (`scripts/stack up`): a topic pre-filled with seeded trades,
//! then the trade-aggregator binary reads all of it into Cassandra and Kafka. Prints trades/s,
//! CPU-seconds per million trades and peak RSS of the aggregator process (Kafka and Cassandra
//! are not counted), once with every trade also written to Cassandra `trades` and once without.
//!
//! Then a live run for latency: trades produced at a steady rate with event time = the wall
//! clock, so a window can close at (window end + out-of-orderness) of wall time; for every final
//! candle on Kafka the latency is its record timestamp minus that instant. Prints p50/p99/max.
//!
//!     cargo bench -p trade-aggregator --bench e2e              # 100,000 trades, 150 s live
//!     TICKFLOW_BENCH_TRADES=300000 cargo bench -p trade-aggregator --bench e2e
//!     TICKFLOW_BENCH_LIVE_S=0 ...                              # skip the live run

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use scylla::client::session::Session;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::domain::Trade;
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};
use trade_aggregator::config::AggregatorConfig;

const PARTITIONS: i32 = 4;

/// A fresh keyspace, migrated.
async fn fresh_keyspace(stack: &Stack) -> (Arc<Session>, String) {
    let mut cassandra_config = stack.cassandra.clone();
    cassandra_config.keyspace = testkit::unique_keyspace("bench");
    let session = cassandra::connect(&cassandra_config).await.unwrap();
    cassandra::migrate(&session, &cassandra_config)
        .await
        .unwrap();
    (session, cassandra_config.keyspace)
}

/// The aggregator's environment for a bench run.
fn service_env(
    stack: &Stack,
    keyspace: &str,
    topic: &str,
    candles_topic: &str,
    write_trades: bool,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "TICKFLOW_CASSANDRA__CONTACT_POINTS",
            stack.cassandra.contact_points.join(","),
        ),
        ("TICKFLOW_CASSANDRA__KEYSPACE", keyspace.to_string()),
        ("TICKFLOW_AGGREGATOR__INPUT_TOPIC", topic.to_string()),
        (
            "TICKFLOW_AGGREGATOR__CANDLES_TOPIC",
            candles_topic.to_string(),
        ),
        (
            "TICKFLOW_AGGREGATOR__LATE_TOPIC",
            testkit::unique_topic("bench-late"),
        ),
        (
            "TICKFLOW_AGGREGATOR__OPERATOR_ID",
            testkit::unique_name("bench", "agg", '-'),
        ),
        (
            "TICKFLOW_AGGREGATOR__WRITE_TRADES",
            write_trades.to_string(),
        ),
        ("TICKFLOW_SERVICE__LOG_LEVEL", "warn".into()),
    ]
}

async fn run_once(stack: &Stack, topic: &str, count: usize, write_trades: bool) {
    let (session, keyspace) = fresh_keyspace(stack).await;
    let candles_topic = testkit::unique_topic("bench-candles");
    let env = service_env(stack, &keyspace, topic, &candles_topic, write_trades);
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_trade-aggregator"), stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let (cpu_before, _) = testkit::process_usage(service.pid());
    let started = Instant::now();
    loop {
        let (_, metrics) = service.get("/metrics").await.unwrap_or_default();
        if testkit::metric_total(&metrics, "tickflow_aggregator_trades_total") >= count as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not done in 10 min:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, peak_rss) = testkit::process_usage(service.pid());
    let cpu = cpu_after - cpu_before;
    service.terminate(Duration::from_secs(30));
    println!(
        "write_trades={write_trades:<5}  {count} trades in {elapsed:.2} s = {:>8.0} trades/s   {:.1} CPU-s per million   peak RSS {:.0} MiB",
        count as f64 / elapsed,
        cpu / count as f64 * 1e6,
        peak_rss as f64 / (1024.0 * 1024.0)
    );
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), &[])
        .await;
}

/// Trades at `rate` per second for `seconds`, event time = now, over 100 instruments; then the
/// latency of every final candle from the instant its window could close.
async fn run_live(stack: &Stack, rate: u64, seconds: u64) {
    let (session, keyspace) = fresh_keyspace(stack).await;
    let topic = testkit::unique_topic("bench-live");
    let candles_topic = testkit::unique_topic("bench-live-candles");
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[
            TopicSpec::new(&topic, PARTITIONS),
            TopicSpec::new(&candles_topic, 1),
        ],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    registry.register(&topic, avro::TRADE).await.unwrap();
    let env = service_env(stack, &keyspace, &topic, &candles_topic, true);
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_trade-aggregator"), stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let out_of_orderness = AggregatorConfig::default().timing().out_of_orderness;

    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "bench",
        &testkit::unique_name("bench", "live", '-'),
    )
    .unwrap();
    consumer.subscribe(&[&candles_topic]).unwrap();
    let codec = AvroCodec::new(&registry, &[(&topic, avro::TRADE)]);
    let producer = kafka::producer(&stack.kafka, "bench-live").unwrap();
    println!("live: {rate} trades/s for {seconds} s, event time = wall clock");

    let started = Instant::now();
    let tick = Duration::from_millis(50);
    let per_tick = (rate / 20).max(1);
    let mut sent = 0u64;
    let mut latencies_ms: Vec<f64> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        for t in testkit::synthetic_trades(per_tick as usize, 100, 0) {
            let trade = Trade {
                event_time: now,
                trade_id: format!("live-{sent}"),
                ..t
            };
            let bytes = codec.encode_trade(&topic, &trade).await.unwrap();
            // Deliveries are not awaited (the rate must hold).
            drop(testkit::enqueue(&producer, &topic, &trade.instrument, &bytes, None).await);
            sent += 1;
        }
        // Read whatever candles arrived during this tick.
        let deadline = tokio::time::Instant::now() + tick;
        while let Ok(Ok(message)) = tokio::time::timeout_at(deadline, consumer.recv()).await {
            let candle = codec
                .decode_candle(message.payload().unwrap_or_default())
                .await
                .unwrap();
            if let (true, Some(at_ms)) = (candle.is_final, message.timestamp().to_millis()) {
                let could_close = candle.window_end + out_of_orderness;
                latencies_ms.push((at_ms * 1000 - could_close) as f64 / 1000.0);
            }
        }
    }
    let (cpu, peak_rss) = testkit::process_usage(service.pid());
    service.terminate(Duration::from_secs(30));
    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| testkit::percentile(&latencies_ms, p);
    println!(
        "live: {sent} trades, {} final candles; window closable -> candle on Kafka: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms   {:.1} CPU-s per million   peak RSS {:.0} MiB",
        latencies_ms.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        cpu / sent.max(1) as f64 * 1e6,
        peak_rss as f64 / (1024.0 * 1024.0)
    );
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), &[])
        .await;
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let count: usize = std::env::var("TICKFLOW_BENCH_TRADES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let stack = Stack::require().await;
    let topic = testkit::unique_topic("bench-trades");
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[TopicSpec::new(&topic, PARTITIONS)],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    Registry::new(&stack.registry)
        .unwrap()
        .register(&topic, avro::TRADE)
        .await
        .unwrap();
    let filling = Instant::now();
    // 20,000 trades per simulated minute over 100 instruments.
    let trades = testkit::synthetic_trades(count, 100, 3_000)
        .into_iter()
        .map(|t| (None, t));
    testkit::produce_trades(&stack, &topic, trades)
        .await
        .unwrap();
    println!(
        "pre-filled {topic} with {count} trades in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    for write_trades in [false, true] {
        run_once(&stack, &topic, count, write_trades).await;
    }
    let live_s: u64 = std::env::var("TICKFLOW_BENCH_LIVE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    if live_s > 0 {
        run_live(&stack, 5_000, live_s).await;
    }
}
