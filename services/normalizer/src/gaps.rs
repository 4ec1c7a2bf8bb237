//! Holes in a provider's trade numbering.
//!
//! Binance, Coinbase and Kraken number each symbol's trades consecutively
//! ([`tickflow_providers::Provider::trade_number`]), so a number that jumps past the next one
//! means the trades between were printed and never reached us: a gap. The normalizer watches each
//! (provider, symbol) stream in the order its raw partition holds it (the gateway keys raw
//! records by provider symbol, so a symbol's frames stay in one partition, in receive order):
//!
//! - the next number: nothing to say;
//! - a number past the next one: a gap from the next to the one before it, **open**; found
//!   *within a connection* when the same gateway connection delivered both trades, or *after a
//!   reconnect* when the trade after the hole came on another connection;
//! - a number at or below the highest seen: a missing trade arriving late (reordered, or sent
//!   again by a backfill) when it lies in an open gap, and the gap is **filled** once its last
//!   missing trade arrived; otherwise a duplicate or a reordering, which is not a hole.
//!
//! A stream whose numbering falls back by more than [`RESTART_DISTANCE`] restarted (a provider
//! reset its ids): its open gaps are closed as **dropped** and it starts over. At most
//! [`MAX_OPEN`] gaps are held per stream; the oldest is dropped beyond that.
//!
//! Like the duplicate filter, state is per input partition, and rebuilt after a restart, a
//! rebalance or an aborted transaction by the warm-up that reads the partition back over the
//! dedup horizon (nothing is undone in place). A gap found before that window and filled after
//! a restart is not reported filled.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use tickflow_shared::domain::Micros;
pub use tickflow_shared::gap::GapRecord;
use tickflow_shared::instruments::InstrumentIndex;
use tickflow_shared::runtime::Tp;

/// Gaps held open per stream; beyond that the oldest is dropped (reported, no longer tracked).
pub const MAX_OPEN: usize = 64;
/// Ranges of still-missing trades held per open gap; beyond that the gap is dropped.
pub const MAX_HOLES: usize = 256;
/// A number this far below the highest seen means the provider restarted its numbering.
pub const RESTART_DISTANCE: u64 = 10_000_000;

/// What happened to a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Found: the trades `first..=last` are missing.
    Open,
    /// Every trade of the gap arrived after it was found.
    Filled,
    /// No longer tracked, with the reason; what it still missed is lost to tickflow.
    Dropped(&'static str),
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Open => "OPEN",
            Status::Filled => "FILLED",
            Status::Dropped(_) => "DROPPED",
        }
    }
}

/// How a gap was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Found {
    /// Both neighbours of the hole came on the same gateway connection.
    WithinConnection,
    /// The trade after the hole came on another connection than the one before it.
    AfterReconnect,
}

impl Found {
    pub const fn as_str(self) -> &'static str {
        match self {
            Found::WithinConnection => "connection",
            Found::AfterReconnect => "reconnect",
        }
    }
}

/// One numbered trade, as the tracker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub number: u64,
    /// The gateway session that delivered it.
    pub connection: &'a str,
    /// The gateway's receive time.
    pub received_at: Micros,
    /// The trade's own time.
    pub event_time: Micros,
}

/// A change to a gap (published on the gaps topic), or one missing trade recovered (counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub provider: &'static str,
    pub symbol: String,
    /// The gap as found: its first and last missing numbers.
    pub first: u64,
    pub last: u64,
    /// The event time of the trade before the gap (the highest number received before it was
    /// found): where a provider whose REST API pages by time starts looking.
    pub after_time: Micros,
    pub kind: EventKind,
    /// The receive time of the trade that caused the event.
    pub at: Micros,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The gap's status changed (found, filled or dropped). `missing`: trades it still misses.
    Gap {
        status: Status,
        found: Found,
        missing: u64,
    },
    /// One of its missing trades arrived.
    Recovered,
}

impl Event {
    pub fn missing_total(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// The record of a gap event (`None` for a recovered trade, which is only counted), with the
/// venue and instrument from the reference data.
pub fn record(event: &Event, index: &InstrumentIndex, source: String) -> Option<GapRecord> {
    let EventKind::Gap {
        status,
        found,
        missing,
    } = event.kind
    else {
        return None;
    };
    let (exchange, instrument) = venue(event, index);
    Some(GapRecord {
        provider: event.provider.to_string(),
        exchange,
        symbol: event.symbol.clone(),
        instrument,
        first_missing: event.first as i64,
        last_missing: event.last as i64,
        after_time: event.after_time,
        status: status.as_str().to_string(),
        still_missing: missing as i64,
        found: found.as_str().to_string(),
        reason: match status {
            Status::Dropped(why) => why.to_string(),
            _ => String::new(),
        },
        source,
        at: event.at,
    })
}

#[derive(Debug, Clone)]
struct OpenGap {
    last: u64,
    found: Found,
    after_time: Micros,
    /// Trades of it the provider no longer serves (the backfill said so).
    lost: u64,
    /// Still-missing ranges, inclusive, in order.
    holes: Vec<(u64, u64)>,
}

impl OpenGap {
    fn missing(&self) -> u64 {
        self.holes.iter().map(|(a, b)| b - a + 1).sum()
    }
}

#[derive(Debug, Clone)]
struct Stream {
    highest: u64,
    /// The event time of the highest.
    highest_time: Micros,
    connection: u64,
    /// Open gaps by their first missing number.
    open: BTreeMap<u64, OpenGap>,
}

/// Per provider, per symbol (nested, so a lookup borrows the symbol instead of allocating);
/// foldhash, since SipHash was most of the tracker's cost per trade (`benches/normalize.rs`).
type Fold<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
type Streams<T> = Fold<&'static str, Fold<String, T>>;

/// The streams of one input partition.
#[derive(Debug, Default)]
pub struct Gaps {
    streams: Streams<Stream>,
}

fn connection_hash(connection: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(connection)
}

impl Gaps {
    /// Takes trade `seen.number` of (`provider`, `symbol`); what it changes is appended to `out`.
    pub fn observe(
        &mut self,
        provider: &'static str,
        symbol: &str,
        seen: Seen<'_>,
        out: &mut Vec<Event>,
    ) {
        let Seen {
            number,
            connection,
            received_at: at,
            event_time,
        } = seen;
        let connection = connection_hash(connection);
        let streams = self.touch(provider);
        let event = |first: u64, last: u64, after_time: Micros, kind: EventKind| Event {
            provider,
            symbol: symbol.to_string(),
            first,
            last,
            after_time,
            kind,
            at,
        };
        let Some(stream) = streams.get_mut(symbol) else {
            streams.insert(
                symbol.to_string(),
                Stream {
                    highest: number,
                    highest_time: event_time,
                    connection,
                    open: BTreeMap::new(),
                },
            );
            return;
        };
        if number > stream.highest {
            if number > stream.highest + 1 {
                let (first, last) = (stream.highest + 1, number - 1);
                let found = if connection == stream.connection {
                    Found::WithinConnection
                } else {
                    Found::AfterReconnect
                };
                let after_time = stream.highest_time;
                stream.open.insert(
                    first,
                    OpenGap {
                        last,
                        found,
                        after_time,
                        lost: 0,
                        holes: vec![(first, last)],
                    },
                );
                out.push(event(
                    first,
                    last,
                    after_time,
                    EventKind::Gap {
                        status: Status::Open,
                        found,
                        missing: last - first + 1,
                    },
                ));
                while stream.open.len() > MAX_OPEN {
                    let (first, gap) = stream.open.pop_first().expect("more than MAX_OPEN");
                    out.push(event(
                        first,
                        gap.last,
                        gap.after_time,
                        EventKind::Gap {
                            status: Status::Dropped("too many open gaps in this stream"),
                            found: gap.found,
                            missing: gap.missing(),
                        },
                    ));
                }
            }
            stream.highest = number;
            stream.highest_time = event_time;
            stream.connection = connection;
            return;
        }
        if number + RESTART_DISTANCE < stream.highest {
            for (first, gap) in std::mem::take(&mut stream.open) {
                out.push(event(
                    first,
                    gap.last,
                    gap.after_time,
                    EventKind::Gap {
                        status: Status::Dropped("the provider restarted its trade numbering"),
                        found: gap.found,
                        missing: gap.missing(),
                    },
                ));
            }
            stream.highest = number;
            stream.highest_time = event_time;
            stream.connection = connection;
            return;
        }
        // At or below the highest: a missing trade arriving late, or not a hole at all.
        let Some((&first, gap)) = stream.open.range_mut(..=number).next_back() else {
            return;
        };
        if number > gap.last {
            return;
        }
        let Some(i) = gap
            .holes
            .iter()
            .position(|&(a, b)| a <= number && number <= b)
        else {
            return;
        };
        let (a, b) = gap.holes[i];
        match (number == a, number == b) {
            (true, true) => {
                gap.holes.remove(i);
            }
            (true, false) => gap.holes[i].0 = number + 1,
            (false, true) => gap.holes[i].1 = number - 1,
            (false, false) => {
                gap.holes[i] = (a, number - 1);
                gap.holes.insert(i + 1, (number + 1, b));
            }
        }
        out.push(event(first, gap.last, gap.after_time, EventKind::Recovered));
        if gap.holes.is_empty() {
            let gap = stream.open.remove(&first).expect("the gap just filled");
            out.push(event(
                first,
                gap.last,
                gap.after_time,
                EventKind::Gap {
                    status: Status::Filled,
                    found: gap.found,
                    missing: 0,
                },
            ));
        } else if gap.holes.len() > MAX_HOLES {
            let gap = stream.open.remove(&first).expect("the gap just split");
            out.push(event(
                first,
                gap.last,
                gap.after_time,
                EventKind::Gap {
                    status: Status::Dropped("filled in too many pieces to track"),
                    found: gap.found,
                    missing: gap.missing(),
                },
            ));
        }
    }

    /// The streams of `provider`.
    fn touch(&mut self, provider: &'static str) -> &mut Fold<String, Stream> {
        self.streams.entry(provider).or_default()
    }

    /// The provider no longer serves trades `first..=last` of (`provider`, `symbol`): they leave
    /// the open gaps they belong to, and a gap left with nothing else to wait for is closed as
    /// DROPPED, its `missing` the trades lost.
    pub fn give_up(
        &mut self,
        provider: &'static str,
        symbol: &str,
        first: u64,
        last: u64,
        at: Micros,
        out: &mut Vec<Event>,
    ) {
        let Some(stream) = self.touch(provider).get_mut(symbol) else {
            return;
        };
        let mut closed = Vec::new();
        for (&gap_first, gap) in stream.open.range_mut(..=last) {
            if gap.last < first {
                continue;
            }
            let mut kept = Vec::with_capacity(gap.holes.len() + 1);
            for &(a, b) in &gap.holes {
                let (cut_a, cut_b) = (a.max(first), b.min(last));
                if cut_a > cut_b {
                    kept.push((a, b));
                    continue;
                }
                gap.lost += cut_b - cut_a + 1;
                if a < cut_a {
                    kept.push((a, cut_a - 1));
                }
                if cut_b < b {
                    kept.push((cut_b + 1, b));
                }
            }
            gap.holes = kept;
            if gap.holes.is_empty() {
                closed.push(gap_first);
            }
        }
        for gap_first in closed {
            let gap = stream.open.remove(&gap_first).expect("found above");
            out.push(Event {
                provider,
                symbol: symbol.to_string(),
                first: gap_first,
                last: gap.last,
                after_time: gap.after_time,
                kind: EventKind::Gap {
                    status: Status::Dropped("the provider no longer serves the missing trades"),
                    found: gap.found,
                    missing: gap.lost,
                },
                at,
            });
        }
    }

    /// Open gaps and the trades they miss, per provider.
    pub fn open(&self, into: &mut BTreeMap<&'static str, (u64, u64)>) {
        for (provider, streams) in &self.streams {
            let entry = into.entry(provider).or_default();
            for stream in streams.values() {
                entry.0 += stream.open.len() as u64;
                entry.1 += stream.open.values().map(OpenGap::missing).sum::<u64>();
            }
        }
    }
}

/// The event's venue and instrument from the reference data: the listing's exchange, else the
/// provider; the instrument, empty when no instrument lists the symbol.
pub fn venue(event: &Event, index: &InstrumentIndex) -> (String, String) {
    let resolved = index.resolve(event.provider, &event.symbol);
    (
        resolved
            .and_then(|r| r.exchange.clone())
            .unwrap_or_else(|| event.provider.to_string()),
        resolved
            .map(|r| r.instrument.instrument.clone())
            .unwrap_or_default(),
    )
}

/// Feeds the numbered trades of one parsed frame to the partition's tracker, in number order:
/// trades a provider batches into one frame out of order are a reordering, not a hole.
pub fn observe_frame(
    gaps: &mut Gaps,
    provider: &dyn tickflow_providers::Provider,
    envelope: &tickflow_shared::domain::RawEnvelope,
    trades: &[tickflow_providers::ProviderTrade<'_>],
    out: &mut Vec<Event>,
) {
    let mut observe = |number: u64, symbol: &str, event_time: Micros| {
        let seen = Seen {
            number,
            connection: &envelope.connection_id,
            received_at: envelope.received_at,
            event_time,
        };
        gaps.observe(provider.id().as_str(), symbol, seen, out)
    };
    if let [trade] = trades {
        // The common case (one trade per frame) without an allocation.
        if let Some(number) = provider.trade_number(trade) {
            observe(number, &trade.symbol, trade.event_time);
        }
        return;
    }
    let mut numbered: Vec<(u64, &str, Micros)> = trades
        .iter()
        .filter_map(|t| Some((provider.trade_number(t)?, t.symbol.as_ref(), t.event_time)))
        .collect();
    numbered.sort_unstable();
    for (number, symbol, event_time) in numbered {
        observe(number, symbol, event_time);
    }
}

/// A frame of the gateway's backfill saying trades can no longer be fetched
/// ([`tickflow_shared::gap::UNRECOVERABLE_CHANNEL`]): applied to the tracker. `Err`: why the
/// payload is not such a word (dead-lettered by the caller).
pub fn observe_unrecoverable(
    gaps: &mut Gaps,
    provider: &dyn tickflow_providers::Provider,
    envelope: &tickflow_shared::domain::RawEnvelope,
    out: &mut Vec<Event>,
) -> std::result::Result<(), String> {
    let word: tickflow_shared::gap::Unrecoverable = serde_json::from_slice(&envelope.payload)
        .map_err(|e| format!("not the backfill's unrecoverable range: {e}"))?;
    if word.last < word.first {
        return Err(format!("an empty range {}..={}", word.first, word.last));
    }
    gaps.give_up(
        provider.id().as_str(),
        &word.symbol,
        word.first,
        word.last,
        envelope.received_at,
        out,
    );
    Ok(())
}

/// The gap trackers of all owned partitions, by partition: looked up per frame, without
/// allocating.
#[derive(Debug, Default)]
pub struct GapSet {
    partitions: HashMap<Tp, Gaps, foldhash::fast::FixedState>,
}

impl GapSet {
    pub fn partition(&mut self, tp: &Tp) -> &mut Gaps {
        if !self.partitions.contains_key(tp) {
            self.partitions.insert(tp.clone(), Gaps::default());
        }
        self.partitions.get_mut(tp).expect("inserted above")
    }

    /// Drops `tp`'s tracker.
    pub fn remove(&mut self, tp: &Tp) {
        self.partitions.remove(tp);
    }

    /// Open gaps and the trades they miss, per provider, over the owned partitions.
    pub fn open(&self) -> BTreeMap<&'static str, (u64, u64)> {
        let mut open = BTreeMap::new();
        for gaps in self.partitions.values() {
            gaps.open(&mut open);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(gaps: &mut Gaps, trades: &[(u64, &str)]) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, &(n, connection)) in trades.iter().enumerate() {
            gaps.observe(
                "binance",
                "BTCUSDT",
                seen(n, connection, i as Micros),
                &mut out,
            );
        }
        out
    }

    /// Trade `n` from `connection` received at `at`, stamped `n` ms after the epoch.
    fn seen(n: u64, connection: &str, at: Micros) -> Seen<'_> {
        Seen {
            number: n,
            connection,
            received_at: at,
            event_time: n as Micros * 1_000,
        }
    }

    fn statuses(events: &[Event]) -> Vec<(u64, u64, &'static str)> {
        events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Gap { status, .. } => Some((e.first, e.last, status.as_str())),
                EventKind::Recovered => None,
            })
            .collect()
    }

    /// The independent check: the missing numbers, as ranges, of a stream read in order.
    fn holes_by_set_difference(numbers: &[u64]) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        let mut highest: Option<u64> = None;
        for &n in numbers {
            if let Some(h) = highest {
                if n > h + 1 {
                    holes.push((h + 1, n - 1));
                }
            }
            highest = Some(highest.map_or(n, |h| h.max(n)));
        }
        holes
    }

    #[test]
    fn consecutive_numbers_and_duplicates_are_not_gaps() {
        let mut gaps = Gaps::default();
        let out = feed(
            &mut gaps,
            &[(1, "c"), (2, "c"), (2, "c"), (3, "c"), (1, "c"), (4, "d")],
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn holes_within_a_connection_and_across_a_reconnect() {
        let mut gaps = Gaps::default();
        let numbers = [(10, "c1"), (11, "c1"), (14, "c1"), (15, "c1"), (20, "c2")];
        let out = feed(&mut gaps, &numbers);
        let found: Vec<(u64, u64, Found, u64)> = out
            .iter()
            .map(|e| match e.kind {
                EventKind::Gap {
                    status: Status::Open,
                    found,
                    missing,
                } => (e.first, e.last, found, missing),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (12, 13, Found::WithinConnection, 2),
                (16, 19, Found::AfterReconnect, 4)
            ]
        );
        let ns: Vec<u64> = numbers.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            found.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            holes_by_set_difference(&ns)
        );
        assert_eq!(out[0].at, 2, "found by the trade after the hole");
        let mut open = BTreeMap::new();
        gaps.open(&mut open);
        assert_eq!(open["binance"], (2, 6));
    }

    #[test]
    fn late_trades_fill_a_gap_piece_by_piece() {
        let mut gaps = Gaps::default();
        let out = feed(
            &mut gaps,
            &[(1, "c"), (7, "c"), (4, "c"), (4, "c"), (2, "c"), (6, "c")],
        );
        assert_eq!(statuses(&out), vec![(2, 6, "OPEN")]);
        let recovered = out
            .iter()
            .filter(|e| e.kind == EventKind::Recovered)
            .count();
        assert_eq!(recovered, 3, "4 (once: the second 4 is a duplicate), 2, 6");
        let out = feed(&mut gaps, &[(5, "c"), (3, "c"), (3, "c")]);
        assert_eq!(statuses(&out), vec![(2, 6, "FILLED")]);
        let mut open = BTreeMap::new();
        gaps.open(&mut open);
        assert_eq!(open["binance"], (0, 0));
    }

    #[test]
    fn trades_the_provider_no_longer_serves_close_the_gap_once_nothing_else_is_awaited() {
        let mut gaps = Gaps::default();
        feed(&mut gaps, &[(1, "c"), (10, "c"), (4, "c")]);
        let mut out = Vec::new();
        // 2..=3 gone: 5..=9 may still come.
        gaps.give_up("binance", "BTCUSDT", 2, 3, 7, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Unknown streams and ranges outside any gap change nothing.
        gaps.give_up("binance", "ETHUSDT", 2, 3, 7, &mut out);
        gaps.give_up("binance", "BTCUSDT", 20, 30, 7, &mut out);
        assert!(out.is_empty(), "{out:?}");
        out.extend(feed(&mut gaps, &[(6, "c")]));
        gaps.give_up("binance", "BTCUSDT", 5, 9, 8, &mut out);
        let dropped: Vec<_> = out
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Gap {
                    status: Status::Dropped(_),
                    missing,
                    ..
                } => Some((e.first, e.last, missing, e.at)),
                _ => None,
            })
            .collect();
        assert_eq!(
            dropped,
            vec![(2, 9, 6, 8)],
            "2, 3, 5, 7, 8, 9 lost; 4 and 6 came"
        );
        let mut open = BTreeMap::new();
        gaps.open(&mut open);
        assert_eq!(open["binance"], (0, 0));
    }

    #[test]
    fn a_restarted_numbering_drops_the_open_gaps() {
        let mut gaps = Gaps::default();
        let out = feed(
            &mut gaps,
            &[
                (50_000_000, "c"),
                (50_000_005, "c"),
                (1, "d"),
                (2, "d"),
                (4, "d"),
            ],
        );
        assert_eq!(
            statuses(&out),
            vec![
                (50_000_001, 50_000_004, "OPEN"),
                (50_000_001, 50_000_004, "DROPPED"),
                (3, 3, "OPEN")
            ]
        );
    }

    #[test]
    fn a_gap_record_round_trips_through_its_avro_schema() {
        let schema = tickflow_shared::avro::GAP.parse().unwrap();
        let index = InstrumentIndex::new(
            tickflow_shared::instruments::parse_toml(tickflow_testkit::INSTRUMENTS_FIXTURE)
                .unwrap(),
        );
        let mut out = Vec::new();
        let mut gaps = Gaps::default();
        gaps.observe("coinbase", "BTC-USD", seen(7, "c1", 1), &mut out);
        gaps.observe("coinbase", "BTC-USD", seen(10, "c2", 2), &mut out);
        let record = record(&out[0], &index, "md.raw.coinbase/0@5".into()).unwrap();
        assert_eq!(
            (
                record.instrument.as_str(),
                record.exchange.as_str(),
                record.first_missing,
                record.last_missing,
                record.still_missing,
                record.found.as_str(),
                record.key(),
                record.after_time,
            ),
            (
                "BTC-USD",
                "coinbase",
                8,
                9,
                2,
                "reconnect",
                "coinbase/BTC-USD".into(),
                7_000,
            ),
            "after_time: the time of trade 7, the last before the gap"
        );
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(record.to_value())
            .unwrap();
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(GapRecord::from_value(back).unwrap(), record);
    }

    #[test]
    fn open_gaps_are_bounded() {
        let mut gaps = Gaps::default();
        let trades: Vec<(u64, &str)> = (0..=MAX_OPEN as u64 + 1).map(|i| (i * 2, "c")).collect();
        let out = feed(&mut gaps, &trades);
        let s = statuses(&out);
        assert_eq!(s.iter().filter(|g| g.2 == "OPEN").count(), MAX_OPEN + 1);
        assert_eq!(
            s.iter().filter(|g| g.2 == "DROPPED").collect::<Vec<_>>(),
            vec![&(1, 1, "DROPPED")]
        );
    }
}
