//! Which provider symbols this replica subscribes: the configured instruments (or every
//! instrument the instruments file lists for the provider), plus what the admin API added, minus
//! what it removed, restricted to this replica's shard and mapped to the provider's symbols.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use tickflow_shared::instruments::InstrumentIndex;

use crate::config::ProviderConfig;

/// provider symbol → canonical instrument.
pub type Desired = BTreeMap<String, String>;

/// The replica that owns `instrument` among `count`: a stable hash (the same on every replica,
/// every build and every platform), so N replicas cover every instrument exactly once.
pub fn owner(instrument: &str, count: u32) -> u32 {
    let digest = Sha256::digest(instrument.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32
}

/// This replica's place among the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn owns(&self, instrument: &str) -> bool {
        owner(instrument, self.count) == self.index
    }
}

/// Runtime changes made through the admin API, kept across config reloads until restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub added: BTreeSet<String>,
    pub removed: BTreeSet<String>,
}

/// The provider's symbol for `instrument`, if the instruments file lists one.
pub fn symbol_of(index: &InstrumentIndex, provider: &str, instrument: &str) -> Option<String> {
    let i = index.get(instrument)?;
    if !i.active {
        return None;
    }
    i.listings
        .iter()
        .find(|l| l.provider == provider)
        .map(|l| l.symbol.clone())
}

/// The instruments the configuration asks for, before overrides and sharding.
pub fn configured(
    provider: &str,
    config: &ProviderConfig,
    index: &InstrumentIndex,
) -> BTreeSet<String> {
    if config.instruments.is_empty() {
        index
            .symbols_of(provider)
            .into_iter()
            .map(|(instrument, _)| instrument)
            .collect()
    } else {
        config.instruments.iter().cloned().collect()
    }
}

/// What this replica subscribes on `provider`. Instruments without a listing for the provider
/// are returned apart (configuration problems, reported by the caller).
pub fn desired(
    provider: &str,
    config: &ProviderConfig,
    index: &InstrumentIndex,
    overrides: &Overrides,
    shard: Shard,
) -> (Desired, Vec<String>) {
    let mut wanted = configured(provider, config, index);
    wanted.extend(overrides.added.iter().cloned());
    for r in &overrides.removed {
        wanted.remove(r);
    }
    let mut out = Desired::new();
    let mut unlisted = Vec::new();
    for instrument in wanted.into_iter().filter(|i| shard.owns(i)) {
        match symbol_of(index, provider, &instrument) {
            Some(symbol) => {
                out.insert(symbol, instrument);
            }
            None => unlisted.push(instrument),
        }
    }
    (out, unlisted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> InstrumentIndex {
        let text = r#"
[[instrument]]
instrument = "BTC-USD"
base = "BTC"
quote = "USD"
asset_class = "CRYPTO"
listings = [{ provider = "kraken", symbol = "BTC/USD" }]

[[instrument]]
instrument = "ETH-USD"
base = "ETH"
quote = "USD"
asset_class = "CRYPTO"
listings = [{ provider = "kraken", symbol = "ETH/USD" }]

[[instrument]]
instrument = "OLD-USD"
base = "OLD"
quote = "USD"
asset_class = "CRYPTO"
active = false
listings = [{ provider = "kraken", symbol = "OLD/USD" }]
"#;
        InstrumentIndex::new(tickflow_shared::instruments::parse_toml(text).unwrap())
    }

    #[test]
    fn replicas_cover_every_instrument_exactly_once() {
        let instruments: Vec<String> = (0..2_000).map(|i| format!("I{i}-USD")).collect();
        for count in 1..=5 {
            let mut per_replica = vec![0usize; count as usize];
            for i in &instruments {
                let owners: Vec<u32> = (0..count)
                    .filter(|&index| Shard { index, count }.owns(i))
                    .collect();
                assert_eq!(owners.len(), 1, "{i} with {count} replicas: {owners:?}");
                per_replica[owners[0] as usize] += 1;
            }
            // A fair hash: no replica gets less than half its share.
            let share = instruments.len() / count as usize;
            assert!(
                per_replica.iter().all(|&n| n > share / 2),
                "{per_replica:?}"
            );
        }
        // Stable: the same answer as when this test was written.
        assert_eq!(owner("BTC-USD", 2), owner("BTC-USD", 2));
        assert_eq!(owner("BTC-USD", 1), 0);
    }

    #[test]
    fn configured_plus_added_minus_removed_in_the_shard() {
        let index = index();
        let all = Shard { index: 0, count: 1 };
        let config = ProviderConfig::default();
        let (d, unlisted) = desired("kraken", &config, &index, &Overrides::default(), all);
        assert_eq!(
            d,
            Desired::from([
                ("BTC/USD".into(), "BTC-USD".into()),
                ("ETH/USD".into(), "ETH-USD".into())
            ])
        );
        assert!(unlisted.is_empty());

        let config = ProviderConfig {
            instruments: vec!["BTC-USD".into(), "AAPL".into()],
            ..Default::default()
        };
        let overrides = Overrides {
            added: ["ETH-USD".to_string()].into(),
            removed: ["BTC-USD".to_string()].into(),
        };
        let (d, unlisted) = desired("kraken", &config, &index, &overrides, all);
        assert_eq!(d, Desired::from([("ETH/USD".into(), "ETH-USD".into())]));
        assert_eq!(unlisted, vec!["AAPL".to_string()]);

        let mut together = Desired::new();
        for index_ in 0..3 {
            let (d, _) = desired(
                "kraken",
                &ProviderConfig::default(),
                &index,
                &Overrides::default(),
                Shard {
                    index: index_,
                    count: 3,
                },
            );
            for (s, i) in d {
                assert!(
                    together.insert(s, i).is_none(),
                    "two replicas subscribe the same symbol"
                );
            }
        }
        assert_eq!(together.len(), 2);
    }
}
