//! End to end through the real stack (`scripts/stack up`): a raw topic pre-filled with simulator
//! frames; first a bare rdkafka consumer reads all of it (the ceiling: consuming alone, no
//! parsing, no producing), then the normalizer binary normalizes all of it into a trade topic
//! with Kafka transactions. Prints records/s, CPU-seconds per million and peak RSS of each, side
//! by side in one run (Kafka shares the same two cores and is not counted).
//!
//!     cargo bench -p normalizer --bench e2e              # 100,000 frames
//!     TICKFLOW_BENCH_FRAMES=300000 cargo bench -p normalizer --bench e2e
//!     TICKFLOW_BENCH_MAX_BATCH=2000 cargo bench -p normalizer --bench e2e   # smaller transactions

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, RawEnvelope};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_shared::simfeed::{SimMessage, SimTrade};
use tickflow_testkit::{self as testkit, process_usage, ServiceProcess, Stack};

const PARTITIONS: i32 = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::var("TICKFLOW_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let stack = Stack::require().await;
    let raw = testkit::unique_topic("bench-raw");
    let out = testkit::unique_topic("bench-trades");
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[TopicSpec::new(&raw, PARTITIONS)],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    registry.register(&raw, avro::RAW_ENVELOPE).await.unwrap();
    let codec = AvroCodec::new(&registry, &[(raw.as_str(), avro::RAW_ENVELOPE)]);

    eprintln!("pre-filling {raw} with {count} simulator frames ...");
    let producer = kafka::producer(&stack.kafka, "bench").unwrap();
    let symbols = ["BTC-USD", "ETH-USD"];
    let mut pending = Vec::new();
    let t0 = now_micros();
    for i in 0..count {
        let symbol = symbols[i % 2];
        let trade = SimTrade {
            venue: ["sim-a", "sim-b", "sim-c"][i % 3].into(),
            symbol: symbol.into(),
            trade_id: format!("t{i}"),
            price: format!("{}.{:02}", 60_000 + i % 5_000, i % 100),
            size: format!("0.{:06}", 1 + i % 999_999),
            side: if i % 2 == 0 { "buy" } else { "sell" }.into(),
            ts_us: t0 + i as i64,
            seq: i as i64,
        };
        let envelope = RawEnvelope {
            provider: "simulator".into(),
            connection_id: "bench".into(),
            sequence: i as i64,
            received_at: t0 + i as i64 + 500,
            channel: "trades".into(),
            payload: serde_json::to_vec(&SimMessage::Trade(trade)).unwrap(),
        };
        let bytes = codec.encode_raw(&raw, &envelope).await.unwrap();
        pending.push(testkit::enqueue(&producer, &raw, symbol, &bytes, None).await);
        if pending.len() >= 20_000 {
            for d in pending.drain(..) {
                d.await.unwrap().unwrap();
            }
        }
    }
    for d in pending.drain(..) {
        d.await.unwrap().unwrap();
    }

    // The ceiling: a bare consumer in this process reads every record.
    let (cpu_before, _) = process_usage(std::process::id());
    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "bench",
        &testkit::unique_name("bench", "bare", '-'),
    )
    .unwrap();
    consumer.subscribe(&[raw.as_str()]).unwrap();
    let started = Instant::now();
    let mut read = 0usize;
    let mut bytes_read = 0usize;
    while read < count {
        let m = consumer.recv().await.unwrap();
        bytes_read += rdkafka::message::Message::payload(&m).map_or(0, <[u8]>::len);
        read += 1;
    }
    let bare_secs = started.elapsed().as_secs_f64();
    let (cpu_after, bare_rss) = process_usage(std::process::id());
    drop(consumer);

    // The normalizer, from the same topic.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), testkit::INSTRUMENTS_FIXTURE).unwrap();
    let group = testkit::unique_name("bench", "norm", '-');
    let env: Vec<(&str, String)> = vec![
        ("TICKFLOW_NORMALIZER__INPUT_TOPICS", raw.clone()),
        ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", out.clone()),
        ("TICKFLOW_NORMALIZER__DLQ_TOPIC", format!("{out}.dlq")),
        ("TICKFLOW_NORMALIZER__GAPS_TOPIC", format!("{out}.gaps")),
        (
            "TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC",
            format!("{out}.instruments"),
        ),
        (
            "TICKFLOW_NORMALIZER__INSTRUMENTS_FILE",
            file.path().display().to_string(),
        ),
        ("TICKFLOW_NORMALIZER__GROUP_ID", group.clone()),
        ("TICKFLOW_NORMALIZER__TRANSACTIONAL_ID", group.clone()),
        ("TICKFLOW_NORMALIZER__MAX_AGE_MS", "86400000".into()),
        ("TICKFLOW_SERVICE__LOG_LEVEL", "warn".into()),
        (
            "TICKFLOW_NORMALIZER__MAX_BATCH",
            std::env::var("TICKFLOW_BENCH_MAX_BATCH").unwrap_or_else(|_| "10000".into()),
        ),
    ];
    let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_normalizer"), &stack, &env);
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let (cpu_ready, _) = process_usage(service.pid());
    let started = Instant::now();
    loop {
        let metrics = service
            .get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let done = testkit::metric_total(&metrics, "tickflow_normalizer_records_total");
        if done as usize >= count {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "normalizer too slow: {done} of {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let norm_secs = started.elapsed().as_secs_f64();
    let (cpu_done, norm_rss) = process_usage(service.pid());
    service.terminate(Duration::from_secs(20));

    let per_million = |cpu: f64| cpu / count as f64 * 1e6;
    println!("normalizer end-to-end, {count} simulator frames, {PARTITIONS} partitions (payload {} bytes avg)", bytes_read / count.max(1));
    println!(
        "{:<38} {:>12} {:>16} {:>12}",
        "", "records/s", "CPU-s / million", "peak RSS"
    );
    println!(
        "{:<38} {:>12.0} {:>16.2} {:>9} MiB",
        "bare rdkafka consumer (read only)*",
        count as f64 / bare_secs,
        per_million(cpu_after - cpu_before),
        bare_rss >> 20
    );
    println!(
        "{:<38} {:>12.0} {:>16.2} {:>9} MiB",
        "normalizer (parse, validate, txn out)",
        count as f64 / norm_secs,
        per_million(cpu_done - cpu_ready),
        norm_rss >> 20
    );
    println!(
        "ratio normalizer / bare consumer throughput: {:.2}",
        bare_secs / norm_secs
    );
}
