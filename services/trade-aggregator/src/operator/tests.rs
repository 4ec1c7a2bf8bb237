use std::collections::BTreeMap;
use tickflow_shared::runtime::TradeOperator as _;

use tickflow_shared::domain::{Side, MICROS_PER_SECOND as S};
use tickflow_testkit::sample_trade;

use super::*;
use crate::reference::{batch_candles, batch_rollups, same_values};
use crate::rollup::Interval;

const MIN: Micros = 60 * S;
const T0: Micros = 1_763_769_600_000_000; // a minute boundary

fn timing() -> Timing {
    Timing {
        window: MIN,
        out_of_orderness: 2 * S,
        allowed_lateness: 60 * S,
        idle_timeout: 30 * S,
        early_firing_interval: None,
        correction_delay: S,
    }
}

fn trade(id: &str, exchange: &str, at: Micros, price: &str, size: &str) -> Trade {
    Trade {
        trade_id: id.into(),
        exchange: exchange.into(),
        provider: exchange.into(),
        event_time: at,
        price: price.parse().unwrap(),
        size: size.parse().unwrap(),
        side: if id.len().is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        },
        ..sample_trade()
    }
}

/// What a reader of the upserted 1-minute candles sees at the end: each window's last emission.
fn latest(outputs: &[Output]) -> BTreeMap<(String, String, Micros), Candle> {
    latest_of(outputs, "1m")
}

fn latest_of(outputs: &[Output], interval: &str) -> BTreeMap<(String, String, Micros), Candle> {
    let mut out = BTreeMap::new();
    for o in outputs {
        if let Output::Candle(c, _) = o {
            if c.interval == interval {
                out.insert(
                    (c.instrument.clone(), c.venue.clone(), c.window_start),
                    c.clone(),
                );
            }
        }
    }
    out
}

/// Every roll-up's last emission equals the batch computation over the longer window.
fn assert_rollups_equal_the_batch(outputs: &[Output], trades: &[Trade], intervals: &[Interval]) {
    for interval in intervals {
        let expected = batch_rollups(trades, interval.length, &interval.label);
        let got = latest_of(outputs, &interval.label);
        assert_eq!(got.len(), expected.len(), "{}", interval.label);
        for (key, candle) in &expected {
            assert!(
                same_values(&got[key], candle),
                "{} {key:?}\n got {:?}\nwant {candle:?}",
                interval.label,
                got[key]
            );
        }
    }
}

/// What the pipeline does with the due corrections: recompute each window from the stored
/// trades (here every trade of the test, as Cassandra `trades` holds them) and emit it last.
fn correct(op: &mut Aggregator, stored: &[Trade], out: &mut Vec<Output>) {
    for c in op.due_corrections(Micros::MAX) {
        for candle in correction::recompute(&c, stored).unwrap() {
            out.push(Output::Candle(candle, Emission::Recomputed));
        }
    }
}

fn run(op: &mut Aggregator, trades: &[Trade], now: Micros) -> Vec<Output> {
    let mut out = Vec::new();
    for t in trades {
        op.on_trade(0, t, now, &mut out);
        op.advance(now, &mut out);
    }
    out
}

/// A stream with out-of-order, late (within lateness), too-late and same-time trades.
fn nasty_stream() -> Vec<Trade> {
    vec![
        trade("a", "x", T0 + S, "100", "1"),
        trade("b", "y", T0 + 30 * S, "101", "2"),
        trade("c", "x", T0 + 10 * S, "99", "1"), // out of order, same window
        trade("d", "x", T0 + MIN + 3 * S, "102", "1"),
        // Both sources past T0+MIN+2s: the watermark passes T0+MIN, window 0 fires.
        trade("e", "y", T0 + MIN + 5 * S, "103", "1"),
        trade("f", "x", T0 + 50 * S, "98", "3"), // late, within lateness: corrected
        trade("g", "x", T0 + 3 * MIN, "104", "1"),
        trade("g2", "y", T0 + 3 * MIN + S, "104", "1"),
        trade("h", "y", T0 + 20 * S, "97", "1"), // window 0 closed > 60 s ago: too late
        trade("i", "x", T0 + 3 * MIN, "105", "1"), // same event time as g
        trade("j", "x", T0 + 5 * MIN, "106", "1"),
    ]
}

#[test]
fn final_candles_equal_the_batch_recomputation() {
    let trades = nasty_stream();
    let mut op = Aggregator::new(timing());
    let mut out = run(&mut op, &trades, T0);
    op.advance(T0 + 3600 * S, &mut out); // idle: everything closes
    correct(&mut op, &trades, &mut out);
    let (expected, too_late) = batch_candles(&trades, &timing());
    let got = latest(&out);
    assert_eq!(got.len(), expected.len());
    for (key, candle) in &expected {
        assert!(
            same_values(&got[key], candle),
            "{key:?}\n got {:?}\nwant {candle:?}",
            got[key]
        );
        assert!(got[key].is_final);
    }
    let late: Vec<&Trade> = out
        .iter()
        .filter_map(|o| match o {
            Output::TooLate { trade, .. } => Some(trade),
            _ => None,
        })
        .collect();
    assert_eq!(late, too_late.iter().collect::<Vec<_>>());
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].trade_id, "h");
}

#[test]
fn a_late_trade_re_emits_the_window_with_a_higher_revision() {
    let mut op = Aggregator::new(timing());
    let first = run(&mut op, &nasty_stream()[..5], T0);
    let fired = latest(&first)[&("BTC-USD".to_string(), "*".to_string(), T0)].clone();
    assert!(fired.is_final);
    assert_eq!(fired.count, 3);
    let mut out = Vec::new();
    op.on_trade(0, &nasty_stream()[5], T0, &mut out);
    let corrected: Vec<&Candle> = out
        .iter()
        .filter_map(|o| match o {
            Output::Candle(c, Emission::Correction) if c.window_start == T0 => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(
        corrected.len(),
        2,
        "the venue candle and the consolidated one"
    );
    let consolidated = corrected.iter().find(|c| c.venue == "*").unwrap();
    assert_eq!(consolidated.count, 4);
    assert!(consolidated.revision > fired.revision);
    assert!(consolidated.is_final);
}

#[test]
fn windows_fire_once_when_the_watermark_passes_their_end() {
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), T0, &mut out);
    op.advance(T0, &mut out);
    assert!(out.is_empty(), "open window, no early firing configured");
    // Event time T0 + MIN + 1 s: watermark T0 + MIN - 1 s, not yet past the end.
    op.on_trade(0, &trade("b", "x", T0 + MIN + S, "1", "1"), T0, &mut out);
    op.advance(T0, &mut out);
    assert!(out.is_empty());
    op.on_trade(
        0,
        &trade("c", "x", T0 + MIN + 2 * S, "1", "1"),
        T0,
        &mut out,
    );
    assert_eq!(
        out.len(),
        2,
        "x and * of the first minute, final with the trade that moved the watermark past its end"
    );
    assert!(out
        .iter()
        .all(|o| matches!(o, Output::Candle(c, Emission::Final) if c.is_final)));
    op.advance(T0, &mut out);
    assert_eq!(out.len(), 2, "not again at the tick");
    op.on_trade(
        0,
        &trade("d", "x", T0 + MIN + 3 * S, "1", "1"),
        T0,
        &mut out,
    );
    op.advance(T0, &mut out);
    assert_eq!(out.len(), 2, "nor with the next trade");
}

#[test]
fn early_firings_emit_changed_windows_as_not_final() {
    let mut op = Aggregator::new(Timing {
        early_firing_interval: Some(S),
        ..timing()
    });
    let mut out = Vec::new();
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), T0, &mut out);
    op.advance(T0, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|o| matches!(o, Output::Candle(c, Emission::Early) if !c.is_final)));
    op.advance(T0 + 2 * S, &mut out);
    assert_eq!(out.len(), 2, "nothing changed: nothing emitted");
    op.on_trade(
        0,
        &trade("b", "x", T0 + 2 * S, "2", "1"),
        T0 + 2 * S,
        &mut out,
    );
    op.advance(T0 + 2 * S, &mut out);
    assert_eq!(
        out.len(),
        2,
        "interval not elapsed since the last early firing"
    );
    op.advance(T0 + 3 * S, &mut out);
    assert_eq!(out.len(), 4);
    // Closing after early firings is the first final emission, not a correction (its revision
    // counts the early ones).
    op.on_trade(
        0,
        &trade("c", "x", T0 + MIN + 5 * S, "3", "1"),
        T0 + 4 * S,
        &mut out,
    );
    op.advance(T0 + 4 * S, &mut out);
    let closing: Vec<_> = out[4..]
        .iter()
        .filter_map(|o| match o {
            Output::Candle(c, emission) if c.window_start == T0 && c.is_final => {
                Some((c, *emission))
            }
            _ => None,
        })
        .collect();
    assert_eq!(closing.len(), 2, "{out:?}");
    assert!(closing
        .iter()
        .all(|(c, emission)| *emission == Emission::Final && c.revision > 0));
}

#[test]
fn a_backlog_gets_no_early_firings() {
    let mut op = Aggregator::new(Timing {
        early_firing_interval: Some(S),
        ..timing()
    });
    let mut out = Vec::new();
    // Read two minutes after its window ended: history, not live.
    let now = T0 + 2 * MIN + S;
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), now, &mut out);
    op.advance(now, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // The same window read while it is live fires early.
    let mut op = Aggregator::new(Timing {
        early_firing_interval: Some(S),
        ..timing()
    });
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), T0 + 3 * S, &mut out);
    op.advance(T0 + 3 * S, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
}

#[test]
fn an_idle_partition_closes_its_windows_by_the_wall_clock() {
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), T0 + S, &mut out);
    op.advance(T0 + 20 * S, &mut out);
    assert!(out.is_empty(), "not idle yet");
    op.advance(T0 + S + 30 * S + MIN + 2 * S, &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn time_the_pipeline_could_not_read_does_not_make_a_partition_idle() {
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), T0 + S, &mut out);
    // A 90 s stall (say Cassandra away) ends: without the exclusion the partition would be idle
    // and its watermark would follow the wall clock past the window and its lateness.
    op.exclude_stall(90 * S);
    op.advance(T0 + S + 90 * S + 10 * S, &mut out);
    assert!(
        out.is_empty(),
        "idle although it was read for 10 s only: {out:?}"
    );
    // A trade from the backlog is still on time.
    op.on_trade(
        0,
        &trade("a", "x", T0 + 2 * S, "2", "1"),
        T0 + 101 * S,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    // Really idle later: the window closes with both trades.
    op.advance(T0 + 101 * S + 30 * S + MIN, &mut out);
    let Output::Candle(c, _) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(c.count, 2);
}

#[test]
fn snapshot_and_restore_anywhere_give_the_same_result() {
    let trades = nasty_stream();
    let mut whole = Aggregator::new(timing());
    let mut expected = run(&mut whole, &trades, T0);
    whole.advance(T0 + 3600 * S, &mut expected);
    correct(&mut whole, &trades, &mut expected);
    for cut in 0..trades.len() {
        let mut before = Aggregator::new(timing());
        let mut out = run(&mut before, &trades[..cut], T0);
        let snapshot = before.snapshot(0).unwrap();
        let mut after = Aggregator::new(timing());
        after.restore(0, &snapshot, STATE_FORMAT, T0).unwrap();
        out.extend(run(&mut after, &trades[cut..], T0));
        after.advance(T0 + 3600 * S, &mut out);
        correct(&mut after, &trades, &mut out);
        let (a, b) = (latest(&out), latest(&expected));
        assert_eq!(a.len(), b.len(), "cut at {cut}");
        for (key, candle) in &b {
            assert!(same_values(&a[key], candle), "cut at {cut}: {key:?}");
        }
    }
}

#[test]
fn windows_are_purged_after_the_allowed_lateness() {
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    op.on_trade(0, &trade("a", "x", T0 + S, "1", "1"), T0, &mut out);
    op.on_trade(
        0,
        &trade("b", "x", T0 + 2 * MIN + 3 * S, "1", "1"),
        T0,
        &mut out,
    );
    op.advance(T0, &mut out);
    assert_eq!(
        op.open_windows(),
        2,
        "first minute purged, third still open"
    );
}

#[test]
fn overflowing_trades_are_rejected_with_a_reason() {
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    op.on_trade(
        0,
        &trade("a", "x", T0 + S, "79228162514264337593543950335", "1"),
        T0,
        &mut out,
    );
    op.on_trade(
        0,
        &trade("b", "x", T0 + S, "79228162514264337593543950335", "1"),
        T0,
        &mut out,
    );
    assert!(
        matches!(
            &out[..],
            [Output::Rejected {
                reason: "overflow",
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn rollups_equal_a_batch_over_the_longer_window() {
    // A longer stream spread over several 5-minute windows, with the nasty cases in it.
    let mut trades = nasty_stream();
    for i in 0..40 {
        let at = T0 + 6 * MIN + i * 17 * S;
        trades.push(trade(
            &format!("k{i}"),
            if i % 3 == 0 { "x" } else { "y" },
            at,
            &format!("{}", 100 + i % 7),
            "0.25",
        ));
    }
    trades.push(trade("late5", "x", T0 + 13 * MIN + 30 * S, "90", "2")); // late within lateness
    let intervals = vec![
        Interval::parse("5m").unwrap(),
        Interval::parse("15m").unwrap(),
    ];
    let mut op = Aggregator::new(timing()).with_rollups(intervals.clone());
    let mut out = run(&mut op, &trades, T0);
    op.advance(T0 + 3600 * S, &mut out);
    correct(&mut op, &trades, &mut out);
    assert_rollups_equal_the_batch(&out, &trades, &intervals);
}

#[test]
fn rollups_survive_snapshot_and_restore() {
    let trades = nasty_stream();
    let intervals = vec![Interval::parse("5m").unwrap()];
    let mut whole = Aggregator::new(timing()).with_rollups(intervals.clone());
    let mut expected = run(&mut whole, &trades, T0);
    whole.advance(T0 + 3600 * S, &mut expected);
    correct(&mut whole, &trades, &mut expected);
    for cut in 0..trades.len() {
        let mut before = Aggregator::new(timing()).with_rollups(intervals.clone());
        let mut out = run(&mut before, &trades[..cut], T0);
        let mut after = Aggregator::new(timing()).with_rollups(intervals.clone());
        after
            .restore(0, &before.snapshot(0).unwrap(), STATE_FORMAT, T0)
            .unwrap();
        out.extend(run(&mut after, &trades[cut..], T0));
        after.advance(T0 + 3600 * S, &mut out);
        correct(&mut after, &trades, &mut out);
        let (a, b) = (latest_of(&out, "5m"), latest_of(&expected, "5m"));
        assert_eq!(a.len(), b.len(), "cut at {cut}");
        for (key, candle) in &b {
            assert!(same_values(&a[key], candle), "cut at {cut}: {key:?}");
        }
    }
}

#[test]
fn long_rollups_hold_only_the_minutes_that_can_still_change() {
    // Two hours and a half, a trade every 7 s on two venues, with trades up to 50 s late.
    let mut trades = Vec::new();
    for i in 0..1300 {
        let mut at = T0 + i * 7 * S;
        if i % 11 == 0 {
            at -= 50 * S;
        }
        trades.push(trade(
            &format!("t{i}"),
            if i % 2 == 0 { "x" } else { "y" },
            at,
            &format!("{}.{}", 100 + i % 13, i % 10),
            "0.5",
        ));
    }
    let intervals = vec![
        Interval::parse("1h").unwrap(),
        Interval::parse("5m").unwrap(),
    ];
    let mut op = Aggregator::new(timing()).with_rollups(intervals.clone());
    let mut out = Vec::new();
    let mut most = 0;
    for (i, t) in trades.iter().enumerate() {
        op.on_trade(0, t, T0, &mut out);
        op.advance(T0, &mut out);
        most = most.max(op.partitions[&0].rollups.most_minutes_held());
        if i == 700 {
            // A checkpoint written before roll-ups settled minutes (and before compression,
            // format 1) restores too.
            let json = serde_json::to_string(&op.partitions[&0]).unwrap();
            let old = json.replace("\"settled\":null,", "");
            assert_ne!(old, json);
            let mut from_old = Aggregator::new(timing()).with_rollups(intervals.clone());
            from_old.restore(0, old.as_bytes(), 1, T0).unwrap();
            let mut from_new = Aggregator::new(timing()).with_rollups(intervals.clone());
            from_new
                .restore(0, &op.snapshot(0).unwrap(), STATE_FORMAT, T0)
                .unwrap();
            assert!(from_old.partitions[&0].rollups == from_new.partitions[&0].rollups);
        }
    }
    op.advance(T0 + 24 * 3600 * S, &mut out);
    correct(&mut op, &trades, &mut out);
    // The minute being filled, the one closing and the one within its allowed lateness.
    assert!(most <= 3, "a roll-up window held {most} minutes apart");
    assert_rollups_equal_the_batch(&out, &trades, &intervals);
}

/// Trades of `sources` (one exchange each) over `minutes`, one every `every`, each source's
/// trades in its own order.
fn block(source: &str, from: Micros, minutes: i64, every: Micros) -> Vec<Trade> {
    (0..minutes * MIN / every)
        .map(|i| {
            trade(
                &format!("{source}{i}"),
                source,
                from + i * every,
                &format!("{}.{}", 100 + i % 9, i % 7),
                "0.5",
            )
        })
        .collect()
}

#[test]
fn a_backlog_caught_up_source_by_source_makes_no_trade_late() {
    // Five minutes of three sources, read as a backlog: all of a's, then b's, then c's (a
    // normalizer catching up raw partitions one after the other). With one watermark for the
    // partition, b's and c's trades would all be too late.
    let mut trades = block("a", T0, 5, 2 * S);
    trades.extend(block("b", T0 + S, 5, 3 * S));
    trades.extend(block("c", T0 + 500_000, 5, 5 * S));
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    let now = T0 + 20 * MIN;
    // No checkpoint: the sources are not known when the first block comes.
    op.start_fresh(0, now);
    for t in &trades {
        op.on_trade_from(0, &format!("md.raw.{}:0", t.exchange), t, now, &mut out);
        op.advance(now, &mut out);
    }
    assert!(
        !out.iter().any(|o| matches!(o, Output::TooLate { .. })),
        "{:?}",
        out.iter()
            .filter(|o| matches!(o, Output::TooLate { .. }))
            .count()
    );
    assert_eq!(op.pending_corrections(), 0);
    op.advance(now + 3600 * S, &mut out);
    // The reference replays a partition whose sources are known from the start, so it is not
    // asked which trades are late here; the candles must be whole without any correction.
    let (expected, _) = batch_candles(&trades, &timing());
    let got = latest(&out);
    assert_eq!(got.len(), expected.len());
    for (key, candle) in &expected {
        assert!(same_values(&got[key], candle), "{key:?}");
    }
}

#[test]
fn a_silent_source_holds_the_watermark_until_its_own_idle_timeout() {
    let mut op = Aggregator::new(timing());
    let mut out = Vec::new();
    op.on_trade_from(0, "q", &trade("q1", "q", T0 + S, "1", "1"), T0, &mut out);
    // p goes on for minutes; q stays silent.
    for i in 0..20 {
        let now = T0 + i * S;
        op.on_trade_from(
            0,
            "p",
            &trade(&format!("p{i}"), "p", T0 + i * 10 * S, "2", "1"),
            now,
            &mut out,
        );
        op.advance(now, &mut out);
    }
    assert_eq!(op.watermark(0), Some(T0 - S), "q holds the partition back");
    assert!(out.is_empty(), "nothing closes while q is active: {out:?}");
    // 30 s after q's last record, q is left out: p alone moves the watermark.
    op.advance(T0 + 30 * S, &mut out);
    assert_eq!(op.watermark(0), Some(T0 + 190 * S - 2 * S));
    assert_eq!(op.sources(0), (1, 1));
    assert!(!out.is_empty(), "the first minutes close");
    // q comes back: it holds the watermark again from its new record on (no moving back).
    let before = op.watermark(0);
    op.on_trade_from(
        0,
        "q",
        &trade("q2", "q", T0 + 100 * S, "1", "1"),
        T0 + 31 * S,
        &mut out,
    );
    assert_eq!(op.sources(0), (2, 0));
    assert_eq!(op.watermark(0), before);
}

#[test]
fn a_trade_beyond_the_lateness_is_recomputed_once_with_its_window() {
    let intervals = vec![
        Interval::parse("5m").unwrap(),
        Interval::parse("15m").unwrap(),
    ];
    let mut op = Aggregator::new(timing()).with_rollups(intervals.clone());
    let mut trades = block("x", T0, 20, 5 * S);
    let mut out = Vec::new();
    for t in &trades {
        op.on_trade(0, t, T0, &mut out);
        op.advance(T0, &mut out);
    }
    // Three trades of the first minute, 19 minutes late: the minute and its 5-minute window
    // are gone, the 15-minute window [T0+15m, T0+30m) is not concerned, [T0, T0+15m) is gone too.
    let late: Vec<Trade> = (0..3)
        .map(|i| trade(&format!("late{i}"), "x", T0 + (10 + i) * S, "50", "1"))
        .collect();
    // And one for the 15-minute window still held: [T0+15m, T0+30m), minute T0+16m.
    let held = trade("late-held", "x", T0 + 16 * MIN + S, "51", "1");
    let now = T0 + 10 * S;
    for t in late.iter().chain([&held]) {
        op.on_trade(0, t, now, &mut out);
    }
    trades.extend(late.iter().cloned());
    trades.push(held.clone());
    let too_late = out
        .iter()
        .filter(|o| matches!(o, Output::TooLate { .. }))
        .count();
    assert_eq!(too_late, 4, "each one is audited on the late topic");
    // Coalesced: minute T0, 5m T0 and 15m T0 once each, and minute T0+16m. The roll-ups of
    // T0+16m (5m from T0+15m, 15m from T0+15m) are still held: they take the trade at once.
    assert_eq!(op.pending_corrections(), 4);
    assert!(
        op.due_corrections(now + S - 1).is_empty(),
        "not due before the delay"
    );
    let snapshot = op.snapshot(0).unwrap();
    let mut restored = Aggregator::new(timing()).with_rollups(intervals.clone());
    restored.restore(0, &snapshot, STATE_FORMAT, now).unwrap();
    assert_eq!(
        restored.pending_corrections(),
        4,
        "pending corrections are checkpointed"
    );
    let due = op.due_corrections(now + S);
    assert_eq!(due.len(), 4);
    assert_eq!(op.pending_corrections(), 0);
    let mut labels: Vec<&str> = due.iter().map(|c| c.interval.as_str()).collect();
    labels.sort_unstable();
    assert_eq!(labels, ["15m", "1m", "1m", "5m"]);
    for c in &due {
        for candle in correction::recompute(c, &trades).unwrap() {
            out.push(Output::Candle(candle, Emission::Recomputed));
        }
    }
    op.advance(T0 + 3600 * S, &mut out);
    let (expected, _) = batch_candles(&trades, &timing());
    let got = latest(&out);
    for (key, candle) in &expected {
        assert!(same_values(&got[key], candle), "{key:?}");
    }
    assert_rollups_equal_the_batch(&out, &trades, &intervals);
}

#[test]
fn every_readable_state_format_restores_the_same_state() {
    let intervals = vec![
        Interval::parse("5m").unwrap(),
        Interval::parse("15m").unwrap(),
    ];
    let mut op = Aggregator::new(timing()).with_rollups(intervals.clone());
    let mut trades = nasty_stream();
    // Minutes closed past their lateness (settled roll-up minutes, a pending correction) and a
    // 12-digit price with 18 fractional digits in a window still open.
    trades.push(trade(
        "far",
        "x",
        T0 + 10 * MIN,
        "123456789012.123456789012345678",
        "0.5",
    ));
    trades.push(trade("too-late", "y", T0 + 5 * S, "100.10", "3"));
    let _ = run(&mut op, &trades, T0);
    assert!(
        op.pending_corrections() > 0,
        "a correction is part of the state"
    );
    let original = op.partitions[&0].clone();
    assert!(!original.windows.is_empty() && original.rollups != Rollups::default());

    let json = serde_json::to_vec(&original).unwrap();
    let lz4 = lz4_flex::compress_prepend_size(&json);
    let binary = op.snapshot(0).unwrap();
    assert!(
        binary.len() < lz4.len(),
        "format 3 ({} bytes) is smaller than format 2 ({} bytes)",
        binary.len(),
        lz4.len()
    );
    let now = T0 + 7 * S;
    let mut expected = original.clone();
    expected.last_record_at = now;
    expected.sources.restored(now);
    for (format, bytes) in [(1, json), (2, lz4), (3, binary)] {
        let mut restored = Aggregator::new(timing()).with_rollups(intervals.clone());
        restored.restore(0, &bytes, format, now).unwrap();
        assert_eq!(restored.partitions[&0], expected, "format {format}");
    }
    let mut restored = Aggregator::new(timing());
    assert!(restored.restore(0, b"garbage", 3, now).is_err());
    assert!(restored.restore(0, &[], 4, now).is_err());
}
