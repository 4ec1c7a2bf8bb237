//! The async loop around the pure operator: read trades from the owned input partitions, feed
//! the operator, flush its outputs to the sinks, checkpoint state and offsets, answer queries.
//!
//! Exactly-once effect: a checkpoint is written only after every output of the records before it
//! has landed, and it holds each partition's state with the offset of the next record. After a
//! crash the state is restored and reading resumes at that offset; the outputs replayed from
//! there are idempotent upserts of the same values, so the results equal a run without the crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra::{CandleStore, Checkpoint, CheckpointStore, TradeStore};
use tickflow_shared::domain::{now_micros, Candle, Micros};
use tickflow_shared::error::Error;
use tickflow_shared::kafka;
use tickflow_shared::retry::{self, RetryPolicy};
use tickflow_shared::service::CassandraHandle;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tickflow_shared::Result;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::*;
use crate::operator::{Aggregator, Output, STATE_FORMAT};
use crate::sink::{Batch, Sinks};

/// A question to the running operator: the current candles of an instrument.
pub struct Query {
    pub instrument: String,
    pub reply: oneshot::Sender<Vec<Candle>>,
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

    let consumer: StreamConsumer =
        kafka::stream_consumer(&config.kafka, "aggregator", &agg.operator_id)?;
    let Some(partitions) = owned_partitions(&consumer, config, shutdown).await else {
        return Ok(());
    };

    // Restore each owned partition and resume its input where its checkpoint says.
    let mut operator = Aggregator::new(agg.timing()).with_rollups(agg.rollup_intervals());
    let Some(saved) = retry::until_ok(
        "load checkpoints",
        RetryPolicy::DEPENDENCY,
        shutdown,
        || checkpoints.load(&agg.operator_id, &agg.input_topic),
    )
    .await
    else {
        return Ok(());
    };
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let offset = match saved.get(&p) {
            Some(cp) if cp.state_format == STATE_FORMAT => {
                operator.restore(p, &cp.state, now_micros()).map_err(|e| {
                    Error::Config(format!("checkpoint of partition {p} is unreadable: {e}"))
                })?;
                next_offsets.insert(p, cp.next_offset);
                Offset::Offset(cp.next_offset)
            }
            Some(cp) => {
                return Err(Error::Config(format!(
                "checkpoint of partition {p} has state format {} (this build reads {STATE_FORMAT})",
                cp.state_format
            )))
            }
            None => Offset::Beginning,
        };
        assignment
            .add_partition_offset(&agg.input_topic, p, offset)
            .map_err(Error::Kafka)?;
    }
    consumer.assign(&assignment)?;
    tracing::info!(topic = %agg.input_topic, partitions = ?partitions, restored = saved.len(), "consuming");

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
                        tracing::warn!(error = %e, "kafka consumer error");
                        continue;
                    }
                };
                let partition = message.partition();
                let offset = message.offset();
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
                operator.on_trade(partition, &trade, now_micros(), &mut outputs);
                collect(&mut outputs, &mut batch);
                if sinks.trades.is_some() {
                    batch.trades.push(trade);
                }
                pending += 1;
                if pending >= agg.max_batch {
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
                report(&operator, &partitions);
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
                let saved = checkpoint(&checkpoints, &operator, config, &partitions, &next_offsets, shutdown).await?;
                note_stall(&mut operator, waited);
                if !saved {
                    return Ok(());
                }
            }
            Some(query) = queries.recv() => {
                let _ = query.reply.send(operator.candles_of(&query.instrument));
            }
            () = shutdown.triggered() => {
                // Stop intake, land what was produced, checkpoint, leave.
                let landed = sinks.flush(std::mem::take(&mut batch), &Shutdown::new()).await?;
                if landed {
                    checkpoint(&checkpoints, &operator, config, &partitions, &next_offsets, &Shutdown::new()).await?;
                }
                tracing::info!("stopped consuming; outputs flushed and checkpointed");
                return Ok(());
            }
        }
    }
}

fn collect(outputs: &mut Vec<Output>, batch: &mut Batch) {
    for output in outputs.drain(..) {
        match output {
            Output::Candle(c) => {
                let kind = if !c.is_final {
                    "early"
                } else if c.revision > 0 {
                    "late_update"
                } else {
                    "final"
                };
                metrics::counter!(CANDLES_EMITTED, "kind" => kind).increment(1);
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

fn report(operator: &Aggregator, partitions: &[i32]) {
    metrics::gauge!(OPEN_WINDOWS).set(operator.open_windows() as f64);
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

/// The input partitions this instance owns (configured, or all), once the topic exists.
async fn owned_partitions(
    consumer: &StreamConsumer,
    config: &Config,
    shutdown: &Shutdown,
) -> Option<Vec<i32>> {
    let all = kafka::topic_partitions(consumer, &config.aggregator.input_topic, shutdown).await?;
    let configured = &config.aggregator.partitions;
    Some(if configured.is_empty() {
        all
    } else {
        configured
            .iter()
            .copied()
            .filter(|p| all.contains(p))
            .collect()
    })
}
