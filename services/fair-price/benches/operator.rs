//! The fair-price operator alone: 1,000 instruments × 10 sources, default settings (vw_median,
//! 5 s lookback, 100 ms throttle, 1 s heartbeats with the data-quality checks).
//! Target: >= 500,000 trades/s per core.
//!
//!   cargo bench -p fair-price --bench operator
//!
//! Two workloads, both seeded, each measured after the lookback is full (the first 6 s of event
//! time are fed untimed, then the next 2 s are timed):
//! - `dense_500k_per_s`: event time runs at 500,000 trades/s (50 per source per second), the
//!   rate the target names, so a sustained 500,000 trades/s means keeping up with real time.
//!   The lookback holds about 2,500 trades per instrument; each instrument is computed at most
//!   once per throttle (10/s) plus once per heartbeat, about one computation per 45 trades.
//! - `sparse_20k_per_s`: event time runs at 20,000 trades/s (2 per source per second): about
//!   one computation per two trades, each over about 100 trades. The per-trade worst case.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fair_price::config::FairPriceConfig;
use fair_price::operator::Operator;
use rust_decimal::Decimal;
use tickflow_shared::domain::{AssetClass, Trade};
use tickflow_testkit::sample_trade;

/// The source named in the records' header, as the normalizer writes it.
const SOURCE: &str = "md.raw.simulator:0";

const INSTRUMENTS: usize = 1_000;
const SOURCES: usize = 10;
const T0: i64 = 1_763_769_600_000_000;
/// Event time fed before timing starts: the lookback (5 s) plus a heartbeat, so the windows are
/// full and pruning is in its steady state.
const WARM_S: i64 = 6;
/// Event time timed per iteration.
const TIMED_S: i64 = 2;

fn workload(trades_per_s: i64, seconds: i64) -> Vec<Trade> {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let gap_ns = 1_000_000_000 / trades_per_s;
    let names: Vec<String> = (0..INSTRUMENTS).map(|i| format!("I{i:04}")).collect();
    let mut prices = vec![1_000_000i64; INSTRUMENTS];
    (0..trades_per_s * seconds)
        .map(|i| {
            let r = next();
            let instrument = (r % INSTRUMENTS as u64) as usize;
            let source = ((r >> 16) % SOURCES as u64) as usize;
            prices[instrument] += (r >> 32) as i64 % 21 - 10;
            Trade {
                instrument: names[instrument].clone(),
                asset_class: AssetClass::Crypto,
                provider: format!("p{source}"),
                exchange: format!("x{source}"),
                event_time: T0 + i * gap_ns / 1_000,
                price: Decimal::new(prices[instrument] + (r >> 40) as i64 % 50, 2),
                size: Decimal::new(1 + (r >> 48) as i64 % 1_000, 4),
                ..sample_trade()
            }
        })
        .collect()
}

fn bench_rate(c: &mut Criterion, name: &str, trades_per_s: i64) {
    let trades = workload(trades_per_s, WARM_S + TIMED_S);
    let (warm, timed) = trades.split_at((trades_per_s * WARM_S) as usize);
    let settings = FairPriceConfig::default().settings();
    let mut group = c.benchmark_group("fair_price_operator");
    group.throughput(Throughput::Elements(timed.len() as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let mut op = Operator::new(settings.clone());
                let mut out = Vec::with_capacity(1024);
                for t in warm {
                    op.on_trade_from(0, SOURCE, t, 0, &mut out);
                    out.clear();
                }
                let start = Instant::now();
                let mut published = 0usize;
                for t in timed {
                    op.on_trade_from(0, SOURCE, t, 0, &mut out);
                    published += out.len();
                    out.clear();
                }
                elapsed += start.elapsed();
                std::hint::black_box(published);
            }
            elapsed
        })
    });
    group.finish();
}

fn operator(c: &mut Criterion) {
    bench_rate(c, "dense_500k_per_s", 500_000);
    bench_rate(c, "sparse_20k_per_s", 20_000);
}

criterion_group!(benches, operator);
criterion_main!(benches);
