//! Parse + validate + Avro encode, per provider format, on one core: the normalizer's CPU work
//! per trade without Kafka. Target: >= 200,000 trades/s per core.
//!
//!   cargo bench -p normalizer --bench normalize
//!
//! `operator` is the normalizing operator's whole work per raw record, as the runtime hands it
//! over: its partition's gap tracker and duplicate filter looked up, the frame parsed, validated
//! and filtered (no Avro encoding, no Kafka).
//!
//! `decode_raw` reads the raw envelopes' Avro bodies both ways, side by side: through
//! apache-avro's generic `Value` tree, and straight from the body (what the codec does for this
//! build's schema).
//!
//! Encoding is the service's own: `TradeEncoder` (schema-aware serde, Confluent header with the
//! registered id), byte-identical to the registry converter's output.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use normalizer::dedup::Dedup;
use normalizer::gaps::{observe_frame, Gaps};
use normalizer::normalize::{normalize, Limits, Outcome, Rules};
use normalizer::operator::{Normalizer, Output, RawRecord, Settings};
use normalizer::reference::Reference;
use rust_decimal::Decimal;
use std::time::Duration;
use tickflow_providers::{Frame, Provider};
use tickflow_shared::avro::{self, TradeEncoder};
use tickflow_shared::domain::RawEnvelope;
use tickflow_shared::instruments::{parse_toml, InstrumentIndex};
use tickflow_shared::proto::feed::{self, server_message, ServerMessage};
use tickflow_shared::proto::Message as _;
use tickflow_shared::runtime::{Operator as _, Taken, Tp};

const FRAMES: usize = 1_000;
const T0_MS: i64 = 1_763_769_600_000;
/// The fixture has no listing for the gRPC feed: one instrument for it.
const GRPC_INSTRUMENT: &str = r#"
[[instrument]]
instrument = "SOL-USD"
base = "SOL"
quote = "USD"
asset_class = "CRYPTO"
listings = [{ provider = "grpc", symbol = "SOL/USD" }]
"#;

fn frame(provider: &dyn Provider, i: usize) -> Vec<u8> {
    let price = format!("67{:03}.{:02}", i % 1000, i % 100);
    let t = T0_MS + i as i64;
    let text = match provider.id().as_str() {
        "binance" => format!(
            r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":{t},"s":"BTCUSDT","t":{i},"p":"{price}","q":"0.00150000","T":{t},"m":true,"M":true}}}}"#
        ),
        "coinbase" => format!(
            r#"{{"type":"match","trade_id":{i},"sequence":{i},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2025-11-22T00:00:00.{:06}Z","product_id":"BTC-USD","size":"0.0015","price":"{price}","side":"sell"}}"#,
            i % 1_000_000
        ),
        "kraken" => format!(
            r#"{{"channel":"trade","type":"update","data":[{{"symbol":"BTC/USD","side":"buy","price":{price},"qty":0.0015,"ord_type":"limit","trade_id":{i},"timestamp":"2025-11-22T00:00:00.{:06}Z"}}]}}"#,
            i % 1_000_000
        ),
        "finnhub" => format!(
            r#"{{"data":[{{"p":{price},"s":"BINANCE:BTCUSDT","t":{t},"v":0.0015,"c":null}}],"type":"trade"}}"#
        ),
        "simulator" => format!(
            r#"{{"type":"trade","venue":"sim-a","symbol":"BTC-USD","trade_id":"sim-a-{i}","price":"{price}","size":"0.0015","side":"buy","ts_us":{},"seq":{i}}}"#,
            t * 1000
        ),
        "grpc" => {
            let trade = feed::Trade {
                symbol: "SOL/USD".into(),
                exchange: Some("xnas".into()),
                trade_id: i.to_string(),
                price,
                size: "0.0015".into(),
                side: feed::Side::Buy as i32,
                event_time_us: t * 1000,
                sequence: Some(i as i64),
                number: None,
            };
            let kind = server_message::Kind::Trade(trade);
            return ServerMessage { kind: Some(kind) }.encode_to_vec();
        }
        other => panic!("no bench frame for provider {other}: add one here"),
    };
    text.into_bytes()
}

/// Limits every bench frame passes.
fn limits() -> Limits {
    Limits {
        max_future: 10_000_000,
        max_age: i64::MAX / 2,
        max_price: Decimal::new(1_000_000_000, 0),
        max_size: Decimal::new(1_000_000_000, 0),
    }
}

/// Frame `i` of `provider` in its raw envelope.
fn envelope(provider: &dyn Provider, i: usize) -> RawEnvelope {
    RawEnvelope {
        provider: provider.id().as_str().into(),
        connection_id: "c".into(),
        sequence: i as i64,
        received_at: T0_MS * 1000 + 1_000_000,
        channel: "trades".into(),
        payload: frame(provider, i),
    }
}

fn bench(c: &mut Criterion) {
    let index = InstrumentIndex::new(
        parse_toml(&format!(
            "{}{GRPC_INSTRUMENT}",
            tickflow_testkit::INSTRUMENTS_FIXTURE
        ))
        .expect("instruments"),
    );
    let limits = limits();
    let encoder = TradeEncoder::new(1).expect("encoder");
    // `parse_validate_gaps`: `parse_validate` plus the gap tracker the pipeline feeds with each
    // numbered trade (consecutive ids here: the cost of following, no gap found).
    for (name, encode, track_gaps) in [
        ("parse_validate_encode", true, false),
        ("parse_validate", false, false),
        ("parse_validate_gaps", false, true),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(FRAMES as u64));
        for &provider in tickflow_providers::ALL {
            let envelopes: Vec<RawEnvelope> = (0..FRAMES).map(|i| envelope(provider, i)).collect();
            group.bench_with_input(
                BenchmarkId::from_parameter(provider.id()),
                &envelopes,
                |b, envelopes| {
                    let mut out = Vec::with_capacity(4);
                    b.iter(|| {
                        // A fresh filter per pass, so every trade is new (as in a live stream).
                        let mut dedup = Dedup::default();
                        let mut gaps = Gaps::default();
                        let mut events = Vec::new();
                        let mut bytes = 0usize;
                        for env in envelopes {
                            out.clear();
                            let rules = Rules {
                                index: &index,
                                limits: &limits,
                                now: env.received_at,
                            };
                            let parsed = provider.parse(&env.payload);
                            if track_gaps {
                                if let Ok(Frame::Trades(trades)) = &parsed {
                                    observe_frame(&mut gaps, provider, env, trades, &mut events);
                                    assert!(events.is_empty(), "consecutive ids: {events:?}");
                                }
                            }
                            normalize(provider, env, parsed, rules, &mut dedup, &mut out);
                            for outcome in out.drain(..) {
                                let Outcome::Trade(trade) = outcome else {
                                    panic!("bench input must be valid: {outcome:?}")
                                };
                                if encode {
                                    bytes += encoder.encode(&trade).expect("encode").len();
                                } else {
                                    bytes += trade.trade_id.len();
                                }
                            }
                        }
                        bytes
                    });
                },
            );
        }
        group.finish();
    }
}

/// The raw envelopes' bodies read through the `Value` tree and straight, side by side.
fn decode_raw(c: &mut Criterion) {
    let schema = avro::RAW_ENVELOPE
        .parse()
        .expect("the RawEnvelope schema parses");
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    let provider = tickflow_providers::ALL
        .iter()
        .copied()
        .find(|p| p.id().as_str() == "simulator")
        .expect("the simulator");
    let bodies: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| {
            let envelope = RawEnvelope {
                provider: "simulator".into(),
                connection_id: "c".into(),
                sequence: i as i64,
                received_at: T0_MS * 1000,
                channel: "trades".into(),
                payload: frame(provider, i),
            };
            writer
                .write_value_to_vec(avro::raw_envelope_to_value(&envelope))
                .expect("encode")
        })
        .collect();
    let mut group = c.benchmark_group("decode_raw");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("value_tree", |b| {
        b.iter(|| {
            bodies
                .iter()
                .map(|body| {
                    let value = reader.read_value(&mut body.as_slice()).expect("read");
                    avro::raw_envelope_from_value(value)
                        .expect("decode")
                        .payload
                        .len()
                })
                .sum::<usize>()
        });
    });
    group.bench_function("body", |b| {
        b.iter(|| {
            bodies
                .iter()
                .map(|body| {
                    avro::raw_envelope_from_body(body)
                        .expect("decode")
                        .payload
                        .len()
                })
                .sum::<usize>()
        });
    });
    group.finish();
}

/// The operator's work per raw record, frames of each provider over two raw partitions.
fn operator(c: &mut Criterion) {
    let index = InstrumentIndex::new(
        parse_toml(&format!(
            "{}{GRPC_INSTRUMENT}",
            tickflow_testkit::INSTRUMENTS_FIXTURE
        ))
        .expect("instruments"),
    );
    let reference = Reference::fixed(index);
    let partitions = [Tp::new("md.raw.bench", 0), Tp::new("md.raw.bench", 1)];
    let mut group = c.benchmark_group("operator");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for &provider in tickflow_providers::ALL {
        let records: Vec<RawRecord> = (0..FRAMES)
            .map(|i| RawRecord {
                offset: i as i64,
                key: None,
                payload: None,
                envelope: Some(Ok(envelope(provider, i))),
            })
            .collect();
        group.bench_with_input(
            BenchmarkId::from_parameter(provider.id()),
            &records,
            |b, records| {
                let mut out = Vec::with_capacity(4);
                b.iter(|| {
                    // A fresh operator per pass, so every trade is new (as in a live stream).
                    let mut op = Normalizer::new(
                        Settings {
                            limits: limits(),
                            dedup_horizon: 3_600_000_000,
                            sync_interval: Duration::from_secs(3600),
                        },
                        reference.clone(),
                    );
                    let mut trades = 0usize;
                    for (i, record) in records.iter().enumerate() {
                        out.clear();
                        let now = T0_MS * 1000 + 1_000_000;
                        let taken = op.on_record(&partitions[i % 2], record, now, &mut out);
                        assert!(taken == Taken::Yes, "every symbol is known");
                        trades += out
                            .iter()
                            .filter(|o| matches!(o, Output::Outcome(Outcome::Trade(_))))
                            .count();
                    }
                    trades
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench, operator, decode_raw);
criterion_main!(benches);
