//! End to end through the real stack (`scripts/stack up`): a topic pre-filled with seeded trades,
//! then the trade-aggregator binary reads all of it into Cassandra and Kafka. Prints trades/s,
//! CPU-seconds per million trades and peak RSS of the aggregator process (Kafka and Cassandra
//! are not counted), once with every trade also written to Cassandra `trades` and once without.
//!
//!     cargo bench -p trade-aggregator --bench e2e              # 100,000 trades
//!     TICKFLOW_BENCH_TRADES=300000 cargo bench -p trade-aggregator --bench e2e

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tickflow_shared::avro::{self, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_shared::testkit::{self, ServiceProcess, Stack};

const PARTITIONS: i32 = 4;

/// The sum of `tickflow_aggregator_trades_total` over its label sets.
fn processed(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tickflow_aggregator_trades_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn run_once(stack: &Stack, topic: &str, count: usize, write_trades: bool) {
    let mut cassandra_config = stack.cassandra.clone();
    cassandra_config.keyspace = testkit::unique_keyspace("bench");
    let session = cassandra::connect(&cassandra_config).await.unwrap();
    cassandra::migrate(&session, &cassandra_config)
        .await
        .unwrap();
    let env: Vec<(&str, String)> = vec![
        (
            "TICKFLOW_CASSANDRA__CONTACT_POINTS",
            stack.cassandra.contact_points.join(","),
        ),
        (
            "TICKFLOW_CASSANDRA__KEYSPACE",
            cassandra_config.keyspace.clone(),
        ),
        ("TICKFLOW_AGGREGATOR__INPUT_TOPIC", topic.to_string()),
        (
            "TICKFLOW_AGGREGATOR__CANDLES_TOPIC",
            testkit::unique_topic("bench-candles"),
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
    ];
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_trade-aggregator"), stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let (cpu_before, _) = testkit::process_usage(service.pid());
    let started = Instant::now();
    loop {
        let (_, metrics) = service.get("/metrics").await.unwrap_or_default();
        if processed(&metrics) >= count as f64 {
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
        .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
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
}
