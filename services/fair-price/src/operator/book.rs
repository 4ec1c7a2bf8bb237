//! An instrument's recent trades, and its lookback kept up to date as trades come and go.
//!
//! The trades are kept sorted by event time (arrival order among equal times), so the lookback
//! `(as_of - lookback, as_of]` of any instant is one contiguous range. The book keeps the range
//! of the last instant computed, with each source's traded size in it and a price ladder (the
//! size traded at each price, every source together). Computing the next instant moves the range
//! by the trades between the two instants and walks the ladder to the weighted median, instead of
//! going through every trade of the lookback: with 2,500 trades in an instrument's lookback and a
//! computation every 100 ms, that is the difference between a few hundred and a few thousand
//! trades per second and instrument.
//!
//! The arithmetic is exact: prices and sizes are held as integers at the finest scale the
//! instrument has seen (rescaled when a finer one arrives). An instrument whose prices or sizes do
//! not fit an i64 at that scale is computed by [`Scan`] from then on, the same function that
//! checks the book in the tests.
//!
//! A checkpoint holds the trades and the scales (a price's text keeps the book's scale, so they
//! cannot be derived from the trades still held), not the window: the first computation after a
//! restore rebuilds it from the trades, to the same integers.

use std::collections::{BTreeMap, VecDeque};

use crate::records::Trigger;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tickflow_shared::domain::Micros;

use super::compute::{self, Entry, Lookback, Outcome, Scan, SourceView, Tick};
use super::Settings;

/// A trade with its price and size as integers at the book's scales.
#[derive(Debug, Clone, Copy)]
struct Keyed {
    entry: Entry,
    price: i64,
    size: i64,
}

impl Keyed {
    fn time(&self) -> Micros {
        self.entry.tick.event_time
    }
}

/// The lookback of the last instant computed.
#[derive(Debug)]
struct Window {
    as_of: Micros,
    /// `as_of - lookback`: the window holds the trades with `from < event_time <= as_of`.
    from: Micros,
    /// The window is `entries[lo..hi]`.
    lo: usize,
    hi: usize,
    /// Per source: the size traded in the window (at the book's size scale) and the trades.
    sources: Vec<(i128, u32)>,
    /// Price (at the book's price scale) → size traded at it in the window, and the trades.
    ladder: BTreeMap<i64, (i128, u32)>,
}

impl Window {
    fn add(&mut self, k: &Keyed) {
        let s = k.entry.source as usize;
        if self.sources.len() <= s {
            self.sources.resize(s + 1, (0, 0));
        }
        self.sources[s].0 += i128::from(k.size);
        self.sources[s].1 += 1;
        let level = self.ladder.entry(k.price).or_insert((0, 0));
        level.0 += i128::from(k.size);
        level.1 += 1;
    }

    fn remove(&mut self, k: &Keyed) {
        let s = k.entry.source as usize;
        self.sources[s].0 -= i128::from(k.size);
        self.sources[s].1 -= 1;
        if let Some(level) = self.ladder.get_mut(&k.price) {
            level.0 -= i128::from(k.size);
            level.1 -= 1;
            if level.1 == 0 {
                self.ladder.remove(&k.price);
            }
        }
    }
}

/// An instrument's trades still needed, and its lookback. See the module documentation.
#[derive(Debug)]
pub struct Book {
    /// Sorted by event time; among equal times in arrival order.
    entries: VecDeque<Keyed>,
    price_scale: u32,
    size_scale: u32,
    /// Every price and size fits an i64 at the scales above: the window can be used.
    exact: bool,
    window: Option<Window>,
}

impl Default for Book {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            price_scale: 0,
            size_scale: 0,
            exact: true,
            window: None,
        }
    }
}

/// One trade in a checkpoint: (source, event time, price, size), decimals as their exact text.
#[derive(Serialize, Deserialize)]
struct SavedTrade(
    u32,
    Micros,
    #[serde(with = "tickflow_shared::runtime::state::exact")] Decimal,
    #[serde(with = "tickflow_shared::runtime::state::exact")] Decimal,
);

/// A book in a checkpoint.
#[derive(Serialize, Deserialize)]
struct SavedBook {
    /// By event time; among equal times in arrival order.
    trades: Vec<SavedTrade>,
    price_scale: u32,
    size_scale: u32,
    exact: bool,
}

/// The largest scale a [`Decimal`] has (`Decimal::new` panics beyond it).
const MAX_SCALE: u32 = 28;

impl Serialize for Book {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SavedBook {
            trades: self
                .entries
                .iter()
                .map(|k| {
                    let Entry { source, tick } = k.entry;
                    SavedTrade(source, tick.event_time, tick.price, tick.size)
                })
                .collect(),
            price_scale: self.price_scale,
            size_scale: self.size_scale,
            exact: self.exact,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Book {
    /// The trades are pushed again, so the keys are recomputed (and rescaled or given up on, if
    /// a checkpoint disagrees with its scales) rather than trusted.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let saved = SavedBook::deserialize(deserializer)?;
        if saved.price_scale > MAX_SCALE || saved.size_scale > MAX_SCALE {
            return Err(serde::de::Error::custom(format!(
                "book scales {} and {} beyond a decimal's {MAX_SCALE}",
                saved.price_scale, saved.size_scale
            )));
        }
        let mut book = Book {
            entries: VecDeque::with_capacity(saved.trades.len()),
            price_scale: saved.price_scale,
            size_scale: saved.size_scale,
            exact: saved.exact,
            window: None,
        };
        for SavedTrade(source, event_time, price, size) in saved.trades {
            book.push(Entry {
                source,
                tick: Tick {
                    event_time,
                    price,
                    size,
                },
            });
        }
        Ok(book)
    }
}

/// `d`'s mantissa at `scale` (at least `d`'s own), if it fits an i64.
fn key(d: Decimal, scale: u32) -> Option<i64> {
    let factor = 10i128.checked_pow(scale - d.scale())?;
    i64::try_from(d.mantissa().checked_mul(factor)?).ok()
}

impl Book {
    /// The trades, for a [`Scan`].
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + Clone {
        self.entries.iter().map(|k| &k.entry)
    }

    /// Whether the lookback is kept incrementally (every price and size fit the integers).
    pub fn exact(&self) -> bool {
        self.exact
    }

    /// The time of the first trade after `t`.
    pub fn first_after(&self, t: Micros) -> Option<Micros> {
        let at = self.entries.partition_point(|k| k.time() <= t);
        self.entries.get(at).map(Keyed::time)
    }

    /// Adds a trade.
    pub fn push(&mut self, entry: Entry) {
        let Tick { price, size, .. } = entry.tick;
        if self.exact && (price.scale() > self.price_scale || size.scale() > self.size_scale) {
            self.rescale(
                price.scale().max(self.price_scale),
                size.scale().max(self.size_scale),
            );
        }
        let keys = if self.exact {
            key(price, self.price_scale).zip(key(size, self.size_scale))
        } else {
            None
        };
        let (price, size) = keys.unwrap_or_else(|| {
            self.give_up();
            (0, 0)
        });
        let keyed = Keyed { entry, price, size };
        let t = keyed.time();
        let at = if self.entries.back().is_none_or(|b| b.time() <= t) {
            self.entries.len()
        } else {
            self.entries.partition_point(|k| k.time() <= t)
        };
        self.entries.insert(at, keyed);
        if let Some(w) = &mut self.window {
            if t <= w.from {
                w.lo += 1;
                w.hi += 1;
            } else if t <= w.as_of {
                w.add(&keyed);
                w.hi += 1;
            }
        }
    }

    /// Drops every trade with `event_time <= drop_until`.
    pub fn prune(&mut self, drop_until: Micros) {
        while self.entries.front().is_some_and(|k| k.time() <= drop_until) {
            let Some(k) = self.entries.pop_front() else {
                break;
            };
            if let Some(w) = &mut self.window {
                if w.lo > 0 {
                    w.lo -= 1;
                    w.hi -= 1;
                } else if w.hi > 0 {
                    w.remove(&k);
                    w.hi -= 1;
                }
            }
        }
    }

    /// The fair price as of `as_of` of the sources `order` names (indices into `sources`).
    pub fn evaluate<S: SourceView>(
        &mut self,
        sources: &[S],
        order: impl IntoIterator<Item = usize>,
        as_of: Micros,
        settings: &Settings,
        trigger: Trigger,
    ) -> Outcome {
        if !self.exact {
            let mut scan = Scan::new(self.entries(), as_of, settings.lookback);
            return compute::evaluate(sources, order, &mut scan, as_of, settings, trigger);
        }
        self.seek(as_of, settings.lookback);
        let mut view = View { book: self };
        compute::evaluate(sources, order, &mut view, as_of, settings, trigger)
    }

    /// Moves the window to the lookback of `as_of`, adding and removing the trades between.
    fn seek(&mut self, as_of: Micros, lookback: Micros) {
        let from = as_of.saturating_sub(lookback);
        let entries = &self.entries;
        // The first trade after `t`: stepped to from the old bound when there is one (the window
        // moves by a few trades between computations), else by binary search.
        let bound = |t: Micros, old: Option<usize>| match old {
            Some(mut i) => {
                while i < entries.len() && entries[i].time() <= t {
                    i += 1;
                }
                while i > 0 && entries[i - 1].time() > t {
                    i -= 1;
                }
                i
            }
            None => entries.partition_point(|k| k.time() <= t),
        };
        let lo = bound(from, self.window.as_ref().map(|w| w.lo));
        let hi = bound(as_of, self.window.as_ref().map(|w| w.hi));
        let w = self.window.get_or_insert_with(|| Window {
            as_of,
            from,
            lo,
            hi: lo,
            sources: Vec::new(),
            ladder: BTreeMap::new(),
        });
        // `a..b`, empty when b < a.
        let span = |a: usize, b: usize| a..b.max(a);
        // In the old window only: before the new one, or after it.
        for k in entries.range(span(w.lo, w.hi.min(lo))) {
            w.remove(k);
        }
        for k in entries.range(span(w.lo.max(hi), w.hi)) {
            w.remove(k);
        }
        // In the new window only.
        for k in entries.range(span(lo, hi.min(w.lo))) {
            w.add(k);
        }
        for k in entries.range(span(lo.max(w.hi), hi)) {
            w.add(k);
        }
        (w.as_of, w.from, w.lo, w.hi) = (as_of, from, lo, hi);
    }

    /// Rescales every key to finer scales; gives up on the window when one no longer fits.
    fn rescale(&mut self, price_scale: u32, size_scale: u32) {
        let pf = 10i64.checked_pow(price_scale - self.price_scale);
        let sf = 10i64.checked_pow(size_scale - self.size_scale);
        let fits = pf.zip(sf).is_some_and(|(pf, sf)| {
            self.entries.iter_mut().all(|k| {
                match (k.price.checked_mul(pf), k.size.checked_mul(sf)) {
                    (Some(p), Some(s)) => {
                        (k.price, k.size) = (p, s);
                        true
                    }
                    _ => false,
                }
            })
        });
        (self.price_scale, self.size_scale) = (price_scale, size_scale);
        self.window = None;
        if !fits {
            self.give_up();
        }
    }

    /// From now on this instrument is computed by scanning.
    fn give_up(&mut self) {
        if self.exact {
            tracing::info!(
                "a price or size does not fit the integer lookback; this instrument is computed \
                 by scanning its trades from now on"
            );
        }
        self.exact = false;
        self.window = None;
    }
}

/// [`Lookback`] from the window, moved to the instant being computed.
struct View<'b> {
    book: &'b Book,
}

impl View<'_> {
    fn window(&self) -> &Window {
        self.book.window.as_ref().expect("seek made the window")
    }

    /// The window's trades.
    fn trades(&self) -> impl Iterator<Item = &Entry> + Clone {
        let w = self.window();
        self.book.entries.range(w.lo..w.hi).map(|k| &k.entry)
    }

    fn counted_ticks<'a>(&'a self, counted: &'a [bool]) -> impl Iterator<Item = &'a Tick> + Clone {
        self.trades()
            .filter(|e| counted.get(e.source as usize).copied().unwrap_or(false))
            .map(|e| &e.tick)
    }
}

impl Lookback for View<'_> {
    fn source_states(&mut self, n: usize) -> Vec<(Option<Tick>, Decimal)> {
        let w = self.window();
        let mut last: Vec<Option<Tick>> = vec![None; n];
        let mut missing = n;
        // Newest first: the first trade met of a source is its newest at or before the instant
        // (and among equal times the later arrival, as the book keeps arrival order there).
        for k in self.book.entries.range(..w.hi).rev() {
            let slot = &mut last[k.entry.source as usize];
            if slot.is_none() {
                *slot = Some(k.entry.tick);
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        last.into_iter()
            .enumerate()
            .map(|(s, last)| {
                let sum = w.sources.get(s).map_or(0, |v| v.0);
                let volume = Decimal::try_from_i128_with_scale(sum, self.book.size_scale)
                    .unwrap_or_else(|_| {
                        compute::decimal_volume(
                            self.trades()
                                .filter(|e| e.source as usize == s)
                                .map(|e| &e.tick),
                        )
                    });
                (last, volume)
            })
            .collect()
    }

    fn vw_median(&mut self, counted: &[bool]) -> Option<Decimal> {
        let w = self.window();
        let is_counted = |s: usize| counted.get(s).copied().unwrap_or(false);
        let mut total: i128 = 0;
        let mut others = false;
        for (s, (size, trades)) in w.sources.iter().enumerate() {
            if is_counted(s) {
                total = total.checked_add(*size)?;
            } else if *trades > 0 {
                others = true;
            }
        }
        if total <= 0 {
            return None;
        }
        // The trades of the sources not counted come off the ladder as the walk passes their
        // prices.
        let mut minus: Vec<(i64, i128)> = Vec::new();
        if others {
            minus = self
                .book
                .entries
                .range(w.lo..w.hi)
                .filter(|k| !is_counted(k.entry.source as usize))
                .map(|k| (k.price, i128::from(k.size)))
                .collect();
            minus.sort_unstable_by_key(|m| m.0);
        }
        let mut minus = minus.into_iter().peekable();
        let mut cumulative: i128 = 0;
        for (&price, &(size, _)) in &w.ladder {
            let mut size = size;
            while let Some((_, s)) = minus.next_if(|m| m.0 <= price) {
                size -= s;
            }
            cumulative = cumulative.checked_add(size)?;
            if cumulative.checked_mul(2)? >= total {
                return Some(Decimal::new(price, self.book.price_scale));
            }
        }
        None
    }

    fn vwap(&mut self, counted: &[bool]) -> Option<Decimal> {
        compute::vwap(self.counted_ticks(counted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FairPriceConfig;
    use crate::operator::compute::tests::Rng;
    use crate::records::Method;

    struct Named(String, Micros);

    impl SourceView for Named {
        fn provider(&self) -> &str {
            &self.0
        }
        fn exchange(&self) -> &str {
            &self.0
        }
        fn first_event_time(&self) -> Micros {
            self.1
        }
    }

    /// Random trades on a grid of 5 µs, so times often equal each other and the window's bounds
    /// (out of order, equal times, few prices so ties, mixed scales, now and then
    /// a source far off or silent), pruned now and then, computed at instants that go forward and
    /// back: the book always equals a scan of the same trades.
    #[test]
    fn the_book_equals_a_scan_of_the_same_trades() {
        for case in 0..300u64 {
            let mut rng = Rng(case * 104_729 + 7);
            let mut settings = FairPriceConfig::default().settings();
            settings.lookback = 5 * (200 + rng.next(800) as Micros);
            settings.staleness = 500 + rng.next(4_000) as Micros;
            settings.method = [
                Method::VwMedian,
                Method::Median,
                Method::Vwap,
                Method::TrimmedMean,
            ][rng.next(4) as usize];
            let n_sources = 1 + rng.next(6) as usize;
            let sources: Vec<Named> = (0..n_sources).map(|i| Named(format!("s{i}"), 0)).collect();
            let mut book = Book::default();
            let mut clock: Micros = 0;
            for step in 0..400 {
                let source = rng.next(n_sources as u64) as u32;
                // One source is silent for a while in some cases.
                if case % 3 == 0 && source == 0 && (100..250).contains(&step) {
                    continue;
                }
                clock += 5 * rng.next(8) as Micros;
                let event_time = clock - 5 * rng.next(60) as Micros;
                let scale = rng.next(if case % 5 == 0 { 4 } else { 1 }) as u32 + 2;
                let far = if source == 1 && case % 4 == 0 { 20 } else { 0 };
                let price = Decimal::new(
                    (1_000 + rng.next(10) as i64 + far) * 10i64.pow(scale),
                    scale + 1,
                );
                let size = Decimal::new(1 + rng.next(9) as i64, rng.next(3) as u32);
                book.push(Entry {
                    source,
                    tick: Tick {
                        event_time,
                        price,
                        size,
                    },
                });
                if step % 7 == 0 {
                    let as_of = clock - 5 * rng.next(40) as Micros;
                    let got =
                        book.evaluate(&sources, 0..n_sources, as_of, &settings, Trigger::Change);
                    let want = compute::evaluate(
                        &sources,
                        0..n_sources,
                        &mut Scan::new(book.entries(), as_of, settings.lookback),
                        as_of,
                        &settings,
                        Trigger::Change,
                    );
                    assert_eq!(got, want, "case {case} step {step} as of {as_of}");
                }
                if step % 50 == 49 {
                    book.prune(clock - settings.lookback - 500);
                }
            }
            assert!(book.exact(), "case {case}: the book gave up");
        }
    }

    #[test]
    fn a_price_beyond_the_integers_falls_back_to_scanning() {
        let settings = FairPriceConfig::default().settings();
        let sources = [Named("a".into(), 0), Named("b".into(), 0)];
        let mut book = Book::default();
        let tick = |event_time, price: Decimal| Tick {
            event_time,
            price,
            size: Decimal::ONE,
        };
        book.push(Entry {
            source: 0,
            tick: tick(10, Decimal::new(100, 0)),
        });
        assert!(book.exact());
        // 10^20 does not fit an i64.
        let huge = Decimal::from_i128_with_scale(100_000_000_000_000_000_000, 0);
        book.push(Entry {
            source: 1,
            tick: tick(20, huge),
        });
        assert!(!book.exact());
        let got = book.evaluate(&sources, 0..2, 30, &settings, Trigger::Change);
        let want = compute::evaluate(
            &sources,
            0..2,
            &mut Scan::new(book.entries(), 30, settings.lookback),
            30,
            &settings,
            Trigger::Change,
        );
        assert_eq!(got, want);
        assert_eq!(got.used.len(), 2);
    }
}
