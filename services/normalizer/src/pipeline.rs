//! The normalizer on the stream runtime ([`tickflow_shared::runtime`]): the normalizing operator
//! ([`crate::operator`]), its sinks (the trade, dead-letter and gap topics), and exactly once
//! through Kafka transactions.
//!
//! The runtime reads the raw topics (`normalizer.input_topics`, a pattern) through the consumer
//! group `normalizer.group_id`, and lands each batch as one transaction: its trades, dead letters
//! and gap records are produced, the next offsets of the records behind them are sent with the
//! consumer's group metadata, then it commits ([`Checkpoints::Transactions`]). A batch is what was
//! fetched when its first record was normalized (every output is urgent), cut at
//! `normalizer.max_batch` records or `normalizer.commit_interval_ms`. A partition taken up starts
//! at the group's committed offset, its duplicate filter and gap tracker rebuilt from the records
//! before it ([`crate::warmup`]); a revoked one is released right after the transaction with its
//! records commits, so the next owner reads on exactly there.
//!
//! On an abortable error the transaction is aborted and the runtime reads again from the
//! committed offsets (the filters rebuilt with them); on a fatal error the producer is replaced
//! (its `init_transactions` fences the old one). A producer fenced by another instance with the
//! same transactional id stops the service: two instances must not share an id.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tickflow_shared::avro::{AvroCodec, TradeEncoder};
use tickflow_shared::kafka;
use tickflow_shared::retry::RetryPolicy;
use tickflow_shared::runtime::{self, Checkpoints, Commit, Flushed, Fresh, Job, Plan, Record, Tp};
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tickflow_shared::watermark;
use tickflow_shared::{Error, Result};

use crate::config::Config;
use crate::gaps::GapRecord;
use crate::metrics::*;
use crate::normalize::Outcome;
use crate::operator::{Normalizer, Output, RawRecord, Settings};
use crate::reason::Reason;
use crate::reference::Reference;
use crate::warmup;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a frame with an unknown symbol waits for the reference data to catch up.
const CATCH_UP: Duration = Duration::from_secs(3);

/// The runtime's metric names for the normalizer.
pub const RUNTIME_METRICS: runtime::Metrics = runtime::Metrics {
    input_errors: INPUT_ERRORS,
    handovers: HANDOVERS,
    owned_partitions: OWNED_PARTITIONS,
    checkpoint_seconds: CHECKPOINT_SECONDS,
    checkpoint_bytes: CHECKPOINT_BYTES,
    consumer_lag: CONSUMER_LAG,
};

type TxProducer = ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// Why a batch did not commit.
enum Failure {
    /// Abort, read again from the committed offsets.
    Retry(String),
    /// The producer is unusable: make a new one, then read again.
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

/// Where an output goes.
#[derive(Clone, Copy)]
enum Sink {
    Trades,
    DeadLetters,
}

/// One output record, ready to produce.
struct Produced {
    sink: Sink,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

/// One transaction's worth of outputs, and what they count.
#[derive(Default)]
struct Batch {
    records: Vec<Produced>,
    gaps: Vec<GapRecord>,
    stats: BatchStats,
    /// When its first record was read.
    started: Option<Instant>,
}

/// The normalizer's side of the runtime: the transactional producer and the batch.
struct Transactions<'a> {
    config: &'a Config,
    codec: Arc<AvroCodec>,
    encoder: TradeEncoder,
    reference: Reference,
    labels: InstrumentLabels,
    producer: TxProducer,
    batch: Batch,
}

impl Job for Transactions<'_> {
    type Operator = Normalizer;

    /// Every record is urgent: its trades are committed as soon as no record waits.
    fn collect(&mut self, outputs: &mut Vec<Output>, record: Option<Record<RawRecord>>) -> bool {
        let Some(record) = record else {
            // The normalizer fires nothing on time alone.
            outputs.clear();
            return false;
        };
        let batch = &mut self.batch;
        batch.started.get_or_insert_with(Instant::now);
        let provider = record.input.provider();
        let provider_label = provider.map_or("unknown", |p| p.id().as_str());
        batch.stats.records_in(provider_label);
        // Downstream watermarks track each raw partition as a source of its own.
        let source = watermark::source_name(&record.tp.topic, record.tp.partition);
        for output in outputs.drain(..) {
            match output {
                Output::Gap(gap) => {
                    batch.stats.gap(gap.clone(), &self.labels);
                    batch.gaps.push(gap);
                }
                Output::Recovered {
                    provider,
                    exchange,
                    instrument,
                } => batch
                    .stats
                    .recovered(provider, exchange, &instrument, &self.labels),
                Output::Outcome(Outcome::Trade(trade)) => match self.encoder.encode(&trade) {
                    Ok(bytes) => {
                        batch.records.push(Produced {
                            sink: Sink::Trades,
                            key: Some(trade.instrument.as_bytes().to_vec()),
                            payload: Some(bytes),
                            headers: OwnedHeaders::new().insert(Header {
                                key: watermark::SOURCE_HEADER,
                                value: Some(source.as_bytes()),
                            }),
                        });
                        batch.stats.trade(&trade, &self.labels);
                    }
                    // Validation passed, so the limits allow more than the schema holds: keep
                    // the record in the DLQ rather than lose it.
                    Err(e) => dead_letter(
                        batch,
                        &record,
                        None,
                        Reason::Unencodable,
                        &format!("cannot encode: {e}"),
                        provider_label,
                    ),
                },
                Output::Outcome(Outcome::Rejected {
                    trade_index,
                    reason,
                    detail,
                }) => dead_letter(batch, &record, trade_index, reason, &detail, provider_label),
                Output::Outcome(Outcome::Duplicate { exchange }) => {
                    batch.stats.duplicate(provider_label, exchange)
                }
                Output::Outcome(Outcome::Skipped(kind)) => {
                    batch.stats.skipped(provider_label, kind)
                }
            }
        }
        true
    }

    async fn flush(&mut self, commit: Commit<'_>, shutdown: &Shutdown) -> Result<Flushed> {
        let Commit::Transaction { offsets, group } = commit else {
            return Err(Error::Config(
                "the normalizer lands its outputs in Kafka transactions only".into(),
            ));
        };
        let batch = std::mem::take(&mut self.batch);
        if batch.records.is_empty() && batch.gaps.is_empty() && offsets.count() == 0 {
            return Ok(Flushed::Landed);
        }
        match self.transact(&batch, offsets, group).await {
            Ok(()) => {
                batch.stats.emit();
                Ok(Flushed::Landed)
            }
            Err(Failure::Retry(why)) => {
                metrics::counter!(TRANSACTIONS, "outcome" => "aborted").increment(1);
                if let Err(e) =
                    tokio::task::block_in_place(|| self.producer.abort_transaction(TXN_TIMEOUT))
                {
                    tracing::warn!(error = %e, "abort failed; replacing the producer");
                    if !self.replace_producer(shutdown).await? {
                        return Ok(Flushed::Stopped);
                    }
                }
                Ok(Flushed::Aborted(why))
            }
            Err(Failure::Reset(why)) => {
                metrics::counter!(TRANSACTIONS, "outcome" => "producer_reset").increment(1);
                tracing::error!(error = %why, "producer unusable; replacing it");
                if !self.replace_producer(shutdown).await? {
                    return Ok(Flushed::Stopped);
                }
                Ok(Flushed::Aborted(why))
            }
            Err(Failure::Fenced(why)) => Err(Error::Fenced(format!(
                "another normalizer uses transactional id {:?} ({why})",
                self.config.normalizer.transactional_id()
            ))),
        }
    }

    fn discard(&mut self) {
        self.batch = Batch::default();
    }

    /// Waits (at most [`CATCH_UP`]) until the reference data has applied every instrument
    /// record on its topic: a frame with a symbol not known yet may name an instrument published
    /// a moment ago.
    async fn supply(&mut self, operator: &mut Normalizer) {
        self.reference.catch_up(CATCH_UP).await;
        operator.caught_up();
    }

    /// Rebuilds `tp`'s duplicate filter and gap tracker from the records within the dedup
    /// horizon before `committed`, retrying while Kafka cannot be read.
    async fn warm_up(
        &mut self,
        operator: &mut Normalizer,
        tp: &Tp,
        committed: Option<i64>,
        shutdown: &Shutdown,
    ) -> Result<bool> {
        let Some(committed) = committed else {
            return Ok(true);
        };
        let n = &self.config.normalizer;
        let policy = RetryPolicy::DEPENDENCY;
        let mut delays = policy.delays();
        loop {
            let index = self.reference.snapshot();
            let limits = operator.settings().limits.clone();
            let horizon = operator.settings().dedup_horizon;
            let (dedup, gaps) = operator.reset(tp);
            let warming = warmup::warm_up(
                &self.config.kafka,
                &n.group_id,
                &tp.topic,
                tp.partition,
                committed,
                horizon,
                &limits,
                &index,
                &self.codec,
                dedup,
                gaps,
            );
            let warmed = tokio::select! {
                warmed = warming => warmed,
                () = shutdown.triggered() => return Ok(false),
            };
            let Err(e) = warmed else {
                return Ok(true);
            };
            let delay = delays.next().unwrap_or(policy.ceiling);
            tracing::warn!(partition = %tp, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot rebuild the duplicate filter yet; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.triggered() => return Ok(false),
            }
        }
    }

    fn report(&mut self, operator: &Normalizer, _owned: &BTreeSet<Tp>) {
        metrics::gauge!(DEDUP_HELD).set(operator.dedup_held() as f64);
        for (provider, (open, missing)) in operator.gaps_open() {
            metrics::gauge!(GAPS_OPEN, "provider" => provider).set(open as f64);
            metrics::gauge!(GAP_TRADES_OPEN, "provider" => provider).set(missing as f64);
        }
    }
}

impl Transactions<'_> {
    /// Lands one batch in one transaction, with the offsets of the records behind it.
    async fn transact(
        &mut self,
        batch: &Batch,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), Failure> {
        let n = &self.config.normalizer;
        let mut gaps = Vec::with_capacity(batch.gaps.len());
        for gap in &batch.gaps {
            match self.codec.encode(&n.gaps_topic, gap.to_value()).await {
                Ok(bytes) => gaps.push((gap.key(), bytes)),
                Err(e) if e.is_retryable() => return Err(Failure::Retry(e.to_string())),
                // The schema registered at start cannot hold it: a bug, reported loudly rather
                // than stopping the trades behind it.
                Err(e) => {
                    tracing::error!(error = %e, provider = %gap.provider, symbol = %gap.symbol, first = gap.first_missing, last = gap.last_missing, status = %gap.status, "cannot encode a gap record; it is not published")
                }
            }
        }
        let started = batch.started.unwrap_or_else(Instant::now);
        let begin = Instant::now();
        tokio::task::block_in_place(|| self.producer.begin_transaction()).map_err(classify)?;
        let begun = Instant::now();
        for (key, bytes) in &gaps {
            self.send(
                BaseRecord::to(&n.gaps_topic)
                    .key(key.as_bytes())
                    .payload(bytes),
            )
            .await?;
        }
        for out in &batch.records {
            let topic = match out.sink {
                Sink::Trades => &n.output_topic,
                Sink::DeadLetters => &n.dlq_topic,
            };
            let mut record = BaseRecord::to(topic).headers(out.headers.clone());
            if let Some(k) = &out.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &out.payload {
                record = record.payload(p.as_slice());
            }
            self.send(record).await?;
        }
        let produced = Instant::now();
        if offsets.count() > 0 {
            tokio::task::block_in_place(|| {
                self.producer
                    .send_offsets_to_transaction(offsets, group, TXN_TIMEOUT)
            })
            .map_err(classify)?;
        }
        let offsets_sent = Instant::now();
        tokio::task::block_in_place(|| await_delivery(&self.producer, TXN_TIMEOUT))?;
        let delivered = Instant::now();
        tokio::task::block_in_place(|| self.producer.commit_transaction(TXN_TIMEOUT))
            .map_err(classify)?;
        let committed = Instant::now();
        metrics::counter!(TRANSACTIONS, "outcome" => "committed").increment(1);
        metrics::histogram!(TRANSACTION_SECONDS).record((committed - started).as_secs_f64());
        for (step, from, to) in [
            ("begin", begin, begun),
            ("process", begun, produced),
            ("offsets", produced, offsets_sent),
            ("deliver", offsets_sent, delivered),
            ("commit", delivered, committed),
        ] {
            metrics::histogram!(TRANSACTION_STEP_SECONDS, "step" => step)
                .record((to - from).as_secs_f64());
        }
        Ok(())
    }

    /// `false`: shutdown came first.
    async fn replace_producer(&mut self, shutdown: &Shutdown) -> Result<bool> {
        match new_producer(self.config, shutdown).await? {
            Some(p) => {
                self.producer = p;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn send<'a>(&self, mut record: BaseRecord<'a, [u8], [u8]>) -> Result<(), Failure> {
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

/// A dead letter of `record`: its key and value unchanged, with the reason and where it came
/// from in headers; logged with a sample of the frame.
fn dead_letter(
    batch: &mut Batch,
    record: &Record<RawRecord>,
    trade_index: Option<usize>,
    reason: Reason,
    detail: &str,
    provider: &str,
) {
    let (tp, offset) = (&record.tp, record.offset);
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
            value: Some(&*tp.topic),
        })
        .insert(Header {
            key: "tickflow.source.partition",
            value: Some(&tp.partition.to_string()),
        })
        .insert(Header {
            key: "tickflow.source.offset",
            value: Some(&offset.to_string()),
        });
    if let Some(i) = trade_index {
        headers = headers.insert(Header {
            key: "tickflow.trade.index",
            value: Some(&i.to_string()),
        });
    }
    batch.records.push(Produced {
        sink: Sink::DeadLetters,
        key: record.input.key.clone(),
        payload: record.input.payload.clone(),
        headers,
    });
    batch.stats.dead_letter(provider, reason);
    // A sample of the frame in the log: enough to see what was wrong, bounded in size.
    let sample = match &record.input.envelope {
        Some(Ok(e)) => String::from_utf8_lossy(&e.payload)
            .chars()
            .take(200)
            .collect(),
        _ => String::new(),
    };
    tracing::warn!(provider, reason = reason.code(), detail, topic = %tp.topic, partition = tp.partition, offset, trade_index, sample, "dead-lettered");
}

/// Runs until shutdown; the batch in hand is committed before returning, then the instance
/// leaves the consumer group so its partitions move on at once.
pub async fn run(
    config: Config,
    codec: Arc<AvroCodec>,
    encoder: TradeEncoder,
    reference: Reference,
    labels: InstrumentLabels,
    shutdown: &Shutdown,
) -> Result<()> {
    let Some(producer) = new_producer(&config, shutdown).await? else {
        return Ok(());
    };
    let n = config.normalizer.clone();
    let mut operator = Normalizer::new(
        Settings {
            limits: n.limits(),
            dedup_horizon: n.dedup_horizon(),
            sync_interval: Duration::from_millis(n.instruments_sync_interval_ms),
        },
        reference.clone(),
    );
    let mut job = Transactions {
        config: &config,
        codec: codec.clone(),
        encoder,
        reference,
        labels,
        producer,
        batch: Batch::default(),
    };
    let plan = Plan {
        kafka: &config.kafka,
        role: "normalizer",
        group_id: &n.group_id,
        instance_id: n.transactional_id(),
        instance_id_key: "normalizer.transactional_id",
        topic: &n.input_topics,
        partitions: &[],
        fresh: Fresh::Beginning,
        checkpoint_interval: Duration::from_millis(n.commit_interval_ms),
        max_batch: n.max_batch,
        metrics: RUNTIME_METRICS,
    };
    runtime::run(
        &plan,
        &codec,
        Checkpoints::Transactions,
        &mut operator,
        &mut job,
        None,
        shutdown,
    )
    .await
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
        provider: &str,
        exchange: String,
        instrument: &str,
        labels: &InstrumentLabels,
    ) {
        let instrument = if instrument.is_empty() {
            String::new()
        } else {
            labels.label(instrument)
        };
        *self
            .recovered
            .entry((provider.to_string(), exchange, instrument))
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
