//! Zombie fencing, against the real stack. An instance paused past its session timeout (SIGSTOP)
//! loses its partitions to another, and when it resumes it must not overwrite its successor's
//! results. While the scenario's stream runs (see `support/scenario.rs`):
//! 1. instance A runs alone, its Cassandra traffic through a proxy the test can hold;
//! 2. the proxy holds A's writes (a flush in flight), then A is stopped with SIGSTOP;
//! 3. B starts and, after A's session timeout, owns every partition: it claims them, restores
//!    A's checkpoints and writes newer results over the windows A's held flush also wrote;
//! 4. the proxy lets A's held writes through, and A is resumed with SIGCONT: they land after
//!    B's, stamped within A's lease, below everything B stamps; A finds its partitions claimed
//!    (fenced) and drops them instead of writing on.
//!
//! Afterwards every result equals a batch recomputation of the same input, in Cassandra and on
//! the candle topic (by write stamp).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickflow_testkit::ServiceProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tickflow_testkit::aggregator as support;

use support::scenario::{Scenario, PARTITIONS};

const HANDOVERS: &str = "tickflow_aggregator_partition_handovers_total";

/// A TCP proxy to `upstream` that forwards nothing in either direction while held.
struct HoldingProxy {
    port: u16,
    held: Arc<AtomicBool>,
}

impl HoldingProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicBool::new(false));
        let flag = held.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, flag.clone()));
                tokio::spawn(pipe(server_read, client_write, flag.clone()));
            }
        });
        Self { port, held }
    }

    fn hold(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    held: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn signal(service: &ServiceProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {}", service.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_paused_past_its_session_timeout_cannot_overwrite_its_successor() {
    let mut scenario = Scenario::start(
        "zombie",
        12_000,
        150,
        &[
            ("TICKFLOW_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TICKFLOW_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "1000"),
            ("TICKFLOW_AGGREGATOR__CHECKPOINT_INTERVAL_MS", "1000"),
        ],
    )
    .await;
    let binary = env!("CARGO_BIN_EXE_trade-aggregator");
    let proxy = HoldingProxy::start(scenario.stack.cassandra.contact_points[0].clone()).await;

    let mut env_a = scenario.env.clone();
    env_a.retain(|(k, _)| *k != "TICKFLOW_CASSANDRA__CONTACT_POINTS");
    env_a.push((
        "TICKFLOW_CASSANDRA__CONTACT_POINTS",
        format!("127.0.0.1:{}", proxy.port),
    ));
    env_a.push(("TICKFLOW_AGGREGATOR__INSTANCE_ID", "aggregator-a".into()));
    let mut a = ServiceProcess::spawn(binary, &scenario.stack, &env_a);
    a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    a.wait_for_log("consuming from the checkpoints", Duration::from_secs(30))
        .await;
    // A checkpoints (every second) and writes candles for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A's writes are held mid-flush; then A stops.
    proxy.hold(true);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    signal(&a, "-STOP");
    assert!(
        !scenario.producing.is_finished(),
        "the stream ended before A was paused"
    );

    // B takes every partition once A's session has timed out, and writes on.
    let mut env_b = scenario.env.clone();
    env_b.push(("TICKFLOW_AGGREGATOR__INSTANCE_ID", "aggregator-b".into()));
    let mut b = ServiceProcess::spawn(binary, &scenario.stack, &env_b);
    b.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.metric_sum(HANDOVERS, "kind=\"assigned\"").await < f64::from(PARTITIONS) {
        assert!(
            Instant::now() < deadline,
            "B never took over A's partitions:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    // A's held writes land after B's; A wakes.
    proxy.hold(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&a, "-CONT");
    a.wait_for_log("fenced", Duration::from_secs(60)).await;
    assert!(
        a.metric_sum(HANDOVERS, "kind=\"fenced\"").await > 0.0,
        "A was fenced but did not count it:\n{}",
        a.log()
    );

    scenario.produced().await;
    // A may own partitions again after it rejoined; its results count from then on.
    let (code, _) = a.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", a.log());
    scenario
        .verify(
            &mut b,
            "an instance paused across a rebalance and resumed after its successor wrote",
        )
        .await;
}
