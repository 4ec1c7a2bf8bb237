//! No trade lost, end to end: a local exchange speaks Binance's documented WebSocket
//! (`<symbol>@trade` combined streams) and REST (`/api/v3/historicalTrades`) protocols and prints
//! BTCUSDT trades numbered consecutively, whoever listens. Its WebSocket loses a few trades in the
//! middle of a live connection, then drops the connection while trades go on being printed. The
//! gateway and the normalizer run as processes on the real stack.
//!
//! Afterwards `md.trades` holds every trade the exchange printed since the gateway's first one,
//! exactly once and at its price, and `md.gaps` says how each hole was found and that it was
//! filled: the normalizer found the holes, the gateway's backfill fetched them from the REST API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::domain::now_micros;
use tickflow_shared::gap::GapRecord;
use tickflow_shared::kafka;
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};
use tokio_tungstenite::tungstenite::Message as Ws;

const SYMBOL: &str = "BTCUSDT";
const LAST: u64 = 240;

fn price(id: u64) -> String {
    format!("{}.{:02}", 67_000 + id % 7, id % 100)
}

/// The exchange: every trade printed, and which ones its WebSocket must not deliver.
#[derive(Default)]
struct Exchange {
    /// (id, event time ms), in print order.
    printed: Vec<(u64, i64)>,
    /// Printed but swallowed by the WebSocket (a hole inside a live connection).
    swallow: BTreeSet<u64>,
    /// Each connection's first delivered id.
    first_sent: Vec<u64>,
    /// Set to drop the live connection.
    drop_connection: bool,
}

type Shared = Arc<Mutex<Exchange>>;

fn event(id: u64, ms: i64) -> serde_json::Value {
    serde_json::json!({"e": "trade", "E": ms, "s": SYMBOL, "t": id, "p": price(id), "q": "0.01000000", "T": ms, "m": id.is_multiple_of(2), "M": true})
}

async fn historical(
    State(ex): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::Json<Vec<serde_json::Value>> {
    let from: u64 = q["fromId"].parse().unwrap();
    let limit: usize = q["limit"].parse::<usize>().unwrap().min(50);
    let ex = ex.lock().unwrap();
    axum::Json(
        ex.printed
            .iter()
            .filter(|(id, _)| *id >= from)
            .take(limit)
            .map(|&(id, ms)| {
                let mut v = event(id, ms);
                // The REST shape, not the stream's.
                v = serde_json::json!({"id": id, "price": v["p"], "qty": v["q"], "quoteQty": "0", "time": ms, "isBuyerMaker": v["m"], "isBestMatch": true});
                v
            })
            .collect(),
    )
}

/// One WebSocket session: acknowledges the subscription, then delivers what is printed from now
/// on (minus the swallowed), until the exchange drops it.
async fn session(stream: tokio::net::TcpStream, ex: Shared) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // The gateway subscribes first.
    loop {
        match ws.next().await {
            Some(Ok(Ws::Text(text))) => {
                let request: serde_json::Value = serde_json::from_str(&text).unwrap();
                let reply = serde_json::json!({"result": null, "id": request["id"]});
                if ws.send(Ws::text(reply.to_string())).await.is_err() {
                    return;
                }
                break;
            }
            Some(Ok(_)) => continue,
            _ => return,
        }
    }
    let mut next = ex.lock().unwrap().printed.len();
    let mut first = true;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let batch: Vec<(u64, i64)> = {
            let mut e = ex.lock().unwrap();
            if e.drop_connection {
                e.drop_connection = false;
                // Gone without a close frame, as a network failure leaves it.
                return;
            }
            let batch: Vec<_> = e.printed[next..]
                .iter()
                .copied()
                .filter(|(id, _)| !e.swallow.contains(id))
                .collect();
            next = e.printed.len();
            if first {
                if let Some(&(id, _)) = batch.first() {
                    e.first_sent.push(id);
                    first = false;
                }
            }
            batch
        };
        for (id, ms) in batch {
            let frame = serde_json::json!({"stream": "btcusdt@trade", "data": event(id, ms)});
            if ws.send(Ws::text(frame.to_string())).await.is_err() {
                return;
            }
        }
        // Answer pings: read what is there without waiting.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(1), ws.next()).await
        {
        }
    }
}

async fn start_exchange() -> (SocketAddr, SocketAddr, Shared) {
    let ex: Shared = Arc::default();
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws.local_addr().unwrap();
    {
        let ex = ex.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = ws.accept().await {
                tokio::spawn(session(stream, ex.clone()));
            }
        });
    }
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest_addr = rest.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v3/historicalTrades", get(historical))
        .with_state(ex.clone());
    tokio::spawn(async move { axum::serve(rest, app).await.unwrap() });
    (ws_addr, rest_addr, ex)
}

fn normalizer_binary() -> String {
    testkit::workspace_binary(
        env!("CARGO_BIN_EXE_ingest-gateway"),
        "normalizer",
        "normalizer",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_missed_in_a_connection_and_while_reconnecting_are_all_on_md_trades_once() {
    let stack = Stack::require().await;
    let (ws_addr, rest_addr, ex) = start_exchange().await;
    let prefix = format!("{}.", testkit::unique_topic("nolost-raw"));
    let trades_topic = testkit::unique_topic("nolost-trades");
    let gaps_topic = testkit::unique_topic("nolost-gaps");
    let dir = tempfile::tempdir().unwrap();
    let instruments = dir.path().join("instruments.toml");
    std::fs::write(
        &instruments,
        "[[instrument]]\ninstrument = \"BTC-USDT\"\nbase = \"BTC\"\nquote = \"USDT\"\nasset_class = \"CRYPTO\"\nlistings = [{ provider = \"binance\", symbol = \"BTCUSDT\" }]\n",
    )
    .unwrap();
    let file = instruments.display().to_string();

    // The raw topic before the normalizer subscribes to it (the gateway would create it too).
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[kafka::TopicSpec::new(format!("{prefix}binance"), 2)],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    // The normalizer first: it creates the gaps topic the gateway's backfill reads.
    let mut normalizer = ServiceProcess::spawn(
        &normalizer_binary(),
        &stack,
        &testkit::normalizer_env(
            "nolost",
            &format!("{prefix}binance"),
            &trades_topic,
            &gaps_topic,
            &file,
        ),
    );
    normalizer
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let mut gateway = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_ingest-gateway"),
        &stack,
        &[
            ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", prefix.clone()),
            ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "false".into()),
            ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
            ("TICKFLOW_GATEWAY__INSTRUMENTS_FILE", file.clone()),
            ("TICKFLOW_GATEWAY__BINANCE__ENABLED", "true".into()),
            (
                "TICKFLOW_GATEWAY__BINANCE__URL",
                format!("ws://{ws_addr}/stream"),
            ),
            (
                "TICKFLOW_GATEWAY__BINANCE__REST_URL",
                format!("http://{rest_addr}"),
            ),
            (
                "TICKFLOW_GATEWAY__BINANCE__RECONNECT_INITIAL_MS",
                "400".into(),
            ),
            ("TICKFLOW_GATEWAY__BINANCE__RECONNECT_MAX_MS", "800".into()),
            ("TICKFLOW_GATEWAY__BINANCE__MAX_MESSAGES_PER_S", "50".into()),
            ("TICKFLOW_GATEWAY__BACKFILL__GAPS_TOPIC", gaps_topic.clone()),
            (
                "TICKFLOW_GATEWAY__BACKFILL__GROUP_ID",
                testkit::unique_name("nolost", "gw", '-'),
            ),
        ],
    );
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    // The exchange prints a trade every 20 ms: a hole of 5 in the live connection at 60, the
    // connection dropped at 130 (the gateway comes back after 0.4 to 0.8 s: some 20 to 40
    // trades printed meanwhile).
    let printing = {
        let ex = ex.clone();
        tokio::spawn(async move {
            for id in 1..=LAST {
                {
                    let mut e = ex.lock().unwrap();
                    if (60..65).contains(&id) {
                        e.swallow.insert(id);
                    }
                    if id == 130 {
                        e.drop_connection = true;
                    }
                    e.printed.push((id, now_micros() / 1000));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    printing.await.unwrap();
    let first_sent = ex.lock().unwrap().first_sent.clone();
    assert!(
        first_sent.len() >= 2,
        "the connection was dropped and came back: {first_sent:?}"
    );
    let start = first_sent[0];
    assert!(
        first_sent[1] > 131,
        "trades were printed while the gateway reconnected: {first_sent:?}"
    );

    let registry = Registry::new(&stack.registry).unwrap();
    let reader = AvroCodec::new(&registry, &[]);
    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "it",
        &testkit::unique_name("it", "nolost", '-'),
    )
    .unwrap();
    consumer
        .subscribe(&[trades_topic.as_str(), gaps_topic.as_str()])
        .unwrap();
    let mut trades: BTreeMap<u64, Vec<rust_decimal::Decimal>> = BTreeMap::new();
    let mut gaps: Vec<GapRecord> = Vec::new();
    let expected: Vec<u64> = (start..=LAST).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut settled: Option<Instant> = None;
    while Instant::now() < deadline && settled.is_none_or(|s| s.elapsed() < Duration::from_secs(3))
    {
        let filled = gaps.iter().filter(|g| g.status == "FILLED").count();
        if settled.is_none() && trades.len() >= expected.len() && filled >= 2 {
            settled = Some(Instant::now());
        }
        let Ok(message) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let Ok(message) = message else { continue };
        let value = reader.decode(message.payload().unwrap()).await.unwrap();
        if message.topic() == trades_topic {
            let trade = tickflow_shared::avro::trade_from_value(value).unwrap();
            trades
                .entry(trade.trade_id.parse().unwrap())
                .or_default()
                .push(trade.price);
        } else {
            gaps.push(GapRecord::from_value(value).unwrap());
        }
    }
    let logs = format!(
        "--- gateway ---\n{}\n--- normalizer ---\n{}",
        gateway.log(),
        normalizer.log()
    );
    let ids: Vec<u64> = trades.keys().copied().collect();
    assert_eq!(
        ids, expected,
        "every trade printed since the first one delivered\n{logs}"
    );
    for (id, prices) in &trades {
        let exact: rust_decimal::Decimal = price(*id).parse().unwrap();
        assert_eq!(
            prices,
            &vec![exact],
            "trade {id}: once, at its price\n{logs}"
        );
    }
    let mut seen: Vec<(i64, i64, String, String)> = gaps
        .iter()
        .map(|g| {
            (
                g.first_missing,
                g.last_missing,
                g.status.clone(),
                g.found.clone(),
            )
        })
        .collect();
    seen.sort();
    let reconnect = (first_sent[1] - 1) as i64;
    assert_eq!(
        seen,
        vec![
            (60, 64, "FILLED".into(), "connection".into()),
            (60, 64, "OPEN".into(), "connection".into()),
            (130, reconnect, "FILLED".into(), "reconnect".into()),
            (130, reconnect, "OPEN".into(), "reconnect".into()),
        ],
        "{logs}"
    );
    assert_eq!(
        gateway
            .metric_sum(
                "tickflow_gateway_backfill_trades_total",
                "provider=\"binance\""
            )
            .await,
        (5 + reconnect - 129) as f64
    );
    gateway.terminate(Duration::from_secs(20));
    normalizer.terminate(Duration::from_secs(20));
}
