//! The stream runtime: one loop that runs every trade operator (the aggregator's windows,
//! fair-price), so consumption, partition ownership, checkpoints, delivery, stall accounting,
//! shutdown and telemetry are written once.
//!
//! An operator ([`Operator`]) is pure and synchronous: trades in, outputs out, hooks to advance
//! time and to snapshot and restore one input partition's state. A job ([`Job`]) is the service's
//! side: where outputs go (collected into a batch and flushed), what a tick must do once every
//! output so far has landed, and the gauges. [`run`] drives both:
//!
//! - **Consumption.** Trades are read from the owned partitions of the input topic, decoded
//!   (Confluent wire format, waiting out an unreachable registry) and fed to the operator with
//!   their upstream source (the `tickflow.source` header, see [`crate::watermark`]). A record
//!   that is empty or not a trade is counted by reason and logged, never fatal.
//! - **Ownership.** Partitions are either configured ([`Plan::partitions`]) or shared by the
//!   instances of the consumer group (cooperative-sticky, static membership). A rebalance is
//!   handed from librdkafka's callback to the loop, which takes partitions up or gives them away
//!   between two records: revoked partitions have their outputs landed and a checkpoint written
//!   before they are released, so the next owner restores exactly where this one stopped;
//!   assigned ones are restored from their checkpoints before any of their records is read.
//!   Partitions lost without a revocation (this instance missed its session timeout) are not
//!   checkpointed: their state is dropped with every output not yet landed, and the partitions
//!   still owned are rewound to their checkpoints, as after a crash.
//! - **Offsets.** A checkpoint holds a partition's state with the offset of its next record,
//!   in one Cassandra row, and is written only after every output of the records before it has
//!   landed; after a crash the state is restored and reading resumes at that offset, and the
//!   outputs replayed from there are idempotent upserts of the same values (exactly-once
//!   effect). The offsets are also committed to the group, for lag tools only. Without a
//!   checkpoint store ([`Checkpoints::None`]) the group's committed offsets are the progress,
//!   and state is rebuilt by replay ([`Fresh::Replay`]). (The normalizer's Kafka transactions are
//!   its own loop: not on this runtime yet.)
//! - **Fencing.** Taking up a partition claims its checkpoint row (a new ownership epoch, see
//!   [`crate::cassandra::CheckpointStore::claim`]); every checkpoint is written only if that
//!   epoch still holds, so an instance paused past its session timeout (SIGSTOP, a long GC-like
//!   stall, a frozen VM) whose partitions were claimed meanwhile finds itself fenced when it
//!   wakes: its partitions are dropped as if lost, never checkpointed over its successor's.
//!   Each flush is given a write timestamp ([`Job::flush`]'s `stamp`) for rows whose order is
//!   not in their data (the aggregator's candles): it lies within the owner's lease, renewed
//!   before it runs out, and a new owner stamps above its predecessor's lease, so a paused
//!   instance's late writes are older than its successor's and Cassandra keeps the newer.
//! - **Delivery.** Outputs are collected into the job's batch and flushed at the job's size limit,
//!   at every tick, before every checkpoint and hand-over, and, when the job marks them urgent
//!   (a final candle, a changed price), as soon as no record is waiting. A flush waits (with
//!   backoff) until everything has landed, so a sink that is down pauses consumption; that wait
//!   is told to the operator ([`Operator::exclude_stall`]) so it does not count as idle input.
//!   An output that retrying cannot help (a value the schema cannot hold) is logged as an error,
//!   counted and skipped ([`land_each`]), never retried forever.
//! - **Shutdown.** Intake stops, outputs land, every owned partition is checkpointed, and a group
//!   member leaves the group so its partitions move on at once.

mod group;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::avro::{self, AvroCodec};
use crate::cassandra::{Checkpoint, CheckpointStore, Lease, Stored};
use crate::config::KafkaConfig;
use crate::domain::{now_micros, Micros, Trade};
use crate::error::Error;
use crate::kafka;
use crate::retry::{self, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::watermark;
use crate::Result;

use group::{GroupConsumer, Handover};

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
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the once-a-second lag query may wait for the broker before it is skipped.
const LAG_TIMEOUT: Duration = Duration::from_secs(1);
/// How far ahead an owner's lease on write timestamps reaches when claimed or renewed (µs).
const LEASE: Micros = 15_000_000;
/// A lease with less than this left is renewed before the next flush (µs).
const RENEW_BEFORE: Micros = 5_000_000;

/// A pure, synchronous operator over trades, with per-partition state.
pub trait Operator {
    type Output;
    /// The format [`Operator::snapshot`] writes.
    const STATE_FORMAT: i32;
    /// The formats [`Operator::restore`] reads.
    const READABLE_STATE_FORMATS: &'static [i32];

    /// One trade of `partition` from upstream `source` (the record's source header, or for a
    /// record without one [`watermark::fallback_source`]), arrived at wall clock `now`.
    fn on_trade(
        &mut self,
        partition: i32,
        source: &str,
        trade: &Trade,
        now: Micros,
        out: &mut Vec<Self::Output>,
    );
    /// Time passes (wall clock `now`): fire what is due.
    fn advance(&mut self, now: Micros, out: &mut Vec<Self::Output>);
    /// The input was not read for `stall` microseconds (waiting on a sink): not idleness.
    fn exclude_stall(&mut self, stall: Micros);
    /// One partition's state, in [`Operator::STATE_FORMAT`].
    fn snapshot(&self, partition: i32) -> std::result::Result<Vec<u8>, String>;
    /// Restores one partition from a snapshot of `format`.
    fn restore(
        &mut self,
        partition: i32,
        state: &[u8],
        format: i32,
        now: Micros,
    ) -> std::result::Result<(), String>;
    /// Starts a partition with no checkpoint.
    fn start_fresh(&mut self, partition: i32, now: Micros);
    /// Forgets a partition (handed to another instance, or lost).
    fn drop_partition(&mut self, partition: i32);
    /// While a partition replays records already published before (see [`Fresh::Replay`]), its
    /// state is rebuilt without emitting.
    fn set_replaying(&mut self, _partition: i32, _replaying: bool) {}
}

/// The input record behind the outputs being collected.
pub struct Record {
    pub trade: Trade,
    pub partition: i32,
    /// Read again to rebuild state ([`Fresh::Replay`]): its outputs were published before.
    pub replaying: bool,
}

/// The service's side of a pipeline: its sinks and hooks.
pub trait Job {
    type Operator: Operator;

    /// Takes the operator's outputs (and the record that caused them, if any) into the batch.
    /// `true`: something in it should land as soon as no record is waiting.
    fn collect(
        &mut self,
        outputs: &mut Vec<<Self::Operator as Operator>::Output>,
        record: Option<Record>,
    ) -> bool;
    /// Lands the batch, retrying until it has; `Ok(false)`: shutdown came first. `stamp` is the
    /// write timestamp (µs) for rows whose order is not in their data: later than every stamp
    /// before it, and, after a hand-over, than every stamp a fenced previous owner can still
    /// write with (see the module's fencing).
    fn flush(&mut self, stamp: Micros, shutdown: &Shutdown) -> impl Future<Output = Result<bool>>;
    /// Drops the batch without landing it (its partitions were lost).
    fn discard(&mut self);
    /// At every tick, after the batch has landed: work that needs every output so far landed
    /// (the aggregator's recomputations). Anything it adds to the batch lands before the next
    /// checkpoint; what it lands itself it writes at `stamp` (see [`Job::flush`]). `Ok(false)`:
    /// shutdown came first.
    fn on_tick(
        &mut self,
        _operator: &mut Self::Operator,
        _stamp: Micros,
        _shutdown: &Shutdown,
    ) -> impl Future<Output = Result<bool>> {
        async { Ok(true) }
    }
    /// Once a second: the job's gauges.
    fn report(&mut self, _operator: &Self::Operator, _owned: &BTreeSet<i32>) {}
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

/// Where checkpoints go.
pub enum Checkpoints<'a> {
    /// State and next offsets in Cassandra, under (operator id, topic, partition).
    Cassandra(&'a CheckpointStore),
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
    /// Gauge by `partition`: records not yet read.
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
    pub topic: &'a str,
    /// Configured partitions; empty: shared through the consumer group.
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
/// human (a checkpoint it cannot read, a fatal consumer error); dependencies that are down are
/// waited for.
pub async fn run<J: Job>(
    plan: &Plan<'_>,
    codec: &AvroCodec,
    checkpoints: Checkpoints<'_>,
    operator: &mut J::Operator,
    job: &mut J,
    mut inspect: Option<mpsc::Receiver<Inspect<J::Operator>>>,
    shutdown: &Shutdown,
) -> Result<()> {
    let (consumer, mut handovers) =
        group::group_consumer(plan.kafka, plan.role, plan.group_id, &plan.instance_id)?;
    let Some(all) = kafka::topic_partitions(&consumer, plan.topic, shutdown).await else {
        return Ok(());
    };
    let mut parts = Partitions {
        plan,
        consumer: &consumer,
        checkpoints,
        owned: BTreeSet::new(),
        next_offsets: BTreeMap::new(),
        replay_until: BTreeMap::new(),
        leases: BTreeMap::new(),
        floor: 0,
        last_stamp: 0,
    };
    if plan.partitions.is_empty() {
        consumer.subscribe(&[plan.topic])?;
        tracing::info!(topic = %plan.topic, group = %plan.group_id, "joining the consumer group; partitions come with rebalances");
    } else {
        let configured: Vec<i32> = plan
            .partitions
            .iter()
            .copied()
            .filter(|p| all.contains(p))
            .collect();
        if !parts.take(&configured, false, operator, shutdown).await? {
            return Ok(());
        }
    }
    metrics::gauge!(plan.metrics.owned_partitions).set(parts.owned.len() as f64);
    let lag = spawn_lag_gauges(plan)?;

    let mut outputs = Vec::new();
    let mut read = 0usize;
    let mut urgent = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    let mut checkpoint_tick = tokio::time::interval(plan.checkpoint_interval);
    checkpoint_tick.tick().await;

    loop {
        // Each arm comes to a step: on, stop (shutdown came first), or partitions fenced.
        let step = tokio::select! {
            // Shutdown and timers before records, so a steady stream cannot starve them.
            biased;
            () = shutdown.triggered() => {
                // Stop intake, land what was produced, checkpoint, leave. This work must finish
                // (the service's shutdown deadline bounds it): a fresh token, never triggered.
                let never = Shutdown::new();
                operator.advance(now_micros(), &mut outputs);
                job.collect(&mut outputs, None);
                let owned: Vec<i32> = parts.owned.iter().copied().collect();
                match land_and_checkpoint(job, &mut parts, operator, &owned, &never).await? {
                    Step::On => tracing::info!("stopped consuming; outputs landed and checkpointed"),
                    Step::Stop => {}
                    Step::Fenced(fenced) => {
                        // Outputs of fenced partitions may be in the batch: nothing more is
                        // written; the partitions kept replay from their last checkpoints.
                        job.discard();
                        count_handovers(plan, "fenced", &fenced);
                        tracing::warn!(partitions = ?fenced, "fenced while stopping; unlanded outputs dropped, nothing checkpointed");
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
                        let taken_up = parts.take(&taken, false, operator, shutdown).await?;
                        count_handovers(plan, "assigned", &taken);
                        Step::on_if(taken_up)
                    }
                    Handover::Revoke(given) => {
                        // Land every output so far and checkpoint what goes, then let it go:
                        // the next owner resumes exactly here.
                        // If some are fenced meanwhile, what goes is rewound to its checkpoint with
                        // the rest, so it goes as it was last checkpointed.
                        let step = match land_and_checkpoint(job, &mut parts, operator, &given, shutdown).await? {
                            Step::Fenced(fenced) => Step::on_if(lose_fenced(job, &mut parts, operator, &fenced, shutdown).await?),
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
                        tracing::warn!(partitions = ?lost, "partitions lost without a revocation; unlanded outputs dropped, the rest rewound to their checkpoints");
                        job.discard();
                        read = 0;
                        urgent = false;
                        parts.release(&lost, operator)?;
                        count_handovers(plan, "lost", &lost);
                        let kept: Vec<i32> = parts.owned.iter().copied().collect();
                        Step::on_if(parts.take(&kept, true, operator, shutdown).await?)
                    }
                };
                note_stall(operator, waited);
                metrics::gauge!(plan.metrics.owned_partitions).set(parts.owned.len() as f64);
                step
            }
            _ = checkpoint_tick.tick() => {
                let waited = Instant::now();
                let owned: Vec<i32> = parts.owned.iter().copied().collect();
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
                        continue;
                    }
                };
                let partition = message.partition();
                let offset = message.offset();
                if !parts.owned.contains(&partition) {
                    // Fetched before the partition was released (or after it was fenced).
                    continue;
                }
                parts.next_offsets.insert(partition, offset + 1);
                let replaying = parts.replaying(partition, offset, operator);
                let Some(payload) = message.payload() else {
                    input_error(plan, INPUT_EMPTY, partition, offset, "record without a value");
                    continue;
                };
                let waited = Instant::now();
                let decoded = avro::decode_trade_waiting(codec, payload, shutdown).await;
                note_stall(operator, waited);
                let trade = match decoded {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => {
                        input_error(plan, INPUT_UNDECODABLE, partition, offset, &e.to_string());
                        continue;
                    }
                    None => return Ok(()),
                };
                let fallback;
                let source = match watermark::source_header(&message) {
                    Some(source) => source,
                    None => {
                        fallback = watermark::fallback_source(&trade);
                        &fallback
                    }
                };
                operator.on_trade(partition, source, &trade, now_micros(), &mut outputs);
                urgent |= job.collect(&mut outputs, Some(Record { trade, partition, replaying }));
                read += 1;
                if read < plan.max_batch {
                    continue;
                }
                read = 0;
                urgent = false;
                land(job, &mut parts, operator, shutdown).await?
            }
            // Nothing else ready: urgent outputs land now (within milliseconds of the record
            // that caused them), not at the next tick; under a steady stream the input is
            // rarely empty for long, so outputs still land in batches.
            () = std::future::ready(()), if urgent => {
                read = 0;
                urgent = false;
                land(job, &mut parts, operator, shutdown).await?
            }
        };
        match step {
            Step::On => {}
            Step::Stop => return Ok(()),
            Step::Fenced(fenced) => {
                if !lose_fenced(job, &mut parts, operator, &fenced, shutdown).await? {
                    return Ok(());
                }
                metrics::gauge!(plan.metrics.owned_partitions).set(parts.owned.len() as f64);
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
    Fenced(Vec<i32>),
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

async fn next_question<O>(inspect: &mut Option<mpsc::Receiver<Inspect<O>>>) -> Option<Inspect<O>> {
    match inspect {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Flushes the job's batch under a fresh write stamp, telling the operator how long the input
/// was not read meanwhile.
async fn land<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    shutdown: &Shutdown,
) -> Result<Step> {
    let waited = Instant::now();
    let step = match parts.stamp(shutdown).await? {
        Ok(stamp) => Step::on_if(job.flush(stamp, shutdown).await?),
        Err(step) => step,
    };
    note_stall(operator, waited);
    Ok(step)
}

/// Lands the batch, then checkpoints `partitions`.
async fn land_and_checkpoint<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    partitions: &[i32],
    shutdown: &Shutdown,
) -> Result<Step> {
    match land(job, parts, operator, shutdown).await? {
        Step::On => parts.checkpoint(partitions, operator, shutdown).await,
        other => Ok(other),
    }
}

/// Another instance claimed `fenced`: their state goes, with every output not yet landed (the
/// batch mixes partitions), and the partitions kept are rewound to their checkpoints, as for
/// lost partitions. The group tells librdkafka of the loss in its own time; until then records
/// of the fenced partitions are skipped. `Ok(false)`: shutdown came first.
async fn lose_fenced<J: Job>(
    job: &mut J,
    parts: &mut Partitions<'_>,
    operator: &mut J::Operator,
    fenced: &[i32],
    shutdown: &Shutdown,
) -> Result<bool> {
    tracing::warn!(partitions = ?fenced, "fenced: another instance claimed these partitions while this one held them (paused past its session timeout?); their state and every unlanded output dropped, the rest rewound to their checkpoints");
    job.discard();
    count_handovers(parts.plan, "fenced", fenced);
    parts.forget(fenced, operator);
    let kept: Vec<i32> = parts.owned.iter().copied().collect();
    parts.take(&kept, true, operator, shutdown).await
}

fn count_handovers(plan: &Plan<'_>, kind: &'static str, partitions: &[i32]) {
    metrics::counter!(plan.metrics.handovers, "kind" => kind).increment(partitions.len() as u64);
}

fn note_stall<O: Operator>(operator: &mut O, since: Instant) {
    let waited = since.elapsed();
    if waited >= STALL {
        operator.exclude_stall(i64::try_from(waited.as_micros()).unwrap_or(i64::MAX));
    }
}

fn input_error(plan: &Plan<'_>, reason: &'static str, partition: i32, offset: i64, detail: &str) {
    metrics::counter!(plan.metrics.input_errors, "reason" => reason).increment(1);
    tracing::warn!(reason, partition, offset, detail, "input record skipped");
}

/// The partitions this instance owns, where each one reads on, and how they are taken up,
/// checkpointed and given away.
struct Partitions<'a> {
    plan: &'a Plan<'a>,
    consumer: &'a GroupConsumer,
    checkpoints: Checkpoints<'a>,
    owned: BTreeSet<i32>,
    /// The offset after the last record read, per owned partition that has delivered one.
    next_offsets: BTreeMap<i32, i64>,
    /// Partitions replaying ([`Fresh::Replay`]) until this offset.
    replay_until: BTreeMap<i32, i64>,
    /// This instance's claim on each owned partition (with checkpoints in Cassandra).
    leases: BTreeMap<i32, Lease>,
    /// The highest previous owner's lease end of any partition this instance claimed: stamps
    /// are above it.
    floor: Micros,
    last_stamp: Micros,
}

impl Partitions<'_> {
    /// Whether the record at `offset` only rebuilds state; ends the partition's replay at its
    /// resume offset.
    fn replaying<O: Operator>(&mut self, partition: i32, offset: i64, operator: &mut O) -> bool {
        match self.replay_until.get(&partition) {
            Some(&until) if offset >= until => {
                self.replay_until.remove(&partition);
                operator.set_replaying(partition, false);
                tracing::info!(partition, offset, "replay done; emitting");
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Restores `partitions` from their checkpoints (a partition without one starts as the plan
    /// says) and reads them from there on: added to the assignment, or, when `rewind`, sought
    /// back to. `Ok(false)`: shutdown came first.
    async fn take<O: Operator>(
        &mut self,
        partitions: &[i32],
        rewind: bool,
        operator: &mut O,
        shutdown: &Shutdown,
    ) -> Result<bool> {
        let plan = self.plan;
        let saved = match self.checkpoints {
            Checkpoints::Cassandra(store) => {
                // What to restore is what the rows held when claimed: once claimed, no other
                // instance can write them. A row that changed between the read and the claim
                // (its lease moves with every save) is read again.
                let Some(mut saved) = load_checkpoints(store, plan, shutdown).await else {
                    return Ok(false);
                };
                let mut changed = false;
                for &p in partitions {
                    let seen = saved.get(&p).and_then(|s| s.lease);
                    let Some(claim) = retry::until_ok(
                        "claim partition",
                        RetryPolicy::DEPENDENCY,
                        shutdown,
                        || store.claim(plan.group_id, plan.topic, p, seen, now_micros() + LEASE),
                    )
                    .await
                    else {
                        return Ok(false);
                    };
                    tracing::debug!(
                        partition = p,
                        epoch = claim.lease.epoch,
                        "partition claimed"
                    );
                    changed |= claim.floor != seen.map_or(0, |l| l.until)
                        || claim.lease.epoch != seen.map_or(1, |l| l.epoch + 1);
                    self.leases.insert(p, claim.lease);
                    self.floor = self.floor.max(claim.floor);
                }
                if changed {
                    let Some(again) = load_checkpoints(store, plan, shutdown).await else {
                        return Ok(false);
                    };
                    saved = again;
                }
                saved
                    .into_iter()
                    .filter_map(|(p, s)| Some((p, s.checkpoint?)))
                    .collect()
            }
            Checkpoints::None => BTreeMap::new(),
        };
        let fresh: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !saved.contains_key(p))
            .collect();
        let fresh_positions = match plan.fresh {
            Fresh::Replay { replay_ms } if !fresh.is_empty() => {
                let Some(positions) = retry::until_ok(
                    "find start offsets",
                    RetryPolicy::DEPENDENCY,
                    shutdown,
                    || async { replay_positions(self.consumer, plan.topic, &fresh, replay_ms) },
                )
                .await
                else {
                    return Ok(false);
                };
                positions
            }
            _ => BTreeMap::new(),
        };
        let now = now_micros();
        let mut assignment = TopicPartitionList::new();
        let mut restored = 0;
        for &p in partitions {
            operator.drop_partition(p);
            operator.set_replaying(p, false);
            self.next_offsets.remove(&p);
            self.replay_until.remove(&p);
            let offset = match saved.get(&p) {
                Some(cp) if O::READABLE_STATE_FORMATS.contains(&cp.state_format) => {
                    operator
                        .restore(p, &cp.state, cp.state_format, now)
                        .map_err(|e| Error::Checkpoint {
                            partition: p,
                            message: format!("unreadable: {e}"),
                        })?;
                    self.next_offsets.insert(p, cp.next_offset);
                    restored += 1;
                    Offset::Offset(cp.next_offset)
                }
                Some(cp) => {
                    return Err(Error::Checkpoint {
                        partition: p,
                        message: format!(
                            "state format {} (this build reads {:?})",
                            cp.state_format,
                            O::READABLE_STATE_FORMATS
                        ),
                    })
                }
                None => {
                    operator.start_fresh(p, now);
                    match fresh_positions.get(&p) {
                        Some(&(start, resume)) => {
                            if start < resume {
                                operator.set_replaying(p, true);
                                self.replay_until.insert(p, resume);
                            }
                            tracing::info!(
                                partition = p,
                                start,
                                resume,
                                replays = start < resume,
                                "no checkpoint: starting before the committed offset"
                            );
                            Offset::Offset(start)
                        }
                        None => Offset::Beginning,
                    }
                }
            };
            if rewind {
                tokio::task::block_in_place(|| {
                    self.consumer.seek(plan.topic, p, offset, KAFKA_TIMEOUT)
                })?;
            }
            assignment
                .add_partition_offset(plan.topic, p, offset)
                .map_err(Error::Kafka)?;
        }
        if rewind {
        } else if plan.partitions.is_empty() {
            self.consumer.incremental_assign(&assignment)?;
        } else {
            self.consumer.assign(&assignment)?;
        }
        self.owned.extend(partitions);
        tracing::info!(topic = %plan.topic, partitions = ?partitions, restored, rewind, "consuming from the checkpoints");
        Ok(true)
    }

    /// Drops `partitions`' state and removes them from the assignment.
    fn release<O: Operator>(&mut self, partitions: &[i32], operator: &mut O) -> Result<()> {
        self.forget(partitions, operator);
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(self.plan.topic, p);
        }
        self.consumer.incremental_unassign(&tpl)?;
        tracing::info!(partitions = ?partitions, "released");
        Ok(())
    }

    /// Drops `partitions`' state; they are no longer read (records still fetched are skipped).
    fn forget<O: Operator>(&mut self, partitions: &[i32], operator: &mut O) {
        for &p in partitions {
            operator.drop_partition(p);
            self.next_offsets.remove(&p);
            self.replay_until.remove(&p);
            self.leases.remove(&p);
            self.owned.remove(&p);
        }
    }

    /// Takes in what a write as `partition`'s owner came to (`None`: shutdown came first, then
    /// `false`; `Some(None)`: refused, the partition is fenced; else its extended lease).
    fn held(
        &mut self,
        partition: i32,
        outcome: Option<Option<Lease>>,
        fenced: &mut Vec<i32>,
    ) -> bool {
        match outcome {
            None => return false,
            Some(Some(lease)) => {
                self.leases.insert(partition, lease);
            }
            Some(None) => fenced.push(partition),
        }
        true
    }

    /// The write stamp of the next flush: after every earlier one and above every previous
    /// owner's lease, within this instance's leases, which are renewed first when they run low.
    /// `Err`: no stamp, because shutdown came first or partitions are fenced.
    async fn stamp(&mut self, shutdown: &Shutdown) -> Result<std::result::Result<Micros, Step>> {
        if let Checkpoints::Cassandra(store) = self.checkpoints {
            let plan = self.plan;
            let due: Vec<(i32, Lease)> = self
                .leases
                .iter()
                .filter(|(_, l)| l.until - now_micros() < RENEW_BEFORE)
                .map(|(p, l)| (*p, *l))
                .collect();
            let mut fenced = Vec::new();
            for (p, lease) in due {
                let renewed = retry::until_ok(
                    "renew partition lease",
                    RetryPolicy::DEPENDENCY,
                    shutdown,
                    || async move {
                        let renewed = extended(lease);
                        let held = store.renew(plan.group_id, plan.topic, p, renewed).await?;
                        Ok::<_, Error>(held.then_some(renewed))
                    },
                )
                .await;
                if !self.held(p, renewed, &mut fenced) {
                    return Ok(Err(Step::Stop));
                }
            }
            if !fenced.is_empty() {
                return Ok(Err(Step::Fenced(fenced)));
            }
        }
        let stamp = now_micros().max(self.floor + 1).max(self.last_stamp + 1);
        self.last_stamp = stamp;
        Ok(Ok(stamp))
    }

    /// Saves the state and next offset of each of `partitions` that has delivered a record (the
    /// others keep their previous checkpoint), as their owner's epoch, then commits the offsets
    /// to the group. Every output of the records before them must have landed.
    async fn checkpoint<O: Operator>(
        &mut self,
        partitions: &[i32],
        operator: &O,
        shutdown: &Shutdown,
    ) -> Result<Step> {
        let plan = self.plan;
        if let Checkpoints::Cassandra(store) = self.checkpoints {
            let started = Instant::now();
            let mut bytes = 0usize;
            let mut fenced = Vec::new();
            for &p in partitions {
                let (Some(&next_offset), Some(&lease)) =
                    (self.next_offsets.get(&p), self.leases.get(&p))
                else {
                    continue;
                };
                let state = operator.snapshot(p).map_err(|e| Error::Checkpoint {
                    partition: p,
                    message: format!("cannot serialize the state: {e}"),
                })?;
                bytes += state.len();
                let cp = Checkpoint {
                    next_offset,
                    state,
                    state_format: O::STATE_FORMAT,
                };
                let saved =
                    retry::until_ok("save checkpoint", RetryPolicy::DEPENDENCY, shutdown, || {
                        let cp = &cp;
                        async move {
                            let renewed = extended(lease);
                            let held = store
                                .save(plan.group_id, plan.topic, p, cp, renewed)
                                .await?;
                            Ok::<_, Error>(held.then_some(renewed))
                        }
                    })
                    .await;
                if !self.held(p, saved, &mut fenced) {
                    return Ok(Step::Stop);
                }
            }
            metrics::histogram!(plan.metrics.checkpoint_seconds)
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!(plan.metrics.checkpoint_bytes).set(bytes as f64);
            if !fenced.is_empty() {
                return Ok(Step::Fenced(fenced));
            }
        }
        self.commit(partitions);
        Ok(Step::On)
    }

    /// Commits the next offsets of `partitions` to the group: the progress lag tools show, and,
    /// without checkpoints, where a restart resumes.
    fn commit(&self, partitions: &[i32]) {
        let mut list = TopicPartitionList::new();
        for p in partitions {
            if let Some(&o) = self.next_offsets.get(p) {
                if list
                    .add_partition_offset(self.plan.topic, *p, Offset::Offset(o))
                    .is_err()
                {
                    return;
                }
            }
        }
        if list.count() == 0 {
            return;
        }
        // Progress only: a lost commit means a little more replay after a restart.
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; will commit again");
        }
    }
}

/// `lease` reaching [`LEASE`] from now.
fn extended(lease: Lease) -> Lease {
    Lease {
        epoch: lease.epoch,
        until: now_micros() + LEASE,
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

/// Every partition's checkpoint row, retried until read. `None`: shutdown came first.
async fn load_checkpoints(
    store: &CheckpointStore,
    plan: &Plan<'_>,
    shutdown: &Shutdown,
) -> Option<std::collections::HashMap<i32, Stored>> {
    retry::until_ok(
        "load checkpoints",
        RetryPolicy::DEPENDENCY,
        shutdown,
        || store.load(plan.group_id, plan.topic),
    )
    .await
}

/// Sets the consumer-lag gauges from the next offsets the loop sends once a second. The broker's
/// high watermarks are asked by a client of their own, off the loop: a watermark query on the
/// group consumer stopped its deliveries in the backlog test, and a slow broker must not hold
/// the loop. The task ends when the loop drops the sender.
fn spawn_lag_gauges(plan: &Plan<'_>) -> Result<tokio::sync::watch::Sender<BTreeMap<i32, i64>>> {
    let client: Arc<BaseConsumer> =
        Arc::new(kafka::base_client_config(plan.kafka, &format!("{}-lag", plan.role)).create()?);
    let (tx, mut rx) = tokio::sync::watch::channel(BTreeMap::<i32, i64>::new());
    let (topic, gauge) = (plan.topic.to_string(), plan.metrics.consumer_lag);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let next_offsets = rx.borrow_and_update().clone();
            let (client, topic) = (client.clone(), topic.clone());
            let asked = tokio::task::spawn_blocking(move || {
                for (p, next) in next_offsets {
                    match client.fetch_watermarks(&topic, p, LAG_TIMEOUT) {
                        Ok((_, high)) => metrics::gauge!(gauge, "partition" => p.to_string())
                            .set((high - next).max(0) as f64),
                        Err(e) => {
                            tracing::debug!(partition = p, error = %e, "high watermark not read; lag gauge kept")
                        }
                    }
                }
            })
            .await;
            if asked.is_err() {
                break;
            }
        }
    });
    Ok(tx)
}

/// (start, resume) of each partition for [`Fresh::Replay`]: `replay_ms` of record time before
/// the group's committed offset, or, for a partition the group never committed, from `replay_ms`
/// before now, emitting from there.
fn replay_positions(
    consumer: &GroupConsumer,
    topic: &str,
    partitions: &[i32],
    replay_ms: u64,
) -> Result<BTreeMap<i32, (i64, i64)>> {
    let mut wanted = TopicPartitionList::new();
    for &p in partitions {
        wanted.add_partition(topic, p);
    }
    let committed =
        tokio::task::block_in_place(|| consumer.committed_offsets(wanted, KAFKA_TIMEOUT))?;
    let by_time = kafka::offsets_since(consumer, topic, partitions, replay_ms, KAFKA_TIMEOUT)?;
    let mut out = BTreeMap::new();
    for &p in partitions {
        let (_, high) =
            tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT))?;
        // No record that recent: nothing to replay.
        let from_time = by_time.get(&p).copied().flatten().unwrap_or(high);
        let resume = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => from_time,
        };
        out.insert(p, (from_time.min(resume), resume));
    }
    Ok(out)
}
