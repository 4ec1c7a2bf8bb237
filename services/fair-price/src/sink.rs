//! Where the operator's outputs go: fair prices to Kafka (key instrument, compacted topic) and
//! Cassandra `fair_prices` + `fair_price_latest`; anomalies to Kafka and Cassandra `anomalies`.
//! Every write is keyed by the result's identity, so writing it again (a replay after a crash)
//! changes nothing; each is retried with backoff until it lands, so while a sink is down the
//! flush waits, consumption pauses and memory stays bounded.

use std::sync::Arc;
use std::time::Instant;

use crate::records::{Anomaly, FairPrice, FairPriceCodec, ANY};
use crate::store::FairPriceStore;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tickflow_shared::avro::AvroCodec;
use tickflow_shared::domain::{now_micros, Micros};
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::Result;
use tickflow_shared::{kafka, runtime};

use crate::metrics::{
    LATENCY, SINK_ANOMALIES_CASSANDRA, SINK_ANOMALIES_KAFKA, SINK_ERRORS, SINK_PRICES_CASSANDRA,
    SINK_PRICES_KAFKA, SINK_WRITE_SECONDS,
};

/// Outputs collected since the last flush.
#[derive(Default)]
pub struct Batch {
    /// Each with the gateway receive time of the trade that caused it, when there was one.
    pub prices: Vec<(FairPrice, Option<Micros>)>,
    pub anomalies: Vec<Anomaly>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty() && self.anomalies.is_empty()
    }

    pub fn len(&self) -> usize {
        self.prices.len() + self.anomalies.len()
    }
}

pub struct Sinks {
    pub store: Option<FairPriceStore>,
    pub producer: FutureProducer,
    pub codec: Arc<AvroCodec>,
    pub prices_topic: String,
    pub anomalies_topic: String,
    pub max_in_flight: usize,
}

impl Sinks {
    /// Lands the batch. `Ok(false)` if shutdown interrupted it (no offset may be committed then).
    pub async fn flush(&self, batch: Batch, shutdown: &Shutdown) -> Result<bool> {
        if batch.is_empty() {
            return Ok(true);
        }
        let started = Instant::now();
        // Kafka first, in order per instrument (one producer, keyed records, idempotence).
        let prices: Vec<&FairPrice> = batch.prices.iter().map(|(fp, _)| fp).collect();
        if !self
            .each(
                &prices,
                SINK_PRICES_KAFKA.0,
                kafka::SENDS_IN_FLIGHT,
                shutdown,
                |fp| self.send_price(fp),
            )
            .await
        {
            return Ok(false);
        }
        let anomalies: Vec<&Anomaly> = batch.anomalies.iter().collect();
        if !self
            .each(
                &anomalies,
                SINK_ANOMALIES_KAFKA.0,
                kafka::SENDS_IN_FLIGHT,
                shutdown,
                |a| self.send_anomaly(a),
            )
            .await
        {
            return Ok(false);
        }
        metrics::histogram!(SINK_WRITE_SECONDS, "sink" => "kafka")
            .record(started.elapsed().as_secs_f64());
        let acked = now_micros();
        for (fp, ingest) in &batch.prices {
            if let Some(t) = fp.newest_event_time {
                metrics::histogram!(LATENCY, "stage" => "event").record(seconds(acked - t));
            }
            if let Some(t) = ingest {
                metrics::histogram!(LATENCY, "stage" => "ingest").record(seconds(acked - t));
            }
        }
        if let Some(store) = &self.store {
            let started = Instant::now();
            if !self
                .each(
                    &prices,
                    SINK_PRICES_CASSANDRA.0,
                    self.max_in_flight,
                    shutdown,
                    |fp| store.upsert(fp),
                )
                .await
            {
                return Ok(false);
            }
            if !self
                .each(
                    &anomalies,
                    SINK_ANOMALIES_CASSANDRA.0,
                    self.max_in_flight,
                    shutdown,
                    |a| store.insert_anomaly(a),
                )
                .await
            {
                return Ok(false);
            }
            metrics::histogram!(SINK_WRITE_SECONDS, "sink" => "cassandra")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(true)
    }

    async fn send_price(&self, fp: &FairPrice) -> Result<()> {
        let bytes = self.codec.encode_fair_price(&self.prices_topic, fp).await?;
        self.send(&self.prices_topic, &fp.instrument, bytes).await
    }

    async fn send_anomaly(&self, a: &Anomaly) -> Result<()> {
        let bytes = self.codec.encode_anomaly(&self.anomalies_topic, a).await?;
        let key = if a.instrument == ANY {
            format!("{}/{}", a.provider, a.exchange)
        } else {
            a.instrument.clone()
        };
        self.send(&self.anomalies_topic, &key, bytes).await
    }

    async fn send(&self, topic: &str, key: &str, bytes: Vec<u8>) -> Result<()> {
        let record = FutureRecord::to(topic).key(key).payload(&bytes);
        match self
            .producer
            .send(record, rdkafka::util::Timeout::Never)
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.into()),
        }
    }

    /// Lands every item with `write` ([`runtime::land_each`]).
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
        runtime::land_each(items, sink, SINK_ERRORS, in_flight, shutdown, write).await
    }
}

fn seconds(us: Micros) -> f64 {
    us.max(0) as f64 / 1e6
}
