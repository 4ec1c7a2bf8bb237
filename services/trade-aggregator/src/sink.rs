//! Where the operator's outputs go: 1-minute candles to Cassandra `candles_1m` and Kafka,
//! roll-ups to Cassandra `candles_rollup` (not to Kafka: the candle topic is 1-minute), trades to
//! Cassandra `trades`, too-late and rejected trades to the late topic. Every write is an
//! idempotent upsert (or a keyed record) retried with backoff until it lands; while a sink is
//! down the flush waits, so consumption pauses and memory stays bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{CandleStore, TradeStore, ONE_MINUTE, PARTITION_BATCH};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tickflow_shared::avro::{AvroCodec, CandleEncoder};
use tickflow_shared::domain::{epoch_day, Candle, Micros, Trade};
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;
use tickflow_shared::{kafka, runtime};

use crate::metrics::{
    SINK_CANDLES, SINK_CANDLES_KAFKA, SINK_ERRORS, SINK_LATE, SINK_TRADES, SINK_WRITE_SECONDS,
};

/// The trades grouped by `trades` partition (instrument, UTC day), in their order, in batches of
/// at most [`PARTITION_BATCH`]: one request per batch instead of one per trade.
fn partition_batches(trades: &[Trade]) -> Vec<Vec<&Trade>> {
    let mut groups: HashMap<(&str, i64), Vec<Vec<&Trade>>> = HashMap::new();
    for trade in trades {
        let batches = groups
            .entry((trade.instrument.as_str(), epoch_day(trade.event_time)))
            .or_default();
        match batches.last_mut() {
            Some(batch) if batch.len() < PARTITION_BATCH => batch.push(trade),
            _ => batches.push(vec![trade]),
        }
    }
    groups.into_values().flatten().collect()
}

/// Header that carries why a trade is on the late topic.
pub const REASON_HEADER: &str = "tickflow.reason";
/// Header of every record on the candle topic: the write stamp its flush was given (decimal
/// microseconds), the same as the candle's Cassandra write timestamp. Of a window's records, the
/// one with the highest stamp is current, whatever their order in the topic: an instance paused
/// past its session timeout may append stale records after its successor's.
pub const STAMP_HEADER: &str = "tickflow.stamp";

/// Outputs collected since the last flush.
#[derive(Default)]
pub struct Batch {
    /// The latest emission of each window (instrument, venue, interval, start): a later one
    /// replaces an earlier one.
    pub candles: BTreeMap<(String, String, String, Micros), Candle>,
    pub late: Vec<(Trade, &'static str)>,
    pub trades: Vec<Trade>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.candles.is_empty() && self.late.is_empty() && self.trades.is_empty()
    }

    pub fn add_candle(&mut self, candle: Candle) {
        self.candles.insert(
            (
                candle.instrument.clone(),
                candle.venue.clone(),
                candle.interval.clone(),
                candle.window_start,
            ),
            candle,
        );
    }
}

pub struct Sinks {
    pub candles: CandleStore,
    pub trades: Option<TradeStore>,
    pub producer: FutureProducer,
    pub codec: Arc<AvroCodec>,
    /// The candle topic's records, written without a `Value` per candle.
    pub candle_encoder: CandleEncoder,
    pub candles_topic: String,
    pub late_topic: String,
    pub max_in_flight: usize,
}

impl Sinks {
    /// Writes the batch, its candles at write timestamp `stamp` (a candle's order is not in its
    /// data: see the runtime's fencing). `Ok(false)` if shutdown interrupted it (nothing may be
    /// checkpointed then).
    pub async fn flush(&self, batch: Batch, stamp: Micros, shutdown: &Shutdown) -> Result<bool> {
        if batch.is_empty() {
            return Ok(true);
        }
        let started = Instant::now();
        if let Some(store) = &self.trades {
            let ok = self
                .each(
                    &partition_batches(&batch.trades),
                    SINK_TRADES.0,
                    self.max_in_flight,
                    shutdown,
                    |group| store.insert_partition(group),
                )
                .await;
            if !ok {
                return Ok(false);
            }
        }
        let candles: Vec<&Candle> = batch.candles.values().collect();
        if !self
            .each(
                &candles,
                SINK_CANDLES.0,
                self.max_in_flight,
                shutdown,
                |c| self.candles.upsert(c, stamp),
            )
            .await
        {
            return Ok(false);
        }
        let one_minute: Vec<&Candle> = candles
            .iter()
            .copied()
            .filter(|c| c.interval == ONE_MINUTE)
            .collect();
        if !self
            .each(
                &one_minute,
                SINK_CANDLES_KAFKA.0,
                kafka::SENDS_IN_FLIGHT,
                shutdown,
                |c| self.send_candle(c, stamp),
            )
            .await
        {
            return Ok(false);
        }
        if !self
            .each(
                &batch.late,
                SINK_LATE.0,
                kafka::SENDS_IN_FLIGHT,
                shutdown,
                |(t, reason)| self.send_late(t, reason),
            )
            .await
        {
            return Ok(false);
        }
        metrics::histogram!(SINK_WRITE_SECONDS, "sink" => "batch")
            .record(started.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Lands every item with `write` ([`runtime::land_each`]), timed by `sink` in
    /// [`SINK_WRITE_SECONDS`] (the whole flush is `sink="batch"`).
    async fn each<'a, T, F, Fut>(
        &self,
        items: &'a [T],
        sink: &'static str,
        in_flight: usize,
        shutdown: &Shutdown,
        write: F,
    ) -> bool
    where
        F: Fn(&'a T) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if items.is_empty() {
            return true;
        }
        let started = Instant::now();
        let landed = runtime::land_each(items, sink, SINK_ERRORS, in_flight, shutdown, write).await;
        metrics::histogram!(SINK_WRITE_SECONDS, "sink" => sink)
            .record(started.elapsed().as_secs_f64());
        landed
    }

    async fn send_candle(&self, candle: &Candle, stamp: Micros) -> Result<()> {
        let bytes = self.candle_encoder.encode(candle)?;
        let stamp = stamp.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: STAMP_HEADER,
            value: Some(&stamp),
        });
        let record = FutureRecord::to(&self.candles_topic)
            .key(&candle.instrument)
            .payload(&bytes)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    async fn send_late(&self, trade: &Trade, reason: &str) -> Result<()> {
        let bytes = self.codec.encode_trade(&self.late_topic, trade).await?;
        let headers = OwnedHeaders::new().insert(Header {
            key: REASON_HEADER,
            value: Some(reason),
        });
        let record = FutureRecord::to(&self.late_topic)
            .key(&trade.instrument)
            .payload(&bytes)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tickflow_testkit::sample_trade;

    use super::*;

    #[test]
    fn trades_are_batched_by_partition_in_order_and_bounded() {
        let day = 86_400_000_000;
        let mut trades = Vec::new();
        for i in 0..100i64 {
            trades.push(Trade {
                instrument: format!("I{}", i % 3),
                trade_id: i.to_string(),
                // Two UTC days for instrument I0.
                event_time: 20_000 * day + if i % 3 == 0 && i > 50 { day } else { 0 } + i,
                ..sample_trade()
            });
        }
        let batches = partition_batches(&trades);
        let mut seen: Vec<&str> = Vec::new();
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= PARTITION_BATCH);
            let key = |t: &Trade| (t.instrument.clone(), epoch_day(t.event_time));
            assert!(batch.iter().all(|t| key(t) == key(batch[0])));
            assert!(batch.windows(2).all(|w| w[0].event_time < w[1].event_time));
            seen.extend(batch.iter().map(|t| t.trade_id.as_str()));
        }
        seen.sort_unstable();
        let mut all: Vec<&str> = trades.iter().map(|t| t.trade_id.as_str()).collect();
        all.sort_unstable();
        assert_eq!(seen, all, "every trade once");
        // I0: 17 trades on each of two days (2 + 2 batches); I1, I2: 33 each (3 + 3).
        assert_eq!(batches.len(), 10);
    }
}
