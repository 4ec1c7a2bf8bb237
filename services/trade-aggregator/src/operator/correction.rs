//! Corrections beyond the allowed lateness: which windows a too-late trade invalidates, when
//! they are due, and their recomputation from the stored trades (pure; the pipeline reads the
//! trades from Cassandra and writes the candles).
//!
//! Work is bounded: a window is recomputed at most once per `correction_delay`, however many
//! too-late trades it gets meanwhile (they are coalesced into one pending entry), and the pipeline
//! reports instead of recomputing what is older than the stored trades' TTL.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{Candle, Micros, Trade, CONSOLIDATED_VENUE};

use super::{Aggregator, PartitionState, Timing};
use crate::rollup::Interval;
use crate::window::{window_start, CandleState, Rejection, WindowKey};

/// A window to recompute: every venue of it and the consolidated one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CorrectionKey {
    pub instrument: String,
    /// The window's length (a minute, or a roll-up interval's).
    pub length: Micros,
    pub start: Micros,
}

/// A due correction, handed to the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub partition: i32,
    pub key: CorrectionKey,
    /// The interval label of its candles (`1m`, `5m`, ...).
    pub interval: String,
}

/// Records what a too-late `trade` needs: its minute (no longer held) is recomputed; roll-up
/// windows still held take the trade at once, those no longer held are recomputed.
pub(super) fn schedule(
    state: &mut PartitionState,
    trade: &Trade,
    timing: &Timing,
    intervals: &[Interval],
    now: Micros,
) {
    let due = now.saturating_add(timing.correction_delay);
    let mut pend = |length: Micros| {
        let key = CorrectionKey {
            instrument: trade.instrument.clone(),
            length,
            start: window_start(trade.event_time, length),
        };
        state.corrections.entry(key).or_insert(due);
    };
    pend(timing.window);
    for length in state.rollups.on_too_late(trade, intervals) {
        pend(length);
    }
}

impl Aggregator {
    /// Takes the corrections due at processing time `now`, over every partition.
    pub fn due_corrections(&mut self, now: Micros) -> Vec<Correction> {
        let mut due = Vec::new();
        for (&partition, state) in self.partitions.iter_mut() {
            let ready: Vec<CorrectionKey> = state
                .corrections
                .iter()
                .filter(|(_, &at)| at <= now)
                .map(|(key, _)| key.clone())
                .collect();
            for key in ready {
                state.corrections.remove(&key);
                let interval = if key.length == self.timing.window {
                    Some(self.interval.clone())
                } else {
                    self.rollups
                        .iter()
                        .find(|i| i.length == key.length)
                        .map(|i| i.label.clone())
                };
                // A roll-up interval no longer configured has nothing to correct.
                if let Some(interval) = interval {
                    due.push(Correction {
                        partition,
                        key,
                        interval,
                    });
                }
            }
        }
        due
    }

    /// Corrections waiting, over every partition.
    pub fn pending_corrections(&self) -> usize {
        self.partitions.values().map(|s| s.corrections.len()).sum()
    }
}

/// The candles of `correction`'s window (each venue and `*`) over `trades`: the stored trades
/// of its instrument, of which those outside the window are ignored. Final, revision 0 (the
/// pipeline sets it above the stored one). `Err` names the venue whose sums overflow.
pub fn recompute(correction: &Correction, trades: &[Trade]) -> Result<Vec<Candle>, String> {
    let key = &correction.key;
    let end = key.start + key.length;
    let mut windows: HashMap<&str, CandleState> = HashMap::new();
    for trade in trades.iter().filter(|t| {
        t.instrument == key.instrument && t.event_time >= key.start && t.event_time < end
    }) {
        for venue in [trade.exchange.as_str(), CONSOLIDATED_VENUE] {
            let added = match windows.get_mut(venue) {
                Some(window) => window.add(trade),
                None => CandleState::new(trade).map(|w| {
                    windows.insert(venue, w);
                }),
            };
            if let Err(Rejection::Overflow) = added {
                return Err(format!("the sums of venue {venue} overflow"));
            }
        }
    }
    let mut candles: Vec<Candle> = windows
        .into_iter()
        .map(|(venue, window)| {
            let window_key = WindowKey {
                end,
                instrument: key.instrument.clone(),
                venue: venue.to_string(),
                start: key.start,
            };
            let mut candle = window.candle(&window_key, &correction.interval, true);
            candle.revision = 0;
            candle
        })
        .collect();
    candles.sort_by(|a, b| a.venue.cmp(&b.venue));
    Ok(candles)
}

/// JSON maps need string keys: pending corrections are stored as a list of (key, due) pairs.
pub(super) mod pending {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};
    use tickflow_shared::domain::Micros;

    use super::CorrectionKey;

    pub fn serialize<S: Serializer>(
        pending: &BTreeMap<CorrectionKey, Micros>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(pending.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<CorrectionKey, Micros>, D::Error> {
        Ok(Vec::<(CorrectionKey, Micros)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}
