//! The vendor-neutral gRPC feed (`proto/tickflow/feed/v1/feed.proto`, provider `grpc`): one
//! bidirectional stream to the feed server carrying every symbol of this replica. It behaves as a
//! WebSocket connection does (`ws`): subscribe everything on connect, follow changes to the wanted
//! set by their difference, ping, and reconnect with backoff and jitter on loss, silence or data
//! silence.
//!
//! Every ServerMessage goes to Kafka as the bytes that arrived: [`RawCodec`] hands tonic's
//! messages over undecoded, and a copy is decoded only to classify it. Bytes that are not a
//! ServerMessage are dead letters; the stream carries on.
//!
//! An `https://` feed is reached over TLS (rustls through tonic): the server's certificate is
//! checked against the system's roots or the CA file of `[gateway.grpc.tls]`, and the client
//! presents its own certificate when one is configured (mutual TLS).
//!
//! Liveness is watched with the feed's own Ping/Pong, not HTTP/2 keepalive pings: servers built
//! on grpc-go close connections that ping more often than every five minutes by default.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tickflow_shared::domain::now_micros;
use tickflow_shared::proto::feed::{self, client_message, ClientMessage};
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use tickflow_providers::websocket::Defaults;

use crate::config::{ProviderSettings, TlsConfig};
use crate::metrics::*;
use crate::plan::Desired;
use crate::session::{
    after_loss, frame_type, lost, sleep_until_some, Counters, Ended, Loss, Paced,
};
use crate::sink::{DeadLetter, Frame, Output};
use crate::state::{Book, SubState};

mod codec;

pub use codec::{classify, ClientEncoder, RawCodec, RawDecoder, Received};

/// Provider id: the `provider` label, the raw topic suffix (`md.raw.grpc`), the config table.
pub const PROVIDER: &str = tickflow_providers::grpc::ID.as_str();
/// The one connection's name (the `connection` label); sessions are `grpc-c0-<µs>`.
const CONNECTION: &str = "grpc-c0";
const METHOD: &str = "/tickflow.feed.v1.MarketFeed/Stream";
/// Symbols per Subscribe or Unsubscribe message, so that no message grows without bound.
pub const SYMBOLS_PER_MESSAGE: usize = 500;

/// What `[gateway.grpc]` falls back to. The URL is required by validation; one stream carries
/// every symbol, so there is no per-connection limit.
pub const DEFAULTS: Defaults = Defaults {
    url: "http://127.0.0.1:50051",
    max_streams_per_connection: usize::MAX,
    max_messages_per_s: 20.0,
    // A generic feed may carry instruments that rarely trade: off unless configured.
    data_silence_timeout_ms: 0,
};

/// Everything the connection needs.
#[derive(Clone)]
pub struct Context {
    pub settings: ProviderSettings,
    /// Sent as `authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// For an `https://` url ([`client_tls`]).
    pub tls: Option<ClientTlsConfig>,
    pub output: Output,
    pub book: Book,
    pub labels: InstrumentLabels,
    pub shutdown: Shutdown,
}

/// The change from what the connection carries to what is wanted: provider symbols.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub fn diff(current: &Desired, wanted: &Desired) -> Diff {
    Diff {
        added: wanted
            .keys()
            .filter(|s| !current.contains_key(*s))
            .cloned()
            .collect(),
        removed: current
            .keys()
            .filter(|s| !wanted.contains_key(*s))
            .cloned()
            .collect(),
    }
}

/// Brings `symbols` to `wanted`, keeping the book in step.
fn follow(ctx: &Context, symbols: &mut Desired, wanted: &Desired) -> Diff {
    let change = diff(symbols, wanted);
    for symbol in &change.removed {
        symbols.remove(symbol);
        ctx.book.forget(PROVIDER, symbol);
    }
    for symbol in &change.added {
        let instrument = &wanted[symbol];
        ctx.book.want(PROVIDER, symbol, instrument, CONNECTION);
        symbols.insert(symbol.clone(), instrument.clone());
    }
    ctx.book
        .connection(PROVIDER, CONNECTION, |c| c.streams = symbols.len());
    change
}

/// Subscribe and Unsubscribe messages, paced to `max_messages_per_s`. Pings go out directly.
struct Outbox {
    paced: Paced<ClientMessage>,
}

impl Outbox {
    fn new(per_second: f64) -> Self {
        Self {
            paced: Paced::new(per_second),
        }
    }

    fn push(&mut self, symbols: &[String], subscribe: bool) {
        for chunk in symbols.chunks(SYMBOLS_PER_MESSAGE) {
            let symbols = chunk.to_vec();
            let kind = if subscribe {
                client_message::Kind::Subscribe(feed::Subscribe { symbols })
            } else {
                client_message::Kind::Unsubscribe(feed::Unsubscribe { symbols })
            };
            self.paced.push(ClientMessage { kind: Some(kind) });
        }
    }

    /// The next message, if one is queued and its turn has come.
    fn pop_due(&mut self) -> Option<ClientMessage> {
        self.paced.pop_due()
    }
}

/// The TLS client settings for an `https://` feed from `[gateway.grpc.tls]`, its files read
/// now; `None` for an `http://` one. An unreadable file is a configuration error naming its key.
pub fn client_tls(url: &str, tls: &TlsConfig) -> tickflow_shared::Result<Option<ClientTlsConfig>> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            tickflow_shared::Error::Config(format!(
                "`gateway.grpc.tls.{key}`: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_file {
        Some(path) => config.ca_certificate(Certificate::from_pem(read("ca_file", path)?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        config = config.identity(Identity::from_pem(
            read("cert_file", cert)?,
            read("key_file", key)?,
        ));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(Some(config))
}

/// Runs the feed until shutdown: follows `desired`, holding the stream while anything is wanted.
pub async fn run(ctx: Context, mut desired: watch::Receiver<Desired>) {
    let state =
        metrics::gauge!(CONNECTION_STATE, "provider" => PROVIDER, "connection" => CONNECTION);
    state.set(0.0);
    let mut symbols = Desired::new();
    let wanted = desired.borrow_and_update().clone();
    follow(&ctx, &mut symbols, &wanted);
    let mut attempt: u32 = 0;
    let mut delay: Option<Duration> = None;
    loop {
        // Wait out a backoff (or, with nothing to carry, for work), keeping up with changes.
        let mut until = delay.take().map(|d| Instant::now() + d);
        while until.is_some() || symbols.is_empty() {
            tokio::select! {
                () = ctx.shutdown.triggered() => return retire(&ctx),
                () = sleep_until_some(until) => until = None,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return retire(&ctx);
                    }
                    let wanted = desired.borrow_and_update().clone();
                    follow(&ctx, &mut symbols, &wanted);
                }
            }
        }
        let outcome = session(&ctx, &mut symbols, &mut desired).await;
        state.set(0.0);
        ctx.book.connection(PROVIDER, CONNECTION, |c| {
            c.up = false;
            c.session = None;
            c.since_us = now_micros();
        });
        match outcome {
            Ended::Shutdown => return retire(&ctx),
            Ended::Stopped => {
                tracing::info!(
                    provider = PROVIDER,
                    "nothing to subscribe any more: stream closed"
                );
            }
            Ended::Lost {
                reason,
                detail,
                rate_limited,
                healthy,
            } => {
                delay = Some(after_loss(
                    &ctx.book,
                    &ctx.settings,
                    PROVIDER,
                    CONNECTION,
                    symbols.keys(),
                    &mut attempt,
                    (reason, detail, rate_limited, healthy),
                ));
            }
        }
    }
}

fn retire(ctx: &Context) {
    metrics::gauge!(CONNECTION_STATE, "provider" => PROVIDER, "connection" => CONNECTION).set(0.0);
    ctx.book.drop_connection(PROVIDER, CONNECTION);
}

/// An error with its causes: tonic's transport errors say little at the top.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A status that ended or refused the stream, as a loss.
fn status_lost(status: &Status, rate_limited: bool, healthy: bool, opening: bool) -> Ended {
    let limited = rate_limited || status.code() == Code::ResourceExhausted;
    let reason = match status.code() {
        _ if limited => Loss::RateLimited,
        Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented => Loss::Refused,
        _ if opening => Loss::OpenFailed,
        _ => Loss::StreamError,
    };
    let detail = format!("{:?}: {}", status.code(), status.message());
    lost(reason, detail, limited, healthy)
}

/// One stream, from dial to loss.
async fn session(
    ctx: &Context,
    symbols: &mut Desired,
    desired: &mut watch::Receiver<Desired>,
) -> Ended {
    let s = &ctx.settings;
    // Room above our own limit, so that an oversized message is a dead letter, not a lost stream.
    let limit = ctx.output.max_frame_bytes().saturating_mul(4).max(16 << 20);
    let endpoint = match Endpoint::from_shared(s.url.clone()) {
        Ok(e) => e.connect_timeout(s.connect_timeout).tcp_nodelay(true),
        Err(e) => return lost(Loss::ConnectFailed, chain(&e), false, false),
    };
    let endpoint = match &ctx.tls {
        Some(tls) => match endpoint.tls_config(tls.clone()) {
            Ok(e) => e,
            Err(e) => return lost(Loss::ConnectFailed, chain(&e), false, false),
        },
        None => endpoint,
    };
    let wanted: Vec<String> = symbols.keys().cloned().collect();
    let mut outbox = Outbox::new(s.max_messages_per_s);
    outbox.push(&wanted, true);
    let (tx, rx) = mpsc::unbounded_channel::<ClientMessage>();
    // The first Subscribe is in the request before it is sent: a server may wait for it before
    // it answers the call.
    if let Some(first) = outbox.pop_due() {
        let _ = tx.send(first);
    }
    let opening = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| lost(Loss::ConnectFailed, chain(&e), false, false))?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(limit);
        grpc.ready()
            .await
            .map_err(|e| lost(Loss::ConnectFailed, chain(&e), false, false))?;
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        if let Some(token) = &ctx.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                lost(
                    Loss::Refused,
                    "the token is not a valid header value".into(),
                    false,
                    false,
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        grpc.streaming(request, PathAndQuery::from_static(METHOD), RawCodec)
            .await
            .map_err(|status| status_lost(&status, false, false, true))
    };
    let mut stream = tokio::select! {
        () = ctx.shutdown.triggered() => return Ended::Shutdown,
        result = tokio::time::timeout(s.connect_timeout, opening) => match result {
            Err(_) => return lost(Loss::ConnectTimeout, format!("no stream within {:?}", s.connect_timeout), false, false),
            Ok(Err(ended)) => return ended,
            Ok(Ok(response)) => response.into_inner(),
        },
    };
    let session_id: Arc<str> = format!("{CONNECTION}-{}", now_micros()).into();
    let trade_channel: Arc<str> = "trade".into();
    let control_channel: Arc<str> = "control".into();
    metrics::gauge!(CONNECTION_STATE, "provider" => PROVIDER, "connection" => CONNECTION).set(1.0);
    ctx.book.connection(PROVIDER, CONNECTION, |c| {
        c.up = true;
        c.session = Some(session_id.to_string());
        c.since_us = now_micros();
        c.streams = symbols.len();
    });
    ctx.book.set(PROVIDER, &wanted, SubState::Pending, None);
    tracing::info!(provider = PROVIDER, connection = CONNECTION, session = %session_id, url = %s.url, symbols = symbols.len(), "connected");

    let mut active: BTreeSet<String> = BTreeSet::new();
    let mut counters = Counters::new(PROVIDER, ctx.labels.clone());
    let last_data: Arc<AtomicI64> = ctx.book.last_data(PROVIDER);
    let mut sequence: i64 = 0;
    let mut rate_limited = false;
    let mut healthy = false;
    let mut last_message = Instant::now();
    let mut last_trade = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + s.ping_interval, s.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_id: u64 = 0;

    loop {
        let silence_at = last_message + s.silence_timeout;
        let data_silence_at = s
            .data_silence_timeout
            .map(|d| last_trade + d)
            .filter(|_| !symbols.is_empty());
        let send_at = outbox.paced.due_at();
        let received = tokio::select! {
            biased;
            () = ctx.shutdown.triggered() => return Ended::Shutdown,
            changed = desired.changed() => {
                if changed.is_err() {
                    return Ended::Shutdown;
                }
                let wanted = desired.borrow_and_update().clone();
                let change = follow(ctx, symbols, &wanted);
                if symbols.is_empty() {
                    return Ended::Stopped;
                }
                for gone in &change.removed {
                    active.remove(gone);
                }
                outbox.push(&change.removed, false);
                outbox.push(&change.added, true);
                ctx.book.set(PROVIDER, &change.added, SubState::Pending, None);
                continue;
            }
            () = async { sleep_until(send_at.unwrap_or_else(Instant::now)).await }, if send_at.is_some() => {
                if let Some(message) = outbox.pop_due() {
                    if tx.send(message).is_err() {
                        return lost(Loss::SendFailed, "the request stream is closed".into(), rate_limited, healthy);
                    }
                }
                continue;
            }
            _ = ping.tick() => {
                ping_id += 1;
                let message = ClientMessage {
                    kind: Some(client_message::Kind::Ping(feed::Ping { id: ping_id })),
                };
                if tx.send(message).is_err() {
                    return lost(Loss::SendFailed, "the request stream is closed".into(), rate_limited, healthy);
                }
                continue;
            }
            () = sleep_until(silence_at) => {
                return lost(Loss::Silent, format!("no message for {:?}", s.silence_timeout), rate_limited, healthy);
            }
            () = async { sleep_until(data_silence_at.unwrap_or_else(Instant::now)).await }, if data_silence_at.is_some() => {
                return lost(Loss::NoData, format!("no trade for {:?} (other messages still arrive)", s.data_silence_timeout.unwrap_or_default()), rate_limited, healthy);
            }
            received = stream.message() => received,
        };
        let received_at = now_micros();
        let payload = match received {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return lost(
                    Loss::Closed,
                    "the server ended the stream (status OK)".into(),
                    rate_limited,
                    healthy,
                )
            }
            Err(status)
                if status.code() == Code::OutOfRange && status.message().contains("too large") =>
            {
                // tonic refuses the message before reading it: only its description is kept.
                let frame = Frame {
                    provider: PROVIDER,
                    connection_id: session_id.clone(),
                    sequence,
                    received_at,
                    channel: "dead-letter".into(),
                    key: None,
                    payload: Bytes::from(format!("tonic: {}", status.message())),
                    dead_letter: Some(DeadLetter::new(
                        "oversized",
                        format!(
                            "{}: beyond the gRPC limit of {limit} bytes, the stream fails",
                            status.message()
                        ),
                    )),
                };
                ctx.output.send(frame).await;
                return lost(
                    Loss::Oversized,
                    status.message().to_string(),
                    rate_limited,
                    healthy,
                );
            }
            Err(status) => return status_lost(&status, rate_limited, healthy, false),
        };
        last_message = Instant::now();
        counters.bytes.increment(payload.len() as u64);
        let this = sequence;
        sequence += 1;
        // An oversized message is not decoded: `Output::send` dead-letters it.
        let received = (payload.len() <= ctx.output.max_frame_bytes()).then(|| classify(&payload));
        let mut key = None;
        let mut channel = &control_channel;
        let mut dead = None;
        match received {
            Some(Received::Trade { symbol }) => {
                frame_type(PROVIDER, "data");
                counters.message(symbol.as_deref(), symbols);
                last_trade = last_message;
                last_data.store(received_at, Ordering::Relaxed);
                healthy = true;
                channel = &trade_channel;
                if let Some(sym) = &symbol {
                    if symbols.contains_key(sym) && active.insert(sym.clone()) {
                        ctx.book.set(PROVIDER, [sym], SubState::Active, None);
                    }
                }
                key = symbol;
            }
            Some(Received::Subscribed(symbol)) => {
                frame_type(PROVIDER, "subscribed");
                if symbols.contains_key(&symbol) {
                    active.insert(symbol.clone());
                    ctx.book.set(PROVIDER, [&symbol], SubState::Active, None);
                }
            }
            Some(Received::Unsubscribed { symbol, message }) => {
                frame_type(PROVIDER, "unsubscribed");
                // Still wanted: the server ended it on its own. The next stream asks again.
                if symbols.contains_key(&symbol) {
                    active.remove(&symbol);
                    let why = format!("ended by the server: {message}");
                    tracing::warn!(provider = PROVIDER, connection = CONNECTION, symbol, reason = %message, "the server ended a subscription");
                    ctx.book
                        .set(PROVIDER, [&symbol], SubState::Failed, Some(&why));
                }
            }
            Some(Received::Rejected { symbol, message }) => {
                frame_type(PROVIDER, "rejected");
                tracing::warn!(provider = PROVIDER, connection = CONNECTION, symbol, error = %message, "the server refused a subscription");
                if symbols.contains_key(&symbol) {
                    active.remove(&symbol);
                    ctx.book
                        .set(PROVIDER, [&symbol], SubState::Failed, Some(&message));
                }
            }
            Some(Received::Control(kind)) => frame_type(PROVIDER, kind),
            Some(Received::Error {
                code,
                message,
                rate_limited: limited,
            }) => {
                frame_type(PROVIDER, "error");
                rate_limited |= limited;
                tracing::error!(provider = PROVIDER, connection = CONNECTION, code, error = %message, rate_limited = limited, "the server reports an error");
                ctx.book.connection(PROVIDER, CONNECTION, |c| {
                    c.last_error = Some(format!("{code}: {message}"))
                });
            }
            Some(Received::Malformed(reason)) => {
                frame_type(PROVIDER, "malformed");
                dead = Some(DeadLetter::new("malformed", reason));
            }
            None => frame_type(PROVIDER, "oversized"),
        }
        let frame = Frame {
            provider: PROVIDER,
            connection_id: session_id.clone(),
            sequence: this,
            received_at,
            channel: channel.clone(),
            key,
            payload,
            dead_letter: dead,
        };
        // Backpressure: the server waits too (HTTP/2 flow control). Time spent waiting on our own
        // queue is not the server's silence.
        let waiting = Instant::now();
        if !ctx.output.send(frame).await {
            return Ended::Shutdown;
        }
        let waited = waiting.elapsed();
        last_message += waited;
        last_trade += waited;
    }
}

#[cfg(test)]
mod tests;
