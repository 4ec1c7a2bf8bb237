//! Rebuilds a partition's duplicate filter and gap tracker after a restart or a rebalance: the
//! partition is read back from the records received within the dedup horizon before the
//! committed offset, up to that offset, and each valid trade's identity is remembered, and each
//! numbered trade observed, exactly as live processing does. Nothing is produced. Without this a
//! trade repeated across a crash would pass twice, and a gap found before it would be found again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tickflow_providers::Frame;
use tickflow_shared::avro::AvroCodec;
use tickflow_shared::config::KafkaConfig;
use tickflow_shared::domain::{now_micros, Micros};
use tickflow_shared::instruments::InstrumentIndex;
use tickflow_shared::kafka;
use tickflow_shared::Result;

use crate::dedup::Dedup;
use crate::gaps::{self, Gaps};
use crate::normalize::{normalize, Limits, Rules};

/// Extra time read back beyond the horizon: receive times and Kafka timestamps differ by the
/// gateway's produce delay, and connections interleave slightly out of order.
const SLACK_MS: i64 = 30_000;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a warm-up read.
#[derive(Debug, Default)]
pub struct Warmed {
    pub records: u64,
    pub remembered: usize,
}

#[allow(clippy::too_many_arguments)]
pub async fn warm_up(
    kafka_config: &KafkaConfig,
    group_id: &str,
    topic: &str,
    partition: i32,
    committed: i64,
    horizon: Micros,
    limits: &Limits,
    index: &InstrumentIndex,
    codec: &AvroCodec,
    dedup: &mut Dedup,
    gaps: &mut Gaps,
) -> Result<Warmed> {
    let mut warmed = Warmed::default();
    if committed <= 0 {
        return Ok(warmed);
    }
    let started = Instant::now();
    let mut config = kafka::consumer_config(
        kafka_config,
        "normalizer-warmup",
        &format!("{group_id}-warmup"),
    );
    // Reading back to a known offset: a fetch at the partition's end must not wait out the
    // broker's long poll (500 ms by default, once after each of the two assigns), which made
    // every partition's warm-up last a second however little it read.
    config.set("fetch.wait.max.ms", "10");
    let consumer: StreamConsumer = config.create()?;
    // The time of the last committed record fixes where the horizon begins.
    let last = committed - 1;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(last))?;
    consumer.assign(&tpl)?;
    let Some(last_time) = read_one(&consumer, last).await? else {
        return Ok(warmed);
    };
    let from_ms = last_time - horizon / 1000 - SLACK_MS;
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(topic, partition, Offset::Offset(from_ms))?;
    let found = tokio::task::block_in_place(|| consumer.offsets_for_times(query, READ_TIMEOUT))?;
    let start = found
        .find_partition(topic, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(last)
        .min(last);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut scratch = Vec::new();
    let mut gap_events = Vec::new();
    loop {
        let message = tokio::time::timeout(READ_TIMEOUT, consumer.recv())
            .await
            .map_err(|_| {
                tickflow_shared::Error::Timeout(format!(
                    "dedup warm-up of {topic}/{partition}: no record within {READ_TIMEOUT:?}"
                ))
            })??;
        if message.offset() >= committed {
            break;
        }
        warmed.records += 1;
        if let Some(bytes) = message.payload() {
            if let Ok(envelope) = codec.decode_raw(bytes).await {
                let provider = tickflow_providers::by_id(&envelope.provider);
                if let (Some(provider), true) = (
                    provider,
                    envelope.channel == tickflow_shared::gap::UNRECOVERABLE_CHANNEL,
                ) {
                    gap_events.clear();
                    let _ = gaps::observe_unrecoverable(gaps, provider, &envelope, &mut gap_events);
                } else if let Some(provider) = provider {
                    scratch.clear();
                    let parsed = provider.parse(&envelope.payload);
                    if let Ok(Frame::Trades(trades)) = &parsed {
                        // Gaps found here were published before: rebuild, do not report.
                        gap_events.clear();
                        gaps::observe_frame(gaps, provider, &envelope, trades, &mut gap_events);
                    }
                    normalize(
                        provider,
                        &envelope,
                        parsed,
                        Rules {
                            index,
                            limits,
                            now: now_micros(),
                        },
                        dedup,
                        &mut scratch,
                    );
                }
            }
        }
        if message.offset() >= last {
            break;
        }
    }
    dedup.commit(horizon);
    warmed.remembered = dedup.len();
    tracing::info!(
        topic,
        partition,
        from_offset = start,
        to_offset = last,
        records = warmed.records,
        remembered = warmed.remembered,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "duplicate filter rebuilt"
    );
    Ok(warmed)
}

/// The Kafka timestamp (ms) of the record at `offset`, or `None` if it is gone (retention).
async fn read_one(consumer: &StreamConsumer, offset: i64) -> Result<Option<i64>> {
    let message = tokio::time::timeout(READ_TIMEOUT, consumer.recv()).await;
    match message {
        Ok(Ok(m)) if m.offset() == offset => Ok(m.timestamp().to_millis()),
        Ok(Ok(_)) => Ok(None),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(None),
    }
}
