//! The live reference data: the instruments file, then every record of the compacted topic
//! `md.instruments` on top, read from the beginning and followed. The pipeline takes a snapshot
//! per record batch; before dead-lettering an unknown symbol it asks this task to catch up with
//! the topic's end, so an instrument published before its first trade is always known.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tickflow_shared::avro::AvroCodec;
use tickflow_shared::config::KafkaConfig;
use tickflow_shared::instruments::{instrument_from_value, Instrument, InstrumentIndex};
use tickflow_shared::kafka;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::INSTRUMENTS;

/// A handle on the current reference data.
#[derive(Clone)]
pub struct Reference {
    current: Arc<RwLock<Arc<InstrumentIndex>>>,
    sync: mpsc::Sender<oneshot::Sender<()>>,
}

impl Reference {
    pub fn snapshot(&self) -> Arc<InstrumentIndex> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Reference data that never changes: `index`, with nothing to follow (benches, tests).
    pub fn fixed(index: InstrumentIndex) -> Self {
        let (sync, _) = mpsc::channel(1);
        Self {
            current: Arc::new(RwLock::new(Arc::new(index))),
            sync,
        }
    }

    /// Waits until every instrument record on the topic now has been applied (or `timeout`).
    pub async fn catch_up(&self, timeout: Duration) -> Arc<InstrumentIndex> {
        let (tx, rx) = oneshot::channel();
        if self.sync.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
        self.snapshot()
    }
}

/// Starts following `topic` from its beginning on top of `initial`.
pub fn start(
    kafka_config: &KafkaConfig,
    topic: &str,
    group_id: &str,
    initial: Vec<Instrument>,
    codec: Arc<AvroCodec>,
    shutdown: &Shutdown,
) -> Result<Reference> {
    let index = InstrumentIndex::new(initial);
    metrics::gauge!(INSTRUMENTS).set(index.len() as f64);
    let current = Arc::new(RwLock::new(Arc::new(index)));
    let (sync_tx, sync_rx) = mpsc::channel(16);
    // Assigned, not subscribed: every instance reads every partition; nothing is committed.
    let consumer: StreamConsumer = kafka::stream_consumer(
        kafka_config,
        "normalizer-instruments",
        &format!("{group_id}-instruments"),
    )?;
    let follower = Follower {
        consumer,
        topic: topic.to_string(),
        codec,
        current: current.clone(),
        next: HashMap::new(),
        assigned: false,
    };
    shutdown.spawn(follower.run(sync_rx, shutdown.clone()));
    Ok(Reference {
        current,
        sync: sync_tx,
    })
}

struct Follower {
    consumer: StreamConsumer,
    topic: String,
    codec: Arc<AvroCodec>,
    current: Arc<RwLock<Arc<InstrumentIndex>>>,
    /// Next offset to read, per partition.
    next: HashMap<i32, i64>,
    assigned: bool,
}

impl Follower {
    async fn run(mut self, mut sync: mpsc::Receiver<oneshot::Sender<()>>, shutdown: Shutdown) {
        loop {
            if !self.assigned {
                if let Err(e) = self.assign() {
                    tracing::warn!(topic = %self.topic, error = %e, "cannot read the instruments topic yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        () = shutdown.triggered() => return,
                    }
                }
            }
            tokio::select! {
                () = shutdown.triggered() => return,
                message = self.consumer.recv() => match message {
                    Ok(m) => { let m = m.detach(); self.apply(&m).await }
                    Err(e) => tracing::warn!(topic = %self.topic, error = %e, "instruments topic read error; reading on"),
                },
                Some(reply) = sync.recv() => {
                    self.catch_up().await;
                    let _ = reply.send(());
                }
            }
        }
    }

    fn assign(&mut self) -> Result<()> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(tickflow_shared::Error::Config(format!(
                "topic {} has no partitions",
                self.topic
            )));
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)?;
            self.next.insert(p, 0);
        }
        self.consumer.assign(&tpl)?;
        self.assigned = true;
        Ok(())
    }

    /// Reads until every partition's position reaches the end it has now.
    async fn catch_up(&mut self) {
        let ends: Vec<(i32, i64)> = self
            .next
            .keys()
            .filter_map(|&p| {
                tokio::task::block_in_place(|| {
                    self.consumer
                        .fetch_watermarks(&self.topic, p, Duration::from_secs(2))
                        .ok()
                        .map(|(_, high)| (p, high))
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while ends
            .iter()
            .any(|(p, high)| self.next.get(p).copied().unwrap_or(0) < *high)
        {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    let m = m.detach();
                    self.apply(&m).await
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "instruments topic read error; reading on")
                }
                Err(_) => {
                    tracing::warn!(topic = %self.topic, "instruments topic catch-up timed out");
                    return;
                }
            }
        }
    }

    async fn apply(&mut self, m: &rdkafka::message::OwnedMessage) {
        self.next.insert(m.partition(), m.offset() + 1);
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let update = match m.payload() {
            None => Ok(None),
            Some(bytes) => self.decode(bytes).await,
        };
        let mut index = (*self.current_snapshot()).clone();
        match update {
            Ok(Some(instrument)) => {
                tracing::info!(instrument = %instrument.instrument, listings = instrument.listings.len(), active = instrument.active, "instrument updated");
                index.upsert(instrument);
            }
            Ok(None) => {
                tracing::info!(instrument = %key, "instrument removed (tombstone)");
                index.remove(&key);
            }
            Err(e) => {
                tracing::error!(instrument = %key, offset = m.offset(), error = %e, "unreadable instrument record skipped");
                return;
            }
        }
        metrics::gauge!(INSTRUMENTS).set(index.len() as f64);
        if let Ok(mut guard) = self.current.write() {
            *guard = Arc::new(index);
        }
    }

    /// Decodes one record, waiting out a registry that is briefly unreachable.
    async fn decode(&self, bytes: &[u8]) -> Result<Option<Instrument>> {
        let mut attempt = 0;
        loop {
            match self.codec.decode(bytes).await {
                Ok(value) => return instrument_from_value(value).map(Some),
                Err(e) if e.is_retryable() && attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "schema registry unavailable while reading an instrument; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn current_snapshot(&self) -> Arc<InstrumentIndex> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}
