//! The fair-price operator: pure and synchronous. Trades go in with their input partition; fair
//! prices and anomalies come out. Everything it publishes is a function of the trades it has seen
//! and an instant of event time, so tests can recompute it.
//!
//! Time. Each instrument has its own clock (its newest trade time); the operator has a global
//! event-time clock, the minimum over the active upstream sources of every input partition of
//! their newest trade time (the same per-source progress as the aggregator's watermark, see
//! [`tickflow_shared::watermark`]: a backlog caught up source by source does not make the others
//! look stale). A source without records for `idle_after` (processing time) stops holding the
//! clock back; once every source is idle, the clock moves to the newest trade seen, and once
//! nothing has arrived for `wall_clock_after` it follows the wall clock (so heartbeats go on, and
//! show staleness, when all data stops).
//!
//! Trades are read ahead of the clock (one source's block of a backlog before another's), so
//! everything evaluated as of an instant looks only at the trades at or before it: the lookback,
//! the rates, and each source's last trade for the data-quality checks.
//!
//! Publication. A trade makes the operator compute its instrument's result as of the trade's
//! time, or as of the end of the `throttle` if the instrument was computed less than a throttle
//! before (counted from the last such computation or publication, whichever is later), once
//! the global clock has reached that instant: every active source has reached it, so the result
//! does not depend on how the sources' trades interleave on the way here. The result is published if it
//! changed (price, stale flag, or which sources count). So every fair price carries a
//! non-decreasing `computed_at` per instrument, and however fast an instrument trades it costs at
//! most one computation per throttle plus one per heartbeat. Every `heartbeat` boundary of the
//! global clock publishes each instrument not published during the
//! last heartbeat, and runs the data-quality checks.

pub mod book;
pub mod compute;
pub mod quality;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tickflow_shared::domain::{Micros, Trade, MICROS_PER_SECOND};
use tickflow_shared::fairprice::{Anomaly, AnomalyKind, FairPrice, Method, Trigger, ANY};
use tickflow_shared::watermark::{fallback_source, SourceClocks};

use book::Book;
use compute::{Entry, Outcome, SourceView, Tick};
use quality::{Detector, Observation, Scope};

/// How outliers are told apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutlierRule {
    /// Farther than `pct` percent from the median.
    Band { pct: f64 },
    /// Farther than `k` median absolute deviations, and at least `floor_pct` percent.
    Mad { k: f64, floor_pct: f64 },
}

impl OutlierRule {
    /// The spread, in percent, at which confidence reaches zero.
    pub fn scale_pct(&self) -> f64 {
        match *self {
            OutlierRule::Band { pct } => pct,
            OutlierRule::Mad { floor_pct, .. } => floor_pct * 4.0,
        }
    }
}

/// Data-quality thresholds of one asset class, in microseconds of event time.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    pub no_data_after: Micros,
    pub divergence_pct: f64,
    pub divergence_for: Micros,
    pub rate_drop_fraction: f64,
    pub rate_window: Micros,
    pub rate_trailing: Micros,
    pub rate_min_trailing_per_s: f64,
}

/// The operator's settings, in microseconds of event time.
#[derive(Debug, Clone)]
pub struct Settings {
    pub method: Method,
    pub trimmed_share: f64,
    pub lookback: Micros,
    pub staleness: Micros,
    pub outliers: OutlierRule,
    pub min_sources_for_outliers: usize,
    pub throttle: Micros,
    pub heartbeat: Micros,
    /// A source without records this long (processing time) stops holding the clock back.
    pub idle_after: Micros,
    /// Every source idle and nothing arrived for this long: the clock follows the wall clock.
    pub wall_clock_after: Micros,
    /// By asset class name (`CRYPTO`, `EQUITY`, `FX`, `OTHER`).
    pub quality_by_class: BTreeMap<&'static str, Quality>,
}

/// What the operator emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    FairPrice(FairPrice),
    Anomaly(Anomaly),
}

/// Heartbeats a jump of the global clock replays at most; beyond, only the newest boundaries.
const MAX_BOUNDARIES_PER_ADVANCE: i64 = 600;

#[derive(Debug, Default)]
struct Source {
    provider: String,
    exchange: String,
    first_event_time: Micros,
    /// The newest trade as of the last heartbeat boundary evaluated (the data-quality checks
    /// look at a source as of the boundary, not at trades read ahead of the clock).
    last_event_time: Option<Micros>,
    last_price: Option<Decimal>,
    /// Trades after that boundary, by event time (among equal times in arrival order): folded
    /// into `last_*` as boundaries pass them.
    ahead: VecDeque<(Micros, Decimal)>,
    /// Trade counts per second of event time, for the rate.
    counts: VecDeque<(Micros, u32)>,
    detector: Detector,
}

impl Source {
    /// A trade at or before the boundary being evaluated: the newest by event time, among equal
    /// times the later arrival, is the source's last.
    fn settle(&mut self, event_time: Micros, price: Decimal) {
        if self.last_event_time.is_none_or(|t| event_time >= t) {
            self.last_event_time = Some(event_time);
            self.last_price = Some(price);
        }
    }

    /// Folds the trades up to `at` into the source's last.
    fn settle_until(&mut self, at: Micros) {
        while let Some(&(t, price)) = self.ahead.front().filter(|&&(t, _)| t <= at) {
            self.ahead.pop_front();
            self.settle(t, price);
        }
    }
}

impl SourceView for Source {
    fn provider(&self) -> &str {
        &self.provider
    }
    fn exchange(&self) -> &str {
        &self.exchange
    }
    fn first_event_time(&self) -> Micros {
        self.first_event_time
    }
}

#[derive(Debug)]
struct Instrument {
    name: String,
    partition: i32,
    asset_class: &'static str,
    /// In order of appearance: a source's index never changes.
    sources: Vec<Source>,
    /// The operator-wide id of each source in `sources` (same index): finding a trade's source
    /// compares integers in one cache line instead of strings behind pointers.
    source_ids: Vec<u32>,
    /// Indices into `sources`, sorted by (provider, exchange): the evaluation order.
    order: Vec<usize>,
    /// Every source's recent trades, and the lookback of the last instant computed.
    book: Book,
    /// When a trade last made the operator compute this instrument's price (published or not):
    /// the throttle runs from it, so an instrument is computed at most once per throttle
    /// however fast it trades.
    evaluated_at: Option<Micros>,
    /// Its newest trade.
    clock: Micros,
    /// The last result published (or computed during replay).
    last: Option<Outcome>,
    /// A change is waiting for the throttle to end.
    dirty: bool,
}

impl Instrument {
    /// The instant the throttle runs from: the last change-driven computation or the last
    /// publication, whichever is later.
    fn throttle_from(&self) -> Option<Micros> {
        self.evaluated_at
            .max(self.last.as_ref().map(|l| l.computed_at))
    }
}

/// How often, in processing time, sources are checked for idleness (at most).
const IDLE_CHECK_EVERY: Micros = 100_000;

/// The operator. See the module documentation for its time and publication rules.
pub struct Operator {
    settings: Settings,
    instruments: Vec<Instrument>,
    /// Instrument name → index into `instruments`; foldhash, since SipHash was a tenth of the
    /// time per trade.
    index: HashMap<String, usize, foldhash::fast::FixedState>,
    /// provider → exchange → source id, operator-wide.
    source_ids: HashMap<
        String,
        HashMap<String, u32, foldhash::fast::FixedState>,
        foldhash::fast::FixedState,
    >,
    partitions: BTreeMap<i32, SourceClocks>,
    /// Processing time sources were last checked for idleness.
    idle_checked_at: Micros,
    replaying: BTreeSet<i32>,
    /// The global event-time clock; `None` before the first trade.
    clock: Option<Micros>,
    next_boundary: Micros,
    /// (due, instrument) of held-back changes.
    throttled: BTreeSet<(Micros, usize)>,
    groups: BTreeMap<(String, String), Option<Micros>>,
}

impl Operator {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            instruments: Vec::new(),
            index: HashMap::default(),
            source_ids: HashMap::default(),
            partitions: BTreeMap::new(),
            idle_checked_at: Micros::MIN,
            replaying: BTreeSet::new(),
            clock: None,
            next_boundary: 0,
            throttled: BTreeSet::new(),
            groups: BTreeMap::new(),
        }
    }

    /// While a partition replays, its instruments' outputs are computed but not emitted.
    pub fn set_replaying(&mut self, partition: i32, replaying: bool) {
        if replaying {
            self.replaying.insert(partition);
        } else {
            self.replaying.remove(&partition);
        }
    }

    /// The global event-time clock.
    pub fn clock(&self) -> Option<Micros> {
        self.clock
    }

    /// Feeds one trade that arrived (wall clock `now`) on `partition`, its source named by its
    /// provider and exchange (see [`fallback_source`]).
    pub fn on_trade(&mut self, partition: i32, trade: &Trade, now: Micros, out: &mut Vec<Output>) {
        self.on_trade_from(partition, &fallback_source(trade), trade, now, out);
    }

    /// Feeds one trade of `upstream` (its source, see [`tickflow_shared::watermark`]) that
    /// arrived (wall clock `now`) on `partition`.
    pub fn on_trade_from(
        &mut self,
        partition: i32,
        upstream: &str,
        trade: &Trade,
        now: Micros,
        out: &mut Vec<Output>,
    ) {
        let idx = self.instrument_index(partition, trade);
        let source_id = self.source_id(trade);
        let throttle = self.settings.throttle;
        let inst = &mut self.instruments[idx];
        let index = match inst.source_ids.iter().position(|&id| id == source_id) {
            Some(index) => index,
            None => {
                let key = (trade.provider.as_str(), trade.exchange.as_str());
                let sources = &inst.sources;
                let at = inst
                    .order
                    .binary_search_by(|&i| (sources[i].provider(), sources[i].exchange()).cmp(&key))
                    .unwrap_err();
                inst.order.insert(at, inst.sources.len());
                inst.source_ids.push(source_id);
                inst.sources.push(Source {
                    provider: trade.provider.clone(),
                    exchange: trade.exchange.clone(),
                    first_event_time: trade.event_time,
                    ..Source::default()
                });
                inst.sources.len() - 1
            }
        };
        inst.book.push(Entry {
            source: u32::try_from(index).expect("fewer than 2^32 sources"),
            tick: Tick {
                event_time: trade.event_time,
                price: trade.price,
                size: trade.size,
            },
        });
        let source = &mut inst.sources[index];
        source.first_event_time = source.first_event_time.min(trade.event_time);
        let evaluated = self.next_boundary - self.settings.heartbeat;
        if self.clock.is_some() && trade.event_time <= evaluated {
            // Behind the boundaries already evaluated: it is the source's state as of them.
            source.settle(trade.event_time, trade.price);
        } else {
            let t = trade.event_time;
            let at = if source.ahead.back().is_none_or(|&(b, _)| b <= t) {
                source.ahead.len()
            } else {
                source.ahead.partition_point(|&(b, _)| b <= t)
            };
            source.ahead.insert(at, (t, trade.price));
        }
        let second = trade.event_time.div_euclid(MICROS_PER_SECOND);
        match source.counts.iter_mut().rev().find(|(s, _)| *s == second) {
            Some((_, n)) => *n += 1,
            None => {
                let at = source.counts.partition_point(|(s, _)| *s < second);
                source.counts.insert(at, (second, 1));
            }
        }
        inst.clock = inst.clock.max(trade.event_time);

        // Change-driven publication, throttled in event time, as of an instant the global clock
        // has reached (every active source is past it, so the result is final): the change is
        // queued at its instant, or at the end of the throttle, and `advance` publishes it.
        if !inst.dirty {
            let due = inst.throttle_from().map_or(trade.event_time, |last| {
                trade.event_time.max(last + throttle)
            });
            inst.dirty = true;
            self.throttled.insert((due, idx));
        }

        self.partitions
            .entry(partition)
            .or_default()
            .observe(upstream, trade.event_time, now);
        self.advance(now, out);
    }

    /// Moves the global clock to what the partitions and the wall clock (`now`) allow, firing
    /// throttled changes and heartbeats on the way. Call it regularly even without trades.
    pub fn advance(&mut self, now: Micros, out: &mut Vec<Output>) {
        let Some(target) = self.global_time(now) else {
            return;
        };
        let hb = self.settings.heartbeat;
        match self.clock {
            None => self.next_boundary = next_multiple(target, hb),
            Some(c) if target > c => {
                // Boundaries b with b < target fire (strictly: every trade at b has been seen).
                let pending = (target - self.next_boundary + hb - 1).div_euclid(hb);
                if pending > MAX_BOUNDARIES_PER_ADVANCE {
                    let skip = pending - MAX_BOUNDARIES_PER_ADVANCE;
                    tracing::warn!(
                        skipped = skip,
                        "the event-time clock jumped; only the newest heartbeats are evaluated"
                    );
                    self.next_boundary += skip * hb;
                }
            }
            Some(_) => {}
        }
        let clock = self.clock.map_or(target, |c| c.max(target));
        self.clock = Some(clock);
        // Changes at or before the clock, and boundaries before it, in event-time order (a
        // boundary first at equal times).
        loop {
            let change = self
                .throttled
                .first()
                .copied()
                .filter(|&(due, _)| due <= clock);
            let boundary = (self.next_boundary < clock).then_some(self.next_boundary);
            match (change, boundary) {
                (Some((due, idx)), b) if b.is_none_or(|b| due < b) => {
                    self.throttled.pop_first();
                    self.instruments[idx].dirty = false;
                    self.publish_if_changed(idx, due, Trigger::Change, out);
                    self.queue_after(idx, due);
                }
                (_, Some(b)) => {
                    self.next_boundary += hb;
                    self.on_boundary(b, out);
                }
                _ => break,
            }
        }
    }

    /// After instrument `idx` was computed as of `at`, queues the change its trades after `at`
    /// make (at the first of them, or at the end of the throttle).
    fn queue_after(&mut self, idx: usize, at: Micros) {
        let throttle = self.settings.throttle;
        let inst = &mut self.instruments[idx];
        if inst.dirty || inst.clock <= at {
            return;
        }
        let Some(next) = inst.book.first_after(at) else {
            return;
        };
        let from = inst.throttle_from().unwrap_or(at);
        inst.dirty = true;
        self.throttled.insert((next.max(from + throttle), idx));
    }

    /// The pipeline could not read its input for `stall` (waiting for a sink, say): that time
    /// does not count as the partitions being idle, so the clock does not run on with the wall
    /// clock through it and mark every source stale while trades wait in Kafka.
    pub fn exclude_stall(&mut self, stall: Micros) {
        for p in self.partitions.values_mut() {
            p.exclude_stall(stall);
        }
    }

    fn global_time(&mut self, now: Micros) -> Option<Micros> {
        let idle_after = self.settings.idle_after;
        if now.saturating_sub(self.idle_checked_at) >= IDLE_CHECK_EVERY.min(idle_after) {
            self.idle_checked_at = now;
            for p in self.partitions.values_mut() {
                p.mark_idle(now, idle_after);
            }
        }
        let active = self
            .partitions
            .values_mut()
            .filter_map(SourceClocks::low)
            .min();
        let base = match active {
            Some(t) => t,
            None => {
                // Every source idle: the clock runs on with the wall clock from the newest
                // trade seen.
                let (newest_of_last, last_arrival) = self
                    .partitions
                    .values()
                    .filter_map(SourceClocks::last_arrival)
                    .max_by_key(|&(_, at)| at)?;
                let all_newest = self
                    .partitions
                    .values()
                    .filter_map(SourceClocks::newest)
                    .max()?;
                let silent_for = now - last_arrival;
                if silent_for >= self.settings.wall_clock_after {
                    all_newest.max(newest_of_last + silent_for)
                } else {
                    all_newest
                }
            }
        };
        Some(self.clock.map_or(base, |c| c.max(base)))
    }

    /// The operator-wide id of the trade's (provider, exchange).
    fn source_id(&mut self, trade: &Trade) -> u32 {
        if let Some(&id) = self
            .source_ids
            .get(trade.provider.as_str())
            .and_then(|m| m.get(trade.exchange.as_str()))
        {
            return id;
        }
        let id = u32::try_from(self.source_ids.values().map(HashMap::len).sum::<usize>())
            .expect("fewer than 2^32 sources");
        self.source_ids
            .entry(trade.provider.clone())
            .or_default()
            .insert(trade.exchange.clone(), id);
        id
    }

    fn instrument_index(&mut self, partition: i32, trade: &Trade) -> usize {
        if let Some(&i) = self.index.get(&trade.instrument) {
            self.instruments[i].partition = partition;
            return i;
        }
        let i = self.instruments.len();
        self.instruments.push(Instrument {
            name: trade.instrument.clone(),
            partition,
            asset_class: trade.asset_class.as_str(),
            sources: Vec::new(),
            source_ids: Vec::new(),
            order: Vec::new(),
            book: Book::default(),
            evaluated_at: None,
            clock: trade.event_time,
            last: None,
            dirty: false,
        });
        self.index.insert(trade.instrument.clone(), i);
        i
    }

    /// The fair price of instrument `idx` as of `as_of`.
    fn compute(&mut self, idx: usize, as_of: Micros, trigger: Trigger) -> Outcome {
        let inst = &mut self.instruments[idx];
        inst.book.evaluate(
            &inst.sources,
            inst.order.iter().copied(),
            as_of,
            &self.settings,
            trigger,
        )
    }

    /// The record of an outcome of instrument `idx`.
    fn record(&self, idx: usize, outcome: &Outcome) -> FairPrice {
        let inst = &self.instruments[idx];
        outcome.to_fair_price(&inst.name, &inst.sources, &self.settings)
    }

    fn publish_if_changed(
        &mut self,
        idx: usize,
        as_of: Micros,
        trigger: Trigger,
        out: &mut Vec<Output>,
    ) {
        if self.instruments[idx]
            .last
            .as_ref()
            .is_some_and(|l| as_of <= l.computed_at)
        {
            return;
        }
        let outcome = self.compute(idx, as_of, trigger);
        if trigger == Trigger::Change {
            let inst = &mut self.instruments[idx];
            inst.evaluated_at = inst.evaluated_at.max(Some(as_of));
        }
        let inst = &self.instruments[idx];
        let changed = inst.last.as_ref().is_none_or(|l| !l.same_result(&outcome));
        if changed || trigger == Trigger::Heartbeat {
            if !self.replaying.contains(&inst.partition) {
                out.push(Output::FairPrice(self.record(idx, &outcome)));
            }
            self.instruments[idx].last = Some(outcome);
        }
    }

    fn on_boundary(&mut self, at: Micros, out: &mut Vec<Output>) {
        let heartbeat = self.settings.heartbeat;
        let mut anomalies = Vec::new();
        for idx in 0..self.instruments.len() {
            let fp = self.compute(idx, at, Trigger::Heartbeat);
            let record = {
                let inst = &self.instruments[idx];
                let quiet = inst
                    .last
                    .as_ref()
                    .is_none_or(|l| at - l.computed_at >= heartbeat && at > l.computed_at);
                (quiet && !self.replaying.contains(&inst.partition)).then(|| self.record(idx, &fp))
            };
            let inst = &mut self.instruments[idx];
            let quiet = inst
                .last
                .as_ref()
                .is_none_or(|l| at - l.computed_at >= heartbeat);
            let replaying = self.replaying.contains(&inst.partition);
            let quality = &self.settings.quality_by_class[inst.asset_class];
            let window_s = quality.rate_window as f64 / MICROS_PER_SECOND as f64;
            let start = anomalies.len();
            for &i in &inst.order {
                let source = &mut inst.sources[i];
                source.settle_until(at);
                let from = (at - quality.rate_window).div_euclid(MICROS_PER_SECOND);
                let to = at.div_euclid(MICROS_PER_SECOND);
                let count: u32 = source
                    .counts
                    .iter()
                    .filter(|(s, _)| *s > from && *s <= to)
                    .map(|(_, n)| n)
                    .sum();
                let fresh = fp.fresh(i);
                let divergence_pct = match (fresh, fp.price, source.last_price) {
                    (true, Some(fair), Some(p)) if !fair.is_zero() => {
                        ((p - fair) / fair).to_f64().map(|r| r.abs() * 100.0)
                    }
                    _ => None,
                };
                source.detector.observe(
                    &Observation {
                        at,
                        last_event_time: source.last_event_time,
                        rate: f64::from(count) / window_s,
                        divergence_pct,
                        step: heartbeat,
                    },
                    quality,
                    &Scope {
                        provider: &source.provider,
                        exchange: &source.exchange,
                        instrument: &inst.name,
                    },
                    &mut anomalies,
                );
            }
            if replaying {
                anomalies.truncate(start);
            }
            if quiet && at > inst.last.as_ref().map_or(Micros::MIN, |l| l.computed_at) {
                out.extend(record.map(Output::FairPrice));
                inst.last = Some(fp);
            }
        }
        self.group_checks(at, &mut anomalies);
        out.extend(anomalies.into_iter().map(Output::Anomaly));
        // Once per heartbeat: cheap enough, and trades stay at most one heartbeat longer.
        self.prune(at);
    }

    /// NO_DATA for a whole provider or exchange: every one of its sources silent.
    fn group_checks(&mut self, at: Micros, out: &mut Vec<Anomaly>) {
        let mut silent: BTreeMap<(String, String), Option<Micros>> = BTreeMap::new();
        for inst in &self.instruments {
            for source in &inst.sources {
                let (provider, exchange) = (&source.provider, &source.exchange);
                let since = source.detector.active.get(&AnomalyKind::NoData).copied();
                for key in [
                    (provider.clone(), ANY.to_string()),
                    (ANY.to_string(), exchange.clone()),
                ] {
                    let entry = silent.entry(key).or_insert(Some(Micros::MIN));
                    *entry = match (*entry, since) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
            }
        }
        if !self.replaying.is_empty() {
            return;
        }
        for ((provider, exchange), all_silent) in silent {
            let active = self
                .groups
                .entry((provider.clone(), exchange.clone()))
                .or_default();
            quality::group_transition(
                active,
                all_silent,
                at,
                &Scope {
                    provider: &provider,
                    exchange: &exchange,
                    instrument: ANY,
                },
                out,
            );
        }
    }

    /// Drops trades no computation can need any more.
    fn prune(&mut self, clock: Micros) {
        let keep_from =
            clock - self.settings.lookback - self.settings.heartbeat - self.settings.throttle;
        for inst in &mut self.instruments {
            let rate_window = self.settings.quality_by_class[inst.asset_class].rate_window;
            let counts_from =
                (clock - rate_window - self.settings.heartbeat).div_euclid(MICROS_PER_SECOND);
            inst.book.prune(keep_from);
            for source in &mut inst.sources {
                while source.counts.front().is_some_and(|(s, _)| *s < counts_from) {
                    source.counts.pop_front();
                }
            }
        }
    }

    /// (instrument, provider, exchange, last trade age s, rate /s, price / fair price) of every
    /// source, for the gauges.
    pub fn source_stats(&self, mut f: impl FnMut(&str, &str, &str, f64, f64, Option<f64>)) {
        let Some(clock) = self.clock else { return };
        for inst in &self.instruments {
            let q = &self.settings.quality_by_class[inst.asset_class];
            let fair = inst.last.as_ref().and_then(|l| l.price);
            for s in inst.order.iter().map(|&i| &inst.sources[i]) {
                let (provider, exchange) = (&s.provider, &s.exchange);
                let age = s
                    .last_event_time
                    .map_or(f64::NAN, |t| (clock - t).max(0) as f64 / 1e6);
                let from = (clock - q.rate_window).div_euclid(MICROS_PER_SECOND);
                let count: u32 = s
                    .counts
                    .iter()
                    .filter(|(sec, _)| *sec > from)
                    .map(|(_, n)| n)
                    .sum();
                let rate = f64::from(count) * MICROS_PER_SECOND as f64 / q.rate_window as f64;
                let ratio = match (fair, s.last_price) {
                    (Some(fair), Some(p)) if !fair.is_zero() => (p / fair).to_f64(),
                    _ => None,
                };
                f(&inst.name, provider, exchange, age, rate, ratio);
            }
        }
    }

    /// Active anomalies: (kind, provider, exchange, instrument).
    pub fn active_anomalies(&self) -> Vec<(AnomalyKind, String, String, String)> {
        let mut all = Vec::new();
        for inst in &self.instruments {
            for s in inst.order.iter().map(|&i| &inst.sources[i]) {
                let (provider, exchange) = (&s.provider, &s.exchange);
                for kind in s.detector.active.keys() {
                    all.push((*kind, provider.clone(), exchange.clone(), inst.name.clone()));
                }
            }
        }
        for ((provider, exchange), active) in &self.groups {
            if active.is_some() {
                all.push((
                    AnomalyKind::NoData,
                    provider.clone(),
                    exchange.clone(),
                    ANY.into(),
                ));
            }
        }
        all
    }
}

/// The smallest multiple of `step` greater than `t`.
fn next_multiple(t: Micros, step: Micros) -> Micros {
    (t.div_euclid(step) + 1) * step
}
