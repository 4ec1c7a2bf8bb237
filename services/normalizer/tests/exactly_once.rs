//! Exactly once against the real stack: a stream of raw frames from every provider format, with
//! valid trades, bad ones, control frames and duplicates, is normalized while the normalizer is
//! killed with SIGKILL again and again, once right after a second instance joined the group
//! (mid-rebalance). Afterwards the committed output holds every valid trade exactly once, with
//! its exact price, and the DLQ every invalid input exactly once — counted against real Kafka.
//! An instrument published to the reference topic mid-stream is used from its next trade on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rust_decimal::Decimal;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, RawEnvelope};
use tickflow_shared::instruments::{self, Instrument};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

type TradeKey = (String, String, String);

/// What the test expects of one generated frame: its trades ((provider, exchange, trade id) →
/// exact price) and one DLQ reason per bad input in it. Both empty for a control frame or a
/// duplicate.
#[derive(Debug, Clone, Default)]
struct Expect {
    trades: Vec<(TradeKey, Decimal)>,
    dead: Vec<&'static str>,
}

impl Expect {
    fn trade(key: TradeKey, price: Decimal) -> Self {
        Self {
            trades: vec![(key, price)],
            dead: vec![],
        }
    }
    fn dead(reason: &'static str) -> Self {
        Self {
            trades: vec![],
            dead: vec![reason],
        }
    }
}

struct Generated {
    /// (provider, key, payload) in production order.
    frames: Vec<(String, String, String)>,
    expect: Vec<Expect>,
}

fn generate(count: usize, t0: i64) -> Generated {
    let mut rng = StdRng::seed_from_u64(20261122);
    let mut frames = Vec::new();
    let mut expect = Vec::new();
    let mut sent_valid: Vec<(String, String, String, Expect)> = Vec::new();
    let mut price = 6_700_000_i64; // cents
    for i in 0..count {
        let time = t0 + i as i64 * 1_000;
        price += rng.random_range(-50..=50);
        let px = Decimal::new(price, 2) + Decimal::new(rng.random_range(0..1000), 8);
        let roll = rng.random_range(0..100);
        let key = |s: &str| s.to_string();
        match roll {
            // A duplicate of an earlier valid frame, resent (e.g. after a reconnect).
            0..=5 if !sent_valid.is_empty() => {
                let (p, k, payload, _) = sent_valid[rng.random_range(0..sent_valid.len())].clone();
                frames.push((p, k, payload));
                expect.push(Expect::default());
            }
            6..=9 => {
                let (payload, reason) = match rng.random_range(0..6) {
                    0 => (
                        format!(
                            r#"{{"type":"trade","venue":"sim-a","symbol":"BTC-USD","trade_id":"bad-{i}","price":"NaN","size":"1","side":"buy","ts_us":{time},"seq":{i}}}"#
                        ),
                        "invalid_price",
                    ),
                    1 => (
                        format!(
                            r#"{{"type":"trade","venue":"sim-a","symbol":"BTC-USD","trade_id":"bad-{i}","price":"{px}","size":"-2","side":"buy","ts_us":{time},"seq":{i}}}"#
                        ),
                        "invalid_size",
                    ),
                    2 => (
                        format!(
                            r#"{{"type":"trade","venue":"sim-a","symbol":"DOGE-USD","trade_id":"bad-{i}","price":"{px}","size":"1","side":"buy","ts_us":{time},"seq":{i}}}"#
                        ),
                        "unknown_symbol",
                    ),
                    3 => (
                        format!(
                            r#"{{"type":"trade","venue":"sim-a","symbol":"BTC-USD","trade_id":"bad-{i}","price":"{px}","size":"1","side":"buy","ts_us":{},"seq":{i}}}"#,
                            time + 3_600_000_000
                        ),
                        "event_time_future",
                    ),
                    4 => ("\u{1}garbage{".to_string(), "unparsable_payload"),
                    _ => (r#"{"type":"candle"}"#.to_string(), "unsupported_message"),
                };
                frames.push((key("simulator"), key("BTC-USD"), payload));
                expect.push(Expect::dead(reason));
            }
            10..=13 => {
                frames.push((
                    key("simulator"),
                    key("BTC-USD"),
                    format!(r#"{{"type":"heartbeat","ts_us":{time}}}"#),
                ));
                expect.push(Expect::default());
            }
            14..=25 => {
                let payload = format!(
                    r#"{{"type":"match","trade_id":{i},"sequence":{i},"maker_order_id":"m","taker_order_id":"t","time":"{}","product_id":"BTC-USD","size":"0.015","price":"{px}","side":"sell"}}"#,
                    rfc3339(time)
                );
                let e = Expect::trade((key("coinbase"), key("coinbase"), i.to_string()), px);
                sent_valid.push((key("coinbase"), key("BTC-USD"), payload.clone(), e.clone()));
                frames.push((key("coinbase"), key("BTC-USD"), payload));
                expect.push(e);
            }
            26..=37 => {
                // Two trades per frame, the second one bad one time in four.
                let bad = rng.random_range(0..4) == 0;
                let second_price = if bad {
                    "-1".to_string()
                } else {
                    (px + Decimal::ONE).to_string()
                };
                let payload = format!(
                    r#"{{"channel":"trade","type":"update","data":[{{"symbol":"ETH/USD","side":"buy","price":{px},"qty":0.5,"ord_type":"limit","trade_id":{i}0,"timestamp":"{t}"}},{{"symbol":"ETH/USD","side":"sell","price":{second_price},"qty":1.25,"ord_type":"market","trade_id":{i}1,"timestamp":"{t}"}}]}}"#,
                    t = rfc3339(time)
                );
                let first = ((key("kraken"), key("kraken"), format!("{i}0")), px);
                if bad {
                    // Not offered for resending: a resend would dead-letter again.
                    frames.push((key("kraken"), key("ETH/USD"), payload));
                    expect.push(Expect {
                        trades: vec![first],
                        dead: vec!["invalid_price"],
                    });
                } else {
                    let e = Expect {
                        trades: vec![
                            first,
                            (
                                (key("kraken"), key("kraken"), format!("{i}1")),
                                px + Decimal::ONE,
                            ),
                        ],
                        dead: vec![],
                    };
                    sent_valid.push((key("kraken"), key("ETH/USD"), payload.clone(), e.clone()));
                    frames.push((key("kraken"), key("ETH/USD"), payload));
                    expect.push(e);
                }
            }
            38..=45 => {
                let payload = format!(
                    r#"{{"type":"trade","data":[{{"p":{px},"s":"COINBASE:BTC-USD","t":{},"v":0.{i:05},"c":["1"]}}]}}"#,
                    time / 1000
                );
                // Finnhub has no id: the test cannot know the derived one, so trades are matched
                // by (provider, exchange, price, size) instead; see `finnhub_key`.
                let e = Expect::trade(
                    (
                        key("finnhub"),
                        key("coinbase"),
                        format!(
                            "fh:{}:{}",
                            px.normalize(),
                            Decimal::new(i as i64, 5).normalize()
                        ),
                    ),
                    px,
                );
                sent_valid.push((
                    key("finnhub"),
                    key("COINBASE:BTC-USD"),
                    payload.clone(),
                    e.clone(),
                ));
                frames.push((key("finnhub"), key("COINBASE:BTC-USD"), payload));
                expect.push(e);
            }
            46..=50 => {
                let payload = format!(
                    r#"{{"stream":"btcusd@trade","data":{{"e":"trade","E":1,"s":"BTCUSD","t":{i},"p":"{px}","q":"0.001","T":{},"m":true,"M":true}}}}"#,
                    time / 1000
                );
                let e = Expect::trade((key("binance"), key("binance"), i.to_string()), px);
                sent_valid.push((key("binance"), key("BTCUSD"), payload.clone(), e.clone()));
                frames.push((key("binance"), key("BTCUSD"), payload));
                expect.push(e);
            }
            _ => {
                let venue = ["sim-a", "sim-b", "sim-c"][rng.random_range(0..3)];
                let symbol = ["BTC-USD", "ETH-USD"][rng.random_range(0..2)];
                let payload = format!(
                    r#"{{"type":"trade","venue":"{venue}","symbol":"{symbol}","trade_id":"{venue}-{i}","price":"{px}","size":"0.5","side":"buy","ts_us":{time},"seq":{i}}}"#
                );
                let e = Expect::trade((key("simulator"), key(venue), format!("{venue}-{i}")), px);
                sent_valid.push((key("simulator"), key(symbol), payload.clone(), e.clone()));
                frames.push((key("simulator"), key(symbol), payload));
                expect.push(e);
            }
        }
    }
    Generated { frames, expect }
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// How the test identifies an output trade (Finnhub's derived ids are replaced by price/size).
fn output_key(t: &tickflow_shared::domain::Trade) -> TradeKey {
    if t.provider == "finnhub" {
        (
            t.provider.clone(),
            t.exchange.clone(),
            format!("fh:{}:{}", t.price.normalize(), t.size.normalize()),
        )
    } else {
        (t.provider.clone(), t.exchange.clone(), t.trade_id.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_trade_once_every_bad_input_once_across_kills_and_a_rebalance() {
    let stack = Stack::require().await;
    let raw = testkit::unique_topic("norm-raw");
    let out = testkit::unique_topic("norm-out");
    let dlq = testkit::unique_topic("norm-dlq");
    let refdata = testkit::unique_topic("norm-ref");
    let group = testkit::unique_name("norm", "eos", '-');
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[
            TopicSpec::new(&raw, 3),
            TopicSpec::new(&refdata, 1).compacted(),
        ],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    registry.register(&raw, avro::RAW_ENVELOPE).await.unwrap();

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), testkit::INSTRUMENTS_FIXTURE).unwrap();
    let env_for = |instance: &str| -> Vec<(&'static str, String)> {
        vec![
            ("TICKFLOW_NORMALIZER__INPUT_TOPICS", raw.clone()),
            ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", out.clone()),
            ("TICKFLOW_NORMALIZER__DLQ_TOPIC", dlq.clone()),
            ("TICKFLOW_NORMALIZER__GAPS_TOPIC", format!("{dlq}.gaps")),
            ("TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC", refdata.clone()),
            (
                "TICKFLOW_NORMALIZER__INSTRUMENTS_FILE",
                file.path().display().to_string(),
            ),
            ("TICKFLOW_NORMALIZER__GROUP_ID", group.clone()),
            (
                "TICKFLOW_NORMALIZER__TRANSACTIONAL_ID",
                format!("{group}-{instance}"),
            ),
            ("TICKFLOW_NORMALIZER__MAX_BATCH", "300".into()),
            (
                "TICKFLOW_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS",
                "6000".into(),
            ),
            (
                "TICKFLOW_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS",
                "1000".into(),
            ),
        ]
    };

    let t0 = now_micros();
    let generated = generate(5_000, t0);
    let mut expected: HashMap<TradeKey, Decimal> = HashMap::new();
    let mut expected_dead: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &generated.expect {
        expected.extend(e.trades.iter().cloned());
        for r in &e.dead {
            *expected_dead.entry(r).or_default() += 1;
        }
    }

    // The new instrument, published mid-stream, with trades right after it.
    let new_instrument: Instrument = instruments::parse_toml(
        r#"
[[instrument]]
instrument = "NEW-USD"
base = "NEW"
quote = "USD"
asset_class = "CRYPTO"
listings = [{ provider = "simulator", symbol = "NEW-USD" }]
"#,
    )
    .unwrap()
    .remove(0);
    let new_trades: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"type":"trade","venue":"sim-a","symbol":"NEW-USD","trade_id":"new-{i}","price":"1.{i:02}","size":"3","side":"sell","ts_us":{},"seq":{i}}}"#, now_micros()))
        .collect();
    for i in 0..20 {
        expected.insert(
            ("simulator".into(), "sim-a".into(), format!("new-{i}")),
            Decimal::new(100 + i, 2),
        );
    }

    // Produce in the background at a steady pace, sequence numbers per provider connection.
    let producer = kafka::producer(&stack.kafka, "it").unwrap();
    let frames = generated.frames.clone();
    let producing = {
        let raw = raw.clone();
        let refdata = refdata.clone();
        let stack_kafka = stack.kafka.clone();
        let stack_registry = stack.registry.clone();
        let codec = AvroCodec::new(&registry, &[(raw.as_str(), avro::RAW_ENVELOPE)]);
        tokio::spawn(async move {
            let mut sequence: HashMap<String, i64> = HashMap::new();
            let mut send = |provider: &str, key: &str, payload: &str| {
                let seq = sequence.entry(provider.to_string()).or_default();
                *seq += 1;
                (
                    key.to_string(),
                    RawEnvelope {
                        provider: provider.into(),
                        connection_id: format!("{provider}-conn-1"),
                        sequence: *seq,
                        received_at: now_micros(),
                        channel: "test".into(),
                        payload: payload.as_bytes().to_vec(),
                    },
                )
            };
            let half = frames.len() / 2;
            for (n, chunk) in frames.chunks(100).enumerate() {
                let mut pending = Vec::new();
                for (provider, key, payload) in chunk {
                    let (key, envelope) = send(provider, key, payload);
                    let bytes = codec.encode_raw(&raw, &envelope).await.unwrap();
                    pending.push(
                        producer
                            .send_result(FutureRecord::to(&raw).key(&key).payload(&bytes))
                            .expect("queued"),
                    );
                }
                for p in pending {
                    p.await.expect("delivered").expect("produced");
                }
                if n * 100 >= half && n * 100 < half + 100 {
                    instruments::publish(
                        &stack_kafka,
                        &stack_registry,
                        &refdata,
                        std::slice::from_ref(&new_instrument),
                        &[],
                    )
                    .await
                    .unwrap();
                    for payload in &new_trades {
                        let (key, envelope) = send("simulator", "NEW-USD", payload);
                        let bytes = codec.encode_raw(&raw, &envelope).await.unwrap();
                        producer
                            .send(
                                FutureRecord::to(&raw).key(&key).payload(&bytes),
                                Duration::from_secs(30),
                            )
                            .await
                            .expect("produced");
                    }
                }
                // ~20 s in all, so the kills below happen mid-stream.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    let binary = env!("CARGO_BIN_EXE_normalizer");
    let mut rng = StdRng::seed_from_u64(7);
    let mut kills = 0;
    // Single-instance kills.
    while kills < 3 && !producing.is_finished() {
        let mut a = ServiceProcess::spawn(binary, &stack, &env_for("a"));
        a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
        a.kill_hard();
        kills += 1;
    }
    // A second instance joins; the first is killed while the group rebalances.
    let mut a = ServiceProcess::spawn(binary, &stack, &env_for("a"));
    a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut b = ServiceProcess::spawn(binary, &stack, &env_for("b"));
    b.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill_hard();
    kills += 1;
    let mut a = ServiceProcess::spawn(binary, &stack, &env_for("a"));
    a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    assert!(
        !producing.is_finished(),
        "the stream ended before the rebalance kill"
    );
    producing.await.unwrap();

    // Read the committed output and DLQ until everything expected is there, then a little more.
    let reader = AvroCodec::new(&registry, &[]);
    let consumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "eos", '-'))
            .unwrap();
    consumer.subscribe(&[out.as_str(), dlq.as_str()]).unwrap();
    let mut got: HashMap<TradeKey, Vec<Decimal>> = HashMap::new();
    let mut dead: BTreeMap<String, usize> = BTreeMap::new();
    let mut dead_sources: HashMap<(String, String, Option<String>), usize> = HashMap::new();
    let total_dead: usize = expected_dead.values().sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut settled: Option<Instant> = None;
    loop {
        let complete = got.len() >= expected.len() && dead.values().sum::<usize>() >= total_dead;
        if complete && settled.is_none() {
            settled = Some(Instant::now());
        }
        if settled.is_some_and(|s| s.elapsed() > Duration::from_secs(5))
            || Instant::now() > deadline
        {
            break;
        }
        let Ok(message) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let message = message.unwrap();
        if message.topic() == out {
            let trade = reader
                .decode_trade(message.payload().unwrap())
                .await
                .unwrap();
            got.entry(output_key(&trade)).or_default().push(trade.price);
        } else {
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
            };
            *dead.entry(header("tickflow.reason").unwrap()).or_default() += 1;
            *dead_sources
                .entry((
                    header("tickflow.source.partition").unwrap(),
                    header("tickflow.source.offset").unwrap(),
                    header("tickflow.trade.index"),
                ))
                .or_default() += 1;
        }
    }
    let logs = format!("--- a ---\n{}\n--- b ---\n{}", a.log(), b.log());
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let twice: Vec<_> = got
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .take(5)
        .collect();
    let unexpected: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let wrong_price: Vec<_> = expected
        .iter()
        .filter(|(k, price)| got.get(*k).is_some_and(|v| v[0] != **price))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty() && unexpected.is_empty() && wrong_price.is_empty(),
        "after {kills} kills: {} expected, {} distinct out; missing {missing:?}; twice {twice:?}; unexpected {unexpected:?}; wrong price {wrong_price:?}\n{}",
        expected.len(),
        got.len(),
        logs.chars().rev().take(6000).collect::<String>().chars().rev().collect::<String>()
    );
    let expected_dead: BTreeMap<String, usize> = expected_dead
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(dead, expected_dead, "dead letters by reason");
    assert!(
        dead_sources.values().all(|n| *n == 1),
        "a dead letter was written twice"
    );
    assert!(got.contains_key(&("simulator".into(), "sim-a".into(), "new-0".into())));
}
