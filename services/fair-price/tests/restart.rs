//! A kill -9 in the middle of the multi-provider scenario, against the real stack. The restarted
//! service restores its partition's state (lookback, data-quality state, clock) from the last
//! checkpoint in Cassandra and goes on from the checkpoint's offset: every fair price either
//! process published equals the independent
//! recomputation as of its instant (so one published twice, before the crash and again after it,
//! is the same record), and the instants leave no hole at the crash.

use std::collections::BTreeMap;
use std::time::Duration;

use fair_price::records::{FairPrice, FairPriceCodec};
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, Micros, Trade};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

use support::*;
use tickflow_testkit::fair_price as support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_restored_checkpoint_publishes_what_a_recomputation_says_with_no_hole() {
    let stack = Stack::require().await;
    let (_session, cassandra_config) = migrated_keyspace(&stack, "fp_restart").await;
    let topics = Topics::create(&stack, "fp-restart", 1).await;
    let (input, output) = (topics.input.clone(), topics.output.clone());
    let registry = Registry::new(&stack.registry).unwrap();

    let t0 = (now_micros() / S - 100) * S;
    let trades = scenario(t0);
    let cut = t0 + STEPS / 2 * STEP;
    let (first, second): (Vec<Trade>, Vec<Trade>) =
        trades.iter().cloned().partition(|t| t.event_time < cut);
    let btc: Vec<Trade> = trades
        .iter()
        .filter(|t| t.instrument == "BTC-USD")
        .cloned()
        .collect();
    let end = t0 + STEPS * STEP;

    let mut env = service_env(
        &cassandra_config,
        &topics,
        &testkit::unique_name("fp", "restart", '-'),
        testkit::free_port(),
    );
    // The event-time clock must not follow the wall clock while the first process waits to be
    // killed: heartbeats as of instants past the first half would be right for what it had
    // seen, not for the whole input. (The scenario test covers idle input.) Sources still go
    // idle after the default 2 s, so the sources that stop before the end (every BTC-USD
    // source at t0 + 60 s) stop holding the clock back and ETH-USD's carries it to the end.
    env.push(("TICKFLOW_FAIR_PRICE__WALL_CLOCK_AFTER_MS", "600000".into()));
    let codec = AvroCodec::new(&registry, &[]);

    // The first half, then a crash once it has been published (and its offsets committed).
    testkit::produce_trades(&stack, &input, first.iter().map(|t| (Some(0), t.clone())))
        .await
        .unwrap();
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_fair-price"), &stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let before: Vec<FairPrice> = read_all(
        &stack,
        &output,
        async |b: &[u8]| codec.decode_fair_price(b).await.unwrap(),
        |got: &[FairPrice]| {
            got.iter()
                .any(|fp| fp.instrument == "BTC-USD" && fp.computed_at >= cut - 5 * STEP)
        },
        Duration::from_secs(60),
    )
    .await;
    assert!(
        before
            .iter()
            .any(|fp| fp.instrument == "BTC-USD" && fp.computed_at >= cut - 5 * STEP),
        "the first half was not published; log:\n{}",
        service.log()
    );
    // A checkpoint is written every `checkpoint_interval_ms` (2 s) after the outputs before it
    // landed: wait for one, then kill. The outputs after it are on Kafka with their input not
    // checkpointed, and are published again after the restart; they must be the same records.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    service.kill_hard();

    // The second half while it is down, then the restart with the same group.
    testkit::produce_trades(&stack, &input, second.iter().map(|t| (Some(0), t.clone())))
        .await
        .unwrap();
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_fair-price"), &stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    // Until the heartbeats reach the end of the input (ETH-USD trades carry the clock there).
    let last = end - 2 * S;
    let _ = read_all(
        &stack,
        &output,
        async |b: &[u8]| codec.decode_fair_price(b).await.unwrap(),
        |got: &[FairPrice]| {
            got.iter()
                .any(|fp| fp.instrument == "BTC-USD" && fp.computed_at >= last)
        },
        Duration::from_secs(90),
    )
    .await;
    let (code, _) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", service.log());
    assert!(
        service.log().contains("restored=1"),
        "the restart did not restore its partition from a checkpoint:\n{}",
        service.log()
    );

    let mut published: Vec<FairPrice> = Vec::new();
    for bytes in read_to_end(&stack, &output).await {
        let fp = codec.decode_fair_price(&bytes).await.unwrap();
        if fp.instrument == "BTC-USD" {
            published.push(fp);
        }
    }
    // Every record, from either process, equals the recomputation as of its instant; so does a
    // record published twice (before the crash and again after it).
    let mut instants: BTreeMap<Micros, usize> = BTreeMap::new();
    for fp in &published {
        assert_eq!(
            observed(fp),
            recompute(&btc, fp.computed_at),
            "as of t0 + {} ms: {fp:#?}",
            (fp.computed_at - t0) / MS
        );
        *instants.entry(fp.computed_at).or_default() += 1;
    }
    let times: Vec<Micros> = instants.keys().copied().collect();
    assert_no_hole("BTC-USD", &times, t0, last, &[cut]);
    // The second half is 37.5 s of event time: about one instant per second at least.
    let after_crash = times.iter().filter(|&&t| t >= cut).count();
    assert!(
        after_crash >= 30,
        "only {after_crash} instants after the crash"
    );
    eprintln!(
        "{} records, {} instants, {} published twice",
        published.len(),
        instants.len(),
        instants.values().filter(|&&n| n > 1).count()
    );
}
