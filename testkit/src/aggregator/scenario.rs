//! The exactly-once scenario the crash and rebalance tests share: a seeded stream with
//! out-of-order, late and too-late trades, produced at a steady pace while the test does its
//! worst to the aggregator; then every candle in Cassandra (1-minute and every roll-up interval)
//! must equal a batch recomputation of the same input done here, not one trade lost or counted
//! twice, only too-late trades may be on the late topic, and the candle topic must end with the
//! same values.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate as testkit;
use crate::{sample_trade, ServiceProcess, Stack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::config::CassandraConfig;
use tickflow_shared::domain::{Candle, Side, Trade, MICROS_PER_SECOND as S};
use tickflow_shared::kafka::{self, TopicSpec};
use trade_aggregator::config::AggregatorConfig;
use trade_aggregator::reference::{batch_candles, batch_rollups, same_values};
use trade_aggregator::sink::STAMP_HEADER;
use trade_aggregator::store::CandleStore;

use super::{aggregator_env, days_of, stored_candles, stored_rollups};

/// The first trade's nominal time: the start of the day before today (UTC), so every window is
/// within the stored trades' TTL and a too-late trade's window can be recomputed.
pub fn t0() -> i64 {
    const DAY: i64 = 86_400 * S;
    (tickflow_shared::domain::now_micros().div_euclid(DAY) - 1) * DAY
}
pub const INSTRUMENTS: [&str; 4] = ["BTC-USD", "ETH-USD", "SOL-USD", "AAPL"];
pub const EXCHANGES: [&str; 2] = ["coinbase", "kraken"];
pub const PARTITIONS: i32 = 4;

/// Seeded trades per partition, in the order they are produced there.
pub fn generate(count: usize) -> BTreeMap<i32, Vec<Trade>> {
    let mut rng = StdRng::seed_from_u64(20261122);
    let mut prices: [i64; 4] = [6_700_000, 350_000, 15_000, 19_000]; // in cents
    let mut out: BTreeMap<i32, Vec<Trade>> = BTreeMap::new();
    let t0 = t0();
    for i in 0..count {
        let which = rng.random_range(0..INSTRUMENTS.len());
        prices[which] = (prices[which] + rng.random_range(-50..=50)).max(1);
        let nominal = t0 + i as i64 * 250_000;
        let event_time = match rng.random_range(0..100) {
            0..=2 => nominal - rng.random_range(30..140) * S, // late: some within lateness, some not
            3..=40 => nominal - rng.random_range(0..1_500_000), // out of order within 1.5 s
            _ => nominal,
        };
        let trade = Trade {
            instrument: INSTRUMENTS[which].into(),
            exchange: EXCHANGES[rng.random_range(0..2)].into(),
            provider: "simulated".into(),
            trade_id: format!("t{i}"),
            price: Decimal::new(prices[which] * 1000 + rng.random_range(0..1000), 5),
            size: Decimal::new(rng.random_range(1..5_000_000), 6),
            side: [Side::Buy, Side::Sell, Side::Unknown][rng.random_range(0..3)],
            event_time,
            ingest_time: event_time + 1_000,
            normalized_time: event_time + 2_000,
            ..sample_trade()
        };
        out.entry(which as i32 % PARTITIONS)
            .or_default()
            .push(trade);
    }
    out
}

/// A running scenario: its stack, keyspace and topics, what the results must be, and the
/// producer still producing.
pub struct Scenario {
    pub stack: Stack,
    pub session: Arc<Session>,
    pub cassandra_config: CassandraConfig,
    pub agg: AggregatorConfig,
    pub registry: Registry,
    pub expected: BTreeMap<(String, String, i64), Candle>,
    pub expected_rollups: BTreeMap<(String, String, String, i64), Candle>,
    pub too_late: BTreeSet<String>,
    pub producing: tokio::task::JoinHandle<()>,
    /// The environment of an aggregator process of this scenario.
    pub env: Vec<(&'static str, String)>,
}

impl Scenario {
    /// Creates the keyspace and topics, computes the expected results of `count` trades, and
    /// starts producing them in chunks of 100 every `pause_ms`. `extra_env` is added to the
    /// aggregator's environment.
    pub async fn start(
        name: &str,
        count: usize,
        pause_ms: u64,
        extra_env: &[(&'static str, &str)],
    ) -> Scenario {
        let stack = Stack::require().await;
        let mut cassandra_config = stack.cassandra.clone();
        cassandra_config.keyspace = testkit::unique_keyspace(&format!("agg_{name}"));
        let session = cassandra::connect(&cassandra_config).await.unwrap();
        cassandra::migrate(&session, &cassandra_config)
            .await
            .unwrap();

        let input = testkit::unique_topic("agg-in");
        let agg = AggregatorConfig {
            input_topic: input.clone(),
            candles_topic: testkit::unique_topic("agg-candles"),
            late_topic: testkit::unique_topic("agg-late"),
            operator_id: testkit::unique_name("agg", name, '-'),
            ..AggregatorConfig::default()
        };
        let admin = kafka::admin(&stack.kafka).unwrap();
        kafka::ensure_topics(
            &admin,
            &[TopicSpec::new(&input, PARTITIONS)],
            &BTreeMap::new(),
        )
        .await
        .unwrap();
        let registry = Registry::new(&stack.registry).unwrap();
        registry.register(&input, avro::TRADE).await.unwrap();

        let trades = generate(count);
        let timing = agg.timing();
        let mut expected: BTreeMap<(String, String, i64), Candle> = BTreeMap::new();
        let mut too_late = BTreeSet::new();
        // Roll-ups by (instrument, venue, interval, start).
        let mut expected_rollups: BTreeMap<(String, String, String, i64), Candle> = BTreeMap::new();
        for partition_trades in trades.values() {
            let (candles, late) = batch_candles(partition_trades, &timing);
            expected.extend(candles);
            too_late.extend(late.into_iter().map(|t| t.trade_id));
            for interval in agg.rollup_intervals() {
                let rollups = batch_rollups(partition_trades, interval.length, &interval.label);
                expected_rollups.extend(
                    rollups
                        .into_iter()
                        .map(|((i, v, start), c)| ((i, v, interval.label.clone(), start), c)),
                );
            }
        }
        assert_eq!(
            agg.rollup_intervals().len(),
            3,
            "the default roll-ups are on"
        );
        assert!(
            !too_late.is_empty(),
            "the stream must contain too-late trades"
        );

        // Produce at a steady pace in the background, partition by partition in order.
        let producer_stack = Stack::require().await;
        let input_for_producer = input.clone();
        let to_send: Vec<(i32, Trade)> = {
            let mut merged: Vec<(usize, i32, Trade)> = Vec::new();
            for (p, list) in &trades {
                for (i, t) in list.iter().enumerate() {
                    merged.push((i * PARTITIONS as usize + *p as usize, *p, t.clone()));
                }
            }
            merged.sort_by_key(|(k, _, _)| *k);
            merged.into_iter().map(|(_, p, t)| (p, t)).collect()
        };
        let producing = tokio::spawn(async move {
            for chunk in to_send.chunks(100) {
                let chunk: Vec<(Option<i32>, Trade)> =
                    chunk.iter().map(|(p, t)| (Some(*p), t.clone())).collect();
                testkit::produce_trades(&producer_stack, &input_for_producer, chunk)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
        });
        let mut env = aggregator_env(
            &stack,
            &cassandra_config.keyspace,
            &agg,
            &[
                ("TICKFLOW_AGGREGATOR__CHECKPOINT_INTERVAL_MS", "300"),
                ("TICKFLOW_AGGREGATOR__IDLE_TIMEOUT_MS", "3000"),
                ("TICKFLOW_AGGREGATOR__EARLY_FIRING_INTERVAL_MS", "200"),
                ("TICKFLOW_AGGREGATOR__MAX_BATCH", "200"),
            ],
        );
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
        Scenario {
            stack,
            session,
            cassandra_config,
            agg,
            registry,
            expected,
            expected_rollups,
            too_late,
            producing,
            env,
        }
    }

    /// Waits until the producer is done.
    pub async fn produced(&mut self) {
        (&mut self.producing).await.unwrap();
    }

    /// With `service` (the last instance, ready) running to the end: every result equals the
    /// recomputation; `what` names what was done to the aggregator, for the failure message.
    pub async fn verify(self, service: &mut ServiceProcess, what: &str) {
        let Scenario {
            stack,
            session,
            cassandra_config,
            agg,
            registry,
            expected,
            expected_rollups,
            too_late,
            ..
        } = self;
        let store = CandleStore::new(session.clone(), &cassandra_config.keyspace)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let mut mismatches: Vec<String>;
        loop {
            mismatches = Vec::new();
            let days = days_of(&expected);
            let venues: Vec<&str> = EXCHANGES.iter().copied().chain(["*"]).collect();
            let stored = stored_candles(&store, &INSTRUMENTS, &venues, &days)
                .await
                .unwrap();
            compare(&expected, &stored, &mut mismatches);
            let stored_rollups = stored_rollups(
                &store,
                &INSTRUMENTS,
                &venues,
                &agg.rollup_intervals(),
                &days,
            )
            .await
            .unwrap();
            compare(&expected_rollups, &stored_rollups, &mut mismatches);
            if mismatches.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            mismatches.is_empty(),
            "{} of {} candles and roll-ups differ after {what}, e.g.:\n{}\nlog:\n{}",
            mismatches.len(),
            expected.len() + expected_rollups.len(),
            mismatches
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            service.log()
        );

        // The late topic audits trades that came too late, with their reason, and only those: a
        // trade there is too late in the reference's replay of the watermark. Not necessarily
        // every one of them: a partition started without a checkpoint holds its watermark back
        // for one idle timeout (processing time) until its unseen sources show up, so the trades
        // read meanwhile are not too late for it. Each is counted in its candle either way.
        let codec = AvroCodec::new(&registry, &[]);
        let consumer =
            kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "late", '-'))
                .unwrap();
        consumer.subscribe(&[&agg.late_topic]).unwrap();
        let mut seen = BTreeSet::new();
        while seen.len() < too_late.len() {
            let Ok(message) = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await
            else {
                break;
            };
            let message = message.unwrap();
            let reason = message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "tickflow.reason")
                    .and_then(|h| h.value.map(|v| v.to_vec()))
            });
            assert_eq!(reason.as_deref(), Some(&b"too_late"[..]));
            seen.insert(
                codec
                    .decode_trade(message.payload().unwrap())
                    .await
                    .unwrap()
                    .trade_id,
            );
        }
        let not_late: Vec<&String> = seen.difference(&too_late).collect();
        assert!(
            not_late.is_empty(),
            "{} trades on the late topic were not too late, e.g. {:?}",
            not_late.len(),
            not_late.iter().take(5).collect::<Vec<_>>()
        );
        eprintln!(
            "late topic: {} of the {} trades the reference calls too late",
            seen.len(),
            too_late.len()
        );

        // The candle topic carries the same final values: for each window, its record with the
        // highest write stamp (header), as in Cassandra. A replay after a crash appends records
        // again (with revisions that may restart) under higher stamps; an instance paused past its
        // session timeout may append stale records after its successor's, under lower ones.
        let consumer = kafka::stream_consumer(
            &stack.kafka,
            "it",
            &testkit::unique_name("it", "candles", '-'),
        )
        .unwrap();
        consumer.subscribe(&[&agg.candles_topic]).unwrap();
        let mut on_kafka: BTreeMap<(String, String, i64), (i64, Candle)> = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let settled = on_kafka.len() == expected.len()
                && expected.iter().all(|(k, want)| {
                    on_kafka
                        .get(k)
                        .is_some_and(|(_, got)| got.is_final && same_values(got, want))
                });
            if settled {
                break;
            }
            let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
            else {
                continue;
            };
            let stamp: i64 = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == STAMP_HEADER))
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                .expect("every candle record has a write stamp");
            let candle = codec
                .decode_candle(message.payload().unwrap())
                .await
                .unwrap();
            let key = (
                candle.instrument.clone(),
                candle.venue.clone(),
                candle.window_start,
            );
            if on_kafka.get(&key).is_none_or(|(old, _)| stamp > *old) {
                on_kafka.insert(key, (stamp, candle));
            }
        }
        let differing: Vec<_> = expected
            .iter()
            .filter(|(k, want)| {
                !on_kafka
                    .get(*k)
                    .is_some_and(|(_, got)| got.is_final && same_values(got, want))
            })
            .map(|(k, _)| k.clone())
            .collect();
        assert!(
            differing.is_empty(),
            "{} candles on Kafka differ, e.g. {:?}",
            differing.len(),
            differing.first()
        );
        assert_eq!(on_kafka.len(), expected.len(), "no extra windows on Kafka");

        let (code, _) = service.terminate(Duration::from_secs(15));
        assert_eq!(code, Some(0), "{}", service.log());
        session
            .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
            .await
            .unwrap();
    }
}

/// Every expected candle is stored, final and equal; nothing else is stored.
pub fn compare<K: Ord + std::fmt::Debug>(
    expected: &BTreeMap<K, Candle>,
    stored: &BTreeMap<K, Candle>,
    mismatches: &mut Vec<String>,
) {
    for (key, want) in expected {
        match stored.get(key) {
            Some(got) if same_values(got, want) && got.is_final => {}
            Some(got) => mismatches.push(format!("{key:?}: got {got:?}\n want {want:?}")),
            None => mismatches.push(format!("{key:?}: missing")),
        }
    }
    for key in stored.keys() {
        if !expected.contains_key(key) {
            mismatches.push(format!("{key:?}: unexpected candle"));
        }
    }
}
