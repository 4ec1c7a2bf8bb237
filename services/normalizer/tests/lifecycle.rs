//! Against the real local stack (`scripts/stack up`): start, ready, metrics, clean stop.

#[tokio::test]
async fn starts_ready_and_stops_cleanly_on_sigterm() {
    tickflow_testkit::check_service_lifecycle(
        env!("CARGO_BIN_EXE_normalizer"),
        &["kafka", "schema_registry"],
    )
    .await;
}

/// The transactional producer's `init_transactions` can block for its whole timeout while the
/// coordinator loads: a SIGTERM then must not wait for it.
#[tokio::test]
async fn stops_cleanly_when_signalled_while_starting_its_producer() {
    tickflow_testkit::check_stop_during_startup(env!("CARGO_BIN_EXE_normalizer"), "normalizing")
        .await;
}
