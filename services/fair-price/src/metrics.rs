//! fair-price's metrics: names in one place, described at start.

pub const TRADES_IN: &str = "tickflow_fairprice_trades_total";
pub const INPUT_ERRORS: &str = "tickflow_fairprice_input_errors_total";
pub const PRICE: &str = "tickflow_fairprice_price";
pub const PUBLISHED: &str = "tickflow_fairprice_published_total";
pub const STALE: &str = "tickflow_fairprice_stale";
pub const ACTIVE_SOURCES: &str = "tickflow_fairprice_active_sources";
pub const DISPERSION: &str = "tickflow_fairprice_dispersion_ratio";
pub const CONFIDENCE: &str = "tickflow_fairprice_confidence_ratio";
pub const SOURCE_AGE: &str = "tickflow_fairprice_source_last_trade_age_seconds";
pub const SOURCE_RATE: &str = "tickflow_fairprice_source_update_rate_per_second";
pub const SOURCE_RATIO: &str = "tickflow_fairprice_source_price_ratio";
pub const EXCLUDED: &str = "tickflow_fairprice_sources_excluded_total";
pub const ANOMALIES: &str = "tickflow_fairprice_anomalies_total";
pub const ANOMALY_ACTIVE: &str = "tickflow_fairprice_anomaly_active";
pub const LATENCY: &str = "tickflow_fairprice_latency_seconds";
pub const SINK_WRITE_SECONDS: &str = "tickflow_fairprice_sink_write_duration_seconds";
pub const SINK_ERRORS: &str = "tickflow_fairprice_sink_errors_total";
pub const CONSUMER_LAG: &str = "tickflow_fairprice_consumer_lag_messages";
pub const HANDOVERS: &str = "tickflow_fairprice_partition_handovers_total";
pub const OWNED_PARTITIONS: &str = "tickflow_fairprice_owned_partitions";
pub const CHECKPOINT_SECONDS: &str = "tickflow_fairprice_checkpoint_duration_seconds";
pub const CHECKPOINT_BYTES: &str = "tickflow_fairprice_checkpoint_size_bytes";
pub const QUERY_FEED_ERRORS: &str = "tickflow_fairprice_query_feed_errors_total";

/// `sink` of [`SINK_ERRORS`], with the `error_type` its writes fail with when its dependency
/// is away.
pub const SINK_PRICES_KAFKA: (&str, &str) = ("kafka_fairprice", "kafka");
pub const SINK_ANOMALIES_KAFKA: (&str, &str) = ("kafka_anomalies", "kafka");
pub const SINK_PRICES_CASSANDRA: (&str, &str) = ("cassandra_fair_prices", "cassandra");
pub const SINK_ANOMALIES_CASSANDRA: (&str, &str) = ("cassandra_anomalies", "cassandra");

/// The error counters at 0 for every label value known in advance, so the first error shows
/// as an increase (see [`tickflow_shared::telemetry::zero_counter`]). The Cassandra sinks only
/// when the service writes to Cassandra.
pub fn zero_error_counters(cassandra: bool) {
    use tickflow_shared::telemetry::zero_counter;
    crate::pipeline::RUNTIME_METRICS.zero();
    metrics::counter!(QUERY_FEED_ERRORS).absolute(0);
    let mut sinks = vec![SINK_PRICES_KAFKA, SINK_ANOMALIES_KAFKA];
    if cassandra {
        sinks.extend([SINK_PRICES_CASSANDRA, SINK_ANOMALIES_CASSANDRA]);
    }
    for (sink, error_type) in sinks {
        zero_counter(SINK_ERRORS, &[("sink", sink), ("error_type", error_type)]);
    }
}

/// Every metric this service promises (a test checks `/metrics` against it); the checkpoint
/// metrics only appear with checkpoints (`write_cassandra`), after the first.
pub const ALL: [&str; 21] = [
    QUERY_FEED_ERRORS,
    HANDOVERS,
    OWNED_PARTITIONS,
    TRADES_IN,
    INPUT_ERRORS,
    PRICE,
    PUBLISHED,
    STALE,
    ACTIVE_SOURCES,
    DISPERSION,
    CONFIDENCE,
    SOURCE_AGE,
    SOURCE_RATE,
    SOURCE_RATIO,
    EXCLUDED,
    ANOMALIES,
    ANOMALY_ACTIVE,
    LATENCY,
    SINK_WRITE_SECONDS,
    SINK_ERRORS,
    CONSUMER_LAG,
];

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        TRADES_IN,
        "Trades read, by provider, exchange and instrument."
    );
    describe_counter!(INPUT_ERRORS, "Input records skipped, by reason.");
    describe_counter!(
        QUERY_FEED_ERRORS,
        "Records of the output topic the query API could not read (skipped)."
    );
    describe_gauge!(
        PRICE,
        "The latest published fair price (a float copy, for charts)."
    );
    describe_counter!(
        PUBLISHED,
        "Fair prices published, by instrument and trigger (change, heartbeat)."
    );
    describe_gauge!(
        STALE,
        "1 when the latest fair price of the instrument is stale."
    );
    describe_gauge!(
        ACTIVE_SOURCES,
        "Sources used by the latest fair price of the instrument."
    );
    describe_gauge!(
        DISPERSION,
        "(max - min) / price over the used sources' prices."
    );
    describe_gauge!(CONFIDENCE, "Confidence of the latest fair price, 0..1.");
    describe_gauge!(
        SOURCE_AGE,
        Unit::Seconds,
        "Event time since the source's last trade."
    );
    describe_gauge!(
        SOURCE_RATE,
        "The source's trades per second over the rate window."
    );
    describe_gauge!(
        SOURCE_RATIO,
        "The source's last price divided by the fair price."
    );
    describe_counter!(
        EXCLUDED,
        "Source exclusions in published fair prices, by reason (STALE, OUTLIER)."
    );
    describe_counter!(ANOMALIES, "Anomaly records published, by kind and scope.");
    describe_gauge!(
        ANOMALY_ACTIVE,
        "1 while an anomaly is active for the scope, else 0."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "From the trade's event time (stage=event) or gateway receive time (stage=ingest) to its fair price acknowledged on Kafka."
    );
    describe_histogram!(
        SINK_WRITE_SECONDS,
        Unit::Seconds,
        "Time to land one batch, by sink."
    );
    describe_counter!(
        SINK_ERRORS,
        "Failed sink writes (retried), by sink and error type."
    );
    describe_gauge!(CONSUMER_LAG, "Input records not yet read, by partition.");
    describe_counter!(
        HANDOVERS,
        "Input partitions taken over from (assigned, state restored from its checkpoint) or handed \
         to another instance of the group (revoked, after a checkpoint), or lost (dropped without a \
         checkpoint), by kind."
    );
    describe_gauge!(OWNED_PARTITIONS, "Input partitions this instance owns.");
    describe_histogram!(
        CHECKPOINT_SECONDS,
        Unit::Seconds,
        "Time to checkpoint the owned partitions' state and offsets in Cassandra."
    );
    describe_gauge!(
        CHECKPOINT_BYTES,
        Unit::Bytes,
        "Size of the last checkpoint's states, all owned partitions together."
    );
}
