//! Against the real local stack (`scripts/stack up`): start, ready, metrics, clean stop; and a
//! dependency that is not there.

use std::time::Duration;

use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

#[tokio::test]
async fn starts_ready_and_stops_cleanly_on_sigterm() {
    testkit::check_service_lifecycle_with(
        env!("CARGO_BIN_EXE_fair-price"),
        &["kafka", "schema_registry", "cassandra"],
        &[("TICKFLOW_FAIR_PRICE__GRPC_LISTEN", "127.0.0.1:0".into())],
    )
    .await;
}

/// The registry and Cassandra point at ports where nothing listens: the service stays alive,
/// says in /readyz which dependency is down and why, retries with backoff instead of spinning,
/// logs it, and still stops cleanly.
#[tokio::test]
async fn unreachable_dependencies_are_reported_not_fatal() {
    let stack = Stack::require().await;
    let dead_registry = format!("http://127.0.0.1:{}/apis/ccompat/v7", testkit::free_port());
    let dead_cassandra = format!("127.0.0.1:{}", testkit::free_port());
    let mut service = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_fair-price"),
        &stack,
        &[
            ("TICKFLOW_REGISTRY__URL", dead_registry),
            ("TICKFLOW_CASSANDRA__CONTACT_POINTS", dead_cassandra),
            ("TICKFLOW_FAIR_PRICE__GRPC_LISTEN", "127.0.0.1:0".into()),
        ],
    );
    service
        .wait_for("/healthz", 200, Duration::from_secs(30))
        .await;
    let cpu_before = service.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cpu_used = service.cpu_seconds() - cpu_before;
    assert!(service.is_running(), "it must not exit:\n{}", service.log());
    // A retry loop without backoff would burn about one CPU-second per second here.
    assert!(
        cpu_used < 2.0,
        "used {cpu_used} CPU-s in 4 s while waiting:\n{}",
        service.log()
    );

    let body = service
        .wait_for("/readyz", 503, Duration::from_secs(5))
        .await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["dependencies"]["kafka"]["ready"], true, "{ready}");
    for down in ["schema_registry", "cassandra"] {
        assert_eq!(ready["dependencies"][down]["ready"], false, "{ready}");
        let detail = ready["dependencies"][down]["detail"].as_str().unwrap_or("");
        assert!(
            !detail.is_empty() && detail != "not checked yet",
            "{down}: {ready}"
        );
    }
    let log = service.log();
    assert!(log.contains("dependency is down"), "{log}");
    assert!(
        log.contains("schema registration failed, will retry"),
        "{log}"
    );

    let (code, took) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", service.log());
    assert!(took < Duration::from_secs(6), "took {took:?}");
}
