//! The exactly-once effect across crashes, against the real stack: the aggregator is killed with
//! SIGKILL several times while the scenario's stream runs (see `support/scenario.rs`); afterwards
//! every result equals a batch recomputation of the same input.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tickflow_testkit::ServiceProcess;

use tickflow_testkit::aggregator as support;

use support::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_after_repeated_kill_9_equal_a_batch_recomputation() {
    let mut scenario = Scenario::start("crash", 6_000, 100, &[]).await;
    let binary = env!("CARGO_BIN_EXE_trade-aggregator");
    let mut rng = StdRng::seed_from_u64(7);
    let mut kills = 0;
    while !scenario.producing.is_finished() && kills < 4 {
        let mut service = ServiceProcess::spawn(binary, &scenario.stack, &scenario.env);
        service
            .wait_for("/readyz", 200, Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1600))).await;
        service.kill_hard();
        kills += 1;
    }
    scenario.produced().await;
    assert!(kills >= 3, "the stream ended before three kills ({kills})");

    // The last run goes to the end; the idle timeout closes the last windows.
    let mut service = ServiceProcess::spawn(binary, &scenario.stack, &scenario.env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    scenario
        .verify(&mut service, &format!("{kills} kills"))
        .await;
}
