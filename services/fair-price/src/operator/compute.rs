//! The fair price of one instrument as of one instant of event time: a pure function of the
//! sources' trades. Documented step by step in docs/architecture.md ("How the fair price is computed"); the
//! integration test recomputes it independently from the same trades.
//!
//! 1. Each source's last trade at or before `as_of` and its traded size within the lookback;
//!    a source without a trade within the staleness limit is excluded as STALE.
//! 2. With at least `min_sources_for_outliers` fresh sources, those too far from the median of
//!    their last prices are excluded as OUTLIER.
//! 3. The remaining sources give the price by the configured method.
//!
//! [`evaluate`] does the arithmetic and returns an [`Outcome`] that names sources by index, so
//! the operator can tell "did the result change" without building strings; only a result that
//! is published becomes a [`FairPrice`] record ([`Outcome::to_fair_price`]), and what the next
//! comparison needs of it is kept as a [`Published`].

use std::collections::VecDeque;

use crate::records::{Exclusion, FairPrice, Method, SourceExcluded, SourceUsed, Trigger};
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{round_derived, Micros};

use super::{OutlierRule, Settings};

/// One trade of a source, as the operator keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    pub event_time: Micros,
    pub price: Decimal,
    pub size: Decimal,
}

/// One trade in an instrument's buffer: its source (an index) and the trade.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub source: u32,
    pub tick: Tick,
}

/// What the computation reads of a source besides its trades.
pub trait SourceView {
    fn provider(&self) -> &str;
    fn exchange(&self) -> &str;
    /// The source's first trade ever (event time): before it, the source did not exist.
    fn first_event_time(&self) -> Micros;
}

/// A source's identity and its trades in arrival order, borrowed (for [`compute`]).
pub struct SourceTicks<'a> {
    pub provider: &'a str,
    pub exchange: &'a str,
    pub ticks: &'a VecDeque<Tick>,
    pub first_event_time: Micros,
}

impl SourceView for SourceTicks<'_> {
    fn provider(&self) -> &str {
        self.provider
    }
    fn exchange(&self) -> &str {
        self.exchange
    }
    fn first_event_time(&self) -> Micros {
        self.first_event_time
    }
}

/// A source that counted: its index in the sources slice, last trade and lookback volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Used {
    pub source: usize,
    /// Position in the evaluation order.
    pub rank: usize,
    pub last: Tick,
    pub volume: Decimal,
}

/// Why a source did not count, with what its record's detail text needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Why {
    /// No trade within the staleness limit; its last trade at or before the instant, if any.
    Stale { last: Option<Micros> },
    /// Farther than the limit from the median of the fresh sources' last prices.
    Outlier { distance: Decimal, median: Decimal },
}

/// A source that did not count. `rank` is its position in the evaluation order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Excluded {
    pub source: usize,
    pub rank: usize,
    pub why: Why,
}

impl Excluded {
    pub fn reason(&self) -> Exclusion {
        match self.why {
            Why::Stale { .. } => Exclusion::Stale,
            Why::Outlier { .. } => Exclusion::Outlier,
        }
    }
}

/// A fair price as computed, with sources named by their index in the slice it was computed
/// from.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub price: Option<Decimal>,
    /// In evaluation order.
    pub used: Vec<Used>,
    /// In evaluation order.
    pub excluded: Vec<Excluded>,
    pub dispersion: f64,
    pub confidence: f64,
    pub lookback_volume: Decimal,
    pub newest_event_time: Option<Micros>,
    pub computed_at: Micros,
    pub trigger: Trigger,
}

/// What the operator keeps of an instrument's last result (published, or computed during
/// replay): when it was computed, and what tells whether the next one changed. Part of the
/// checkpoint; the rest of the outcome (volumes, statistics) is never read again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub computed_at: Micros,
    #[serde(with = "tickflow_shared::runtime::state::exact_option")]
    pub price: Option<Decimal>,
    /// The sources used (indices), in evaluation order.
    pub used: Vec<usize>,
    /// The sources excluded (indices) and why, in evaluation order.
    #[serde(with = "exclusions")]
    pub excluded: Vec<(usize, Exclusion)>,
}

impl Published {
    /// Becomes `outcome`'s result, reusing its buffers: no allocation once they have grown to
    /// the instrument's number of sources.
    pub fn set(&mut self, outcome: &Outcome) {
        self.computed_at = outcome.computed_at;
        self.price = outcome.price;
        self.used.clear();
        self.used.extend(outcome.used.iter().map(|u| u.source));
        self.excluded.clear();
        self.excluded
            .extend(outcome.excluded.iter().map(|e| (e.source, e.reason())));
    }

    /// `outcome` is the same result, whenever and why it was computed: what "changed" compares
    /// (the price, and which sources counted or were excluded for which reason).
    pub fn same_result(&self, outcome: &Outcome) -> bool {
        self.price == outcome.price
            && self.used.len() == outcome.used.len()
            && self
                .used
                .iter()
                .zip(&outcome.used)
                .all(|(&a, b)| a == b.source)
            && self.excluded.len() == outcome.excluded.len()
            && self
                .excluded
                .iter()
                .zip(&outcome.excluded)
                .all(|(&(source, reason), b)| source == b.source && reason == b.reason())
    }

    /// The largest source index it names, to check a restored one against its sources.
    pub fn max_source(&self) -> Option<usize> {
        self.used
            .iter()
            .copied()
            .chain(self.excluded.iter().map(|e| e.0))
            .max()
    }
}

/// [`Exclusion`] in checkpoints by its name (the shared type reads only its Avro form).
mod exclusions {
    use std::str::FromStr;

    use crate::records::Exclusion;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        excluded: &[(usize, Exclusion)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(excluded.iter().map(|(s, e)| (s, e.as_str())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(usize, Exclusion)>, D::Error> {
        Vec::<(usize, String)>::deserialize(deserializer)?
            .into_iter()
            .map(|(s, e)| {
                Exclusion::from_str(&e)
                    .map(|e| (s, e))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

impl Outcome {
    /// Whether source `source` took part: used, or fresh but excluded as an outlier.
    pub fn fresh(&self, source: usize) -> bool {
        self.used.iter().any(|u| u.source == source)
            || self
                .excluded
                .iter()
                .any(|e| e.source == source && e.reason() == Exclusion::Outlier)
    }

    /// The record, naming the sources from the slice the outcome was computed from.
    pub fn to_fair_price<S: SourceView>(
        &self,
        instrument: &str,
        sources: &[S],
        settings: &Settings,
    ) -> FairPrice {
        let mut sources_excluded: Vec<SourceExcluded> = self
            .excluded
            .iter()
            .map(|e| {
                let s = &sources[e.source];
                let detail = match e.why {
                    Why::Stale { last: Some(last) } => format!(
                        "no trade for {:.1} s",
                        (self.computed_at - last) as f64 / 1e6
                    ),
                    Why::Stale { last: None } => format!(
                        "no trade for more than {:.1} s",
                        settings.lookback as f64 / 1e6
                    ),
                    Why::Outlier { distance, median } => {
                        format!("{:.2}% from the median {median}", percent(distance, median))
                    }
                };
                SourceExcluded {
                    provider: s.provider().into(),
                    exchange: s.exchange().into(),
                    reason: e.reason(),
                    detail,
                }
            })
            .collect();
        sources_excluded
            .sort_by(|a, b| (&a.provider, &a.exchange).cmp(&(&b.provider, &b.exchange)));
        FairPrice {
            instrument: instrument.into(),
            stale: self.price.is_none(),
            price: self.price,
            method: settings.method,
            sources_used: self
                .used
                .iter()
                .map(|u| SourceUsed {
                    provider: sources[u.source].provider().into(),
                    exchange: sources[u.source].exchange().into(),
                    price: u.last.price,
                    volume: u.volume,
                    last_event_time: u.last.event_time,
                })
                .collect(),
            sources_excluded,
            dispersion: self.dispersion,
            confidence: self.confidence,
            lookback_volume: self.lookback_volume,
            newest_event_time: self.newest_event_time,
            computed_at: self.computed_at,
            trigger: self.trigger,
        }
    }
}

/// Computes the fair price of `instrument` as of `as_of` from `sources`, in their order.
pub fn compute(
    instrument: &str,
    sources: &[SourceTicks],
    as_of: Micros,
    settings: &Settings,
    trigger: Trigger,
) -> FairPrice {
    let entries: Vec<Entry> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.ticks.iter().map(move |tick| Entry {
                source: i as u32,
                tick: *tick,
            })
        })
        .collect();
    evaluate(
        sources,
        0..sources.len(),
        &mut Scan::new(entries.iter(), as_of, settings.lookback),
        as_of,
        settings,
        trigger,
    )
    .to_fair_price(instrument, sources, settings)
}

/// What a computation reads of an instrument's recent trades, as of one instant `as_of`, with
/// the lookback `(as_of - lookback, as_of]`. [`Scan`] reads them by going through the trades; the
/// operator's [`super::book::Book`] keeps the lookback up to date as trades come and go.
pub trait Lookback {
    /// Each of the `n` sources' last trade at or before the instant (the newest by event time;
    /// among equal times the later arrival) and its traded size within the lookback.
    fn source_states(&mut self, n: usize) -> Vec<(Option<Tick>, Decimal)>;
    /// The lower volume-weighted median of the lookback's trades of the sources `counted` marks
    /// (indexed by source); `None` without volume.
    fn vw_median(&mut self, counted: &[bool]) -> Option<Decimal>;
    /// Their volume-weighted average price; `None` without volume or on overflow.
    fn vwap(&mut self, counted: &[bool]) -> Option<Decimal>;
}

/// [`Lookback`] by scanning `entries`: the trades of every source, each source's in arrival
/// order.
pub struct Scan<I> {
    entries: I,
    as_of: Micros,
    from: Micros,
}

impl<'e, I: Iterator<Item = &'e Entry> + Clone> Scan<I> {
    pub fn new(entries: I, as_of: Micros, lookback: Micros) -> Self {
        Self {
            entries,
            as_of,
            from: as_of.saturating_sub(lookback),
        }
    }

    fn window<'c>(&self, counted: &'c [bool]) -> impl Iterator<Item = &'e Tick> + Clone + 'c
    where
        I: 'c,
    {
        let (from, as_of) = (self.from, self.as_of);
        self.entries
            .clone()
            .filter(move |e| {
                counted.get(e.source as usize).copied().unwrap_or(false)
                    && e.tick.event_time > from
                    && e.tick.event_time <= as_of
            })
            .map(|e| &e.tick)
    }
}

impl<'e, I: Iterator<Item = &'e Entry> + Clone> Lookback for Scan<I> {
    fn source_states(&mut self, n: usize) -> Vec<(Option<Tick>, Decimal)> {
        let (from, as_of) = (self.from, self.as_of);
        let mut state: Vec<(Option<Tick>, Option<Sum>)> = vec![(None, Some(Sum::ZERO)); n];
        for e in self.entries.clone().filter(|e| e.tick.event_time <= as_of) {
            let (last, volume) = &mut state[e.source as usize];
            // The newest by event time; among equal times, the later arrival.
            if last.is_none_or(|l| e.tick.event_time >= l.event_time) {
                *last = Some(e.tick);
            }
            if e.tick.event_time > from {
                *volume = volume.and_then(|v| v.add(e.tick.size));
            }
        }
        state
            .into_iter()
            .enumerate()
            .map(|(index, (last, sum))| {
                let volume = sum.and_then(Sum::to_decimal).unwrap_or_else(|| {
                    // Beyond an i128: add as decimals, which round to a smaller scale if they
                    // must.
                    decimal_volume(
                        self.entries
                            .clone()
                            .filter(|e| {
                                e.source as usize == index
                                    && e.tick.event_time > from
                                    && e.tick.event_time <= as_of
                            })
                            .map(|e| &e.tick),
                    )
                });
                (last, volume)
            })
            .collect()
    }

    fn vw_median(&mut self, counted: &[bool]) -> Option<Decimal> {
        vw_median(self.window(counted))
    }

    fn vwap(&mut self, counted: &[bool]) -> Option<Decimal> {
        vwap(self.window(counted))
    }
}

/// The sum of the sizes of `ticks` in decimals, saturating (for sums beyond an i128).
pub(super) fn decimal_volume<'t>(ticks: impl Iterator<Item = &'t Tick>) -> Decimal {
    ticks.fold(Decimal::ZERO, |acc, t| {
        acc.checked_add(t.size).unwrap_or(Decimal::MAX)
    })
}

/// Evaluates the sources `order` names (indices into `sources`, in a fixed order) as of `as_of`,
/// from what `lookback` reads of their trades.
pub fn evaluate<S: SourceView>(
    sources: &[S],
    order: impl IntoIterator<Item = usize>,
    lookback: &mut impl Lookback,
    as_of: Micros,
    settings: &Settings,
    trigger: Trigger,
) -> Outcome {
    let state = lookback.source_states(sources.len());
    let mut fresh: Vec<Used> = Vec::new();
    let mut excluded = Vec::new();
    for (rank, index) in order.into_iter().enumerate() {
        if sources[index].first_event_time() > as_of {
            continue;
        }
        let (last, volume) = state[index];
        match last {
            Some(last) if as_of - last.event_time <= settings.staleness => fresh.push(Used {
                source: index,
                rank,
                last,
                volume,
            }),
            last => excluded.push(Excluded {
                source: index,
                rank,
                why: Why::Stale {
                    last: last.map(|l| l.event_time),
                },
            }),
        }
    }

    if fresh.len() >= settings.min_sources_for_outliers {
        let mut prices: Vec<Decimal> = fresh.iter().map(|f| f.last.price).collect();
        if let Some(median) = median_in_place(&mut prices) {
            let limit = outlier_limit(&settings.outliers, median, &prices);
            fresh.retain(|f| {
                let distance = (f.last.price - median).abs();
                if distance <= limit {
                    return true;
                }
                excluded.push(Excluded {
                    source: f.source,
                    rank: f.rank,
                    why: Why::Outlier { distance, median },
                });
                false
            });
        }
    }
    excluded.sort_by_key(|e| e.rank);

    let mut counted = vec![false; sources.len()];
    for f in &fresh {
        counted[f.source] = true;
    }
    let mut used_prices: Vec<Decimal> = fresh.iter().map(|f| f.last.price).collect();
    let price = match settings.method {
        _ if fresh.is_empty() => None,
        Method::VwMedian => lookback
            .vw_median(&counted)
            .or_else(|| median_in_place(&mut used_prices)),
        Method::Median => median_in_place(&mut used_prices),
        Method::Vwap => lookback
            .vwap(&counted)
            .or_else(|| median_in_place(&mut used_prices)),
        Method::TrimmedMean => trimmed_mean(&mut used_prices, settings.trimmed_share),
    };
    let dispersion = match (&price, used_prices.iter().min(), used_prices.iter().max()) {
        (Some(p), Some(lo), Some(hi)) if !p.is_zero() => ((*hi - *lo) / *p).to_f64().unwrap_or(0.0),
        _ => 0.0,
    };
    let confidence = if price.is_some() {
        let agreement = (1.0 - dispersion * 100.0 / settings.outliers.scale_pct()).max(0.0);
        (fresh.len() as f64 / 3.0).min(1.0) * agreement
    } else {
        0.0
    };
    let lookback_volume = fresh.iter().fold(Decimal::ZERO, |acc, f| {
        acc.checked_add(f.volume).unwrap_or(Decimal::MAX)
    });
    let newest_event_time = fresh.iter().map(|f| f.last.event_time).max();
    Outcome {
        price,
        used: fresh,
        excluded,
        dispersion,
        confidence,
        lookback_volume,
        newest_event_time,
        computed_at: as_of,
        trigger,
    }
}

/// 10^0 ..= 10^28: rescales a decimal's mantissa to a larger scale.
const POW10: [i128; 29] = {
    let mut table = [1i128; 29];
    let mut i = 1;
    while i < 29 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// Sorts `items` by the exact decimal `key`. When every key's mantissa rescaled to the largest
/// scale fits an i128 (always, for prices of one instrument) the keys compare as integers, which
/// is several times faster than comparing decimals; otherwise as decimals.
fn sort_by_decimal<T>(items: &mut [T], key: impl Fn(&T) -> Decimal) {
    let Some(scale) = items.iter().map(|t| key(t).scale()).max() else {
        return;
    };
    let rescaled = |d: Decimal| {
        d.mantissa()
            .checked_mul(POW10[(scale - d.scale()) as usize])
    };
    if items.iter().all(|t| rescaled(key(t)).is_some()) {
        items.sort_unstable_by_key(|t| rescaled(key(t)).unwrap_or(0));
    } else {
        items.sort_unstable_by_key(|t| key(t));
    }
}

/// The median; for an even count the midpoint of the two middle values (exact).
pub fn median(mut values: Vec<Decimal>) -> Option<Decimal> {
    median_in_place(&mut values)
}

/// [`median`], sorting `values` in place.
fn median_in_place(values: &mut [Decimal]) -> Option<Decimal> {
    if values.is_empty() {
        return None;
    }
    sort_by_decimal(values, |d| *d);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        Some(values[mid])
    } else {
        let (lo, hi) = (values[mid - 1], values[mid]);
        // lo + (hi - lo) / 2 cannot overflow where (lo + hi) / 2 could.
        Some(lo + (hi - lo) / Decimal::TWO)
    }
}

fn percent(distance: Decimal, median: Decimal) -> f64 {
    if median.is_zero() {
        return f64::INFINITY;
    }
    (distance / median.abs()).to_f64().unwrap_or(f64::INFINITY) * 100.0
}

/// The largest distance from the median a source may have and still count.
fn outlier_limit(rule: &OutlierRule, median: Decimal, prices: &[Decimal]) -> Decimal {
    let pct = |p: f64| {
        median
            .abs()
            .checked_mul(Decimal::from_f64(p / 100.0).unwrap_or(Decimal::ZERO))
            .unwrap_or(Decimal::MAX)
    };
    match *rule {
        OutlierRule::Band { pct: band } => pct(band),
        OutlierRule::Mad { k, floor_pct } => {
            let deviations: Vec<Decimal> = prices.iter().map(|p| (*p - median).abs()).collect();
            let mad = self::median(deviations).unwrap_or(Decimal::ZERO);
            let k = Decimal::from_f64(k).unwrap_or(Decimal::ZERO);
            mad.checked_mul(k)
                .unwrap_or(Decimal::MAX)
                .max(pct(floor_pct))
        }
    }
}

/// An exact running sum of decimals: an i128 mantissa at the largest scale added so far.
/// Several times faster than adding `Decimal`s; `None` from [`Sum::add`] once it would not fit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sum {
    mantissa: i128,
    scale: u32,
}

impl Sum {
    const ZERO: Sum = Sum {
        mantissa: 0,
        scale: 0,
    };

    fn add(self, d: Decimal) -> Option<Sum> {
        let (m, s) = (d.mantissa(), d.scale());
        if s == self.scale {
            Some(Sum {
                mantissa: self.mantissa.checked_add(m)?,
                scale: s,
            })
        } else if s > self.scale {
            let own = self
                .mantissa
                .checked_mul(POW10[(s - self.scale) as usize])?;
            Some(Sum {
                mantissa: own.checked_add(m)?,
                scale: s,
            })
        } else {
            let m = m.checked_mul(POW10[(self.scale - s) as usize])?;
            Some(Sum {
                mantissa: self.mantissa.checked_add(m)?,
                scale: self.scale,
            })
        }
    }

    /// The sum as a decimal (the scale a chain of `Decimal` additions would give), if it fits.
    fn to_decimal(self) -> Option<Decimal> {
        Decimal::try_from_i128_with_scale(self.mantissa, self.scale).ok()
    }
}

/// The lower volume-weighted median of the trades in `window` (the used sources' trades in the
/// lookback): the lowest price at which the cumulative size, in price order, reaches half of
/// the total.
fn vw_median<'t>(window: impl Iterator<Item = &'t Tick> + Clone) -> Option<Decimal> {
    vw_median_integer(window.clone()).unwrap_or_else(|| vw_median_decimal(window))
}

/// [`vw_median`] in integers (prices rescaled to their largest scale, sizes summed with
/// [`Sum`]) by weighted selection, O(n) expected instead of a sort; `None` when a value does
/// not fit an i128 (then the decimal version runs).
fn vw_median_integer<'t>(
    window: impl Iterator<Item = &'t Tick> + Clone,
) -> Option<Option<Decimal>> {
    let (price_scale, total) = window.clone().try_fold((0, Sum::ZERO), |(scale, sum), t| {
        Some((t.price.scale().max(scale), sum.add(t.size)?))
    })?;
    if total.mantissa <= 0 {
        return Some(None);
    }
    let rescale = |d: Decimal, scale: u32| {
        d.mantissa()
            .checked_mul(POW10[(scale - d.scale()) as usize])
    };
    let mut trades: Vec<(i128, i128, Decimal)> = Vec::new();
    for t in window {
        trades.push((
            rescale(t.price, price_scale)?,
            rescale(t.size, total.scale)?,
            t.price,
        ));
    }
    Some(weighted_lower_median(&mut trades, total.mantissa))
}

/// The price of the first item, in price order, at which the running size reaches half of
/// `total` (the sum of all sizes); items are (price key, size, price). Quickselect: each round
/// places a pivot, then keeps only the side that holds the answer.
fn weighted_lower_median(items: &mut [(i128, i128, Decimal)], total: i128) -> Option<Decimal> {
    let (mut lo, mut hi) = (0, items.len());
    // The sizes of the items before `lo`, all priced at most as low as those in lo..hi.
    let mut below: i128 = 0;
    while lo < hi {
        let range = &mut items[lo..hi];
        let mid = range.len() / 2;
        range.select_nth_unstable_by_key(mid, |t| t.0);
        let left = range[..mid]
            .iter()
            .try_fold(below, |acc, t| acc.checked_add(t.1))?;
        let (_, pivot_size, pivot_price) = range[mid];
        if mid > 0 && left.checked_mul(2)? >= total {
            hi = lo + mid;
        } else if left.checked_add(pivot_size)?.checked_mul(2)? >= total {
            return Some(pivot_price);
        } else {
            below = left.checked_add(pivot_size)?;
            lo += mid + 1;
        }
    }
    None
}

/// [`vw_median`] in decimals, by sorting.
pub(super) fn vw_median_decimal<'t>(window: impl Iterator<Item = &'t Tick>) -> Option<Decimal> {
    let mut trades: Vec<(Decimal, Decimal)> = window.map(|t| (t.price, t.size)).collect();
    let total = trades
        .iter()
        .try_fold(Decimal::ZERO, |acc, t| acc.checked_add(t.1))?;
    if total <= Decimal::ZERO {
        return None;
    }
    trades.sort_unstable_by_key(|t| t.0);
    let mut cumulative = Decimal::ZERO;
    for (price, size) in trades {
        cumulative = cumulative.checked_add(size)?;
        // cumulative × 2 >= total, without the overflow of doubling.
        if cumulative >= total - cumulative {
            return Some(price);
        }
    }
    None
}

/// Σ price × size / Σ size over the trades in `window`, rounded the way tickflow rounds derived
/// values; `None` on overflow (the caller falls back to the median).
pub(super) fn vwap<'t>(window: impl Iterator<Item = &'t Tick>) -> Option<Decimal> {
    let mut notional = Decimal::ZERO;
    let mut volume = Decimal::ZERO;
    for t in window {
        notional = notional.checked_add(t.price.checked_mul(t.size)?)?;
        volume = volume.checked_add(t.size)?;
    }
    if volume <= Decimal::ZERO {
        return None;
    }
    Some(round_derived(notional.checked_div(volume)?))
}

/// The mean of the prices after dropping ⌊n × share⌋ from each end, rounded.
fn trimmed_mean(prices: &mut [Decimal], share: f64) -> Option<Decimal> {
    if prices.is_empty() {
        return None;
    }
    sort_by_decimal(prices, |d| *d);
    let n = prices.len();
    let cut = ((n as f64 * share).floor() as usize).min((n - 1) / 2);
    let kept = &prices[cut..n - cut];
    let sum = kept
        .iter()
        .try_fold(Decimal::ZERO, |acc, p| acc.checked_add(*p))?;
    Some(round_derived(sum.checked_div(Decimal::from(kept.len()))?))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A seeded xorshift, so a failure names its case.
    pub(in crate::operator) struct Rng(pub u64);

    impl Rng {
        pub(in crate::operator) fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    /// The definition, by sorting: the reference the fast versions must equal.
    fn reference(ticks: &[Tick]) -> Option<Decimal> {
        let mut sorted = ticks.to_vec();
        sorted.sort_by_key(|t| t.price);
        let total: Decimal = sorted.iter().map(|t| t.size).sum();
        let mut cumulative = Decimal::ZERO;
        for t in sorted {
            cumulative += t.size;
            if cumulative * Decimal::TWO >= total {
                return Some(t.price);
            }
        }
        None
    }

    #[test]
    fn weighted_selection_equals_sorting_with_ties_and_mixed_scales() {
        for case in 0..2_000u64 {
            let mut rng = Rng(case * 7919 + 1);
            let n = 1 + rng.next(60) as usize;
            // Few distinct prices, so ties are common; scales 0..3 mixed within one window.
            let ticks: Vec<Tick> = (0..n)
                .map(|_| {
                    let scale = rng.next(4) as u32;
                    let price = Decimal::new((10 + rng.next(8) as i64) * 10i64.pow(scale), scale);
                    let size = Decimal::new(1 + rng.next(5) as i64, rng.next(3) as u32);
                    Tick {
                        event_time: 0,
                        price,
                        size,
                    }
                })
                .collect();
            let want = reference(&ticks);
            assert_eq!(vw_median(ticks.iter()), want, "case {case}: {ticks:?}");
            assert_eq!(
                vw_median_decimal(ticks.iter()),
                want,
                "case {case} (decimal path)"
            );
        }
    }

    #[test]
    fn sizes_beyond_an_i128_fall_back_to_decimals() {
        let big = Decimal::MAX / Decimal::TWO;
        let ticks = [
            Tick {
                event_time: 0,
                price: Decimal::new(101, 0),
                size: big,
            },
            Tick {
                event_time: 0,
                price: Decimal::new(100, 0),
                // Scale 28 forces the other size to be multiplied by 10^28: no i128 holds it.
                size: Decimal::new(1, 28),
            },
        ];
        assert_eq!(vw_median_integer(ticks.iter()), None);
        assert_eq!(vw_median(ticks.iter()), Some(Decimal::new(101, 0)));
    }

    #[test]
    fn sum_keeps_the_scale_decimal_addition_gives() {
        let values = ["0.5", "0.25", "3", "1.125"].map(|v| v.parse::<Decimal>().unwrap());
        let sum = values
            .iter()
            .try_fold(Sum::ZERO, |acc, d| acc.add(*d))
            .and_then(Sum::to_decimal)
            .unwrap();
        let decimal: Decimal = values.iter().sum();
        assert_eq!(sum, decimal);
        assert_eq!(sum.to_string(), decimal.to_string());
    }
}
