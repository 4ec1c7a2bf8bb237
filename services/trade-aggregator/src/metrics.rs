//! The trade-aggregator's metrics: names in one place, described at start.

pub const TRADES_IN: &str = "tickflow_aggregator_trades_total";
pub const INPUT_ERRORS: &str = "tickflow_aggregator_input_errors_total";
pub const CANDLES_EMITTED: &str = "tickflow_aggregator_candles_emitted_total";
pub const LATE_DROPPED: &str = "tickflow_aggregator_late_trades_dropped_total";
pub const REJECTED: &str = "tickflow_aggregator_trades_rejected_total";
pub const OPEN_WINDOWS: &str = "tickflow_aggregator_open_windows";
pub const WATERMARK_LAG: &str = "tickflow_aggregator_watermark_lag_seconds";
pub const SINK_WRITE_SECONDS: &str = "tickflow_aggregator_sink_write_duration_seconds";
pub const SINK_ERRORS: &str = "tickflow_aggregator_sink_errors_total";
pub const CHECKPOINT_SECONDS: &str = "tickflow_aggregator_checkpoint_duration_seconds";
pub const CHECKPOINT_BYTES: &str = "tickflow_aggregator_checkpoint_size_bytes";
pub const HANDOVERS: &str = "tickflow_aggregator_partition_handovers_total";
pub const OWNED_PARTITIONS: &str = "tickflow_aggregator_owned_partitions";
pub const CORRECTIONS: &str = "tickflow_aggregator_corrections_total";
pub const PENDING_CORRECTIONS: &str = "tickflow_aggregator_pending_corrections";
pub const SOURCES: &str = "tickflow_aggregator_sources";
pub const CONSUMER_LAG: &str = "tickflow_aggregator_consumer_lag_messages";

/// `outcome` of [`CORRECTIONS`]: the window was recomputed from the stored trades and re-emitted.
pub const CORRECTION_RECOMPUTED: &str = "recomputed";
/// `outcome` of [`CORRECTIONS`]: not recomputed, trades are not stored (`write_trades` off).
pub const CORRECTION_NO_TRADE_STORE: &str = "no_trade_store";
/// `outcome` of [`CORRECTIONS`]: not recomputed, the window is older than the trades' TTL.
pub const CORRECTION_BEYOND_TTL: &str = "beyond_ttl";
/// `outcome` of [`CORRECTIONS`]: not recomputed, the window's sums overflow.
pub const CORRECTION_OVERFLOW: &str = "overflow";

/// `sink` of [`SINK_ERRORS`] and [`SINK_WRITE_SECONDS`], with the `error_type` its writes fail
/// with when its dependency is away.
pub const SINK_TRADES: (&str, &str) = ("cassandra_trades", "cassandra");
pub const SINK_CANDLES: (&str, &str) = ("cassandra_candles", "cassandra");
pub const SINK_CANDLES_KAFKA: (&str, &str) = ("kafka_candles", "kafka");
pub const SINK_LATE: (&str, &str) = ("kafka_late", "kafka");

/// The error counters at 0 for every label value known in advance, so the first error shows
/// as an increase (see [`tickflow_shared::telemetry::zero_counter`]).
pub fn zero_error_counters() {
    use tickflow_shared::telemetry::zero_counter;
    crate::pipeline::RUNTIME_METRICS.zero();
    for rejection in crate::window::Rejection::ALL {
        zero_counter(REJECTED, &[("reason", rejection.reason())]);
    }
    for (sink, error_type) in [SINK_TRADES, SINK_CANDLES, SINK_CANDLES_KAFKA, SINK_LATE] {
        zero_counter(SINK_ERRORS, &[("sink", sink), ("error_type", error_type)]);
    }
    for outcome in [
        CORRECTION_RECOMPUTED,
        CORRECTION_NO_TRADE_STORE,
        CORRECTION_BEYOND_TTL,
        CORRECTION_OVERFLOW,
    ] {
        zero_counter(CORRECTIONS, &[("interval", "1m"), ("outcome", outcome)]);
    }
}

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HANDOVERS,
        "Input partitions taken over from (assigned, state restored from its checkpoint) or handed \
         to another instance of the consumer group (revoked, after a checkpoint), or lost \
         (dropped without a checkpoint), by kind."
    );
    describe_counter!(
        CORRECTIONS,
        "Windows beyond the allowed lateness handled after a too-late trade, by interval and outcome: recomputed from the stored trades and re-emitted, or not (no_trade_store, beyond_ttl, overflow)."
    );
    describe_gauge!(
        PENDING_CORRECTIONS,
        "Windows waiting to be recomputed from the stored trades."
    );
    describe_gauge!(
        SOURCES,
        "Upstream sources (raw partitions) of the owned input partitions, by state: active (holding the watermark) or idle (left out after idle_timeout)."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records of the input partition not yet read (the broker's high watermark minus the next \
         offset), by partition, once a second."
    );
    describe_gauge!(
        OWNED_PARTITIONS,
        "Input partitions this instance aggregates now."
    );
    describe_counter!(TRADES_IN, "Trades aggregated, by instrument and exchange.");
    describe_counter!(
        INPUT_ERRORS,
        "Input records that could not be decoded, by reason."
    );
    describe_counter!(
        CANDLES_EMITTED,
        "Candle emissions, by kind: final (first final value), early (in progress), late_update (a final value corrected by a late trade within the allowed lateness), recomputed (recomputed from the stored trades after a trade beyond it)."
    );
    describe_counter!(
        LATE_DROPPED,
        "Trades beyond the allowed lateness, sent to the late topic (their windows are recomputed: see the corrections counter)."
    );
    describe_counter!(REJECTED, "Trades that could not be aggregated, by reason.");
    describe_gauge!(
        OPEN_WINDOWS,
        "Windows held in memory (open or within the allowed lateness)."
    );
    describe_gauge!(
        WATERMARK_LAG,
        Unit::Seconds,
        "Wall clock minus the partition's watermark."
    );
    describe_histogram!(
        SINK_WRITE_SECONDS,
        Unit::Seconds,
        "Time to flush one batch to a sink, by sink."
    );
    describe_counter!(
        SINK_ERRORS,
        "Failed sink writes (retried), by sink and error_type."
    );
    describe_histogram!(
        CHECKPOINT_SECONDS,
        Unit::Seconds,
        "Time to write one checkpoint of all partitions."
    );
    describe_gauge!(
        CHECKPOINT_BYTES,
        Unit::Bytes,
        "Size of the last checkpoint of all partitions."
    );
}
