//! Several fair-price instances share the input partitions through the consumer group, against
//! the real stack. BTC-USD's trades are on partition 0 and ETH-USD's on partition 1; the
//! scenario is produced in three parts while instances come and go: A alone; B joins and A is
//! killed with SIGKILL right after it has handed a partition over (B takes the other one after
//! A's session timeout, from A's last checkpoint); C joins and B stops with SIGTERM. Every fair
//! price any instance published equals the independent recomputation as of its instant (so one
//! published twice, before the kill and again after it, is the same record), and each
//! instrument's instants leave no hole across the hand-overs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fair_price::records::{FairPrice, FairPriceCodec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, Micros, Trade};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

use support::*;
use tickflow_testkit::fair_price as support;

const HANDOVERS: &str = "tickflow_fairprice_partition_handovers_total";

/// The number of partitions `service` has taken over (assigned) so far.
async fn assigned(service: &ServiceProcess) -> f64 {
    service.metric_sum(HANDOVERS, "kind=\"assigned\"").await
}

/// Whether the log says a partition was taken up from its checkpoint.
fn restored_any(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("consuming from the checkpoints") && !l.contains("restored=0"))
}

/// Each instrument on its own partition.
fn partitioned(trades: &[Trade]) -> Vec<(Option<i32>, Trade)> {
    trades
        .iter()
        .map(|t| (Some(i32::from(t.instrument != "BTC-USD")), t.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_partitions_and_hand_their_state_over_with_no_hole() {
    let stack = Stack::require().await;
    let (_session, cassandra_config) = migrated_keyspace(&stack, "fp_group").await;
    let topics = Topics::create(&stack, "fp-group", 2).await;
    let registry = Registry::new(&stack.registry).unwrap();
    let codec = AvroCodec::new(&registry, &[]);
    let mut rng = StdRng::seed_from_u64(20);

    let t0 = (now_micros() / S - 100) * S;
    let trades = scenario(t0);
    let (cut1, cut2) = (t0 + STEPS / 3 * STEP, t0 + 2 * STEPS / 3 * STEP);
    let part = |from: Micros, to: Micros| -> Vec<Trade> {
        trades
            .iter()
            .filter(|t| t.event_time >= from && t.event_time < to)
            .cloned()
            .collect()
    };
    let group = testkit::unique_name("fp", "group", '-');
    let base = service_env(&cassandra_config, &topics, &group, 0);
    let instance = |name: &str| {
        let mut env = base.clone();
        env.retain(|(k, _)| *k != "TICKFLOW_FAIR_PRICE__GRPC_LISTEN");
        env.extend([
            (
                "TICKFLOW_FAIR_PRICE__GRPC_LISTEN",
                format!("127.0.0.1:{}", testkit::free_port()),
            ),
            ("TICKFLOW_FAIR_PRICE__INSTANCE_ID", format!("fp-{name}")),
            // The clocks must not follow the wall clock while an instance waits: heartbeats
            // past the input produced so far would be right for what was seen, not for the
            // whole input (see the restart test).
            ("TICKFLOW_FAIR_PRICE__WALL_CLOCK_AFTER_MS", "600000".into()),
            ("TICKFLOW_FAIR_PRICE__CHECKPOINT_INTERVAL_MS", "1000".into()),
            // The group notices the killed instance within seconds.
            (
                "TICKFLOW_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS",
                "6000".into(),
            ),
            (
                "TICKFLOW_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS",
                "1000".into(),
            ),
        ]);
        env
    };
    let binary = env!("CARGO_BIN_EXE_fair-price");

    // A alone, on the first third.
    testkit::produce_trades(&stack, &topics.input, partitioned(&part(t0, cut1)))
        .await
        .unwrap();
    let mut a = ServiceProcess::spawn(binary, &stack, &instance("a"));
    a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    a.wait_for_log("consuming from the checkpoints", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..2_500))).await;

    // The second third; B joins and A is killed right after it has handed a partition over.
    testkit::produce_trades(&stack, &topics.input, partitioned(&part(cut1, cut2)))
        .await
        .unwrap();
    let mut b = ServiceProcess::spawn(binary, &stack, &instance("b"));
    a.wait_for_log("released", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    a.kill_hard();
    b.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while assigned(&b).await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "B never took over A's partitions:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(
        restored_any(&b.log()),
        "B took A's partitions without restoring a checkpoint:\n{}",
        b.log()
    );

    // The last third; C joins and B leaves gracefully.
    testkit::produce_trades(&stack, &topics.input, partitioned(&part(cut2, Micros::MAX)))
        .await
        .unwrap();
    let mut c = ServiceProcess::spawn(binary, &stack, &instance("c"));
    c.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    c.wait_for_log("consuming from the checkpoints", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
    // B and C each compute some of the instruments, and each answers for both: the query API
    // serves what every instance published.
    for service in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = service.get("/v1/fairprice").await.unwrap_or_default();
            let served: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["fair_prices"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|fp| fp["instrument"].as_str().map(String::from))
                .collect();
            if ["BTC-USD", "ETH-USD"]
                .iter()
                .all(|i| served.iter().any(|s| s == i))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "an instance serves {served:?}, not every instrument:\n{}",
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (code, _) = b.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", b.log());
    assert!(
        assigned(&c).await > 0.0,
        "C took nothing over:\n{}",
        c.log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !restored_any(&c.log()) {
        assert!(
            Instant::now() < deadline,
            "C restored no checkpoint:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Until each instrument's heartbeats reach its newest trade (every source of a partition
    // idle: its clock stops at its newest trade).
    let newest = |instrument: &str| {
        trades
            .iter()
            .filter(|t| t.instrument == instrument)
            .map(|t| t.event_time)
            .max()
            .unwrap()
    };
    let last: BTreeMap<&str, Micros> = ["BTC-USD", "ETH-USD"]
        .into_iter()
        .map(|i| (i, newest(i) - 2 * S))
        .collect();
    let _ = read_all(
        &stack,
        &topics.output,
        async |b: &[u8]| codec.decode_fair_price(b).await.unwrap(),
        |got: &[FairPrice]| {
            last.iter().all(|(instrument, &at)| {
                got.iter()
                    .any(|fp| fp.instrument == *instrument && fp.computed_at >= at)
            })
        },
        Duration::from_secs(90),
    )
    .await;
    let (code, _) = c.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", c.log());

    let mut published: BTreeMap<String, Vec<FairPrice>> = BTreeMap::new();
    for bytes in read_to_end(&stack, &topics.output).await {
        let fp = codec.decode_fair_price(&bytes).await.unwrap();
        published.entry(fp.instrument.clone()).or_default().push(fp);
    }
    for (instrument, &last) in &last {
        let own: Vec<Trade> = trades
            .iter()
            .filter(|t| t.instrument == *instrument)
            .cloned()
            .collect();
        let list = published.get(*instrument).map(Vec::as_slice).unwrap_or(&[]);
        let mut instants: BTreeMap<Micros, usize> = BTreeMap::new();
        for fp in list {
            assert_eq!(
                observed(fp),
                recompute(&own, fp.computed_at),
                "{instrument} as of t0 + {} ms: {fp:#?}",
                (fp.computed_at - t0) / MS
            );
            *instants.entry(fp.computed_at).or_default() += 1;
        }
        let times: Vec<Micros> = instants.keys().copied().collect();
        assert_no_hole(instrument, &times, t0, last, &[cut1, cut2]);
        eprintln!(
            "{instrument}: {} records, {} instants, {} published twice",
            list.len(),
            instants.len(),
            instants.values().filter(|&&n| n > 1).count()
        );
    }
}
