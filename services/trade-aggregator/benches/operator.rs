//! The window operator alone, no I/O: trades/s through `on_trade` plus the periodic `advance`
//! (firing, purging, early firings), over 1,000 instruments × 3 venues with realistic jitter.
//! Target from issue 5: >= 1,000,000 trades/s on one core. Then the candles it emits, encoded
//! for the candle topic both ways: through an Avro `Value` (as before [`CandleEncoder`]) and
//! with the encoder, side by side.
//!
//!     cargo bench -p trade-aggregator --bench operator
//!     cargo bench -p trade-aggregator --bench operator -- encode_candles

use std::hint::black_box;
use tickflow_shared::runtime::TradeOperator as _;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickflow_shared::avro::{self, CandleEncoder};
use tickflow_shared::domain::{Candle, Trade};
use tickflow_testkit::synthetic_trades;
use trade_aggregator::operator::{Aggregator, Output, Timing};

const TRADES: usize = 200_000;

/// 100k trades per simulated minute over 1,000 instruments × 3 venues.
fn workload() -> Vec<Trade> {
    synthetic_trades(TRADES, 1000, 600)
}

/// The raw partitions the benchmark's trades come from.
const SOURCES: [&str; 3] = ["md.raw.a:0", "md.raw.b:0", "md.raw.c:0"];

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
                // As from the normalizer: the source named in a header, one per raw partition.
                let source = SOURCES[i % SOURCES.len()];
                op.on_trade_from(0, source, trade, trade.event_time, &mut out);
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

/// The candles the operator emits over the workload (early firings and finals).
fn candles() -> Vec<Candle> {
    let mut op = Aggregator::new(Timing::default());
    let mut out: Vec<Output> = Vec::new();
    for (i, trade) in workload().iter().enumerate() {
        op.on_trade_from(
            0,
            SOURCES[i % SOURCES.len()],
            trade,
            trade.event_time,
            &mut out,
        );
        if i % 1000 == 999 {
            op.advance(trade.event_time, &mut out);
        }
    }
    out.into_iter()
        .filter_map(|o| match o {
            Output::Candle(c, _) => Some(c),
            _ => None,
        })
        .collect()
}

fn encode_candles(c: &mut Criterion) {
    let candles = candles();
    let schema = avro::CANDLE.parse().expect("the Candle schema");
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("a writer");
    let encoder = CandleEncoder::new(1).expect("encoder");
    let mut group = c.benchmark_group("encode_candles");
    group.throughput(Throughput::Elements(candles.len() as u64));
    group.sample_size(10);
    // The old path's lower bound: the registry converter also resolved the schema per record.
    group.bench_function("avro Value", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for candle in &candles {
                let value = avro::candle_to_value(candle).expect("value");
                bytes += writer.write_value_to_vec(value).expect("encoded").len();
            }
            black_box(bytes)
        })
    });
    group.bench_function("CandleEncoder", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for candle in &candles {
                bytes += encoder.encode(candle).expect("encoded").len();
            }
            black_box(bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, operator, encode_candles);
criterion_main!(benches);
