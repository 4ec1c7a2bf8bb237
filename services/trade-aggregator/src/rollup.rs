//! Roll-ups (5m, 15m, 1h, ...) derived from the 1-minute windows: when a minute closes (or is
//! corrected by a late trade), its exact state replaces that minute's part of every roll-up
//! window containing it; a roll-up fires when the partition's watermark passes its end and is
//! re-emitted, with a higher revision, when one of its minutes is corrected later. Because the
//! minutes' exact sums are merged (not their rounded candles), a roll-up equals a candle computed
//! directly over the same trades.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{Micros, Trade, CONSOLIDATED_VENUE};

use crate::output::{Emission, Output};
use crate::window::{window_start, CandleState, WindowKey};

/// A roll-up interval: its length and its label (`5m`, `1h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub length: Micros,
    pub label: String,
}

impl Interval {
    /// Parses `5m`, `15m`, `1h`, `4h`, `1d`. Only whole multiples of a minute make sense here.
    pub fn parse(label: &str) -> Option<Interval> {
        let (number, unit) = label.split_at(label.find(|c: char| !c.is_ascii_digit())?);
        let n: Micros = number.parse().ok().filter(|n| *n > 0)?;
        let minutes = match unit {
            "m" => n,
            "h" => n.checked_mul(60)?,
            "d" => n.checked_mul(24 * 60)?,
            _ => return None,
        };
        Some(Interval {
            length: minutes.checked_mul(60_000_000)?,
            label: label.to_string(),
        })
    }
}

/// Identity of a roll-up window; sorted by end first, like the minute windows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RollupKey {
    pub end: Micros,
    pub length: Micros,
    pub instrument: String,
    pub venue: String,
}

/// One roll-up window: the exact state of each of its minutes that had trades and can still be
/// corrected, and the merged state of those that no longer can (past the allowed lateness), so a
/// long roll-up (1h, 1d) holds two or three minutes, not sixty or 1,440.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RollupWindow {
    minutes: BTreeMap<Micros, CandleState>,
    /// The minutes folded in so far, merged. (Absent from checkpoints written before it existed.)
    #[serde(default)]
    settled: Option<CandleState>,
    emitted: i32,
    fired: bool,
    dirty: bool,
}

/// Every roll-up window of one input partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollups {
    #[serde(with = "pairs")]
    windows: BTreeMap<RollupKey, RollupWindow>,
}

impl Rollups {
    /// A minute window closed or was corrected: put its state into every roll-up holding it.
    /// The roll-ups are emitted by the next [`Rollups::advance`], after every minute closing at
    /// the same time has been put in, so no partial roll-up is ever emitted as final.
    pub fn on_minute(&mut self, minute: &WindowKey, state: &CandleState, intervals: &[Interval]) {
        for interval in intervals {
            let start = window_start(minute.start, interval.length);
            let key = RollupKey {
                end: start + interval.length,
                length: interval.length,
                instrument: minute.instrument.clone(),
                venue: minute.venue.clone(),
            };
            let window = self.windows.entry(key).or_default();
            window.minutes.insert(minute.start, state.clone());
            window.dirty = true;
        }
    }

    /// A trade too late for its minute: each roll-up window of it still held takes it at once
    /// (into the settled part, which no minute emission replaces), and is re-emitted by the next
    /// [`Rollups::advance`]. Returns the lengths of the intervals whose window is no longer held
    /// (or whose sum would overflow): those must be recomputed from the stored trades.
    pub fn on_too_late(&mut self, trade: &Trade, intervals: &[Interval]) -> Vec<Micros> {
        let mut not_held = Vec::new();
        for interval in intervals {
            let start = window_start(trade.event_time, interval.length);
            let key = |venue: &str| RollupKey {
                end: start + interval.length,
                length: interval.length,
                instrument: trade.instrument.clone(),
                venue: venue.to_string(),
            };
            // The consolidated window takes every trade: if it is not held, the window was
            // purged (or never had a trade), and only the stored trades can tell its value.
            if !self.windows.contains_key(&key(CONSOLIDATED_VENUE)) {
                not_held.push(interval.length);
                continue;
            }
            let Ok(single) = CandleState::new(trade) else {
                not_held.push(interval.length);
                continue;
            };
            let mut merged = Vec::with_capacity(2);
            for venue in [trade.exchange.as_str(), CONSOLIDATED_VENUE] {
                // A venue without a window here had no trade in it yet: it starts with this one.
                let window = self.windows.get(&key(venue)).cloned().unwrap_or_default();
                let mut settled = match &window.settled {
                    Some(s) => s.clone(),
                    None => single.clone(),
                };
                if window.settled.is_some() && settled.merge(&single).is_err() {
                    break;
                }
                merged.push((key(venue), window, settled));
            }
            if merged.len() < 2 {
                not_held.push(interval.length);
                continue;
            }
            // Both or neither: the venue and the consolidated window stay consistent.
            for (key, mut window, settled) in merged {
                window.settled = Some(settled);
                window.dirty = true;
                self.windows.insert(key, window);
            }
        }
        not_held
    }

    /// Fires the roll-ups the watermark has passed, folds the minutes no late trade can change
    /// any more (`minute` long, ended `allowed_lateness` before the watermark) into each window's
    /// settled part, and forgets the windows past the allowed lateness.
    pub fn advance(
        &mut self,
        watermark: Micros,
        minute: Micros,
        allowed_lateness: Micros,
        intervals: &[Interval],
        out: &mut Vec<Output>,
    ) {
        // A minute whose end plus the allowed lateness is at or before the watermark takes no
        // more trades (they are too late): its state is final.
        let final_before = watermark
            .saturating_sub(allowed_lateness)
            .saturating_sub(minute);
        for window in self.windows.values_mut() {
            window.settle(final_before);
        }
        for (key, window) in self.windows.iter_mut() {
            if key.end > watermark {
                break;
            }
            if window.dirty || !window.fired {
                if let Some(interval) = intervals.iter().find(|i| i.length == key.length) {
                    emit(key, window, &interval.label, out);
                }
            }
        }
        let keep_from = watermark.saturating_sub(allowed_lateness);
        self.windows.retain(|key, _| key.end > keep_from);
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The largest number of minutes any one window holds apart (not yet settled).
    pub fn most_minutes_held(&self) -> usize {
        self.windows
            .values()
            .map(|w| w.minutes.len())
            .max()
            .unwrap_or(0)
    }
}

impl RollupWindow {
    /// Folds the minutes starting at or before `final_before` into the settled part. A minute
    /// whose sum would overflow stays apart, and the roll-up's emission reports it.
    fn settle(&mut self, final_before: Micros) {
        while let Some(entry) = self.minutes.first_entry() {
            if *entry.key() > final_before {
                break;
            }
            match &mut self.settled {
                None => self.settled = Some(entry.remove()),
                Some(settled) => {
                    let mut merged = settled.clone();
                    if merged.merge(entry.get()).is_err() {
                        break;
                    }
                    *settled = merged;
                    entry.remove();
                }
            }
        }
    }
}

fn emit(key: &RollupKey, window: &mut RollupWindow, label: &str, out: &mut Vec<Output>) {
    let mut minutes = window.settled.iter().chain(window.minutes.values());
    let Some(first) = minutes.next() else { return };
    let mut merged = first.clone();
    for minute in minutes {
        if merged.merge(minute).is_err() {
            // Each minute was accepted, but their sum overflows: say so instead of a wrong value.
            tracing::error!(instrument = %key.instrument, venue = %key.venue, interval = label, end = key.end, "roll-up overflows; not emitted");
            return;
        }
    }
    merged.emitted = window.emitted;
    let window_key = WindowKey {
        end: key.end,
        instrument: key.instrument.clone(),
        venue: key.venue.clone(),
        start: key.end - key.length,
    };
    let emission = if window.fired {
        Emission::Correction
    } else {
        Emission::Final
    };
    out.push(Output::Candle(
        merged.candle(&window_key, label, true),
        emission,
    ));
    window.emitted += 1;
    window.fired = true;
    window.dirty = false;
}

/// JSON maps need string keys: stored as a list of (key, window) pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{RollupKey, RollupWindow};

    pub fn serialize<S: Serializer>(
        windows: &BTreeMap<RollupKey, RollupWindow>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(windows.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<RollupKey, RollupWindow>, D::Error> {
        Ok(Vec::<(RollupKey, RollupWindow)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(Interval::parse("5m").unwrap().length, 300_000_000);
        assert_eq!(Interval::parse("1h").unwrap().length, 3_600_000_000);
        assert_eq!(Interval::parse("1d").unwrap().length, 86_400_000_000);
        for bad in ["", "m", "0m", "5", "5s", "-5m", "1.5h"] {
            assert!(Interval::parse(bad).is_none(), "{bad}");
        }
    }
}
