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

use std::time::Duration;

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
use crate::session::{after_loss, lost, sleep_until_some, Action, Ended, Heard, Loss, Machine};
use crate::sink::{DeadLetter, Output};
use crate::state::Book;

mod codec;
mod replay;

pub use codec::{classify, ClientEncoder, RawCodec, RawDecoder, Received};
pub use replay::{Replayer, CALLS_PER_S as REPLAY_CALLS_PER_S};

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

/// The Subscribe (or Unsubscribe) message for one chunk of symbols ([`SYMBOLS_PER_MESSAGE`]).
fn request(symbols: &[String], subscribe: bool) -> Vec<ClientMessage> {
    let symbols = symbols.to_vec();
    let kind = if subscribe {
        client_message::Kind::Subscribe(feed::Subscribe { symbols })
    } else {
        client_message::Kind::Unsubscribe(feed::Unsubscribe { symbols })
    };
    vec![ClientMessage { kind: Some(kind) }]
}

impl From<Received> for Heard {
    fn from(received: Received) -> Self {
        match received {
            Received::Trade { symbol } => Heard::Data { symbol },
            Received::Subscribed(symbol) => Heard::Subscribed {
                request_id: None,
                symbols: vec![symbol],
            },
            Received::Unsubscribed { symbol, message } => Heard::Ended { symbol, message },
            Received::Rejected { symbol, message } => Heard::Rejected {
                request_id: None,
                symbols: vec![symbol],
                message,
            },
            Received::Control(kind) => Heard::Control(kind),
            Received::Error {
                code,
                message,
                rate_limited,
            } => Heard::Error {
                message: format!("{code}: {message}"),
                rate_limited,
            },
            Received::Malformed(reason) => Heard::Malformed(reason),
        }
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

/// A status that ended or refused the stream, as a loss: its reason, its detail, and whether the
/// server says we send too much.
fn status_loss(status: &Status, opening: bool) -> (Loss, String, bool) {
    let limited = status.code() == Code::ResourceExhausted;
    let reason = match status.code() {
        _ if limited => Loss::RateLimited,
        Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented => Loss::Refused,
        _ if opening => Loss::OpenFailed,
        _ => Loss::StreamError,
    };
    let detail = format!("{:?}: {}", status.code(), status.message());
    (reason, detail, limited)
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
    let mut m: Machine<ClientMessage> = Machine::new(
        PROVIDER,
        CONNECTION,
        "trade",
        s,
        false,
        &ctx.book,
        ctx.labels.clone(),
        Instant::now(),
    );
    let wanted: Vec<String> = symbols.keys().cloned().collect();
    m.request(&wanted, true, SYMBOLS_PER_MESSAGE, |c, _| request(c, true));
    let (tx, rx) = mpsc::unbounded_channel::<ClientMessage>();
    // The first Subscribe is in the request before it is sent: a server may wait for it before
    // it answers the call.
    if let Some(Action::Send(first)) = m.poll(Instant::now(), true) {
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
            .map_err(|status| {
                let (reason, detail, limited) = status_loss(&status, true);
                lost(reason, detail, limited, false)
            })
    };
    let mut stream = tokio::select! {
        () = ctx.shutdown.triggered() => return Ended::Shutdown,
        result = tokio::time::timeout(s.connect_timeout, opening) => match result {
            Err(_) => return lost(Loss::ConnectTimeout, format!("no stream within {:?}", s.connect_timeout), false, false),
            Ok(Err(ended)) => return ended,
            Ok(Ok(response)) => response.into_inner(),
        },
    };
    m.connected(Instant::now(), symbols);

    loop {
        while let Some(action) = m.poll(Instant::now(), !symbols.is_empty()) {
            let message = match action {
                Action::Send(message) => message,
                Action::Ping(id) => ClientMessage {
                    kind: Some(client_message::Kind::Ping(feed::Ping { id })),
                },
                // No closing handshake: the machine ends the session instead.
                Action::Close => continue,
                Action::End(ended) => return ended,
            };
            if tx.send(message).is_err() {
                return m.lost(Loss::SendFailed, "the request stream is closed".into());
            }
        }
        let deadline = m.deadline(!symbols.is_empty());
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
                m.request(&change.removed, false, SYMBOLS_PER_MESSAGE, |c, _| request(c, false));
                m.request(&change.added, true, SYMBOLS_PER_MESSAGE, |c, _| request(c, true));
                continue;
            }
            () = sleep_until(deadline) => continue,
            received = stream.message() => received,
        };
        let received_at = now_micros();
        let payload = match received {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return m.lost(
                    Loss::Closed,
                    "the server ended the stream (status OK)".into(),
                )
            }
            Err(status)
                if status.code() == Code::OutOfRange && status.message().contains("too large") =>
            {
                // tonic refuses the message before reading it: only its description is kept.
                let frame = m.failed_frame(
                    received_at,
                    format!("tonic: {}", status.message()),
                    DeadLetter::new(
                        "oversized",
                        format!(
                            "{}: beyond the gRPC limit of {limit} bytes, the stream fails",
                            status.message()
                        ),
                    ),
                );
                ctx.output.send(frame).await;
                return m.lost(Loss::Oversized, status.message().to_string());
            }
            Err(status) => {
                let (reason, detail, limited) = status_loss(&status, false);
                return m.lost_limited(reason, detail, limited);
            }
        };
        // An oversized message is not decoded: `Output::send` dead-letters it.
        let heard = if payload.len() <= ctx.output.max_frame_bytes() {
            Heard::from(classify(&payload))
        } else {
            Heard::Unread {
                kind: "oversized",
                dead: None,
            }
        };
        let frame = m.message(Instant::now(), received_at, heard, payload, symbols);
        // Backpressure: the server waits too (HTTP/2 flow control). Time spent waiting on our own
        // queue is not the server's silence.
        let waiting = Instant::now();
        if !ctx.output.send(frame).await {
            return Ended::Shutdown;
        }
        m.waited(waiting.elapsed());
    }
}

#[cfg(test)]
mod tests;
