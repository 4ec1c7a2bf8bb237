//! One window's candle, built trade by trade: pure, synchronous, exact.
//!
//! Open and close are the trades with the smallest and largest (event time, exchange, provider,
//! trade id), so ties in event time are broken the same way whatever the arrival order. Sums are
//! exact decimals with checked arithmetic (a price × size product keeps every digit up to 28
//! fractional digits). When a candle is built, notional, vwap and the average price are rounded
//! half away from zero to 18 fractional digits, the scale of the Avro schema.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{round_derived, Candle, Micros, Side, Trade};
use tickflow_shared::runtime::state::exact;

/// The order of trades within a window: event time, then a deterministic tie-break.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TradeOrder {
    pub event_time: Micros,
    pub exchange: String,
    pub provider: String,
    pub trade_id: String,
}

impl TradeOrder {
    pub fn of(trade: &Trade) -> Self {
        Self {
            event_time: trade.event_time,
            exchange: trade.exchange.clone(),
            provider: trade.provider.clone(),
            trade_id: trade.trade_id.clone(),
        }
    }

    /// Becomes `trade`'s order, reusing the string buffers (no allocation on the hot path when
    /// the new ids fit the old capacity, which is the usual case).
    fn set(&mut self, trade: &Trade) {
        self.event_time = trade.event_time;
        self.exchange.clone_from(&trade.exchange);
        self.provider.clone_from(&trade.provider);
        self.trade_id.clone_from(&trade.trade_id);
    }

    /// How `trade` orders against this one, without allocating.
    fn compare(&self, trade: &Trade) -> std::cmp::Ordering {
        (
            trade.event_time,
            trade.exchange.as_str(),
            trade.provider.as_str(),
            trade.trade_id.as_str(),
        )
            .cmp(&(
                self.event_time,
                self.exchange.as_str(),
                self.provider.as_str(),
                self.trade_id.as_str(),
            ))
    }
}

/// Why a trade could not be added to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A sum left the range of an exact decimal.
    Overflow,
}

impl Rejection {
    /// Every rejection, for the metrics.
    pub const ALL: [Rejection; 1] = [Rejection::Overflow];

    pub const fn reason(self) -> &'static str {
        match self {
            Rejection::Overflow => "overflow",
        }
    }
}

/// The running aggregate of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandleState {
    #[serde(with = "exact")]
    open: Decimal,
    open_at: TradeOrder,
    #[serde(with = "exact")]
    close: Decimal,
    close_at: TradeOrder,
    #[serde(with = "exact")]
    high: Decimal,
    #[serde(with = "exact")]
    low: Decimal,
    count: i64,
    #[serde(with = "exact")]
    volume: Decimal,
    #[serde(with = "exact")]
    notional: Decimal,
    #[serde(with = "exact")]
    price_sum: Decimal,
    #[serde(with = "exact")]
    buy_volume: Decimal,
    #[serde(with = "exact")]
    sell_volume: Decimal,
    /// How many times this window was emitted; the next emission's revision.
    pub emitted: i32,
    /// Changed since its last emission.
    pub dirty: bool,
    /// Emitted as final (the watermark passed its end) at least once.
    pub fired: bool,
}

impl CandleState {
    /// A window holding one trade.
    pub fn new(trade: &Trade) -> Result<Self, Rejection> {
        let at = TradeOrder::of(trade);
        let notional = trade
            .price
            .checked_mul(trade.size)
            .ok_or(Rejection::Overflow)?;
        let (buy, sell) = split_side(trade);
        Ok(Self {
            open: trade.price,
            open_at: at.clone(),
            close: trade.price,
            close_at: at,
            high: trade.price,
            low: trade.price,
            count: 1,
            volume: trade.size,
            notional,
            price_sum: trade.price,
            buy_volume: buy,
            sell_volume: sell,
            emitted: 0,
            dirty: true,
            fired: false,
        })
    }

    /// Adds a trade, all or nothing.
    pub fn add(&mut self, trade: &Trade) -> Result<(), Rejection> {
        let sums = self.sums_with(trade)?;
        self.apply(trade, sums);
        Ok(())
    }

    /// The sums this window would have with `trade`, or why it cannot take it. Changes nothing,
    /// so two windows can both be checked before either is changed.
    pub fn sums_with(&self, trade: &Trade) -> Result<Sums, Rejection> {
        let (buy, sell) = split_side(trade);
        Ok(Sums {
            notional: trade
                .price
                .checked_mul(trade.size)
                .and_then(|n| self.notional.checked_add(n))
                .ok_or(Rejection::Overflow)?,
            volume: self
                .volume
                .checked_add(trade.size)
                .ok_or(Rejection::Overflow)?,
            price_sum: self
                .price_sum
                .checked_add(trade.price)
                .ok_or(Rejection::Overflow)?,
            buy_volume: self
                .buy_volume
                .checked_add(buy)
                .ok_or(Rejection::Overflow)?,
            sell_volume: self
                .sell_volume
                .checked_add(sell)
                .ok_or(Rejection::Overflow)?,
            count: self.count.checked_add(1).ok_or(Rejection::Overflow)?,
        })
    }

    /// Takes `trade` with the sums [`CandleState::sums_with`] computed for it.
    pub fn apply(&mut self, trade: &Trade, sums: Sums) {
        if self.open_at.compare(trade).is_lt() {
            self.open = trade.price;
            self.open_at.set(trade);
        }
        if self.close_at.compare(trade).is_gt() {
            self.close = trade.price;
            self.close_at.set(trade);
        }
        self.high = self.high.max(trade.price);
        self.low = self.low.min(trade.price);
        self.count = sums.count;
        self.volume = sums.volume;
        self.notional = sums.notional;
        self.price_sum = sums.price_sum;
        self.buy_volume = sums.buy_volume;
        self.sell_volume = sums.sell_volume;
        self.dirty = true;
    }

    /// Adds everything another window holds (a roll-up of minutes), all or nothing. Emission
    /// bookkeeping (`emitted`, `fired`) stays this window's own.
    pub fn merge(&mut self, other: &CandleState) -> Result<(), Rejection> {
        let add = |a: Decimal, b: Decimal| a.checked_add(b).ok_or(Rejection::Overflow);
        let notional = add(self.notional, other.notional)?;
        let volume = add(self.volume, other.volume)?;
        let price_sum = add(self.price_sum, other.price_sum)?;
        let buy_volume = add(self.buy_volume, other.buy_volume)?;
        let sell_volume = add(self.sell_volume, other.sell_volume)?;
        let count = self
            .count
            .checked_add(other.count)
            .ok_or(Rejection::Overflow)?;
        if other.open_at < self.open_at {
            self.open = other.open;
            self.open_at = other.open_at.clone();
        }
        if other.close_at > self.close_at {
            self.close = other.close;
            self.close_at = other.close_at.clone();
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.notional = notional;
        self.volume = volume;
        self.price_sum = price_sum;
        self.buy_volume = buy_volume;
        self.sell_volume = sell_volume;
        self.count = count;
        self.dirty = true;
        Ok(())
    }

    /// The candle as it stands; does not change the state (see [`CandleState::mark_emitted`]).
    pub fn candle(&self, key: &WindowKey, interval: &str, is_final: bool) -> Candle {
        let vwap = if self.volume.is_zero() {
            Decimal::ZERO
        } else {
            round_derived(self.notional / self.volume)
        };
        Candle {
            instrument: key.instrument.clone(),
            venue: key.venue.clone(),
            interval: interval.to_string(),
            window_start: key.start,
            window_end: key.end,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            count: self.count,
            volume: self.volume,
            notional: round_derived(self.notional),
            vwap,
            avg_price: round_derived(self.price_sum / Decimal::from(self.count)),
            buy_volume: self.buy_volume,
            sell_volume: self.sell_volume,
            first_trade_time: self.open_at.event_time,
            last_trade_time: self.close_at.event_time,
            is_final,
            revision: self.emitted,
        }
    }

    pub fn mark_emitted(&mut self, is_final: bool) {
        self.emitted += 1;
        self.dirty = false;
        self.fired |= is_final;
    }
}

/// A window's sums after one more trade.
#[derive(Debug, Clone, Copy)]
pub struct Sums {
    notional: Decimal,
    volume: Decimal,
    price_sum: Decimal,
    buy_volume: Decimal,
    sell_volume: Decimal,
    count: i64,
}

fn split_side(trade: &Trade) -> (Decimal, Decimal) {
    match trade.side {
        Side::Buy => (trade.size, Decimal::ZERO),
        Side::Sell => (Decimal::ZERO, trade.size),
        Side::Unknown => (Decimal::ZERO, Decimal::ZERO),
    }
}

/// Identity of a window: its end first, so windows sort in the order they close.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub end: Micros,
    pub instrument: String,
    pub venue: String,
    pub start: Micros,
}

/// Start of the tumbling window of length `size` that holds `time` (floor, also before 1970).
pub fn window_start(time: Micros, size: Micros) -> Micros {
    time - time.rem_euclid(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickflow_testkit::sample_trade;

    fn trade(id: &str, time: Micros, price: &str, size: &str, side: Side) -> Trade {
        Trade {
            trade_id: id.into(),
            event_time: time,
            price: price.parse().unwrap(),
            size: size.parse().unwrap(),
            side,
            ..sample_trade()
        }
    }

    fn key() -> WindowKey {
        WindowKey {
            end: 60_000_000,
            instrument: "BTC-USD".into(),
            venue: "*".into(),
            start: 0,
        }
    }

    fn build(trades: &[Trade]) -> Candle {
        let mut state = CandleState::new(&trades[0]).unwrap();
        for t in &trades[1..] {
            state.add(t).unwrap();
        }
        state.candle(&key(), "1m", true)
    }

    #[test]
    fn ohlc_follows_event_time_not_arrival() {
        let a = trade("a", 10, "100", "1", Side::Buy);
        let b = trade("b", 20, "105", "2", Side::Sell);
        let c = trade("c", 30, "95", "1", Side::Unknown);
        let d = trade("d", 40, "101", "0.5", Side::Buy);
        let in_order = build(&[a.clone(), b.clone(), c.clone(), d.clone()]);
        // Every arrival order gives the same candle.
        for order in [
            [d.clone(), c.clone(), b.clone(), a.clone()],
            [c.clone(), a.clone(), d.clone(), b.clone()],
        ] {
            assert_eq!(build(&order), in_order);
        }
        assert_eq!(in_order.open, "100".parse().unwrap());
        assert_eq!(in_order.close, "101".parse().unwrap());
        assert_eq!(in_order.high, "105".parse().unwrap());
        assert_eq!(in_order.low, "95".parse().unwrap());
        assert_eq!(in_order.count, 4);
        assert_eq!(in_order.volume, "4.5".parse().unwrap());
        assert_eq!(in_order.notional, "455.5".parse().unwrap()); // 100 + 210 + 95 + 50.5
        assert_eq!(in_order.buy_volume, "1.5".parse().unwrap());
        assert_eq!(in_order.sell_volume, "2".parse().unwrap());
        assert_eq!(in_order.first_trade_time, 10);
        assert_eq!(in_order.last_trade_time, 40);
        // 455.5 / 4.5 = 101.2222...: rounded half away from zero at 18 digits.
        assert_eq!(in_order.vwap.to_string(), "101.222222222222222222");
        assert_eq!(in_order.avg_price.to_string(), "100.25");
    }

    #[test]
    fn equal_event_times_break_ties_deterministically() {
        let x = trade("x", 10, "1", "1", Side::Buy);
        let y = trade("y", 10, "2", "1", Side::Buy);
        let forward = build(&[x.clone(), y.clone()]);
        let backward = build(&[y, x]);
        assert_eq!(forward, backward);
        assert_eq!(forward.open, "1".parse().unwrap(), "trade id x < y opens");
        assert_eq!(forward.close, "2".parse().unwrap());
    }

    #[test]
    fn volume_is_conserved_and_overflow_is_refused_whole() {
        let big = trade("big", 10, "79228162514264337593543950335", "1", Side::Buy);
        let mut state = CandleState::new(&trade("a", 1, "1", "1", Side::Buy)).unwrap();
        let before = state.clone();
        assert_eq!(state.add(&big), Err(Rejection::Overflow));
        assert_eq!(state, before, "nothing of a refused trade is kept");
        state.add(&trade("b", 2, "2", "3", Side::Sell)).unwrap();
        let c = state.candle(&key(), "1m", false);
        assert_eq!(c.volume, c.buy_volume + c.sell_volume);
    }

    #[test]
    fn merging_windows_equals_one_window_over_all_trades() {
        let trades = [
            trade("a", 10, "100", "1", Side::Buy),
            trade("b", 70, "105", "2", Side::Sell),
            trade("c", 65, "95", "1", Side::Unknown),
            trade("d", 130, "101", "0.5", Side::Buy),
        ];
        let whole = build(&trades);
        let mut first = CandleState::new(&trades[0]).unwrap();
        let mut second = CandleState::new(&trades[1]).unwrap();
        second.add(&trades[2]).unwrap();
        let third = CandleState::new(&trades[3]).unwrap();
        first.merge(&third).unwrap();
        first.merge(&second).unwrap();
        assert_eq!(first.candle(&key(), "1m", true), whole);
    }

    #[test]
    fn window_start_floors() {
        assert_eq!(window_start(0, 60), 0);
        assert_eq!(window_start(59, 60), 0);
        assert_eq!(window_start(60, 60), 60);
        assert_eq!(window_start(-1, 60), -60);
    }
}
