//! State hand-over on consumer-group rebalances, against the real stack. Instances of one
//! aggregator share the input partitions (cooperative-sticky); while the scenario's stream runs
//! (see `support/scenario.rs`):
//! 1. instance A runs alone;
//! 2. B joins: A checkpoints the partitions it gives B, B restores them; right when A has
//!    released them, A is killed with SIGKILL, in the middle of the rebalance;
//! 3. after the session timeout the group gives A's partitions to B, from A's checkpoints;
//! 4. C joins, then B is stopped with SIGTERM: its partitions go to C after a checkpoint.
//!
//! Afterwards every result equals a batch recomputation of the same input: no trade lost or
//! counted twice across the hand-overs.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tickflow_testkit::ServiceProcess;

use tickflow_testkit::aggregator as support;

use support::scenario::Scenario;

const HANDOVERS: &str = "tickflow_aggregator_partition_handovers_total";

/// The number of partitions `service` has taken over (assigned) so far.
async fn assigned(service: &ServiceProcess) -> f64 {
    service.metric_sum(HANDOVERS, "kind=\"assigned\"").await
}

/// The environment of instance `name`: its own identity in the group (static membership).
fn instance(scenario: &Scenario, name: &str) -> Vec<(&'static str, String)> {
    let mut env = scenario.env.clone();
    env.push((
        "TICKFLOW_AGGREGATOR__INSTANCE_ID",
        format!("aggregator-{name}"),
    ));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_between_instances_with_their_state_and_nothing_is_lost() {
    // Four partitions (one instrument each), so every instance gets some; a short session
    // timeout so the group notices the killed instance within seconds.
    let mut scenario = Scenario::start(
        "rebalance",
        12_000,
        150,
        &[
            ("TICKFLOW_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TICKFLOW_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "1000"),
        ],
    )
    .await;
    let binary = env!("CARGO_BIN_EXE_trade-aggregator");
    let mut rng = StdRng::seed_from_u64(11);

    let mut a = ServiceProcess::spawn(binary, &scenario.stack, &instance(&scenario, "a"));
    a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    a.wait_for_log("consuming from the checkpoints", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..2_000))).await;

    // B joins; A is killed right after it has handed partitions over.
    let mut b = ServiceProcess::spawn(binary, &scenario.stack, &instance(&scenario, "b"));
    a.wait_for_log("released", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    a.kill_hard();
    b.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    assert!(
        !scenario.producing.is_finished(),
        "the stream ended before the first hand-over"
    );

    // The group gives A's partitions to B once A's session times out: B then owns all four.
    let deadline = Instant::now() + Duration::from_secs(40);
    while assigned(&b).await < f64::from(support::scenario::PARTITIONS) {
        assert!(
            Instant::now() < deadline,
            "B never took over A's partitions:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // C joins and B leaves gracefully.
    let mut c = ServiceProcess::spawn(binary, &scenario.stack, &instance(&scenario, "c"));
    c.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    c.wait_for_log("consuming from the checkpoints", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
    assert!(
        !scenario.producing.is_finished(),
        "the stream ended before the last hand-over"
    );
    let (code, _) = b.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", b.log());

    scenario.produced().await;
    assert!(
        assigned(&c).await > 0.0,
        "C took nothing over:\n{}",
        c.log()
    );
    scenario
        .verify(
            &mut c,
            "a kill -9 during a rebalance and two more hand-overs",
        )
        .await;
}
