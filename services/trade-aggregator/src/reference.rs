//! A batch recomputation of the candles, written independently of the streaming operator (no
//! shared window code): sort each window's trades, then fold. Tests compare every streamed
//! candle with it; it is the "recompute it another way" half of those checks.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tickflow_shared::domain::{round_derived, Candle, Micros, Side, Trade, CONSOLIDATED_VENUE};

use crate::operator::Timing;

/// Candles by (instrument, venue, window start).
pub type CandleMap = BTreeMap<(String, String, Micros), Candle>;

/// The final candles of one input partition's trades, in the order the partition holds them,
/// keyed by (instrument, venue, window start): every trade counts, since a trade beyond the
/// allowed lateness has its window recomputed. The trades the streaming operator must call too
/// late (and send to the late topic) are returned apart.
pub fn batch_candles(trades: &[Trade], timing: &Timing) -> (CandleMap, Vec<Trade>) {
    let too_late = classify(trades, timing);
    let all: Vec<&Trade> = trades.iter().collect();
    (fold(&all, timing.window, "1m"), too_late)
}

/// The final roll-up candles of an interval: every trade, grouped directly by the longer window
/// (not through the minutes).
pub fn batch_rollups(trades: &[Trade], length: Micros, label: &str) -> CandleMap {
    let all: Vec<&Trade> = trades.iter().collect();
    fold(&all, length, label)
}

/// The trades that arrive too late, replaying the watermark: per source (provider and exchange,
/// as for records without a source header), the newest event time; the watermark is the
/// smallest of them minus the out-of-orderness, never moving back. No source goes idle here:
/// the input is read without pause.
pub fn classify(trades: &[Trade], timing: &Timing) -> Vec<Trade> {
    let mut newest: BTreeMap<(&str, &str), Micros> = BTreeMap::new();
    let mut watermark = Micros::MIN;
    let mut too_late = Vec::new();
    for trade in trades {
        let end = trade.event_time.div_euclid(timing.window) * timing.window + timing.window;
        if end.saturating_add(timing.allowed_lateness) <= watermark {
            too_late.push(trade.clone());
        }
        let source = newest
            .entry((trade.provider.as_str(), trade.exchange.as_str()))
            .or_insert(trade.event_time);
        *source = (*source).max(trade.event_time);
        if let Some(low) = newest.values().min() {
            watermark = watermark.max(low.saturating_sub(timing.out_of_orderness));
        }
    }
    too_late
}

fn fold(trades: &[&Trade], length: Micros, label: &str) -> CandleMap {
    let mut windows: BTreeMap<(String, String, Micros), Vec<&Trade>> = BTreeMap::new();
    for trade in trades {
        let start = trade.event_time.div_euclid(length) * length;
        for venue in [trade.exchange.as_str(), CONSOLIDATED_VENUE] {
            windows
                .entry((trade.instrument.clone(), venue.to_string(), start))
                .or_default()
                .push(trade);
        }
    }
    windows
        .into_iter()
        .map(|((instrument, venue, start), mut trades)| {
            trades.sort_by(|a, b| {
                (a.event_time, &a.exchange, &a.provider, &a.trade_id).cmp(&(
                    b.event_time,
                    &b.exchange,
                    &b.provider,
                    &b.trade_id,
                ))
            });
            let first = trades[0];
            let last = trades[trades.len() - 1];
            let sum = |f: &dyn Fn(&Trade) -> Decimal| trades.iter().map(|t| f(t)).sum::<Decimal>();
            let volume = sum(&|t| t.size);
            let notional = sum(&|t| t.price * t.size);
            let candle = Candle {
                instrument: instrument.clone(),
                venue: venue.clone(),
                interval: label.into(),
                window_start: start,
                window_end: start + length,
                open: first.price,
                high: trades.iter().map(|t| t.price).max().unwrap_or_default(),
                low: trades.iter().map(|t| t.price).min().unwrap_or_default(),
                close: last.price,
                count: trades.len() as i64,
                volume,
                notional: round_derived(notional),
                vwap: if volume.is_zero() {
                    Decimal::ZERO
                } else {
                    round_derived(notional / volume)
                },
                avg_price: round_derived(sum(&|t| t.price) / Decimal::from(trades.len() as i64)),
                buy_volume: sum(&|t| {
                    if t.side == Side::Buy {
                        t.size
                    } else {
                        Decimal::ZERO
                    }
                }),
                sell_volume: sum(&|t| {
                    if t.side == Side::Sell {
                        t.size
                    } else {
                        Decimal::ZERO
                    }
                }),
                first_trade_time: first.event_time,
                last_trade_time: last.event_time,
                is_final: true,
                revision: 0,
            };
            ((instrument, venue, start), candle)
        })
        .collect()
}

/// The same candle ignoring how often it was emitted (revisions differ between runs).
pub fn same_values(a: &Candle, b: &Candle) -> bool {
    Candle {
        revision: 0,
        ..a.clone()
    } == Candle {
        revision: 0,
        ..b.clone()
    }
}
