//! The fair-price operator: pure and synchronous. Trades go in with their input partition; fair
//! prices and anomalies come out. What it publishes about an instrument is a function of the
//! trades of the instrument's input partition and an instant of event time, so tests can
//! recompute it, and a partition can move to another instance through a checkpoint
//! ([`Operator::snapshot`], [`Operator::restore`]) and go on there as it would have here.
//!
//! Partitions. Trades are keyed by instrument, so each instrument lives in one input partition,
//! and everything that evolves with the records is kept per partition: its instruments, its
//! sources' progress, its clock, its heartbeat boundaries, its throttled changes. A partition's
//! outputs do not depend on which other partitions the instance owns; only on its own records
//! and, through idleness, on processing time. The settings are operator-wide.
//!
//! Time. Each instrument has its own clock (its newest trade time); each partition has an
//! event-time clock, the minimum over the partition's active upstream sources of their newest
//! trade time (the same per-source progress as the aggregator's watermark, see
//! [`tickflow_shared::watermark`]: a backlog caught up source by source does not make the others
//! look stale). A source without records for `idle_after` (processing time) stops holding its
//! partition's clock back; once every source of the partition is idle, the clock moves to the
//! newest trade seen in it, and once nothing has arrived in it for `wall_clock_after` it follows
//! the wall clock (so heartbeats go on, and show staleness, when all data stops).
//!
//! Trades are read ahead of the clock (one source's block of a backlog before another's), so
//! everything evaluated as of an instant looks only at the trades at or before it: the lookback,
//! the rates, and each source's last trade for the data-quality checks.
//!
//! Publication. A trade makes the operator compute its instrument's result as of the trade's
//! time, or as of the end of the `throttle` if the instrument was computed less than a throttle
//! before (counted from the last such computation or publication, whichever is later), once
//! the partition's clock has reached that instant: every active source of the partition has
//! reached it, so the result does not depend on how the sources' trades interleave on the way
//! here (an instant on a heartbeat boundary waits for the boundary, which needs the clock past
//! it, so the result does not depend on whether the clock stopped there either). The result is
//! published if it changed (price, stale flag, or which sources count). So every fair price
//! carries a non-decreasing `computed_at` per instrument, and however fast an instrument trades
//! it costs at most one computation per throttle plus one per heartbeat. Every
//! `heartbeat` boundary of a partition's clock publishes each of its instruments not published
//! during the last heartbeat, and runs their data-quality checks.
//!
//! Provider- and exchange-wide NO_DATA (every source of a provider, or of an exchange, silent)
//! looks across instruments, so across partitions: it is checked at a heartbeat boundary once
//! every owned partition's clock has passed it, over the partitions this instance owns, each as
//! of its latest boundary at or before it. With one instance owning every partition that is the
//! provider's silence everywhere; with several, each instance reports a provider's silence over
//! the partitions it owns. A restored partition brings its sources' NO_DATA states, so a group
//! this instance did not know yet starts in the state they give instead of being raised again.

pub mod book;
pub mod compute;
pub mod quality;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::AtomicUsize;

use crate::records::{Anomaly, AnomalyKind, FairPrice, Method, Trigger, ANY};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{AssetClass, Micros, Trade, MICROS_PER_SECOND};
use tickflow_shared::runtime::{self, state};
use tickflow_shared::watermark::{fallback_source, SourceClocks};

use book::Book;
use compute::{Entry, Outcome, Published, SourceView, Tick};
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

/// The operator's settings, in microseconds of event time; the same for every partition.
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
    /// A source without records this long (processing time) stops holding its partition's
    /// clock back.
    pub idle_after: Micros,
    /// Every source of a partition idle and nothing arrived in it for this long: its clock
    /// follows the wall clock.
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

/// Heartbeats a jump of a partition's clock replays at most; beyond, only the newest boundaries.
const MAX_BOUNDARIES_PER_ADVANCE: i64 = 600;

/// Format of [`Operator::snapshot`]: 2 is one partition's state in binary
/// ([`tickflow_shared::runtime::state`]: postcard in an LZ4 frame, decimals as their 16 bytes).
/// Still read: 1, the state as JSON compressed with LZ4 (size-prepended block).
pub const STATE_FORMAT: i32 = 2;
/// The formats [`Operator::restore`] reads.
pub const READABLE_STATE_FORMATS: [i32; 2] = [1, 2];

/// How often, in processing time, a partition's sources are checked for idleness (at most).
const IDLE_CHECK_EVERY: Micros = 100_000;

type FoldHashMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Per group, `(provider, *)` or `(*, exchange)`: since when every one of its sources has been
/// silent (the latest of their NO_DATA starts), or `None` when one is not.
type GroupSilence = BTreeMap<(String, String), Option<Micros>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Source {
    provider: String,
    exchange: String,
    first_event_time: Micros,
    /// The newest trade as of the last heartbeat boundary evaluated (the data-quality checks
    /// look at a source as of the boundary, not at trades read ahead of the clock).
    last_event_time: Option<Micros>,
    #[serde(with = "tickflow_shared::runtime::state::exact_option")]
    last_price: Option<Decimal>,
    /// Trades after that boundary, by event time (among equal times in arrival order): folded
    /// into `last_*` as boundaries pass them.
    #[serde(with = "timed_prices")]
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

#[derive(Debug, Serialize, Deserialize)]
struct Instrument {
    name: String,
    /// Its name is a key of [`Settings::quality_by_class`]; by name in checkpoints.
    #[serde(with = "asset_class")]
    asset_class: AssetClass,
    /// In order of appearance: a source's index never changes.
    sources: Vec<Source>,
    /// The partition-wide id of each source in `sources` (same index): finding a trade's source
    /// compares integers in one cache line instead of strings behind pointers. Derived on
    /// restore.
    #[serde(skip)]
    source_ids: Vec<u32>,
    /// Indices into `sources`, sorted by (provider, exchange): the evaluation order. Derived on
    /// restore.
    #[serde(skip)]
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
    last: Option<Published>,
    /// A change waits for the throttle to end, due at this instant (its entry in the
    /// partition's `throttled`).
    queued: Option<Micros>,
}

impl Instrument {
    /// The instant the throttle runs from: the last change-driven computation or the last
    /// publication, whichever is later.
    fn throttle_from(&self) -> Option<Micros> {
        self.evaluated_at
            .max(self.last.as_ref().map(|l| l.computed_at))
    }

    /// The record of an outcome of this instrument.
    fn record(&self, outcome: &Outcome, settings: &Settings) -> FairPrice {
        outcome.to_fair_price(&self.name, &self.sources, settings)
    }

    /// Keeps `outcome` as the last result.
    fn remember(&mut self, outcome: &Outcome) {
        self.last
            .get_or_insert_with(Published::default)
            .set(outcome);
    }
}

/// What [`PartitionState::run`] stopped at.
enum Progress {
    /// It evaluated a heartbeat boundary (the operator's group checks may be due) and may have
    /// more to do.
    Boundary,
    /// Nothing left before the partition's clock.
    Done,
}

/// One input partition: everything that evolves with its records. A checkpoint holds what
/// cannot be derived; the `serde(skip)` fields are rebuilt ([`PartitionState::rebuild`]) or
/// belong to the process that holds the partition.
#[derive(Debug, Serialize, Deserialize)]
struct PartitionState {
    instruments: Vec<Instrument>,
    /// Progress of each upstream source.
    sources: SourceClocks,
    /// The partition's event-time clock; `None` before its first trade.
    clock: Option<Micros>,
    /// The next heartbeat boundary to evaluate (meaningful once there is a clock).
    next_boundary: Micros,
    /// Instrument name → index into `instruments`; foldhash, since SipHash was a tenth of the
    /// time per trade.
    #[serde(skip)]
    index: FoldHashMap<String, usize>,
    /// provider → exchange → source id.
    #[serde(skip)]
    source_ids: FoldHashMap<String, FoldHashMap<String, u32>>,
    /// (due, instrument) of held-back changes: the instruments' `queued`, in due order.
    #[serde(skip)]
    throttled: BTreeSet<(Micros, usize)>,
    /// Outputs are computed but not emitted. Set by the pipeline, kept across a restore.
    #[serde(skip)]
    replaying: bool,
    /// Processing time the sources were last checked for idleness.
    #[serde(skip)]
    idle_checked_at: Micros,
    /// Group silence as of each boundary evaluated and not yet taken by the operator's group
    /// checks (they wait for the slowest partition).
    #[serde(skip)]
    group_pending: VecDeque<(Micros, GroupSilence)>,
    /// Group silence as of the latest boundary taken (after a restore: as restored).
    #[serde(skip)]
    group_current: GroupSilence,
    /// Restored, and its groups not yet known to the operator: they start in the state
    /// `group_current` gives rather than as not silent.
    #[serde(skip)]
    group_seed: bool,
}

impl Default for PartitionState {
    fn default() -> Self {
        Self {
            instruments: Vec::new(),
            sources: SourceClocks::default(),
            clock: None,
            next_boundary: 0,
            index: HashMap::default(),
            source_ids: HashMap::default(),
            throttled: BTreeSet::new(),
            replaying: false,
            idle_checked_at: Micros::MIN,
            group_pending: VecDeque::new(),
            group_current: GroupSilence::new(),
            group_seed: false,
        }
    }
}

/// The operator. See the module documentation for its time and publication rules.
pub struct Operator {
    settings: Settings,
    /// By input partition.
    partitions: BTreeMap<i32, PartitionState>,
    /// Provider- and exchange-wide NO_DATA over the owned partitions: since when, if raised.
    groups: BTreeMap<(String, String), Option<Micros>>,
    /// Bytes to reserve for the next snapshot ([`state::encode`]).
    snapshot_reserve: AtomicUsize,
}

impl Operator {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            partitions: BTreeMap::new(),
            groups: BTreeMap::new(),
            snapshot_reserve: AtomicUsize::new(0),
        }
    }

    /// The instant every owned partition's event-time clock has reached: the smallest of them
    /// (`None` while no partition has one).
    pub fn clock(&self) -> Option<Micros> {
        self.partitions.values().filter_map(|p| p.clock).min()
    }

    /// One partition's event-time clock (`None` before its first trade).
    pub fn partition_clock(&self, partition: i32) -> Option<Micros> {
        self.partitions.get(&partition).and_then(|p| p.clock)
    }

    /// Feeds one trade that arrived (wall clock `now`) on `partition`, its source named by its
    /// provider and exchange (see [`fallback_source`]).
    pub fn on_trade(&mut self, partition: i32, trade: &Trade, now: Micros, out: &mut Vec<Output>) {
        self.on_trade_from(partition, &fallback_source(trade), trade, now, out);
    }

    /// Feeds one trade of `upstream` (its source, see [`tickflow_shared::watermark`]) that
    /// arrived (wall clock `now`) on `partition`. Only that partition's clock moves.
    pub fn on_trade_from(
        &mut self,
        partition: i32,
        upstream: &str,
        trade: &Trade,
        now: Micros,
        out: &mut Vec<Output>,
    ) {
        self.partitions
            .entry(partition)
            .or_default()
            .add(upstream, trade, now, &self.settings);
        self.advance_partition(partition, now, out);
    }

    fn advance_partition(&mut self, partition: i32, now: Micros, out: &mut Vec<Output>) {
        let moved = self
            .partitions
            .get_mut(&partition)
            .is_some_and(|state| state.move_clock(now, &self.settings));
        if !moved {
            return;
        }
        // The group checks of a boundary come right after its evaluation, before the changes
        // that follow it (as with a single clock).
        while let Some(state) = self.partitions.get_mut(&partition) {
            match state.run(&self.settings, out) {
                Progress::Boundary => self.group_checks(out),
                Progress::Done => return,
            }
        }
    }

    /// NO_DATA for a whole provider or exchange (every one of its sources silent), at each
    /// boundary every partition with a clock has evaluated, over each partition's state as of
    /// its latest boundary at or before it.
    fn group_checks(&mut self, out: &mut Vec<Output>) {
        loop {
            let Some(at) = self
                .partitions
                .values()
                .filter_map(|p| p.group_pending.front().map(|&(b, _)| b))
                .min()
            else {
                return;
            };
            if self
                .partitions
                .values()
                .any(|p| p.clock.is_some() && p.next_boundary <= at)
            {
                return;
            }
            let replaying = self.partitions.values().any(|p| p.replaying);
            if !replaying && self.partitions.values().any(|p| p.group_seed) {
                // The groups as of the previous check, so a change since the restore is still
                // reported.
                let mut before = GroupSilence::new();
                for p in self.partitions.values_mut() {
                    merge_silence(&mut before, &p.group_current);
                    p.group_seed = false;
                }
                for (key, silent) in before {
                    self.groups.entry(key).or_insert(silent);
                }
            }
            let mut silent = GroupSilence::new();
            for p in self.partitions.values_mut() {
                while p.group_pending.front().is_some_and(|&(b, _)| b <= at) {
                    if let Some((_, s)) = p.group_pending.pop_front() {
                        p.group_current = s;
                    }
                }
                merge_silence(&mut silent, &p.group_current);
            }
            if replaying {
                continue;
            }
            self.groups.retain(|key, _| silent.contains_key(key));
            let mut anomalies = Vec::new();
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
                    &mut anomalies,
                );
            }
            out.extend(anomalies.into_iter().map(Output::Anomaly));
        }
    }

    /// (instrument, provider, exchange, last trade age s, rate /s, price / fair price) of every
    /// source, the age by its partition's clock, for the gauges.
    pub fn source_stats(&self, mut f: impl FnMut(&str, &str, &str, f64, f64, Option<f64>)) {
        for p in self.partitions.values() {
            let Some(clock) = p.clock else { continue };
            for inst in &p.instruments {
                let q = &self.settings.quality_by_class[inst.asset_class.as_str()];
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
    }

    /// Active anomalies: (kind, provider, exchange, instrument).
    pub fn active_anomalies(&self) -> Vec<(AnomalyKind, String, String, String)> {
        let mut all = Vec::new();
        for inst in self.partitions.values().flat_map(|p| &p.instruments) {
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

/// The fair-price operator on the stream runtime ([`tickflow_shared::runtime`]): the hooks it
/// calls.
impl runtime::TradeOperator for Operator {
    type Output = Output;
    const STATE_FORMAT: i32 = STATE_FORMAT;
    const READABLE_STATE_FORMATS: &'static [i32] = &READABLE_STATE_FORMATS;

    fn on_trade(
        &mut self,
        partition: i32,
        source: &str,
        trade: &Trade,
        now: Micros,
        out: &mut Vec<Output>,
    ) {
        self.on_trade_from(partition, source, trade, now, out);
    }

    /// While a partition replays, its instruments' outputs are computed but not emitted, and no
    /// provider-wide check is made.
    fn set_replaying(&mut self, partition: i32, replaying: bool) {
        match self.partitions.get_mut(&partition) {
            Some(state) => state.replaying = replaying,
            None if replaying => {
                let state = PartitionState {
                    replaying,
                    ..PartitionState::default()
                };
                self.partitions.insert(partition, state);
            }
            None => {}
        }
    }

    /// Moves every partition's clock to what its sources and the wall clock (`now`) allow,
    /// firing throttled changes and heartbeats on the way. Call it regularly even without
    /// trades.
    fn advance(&mut self, now: Micros, out: &mut Vec<Output>) {
        // By key, not by an iterator: the group checks between boundaries need the whole map.
        let mut from = Some(i32::MIN);
        while let Some(start) = from {
            let Some(&partition) = self.partitions.range(start..).next().map(|(p, _)| p) else {
                break;
            };
            self.advance_partition(partition, now, out);
            from = partition.checked_add(1);
        }
        // A partition dropped since the last call may have been what held a group check back.
        self.group_checks(out);
    }

    /// The pipeline could not read its input for `stall` (waiting for a sink, say): that time
    /// does not count as the partitions being idle, so their clocks do not run on with the wall
    /// clock through it and mark every source stale while trades wait in Kafka.
    fn exclude_stall(&mut self, stall: Micros) {
        for p in self.partitions.values_mut() {
            p.sources.exclude_stall(stall);
        }
    }

    /// One partition's state for a checkpoint, in [`STATE_FORMAT`]; for a partition not held,
    /// the state of one that has seen nothing.
    fn snapshot(&self, partition: i32) -> Result<Vec<u8>, String> {
        let empty = PartitionState::default();
        let state = self.partitions.get(&partition).unwrap_or(&empty);
        state::encode(state, &self.snapshot_reserve)
            .map_err(|e| format!("the state of partition {partition}: {e}"))
    }

    /// Restores one partition from a checkpoint taken by [`Operator::snapshot`] (here or in
    /// another process, of this build or an earlier one), replacing what this operator held of
    /// it. Processing-time state starts at `now`: every source's idle timeout counts from it. A
    /// partition marked as replaying stays so. On an error nothing changes.
    fn restore(
        &mut self,
        partition: i32,
        bytes: &[u8],
        format: i32,
        now: Micros,
    ) -> Result<(), String> {
        let garbage = |e: &dyn std::fmt::Display| {
            format!("the state of partition {partition} cannot be read: {e}")
        };
        let mut state: PartitionState = match format {
            1 => state::decode_json_lz4(bytes).map_err(|e| garbage(&e))?,
            2 => state::decode(bytes).map_err(|e| garbage(&e))?,
            _ => {
                return Err(format!(
                    "unknown fair-price state format {format} (this build reads \
                     {READABLE_STATE_FORMATS:?})"
                ))
            }
        };
        state.rebuild(&self.settings).map_err(|e| garbage(&e))?;
        state.sources.restored(now);
        state.idle_checked_at = now;
        state.replaying = self.partitions.get(&partition).is_some_and(|p| p.replaying);
        state.group_current = state.group_silence();
        state.group_seed = true;
        self.partitions.insert(partition, state);
        Ok(())
    }

    /// Starts `partition` from its beginning, without a checkpoint: its sources are not known
    /// yet, so its clock waits `idle_after` for them (see [`SourceClocks::await_unseen`]). A
    /// partition marked as replaying stays so.
    fn start_fresh(&mut self, partition: i32, now: Micros) {
        let mut state = PartitionState {
            replaying: self.partitions.get(&partition).is_some_and(|p| p.replaying),
            ..PartitionState::default()
        };
        state.sources.await_unseen(now);
        self.partitions.insert(partition, state);
    }

    /// Forgets a partition (after it was handed to another instance). Provider-wide NO_DATA
    /// raised over its sources alone is forgotten too (its new owner reports it), without a
    /// RECOVERED.
    fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

impl PartitionState {
    /// Adds one trade of `upstream` that arrived at `now`, and queues the change it makes.
    fn add(&mut self, upstream: &str, trade: &Trade, now: Micros, settings: &Settings) {
        let idx = self.instrument_index(trade);
        let source_id = self.source_id(&trade.provider, &trade.exchange);
        let throttle = settings.throttle;
        // Behind the boundaries already evaluated, a trade is its source's state as of them.
        let evaluated = self.clock.map(|_| self.next_boundary - settings.heartbeat);
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
        if evaluated.is_some_and(|e| trade.event_time <= e) {
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

        // Change-driven publication, throttled in event time, as of an instant the partition's
        // clock has reached (every active source is past it, so the result is final): the
        // change is queued at its instant, or at the end of the throttle, and `run` publishes
        // it.
        if inst.queued.is_none() {
            let due = inst.throttle_from().map_or(trade.event_time, |last| {
                trade.event_time.max(last + throttle)
            });
            inst.queued = Some(due);
            self.throttled.insert((due, idx));
        }

        self.sources.observe(upstream, trade.event_time, now);
    }

    /// Where the sources and the wall clock (`now`) let the clock go; `None` while they allow
    /// no instant yet.
    fn time(&mut self, now: Micros, settings: &Settings) -> Option<Micros> {
        let idle_after = settings.idle_after;
        if now.saturating_sub(self.idle_checked_at) >= IDLE_CHECK_EVERY.min(idle_after) {
            self.idle_checked_at = now;
            self.sources.mark_idle(now, idle_after);
        }
        let base = match self.sources.low() {
            Some(t) => t,
            None => {
                // Every source idle: the clock runs on with the wall clock from the newest
                // trade seen.
                let (newest_of_last, last_arrival) = self.sources.last_arrival()?;
                let newest = self.sources.newest()?;
                let silent_for = now.saturating_sub(last_arrival);
                if silent_for >= settings.wall_clock_after {
                    newest.max(newest_of_last.saturating_add(silent_for))
                } else {
                    newest
                }
            }
        };
        // The stand-in of sources not seen yet (a partition started fresh) allows nothing.
        if base == Micros::MIN {
            return self.clock;
        }
        Some(self.clock.map_or(base, |c| c.max(base)))
    }

    /// Moves the clock to [`PartitionState::time`]; false while the partition has none.
    fn move_clock(&mut self, now: Micros, settings: &Settings) -> bool {
        let Some(target) = self.time(now, settings) else {
            return false;
        };
        let hb = settings.heartbeat;
        let first = self.clock.is_none();
        if first {
            // The first boundary follows the partition's earliest trade, not the instant the
            // clock is first allowed: a partition started fresh holds its clock back while
            // sources not seen yet may come, and its backlog read meanwhile still gets its
            // heartbeats.
            let earliest = self
                .instruments
                .iter()
                .flat_map(|i| i.sources.iter().map(|s| s.first_event_time))
                .min()
                .map_or(target, |e| e.min(target));
            self.next_boundary = next_multiple(earliest, hb);
        }
        if first || self.clock.is_some_and(|c| target > c) {
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
        self.clock = Some(self.clock.map_or(target, |c| c.max(target)));
        true
    }

    /// Releases the changes due at or before the clock and evaluates the boundaries before it,
    /// in event-time order, until a boundary or the clock. A boundary goes first at equal times
    /// even while the clock sits on it (a boundary needs the clock past it, every trade at it
    /// seen): what a change as of that instant sees (the trades the boundary prunes) must not
    /// depend on whether the clock stopped there or jumped over it.
    fn run(&mut self, settings: &Settings, out: &mut Vec<Output>) -> Progress {
        let Some(clock) = self.clock else {
            return Progress::Done;
        };
        loop {
            let change = self
                .throttled
                .first()
                .copied()
                .filter(|&(due, _)| due <= clock && due < self.next_boundary);
            let boundary = (self.next_boundary < clock).then_some(self.next_boundary);
            match (change, boundary) {
                (Some((due, idx)), _) => {
                    self.throttled.pop_first();
                    self.instruments[idx].queued = None;
                    self.publish_if_changed(idx, due, Trigger::Change, settings, out);
                    self.queue_after(idx, due, settings);
                }
                (_, Some(b)) => {
                    self.next_boundary += settings.heartbeat;
                    self.on_boundary(b, settings, out);
                    return Progress::Boundary;
                }
                _ => return Progress::Done,
            }
        }
    }

    /// After instrument `idx` was computed as of `at`, queues the change its trades after `at`
    /// make (at the first of them, or at the end of the throttle).
    fn queue_after(&mut self, idx: usize, at: Micros, settings: &Settings) {
        let inst = &mut self.instruments[idx];
        if inst.queued.is_some() || inst.clock <= at {
            return;
        }
        let Some(next) = inst.book.first_after(at) else {
            return;
        };
        let from = inst.throttle_from().unwrap_or(at);
        let due = next.max(from + settings.throttle);
        inst.queued = Some(due);
        self.throttled.insert((due, idx));
    }

    /// The partition-wide id of a (provider, exchange).
    fn source_id(&mut self, provider: &str, exchange: &str) -> u32 {
        source_id_in(&mut self.source_ids, provider, exchange)
    }

    fn instrument_index(&mut self, trade: &Trade) -> usize {
        if let Some(&i) = self.index.get(&trade.instrument) {
            return i;
        }
        let i = self.instruments.len();
        self.instruments.push(Instrument {
            name: trade.instrument.clone(),
            asset_class: trade.asset_class,
            sources: Vec::new(),
            source_ids: Vec::new(),
            order: Vec::new(),
            book: Book::default(),
            evaluated_at: None,
            clock: trade.event_time,
            last: None,
            queued: None,
        });
        self.index.insert(trade.instrument.clone(), i);
        i
    }

    /// The fair price of instrument `idx` as of `as_of`.
    fn compute(
        &mut self,
        idx: usize,
        as_of: Micros,
        settings: &Settings,
        trigger: Trigger,
    ) -> Outcome {
        let inst = &mut self.instruments[idx];
        inst.book.evaluate(
            &inst.sources,
            inst.order.iter().copied(),
            as_of,
            settings,
            trigger,
        )
    }

    fn publish_if_changed(
        &mut self,
        idx: usize,
        as_of: Micros,
        trigger: Trigger,
        settings: &Settings,
        out: &mut Vec<Output>,
    ) {
        if self.instruments[idx]
            .last
            .as_ref()
            .is_some_and(|l| as_of <= l.computed_at)
        {
            return;
        }
        let outcome = self.compute(idx, as_of, settings, trigger);
        let replaying = self.replaying;
        let inst = &mut self.instruments[idx];
        if trigger == Trigger::Change {
            inst.evaluated_at = inst.evaluated_at.max(Some(as_of));
        }
        let changed = inst.last.as_ref().is_none_or(|l| !l.same_result(&outcome));
        if changed || trigger == Trigger::Heartbeat {
            if !replaying {
                out.push(Output::FairPrice(inst.record(&outcome, settings)));
            }
            inst.remember(&outcome);
        }
    }

    fn on_boundary(&mut self, at: Micros, settings: &Settings, out: &mut Vec<Output>) {
        let heartbeat = settings.heartbeat;
        let replaying = self.replaying;
        let mut anomalies = Vec::new();
        for idx in 0..self.instruments.len() {
            let fp = self.compute(idx, at, settings, Trigger::Heartbeat);
            let inst = &mut self.instruments[idx];
            // Not published during the last heartbeat (or never).
            let quiet = inst
                .last
                .as_ref()
                .is_none_or(|l| at - l.computed_at >= heartbeat && at > l.computed_at);
            let quality = &settings.quality_by_class[inst.asset_class.as_str()];
            let window_s = quality.rate_window as f64 / MICROS_PER_SECOND as f64;
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
            if quiet {
                if !replaying {
                    out.push(Output::FairPrice(inst.record(&fp, settings)));
                }
                inst.remember(&fp);
            }
        }
        if !replaying {
            out.extend(anomalies.into_iter().map(Output::Anomaly));
        }
        self.group_pending.push_back((at, self.group_silence()));
        // Once per heartbeat: cheap enough, and trades stay at most one heartbeat longer.
        self.prune(at, settings);
    }

    /// Which of the groups this partition's sources belong to are silent, as of the last
    /// boundary evaluated.
    fn group_silence(&self) -> GroupSilence {
        let mut silent = GroupSilence::new();
        for source in self.instruments.iter().flat_map(|i| &i.sources) {
            let since = source.detector.active.get(&AnomalyKind::NoData).copied();
            for key in [
                (source.provider.clone(), ANY.to_string()),
                (ANY.to_string(), source.exchange.clone()),
            ] {
                fold_silence(&mut silent, key, since);
            }
        }
        silent
    }

    /// Drops trades no computation can need any more.
    fn prune(&mut self, clock: Micros, settings: &Settings) {
        let keep_from = clock - settings.lookback - settings.heartbeat - settings.throttle;
        for inst in &mut self.instruments {
            let rate_window = settings.quality_by_class[inst.asset_class.as_str()].rate_window;
            let counts_from =
                (clock - rate_window - settings.heartbeat).div_euclid(MICROS_PER_SECOND);
            inst.book.prune(keep_from);
            for source in &mut inst.sources {
                while source.counts.front().is_some_and(|(s, _)| *s < counts_from) {
                    source.counts.pop_front();
                }
            }
        }
    }

    /// After a restore: checks what the rest of the operator indexes by, and derives what a
    /// checkpoint leaves out (the indices, the evaluation orders, the throttle queue).
    fn rebuild(&mut self, settings: &Settings) -> Result<(), String> {
        if let Some(clock) = self.clock {
            // All boundaries before the clock were evaluated: the next one is the first at or
            // after it, on the heartbeat's grid (which moves if the heartbeat setting changed).
            let hb = settings.heartbeat;
            let on_grid = self.next_boundary >= clock
                && self.next_boundary.saturating_sub(clock) <= hb
                && self.next_boundary.rem_euclid(hb) == 0;
            if !on_grid {
                self.next_boundary = clock
                    .checked_sub(1)
                    .and_then(|t| t.div_euclid(hb).checked_add(1))
                    .and_then(|n| n.checked_mul(hb))
                    .ok_or_else(|| format!("a clock of {clock} µs is no instant"))?;
            }
        }
        for (idx, inst) in self.instruments.iter_mut().enumerate() {
            if !settings
                .quality_by_class
                .contains_key(inst.asset_class.as_str())
            {
                return Err(format!(
                    "{}: no quality settings for {}",
                    inst.name,
                    inst.asset_class.as_str()
                ));
            }
            if self.index.insert(inst.name.clone(), idx).is_some() {
                return Err(format!("instrument {} appears twice", inst.name));
            }
            let n = inst.sources.len();
            let named = inst.book.entries().map(|e| e.source as usize).max();
            let published = inst.last.as_ref().and_then(Published::max_source);
            if named.max(published).is_some_and(|s| s >= n) {
                return Err(format!("{} names a source it does not have", inst.name));
            }
            inst.source_ids.clear();
            for s in &inst.sources {
                let id = source_id_in(&mut self.source_ids, &s.provider, &s.exchange);
                if inst.source_ids.contains(&id) {
                    return Err(format!(
                        "{} has {}/{} twice",
                        inst.name, s.provider, s.exchange
                    ));
                }
                inst.source_ids.push(id);
            }
            let sources = &inst.sources;
            inst.order = (0..n).collect();
            inst.order.sort_by(|&a, &b| {
                (&sources[a].provider, &sources[a].exchange)
                    .cmp(&(&sources[b].provider, &sources[b].exchange))
            });
            if let Some(due) = inst.queued {
                self.throttled.insert((due, idx));
            }
        }
        Ok(())
    }
}

/// The id of a (provider, exchange) in `ids`, given the next one when it has none.
fn source_id_in(
    ids: &mut FoldHashMap<String, FoldHashMap<String, u32>>,
    provider: &str,
    exchange: &str,
) -> u32 {
    if let Some(&id) = ids.get(provider).and_then(|m| m.get(exchange)) {
        return id;
    }
    let id = u32::try_from(ids.values().map(HashMap::len).sum::<usize>())
        .expect("fewer than 2^32 sources");
    ids.entry(provider.to_string())
        .or_default()
        .insert(exchange.to_string(), id);
    id
}

/// Folds one source's NO_DATA start (`None`: not silent) into its group's silence: silent
/// while every source is, since the latest of them.
fn fold_silence(into: &mut GroupSilence, key: (String, String), since: Option<Micros>) {
    let entry = into.entry(key).or_insert(Some(Micros::MIN));
    *entry = match (*entry, since) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
}

/// Folds the groups of `from` into `into` (the same rule as [`fold_silence`]).
fn merge_silence(into: &mut GroupSilence, from: &GroupSilence) {
    for (key, &since) in from {
        fold_silence(into, key.clone(), since);
    }
}

/// The smallest multiple of `step` greater than `t`.
fn next_multiple(t: Micros, step: Micros) -> Micros {
    (t.div_euclid(step) + 1) * step
}

/// A source's trades ahead of the clock in checkpoints: (event time, price as exact text).
mod timed_prices {
    use std::collections::VecDeque;

    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tickflow_shared::domain::Micros;

    #[derive(Serialize, Deserialize)]
    struct Timed(
        Micros,
        #[serde(with = "tickflow_shared::runtime::state::exact")] Decimal,
    );

    pub fn serialize<S: Serializer>(
        ahead: &VecDeque<(Micros, Decimal)>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ahead.iter().map(|&(t, price)| Timed(t, price)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<VecDeque<(Micros, Decimal)>, D::Error> {
        let mut ahead: Vec<(Micros, Decimal)> = Vec::<Timed>::deserialize(deserializer)?
            .into_iter()
            .map(|Timed(t, price)| (t, price))
            .collect();
        // Kept sorted (stably: equal times stay in arrival order) whatever the checkpoint says.
        ahead.sort_by_key(|&(t, _)| t);
        Ok(ahead.into())
    }
}

/// An asset class in checkpoints, by name (the shared type has only its Avro form).
mod asset_class {
    use super::{AssetClass, FromStr};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(class: &AssetClass, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(class.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<AssetClass, D::Error> {
        let name = String::deserialize(deserializer)?;
        AssetClass::from_str(&name).map_err(serde::de::Error::custom)
    }
}
