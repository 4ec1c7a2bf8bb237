//! fair-price on the stream runtime ([`tickflow_shared::runtime`]): the fair-price operator, its
//! sinks (Kafka, then Cassandra), and the gauges. (The query API reads what is published back
//! from the output topic: [`crate::query_feed`].)
//!
//! The runtime does consumption, partition ownership (configured in `fair_price.partitions`, or
//! shared by the instances of the consumer group `fair_price.group_id`, each partition's lookback
//! and data-quality state handed over through its checkpoint), delivery and shutdown; see its
//! module doc. With `write_cassandra` on (the default) each partition's state and next offset are
//! checkpointed in Cassandra after its outputs have landed, so a restart or a new owner goes on
//! exactly where the last one stopped. With it off no state is kept: the group's committed
//! offsets are the progress, and a partition starts `replay_ms` before them, rebuilding its state
//! without publishing. Either way the outputs published again after a crash are the same keyed
//! records, so the effect is that of a run without the crash.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::records::{AnomalyKind, Trigger};
use crate::store::FairPriceStore;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra::CheckpointStore;
use tickflow_shared::error::Error;
use tickflow_shared::kafka;
use tickflow_shared::runtime::{
    self, Checkpoints, Commit, Flushed, Fresh, Job, Plan, Record, Sourced, Tp,
};
use tickflow_shared::service::CassandraHandle;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::{Counters, InstrumentLabels};
use tickflow_shared::Result;

use crate::config::Config;
use crate::metrics::*;
use crate::operator::{Operator, Output};
use crate::sink::{Batch, Sinks};

/// The runtime's metric names for fair-price.
pub const RUNTIME_METRICS: runtime::Metrics = runtime::Metrics {
    input_errors: INPUT_ERRORS,
    handovers: HANDOVERS,
    owned_partitions: OWNED_PARTITIONS,
    checkpoint_seconds: CHECKPOINT_SECONDS,
    checkpoint_bytes: CHECKPOINT_BYTES,
    consumer_lag: CONSUMER_LAG,
};

/// fair-price's side of the runtime: the batch and where it lands.
struct Prices {
    sinks: Sinks,
    batch: Batch,
    labels: InstrumentLabels,
    /// `TRADES_IN` by provider, exchange and instrument, its handles cached (counted per trade).
    trades_in: Counters<3>,
    /// The anomalies active at the last report, to clear their gauges when they end.
    active: HashSet<(AnomalyKind, String, String, String)>,
}

impl Job for Prices {
    type Operator = Operator;

    /// Every output is urgent: a changed price lands within milliseconds of its trade.
    fn collect(&mut self, outputs: &mut Vec<Output>, record: Option<Record<Sourced>>) -> bool {
        if let Some(r) = record.as_ref().filter(|r| !r.replaying) {
            let t = &r.input.trade;
            self.trades_in
                .get([&t.provider, &t.exchange, &t.instrument])
                .increment(1);
        }
        let trade = record.as_ref().map(|r| &r.input.trade);
        let any = !outputs.is_empty();
        for output in outputs.drain(..) {
            match output {
                Output::FairPrice(fp) => {
                    let instrument = self.labels.label(&fp.instrument);
                    metrics::counter!(PUBLISHED, "instrument" => instrument.clone(), "trigger" => fp.trigger.as_str()).increment(1);
                    if let Some(p) = fp
                        .price
                        .and_then(|p| rust_decimal::prelude::ToPrimitive::to_f64(&p))
                    {
                        metrics::gauge!(PRICE, "instrument" => instrument.clone()).set(p);
                    }
                    metrics::gauge!(STALE, "instrument" => instrument.clone()).set(if fp.stale {
                        1.0
                    } else {
                        0.0
                    });
                    metrics::gauge!(ACTIVE_SOURCES, "instrument" => instrument.clone())
                        .set(fp.sources_used.len() as f64);
                    metrics::gauge!(DISPERSION, "instrument" => instrument.clone())
                        .set(fp.dispersion);
                    metrics::gauge!(CONFIDENCE, "instrument" => instrument.clone())
                        .set(fp.confidence);
                    for e in &fp.sources_excluded {
                        metrics::counter!(EXCLUDED, "provider" => e.provider.clone(), "exchange" => e.exchange.clone(), "instrument" => instrument.clone(), "reason" => e.reason.as_str()).increment(1);
                    }
                    // The receive time of the trade that caused a change, for the latency
                    // histogram.
                    let ingest = trade
                        .filter(|t| fp.trigger == Trigger::Change && t.instrument == fp.instrument)
                        .map(|t| t.ingest_time);
                    self.batch.prices.push((fp, ingest));
                }
                Output::Anomaly(a) => {
                    metrics::counter!(ANOMALIES, "kind" => a.kind.as_str(), "provider" => a.provider.clone(), "exchange" => a.exchange.clone(), "instrument" => self.labels.label(&a.instrument)).increment(1);
                    tracing::info!(kind = a.kind.as_str(), provider = %a.provider, exchange = %a.exchange, instrument = %a.instrument, observed = a.observed, threshold = a.threshold, detail = %a.detail, "anomaly");
                    self.batch.anomalies.push(a);
                }
            }
        }
        any
    }

    /// Needs no stamp: `fair_price_latest` is written at the price's own instant, and every
    /// other row is keyed by its instant with the same value whoever writes it.
    async fn flush(&mut self, _commit: Commit<'_>, shutdown: &Shutdown) -> Result<Flushed> {
        let landed = self
            .sinks
            .flush(std::mem::take(&mut self.batch), shutdown)
            .await?;
        Ok(landed.into())
    }

    fn discard(&mut self) {
        self.batch = Batch::default();
    }

    /// Per-source gauges and the active-anomaly gauges.
    fn report(&mut self, operator: &Operator, _owned: &BTreeSet<Tp>) {
        let labels = &self.labels;
        operator.source_stats(|instrument, provider, exchange, age, rate, ratio| {
            let l = [
                ("provider", provider.to_string()),
                ("exchange", exchange.to_string()),
                ("instrument", labels.label(instrument)),
            ];
            if age.is_finite() {
                metrics::gauge!(SOURCE_AGE, &l).set(age);
            }
            metrics::gauge!(SOURCE_RATE, &l).set(rate);
            if let Some(r) = ratio {
                metrics::gauge!(SOURCE_RATIO, &l).set(r);
            }
        });
        let active: HashSet<_> = operator.active_anomalies().into_iter().collect();
        for key in self.active.iter().chain(active.iter()) {
            let (kind, provider, exchange, instrument) = key;
            metrics::gauge!(ANOMALY_ACTIVE, "kind" => kind.as_str(), "provider" => provider.clone(), "exchange" => exchange.clone(), "instrument" => labels.label(instrument))
                .set(if active.contains(key) { 1.0 } else { 0.0 });
        }
        self.active = active;
    }
}

/// Runs until shutdown. Returns an error only for what needs a human (missing tables, a
/// checkpoint it cannot read).
pub async fn run(
    config: &Config,
    registry: &Registry,
    cassandra: Option<&CassandraHandle>,
    labels: InstrumentLabels,
    shutdown: &Shutdown,
) -> Result<()> {
    let fp = &config.fair_price;
    let (store, checkpoints) = if let Some(cassandra) = cassandra.filter(|_| fp.write_cassandra) {
        let Some(session) = cassandra.session(shutdown).await else {
            return Ok(());
        };
        let keyspace = &config.cassandra.keyspace;
        let missing_tables = |e: Error| Error::NotMigrated {
            keyspace: keyspace.clone(),
            message: e.to_string(),
        };
        (
            Some(
                FairPriceStore::new(session.clone(), keyspace)
                    .await
                    .map_err(missing_tables)?,
            ),
            Some(
                CheckpointStore::new(session, keyspace)
                    .await
                    .map_err(missing_tables)?,
            ),
        )
    } else {
        (None, None)
    };
    let codec = Arc::new(AvroCodec::new(
        registry,
        &[
            (fp.output_topic.as_str(), avro::FAIR_PRICE),
            (fp.anomalies_topic.as_str(), avro::ANOMALY),
        ],
    ));
    let mut job = Prices {
        sinks: Sinks {
            store,
            producer: kafka::producer(&config.kafka, "fair-price")?,
            codec: codec.clone(),
            prices_topic: fp.output_topic.clone(),
            anomalies_topic: fp.anomalies_topic.clone(),
            max_in_flight: fp.max_in_flight,
        },
        batch: Batch::default(),
        trades_in: Counters::new(TRADES_IN, ["provider", "exchange", "instrument"])
            .with_instrument("instrument", labels.clone()),
        labels,
        active: HashSet::new(),
    };
    let plan = Plan {
        kafka: &config.kafka,
        role: "fair-price",
        group_id: &fp.group_id,
        instance_id: fp.instance_id(),
        instance_id_key: "fair_price.instance_id",
        topic: &fp.input_topic,
        partitions: &fp.partitions,
        fresh: Fresh::Replay {
            replay_ms: fp.replay_ms,
        },
        checkpoint_interval: Duration::from_millis(fp.checkpoint_interval_ms),
        max_batch: fp.max_batch,
        metrics: RUNTIME_METRICS,
    };
    let checkpoints = match &checkpoints {
        Some(store) => Checkpoints::Cassandra(store),
        None => Checkpoints::None,
    };
    let mut operator = Operator::new(fp.settings());
    runtime::run(
        &plan,
        &codec,
        checkpoints,
        &mut operator,
        &mut job,
        None,
        shutdown,
    )
    .await
}
