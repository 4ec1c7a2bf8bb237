//! What the aggregator's integration tests share: the environment that points a service process
//! at the stack, and reading back the stored candles.

use std::collections::{BTreeMap, BTreeSet};

use crate::Stack;
use tickflow_shared::domain::{Candle, MICROS_PER_SECOND as S};
use trade_aggregator::config::AggregatorConfig;
use trade_aggregator::rollup::Interval;
use trade_aggregator::store::CandleStore;

/// The environment of an aggregator process using the stack, `keyspace`, and `agg`'s topics and
/// operator id, plus `extra` settings.
pub fn aggregator_env(
    stack: &Stack,
    keyspace: &str,
    agg: &AggregatorConfig,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "TICKFLOW_CASSANDRA__CONTACT_POINTS",
            stack.cassandra.contact_points.join(","),
        ),
        ("TICKFLOW_CASSANDRA__KEYSPACE", keyspace.to_string()),
        ("TICKFLOW_AGGREGATOR__INPUT_TOPIC", agg.input_topic.clone()),
        (
            "TICKFLOW_AGGREGATOR__CANDLES_TOPIC",
            agg.candles_topic.clone(),
        ),
        ("TICKFLOW_AGGREGATOR__LATE_TOPIC", agg.late_topic.clone()),
        ("TICKFLOW_AGGREGATOR__OPERATOR_ID", agg.operator_id.clone()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

/// The UTC days (as day numbers) the windows of `expected` start in.
pub fn days_of<K>(expected: &BTreeMap<K, Candle>) -> BTreeSet<i64> {
    expected
        .values()
        .map(|c| c.window_start.div_euclid(86_400 * S))
        .collect()
}

/// Every 1-minute candle stored for these instruments and venues on these days, by
/// (instrument, venue, window start).
pub async fn stored_candles(
    store: &CandleStore,
    instruments: &[&str],
    venues: &[&str],
    days: &BTreeSet<i64>,
) -> tickflow_shared::Result<BTreeMap<(String, String, i64), Candle>> {
    let mut stored = BTreeMap::new();
    for instrument in instruments {
        for venue in venues {
            for day in days {
                for c in store.day(instrument, venue, day * 86_400 * S).await? {
                    stored.insert((c.instrument.clone(), c.venue.clone(), c.window_start), c);
                }
            }
        }
    }
    Ok(stored)
}

/// Every roll-up candle stored for these instruments, venues and intervals on these days, by
/// (instrument, venue, interval, window start).
pub async fn stored_rollups(
    store: &CandleStore,
    instruments: &[&str],
    venues: &[&str],
    intervals: &[Interval],
    days: &BTreeSet<i64>,
) -> tickflow_shared::Result<BTreeMap<(String, String, String, i64), Candle>> {
    let mut stored = BTreeMap::new();
    for instrument in instruments {
        for venue in venues {
            for interval in intervals {
                for day in days {
                    for c in store
                        .rollup_day(instrument, venue, &interval.label, day * 86_400 * S)
                        .await?
                    {
                        stored.insert(
                            (
                                c.instrument.clone(),
                                c.venue.clone(),
                                c.interval.clone(),
                                c.window_start,
                            ),
                            c,
                        );
                    }
                }
            }
        }
    }
    Ok(stored)
}

pub mod scenario;
