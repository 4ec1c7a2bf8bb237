//! The partitions an instance owns: where each one reads on, and how it is taken up (restored
//! from its checkpoint or rebuilt), checkpointed, and given away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::cassandra::{Checkpoint, CheckpointStore, Lease, Stored};
use crate::domain::{now_micros, Micros};
use crate::error::Error;
use crate::kafka;
use crate::retry::{self, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::Result;

use super::group::GroupConsumer;
use super::{Checkpoints, Fresh, Job, Operator, Plan, Step, Tp};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the once-a-second lag query may wait for the broker before it is skipped.
const LAG_TIMEOUT: Duration = Duration::from_secs(1);
/// How far ahead an owner's lease on write timestamps reaches when claimed or renewed (µs).
const LEASE: Micros = 15_000_000;
/// A lease with less than this left is renewed before the next flush (µs).
const RENEW_BEFORE: Micros = 5_000_000;

pub(super) struct Partitions<'a> {
    pub(super) plan: &'a Plan<'a>,
    pub(super) consumer: &'a GroupConsumer,
    pub(super) checkpoints: Checkpoints<'a>,
    pub(super) owned: BTreeSet<Tp>,
    /// The input topics met so far, so a record's partition is named without an allocation.
    topics: Vec<Arc<str>>,
    /// The offset after the last record read, per owned partition that has delivered one.
    pub(super) next_offsets: BTreeMap<Tp, i64>,
    /// With transactions: the next offset of each owned partition as last committed.
    committed: BTreeMap<Tp, i64>,
    /// Partitions replaying ([`Fresh::Replay`]) until this offset.
    replay_until: BTreeMap<Tp, i64>,
    /// This instance's claim on each owned partition (with checkpoints in Cassandra).
    leases: BTreeMap<Tp, Lease>,
    /// The highest previous owner's lease end of any partition this instance claimed: stamps
    /// are above it.
    floor: Micros,
    last_stamp: Micros,
}

impl<'a> Partitions<'a> {
    pub(super) fn new(
        plan: &'a Plan<'a>,
        consumer: &'a GroupConsumer,
        checkpoints: Checkpoints<'a>,
    ) -> Self {
        Self {
            plan,
            consumer,
            checkpoints,
            owned: BTreeSet::new(),
            topics: Vec::new(),
            next_offsets: BTreeMap::new(),
            committed: BTreeMap::new(),
            replay_until: BTreeMap::new(),
            leases: BTreeMap::new(),
            floor: 0,
            last_stamp: 0,
        }
    }

    /// The owned partition a record came from; `None` for one not owned (fetched before it was
    /// released, or after it was fenced).
    pub(super) fn owned_tp(&self, topic: &str, partition: i32) -> Option<Tp> {
        let topic = self.topics.iter().find(|t| &***t == topic)?;
        let tp = Tp {
            topic: topic.clone(),
            partition,
        };
        self.owned.contains(&tp).then_some(tp)
    }

    pub(super) fn owned(&self) -> Vec<Tp> {
        self.owned.iter().cloned().collect()
    }

    /// Whether the record at `offset` only rebuilds state; ends the partition's replay at its
    /// resume offset.
    pub(super) fn replaying<O: Operator>(
        &mut self,
        tp: &Tp,
        offset: i64,
        operator: &mut O,
    ) -> bool {
        match self.replay_until.get(tp) {
            Some(&until) if offset >= until => {
                self.replay_until.remove(tp);
                operator.set_replaying(tp, false);
                tracing::info!(partition = %tp, offset, "replay done; emitting");
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Restores `partitions` from their checkpoints (a partition without one starts as the plan
    /// says; with transactions, from the group's committed offset, its state rebuilt by
    /// [`Job::warm_up`]) and reads them from there on: added to the assignment, or, when
    /// `rewind`, sought back to. `Ok(false)`: shutdown came first.
    pub(super) async fn take<J: Job>(
        &mut self,
        partitions: &[Tp],
        rewind: bool,
        job: &mut J,
        operator: &mut J::Operator,
        shutdown: &Shutdown,
    ) -> Result<bool> {
        let plan = self.plan;
        for tp in partitions {
            if !self.topics.contains(&tp.topic) {
                self.topics.push(tp.topic.clone());
            }
        }
        let saved: BTreeMap<Tp, Checkpoint> = match self.checkpoints {
            Checkpoints::Cassandra(store) => {
                let Some(saved) = self.claim(store, partitions, shutdown).await? else {
                    return Ok(false);
                };
                saved
            }
            Checkpoints::None | Checkpoints::Transactions => BTreeMap::new(),
        };
        let committed = match self.checkpoints {
            Checkpoints::Transactions => {
                let Some(committed) = retry::until_ok(
                    "read committed offsets",
                    RetryPolicy::DEPENDENCY,
                    shutdown,
                    || async { committed_offsets(self.consumer, partitions) },
                )
                .await
                else {
                    return Ok(false);
                };
                committed
            }
            _ => BTreeMap::new(),
        };
        let fresh: Vec<Tp> = partitions
            .iter()
            .filter(|tp| !saved.contains_key(*tp))
            .cloned()
            .collect();
        let fresh_positions = match plan.fresh {
            Fresh::Replay { replay_ms } if !fresh.is_empty() => {
                let Some(positions) = retry::until_ok(
                    "find start offsets",
                    RetryPolicy::DEPENDENCY,
                    shutdown,
                    || async { replay_positions(self.consumer, &fresh, replay_ms) },
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
        for tp in partitions {
            operator.drop_partition(tp);
            operator.set_replaying(tp, false);
            self.next_offsets.remove(tp);
            self.replay_until.remove(tp);
            self.committed.remove(tp);
            let offset = match saved.get(tp) {
                Some(cp) if J::Operator::READABLE_STATE_FORMATS.contains(&cp.state_format) => {
                    operator
                        .restore(tp, &cp.state, cp.state_format, now)
                        .map_err(|e| Error::Checkpoint {
                            partition: tp.partition,
                            message: format!("{tp} unreadable: {e}"),
                        })?;
                    self.next_offsets.insert(tp.clone(), cp.next_offset);
                    restored += 1;
                    Offset::Offset(cp.next_offset)
                }
                Some(cp) => {
                    return Err(Error::Checkpoint {
                        partition: tp.partition,
                        message: format!(
                            "{tp}: state format {} (this build reads {:?})",
                            cp.state_format,
                            J::Operator::READABLE_STATE_FORMATS
                        ),
                    })
                }
                None if matches!(self.checkpoints, Checkpoints::Transactions) => {
                    operator.start_fresh(tp, now);
                    let from = committed.get(tp).copied().flatten();
                    if !job.warm_up(operator, tp, from, shutdown).await? {
                        return Ok(false);
                    }
                    match from {
                        Some(o) => {
                            self.committed.insert(tp.clone(), o);
                            restored += 1;
                            Offset::Offset(o)
                        }
                        None => Offset::Beginning,
                    }
                }
                None => {
                    operator.start_fresh(tp, now);
                    match fresh_positions.get(tp) {
                        Some(&(start, resume)) => {
                            if start < resume {
                                operator.set_replaying(tp, true);
                                self.replay_until.insert(tp.clone(), resume);
                            }
                            tracing::info!(
                                partition = %tp,
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
                    self.consumer
                        .seek(&tp.topic, tp.partition, offset, KAFKA_TIMEOUT)
                })?;
            }
            assignment
                .add_partition_offset(&tp.topic, tp.partition, offset)
                .map_err(Error::Kafka)?;
        }
        if rewind {
        } else if plan.partitions.is_empty() {
            self.consumer.incremental_assign(&assignment)?;
        } else {
            self.consumer.assign(&assignment)?;
        }
        self.owned.extend(partitions.iter().cloned());
        let partitions: Vec<String> = partitions.iter().map(Tp::to_string).collect();
        tracing::info!(partitions = ?partitions, restored, rewind, "consuming from the checkpoints");
        Ok(true)
    }

    /// Claims `partitions`' checkpoint rows and returns what they held when claimed: once
    /// claimed, no other instance can write them. A row that changed between the read and the
    /// claim (its lease moves with every save) is read again. `None`: shutdown came first.
    async fn claim(
        &mut self,
        store: &CheckpointStore,
        partitions: &[Tp],
        shutdown: &Shutdown,
    ) -> Result<Option<BTreeMap<Tp, Checkpoint>>> {
        let plan = self.plan;
        let Some(mut saved) = load_checkpoints(store, plan, shutdown).await else {
            return Ok(None);
        };
        let mut changed = false;
        for tp in partitions {
            let seen = saved.get(&tp.partition).and_then(|s| s.lease);
            let Some(claim) =
                retry::until_ok("claim partition", RetryPolicy::DEPENDENCY, shutdown, || {
                    store.claim(
                        plan.group_id,
                        &tp.topic,
                        tp.partition,
                        seen,
                        now_micros() + LEASE,
                    )
                })
                .await
            else {
                return Ok(None);
            };
            tracing::debug!(partition = %tp, epoch = claim.lease.epoch, "partition claimed");
            changed |= claim.floor != seen.map_or(0, |l| l.until)
                || claim.lease.epoch != seen.map_or(1, |l| l.epoch + 1);
            self.leases.insert(tp.clone(), claim.lease);
            self.floor = self.floor.max(claim.floor);
        }
        if changed {
            let Some(again) = load_checkpoints(store, plan, shutdown).await else {
                return Ok(None);
            };
            saved = again;
        }
        Ok(Some(
            partitions
                .iter()
                .filter_map(|tp| {
                    let cp = saved.remove(&tp.partition)?.checkpoint?;
                    Some((tp.clone(), cp))
                })
                .collect(),
        ))
    }

    /// Drops `partitions`' state and removes them from the assignment.
    pub(super) fn release<O: Operator>(
        &mut self,
        partitions: &[Tp],
        operator: &mut O,
    ) -> Result<()> {
        self.forget(partitions, operator);
        let mut tpl = TopicPartitionList::new();
        for tp in partitions {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        self.consumer.incremental_unassign(&tpl)?;
        let partitions: Vec<String> = partitions.iter().map(Tp::to_string).collect();
        tracing::info!(partitions = ?partitions, "released");
        Ok(())
    }

    /// Drops `partitions`' state; they are no longer read (records still fetched are skipped).
    pub(super) fn forget<O: Operator>(&mut self, partitions: &[Tp], operator: &mut O) {
        for tp in partitions {
            operator.drop_partition(tp);
            self.next_offsets.remove(tp);
            self.committed.remove(tp);
            self.replay_until.remove(tp);
            self.leases.remove(tp);
            self.owned.remove(tp);
        }
    }

    /// Takes in what a write as `tp`'s owner came to (`None`: shutdown came first, then
    /// `false`; `Some(None)`: refused, the partition is fenced; else its extended lease).
    fn held(&mut self, tp: &Tp, outcome: Option<Option<Lease>>, fenced: &mut Vec<Tp>) -> bool {
        match outcome {
            None => return false,
            Some(Some(lease)) => {
                self.leases.insert(tp.clone(), lease);
            }
            Some(None) => fenced.push(tp.clone()),
        }
        true
    }

    /// The write stamp of the next flush: after every earlier one and above every previous
    /// owner's lease, within this instance's leases, which are renewed first when they run low.
    /// `Err`: no stamp, because shutdown came first or partitions are fenced.
    pub(super) async fn stamp(
        &mut self,
        shutdown: &Shutdown,
    ) -> Result<std::result::Result<Micros, Step>> {
        if let Checkpoints::Cassandra(store) = self.checkpoints {
            let plan = self.plan;
            let due: Vec<(Tp, Lease)> = self
                .leases
                .iter()
                .filter(|(_, l)| l.until - now_micros() < RENEW_BEFORE)
                .map(|(tp, l)| (tp.clone(), *l))
                .collect();
            let mut fenced = Vec::new();
            for (tp, lease) in due {
                let renewed = retry::until_ok(
                    "renew partition lease",
                    RetryPolicy::DEPENDENCY,
                    shutdown,
                    || async {
                        let renewed = extended(lease);
                        let held = store
                            .renew(plan.group_id, &tp.topic, tp.partition, renewed)
                            .await?;
                        Ok::<_, Error>(held.then_some(renewed))
                    },
                )
                .await;
                if !self.held(&tp, renewed, &mut fenced) {
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

    /// With transactions: the next offsets read since the last commit, to commit with the
    /// batch's outputs.
    pub(super) fn uncommitted(&self) -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for (tp, &next) in &self.next_offsets {
            if self.committed.get(tp) != Some(&next) {
                list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next))
                    .map_err(Error::Kafka)?;
            }
        }
        Ok(list)
    }

    /// With transactions: `offsets` were committed.
    pub(super) fn committed(&mut self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let (Offset::Offset(o), Some(tp)) =
                (e.offset(), self.owned_tp(e.topic(), e.partition()))
            {
                self.committed.insert(tp, o);
            }
        }
    }

    /// Saves the state and next offset of each of `partitions` that has delivered a record (the
    /// others keep their previous checkpoint), as their owner's epoch, then commits the offsets
    /// to the group. Every output of the records before them must have landed. (With
    /// transactions, landing the outputs committed the offsets: nothing more to do.)
    pub(super) async fn checkpoint<O: Operator>(
        &mut self,
        partitions: &[Tp],
        operator: &O,
        shutdown: &Shutdown,
    ) -> Result<Step> {
        let plan = self.plan;
        match self.checkpoints {
            Checkpoints::Transactions => return Ok(Step::On),
            Checkpoints::None => {}
            Checkpoints::Cassandra(store) => {
                let started = Instant::now();
                let mut bytes = 0usize;
                let mut fenced = Vec::new();
                for tp in partitions {
                    let (Some(&next_offset), Some(&lease)) =
                        (self.next_offsets.get(tp), self.leases.get(tp))
                    else {
                        continue;
                    };
                    let state = operator.snapshot(tp).map_err(|e| Error::Checkpoint {
                        partition: tp.partition,
                        message: format!("{tp}: cannot serialize the state: {e}"),
                    })?;
                    bytes += state.len();
                    let cp = Checkpoint {
                        next_offset,
                        state,
                        state_format: O::STATE_FORMAT,
                    };
                    let saved = retry::until_ok(
                        "save checkpoint",
                        RetryPolicy::DEPENDENCY,
                        shutdown,
                        || {
                            let cp = &cp;
                            async move {
                                let renewed = extended(lease);
                                let held = store
                                    .save(plan.group_id, &tp.topic, tp.partition, cp, renewed)
                                    .await?;
                                Ok::<_, Error>(held.then_some(renewed))
                            }
                        },
                    )
                    .await;
                    if !self.held(tp, saved, &mut fenced) {
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
        }
        self.commit(partitions);
        Ok(Step::On)
    }

    /// Commits the next offsets of `partitions` to the group: the progress lag tools show, and,
    /// without checkpoints, where a restart resumes.
    fn commit(&self, partitions: &[Tp]) {
        let mut list = TopicPartitionList::new();
        for tp in partitions {
            if let Some(&o) = self.next_offsets.get(tp) {
                if list
                    .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(o))
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

/// Every partition's checkpoint row, retried until read. `None`: shutdown came first.
async fn load_checkpoints(
    store: &CheckpointStore,
    plan: &Plan<'_>,
    shutdown: &Shutdown,
) -> Option<HashMap<i32, Stored>> {
    retry::until_ok(
        "load checkpoints",
        RetryPolicy::DEPENDENCY,
        shutdown,
        || store.load(plan.group_id, plan.topic),
    )
    .await
}

/// The group's committed offset of each of `partitions` (`None`: never committed).
fn committed_offsets(
    consumer: &GroupConsumer,
    partitions: &[Tp],
) -> Result<BTreeMap<Tp, Option<i64>>> {
    let mut wanted = TopicPartitionList::new();
    for tp in partitions {
        wanted.add_partition(&tp.topic, tp.partition);
    }
    let committed =
        tokio::task::block_in_place(|| consumer.committed_offsets(wanted, KAFKA_TIMEOUT))?;
    Ok(partitions
        .iter()
        .map(|tp| {
            let offset = match committed
                .find_partition(&tp.topic, tp.partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            (tp.clone(), offset)
        })
        .collect())
}

/// Sets the consumer-lag gauges from the next offsets the loop sends once a second. The broker's
/// high watermarks are asked by a client of their own, off the loop: a watermark query on the
/// group consumer stopped its deliveries in the backlog test, and a slow broker must not hold
/// the loop. The task ends when the loop drops the sender.
pub(super) fn spawn_lag_gauges(
    plan: &Plan<'_>,
) -> Result<tokio::sync::watch::Sender<BTreeMap<Tp, i64>>> {
    let client: Arc<BaseConsumer> =
        Arc::new(kafka::base_client_config(plan.kafka, &format!("{}-lag", plan.role)).create()?);
    let (tx, mut rx) = tokio::sync::watch::channel(BTreeMap::<Tp, i64>::new());
    let gauge = plan.metrics.consumer_lag;
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let next_offsets = rx.borrow_and_update().clone();
            let client = client.clone();
            let asked = tokio::task::spawn_blocking(move || {
                for (tp, next) in next_offsets {
                    match client.fetch_watermarks(&tp.topic, tp.partition, LAG_TIMEOUT) {
                        Ok((_, high)) => metrics::gauge!(gauge, "topic" => tp.topic.to_string(), "partition" => tp.partition.to_string())
                            .set((high - next).max(0) as f64),
                        Err(e) => {
                            tracing::debug!(partition = %tp, error = %e, "high watermark not read; lag gauge kept")
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
    partitions: &[Tp],
    replay_ms: u64,
) -> Result<BTreeMap<Tp, (i64, i64)>> {
    let committed = committed_offsets(consumer, partitions)?;
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let mut by_time = BTreeMap::new();
    for (topic, ps) in by_topic {
        for (p, o) in kafka::offsets_since(consumer, topic, &ps, replay_ms, KAFKA_TIMEOUT)? {
            by_time.insert((topic, p), o);
        }
    }
    let mut out = BTreeMap::new();
    for tp in partitions {
        let (_, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(&tp.topic, tp.partition, KAFKA_TIMEOUT)
        })?;
        // No record that recent: nothing to replay.
        let from_time = by_time
            .get(&(&*tp.topic, tp.partition))
            .copied()
            .flatten()
            .unwrap_or(high);
        let resume = committed.get(tp).copied().flatten().unwrap_or(from_time);
        out.insert(tp.clone(), (from_time.min(resume), resume));
    }
    Ok(out)
}
