//! The 1-minute window operator: pure and synchronous. `on_trade` adds a trade to its windows
//! and, when the trade moves the watermark past a window's end, fires what it passed (so a final
//! candle leaves with the trade that closed it); `advance`, at each tick, moves idle partitions'
//! watermarks, fires what they passed, emits early firings and purges; snapshots of one input
//! partition's state go into checkpoints.
//!
//! Time is event time. Each input partition has its own watermark, and inside the partition each
//! upstream source (the raw partition a trade was normalized from, see
//! [`tickflow_shared::watermark`]) has its own progress: the partition's watermark is the
//! smallest newest event time over its active sources, minus the bounded out-of-orderness, so a
//! backlog caught up source by source cannot make another source's trades late. A source with no
//! record for `idle_timeout` of processing time is left out until it sends again; when every
//! source of a partition is idle, the watermark follows the wall clock, so the last windows of a
//! quiet instrument still close. Time the pipeline could not read its input (waiting for a sink
//! or a checkpoint) does not count: see [`Aggregator::exclude_stall`]. Trades are keyed by
//! instrument, so every window lives in exactly one partition. Per-source progress and idle
//! flags are checkpointed: between two `advance` calls a record's fate (on time, late, too late)
//! is a function of the partition's record order alone.
//!
//! Late is never lost. A trade within the allowed lateness corrects its window in memory. A
//! trade beyond it (its minute no longer held) goes to the late topic as the audit of what came
//! late, is merged into the roll-up windows still held, and schedules a recomputation of its
//! minute and of every roll-up window no longer held, from the stored trades (see
//! [`correction`]): the pipeline reads them from Cassandra once the trade itself has landed
//! there, and re-emits the windows with a higher revision.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;

use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{Candle, Micros, Trade, CONSOLIDATED_VENUE, MICROS_PER_SECOND};

use tickflow_shared::runtime::{self, state};
use tickflow_shared::watermark::{fallback_source, SourceClocks};

use crate::rollup::{Interval, Rollups};
use crate::window::{window_start, CandleState, WindowKey};

pub mod correction;
pub use crate::output::{Emission, Output};
pub use correction::{Correction, CorrectionKey};

/// The operator's timing, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Micros,
    pub out_of_orderness: Micros,
    pub allowed_lateness: Micros,
    pub idle_timeout: Micros,
    /// Emit in-progress candles of changed windows this often (processing time); `None`: never.
    pub early_firing_interval: Option<Micros>,
    /// A window beyond the allowed lateness is recomputed this long (processing time) after the
    /// first too-late trade that needs it, together with every other one meanwhile.
    pub correction_delay: Micros,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            window: 60 * MICROS_PER_SECOND,
            out_of_orderness: 2 * MICROS_PER_SECOND,
            allowed_lateness: 60 * MICROS_PER_SECOND,
            idle_timeout: 30 * MICROS_PER_SECOND,
            early_firing_interval: Some(MICROS_PER_SECOND),
            correction_delay: MICROS_PER_SECOND,
        }
    }
}

/// One input partition's state: what a checkpoint stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Largest event time seen in this partition.
    pub max_event_time: Option<Micros>,
    /// Progress of each upstream source. (Absent from checkpoints written before it existed.)
    #[serde(default)]
    pub sources: SourceClocks,
    /// Windows beyond the allowed lateness waiting to be recomputed from the stored trades, with
    /// the processing time they are due. Checkpointed: a too-late trade read before a checkpoint
    /// has its correction done by whoever restores it.
    #[serde(default, with = "correction::pending")]
    pub corrections: BTreeMap<CorrectionKey, Micros>,
    /// Watermark, monotone. `i64::MIN` before the first trade.
    pub watermark: Micros,
    /// Open windows (not yet purged) by window end, then instrument, then venue. Lookups by
    /// `&str` at each level need no allocation on the hot path.
    #[serde(with = "window_list")]
    pub windows: BTreeMap<Micros, Bin>,
    /// Roll-ups derived from this partition's minutes.
    #[serde(default)]
    pub rollups: Rollups,
    /// Processing time of the last record; not checkpointed meaningfully (reset on restore).
    #[serde(skip)]
    pub last_record_at: Micros,
}

/// The windows that end at one instant: instrument → venue → state.
pub type Bin = HashMap<String, Venues, WindowHasher>;

/// One instrument's windows that end at one instant, by venue.
pub type Venues = HashMap<String, CandleState, WindowHasher>;

/// The window maps hash with foldhash, not SipHash (bench/README.md: 6 % of the operator's time).
/// Its `RandomState` is seeded at random, like SipHash's.
pub type WindowHasher = foldhash::fast::RandomState;

/// Format of the serialized [`PartitionState`] in checkpoints: 3 is binary
/// ([`tickflow_shared::runtime::state`]: postcard in an LZ4 frame, decimals as their 16 bytes).
/// Still read: 2, JSON in an LZ4 block with its size prepended, and 1, plain JSON.
pub const STATE_FORMAT: i32 = 3;
/// The formats [`Aggregator::restore`] reads.
pub const READABLE_STATE_FORMATS: [i32; 3] = [1, 2, 3];

pub struct Aggregator {
    timing: Timing,
    interval: String,
    rollups: Vec<Interval>,
    partitions: BTreeMap<i32, PartitionState>,
    last_early_firing: Micros,
    /// Bytes to reserve for the next snapshot: a little above the largest so far. A snapshot
    /// written into a growing buffer held the old and the doubled one at once, and that copy
    /// was the aggregator's peak memory (bench/README.md, "Peak memory").
    snapshot_reserve: AtomicUsize,
}

impl Aggregator {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            interval: "1m".into(),
            rollups: Vec::new(),
            partitions: BTreeMap::new(),
            last_early_firing: Micros::MIN,
            snapshot_reserve: AtomicUsize::new(0),
        }
    }

    /// Also derive these longer intervals from the minutes.
    pub fn with_rollups(mut self, intervals: Vec<Interval>) -> Self {
        self.rollups = intervals;
        self
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Adds one trade of `partition`, received at processing time `now`, its source named by
    /// its provider and exchange (see [`fallback_source`]).
    pub fn on_trade(&mut self, partition: i32, trade: &Trade, now: Micros, out: &mut Vec<Output>) {
        self.on_trade_from(partition, &fallback_source(trade), trade, now, out);
    }

    /// Adds one trade of `partition` from `source`, received at processing time `now`.
    pub fn on_trade_from(
        &mut self,
        partition: i32,
        source: &str,
        trade: &Trade,
        now: Micros,
        out: &mut Vec<Output>,
    ) {
        let timing = self.timing;
        // Borrowed beside the partition's state, not cloned per trade.
        let interval = self.interval.as_str();
        let rollup_intervals = self.rollups.as_slice();
        let state = partition_state(&mut self.partitions, partition);
        state.last_record_at = now;
        state.max_event_time = Some(
            state
                .max_event_time
                .map_or(trade.event_time, |m| m.max(trade.event_time)),
        );
        let start = window_start(trade.event_time, timing.window);
        let end = start + timing.window;
        if end.saturating_add(timing.allowed_lateness) <= state.watermark {
            out.push(Output::TooLate {
                trade: trade.clone(),
                watermark: state.watermark,
            });
            correction::schedule(state, trade, &timing, rollup_intervals, now);
        } else {
            let late = end <= state.watermark;
            let bin = state.windows.entry(end).or_default();
            if !bin.contains_key(trade.instrument.as_str()) {
                bin.insert(
                    trade.instrument.clone(),
                    Venues::with_capacity_and_hasher(2, WindowHasher::default()),
                );
            }
            if let Some(venues) = bin.get_mut(trade.instrument.as_str()) {
                let span = WindowSpan { start, end, late };
                if add_to_windows(venues, trade, span, interval, out) && late {
                    // Corrected minutes flow into their roll-ups (emitted by the next advance).
                    for venue in [trade.exchange.as_str(), CONSOLIDATED_VENUE] {
                        if let Some(window) = venues.get(venue) {
                            let key = WindowKey {
                                end,
                                instrument: trade.instrument.clone(),
                                venue: venue.to_string(),
                                start,
                            };
                            state.rollups.on_minute(&key, window, rollup_intervals);
                        }
                    }
                }
            }
        }
        state.sources.observe(source, trade.event_time, now);
        let before = state.watermark;
        if let Some(low) = state.sources.low() {
            state.watermark = state
                .watermark
                .max(low.saturating_sub(timing.out_of_orderness));
        }
        // Window and roll-up ends are whole windows: when the watermark crosses one, what it
        // passed fires now, with the trade that moved it, not at the next tick.
        if state.watermark.div_euclid(timing.window) > before.div_euclid(timing.window) {
            fire(state, timing, interval, rollup_intervals, None, out);
        }
    }

    pub fn watermark(&self, partition: i32) -> Option<Micros> {
        self.partitions.get(&partition).map(|s| s.watermark)
    }

    /// (active, idle) upstream sources of a partition.
    pub fn sources(&self, partition: i32) -> (usize, usize) {
        self.partitions
            .get(&partition)
            .map_or((0, 0), |s| s.sources.counts())
    }

    /// Windows held over all partitions.
    pub fn open_windows(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|s| s.windows.values())
            .flat_map(|bin| bin.values())
            .map(HashMap::len)
            .sum()
    }

    /// The current candles of an instrument (every venue and `*`), newest window first.
    pub fn candles_of(&self, instrument: &str) -> Vec<Candle> {
        let window = self.timing.window;
        let mut out: Vec<Candle> = self
            .partitions
            .values()
            .flat_map(|s| s.windows.iter())
            .filter_map(|(&end, bin)| bin.get(instrument).map(|venues| (end, venues)))
            .flat_map(|(end, venues)| {
                venues.iter().map(move |(venue, w)| {
                    let key = WindowKey {
                        end,
                        instrument: instrument.to_string(),
                        venue: venue.clone(),
                        start: end - window,
                    };
                    w.candle(&key, &self.interval, w.fired && !w.dirty)
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.window_start
                .cmp(&a.window_start)
                .then(a.venue.cmp(&b.venue))
        });
        out
    }

    fn partition(&mut self, partition: i32) -> &mut PartitionState {
        partition_state(&mut self.partitions, partition)
    }
}

/// A partition's state, created on its first trade.
fn partition_state(
    partitions: &mut BTreeMap<i32, PartitionState>,
    partition: i32,
) -> &mut PartitionState {
    partitions
        .entry(partition)
        .or_insert_with(|| PartitionState {
            watermark: Micros::MIN,
            ..Default::default()
        })
}

/// The aggregator on the stream runtime ([`tickflow_shared::runtime`]): the hooks it calls.
impl runtime::TradeOperator for Aggregator {
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

    /// The pipeline could not read its input for `stall` (a sink or a checkpoint waited for
    /// Cassandra, say): that time does not count towards any partition's idle timeout. Else a
    /// pause longer than the timeout would make a partition look idle, move its watermark to the
    /// wall clock, and turn the trades waiting in Kafka into too-late ones.
    fn exclude_stall(&mut self, stall: Micros) {
        for state in self.partitions.values_mut() {
            state.last_record_at = state.last_record_at.saturating_add(stall);
            state.sources.exclude_stall(stall);
        }
    }

    /// Fires, purges and emits early firings for every partition at processing time `now`.
    fn advance(&mut self, now: Micros, out: &mut Vec<Output>) {
        let timing = self.timing;
        let early = match timing.early_firing_interval {
            Some(every) if now.saturating_sub(self.last_early_firing) >= every => {
                self.last_early_firing = now;
                true
            }
            _ => false,
        };
        // Early firings are for live display: a window that ended more than a window length ago
        // by the wall clock is part of a backlog being caught up, and its final value follows
        // as soon as the watermark passes it; in-progress values of it would only load the sinks.
        let live_from = now.saturating_sub(timing.window);
        let intervals = &self.rollups;
        for state in self.partitions.values_mut() {
            state.sources.mark_idle(now, timing.idle_timeout);
            // A checkpoint from before per-source progress has no sources: the partition as a
            // whole counts as one until its first record.
            let all_idle = state.sources.all_idle()
                || (state.sources.is_empty()
                    && state.max_event_time.is_some()
                    && now.saturating_sub(state.last_record_at) >= timing.idle_timeout);
            if let Some(low) = state.sources.low() {
                state.watermark = state
                    .watermark
                    .max(low.saturating_sub(timing.out_of_orderness));
            } else if all_idle {
                let follow = now
                    .saturating_sub(timing.idle_timeout)
                    .saturating_sub(timing.out_of_orderness);
                state.watermark = state.watermark.max(follow);
            }
            fire(
                state,
                timing,
                &self.interval,
                intervals,
                early.then_some(live_from),
                out,
            );
        }
    }

    /// Serialized state of one partition, for a checkpoint, in [`STATE_FORMAT`].
    fn snapshot(&self, partition: i32) -> Result<Vec<u8>, String> {
        let empty = PartitionState {
            watermark: Micros::MIN,
            ..Default::default()
        };
        state::encode(
            self.partitions.get(&partition).unwrap_or(&empty),
            &self.snapshot_reserve,
        )
    }

    /// Restores one partition from a checkpoint taken by [`Aggregator::snapshot`], in this
    /// build or an earlier one (any of [`READABLE_STATE_FORMATS`]).
    fn restore(
        &mut self,
        partition: i32,
        bytes: &[u8],
        format: i32,
        now: Micros,
    ) -> Result<(), String> {
        let mut state: PartitionState = match format {
            1 => serde_json::from_slice(bytes).map_err(|e| e.to_string())?,
            2 => state::decode_json_lz4(bytes)?,
            3 => state::decode(bytes)?,
            other => return Err(format!("unknown state format {other}")),
        };
        state.last_record_at = now;
        state.sources.restored(now);
        self.partitions.insert(partition, state);
        Ok(())
    }

    /// Starts `partition` from its beginning, without a checkpoint: its sources are not known
    /// yet, so its watermark waits one idle timeout for them (see
    /// [`SourceClocks::await_unseen`]).
    fn start_fresh(&mut self, partition: i32, now: Micros) {
        self.partitions.remove(&partition);
        self.partition(partition).sources.await_unseen(now);
    }

    /// Forgets a partition (after it was handed to another instance).
    fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

/// Where a trade's windows are in time, and whether they already closed.
#[derive(Clone, Copy)]
struct WindowSpan {
    start: Micros,
    end: Micros,
    late: bool,
}

/// Adds `trade` to its venue's window and the consolidated one: both take it, or neither.
fn add_to_windows(
    venues: &mut Venues,
    trade: &Trade,
    span: WindowSpan,
    interval: &str,
    out: &mut Vec<Output>,
) -> bool {
    let names = [trade.exchange.as_str(), CONSOLIDATED_VENUE];
    let mut sums = [None, None];
    for (slot, venue) in sums.iter_mut().zip(names) {
        if let Some(window) = venues.get(venue) {
            match window.sums_with(trade) {
                Ok(s) => *slot = Some(s),
                Err(rejection) => {
                    out.push(Output::Rejected {
                        trade: trade.clone(),
                        reason: rejection.reason(),
                    });
                    return false;
                }
            }
        }
    }
    for (venue, sums) in names.into_iter().zip(sums) {
        match sums {
            Some(sums) => {
                if let Some(window) = venues.get_mut(venue) {
                    window.apply(trade, sums);
                }
            }
            None => match CandleState::new(trade) {
                Ok(window) => {
                    venues.insert(venue.to_string(), window);
                }
                Err(rejection) => {
                    // Only the very first trade of a window can land here; nothing was added.
                    out.push(Output::Rejected {
                        trade: trade.clone(),
                        reason: rejection.reason(),
                    });
                    return false;
                }
            },
        }
    }
    if span.late {
        // The windows already closed: emit their corrected full values at once.
        for venue in names {
            if let Some(window) = venues.get_mut(venue) {
                let key = WindowKey {
                    end: span.end,
                    instrument: trade.instrument.clone(),
                    venue: venue.to_string(),
                    start: span.start,
                };
                out.push(Output::Candle(
                    window.candle(&key, interval, true),
                    Emission::Correction,
                ));
                window.mark_emitted(true);
            }
        }
    }
    true
}

/// JSON maps need string keys; windows are stored as a list of (key, state) pairs.
mod window_list {
    use std::collections::BTreeMap;

    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tickflow_shared::domain::Micros;

    use super::Bin;
    use crate::window::{CandleState, WindowKey};

    /// A [`WindowKey`] by reference: the same fields, so the same JSON, without copying the
    /// names of every window into a checkpoint.
    #[derive(Serialize)]
    struct KeyRef<'a> {
        end: Micros,
        instrument: &'a str,
        venue: &'a str,
        start: Micros,
    }

    pub fn serialize<S: Serializer>(
        windows: &BTreeMap<Micros, Bin>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        // A binary format writes the length first.
        let len = windows
            .values()
            .flat_map(|bin| bin.values())
            .map(|venues| venues.len())
            .sum();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for (&end, bin) in windows {
            for (instrument, venues) in bin {
                for (venue, state) in venues {
                    // The start is not needed to restore; it is derived from the end.
                    let key = KeyRef {
                        end,
                        instrument,
                        venue,
                        start: 0,
                    };
                    seq.serialize_element(&(key, state))?;
                }
            }
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<Micros, Bin>, D::Error> {
        let pairs: Vec<(WindowKey, CandleState)> = Vec::deserialize(deserializer)?;
        let mut windows: BTreeMap<Micros, Bin> = BTreeMap::new();
        for (key, state) in pairs {
            windows
                .entry(key.end)
                .or_default()
                .entry(key.instrument)
                .or_default()
                .insert(key.venue, state);
        }
        Ok(windows)
    }
}

#[cfg(test)]
mod tests;

/// Emits what `state`'s watermark has passed: each window's final value, a correction for a
/// window changed since (a late trade), their roll-ups; then purges what is past the allowed
/// lateness. `early`: also the changed open windows that ended after this instant, as early
/// firings.
fn fire(
    state: &mut PartitionState,
    timing: Timing,
    interval: &str,
    intervals: &[Interval],
    early: Option<Micros>,
    out: &mut Vec<Output>,
) {
    let watermark = state.watermark;
    for (&end, bin) in state.windows.iter_mut() {
        let closed = end <= watermark;
        // Bins are sorted by end: past the watermark, only early firings remain.
        if !closed && early.is_none() {
            break;
        }
        for (instrument, venues) in bin.iter_mut() {
            for (venue, window) in venues.iter_mut() {
                let due = if closed {
                    !window.fired || window.dirty
                } else {
                    early.is_some_and(|live_from| window.dirty && end > live_from)
                };
                if due {
                    let key = WindowKey {
                        end,
                        instrument: instrument.clone(),
                        venue: venue.clone(),
                        start: end - timing.window,
                    };
                    let emission = match (closed, window.fired) {
                        (false, _) => Emission::Early,
                        (true, false) => Emission::Final,
                        (true, true) => Emission::Correction,
                    };
                    out.push(Output::Candle(
                        window.candle(&key, interval, closed),
                        emission,
                    ));
                    window.mark_emitted(closed);
                    if closed {
                        state.rollups.on_minute(&key, window, intervals);
                    }
                }
            }
        }
    }
    state.rollups.advance(
        watermark,
        timing.window,
        timing.allowed_lateness,
        intervals,
        out,
    );
    // Keep windows until the allowed lateness after their end has passed too.
    let keep_from = watermark.saturating_sub(timing.allowed_lateness);
    state.windows = state.windows.split_off(&keep_from.saturating_add(1));
}
