//! A backlog over two raw topics, as after any restart: trades of 40 instruments on three
//! venues, two venues' frames on one raw topic (two partitions) and the third venue's on a second
//! topic, produced while no service runs; then the normalizer and the aggregator start, fresh.
//! The normalizer writes the backlog to the Trade topic in blocks, source by source. Afterwards:
//! every candle (1 minute and every roll-up) equals the batch recomputation from every trade, and
//! the late topic holds only trades that were late in their own source's order.
//!
//! Then the normalizer stops for longer than the aggregator's idle timeout while more trades of
//! the same minutes arrive: every source goes idle, the watermark follows the wall clock, and
//! the new trades come too late when the normalizer is back. Their windows are recomputed from
//! the stored trades, so every candle again equals the recomputation from every trade.

use tickflow_testkit::aggregator as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rust_decimal::Decimal;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::domain::{now_micros, Candle, RawEnvelope, Side, Trade, MICROS_PER_SECOND};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, sample_trade, ServiceProcess, Stack};
use trade_aggregator::config::AggregatorConfig;
use trade_aggregator::operator::Timing;
use trade_aggregator::reference::{batch_candles, batch_rollups, same_values};
use trade_aggregator::store::CandleStore;

use support::{aggregator_env, days_of, stored_candles, stored_rollups};

const S: i64 = MICROS_PER_SECOND;
const INSTRUMENTS: usize = 40;
const VENUES: [&str; 3] = ["sim-a", "sim-b", "sim-c"];
const IDLE_TIMEOUT_MS: &str = "10000";

fn instrument(i: usize) -> String {
    format!("X{i:02}-USD")
}

/// The reference data: every instrument listed by the simulator provider.
fn instruments_file() -> String {
    (0..INSTRUMENTS)
        .map(|i| {
            format!(
                "[[instrument]]\ninstrument = \"{0}\"\nbase = \"X{1:02}\"\nquote = \"USD\"\nasset_class = \"CRYPTO\"\nlistings = [{{ provider = \"simulator\", symbol = \"{0}\" }}]\n",
                instrument(i),
                i
            )
        })
        .collect()
}

/// Seeded trades from `from`, one every 30 ms of nominal time, in each venue's arrival order:
/// 40 % out of order within 1.5 s, 1 % late by 30 to 140 s. Ids start at `first_id`.
fn generate(rng: &mut StdRng, count: usize, from: i64, first_id: usize) -> Vec<Trade> {
    let mut prices = vec![10_000_000i64; INSTRUMENTS];
    (0..count)
        .map(|n| {
            let which = rng.random_range(0..INSTRUMENTS);
            prices[which] = (prices[which] + rng.random_range(-500..=500)).max(1);
            let nominal = from + n as i64 * 30_000;
            let event_time = match rng.random_range(0..100) {
                0 => nominal - rng.random_range(30..140) * S,
                1..=40 => nominal - rng.random_range(0..1_500_000),
                _ => nominal,
            };
            Trade {
                instrument: instrument(which),
                base: format!("X{which:02}"),
                quote: "USD".into(),
                exchange: VENUES[rng.random_range(0..VENUES.len())].into(),
                provider: "simulator".into(),
                provider_symbol: instrument(which),
                trade_id: format!("b{}", first_id + n),
                price: Decimal::new(prices[which] * 1000 + rng.random_range(0..1000), 8),
                size: Decimal::new(rng.random_range(1..5_000_000), 6),
                side: [Side::Buy, Side::Sell][rng.random_range(0..2)],
                event_time,
                // The gateway received it at its nominal time: that is when it arrived.
                ingest_time: nominal,
                ..sample_trade()
            }
        })
        .collect()
}

/// The raw frame the simulator provider sends for `trade`.
fn frame(trade: &Trade, sequence: i64) -> RawEnvelope {
    let side = match trade.side {
        Side::Buy => "buy",
        _ => "sell",
    };
    let payload = format!(
        r#"{{"type":"trade","venue":"{}","symbol":"{}","trade_id":"{}","price":"{}","size":"{}","side":"{side}","ts_us":{},"seq":{sequence}}}"#,
        trade.exchange, trade.instrument, trade.trade_id, trade.price, trade.size, trade.event_time
    );
    RawEnvelope {
        provider: "simulator".into(),
        connection_id: format!("backlog-{}", trade.exchange),
        sequence,
        received_at: trade.ingest_time,
        channel: "trades".into(),
        payload: payload.into_bytes(),
    }
}

/// The raw topic (0 or 1) and partition of a trade's frame: venues a and b on the first topic
/// (two partitions, by symbol, as the gateway keys frames), venue c on the second.
fn raw_source(trade: &Trade) -> (usize, i32) {
    if trade.exchange == "sim-c" {
        (1, 0)
    } else {
        let index: i32 = trade.instrument[1..3].parse().unwrap();
        (0, index % 2)
    }
}

/// The trades late beyond the allowed lateness in their own source's order alone (the source's
/// newest event time minus the out-of-orderness as the watermark): the most that any watermark
/// built from the source can call too late, since a partition's watermark is never ahead of one
/// of its active sources'.
fn late_in_their_own_source(trades: &[Trade], timing: &Timing) -> BTreeSet<String> {
    let mut newest: BTreeMap<(usize, i32), i64> = BTreeMap::new();
    let mut late = BTreeSet::new();
    for t in trades {
        let source = newest.entry(raw_source(t)).or_insert(i64::MIN);
        let end = t.event_time.div_euclid(timing.window) * timing.window + timing.window;
        if end + timing.allowed_lateness <= source.saturating_sub(timing.out_of_orderness) {
            late.insert(t.trade_id.clone());
        }
        *source = (*source).max(t.event_time);
    }
    late
}

struct Raw {
    producer: rdkafka::producer::FutureProducer,
    codec: AvroCodec,
    topics: [String; 2],
    sequence: i64,
}

impl Raw {
    /// Produces every trade's frame to its raw topic and partition (see [`raw_source`]).
    async fn produce(&mut self, trades: &[Trade]) {
        let mut pending = Vec::new();
        for trade in trades {
            self.sequence += 1;
            let (topic, partition) = raw_source(trade);
            let topic = &self.topics[topic];
            let bytes = self
                .codec
                .encode_raw(topic, &frame(trade, self.sequence))
                .await
                .unwrap();
            pending.push(
                testkit::enqueue(
                    &self.producer,
                    topic,
                    &trade.instrument,
                    &bytes,
                    Some(partition),
                )
                .await,
            );
        }
        for delivery in pending {
            delivery.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_two_raw_topics_leaves_every_candle_exact() {
    let stack = Stack::require().await;
    let mut cassandra_config = stack.cassandra.clone();
    cassandra_config.keyspace = testkit::unique_keyspace("agg_backlog");
    let session = cassandra::connect(&cassandra_config).await.unwrap();
    cassandra::migrate(&session, &cassandra_config)
        .await
        .unwrap();

    let raw = [
        testkit::unique_topic("backlog-raw-ab"),
        testkit::unique_topic("backlog-raw-c"),
    ];
    let trades_topic = testkit::unique_topic("backlog-trades");
    let refdata = testkit::unique_topic("backlog-ref");
    let agg = AggregatorConfig {
        input_topic: trades_topic.clone(),
        candles_topic: testkit::unique_topic("backlog-candles"),
        late_topic: testkit::unique_topic("backlog-late"),
        operator_id: testkit::unique_name("agg", "backlog", '-'),
        ..AggregatorConfig::default()
    };
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[
            TopicSpec::new(&raw[0], 2),
            TopicSpec::new(&raw[1], 1),
            TopicSpec::new(&trades_topic, 3),
            TopicSpec::new(&refdata, 1).compacted(),
        ],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    for topic in &raw {
        registry.register(topic, avro::RAW_ENVELOPE).await.unwrap();
    }
    registry.register(&trades_topic, avro::TRADE).await.unwrap();

    // Six minutes of trades (and late ones up to 140 s before), all inside the last hour that
    // has ended, so every roll-up, 1 h included, is final once the watermark follows the wall
    // clock, whatever the time of day the test runs.
    let mut rng = StdRng::seed_from_u64(25);
    let hour = 3_600 * S;
    let t0 = now_micros().div_euclid(hour) * hour - 50 * 60 * S;
    let first = generate(&mut rng, 12_000, t0, 0);
    let mut raw_out = Raw {
        producer: kafka::producer(&stack.kafka, "it").unwrap(),
        codec: AvroCodec::new(
            &registry,
            &[
                (raw[0].as_str(), avro::RAW_ENVELOPE),
                (raw[1].as_str(), avro::RAW_ENVELOPE),
            ],
        ),
        topics: raw.clone(),
        sequence: 0,
    };
    raw_out.produce(&first).await;

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), instruments_file()).unwrap();
    let group = testkit::unique_name("norm", "backlog", '-');
    let normalizer_env: Vec<(&str, String)> = vec![
        // Both raw topics: a regular expression (librdkafka's `^` convention).
        (
            "TICKFLOW_NORMALIZER__INPUT_TOPICS",
            format!(
                "^({})$",
                raw.iter()
                    .map(|t| t.replace('.', "\\."))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
        ),
        ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", trades_topic.clone()),
        (
            "TICKFLOW_NORMALIZER__DLQ_TOPIC",
            testkit::unique_topic("backlog-dlq"),
        ),
        (
            "TICKFLOW_NORMALIZER__GAPS_TOPIC",
            testkit::unique_topic("backlog-gaps"),
        ),
        ("TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC", refdata.clone()),
        (
            "TICKFLOW_NORMALIZER__INSTRUMENTS_FILE",
            file.path().display().to_string(),
        ),
        ("TICKFLOW_NORMALIZER__GROUP_ID", group.clone()),
        ("TICKFLOW_NORMALIZER__TRANSACTIONAL_ID", group.clone()),
    ];
    let normalizer_binary = sibling_binary("normalizer");
    let mut normalizer = ServiceProcess::spawn(&normalizer_binary, &stack, &normalizer_env);
    normalizer
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    // The whole backlog on the Trade topic first: the aggregator then reads it in the blocks
    // the normalizer wrote, faster than its sources' idle timeout.
    wait_for_trades(&normalizer, first.len()).await;
    let env = aggregator_env(
        &stack,
        &cassandra_config.keyspace,
        &agg,
        &[("TICKFLOW_AGGREGATOR__IDLE_TIMEOUT_MS", IDLE_TIMEOUT_MS)],
    );
    let mut aggregator =
        ServiceProcess::spawn(env!("CARGO_BIN_EXE_trade-aggregator"), &stack, &env);
    aggregator
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    let timing = agg.timing();
    let store = CandleStore::new(session.clone(), &cassandra_config.keyspace)
        .await
        .unwrap();
    expect_exact(&store, &agg, &first, &mut aggregator, "the first backlog").await;
    let late = read_late(&stack, &registry, &agg).await;
    let allowed = late_in_their_own_source(&first, &timing);
    let wrongly_late: Vec<&String> = late.difference(&allowed).collect();
    assert!(
        wrongly_late.is_empty(),
        "{} trades on the late topic were not late in their own source's order (of {} there; {} were late in their source), e.g. {:?}",
        wrongly_late.len(),
        late.len(),
        allowed.len(),
        wrongly_late.iter().take(5).collect::<Vec<_>>()
    );

    // The normalizer stops; more trades of the same minutes arrive meanwhile.
    let (code, _) = normalizer.terminate(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "normalizer on SIGTERM:\n{}",
        normalizer.log()
    );
    let second = generate(&mut rng, 3_000, t0 + 2 * 60 * S, first.len());
    raw_out.produce(&second).await;
    // Longer than the idle timeout: every source of the aggregator goes idle.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut normalizer = ServiceProcess::spawn(&normalizer_binary, &stack, &normalizer_env);
    normalizer
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let all: Vec<Trade> = first.iter().chain(&second).cloned().collect();
    expect_exact(
        &store,
        &agg,
        &all,
        &mut aggregator,
        "after the second backlog",
    )
    .await;
    let metrics = aggregator
        .get("/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let corrected = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tickflow_aggregator_corrections_total")
                && l.contains("outcome=\"recomputed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(
        corrected > 0.0,
        "the second backlog was corrected by recomputation:\n{metrics}"
    );
    let late = read_late(&stack, &registry, &agg).await;
    let second_ids: BTreeSet<String> = second.iter().map(|t| t.trade_id.clone()).collect();
    assert!(
        late.intersection(&second_ids).count() > 0,
        "the second backlog came after the watermark followed the wall clock: its trades are audited as late"
    );
    drop(normalizer);
}

/// Waits until the normalizer has written `count` trades in all.
async fn wait_for_trades(normalizer: &ServiceProcess, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = normalizer
            .get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let written = testkit::metric_total(&metrics, "tickflow_normalizer_trades_total");
        if written >= count as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the normalizer wrote {written} of {count} trades in 120 s:\n{}",
            normalizer.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The test binary's sibling in the target directory (`cargo test --workspace` builds every
/// service binary before running tests).
fn sibling_binary(name: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .unwrap();
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p {name}` first (scripts/test builds every service)",
        path.display()
    );
    path.display().to_string()
}

/// Waits until every final candle in Cassandra equals the batch recomputation over `trades`.
async fn expect_exact(
    store: &CandleStore,
    agg: &AggregatorConfig,
    trades: &[Trade],
    aggregator: &mut ServiceProcess,
    when: &str,
) {
    let timing = agg.timing();
    let (expected, _) = batch_candles(trades, &timing);
    let intervals = agg.rollup_intervals();
    let mut expected_rollups: BTreeMap<(String, String, String, i64), Candle> = BTreeMap::new();
    for interval in &intervals {
        expected_rollups.extend(
            batch_rollups(trades, interval.length, &interval.label)
                .into_iter()
                .map(|((i, v, start), c)| ((i, v, interval.label.clone(), start), c)),
        );
    }
    let instruments: Vec<String> = (0..INSTRUMENTS).map(instrument).collect();
    let instruments: Vec<&str> = instruments.iter().map(String::as_str).collect();
    let venues: Vec<&str> = VENUES.iter().copied().chain(["*"]).collect();
    let days = days_of(&expected);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            aggregator.is_running(),
            "aggregator exited:\n{}",
            aggregator.log()
        );
        let stored = stored_candles(store, &instruments, &venues, &days)
            .await
            .unwrap();
        let rollups = stored_rollups(store, &instruments, &venues, &intervals, &days)
            .await
            .unwrap();
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(k, want)| {
                !stored
                    .get(*k)
                    .is_some_and(|got| got.is_final && same_values(got, want))
            })
            .map(|(k, want)| {
                format!(
                    "{k:?}: got {:?}, want count {}",
                    stored.get(k).map(|c| c.count),
                    want.count
                )
            })
            .chain(
                expected_rollups
                    .iter()
                    .filter(|(k, want)| {
                        !rollups
                            .get(*k)
                            .is_some_and(|got| got.is_final && same_values(got, want))
                    })
                    .map(|(k, want)| {
                        format!(
                            "{k:?}: got {:?}, want count {}",
                            rollups.get(k).map(|c| c.count),
                            want.count
                        )
                    }),
            )
            .collect();
        let extra = stored.keys().filter(|k| !expected.contains_key(*k)).count();
        if wrong.is_empty() && extra == 0 {
            eprintln!(
                "{when}: {} candles and {} roll-ups equal the recomputation from {} trades",
                expected.len(),
                expected_rollups.len(),
                trades.len()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: {} of {} candles and roll-ups differ from the recomputation, {extra} unexpected, e.g.\n{}\naggregator log:\n{}",
            wrong.len(),
            expected.len() + expected_rollups.len(),
            wrong.iter().take(5).cloned().collect::<Vec<_>>().join("\n"),
            aggregator.log()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The trade ids on the late topic so far.
async fn read_late(stack: &Stack, registry: &Registry, agg: &AggregatorConfig) -> BTreeSet<String> {
    let codec = AvroCodec::new(registry, &[]);
    let consumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "late", '-'))
            .unwrap();
    consumer.subscribe(&[&agg.late_topic]).unwrap();
    let mut seen = BTreeSet::new();
    // The aggregator has landed everything it emits before the candles checked above; a quiet
    // 5 s means the topic is read to its end.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
    {
        if let Some(payload) = message.payload() {
            seen.insert(codec.decode_trade(payload).await.unwrap().trade_id);
        }
    }
    seen
}
