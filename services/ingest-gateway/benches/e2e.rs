//! End to end through the real stack (`scripts/stack up`): a local WebSocket server speaking
//! Binance's combined-stream protocol answers the gateway's subscribe and then sends N trade
//! frames as fast as the socket takes them; the gateway (the binary of this build profile)
//! forwards each into Kafka (idempotent producer, acks=all). Prints sustained messages/s
//! (first frame sent → last frame acknowledged by Kafka), CPU-seconds per million messages, peak
//! RSS, and the gateway's own receive→Kafka-ack latency p50/p99 (its summary metric). The same
//! frames are also read by a bare WebSocket client beforehand, side by side in one run: the
//! ceiling of this machine's loopback WebSocket leg alone.
//!
//!     cargo bench -p ingest-gateway --bench e2e                  # 500,000 frames
//!     TICKFLOW_BENCH_FRAMES=1000000 cargo bench -p ingest-gateway --bench e2e
//!     TICKFLOW_BENCH_RATE=50000 cargo bench -p ingest-gateway --bench e2e   # paced: latency below saturation
//!
//! Kafka, the registry and the bench's server share the same two cores and are not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tickflow_testkit::{self as testkit, process_usage, ServiceProcess, Stack};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const SYMBOLS: [&str; 4] = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"];

fn frames(count: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..count)
            .map(|n| {
                let s = SYMBOLS[n % SYMBOLS.len()];
                let ms = 1_700_000_000_000u64 + n as u64;
                format!(
                    r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{ms},"s":"{s}","t":{n},"p":"{}.{:02}","q":"0.01200000","T":{ms},"m":{},"M":true}}}}"#,
                    s.to_ascii_lowercase(),
                    60_000 + n % 500,
                    n % 100,
                    n % 2 == 0
                )
            })
            .collect(),
    )
}

/// Serves one connection at a time: waits for a SUBSCRIBE, acknowledges it, sends every frame,
/// then keeps the connection open (reading) until the client goes.
async fn serve(
    listener: TcpListener,
    frames: Arc<Vec<String>>,
    rate: usize,
    started: tokio::sync::mpsc::UnboundedSender<Instant>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let frames = frames.clone();
        let started = started.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                    continue;
                };
                if v["method"] == "SUBSCRIBE" {
                    let ack = serde_json::json!({"result": null, "id": v["id"]}).to_string();
                    if ws.send(Message::text(ack)).await.is_err() {
                        return;
                    }
                    break;
                }
            }
            let _ = started.send(Instant::now());
            // Paced: rate/100 frames every 10 ms; unpaced: as fast as the socket takes them.
            let per_tick = if rate == 0 {
                usize::MAX
            } else {
                (rate / 100).max(1)
            };
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for (i, f) in frames.iter().enumerate() {
                if rate > 0 && i % per_tick == 0 {
                    let _ = ws.flush().await;
                    tick.tick().await;
                }
                let sent = if i % 256 == 255 {
                    ws.send(Message::text(f.clone())).await
                } else {
                    ws.feed(Message::text(f.clone())).await
                };
                if sent.is_err() {
                    return;
                }
            }
            let _ = ws.flush().await;
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}

fn metric(metrics: &str, name: &str, filter: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::var("TICKFLOW_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let rate: usize = std::env::var("TICKFLOW_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stack = Stack::require().await;
    let frames = frames(count);
    let bytes: usize = frames.iter().map(String::len).sum();

    // The ceiling: a bare client reads every frame from the same kind of server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(serve(listener, frames.clone(), 0, started_tx));
    let (cpu0, _) = process_usage(std::process::id());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/stream"))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#,
    ))
    .await
    .unwrap();
    let mut got = 0usize;
    let mut t0 = None;
    while got < count + 1 {
        let Some(Ok(m)) = ws.next().await else { break };
        if matches!(m, Message::Text(_)) {
            got += 1;
            if got == 1 {
                t0 = Some(Instant::now());
            }
        }
    }
    let bare = t0.map(|t| t.elapsed()).unwrap_or_default();
    let (cpu1, _) = process_usage(std::process::id());
    drop(ws);
    server.abort();
    let _ = started_rx.try_recv();

    // The gateway.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(serve(listener, frames.clone(), rate, started_tx));
    let dir = tempfile::tempdir().unwrap();
    let instruments = dir.path().join("instruments.toml");
    let mut text = String::new();
    for s in SYMBOLS {
        text.push_str(&format!(
            "[[instrument]]\ninstrument = \"{}-USDT\"\nbase = \"{}\"\nquote = \"USDT\"\nasset_class = \"CRYPTO\"\nlistings = [{{ provider = \"binance\", symbol = \"{s}\" }}]\n\n",
            &s[..s.len() - 4],
            &s[..s.len() - 4]
        ));
    }
    std::fs::write(&instruments, text).unwrap();
    let prefix = format!("{}.raw.", testkit::unique_topic("bench-gw"));
    let env = vec![
        ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", prefix.clone()),
        ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "false".to_string()),
        (
            "TICKFLOW_GATEWAY__INSTRUMENTS_FILE",
            instruments.display().to_string(),
        ),
        ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
        ("TICKFLOW_GATEWAY__BINANCE__ENABLED", "true".to_string()),
        (
            "TICKFLOW_GATEWAY__BINANCE__URL",
            format!("ws://{addr}/stream"),
        ),
        (
            "TICKFLOW_GATEWAY__BINANCE__MAX_MESSAGES_PER_S",
            "100".to_string(),
        ),
        ("TICKFLOW_SERVICE__LOG_LEVEL", "warn".to_string()),
    ];
    let mut gateway = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ingest-gateway"), &stack, &env);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let (cpu_ready, _) = process_usage(gateway.pid());
    let start = tokio::time::timeout(Duration::from_secs(30), started_rx.recv())
        .await
        .expect("the gateway subscribes")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_report = Instant::now();
    let (delivered, metrics) = loop {
        let metrics = gateway
            .get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let delivered =
            metric(&metrics, "tickflow_gateway_delivered_total", "binance").unwrap_or(0.0) as usize;
        // count frames + the subscribe acknowledgement.
        if delivered > count || Instant::now() > deadline {
            break (delivered, metrics);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("  {delivered} of {} acknowledged ...", count + 1);
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = start.elapsed();
    let (cpu_done, rss) = process_usage(gateway.pid());
    let p50 = metric(
        &metrics,
        "tickflow_gateway_receive_to_ack_seconds{",
        "quantile=\"0.5\"",
    );
    let p99 = metric(
        &metrics,
        "tickflow_gateway_receive_to_ack_seconds{",
        "quantile=\"0.99\"",
    );
    let _ = gateway.terminate(Duration::from_secs(20));
    server.abort();

    let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "ingest-gateway end-to-end, {count} Binance trade frames ({} bytes avg), loopback WebSocket -> Kafka (acks=all), sent {}",
        bytes / count.max(1),
        if rate == 0 { "as fast as possible".to_string() } else { format!("at {rate}/s") }
    );
    println!(
        "  bare WebSocket client, read only : {:>9.0} msg/s   {:>5.2} CPU-s per million (bench process)",
        per_s(count, bare),
        (cpu1 - cpu0) / count as f64 * 1e6
    );
    println!(
        "  gateway, received -> Kafka ack   : {:>9.0} msg/s   {:>5.2} CPU-s per million   peak RSS {} MiB   {} of {} acknowledged",
        per_s(delivered.min(count), elapsed),
        (cpu_done - cpu_ready) / count as f64 * 1e6,
        rss / (1 << 20),
        delivered,
        count + 1
    );
    println!(
        "  gateway receive -> ack latency    : p50 {} ms   p99 {} ms (its summary metric, recent window)",
        p50.map_or("?".into(), |v| format!("{:.1}", v * 1e3)),
        p99.map_or("?".into(), |v| format!("{:.1}", v * 1e3))
    );
    println!(
        "  ratio gateway / bare client       : {:.2}",
        per_s(delivered.min(count), elapsed) / per_s(count, bare)
    );
}
