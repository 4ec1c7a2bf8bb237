//! The gateway's metrics: names in one place, described at start.

pub const MESSAGES: &str = "tickflow_gateway_messages_total";
pub const BYTES: &str = "tickflow_gateway_received_bytes_total";
pub const MALFORMED: &str = "tickflow_gateway_malformed_frames_total";
pub const DROPPED: &str = "tickflow_gateway_dropped_frames_total";
pub const QUEUE_DEPTH: &str = "tickflow_gateway_queue_depth";
pub const PRODUCE_LATENCY: &str = "tickflow_gateway_receive_to_ack_seconds";
pub const PRODUCE_ERRORS: &str = "tickflow_gateway_kafka_errors_total";
pub const LAST_MESSAGE_AGE: &str = "tickflow_gateway_last_message_age_seconds";
pub const ACTIVE_SUBSCRIPTIONS: &str = "tickflow_gateway_active_subscriptions";
pub const DELIVERED: &str = "tickflow_gateway_delivered_total";
pub const FRAMES: &str = "tickflow_gateway_frames_total";
pub const CONNECTION_STATE: &str = "tickflow_gateway_connection_state";
pub const RECONNECTS: &str = "tickflow_gateway_reconnects_total";
pub const BACKFILL_GAPS: &str = "tickflow_gateway_backfill_gaps_total";
pub const BACKFILL_REQUESTS: &str = "tickflow_gateway_backfill_requests_total";
pub const BACKFILL_TRADES: &str = "tickflow_gateway_backfill_trades_total";
pub const BACKFILL_UNRECOVERABLE: &str = "tickflow_gateway_backfill_unrecoverable_trades_total";

/// The error counters at 0 for each enabled provider, so the first error shows as an increase
/// (see [`tickflow_shared::telemetry::zero_counter`]). Kafka errors with `MessageTimedOut`,
/// what a produce fails with after its retries when the broker is away.
pub fn zero_error_counters(providers: &[&str]) {
    use tickflow_shared::telemetry::zero_counter;
    // The sink labels errors with the code's Debug name.
    let timed_out = format!("{:?}", rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
    for &provider in providers {
        zero_counter(DROPPED, &[("provider", provider)]);
        zero_counter(
            PRODUCE_ERRORS,
            &[("provider", provider), ("error_type", &timed_out)],
        );
    }
}

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        MESSAGES,
        "Market-data messages received, by provider and instrument (the simulator: every frame)."
    );
    describe_counter!(
        BACKFILL_GAPS,
        "Gaps the backfill walked, by provider and outcome: fetched, partly_unrecoverable, failed."
    );
    describe_counter!(
        BACKFILL_REQUESTS,
        "REST requests of the backfill, by provider and outcome: ok, rate_limited, error."
    );
    describe_counter!(
        BACKFILL_TRADES,
        "Missing trades fetched by the backfill and put on the raw topic, by provider."
    );
    describe_counter!(
        BACKFILL_UNRECOVERABLE,
        "Missing trades the provider no longer serves, by provider."
    );
    describe_counter!(
        FRAMES,
        "WebSocket frames received, by provider and type (data, heartbeat, subscribed, rejected, error, malformed, ping, pong, ...)."
    );
    describe_counter!(
        DELIVERED,
        "Frames Kafka acknowledged (acks=all), raw and dead-letter topics together, by provider."
    );
    describe_gauge!(
        CONNECTION_STATE,
        "1 while the connection is up, 0 while it is down or reconnecting, by provider and connection."
    );
    describe_counter!(
        RECONNECTS,
        "Connections lost and re-established, by provider and reason (silent, no_data, closed, rate_limited, connect_failed, ...)."
    );
    describe_counter!(BYTES, Unit::Bytes, "Bytes received, by provider.");
    describe_counter!(
        MALFORMED,
        "Frames not forwarded but dead-lettered (malformed, invalid_utf8, oversized, empty), by provider and reason."
    );
    describe_counter!(
        DROPPED,
        "Frames dropped because the queue was full (only with gateway.drop_when_full), by provider."
    );
    describe_gauge!(QUEUE_DEPTH, "Frames waiting for the Kafka producer.");
    describe_histogram!(
        PRODUCE_LATENCY,
        Unit::Seconds,
        "Gateway receive time to Kafka acknowledgement (acks=all), by provider."
    );
    describe_counter!(
        PRODUCE_ERRORS,
        "Frames Kafka did not take (after the producer's own retries), by provider and error_type."
    );
    describe_gauge!(
        LAST_MESSAGE_AGE,
        Unit::Seconds,
        "Seconds since the provider's last market-data message."
    );
    describe_gauge!(
        ACTIVE_SUBSCRIPTIONS,
        "Subscriptions confirmed by the provider (or with data), by provider."
    );
}
