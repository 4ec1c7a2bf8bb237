//! Cassandra going away mid-stream, against the real stack: the local node closes its CQL port
//! (`nodetool disablebinary`, the node keeps running) while trades keep arriving. The aggregator
//! must report not ready, stop consuming (memory stays bounded), resume by itself when the port
//! opens again, and lose nothing: every candle in Cassandra afterwards equals a batch
//! recomputation of the whole input.
//!
//! Its own test binary, so no other test shares the outage.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tickflow_shared::avro::{self, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::domain::Trade;
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, sample_trade, ServiceProcess, Stack};
use trade_aggregator::config::AggregatorConfig;
use trade_aggregator::reference::{batch_candles, same_values};
use trade_aggregator::store::CandleStore;

use tickflow_testkit::aggregator as support;

const T0: i64 = 1_763_769_600_000_000; // 2025-11-22T00:00:00Z
const INSTRUMENTS: [&str; 2] = ["BTC-USD", "ETH-USD"];
const PER_PHASE: usize = 600;
const MAX_BATCH: usize = 50;

/// `nodetool` on the local node through `scripts/stack`.
fn nodetool(command: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/stack");
    let status = Command::new(script)
        .args(["nodetool", command])
        .status()
        .expect("scripts/stack runs");
    assert!(status.success(), "scripts/stack nodetool {command} failed");
}

/// Reopens the CQL port however the test ends, so later tests find Cassandra.
struct Outage;

impl Outage {
    fn start() -> Outage {
        nodetool("disablebinary");
        Outage
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        nodetool("enablebinary");
    }
}

/// Trades of phase `phase` (0, 1, 2): two minutes of event time each, in order.
fn phase(phase: usize) -> Vec<Trade> {
    (0..PER_PHASE)
        .map(|i| {
            let n = phase * PER_PHASE + i;
            let event_time = T0 + n as i64 * 200_000; // 5 per second
            Trade {
                instrument: INSTRUMENTS[n % 2].into(),
                exchange: ["coinbase", "kraken"][(n / 2) % 2].into(),
                provider: "simulated".into(),
                trade_id: format!("t{n}"),
                price: Decimal::new(100_000 + (n as i64 * 37) % 1_000, 2),
                size: Decimal::new(1 + (n as i64 * 13) % 500, 3),
                event_time,
                ingest_time: event_time + 1_000,
                normalized_time: event_time + 2_000,
                ..sample_trade()
            }
        })
        .collect()
}

/// Σ of the aggregator's `trades_total` over all labels.
async fn trades_counted(service: &ServiceProcess) -> f64 {
    let (_, body) = service.get("/metrics").await.unwrap_or_default();
    testkit::metric_total(&body, "tickflow_aggregator_trades_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_while_cassandra_is_away_and_loses_nothing() {
    let stack = Stack::require().await;
    let mut cassandra_config = stack.cassandra.clone();
    cassandra_config.keyspace = testkit::unique_keyspace("agg_outage");
    let session = cassandra::connect(&cassandra_config).await.unwrap();
    cassandra::migrate(&session, &cassandra_config)
        .await
        .unwrap();
    let agg = AggregatorConfig {
        input_topic: testkit::unique_topic("outage-in"),
        candles_topic: testkit::unique_topic("outage-candles"),
        late_topic: testkit::unique_topic("outage-late"),
        operator_id: testkit::unique_name("agg", "outage", '-'),
        ..AggregatorConfig::default()
    };
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[TopicSpec::new(&agg.input_topic, 1)],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    Registry::new(&stack.registry)
        .unwrap()
        .register(&agg.input_topic, avro::TRADE)
        .await
        .unwrap();

    let max_batch = MAX_BATCH.to_string();
    let env = support::aggregator_env(
        &stack,
        &cassandra_config.keyspace,
        &agg,
        &[
            ("TICKFLOW_AGGREGATOR__CHECKPOINT_INTERVAL_MS", "500"),
            // Long enough for the pauses between phases (`nodetool` is a JVM start, seconds
            // on a loaded machine): a source silent for longer is idle, and its watermark
            // (rightly) jumps to the wall clock, past these 2025 trades. At 3 s, a slow
            // `disablebinary` made all of phase 1 too late.
            ("TICKFLOW_AGGREGATOR__IDLE_TIMEOUT_MS", "15000"),
            ("TICKFLOW_AGGREGATOR__MAX_BATCH", &max_batch),
        ],
    );
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_trade-aggregator"), &stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    let phases: Vec<Vec<Trade>> = (0..3).map(phase).collect();
    let produce = |trades: &Vec<Trade>| {
        let batch: Vec<(Option<i32>, Trade)> =
            trades.iter().map(|t| (Some(0), t.clone())).collect();
        testkit::produce_trades(&stack, &agg.input_topic, batch)
    };

    // Phase 0 with Cassandra up: all of it is consumed.
    produce(&phases[0]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while trades_counted(&service).await < PER_PHASE as f64 {
        assert!(Instant::now() < deadline, "phase 0 not consumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Phase 1 during the outage.
    let outage = Outage::start();
    produce(&phases[1]).await.unwrap();
    let body = service
        .wait_for("/readyz", 503, Duration::from_secs(60))
        .await;
    assert!(body.contains("cassandra"), "{body}");
    // Consumption pauses: the first flush into the closed port holds everything behind it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused_at = trades_counted(&service).await;
    let rss_before = testkit::process_usage(service.pid()).1;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = trades_counted(&service).await;
    let rss_after = testkit::process_usage(service.pid()).1;
    eprintln!("paused at {paused_at} trades; peak RSS {rss_before} -> {rss_after} bytes");
    assert_eq!(
        paused_at, still,
        "consumption went on while Cassandra was away"
    );
    assert!(
        paused_at < (2 * PER_PHASE) as f64,
        "all of phase 1 was consumed ({paused_at}) although nothing could be written"
    );
    assert!(
        rss_after < rss_before + 32 * 1024 * 1024,
        "peak RSS grew from {rss_before} to {rss_after} bytes while paused"
    );
    assert!(service.is_running(), "the service died during the outage");

    // Cassandra back: ready again by itself, and the rest flows. The last phase goes to Kafka
    // at once: a gap longer than the test's idle timeout after the backlog is read would
    // (rightly) let the watermark jump to the wall clock, past these 2025 trades.
    drop(outage);
    produce(&phases[2]).await.unwrap();
    service
        .wait_for("/readyz", 200, Duration::from_secs(90))
        .await;

    // Every candle equals the batch recomputation; the idle timeout closes the last windows.
    let all: Vec<Trade> = phases.concat();
    let (expected, too_late) = batch_candles(&all, &agg.timing());
    assert!(too_late.is_empty());
    // The test's own session reconnects on its own schedule too: read until it answers.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut problems: Vec<String> = vec!["not read yet".into()];
    loop {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(store) = CandleStore::new(session.clone(), &cassandra_config.keyspace).await else {
            continue;
        };
        let Ok(stored) = support::stored_candles(
            &store,
            &INSTRUMENTS,
            &["coinbase", "kraken", "*"],
            &support::days_of(&expected),
        )
        .await
        else {
            continue;
        };
        problems = expected
            .iter()
            .filter(|(k, want)| {
                !stored
                    .get(*k)
                    .is_some_and(|got| got.is_final && same_values(got, want))
            })
            .map(|(k, want)| match stored.get(k) {
                None => format!("{k:?} missing"),
                Some(got) => format!(
                    "{k:?} final={} revision={} count {} (want {})",
                    got.is_final, got.revision, got.count, want.count
                ),
            })
            .chain(
                stored
                    .keys()
                    .filter(|k| !expected.contains_key(*k))
                    .map(|k| format!("unexpected {k:?}")),
            )
            .collect();
        if problems.is_empty() {
            break;
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} candles wrong or missing after the outage: {:?}\nmetrics:\n{}\nlog:\n{}",
        problems.len(),
        expected.len(),
        problems,
        service
            .get("/metrics")
            .await
            .map(|(_, m)| m)
            .unwrap_or_default(),
        service.log()
    );
    assert_eq!(trades_counted(&service).await, (3 * PER_PHASE) as f64);

    let (code, _) = service.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", service.log());
    session
        .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
        .await
        .unwrap();
}
