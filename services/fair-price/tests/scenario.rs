//! A multi-provider scenario against the real stack: four sources of BTC-USD, one drifting 6%
//! away and back, one falling silent and back, then all of them silent. Checks: PRICE_DIVERGENCE
//! with the drifting source excluded, then RECOVERED; NO_DATA with the fair price going on from
//! the others, then RECOVERED; stale heartbeats when every source is silent; every published fair
//! price equal to a recomputation done here, independently, from the same trades; Cassandra and
//! the HTTP and gRPC APIs agreeing with Kafka.

use std::collections::BTreeSet;
use std::time::Duration;

use fair_price::records::{Anomaly, AnomalyKind, FairPrice, FairPriceCodec, Trigger};
use fair_price::store::FairPriceStore;
use rust_decimal::Decimal;
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, Micros, Trade};
use tickflow_shared::proto::fairprice as pb;
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

use support::*;
use tickflow_testkit::fair_price as support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_prices_survive_drift_and_silence_and_equal_a_recomputation() {
    let stack = Stack::require().await;
    let (session, cassandra_config) = migrated_keyspace(&stack, "fp_scenario").await;
    let topics = Topics::create(&stack, "fp", 1).await;
    let (input, output, anomalies_topic) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.anomalies.clone(),
    );
    let registry = Registry::new(&stack.registry).unwrap();

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
    let env = service_env(
        &cassandra_config,
        &topics,
        &testkit::unique_name("fp", "scenario", '-'),
        grpc_port,
    );
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_fair-price"), &stack, &env);
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
