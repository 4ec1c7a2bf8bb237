//! Backfill against the real stack and local REST servers that speak Binance's
//! (`/api/v3/historicalTrades`, by `fromId`), Coinbase's (`/products/<id>/trades`, by the
//! `after` cursor, newest first) and Kraken's (`/0/public/Trades`, by time: `since` in ns, the
//! `last` cursor, trades as arrays) documented formats: they paginate (at most 100 trades a
//! page), rate-limit (a `429` with `Retry-After`, then a `418`; Kraken's error in a 200's body),
//! and Binance has forgotten its oldest trades. Gaps are published on a gaps topic as the
//! normalizer does (plus records the backfill must leave alone: a FILLED gap, a gap of a
//! disabled provider).
//!
//! Afterwards the raw topics hold, on the `backfill` channel, every missing trade the servers
//! still have exactly once, each frame read back by the provider's live parser into the trade the
//! server holds (id, price, size), and the forgotten ones are counted as unrecoverable and
//! announced to the normalizer on the raw topic.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tickflow_providers::{Frame, Provider};
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::gap::{GapRecord, Unrecoverable, UNRECOVERABLE_CHANNEL};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

/// The price and size every server gives trade `id` (so the test can recompute them).
fn price(id: u64) -> String {
    format!("{}.{:08}", 60_000 + id % 977, id * 7 % 100_000_000)
}
fn size(id: u64) -> String {
    format!("0.{:06}", id % 999_983 + 1)
}

const PAGE_MAX: u64 = 100;
/// Binance keeps trades from this id on.
const BINANCE_OLDEST: u64 = 50;
const NEWEST: u64 = 1_000;

#[derive(Default)]
struct Server {
    binance_requests: AtomicU32,
    coinbase_requests: AtomicU32,
    kraken_requests: AtomicU32,
}

/// Kraken's time of trade `id`, µs: a quarter second apart.
fn kraken_time(id: u64) -> i64 {
    1_700_000_000_000_000 + id as i64 * 250_000 + 1
}

async fn kraken(
    State(server): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let n = server.kraken_requests.fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        // Kraken says it in the body, with a 200.
        return axum::Json(serde_json::json!({"error": ["EGeneral:Too many requests"]}))
            .into_response();
    }
    assert_eq!(q.get("pair").map(String::as_str), Some("BTCUSD"));
    let since: i128 = q["since"].parse().unwrap();
    let count: usize = q["count"].parse::<usize>().unwrap().min(PAGE_MAX as usize);
    let page: Vec<u64> = (1..=NEWEST)
        .filter(|id| kraken_time(*id) as i128 * 1_000 > since)
        .take(count)
        .collect();
    let last = page
        .last()
        .map_or(since, |id| kraken_time(*id) as i128 * 1_000);
    // Seven digits of fraction, as Kraken writes them; the JSON number's text is kept.
    let items: Vec<String> = page
        .iter()
        .map(|&id| {
            let t = kraken_time(id);
            format!(
                r#"["{}","{}",{}.{:06}7,"{}","l","",{id}]"#,
                price(id),
                size(id),
                t / 1_000_000,
                t % 1_000_000,
                if id % 2 == 0 { "b" } else { "s" }
            )
        })
        .collect();
    let body = format!(
        r#"{{"error":[],"result":{{"XXBTZUSD":[{}],"last":"{last}"}}}}"#,
        items.join(",")
    );
    ([("content-type", "application/json")], body).into_response()
}

async fn binance(
    State(server): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let n = server.binance_requests.fetch_add(1, Ordering::SeqCst);
    if n == 1 {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "1".parse().unwrap());
        return (
            StatusCode::TOO_MANY_REQUESTS,
            h,
            "{\"code\":-1003,\"msg\":\"Too much request weight used\"}",
        )
            .into_response();
    }
    if n == 3 {
        return (
            StatusCode::IM_A_TEAPOT,
            "{\"code\":-1003,\"msg\":\"Way too much request weight used; IP banned\"}",
        )
            .into_response();
    }
    assert_eq!(q.get("symbol").map(String::as_str), Some("BTCUSDT"));
    let from: u64 = q["fromId"].parse().unwrap();
    let limit: u64 = q["limit"].parse::<u64>().unwrap().min(PAGE_MAX);
    let items: Vec<serde_json::Value> = (from.max(BINANCE_OLDEST)..=NEWEST)
        .take(limit as usize)
        .map(|id| serde_json::json!({"id": id, "price": price(id), "qty": size(id), "quoteQty": "0", "time": 1_700_000_000_000_i64 + id as i64, "isBuyerMaker": id % 2 == 0, "isBestMatch": true}))
        .collect();
    axum::Json(items).into_response()
}

async fn coinbase(
    State(server): State<Arc<Server>>,
    Path(product): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let n = server.coinbase_requests.fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "1".parse().unwrap());
        return (
            StatusCode::TOO_MANY_REQUESTS,
            h,
            "{\"message\":\"Public rate limit exceeded\"}",
        )
            .into_response();
    }
    assert_eq!(product, "BTC-USD");
    let after: u64 = q["after"].parse().unwrap();
    let limit: u64 = q["limit"].parse::<u64>().unwrap().min(PAGE_MAX);
    // Newest first, the ids below the cursor.
    let items: Vec<serde_json::Value> = (1..after.min(NEWEST + 1))
        .rev()
        .take(limit as usize)
        .map(|id| serde_json::json!({"time": "2025-11-22T00:00:00.000001Z", "trade_id": id, "price": price(id), "size": size(id), "side": if id % 2 == 0 { "buy" } else { "sell" }}))
        .collect();
    axum::Json(items).into_response()
}

async fn serve() -> (SocketAddr, Arc<Server>) {
    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/api/v3/historicalTrades", get(binance))
        .route("/products/{product}/trades", get(coinbase))
        .route("/0/public/Trades", get(kraken))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, server)
}

fn gap(provider: &str, symbol: &str, first: i64, last: i64, status: &str) -> GapRecord {
    GapRecord {
        provider: provider.into(),
        exchange: provider.into(),
        symbol: symbol.into(),
        instrument: "BTC-USD".into(),
        first_missing: first,
        last_missing: last,
        status: status.into(),
        still_missing: if status == "OPEN" {
            last - first + 1
        } else {
            0
        },
        found: "reconnect".into(),
        reason: String::new(),
        source: "md.raw.x/0@1".into(),
        at: 1,
        after_time: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_trades_are_fetched_paced_and_put_on_the_raw_topic_once() {
    let stack = Stack::require().await;
    let (addr, server) = serve().await;
    let prefix = format!("{}.", testkit::unique_topic("backfill-raw"));
    let gaps_topic = testkit::unique_topic("backfill-gaps");
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(&admin, &[TopicSpec::new(&gaps_topic, 1)], &BTreeMap::new())
        .await
        .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    registry.register(&gaps_topic, avro::GAP).await.unwrap();
    let codec = AvroCodec::new(&registry, &[(gaps_topic.as_str(), avro::GAP)]);
    let producer = kafka::producer(&stack.kafka, "it").unwrap();
    let records = [
        gap("binance", "BTCUSDT", 20, 260, "OPEN"),
        gap("binance", "BTCUSDT", 300, 310, "FILLED"),
        // Kraken pages by time: from the trade before the gap.
        GapRecord {
            after_time: kraken_time(599),
            ..gap("kraken", "BTC/USD", 600, 750, "OPEN")
        },
        gap("finnhub", "BINANCE:BTCUSDT", 5, 9, "OPEN"),
        gap("coinbase", "BTC-USD", 101, 345, "OPEN"),
        gap("binance", "BTCUSDT", 400, 403, "OPEN"),
    ];
    for g in &records {
        let bytes = codec.encode(&gaps_topic, g.to_value()).await.unwrap();
        producer
            .send(
                FutureRecord::to(&gaps_topic).key(&g.key()).payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // No listing for Binance or Coinbase: nothing to subscribe, no live connection.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "[[instrument]]\ninstrument = \"SOL-USD\"\nbase = \"SOL\"\nquote = \"USD\"\nasset_class = \"CRYPTO\"\nlistings = [{ provider = \"simulator\", symbol = \"SOL-USD\" }]\n",
    )
    .unwrap();
    let rest = format!("http://{addr}");
    let mut env: Vec<(&str, String)> = vec![
        ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", prefix.clone()),
        ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "false".into()),
        ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
        (
            "TICKFLOW_GATEWAY__INSTRUMENTS_FILE",
            file.path().display().to_string(),
        ),
        ("TICKFLOW_GATEWAY__BACKFILL__GAPS_TOPIC", gaps_topic.clone()),
        (
            "TICKFLOW_GATEWAY__BACKFILL__GROUP_ID",
            testkit::unique_name("backfill", "gw", '-'),
        ),
        ("TICKFLOW_GATEWAY__BACKFILL__PAGE_LIMIT", "1000".into()),
    ];
    for p in ["BINANCE", "COINBASE", "KRAKEN"] {
        for (k, v) in [
            ("ENABLED", "true".to_string()),
            ("URL", "ws://127.0.0.1:9".into()),
            ("REST_URL", rest.clone()),
            ("RATE_LIMIT_BACKOFF_MS", "700".into()),
            ("RECONNECT_INITIAL_MS", "50".into()),
            ("RECONNECT_MAX_MS", "200".into()),
        ] {
            env.push((
                Box::leak(format!("TICKFLOW_GATEWAY__{p}__{k}").into_boxed_str()),
                v,
            ));
        }
    }
    let started = Instant::now();
    let mut gateway = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ingest-gateway"), &stack, &env);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    // Expected: Binance 50..=260 (20..=49 forgotten) and 400..=403, Coinbase 101..=345, Kraken
    // 600..=750.
    let mut expected: BTreeMap<(&str, u64), (String, String)> = BTreeMap::new();
    for id in (BINANCE_OLDEST..=260).chain(400..=403) {
        expected.insert(("binance", id), (price(id), size(id)));
    }
    for id in 101..=345 {
        expected.insert(("coinbase", id), (price(id), size(id)));
    }
    for id in 600..=750 {
        expected.insert(("kraken", id), (price(id), size(id)));
    }
    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "it",
        &testkit::unique_name("it", "backfill", '-'),
    )
    .unwrap();
    let raw_binance = format!("{prefix}binance");
    let raw_coinbase = format!("{prefix}coinbase");
    let raw_kraken = format!("{prefix}kraken");
    consumer
        .subscribe(&[
            raw_binance.as_str(),
            raw_coinbase.as_str(),
            raw_kraken.as_str(),
        ])
        .unwrap();
    let reader = AvroCodec::new(&registry, &[]);
    let mut got: BTreeMap<(&str, u64), Vec<(String, String)>> = BTreeMap::new();
    let mut gone: Vec<(String, Unrecoverable)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut settled: Option<Instant> = None;
    while Instant::now() < deadline && settled.is_none_or(|s| s.elapsed() < Duration::from_secs(3))
    {
        if got.len() >= expected.len() && settled.is_none() {
            settled = Some(Instant::now());
        }
        let Ok(message) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let Ok(message) = message else { continue };
        let envelope = reader.decode_raw(message.payload().unwrap()).await.unwrap();
        if envelope.channel == UNRECOVERABLE_CHANNEL {
            assert_eq!(message.key(), Some(b"BTCUSDT".as_slice()));
            gone.push((
                envelope.provider.clone(),
                serde_json::from_slice::<Unrecoverable>(&envelope.payload).unwrap(),
            ));
            continue;
        }
        assert_eq!(envelope.channel, "backfill");
        let provider: &'static dyn Provider =
            tickflow_providers::by_id(&envelope.provider).unwrap();
        let Frame::Trades(trades) = provider.parse(&envelope.payload).unwrap() else {
            panic!(
                "not a trade frame: {:?}",
                String::from_utf8_lossy(&envelope.payload)
            )
        };
        for t in trades {
            assert_eq!(
                message.key(),
                Some(t.symbol.as_bytes()),
                "keyed by the symbol"
            );
            let id = provider.trade_number(&t).unwrap();
            got.entry((provider.id().as_str(), id))
                .or_default()
                .push((t.price.to_string(), t.size.to_string()));
        }
    }
    let log = gateway.log();
    let twice: Vec<_> = got
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "fetched twice: {twice:?}\n{log}");
    let got: BTreeMap<(&str, u64), (String, String)> =
        got.into_iter().map(|(k, mut v)| (k, v.remove(0))).collect();
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(missing.is_empty(), "not fetched: {missing:?}\n{log}");
    assert_eq!(got, expected, "{log}");

    // Paced and polite: several pages each, a 429 waited out for its Retry-After, a 418 for the
    // rate-limit backoff.
    assert!(server.binance_requests.load(Ordering::SeqCst) >= 5);
    assert!(server.coinbase_requests.load(Ordering::SeqCst) >= 4);
    assert_eq!(
        server.kraken_requests.load(Ordering::SeqCst),
        3,
        "one refused, then two pages: 599..=698 and 699..=798 (the walk stops at 750)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_700),
        "waited out 1 s + 0.7 s"
    );
    let metric = |name: &'static str, labels: &'static str| gateway.metric_sum(name, labels);
    assert_eq!(
        metric(
            "tickflow_gateway_backfill_unrecoverable_trades_total",
            "provider=\"binance\""
        )
        .await,
        (BINANCE_OLDEST - 20) as f64
    );
    assert_eq!(
        metric(
            "tickflow_gateway_backfill_requests_total",
            "outcome=\"rate_limited\""
        )
        .await,
        4.0
    );
    assert_eq!(
        metric("tickflow_gateway_backfill_trades_total", "provider=").await,
        expected.len() as f64
    );
    assert_eq!(
        metric("tickflow_gateway_backfill_gaps_total", "provider=").await,
        4.0,
        "two Binance gaps, one Coinbase and one Kraken gap walked; the others left alone"
    );
    assert!(
        log.contains("the provider no longer serves these trades"),
        "{log}"
    );
    // And the normalizer is told, in the symbol's partition, after the trades.
    assert_eq!(
        gone,
        vec![(
            "binance".to_string(),
            Unrecoverable {
                symbol: "BTCUSDT".into(),
                first: 20,
                last: BINANCE_OLDEST - 1
            }
        )]
    );
    gateway.terminate(Duration::from_secs(20));
}
