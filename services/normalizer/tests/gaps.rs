//! Gap detection against the real stack: raw frames of Binance, Coinbase and Kraken with holes in
//! their trade numbering, inside a connection and across a reconnect, with duplicates, reordered
//! and late trades, a dead-lettered trade (received, so not a hole), and a provider without
//! numbering (Finnhub). The normalizer is killed with SIGKILL between two phases, so the second
//! phase runs on a tracker rebuilt by the warm-up. Afterwards the committed gaps topic holds
//! exactly the gaps recomputed from the frames by a set difference, each OPEN once, and FILLED
//! once for the gaps whose trades all arrived later; and the metrics count them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use normalizer::gaps::GapRecord;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, RawEnvelope};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

/// One frame: provider, its symbol, the connection, and the trade numbers it carries.
struct Frame {
    provider: &'static str,
    symbol: &'static str,
    connection: &'static str,
    numbers: Vec<u64>,
    bad_price: bool,
    /// The gateway's backfill saying trades `first..=last` can no longer be fetched.
    gone: Option<(u64, u64)>,
}

fn frame(
    provider: &'static str,
    symbol: &'static str,
    connection: &'static str,
    n: &[u64],
) -> Frame {
    Frame {
        provider,
        symbol,
        connection,
        numbers: n.to_vec(),
        bad_price: false,
        gone: None,
    }
}

fn payload(f: &Frame, time_ms: i64) -> String {
    let price = if f.bad_price { "-1" } else { "67000.5" };
    match f.provider {
        "binance" => format!(
            r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{time_ms},"s":"{}","t":{},"p":"{price}","q":"0.01","T":{time_ms},"m":true,"M":true}}}}"#,
            f.symbol.to_ascii_lowercase(),
            f.symbol,
            f.numbers[0]
        ),
        "coinbase" => format!(
            r#"{{"type":"match","trade_id":{},"sequence":1,"maker_order_id":"m","taker_order_id":"t","time":"{}","product_id":"{}","size":"0.01","price":"{price}","side":"sell"}}"#,
            f.numbers[0],
            rfc3339(time_ms * 1000),
            f.symbol
        ),
        "kraken" => {
            let items: Vec<String> = f
                .numbers
                .iter()
                .map(|n| {
                    format!(
                        r#"{{"symbol":"{}","side":"buy","price":{price},"qty":0.5,"ord_type":"limit","trade_id":{n},"timestamp":"{}"}}"#,
                        f.symbol,
                        rfc3339(time_ms * 1000)
                    )
                })
                .collect();
            format!(
                r#"{{"channel":"trade","type":"update","data":[{}]}}"#,
                items.join(",")
            )
        }
        "finnhub" => format!(
            r#"{{"data":[{{"p":67000.5,"s":"{}","t":{time_ms},"v":0.5,"c":["1"]}}],"type":"trade"}}"#,
            f.symbol
        ),
        other => panic!("{other}"),
    }
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn phase_one() -> Vec<Frame> {
    let mut frames = Vec::new();
    // Binance BTCUSDT: 100..=110, a hole 111..=112 inside connection b1, 113..=120, a duplicate.
    for n in (100..=110).chain(113..=120) {
        frames.push(frame("binance", "BTCUSDT", "b1", &[n]));
    }
    frames.push(frame("binance", "BTCUSDT", "b1", &[105]));
    // Coinbase BTC-USD: 1, 2, 3, 5 (hole 4), 9 (hole 6..=8), then 7 arrives late (partly filled).
    for n in [1, 2, 3, 5, 9, 7] {
        frames.push(frame("coinbase", "BTC-USD", "c1", &[n]));
    }
    // Kraken: two trades per frame, consecutive; a pair out of order inside its frame is a
    // reordering, not a gap.
    for pair in [[1, 2], [4, 3], [5, 6]] {
        frames.push(frame("kraken", "ETH/USD", "k1", &pair));
    }
    // Finnhub has no numbering: never a gap.
    for _ in 0..3 {
        frames.push(frame("finnhub", "BINANCE:BTCUSDT", "f1", &[0]));
    }
    frames
}

fn phase_two() -> Vec<Frame> {
    let mut frames = Vec::new();
    // Binance reconnects (b2): 131.. means 121..=130 were missed while down.
    for n in 131..=135 {
        frames.push(frame("binance", "BTCUSDT", "b2", &[n]));
    }
    // 136 is dead-lettered (negative price) but was received: 137 after it is no hole.
    frames.push(Frame {
        bad_price: true,
        ..frame("binance", "BTCUSDT", "b2", &[136])
    });
    frames.push(frame("binance", "BTCUSDT", "b2", &[137]));
    // The rest of Coinbase's holes arrive (4, 6, 8: both gaps filled), one twice.
    for n in [4, 8, 6, 6] {
        frames.push(frame("coinbase", "BTC-USD", "c1", &[n]));
    }
    // Binance's first hole is filled late; the reconnect hole only in part.
    for n in [111, 112, 121, 125] {
        frames.push(frame("binance", "BTCUSDT", "b2", &[n]));
    }
    // The backfill finds the rest of 121..=130 gone: the gap is closed as DROPPED, 8 lost. A
    // range no gap holds changes nothing.
    for gone in [(122, 124), (126, 130), (500, 510)] {
        frames.push(Frame {
            gone: Some(gone),
            ..frame("binance", "BTCUSDT", "backfill-binance-1", &[])
        });
    }
    // Kraken skips 7 and 8 inside a frame's pair.
    frames.push(frame("kraken", "ETH/USD", "k1", &[9, 10]));
    frames
}

type GapId = (String, String, i64, i64);

/// The independent recomputation: per stream in production order, a number above the highest
/// seen + 1 opens the gap between; a gap is filled when every number in it was seen after it
/// opened, dropped when the rest of it was declared gone. Returns the records as
/// ((stream, first, last), status, found).
fn expected(frames: &[&Frame]) -> BTreeSet<(GapId, String, String)> {
    let mut out = BTreeSet::new();
    let mut highest: BTreeMap<(&str, &str), (u64, &str)> = BTreeMap::new();
    // (stream, first, last, the numbers still missing, how many were declared gone)
    type Open<'a> = ((&'a str, &'a str), u64, u64, BTreeSet<u64>, u64);
    let mut open: Vec<Open> = Vec::new();
    for f in frames {
        if f.provider == "finnhub" {
            continue;
        }
        let stream = (f.provider, f.symbol);
        if let Some((first, last)) = f.gone {
            for (s, _, _, missing, lost) in open.iter_mut() {
                if *s == stream {
                    for n in first..=last {
                        if missing.remove(&n) {
                            *lost += 1;
                        }
                    }
                }
            }
        }
        // A frame's trades are taken in number order.
        let mut numbers = f.numbers.clone();
        numbers.sort_unstable();
        for &n in &numbers {
            for (s, _, _, missing, _) in open.iter_mut() {
                if *s == stream {
                    missing.remove(&n);
                }
            }
            match highest.get(&stream).copied() {
                None => {
                    highest.insert(stream, (n, f.connection));
                }
                Some((h, connection)) if n > h => {
                    if n > h + 1 {
                        let found = if connection == f.connection {
                            "connection"
                        } else {
                            "reconnect"
                        };
                        out.insert((
                            id(stream, h + 1, n - 1),
                            "OPEN".to_string(),
                            found.to_string(),
                        ));
                        open.push((stream, h + 1, n - 1, (h + 1..n).collect(), 0));
                    }
                    highest.insert(stream, (n, f.connection));
                }
                Some(_) => {}
            }
        }
        open.retain(|(stream, first, last, missing, lost)| {
            if missing.is_empty() {
                let status = if *lost > 0 { "DROPPED" } else { "FILLED" };
                let found = out
                    .iter()
                    .find(|(g, s, _)| *g == id(*stream, *first, *last) && s == "OPEN")
                    .map(|(_, _, f)| f.clone())
                    .unwrap();
                out.insert((id(*stream, *first, *last), status.to_string(), found));
                false
            } else {
                true
            }
        });
    }
    out
}

fn id(stream: (&str, &str), first: u64, last: u64) -> GapId {
    (
        stream.0.to_string(),
        stream.1.to_string(),
        first as i64,
        last as i64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hole_in_a_trade_numbering_is_reported_once_and_its_filling_too() {
    let stack = Stack::require().await;
    let raw = testkit::unique_topic("gaps-raw");
    let out = testkit::unique_topic("gaps-out");
    let dlq = testkit::unique_topic("gaps-dlq");
    let gaps = testkit::unique_topic("gaps-gaps");
    let refdata = testkit::unique_topic("gaps-ref");
    let group = testkit::unique_name("gaps", "norm", '-');
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[
            TopicSpec::new(&raw, 2),
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
    let env = vec![
        ("TICKFLOW_NORMALIZER__INPUT_TOPICS", raw.clone()),
        ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", out.clone()),
        ("TICKFLOW_NORMALIZER__DLQ_TOPIC", dlq.clone()),
        ("TICKFLOW_NORMALIZER__GAPS_TOPIC", gaps.clone()),
        ("TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC", refdata.clone()),
        (
            "TICKFLOW_NORMALIZER__INSTRUMENTS_FILE",
            file.path().display().to_string(),
        ),
        ("TICKFLOW_NORMALIZER__GROUP_ID", group.clone()),
        (
            "TICKFLOW_NORMALIZER__TRANSACTIONAL_ID",
            format!("{group}-a"),
        ),
    ];

    let codec = AvroCodec::new(&registry, &[(raw.as_str(), avro::RAW_ENVELOPE)]);
    let producer = kafka::producer(&stack.kafka, "it").unwrap();
    let mut sequence: BTreeMap<&str, i64> = BTreeMap::new();
    let t0_ms = now_micros() / 1000;
    let mut produced = 0_i64;
    let mut produce = async |frames: &[Frame]| {
        for f in frames {
            let seq = sequence.entry(f.connection).or_default();
            *seq += 1;
            let envelope = RawEnvelope {
                provider: f.provider.into(),
                connection_id: f.connection.into(),
                sequence: *seq,
                received_at: now_micros(),
                channel: if f.gone.is_some() {
                    tickflow_shared::gap::UNRECOVERABLE_CHANNEL.into()
                } else {
                    "test".into()
                },
                payload: match f.gone {
                    Some((first, last)) => {
                        serde_json::to_vec(&tickflow_shared::gap::Unrecoverable {
                            symbol: f.symbol.into(),
                            first,
                            last,
                        })
                        .unwrap()
                    }
                    None => payload(f, t0_ms + produced).into_bytes(),
                },
            };
            produced += 1;
            let bytes = codec.encode_raw(&raw, &envelope).await.unwrap();
            producer
                .send(
                    FutureRecord::to(&raw).key(f.symbol).payload(&bytes),
                    Duration::from_secs(30),
                )
                .await
                .expect("produced");
        }
    };

    let one = phase_one();
    let two = phase_two();
    let first: Vec<&Frame> = one.iter().collect();
    let all: Vec<&Frame> = one.iter().chain(two.iter()).collect();
    let expect_first = expected(&first);
    let expect_all = expected(&all);
    assert!(
        expect_first.len() >= 3 && expect_all.len() > expect_first.len() + 3,
        "the scenario has gaps in both phases: {expect_all:?}"
    );

    let consumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "gaps", '-'))
            .unwrap();
    let reader = AvroCodec::new(&registry, &[]);
    let mut got: Vec<GapRecord> = Vec::new();
    let read_until = async |got: &mut Vec<GapRecord>, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut settled: Option<Instant> = None;
        while Instant::now() < deadline
            && settled.is_none_or(|s| s.elapsed() < Duration::from_secs(3))
        {
            if got.len() >= count && settled.is_none() {
                settled = Some(Instant::now());
            }
            let Ok(message) =
                tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            else {
                continue;
            };
            let message = message.unwrap();
            let value = reader.decode(message.payload().unwrap()).await.unwrap();
            let record = GapRecord::from_value(value).unwrap();
            assert_eq!(
                message.key(),
                Some(record.key().as_bytes()),
                "keyed by provider/symbol"
            );
            got.push(record);
        }
    };
    let summary = |got: &[GapRecord]| -> Vec<(GapId, String, String)> {
        got.iter()
            .map(|g| {
                (
                    (
                        g.provider.clone(),
                        g.symbol.clone(),
                        g.first_missing,
                        g.last_missing,
                    ),
                    g.status.clone(),
                    g.found.clone(),
                )
            })
            .collect()
    };

    let binary = env!("CARGO_BIN_EXE_normalizer");
    let mut a = ServiceProcess::spawn(binary, &stack, &env);
    a.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    // The normalizer created the gaps topic at start.
    consumer.subscribe(&[gaps.as_str()]).unwrap();
    produce(&one).await;
    read_until(&mut got, expect_first.len()).await;
    let mut seen = summary(&got);
    seen.sort();
    assert_eq!(
        seen,
        expect_first.iter().cloned().collect::<Vec<_>>(),
        "phase one\n{}",
        a.log()
    );
    assert_eq!(
        a.metric_sum("tickflow_normalizer_gaps_total", "status=\"OPEN\"")
            .await,
        expect_first.iter().filter(|g| g.1 == "OPEN").count() as f64
    );
    let missing: i64 = got.iter().map(|g| g.still_missing).sum::<i64>();
    assert_eq!(
        a.metric_sum("tickflow_normalizer_gap_trades_missing_total", "provider=")
            .await,
        missing as f64
    );
    assert!(a.log().contains("gap in the provider's trade numbering"));

    // Killed: the second phase runs on the state the warm-up rebuilds from the raw partition.
    a.kill_hard();
    let mut b = ServiceProcess::spawn(binary, &stack, &env);
    b.wait_for("/readyz", 200, Duration::from_secs(60)).await;
    produce(&two).await;
    read_until(&mut got, expect_all.len()).await;
    let logs = format!("--- a ---\n{}\n--- b ---\n{}", a.log(), b.log());
    let mut seen = summary(&got);
    seen.sort();
    assert_eq!(
        seen,
        expect_all.iter().cloned().collect::<Vec<_>>(),
        "every gap once, and every filling once, across the kill\n{logs}"
    );
    for g in &got {
        let (instrument, exchange) = match g.provider.as_str() {
            "binance" => ("BTC-USDT", "binance"),
            "coinbase" => ("BTC-USD", "coinbase"),
            "kraken" => ("ETH-USD", "kraken"),
            other => panic!("a gap for {other}"),
        };
        assert_eq!(
            (g.instrument.as_str(), g.exchange.as_str()),
            (instrument, exchange)
        );
        let expect_missing = match g.status.as_str() {
            "OPEN" => g.last_missing - g.first_missing + 1,
            // 121..=130: 121 and 125 came, the 8 others were declared gone.
            "DROPPED" => 8,
            _ => 0,
        };
        assert_eq!(g.still_missing, expect_missing, "{g:?}");
        assert!(g.source.starts_with(&format!("{raw}/")), "{g:?}");
    }
    // After the restart: the fills of phase two are counted, and what is still open is shown.
    let recovered = b
        .metric_sum(
            "tickflow_normalizer_gap_trades_recovered_total",
            "provider=\"coinbase\"",
        )
        .await;
    assert_eq!(
        recovered, 3.0,
        "4, 8 and 6 (once) arrived after their gaps\n{logs}"
    );
    let open_binance = b
        .metric_sum("tickflow_normalizer_gaps_open", "provider=\"binance\"")
        .await;
    assert_eq!(
        open_binance, 0.0,
        "121..=130, partly filled, was closed when the rest was gone\n{logs}"
    );
    let open_trades = b
        .metric_sum(
            "tickflow_normalizer_gap_trades_open",
            "provider=\"binance\"",
        )
        .await;
    assert_eq!(open_trades, 0.0, "{logs}");
    b.terminate(Duration::from_secs(20));
}
