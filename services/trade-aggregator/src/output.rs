//! What the window operator emits: shared by the operator and the roll-ups it feeds, so neither
//! module imports the other.

use tickflow_shared::domain::{Candle, Micros, Trade};

/// Which emission of its window a candle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emission {
    /// In progress, before the watermark passed the window's end (`is_final` false).
    Early,
    /// The first final value, when the watermark passed the window's end.
    Final,
    /// A final value again, corrected by a late trade within the allowed lateness.
    Correction,
    /// A final value again, recomputed from the stored trades after a trade beyond the allowed
    /// lateness.
    Recomputed,
}

impl Emission {
    /// The `kind` label of the emissions metric.
    pub fn label(self) -> &'static str {
        match self {
            Emission::Early => "early",
            Emission::Final => "final",
            Emission::Correction => "late_update",
            Emission::Recomputed => "recomputed",
        }
    }
}

/// What the operator emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A candle to upsert, and which emission of its window it is.
    Candle(Candle, Emission),
    /// A trade whose window closed more than the allowed lateness ago: `md.trades.late`.
    TooLate { trade: Trade, watermark: Micros },
    /// A trade that cannot be aggregated (e.g. its sums overflow): `md.trades.late` with reason.
    Rejected { trade: Trade, reason: &'static str },
}
