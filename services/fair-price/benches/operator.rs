//! The fair-price operator alone: 1,000 instruments × 10 sources, default settings (vw_median,
//! 5 s lookback, 100 ms throttle, 1 s heartbeats with the data-quality checks).
//! Target: >= 500,000 trades/s per core.
//!
//!   cargo bench -p fair-price --bench operator
//!
//! Event time runs at 20,000 trades/s (2 trades/s per source), so a run of 200,000 trades covers
//! 10 s of market time: every instrument is recomputed on its throttle and at every heartbeat.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fair_price::config::FairPriceConfig;
use fair_price::operator::Operator;
use rust_decimal::Decimal;
use tickflow_shared::domain::{AssetClass, Trade};
use tickflow_shared::testkit::sample_trade;

const INSTRUMENTS: usize = 1_000;
const SOURCES: usize = 10;
const TRADES: usize = 200_000;
const T0: i64 = 1_763_769_600_000_000;

fn workload() -> Vec<Trade> {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut prices = vec![1_000_000i64; INSTRUMENTS];
    (0..TRADES)
        .map(|i| {
            let r = next();
            let instrument = (r % INSTRUMENTS as u64) as usize;
            let source = ((r >> 16) % SOURCES as u64) as usize;
            prices[instrument] += (r >> 32) as i64 % 21 - 10;
            Trade {
                instrument: format!("I{instrument:04}"),
                asset_class: AssetClass::Crypto,
                provider: format!("p{source}"),
                exchange: format!("x{source}"),
                event_time: T0 + i as i64 * 50,
                price: Decimal::new(prices[instrument] + (r >> 40) as i64 % 50, 2),
                size: Decimal::new(1 + (r >> 48) as i64 % 1_000, 4),
                ..sample_trade()
            }
        })
        .collect()
}

fn operator(c: &mut Criterion) {
    let trades = workload();
    let settings = FairPriceConfig::default().settings();
    let mut group = c.benchmark_group("fair_price_operator");
    group.throughput(Throughput::Elements(TRADES as u64));
    group.sample_size(10);
    group.bench_function("1000_instruments_x_10_sources", |b| {
        b.iter_batched(
            || Operator::new(settings.clone()),
            |mut op| {
                let mut out = Vec::with_capacity(1024);
                let mut published = 0usize;
                for t in &trades {
                    op.on_trade(0, t, 0, &mut out);
                    published += out.len();
                    out.clear();
                }
                published
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, operator);
criterion_main!(benches);
