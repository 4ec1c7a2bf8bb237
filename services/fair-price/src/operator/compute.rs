//! The fair price of one instrument as of one instant of event time: a pure function of the
//! sources' trades. Documented step by step in README ("How the fair price is computed"); the
//! integration test recomputes it independently from the same trades.
//!
//! 1. Each source's last trade at or before `as_of` and its traded size within the lookback;
//!    a source without a trade within the staleness limit is excluded as STALE.
//! 2. With at least `min_sources_for_outliers` fresh sources, those too far from the median of
//!    their last prices are excluded as OUTLIER.
//! 3. The remaining sources give the price by the configured method.

use std::collections::VecDeque;

use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use tickflow_shared::domain::{round_derived, Micros};
use tickflow_shared::fairprice::{
    Exclusion, FairPrice, Method, SourceExcluded, SourceUsed, Trigger,
};

use super::{OutlierRule, Settings};

/// One trade of a source, as the operator keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    pub event_time: Micros,
    pub price: Decimal,
    pub size: Decimal,
}

/// A source's identity and its trades in arrival order.
pub struct SourceTicks<'a> {
    pub provider: &'a str,
    pub exchange: &'a str,
    pub ticks: &'a VecDeque<Tick>,
    /// The source's first trade ever (event time): before it, the source did not exist.
    pub first_event_time: Micros,
}

struct Fresh<'a> {
    source: &'a SourceTicks<'a>,
    last: Tick,
    volume: Decimal,
}

/// Computes the fair price of `instrument` as of `as_of` from `sources` (in a fixed order).
pub fn compute<'a>(
    instrument: &str,
    sources: impl IntoIterator<Item = &'a SourceTicks<'a>>,
    as_of: Micros,
    settings: &Settings,
    trigger: Trigger,
) -> FairPrice {
    let from = as_of.saturating_sub(settings.lookback);
    let mut fresh: Vec<Fresh> = Vec::new();
    let mut excluded = Vec::new();
    for source in sources.into_iter().filter(|s| s.first_event_time <= as_of) {
        let mut last: Option<Tick> = None;
        let mut volume = Decimal::ZERO;
        for tick in source.ticks.iter().filter(|t| t.event_time <= as_of) {
            // The newest by event time; among equal times, the later arrival.
            if last.is_none_or(|l| tick.event_time >= l.event_time) {
                last = Some(*tick);
            }
            if tick.event_time > from {
                volume = volume.checked_add(tick.size).unwrap_or(Decimal::MAX);
            }
        }
        match last {
            Some(last) if as_of - last.event_time <= settings.staleness => fresh.push(Fresh {
                source,
                last,
                volume,
            }),
            Some(last) => excluded.push(SourceExcluded {
                provider: source.provider.into(),
                exchange: source.exchange.into(),
                reason: Exclusion::Stale,
                detail: format!(
                    "no trade for {:.1} s",
                    (as_of - last.event_time) as f64 / 1e6
                ),
            }),
            None => excluded.push(SourceExcluded {
                provider: source.provider.into(),
                exchange: source.exchange.into(),
                reason: Exclusion::Stale,
                detail: format!(
                    "no trade for more than {:.1} s",
                    settings.lookback as f64 / 1e6
                ),
            }),
        }
    }

    if fresh.len() >= settings.min_sources_for_outliers {
        let prices: Vec<Decimal> = fresh.iter().map(|f| f.last.price).collect();
        if let Some(median) = median(prices.clone()) {
            let limit = outlier_limit(&settings.outliers, median, &prices);
            fresh.retain(|f| {
                let distance = (f.last.price - median).abs();
                if distance <= limit {
                    return true;
                }
                excluded.push(SourceExcluded {
                    provider: f.source.provider.into(),
                    exchange: f.source.exchange.into(),
                    reason: Exclusion::Outlier,
                    detail: format!("{:.2}% from the median {median}", percent(distance, median)),
                });
                false
            });
        }
    }
    excluded.sort_by(|a, b| (&a.provider, &a.exchange).cmp(&(&b.provider, &b.exchange)));

    let used_prices: Vec<Decimal> = fresh.iter().map(|f| f.last.price).collect();
    let price = match settings.method {
        _ if fresh.is_empty() => None,
        Method::VwMedian => vw_median(&fresh, from, as_of).or_else(|| median(used_prices.clone())),
        Method::Median => median(used_prices.clone()),
        Method::Vwap => vwap(&fresh, from, as_of).or_else(|| median(used_prices.clone())),
        Method::TrimmedMean => trimmed_mean(used_prices.clone(), settings.trimmed_share),
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
    FairPrice {
        instrument: instrument.into(),
        stale: price.is_none(),
        price,
        method: settings.method,
        sources_used: fresh
            .iter()
            .map(|f| SourceUsed {
                provider: f.source.provider.into(),
                exchange: f.source.exchange.into(),
                price: f.last.price,
                volume: f.volume,
                last_event_time: f.last.event_time,
            })
            .collect(),
        sources_excluded: excluded,
        dispersion,
        confidence,
        lookback_volume,
        newest_event_time,
        computed_at: as_of,
        trigger,
    }
}

/// The median; for an even count the midpoint of the two middle values (exact).
pub fn median(mut values: Vec<Decimal>) -> Option<Decimal> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
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

/// The lower volume-weighted median of every trade of the used sources in (from, as_of]: the
/// lowest price at which the cumulative size reaches half of the total.
fn vw_median(fresh: &[Fresh], from: Micros, as_of: Micros) -> Option<Decimal> {
    let mut trades: Vec<(Decimal, Decimal)> = fresh
        .iter()
        .flat_map(|f| f.source.ticks.iter())
        .filter(|t| t.event_time > from && t.event_time <= as_of)
        .map(|t| (t.price, t.size))
        .collect();
    trades.sort_unstable_by_key(|t| t.0);
    let total = trades
        .iter()
        .try_fold(Decimal::ZERO, |acc, t| acc.checked_add(t.1))?;
    if total <= Decimal::ZERO {
        return None;
    }
    let mut cumulative = Decimal::ZERO;
    for (price, size) in trades {
        cumulative = cumulative.checked_add(size)?;
        if cumulative.checked_mul(Decimal::TWO)? >= total {
            return Some(price);
        }
    }
    None
}

/// Σ price × size / Σ size over the used sources' trades in (from, as_of], rounded the way
/// tickflow rounds derived values; `None` on overflow (the caller falls back to the median).
fn vwap(fresh: &[Fresh], from: Micros, as_of: Micros) -> Option<Decimal> {
    let mut notional = Decimal::ZERO;
    let mut volume = Decimal::ZERO;
    for t in fresh
        .iter()
        .flat_map(|f| f.source.ticks.iter())
        .filter(|t| t.event_time > from && t.event_time <= as_of)
    {
        notional = notional.checked_add(t.price.checked_mul(t.size)?)?;
        volume = volume.checked_add(t.size)?;
    }
    if volume <= Decimal::ZERO {
        return None;
    }
    Some(round_derived(notional.checked_div(volume)?))
}

/// The mean of the prices after dropping ⌊n × share⌋ from each end, rounded.
fn trimmed_mean(mut prices: Vec<Decimal>, share: f64) -> Option<Decimal> {
    if prices.is_empty() {
        return None;
    }
    prices.sort_unstable();
    let n = prices.len();
    let cut = ((n as f64 * share).floor() as usize).min((n - 1) / 2);
    let kept = &prices[cut..n - cut];
    let sum = kept
        .iter()
        .try_fold(Decimal::ZERO, |acc, p| acc.checked_add(*p))?;
    Some(round_derived(sum.checked_div(Decimal::from(kept.len()))?))
}
