//! Data-quality detection for one source, evaluated at every heartbeat instant of event time:
//! NO_DATA (silent too long), PRICE_DIVERGENCE (off the fair price too far for too long),
//! RATE_DROP (trade rate far below its trailing average), and RECOVERED when each clears.
//!
//! The trailing rate learns only from normal periods, so a silent source does not teach the
//! detector that silence is normal.

use std::collections::BTreeMap;

use crate::records::{Anomaly, AnomalyKind};
use serde::{Deserialize, Serialize};
use tickflow_shared::domain::{Micros, MICROS_PER_SECOND};

use super::Quality;

/// What the detector knows about one source. Part of the checkpoint.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    /// Active anomalies and when each started.
    #[serde(with = "kinds")]
    pub active: BTreeMap<AnomalyKind, Micros>,
    /// Since when the source has been beyond the divergence threshold.
    diverging_since: Option<Micros>,
    /// Trades per second, exponentially averaged over the trailing time; None until measured.
    /// As text in checkpoints: it reaches the anomalies' thresholds, so a restored detector must
    /// hold the very same value, which JSON numbers do not promise.
    #[serde(with = "float_text")]
    trailing_rate: Option<f64>,
    /// When the first heartbeat saw this source (the trailing rate needs a window of history).
    first_seen: Option<Micros>,
}

/// One evaluation's inputs for a source.
pub struct Observation {
    pub at: Micros,
    pub last_event_time: Option<Micros>,
    /// Trades per second over the rate window.
    pub rate: f64,
    /// |last price / fair price − 1| in percent, when both exist and the source is fresh.
    pub divergence_pct: Option<f64>,
    /// The step between two evaluations (the heartbeat), for the trailing average.
    pub step: Micros,
}

/// The scope an anomaly is about.
pub struct Scope<'a> {
    pub provider: &'a str,
    pub exchange: &'a str,
    pub instrument: &'a str,
}

impl Detector {
    pub fn is_active(&self, kind: AnomalyKind) -> bool {
        self.active.contains_key(&kind)
    }

    /// Updates the state with an observation and appends the anomalies it raises or clears.
    pub fn observe(&mut self, o: &Observation, q: &Quality, scope: &Scope, out: &mut Vec<Anomaly>) {
        let first_seen = *self.first_seen.get_or_insert(o.at);

        // NO_DATA: measured from the last trade (or from the first sight of a source never heard).
        let silent_since = o.last_event_time.unwrap_or(first_seen);
        let silence = o.at - silent_since;
        let no_data = silence > q.no_data_after;
        self.transition(
            AnomalyKind::NoData,
            no_data,
            silent_since,
            o.at,
            secs(silence),
            secs(q.no_data_after),
            format!("no trade for {:.1} s", secs(silence)),
            scope,
            out,
        );

        // PRICE_DIVERGENCE: beyond the threshold continuously for divergence_for.
        match o.divergence_pct {
            Some(d) if d > q.divergence_pct => {
                let since = *self.diverging_since.get_or_insert(o.at);
                if o.at - since >= q.divergence_for {
                    self.transition(
                        AnomalyKind::PriceDivergence,
                        true,
                        since,
                        o.at,
                        d,
                        q.divergence_pct,
                        format!("{d:.2}% from the fair price"),
                        scope,
                        out,
                    );
                }
            }
            // No fresh price: nothing new is known, the state stays.
            None if no_data => {}
            _ => {
                self.diverging_since = None;
                self.transition(
                    AnomalyKind::PriceDivergence,
                    false,
                    o.at,
                    o.at,
                    o.divergence_pct.unwrap_or(0.0),
                    q.divergence_pct,
                    String::new(),
                    scope,
                    out,
                );
            }
        }

        // RATE_DROP: against a trailing average that has seen at least one rate window.
        let warmed_up = o.at - first_seen >= q.rate_window;
        let trailing = self.trailing_rate.unwrap_or(o.rate);
        let dropped = warmed_up
            && trailing >= q.rate_min_trailing_per_s
            && o.rate < q.rate_drop_fraction * trailing;
        if !dropped {
            // Learn only from normal periods.
            let alpha = (o.step as f64 / q.rate_trailing as f64).clamp(0.0, 1.0);
            self.trailing_rate = Some(trailing + alpha * (o.rate - trailing));
        }
        // A silent source is NO_DATA, not also RATE_DROP.
        if !(dropped && no_data && !self.is_active(AnomalyKind::RateDrop)) {
            self.transition(
                AnomalyKind::RateDrop,
                dropped,
                o.at,
                o.at,
                o.rate,
                q.rate_drop_fraction * trailing,
                format!("{:.2} trades/s against a trailing {trailing:.2}", o.rate),
                scope,
                out,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        kind: AnomalyKind,
        now_active: bool,
        started_at: Micros,
        at: Micros,
        observed: f64,
        threshold: f64,
        detail: String,
        scope: &Scope,
        out: &mut Vec<Anomaly>,
    ) {
        let was_active = self.active.get(&kind).copied();
        let (kind_out, started, detail) = match (was_active, now_active) {
            (None, true) => {
                self.active.insert(kind, started_at);
                (kind, started_at, detail)
            }
            (Some(started), false) => {
                self.active.remove(&kind);
                (
                    AnomalyKind::Recovered,
                    started,
                    format!("{} cleared", kind.as_str()),
                )
            }
            _ => return,
        };
        out.push(Anomaly {
            kind: kind_out,
            provider: scope.provider.into(),
            exchange: scope.exchange.into(),
            instrument: scope.instrument.into(),
            observed,
            threshold,
            detail,
            started_at: started,
            detected_at: at,
        });
    }
}

fn secs(t: Micros) -> f64 {
    t as f64 / MICROS_PER_SECOND as f64
}

/// Raises or clears NO_DATA for a whole provider or exchange: silent when every one of its
/// sources is.
pub fn group_transition(
    active: &mut Option<Micros>,
    all_silent: Option<Micros>,
    at: Micros,
    scope: &Scope,
    out: &mut Vec<Anomaly>,
) {
    let (kind, started, detail) = match (*active, all_silent) {
        (None, Some(since)) => {
            *active = Some(since);
            (
                AnomalyKind::NoData,
                since,
                "every source silent".to_string(),
            )
        }
        (Some(since), None) => {
            *active = None;
            (AnomalyKind::Recovered, since, "NO_DATA cleared".to_string())
        }
        _ => return,
    };
    out.push(Anomaly {
        kind,
        provider: scope.provider.into(),
        exchange: scope.exchange.into(),
        instrument: scope.instrument.into(),
        observed: secs(at - started),
        threshold: 0.0,
        detail,
        started_at: started,
        detected_at: at,
    });
}

/// Active anomalies in checkpoints, by kind name (the shared type reads only its Avro form).
mod kinds {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use crate::records::AnomalyKind;
    use serde::{Deserialize, Deserializer, Serializer};
    use tickflow_shared::domain::Micros;

    pub fn serialize<S: Serializer>(
        active: &BTreeMap<AnomalyKind, Micros>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(active.iter().map(|(k, since)| (k.as_str(), since)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<AnomalyKind, Micros>, D::Error> {
        BTreeMap::<String, Micros>::deserialize(deserializer)?
            .into_iter()
            .map(|(k, since)| {
                AnomalyKind::from_str(&k)
                    .map(|k| (k, since))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// An `f64` as its shortest text that reads back to the same value (`Display`, then `parse`,
/// which rounds correctly), where a JSON number would be read back only approximately.
mod float_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.serialize_some(&v.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<f64>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| text.parse::<f64>().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detector_reads_back_exactly_from_its_checkpoint_text() {
        for rate in [
            0.1 + 0.2,
            1.0 / 3.0,
            9.999_999_999_999_998,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            -0.0,
        ] {
            let detector = Detector {
                active: BTreeMap::from([(AnomalyKind::RateDrop, 7), (AnomalyKind::NoData, -3)]),
                diverging_since: Some(11),
                trailing_rate: Some(rate),
                first_seen: Some(5),
            };
            let json = serde_json::to_string(&detector).unwrap();
            let back: Detector = serde_json::from_str(&json).unwrap();
            assert_eq!(back, detector, "{json}");
            let bits = back.trailing_rate.map(f64::to_bits);
            assert_eq!(bits, Some(rate.to_bits()), "{json}");
        }
    }
}
