//! The way out: every frame, wrapped in a RawEnvelope, to `md.raw.<provider>` through the
//! idempotent producer (acks=all). Connections hand frames over through one bounded queue: when
//! Kafka is slow the queue fills and connections wait (backpressure) — or, if configured, frames
//! are dropped, each drop counted and logged. A frame Kafka refuses after the producer's own
//! retries is counted and logged with its provider and sequence: never a silent loss.
//!
//! Frames that cannot be forwarded (empty, oversized, not UTF-8, not a message of the provider)
//! are dead letters: counted by reason, logged with a sample, and written as they came (up to
//! `dlq_max_payload_bytes`) to the dead-letter topic with the reason in headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tickflow_shared::avro::AvroCodec;
use tickflow_shared::domain::{now_micros, Micros, RawEnvelope};
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;
use tokio::sync::mpsc;

use crate::metrics::*;

/// One frame as received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub provider: &'static str,
    pub connection_id: Arc<str>,
    /// Position within the connection, from 0, without gaps.
    pub sequence: i64,
    pub received_at: Micros,
    pub channel: Arc<str>,
    /// The provider symbol when known: the Kafka key.
    pub key: Option<String>,
    pub payload: Bytes,
    /// Set when the frame goes to the dead-letter topic instead of the raw topic.
    pub dead_letter: Option<DeadLetter>,
}

/// Why a frame is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// A bounded code: the `reason` label and the `tickflow.reason` header.
    pub reason: &'static str,
    pub detail: String,
}

impl DeadLetter {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Where connections put frames.
#[derive(Clone)]
pub struct Output {
    tx: mpsc::Sender<Frame>,
    drop_when_full: bool,
    max_frame_bytes: usize,
    keep_dead_letters: bool,
}

impl Output {
    /// Frames larger than this are dead letters.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Counts, logs and (unless kept) swallows dead letters: `None` when nothing is left to
    /// queue. Empty and oversized frames become dead letters here.
    fn screen(&self, mut frame: Frame) -> Option<Frame> {
        if frame.dead_letter.is_none() {
            if frame.payload.is_empty() {
                frame.dead_letter = Some(DeadLetter::new("empty", "empty frame"));
            } else if frame.payload.len() > self.max_frame_bytes {
                frame.dead_letter = Some(DeadLetter::new(
                    "oversized",
                    format!(
                        "{} bytes, more than gateway.max_frame_bytes = {}",
                        frame.payload.len(),
                        self.max_frame_bytes
                    ),
                ));
            }
        }
        if let Some(dead) = &frame.dead_letter {
            metrics::counter!(MALFORMED, "provider" => frame.provider, "reason" => dead.reason)
                .increment(1);
            let sample: String =
                String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(200)])
                    .into_owned();
            tracing::warn!(provider = frame.provider, connection = %frame.connection_id, sequence = frame.sequence, bytes = frame.payload.len(), reason = dead.reason, detail = %dead.detail, sample, kept = self.keep_dead_letters, "frame not forwarded");
            if !self.keep_dead_letters {
                return None;
            }
        }
        Some(frame)
    }

    /// Hands a frame over without waiting. `Full` gives the frame back when the queue is full
    /// and dropping is not configured: the caller then waits with [`Output::wait_send`].
    pub fn offer(&self, frame: Frame) -> Offer {
        let Some(frame) = self.screen(frame) else {
            return Offer::Taken;
        };
        match self.tx.try_send(frame) {
            Ok(()) => Offer::Taken,
            Err(mpsc::error::TrySendError::Full(frame)) if self.drop_when_full => {
                metrics::counter!(DROPPED, "provider" => frame.provider).increment(1);
                tracing::warn!(provider = frame.provider, connection = %frame.connection_id, sequence = frame.sequence, "queue full: frame dropped (gateway.drop_when_full)");
                Offer::Taken
            }
            Err(mpsc::error::TrySendError::Full(frame)) => Offer::Full(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Waits for room for a frame that [`Output::offer`] gave back. `false` once the sink has
    /// stopped.
    pub async fn wait_send(&self, frame: Frame) -> bool {
        self.tx.send(frame).await.is_ok()
    }

    /// Hands a frame to the producer: waits while the queue is full, unless dropping is
    /// configured. Empty and oversized frames become dead letters; every dead letter is counted
    /// by reason and logged with a sample, and kept on the dead-letter topic when one is
    /// configured. `false` once the sink has stopped.
    pub async fn send(&self, frame: Frame) -> bool {
        match self.offer(frame) {
            Offer::Taken => true,
            Offer::Closed => false,
            Offer::Full(frame) => self.wait_send(frame).await,
        }
    }
}

/// What [`Output::offer`] did with a frame.
pub enum Offer {
    /// Queued, or dropped as configured (counted and logged).
    Taken,
    /// The queue is full: wait for room.
    Full(Frame),
    /// The sink has stopped.
    Closed,
}

pub fn queue(
    capacity: usize,
    drop_when_full: bool,
    max_frame_bytes: usize,
    keep_dead_letters: bool,
) -> (Output, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel(capacity);
    let output = Output {
        tx,
        drop_when_full,
        max_frame_bytes,
        keep_dead_letters,
    };
    (output, rx)
}

/// What a delivery report needs to know about its frame.
pub struct Sent {
    provider: &'static str,
    received_at: Micros,
    sequence: i64,
}

/// Records receive→ack latency and failed deliveries.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                metrics::counter!(DELIVERED, "provider" => sent.provider).increment(1);
                let seconds = (now_micros() - sent.received_at) as f64 / 1e6;
                metrics::histogram!(PRODUCE_LATENCY, "provider" => sent.provider).record(seconds);
            }
            Err((e, message)) => {
                let error_type = e
                    .rdkafka_error_code()
                    .map_or("unknown".to_string(), |c| format!("{c:?}"));
                metrics::counter!(PRODUCE_ERRORS, "provider" => sent.provider, "error_type" => error_type).increment(1);
                tracing::error!(provider = sent.provider, sequence = sent.sequence, topic = message.topic(), error = %e, "kafka did not take a frame after retries: it is lost");
            }
        }
    }
}

pub type RawProducer = ThreadedProducer<Deliveries>;

/// Where the sink writes.
pub struct Topics {
    /// Raw topics are `<raw_prefix><provider>`.
    pub raw_prefix: String,
    /// Dead letters; `None`: counted and logged only (the output never queues them then).
    pub dlq: Option<String>,
    pub dlq_max_payload_bytes: usize,
}

/// Runs until the queue is closed (every connection stopped) and drained, then flushes.
pub async fn run(
    mut rx: mpsc::Receiver<Frame>,
    producer: RawProducer,
    codec: Arc<AvroCodec>,
    topics: Topics,
    shutdown: Shutdown,
) -> Result<()> {
    let capacity = rx.max_capacity();
    let mut last_gauge = Instant::now();
    let mut raw_topics: std::collections::HashMap<&'static str, String> = Default::default();
    while let Some(frame) = rx.recv().await {
        let sent = Box::new(Sent {
            provider: frame.provider,
            received_at: frame.received_at,
            sequence: frame.sequence,
        });
        let (topic, bytes, headers) = match &frame.dead_letter {
            None => {
                let topic = raw_topics
                    .entry(frame.provider)
                    .or_insert_with(|| format!("{}{}", topics.raw_prefix, frame.provider))
                    .as_str();
                let envelope = RawEnvelope {
                    provider: frame.provider.to_string(),
                    connection_id: frame.connection_id.to_string(),
                    sequence: frame.sequence,
                    received_at: frame.received_at,
                    channel: frame.channel.to_string(),
                    payload: frame.payload.to_vec(),
                };
                let bytes = encode(&codec, topic, &envelope, &shutdown).await?;
                (topic, bytes, None)
            }
            Some(dead) => {
                let Some(topic) = topics.dlq.as_deref() else {
                    continue;
                };
                let kept = frame.payload.len().min(topics.dlq_max_payload_bytes);
                (
                    topic,
                    frame.payload[..kept].to_vec(),
                    Some(dead_letter_headers(&frame, dead)),
                )
            }
        };
        let mut record = BaseRecord::with_opaque_to(topic, sent).payload(&bytes);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        if let Some(key) = &frame.key {
            record = record.key(key.as_bytes());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's own buffer is full: Kafka is slow. Wait; the bounded queue in
                    // front of us then pushes back on the connections.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, back)) => {
                    let sent = back.delivery_opaque;
                    metrics::counter!(PRODUCE_ERRORS, "provider" => sent.provider, "error_type" => "send").increment(1);
                    tracing::error!(provider = sent.provider, sequence = sent.sequence, error = %e, "cannot hand a frame to the producer: it is lost");
                    break;
                }
            }
        }
        if last_gauge.elapsed() > Duration::from_millis(500) {
            last_gauge = Instant::now();
            metrics::gauge!(QUEUE_DEPTH).set((capacity - rx.capacity()) as f64);
        }
    }
    let flushed = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(10)));
    if let Err(e) = flushed {
        tracing::error!(error = %e, in_flight = producer.in_flight_count(), "frames still unacknowledged at shutdown");
    }
    Ok(())
}

fn dead_letter_headers(frame: &Frame, dead: &DeadLetter) -> OwnedHeaders {
    let sequence = frame.sequence.to_string();
    let received_at = frame.received_at.to_string();
    let length = frame.payload.len().to_string();
    [
        ("tickflow.reason", dead.reason),
        ("tickflow.reason.text", dead.detail.as_str()),
        ("tickflow.provider", frame.provider),
        ("tickflow.connection_id", &frame.connection_id),
        ("tickflow.sequence", &sequence),
        ("tickflow.received_at", &received_at),
        ("tickflow.original_length", &length),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Encodes an envelope, waiting out a registry that is briefly down (backpressure meanwhile).
async fn encode(
    codec: &AvroCodec,
    topic: &str,
    envelope: &RawEnvelope,
    shutdown: &Shutdown,
) -> Result<Vec<u8>> {
    let mut delay = Duration::from_millis(100);
    loop {
        match codec.encode_raw(topic, envelope).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_retryable() && !shutdown.is_triggered() => {
                tracing::warn!(topic, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot encode a frame yet; holding it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sequence: i64, payload: &[u8]) -> Frame {
        Frame {
            provider: "simulator",
            connection_id: "c".into(),
            sequence,
            received_at: 0,
            channel: "t".into(),
            key: None,
            payload: Bytes::copy_from_slice(payload),
            dead_letter: None,
        }
    }

    #[tokio::test]
    async fn oversized_and_empty_frames_stay_out_and_full_queue_drops_only_when_asked() {
        let (output, mut rx) = queue(2, true, 8, false);
        assert!(output.send(frame(0, b"12345678")).await);
        assert!(
            output.send(frame(1, b"123456789")).await,
            "oversized: refused, not fatal"
        );
        assert!(output.send(frame(2, b"")).await);
        assert!(output.send(frame(3, b"ok")).await);
        assert!(
            output.send(frame(4, b"dropped")).await,
            "queue full: dropped"
        );
        drop(output);
        let mut got = Vec::new();
        while let Some(f) = rx.recv().await {
            got.push(f.sequence);
        }
        assert_eq!(got, vec![0, 3]);

        // Without dropping, a full queue makes the sender wait instead.
        let (output, mut rx) = queue(1, false, 8, false);
        assert!(output.send(frame(0, b"a")).await);
        let waiting = tokio::spawn(async move { output.send(frame(1, b"b")).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.recv().await.map(|f| f.sequence), Some(0));
        assert!(waiting.await.unwrap());
        assert_eq!(rx.recv().await.map(|f| f.sequence), Some(1));
    }

    #[tokio::test]
    async fn dead_letters_are_queued_with_their_reason_when_kept() {
        let (output, mut rx) = queue(8, false, 8, true);
        assert!(output.send(frame(0, b"123456789")).await);
        assert!(output.send(frame(1, b"")).await);
        let mut bad = frame(2, b"{");
        bad.dead_letter = Some(DeadLetter::new("malformed", "not JSON"));
        assert!(output.send(bad).await);
        drop(output);
        let mut got = Vec::new();
        while let Some(f) = rx.recv().await {
            got.push((f.sequence, f.dead_letter.map(|d| d.reason)));
        }
        assert_eq!(
            got,
            vec![
                (0, Some("oversized")),
                (1, Some("empty")),
                (2, Some("malformed"))
            ]
        );
    }
}
