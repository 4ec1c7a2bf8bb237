//! Case tables for the methods, and scenarios for publication, data quality, partitions and
//! their hand-over through checkpoints.

use std::collections::{BTreeSet, VecDeque};
use tickflow_shared::runtime::TradeOperator as _;

use crate::records::{AnomalyKind, Exclusion, FairPrice, Method, Trigger};
use rust_decimal::Decimal;
use tickflow_shared::domain::{parse_decimal, AssetClass, Micros, Trade};
use tickflow_testkit::sample_trade;

use super::compute::{compute, median, SourceTicks, Tick};
use super::*;
use crate::config::FairPriceConfig;

const T0: Micros = 1_763_769_600_000_000;
const S: Micros = 1_000_000;
const MS: Micros = 1_000;

fn d(text: &str) -> Decimal {
    parse_decimal(text).unwrap()
}

fn settings() -> Settings {
    FairPriceConfig::default().settings()
}

fn trade(provider: &str, exchange: &str, at: Micros, price: &str, size: &str) -> Trade {
    Trade {
        instrument: "BTC-USD".into(),
        asset_class: AssetClass::Crypto,
        provider: provider.into(),
        exchange: exchange.into(),
        event_time: at,
        price: d(price),
        size: d(size),
        ..sample_trade()
    }
}

fn ticks(list: &[(Micros, &str, &str)]) -> VecDeque<Tick> {
    list.iter()
        .map(|(t, p, q)| Tick {
            event_time: *t,
            price: d(p),
            size: d(q),
        })
        .collect()
}

fn fair(sources: &[(&str, VecDeque<Tick>)], as_of: Micros, settings: &Settings) -> FairPrice {
    let views: Vec<SourceTicks> = sources
        .iter()
        .map(|(name, ticks)| SourceTicks {
            provider: name,
            exchange: name,
            ticks,
            first_event_time: ticks.front().map_or(Micros::MIN, |t| t.event_time),
        })
        .collect();
    compute("BTC-USD", &views, as_of, settings, Trigger::Change)
}

fn prices(out: &[Output]) -> Vec<&FairPrice> {
    out.iter()
        .filter_map(|o| match o {
            Output::FairPrice(fp) => Some(fp),
            Output::Anomaly(_) => None,
        })
        .collect()
}

fn anomalies(out: &[Output]) -> Vec<(AnomalyKind, String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Anomaly(a) => Some((a.kind, a.provider.clone(), a.detail.clone())),
            Output::FairPrice(_) => None,
        })
        .collect()
}

#[test]
fn median_of_odd_and_even_counts_is_exact() {
    assert_eq!(median(vec![d("3"), d("1"), d("2")]), Some(d("2")));
    assert_eq!(median(vec![d("1"), d("2")]), Some(d("1.5")));
    assert_eq!(median(vec![d("0.1"), d("0.2")]), Some(d("0.15")));
    assert_eq!(median(vec![]), None);
}

#[test]
fn each_method_on_the_same_trades() {
    // a: 100 ×1, 101 ×1 (last 101); b: 102 ×4 (last 102); c: 99 ×1 (last 99).
    let sources = [
        (
            "a",
            ticks(&[(T0 - 2 * S, "100", "1"), (T0 - S, "101", "1")]),
        ),
        ("b", ticks(&[(T0 - S, "102", "4")])),
        ("c", ticks(&[(T0, "99", "1")])),
    ];
    let cases: [(Method, &str); 4] = [
        // Sorted by price: 99(1) 100(1) 101(1) 102(4); half of 7 is reached at 102.
        (Method::VwMedian, "102"),
        // Last prices 101, 102, 99.
        (Method::Median, "101"),
        // (100 + 101 + 408 + 99) / 7 = 708 / 7.
        (Method::Vwap, "101.14285714285714285714285714"),
        // 20% of 3 trims nothing: (99 + 101 + 102) / 3.
        (Method::TrimmedMean, "100.66666666666666666666666667"),
    ];
    for (method, expected) in cases {
        let mut s = settings();
        s.method = method;
        let fp = fair(&sources, T0, &s);
        let want = match method {
            Method::Vwap | Method::TrimmedMean => {
                tickflow_shared::domain::round_derived(d(expected))
            }
            _ => d(expected),
        };
        assert_eq!(fp.price, Some(want), "{method}");
        assert_eq!(fp.lookback_volume, d("7"), "{method}");
        assert_eq!(fp.sources_used.len(), 3);
        assert_eq!(fp.newest_event_time, Some(T0));
    }
}

#[test]
fn trades_outside_the_lookback_or_after_the_instant_do_not_count() {
    let sources = [(
        "a",
        ticks(&[
            (T0 - 6 * S, "90", "5"),
            (T0 - S, "100", "1"),
            (T0 + S, "200", "9"),
        ]),
    )];
    let fp = fair(&sources, T0, &settings());
    assert_eq!(fp.price, Some(d("100")));
    assert_eq!(fp.lookback_volume, d("1"));
}

#[test]
fn an_outlier_is_excluded_among_three_but_not_between_two() {
    let s = settings();
    let three = [
        ("a", ticks(&[(T0, "100", "1")])),
        ("b", ticks(&[(T0, "100.5", "1")])),
        ("c", ticks(&[(T0, "106", "1")])),
    ];
    let fp = fair(&three, T0, &s);
    assert_eq!(fp.sources_used.len(), 2);
    assert_eq!(fp.sources_excluded.len(), 1);
    assert_eq!(fp.sources_excluded[0].reason, Exclusion::Outlier);
    assert_eq!(fp.sources_excluded[0].provider, "c");
    assert!(fp.sources_excluded[0].detail.contains("5.47%"), "{fp:?}");
    let two = [
        ("a", ticks(&[(T0, "100", "1")])),
        ("c", ticks(&[(T0, "106", "1")])),
    ];
    let fp = fair(&two, T0, &s);
    assert_eq!(
        fp.sources_used.len(),
        2,
        "two sources cannot outvote each other"
    );
    assert!(fp.confidence < 0.01, "{fp:?}");
}

#[test]
fn mad_rule_keeps_close_sources_and_drops_far_ones() {
    let mut s = settings();
    s.outliers = OutlierRule::Mad {
        k: 5.0,
        floor_pct: 0.5,
    };
    let sources = [
        ("a", ticks(&[(T0, "100", "1")])),
        ("b", ticks(&[(T0, "100.1", "1")])),
        ("c", ticks(&[(T0, "99.9", "1")])),
        ("d", ticks(&[(T0, "100.2", "1")])),
        ("e", ticks(&[(T0, "103", "1")])),
    ];
    let fp = fair(&sources, T0, &s);
    let excluded: Vec<&str> = fp
        .sources_excluded
        .iter()
        .map(|e| e.provider.as_str())
        .collect();
    assert_eq!(excluded, ["e"]);
}

#[test]
fn stale_sources_are_excluded_and_all_stale_has_no_price() {
    let s = settings();
    let sources = [
        ("a", ticks(&[(T0 - 6 * S, "100", "1")])),
        ("b", ticks(&[(T0 - S, "101", "1")])),
        ("never", VecDeque::new()),
    ];
    let fp = fair(&sources, T0, &s);
    assert_eq!(fp.price, Some(d("101")));
    let reasons: Vec<(&str, Exclusion)> = fp
        .sources_excluded
        .iter()
        .map(|e| (e.provider.as_str(), e.reason))
        .collect();
    assert_eq!(
        reasons,
        [("a", Exclusion::Stale), ("never", Exclusion::Stale)]
    );
    // A source whose first trade is after the instant did not exist yet.
    let later = [
        ("a", ticks(&[(T0 - S, "100", "1")])),
        ("b", ticks(&[(T0 + S, "101", "1")])),
    ];
    let fp = fair(&later, T0, &s);
    assert!(fp.sources_excluded.is_empty(), "{fp:?}");
    let fp = fair(&sources, T0 + 10 * S, &s);
    assert!(fp.stale && fp.price.is_none() && fp.confidence == 0.0);
}

#[test]
fn changes_are_throttled_in_event_time_and_released_by_the_clock() {
    let mut s = settings();
    s.method = Method::Median;
    let mut op = Operator::new(s);
    let mut out = Vec::new();
    op.on_trade(0, &trade("a", "a", T0, "100", "1"), 0, &mut out);
    assert_eq!(prices(&out).len(), 1);
    // 50 ms later a new price: held back by the 100 ms throttle.
    op.on_trade(0, &trade("a", "a", T0 + 50 * MS, "101", "1"), 0, &mut out);
    assert_eq!(prices(&out).len(), 1);
    // A trade at +150 ms (a new source) passes the end of the throttle, but source a is still at
    // +50 ms, so the clock is: nothing goes out yet (a could still trade before +100 ms).
    op.on_trade(0, &trade("b", "b", T0 + 150 * MS, "101", "1"), 0, &mut out);
    assert_eq!(prices(&out).len(), 1, "{:#?}", prices(&out));
    // Trades of another instrument move both sources, and so the clock, past T0 + 200 ms: the
    // held change goes out as of T0 + 100 ms (b's trade is after it), then b's arrival as of the
    // end of the next throttle.
    for name in ["a", "b"] {
        let mut other = trade(name, name, T0 + 250 * MS, "1", "1");
        other.instrument = "ETH-USD".into();
        op.on_trade(0, &other, 0, &mut out);
    }
    let published = prices(&out);
    let btc: Vec<&&FairPrice> = published
        .iter()
        .filter(|p| p.instrument == "BTC-USD")
        .collect();
    assert_eq!(btc.len(), 3, "{btc:#?}");
    assert_eq!(btc[1].computed_at, T0 + 100 * MS);
    assert_eq!(btc[1].price, Some(d("101")), "{btc:#?}");
    assert_eq!(btc[1].sources_used.len(), 1);
    assert_eq!(btc[2].computed_at, T0 + 200 * MS);
    assert_eq!(btc[2].sources_used.len(), 2);
}

#[test]
fn an_unchanged_result_is_not_published_until_the_heartbeat() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    for i in 0..30 {
        op.on_trade(
            0,
            &trade("a", "a", T0 + i * 200 * MS, "100", "1"),
            0,
            &mut out,
        );
    }
    let published = prices(&out);
    // One change at T0, then one heartbeat per second of event time.
    assert_eq!(published[0].trigger, Trigger::Change);
    assert!(published[1..]
        .iter()
        .all(|p| p.trigger == Trigger::Heartbeat));
    let times: Vec<Micros> = published[1..].iter().map(|p| p.computed_at - T0).collect();
    assert_eq!(times, [S, 2 * S, 3 * S, 4 * S, 5 * S]);
}

#[test]
fn when_every_partition_is_idle_the_clock_follows_the_wall_clock_into_staleness() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    let wall = 5_000 * S;
    op.on_trade(0, &trade("a", "a", T0, "100", "1"), wall, &mut out);
    out.clear();
    // 1 s of wall time: below idle_after (2 s), the clock waits for data.
    op.advance(wall + S, &mut out);
    assert!(out.is_empty());
    // 10 s later: the clock has run on to T0 + 10 s; heartbeats turn stale after 5 s.
    op.advance(wall + 10 * S, &mut out);
    let published = prices(&out);
    assert!(!published.is_empty());
    let last = published.last().unwrap();
    assert!(last.stale && last.price.is_none(), "{last:?}");
    assert!(published.iter().any(|p| !p.stale));
    assert_eq!(op.clock(), Some(T0 + 10 * S));
}

#[test]
fn a_stall_of_the_pipeline_is_not_idleness() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    let wall = 5_000 * S;
    op.on_trade(0, &trade("a", "a", T0, "100", "1"), wall, &mut out);
    out.clear();
    // The loop waited 10 s for a sink: the input was not read, so nothing is idle.
    op.exclude_stall(10 * S);
    op.advance(wall + 11 * S, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(op.clock(), Some(T0));
    // Without the exclusion the same instant would have run the clock on into staleness.
    let mut plain = Operator::new(settings());
    plain.on_trade(0, &trade("a", "a", T0, "100", "1"), wall, &mut out);
    out.clear();
    plain.advance(wall + 11 * S, &mut out);
    assert!(prices(&out).iter().any(|p| p.stale));
}

#[test]
fn a_partition_clock_waits_for_its_own_slowest_active_source_only() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    op.on_trade(0, &trade("b", "b", T0, "100", "1"), 0, &mut out);
    op.on_trade(0, &trade("a", "a", T0 + 3 * S, "100", "1"), 0, &mut out);
    assert_eq!(op.partition_clock(0), Some(T0), "b holds partition 0 back");
    // Partition 1's only source is at T0 + 5 s: partition 0's slow b does not hold it back, so
    // its instrument is published as of its trade at once.
    let mut eth = trade("a", "a", T0 + 5 * S, "2000", "1");
    eth.instrument = "ETH-USD".into();
    op.on_trade(1, &eth, 0, &mut out);
    assert_eq!(op.partition_clock(1), Some(T0 + 5 * S));
    assert_eq!(op.partition_clock(0), Some(T0));
    assert_eq!(op.clock(), Some(T0), "the slowest partition's");
    let eth: Vec<Micros> = prices(&out)
        .iter()
        .filter(|p| p.instrument == "ETH-USD")
        .map(|p| p.computed_at)
        .collect();
    assert_eq!(eth, [T0 + 5 * S]);
    // b catches up: partition 0 moves, and partition 1 stays where its own sources are.
    op.on_trade(0, &trade("b", "b", T0 + 3 * S, "100", "1"), 0, &mut out);
    assert_eq!(op.partition_clock(0), Some(T0 + 3 * S));
    assert_eq!(op.partition_clock(1), Some(T0 + 5 * S));
    assert_eq!(op.clock(), Some(T0 + 3 * S));
}

#[test]
fn a_drifting_source_diverges_is_excluded_and_recovers() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    let mut t = T0;
    let mut step = |op: &mut Operator, c_price: &str, out: &mut Vec<Output>| {
        for (name, price) in [("a", "100"), ("b", "100.1"), ("c", c_price)] {
            t += 100 * MS;
            op.on_trade(0, &trade(name, name, t, price, "1"), 0, out);
        }
    };
    for _ in 0..30 {
        step(&mut op, "99.9", &mut out);
    }
    for _ in 0..40 {
        step(&mut op, "106", &mut out);
    }
    let drift = anomalies(&out);
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].0, AnomalyKind::PriceDivergence);
    assert_eq!(drift[0].1, "c");
    let last = prices(&out).last().copied().cloned().unwrap();
    assert_eq!(last.sources_excluded[0].reason, Exclusion::Outlier);
    let price = last.price.unwrap();
    assert!(
        price == d("100") || price == d("100.1"),
        "a and b only: {price}"
    );
    for _ in 0..20 {
        step(&mut op, "100", &mut out);
    }
    let all = anomalies(&out);
    assert_eq!(all.last().unwrap().0, AnomalyKind::Recovered, "{all:?}");
    assert!(all.last().unwrap().2.contains("PRICE_DIVERGENCE"));
}

#[test]
fn a_silent_source_raises_no_data_for_it_and_its_provider_then_recovers() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    let mut t = T0;
    for i in 0..300 {
        t += 100 * MS;
        // "c" falls silent between 10 s and 25 s.
        let silent = (100..250).contains(&i);
        for name in ["a", "b", "c"] {
            if name == "c" && silent {
                continue;
            }
            // Processing time runs with event time: the silent source goes idle and stops
            // holding the clock back.
            op.on_trade(0, &trade(name, name, t, "100", "1"), t - T0, &mut out);
        }
    }
    let kinds: Vec<(AnomalyKind, String)> = anomalies(&out)
        .into_iter()
        .map(|(k, p, _)| (k, p))
        .collect();
    assert!(
        kinds.contains(&(AnomalyKind::NoData, "c".into())),
        "{kinds:?}"
    );
    // c is the only source of provider c: the provider is silent too (scope c/*/*).
    let provider_level = out.iter().any(|o| {
        matches!(o, Output::Anomaly(a) if a.kind == AnomalyKind::NoData && a.provider == "c" && a.instrument == "*")
    });
    assert!(provider_level);
    assert!(
        kinds.contains(&(AnomalyKind::Recovered, "c".into())),
        "{kinds:?}"
    );
    assert!(
        prices(&out).iter().all(|p| p.price.is_some()),
        "a and b carry the price"
    );
}

/// The silent-source scenario of the test above, as (provider, event time) in event order.
fn silent_c_trades() -> Vec<(&'static str, Micros)> {
    let mut trades = Vec::new();
    for i in 1..=300 {
        let t = T0 + i * 100 * MS;
        for name in ["a", "b", "c"] {
            if name == "c" && (101..251).contains(&i) {
                continue;
            }
            trades.push((name, t));
        }
    }
    trades
}

#[test]
fn a_backlog_raises_the_same_anomalies_as_the_live_stream() {
    // Live: processing time runs with event time, so c goes idle while silent. Backlog: every
    // trade read at once (a restart caught up), so c holds the clock back until its trades after
    // the silence come, and the boundaries in between are evaluated then, with c's trades after
    // them already read: they must not count for c's state as of those boundaries.
    let run = |live: bool| {
        let mut op = Operator::new(settings());
        let mut out = Vec::new();
        for (name, t) in silent_c_trades() {
            let now = if live { t - T0 } else { 0 };
            op.on_trade(0, &trade(name, name, t, "100", "1"), now, &mut out);
        }
        out.into_iter()
            .filter_map(|o| match o {
                Output::Anomaly(a) => Some(a),
                Output::FairPrice(_) => None,
            })
            .collect::<Vec<_>>()
    };
    let live = run(true);
    assert!(
        live.iter()
            .any(|a| a.kind == AnomalyKind::NoData && a.provider == "c"),
        "{live:#?}"
    );
    assert!(live
        .iter()
        .any(|a| a.kind == AnomalyKind::Recovered && a.provider == "c"));
    assert_eq!(run(false), live);
}

#[test]
fn a_backlog_read_source_by_source_publishes_what_the_event_order_does() {
    // Three sources' trades over 20 s with moving prices, a throttle shorter than their gaps
    // and a throttle longer: read in event order, and as a restart catches up, each source's
    // block after the other (every source seen once first, as each raw partition's backlog
    // starts with its oldest trades).
    let trades: Vec<(&str, Micros, String)> = (0..400)
        .flat_map(|i: i64| {
            ["a", "b", "c"]
                .into_iter()
                .enumerate()
                .map(move |(k, name)| {
                    let t = T0 + i * 50 * MS + k as i64 * 7 * MS;
                    (
                        name,
                        t,
                        format!("{}.{:02}", 100 + (i * 7 + k as i64) % 5, (i * 13) % 100),
                    )
                })
        })
        .collect();
    let run = |order: &[&(&str, Micros, String)], throttle: Micros| {
        let mut op = Operator::new(Settings {
            throttle,
            ..settings()
        });
        let mut out = Vec::new();
        for (name, t, price) in order {
            op.on_trade(0, &trade(name, name, *t, price, "1"), 0, &mut out);
        }
        out.into_iter()
            .filter_map(|o| match o {
                Output::FairPrice(fp) => Some(fp),
                Output::Anomaly(_) => None,
            })
            .collect::<Vec<_>>()
    };
    let in_event_order: Vec<_> = trades.iter().collect();
    let (firsts, rest) = trades.split_at(3);
    let mut by_source: Vec<_> = firsts.iter().collect();
    for name in ["b", "c", "a"] {
        by_source.extend(rest.iter().filter(|(n, _, _)| *n == name));
    }
    for throttle in [10 * MS, 300 * MS] {
        let expected = run(&in_event_order, throttle);
        assert!(
            expected
                .iter()
                .filter(|fp| fp.trigger == Trigger::Change)
                .count()
                > 20,
            "{expected:#?}"
        );
        assert!(expected
            .windows(2)
            .all(|w| w[0].computed_at <= w[1].computed_at));
        assert_eq!(
            run(&by_source, throttle),
            expected,
            "throttle {throttle} µs"
        );
    }
}

#[test]
fn with_every_source_idle_the_clock_reaches_the_newest_trade_then_waits_for_wall_clock_after() {
    let mut op = Operator::new(Settings {
        wall_clock_after: 60 * S,
        ..settings()
    });
    let mut out = Vec::new();
    // a runs 10 s ahead of b, all read at once.
    for i in 0..100 {
        op.on_trade(
            0,
            &trade("b", "b", T0 + i * 100 * MS, "100", "1"),
            0,
            &mut out,
        );
        op.on_trade(
            0,
            &trade("a", "a", T0 + 10 * S + i * 100 * MS, "100", "1"),
            0,
            &mut out,
        );
    }
    assert_eq!(op.clock(), Some(T0 + 9_900 * MS), "b holds the clock back");
    // Both idle (2 s): the clock moves to the newest trade seen, and no further.
    op.advance(3 * S, &mut out);
    assert_eq!(op.clock(), Some(T0 + 19_900 * MS));
    op.advance(59 * S, &mut out);
    assert_eq!(op.clock(), Some(T0 + 19_900 * MS));
    // Nothing for 60 s: it follows the wall clock.
    op.advance(70 * S, &mut out);
    assert_eq!(op.clock(), Some(T0 + 19_900 * MS + 70 * S));
}

#[test]
fn a_source_slowing_down_raises_rate_drop() {
    let mut s = settings();
    s.quality_by_class.get_mut("CRYPTO").unwrap().rate_trailing = 60 * S;
    let mut op = Operator::new(s);
    let mut out = Vec::new();
    // 10 trades/s for 60 s, then 1 trade per 2 s: more than NO_DATA's silence, less than normal.
    let mut t = T0;
    for _ in 0..600 {
        t += 100 * MS;
        op.on_trade(0, &trade("a", "a", t, "100", "1"), 0, &mut out);
        op.on_trade(0, &trade("b", "b", t, "100", "1"), 0, &mut out);
    }
    for i in 0..200 {
        t += 100 * MS;
        op.on_trade(0, &trade("b", "b", t, "100", "1"), 0, &mut out);
        if i % 20 == 0 {
            op.on_trade(0, &trade("a", "a", t, "100", "1"), 0, &mut out);
        }
    }
    let kinds = anomalies(&out);
    assert!(
        kinds
            .iter()
            .any(|(k, p, _)| *k == AnomalyKind::RateDrop && p == "a"),
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|(_, p, _)| p == "b"), "{kinds:?}");
}

#[test]
fn replaying_partitions_build_state_without_emitting() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    op.set_replaying(0, true);
    for i in 0..50 {
        op.on_trade(
            0,
            &trade("a", "a", T0 + i * 100 * MS, "100", "1"),
            0,
            &mut out,
        );
    }
    assert!(out.is_empty());
    op.set_replaying(0, false);
    op.on_trade(
        0,
        &trade("a", "a", T0 + 5_500 * MS, "101", "1"),
        0,
        &mut out,
    );
    let published = prices(&out);
    assert_eq!(published.len(), 1, "{published:#?}");
    // The new trade leaves the (volume-weighted) price unchanged; the heartbeat at T0 + 5 s is
    // the first publication, over the replayed trades at 0.1 s .. 4.9 s.
    assert_eq!(published[0].computed_at, T0 + 5 * S);
    assert_eq!(
        published[0].lookback_volume,
        d("49"),
        "the replayed lookback counts"
    );
}

#[test]
fn the_same_input_gives_the_same_output() {
    let run = || {
        let mut op = Operator::new(settings());
        let mut out = Vec::new();
        let mut seed: u64 = 7;
        for i in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let name = ["a", "b", "c", "d"][(seed % 4) as usize];
            let price = format!("{}.{}", 100 + seed % 3, seed % 100);
            let jitter = (seed >> 8) as i64 % 300_000;
            op.on_trade(
                0,
                &trade(name, name, T0 + i * 50 * MS - jitter, &price, "0.5"),
                0,
                &mut out,
            );
        }
        out
    };
    let first = run();
    assert!(prices(&first).len() > 100);
    assert_eq!(first, run());
}

/// One trade of a scenario: partition, trade, processing time it arrives at when read live.
type Fed = (i32, Trade, Micros);

/// 40 s of two instruments on partition 0: sources a and b with prices of mixed scales and
/// trailing zeros (a finer one early on), c silent from 10 s to 25 s on both (its provider goes silent), and on BTC-USD
/// a fourth source d far off from 12 s to 30 s (an outlier, then PRICE_DIVERGENCE). Sources
/// trade 7 ms apart within each 100 ms, so changes wait for the throttle.
fn handover_scenario() -> Vec<Fed> {
    let mut fed = Vec::new();
    for i in 1..=400i64 {
        for (k, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let t = T0 + i * 100 * MS + k as i64 * 7 * MS;
            if name == "c" && (101..251).contains(&i) {
                continue;
            }
            let price = match name {
                // A finer scale only in the first 3 s: pruned long before most cuts, it still
                // sets the scale of the book's prices.
                "a" if i <= 30 => format!("100.{:02}00", (i * 7) % 100),
                "a" => format!("100.{:02}0", (i * 7) % 100),
                "b" => format!("100.{:02}", (i * 13) % 100),
                "c" => format!("99.{}", i % 10),
                _ if (120..300).contains(&i) => "106.50".to_string(),
                _ => format!("100.{:03}", (i * 31) % 1000),
            };
            let mut btc = trade(name, name, t, &price, "0.50");
            btc.size = d(&format!("0.{}", 1 + i % 9));
            fed.push((0, btc.clone(), t - T0));
            if name != "d" {
                let mut eth = btc;
                eth.instrument = "ETH-USD".into();
                eth.price = d(&format!("20{price}"));
                fed.push((0, eth, t - T0 + 1));
            }
        }
    }
    fed
}

/// The first difference between two runs' outputs, compared by their debug text, which shows a
/// decimal's scale and a float's every digit (equality of decimals would not).
fn assert_same_outputs(got: &[Output], want: &[Output], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            format!("{g:?}"),
            format!("{w:?}"),
            "{what}: output {i} differs"
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: as many outputs");
}

#[test]
fn a_partition_handed_over_through_checkpoints_publishes_what_it_would_have() {
    let fed = handover_scenario();
    for live in [false, true] {
        let now = |at: Micros| if live { at } else { 0 };
        let mut straight = Operator::new(settings());
        let mut want = Vec::new();
        for (partition, t, at) in &fed {
            straight.on_trade(*partition, t, now(*at), &mut want);
        }
        let anomaly_kinds: BTreeSet<(AnomalyKind, String)> = want
            .iter()
            .filter_map(|o| match o {
                Output::Anomaly(a) => Some((a.kind, format!("{}/{}", a.provider, a.instrument))),
                Output::FairPrice(_) => None,
            })
            .collect();
        for expected in [
            (AnomalyKind::NoData, "c/BTC-USD"),
            (AnomalyKind::NoData, "c/*"),
            (AnomalyKind::PriceDivergence, "d/BTC-USD"),
            (AnomalyKind::Recovered, "c/*"),
            (AnomalyKind::Recovered, "d/BTC-USD"),
        ] {
            assert!(
                anomaly_kinds.contains(&(expected.0, expected.1.to_string())),
                "live {live}: the scenario raises {expected:?}: {anomaly_kinds:?}"
            );
        }
        assert!(prices(&want).iter().any(|p| p
            .sources_excluded
            .iter()
            .any(|e| e.reason == Exclusion::Outlier)));

        // Cut every 97 trades, and around c's silence and d's divergence.
        let cuts: BTreeSet<usize> = (1..fed.len())
            .step_by(97)
            .chain([2, 3, 1_001, 1_003, 1_700, 2_400, 2_401])
            .collect();
        let mut op = Operator::new(settings());
        let mut got = Vec::new();
        let (mut queued_at_cut, mut silent_at_cut) = (0, 0);
        for (i, (partition, t, at)) in fed.iter().enumerate() {
            if cuts.contains(&i) {
                if !op.partitions[&0].throttled.is_empty() {
                    queued_at_cut += 1;
                }
                if op.active_anomalies().iter().any(|a| a.3 == ANY) {
                    silent_at_cut += 1;
                }
                let bytes = op.snapshot(0).unwrap();
                op = Operator::new(settings());
                op.restore(0, &bytes, STATE_FORMAT, now(*at)).unwrap();
                assert!(
                    op.snapshot(0).unwrap() == bytes,
                    "live {live}: the state restored at cut {i} snapshots differently"
                );
            }
            op.on_trade(*partition, t, now(*at), &mut got);
        }
        assert!(
            queued_at_cut > 0,
            "a cut between a change queued and its release"
        );
        assert!(silent_at_cut > 0, "a cut while provider c is silent");
        assert_same_outputs(&got, &want, if live { "live" } else { "backlog" });
    }
}

/// Partition 0: BTC-USD, sources a, b and c, c silent from 10 s to 25 s. Partition 1: ETH-USD,
/// sources a, b and d, 3 s behind partition 0 in event time and with d off the others for a while.
fn two_partitions() -> Vec<Fed> {
    let mut fed = Vec::new();
    for i in 1..=300i64 {
        for (k, name) in ["a", "b", "c"].into_iter().enumerate() {
            let t = T0 + i * 100 * MS + k as i64 * 11 * MS;
            if name == "c" && (101..251).contains(&i) {
                continue;
            }
            let price = format!("{}.{:02}", 100 + (i + k as i64) % 3, (i * 17) % 100);
            fed.push((0, trade(name, name, t, &price, "1"), t - T0));
        }
        for (k, name) in ["a", "b", "d"].into_iter().enumerate() {
            let t = T0 - 3 * S + i * 100 * MS + k as i64 * 13 * MS;
            let price = match name {
                "d" if (50..200).contains(&i) => "2100".to_string(),
                _ => format!("2000.{}", (i * 3 + k as i64) % 10),
            };
            let mut eth = trade(name, name, t, &price, "2");
            eth.instrument = "ETH-USD".into();
            // Arrives with partition 0's trades of the same step.
            fed.push((1, eth, T0 + i * 100 * MS - T0));
        }
    }
    fed
}

#[test]
fn each_partition_publishes_the_same_beside_another_as_alone() {
    let fed = two_partitions();
    for live in [false, true] {
        let now = |at: Micros| if live { at } else { 0 };
        let run = |only: Option<i32>| {
            let mut op = Operator::new(settings());
            let mut out = Vec::new();
            for (partition, t, at) in &fed {
                if only.is_none_or(|p| p == *partition) {
                    op.on_trade(*partition, t, now(*at), &mut out);
                }
            }
            out
        };
        let both = run(None);
        for (partition, instrument) in [(0, "BTC-USD"), (1, "ETH-USD")] {
            // Every fair price, and the anomalies of the instrument's sources (provider-wide
            // ones depend on the partitions owned).
            let of = |out: &[Output]| -> Vec<Output> {
                out.iter()
                    .filter(|o| match o {
                        Output::FairPrice(fp) => fp.instrument == instrument,
                        Output::Anomaly(a) => a.instrument == instrument,
                    })
                    .cloned()
                    .collect()
            };
            let alone = of(&run(Some(partition)));
            assert!(prices(&alone).len() > 50, "{instrument}");
            assert!(!anomalies(&alone).is_empty(), "{instrument}");
            assert_same_outputs(&of(&both), &alone, instrument);
        }
    }
}

#[test]
fn provider_silence_is_reported_when_its_sources_in_every_owned_partition_are_silent() {
    // c trades BTC-USD on partition 0 and ETH-USD on partition 1: silent on BTC-USD only from
    // 10 s to 25 s (not the provider), then on both from 35 s to 50 s (the provider).
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    for i in 1..=600i64 {
        let t = T0 + i * 100 * MS;
        for (partition, instrument) in [(0, "BTC-USD"), (1, "ETH-USD")] {
            for name in ["a", "c"] {
                let btc_only = partition == 0 && (100..250).contains(&i);
                if name == "c" && (btc_only || (350..500).contains(&i)) {
                    continue;
                }
                let mut x = trade(name, name, t, "100", "1");
                x.instrument = instrument.into();
                op.on_trade(partition, &x, t - T0, &mut out);
            }
        }
    }
    let provider: Vec<(AnomalyKind, Micros)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Anomaly(a) if a.instrument == ANY && a.provider == "c" => {
                Some((a.kind, a.started_at))
            }
            _ => None,
        })
        .collect();
    let kinds: Vec<AnomalyKind> = provider.iter().map(|p| p.0).collect();
    assert_eq!(
        kinds,
        [AnomalyKind::NoData, AnomalyKind::Recovered],
        "{provider:?}"
    );
    assert_eq!(
        provider[0].1,
        T0 + 34_900 * MS,
        "since c's last trade anywhere"
    );
    let mut silent: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::Anomaly(a) if a.kind == AnomalyKind::NoData && a.instrument != ANY => {
                Some(a.instrument.as_str())
            }
            _ => None,
        })
        .collect();
    silent.sort_unstable();
    assert_eq!(silent, ["BTC-USD", "BTC-USD", "ETH-USD"], "c's own NO_DATA");
}

#[test]
fn a_partition_started_fresh_waits_idle_after_for_sources_not_seen_yet() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    op.start_fresh(0, 0);
    op.on_trade(0, &trade("a", "a", T0, "100", "1"), 0, &mut out);
    op.on_trade(
        0,
        &trade("a", "a", T0 + S, "100", "1"),
        1_500 * MS,
        &mut out,
    );
    op.on_trade(
        0,
        &trade("b", "b", T0 + 500 * MS, "101", "1"),
        1_500 * MS,
        &mut out,
    );
    op.advance(1_900 * MS, &mut out);
    assert_eq!(
        op.partition_clock(0),
        None,
        "a source not seen yet may still come"
    );
    assert!(out.is_empty());
    // idle_after (2 s) since the start: the sources seen are all there is.
    op.advance(2_000 * MS, &mut out);
    assert_eq!(op.partition_clock(0), Some(T0 + 500 * MS));
    let times: Vec<Micros> = prices(&out).iter().map(|p| p.computed_at - T0).collect();
    assert_eq!(times, [0, 500 * MS]);
}

#[test]
fn restore_rejects_unknown_formats_and_garbage_and_keeps_what_it_had() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    for i in 0..20 {
        op.on_trade(
            0,
            &trade("a", "a", T0 + i * 300 * MS, "100.5", "1"),
            0,
            &mut out,
        );
    }
    let good = op.snapshot(0).unwrap();
    for format in [0, 3, -1, i32::MAX] {
        let e = op.restore(0, &good, format, 0).unwrap_err();
        assert!(e.contains("format"), "{e}");
    }
    // Format 1, JSON in an LZ4 block, as an earlier build wrote it: edited to be wrong.
    let state = serde_json::to_value(&op.partitions[&0]).unwrap();
    let edited = |path: &[&str], value: serde_json::Value| {
        let mut state = state.clone();
        let mut at = &mut state;
        for key in path {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        *at = value;
        lz4_flex::compress_prepend_size(&serde_json::to_vec(&state).unwrap())
    };
    let mut huge_size = vec![0xff; 4];
    huge_size.extend([0x10, b'{', b'}']);
    let noise: Vec<u8> = (0..300u32).map(|i| (i * 7_919 % 251) as u8).collect();
    let reserve = std::sync::atomic::AtomicUsize::new(0);
    let binary_cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("noise", noise.clone()),
        ("cut short", good[..good.len() / 2].to_vec()),
        ("one byte changed", {
            let mut bytes = good.clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            bytes
        }),
        (
            "not the state",
            tickflow_shared::runtime::state::encode(&(3u32, "x"), &reserve).unwrap(),
        ),
        ("the old format's bytes", edited(&["clock"], 1.into())),
    ];
    for (what, bytes) in binary_cases {
        assert!(
            op.restore(0, &bytes, STATE_FORMAT, 0).is_err(),
            "{what} is refused"
        );
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("shorter than the size", vec![1, 2]),
        ("a size no block gives", huge_size),
        ("noise", noise),
        ("binary", good.clone()),
        ("not JSON", lz4_flex::compress_prepend_size(b"tickflow")),
        (
            "not the state",
            lz4_flex::compress_prepend_size(b"{\"instruments\": 3}"),
        ),
        (
            "an unknown asset class",
            edited(&["instruments", "0", "asset_class"], "BONDS".into()),
        ),
        (
            "a price that is no decimal",
            edited(
                &["instruments", "0", "book", "trades", "0", "2"],
                "1e".into(),
            ),
        ),
        (
            "a trade of a source it does not have",
            edited(&["instruments", "0", "book", "trades", "0", "0"], 7.into()),
        ),
        (
            "a scale beyond a decimal's",
            edited(&["instruments", "0", "book", "price_scale"], 40.into()),
        ),
        (
            "an unknown anomaly kind",
            edited(
                &["instruments", "0", "sources", "0", "detector", "active"],
                serde_json::json!({ "ON_FIRE": 1 }),
            ),
        ),
    ];
    for (what, bytes) in cases {
        assert!(op.restore(0, &bytes, 1, 0).is_err(), "{what} is refused");
    }
    assert!(
        op.restore(0, &edited(&["clock"], state["clock"].clone()), 1, 0)
            .is_ok(),
        "the same state as format 1 is read"
    );
    assert_eq!(op.snapshot(0).unwrap(), good, "the partition is as it was");
    op.restore(0, &good, STATE_FORMAT, 0).unwrap();
    assert_eq!(op.snapshot(0).unwrap(), good);
}

/// A partition started fresh that never gets a trade (an instrument whose provider is silent):
/// its stand-in for unseen sources goes idle, and then there is no time to run the clock on
/// from. It used to run from the far past (`Micros::MIN` plus the silence) and overflow.
#[test]
fn a_fresh_partition_that_never_gets_a_trade_stays_quiet() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    let now0 = 1_000 * S;
    op.start_fresh(0, now0);
    for k in 1..=600 {
        op.advance(now0 + k * S, &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    // Trades after all: from their time on, as in any fresh partition.
    op.on_trade(
        0,
        &trade("a", "a", T0, "100", "1"),
        now0 + 601 * S,
        &mut out,
    );
    for k in 602..=700 {
        op.advance(now0 + k * S, &mut out);
    }
    assert!(prices(&out).iter().all(|p| p.computed_at >= T0));
}

#[test]
fn a_backlog_read_while_a_fresh_partition_waits_for_unseen_sources_gets_every_heartbeat() {
    let mut op = Operator::new(settings());
    let mut out = Vec::new();
    let now0 = 1_000 * S;
    op.start_fresh(0, now0);
    // 50 s of trades read within 0.1 s: before idle_after the clock is held back for sources
    // not seen yet, so it is first allowed at the end of the backlog.
    for i in 0..100 {
        for src in ["a", "b", "c"] {
            op.on_trade(
                0,
                &trade(src, src, T0 + i * 500 * MS, "100", "1"),
                now0 + i * MS,
                &mut out,
            );
        }
    }
    assert!(out.is_empty());
    for k in 1..=30 {
        op.advance(now0 + k * 100 * MS, &mut out);
    }
    let heartbeats: Vec<Micros> = prices(&out)
        .iter()
        .filter(|p| p.trigger == Trigger::Heartbeat)
        .map(|p| (p.computed_at - T0) / S)
        .collect();
    // Every boundary from the first trade to the newest (49.5 s) is published once.
    let want: Vec<Micros> = (1..=49).collect();
    assert_eq!(
        heartbeats[..49],
        want[..],
        "heartbeats (s after the first trade): {heartbeats:?}"
    );
}
