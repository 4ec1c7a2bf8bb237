//! The normalizer's metrics: names in one place, described at start.

pub const RECORDS_IN: &str = "tickflow_normalizer_records_total";
pub const TRADES_OUT: &str = "tickflow_normalizer_trades_total";
pub const DLQ: &str = "tickflow_normalizer_dead_letters_total";
pub const SKIPPED: &str = "tickflow_normalizer_skipped_frames_total";
pub const DUPLICATES: &str = "tickflow_normalizer_duplicates_total";
pub const EVENT_TO_NORMALIZED: &str = "tickflow_normalizer_event_to_normalized_seconds";
pub const INGEST_TO_NORMALIZED: &str = "tickflow_normalizer_ingest_to_normalized_seconds";
pub const TRANSACTIONS: &str = "tickflow_normalizer_transactions_total";
pub const TRANSACTION_SECONDS: &str = "tickflow_normalizer_transaction_duration_seconds";
pub const TRANSACTION_STEP_SECONDS: &str = "tickflow_normalizer_transaction_step_seconds";
pub const CONSUMER_LAG: &str = "tickflow_normalizer_consumer_lag_messages";
pub const INSTRUMENTS: &str = "tickflow_normalizer_instruments";
pub const DEDUP_HELD: &str = "tickflow_normalizer_dedup_entries";
pub const INPUT_ERRORS: &str = "tickflow_normalizer_input_errors_total";
pub const HANDOVERS: &str = "tickflow_normalizer_partition_handovers_total";
pub const OWNED_PARTITIONS: &str = "tickflow_normalizer_owned_partitions";
/// Named for the runtime; the normalizer writes no checkpoints (its transactions hold its
/// progress), so these never appear.
pub const CHECKPOINT_SECONDS: &str = "tickflow_normalizer_checkpoint_duration_seconds";
pub const CHECKPOINT_BYTES: &str = "tickflow_normalizer_checkpoint_size_bytes";
pub const GAPS: &str = "tickflow_normalizer_gaps_total";
pub const GAP_TRADES_MISSING: &str = "tickflow_normalizer_gap_trades_missing_total";
pub const GAP_TRADES_RECOVERED: &str = "tickflow_normalizer_gap_trades_recovered_total";
pub const GAPS_OPEN: &str = "tickflow_normalizer_gaps_open";
pub const GAP_TRADES_OPEN: &str = "tickflow_normalizer_gap_trades_open";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(RECORDS_IN, "Raw records consumed, by provider.");
    describe_counter!(
        TRADES_OUT,
        "Trades written to the output topic, by provider, exchange and instrument."
    );
    describe_counter!(
        DLQ,
        "Inputs sent to the dead-letter topic, by provider and reason."
    );
    describe_counter!(
        SKIPPED,
        "Documented non-trade frames skipped, by provider and kind."
    );
    describe_counter!(
        DUPLICATES,
        "Trades dropped as duplicates within the horizon, by provider and exchange."
    );
    describe_histogram!(
        EVENT_TO_NORMALIZED,
        Unit::Seconds,
        "Exchange event time to normalization, by provider."
    );
    describe_histogram!(
        INGEST_TO_NORMALIZED,
        Unit::Seconds,
        "Gateway receive time to normalization, by provider."
    );
    describe_counter!(
        TRANSACTIONS,
        "Kafka transactions, by outcome: committed, aborted, producer_reset."
    );
    describe_histogram!(
        TRANSACTION_SECONDS,
        Unit::Seconds,
        "Time from a batch's first record to its committed transaction."
    );
    describe_histogram!(
        TRANSACTION_STEP_SECONDS,
        Unit::Seconds,
        "Each step of a committed transaction, by step: begin, process (decode, normalize, \
         hand the outputs to the producer), offsets (send the input offsets), deliver (every \
         output acknowledged by the brokers), commit (EndTxn: the transaction committed)."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records behind the end of each input partition, by topic and partition."
    );
    describe_gauge!(INSTRUMENTS, "Instruments in the reference data.");
    describe_gauge!(DEDUP_HELD, "Trade identities held by the duplicate filter.");
    describe_counter!(
        GAPS,
        "Gaps in providers' trade numbering, by provider, exchange, instrument and status: \
         OPEN (found), FILLED (every missing trade arrived), DROPPED (no longer tracked)."
    );
    describe_counter!(
        GAP_TRADES_MISSING,
        "Trades missing from the gaps found, by provider, exchange and instrument."
    );
    describe_counter!(
        GAP_TRADES_RECOVERED,
        "Missing trades that arrived after their gap was found, by provider, exchange and \
         instrument."
    );
    describe_gauge!(
        GAPS_OPEN,
        "Gaps open on this instance's partitions, by provider."
    );
    describe_gauge!(
        GAP_TRADES_OPEN,
        "Trades the open gaps still miss on this instance's partitions, by provider."
    );
    describe_counter!(
        INPUT_ERRORS,
        "Input records skipped, by reason (none so far: every unreadable record is \
         dead-lettered)."
    );
    describe_counter!(
        HANDOVERS,
        "Input partitions taken up or given away, by kind: assigned, revoked, lost (revoked \
         without a chance to commit)."
    );
    describe_gauge!(OWNED_PARTITIONS, "Input partitions this instance owns.");
}
