//! The 1-minute window operator: pure and synchronous. `on_trade` adds a trade to its windows,
//! `advance` fires what the watermark has passed, emits early firings and purges; snapshots of
//! one input partition's state go into checkpoints.
//!
//! Time is event time. Each input partition has its own watermark: the largest event time seen
//! minus the bounded out-of-orderness. Trades are keyed by instrument, so every window lives in
//! exactly one partition, and its watermark is that partition's. This keeps results a function
//! of each partition's record order alone: a replay after a crash classifies every trade (on
//! time, late, too late) exactly as the first run did. A partition that has had no record for
//! `idle_timeout` of processing time lets its watermark follow the wall clock, so the last windows
//! of a quiet instrument still close.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{Candle, Micros, Trade, CONSOLIDATED_VENUE, MICROS_PER_SECOND};

use crate::window::{window_start, CandleState, Rejection, WindowKey};

/// The operator's timing, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Micros,
    pub out_of_orderness: Micros,
    pub allowed_lateness: Micros,
    pub idle_timeout: Micros,
    /// Emit in-progress candles of changed windows this often (processing time); `None`: never.
    pub early_firing_interval: Option<Micros>,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            window: 60 * MICROS_PER_SECOND,
            out_of_orderness: 2 * MICROS_PER_SECOND,
            allowed_lateness: 60 * MICROS_PER_SECOND,
            idle_timeout: 30 * MICROS_PER_SECOND,
            early_firing_interval: Some(MICROS_PER_SECOND),
        }
    }
}

/// What the operator emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A candle to upsert (final, or an early firing when `is_final` is false).
    Candle(Candle),
    /// A trade whose window closed more than the allowed lateness ago: `md.trades.late`.
    TooLate { trade: Trade, watermark: Micros },
    /// A trade that cannot be aggregated (e.g. its sums overflow): `md.trades.late` with reason.
    Rejected { trade: Trade, reason: &'static str },
}

/// One input partition's state: what a checkpoint stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Largest event time seen in this partition.
    pub max_event_time: Option<Micros>,
    /// Watermark, monotone. `i64::MIN` before the first trade.
    pub watermark: Micros,
    /// Open windows (not yet purged), in the order they close.
    #[serde(with = "window_list")]
    pub windows: BTreeMap<WindowKey, CandleState>,
    /// Processing time of the last record; not checkpointed meaningfully (reset on restore).
    #[serde(skip)]
    pub last_record_at: Micros,
}

/// Format of the serialized [`PartitionState`] in checkpoints.
pub const STATE_FORMAT: i32 = 1;

pub struct Aggregator {
    timing: Timing,
    interval: String,
    partitions: BTreeMap<i32, PartitionState>,
    last_early_firing: Micros,
}

impl Aggregator {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            interval: "1m".into(),
            partitions: BTreeMap::new(),
            last_early_firing: Micros::MIN,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Adds one trade of `partition`, received at processing time `now`.
    pub fn on_trade(&mut self, partition: i32, trade: &Trade, now: Micros, out: &mut Vec<Output>) {
        let timing = self.timing;
        let interval = self.interval.clone();
        let state = self.partition(partition);
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
        } else {
            let keys = [
                WindowKey {
                    end,
                    instrument: trade.instrument.clone(),
                    venue: trade.exchange.clone(),
                    start,
                },
                WindowKey {
                    end,
                    instrument: trade.instrument.clone(),
                    venue: CONSOLIDATED_VENUE.to_string(),
                    start,
                },
            ];
            // Both windows take the trade, or neither does.
            let mut updated = Vec::with_capacity(2);
            for key in &keys {
                let next = match state.windows.get(key) {
                    Some(current) => {
                        let mut next = current.clone();
                        next.add(trade).map(|()| next)
                    }
                    None => CandleState::new(trade),
                };
                match next {
                    Ok(next) => updated.push(next),
                    Err(rejection) => {
                        out.push(Output::Rejected {
                            trade: trade.clone(),
                            reason: Rejection::reason(rejection),
                        });
                        updated.clear();
                        break;
                    }
                }
            }
            let late = end <= state.watermark;
            for (key, mut window) in keys.into_iter().zip(updated) {
                if late {
                    // The window already closed: emit the corrected full value at once.
                    out.push(Output::Candle(window.candle(&key, &interval, true)));
                    window.mark_emitted(true);
                }
                state.windows.insert(key, window);
            }
        }
        let watermark = trade.event_time.saturating_sub(timing.out_of_orderness);
        let state = self.partition(partition);
        state.watermark = state.watermark.max(watermark);
    }

    /// Fires, purges and emits early firings for every partition at processing time `now`.
    pub fn advance(&mut self, now: Micros, out: &mut Vec<Output>) {
        let timing = self.timing;
        let early = match timing.early_firing_interval {
            Some(every) if now.saturating_sub(self.last_early_firing) >= every => {
                self.last_early_firing = now;
                true
            }
            _ => false,
        };
        for state in self.partitions.values_mut() {
            if state.max_event_time.is_some()
                && now.saturating_sub(state.last_record_at) >= timing.idle_timeout
            {
                let follow = now
                    .saturating_sub(timing.idle_timeout)
                    .saturating_sub(timing.out_of_orderness);
                state.watermark = state.watermark.max(follow);
            }
            let watermark = state.watermark;
            for (key, window) in state.windows.iter_mut() {
                if key.end <= watermark {
                    if !window.fired || window.dirty {
                        out.push(Output::Candle(window.candle(key, &self.interval, true)));
                        window.mark_emitted(true);
                    }
                } else {
                    // Windows are sorted by end: nothing after this one has closed.
                    if !early {
                        break;
                    }
                    if window.dirty {
                        out.push(Output::Candle(window.candle(key, &self.interval, false)));
                        window.mark_emitted(false);
                    }
                }
            }
            let keep_from = watermark.saturating_sub(timing.allowed_lateness);
            state.windows.retain(|key, _| key.end > keep_from);
        }
    }

    /// Serialized state of one partition, for a checkpoint.
    pub fn snapshot(&self, partition: i32) -> Result<Vec<u8>, serde_json::Error> {
        let empty = PartitionState {
            watermark: Micros::MIN,
            ..Default::default()
        };
        serde_json::to_vec(self.partitions.get(&partition).unwrap_or(&empty))
    }

    /// Restores one partition from a checkpoint taken by [`Aggregator::snapshot`].
    pub fn restore(
        &mut self,
        partition: i32,
        bytes: &[u8],
        now: Micros,
    ) -> Result<(), serde_json::Error> {
        let mut state: PartitionState = serde_json::from_slice(bytes)?;
        state.last_record_at = now;
        self.partitions.insert(partition, state);
        Ok(())
    }

    /// Forgets a partition (after it was handed to another instance).
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub fn watermark(&self, partition: i32) -> Option<Micros> {
        self.partitions.get(&partition).map(|s| s.watermark)
    }

    /// Open windows over all partitions.
    pub fn open_windows(&self) -> usize {
        self.partitions.values().map(|s| s.windows.len()).sum()
    }

    /// The current candles of an instrument (every venue and `*`), newest window first.
    pub fn candles_of(&self, instrument: &str) -> Vec<Candle> {
        let mut out: Vec<Candle> = self
            .partitions
            .values()
            .flat_map(|s| s.windows.iter())
            .filter(|(k, _)| k.instrument == instrument)
            .map(|(k, w)| w.candle(k, &self.interval, w.fired && !w.dirty))
            .collect();
        out.sort_by(|a, b| {
            b.window_start
                .cmp(&a.window_start)
                .then(a.venue.cmp(&b.venue))
        });
        out
    }

    fn partition(&mut self, partition: i32) -> &mut PartitionState {
        self.partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                watermark: Micros::MIN,
                ..Default::default()
            })
    }
}

/// JSON maps need string keys; windows are stored as a list of (key, state) pairs.
mod window_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::window::{CandleState, WindowKey};

    pub fn serialize<S: Serializer>(
        windows: &BTreeMap<WindowKey, CandleState>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(windows.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<WindowKey, CandleState>, D::Error> {
        let pairs: Vec<(WindowKey, CandleState)> = Vec::deserialize(deserializer)?;
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
