//! Against the real stack: the gateway runs its simulator at 3,000 messages/s for a few seconds,
//! is stopped with SIGTERM, and every frame it generated is on the raw topic exactly once —
//! sequence numbers 0..N without gap or repeat, N as the gateway logged it — each a RawEnvelope
//! whose payload is a simulator message keyed by its symbol.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::kafka;
use tickflow_shared::simfeed::SimMessage;
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_frame_reaches_kafka_once_in_sequence() {
    let stack = Stack::require().await;
    let prefix = format!("{}.raw.", testkit::unique_topic("gw"));
    let topic = format!("{prefix}simulator");
    let env = vec![
        ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", prefix.clone()),
        ("TICKFLOW_GATEWAY__SIMULATOR__RATE", "3000".to_string()),
        (
            "TICKFLOW_GATEWAY__SIMULATOR__DUPLICATE_RATIO",
            "0.02".to_string(),
        ),
        (
            "TICKFLOW_GATEWAY__SIMULATOR__BAD_PRICE_RATIO",
            "0.01".to_string(),
        ),
        // A small queue, so the sources really wait on the producer now and then.
        ("TICKFLOW_GATEWAY__QUEUE_CAPACITY", "256".to_string()),
    ];
    let mut gateway = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ingest-gateway"), &stack, &env);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, _) = gateway.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", gateway.log());
    let log = gateway.log();
    let generated: i64 = log
        .lines()
        .find(|l| l.contains("simulator stopped"))
        .and_then(|l| l.split("frames=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in the log:\n{log}"));
    assert!(
        generated > 5_000,
        "only {generated} frames in 4 s at 3,000/s"
    );

    let registry = Registry::new(&stack.registry).unwrap();
    let codec = AvroCodec::new(&registry, &[]);
    let consumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "gw", '-')).unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.len() as i64) < generated && Instant::now() < deadline {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        let message = message.unwrap();
        let envelope = codec.decode_raw(message.payload().unwrap()).await.unwrap();
        assert_eq!(envelope.provider, "simulator");
        match serde_json::from_slice::<SimMessage>(&envelope.payload).unwrap() {
            SimMessage::Trade(t) => {
                assert_eq!(
                    message.key(),
                    Some(t.symbol.as_bytes()),
                    "key = provider symbol"
                )
            }
            SimMessage::Heartbeat { .. } => {}
        }
        *seen.entry(envelope.sequence).or_default() += 1;
    }
    // Anything more would be a repeat: give it a moment to show up.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
    {
        let envelope = codec.decode_raw(message.payload().unwrap()).await.unwrap();
        *seen.entry(envelope.sequence).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "repeated sequences {repeated:?}");
    let expected: Vec<i64> = (0..generated).collect();
    let got: Vec<i64> = seen.keys().copied().collect();
    assert_eq!(got.len(), expected.len(), "frames on Kafka vs generated");
    assert_eq!(got, expected, "a gap in the sequence");
}
