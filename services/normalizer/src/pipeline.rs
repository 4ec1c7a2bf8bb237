//! Consume, normalize, produce: exactly once, with Kafka transactions.
//!
//! Records are read in batches: a batch starts with the first record ready and takes every record
//! already fetched (up to `max_batch`, within `commit_interval_ms`), so nothing waits for a timer
//! and a batch under a steady stream is what arrived during the previous commit. Each batch is one
//! transaction: its trades and dead letters are produced, then the offsets of the next records
//! to read are sent with the consumer's group metadata, then it commits. No transaction is ever
//! open while the consumer is polled for a new batch, so a rebalance (served inside the poll)
//! never meets half a batch: a batch whose collection was interrupted by one is dropped unread
//! and every owned partition is sought back to its committed offset.
//!
//! On an abortable error the transaction is aborted, the duplicate filter forgets the batch and
//! the partitions are sought back to the batch's first offsets; on a fatal error the producer is
//! replaced (its `init_transactions` fences the old one). A producer fenced by another instance
//! with the same transactional id stops the service: two instances must not share an id.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tickflow_shared::avro::{AvroCodec, TradeEncoder};
use tickflow_shared::domain::{now_micros, RawEnvelope};
use tickflow_shared::kafka;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tickflow_shared::watermark;
use tickflow_shared::{Error, Result};

use crate::config::Config;
use crate::dedup::DedupSet;
use crate::gaps::{self, GapRecord, GapSet};
use crate::metrics::*;
use crate::normalize::{normalize, Outcome, Rules};
use crate::reason::Reason;
use crate::reference::Reference;
use crate::warmup;
use tickflow_providers::Frame;
use tickflow_shared::gap::UNRECOVERABLE_CHANNEL;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts rebalances and exports consumer lag from librdkafka's statistics.
#[derive(Default)]
pub struct Context {
    generation: AtomicU64,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        metrics::counter!(REBALANCES).increment(1);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type Input = StreamConsumer<Context>;

/// One consumed record, owned.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Why a batch did not commit.
enum Failure {
    /// Abort, rewind, try again (after a pause when a dependency is down).
    Retry(String),
    /// The producer is unusable: make a new one, then rewind.
    Reset(String),
    /// Another instance took over this transactional id.
    Fenced(String),
}

fn classify(e: KafkaError) -> Failure {
    let text = e.to_string();
    match e {
        KafkaError::Transaction(t)
            if matches!(
                t.code(),
                RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
            ) =>
        {
            Failure::Fenced(text)
        }
        KafkaError::Transaction(t) if t.is_fatal() => Failure::Reset(text),
        KafkaError::Transaction(t) if t.txn_requires_abort() || t.is_retriable() => {
            Failure::Retry(text)
        }
        _ => Failure::Reset(text),
    }
}

pub struct Pipeline {
    config: Config,
    codec: Arc<AvroCodec>,
    encoder: TradeEncoder,
    reference: Reference,
    labels: InstrumentLabels,
    consumer: Input,
    context_generation: u64,
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    dedup: DedupSet,
    gaps: GapSet,
    last_sync: Option<Instant>,
}

impl Pipeline {
    pub async fn new(
        config: Config,
        codec: Arc<AvroCodec>,
        encoder: TradeEncoder,
        reference: Reference,
        labels: InstrumentLabels,
        shutdown: &Shutdown,
    ) -> Result<Option<Self>> {
        let n = &config.normalizer;
        let mut consumer_config = kafka::consumer_config(&config.kafka, "normalizer", &n.group_id);
        consumer_config.set("statistics.interval.ms", "5000");
        kafka::static_membership(&mut consumer_config, &n.transactional_id());
        let consumer: Input = consumer_config.create_with_context(Context::default())?;
        consumer.subscribe(&[n.input_topics.as_str()])?;
        let Some(producer) = new_producer(&config, shutdown).await? else {
            return Ok(None);
        };
        Ok(Some(Self {
            config,
            codec,
            encoder,
            reference,
            labels,
            consumer,
            context_generation: 0,
            producer,
            dedup: DedupSet::default(),
            gaps: GapSet::default(),
            last_sync: None,
        }))
    }

    /// Runs until shutdown; the batch in hand is committed before returning, then the instance
    /// leaves the consumer group so its partitions move on at once.
    pub async fn run(mut self, shutdown: &Shutdown) -> Result<()> {
        self.serve(shutdown).await?;
        kafka::leave_group(&self.consumer, Duration::from_secs(5)).await;
        tracing::info!("left the consumer group");
        Ok(())
    }

    async fn serve(&mut self, shutdown: &Shutdown) -> Result<()> {
        let interval = Duration::from_millis(self.config.normalizer.commit_interval_ms);
        let mut pause = Duration::ZERO;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            if !pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.triggered() => return Ok(()),
                }
            }
            let generation = self.consumer.context().generation.load(Ordering::SeqCst);
            if generation != self.context_generation {
                self.context_generation = generation;
                if !self.after_rebalance(shutdown).await? {
                    // Shutdown came during the warm-up: nothing more is read with a filter
                    // half rebuilt.
                    return Ok(());
                }
            }
            let batch = self.collect(interval, generation, shutdown).await?;
            if self.consumer.context().generation.load(Ordering::SeqCst) != generation {
                // A rebalance came while collecting: drop the batch, re-read from committed.
                continue;
            }
            if batch.is_empty() {
                continue;
            }
            match self.transact(&batch).await {
                Ok(()) => {
                    pause = Duration::ZERO;
                    self.dedup.commit(self.config.normalizer.dedup_horizon());
                    metrics::gauge!(DEDUP_HELD).set(self.dedup.held() as f64);
                    self.gaps.commit();
                    for (provider, (open, missing)) in self.gaps.open() {
                        metrics::gauge!(GAPS_OPEN, "provider" => provider).set(open as f64);
                        metrics::gauge!(GAP_TRADES_OPEN, "provider" => provider)
                            .set(missing as f64);
                    }
                }
                Err(failure) => {
                    self.dedup.rollback();
                    self.gaps.rollback();
                    match failure {
                        Failure::Retry(why) => {
                            metrics::counter!(TRANSACTIONS, "outcome" => "aborted").increment(1);
                            tracing::warn!(error = %why, records = batch.len(), "transaction aborted; the batch will be processed again");
                            if let Err(e) = tokio::task::block_in_place(|| {
                                self.producer.abort_transaction(TXN_TIMEOUT)
                            }) {
                                tracing::warn!(error = %e, "abort failed; replacing the producer");
                                self.replace_producer(shutdown).await?;
                            }
                        }
                        Failure::Reset(why) => {
                            metrics::counter!(TRANSACTIONS, "outcome" => "producer_reset")
                                .increment(1);
                            tracing::error!(error = %why, "producer unusable; replacing it");
                            self.replace_producer(shutdown).await?;
                        }
                        Failure::Fenced(why) => {
                            return Err(Error::Fenced(format!(
                                "another normalizer uses transactional id {:?} ({why})",
                                self.config.normalizer.transactional_id()
                            )));
                        }
                    }
                    pause = (pause * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
                    self.rewind(&batch).await?;
                }
            }
        }
    }

    async fn replace_producer(&mut self, shutdown: &Shutdown) -> Result<()> {
        if let Some(p) = new_producer(&self.config, shutdown).await? {
            self.producer = p;
        }
        Ok(())
    }

    /// The next batch: waits up to `interval` for a first record, then takes every record the
    /// consumer has already fetched, up to `max_batch` and until `interval` after the first. A
    /// transaction thus starts as soon as there is work, with whatever was fetched meanwhile
    /// (librdkafka fetches in the background while a commit is in flight), instead of waiting
    /// for a timer: under a steady stream a batch is what arrived during the previous commit.
    async fn collect(
        &self,
        interval: Duration,
        generation: u64,
        shutdown: &Shutdown,
    ) -> Result<Vec<Record>> {
        let max = self.config.normalizer.max_batch;
        let mut batch = Vec::with_capacity(max.min(4096));
        let mut deadline = tokio::time::Instant::now() + interval;
        while batch.len() < max {
            // Nothing ready after the first record: the batch is complete.
            let wait_until = if batch.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now().min(deadline)
            };
            let message = tokio::select! {
                biased;
                () = shutdown.triggered() => break,
                m = tokio::time::timeout_at(wait_until, self.consumer.recv()) => m,
            };
            match message {
                Err(_) => break,
                Ok(Ok(m)) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + interval;
                    }
                    batch.push(Record {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                Ok(Err(e)) => {
                    if let Some(fatal) = kafka::fatal_consumer_error(
                        &e,
                        self.consumer.client(),
                        "normalizer.transactional_id",
                        &self.config.normalizer.transactional_id(),
                    ) {
                        return Err(fatal);
                    }
                    tracing::warn!(error = %e, "consumer error; the batch ends here and reading goes on");
                    break;
                }
            }
            if self.consumer.context().generation.load(Ordering::SeqCst) != generation {
                break;
            }
        }
        Ok(batch)
    }

    /// After a rebalance: forget revoked partitions, seek every owned partition to its committed
    /// offset (records read before the rebalance were dropped), rebuild missing dedup state.
    /// Seeks the owned partitions to their committed offsets and rebuilds the duplicate filter
    /// and gap tracker of those new to this instance. `false` when shutdown interrupted it.
    async fn after_rebalance(&mut self, shutdown: &Shutdown) -> Result<bool> {
        let assignment = self.consumer.assignment()?;
        let owned: Vec<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.dedup
            .retain(|t, p| owned.iter().any(|(ot, op)| ot == t && *op == p));
        self.gaps
            .retain(|t, p| owned.iter().any(|(ot, op)| ot == t && *op == p));
        if owned.is_empty() {
            return Ok(true);
        }
        let committed = loop {
            match tokio::task::block_in_place(|| {
                self.consumer
                    .committed_offsets(assignment.clone(), Duration::from_secs(10))
            }) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read committed offsets; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let n = &self.config.normalizer;
        let index = self.reference.snapshot();
        // Owned first: the list's elements are not `Send`, and the loop awaits.
        let committed: Vec<(String, i32, Option<i64>)> = committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_string(), e.partition(), offset)
            })
            .collect();
        for (topic, partition, offset) in &committed {
            let (topic, partition, offset) = (topic.as_str(), *partition, *offset);
            let seek_to = offset.map_or(Offset::Beginning, Offset::Offset);
            self.seek(topic, partition, seek_to).await?;
            if !self.dedup.contains_partition(topic, partition) {
                let dedup = self.dedup.partition(topic, partition);
                let gaps = self.gaps.partition(topic, partition);
                *gaps = Default::default();
                if let Some(committed) = offset {
                    let limits = n.limits();
                    let warming = warmup::warm_up(
                        &self.config.kafka,
                        &n.group_id,
                        topic,
                        partition,
                        committed,
                        n.dedup_horizon(),
                        &limits,
                        &index,
                        &self.codec,
                        dedup,
                        gaps,
                    );
                    tokio::select! {
                        warmed = warming => { warmed?; }
                        () = shutdown.triggered() => return Ok(false),
                    }
                }
            }
        }
        Ok(true)
    }

    async fn seek(&self, topic: &str, partition: i32, offset: Offset) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self
                .consumer
                .seek(topic, partition, offset, Duration::from_secs(5))
            {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!(topic, partition, error = %e, "seek not possible yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Seeks the batch's partitions back to its first offsets.
    async fn rewind(&self, batch: &[Record]) -> Result<()> {
        let mut first: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            first.entry((&r.topic, r.partition)).or_insert(r.offset);
        }
        for ((topic, partition), offset) in first {
            self.seek(topic, partition, Offset::Offset(offset)).await?;
        }
        Ok(())
    }

    /// Processes one batch in one transaction.
    async fn transact(&mut self, batch: &[Record]) -> Result<(), Failure> {
        let started = Instant::now();
        tokio::task::block_in_place(|| self.producer.begin_transaction()).map_err(classify)?;
        let begun = Instant::now();
        let mut stats = BatchStats::default();
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        let mut index = self.reference.snapshot();
        let mut outcomes = Vec::new();
        let mut gap_events = Vec::new();
        let n = self.config.normalizer.clone();
        let limits = n.limits();
        for record in batch {
            next.insert((&record.topic, record.partition), record.offset + 1);
            // Downstream watermarks track each raw partition as a source of its own.
            let source = watermark::source_name(&record.topic, record.partition);
            outcomes.clear();
            let envelope = match &record.payload {
                None => None,
                Some(bytes) => match self.codec.decode_raw(bytes).await {
                    Ok(env) => Some(env),
                    Err(e) if e.is_retryable() => return Err(Failure::Retry(e.to_string())),
                    Err(e) => {
                        outcomes.push(Outcome::Rejected {
                            trade_index: None,
                            reason: Reason::BadEnvelope,
                            detail: e.to_string(),
                        });
                        None
                    }
                },
            };
            let provider_id = envelope.as_ref().map_or("unknown", |e| e.provider.as_str());
            let provider = tickflow_providers::by_id(provider_id);
            if let Some(env) = &envelope {
                match provider {
                    None => outcomes.push(Outcome::Rejected {
                        trade_index: None,
                        reason: Reason::UnknownProvider,
                        detail: format!("no parser for provider {:?}", env.provider),
                    }),
                    Some(provider) if env.channel == UNRECOVERABLE_CHANNEL => {
                        let gaps = self.gaps.partition(&record.topic, record.partition);
                        gap_events.clear();
                        match gaps::observe_unrecoverable(gaps, provider, env, &mut gap_events) {
                            Ok(()) => outcomes.push(Outcome::Skipped("backfill_unrecoverable")),
                            Err(detail) => outcomes.push(Outcome::Rejected {
                                trade_index: None,
                                reason: Reason::UnparsablePayload,
                                detail,
                            }),
                        }
                    }
                    Some(provider) => {
                        let parsed = provider.parse(&env.payload);
                        if let Ok(Frame::Trades(trades)) = &parsed {
                            let unknown = trades.iter().any(|t| {
                                index.resolve(provider.id().as_str(), &t.symbol).is_none()
                            });
                            if unknown && self.sync_due(&n) {
                                index = self.reference.catch_up(Duration::from_secs(3)).await;
                            }
                            let gaps = self.gaps.partition(&record.topic, record.partition);
                            gap_events.clear();
                            gaps::observe_frame(gaps, provider, env, trades, &mut gap_events);
                        }
                        let dedup = self.dedup.partition(&record.topic, record.partition);
                        normalize(
                            provider,
                            env,
                            parsed,
                            Rules {
                                index: &index,
                                limits: &limits,
                                now: now_micros(),
                            },
                            dedup,
                            &mut outcomes,
                        );
                    }
                }
            } else if record.payload.is_none() {
                outcomes.push(Outcome::Rejected {
                    trade_index: None,
                    reason: Reason::BadEnvelope,
                    detail: "record without a value".into(),
                });
            }
            let provider_label = provider.map_or("unknown", |p| p.id().as_str());
            stats.records_in(provider_label);
            for event in gap_events.drain(..) {
                let source = format!("{}/{}@{}", record.topic, record.partition, record.offset);
                let Some(gap) = gaps::record(&event, &index, source) else {
                    stats.recovered(&event, &index, &self.labels);
                    continue;
                };
                let bytes = match self.codec.encode(&n.gaps_topic, gap.to_value()).await {
                    Ok(b) => b,
                    Err(e) if e.is_retryable() => return Err(Failure::Retry(e.to_string())),
                    Err(e) => {
                        // The schema registered at start cannot hold it: a bug, reported loudly
                        // rather than stopping the trades behind it.
                        tracing::error!(error = %e, provider = %gap.provider, symbol = %gap.symbol, first = gap.first_missing, last = gap.last_missing, status = %gap.status, "cannot encode a gap record; it is not published");
                        continue;
                    }
                };
                let key = gap.key();
                self.send(
                    BaseRecord::to(&n.gaps_topic)
                        .key(key.as_bytes())
                        .payload(&bytes),
                )
                .await?;
                stats.gap(gap, &self.labels);
            }
            for outcome in outcomes.drain(..) {
                match outcome {
                    Outcome::Trade(trade) => {
                        let bytes = match self.encoder.encode(&trade) {
                            Ok(b) => b,
                            Err(e) => {
                                // Validation passed, so the limits allow more than the schema
                                // holds: keep the record in the DLQ rather than lose it.
                                self.dead_letter(
                                    record,
                                    None,
                                    Reason::Unencodable,
                                    &format!("cannot encode: {e}"),
                                    &mut stats,
                                    provider_label,
                                    envelope.as_ref(),
                                )
                                .await?;
                                continue;
                            }
                        };
                        let record_out = BaseRecord::to(&n.output_topic)
                            .key(trade.instrument.as_bytes())
                            .payload(&bytes)
                            .headers(OwnedHeaders::new().insert(Header {
                                key: watermark::SOURCE_HEADER,
                                value: Some(source.as_bytes()),
                            }));
                        self.send(record_out).await?;
                        stats.trade(&trade, &self.labels);
                    }
                    Outcome::Rejected {
                        trade_index,
                        reason,
                        detail,
                    } => {
                        self.dead_letter(
                            record,
                            trade_index,
                            reason,
                            &detail,
                            &mut stats,
                            provider_label,
                            envelope.as_ref(),
                        )
                        .await?;
                    }
                    Outcome::Duplicate { exchange } => stats.duplicate(provider_label, exchange),
                    Outcome::Skipped(kind) => stats.skipped(provider_label, kind),
                }
            }
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| Failure::Retry(e.to_string()))?;
        }
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| Failure::Retry("no consumer group metadata yet".into()))?;
        let processed = Instant::now();
        tokio::task::block_in_place(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
        })
        .map_err(classify)?;
        let offsets_sent = Instant::now();
        tokio::task::block_in_place(|| await_delivery(&self.producer, TXN_TIMEOUT))?;
        let delivered = Instant::now();
        tokio::task::block_in_place(|| self.producer.commit_transaction(TXN_TIMEOUT))
            .map_err(classify)?;
        let committed = Instant::now();
        metrics::counter!(TRANSACTIONS, "outcome" => "committed").increment(1);
        metrics::histogram!(TRANSACTION_SECONDS).record((committed - started).as_secs_f64());
        for (step, from, to) in [
            ("begin", started, begun),
            ("process", begun, processed),
            ("offsets", processed, offsets_sent),
            ("deliver", offsets_sent, delivered),
            ("commit", delivered, committed),
        ] {
            metrics::histogram!(TRANSACTION_STEP_SECONDS, "step" => step)
                .record((to - from).as_secs_f64());
        }
        stats.emit();
        Ok(())
    }

    fn sync_due(&mut self, n: &crate::config::NormalizerConfig) -> bool {
        let due = self
            .last_sync
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(n.instruments_sync_interval_ms));
        if due {
            self.last_sync = Some(Instant::now());
        }
        due
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        record: &Record,
        trade_index: Option<usize>,
        reason: Reason,
        detail: &str,
        stats: &mut BatchStats,
        provider: &str,
        envelope: Option<&RawEnvelope>,
    ) -> Result<(), Failure> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let index = trade_index.map(|i| i.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "tickflow.reason",
                value: Some(reason.code()),
            })
            .insert(Header {
                key: "tickflow.reason.text",
                value: Some(detail),
            })
            .insert(Header {
                key: "tickflow.source.topic",
                value: Some(&record.topic),
            })
            .insert(Header {
                key: "tickflow.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "tickflow.source.offset",
                value: Some(&offset),
            });
        if let Some(i) = &index {
            headers = headers.insert(Header {
                key: "tickflow.trade.index",
                value: Some(i),
            });
        }
        let topic = self.config.normalizer.dlq_topic.clone();
        let mut out = BaseRecord::to(&topic).headers(headers);
        if let Some(k) = &record.key {
            out = out.key(k.as_slice());
        }
        if let Some(p) = &record.payload {
            out = out.payload(p);
        }
        self.send(out).await?;
        stats.dead_letter(provider, reason);
        // A sample of the frame in the log: enough to see what was wrong, bounded in size.
        let sample = envelope.map(|e| {
            let text = String::from_utf8_lossy(&e.payload);
            text.chars().take(200).collect::<String>()
        });
        tracing::warn!(provider, reason = reason.code(), detail, topic = %record.topic, partition = record.partition, offset = record.offset, trade_index, sample = sample.as_deref().unwrap_or(""), "dead-lettered");
        Ok(())
    }

    async fn send<'a>(&self, mut record: BaseRecord<'a, [u8], Vec<u8>>) -> Result<(), Failure>
    where
        'a: 'a,
    {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(classify(e)),
            }
        }
    }
}

/// Waits until every output of the transaction is delivered (acknowledged by the brokers), so
/// that the commit that follows finds nothing in flight.
///
/// Not rdkafka's `flush`, which `commit_transaction` calls first: it polls the delivery reports
/// itself in waits of up to 100 ms, but the `ThreadedProducer`'s own thread takes those reports,
/// so the wait runs its full 100 ms whenever a message is still in flight at the call. Every
/// transaction took at least 100 ms that way (measured: outputs delivered in about 8 ms, the
/// flush returning at 100.0 ms). Checking the in-flight count every 200 µs ends within that of
/// the last delivery.
fn await_delivery<C: rdkafka::producer::ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(Failure::Retry(format!(
                "outputs not delivered within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Creates the transactional producer and fences older incarnations of this id (retrying while
/// Kafka is unreachable). `None` if shutdown came first.
async fn new_producer(
    config: &Config,
    shutdown: &Shutdown,
) -> Result<Option<ThreadedProducer<rdkafka::producer::DefaultProducerContext>>> {
    let id = config.normalizer.transactional_id();
    let mut delay = Duration::from_millis(200);
    loop {
        let mut client = kafka::producer_config(&config.kafka, "normalizer");
        client
            .set("transactional.id", &id)
            .set("transaction.timeout.ms", "60000");
        // Unless `[kafka.librdkafka]` says otherwise: no linger (a transaction waits for its
        // outputs' delivery before it commits, so lingering only delays it), and a 5 ms retry
        // backoff instead of 100 ms: the next transaction starts right after a commit, while
        // the coordinator may still be completing it, and librdkafka retries the
        // AddOffsetsToTxn that meets CONCURRENT_TRANSACTIONS after `retry.backoff.ms` (its
        // AddPartitionsToTxn after a fixed 20 ms). Measured: 2 % of transactions took 100 ms
        // more in their offsets step with the default.
        let passed = |names: &[&str]| {
            config
                .kafka
                .librdkafka
                .keys()
                .any(|k| names.contains(&k.replace('_', ".").as_str()))
        };
        if !passed(&["linger.ms", "queue.buffering.max.ms"]) {
            client.set("linger.ms", "0");
        }
        if !passed(&["retry.backoff.ms"]) {
            client.set("retry.backoff.ms", "5");
        }
        let producer: ThreadedProducer<_> = client.create()?;
        // On a blocking thread, raced against shutdown: `init_transactions` can wait up to its
        // timeout (coordinator loading, group still joining), and a SIGTERM must not wait for
        // it. An abandoned call ends on its own thread; the process does not wait for it.
        let init = tokio::task::spawn_blocking(move || {
            let outcome = producer.init_transactions(TXN_TIMEOUT);
            (producer, outcome)
        });
        let (producer, outcome) = tokio::select! {
            joined = init => joined.map_err(|e| Error::Task {
                task: "transactional producer init",
                message: e.to_string(),
            })?,
            () = shutdown.triggered() => return Ok(None),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(transactional_id = %id, "transactional producer ready");
                return Ok(Some(producer));
            }
            Err(e) => {
                tracing::warn!(transactional_id = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot initialise transactions yet");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.triggered() => return Ok(None),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Counts of one batch, emitted once after its commit (never for an aborted batch).
#[derive(Default)]
struct BatchStats {
    records: HashMap<&'static str, u64>,
    trades: HashMap<(String, String, String), u64>,
    dead: HashMap<(String, &'static str), u64>,
    duplicates: HashMap<(String, String), u64>,
    skipped: HashMap<(String, &'static str), u64>,
    event_latency: Vec<(String, f64, f64)>,
    gaps: Vec<(GapRecord, String)>,
    recovered: HashMap<(String, String, String), u64>,
}

impl BatchStats {
    fn records_in(&mut self, provider: &'static str) {
        *self.records.entry(provider).or_default() += 1;
    }

    fn trade(&mut self, t: &tickflow_shared::domain::Trade, labels: &InstrumentLabels) {
        *self
            .trades
            .entry((
                t.provider.clone(),
                t.exchange.clone(),
                labels.label(&t.instrument),
            ))
            .or_default() += 1;
        let seconds = |micros: i64| micros as f64 / 1e6;
        self.event_latency.push((
            t.provider.clone(),
            seconds(t.normalized_time - t.event_time),
            seconds(t.normalized_time - t.ingest_time),
        ));
    }

    fn dead_letter(&mut self, provider: &str, reason: Reason) {
        *self
            .dead
            .entry((provider.to_string(), reason.code()))
            .or_default() += 1;
    }

    fn duplicate(&mut self, provider: &str, exchange: String) {
        *self
            .duplicates
            .entry((provider.to_string(), exchange))
            .or_default() += 1;
    }

    fn skipped(&mut self, provider: &str, kind: &'static str) {
        *self
            .skipped
            .entry((provider.to_string(), kind))
            .or_default() += 1;
    }

    fn gap(&mut self, gap: GapRecord, labels: &InstrumentLabels) {
        let label = labels.label(&gap.instrument);
        self.gaps.push((gap, label));
    }

    fn recovered(
        &mut self,
        event: &gaps::Event,
        index: &tickflow_shared::instruments::InstrumentIndex,
        labels: &InstrumentLabels,
    ) {
        let (exchange, instrument) = gaps::venue(event, index);
        let instrument = if instrument.is_empty() {
            instrument
        } else {
            labels.label(&instrument)
        };
        *self
            .recovered
            .entry((event.provider.to_string(), exchange, instrument))
            .or_default() += 1;
    }

    fn emit(self) {
        for (g, instrument) in self.gaps {
            metrics::counter!(GAPS, "provider" => g.provider.clone(), "exchange" => g.exchange.clone(), "instrument" => instrument.clone(), "status" => g.status.clone()).increment(1);
            match g.status.as_str() {
                "OPEN" => {
                    metrics::counter!(GAP_TRADES_MISSING, "provider" => g.provider.clone(), "exchange" => g.exchange.clone(), "instrument" => instrument)
                        .increment(g.still_missing as u64);
                    tracing::warn!(provider = %g.provider, symbol = %g.symbol, first = g.first_missing, last = g.last_missing, missing = g.still_missing, found = %g.found, source = %g.source, "gap in the provider's trade numbering: trades printed and not received");
                }
                "FILLED" => {
                    tracing::info!(provider = %g.provider, symbol = %g.symbol, first = g.first_missing, last = g.last_missing, "gap filled: every missing trade arrived")
                }
                _ => {
                    tracing::warn!(provider = %g.provider, symbol = %g.symbol, first = g.first_missing, last = g.last_missing, still_missing = g.still_missing, reason = %g.reason, "gap no longer tracked")
                }
            }
        }
        for ((provider, exchange, instrument), n) in self.recovered {
            metrics::counter!(GAP_TRADES_RECOVERED, "provider" => provider, "exchange" => exchange, "instrument" => instrument).increment(n);
        }
        for (provider, n) in self.records {
            metrics::counter!(RECORDS_IN, "provider" => provider).increment(n);
        }
        for ((provider, exchange, instrument), n) in self.trades {
            metrics::counter!(TRADES_OUT, "provider" => provider, "exchange" => exchange, "instrument" => instrument).increment(n);
        }
        for ((provider, reason), n) in self.dead {
            metrics::counter!(DLQ, "provider" => provider, "reason" => reason).increment(n);
        }
        for ((provider, exchange), n) in self.duplicates {
            metrics::counter!(DUPLICATES, "provider" => provider, "exchange" => exchange)
                .increment(n);
        }
        for ((provider, kind), n) in self.skipped {
            metrics::counter!(SKIPPED, "provider" => provider, "kind" => kind).increment(n);
        }
        let mut by_provider: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for (provider, event, ingest) in self.event_latency {
            by_provider
                .entry(provider)
                .or_default()
                .push((event, ingest));
        }
        for (provider, values) in by_provider {
            let event = metrics::histogram!(EVENT_TO_NORMALIZED, "provider" => provider.clone());
            let ingest = metrics::histogram!(INGEST_TO_NORMALIZED, "provider" => provider);
            for (e, i) in values {
                event.record(e);
                ingest.record(i);
            }
        }
    }
}
