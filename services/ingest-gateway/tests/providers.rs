//! The gateway against local servers that speak Binance's, Coinbase's, Kraken's and Finnhub's
//! WebSocket protocols, writing to the real Kafka of the local stack.
//!
//! After each run, every frame a server sent during a live connection is on Kafka exactly once:
//! on the raw topic as sent (byte for byte), or on the dead-letter topic with its reason.

use tickflow_testkit::providers as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use support::{Dialect, Fault, ProviderServer, Sent};
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::kafka;
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

const TOKEN: &str = "admin-secret";

/// An instruments file: `count` instruments per provider, plus extras.
fn instruments(entries: &[(&str, &str, &str)]) -> String {
    let mut by_instrument: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (instrument, provider, symbol) in entries {
        by_instrument
            .entry(instrument)
            .or_default()
            .push((provider, symbol));
    }
    let mut out = String::new();
    for (instrument, listings) in by_instrument {
        let (base, quote) = instrument.split_once('-').unwrap_or((instrument, "USD"));
        out.push_str(&format!(
            "[[instrument]]\ninstrument = \"{instrument}\"\nbase = \"{base}\"\nquote = \"{quote}\"\nasset_class = \"CRYPTO\"\nlistings = [\n"
        ));
        for (provider, symbol) in listings {
            out.push_str(&format!(
                "  {{ provider = \"{provider}\", symbol = \"{symbol}\" }},\n"
            ));
        }
        out.push_str("]\n\n");
    }
    out
}

fn provider_env(name: &str, url: &str) -> Vec<(String, String)> {
    let upper = name.to_ascii_uppercase();
    [
        ("ENABLED", "true".to_string()),
        ("URL", url.to_string()),
        ("PING_INTERVAL_MS", "300".into()),
        ("SILENCE_TIMEOUT_MS", "1500".into()),
        ("RECONNECT_INITIAL_MS", "50".into()),
        ("RECONNECT_MAX_MS", "400".into()),
        ("MAX_MESSAGES_PER_S", "100".into()),
        ("RATE_LIMIT_BACKOFF_MS", "500".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("TICKFLOW_GATEWAY__{upper}__{k}"), v))
    .collect()
}

/// What the gateway wrote: raw payloads and dead letters (reason, payload, original length),
/// by provider.
#[derive(Default, Debug)]
struct OnKafka {
    raw: BTreeMap<String, Vec<(String, i64, Vec<u8>)>>,
    dead: BTreeMap<String, Vec<(String, Vec<u8>, usize)>>,
}

/// Reads the topics until nothing new arrives for a few seconds.
async fn read_all(stack: &Stack, topics: &[String], dlq: &str) -> OnKafka {
    let registry = Registry::new(&stack.registry).unwrap();
    let codec = AvroCodec::new(&registry, &[]);
    let consumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "gwp", '-'))
            .unwrap();
    let mut all: Vec<&str> = topics.iter().map(String::as_str).collect();
    all.push(dlq);
    consumer.subscribe(&all).unwrap();
    let mut out = OnKafka::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut idle = 0;
    while Instant::now() < deadline && idle < 4 {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
        else {
            idle += 1;
            continue;
        };
        idle = 0;
        let message = message.unwrap();
        let payload = message.payload().unwrap_or_default().to_vec();
        if message.topic() == dlq {
            let headers = message.headers().expect("dead letters carry headers");
            let header = |key: &str| -> String {
                headers
                    .iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            out.dead
                .entry(header("tickflow.provider"))
                .or_default()
                .push((
                    header("tickflow.reason"),
                    payload,
                    header("tickflow.original_length").parse().unwrap_or(0),
                ));
        } else {
            let envelope = codec.decode_raw(&payload).await.unwrap();
            out.raw.entry(envelope.provider.clone()).or_default().push((
                envelope.connection_id,
                envelope.sequence,
                envelope.payload,
            ));
        }
    }
    out
}

/// Every frame the server sent is on Kafka once, and nothing else is.
fn check_exactly_once(provider: &str, sent: &[Sent], got: &OnKafka, dlq_max: usize) {
    let mut expected: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let mut invalid_utf8 = 0;
    for s in sent {
        match s {
            Sent::Text(t) => *expected.entry(t.as_bytes().to_vec()).or_default() += 1,
            Sent::InvalidUtf8 => invalid_utf8 += 1,
        }
    }
    let mut found: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for (_, _, payload) in got.raw.get(provider).into_iter().flatten() {
        *found.entry(payload.clone()).or_default() += 1;
    }
    let mut utf8_dead = 0;
    for (reason, payload, length) in got.dead.get(provider).into_iter().flatten() {
        match reason.as_str() {
            "invalid_utf8" => utf8_dead += 1,
            "oversized" => {
                // Kept up to the limit: find the frame it starts.
                let full = expected
                    .keys()
                    .find(|k| {
                        k.len() == *length
                            && k.starts_with(payload)
                            && payload.len() == dlq_max.min(k.len())
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        panic!("{provider}: an oversized dead letter matches no frame sent")
                    });
                *found.entry(full).or_default() += 1;
            }
            _ => *found.entry(payload.clone()).or_default() += 1,
        }
    }
    assert_eq!(
        utf8_dead, invalid_utf8,
        "{provider}: invalid UTF-8 frames vs their dead letters"
    );
    let missing: Vec<String> = expected
        .iter()
        .filter(|(k, n)| found.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, _)| String::from_utf8_lossy(&k[..k.len().min(120)]).into_owned())
        .take(5)
        .collect();
    let extra: Vec<String> = found
        .iter()
        .filter(|(k, n)| expected.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, _)| String::from_utf8_lossy(&k[..k.len().min(120)]).into_owned())
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{provider}: sent but not on Kafka: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{provider}: on Kafka more often than sent: {extra:?}"
    );
    // Per session, sequence numbers 0..n without a gap (dead letters take their numbers too,
    // so the raw topic alone may have gaps exactly where those are).
    let mut sessions: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (session, sequence, _) in got.raw.get(provider).into_iter().flatten() {
        assert!(
            sessions.entry(session).or_default().insert(*sequence),
            "{provider}: sequence {sequence} twice in {session}"
        );
    }
    let dead = got.dead.get(provider).map_or(0, Vec::len) as i64;
    let gaps: i64 = sessions
        .values()
        .map(|s| s.iter().next_back().map_or(0, |last| last + 1) - s.len() as i64)
        .sum();
    assert!(
        gaps <= dead,
        "{provider}: {gaps} sequence gaps but only {dead} dead letters"
    );
    println!(
        "{provider}: {} frames sent, all on Kafka once ({} sessions, {dead} dead letters)",
        sent.len(),
        sessions.len()
    );
}

async fn admin(method: &str, url: String, body: Option<Value>, token: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    request = request.bearer_auth(token).timeout(Duration::from_secs(5));
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("admin API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits (up to 20 s) until the gateways have together read as many bytes as the servers wrote
/// while connections were live. Stopping a gateway earlier loses what is still in a socket buffer
/// with the connection, as for any client; a loaded machine can take longer than a fixed pause.
async fn wait_until_read(servers: &[&ProviderServer], gateways: &[&ServiceProcess]) {
    let written: u64 = servers
        .iter()
        .flat_map(|s| s.sent())
        .map(|s| match s {
            Sent::Text(t) => t.len() as u64,
            Sent::InvalidUtf8 => 0,
        })
        .sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut read = 0.0;
        for g in gateways {
            let (_, metrics) = g.get("/metrics").await.unwrap_or_default();
            read += testkit::metric_total(&metrics, "tickflow_gateway_received_bytes_total");
        }
        if read >= written as f64 || std::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_providers_with_faults_runtime_changes_and_reload() {
    let stack = Stack::require().await;
    let every = Duration::from_millis(4);
    let binance = ProviderServer::start(Dialect::Binance, 600, every, None).await;
    let coinbase = ProviderServer::start(Dialect::Coinbase, 600, every, None).await;
    let kraken = ProviderServer::start(Dialect::Kraken, 600, every, Some("BAD/USD")).await;
    let finnhub = ProviderServer::start(Dialect::Finnhub, 600, every, None).await;

    let dir = tempfile::tempdir().unwrap();
    let instruments_path = dir.path().join("instruments.toml");
    std::fs::write(
        &instruments_path,
        instruments(&[
            ("BTC-USDT", "binance", "BTCUSDT"),
            ("ETH-USDT", "binance", "ETHUSDT"),
            ("BTC-USD", "coinbase", "BTC-USD"),
            ("ETH-USD", "coinbase", "ETH-USD"),
            ("SOL-USD", "coinbase", "SOL-USD"),
            ("BTC-USD", "kraken", "BTC/USD"),
            ("ETH-USD", "kraken", "ETH/USD"),
            ("SOL-USD", "kraken", "SOL/USD"),
            ("BAD-USD", "kraken", "BAD/USD"),
            ("AAPL-USD", "finnhub", "AAPL"),
            ("BTC-USDT", "finnhub", "BINANCE:BTCUSDT"),
        ]),
    )
    .unwrap();
    // Coinbase's list lives in the config file, which is edited later (reload).
    let config_path = dir.path().join("gateway.toml");
    let write_config = |coinbase_instruments: &[&str]| {
        let list: Vec<String> = coinbase_instruments
            .iter()
            .map(|i| format!("{i:?}"))
            .collect();
        std::fs::write(
            &config_path,
            format!("[gateway.coinbase]\ninstruments = [{}]\n", list.join(", ")),
        )
        .unwrap();
    };
    write_config(&["BTC-USD", "ETH-USD"]);

    let prefix = format!("{}.raw.", testkit::unique_topic("gwp"));
    let dlq = format!("{}.dlq", testkit::unique_topic("gwp"));
    let admin_port = testkit::free_port();
    let dlq_max = 4096usize;
    let mut env: Vec<(String, String)> = vec![
        ("TICKFLOW_CONFIG".into(), config_path.display().to_string()),
        ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX".into(), prefix.clone()),
        ("TICKFLOW_GATEWAY__DLQ_TOPIC".into(), dlq.clone()),
        (
            "TICKFLOW_GATEWAY__DLQ_MAX_PAYLOAD_BYTES".into(),
            dlq_max.to_string(),
        ),
        ("TICKFLOW_GATEWAY__MAX_FRAME_BYTES".into(), "65536".into()),
        (
            "TICKFLOW_GATEWAY__SIMULATOR__ENABLED".into(),
            "false".into(),
        ),
        // These servers number trades per connection, not per symbol: no gaps to fill here
        // (tests/backfill.rs and tests/no_trade_lost.rs test the backfill).
        ("TICKFLOW_GATEWAY__BACKFILL__ENABLED".into(), "false".into()),
        (
            "TICKFLOW_GATEWAY__INSTRUMENTS_FILE".into(),
            instruments_path.display().to_string(),
        ),
        ("TICKFLOW_GATEWAY__RELOAD_INTERVAL_MS".into(), "200".into()),
        (
            "TICKFLOW_GATEWAY__ADMIN__LISTEN".into(),
            format!("127.0.0.1:{admin_port}"),
        ),
        ("TICKFLOW_GATEWAY_ADMIN_TOKEN".into(), TOKEN.into()),
        ("TICKFLOW_FINNHUB_TOKEN".into(), "test-token".into()),
        (
            "TICKFLOW_GATEWAY__FINNHUB__DATA_SILENCE_TIMEOUT_MS".into(),
            "2500".into(),
        ),
        // Room for a few connections on Kraken: 2 streams each.
        (
            "TICKFLOW_GATEWAY__KRAKEN__MAX_STREAMS_PER_CONNECTION".into(),
            "2".into(),
        ),
    ];
    for (name, server) in [
        ("binance", &binance),
        ("coinbase", &coinbase),
        ("kraken", &kraken),
        ("finnhub", &finnhub),
    ] {
        env.extend(provider_env(name, &server.url()));
    }
    let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut gateway = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ingest-gateway"), &stack, &env_ref);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let t = Duration::from_secs(20);

    // Normal flow: every configured symbol subscribed, data flowing.
    binance
        .wait(t, "binance subscribed", |s| {
            s.subscribed_now() == set(&["BTCUSDT", "ETHUSDT"])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    coinbase
        .wait(t, "coinbase subscribed", |s| {
            s.subscribed_now() == set(&["BTC-USD", "ETH-USD"])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    kraken
        .wait(t, "kraken subscribed", |s| {
            s.subscribed_now() == set(&["BTC/USD", "ETH/USD", "SOL/USD"])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    finnhub
        .wait(t, "finnhub subscribed", |s| {
            s.subscribed_now() == set(&["AAPL", "BINANCE:BTCUSDT"])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    assert!(finnhub.record.lock().unwrap().connections[0].contains("token=test-token"));
    // Kraken: 4 instruments at 2 per connection = 2 connections.
    kraken
        .wait(t, "kraken on 2 connections", |s| s.connections() >= 2)
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));

    // The rejected subscription is visible with the provider's reason.
    let base = format!("http://127.0.0.1:{admin_port}");
    let mut rejected = Value::Null;
    for _ in 0..100 {
        let (status, body) = admin("GET", format!("{base}/v1/subscriptions"), None, TOKEN).await;
        assert_eq!(status, 200, "{body}");
        rejected = body["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["symbol"] == "BAD/USD")
            .cloned()
            .unwrap_or(Value::Null);
        if rejected["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rejected["state"], "failed", "{rejected}");
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap_or("")
            .contains("Currency pair not supported"),
        "{rejected}"
    );
    let (status, _) = admin("GET", format!("{base}/v1/subscriptions"), None, "wrong").await;
    assert_eq!(status, 401);

    // Faults, one provider each.
    kraken.fault(Fault::Garbage);
    kraken.fault(Fault::Oversized(100_000));
    kraken.fault(Fault::ProviderError);
    let before = binance.connections();
    binance.fault(Fault::InvalidUtf8);
    binance
        .wait(t, "binance reconnects after invalid UTF-8", |s| {
            s.connections() > before && s.subscribed_now().len() == 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    let before = coinbase.connections();
    coinbase.fault(Fault::Kill);
    coinbase
        .wait(t, "coinbase reconnects and resubscribes", |s| {
            s.connections() > before && s.subscribed_now().len() == 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    let before = finnhub.connections();
    finnhub.fault(Fault::Mute);
    finnhub
        .wait(t, "finnhub: a silent connection is replaced", |s| {
            s.connections() > before
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));

    // Runtime changes without restart: admin API, then a config file edit.
    let (status, body) = admin(
        "POST",
        format!("{base}/v1/subscriptions/binance"),
        Some(json!({"remove": ["ETH-USDT"]})),
        TOKEN,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    binance
        .wait(t, "binance unsubscribed ETHUSDT", |s| {
            s.subscribed_now() == set(&["BTCUSDT"])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    let (status, body) = admin(
        "POST",
        format!("{base}/v1/subscriptions/binance"),
        Some(json!({"add": ["NOPE-USD"]})),
        TOKEN,
    )
    .await;
    assert_eq!(status, 400, "an unlisted instrument is refused: {body}");
    let kraken_requests = kraken.record.lock().unwrap().requests.len();
    write_config(&["BTC-USD", "ETH-USD", "SOL-USD"]);
    coinbase
        .wait(t, "coinbase follows the edited config", |s| {
            s.subscribed_now() == set(&["BTC-USD", "ETH-USD", "SOL-USD"])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
    // Kraken's subscriptions were not touched by either change.
    assert_eq!(
        kraken.record.lock().unwrap().requests.len(),
        kraken_requests
    );

    // Let every server send its whole budget, then stop the gateway.
    for server in [&binance, &coinbase, &kraken, &finnhub] {
        server.add_trades(200);
    }
    for server in [&binance, &coinbase, &kraken, &finnhub] {
        server
            .wait(Duration::from_secs(30), "all trades sent", |s| {
                s.trades_left() == 0
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", gateway.log()));
        server.quiet();
    }
    wait_until_read(&[&binance, &coinbase, &kraken, &finnhub], &[&gateway]).await;
    let (code, _) = gateway.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", gateway.log());
    let metrics_log = gateway.log();
    assert!(
        metrics_log.contains("connection lost; reconnecting"),
        "reconnects are logged"
    );

    let topics: Vec<String> = ["binance", "coinbase", "kraken", "finnhub"]
        .iter()
        .map(|p| format!("{prefix}{p}"))
        .collect();
    let got = read_all(&stack, &topics, &dlq).await;
    for (name, server) in [
        ("binance", &binance),
        ("coinbase", &coinbase),
        ("kraken", &kraken),
        ("finnhub", &finnhub),
    ] {
        check_exactly_once(name, &server.sent(), &got, dlq_max);
    }
    let kraken_dead: Vec<&str> = got.dead["kraken"]
        .iter()
        .map(|(r, _, _)| r.as_str())
        .collect();
    assert!(
        kraken_dead.contains(&"malformed") && kraken_dead.contains(&"oversized"),
        "{kraken_dead:?}"
    );
    assert_eq!(
        got.dead["binance"]
            .iter()
            .filter(|(r, _, _)| r == "invalid_utf8")
            .count(),
        1
    );
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_instruments_with_no_overlap_and_no_gap() {
    let stack = Stack::require().await;
    let kraken = ProviderServer::start(Dialect::Kraken, 400, Duration::from_millis(5), None).await;
    let entries: Vec<(String, String)> = (0..16)
        .map(|i| (format!("C{i}-USD"), format!("C{i}/USD")))
        .collect();
    let listed: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|(i, s)| (i.as_str(), "kraken", s.as_str()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instruments.toml");
    std::fs::write(&path, instruments(&listed)).unwrap();
    let prefix = format!("{}.raw.", testkit::unique_topic("gwr"));
    let dlq = format!("{}.dlq", testkit::unique_topic("gwr"));
    let mut replicas = Vec::new();
    for index in 0..2 {
        let mut env: Vec<(String, String)> = vec![
            ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX".into(), prefix.clone()),
            ("TICKFLOW_GATEWAY__DLQ_TOPIC".into(), dlq.clone()),
            (
                "TICKFLOW_GATEWAY__SIMULATOR__ENABLED".into(),
                "false".into(),
            ),
            ("TICKFLOW_GATEWAY__BACKFILL__ENABLED".into(), "false".into()),
            (
                "TICKFLOW_GATEWAY__INSTRUMENTS_FILE".into(),
                path.display().to_string(),
            ),
            ("TICKFLOW_GATEWAY__ADMIN__LISTEN".into(), String::new()),
            ("TICKFLOW_GATEWAY__REPLICA_INDEX".into(), index.to_string()),
            ("TICKFLOW_GATEWAY__REPLICA_COUNT".into(), "2".into()),
        ];
        env.extend(provider_env("kraken", &kraken.url()));
        let env_ref: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        replicas.push(ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_ingest-gateway"),
            &stack,
            &env_ref,
        ));
    }
    for r in &mut replicas {
        r.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    }
    let all: BTreeSet<String> = entries.iter().map(|(_, s)| s.clone()).collect();
    kraken
        .wait(Duration::from_secs(20), "every symbol subscribed", |s| {
            s.subscribed_now() == all
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nlogs:\n{}\n{}", replicas[0].log(), replicas[1].log()));
    {
        let record = kraken.record.lock().unwrap();
        let per_connection: Vec<&BTreeSet<String>> = record.subscribed.values().collect();
        assert_eq!(per_connection.len(), 2, "one connection per replica");
        assert!(
            per_connection[0].is_disjoint(per_connection[1]),
            "{per_connection:?}"
        );
        assert!(
            !per_connection[0].is_empty() && !per_connection[1].is_empty(),
            "{per_connection:?}"
        );
    }
    kraken
        .wait(Duration::from_secs(30), "all trades sent", |s| {
            s.trades_left() == 0
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nlogs:\n{}\n{}", replicas[0].log(), replicas[1].log()));
    kraken.quiet();
    wait_until_read(&[&kraken], &replicas.iter().collect::<Vec<_>>()).await;
    for r in &mut replicas {
        let (code, _) = r.terminate(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{}", r.log());
    }
    let got = read_all(&stack, &[format!("{prefix}kraken")], &dlq).await;
    check_exactly_once("kraken", &kraken.sent(), &got, 65536);
}
