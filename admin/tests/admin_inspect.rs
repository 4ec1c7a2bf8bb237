//! `tickflow-admin topics` and `read` against the real stack (`scripts/stack up`): known records
//! are produced (trades through the project's encoder, a raw frame, dead letters as the
//! normalizer and the gateway write them) and a consumer group commits known offsets; the
//! binary must show exactly those records, offsets and lag, as the test computes them from the
//! producer's acknowledgements, and must never commit anything itself.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{parse_decimal, RawEnvelope, Side, Trade};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, Stack};

const ADMIN: &str = env!("CARGO_BIN_EXE_tickflow-admin");
/// Record timestamps the test sets, so `--from-time` has a known answer.
const T0_MS: i64 = 1_700_000_000_000;

fn command(stack: &Stack, registry_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(ADMIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS",
            &stack.kafka.bootstrap_servers,
        )
        .env("TICKFLOW_REGISTRY__URL", registry_url)
        .args(args);
    command
}

/// Runs the binary to completion (at most 60 s).
async fn run(stack: &Stack, args: &[&str]) -> Output {
    run_with_registry(stack, &stack.registry.url, args).await
}

async fn run_with_registry(stack: &Stack, registry_url: &str, args: &[&str]) -> Output {
    let child = command(stack, registry_url, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tickflow-admin starts");
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output().expect("output")),
    )
    .await
    .unwrap_or_else(|_| panic!("tickflow-admin {args:?} did not finish within 60 s"))
    .expect("join")
}

/// The JSON lines of a successful run.
async fn json_lines(stack: &Stack, args: &[&str]) -> Vec<Value> {
    let output = run(stack, args).await;
    assert!(
        output.status.success(),
        "tickflow-admin {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (partition, offset) of each record shown, in the order shown.
fn positions(lines: &[Value]) -> Vec<(i32, i64)> {
    lines
        .iter()
        .map(|l| {
            (
                l["partition"].as_i64().expect("partition") as i32,
                l["offset"].as_i64().expect("offset"),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<(i32, i64)>) -> Vec<(i32, i64)> {
    v.sort_unstable();
    v
}

/// Sends one record and returns where the broker put it.
async fn send(producer: &FutureProducer, record: FutureRecord<'_, str, [u8]>) -> (i32, i64) {
    let delivered = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");
    (delivered.partition, delivered.offset)
}

fn trade(instrument: &str, exchange: &str, price: &str, side: Side, n: i64) -> Trade {
    Trade {
        instrument: instrument.into(),
        base: instrument.split('-').next().unwrap_or_default().into(),
        exchange: exchange.into(),
        provider: exchange.into(),
        provider_symbol: instrument.into(),
        trade_id: format!("t-{n}"),
        price: parse_decimal(price).unwrap(),
        side,
        event_time: T0_MS * 1000 + n,
        ..testkit::sample_trade()
    }
}

/// Checks a `read --json` line against the trade that was produced.
fn assert_trade(line: &Value, trade: &Trade, at: (i32, i64), timestamp_ms: i64) {
    assert_eq!(positions(std::slice::from_ref(line)), vec![at], "{line}");
    assert_eq!(line["timestamp_ms"], timestamp_ms, "{line}");
    assert_eq!(line["key"], trade.instrument.as_str(), "{line}");
    assert_eq!(line["schema"], "dev.tickflow.md.Trade", "{line}");
    let value = &line["value"];
    for (field, want) in [
        ("instrument", trade.instrument.as_str()),
        ("exchange", trade.exchange.as_str()),
        ("provider", trade.provider.as_str()),
        ("trade_id", trade.trade_id.as_str()),
        ("side", trade.side.as_str()),
    ] {
        assert_eq!(value[field], want, "{field} in {line}");
    }
    assert_eq!(
        value["price"],
        trade.price.normalize().to_string(),
        "{line}"
    );
    assert_eq!(value["size"], trade.size.normalize().to_string(), "{line}");
    assert_eq!(value["event_time"], trade.event_time, "{line}");
    assert_eq!(value["ingest_time"], trade.ingest_time, "{line}");
    assert_eq!(
        value["provider_sequence"],
        serde_json::json!(trade.provider_sequence),
        "{line}"
    );
}

struct Fixture {
    stack: Stack,
    trades_topic: String,
    raw_topic: String,
    dlq_topic: String,
    /// (trade, where it went, its record timestamp)
    trades: Vec<(Trade, (i32, i64), i64)>,
    raw_at: (i32, i64),
    raw_payload: String,
    dlq_at: Vec<(i32, i64)>,
    producer: FutureProducer,
    codec: AvroCodec,
}

async fn fixture(test: &str) -> Fixture {
    let stack = Stack::require().await;
    let trades_topic = testkit::unique_topic(&format!("{test}-trades"));
    let raw_topic = testkit::unique_topic(&format!("{test}-raw"));
    let dlq_topic = testkit::unique_topic(&format!("{test}-dlq"));
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[
            TopicSpec::new(&trades_topic, 2),
            TopicSpec::new(&raw_topic, 1),
            TopicSpec::new(&dlq_topic, 1),
        ],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    registry.register(&trades_topic, avro::TRADE).await.unwrap();
    registry
        .register(&raw_topic, avro::RAW_ENVELOPE)
        .await
        .unwrap();
    let codec = AvroCodec::new(
        &registry,
        &[
            (trades_topic.as_str(), avro::TRADE),
            (raw_topic.as_str(), avro::RAW_ENVELOPE),
        ],
    );
    let producer = kafka::producer(&stack.kafka, "it-admin").unwrap();

    let mut trades = Vec::new();
    for (n, (t, partition)) in [
        (
            trade("BTC-USD", "coinbase", "67012.34000000", Side::Buy, 0),
            0,
        ),
        (trade("ETH-USD", "kraken", "3500.5", Side::Sell, 1), 1),
        (
            trade(
                "BTC-USD",
                "kraken",
                "0.000000000000000001",
                Side::Unknown,
                2,
            ),
            0,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = codec.encode_trade(&trades_topic, &t).await.unwrap();
        let ts = T0_MS + 1000 * n as i64;
        let at = send(
            &producer,
            FutureRecord::to(&trades_topic)
                .partition(partition)
                .key(t.instrument.as_str())
                .payload(bytes.as_slice())
                .timestamp(ts),
        )
        .await;
        trades.push((t, at, ts));
    }

    let raw_payload =
        r#"{"channel":"trade","type":"update","data":[{"symbol":"XBT/EUR","price":61000.1}]}"#;
    let envelope = RawEnvelope {
        provider: "kraken".into(),
        connection_id: "c-42".into(),
        sequence: 7,
        received_at: T0_MS * 1000 + 5,
        channel: "trade".into(),
        payload: raw_payload.as_bytes().to_vec(),
    };
    let raw_bytes = codec.encode_raw(&raw_topic, &envelope).await.unwrap();
    let raw_at = send(
        &producer,
        FutureRecord::to(&raw_topic)
            .key("c-42")
            .payload(raw_bytes.as_slice()),
    )
    .await;

    // As the normalizer dead-letters a frame: the raw record itself, the reason in headers.
    let source_offset = raw_at.1.to_string();
    let normalizer_headers = [
        ("tickflow.reason", "unknown_symbol"),
        (
            "tickflow.reason.text",
            "no instrument lists kraken symbol XBT/EUR",
        ),
        ("tickflow.source.topic", raw_topic.as_str()),
        ("tickflow.source.partition", "0"),
        ("tickflow.source.offset", source_offset.as_str()),
    ];
    // As the gateway dead-letters a frame it could not forward: the bytes as received.
    let gateway_headers = [
        ("tickflow.reason", "malformed"),
        ("tickflow.reason.text", "not JSON"),
        ("tickflow.provider", "binance"),
    ];
    let mut dlq_at = Vec::new();
    for (headers, payload) in [
        (&normalizer_headers[..], raw_bytes.as_slice()),
        (&gateway_headers[..], b"{not json".as_slice()),
    ] {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
        dlq_at.push(
            send(
                &producer,
                FutureRecord::to(&dlq_topic)
                    .payload(payload)
                    .headers(headers),
            )
            .await,
        );
    }
    Fixture {
        stack,
        trades_topic,
        raw_topic,
        dlq_topic,
        trades,
        raw_at,
        raw_payload: raw_payload.to_string(),
        dlq_at,
        producer,
        codec,
    }
}

/// High watermark per partition of the trades topic, from the producer's acknowledgements.
fn highs(f: &Fixture) -> BTreeMap<i32, i64> {
    let mut highs: BTreeMap<i32, i64> = [(0, 0), (1, 0)].into();
    for (_, (p, o), _) in &f.trades {
        let high = highs.entry(*p).or_default();
        *high = (*high).max(o + 1);
    }
    highs
}

#[tokio::test]
async fn topics_show_offsets_and_the_lag_of_a_group() {
    let f = fixture("admin-topics").await;
    let highs = highs(&f);
    // A group that has read one record of partition 0 and everything of partition 1.
    let group = testkit::unique_name("it", "admin-group", '-');
    let committed: BTreeMap<i32, i64> = [(0, highs[&0] - 1), (1, highs[&1])].into();
    let mut config = kafka::consumer_config(&f.stack.kafka, "it", &group);
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
    let mut offsets = TopicPartitionList::new();
    for (p, o) in &committed {
        offsets
            .add_partition_offset(&f.trades_topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();

    let lines = json_lines(
        &f.stack,
        &["topics", "--json", &f.trades_topic, &f.dlq_topic],
    )
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let by_name: BTreeMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["topic"].as_str().unwrap(), l))
        .collect();
    let trades = by_name[f.trades_topic.as_str()];
    let partitions: Vec<(i64, i64, i64, i64)> = trades["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_i64().unwrap();
            (n("partition"), n("low"), n("high"), n("messages"))
        })
        .collect();
    assert_eq!(
        partitions,
        vec![(0, 0, highs[&0], highs[&0]), (1, 0, highs[&1], highs[&1])]
    );
    assert_eq!(trades["messages"], 3);
    let groups = trades["groups"].as_array().unwrap();
    let ours = groups
        .iter()
        .find(|g| g["group"] == group.as_str())
        .unwrap_or_else(|| panic!("group {group} in {trades}"));
    let expected_lag: Vec<Value> = committed
        .iter()
        .map(|(p, o)| serde_json::json!({"partition": p, "committed": o, "lag": highs[p] - o}))
        .collect();
    assert_eq!(ours["partitions"], Value::Array(expected_lag), "{ours}");
    assert_eq!(ours["lag"], 1);
    // Only groups that committed there: no reader of `read` ever does.
    for g in groups {
        assert!(
            !g["group"].as_str().unwrap().starts_with("tickflow-admin"),
            "{g}"
        );
    }
    let dlq = by_name[f.dlq_topic.as_str()];
    assert_eq!(dlq["messages"], 2);
    assert_eq!(dlq["groups"], serde_json::json!([]));

    // --group keeps only that group; the table says the same.
    let output = run(&f.stack, &["topics", &f.trades_topic, "--group", &group]).await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert!(
        table.starts_with(&format!(
            "{}: 2 partition(s), 3 message(s)\n",
            f.trades_topic
        )),
        "{table}"
    );
    assert!(
        table.contains(&format!("  group {group} (Empty): lag 1\n")),
        "{table}"
    );
    assert_eq!(table.matches("  group ").count(), 1, "{table}");

    // A missing topic is named, with those that exist.
    let missing = format!("{}.missing", f.trades_topic);
    let output = run(&f.stack, &["topics", &missing]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("topic {missing}: no such topic;")),
        "{stderr}"
    );
    assert!(stderr.contains("test topic(s) named it.*"), "{stderr}");
}

#[tokio::test]
async fn read_decodes_trades_raw_frames_and_dead_letters_and_filters_them() {
    let f = fixture("admin-read").await;
    let topic = f.trades_topic.as_str();
    let all = json_lines(&f.stack, &["read", topic, "--from-beginning", "--json"]).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let mut shown: Vec<&Value> = all.iter().collect();
    shown.sort_by_key(|l| (l["partition"].as_i64(), l["offset"].as_i64()));
    let mut produced: Vec<&(Trade, (i32, i64), i64)> = f.trades.iter().collect();
    produced.sort_by_key(|(_, at, _)| *at);
    for (line, (trade, at, ts)) in shown.iter().zip(&produced) {
        assert_trade(line, trade, *at, *ts);
    }
    // Within a partition, in offset order.
    let p0: Vec<(i32, i64)> = positions(&all)
        .into_iter()
        .filter(|(p, _)| *p == 0)
        .collect();
    assert_eq!(p0, sorted(p0.clone()));

    let at = |i: usize| f.trades[i].1;
    for (args, want) in [
        (vec!["--instrument", "BTC-USD"], vec![at(0), at(2)]),
        (vec!["--venue", "kraken"], vec![at(1), at(2)]),
        (vec!["--key", "ETH-USD"], vec![at(1)]),
        (
            vec!["--instrument", "btc-usd", "--venue", "KRAKEN"],
            vec![at(2)],
        ),
        (vec!["--instrument", "SOL-USD"], vec![]),
        (vec!["--partition", "0", "--count", "1"], vec![at(0)]),
    ] {
        let mut argv = vec!["read", topic, "--from-beginning", "--json"];
        argv.extend(&args);
        let lines = json_lines(&f.stack, &argv).await;
        assert_eq!(sorted(positions(&lines)), sorted(want), "{args:?}");
    }
    // Range starts: by offset, from the end, by record time.
    let second_in_p0 = at(2).1.to_string();
    let from_time = "2023-11-14T22:13:21Z"; // T0 + 1 s: the second and third trades
    for (args, want) in [
        (
            vec!["--partition", "0", "--from-offset", second_in_p0.as_str()],
            vec![at(2)],
        ),
        (vec!["--partition", "0", "--last", "1"], vec![at(2)]),
        (vec!["--last", "1"], vec![at(1), at(2)]),
        (vec!["--from-time", from_time], vec![at(1), at(2)]),
    ] {
        let mut argv = vec!["read", topic, "--json"];
        argv.extend(&args);
        let lines = json_lines(&f.stack, &argv).await;
        assert_eq!(sorted(positions(&lines)), sorted(want), "{args:?}");
    }

    // The table: one line per record, the fields in schema order.
    let output = run(
        &f.stack,
        &["read", topic, "--from-beginning", "--partition", "0"],
    )
    .await;
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with(&format!(
            "0:{}  2023-11-14T22:13:20.000Z  BTC-USD  Trade instrument=BTC-USD base=BTC quote=USD asset_class=CRYPTO exchange=coinbase ",
            at(0).1
        )),
        "{table}"
    );
    assert!(lines[1].contains(" price=0.000000000000000001 "), "{table}");

    // A raw frame: the envelope decoded, the provider's frame as text.
    let raw = json_lines(
        &f.stack,
        &["read", &f.raw_topic, "--from-beginning", "--json"],
    )
    .await;
    assert_eq!(positions(&raw), vec![f.raw_at]);
    assert_eq!(raw[0]["schema"], "dev.tickflow.md.RawEnvelope");
    assert_eq!(raw[0]["key"], "c-42");
    assert_eq!(raw[0]["value"]["payload"], f.raw_payload.as_str());
    assert_eq!(raw[0]["value"]["provider"], "kraken");
    assert_eq!(raw[0]["value"]["sequence"], 7);
    let raw_line = run(&f.stack, &["read", &f.raw_topic, "--provider", "kraken"]).await;
    let raw_line = String::from_utf8(raw_line.stdout).unwrap();
    assert!(
        raw_line.contains(r#"payload="{\"channel\":\"trade\",\"type\":\"update\""#),
        "{raw_line}"
    );

    // Dead letters: the reason headers, the frame decoded when it is a raw record, as text when
    // it is what a provider sent.
    let dead = json_lines(
        &f.stack,
        &["read", &f.dlq_topic, "--from-beginning", "--json"],
    )
    .await;
    assert_eq!(positions(&dead), f.dlq_at);
    assert_eq!(dead[0]["headers"]["tickflow.reason"], "unknown_symbol");
    assert_eq!(
        dead[0]["headers"]["tickflow.reason.text"],
        "no instrument lists kraken symbol XBT/EUR"
    );
    assert_eq!(
        dead[0]["headers"]["tickflow.source.offset"],
        f.raw_at.1.to_string()
    );
    assert_eq!(dead[0]["schema"], "dev.tickflow.md.RawEnvelope");
    assert_eq!(dead[0]["value"]["payload"], f.raw_payload.as_str());
    assert_eq!(dead[0]["key"], Value::Null);
    assert_eq!(dead[1]["headers"]["tickflow.reason"], "malformed");
    assert_eq!(dead[1]["schema"], Value::Null);
    assert_eq!(dead[1]["value"], "{not json");
    let gateway = json_lines(
        &f.stack,
        &[
            "read",
            &f.dlq_topic,
            "--from-beginning",
            "--json",
            "--provider",
            "binance",
        ],
    )
    .await;
    assert_eq!(positions(&gateway), vec![f.dlq_at[1]]);
    let table = run(&f.stack, &["read", &f.dlq_topic, "--from-beginning"]).await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("[tickflow.reason=unknown_symbol tickflow.reason.text=\"no instrument lists kraken symbol XBT/EUR\" "),
        "{table}"
    );

    // All that reading committed nothing: no group has offsets on these topics.
    let topics = json_lines(
        &f.stack,
        &["topics", "--json", topic, &f.raw_topic, &f.dlq_topic],
    )
    .await;
    assert_eq!(topics.len(), 3);
    for t in &topics {
        assert_eq!(t["groups"], serde_json::json!([]), "{t}");
    }
}

#[tokio::test]
async fn read_says_what_is_wrong() {
    let f = fixture("admin-errors").await;
    let missing = format!("{}.missing", f.trades_topic);
    let output = run(&f.stack, &["read", &missing]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("topic {missing}: no such topic;")),
        "{stderr}"
    );

    let output = run(&f.stack, &["read", &f.trades_topic, "--partition", "7"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no partition 7 (it has 2)"), "{stderr}");

    let nowhere = format!("http://127.0.0.1:{}", testkit::free_port());
    let output = run_with_registry(
        &f.stack,
        &nowhere,
        &["read", &f.trades_topic, "--from-beginning"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "schema registry unreachable or failing: cannot fetch a schema from {nowhere}"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn follow_shows_new_records_until_count_or_ctrl_c() {
    let f = fixture("admin-follow").await;
    let high = highs(&f)[&1];
    // From an explicit offset, so records sent right after the start cannot be missed.
    let from = high.to_string();
    let child = command(
        &f.stack,
        &f.stack.registry.url,
        &[
            "read",
            &f.trades_topic,
            "--follow",
            "--json",
            "--partition",
            "1",
            "--from-offset",
            &from,
            "--count",
            "2",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut sent = Vec::new();
    for n in 10..13 {
        let t = trade("SOL-USD", "binance", "150.25", Side::Buy, n);
        let bytes = f.codec.encode_trade(&f.trades_topic, &t).await.unwrap();
        let ts = T0_MS + n;
        let at = send(
            &f.producer,
            FutureRecord::to(&f.trades_topic)
                .partition(1)
                .key(t.instrument.as_str())
                .payload(bytes.as_slice())
                .timestamp(ts),
        )
        .await;
        sent.push((t, at, ts));
    }
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    )
    .await
    .expect("--count 2 ends --follow")
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, (trade, at, ts)) in lines.iter().zip(&sent) {
        assert_trade(line, trade, *at, *ts);
    }

    // Without --count, it follows until Ctrl-C and then exits cleanly.
    let mut child = command(
        &f.stack,
        &f.stack.registry.url,
        &["read", &f.trades_topic, "--follow"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "--follow keeps running"
    );
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
