//! The normalizer as an operator of the stream runtime ([`tickflow_shared::runtime`]): a raw
//! record in; normalized trades, dead letters, dropped duplicates, skipped control frames and
//! gap records out. Its state per input partition is the duplicate filter and the gap tracker,
//! rebuilt from the partition's log when the partition is taken up ([`crate::warmup`], called by
//! the job) rather than checkpointed: Kafka transactions are the normalizer's offset strategy.

use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Message};
use tickflow_providers::Frame;
use tickflow_shared::avro::{self, AvroCodec};
use tickflow_shared::domain::{Micros, RawEnvelope};
use tickflow_shared::gap::UNRECOVERABLE_CHANNEL;
use tickflow_shared::instruments::InstrumentIndex;
use tickflow_shared::runtime::{self, Decoded, Input, Taken, Tp};
use tickflow_shared::shutdown::Shutdown;

use crate::dedup::DedupSet;
use crate::gaps::{self, GapRecord, GapSet};
use crate::normalize::{normalize, Limits, Outcome, Rules};
use crate::reason::Reason;
use crate::reference::Reference;

/// One raw record: its key and value as read (a dead letter carries them unchanged), and the
/// envelope decoded from the value (`None`: the record has no value; `Err`: why the value is not
/// a RawEnvelope).
pub struct RawRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub envelope: Option<Result<RawEnvelope, String>>,
}

impl RawRecord {
    /// The provider the envelope names, if it has a parser.
    pub fn provider(&self) -> Option<&'static dyn tickflow_providers::Provider> {
        match &self.envelope {
            Some(Ok(env)) => tickflow_providers::by_id(&env.provider),
            _ => None,
        }
    }
}

impl Input for RawRecord {
    /// Never refuses a record: one the normalizer cannot read is dead-lettered with its reason.
    async fn decode(
        codec: &AvroCodec,
        message: &BorrowedMessage<'_>,
        shutdown: &Shutdown,
    ) -> Decoded<Self> {
        let envelope = match message.payload() {
            None => None,
            Some(bytes) => match avro::decode_raw_waiting(codec, bytes, shutdown).await {
                Some(decoded) => Some(decoded.map_err(|e| e.to_string())),
                None => return Decoded::Stop,
            },
        };
        Decoded::Ok(RawRecord {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            envelope,
        })
    }
}

/// What one raw record came to.
// Trades are the common case; boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Output {
    /// A trade, a duplicate, a dead letter or a skipped frame.
    Outcome(Outcome),
    /// A gap found, filled or given up, for the gaps topic.
    Gap(GapRecord),
    /// A missing trade that arrived after its gap was found.
    Recovered {
        provider: &'static str,
        exchange: String,
        instrument: String,
    },
}

/// What the normalizer is given at start.
pub struct Settings {
    pub limits: Limits,
    /// How long a trade identity is remembered by the duplicate filter (µs).
    pub dedup_horizon: Micros,
    /// The least time between two waits for the reference data to catch up.
    pub sync_interval: Duration,
}

pub struct Normalizer {
    settings: Settings,
    reference: Reference,
    /// When the reference data last caught up for an unknown symbol.
    last_sync: Option<Instant>,
    dedup: DedupSet,
    gaps: GapSet,
    outcomes: Vec<Outcome>,
    events: Vec<gaps::Event>,
}

impl Normalizer {
    pub fn new(settings: Settings, reference: Reference) -> Self {
        Self {
            settings,
            reference,
            last_sync: None,
            dedup: DedupSet::default(),
            gaps: GapSet::default(),
            outcomes: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The reference data caught up (see [`runtime::Job::supply`]).
    pub fn caught_up(&mut self) {
        self.last_sync = Some(Instant::now());
    }

    /// Trade identities held by the duplicate filters.
    pub fn dedup_held(&self) -> usize {
        self.dedup.held()
    }

    /// Open gaps and the trades they miss, by provider.
    pub fn gaps_open(&self) -> std::collections::BTreeMap<&'static str, (u64, u64)> {
        self.gaps.open()
    }

    /// `tp`'s duplicate filter and gap tracker, emptied, for a warm-up to rebuild.
    pub fn reset(&mut self, tp: &Tp) -> (&mut crate::dedup::Dedup, &mut gaps::Gaps) {
        self.drop_state(tp);
        (self.dedup.partition(tp), self.gaps.partition(tp))
    }

    fn drop_state(&mut self, tp: &Tp) {
        self.dedup.remove(tp);
        self.gaps.remove(tp);
    }

    fn sync_due(&self) -> bool {
        self.last_sync
            .is_none_or(|t| t.elapsed() >= self.settings.sync_interval)
    }

    fn reject(out: &mut Vec<Output>, reason: Reason, detail: String) {
        out.push(Output::Outcome(Outcome::Rejected {
            trade_index: None,
            reason,
            detail,
        }));
    }

    /// Gap events as outputs: a record for the gaps topic, or a recovered trade.
    fn gap_outputs(
        &mut self,
        index: &InstrumentIndex,
        tp: &Tp,
        offset: i64,
        out: &mut Vec<Output>,
    ) {
        for event in self.events.drain(..) {
            let source = format!("{}/{}@{offset}", tp.topic, tp.partition);
            match gaps::record(&event, index, source) {
                Some(gap) => out.push(Output::Gap(gap)),
                None => {
                    let (exchange, instrument) = gaps::venue(&event, index);
                    out.push(Output::Recovered {
                        provider: event.provider,
                        exchange,
                        instrument,
                    });
                }
            }
        }
    }
}

impl runtime::Operator for Normalizer {
    type Input = RawRecord;
    type Output = Output;
    /// Never checkpointed (the state is rebuilt from the log).
    const STATE_FORMAT: i32 = 0;
    const READABLE_STATE_FORMATS: &'static [i32] = &[];

    /// Normalizes one raw frame. A frame naming a symbol the reference data does not know is
    /// not taken while a catch-up of the reference data is due ([`Taken::AfterSupply`]).
    fn on_record(
        &mut self,
        tp: &Tp,
        input: &RawRecord,
        now: Micros,
        out: &mut Vec<Output>,
    ) -> Taken {
        let envelope = match &input.envelope {
            None => {
                Self::reject(out, Reason::BadEnvelope, "record without a value".into());
                return Taken::Yes;
            }
            Some(Err(detail)) => {
                Self::reject(out, Reason::BadEnvelope, detail.clone());
                return Taken::Yes;
            }
            Some(Ok(env)) => env,
        };
        let Some(provider) = input.provider() else {
            Self::reject(
                out,
                Reason::UnknownProvider,
                format!("no parser for provider {:?}", envelope.provider),
            );
            return Taken::Yes;
        };
        let index = self.reference.snapshot();
        self.events.clear();
        if envelope.channel == UNRECOVERABLE_CHANNEL {
            let gaps = self.gaps.partition(tp);
            match gaps::observe_unrecoverable(gaps, provider, envelope, &mut self.events) {
                Ok(()) => out.push(Output::Outcome(Outcome::Skipped("backfill_unrecoverable"))),
                Err(detail) => Self::reject(out, Reason::UnparsablePayload, detail),
            }
            self.gap_outputs(&index, tp, input.offset, out);
            return Taken::Yes;
        }
        let parsed = provider.parse(&envelope.payload);
        if let Ok(Frame::Trades(trades)) = &parsed {
            let unknown = trades
                .iter()
                .any(|t| index.resolve(provider.id().as_str(), &t.symbol).is_none());
            if unknown && self.sync_due() {
                return Taken::AfterSupply;
            }
            let gaps = self.gaps.partition(tp);
            gaps::observe_frame(gaps, provider, envelope, trades, &mut self.events);
        }
        let dedup = self.dedup.partition(tp);
        self.outcomes.clear();
        normalize(
            provider,
            envelope,
            parsed,
            Rules {
                index: &index,
                limits: &self.settings.limits,
                now,
            },
            dedup,
            &mut self.outcomes,
        );
        self.gap_outputs(&index, tp, input.offset, out);
        out.extend(self.outcomes.drain(..).map(Output::Outcome));
        Taken::Yes
    }

    fn advance(&mut self, _now: Micros, _out: &mut Vec<Output>) {}

    fn exclude_stall(&mut self, _stall: Micros) {}

    fn snapshot(&self, tp: &Tp) -> Result<Vec<u8>, String> {
        Err(format!(
            "{tp}: the normalizer's state is rebuilt from its log, not checkpointed"
        ))
    }

    fn restore(&mut self, tp: &Tp, _: &[u8], _: i32, _: Micros) -> Result<(), String> {
        Err(format!(
            "{tp}: the normalizer's state is rebuilt from its log, not checkpointed"
        ))
    }

    fn start_fresh(&mut self, tp: &Tp, _now: Micros) {
        self.drop_state(tp);
    }

    fn drop_partition(&mut self, tp: &Tp) {
        self.drop_state(tp);
    }

    /// The batch committed: the duplicate filter evicts what is past its horizon. (An abort
    /// rebuilds the filters from the log; nothing is undone in place.)
    fn committed(&mut self) {
        self.dedup.commit(self.settings.dedup_horizon);
    }
}
