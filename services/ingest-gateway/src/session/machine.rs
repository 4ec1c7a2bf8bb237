//! One connected session as a state machine without I/O, shared by the WebSocket (`ws`) and gRPC
//! (`grpc`) adapters. The adapter owns the socket and feeds the machine what happened: a message
//! heard ([`Machine::message`]), a change of what to carry ([`Machine::request`]), the time
//! ([`Machine::poll`]); it carries out what the machine asks ([`Action`]): send a paced request,
//! ping, close, end the session with its [`Ended`]. Every decision of a session is made here:
//! silence and data silence, ping times, pacing, what a confirmation or a refusal means for each
//! subscription, whether the session was healthy or rate limited when it was lost.
//!
//! The machine reads no clock: every call takes `now`, and [`Machine::deadline`] says when the
//! adapter must call [`Machine::poll`] next. Its tests drive it with tokio's paused time.
//!
//! It writes the [`Book`] (in memory: what `/admin` shows) and the session's metrics, and nothing
//! else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tickflow_providers::Inbound;
use tickflow_shared::domain::now_micros;
use tickflow_shared::telemetry::InstrumentLabels;
use tokio::time::Instant;

use super::counters::{frame_type, Counters};
use super::loss::{lost, Ended, Loss};
use super::paced::Paced;
use crate::config::ProviderSettings;
use crate::metrics::CONNECTION_STATE;
use crate::sink::{DeadLetter, Frame};
use crate::state::{Book, SubState};

/// How long a closing connection waits for the provider to answer our close frame, reading what
/// still arrives meanwhile.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the machine asks its adapter to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Action<M> {
    /// Send this subscribe or unsubscribe request (its turn under the provider's rate limit).
    Send(M),
    /// Send a ping (the transport's own, or the feed's `Ping { id }`).
    Ping(u64),
    /// Start the closing handshake; keep reading until the provider closes too, or until the
    /// machine ends the session ([`CLOSE_WAIT`]).
    Close,
    /// The session is over.
    End(Ended),
}

/// One message from the provider, as its adapter classified it.
#[derive(Debug)]
pub(crate) enum Heard {
    /// Market data; `symbol` is the provider symbol when the message names one.
    Data { symbol: Option<String> },
    /// A documented message that is not market data; the name is a metric label.
    Control(&'static str),
    /// Subscriptions confirmed, by request id and/or by symbol.
    Subscribed {
        request_id: Option<u64>,
        symbols: Vec<String>,
    },
    /// A request refused. Neither id nor symbols: every subscription not yet active failed.
    Rejected {
        request_id: Option<u64>,
        symbols: Vec<String>,
        message: String,
    },
    /// The provider ended a subscription on its own; the next session asks again.
    Ended { symbol: String, message: String },
    /// An error about the session as a whole.
    Error { message: String, rate_limited: bool },
    /// Not a message this provider sends: a dead letter with the reason.
    Malformed(String),
    /// Not classified (too large, or not text): the frame-type label and the dead letter, if
    /// the adapter already knows it (an oversized frame is dead-lettered by the sink).
    Unread {
        kind: &'static str,
        dead: Option<DeadLetter>,
    },
}

impl From<Inbound> for Heard {
    fn from(inbound: Inbound) -> Self {
        match inbound {
            Inbound::Data { symbol } => Heard::Data { symbol },
            Inbound::Control(kind) => Heard::Control(kind),
            Inbound::Subscribed {
                request_id,
                symbols,
            } => Heard::Subscribed {
                request_id,
                symbols,
            },
            Inbound::Rejected {
                request_id,
                symbols,
                message,
            } => Heard::Rejected {
                request_id,
                symbols,
                message,
            },
            Inbound::Error {
                message,
                rate_limited,
            } => Heard::Error {
                message,
                rate_limited,
            },
            Inbound::Malformed(reason) => Heard::Malformed(reason),
        }
    }
}

/// Provider symbol → canonical instrument: what a connection carries.
pub(crate) type Symbols = BTreeMap<String, String>;

/// A subscribe request waiting for its acknowledgement: request id and symbols.
type Tracked = Option<(u64, Vec<String>)>;

pub(crate) struct Machine<M> {
    provider: &'static str,
    connection: String,
    session: Arc<str>,
    data_channel: Arc<str>,
    control_channel: Arc<str>,
    book: Book,
    silence: Duration,
    data_silence: Option<Duration>,
    ping_interval: Duration,
    /// Whether the transport has a closing handshake (WebSocket) or ends at once (gRPC).
    handshake: bool,
    outbox: Paced<(M, Tracked)>,
    next_request: u64,
    requests: HashMap<u64, Vec<String>>,
    active: BTreeSet<String>,
    counters: Counters,
    last_data: Arc<AtomicI64>,
    sequence: i64,
    rate_limited: bool,
    healthy: bool,
    last_frame: Instant,
    last_market_data: Instant,
    next_ping: Instant,
    next_ping_id: u64,
    /// Set once we decided to close: what the session ends with, and when at the latest.
    closing: Option<(Ended, Instant)>,
    /// The session was ended ([`Action::End`] given): nothing more is due.
    over: bool,
}

impl<M> Machine<M> {
    /// A session of `connection` about to be opened at `now`. `handshake`: the transport closes
    /// with a handshake (WebSocket) rather than at once (gRPC).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        provider: &'static str,
        connection: &str,
        data_channel: &str,
        settings: &ProviderSettings,
        handshake: bool,
        book: &Book,
        labels: InstrumentLabels,
        now: Instant,
    ) -> Self {
        Self {
            provider,
            connection: connection.to_string(),
            session: format!("{connection}-{}", now_micros()).into(),
            data_channel: data_channel.into(),
            control_channel: "control".into(),
            book: book.clone(),
            silence: settings.silence_timeout,
            data_silence: settings.data_silence_timeout,
            ping_interval: settings.ping_interval,
            handshake,
            outbox: Paced::new(settings.max_messages_per_s, now),
            next_request: 1,
            requests: HashMap::new(),
            active: BTreeSet::new(),
            counters: Counters::new(provider, labels),
            last_data: book.last_data(provider),
            sequence: 0,
            rate_limited: false,
            healthy: false,
            last_frame: now,
            last_market_data: now,
            next_ping: now + settings.ping_interval,
            next_ping_id: 1,
            closing: None,
            over: false,
        }
    }

    /// The connection is up at `now`, carrying `symbols`: silence and pings count from here.
    pub fn connected(&mut self, now: Instant, symbols: &Symbols) {
        self.last_frame = now;
        self.last_market_data = now;
        self.next_ping = now + self.ping_interval;
        let (provider, connection) = (self.provider, self.connection.clone());
        metrics::gauge!(CONNECTION_STATE, "provider" => provider, "connection" => connection.clone())
            .set(1.0);
        self.book.connection(provider, &connection, |c| {
            c.up = true;
            c.session = Some(self.session.to_string());
            c.since_us = now_micros();
            c.streams = symbols.len();
        });
        tracing::info!(provider, connection = %connection, session = %self.session, streams = symbols.len(), "connected");
    }

    /// Queues the requests that subscribe (or unsubscribe) `symbols`, `chunk` per request;
    /// `build(chunk, id)` makes a request's messages. Subscriptions become pending; a
    /// subscribe's id is remembered until the provider answers it.
    pub fn request(
        &mut self,
        symbols: &[String],
        subscribe: bool,
        chunk: usize,
        build: impl Fn(&[String], u64) -> Vec<M>,
    ) {
        if subscribe {
            self.book
                .set(self.provider, symbols, SubState::Pending, None);
        } else {
            for s in symbols {
                self.active.remove(s);
            }
        }
        for part in symbols.chunks(chunk.max(1)) {
            let id = self.next_request;
            self.next_request += 1;
            for m in build(part, id) {
                let tracked = subscribe.then(|| (id, part.to_vec()));
                self.outbox.push((m, tracked));
            }
        }
    }

    /// What is queued to send, in order.
    #[cfg(test)]
    pub fn queued(&self) -> impl Iterator<Item = &M> {
        self.outbox.queued().map(|(m, _)| m)
    }

    /// Any frame at all arrived (data, control, a ping or pong): the connection is not silent.
    pub fn heard(&mut self, now: Instant) {
        self.last_frame = now;
    }

    /// Time the adapter spent waiting on our own queue: it is not the provider's silence.
    pub fn waited(&mut self, waited: Duration) {
        self.last_frame += waited;
        self.last_market_data += waited;
    }

    /// A message received at `received_at` (µs) that carried `payload`, as classified: the
    /// machine updates the subscriptions and returns the frame to forward.
    pub fn message(
        &mut self,
        now: Instant,
        received_at: i64,
        heard: Heard,
        payload: Bytes,
        symbols: &Symbols,
    ) -> Frame {
        self.heard(now);
        self.counters.bytes.increment(payload.len() as u64);
        let provider = self.provider;
        let mut channel = &self.control_channel;
        let mut key = None;
        let mut dead = None;
        match heard {
            Heard::Data { symbol } => {
                frame_type(provider, "data");
                self.counters.message(symbol.as_deref(), symbols);
                self.last_market_data = now;
                self.last_data.store(received_at, Ordering::Relaxed);
                self.healthy = true;
                channel = &self.data_channel;
                if let Some(sym) = &symbol {
                    if symbols.contains_key(sym) && self.active.insert(sym.clone()) {
                        self.book.set(provider, [sym], SubState::Active, None);
                    }
                }
                key = symbol;
            }
            Heard::Control(kind) => frame_type(provider, kind),
            Heard::Subscribed {
                request_id,
                symbols: confirmed,
            } => {
                frame_type(provider, "subscribed");
                let list = if confirmed.is_empty() {
                    request_id
                        .and_then(|id| self.requests.remove(&id))
                        .unwrap_or_default()
                } else {
                    confirmed
                };
                let list: Vec<String> = list
                    .into_iter()
                    .filter(|s| symbols.contains_key(s))
                    .collect();
                self.active.extend(list.iter().cloned());
                self.book.set(provider, &list, SubState::Active, None);
            }
            Heard::Rejected {
                request_id,
                symbols: named,
                message,
            } => {
                frame_type(provider, "rejected");
                let list: Vec<String> = if !named.is_empty() {
                    named
                } else if let Some(list) = request_id.and_then(|id| self.requests.remove(&id)) {
                    list
                } else {
                    symbols
                        .keys()
                        .filter(|s| !self.active.contains(*s))
                        .cloned()
                        .collect()
                };
                let list: Vec<String> = list
                    .into_iter()
                    .filter(|s| symbols.contains_key(s))
                    .collect();
                for s in &list {
                    self.active.remove(s);
                }
                tracing::warn!(provider, connection = %self.connection, symbols = ?list, error = %message, "the provider refused a subscription");
                self.book
                    .set(provider, &list, SubState::Failed, Some(&message));
            }
            Heard::Ended { symbol, message } => {
                frame_type(provider, "unsubscribed");
                if symbols.contains_key(&symbol) {
                    self.active.remove(&symbol);
                    let why = format!("ended by the server: {message}");
                    tracing::warn!(provider, connection = %self.connection, symbol, reason = %message, "the provider ended a subscription");
                    self.book
                        .set(provider, [&symbol], SubState::Failed, Some(&why));
                }
            }
            Heard::Error {
                message,
                rate_limited,
            } => {
                frame_type(provider, "error");
                self.rate_limited |= rate_limited;
                tracing::error!(provider, connection = %self.connection, error = %message, rate_limited, "the provider reports an error");
                self.book
                    .connection(provider, &self.connection, |c| c.last_error = Some(message));
            }
            Heard::Malformed(reason) => {
                frame_type(provider, "malformed");
                dead = Some(DeadLetter::new("malformed", reason));
            }
            Heard::Unread { kind, dead: d } => {
                frame_type(provider, kind);
                dead = d;
            }
        }
        let sequence = self.sequence;
        self.sequence += 1;
        Frame {
            provider,
            connection_id: self.session.clone(),
            sequence,
            received_at,
            channel: channel.clone(),
            key,
            payload,
            dead_letter: dead,
        }
    }

    /// A frame the transport failed on (it ends the session): a dead letter with its
    /// description, numbered after the last frame forwarded.
    pub fn failed_frame(&self, received_at: i64, description: String, dead: DeadLetter) -> Frame {
        Frame {
            provider: self.provider,
            connection_id: self.session.clone(),
            sequence: self.sequence,
            received_at,
            channel: "dead-letter".into(),
            key: None,
            payload: Bytes::from(description),
            dead_letter: Some(dead),
        }
    }

    /// The session lost for `reason`, with what is known of it: whether data flowed (the
    /// backoff starts over) and whether the provider said we send too much.
    pub fn lost(&self, reason: Loss, detail: String) -> Ended {
        lost(reason, detail, self.rate_limited, self.healthy)
    }

    /// [`Machine::lost`], when the loss itself may say the provider limits us.
    pub fn lost_limited(&self, reason: Loss, detail: String, limited: bool) -> Ended {
        let limited = limited || self.rate_limited;
        let reason = if limited { Loss::RateLimited } else { reason };
        lost(reason, detail, limited, self.healthy)
    }

    /// The provider closed, with a close code that says "too many requests" or not.
    pub fn closed_by_provider(&self, code: u16, reason: &str, policy: bool) -> Ended {
        let limited = policy || self.rate_limited;
        let loss = if limited {
            Loss::RateLimited
        } else {
            Loss::Closed
        };
        lost(
            loss,
            format!("closed by the provider: {code} {reason}"),
            limited,
            self.healthy,
        )
    }

    /// We decided to end the session (shutdown, retired, silent): with a closing handshake, a
    /// [`Action::Close`] and the session goes on reading until the provider closes or
    /// [`CLOSE_WAIT`] passes; without one it ends now.
    pub fn close(&mut self, now: Instant, ended: Ended) -> Action<M> {
        if !self.handshake {
            self.over = true;
            return Action::End(ended);
        }
        if self.closing.is_none() {
            self.closing = Some((ended, now + CLOSE_WAIT));
        }
        Action::Close
    }

    /// Whether the session is closing: no more requests, pings or commands.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// The provider answered our close (or the stream ended while closing): how the session
    /// ends. `None` when it was not closing.
    pub fn close_answered(&mut self) -> Option<Ended> {
        self.over = true;
        self.closing.take().map(|(ended, _)| ended)
    }

    /// When [`Machine::poll`] must be called next (`carrying`: the connection carries symbols,
    /// so data silence counts).
    pub fn deadline(&self, carrying: bool) -> Instant {
        if let Some((_, until)) = &self.closing {
            return *until;
        }
        let mut at = (self.last_frame + self.silence).min(self.next_ping);
        if let Some(d) = self.data_silence.filter(|_| carrying) {
            at = at.min(self.last_market_data + d);
        }
        if let Some(send) = self.outbox.due_at() {
            at = at.min(send);
        }
        at
    }

    /// What is due at `now`, one action per call; `None` once nothing is.
    pub fn poll(&mut self, now: Instant, carrying: bool) -> Option<Action<M>> {
        if self.over {
            return None;
        }
        if let Some((_, until)) = &self.closing {
            if now >= *until {
                self.over = true;
                return self.closing.take().map(|(ended, _)| Action::End(ended));
            }
            return None;
        }
        if let Some((message, tracked)) = self.outbox.pop_due(now) {
            if let Some((id, list)) = tracked {
                self.requests.insert(id, list);
            }
            return Some(Action::Send(message));
        }
        if now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            let id = self.next_ping_id;
            self.next_ping_id += 1;
            return Some(Action::Ping(id));
        }
        if now >= self.last_frame + self.silence {
            let ended = self.lost(Loss::Silent, format!("no frame for {:?}", self.silence));
            return Some(self.close(now, ended));
        }
        if let Some(d) = self.data_silence.filter(|_| carrying) {
            if now >= self.last_market_data + d {
                let ended = self.lost(
                    Loss::NoData,
                    format!("no market data for {d:?} (other frames still arrive)"),
                );
                return Some(self.close(now, ended));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
