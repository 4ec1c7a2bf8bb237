//! Against the real local stack (`scripts/stack up`): start, ready, metrics, clean stop.
//!
//! The two tests run at once, so each normalizer has a transactional id (and with it a static
//! group membership) of its own: with the default id, the later one fences the earlier.

/// Environment giving this test's normalizer an identity no other instance uses.
fn own_identity(test: &str) -> [(&'static str, String); 1] {
    [(
        "TICKFLOW_NORMALIZER__TRANSACTIONAL_ID",
        tickflow_testkit::unique_name("normalizer", test, '-'),
    )]
}

#[tokio::test]
async fn starts_ready_and_stops_cleanly_on_sigterm() {
    tickflow_testkit::check_service_lifecycle_with(
        env!("CARGO_BIN_EXE_normalizer"),
        &["kafka", "schema_registry"],
        &own_identity("lifecycle"),
    )
    .await;
}

/// The transactional producer's `init_transactions` can block for its whole timeout while the
/// coordinator loads: a SIGTERM then must not wait for it.
#[tokio::test]
async fn stops_cleanly_when_signalled_while_starting_its_producer() {
    tickflow_testkit::check_stop_during_startup_with(
        env!("CARGO_BIN_EXE_normalizer"),
        "normalizing",
        &own_identity("stop-during-startup"),
    )
    .await;
}
