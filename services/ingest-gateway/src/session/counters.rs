//! A session's per-message metrics, with their handles looked up once.

use std::collections::{BTreeMap, HashMap};

use metrics::Counter;
use tickflow_shared::telemetry::InstrumentLabels;

use crate::metrics::{BYTES, FRAMES, MESSAGES};

/// Per-session counters, looked up once per symbol rather than once per message.
pub(crate) struct Counters {
    provider: &'static str,
    labels: InstrumentLabels,
    by_symbol: HashMap<String, Counter>,
    unknown: Counter,
    pub bytes: Counter,
}

impl Counters {
    pub fn new(provider: &'static str, labels: InstrumentLabels) -> Self {
        Self {
            provider,
            labels,
            by_symbol: HashMap::new(),
            unknown: metrics::counter!(MESSAGES, "provider" => provider, "instrument" => "unknown"),
            bytes: metrics::counter!(BYTES, "provider" => provider),
        }
    }

    /// One market-data message; `symbols` maps provider symbols to instruments (the label).
    pub fn message(&mut self, symbol: Option<&str>, symbols: &BTreeMap<String, String>) {
        let counter = match symbol {
            Some(s) => {
                if let Some(c) = self.by_symbol.get(s) {
                    c
                } else {
                    let instrument = symbols.get(s).map_or("unknown", String::as_str);
                    let label = self.labels.label(instrument);
                    let c = metrics::counter!(MESSAGES, "provider" => self.provider, "instrument" => label);
                    self.by_symbol.entry(s.to_string()).or_insert(c)
                }
            }
            None => &self.unknown,
        };
        counter.increment(1);
    }
}

pub(crate) fn frame_type(provider: &'static str, kind: &'static str) {
    metrics::counter!(FRAMES, "provider" => provider, "type" => kind).increment(1);
}
