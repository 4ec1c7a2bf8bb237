//! The async loop around the pure operator: read trades from the owned input partitions, feed
//! the operator, flush its outputs to the sinks, checkpoint state and offsets, answer queries.
//!
//! Exactly-once effect: a checkpoint is written only after every output of the records before it
//! has landed, and it holds each partition's state with the offset of the next record. After a
//! crash the state is restored and reading resumes at that offset; the outputs replayed from
//! there are idempotent upserts of the same values, so the results equal a run without the crash.
//!
//! Partitions are either configured (`aggregator.partitions`) or shared by the instances of the
//! consumer group (cooperative-sticky assignment). A rebalance is handed from librdkafka's
//! callback to the loop, which takes partitions up or gives them away between two records:
//! revoked partitions have their outputs landed and a checkpoint written before they are
//! released, so the next owner restores exactly where this one stopped; assigned ones are
//! restored from their checkpoints before any record of them is read. Partitions lost without a
//! revocation (this instance missed the session timeout) are not checkpointed: their state is
//! dropped along with every output not yet landed, and the partitions still owned are restored
//! from their checkpoints, as after a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra::{
    CandleStore, Checkpoint, CheckpointStore, TradeStore, TRADES_TTL,
};
use tickflow_shared::config::KafkaConfig;
use tickflow_shared::domain::{now_micros, Candle, Micros};
use tickflow_shared::error::Error;
use tickflow_shared::kafka;
use tickflow_shared::retry::{self, RetryPolicy};
use tickflow_shared::service::CassandraHandle;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tickflow_shared::watermark;
use tickflow_shared::Result;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::*;
use crate::operator::correction::recompute;
use crate::operator::{
    Aggregator, Correction, Emission, Output, READABLE_STATE_FORMATS, STATE_FORMAT,
};
use crate::sink::{Batch, Sinks};

/// A question to the running operator: the current candles of an instrument.
pub struct Query {
    pub instrument: String,
    pub reply: oneshot::Sender<Vec<Candle>>,
}

/// A change of this instance's partitions, from librdkafka's rebalance callback to the loop.
#[derive(Debug)]
enum Handover {
    Assign(Vec<i32>),
    Revoke(Vec<i32>),
    /// Revoked without a chance to checkpoint: another instance may own them already.
    Lost(Vec<i32>),
}

/// Passes rebalances to the loop instead of applying them in the callback: librdkafka waits for
/// the loop's `incremental_assign` / `incremental_unassign`, so the loop can land outputs and
/// checkpoint before a partition goes, and restore state before one comes.
struct HandoverContext {
    tx: mpsc::UnboundedSender<Handover>,
}

impl ClientContext for HandoverContext {}

impl ConsumerContext for HandoverContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let handover = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Handover::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if consumer.assignment_lost() => {
                Handover::Lost(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Handover::Revoke(partitions),
            other => {
                // As librdkafka's own handler does: give everything up; the group assigns again.
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                Handover::Lost(partitions)
            }
        };
        if self.tx.send(handover).is_err() {
            // The loop has stopped (the consumer is closing): apply the change here, as
            // librdkafka's own handler would.
            let applied = match err {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                    consumer.incremental_assign(tpl)
                }
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                    consumer.incremental_unassign(tpl)
                }
                _ => consumer.unassign(),
            };
            if let Err(e) = applied {
                tracing::warn!(error = %e, "applying a rebalance while closing failed");
            }
        }
    }
}

/// Takes partitions up and gives them away.
struct Ownership<'a> {
    consumer: &'a GroupConsumer,
    checkpoints: &'a CheckpointStore,
    config: &'a Config,
}

impl Ownership<'_> {
    /// Restores `partitions` from their checkpoints (a partition without one starts empty, from
    /// the beginning) and reads them from the checkpoints' offsets on: added to the assignment,
    /// or, when `rewind`, sought back to. `Ok(false)`: shutdown came first.
    async fn take(
        &self,
        partitions: &[i32],
        rewind: bool,
        operator: &mut Aggregator,
        next_offsets: &mut BTreeMap<i32, i64>,
        shutdown: &Shutdown,
    ) -> Result<bool> {
        let agg = &self.config.aggregator;
        let Some(saved) = retry::until_ok(
            "load checkpoints",
            RetryPolicy::DEPENDENCY,
            shutdown,
            || self.checkpoints.load(&agg.operator_id, &agg.input_topic),
        )
        .await
        else {
            return Ok(false);
        };
        let mut assignment = TopicPartitionList::new();
        let mut restored = 0;
        for &p in partitions {
            operator.drop_partition(p);
            next_offsets.remove(&p);
            let offset = match saved.get(&p) {
                Some(cp) if READABLE_STATE_FORMATS.contains(&cp.state_format) => {
                    operator.restore(p, &cp.state, cp.state_format, now_micros()).map_err(|e| {
                        Error::Config(format!("checkpoint of partition {p} is unreadable: {e}"))
                    })?;
                    next_offsets.insert(p, cp.next_offset);
                    restored += 1;
                    Offset::Offset(cp.next_offset)
                }
                Some(cp) => {
                    return Err(Error::Config(format!(
                        "checkpoint of partition {p} has state format {} (this build reads {READABLE_STATE_FORMATS:?})",
                        cp.state_format
                    )))
                }
                None => {
                    operator.start_fresh(p, now_micros());
                    Offset::Beginning
                }
            };
            if rewind {
                tokio::task::block_in_place(|| {
                    self.consumer
                        .seek(&agg.input_topic, p, offset, Duration::from_secs(10))
                })?;
            }
            assignment
                .add_partition_offset(&agg.input_topic, p, offset)
                .map_err(Error::Kafka)?;
        }
        if rewind {
        } else if agg.partitions.is_empty() {
            self.consumer.incremental_assign(&assignment)?;
        } else {
            self.consumer.assign(&assignment)?;
        }
        tracing::info!(topic = %agg.input_topic, partitions = ?partitions, restored, rewind, "consuming from the checkpoints");
        Ok(true)
    }

    /// Removes `partitions` from the assignment (their state is already dropped).
    fn release(&self, partitions: &[i32]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.config.aggregator.input_topic, p);
        }
        self.consumer.incremental_unassign(&tpl)?;
        tracing::info!(partitions = ?partitions, "released");
        Ok(())
    }
}

type GroupConsumer = StreamConsumer<HandoverContext>;

fn group_consumer(
    config: &KafkaConfig,
    group_id: &str,
    instance_id: &str,
) -> Result<(GroupConsumer, mpsc::UnboundedReceiver<Handover>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut client = kafka::consumer_config(config, "aggregator", group_id);
    // Unless `[kafka.librdkafka]` says otherwise: cooperative hand-over, a restarted instance
    // takes its partitions back at once, and a dead one's move on after 30 s.
    if client.get("partition.assignment.strategy").is_none() {
        client.set("partition.assignment.strategy", "cooperative-sticky");
    }
    kafka::static_membership(&mut client, instance_id);
    Ok((client.create_with_context(HandoverContext { tx })?, rx))
}

/// Runs until shutdown. Returns an error only for what needs a human (missing tables, a
/// checkpoint it cannot read); dependencies that are down are waited for.
pub async fn run(
    config: &Config,
    registry: &Registry,
    cassandra: &CassandraHandle,
    labels: InstrumentLabels,
    mut queries: mpsc::Receiver<Query>,
    shutdown: &Shutdown,
) -> Result<()> {
    let agg = &config.aggregator;
    let Some(session) = cassandra.session(shutdown).await else {
        return Ok(());
    };
    let keyspace = &config.cassandra.keyspace;
    let missing_tables = |e: Error| {
        Error::Config(format!(
            "{e}\nhint: apply the Cassandra migrations first: `tickflow-admin migrate` (keyspace {keyspace})"
        ))
    };
    let checkpoints = CheckpointStore::new(session.clone(), keyspace)
        .await
        .map_err(missing_tables)?;
    let candle_store = CandleStore::new(session.clone(), keyspace)
        .await
        .map_err(missing_tables)?;
    let trade_store = if agg.write_trades {
        Some(
            TradeStore::new(session.clone(), keyspace)
                .await
                .map_err(missing_tables)?,
        )
    } else {
        None
    };
    let codec = Arc::new(AvroCodec::new(
        registry,
        &[
            (agg.candles_topic.as_str(), avro::CANDLE),
            (agg.late_topic.as_str(), avro::TRADE),
        ],
    ));
    let sinks = Sinks {
        candles: candle_store,
        trades: trade_store,
        producer: kafka::producer(&config.kafka, "aggregator")?,
        codec: codec.clone(),
        candles_topic: agg.candles_topic.clone(),
        late_topic: agg.late_topic.clone(),
        max_in_flight: agg.max_in_flight,
    };

    let (consumer, mut handovers) =
        group_consumer(&config.kafka, &agg.operator_id, &agg.instance_id())?;
    let Some(all) =
        kafka::topic_partitions(&consumer, &config.aggregator.input_topic, shutdown).await
    else {
        return Ok(());
    };
    let mut operator = Aggregator::new(agg.timing()).with_rollups(agg.rollup_intervals());
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    let ownership = Ownership {
        consumer: &consumer,
        checkpoints: &checkpoints,
        config,
    };
    if agg.partitions.is_empty() {
        consumer.subscribe(&[&agg.input_topic])?;
        tracing::info!(topic = %agg.input_topic, group = %agg.operator_id, "joining the consumer group; partitions come with rebalances");
    } else {
        // Configured partitions: restore each and resume its input where its checkpoint says.
        let configured: Vec<i32> = agg
            .partitions
            .iter()
            .copied()
            .filter(|p| all.contains(p))
            .collect();
        if !ownership
            .take(
                &configured,
                false,
                &mut operator,
                &mut next_offsets,
                shutdown,
            )
            .await?
        {
            return Ok(());
        }
        owned.extend(configured);
    }
    metrics::gauge!(OWNED_PARTITIONS).set(owned.len() as f64);

    let mut batch = Batch::default();
    let mut outputs = Vec::new();
    let mut pending = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut checkpoint_tick =
        tokio::time::interval(Duration::from_millis(agg.checkpoint_interval_ms));
    checkpoint_tick.tick().await;

    loop {
        tokio::select! {
            message = consumer.recv() => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        if let Some(fatal) = kafka::fatal_consumer_error(
                            &e,
                            consumer.client(),
                            "aggregator.instance_id",
                            &agg.instance_id(),
                        ) {
                            return Err(fatal);
                        }
                        tracing::warn!(error = %e, "kafka consumer error");
                        continue;
                    }
                };
                let partition = message.partition();
                let offset = message.offset();
                if !owned.contains(&partition) {
                    // Fetched before the partition was released.
                    continue;
                }
                next_offsets.insert(partition, offset + 1);
                let Some(payload) = message.payload() else {
                    input_error(INPUT_EMPTY, partition, offset, "record without a value");
                    continue;
                };
                let waited = Instant::now();
                let decoded = avro::decode_trade_waiting(&codec, payload, shutdown).await;
                note_stall(&mut operator, waited);
                let trade = match decoded {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => {
                        input_error(INPUT_UNDECODABLE, partition, offset, &e.to_string());
                        continue;
                    }
                    None => return Ok(()),
                };
                metrics::counter!(TRADES_IN, "instrument" => labels.label(&trade.instrument), "exchange" => trade.exchange.clone()).increment(1);
                match watermark::source_header(&message) {
                    Some(source) => operator.on_trade_from(partition, source, &trade, now_micros(), &mut outputs),
                    None => operator.on_trade(partition, &trade, now_micros(), &mut outputs),
                }
                let finals = collect(&mut outputs, &mut batch);
                if sinks.trades.is_some() {
                    batch.trades.push(trade);
                }
                pending += 1;
                // A window the watermark has just closed lands now, not at the next tick.
                if pending >= agg.max_batch || finals {
                    let waited = Instant::now();
                    let landed = sinks.flush(std::mem::take(&mut batch), shutdown).await?;
                    note_stall(&mut operator, waited);
                    if !landed {
                        return Ok(());
                    }
                    pending = 0;
                }
            }
            _ = tick.tick() => {
                operator.advance(now_micros(), &mut outputs);
                collect(&mut outputs, &mut batch);
                let waited = Instant::now();
                let landed = sinks.flush(std::mem::take(&mut batch), shutdown).await?;
                note_stall(&mut operator, waited);
                if !landed {
                    return Ok(());
                }
                pending = 0;
                // Every trade read so far has landed in Cassandra: due corrections can read them.
                // Their candles land before the loop goes on, so no checkpoint is written between
                // taking a correction out of the state and landing its result.
                let due = operator.due_corrections(now_micros());
                if !due.is_empty() {
                    let waited = Instant::now();
                    let done = correct(&due, &sinks, &mut batch, shutdown).await?
                        && sinks.flush(std::mem::take(&mut batch), shutdown).await?;
                    note_stall(&mut operator, waited);
                    if !done {
                        return Ok(());
                    }
                }
                report(&operator, &owned);
            }
            _ = checkpoint_tick.tick() => {
                let waited = Instant::now();
                let landed = sinks.flush(std::mem::take(&mut batch), shutdown).await?;
                note_stall(&mut operator, waited);
                if !landed {
                    return Ok(());
                }
                pending = 0;
                let waited = Instant::now();
                let all: Vec<i32> = owned.iter().copied().collect();
                let saved = checkpoint(&checkpoints, &operator, config, &all, &next_offsets, shutdown).await?;
                note_stall(&mut operator, waited);
                if !saved {
                    return Ok(());
                }
            }
            Some(handover) = handovers.recv() => {
                let waited = Instant::now();
                match handover {
                    Handover::Assign(taken) => {
                        if !ownership.take(&taken, false, &mut operator, &mut next_offsets, shutdown).await? {
                            return Ok(());
                        }
                        owned.extend(&taken);
                        metrics::counter!(HANDOVERS, "kind" => "assigned").increment(taken.len() as u64);
                    }
                    Handover::Revoke(given) => {
                        // Land every output so far and checkpoint what goes, then let it go: the
                        // next owner resumes exactly here.
                        if !sinks.flush(std::mem::take(&mut batch), shutdown).await? {
                            return Ok(());
                        }
                        pending = 0;
                        if !checkpoint(&checkpoints, &operator, config, &given, &next_offsets, shutdown).await? {
                            return Ok(());
                        }
                        for p in &given {
                            operator.drop_partition(*p);
                            next_offsets.remove(p);
                            owned.remove(p);
                        }
                        ownership.release(&given)?;
                        metrics::counter!(HANDOVERS, "kind" => "revoked").increment(given.len() as u64);
                    }
                    Handover::Lost(lost) => {
                        // Another instance may own these already: no checkpoint, and no output not
                        // yet landed may be written after its own. The partitions kept go back to
                        // their checkpoints, since their unlanded outputs are dropped too.
                        tracing::warn!(partitions = ?lost, "partitions lost without a revocation; unlanded outputs dropped, the rest rewound to their checkpoints");
                        batch = Batch::default();
                        pending = 0;
                        for p in &lost {
                            operator.drop_partition(*p);
                            next_offsets.remove(p);
                            owned.remove(p);
                        }
                        ownership.release(&lost)?;
                        let kept: Vec<i32> = owned.iter().copied().collect();
                        if !ownership.take(&kept, true, &mut operator, &mut next_offsets, shutdown).await? {
                            return Ok(());
                        }
                        metrics::counter!(HANDOVERS, "kind" => "lost").increment(lost.len() as u64);
                    }
                }
                note_stall(&mut operator, waited);
                metrics::gauge!(OWNED_PARTITIONS).set(owned.len() as f64);
            }
            Some(query) = queries.recv() => {
                let _ = query.reply.send(operator.candles_of(&query.instrument));
            }
            () = shutdown.triggered() => {
                // Stop intake, land what was produced, checkpoint, leave.
                let landed = sinks.flush(std::mem::take(&mut batch), &Shutdown::new()).await?;
                if landed {
                    let all: Vec<i32> = owned.iter().copied().collect();
                    checkpoint(&checkpoints, &operator, config, &all, &next_offsets, &Shutdown::new()).await?;
                }
                // Rebalances while the consumer closes are applied by the callback itself.
                handovers.close();
                tracing::info!("stopped consuming; outputs flushed and checkpointed");
                if agg.partitions.is_empty() {
                    // Hand the partitions on now, not after the session timeout.
                    kafka::leave_group(&consumer, Duration::from_secs(5)).await;
                    tracing::info!("left the consumer group");
                }
                return Ok(());
            }
        }
    }
}

/// Recomputes each due window from the stored trades into `batch`, with a revision above the
/// stored one. `Ok(false)`: shutdown came first (nothing of it may be checkpointed).
async fn correct(
    due: &[Correction],
    sinks: &Sinks,
    batch: &mut Batch,
    shutdown: &Shutdown,
) -> Result<bool> {
    let now = now_micros();
    for correction in due {
        let key = &correction.key;
        let interval = correction.interval.as_str();
        let Some(store) = &sinks.trades else {
            metrics::counter!(CORRECTIONS, "interval" => interval.to_string(), "outcome" => CORRECTION_NO_TRADE_STORE).increment(1);
            tracing::warn!(instrument = %key.instrument, interval, window_start = key.start, "window beyond the allowed lateness not recomputed: aggregator.write_trades is off, so no trades are stored to recompute it from");
            continue;
        };
        let end = key.start + key.length;
        if end <= now.saturating_sub(TRADES_TTL) {
            metrics::counter!(CORRECTIONS, "interval" => interval.to_string(), "outcome" => CORRECTION_BEYOND_TTL).increment(1);
            tracing::warn!(instrument = %key.instrument, interval, window_start = key.start, "window beyond the allowed lateness not recomputed: older than the stored trades' TTL");
            continue;
        }
        let Some(trades) = retry::until_ok(
            "read trades to correct a window",
            RetryPolicy::DEPENDENCY,
            shutdown,
            || store.range(&key.instrument, key.start, end),
        )
        .await
        else {
            return Ok(false);
        };
        let candles = match recompute(correction, &trades) {
            Ok(c) => c,
            Err(detail) => {
                metrics::counter!(CORRECTIONS, "interval" => interval.to_string(), "outcome" => CORRECTION_OVERFLOW).increment(1);
                tracing::error!(instrument = %key.instrument, interval, window_start = key.start, detail, "window beyond the allowed lateness not recomputed");
                continue;
            }
        };
        for mut candle in candles {
            let Some(stored) = retry::until_ok(
                "read a candle's revision",
                RetryPolicy::DEPENDENCY,
                shutdown,
                || sinks.candles.stored_revision(&candle),
            )
            .await
            else {
                return Ok(false);
            };
            candle.revision = stored.map_or(0, |r| r.saturating_add(1));
            metrics::counter!(CANDLES_EMITTED, "kind" => Emission::Recomputed.label()).increment(1);
            batch.add_candle(candle);
        }
        metrics::counter!(CORRECTIONS, "interval" => interval.to_string(), "outcome" => CORRECTION_RECOMPUTED).increment(1);
        tracing::info!(instrument = %key.instrument, interval, window_start = key.start, trades = trades.len(), "window recomputed from the stored trades after a trade beyond the allowed lateness");
    }
    Ok(true)
}

/// Moves the operator's outputs into `batch`; `true` if a window's first final value is among
/// them (it lands at once rather than at the next tick; corrections wait for the tick).
fn collect(outputs: &mut Vec<Output>, batch: &mut Batch) -> bool {
    let mut finals = false;
    for output in outputs.drain(..) {
        match output {
            Output::Candle(c, emission) => {
                metrics::counter!(CANDLES_EMITTED, "kind" => emission.label()).increment(1);
                finals |= matches!(emission, Emission::Final);
                batch.add_candle(c);
            }
            Output::TooLate { trade, watermark } => {
                metrics::counter!(LATE_DROPPED, "exchange" => trade.exchange.clone()).increment(1);
                tracing::debug!(instrument = %trade.instrument, event_time = trade.event_time, watermark, "trade beyond allowed lateness");
                batch.late.push((trade, "too_late"));
            }
            Output::Rejected { trade, reason } => {
                metrics::counter!(REJECTED, "reason" => reason).increment(1);
                tracing::warn!(instrument = %trade.instrument, trade_id = %trade.trade_id, reason, "trade cannot be aggregated");
                batch.late.push((trade, reason));
            }
        }
    }
    finals
}

/// Waits of the loop (a sink, a checkpoint, the registry) longer than this are time the input
/// was not read, and do not count towards a partition's idle timeout.
const STALL: Duration = Duration::from_millis(100);

fn note_stall(operator: &mut Aggregator, since: Instant) {
    let waited = since.elapsed();
    if waited >= STALL {
        operator.exclude_stall(i64::try_from(waited.as_micros()).unwrap_or(i64::MAX));
    }
}

fn input_error(reason: &'static str, partition: i32, offset: i64, detail: &str) {
    metrics::counter!(INPUT_ERRORS, "reason" => reason).increment(1);
    tracing::warn!(reason, partition, offset, detail, "input record skipped");
}

fn report(operator: &Aggregator, partitions: &BTreeSet<i32>) {
    metrics::gauge!(OPEN_WINDOWS).set(operator.open_windows() as f64);
    metrics::gauge!(PENDING_CORRECTIONS).set(operator.pending_corrections() as f64);
    let (mut active, mut idle) = (0, 0);
    for &p in partitions {
        let (a, i) = operator.sources(p);
        active += a;
        idle += i;
    }
    metrics::gauge!(SOURCES, "state" => "active").set(active as f64);
    metrics::gauge!(SOURCES, "state" => "idle").set(idle as f64);
    let now = now_micros();
    for &p in partitions {
        if let Some(w) = operator.watermark(p).filter(|w| *w > Micros::MIN) {
            metrics::gauge!(WATERMARK_LAG, "partition" => p.to_string())
                .set((now - w) as f64 / 1e6);
        }
    }
}

async fn checkpoint(
    store: &CheckpointStore,
    operator: &Aggregator,
    config: &Config,
    partitions: &[i32],
    next_offsets: &BTreeMap<i32, i64>,
    shutdown: &Shutdown,
) -> Result<bool> {
    let started = Instant::now();
    let mut bytes = 0usize;
    for &p in partitions {
        // A partition that has not delivered a record yet keeps its previous checkpoint (if any).
        let Some(&next_offset) = next_offsets.get(&p) else {
            continue;
        };
        let state = operator.snapshot(p).map_err(|e| {
            Error::Config(format!("cannot serialize the state of partition {p}: {e}"))
        })?;
        bytes += state.len();
        let cp = Checkpoint {
            next_offset,
            state,
            state_format: STATE_FORMAT,
        };
        let agg = &config.aggregator;
        let saved = retry::until_ok("save checkpoint", RetryPolicy::DEPENDENCY, shutdown, || {
            store.save(&agg.operator_id, &agg.input_topic, p, &cp)
        })
        .await;
        if saved.is_none() {
            return Ok(false);
        }
    }
    metrics::histogram!(CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::gauge!(CHECKPOINT_BYTES).set(bytes as f64);
    Ok(true)
}
