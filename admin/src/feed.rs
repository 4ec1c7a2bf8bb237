//! `tickflow-admin feed-trades`: random-walk trades straight on md.trades, to drive the
//! aggregator and fair-price without the gateway and the normalizer.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use rust_decimal::Decimal;
use tickflow_shared::avro::{self, AvroCodec, Registry};
use tickflow_shared::config::{KafkaConfig, RegistryConfig};
use tickflow_shared::domain::{now_micros, AssetClass, Side, Trade};
use tickflow_shared::kafka::{self, names, TopicSpec};
use tickflow_shared::Result;

const VENUES: [&str; 3] = ["coinbase", "kraken", "binance"];

/// Waits for the broker to acknowledge every record sent so far.
async fn confirm(in_flight: &mut Vec<rdkafka::producer::DeliveryFuture>) -> Result<()> {
    for delivery in in_flight.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => {
                return Err(tickflow_shared::Error::Task {
                    task: "producer",
                    message: "closed".into(),
                })
            }
        }
    }
    Ok(())
}

pub async fn run(
    kafka_config: &KafkaConfig,
    registry_config: &RegistryConfig,
    instruments: &[String],
    rate: u32,
    seconds: u64,
) -> Result<()> {
    let admin = kafka::admin(kafka_config)?;
    kafka::ensure_topics(
        &admin,
        &[TopicSpec::new(names::TRADES, 6)],
        &kafka_config.topics,
    )
    .await?;
    let registry = Registry::new(registry_config)?;
    registry.register(names::TRADES, avro::TRADE).await?;
    let codec = AvroCodec::new(&registry, &[(names::TRADES, avro::TRADE)]);
    let producer = kafka::producer(kafka_config, "feed")?;
    let mut rng = StdRng::from_os_rng();
    // Prices in cents, from a plausible level; each step moves at most 0.02 %.
    let mut prices: Vec<i64> = instruments
        .iter()
        .map(|i| match i.as_str() {
            "BTC-USD" => 6_700_000,
            "ETH-USD" => 350_000,
            "SOL-USD" => 15_000,
            _ => rng.random_range(10_000..1_000_000),
        })
        .collect();
    let started = Instant::now();
    let pause = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut sent: u64 = 0;
    let mut in_flight: Vec<rdkafka::producer::DeliveryFuture> = Vec::new();
    println!(
        "feeding {rate} trades/s of {} to {}",
        instruments.join(","),
        names::TRADES
    );
    loop {
        if seconds > 0 && started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        let which = rng.random_range(0..instruments.len().max(1));
        let Some(instrument) = instruments.get(which) else {
            break;
        };
        let step = (prices[which] / 5_000).max(1);
        prices[which] = (prices[which] + rng.random_range(-step..=step)).max(100);
        let venue = VENUES[rng.random_range(0..VENUES.len())];
        let now = now_micros();
        let (base, quote) = instrument
            .split_once('-')
            .unwrap_or((instrument.as_str(), "USD"));
        let trade = Trade {
            instrument: instrument.clone(),
            base: base.into(),
            quote: quote.into(),
            asset_class: AssetClass::Crypto,
            exchange: venue.into(),
            provider: "feed".into(),
            provider_symbol: instrument.clone(),
            trade_id: format!("feed-{now}-{sent}"),
            // A venue's price sits a few basis points from the others'.
            price: Decimal::new(prices[which] + rng.random_range(-step..=step) / 4, 2),
            size: Decimal::new(rng.random_range(1..2_000_000), 6),
            side: if rng.random_bool(0.5) {
                Side::Buy
            } else {
                Side::Sell
            },
            event_time: now - rng.random_range(0..300_000),
            ingest_time: now,
            normalized_time: now,
            provider_sequence: None,
        };
        let bytes = codec.encode_trade(names::TRADES, &trade).await?;
        let delivery = producer
            .send_result(
                FutureRecord::to(names::TRADES)
                    .key(&trade.instrument)
                    .payload(&bytes),
            )
            .map_err(|(e, _)| e)?;
        in_flight.push(delivery);
        sent += 1;
        if in_flight.len() >= 100 {
            confirm(&mut in_flight).await?;
        }
        // Paced against the start, so produce latency does not lower the rate.
        let due = started + pause.mul_f64(sent as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
    }
    confirm(&mut in_flight).await?;
    println!("sent {sent} trades");
    Ok(())
}
