//! Event-time progress of one input partition, tracked per upstream source.
//!
//! One `md.trades` partition carries the trades of several sources: every raw partition that
//! the normalizer read them from (`md.raw.binance` partition 3, say). Each source is in its own
//! order (the gateway's receive order), but the normalizer interleaves sources in blocks when it
//! catches up a backlog, so the newest event time of the partition as a whole says nothing about
//! a source whose block has not come yet. As in Flink's per-split watermarks, a partition's
//! progress is the minimum over its *active* sources of their newest event time; a source that
//! has sent nothing for its idle timeout of processing time is left out until it sends again, so
//! a silent source cannot hold results back for ever.
//!
//! Idleness is decided only when [`SourceClocks::mark_idle`] runs (the operators call it from
//! their periodic `advance`), never while records are read, and the idle flags are part of the
//! checkpointed state: between two ticks, what a record does is a function of the record order
//! alone, and a restored partition starts from the decisions its checkpoint holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Micros, Trade};

/// Kafka header on `md.trades` records naming the source a trade came from: the raw topic and
/// partition, as `md.raw.binance:3`. Set by the normalizer.
pub const SOURCE_HEADER: &str = "tickflow.source";

/// The value of `message`'s [`SOURCE_HEADER`], if it has one in UTF-8.
pub fn source_header<M: rdkafka::message::Message>(message: &M) -> Option<&str> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == SOURCE_HEADER)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The [`SOURCE_HEADER`] value for a record of raw `topic` and `partition`.
pub fn source_name(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// The source of a trade that carries no [`SOURCE_HEADER`] (produced by something other than
/// the normalizer): its provider and exchange, which are in their own order per provider feed.
pub fn fallback_source(trade: &Trade) -> String {
    format!("{}/{}", trade.provider, trade.exchange)
}

/// The stand-in of [`SourceClocks::await_unseen`].
const UNSEEN: &str = "(not seen yet)";

/// One source's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SourceClock {
    /// Largest event time seen from this source.
    newest: Micros,
    /// Left out of the partition's progress until it sends again.
    idle: bool,
    /// Processing time of its last record; reset to the restore time (not meaningful across
    /// processes).
    #[serde(skip)]
    last_arrival: Micros,
}

/// Every source of one input partition, and the minimum over the active ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceClocks {
    sources: BTreeMap<String, SourceClock>,
    /// Cached minimum of `newest` over active sources; `None` when it must be recomputed.
    #[serde(skip)]
    low: Option<Option<Micros>>,
}

impl SourceClocks {
    /// A record of `source` with `event_time`, read at processing time `now`. A source seen
    /// for the first time, or back from idleness, counts from this record on.
    pub fn observe(&mut self, source: &str, event_time: Micros, now: Micros) {
        match self.sources.get_mut(source) {
            Some(clock) => {
                let was_holding = !clock.idle && self.low == Some(Some(clock.newest));
                if clock.idle || (was_holding && event_time > clock.newest) {
                    self.low = None;
                }
                clock.idle = false;
                clock.newest = clock.newest.max(event_time);
                clock.last_arrival = now;
            }
            None => {
                self.sources.insert(
                    source.to_string(),
                    SourceClock {
                        newest: event_time,
                        idle: false,
                        last_arrival: now,
                    },
                );
                self.low = None;
            }
        }
    }

    /// A partition read from its beginning (no checkpoint, so its sources are not known yet):
    /// until `idle_timeout` after `now`, a stand-in for the sources not seen yet holds the
    /// progress back, so the first source's backlog cannot make the trades of one whose block
    /// comes later too late. Like any source, the stand-in is left out once idle.
    pub fn await_unseen(&mut self, now: Micros) {
        self.sources.insert(
            UNSEEN.to_string(),
            SourceClock {
                newest: Micros::MIN,
                idle: false,
                last_arrival: now,
            },
        );
        self.low = None;
    }

    /// Leaves out the sources without a record for `idle_timeout` before `now`. Returns how many
    /// became idle.
    pub fn mark_idle(&mut self, now: Micros, idle_timeout: Micros) -> usize {
        let mut changed = 0;
        for clock in self.sources.values_mut() {
            if !clock.idle && now.saturating_sub(clock.last_arrival) >= idle_timeout {
                clock.idle = true;
                changed += 1;
            }
        }
        if changed > 0 {
            self.low = None;
        }
        changed
    }

    /// The smallest newest event time over the active sources; `None` when there is none (no
    /// record yet, or every source idle).
    pub fn low(&mut self) -> Option<Micros> {
        if let Some(low) = self.low {
            return low;
        }
        let low = self
            .sources
            .values()
            .filter(|c| !c.idle)
            .map(|c| c.newest)
            .min();
        self.low = Some(low);
        low
    }

    /// The sources that sent something: not the stand-in for those not seen yet.
    fn seen(&self) -> impl Iterator<Item = &SourceClock> {
        self.sources.values().filter(|c| c.newest != Micros::MIN)
    }

    /// The largest event time seen from any source; `None` before any record.
    pub fn newest(&self) -> Option<Micros> {
        self.seen().map(|c| c.newest).max()
    }

    /// The source that sent last (among those that sent last at the same time, the one
    /// furthest ahead): (its newest event time, when it sent); `None` before any record (the
    /// stand-in for sources not seen yet has sent nothing).
    pub fn last_arrival(&self) -> Option<(Micros, Micros)> {
        self.seen()
            .max_by_key(|c| (c.last_arrival, c.newest))
            .map(|c| (c.newest, c.last_arrival))
    }

    /// True when at least one source was seen and none is active.
    pub fn all_idle(&self) -> bool {
        !self.sources.is_empty() && self.sources.values().all(|c| c.idle)
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// (active, idle) source counts.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.sources.values().filter(|c| c.idle).count();
        (self.sources.len() - idle, idle)
    }

    /// The pipeline could not read its input for `stall` (waiting for a sink, say): that time
    /// does not count towards any source's idle timeout.
    pub fn exclude_stall(&mut self, stall: Micros) {
        for clock in self.sources.values_mut() {
            clock.last_arrival = clock.last_arrival.saturating_add(stall);
        }
    }

    /// After a restore at processing time `now`: every source's idle timeout counts from now.
    pub fn restored(&mut self, now: Micros) {
        for clock in self.sources.values_mut() {
            clock.last_arrival = now;
        }
        self.low = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    #[test]
    fn progress_is_the_slowest_active_source() {
        let mut clocks = SourceClocks::default();
        assert_eq!(clocks.low(), None);
        clocks.observe("a", 100 * S, 0);
        assert_eq!(clocks.low(), Some(100 * S));
        clocks.observe("b", 40 * S, 0);
        assert_eq!(clocks.low(), Some(40 * S));
        // A block of `a` far ahead does not move the partition past `b`.
        for t in 101..400 {
            clocks.observe("a", t * S, 0);
        }
        assert_eq!(clocks.low(), Some(40 * S));
        clocks.observe("b", 50 * S, 0);
        assert_eq!(clocks.low(), Some(50 * S));
        // Older records of a source never move it back.
        clocks.observe("b", 45 * S, 0);
        assert_eq!(clocks.low(), Some(50 * S));
        assert_eq!(clocks.newest(), Some(399 * S));
    }

    #[test]
    fn an_idle_source_is_left_out_until_it_sends_again() {
        let mut clocks = SourceClocks::default();
        clocks.observe("a", 100 * S, 0);
        clocks.observe("b", 40 * S, 0);
        clocks.observe("a", 130 * S, 20 * S);
        // 25 s after b's last record: not idle yet with a 30 s timeout.
        assert_eq!(clocks.mark_idle(25 * S, 30 * S), 0);
        assert_eq!(clocks.low(), Some(40 * S));
        assert_eq!(clocks.mark_idle(31 * S, 30 * S), 1);
        assert_eq!(clocks.low(), Some(130 * S));
        assert_eq!(clocks.counts(), (1, 1));
        // b comes back: it holds the partition again.
        clocks.observe("b", 60 * S, 32 * S);
        assert_eq!(clocks.low(), Some(60 * S));
        assert!(!clocks.all_idle());
        clocks.mark_idle(100 * S, 30 * S);
        assert!(clocks.all_idle());
        assert_eq!(clocks.low(), None);
    }

    #[test]
    fn sources_not_seen_yet_are_awaited_for_one_idle_timeout() {
        let mut clocks = SourceClocks::default();
        clocks.await_unseen(0);
        clocks.observe("a", 100 * S, S);
        assert_eq!(clocks.low(), Some(Micros::MIN));
        clocks.observe("b", 40 * S, 2 * S);
        clocks.observe("a", 120 * S, 20 * S);
        clocks.observe("b", 50 * S, 20 * S);
        assert_eq!(clocks.mark_idle(30 * S, 30 * S), 1);
        assert_eq!(clocks.low(), Some(50 * S));
    }

    /// A fresh partition that gets no record: once its stand-in is idle, nothing was seen, so
    /// there is no newest time to run a wall clock on from (it was `Micros::MIN`, and an
    /// operator adding the silence to it ran its clock at the far past).
    #[test]
    fn a_fresh_partition_without_records_has_no_time() {
        let mut clocks = SourceClocks::default();
        clocks.await_unseen(10 * S);
        assert_eq!(clocks.low(), Some(Micros::MIN));
        assert_eq!(clocks.mark_idle(40 * S, 30 * S), 1);
        assert!(clocks.all_idle());
        assert_eq!(clocks.low(), None);
        assert_eq!(clocks.newest(), None);
        assert_eq!(clocks.last_arrival(), None);
        clocks.observe("a", 100 * S, 41 * S);
        assert_eq!(clocks.newest(), Some(100 * S));
        assert_eq!(clocks.last_arrival(), Some((100 * S, 41 * S)));
    }

    #[test]
    fn a_stall_is_not_idleness_and_a_restore_restarts_the_timeouts() {
        let mut clocks = SourceClocks::default();
        clocks.observe("a", 100 * S, 0);
        clocks.exclude_stall(20 * S);
        assert_eq!(clocks.mark_idle(40 * S, 30 * S), 0);
        let json = serde_json::to_string(&clocks).unwrap();
        let mut back: SourceClocks = serde_json::from_str(&json).unwrap();
        back.restored(1_000 * S);
        assert_eq!(back.mark_idle(1_020 * S, 30 * S), 0);
        assert_eq!(back.low(), Some(100 * S));
        assert_eq!(back.mark_idle(1_031 * S, 30 * S), 1);
    }

    #[test]
    fn the_cached_minimum_matches_a_full_scan() {
        // Pseudo-random interleaving of five sources with idleness: the cache never differs
        // from recomputing the minimum.
        let mut clocks = SourceClocks::default();
        let mut x: u64 = 7;
        for step in 0..20_000i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let source = ["a", "b", "c", "d", "e"][(x >> 33) as usize % 5];
            let event_time = step * S / 10 - ((x >> 40) as i64 % (5 * S));
            clocks.observe(source, event_time, step * S / 100);
            if step % 97 == 0 {
                clocks.mark_idle(step * S / 100, S / 5);
            }
            let cached = clocks.low();
            clocks.low = None;
            assert_eq!(cached, clocks.low(), "step {step}");
        }
    }
}
