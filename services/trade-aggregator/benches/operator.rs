//! The window operator alone, no I/O: trades/s through `on_trade` plus the periodic `advance`
//! (firing, purging, early firings), over 1,000 instruments × 3 venues with realistic jitter.
//! Target from issue 5: >= 1,000,000 trades/s on one core.
//!
//!     cargo bench -p trade-aggregator --bench operator

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rust_decimal::Decimal;
use tickflow_shared::domain::{Side, Trade};
use tickflow_shared::testkit::sample_trade;
use trade_aggregator::operator::{Aggregator, Output, Timing};

const TRADES: usize = 200_000;

fn workload() -> Vec<Trade> {
    let venues = ["coinbase", "kraken", "binance"];
    let mut seed: u64 = 42;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..TRADES)
        .map(|i| {
            let r = next();
            Trade {
                instrument: format!("I{:04}", r % 1000),
                exchange: venues[(r >> 10) as usize % 3].into(),
                trade_id: i.to_string(),
                // 100k trades per simulated minute; up to 1 s out of order.
                event_time: 1_763_769_600_000_000 + i as i64 * 600 - (r >> 20) as i64 % 1_000_000,
                price: Decimal::new(6_700_000 + (r >> 30) as i64 % 10_000, 2),
                size: Decimal::new(1 + (r >> 40) as i64 % 100_000, 6),
                side: if r & 1 == 0 { Side::Buy } else { Side::Sell },
                ..sample_trade()
            }
        })
        .collect()
}

fn operator(c: &mut Criterion) {
    let trades = workload();
    let mut group = c.benchmark_group("window_operator");
    group.throughput(Throughput::Elements(TRADES as u64));
    group.sample_size(10);
    group.bench_function("on_trade+advance, 1000 instruments x 3 venues", |b| {
        b.iter(|| {
            let mut op = Aggregator::new(Timing::default());
            let mut out: Vec<Output> = Vec::with_capacity(4096);
            let mut emitted = 0usize;
            for (i, trade) in trades.iter().enumerate() {
                op.on_trade(0, trade, trade.event_time, &mut out);
                if i % 1000 == 999 {
                    op.advance(trade.event_time, &mut out);
                    emitted += out.len();
                    out.clear();
                }
            }
            black_box(emitted)
        })
    });
    group.finish();
}

criterion_group!(benches, operator);
criterion_main!(benches);
