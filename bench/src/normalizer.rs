//! The normalizer's part of the benchmark: one raw topic pre-filled with the workload's trades as
//! simulator frames in the gateway's raw envelope, then, on that same topic,
//! - **the pipe ceiling**: a bare consume-and-produce pipe in this process that copies every
//!   record unchanged to another topic in Kafka transactions of the normalizer's size, with the
//!   consumed offsets in each transaction (exactly once, as the normalizer does it), parsing
//!   nothing;
//! - **the normalizer** (release binary): parse, validate, map, dedupe, Avro-encode, transactions.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::domain::{RawEnvelope, Side, Trade};
use tickflow_shared::kafka;
use tickflow_shared::simfeed::{SimMessage, SimTrade};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

use crate::{log, Measured};

/// Records per transaction, in the pipe and the normalizer alike (the normalizer's default).
pub const MAX_BATCH: usize = 10_000;

/// The simulator frame the gateway would have wrapped for `trade`.
fn frame(trade: &Trade, sequence: i64) -> RawEnvelope {
    let message = SimMessage::Trade(SimTrade {
        venue: trade.exchange.clone(),
        symbol: trade.instrument.clone(),
        trade_id: trade.trade_id.clone(),
        price: trade.price.to_string(),
        size: trade.size.to_string(),
        side: match trade.side {
            Side::Buy => "buy",
            Side::Sell => "sell",
            Side::Unknown => "unknown",
        }
        .into(),
        ts_us: trade.event_time,
        seq: sequence,
    });
    RawEnvelope {
        provider: "simulator".into(),
        connection_id: "bench".into(),
        sequence,
        received_at: trade.event_time + 500,
        channel: "trades".into(),
        payload: serde_json::to_vec(&message).expect("a frame serializes"),
    }
}

/// The instruments file the normalizer maps the frames with: `I0000`... listed by the simulator.
pub fn instruments_toml(instruments: u64) -> String {
    (0..instruments)
        .map(|i| {
            format!(
                "[[instrument]]\ninstrument = \"I{i:04}\"\nbase = \"B{i:04}\"\nquote = \"USD\"\n\
                 asset_class = \"CRYPTO\"\nlistings = [{{ provider = \"simulator\", symbol = \"I{i:04}\" }}]\n\n"
            )
        })
        .collect()
}

/// A fresh one-partition raw topic holding the trades as simulator frames; its name.
pub async fn prefill(stack: &Stack, trades: &[Trade]) -> Result<String, String> {
    let topic = format!("{}.simulator", testkit::unique_topic("bench-raw"));
    crate::one_partition_topic(stack, &topic, Some(avro::RAW_ENVELOPE)).await?;
    let registry = Registry::new(&stack.registry).map_err(|e| e.to_string())?;
    let codec = AvroCodec::new(&registry, &[(topic.as_str(), avro::RAW_ENVELOPE)]);
    let producer = kafka::producer(&stack.kafka, "bench").map_err(|e| e.to_string())?;
    let mut pending = Vec::new();
    for (i, trade) in trades.iter().enumerate() {
        let bytes = codec
            .encode_raw(&topic, &frame(trade, i as i64))
            .await
            .map_err(|e| e.to_string())?;
        pending.push(testkit::enqueue(&producer, &topic, &trade.instrument, &bytes, Some(0)).await);
        if pending.len() >= 20_000 {
            for delivery in pending.drain(..) {
                delivery
                    .await
                    .map_err(|_| "a raw frame's delivery was cancelled".to_string())?
                    .map_err(|(e, _)| e.to_string())?;
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .map_err(|_| "a raw frame's delivery was cancelled".to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    Ok(topic)
}

/// The exactly-once pipe ceiling: every record of `raw` copied to a new topic in transactions of
/// `MAX_BATCH` records, each committing the consumed offsets with it.
pub async fn pipe(stack: &Stack, raw: &str, expected: usize) -> Result<Measured, String> {
    let out = testkit::unique_topic("bench-pipe");
    crate::one_partition_topic(stack, &out, None).await?;
    let group = testkit::unique_name("bench", "pipe", '-');
    let consumer: BaseConsumer = kafka::consumer_config(&stack.kafka, "bench-pipe", &group)
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(raw, 0, rdkafka::Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let producer: ThreadedProducer<_> = kafka::producer_config(&stack.kafka, "bench-pipe")
        .set("transactional.id", &group)
        .create()
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .map_err(|e| format!("pipe: init_transactions: {e}"))?;
    let cpu_before = crate::own_cpu_seconds();
    let started = Instant::now();
    let (mut copied, mut transactions) = (0usize, 0usize);
    let mut at_end = false;
    while !at_end {
        producer
            .begin_transaction()
            .map_err(|e| format!("pipe: begin_transaction: {e}"))?;
        let mut offsets = rdkafka::TopicPartitionList::new();
        let mut in_batch = 0;
        while in_batch < MAX_BATCH {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => {
                    let mut record =
                        BaseRecord::<[u8], [u8]>::to(&out).payload(m.payload().unwrap_or_default());
                    if let Some(key) = m.key() {
                        record = record.key(key);
                    }
                    let mut record = record;
                    // A full local queue is waited out, never dropped.
                    while let Err((e, back)) = producer.send(record) {
                        if !matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ) {
                            return Err(format!("pipe: send: {e}"));
                        }
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    offsets
                        .add_partition_offset(
                            m.topic(),
                            m.partition(),
                            rdkafka::Offset::Offset(m.offset() + 1),
                        )
                        .map_err(|e| e.to_string())?;
                    in_batch += 1;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) if copied + in_batch > 0 => {
                    at_end = true;
                    break;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(format!("pipe: consume: {e}")),
                None => {
                    return Err(format!(
                        "pipe: nothing for 10 s after {} records",
                        copied + in_batch
                    ))
                }
            }
        }
        if in_batch > 0 {
            let metadata = consumer
                .group_metadata()
                .ok_or("pipe: the consumer has no group metadata")?;
            producer
                .send_offsets_to_transaction(&offsets, &metadata, timeout)
                .map_err(|e| format!("pipe: send_offsets_to_transaction: {e}"))?;
            producer
                .commit_transaction(timeout)
                .map_err(|e| format!("pipe: commit_transaction: {e}"))?;
            copied += in_batch;
            transactions += 1;
        } else {
            producer
                .abort_transaction(timeout)
                .map_err(|e| format!("pipe: abort_transaction: {e}"))?;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = crate::own_cpu_seconds() - cpu_before;
    let (_, peak_rss) = testkit::process_usage(std::process::id());
    if copied != expected {
        log(format!("pipe copied {copied} records, expected {expected}"));
    }
    Ok(Measured {
        system: "ceiling: consume-and-produce pipe".into(),
        events: copied,
        cpu_seconds: cpu,
        peak_rss,
        wall_seconds: wall,
        note: format!(
            "copies each raw record unchanged, {transactions} transactions with offsets, parses nothing (RSS of the bench process)"
        ),
    })
}

/// The normalizer binary on `raw` until it has read every record; fails unless every frame
/// became exactly one trade.
pub async fn normalizer(
    stack: &Stack,
    binary: &std::path::Path,
    raw: &str,
    expected: usize,
    instruments: u64,
    extra: &[(String, String)],
) -> Result<Measured, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), instruments_toml(instruments)).map_err(|e| e.to_string())?;
    let out = testkit::unique_topic("bench-normalized");
    let group = testkit::unique_name("bench", "normalizer", '-');
    let env: Vec<(&str, String)> = vec![
        ("TICKFLOW_NORMALIZER__INPUT_TOPICS", raw.to_string()),
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
        ("TICKFLOW_NORMALIZER__TRANSACTIONAL_ID", group),
        // The workload's event times are a year old: not too old to normalize here.
        ("TICKFLOW_NORMALIZER__MAX_AGE_MS", "1000000000000".into()),
        ("TICKFLOW_NORMALIZER__MAX_BATCH", MAX_BATCH.to_string()),
        ("TICKFLOW_SERVICE__LOG_LEVEL", "warn".into()),
    ];
    // From the process's start, start-up included (see the aggregator's run).
    let started = Instant::now();
    let mut service = ServiceProcess::spawn(
        &binary.display().to_string(),
        stack,
        &crate::with_extra(&env, extra, "NORMALIZER"),
    );
    service
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    // Profiled from /readyz on, as the aggregator's run is.
    let profile = crate::profile::start("tickflow-normalizer", service.pid());
    let (_, ready_metrics) = service.get("/metrics").await.unwrap_or_default();
    let by_ready =
        testkit::metric_total(&ready_metrics, "tickflow_normalizer_records_total") as u64;
    let metrics = crate::until_counted(
        &mut service,
        "tickflow_normalizer_records_total",
        expected,
        "the normalizer",
    )
    .await?;
    if let Some(profile) = profile {
        profile.finish();
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, peak_rss) = testkit::process_usage(service.pid());
    service.terminate(Duration::from_secs(30));
    let trades = testkit::metric_total(&metrics, "tickflow_normalizer_trades_total") as usize;
    if trades != expected {
        return Err(format!(
            "the normalizer made {trades} trades of {expected} frames (dead letters: {})",
            testkit::metric_total(&metrics, "tickflow_normalizer_dead_letters_total")
        ));
    }
    Ok(Measured {
        system: "tickflow normalizer".into(),
        events: trades,
        cpu_seconds: cpu_after,
        peak_rss,
        wall_seconds: wall,
        note: format!(
            "parse, validate, map, dedupe, Avro out; transactions of {MAX_BATCH} with offsets; from its start: {cpu_after:.1} CPU-s and {by_ready} frames by /readyz"
        ),
    })
}
