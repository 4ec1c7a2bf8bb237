//! The async loop around the pure operator: read trades from the owned input partitions, feed
//! the operator, land its outputs, commit input offsets, export gauges.
//!
//! Restart: for each partition, reading starts `replay_ms` before the committed offset (by
//! record time) and the records before the committed offset rebuild the lookback and the
//! data-quality state without publishing. Offsets are committed only after the outputs of the
//! records before them have landed; the outputs replayed after a crash are the same keyed
//! records and upserts again, so the effect is that of a run without the crash.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::cassandra::FairPriceStore;
use tickflow_shared::domain::{now_micros, Trade};
use tickflow_shared::error::Error;
use tickflow_shared::fairprice::{AnomalyKind, Trigger};
use tickflow_shared::kafka;
use tickflow_shared::retry::{self, RetryPolicy};
use tickflow_shared::service::CassandraHandle;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tickflow_shared::watermark;
use tickflow_shared::Result;

use crate::api::Latest;
use crate::config::Config;
use crate::metrics::*;
use crate::operator::{Operator, Output};
use crate::sink::{Batch, Sinks};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the once-a-second lag query may wait for the broker before it is skipped.
const LAG_TIMEOUT: Duration = Duration::from_secs(1);

/// Where each owned partition starts, and where its publishing resumes.
struct Position {
    start: Offset,
    /// Records before this offset were already processed by a previous run: replay only.
    resume: i64,
}

/// Runs until shutdown. Returns an error only for what needs a human (missing tables).
pub async fn run(
    config: &Config,
    registry: &Registry,
    cassandra: Option<&CassandraHandle>,
    labels: InstrumentLabels,
    latest: Arc<Latest>,
    shutdown: &Shutdown,
) -> Result<()> {
    let fp = &config.fair_price;
    let store = if let Some(cassandra) = cassandra.filter(|_| fp.write_cassandra) {
        let Some(session) = cassandra.session(shutdown).await else {
            return Ok(());
        };
        let keyspace = &config.cassandra.keyspace;
        Some(
            FairPriceStore::new(session, keyspace)
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "{e}\nhint: apply the Cassandra migrations first: `tickflow-admin migrate` (keyspace {keyspace})"
                    ))
                })?,
        )
    } else {
        None
    };
    let codec = Arc::new(AvroCodec::new(
        registry,
        &[
            (fp.output_topic.as_str(), avro::FAIR_PRICE),
            (fp.anomalies_topic.as_str(), avro::ANOMALY),
        ],
    ));
    let sinks = Sinks {
        store,
        producer: kafka::producer(&config.kafka, "fair-price")?,
        codec: codec.clone(),
        prices_topic: fp.output_topic.clone(),
        anomalies_topic: fp.anomalies_topic.clone(),
        max_in_flight: fp.max_in_flight,
    };

    let consumer: StreamConsumer =
        kafka::stream_consumer(&config.kafka, "fair-price", &fp.group_id)?;
    let Some(partitions) = kafka::topic_partitions(&consumer, &fp.input_topic, shutdown).await
    else {
        return Ok(());
    };
    let Some(positions) = retry::until_ok(
        "find start offsets",
        RetryPolicy::DEPENDENCY,
        shutdown,
        || async { positions(&consumer, &fp.input_topic, &partitions, fp.replay_ms) },
    )
    .await
    else {
        return Ok(());
    };

    let mut operator = Operator::new(fp.settings());
    let mut assignment = TopicPartitionList::new();
    let mut resume: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, pos) in &positions {
        assignment
            .add_partition_offset(&fp.input_topic, p, pos.start)
            .map_err(Error::Kafka)?;
        let replays = match pos.start {
            Offset::Offset(o) => o < pos.resume,
            _ => false,
        };
        if replays {
            operator.set_replaying(p, true);
            resume.insert(p, pos.resume);
        }
        tracing::info!(partition = p, start = ?pos.start, resume = pos.resume, replays, "partition position");
    }
    consumer.assign(&assignment)?;
    tracing::info!(topic = %fp.input_topic, partitions = ?partitions, replaying = resume.len(), "consuming");

    let mut batch = Batch::default();
    let mut outputs = Vec::new();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut uncommitted = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    let mut anomaly_gauges = HashSet::new();
    // Flushes always finish, even when shutdown comes in the middle (the service's shutdown
    // deadline bounds them): a half-landed batch would make the next run's replay the only copy.
    let never = Shutdown::new();

    loop {
        tokio::select! {
            // Ticks before records, so a steady stream cannot starve them.
            biased;
            () = shutdown.triggered() => {
                operator.advance(now_micros(), &mut outputs);
                collect(&mut outputs, &mut batch, None, &labels, &latest);
                if sinks.flush(std::mem::take(&mut batch), &never).await? {
                    commit(&consumer, &fp.input_topic, &next_offsets);
                    let _ = tokio::task::block_in_place(|| {
                        rdkafka::producer::Producer::flush(&sinks.producer, KAFKA_TIMEOUT)
                    });
                }
                tracing::info!("stopped consuming; outputs landed and offsets committed");
                return Ok(());
            }
            _ = tick.tick() => {
                operator.advance(now_micros(), &mut outputs);
                collect(&mut outputs, &mut batch, None, &labels, &latest);
                let waited = Instant::now();
                sinks.flush(std::mem::take(&mut batch), &never).await?;
                note_stall(&mut operator, waited);
                if uncommitted {
                    commit(&consumer, &fp.input_topic, &next_offsets);
                    uncommitted = false;
                }
            }
            _ = gauges.tick() => {
                report(&operator, &labels, &mut anomaly_gauges);
                lag(&consumer, &fp.input_topic, &next_offsets);
            }
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
                if resume.get(&partition).is_some_and(|r| offset >= *r) {
                    resume.remove(&partition);
                    operator.set_replaying(partition, false);
                    tracing::info!(partition, offset, "replay done; publishing");
                }
                let replaying = resume.contains_key(&partition);
                if !replaying {
                    next_offsets.insert(partition, offset + 1);
                    uncommitted = true;
                }
                let Some(payload) = message.payload() else {
                    input_error(INPUT_EMPTY, partition, offset, "record without a value");
                    continue;
                };
                let trade = match avro::decode_trade_waiting(&codec, payload, shutdown).await {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => {
                        input_error(INPUT_UNDECODABLE, partition, offset, &e.to_string());
                        continue;
                    }
                    None => return Ok(()),
                };
                if !replaying {
                    metrics::counter!(TRADES_IN, "provider" => trade.provider.clone(), "exchange" => trade.exchange.clone(), "instrument" => labels.label(&trade.instrument)).increment(1);
                }
                match watermark::source_header(&message) {
                    Some(source) => operator.on_trade_from(partition, source, &trade, now_micros(), &mut outputs),
                    None => operator.on_trade(partition, &trade, now_micros(), &mut outputs),
                }
                collect(&mut outputs, &mut batch, Some(&trade), &labels, &latest);
                if batch.len() >= fp.max_batch {
                    let waited = Instant::now();
                    sinks.flush(std::mem::take(&mut batch), &never).await?;
                    note_stall(&mut operator, waited);
                }
            }
            // Nothing else ready: what was computed lands now (a price published within
            // milliseconds of the trade that changed it), not at the next tick; under a steady
            // stream the input is rarely empty for long, so outputs still land in batches.
            () = std::future::ready(()), if !batch.is_empty() => {
                let waited = Instant::now();
                sinks.flush(std::mem::take(&mut batch), &never).await?;
                note_stall(&mut operator, waited);
            }
        }
    }
}

fn collect(
    outputs: &mut Vec<Output>,
    batch: &mut Batch,
    trade: Option<&Trade>,
    labels: &InstrumentLabels,
    latest: &Latest,
) {
    for output in outputs.drain(..) {
        match output {
            Output::FairPrice(fp) => {
                let instrument = labels.label(&fp.instrument);
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
                metrics::gauge!(DISPERSION, "instrument" => instrument.clone()).set(fp.dispersion);
                metrics::gauge!(CONFIDENCE, "instrument" => instrument.clone()).set(fp.confidence);
                for e in &fp.sources_excluded {
                    metrics::counter!(EXCLUDED, "provider" => e.provider.clone(), "exchange" => e.exchange.clone(), "instrument" => instrument.clone(), "reason" => e.reason.as_str()).increment(1);
                }
                latest.publish(&fp);
                // The receive time of the trade that caused a change, for the latency histogram.
                let ingest = trade
                    .filter(|t| fp.trigger == Trigger::Change && t.instrument == fp.instrument)
                    .map(|t| t.ingest_time);
                batch.prices.push((fp, ingest));
            }
            Output::Anomaly(a) => {
                metrics::counter!(ANOMALIES, "kind" => a.kind.as_str(), "provider" => a.provider.clone(), "exchange" => a.exchange.clone(), "instrument" => labels.label(&a.instrument)).increment(1);
                tracing::info!(kind = a.kind.as_str(), provider = %a.provider, exchange = %a.exchange, instrument = %a.instrument, observed = a.observed, threshold = a.threshold, detail = %a.detail, "anomaly");
                batch.anomalies.push(a);
            }
        }
    }
}

/// Per-source gauges and the active-anomaly gauges, once a second.
fn report(
    operator: &Operator,
    labels: &InstrumentLabels,
    previously_active: &mut HashSet<(AnomalyKind, String, String, String)>,
) {
    operator.source_stats(|instrument, provider, exchange, age, rate, ratio| {
        let instrument = labels.label(instrument);
        let l = [
            ("provider", provider.to_string()),
            ("exchange", exchange.to_string()),
            ("instrument", instrument),
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
    for key in previously_active.iter().chain(active.iter()) {
        let (kind, provider, exchange, instrument) = key;
        metrics::gauge!(ANOMALY_ACTIVE, "kind" => kind.as_str(), "provider" => provider.clone(), "exchange" => exchange.clone(), "instrument" => labels.label(instrument))
            .set(if active.contains(key) { 1.0 } else { 0.0 });
    }
    *previously_active = active;
}

fn commit(consumer: &StreamConsumer, topic: &str, next_offsets: &BTreeMap<i32, i64>) {
    let mut list = TopicPartitionList::new();
    for (&p, &o) in next_offsets {
        if list
            .add_partition_offset(topic, p, Offset::Offset(o))
            .is_err()
        {
            return;
        }
    }
    if list.count() == 0 {
        return;
    }
    // Progress only: a lost commit means a little more replay after a restart.
    if let Err(e) = consumer.commit(&list, CommitMode::Async) {
        tracing::warn!(error = %e, "offset commit failed; will commit again");
    }
}

/// Consumer lag per partition from the broker's high watermark. The gauge is first set when the
/// start positions are read, so it exists from the start even while a query here times out.
fn lag(consumer: &StreamConsumer, topic: &str, next_offsets: &BTreeMap<i32, i64>) {
    for (&p, &next) in next_offsets {
        match tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, LAG_TIMEOUT)) {
            Ok((_, high)) => set_lag(p, high - next),
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "high watermark not read; lag gauge kept")
            }
        }
    }
}

fn set_lag(partition: i32, lag: i64) {
    metrics::gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag.max(0) as f64);
}

/// Start and resume offsets: `replay_ms` of record time before the committed offset (or before
/// now, for a group that never committed, which then publishes from there).
fn positions(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    replay_ms: u64,
) -> Result<BTreeMap<i32, Position>> {
    let mut wanted = TopicPartitionList::new();
    for &p in partitions {
        wanted.add_partition(topic, p);
    }
    let committed =
        tokio::task::block_in_place(|| consumer.committed_offsets(wanted, KAFKA_TIMEOUT))?;
    let since = (now_micros() / 1000 - i64::try_from(replay_ms).unwrap_or(i64::MAX)).max(0);
    let mut query = TopicPartitionList::new();
    for &p in partitions {
        query
            .add_partition_offset(topic, p, Offset::Offset(since))
            .map_err(Error::Kafka)?;
    }
    let by_time = tokio::task::block_in_place(|| consumer.offsets_for_times(query, KAFKA_TIMEOUT))?;
    let mut out = BTreeMap::new();
    for &p in partitions {
        let (_, high) =
            tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT))?;
        let from_time = match by_time.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            // No record that recent: nothing to replay.
            _ => high,
        };
        let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let resume = committed.unwrap_or(from_time);
        set_lag(p, high - resume);
        out.insert(
            p,
            Position {
                start: Offset::Offset(from_time.min(resume)),
                resume,
            },
        );
    }
    Ok(out)
}

/// Waits of the loop on a sink longer than this are time the input was not read, and do not
/// count as the partitions being idle.
const STALL: Duration = Duration::from_millis(100);

fn note_stall(operator: &mut Operator, since: Instant) {
    let waited = since.elapsed();
    if waited >= STALL {
        operator.exclude_stall(i64::try_from(waited.as_micros()).unwrap_or(i64::MAX));
    }
}

fn input_error(reason: &'static str, partition: i32, offset: i64, detail: &str) {
    metrics::counter!(INPUT_ERRORS, "reason" => reason).increment(1);
    tracing::warn!(reason, partition, offset, detail, "input record skipped");
}
