//! A multi-provider scenario against the real stack: four sources of BTC-USD, one drifting 6%
//! away and back, one falling silent and back, then all of them silent. Checks: PRICE_DIVERGENCE
//! with the drifting source excluded, then RECOVERED; NO_DATA with the fair price going on from
//! the others, then RECOVERED; stale heartbeats when every source is silent; every published fair
//! price equal to a recomputation done here, independently, from the same trades; Cassandra and
//! the HTTP and gRPC APIs agreeing with Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rust_decimal::Decimal;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra::{self, FairPriceStore};
use tickflow_shared::domain::{now_micros, AssetClass, Micros, Trade};
use tickflow_shared::fairprice::{Anomaly, AnomalyKind, FairPrice, Trigger};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_shared::proto::fairprice as pb;
use tickflow_shared::testkit::{self, sample_trade, ServiceProcess, Stack};

const MS: Micros = 1_000;
const S: Micros = 1_000_000;
const STEP: Micros = 100 * MS;
const STEPS: i64 = 750;
const SOURCES: [(&str, &str); 4] = [
    ("sim", "sim-a"),
    ("sim", "sim-b"),
    ("kraken", "kraken"),
    ("coinbase", "coinbase"),
];

/// The scenario's trades, in the order they are produced (event-time order).
fn scenario(t0: Micros) -> Vec<Trade> {
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

fn trade_defaults() -> Trade {
    Trade {
        asset_class: AssetClass::Crypto,
        ingest_time: now_micros(),
        normalized_time: now_micros(),
        ..sample_trade()
    }
}

/// What a fair price must be, computed here from the trades with the documented rules
/// (README, "How the fair price is computed"): default settings, lookback and staleness 5 s,
/// outliers beyond 2% of the median of last prices among >= 3 fresh sources, volume-weighted
/// median (lower) of the used sources' trades in (as_of - 5 s, as_of].
#[derive(Debug, PartialEq)]
struct Expected {
    price: Option<Decimal>,
    used: Vec<(String, String, Decimal, Decimal)>,
    excluded: Vec<(String, String, &'static str)>,
    volume: Decimal,
    newest: Option<Micros>,
}

fn recompute(trades: &[Trade], as_of: Micros) -> Expected {
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

fn observed(fp: &FairPrice) -> Expected {
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

async fn read_all<T>(
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
    while !done(&out) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            out.push(decode(m.payload().unwrap()).await);
        }
    }
    out
}

/// Every record of `topic` up to its current end, across all partitions.
async fn read_to_end(stack: &Stack, topic: &str) -> Vec<Vec<u8>> {
    let consumer: StreamConsumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "end", '-'))
            .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
            .unwrap();
        if high > low {
            remaining.insert(p.id(), high);
            assignment
                .add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    while !remaining.is_empty() {
        let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("records up to the end")
            .unwrap();
        out.push(m.payload().unwrap().to_vec());
        if remaining
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            remaining.remove(&m.partition());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_prices_survive_drift_and_silence_and_equal_a_recomputation() {
    let stack = Stack::require().await;
    let mut cassandra_config = stack.cassandra.clone();
    cassandra_config.keyspace = testkit::unique_keyspace("fp_scenario");
    let session = cassandra::connect(&cassandra_config).await.unwrap();
    cassandra::migrate(&session, &cassandra_config)
        .await
        .unwrap();

    let input = testkit::unique_topic("fp-in");
    let output = testkit::unique_topic("fp-out");
    let anomalies_topic = testkit::unique_topic("fp-anomalies");
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(&admin, &[TopicSpec::new(&input, 1)], &BTreeMap::new())
        .await
        .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    registry.register(&input, avro::TRADE).await.unwrap();

    let t0 = (now_micros() / S - 100) * S;
    let trades = scenario(t0);
    testkit::produce_trades(&stack, &input, trades.iter().map(|t| (Some(0), t.clone())))
        .await
        .unwrap();
    let btc: Vec<Trade> = trades
        .iter()
        .filter(|t| t.instrument == "BTC-USD")
        .cloned()
        .collect();
    let end = t0 + STEPS * STEP;

    let grpc_port = testkit::free_port();
    let mut service = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_fair-price"),
        &stack,
        &[
            (
                "TICKFLOW_CASSANDRA__CONTACT_POINTS",
                cassandra_config.contact_points.join(","),
            ),
            (
                "TICKFLOW_CASSANDRA__KEYSPACE",
                cassandra_config.keyspace.clone(),
            ),
            ("TICKFLOW_FAIR_PRICE__INPUT_TOPIC", input.clone()),
            ("TICKFLOW_FAIR_PRICE__OUTPUT_TOPIC", output.clone()),
            (
                "TICKFLOW_FAIR_PRICE__ANOMALIES_TOPIC",
                anomalies_topic.clone(),
            ),
            (
                "TICKFLOW_FAIR_PRICE__GROUP_ID",
                testkit::unique_name("fp", "scenario", '-'),
            ),
            (
                "TICKFLOW_FAIR_PRICE__GRPC_LISTEN",
                format!("127.0.0.1:{grpc_port}"),
            ),
        ],
    );
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    let codec = AvroCodec::new(&registry, &[]);
    // Until heartbeats have gone on past the end of the input into staleness.
    let prices: Vec<FairPrice> = read_all(
        &stack,
        &output,
        async |b: &[u8]| codec.decode_fair_price(b).await.unwrap(),
        |got: &[FairPrice]| {
            got.iter()
                .any(|fp| fp.instrument == "BTC-USD" && fp.computed_at > end + 12 * S)
        },
        Duration::from_secs(90),
    )
    .await;
    let btc_prices: Vec<&FairPrice> = prices
        .iter()
        .filter(|fp| fp.instrument == "BTC-USD")
        .collect();
    assert!(
        btc_prices.iter().any(|fp| fp.computed_at > end + 12 * S),
        "no fair price long after the input ended; got {}; log:\n{}",
        btc_prices.len(),
        service.log()
    );

    // Every published fair price equals the recomputation as of its instant.
    let mut checked = 0;
    for fp in &btc_prices {
        assert_eq!(
            observed(fp),
            recompute(&btc, fp.computed_at),
            "as of {} (t0 + {} ms): {fp:#?}",
            fp.computed_at,
            (fp.computed_at - t0) / MS
        );
        checked += 1;
    }
    // At least one per second of event time (heartbeats), from t0 to 12 s after the end.
    assert!(checked >= 85, "only {checked} fair prices");
    let times: Vec<Micros> = btc_prices.iter().map(|fp| fp.computed_at).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "instants must increase"
    );

    // The phases, as the operators would see them.
    let during = |from: i64, to: i64| {
        btc_prices
            .iter()
            .filter(move |fp| fp.computed_at >= t0 + from * STEP && fp.computed_at < t0 + to * STEP)
    };
    assert!(during(260, 350).all(|fp| fp
        .sources_excluded
        .iter()
        .any(|e| e.provider == "coinbase" && e.reason.as_str() == "OUTLIER")));
    assert!(
        during(260, 350).all(|fp| fp.price.is_some_and(|p| p < Decimal::new(10100, 2))),
        "the drift must not pull the price"
    );
    assert!(during(460, 550).all(|fp| fp.price.is_some()
        && fp
            .sources_excluded
            .iter()
            .any(|e| e.provider == "kraken" && e.reason.as_str() == "STALE")));
    let stale: Vec<&&FairPrice> = btc_prices.iter().filter(|fp| fp.stale).collect();
    assert!(
        !stale.is_empty()
            && stale.iter().all(|fp| fp.price.is_none()
                && fp.trigger == Trigger::Heartbeat
                && fp.computed_at > t0 + 605 * STEP)
    );

    // Anomalies: divergence and no-data, each recovered.
    let anomalies: Vec<Anomaly> = read_all(
        &stack,
        &anomalies_topic,
        async |b: &[u8]| codec.decode_anomaly(b).await.unwrap(),
        |got: &[Anomaly]| {
            got.iter()
                .filter(|a| a.kind == AnomalyKind::NoData && a.started_at >= t0 + 599 * STEP)
                .map(|a| (a.provider.as_str(), a.exchange.as_str()))
                .collect::<BTreeSet<_>>()
                // The four sources, and the providers kraken and coinbase as a whole.
                .is_superset(&BTreeSet::from([
                    ("sim", "sim-a"),
                    ("sim", "sim-b"),
                    ("kraken", "kraken"),
                    ("coinbase", "coinbase"),
                    ("kraken", "*"),
                    ("coinbase", "*"),
                ]))
        },
        Duration::from_secs(30),
    )
    .await;
    let seen: BTreeSet<(&str, &str, &str)> = anomalies
        .iter()
        .map(|a| (a.kind.as_str(), a.provider.as_str(), a.detail.as_str()))
        .collect();
    let has = |kind: AnomalyKind, provider: &str| {
        anomalies
            .iter()
            .any(|a| a.kind == kind && a.provider == provider && a.instrument == "BTC-USD")
    };
    assert!(has(AnomalyKind::PriceDivergence, "coinbase"), "{seen:#?}");
    assert!(has(AnomalyKind::NoData, "kraken"), "{seen:#?}");
    let recovered = |what: &str, provider: &str| {
        anomalies.iter().any(|a| {
            a.kind == AnomalyKind::Recovered && a.provider == provider && a.detail.contains(what)
        })
    };
    assert!(recovered("PRICE_DIVERGENCE", "coinbase"), "{seen:#?}");
    assert!(recovered("NO_DATA", "kraken"), "{seen:#?}");
    let divergence = anomalies
        .iter()
        .find(|a| a.kind == AnomalyKind::PriceDivergence)
        .unwrap();
    assert!(
        divergence.observed > 5.0 && divergence.observed < 7.0,
        "{divergence:?}"
    );
    assert!(divergence.detected_at - divergence.started_at >= 5 * S);
    // Every source of BTC-USD silent at the end.
    for (provider, exchange) in SOURCES {
        assert!(
            anomalies.iter().any(|a| a.kind == AnomalyKind::NoData
                && a.provider == provider
                && a.exchange == exchange
                && a.instrument == "BTC-USD"
                && a.started_at >= t0 + 599 * STEP),
            "{provider}/{exchange}: {seen:#?}"
        );
    }
    // kraken and coinbase have no other source: each provider as a whole went silent too.
    for provider in ["kraken", "coinbase"] {
        assert!(
            anomalies.iter().any(|a| a.kind == AnomalyKind::NoData
                && a.provider == provider
                && a.instrument == "*"
                && a.started_at >= t0 + 599 * STEP),
            "{provider}/*/*: {seen:#?}"
        );
    }

    // The query APIs answer with the latest published price.
    let (status, body) = service.get("/v1/fairprice/BTC-USD").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["instrument"], "BTC-USD");
    let (status, _) = service.get("/v1/fairprice/NOPE-USD").await.unwrap();
    assert_eq!(status, 404);
    let mut client = pb::fair_price_service_client::FairPriceServiceClient::connect(format!(
        "http://127.0.0.1:{grpc_port}"
    ))
    .await
    .unwrap();
    let latest = client
        .latest(pb::LatestRequest {
            instrument: "ETH-USD".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.instrument, "ETH-USD");
    assert!(latest.computed_at_us > end);
    let missing = client
        .latest(pb::LatestRequest {
            instrument: "NOPE-USD".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            instruments: vec!["BTC-USD".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.instrument, "BTC-USD");
    // Heartbeats keep coming: a live update follows the snapshot.
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a live update within 10 s")
        .unwrap()
        .unwrap();
    assert!(next.computed_at_us > first.computed_at_us);

    // Every promised metric is exported (the error counters at 0 from the start).
    let (_, exported) = service.get("/metrics").await.unwrap();
    for name in fair_price::metrics::ALL {
        assert!(
            exported.contains(&format!("{name}{{")) || exported.contains(&format!("{name} ")),
            "{name} missing from /metrics"
        );
    }
    assert!(exported.contains("tickflow_fairprice_anomaly_active{kind=\"NO_DATA\",provider=\"kraken\",exchange=\"kraken\",instrument=\"BTC-USD\"} 1"), "{exported}");

    // Stop, then Cassandra holds what Kafka holds.
    let (code, _) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", service.log());
    let mut all_prices = Vec::new();
    for bytes in read_to_end(&stack, &output).await {
        all_prices.push(codec.decode_fair_price(&bytes).await.unwrap());
    }
    let kafka_btc: BTreeSet<Micros> = all_prices
        .iter()
        .filter(|fp| fp.instrument == "BTC-USD")
        .map(|fp| fp.computed_at)
        .collect();
    let store = FairPriceStore::new(session.clone(), &cassandra_config.keyspace)
        .await
        .unwrap();
    let mut cassandra_btc = BTreeSet::new();
    let days: BTreeSet<i64> = kafka_btc.iter().map(|t| t.div_euclid(86_400 * S)).collect();
    for day in days {
        for row in store.day("BTC-USD", day * 86_400 * S).await.unwrap() {
            cassandra_btc.insert(row.computed_at);
        }
    }
    assert_eq!(cassandra_btc, kafka_btc, "log:\n{}", service.log());
    let latest_rows = store.latest().await.unwrap();
    let btc_latest = latest_rows
        .iter()
        .find(|r| r.instrument == "BTC-USD")
        .unwrap();
    assert_eq!(Some(&btc_latest.computed_at), kafka_btc.last());
    assert!(btc_latest.stale);
}
