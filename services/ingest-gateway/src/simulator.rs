//! The simulated provider: several venues per instrument, each quoting around one shared random
//! walk (so their prices are correlated, as real venues are), realistic sizes, bursts, and on
//! demand the faults a real feed has: duplicates, out-of-order trades, bad prices, a venue
//! drifting away from the others, a venue going silent. Pure and deterministic for a seed and a
//! sequence of clock readings; the pacing loop lives in `sources`.
//!
//! Prices are integers in units of 10^-8 and become decimal strings exactly (no `f64`).

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tickflow_shared::domain::Micros;
use tickflow_shared::simfeed::{SimMessage, SimTrade};

use crate::config::SimulatorConfig;

/// Price scale: prices are held as integers of 10^-8.
const SCALE: u32 = 8;

struct Instrument {
    symbol: String,
    /// The shared "true" price, in 10^-8 units.
    fair: i64,
    /// Each venue's offset from `fair`, in 10^-8 units (mean-reverting noise).
    offsets: Vec<i64>,
}

pub struct Simulator {
    rng: StdRng,
    instruments: Vec<Instrument>,
    venues: Vec<String>,
    /// Indices of venues that send trades (all but the silent one).
    active_venues: Vec<usize>,
    drift: Option<(usize, Decimal)>,
    config: SimulatorConfig,
    next_id: Vec<u64>,
    /// Duplicates waiting to be sent again a few messages later.
    repeats: VecDeque<(u32, SimTrade)>,
}

/// A plausible starting price for an instrument, in 10^-8 units.
fn start_price(symbol: &str, rng: &mut StdRng) -> i64 {
    let units = match symbol {
        "BTC-USD" | "BTC-USDT" => 67_000,
        "ETH-USD" | "ETH-USDT" => 3_500,
        "SOL-USD" => 150,
        "AAPL" => 190,
        _ => rng.random_range(10..1_000),
    };
    units * 100_000_000
}

impl Simulator {
    pub fn new(config: &SimulatorConfig, symbols: &[String]) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let venues = config.venues.clone();
        let instruments = symbols
            .iter()
            .map(|s| Instrument {
                symbol: s.clone(),
                fair: start_price(s, &mut rng),
                offsets: vec![0; venues.len()],
            })
            .collect();
        let active_venues = (0..venues.len())
            .filter(|&i| venues[i] != config.silent_venue)
            .collect();
        let drift = venues
            .iter()
            .position(|v| *v == config.drift_venue)
            .map(|i| {
                (
                    i,
                    Decimal::try_from(config.drift_pct / 100.0).unwrap_or(Decimal::ZERO),
                )
            });
        Self {
            rng,
            instruments,
            next_id: vec![0; venues.len()],
            venues,
            active_venues,
            drift,
            config: config.clone(),
            repeats: VecDeque::new(),
        }
    }

    /// Trade ids continue from `first` (each venue's next id is `first + 1`). The gateway starts
    /// them at its start time in ms, so that a restarted gateway (or a second demo run) does not
    /// repeat the ids of the last one: the normalizer would drop its trades as duplicates.
    pub fn ids_after(mut self, first: u64) -> Self {
        self.next_id.iter_mut().for_each(|id| *id = first);
        self
    }

    pub fn venues(&self) -> &[String] {
        &self.venues
    }

    /// The next message, stamped at `now`; `None` when every venue is silent.
    pub fn next(&mut self, now: Micros) -> Option<SimMessage> {
        if let Some((wait, _)) = self.repeats.front() {
            if *wait == 0 {
                let (_, trade) = self.repeats.pop_front()?;
                return Some(SimMessage::Trade(trade));
            }
        }
        for (wait, _) in self.repeats.iter_mut() {
            *wait = wait.saturating_sub(1);
        }
        if self.active_venues.is_empty() || self.instruments.is_empty() {
            return None;
        }
        let which = self.rng.random_range(0..self.instruments.len());
        let venue_slot = self.active_venues[self.rng.random_range(0..self.active_venues.len())];
        let rng = &mut self.rng;
        let inst = &mut self.instruments[which];
        // The shared walk: steps of up to 2 basis points.
        let step = inst.fair / 50_000;
        inst.fair = (inst.fair + rng.random_range(-step..=step)).max(1_000);
        // Venue noise: mean-reverting, within about 1 basis point.
        let band = (inst.fair / 10_000).max(1);
        let offset = &mut inst.offsets[venue_slot];
        *offset = (*offset * 9) / 10 + rng.random_range(-band..=band) / 5;
        let mut price = Decimal::new(inst.fair + *offset, SCALE);
        if let Some((drifting, pct)) = self.drift {
            if drifting == venue_slot {
                price += price * pct;
            }
        }
        // Two decimals for prices above 1, more below: what venues quote.
        let price = if price > Decimal::ONE {
            price.round_dp(2)
        } else {
            price.round_dp(SCALE)
        };
        // Sizes: mostly small, sometimes large (a rough power law), in 10^-6 units.
        let size_units: i64 = match rng.random_range(0..100) {
            0..=69 => rng.random_range(1..10_000),
            70..=94 => rng.random_range(10_000..1_000_000),
            _ => rng.random_range(1_000_000..50_000_000),
        };
        let size = Decimal::new(size_units, 6);
        let mut event_time = now - rng.random_range(0..2_000);
        if rng.random_bool(self.config.out_of_order_ratio) {
            event_time -= rng.random_range(100_000..2_000_000);
        }
        let price_text = if rng.random_bool(self.config.bad_price_ratio) {
            ["NaN", "-1", "0", "1e30"][rng.random_range(0..4)].to_string()
        } else {
            price.to_string()
        };
        let venue = &self.venues[venue_slot];
        self.next_id[venue_slot] += 1;
        let id = self.next_id[venue_slot];
        let trade = SimTrade {
            venue: venue.clone(),
            symbol: inst.symbol.clone(),
            trade_id: format!("{venue}-{id}"),
            price: price_text,
            size: size.to_string(),
            side: if rng.random_bool(0.5) { "buy" } else { "sell" }.into(),
            ts_us: event_time,
            seq: i64::try_from(id).unwrap_or(i64::MAX),
        };
        if rng.random_bool(self.config.duplicate_ratio) {
            let wait = rng.random_range(1..50);
            self.repeats.push_back((wait, trade.clone()));
        }
        Some(SimMessage::Trade(trade))
    }

    /// Messages per second at wall-clock second `second` (bursts included).
    pub fn rate_at(&self, second: u64) -> u64 {
        let base = u64::from(self.config.rate);
        match self.config.burst_every_s {
            0 => base,
            every if second % every == every - 1 => base * u64::from(self.config.burst_factor),
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tickflow_shared::domain::parse_decimal;

    fn symbols() -> Vec<String> {
        vec!["BTC-USD".into(), "ETH-USD".into()]
    }

    fn trades(config: &SimulatorConfig, n: usize) -> Vec<SimTrade> {
        let mut sim = Simulator::new(config, &symbols());
        (0..n)
            .filter_map(
                |i| match sim.next(1_763_769_600_000_000 + i as i64 * 1_000) {
                    Some(SimMessage::Trade(t)) => Some(t),
                    _ => None,
                },
            )
            .collect()
    }

    #[test]
    fn same_seed_same_stream_and_prices_are_exact_decimals() {
        let config = SimulatorConfig::default();
        let a = trades(&config, 2_000);
        assert_eq!(a, trades(&config, 2_000));
        let other = SimulatorConfig {
            seed: 7,
            ..config.clone()
        };
        assert_ne!(a, trades(&other, 2_000));
        for t in &a {
            let price = parse_decimal(&t.price).unwrap();
            assert!(price > Decimal::ZERO && price.scale() <= 8, "{}", t.price);
            assert!(parse_decimal(&t.size).unwrap() > Decimal::ZERO);
        }
        let venues: std::collections::BTreeSet<_> = a.iter().map(|t| t.venue.as_str()).collect();
        assert_eq!(venues.len(), 3);
    }

    #[test]
    fn venues_stay_close_unless_one_drifts() {
        let spread = |config: &SimulatorConfig| {
            let mut last: HashMap<(String, String), Decimal> = HashMap::new();
            let mut worst = Decimal::ZERO;
            for t in trades(config, 5_000) {
                last.insert(
                    (t.symbol.clone(), t.venue.clone()),
                    parse_decimal(&t.price).unwrap(),
                );
                let a = last.get(&(t.symbol.clone(), "sim-a".into()));
                let b = last.get(&(t.symbol.clone(), "sim-b".into()));
                if let (Some(a), Some(b)) = (a, b) {
                    worst = worst.max(((*a - *b) / *b).abs());
                }
            }
            worst
        };
        let calm = spread(&SimulatorConfig::default());
        assert!(calm < Decimal::new(5, 3), "venues within 0.5 %: {calm}");
        let drifting = SimulatorConfig {
            drift_venue: "sim-a".into(),
            drift_pct: 6.0,
            ..SimulatorConfig::default()
        };
        assert!(spread(&drifting) > Decimal::new(5, 2), "sim-a 6 % away");
    }

    #[test]
    fn faults_on_demand() {
        let config = SimulatorConfig {
            duplicate_ratio: 0.05,
            bad_price_ratio: 0.05,
            out_of_order_ratio: 0.1,
            silent_venue: "sim-c".into(),
            ..SimulatorConfig::default()
        };
        let all = trades(&config, 4_000);
        let mut ids = HashMap::new();
        for t in &all {
            *ids.entry(&t.trade_id).or_insert(0) += 1;
        }
        let duplicates = ids.values().filter(|n| **n > 1).count();
        let bad = all
            .iter()
            .filter(|t| parse_decimal(&t.price).map_or(true, |p| p <= Decimal::ZERO))
            .count();
        let reordered = all
            .windows(2)
            .filter(|w| w[1].ts_us < w[0].ts_us - 100_000)
            .count();
        assert!(duplicates > 100, "{duplicates}");
        assert!(bad > 100, "{bad}");
        assert!(reordered > 100, "{reordered}");
        assert!(all.iter().all(|t| t.venue != "sim-c"), "silent venue sent");
    }

    #[test]
    fn bursts() {
        let sim = Simulator::new(
            &SimulatorConfig {
                rate: 1_000,
                burst_every_s: 10,
                burst_factor: 5,
                ..SimulatorConfig::default()
            },
            &symbols(),
        );
        assert_eq!(sim.rate_at(3), 1_000);
        assert_eq!(sim.rate_at(9), 5_000);
    }
}
