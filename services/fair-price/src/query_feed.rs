//! What the query API serves: every fair price on the output topic, whichever instance published
//! it. Instances share the input partitions, so each computes only some instruments; reading the
//! published topic back lets every replica behind one Kubernetes Service answer for every
//! instrument, with the same values. At start the topic is read from `query_history_ms` ago
//! (heartbeats republish each instrument's price every `heartbeat_ms`, so that covers every
//! instrument still trading), then followed as it grows.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tickflow_shared::avro::AvroCodec;
use tickflow_shared::config::KafkaConfig;
use tickflow_shared::error::Error;
use tickflow_shared::kafka;
use tickflow_shared::retry::{self, RetryPolicy};
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;

use crate::api::Latest;
use crate::metrics::QUERY_FEED_ERRORS;
use crate::records::FairPriceCodec;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Follows `topic` into `latest` until shutdown. Errors only for what needs a human (the
/// consumer cannot be created); a broker that is down is waited for.
pub async fn follow(
    config: &KafkaConfig,
    topic: &str,
    history_ms: u64,
    group_id: &str,
    codec: &AvroCodec,
    latest: Arc<Latest>,
    shutdown: &Shutdown,
) -> Result<()> {
    // A group id of its own, never committed: only the assignment below decides what is read.
    let consumer: StreamConsumer = kafka::consumer_config(config, "fair-price-query", group_id)
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let Some(partitions) = kafka::topic_partitions(&consumer, topic, shutdown).await else {
        return Ok(());
    };
    let Some(assignment) = retry::until_ok(
        "find the query API's start offsets",
        RetryPolicy::DEPENDENCY,
        shutdown,
        || async { start_offsets(&consumer, topic, &partitions, history_ms) },
    )
    .await
    else {
        return Ok(());
    };
    consumer.assign(&assignment)?;
    tracing::info!(
        topic,
        partitions = partitions.len(),
        history_ms,
        "query API following the published fair prices"
    );
    loop {
        let message = tokio::select! {
            () = shutdown.triggered() => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "query feed: kafka consumer error; reading on (the client reconnects by itself)");
                continue;
            }
        };
        let Some(payload) = message.payload() else {
            // A tombstone of the compacted topic: nothing to serve.
            continue;
        };
        match codec.decode_fair_price(payload).await {
            Ok(fp) => latest.offer(&fp),
            Err(e) => {
                metrics::counter!(QUERY_FEED_ERRORS).increment(1);
                tracing::warn!(partition = message.partition(), offset = message.offset(), error = %e, "query feed: record skipped");
            }
        }
    }
}

/// Each partition from its first record of the last `history_ms` (its end if none is that
/// recent).
fn start_offsets(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    history_ms: u64,
) -> Result<TopicPartitionList> {
    let found = kafka::offsets_since(consumer, topic, partitions, history_ms, KAFKA_TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    for &p in partitions {
        let offset = match found.get(&p).copied().flatten() {
            Some(o) => Offset::Offset(o),
            None => Offset::End,
        };
        assignment
            .add_partition_offset(topic, p, offset)
            .map_err(Error::Kafka)?;
    }
    Ok(assignment)
}
