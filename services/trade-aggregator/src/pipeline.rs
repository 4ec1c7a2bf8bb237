//! The aggregator on the stream runtime ([`tickflow_shared::runtime`]): the window operator,
//! its sinks, and the recomputations a tick runs once every trade read so far has landed.
//!
//! The runtime does consumption, partition ownership (configured in `aggregator.partitions`, or
//! shared by the instances of the consumer group with each partition's state handed over through
//! its checkpoint), checkpoints in Cassandra, delivery and shutdown; see its module doc for the
//! exactly-once argument.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{CandleStore, TradeStore, TRADES_TTL};
use tickflow_shared::avro::{self, AvroCodec, CandleEncoder, Registry};
use tickflow_shared::cassandra::CheckpointStore;
use tickflow_shared::domain::{now_micros, Micros};
use tickflow_shared::error::Error;
use tickflow_shared::kafka;
use tickflow_shared::retry::{self, RetryPolicy};
use tickflow_shared::runtime::{
    self, Checkpoints, Commit, Flushed, Fresh, Inspect, Job, Plan, Record, Sourced, Tp,
};
use tickflow_shared::service::CassandraHandle;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::{Counters, InstrumentLabels};
use tickflow_shared::Result;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::*;
use crate::operator::correction::recompute;
use crate::operator::{Aggregator, Correction, Emission, Output};
use crate::sink::{Batch, Sinks};

/// The runtime's metric names for the aggregator.
pub const RUNTIME_METRICS: runtime::Metrics = runtime::Metrics {
    input_errors: INPUT_ERRORS,
    handovers: HANDOVERS,
    owned_partitions: OWNED_PARTITIONS,
    checkpoint_seconds: CHECKPOINT_SECONDS,
    checkpoint_bytes: CHECKPOINT_BYTES,
    consumer_lag: CONSUMER_LAG,
};

/// The aggregator's side of the runtime: the batch of outputs and where it lands.
struct Windows {
    sinks: Sinks,
    batch: Batch,
    /// `TRADES_IN` by instrument and exchange, its handles cached (counted per trade).
    trades_in: Counters<2>,
}

impl Job for Windows {
    type Operator = Aggregator;

    /// A window's first final value is urgent (it lands as soon as no record waits); early
    /// firings and corrections wait for the tick or the batch size.
    fn collect(&mut self, outputs: &mut Vec<Output>, record: Option<Record<Sourced>>) -> bool {
        let mut finals = false;
        for output in outputs.drain(..) {
            match output {
                Output::Candle(c, emission) => {
                    metrics::counter!(CANDLES_EMITTED, "kind" => emission.label()).increment(1);
                    finals |= matches!(emission, Emission::Final);
                    self.batch.add_candle(c);
                }
                Output::TooLate { trade, watermark } => {
                    metrics::counter!(LATE_DROPPED, "exchange" => trade.exchange.clone())
                        .increment(1);
                    tracing::debug!(instrument = %trade.instrument, event_time = trade.event_time, watermark, "trade beyond allowed lateness");
                    self.batch.late.push((trade, "too_late"));
                }
                Output::Rejected { trade, reason } => {
                    metrics::counter!(REJECTED, "reason" => reason).increment(1);
                    tracing::warn!(instrument = %trade.instrument, trade_id = %trade.trade_id, reason, "trade cannot be aggregated");
                    self.batch.late.push((trade, reason));
                }
            }
        }
        if let Some(record) = record {
            let trade = record.input.trade;
            self.trades_in
                .get([&trade.instrument, &trade.exchange])
                .increment(1);
            if self.sinks.trades.is_some() {
                self.batch.trades.push(trade);
            }
        }
        finals
    }

    async fn flush(&mut self, commit: Commit<'_>, shutdown: &Shutdown) -> Result<Flushed> {
        let landed = self
            .sinks
            .flush(std::mem::take(&mut self.batch), commit.stamp(), shutdown)
            .await?;
        Ok(landed.into())
    }

    fn discard(&mut self) {
        self.batch = Batch::default();
    }

    /// Every trade read so far has landed in Cassandra: due corrections can read them. Their
    /// candles land before the loop goes on, so no checkpoint is written between taking a
    /// correction out of the state and landing its result.
    async fn on_tick(
        &mut self,
        operator: &mut Aggregator,
        stamp: Micros,
        shutdown: &Shutdown,
    ) -> Result<bool> {
        let due = operator.due_corrections(now_micros());
        if due.is_empty() {
            return Ok(true);
        }
        Ok(correct(&due, &self.sinks, &mut self.batch, shutdown).await?
            && self.flush(Commit::Stamp(stamp), shutdown).await? == Flushed::Landed)
    }

    fn report(&mut self, operator: &Aggregator, owned: &BTreeSet<Tp>) {
        metrics::gauge!(OPEN_WINDOWS).set(operator.open_windows() as f64);
        metrics::gauge!(PENDING_CORRECTIONS).set(operator.pending_corrections() as f64);
        let (mut active, mut idle) = (0, 0);
        for tp in owned {
            let (a, i) = operator.sources(tp.partition);
            active += a;
            idle += i;
        }
        metrics::gauge!(SOURCES, "state" => "active").set(active as f64);
        metrics::gauge!(SOURCES, "state" => "idle").set(idle as f64);
        let now = now_micros();
        for tp in owned {
            if let Some(w) = operator
                .watermark(tp.partition)
                .filter(|w| *w > Micros::MIN)
            {
                metrics::gauge!(WATERMARK_LAG, "partition" => tp.partition.to_string())
                    .set((now - w) as f64 / 1e6);
            }
        }
    }
}

/// Runs until shutdown. Returns an error only for what needs a human (missing tables, a
/// checkpoint it cannot read); dependencies that are down are waited for.
pub async fn run(
    config: &Config,
    registry: &Registry,
    cassandra: &CassandraHandle,
    labels: InstrumentLabels,
    queries: mpsc::Receiver<Inspect<Aggregator>>,
    shutdown: &Shutdown,
) -> Result<()> {
    let agg = &config.aggregator;
    let Some(session) = cassandra.session(shutdown).await else {
        return Ok(());
    };
    let keyspace = &config.cassandra.keyspace;
    let missing_tables = |e: Error| Error::NotMigrated {
        keyspace: keyspace.clone(),
        message: e.to_string(),
    };
    let checkpoints = CheckpointStore::new(session.clone(), keyspace)
        .await
        .map_err(missing_tables)?;
    let candles = CandleStore::new(session.clone(), keyspace)
        .await
        .map_err(missing_tables)?;
    let trades = if agg.write_trades {
        Some(
            TradeStore::new(session.clone(), keyspace)
                .await
                .map_err(missing_tables)?,
        )
    } else {
        None
    };
    // Candles are written by `CandleEncoder`; the codec encodes late trades only.
    let codec = Arc::new(AvroCodec::new(
        registry,
        &[(agg.late_topic.as_str(), avro::TRADE)],
    ));
    let mut job = Windows {
        sinks: Sinks {
            candles,
            trades,
            producer: kafka::producer(&config.kafka, "aggregator")?,
            codec: codec.clone(),
            // The schema was registered at start; registering again returns its id.
            candle_encoder: CandleEncoder::registered(registry, &agg.candles_topic).await?,
            candles_topic: agg.candles_topic.clone(),
            late_topic: agg.late_topic.clone(),
            max_in_flight: agg.max_in_flight,
        },
        batch: Batch::default(),
        trades_in: Counters::new(TRADES_IN, ["instrument", "exchange"])
            .with_instrument("instrument", labels),
    };
    let plan = Plan {
        kafka: &config.kafka,
        role: "aggregator",
        group_id: &agg.operator_id,
        instance_id: agg.instance_id(),
        instance_id_key: "aggregator.instance_id",
        topic: &agg.input_topic,
        partitions: &agg.partitions,
        fresh: Fresh::Beginning,
        checkpoint_interval: Duration::from_millis(agg.checkpoint_interval_ms),
        max_batch: agg.max_batch,
        metrics: RUNTIME_METRICS,
    };
    let mut operator = Aggregator::new(agg.timing()).with_rollups(agg.rollup_intervals());
    runtime::run(
        &plan,
        &codec,
        Checkpoints::Cassandra(&checkpoints),
        &mut operator,
        &mut job,
        Some(queries),
        shutdown,
    )
    .await
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
