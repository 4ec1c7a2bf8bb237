//! Against the real local stack (`scripts/stack up`): start, ready, metrics, clean stop.

#[tokio::test]
async fn starts_ready_and_stops_cleanly_on_sigterm() {
    tickflow_testkit::check_service_lifecycle(
        env!("CARGO_BIN_EXE_trade-aggregator"),
        &["kafka", "schema_registry", "cassandra"],
    )
    .await;
}
