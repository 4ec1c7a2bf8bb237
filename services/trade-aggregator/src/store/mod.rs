//! The aggregator's Cassandra tables: `trades` (every trade, for corrections by too-late trades
//! and for recomputation), `candles_1m` and `candles_rollup`. Their schema is in the shared
//! migrations (`shared/cql/`); the session, the helpers and the column values come from
//! `tickflow_shared::cassandra`.

mod candles;
mod trades;

pub use candles::{CandleStore, ONE_MINUTE};
pub use trades::{TradeStore, PARTITION_BATCH, TRADES_TTL};
