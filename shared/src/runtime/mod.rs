//! The stream runtime: one loop that runs every operator (the normalizer, the aggregator's
//! windows, fair-price), so consumption, partition ownership, checkpoints, delivery, stall
//! accounting, shutdown and telemetry are written once.
//!
//! An operator ([`Operator`]) is pure and synchronous: records in, outputs out, hooks to advance
//! time and to snapshot and restore one input partition's state. Its input type says how a Kafka
//! record is decoded ([`Input`]); an operator over the trades of one topic is a
//! [`TradeOperator`], fed [`Sourced`] trades. A job
//! ([`Job`]) is the service's side: where outputs go (collected into a batch and flushed), what
//! the operator needs awaited (reference data), how a partition's state is rebuilt from its log,
//! what a tick must do once every output so far has landed, and the gauges. [`run`] drives
//! both:
//!
//! - **Consumption.** Records are read from the owned partitions of the input topics (a name, or
//!   with a leading `^` a pattern), decoded (Confluent wire format, waiting out an unreachable
//!   registry) and fed to the operator. A record its input type cannot use is counted by reason
//!   and logged, never fatal. Records are read in bursts of what the consumer has fetched
//!   already (up to 256), stopping at a hand-over, a shutdown or a full batch, and the
//!   task yields when its scheduler budget runs out, so a backlog starves no other task.
//! - **Ownership.** Partitions are either configured ([`Plan::partitions`]) or shared by the
//!   instances of the consumer group (cooperative-sticky, static membership). A rebalance is
//!   handed from librdkafka's callback to the loop, which takes partitions up or gives them away
//!   between two records: revoked partitions have their outputs landed and their progress
//!   committed before they are released, so the next owner resumes exactly where this one
//!   stopped; assigned ones are restored before any of their records is read. Partitions lost
//!   without a revocation (this instance missed its session timeout) are not checkpointed: their
//!   state is dropped with every output not yet landed, and the partitions still owned are
//!   rewound to their last checkpoint, as after a crash.
//! - **Offsets**, one of three strategies ([`Checkpoints`]):
//!   - *Cassandra*: a checkpoint holds a partition's state with the offset of its next record,
//!     in one Cassandra row, and is written only after every output of the records before it
//!     has landed; after a crash the state is restored and reading resumes at that offset, and
//!     the outputs replayed from there are idempotent upserts of the same values (exactly-once
//!     effect). The offsets are also committed to the group, for lag tools only.
//!   - *Kafka transactions*: each flush is one transaction holding the batch's outputs and the
//!     next offsets of the records behind them ([`Commit::Transaction`]), so outputs and
//!     progress become visible together or not at all. A taken-up partition starts at the
//!     group's committed offset, its state rebuilt from the log before it ([`Job::warm_up`]). A
//!     transaction the job aborts ([`Flushed::Aborted`]) rewinds every owned partition to its
//!     committed offset and rebuilds its state, after a backoff.
//!   - *None*: the group's committed offsets are the progress, and state is rebuilt by replay
//!     ([`Fresh::Replay`]).
//! - **Fencing.** With Cassandra checkpoints, taking up a partition claims its checkpoint row (a
//!   new ownership epoch, see [`crate::cassandra::CheckpointStore::claim`]); every checkpoint is
//!   written only if that epoch still holds, so an instance paused past its session timeout
//!   (SIGSTOP, a long GC-like stall, a frozen VM) whose partitions were claimed meanwhile finds
//!   itself fenced when it wakes: its partitions are dropped as if lost, never checkpointed over
//!   its successor's. Each flush is given a write timestamp ([`Commit::Stamp`]) for rows whose
//!   order is not in their data (the aggregator's candles): it lies within the owner's lease,
//!   renewed before it runs out, and a new owner stamps above its predecessor's lease, so a
//!   paused instance's late writes are older than its successor's and Cassandra keeps the newer.
//!   With transactions, the group's generation in each commit fences a zombie's offsets, and its
//!   transactional id its producer.
//! - **Delivery.** Outputs are collected into the job's batch and flushed at the plan's batch
//!   size, at every tick, before every checkpoint and hand-over, and, when the job marks them
//!   urgent (a normalized trade, a final candle, a changed price), as soon as no record is
//!   waiting. A flush waits (with backoff) until everything has landed, so a sink that is down
//!   pauses consumption; that wait is told to the operator ([`Operator::exclude_stall`]) so it
//!   does not count as idle input. An output that retrying cannot help (a value the schema
//!   cannot hold) is logged as an error, counted and skipped ([`land_each`]), never retried
//!   forever.
//! - **Shutdown.** Intake stops, outputs land, every owned partition is checkpointed, and a group
//!   member leaves the group so its partitions move on at once.

mod group;
mod partitions;
pub mod state;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;

use crate::avro::{self, AvroCodec};
use crate::cassandra::CheckpointStore;
use crate::config::KafkaConfig;
use crate::domain::{now_micros, Micros, Trade};
use crate::error::Error;
use crate::kafka;
use crate::retry::{self, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::watermark;
use crate::Result;

use group::Handover;
use partitions::Partitions;

/// `reason` of [`Metrics::input_errors`]: a record without a value.
pub const INPUT_EMPTY: &str = "empty";
/// `reason` of [`Metrics::input_errors`]: a value that is not a Trade in the registry's wire
/// format.
pub const INPUT_UNDECODABLE: &str = "undecodable";
/// `kind` of [`Metrics::handovers`]: `fenced` counts partitions another instance claimed while
/// this one still held them (it was paused past its session timeout).
pub const HANDOVER_KINDS: [&str; 4] = ["assigned", "revoked", "lost", "fenced"];

/// Waits of the loop (a sink, a checkpoint, the registry) longer than this are time the input
/// was not read, and do not count towards a source's idle timeout.
const STALL: Duration = Duration::from_millis(100);
/// The first pause after an aborted transaction; it doubles up to [`ABORT_PAUSE_MAX`].
const ABORT_PAUSE: Duration = Duration::from_millis(200);
const ABORT_PAUSE_MAX: Duration = Duration::from_secs(5);

/// One input partition: a topic and a partition of it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl Tp {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for Tp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What [`Input::decode`] made of a record.
pub enum Decoded<T> {
    Ok(T),
    /// Not a record this input takes: counted under `reason` and skipped.
    Bad {
        reason: &'static str,
        detail: String,
    },
    /// Shutdown came while waiting for the registry.
    Stop,
}

/// An operator's input record, decoded from a Kafka record.
pub trait Input: Sized {
    /// Decodes `message`, waiting (with backoff) while the registry cannot be reached.
    fn decode(
        codec: &AvroCodec,
        message: &BorrowedMessage<'_>,
        shutdown: &Shutdown,
    ) -> impl Future<Output = Decoded<Self>>;
}

/// A trade with its upstream source: the record's `tickflow.source` header, or for a record
/// without one [`watermark::fallback_source`] (see [`crate::watermark`]).
pub struct Sourced {
    pub trade: Trade,
    pub source: String,
}

impl Input for Sourced {
    async fn decode(
        codec: &AvroCodec,
        message: &BorrowedMessage<'_>,
        shutdown: &Shutdown,
    ) -> Decoded<Self> {
        let Some(payload) = message.payload() else {
            return Decoded::Bad {
                reason: INPUT_EMPTY,
                detail: "record without a value".into(),
            };
        };
        let trade = match avro::decode_trade_waiting(codec, payload, shutdown).await {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                return Decoded::Bad {
                    reason: INPUT_UNDECODABLE,
                    detail: e.to_string(),
                }
            }
            None => return Decoded::Stop,
        };
        let source = match watermark::source_header(message) {
            Some(source) => source.to_string(),
            None => watermark::fallback_source(&trade),
        };
        Decoded::Ok(Sourced { trade, source })
    }
}

/// A pure, synchronous operator over input records, with per-partition state.
pub trait Operator {
    type Input: Input;
    type Output;
    /// The format [`Operator::snapshot`] writes.
    const STATE_FORMAT: i32;
    /// The formats [`Operator::restore`] reads.
    const READABLE_STATE_FORMATS: &'static [i32];

    /// One record of partition `tp`, arrived at wall clock `now`.
    fn on_record(
        &mut self,
        tp: &Tp,
        input: &Self::Input,
        now: Micros,
        out: &mut Vec<Self::Output>,
    ) -> Taken;
    /// Time passes (wall clock `now`): fire what is due.
    fn advance(&mut self, now: Micros, out: &mut Vec<Self::Output>);
    /// The input was not read for `stall` microseconds (waiting on a sink): not idleness.
    fn exclude_stall(&mut self, stall: Micros);
    /// One partition's state, in [`Operator::STATE_FORMAT`].
    fn snapshot(&self, tp: &Tp) -> std::result::Result<Vec<u8>, String>;
    /// Restores one partition from a snapshot of `format`.
    fn restore(
        &mut self,
        tp: &Tp,
        state: &[u8],
        format: i32,
        now: Micros,
    ) -> std::result::Result<(), String>;
    /// Starts a partition with no checkpoint.
    fn start_fresh(&mut self, tp: &Tp, now: Micros);
    /// Forgets a partition (handed to another instance, or lost).
    fn drop_partition(&mut self, tp: &Tp);
    /// While a partition replays records already published before (see [`Fresh::Replay`]), its
    /// state is rebuilt without emitting.
    fn set_replaying(&mut self, _tp: &Tp, _replaying: bool) {}
    /// With transactions: every record read so far is committed with its outputs. (After an
    /// abort the partitions are rewound and their state rebuilt by [`Job::warm_up`].)
    fn committed(&mut self) {}
}

/// An operator over the trades of one input topic, its state keyed by partition number (the
/// aggregator's windows, fair-price): an [`Operator`] over [`Sourced`] trades.
pub trait TradeOperator {
    type Output;
    /// The format [`TradeOperator::snapshot`] writes.
    const STATE_FORMAT: i32;
    /// The formats [`TradeOperator::restore`] reads.
    const READABLE_STATE_FORMATS: &'static [i32];

    /// One trade of `partition` from upstream `source`, arrived at wall clock `now`.
    fn on_trade(
        &mut self,
        partition: i32,
        source: &str,
        trade: &Trade,
        now: Micros,
        out: &mut Vec<Self::Output>,
    );
    /// See [`Operator::advance`].
    fn advance(&mut self, now: Micros, out: &mut Vec<Self::Output>);
    /// See [`Operator::exclude_stall`].
    fn exclude_stall(&mut self, stall: Micros);
    fn snapshot(&self, partition: i32) -> std::result::Result<Vec<u8>, String>;
    fn restore(
        &mut self,
        partition: i32,
        state: &[u8],
        format: i32,
        now: Micros,
    ) -> std::result::Result<(), String>;
    fn start_fresh(&mut self, partition: i32, now: Micros);
    fn drop_partition(&mut self, partition: i32);
    fn set_replaying(&mut self, _partition: i32, _replaying: bool) {}
}

impl<T: TradeOperator> Operator for T {
    type Input = Sourced;
    type Output = T::Output;
    const STATE_FORMAT: i32 = T::STATE_FORMAT;
    const READABLE_STATE_FORMATS: &'static [i32] = T::READABLE_STATE_FORMATS;

    fn on_record(
        &mut self,
        tp: &Tp,
        input: &Sourced,
        now: Micros,
        out: &mut Vec<T::Output>,
    ) -> Taken {
        self.on_trade(tp.partition, &input.source, &input.trade, now, out);
        Taken::Yes
    }
    fn advance(&mut self, now: Micros, out: &mut Vec<T::Output>) {
        TradeOperator::advance(self, now, out);
    }
    fn exclude_stall(&mut self, stall: Micros) {
        TradeOperator::exclude_stall(self, stall);
    }
    fn snapshot(&self, tp: &Tp) -> std::result::Result<Vec<u8>, String> {
        TradeOperator::snapshot(self, tp.partition)
    }
    fn restore(
        &mut self,
        tp: &Tp,
        state: &[u8],
        format: i32,
        now: Micros,
    ) -> std::result::Result<(), String> {
        TradeOperator::restore(self, tp.partition, state, format, now)
    }
    fn start_fresh(&mut self, tp: &Tp, now: Micros) {
        TradeOperator::start_fresh(self, tp.partition, now);
    }
    fn drop_partition(&mut self, tp: &Tp) {
        TradeOperator::drop_partition(self, tp.partition);
    }
    fn set_replaying(&mut self, tp: &Tp, replaying: bool) {
        TradeOperator::set_replaying(self, tp.partition, replaying);
    }
}

/// Whether [`Operator::on_record`] took a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Yes,
    /// Not taken, nothing changed: it needs what [`Job::supply`] awaits first (the normalizer's
    /// reference data catching up), and is offered again after it. An operator answers this at
    /// most once per supply.
    AfterSupply,
}

/// The input record behind the outputs being collected.
pub struct Record<I> {
    pub input: I,
    pub tp: Tp,
    pub offset: i64,
    /// Read again to rebuild state ([`Fresh::Replay`]): its outputs were published before.
    pub replaying: bool,
}

/// What a flush commits with its outputs.
pub enum Commit<'a> {
    /// The write timestamp (µs) for rows whose order is not in their data: later than every
    /// stamp before it, and, after a hand-over, than every stamp a fenced previous owner can
    /// still write with (see the module's fencing).
    Stamp(Micros),
    /// With transactions: the next offsets of the records behind the batch, to send to the
    /// transaction with the group's metadata.
    Transaction {
        offsets: &'a TopicPartitionList,
        group: &'a ConsumerGroupMetadata,
    },
}

impl Commit<'_> {
    /// The write stamp: [`Commit::Stamp`]'s, or now.
    pub fn stamp(&self) -> Micros {
        match self {
            Commit::Stamp(stamp) => *stamp,
            Commit::Transaction { .. } => now_micros(),
        }
    }
}

/// What a flush came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    Landed,
    /// Shutdown came first.
    Stopped,
    /// The transaction was aborted (`why`): nothing of the batch is visible, and the runtime
    /// reads again from the committed offsets.
    Aborted(String),
}

impl From<bool> for Flushed {
    fn from(landed: bool) -> Self {
        if landed {
            Flushed::Landed
        } else {
            Flushed::Stopped
        }
    }
}

/// The service's side of a pipeline: its sinks and hooks.
pub trait Job {
    type Operator: Operator;

    /// Takes the operator's outputs (and the record that caused them, if any) into the batch.
    /// `true`: something in it should land as soon as no record is waiting.
    fn collect(
        &mut self,
        outputs: &mut Vec<<Self::Operator as Operator>::Output>,
        record: Option<Record<<Self::Operator as Operator>::Input>>,
    ) -> bool;
    /// Lands the batch, retrying until it has, with what `commit` says. Empty batches are
    /// flushed too (with transactions, the offsets of records that gave no output).
    fn flush(
        &mut self,
        commit: Commit<'_>,
        shutdown: &Shutdown,
    ) -> impl Future<Output = Result<Flushed>>;
    /// Drops the batch without landing it (its partitions were lost, or it was aborted).
    fn discard(&mut self);
    /// What the operator asked for by not taking a record ([`Taken::AfterSupply`]), awaited
    /// and handed to it.
    fn supply(&mut self, _operator: &mut Self::Operator) -> impl Future<Output = ()> {
        async {}
    }
    /// With transactions: rebuilds `tp`'s state from its log before `committed` (the group's
    /// committed offset; `None`: the partition starts at its beginning). `Ok(false)`: shutdown
    /// came first.
    fn warm_up(
        &mut self,
        _operator: &mut Self::Operator,
        _tp: &Tp,
        _committed: Option<i64>,
        _shutdown: &Shutdown,
    ) -> impl Future<Output = Result<bool>> {
        async { Ok(true) }
    }
    /// At every tick, after the batch has landed: work that needs every output so far landed
    /// (the aggregator's recomputations). Anything it adds to the batch lands before the next
    /// checkpoint; what it lands itself it writes at `stamp` (see [`Commit::Stamp`]).
    /// `Ok(false)`: shutdown came first.
    fn on_tick(
        &mut self,
        _operator: &mut Self::Operator,
        _stamp: Micros,
        _shutdown: &Shutdown,
    ) -> impl Future<Output = Result<bool>> {
        async { Ok(true) }
    }
    /// Once a second: the job's gauges.
    fn report(&mut self, _operator: &Self::Operator, _owned: &BTreeSet<Tp>) {}
}

/// Where partitions without a checkpoint start.
#[derive(Debug, Clone, Copy)]
pub enum Fresh {
    /// At the beginning of the partition.
    Beginning,
    /// `replay_ms` of record time before the group's committed offset (or before now, for a
    /// group that never committed, which then emits from there); the records before the
    /// committed offset rebuild the state without emitting.
    Replay { replay_ms: u64 },
}

/// Where progress (and state) is kept; see the module's offsets.
pub enum Checkpoints<'a> {
    /// State and next offsets in Cassandra, under (operator id, topic, partition).
    Cassandra(&'a CheckpointStore),
    /// Each flush a Kafka transaction with the offsets; state rebuilt by [`Job::warm_up`].
    Transactions,
    /// No state is saved: the group's committed offsets are the progress, and a partition
    /// starts as [`Plan::fresh`] says.
    None,
}

/// The metric names of one service's runtime.
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    /// Counter by `reason` ([`INPUT_EMPTY`], [`INPUT_UNDECODABLE`]).
    pub input_errors: &'static str,
    /// Counter by `kind` ([`HANDOVER_KINDS`]).
    pub handovers: &'static str,
    pub owned_partitions: &'static str,
    pub checkpoint_seconds: &'static str,
    pub checkpoint_bytes: &'static str,
    /// Gauge by `topic` and `partition`: records not yet read.
    pub consumer_lag: &'static str,
}

impl Metrics {
    /// The counters at 0 for every label value known in advance.
    pub fn zero(&self) {
        for reason in [INPUT_EMPTY, INPUT_UNDECODABLE] {
            crate::telemetry::zero_counter(self.input_errors, &[("reason", reason)]);
        }
        for kind in HANDOVER_KINDS {
            crate::telemetry::zero_counter(self.handovers, &[("kind", kind)]);
        }
    }
}

/// What to run: the input, the group, the pace.
pub struct Plan<'a> {
    pub kafka: &'a KafkaConfig,
    /// The client's role, for its `client.id`.
    pub role: &'static str,
    /// The consumer group, and the checkpoints' operator id.
    pub group_id: &'a str,
    /// This instance's static group membership id, and the config key that sets it.
    pub instance_id: String,
    pub instance_id_key: &'static str,
    /// The input topic, or with a leading `^` a pattern of topics (read through the group only,
    /// without Cassandra checkpoints).
    pub topic: &'a str,
    /// Configured partitions of `topic`; empty: shared through the consumer group.
    pub partitions: &'a [i32],
    pub fresh: Fresh,
    pub checkpoint_interval: Duration,
    /// Records read before the batch is flushed.
    pub max_batch: usize,
    pub metrics: Metrics,
}

/// A question to the running operator, answered between two records.
pub type Inspect<O> = Box<dyn FnOnce(&O) + Send>;

/// Runs `operator` and `job` on `plan` until shutdown. Returns an error only for what needs a
/// human (a checkpoint it cannot read, a fatal consumer error, a fenced producer); dependencies
/// that are down are waited for.
pub async fn run<J: Job>(
    plan: &Plan<'_>,
    codec: &AvroCodec,
    checkpoints: Checkpoints<'_>,
    operator: &mut J::Operator,
    job: &mut J,
    mut inspect: Option<mpsc::Receiver<Inspect<J::Operator>>>,
    shutdown: &Shutdown,
) -> Result<()> {
    let pattern = plan.topic.starts_with('^');
    if pattern && (!plan.partitions.is_empty() || matches!(checkpoints, Checkpoints::Cassandra(_)))
    {
        return Err(Error::Config(format!(
            "input topic pattern {:?}: a pattern is read through the consumer group only, without Cassandra checkpoints",
            plan.topic
        )));
    }
    let (consumer, mut handovers) =
        group::group_consumer(plan.kafka, plan.role, plan.group_id, &plan.instance_id)?;
    let mut parts = Partitions::new(plan, &consumer, checkpoints);
    if plan.partitions.is_empty() {
        consumer.subscribe(&[plan.topic])?;
        tracing::info!(topic = %plan.topic, group = %plan.group_id, "joining the consumer group; partitions come with rebalances");
    } else {
        let Some(all) = kafka::topic_partitions(&consumer, plan.topic, shutdown).await else {
            return Ok(());
        };
        let configured: Vec<Tp> = plan
            .partitions
            .iter()
            .filter(|p| all.contains(p))
            .map(|&p| Tp::new(plan.topic, p))
            .collect();
        if !parts
            .take(&configured, false, job, operator, shutdown)
            .await?
        {
            return Ok(());
        }
    }
    metrics::gauge!(plan.metrics.owned_partitions).set(parts.owned.len() as f64);
    let lag = partitions::spawn_lag_gauges(plan)?;

    let mut outputs = Vec::new();
    let mut read = 0usize;
    let mut urgent = false;
    let mut abort_pause = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    let mut checkpoint_tick = tokio::time::interval(plan.checkpoint_interval);
    checkpoint_tick.tick().await;

    loop {
        // Each arm comes to a step: on, stop (shutdown came first), partitions fenced, or a
        // transaction aborted.
        let step = tokio::select! {
            // Shutdown and timers before records, so a steady stream cannot starve them.
            biased;
            () = shutdown.triggered() => {
                // Stop intake, land what was produced, checkpoint, leave. This work must finish
                // (the service's shutdown deadline bounds it): a fresh token, never triggered.
                let never = Shutdown::new();
                let owned = parts.owned();
                tracing::info!(partitions = owned.len(), "stopping: landing and checkpointing what is in hand");
                operator.advance(now_micros(), &mut outputs);
                job.collect(&mut outputs, None);
                match land_and_checkpoint(job, &mut parts, operator, &owned, &never).await? {
                    Step::On => tracing::info!("stopped consuming; outputs landed and checkpointed"),
                    Step::Stop => {}
                    Step::Aborted(why) => {
                        job.discard();
                        tracing::warn!(error = %why, "the last transaction was aborted while stopping; the next owner reads on from the committed offsets");
                    }
                    Step::Fenced(fenced) => {
                        // Outputs of fenced partitions may be in the batch: nothing more is
                        // written; the partitions kept replay from their last checkpoints.
                        job.discard();
                        count_handovers(plan, "fenced", &fenced);
                        tracing::warn!(partitions = ?names(&fenced), "fenced while stopping; unlanded outputs dropped, nothing checkpointed");
                    }
                }
                // Rebalances while the consumer closes are applied by the callback itself.
                handovers.close();
                if plan.partitions.is_empty() {
                    kafka::leave_group(&consumer, Duration::from_secs(5)).await;
                    tracing::info!("left the consumer group");
                }
                return Ok(());
            }
            Some(handover) = handovers.recv() => {
                let waited = Instant::now();
                let step = match handover {
                    Handover::Assign(taken) => {
                        let taken_up = parts.take(&taken, false, job, operator, shutdown).await?;
                        count_handovers(plan, "assigned", &taken);
                        Step::on_if(taken_up)
                    }
                    Handover::Revoke(given) => {
                        // Land every output so far and checkpoint what goes, then let it go:
                        // the next owner resumes exactly here.
                        // If some are fenced meanwhile (or the transaction aborts), what goes is
                        // rewound with the rest, so it goes as it was last checkpointed.
                        let step = match land_and_checkpoint(job, &mut parts, operator, &given, shutdown).await? {
                            Step::Fenced(fenced) => Step::on_if(lose_fenced(job, &mut parts, operator, &fenced, shutdown).await?),
                            Step::Aborted(why) => {
                                tracing::warn!(error = %why, "transaction aborted before a hand-over; the partitions go from their committed offsets");
                                Step::on_if(rewind(job, &mut parts, operator, shutdown).await?)
                            }
                            other => other,
                        };
                        read = 0;
                        urgent = false;
                        if matches!(step, Step::On) {
                            parts.release(&given, operator)?;
                            count_handovers(plan, "revoked", &given);
                        }
                        step
                    }
                    Handover::Lost(lost) => {
                        // Another instance may own these already: no checkpoint, and no output
                        // not yet landed may be written after its own. The partitions kept go
                        // back to their checkpoints, since their unlanded outputs go too.
                        tracing::warn!(partitions = ?names(&lost), "partitions lost without a revocation; unlanded outputs dropped, the rest rewound to their checkpoints");
                        read = 0;
                        urgent = false;
                        parts.release(&lost, operator)?;
                        count_handovers(plan, "lost", &lost);
                        Step::on_if(rewind(job, &mut parts, operator, shutdown).await?)
                    }
                };
                note_stall(operator, waited);
                metrics::gauge!(plan.metrics.owned_partitions).set(parts.owned.len() as f64);
                step
            }
            _ = checkpoint_tick.tick() => {
                let waited = Instant::now();
                let owned = parts.owned();
                let step = land_and_checkpoint(job, &mut parts, operator, &owned, shutdown).await?;
                note_stall(operator, waited);
                read = 0;
                urgent = false;
                step
            }
            _ = tick.tick() => {
                operator.advance(now_micros(), &mut outputs);
                job.collect(&mut outputs, None);
                let waited = Instant::now();
                let mut step = land(job, &mut parts, operator, shutdown).await?;
                if matches!(step, Step::On) {
                    step = match parts.stamp(shutdown).await? {
                        Ok(stamp) => Step::on_if(job.on_tick(operator, stamp, shutdown).await?),
                        Err(step) => step,
                    };
                }
                note_stall(operator, waited);
                read = 0;
                urgent = false;
                step
            }
            _ = gauges.tick() => {
                job.report(operator, &parts.owned);
                lag.send_replace(parts.next_offsets.clone());
                Step::On
            }
            Some(question) = next_question(&mut inspect) => {
                question(operator);
                Step::On
            }
            message = consumer.recv() => {
                // A burst: the records librdkafka has already fetched are read without going
                // back through the select (each pass costs timer and waker work), up to
                // `DRAIN`, and never past a hand-over, a shutdown or a full batch. The task
                // still yields when its scheduler budget runs out, so a backlog cannot starve
                // the other tasks on this thread (the metrics and health endpoints among them).
                let mut next = Some(message);
                let mut drained = 0usize;
                let mut step = Step::On;
                while let Some(message) = next.take() {
                    match read_record(plan, codec, &consumer, &mut parts, operator, job, &mut outputs, message, shutdown).await? {
                        Read::Taken { urgent: now } => {
                            urgent |= now;
                            read += 1;
                        }
                        Read::Skipped => {}
                        Read::Stop => return Ok(()),
                    }
                    if read >= plan.max_batch {
                        read = 0;
                        urgent = false;
                        let waited = Instant::now();
                        step = land(job, &mut parts, operator, shutdown).await?;
                        note_stall(operator, waited);
                        break;
                    }
                    drained += 1;
                    if drained >= DRAIN || shutdown.is_triggered() || !handovers.is_empty() {
                        break;
                    }
                    tokio::task::coop::consume_budget().await;
                    next = consumer.recv().now_or_never();
                }
                step
            }
            // Nothing else ready: urgent outputs land now (within milliseconds of the record
            // that caused them), not at the next tick; under a steady stream the input is
            // rarely empty for long, so outputs still land in batches.
            () = std::future::ready(()), if urgent => {
                read = 0;
                urgent = false;
                let waited = Instant::now();
                let step = land(job, &mut parts, operator, shutdown).await?;
                note_stall(operator, waited);
                step
            }
        };
        match step {
            Step::On => abort_pause = Duration::ZERO,
            Step::Stop => return Ok(()),
            Step::Fenced(fenced) => {
                if !lose_fenced(job, &mut parts, operator, &fenced, shutdown).await? {
                    return Ok(());
                }
                metrics::gauge!(plan.metrics.owned_partitions).set(parts.owned.len() as f64);
            }
            Step::Aborted(why) => {
                // Nothing of the batch is visible: read it again from the committed offsets,
                // after a pause that grows while aborts repeat (a dependency is down).
                abort_pause = (abort_pause * 2).clamp(ABORT_PAUSE, ABORT_PAUSE_MAX);
                tracing::warn!(error = %why, retry_in_ms = abort_pause.as_millis() as u64, "transaction aborted; reading again from the committed offsets");
                read = 0;
                urgent = false;
                let waited = Instant::now();
                tokio::select! {
                    () = tokio::time::sleep(abort_pause) => {}
                    () = shutdown.triggered() => return Ok(()),
                }
                if !rewind(job, &mut parts, operator, shutdown).await? {
                    return Ok(());
                }
                note_stall(operator, waited);
            }
        }
    }
}

/// What landing outputs (and checkpointing) came to.
enum Step {
    On,
    /// Shutdown came first.
    Stop,
    /// Another instance claimed these partitions while this one held them.
    Fenced(Vec<Tp>),
    /// The transaction was aborted: nothing of the batch is visible.
    Aborted(String),
}

impl Step {
    fn on_if(went_on: bool) -> Self {
        if went_on {
            Step::On
        } else {
            Step::Stop
        }
    }
}

/// The most records read in one burst of the loop, from what the consumer has fetched already.
const DRAIN: usize = 256;

/// What reading one record came to.
enum Read {
    /// The operator took it; `urgent`: an output of it should land now.
    Taken { urgent: bool },
    /// Not for the operator: a consumer error read on, a partition no longer owned, bad input.
    Skipped,
    /// Shutdown came first.
    Stop,
}

/// Reads one record into the operator and its outputs into the job's batch.
#[allow(clippy::too_many_arguments)]
async fn read_record<J: Job>(
    plan: &Plan<'_>,
    codec: &AvroCodec,
    consumer: &group::GroupConsumer,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    job: &mut J,
    outputs: &mut Vec<<J::Operator as Operator>::Output>,
    message: KafkaResult<BorrowedMessage<'_>>,
    shutdown: &Shutdown,
) -> Result<Read> {
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            if let Some(fatal) = kafka::fatal_consumer_error(
                &e,
                consumer.client(),
                plan.instance_id_key,
                &plan.instance_id,
            ) {
                return Err(fatal);
            }
            tracing::warn!(error = %e, "kafka consumer error; reading on (the client reconnects by itself)");
            return Ok(Read::Skipped);
        }
    };
    let offset = message.offset();
    let Some(tp) = parts.owned_tp(message.topic(), message.partition()) else {
        // Fetched before the partition was released (or after it was fenced).
        return Ok(Read::Skipped);
    };
    parts.next_offsets.insert(tp.clone(), offset + 1);
    let replaying = parts.replaying(&tp, offset, operator);
    // The clock is read only when decoding has to wait (for the schema registry).
    let decoded = {
        let mut decoding = std::pin::pin!(<J::Operator as Operator>::Input::decode(
            codec, &message, shutdown
        ));
        match decoding.as_mut().now_or_never() {
            Some(decoded) => decoded,
            None => {
                let waited = Instant::now();
                let decoded = decoding.await;
                note_stall(operator, waited);
                decoded
            }
        }
    };
    let input = match decoded {
        Decoded::Ok(input) => input,
        Decoded::Bad { reason, detail } => {
            metrics::counter!(plan.metrics.input_errors, "reason" => reason).increment(1);
            tracing::warn!(reason, partition = %tp, offset, detail, "input record skipped");
            return Ok(Read::Skipped);
        }
        Decoded::Stop => return Ok(Read::Stop),
    };
    drop(message);
    if operator.on_record(&tp, &input, now_micros(), outputs) == Taken::AfterSupply {
        let waited = Instant::now();
        job.supply(operator).await;
        note_stall(operator, waited);
        operator.on_record(&tp, &input, now_micros(), outputs);
    }
    let urgent = job.collect(
        outputs,
        Some(Record {
            input,
            tp,
            offset,
            replaying,
        }),
    );
    Ok(Read::Taken { urgent })
}

fn names(partitions: &[Tp]) -> Vec<String> {
    partitions.iter().map(Tp::to_string).collect()
}

async fn next_question<O>(inspect: &mut Option<mpsc::Receiver<Inspect<O>>>) -> Option<Inspect<O>> {
    match inspect {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Flushes the job's batch under a fresh write stamp, or with transactions in a transaction
/// with the offsets read since the last one. The caller tells the operator how long the input
/// was not read ([`note_stall`]), once for the whole of what it waited on: a wait noted twice
/// (here and by an arm around it) pushed every source's idle timeout twice as far, so under
/// flushes of 100 ms and more a fresh partition's stand-in for unseen sources never went idle.
async fn land<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    shutdown: &Shutdown,
) -> Result<Step> {
    let flushed = if matches!(parts.checkpoints, Checkpoints::Transactions) {
        let offsets = parts.uncommitted()?;
        let Some(group) = parts.consumer.group_metadata() else {
            return Ok(Step::Aborted("no consumer group metadata yet".into()));
        };
        let commit = Commit::Transaction {
            offsets: &offsets,
            group: &group,
        };
        let flushed = job.flush(commit, shutdown).await?;
        if flushed == Flushed::Landed {
            parts.committed(&offsets);
            operator.committed();
        }
        flushed
    } else {
        match parts.stamp(shutdown).await? {
            Ok(stamp) => job.flush(Commit::Stamp(stamp), shutdown).await?,
            Err(step) => return Ok(step),
        }
    };
    Ok(match flushed {
        Flushed::Landed => Step::On,
        Flushed::Stopped => Step::Stop,
        Flushed::Aborted(why) => Step::Aborted(why),
    })
}

/// Lands the batch, then checkpoints `partitions`.
async fn land_and_checkpoint<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    partitions: &[Tp],
    shutdown: &Shutdown,
) -> Result<Step> {
    match land(job, parts, operator, shutdown).await? {
        Step::On => parts.checkpoint(partitions, operator, shutdown).await,
        other => Ok(other),
    }
}

/// Drops every output not yet landed and takes every owned partition up again from its last
/// checkpoint (with transactions, its committed offset). `Ok(false)`: shutdown came first.
async fn rewind<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    shutdown: &Shutdown,
) -> Result<bool> {
    job.discard();
    let kept = parts.owned();
    parts.take(&kept, true, job, operator, shutdown).await
}

/// Another instance claimed `fenced`: their state goes, with every output not yet landed (the
/// batch mixes partitions), and the partitions kept are rewound to their checkpoints, as for
/// lost partitions. The group tells librdkafka of the loss in its own time; until then records
/// of the fenced partitions are skipped. `Ok(false)`: shutdown came first.
async fn lose_fenced<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    fenced: &[Tp],
    shutdown: &Shutdown,
) -> Result<bool> {
    tracing::warn!(partitions = ?names(fenced), "fenced: another instance claimed these partitions while this one held them (paused past its session timeout?); their state and every unlanded output dropped, the rest rewound to their checkpoints");
    count_handovers(parts.plan, "fenced", fenced);
    parts.forget(fenced, operator);
    rewind(job, parts, operator, shutdown).await
}

fn count_handovers(plan: &Plan<'_>, kind: &'static str, partitions: &[Tp]) {
    metrics::counter!(plan.metrics.handovers, "kind" => kind).increment(partitions.len() as u64);
}

fn note_stall<O: Operator>(operator: &mut O, since: Instant) {
    let waited = since.elapsed();
    if waited >= STALL {
        operator.exclude_stall(i64::try_from(waited.as_micros()).unwrap_or(i64::MAX));
    }
}

/// Lands every item with `write`, `max_in_flight` at a time: a failure is counted in `errors`
/// (by `sink` and `error_type`) and retried with backoff until it lands, unless retrying cannot
/// help (a value the schema cannot hold): then it is logged as an error and skipped rather than
/// stall the stream. `false`: shutdown came first. The sinks' [`Job::flush`] is made of these.
pub async fn land_each<'a, T, F, Fut>(
    items: &'a [T],
    sink: &'static str,
    errors: &'static str,
    max_in_flight: usize,
    shutdown: &Shutdown,
    write: F,
) -> bool
where
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let write = &write;
    retry::each_until_ok(
        items,
        sink,
        RetryPolicy::DEPENDENCY,
        max_in_flight,
        shutdown,
        |item| async move {
            match write(item).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    metrics::counter!(errors, "sink" => sink, "error_type" => e.kind()).increment(1);
                    if e.is_retryable() {
                        Err(e)
                    } else {
                        tracing::error!(sink, error = %e, error_type = e.kind(), "output cannot be written; skipped");
                        Ok(())
                    }
                }
            }
        },
    )
    .await
}
