//! Avro trades through real Kafka and the real schema registry (`scripts/stack up`), read back by
//! our decoder and by an independent one (Python fastavro), and schema evolution rules enforced
//! by the registry.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tickflow_shared::avro::{self, AvroCodec, Registry, SchemaDef};
use tickflow_shared::domain::{parse_decimal, AssetClass, Side, Trade};
use tickflow_shared::error::Error;
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_shared::service;
use tickflow_shared::shutdown::Shutdown;
use tickflow_testkit::{self as testkit, Stack};

fn trades() -> Vec<Trade> {
    let first = testkit::sample_trade();
    let second = Trade {
        instrument: "SHIB-USDT".into(),
        base: "SHIB".into(),
        quote: "USDT".into(),
        exchange: "binance".into(),
        provider: "binance".into(),
        provider_symbol: "SHIBUSDT".into(),
        trade_id: "1".into(),
        price: parse_decimal("0.000000000000000001").unwrap(),
        size: parse_decimal("12345678901234567890").unwrap(),
        side: Side::Unknown,
        provider_sequence: None,
        ..first.clone()
    };
    let third = Trade {
        instrument: "AAPL".into(),
        base: "AAPL".into(),
        quote: "USD".into(),
        asset_class: AssetClass::Equity,
        exchange: "XNAS".into(),
        provider: "finnhub".into(),
        provider_symbol: "AAPL".into(),
        trade_id: "f:3b1c".into(),
        price: parse_decimal("189.9875").unwrap(),
        size: parse_decimal("100").unwrap(),
        side: Side::Sell,
        event_time: -1, // a microsecond before the epoch still round-trips
        ..first.clone()
    };
    vec![first, second, third]
}

async fn topic_with_schema(stack: &Stack, test: &str) -> (String, Registry, u32) {
    let topic = testkit::unique_topic(test);
    let admin = kafka::admin(&stack.kafka).unwrap();
    let created = kafka::ensure_topics(&admin, &[TopicSpec::new(&topic, 1)], &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(created, vec![topic.clone()]);
    let registry = Registry::new(&stack.registry).unwrap();
    let id = registry.register(&topic, avro::TRADE).await.unwrap();
    (topic, registry, id)
}

#[tokio::test]
async fn trades_round_trip_through_kafka_and_registry_and_an_independent_decoder() {
    let stack = Stack::require().await;
    let (topic, registry, schema_id) = topic_with_schema(&stack, "trade-roundtrip").await;
    let codec = AvroCodec::new(&registry, &[(&topic, avro::TRADE)]);
    let sent = trades();

    let producer = kafka::producer(&stack.kafka, "it").unwrap();
    for trade in &sent {
        let bytes = codec.encode_trade(&topic, trade).await.unwrap();
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
            schema_id
        );
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&trade.instrument)
                    .payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    // Our decoder, from a read_committed consumer.
    let group = testkit::unique_name("it", "group", '-');
    let consumer = kafka::stream_consumer(&stack.kafka, "it", &group).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records within 30 s")
            .unwrap();
        let key = std::str::from_utf8(message.key().unwrap())
            .unwrap()
            .to_string();
        let trade = codec
            .decode_trade(message.payload().unwrap())
            .await
            .unwrap();
        assert_eq!(key, trade.instrument, "key = instrument");
        received.push(trade);
    }
    assert_eq!(received, sent, "equal field by field");

    // An independent implementation: confluent-kafka + fastavro with the schema from the registry.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/checks/decode_avro.py"
    );
    let output = std::process::Command::new(Stack::python())
        .args([script, "--bootstrap", &stack.kafka.bootstrap_servers])
        .args(["--registry", &stack.registry.url, "--topic", &topic])
        .args(["--count", &sent.len().to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (run `scripts/stack up`): {e}",
                Stack::python()
            )
        });
    assert!(
        output.status.success(),
        "independent decoder failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoded: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decoded.len(), sent.len());
    for (json, trade) in decoded.iter().zip(&sent) {
        let text = |field: &str| {
            json[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} in {json}"))
                .to_string()
        };
        // fastavro prints the schema's 18 fractional digits; the value is what must match.
        let decimal = |field: &str| {
            let t = text(field);
            let t = if t.contains('.') {
                t.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                t
            };
            parse_decimal(&t).unwrap()
        };
        assert_eq!(json["_schema_id"], schema_id, "{json}");
        assert_eq!(text("_key"), trade.instrument);
        assert_eq!(text("instrument"), trade.instrument);
        assert_eq!(text("base"), trade.base);
        assert_eq!(text("quote"), trade.quote);
        assert_eq!(text("asset_class"), trade.asset_class.as_str());
        assert_eq!(text("exchange"), trade.exchange);
        assert_eq!(text("provider"), trade.provider);
        assert_eq!(text("provider_symbol"), trade.provider_symbol);
        assert_eq!(text("trade_id"), trade.trade_id);
        assert_eq!(decimal("price"), trade.price, "{json}");
        assert_eq!(decimal("size"), trade.size, "{json}");
        assert_eq!(text("side"), trade.side.as_str());
        assert_eq!(json["event_time"], trade.event_time, "{json}");
        assert_eq!(json["ingest_time"], trade.ingest_time);
        assert_eq!(json["normalized_time"], trade.normalized_time);
        match trade.provider_sequence {
            Some(s) => assert_eq!(json["provider_sequence"], s),
            None => assert!(json["provider_sequence"].is_null(), "{json}"),
        }
    }
}

fn variant(fields_prefix: &str) -> SchemaDef {
    let avsc = avro::TRADE.avsc.replacen(
        "\"fields\": [",
        &format!("\"fields\": [{fields_prefix}, "),
        1,
    );
    SchemaDef {
        name: avro::TRADE.name,
        avsc: Box::leak(avsc.into_boxed_str()),
    }
}

#[tokio::test]
async fn registry_refuses_a_backward_incompatible_schema_and_we_say_which() {
    let stack = Stack::require().await;
    let (topic, registry, first_id) = topic_with_schema(&stack, "schema-evolution").await;
    let subject = avro::value_subject(&topic);

    // Registering the same schema again is a no-op with the same id.
    assert_eq!(
        registry.register(&topic, avro::TRADE).await.unwrap(),
        first_id
    );

    // A new field without a default: new readers could not read old records. Refused.
    let breaking = variant(r#"{"name": "venue_class", "type": "string"}"#);
    let err = registry.register(&topic, breaking).await.unwrap_err();
    assert!(matches!(err, Error::IncompatibleSchema { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(message.contains(&subject), "{message}");
    assert!(message.contains("BACKWARD"), "{message}");

    // A new optional field with a default is a compatible change: accepted, new id.
    let compatible =
        variant(r#"{"name": "venue_class", "type": ["null", "string"], "default": null}"#);
    let second_id = registry.register(&topic, compatible).await.unwrap();
    assert_ne!(second_id, first_id);

    // What a service does at start: it stops with that error instead of retrying forever.
    let shutdown = Shutdown::new();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        service::bootstrap_schemas(&registry, &[(topic.as_str(), breaking)], &shutdown),
    )
    .await
    .expect("an incompatible schema is not retried");
    let err = result.unwrap_err();
    assert!(matches!(err, Error::IncompatibleSchema { .. }), "{err:?}");
    assert!(err.to_string().contains(&subject));
}
