//! Why an input is dead-lettered: a fixed set, each with the code that becomes the
//! `tickflow.reason` header of the DLQ record and the `reason` label of its metric.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The record is not a RawEnvelope in the Confluent wire format.
    BadEnvelope,
    /// The envelope names a provider the normalizer has no parser for.
    UnknownProvider,
    /// The payload is not the provider's JSON (or not UTF-8).
    UnparsablePayload,
    /// A field every trade must have is absent.
    MissingField,
    /// A message type the provider documents as neither a trade nor a control message.
    UnsupportedMessage,
    /// No instrument lists this provider symbol.
    UnknownSymbol,
    /// The instrument exists but is marked inactive.
    InactiveInstrument,
    /// Price not a finite decimal, zero or negative.
    InvalidPrice,
    /// Size not a finite decimal, zero or negative.
    InvalidSize,
    /// Price above the configured maximum.
    PriceOutOfRange,
    /// Size above the configured maximum.
    SizeOutOfRange,
    /// Event time later than receive time plus the allowed clock skew.
    EventTimeFuture,
    /// Event time older than the allowed age at receive time.
    EventTimePast,
    /// A valid trade the Avro schema cannot hold (a limit configured beyond decimal(38,18)).
    Unencodable,
}

impl From<tickflow_providers::FrameErrorKind> for Reason {
    fn from(kind: tickflow_providers::FrameErrorKind) -> Self {
        use tickflow_providers::FrameErrorKind as K;
        match kind {
            K::Unparsable => Reason::UnparsablePayload,
            K::MissingField => Reason::MissingField,
            K::Unsupported => Reason::UnsupportedMessage,
        }
    }
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::BadEnvelope,
        Reason::UnknownProvider,
        Reason::UnparsablePayload,
        Reason::MissingField,
        Reason::UnsupportedMessage,
        Reason::UnknownSymbol,
        Reason::InactiveInstrument,
        Reason::InvalidPrice,
        Reason::InvalidSize,
        Reason::PriceOutOfRange,
        Reason::SizeOutOfRange,
        Reason::EventTimeFuture,
        Reason::EventTimePast,
        Reason::Unencodable,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            Reason::BadEnvelope => "bad_envelope",
            Reason::UnknownProvider => "unknown_provider",
            Reason::UnparsablePayload => "unparsable_payload",
            Reason::MissingField => "missing_field",
            Reason::UnsupportedMessage => "unsupported_message",
            Reason::UnknownSymbol => "unknown_symbol",
            Reason::InactiveInstrument => "inactive_instrument",
            Reason::InvalidPrice => "invalid_price",
            Reason::InvalidSize => "invalid_size",
            Reason::PriceOutOfRange => "price_out_of_range",
            Reason::SizeOutOfRange => "size_out_of_range",
            Reason::EventTimeFuture => "event_time_future",
            Reason::EventTimePast => "event_time_past",
            Reason::Unencodable => "unencodable",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}
