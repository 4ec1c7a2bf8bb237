//! The duplicate filter: a trade whose (provider, exchange, provider symbol, trade id) was kept
//! within the horizon is dropped. The symbol is part of the identity because providers number
//! trades per symbol: Binance's BTCUSDT and ETHUSDT both have a trade 12345.
//!
//! State is per input partition (a trade and its repeats share a partition: the raw topics are
//! keyed by provider symbol). Identities are 128-bit hashes, so memory is ~50 bytes per trade
//! held. Entries leave when they are older than the horizon, measured in receive time against the
//! newest receive time seen, and only at a commit. After a restart, a rebalance or an aborted
//! transaction the state is rebuilt by reading the partition back over the horizon (see
//! `warmup`), so exactly-once survives crashes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

use tickflow_shared::domain::Micros;
use tickflow_shared::runtime::Tp;

/// A trade's identity.
pub type TradeKey = u128;

/// The identity: two 64-bit foldhash (quality) hashes under fixed, different seeds, so it is the
/// same in every process (the filter is rebuilt from the log after a restart). Not SipHash, which
/// cost 8 to 17 % of parsing and validating a trade (bench/README.md, "The duplicate filter's
/// hashes").
pub fn trade_key(provider: &str, exchange: &str, symbol: &str, trade_id: &str) -> TradeKey {
    let identity = (provider, exchange, symbol, trade_id);
    let half = |seed: u64| foldhash::quality::FixedState::with_seed(seed).hash_one(identity);
    (u128::from(half(KEY_SEEDS[0])) << 64) | u128::from(half(KEY_SEEDS[1]))
}

/// The seeds of [`trade_key`]'s two halves: any two different constants.
const KEY_SEEDS: [u64; 2] = [0x7469_636b_666c_6f77, 0x6475_7065_6b65_7973];

/// The filter of one partition. Its keys are hashes already: the set hashes them with foldhash.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashSet<TradeKey, foldhash::fast::FixedState>,
    /// Insertion order with receive times, for eviction.
    order: VecDeque<(Micros, TradeKey)>,
    newest: Micros,
}

impl Dedup {
    /// True when `key` is new (and now remembered); false for a duplicate.
    pub fn insert(&mut self, key: TradeKey, received_at: Micros) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((received_at, key));
        self.newest = self.newest.max(received_at);
        true
    }

    /// At a commit: evicts what is older than `horizon`.
    pub fn commit(&mut self, horizon: Micros) {
        let oldest_kept = self.newest.saturating_sub(horizon);
        while let Some(&(time, key)) = self.order.front() {
            if time >= oldest_kept {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The filters of all owned partitions, by partition: looked up per frame, without allocating.
#[derive(Debug, Default)]
pub struct DedupSet {
    partitions: HashMap<Tp, Dedup, foldhash::fast::FixedState>,
}

impl DedupSet {
    pub fn partition(&mut self, tp: &Tp) -> &mut Dedup {
        if !self.partitions.contains_key(tp) {
            self.partitions.insert(tp.clone(), Dedup::default());
        }
        self.partitions.get_mut(tp).expect("inserted above")
    }

    pub fn commit(&mut self, horizon: Micros) {
        self.partitions.values_mut().for_each(|d| d.commit(horizon));
    }

    /// Drops `tp`'s filter.
    pub fn remove(&mut self, tp: &Tp) {
        self.partitions.remove(tp);
    }

    pub fn held(&self) -> usize {
        self.partitions.values().map(Dedup::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_horizon_are_caught_and_old_ones_evicted_at_commit() {
        let mut d = Dedup::default();
        let a = trade_key("coinbase", "coinbase", "BTC-USD", "1");
        let b = trade_key("coinbase", "coinbase", "BTC-USD", "2");
        assert_ne!(
            a,
            trade_key("kraken", "coinbase", "BTC-USD", "1"),
            "provider is part of the key"
        );
        assert_ne!(
            a,
            trade_key("coinbase", "coinbase", "ETH-USD", "1"),
            "the symbol is part of the key: ids are numbered per symbol"
        );
        assert!(d.insert(a, 1_000));
        assert!(!d.insert(a, 2_000));
        d.commit(10_000);
        assert!(d.insert(b, 20_000));
        assert!(!d.insert(a, 20_000), "not evicted before a commit");
        d.commit(10_000);
        assert!(d.insert(a, 20_001), "evicted: older than the horizon");
    }

    #[test]
    fn the_key_is_the_same_each_time_and_keeps_the_fields_apart() {
        let key = trade_key("binance", "binance", "BTCUSDT", "12345");
        assert_eq!(key, trade_key("binance", "binance", "BTCUSDT", "12345"));
        assert_ne!(
            trade_key("p", "e", "ab", "c"),
            trade_key("p", "e", "a", "bc"),
            "a field boundary moved is another trade"
        );
        assert_ne!(
            key >> 64,
            key & u128::from(u64::MAX),
            "two independent halves"
        );
    }
}
