//! What the fair-price integration tests share: the multi-provider scenario's trades, the
//! independent recomputation of a fair price from them, and reading topics back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate as testkit;
use crate::{sample_trade, Stack};
use fair_price::records::FairPrice;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use tickflow_shared::avro::{self, Registry};
use tickflow_shared::cassandra;
use tickflow_shared::config::CassandraConfig;
use tickflow_shared::domain::{now_micros, AssetClass, Micros, Trade};
use tickflow_shared::kafka::{self, TopicSpec};

/// A fresh keyspace named after `test`, migrated; its config and a session.
pub async fn migrated_keyspace(stack: &Stack, test: &str) -> (Arc<Session>, CassandraConfig) {
    let mut config = stack.cassandra.clone();
    config.keyspace = testkit::unique_keyspace(test);
    let session = cassandra::connect(&config).await.unwrap();
    cassandra::migrate(&session, &config).await.unwrap();
    (session, config)
}

/// The topics of one fair-price process in a test: the input is created with `partitions` and
/// its Trade schema registered; the service creates the other two.
pub struct Topics {
    pub input: String,
    pub output: String,
    pub anomalies: String,
}

impl Topics {
    pub async fn create(stack: &Stack, prefix: &str, partitions: i32) -> Self {
        let topics = Topics {
            input: testkit::unique_topic(&format!("{prefix}-in")),
            output: testkit::unique_topic(&format!("{prefix}-out")),
            anomalies: testkit::unique_topic(&format!("{prefix}-anomalies")),
        };
        let admin = kafka::admin(&stack.kafka).unwrap();
        kafka::ensure_topics(
            &admin,
            &[TopicSpec::new(&topics.input, partitions)],
            &BTreeMap::new(),
        )
        .await
        .unwrap();
        Registry::new(&stack.registry)
            .unwrap()
            .register(&topics.input, avro::TRADE)
            .await
            .unwrap();
        topics
    }
}

/// The environment of a fair-price process: Cassandra as `cassandra` says, `topics`, consumer
/// group `group` (the same group after a restart), gRPC on `grpc_port`.
pub fn service_env(
    cassandra: &CassandraConfig,
    topics: &Topics,
    group: &str,
    grpc_port: u16,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "TICKFLOW_CASSANDRA__CONTACT_POINTS",
            cassandra.contact_points.join(","),
        ),
        ("TICKFLOW_CASSANDRA__KEYSPACE", cassandra.keyspace.clone()),
        ("TICKFLOW_FAIR_PRICE__INPUT_TOPIC", topics.input.clone()),
        ("TICKFLOW_FAIR_PRICE__OUTPUT_TOPIC", topics.output.clone()),
        (
            "TICKFLOW_FAIR_PRICE__ANOMALIES_TOPIC",
            topics.anomalies.clone(),
        ),
        ("TICKFLOW_FAIR_PRICE__GROUP_ID", group.to_string()),
        (
            "TICKFLOW_FAIR_PRICE__GRPC_LISTEN",
            format!("127.0.0.1:{grpc_port}"),
        ),
    ]
}

pub const MS: Micros = 1_000;
pub const S: Micros = 1_000_000;
pub const STEP: Micros = 100 * MS;
pub const STEPS: i64 = 750;
pub const SOURCES: [(&str, &str); 4] = [
    ("sim", "sim-a"),
    ("sim", "sim-b"),
    ("kraken", "kraken"),
    ("coinbase", "coinbase"),
];

/// The scenario's trades, in the order they are produced (event-time order).
pub fn scenario(t0: Micros) -> Vec<Trade> {
    let mut trades = Vec::new();
    for i in 0..STEPS {
        let base = t0 + i * STEP;
        trades.push(Trade {
            instrument: "ETH-USD".into(),
            provider: "sim".into(),
            exchange: "sim-a".into(),
            trade_id: format!("e{i}"),
            event_time: base,
            price: Decimal::new(350_000, 2),
            size: Decimal::ONE,
            ..trade_defaults()
        });
        for (k, (provider, exchange)) in SOURCES.iter().enumerate() {
            let drifting = *provider == "coinbase" && (200..350).contains(&i);
            let silent = (*provider == "kraken" && (400..550).contains(&i)) || i >= 600;
            if silent {
                continue;
            }
            let wiggle = ((i * 7 + k as i64 * 3) % 11) - 5;
            let price = if drifting {
                Decimal::new((10_000 + wiggle) * 106, 4)
            } else {
                Decimal::new(10_000 + wiggle, 2)
            };
            trades.push(Trade {
                instrument: "BTC-USD".into(),
                provider: (*provider).into(),
                exchange: (*exchange).into(),
                trade_id: format!("b{i}-{k}"),
                event_time: base + (k as i64 + 1) * 20 * MS,
                price,
                size: Decimal::new(1 + (i * 13 + k as i64 * 7) % 50, 3),
                ..trade_defaults()
            });
        }
    }
    trades
}

pub fn trade_defaults() -> Trade {
    Trade {
        asset_class: AssetClass::Crypto,
        ingest_time: now_micros(),
        normalized_time: now_micros(),
        ..sample_trade()
    }
}

/// What a fair price must be, computed here from the trades with the documented rules
/// (docs/architecture.md, "How the fair price is computed"): default settings, lookback and staleness 5 s,
/// outliers beyond 2% of the median of last prices among >= 3 fresh sources, volume-weighted
/// median (lower) of the used sources' trades in (as_of - 5 s, as_of].
#[derive(Debug, PartialEq)]
pub struct Expected {
    pub price: Option<Decimal>,
    pub used: Vec<(String, String, Decimal, Decimal)>,
    pub excluded: Vec<(String, String, &'static str)>,
    pub volume: Decimal,
    pub newest: Option<Micros>,
}

pub fn recompute(trades: &[Trade], as_of: Micros) -> Expected {
    let mut by_source: BTreeMap<(String, String), Vec<&Trade>> = BTreeMap::new();
    for t in trades.iter().filter(|t| t.event_time <= as_of) {
        by_source
            .entry((t.provider.clone(), t.exchange.clone()))
            .or_default()
            .push(t);
    }
    let mut fresh = Vec::new();
    let mut excluded = Vec::new();
    for ((provider, exchange), list) in &by_source {
        let last = list.iter().max_by_key(|t| t.event_time).unwrap();
        if as_of - last.event_time > 5 * S {
            excluded.push((provider.clone(), exchange.clone(), "STALE"));
            continue;
        }
        let in_window: Vec<&&Trade> = list
            .iter()
            .filter(|t| t.event_time > as_of - 5 * S)
            .collect();
        let volume: Decimal = in_window.iter().map(|t| t.size).sum();
        fresh.push((
            provider.clone(),
            exchange.clone(),
            last.price,
            volume,
            last.event_time,
            in_window,
        ));
    }
    if fresh.len() >= 3 {
        let mut prices: Vec<Decimal> = fresh.iter().map(|f| f.2).collect();
        prices.sort();
        let n = prices.len();
        let median = if n % 2 == 1 {
            prices[n / 2]
        } else {
            (prices[n / 2 - 1] + prices[n / 2]) / Decimal::TWO
        };
        let limit = median * Decimal::new(2, 2);
        fresh.retain(|f| {
            if (f.2 - median).abs() > limit {
                excluded.push((f.0.clone(), f.1.clone(), "OUTLIER"));
                false
            } else {
                true
            }
        });
    }
    excluded.sort();
    let mut window: Vec<(Decimal, Decimal)> = fresh
        .iter()
        .flat_map(|f| f.5.iter().map(|t| (t.price, t.size)))
        .collect();
    window.sort_by_key(|w| w.0);
    let total: Decimal = window.iter().map(|w| w.1).sum();
    let mut cumulative = Decimal::ZERO;
    let mut price = None;
    for (p, q) in window {
        cumulative += q;
        if cumulative * Decimal::TWO >= total {
            price = Some(p);
            break;
        }
    }
    Expected {
        price,
        used: fresh
            .iter()
            .map(|f| (f.0.clone(), f.1.clone(), f.2, f.3))
            .collect(),
        excluded,
        volume: fresh.iter().map(|f| f.3).sum(),
        newest: fresh.iter().map(|f| f.4).max(),
    }
}

/// No hole in the instants `instrument` was published at: the first before `t0 + 2 s`, the last
/// at or after `last`, and every heartbeat interval of event time in between with a publication
/// (one per interval at least, so two are < 2 s apart). `cuts`: where processes changed, for the
/// message.
pub fn assert_no_hole(
    instrument: &str,
    times: &[Micros],
    t0: Micros,
    last: Micros,
    cuts: &[Micros],
) {
    assert!(
        times.first().is_some_and(|&t| t < t0 + 2 * S) && times.last().is_some_and(|&t| t >= last),
        "{instrument}: published from t0 + {:?} ms to t0 + {:?} ms",
        times.first().map(|t| (t - t0) / MS),
        times.last().map(|t| (t - t0) / MS)
    );
    let widest = times
        .windows(2)
        .max_by_key(|w| w[1] - w[0])
        .map(|w| (w[0], w[1]))
        .unwrap();
    let cuts: Vec<Micros> = cuts.iter().map(|c| (c - t0) / MS).collect();
    assert!(
        widest.1 - widest.0 < 2 * S,
        "{instrument}: a hole from t0 + {} ms to t0 + {} ms (processes changed near t0 + {cuts:?} ms)",
        (widest.0 - t0) / MS,
        (widest.1 - t0) / MS,
    );
}

pub fn observed(fp: &FairPrice) -> Expected {
    Expected {
        price: fp.price,
        used: fp
            .sources_used
            .iter()
            .map(|s| (s.provider.clone(), s.exchange.clone(), s.price, s.volume))
            .collect(),
        excluded: fp
            .sources_excluded
            .iter()
            .map(|s| (s.provider.clone(), s.exchange.clone(), s.reason.as_str()))
            .collect(),
        volume: fp.lookback_volume,
        newest: fp.newest_event_time,
    }
}

pub async fn read_all<T>(
    stack: &Stack,
    topic: &str,
    decode: impl AsyncFn(&[u8]) -> T,
    done: impl Fn(&[T]) -> bool,
    timeout: Duration,
) -> Vec<T> {
    let consumer: StreamConsumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "fp", '-')).unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    // A record read twice (the group's assignment can start over from the beginning when the
    // topic appears after the subscription) is one record: a repeated publication has its own
    // offset.
    let mut read = std::collections::BTreeSet::new();
    while !done(&out) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            if read.insert((m.partition(), m.offset())) {
                out.push(decode(m.payload().unwrap()).await);
            }
        }
    }
    out
}

/// Every record of `topic` up to its current end, across all partitions.
pub async fn read_to_end(stack: &Stack, topic: &str) -> Vec<Vec<u8>> {
    read_partitions_to_end(stack, topic)
        .await
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

/// `attempt` until it succeeds, for at most 30 s: right after a broker restart a partition may
/// have no leader yet.
fn retried<T>(
    what: &str,
    topic: &str,
    mut attempt: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("{what} of {topic}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("{what} of {topic}: {e}"),
        }
    }
}

/// Every record of `topic` up to its end (read_committed: the last stable offset, so a
/// transactional topic's markers and aborted records do not count), with its partition, each
/// partition in offset order.
pub async fn read_partitions_to_end(stack: &Stack, topic: &str) -> Vec<(i32, Vec<u8>)> {
    let consumer: StreamConsumer =
        kafka::consumer_config(&stack.kafka, "it", &testkit::unique_name("it", "end", '-'))
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
    let partitions: Vec<i32> = retried("metadata", topic, || {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| m.topics()[0].partitions().iter().map(|p| p.id()).collect())
    });
    // Up to the end as of now: a partition is done at its end of partition event, or at the high
    // watermark it has now if records keep arriving (then no such event comes).
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in partitions {
        let (low, high) = retried("watermarks", topic, || {
            consumer.fetch_watermarks(topic, p, Duration::from_secs(5))
        });
        if high > low {
            remaining.insert(p, high);
            assignment
                .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    if remaining.is_empty() {
        return Vec::new();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    while !remaining.is_empty() {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records up to the end")
        {
            Ok(m) => {
                if remaining.contains_key(&m.partition()) {
                    out.push((m.partition(), m.payload().unwrap_or_default().to_vec()));
                }
                if remaining
                    .get(&m.partition())
                    .is_some_and(|high| m.offset() + 1 >= *high)
                {
                    remaining.remove(&m.partition());
                }
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                remaining.remove(&p);
            }
            Err(e) => panic!("reading {topic}: {e}"),
        }
    }
    out
}
