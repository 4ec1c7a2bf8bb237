//! One WebSocket connection to a provider, kept alive for as long as it has subscriptions:
//! connect, subscribe everything it carries, forward every frame, answer pings, and reconnect
//! with exponential backoff, full jitter and a ceiling when anything goes wrong.
//!
//! Things tungstenite leaves to us, handled here:
//! - it has no idle timeout: a connection with no frame for `silence_timeout` is dropped, and one
//!   with no *market data* for `data_silence_timeout` too (a feed that only pings is not healthy);
//! - it writes pong replies only while the socket is polled: while the Kafka queue pushes back,
//!   the socket is flushed every second so the provider still gets its pongs;
//! - its default message limit is 16 MiB: ours is set above `max_frame_bytes`, so a large frame
//!   becomes a dead letter instead of a dead connection;
//! - providers limit what a client sends (Binance: 5 messages/s): outgoing messages are paced.
//!
//! A text frame that is not UTF-8 ends the connection: RFC 6455 §8.1 requires it, and
//! tokio-tungstenite stops the stream on that error. It is counted, logged and dead-lettered
//! (with the decoder's description: the bytes themselves are not handed out), then the connection
//! is re-established at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tickflow_shared::domain::now_micros;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::telemetry::InstrumentLabels;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::ProviderSettings;
use crate::metrics::*;
use crate::session::{
    after_loss, frame_type, lost, sleep_until_some, Counters, Ended, Loss, Paced,
};
use crate::sink::{DeadLetter, Frame, Offer, Output};
use crate::state::{Book, SubState};
use tickflow_providers::{Inbound, WebSocket};

/// A change to what one connection carries: (provider symbol, canonical instrument) pairs.
#[derive(Debug)]
pub enum Command {
    Subscribe(Vec<(String, String)>),
    Unsubscribe(Vec<String>),
}

/// Everything a connection needs, shared by the provider's connections.
#[derive(Clone)]
pub struct Context {
    pub protocol: &'static dyn WebSocket,
    pub settings: ProviderSettings,
    pub token: Option<String>,
    pub output: Output,
    pub book: Book,
    pub labels: InstrumentLabels,
    pub shutdown: Shutdown,
}

/// Runs connection `index` of the provider until it is retired (its command channel closes)
/// or shutdown.
pub async fn run(ctx: Context, index: usize, mut commands: mpsc::UnboundedReceiver<Command>) {
    let provider = ctx.protocol.provider();
    let name = format!("{provider}-c{index}");
    let mut symbols: BTreeMap<String, String> = BTreeMap::new();
    let mut attempt: u32 = 0;
    let mut delay: Option<Duration> = None;
    let state =
        metrics::gauge!(CONNECTION_STATE, "provider" => provider, "connection" => name.clone());
    state.set(0.0);
    loop {
        // Wait out a backoff (or, with nothing to carry, for work), keeping up with commands.
        let mut until = delay.take().map(|d| Instant::now() + d);
        while until.is_some() || symbols.is_empty() {
            tokio::select! {
                () = ctx.shutdown.triggered() => return retire(&ctx, &name),
                () = sleep_until_some(until) => until = None,
                command = commands.recv() => match command {
                    Some(c) => apply(&ctx, &name, &mut symbols, &c),
                    None => return retire(&ctx, &name),
                },
            }
        }
        let outcome = session(&ctx, &name, &mut symbols, &mut commands).await;
        state.set(0.0);
        match outcome {
            Ended::Shutdown | Ended::Stopped => return retire(&ctx, &name),
            Ended::Lost {
                reason,
                detail,
                rate_limited,
                healthy,
            } => {
                delay = Some(after_loss(
                    &ctx.book,
                    &ctx.settings,
                    provider,
                    &name,
                    symbols.keys(),
                    &mut attempt,
                    (reason, detail, rate_limited, healthy),
                ));
            }
        }
    }
}

fn retire(ctx: &Context, name: &str) {
    let provider = ctx.protocol.provider();
    metrics::gauge!(CONNECTION_STATE, "provider" => provider, "connection" => name.to_string())
        .set(0.0);
    ctx.book.drop_connection(provider, name);
}

/// Applies a command while the connection is down: the next session subscribes the result.
fn apply(ctx: &Context, name: &str, symbols: &mut BTreeMap<String, String>, command: &Command) {
    let provider = ctx.protocol.provider();
    match command {
        Command::Subscribe(pairs) => {
            for (symbol, instrument) in pairs {
                ctx.book.want(provider, symbol, instrument, name);
                symbols.insert(symbol.clone(), instrument.clone());
            }
        }
        Command::Unsubscribe(list) => {
            for symbol in list {
                symbols.remove(symbol);
                ctx.book.forget(provider, symbol);
            }
        }
    }
    ctx.book
        .connection(provider, name, |c| c.streams = symbols.len());
}

/// A subscribe request waiting for its acknowledgement: request id and symbols.
type Tracked = Option<(u64, Vec<String>)>;

/// Subscribe and unsubscribe requests, paced to the provider's limit.
struct Outbox {
    paced: Paced<(String, Tracked)>,
    next_request: u64,
}

impl Outbox {
    fn new(per_second: f64) -> Self {
        Self {
            paced: Paced::new(per_second),
            next_request: 1,
        }
    }

    fn requests(&mut self, protocol: &dyn WebSocket, symbols: &[String], subscribe: bool) {
        for chunk in symbols.chunks(protocol.symbols_per_request().max(1)) {
            let id = self.next_request;
            self.next_request += 1;
            let messages = if subscribe {
                protocol.subscribe(chunk, id)
            } else {
                protocol.unsubscribe(chunk, id)
            };
            for m in messages {
                let tracked = subscribe.then(|| (id, chunk.to_vec()));
                self.paced.push((m, tracked));
            }
        }
    }
}

/// One connected session, from dial to loss.
async fn session(
    ctx: &Context,
    name: &str,
    symbols: &mut BTreeMap<String, String>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Ended {
    let protocol = ctx.protocol;
    let provider = protocol.provider();
    let s = &ctx.settings;
    let url = protocol.connect_url(&s.url, ctx.token.as_deref());
    // Room above our own limit, so that an oversized frame is a dead letter, not a lost
    // connection.
    let limit = ctx.output.max_frame_bytes().saturating_mul(4).max(16 << 20);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let connecting = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
    let mut ws = tokio::select! {
        () = ctx.shutdown.triggered() => return Ended::Shutdown,
        result = tokio::time::timeout(s.connect_timeout, connecting) => match result {
            Err(_) => return lost(Loss::ConnectTimeout, format!("no connection within {:?}", s.connect_timeout), false, false),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status();
                let limited = status.as_u16() == 429 || status.as_u16() == 418;
                return lost(Loss::HandshakeRefused, format!("HTTP {status}"), limited, false);
            }
            Ok(Err(e)) => return lost(Loss::ConnectFailed, e.to_string(), false, false),
            Ok(Ok((ws, _response))) => ws,
        },
    };
    let session_id: Arc<str> = format!("{name}-{}", now_micros()).into();
    let data_channel: Arc<str> = protocol.data_channel().into();
    let control_channel: Arc<str> = "control".into();
    metrics::gauge!(CONNECTION_STATE, "provider" => provider, "connection" => name.to_string())
        .set(1.0);
    ctx.book.connection(provider, name, |c| {
        c.up = true;
        c.session = Some(session_id.to_string());
        c.since_us = now_micros();
        c.streams = symbols.len();
    });
    tracing::info!(provider, connection = %name, session = %session_id, streams = symbols.len(), "connected");

    let mut outbox = Outbox::new(s.max_messages_per_s);
    let wanted: Vec<String> = symbols.keys().cloned().collect();
    outbox.requests(protocol, &wanted, true);
    ctx.book.set(provider, &wanted, SubState::Pending, None);
    let mut requests: HashMap<u64, Vec<String>> = HashMap::new();
    let mut active: BTreeSet<String> = BTreeSet::new();
    let mut counters = Counters::new(provider, ctx.labels.clone());
    let last_data: Arc<AtomicI64> = ctx.book.last_data(provider);
    let mut sequence: i64 = 0;
    let mut rate_limited = false;
    let mut healthy = false;
    let mut last_frame = Instant::now();
    let mut last_market_data = Instant::now();
    // Set once the gateway decided to close (shutdown, retired, silent): what the session will
    // end with, after the closing handshake or `CLOSE_WAIT`.
    let mut closing: Option<Ended> = None;
    let mut close_deadline = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + s.ping_interval, s.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let silence_at = last_frame + s.silence_timeout;
        let data_silence_at = s
            .data_silence_timeout
            .map(|d| last_market_data + d)
            .filter(|_| !symbols.is_empty());
        let send_at = outbox.paced.due_at();
        let open = closing.is_none();
        let received = tokio::select! {
            biased;
            () = ctx.shutdown.triggered(), if open => {
                close_deadline = begin_close(&mut ws, &mut closing, Ended::Shutdown).await;
                continue;
            }
            () = sleep_until(close_deadline), if !open => {
                return closing.take().unwrap_or(Ended::Shutdown);
            }
            command = commands.recv(), if open => {
                match command {
                    None => {
                        close_deadline = begin_close(&mut ws, &mut closing, Ended::Stopped).await;
                        continue;
                    }
                    Some(Command::Subscribe(pairs)) => {
                        let new: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
                        apply(ctx, name, symbols, &Command::Subscribe(pairs));
                        ctx.book.set(provider, &new, SubState::Pending, None);
                        outbox.requests(protocol, &new, true);
                    }
                    Some(Command::Unsubscribe(list)) => {
                        let gone: Vec<String> = list.iter().filter(|s| symbols.contains_key(*s)).cloned().collect();
                        apply(ctx, name, symbols, &Command::Unsubscribe(list));
                        for s in &gone {
                            active.remove(s);
                        }
                        outbox.requests(protocol, &gone, false);
                    }
                }
                continue;
            }
            () = async { sleep_until(send_at.unwrap_or_else(Instant::now)).await }, if open && send_at.is_some() => {
                if let Some((text, tracked)) = outbox.paced.pop_due() {
                    if let Some((id, list)) = tracked {
                        requests.insert(id, list);
                    }
                    if let Err(e) = ws.send(Message::text(text)).await {
                        return lost(Loss::SendFailed, e.to_string(), rate_limited, healthy);
                    }
                }
                continue;
            }
            _ = ping.tick(), if open => {
                if let Err(e) = ws.send(Message::Ping(Bytes::from_static(b"tickflow"))).await {
                    return lost(Loss::SendFailed, e.to_string(), rate_limited, healthy);
                }
                continue;
            }
            () = sleep_until(silence_at), if open => {
                let ended = lost(Loss::Silent, format!("no frame for {:?}", s.silence_timeout), rate_limited, healthy);
                close_deadline = begin_close(&mut ws, &mut closing, ended).await;
                continue;
            }
            () = async { sleep_until(data_silence_at.unwrap_or_else(Instant::now)).await }, if open && data_silence_at.is_some() => {
                let ended = lost(Loss::NoData, format!("no market data for {:?} (frames still arrive)", s.data_silence_timeout.unwrap_or_default()), rate_limited, healthy);
                close_deadline = begin_close(&mut ws, &mut closing, ended).await;
                continue;
            }
            received = ws.next() => received,
        };
        let received_at = now_micros();
        if let Some(ended) = closing.take() {
            // Closing: frames still come until the provider has seen our close frame; they are
            // forwarded like any other. Its close (or the end of the stream) ends the session.
            if matches!(received, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                return ended;
            }
            closing = Some(ended);
        }
        let message = match received {
            None => {
                return lost(
                    Loss::Closed,
                    "closed without a close frame".into(),
                    rate_limited,
                    healthy,
                )
            }
            Some(Err(WsError::Utf8(detail))) => {
                let frame = dead_frame(
                    provider,
                    &session_id,
                    sequence,
                    received_at,
                    Bytes::from(format!("tungstenite: {detail}")),
                    DeadLetter::new("invalid_utf8", format!("a text frame that is not UTF-8 ({detail}); RFC 6455 makes the connection fail")),
                );
                ctx.output.send(frame).await;
                return lost(Loss::InvalidUtf8, detail, rate_limited, healthy);
            }
            Some(Err(WsError::Capacity(e))) => {
                let frame = dead_frame(
                    provider,
                    &session_id,
                    sequence,
                    received_at,
                    Bytes::from(format!("tungstenite: {e}")),
                    DeadLetter::new("oversized", format!("{e}: beyond the WebSocket limit of {limit} bytes, the connection fails")),
                );
                ctx.output.send(frame).await;
                return lost(Loss::Oversized, e.to_string(), rate_limited, healthy);
            }
            Some(Err(e)) => return lost(Loss::ReadFailed, e.to_string(), rate_limited, healthy),
            Some(Ok(m)) => m,
        };
        last_frame = Instant::now();
        let payload: Bytes = match message {
            Message::Text(text) => text.into(),
            Message::Binary(bytes) => bytes,
            Message::Ping(_) => {
                frame_type(provider, "ping");
                // tungstenite queued the pong; send it now rather than on the next write.
                if let Err(e) = ws.flush().await {
                    return lost(Loss::SendFailed, e.to_string(), rate_limited, healthy);
                }
                continue;
            }
            Message::Pong(_) => {
                frame_type(provider, "pong");
                continue;
            }
            Message::Close(close) => {
                let (code, reason) = close
                    .map(|c| (c.code, c.reason.to_string()))
                    .unwrap_or((CloseCode::Status, String::new()));
                // 1008 is how Binance says "too many requests".
                let limited = code == CloseCode::Policy || rate_limited;
                return lost(
                    if limited {
                        Loss::RateLimited
                    } else {
                        Loss::Closed
                    },
                    format!("closed by the provider: {} {reason}", u16::from(code)),
                    limited,
                    healthy,
                );
            }
            Message::Frame(_) => continue,
        };
        counters.bytes.increment(payload.len() as u64);
        let this = sequence;
        sequence += 1;
        let (inbound, dead) = match std::str::from_utf8(&payload) {
            Err(e) => (
                None,
                Some(DeadLetter::new(
                    "invalid_utf8",
                    format!("binary frame that is not UTF-8: {e}"),
                )),
            ),
            Ok(_) if payload.len() > ctx.output.max_frame_bytes() => (None, None),
            Ok(text) => {
                let inbound = protocol.classify(text);
                match inbound {
                    Inbound::Malformed(reason) => {
                        (None, Some(DeadLetter::new("malformed", reason)))
                    }
                    other => (Some(other), None),
                }
            }
        };
        let mut key = None;
        let mut channel = &control_channel;
        match inbound {
            Some(Inbound::Data { symbol }) => {
                frame_type(provider, "data");
                counters.message(symbol.as_deref(), symbols);
                last_market_data = last_frame;
                last_data.store(received_at, Ordering::Relaxed);
                healthy = true;
                channel = &data_channel;
                if let Some(sym) = &symbol {
                    if symbols.contains_key(sym) && !active.contains(sym) {
                        active.insert(sym.clone());
                        ctx.book.set(provider, [sym], SubState::Active, None);
                    }
                }
                key = symbol;
            }
            Some(Inbound::Control(kind)) => frame_type(provider, kind),
            Some(Inbound::Subscribed {
                request_id,
                symbols: confirmed,
            }) => {
                frame_type(provider, "subscribed");
                let list = if confirmed.is_empty() {
                    request_id
                        .and_then(|id| requests.remove(&id))
                        .unwrap_or_default()
                } else {
                    confirmed
                };
                let list: Vec<String> = list
                    .into_iter()
                    .filter(|s| symbols.contains_key(s))
                    .collect();
                active.extend(list.iter().cloned());
                ctx.book.set(provider, &list, SubState::Active, None);
            }
            Some(Inbound::Rejected {
                request_id,
                symbols: named,
                message,
            }) => {
                frame_type(provider, "rejected");
                let list: Vec<String> = if !named.is_empty() {
                    named
                } else if let Some(list) = request_id.and_then(|id| requests.remove(&id)) {
                    list
                } else {
                    symbols
                        .keys()
                        .filter(|s| !active.contains(*s))
                        .cloned()
                        .collect()
                };
                tracing::warn!(provider, connection = %name, symbols = ?list, error = %message, "the provider refused a subscription");
                ctx.book
                    .set(provider, &list, SubState::Failed, Some(&message));
            }
            Some(Inbound::Error {
                message,
                rate_limited: limited,
            }) => {
                frame_type(provider, "error");
                rate_limited |= limited;
                tracing::error!(provider, connection = %name, error = %message, rate_limited = limited, "the provider reports an error");
                ctx.book
                    .connection(provider, name, |c| c.last_error = Some(message.clone()));
            }
            Some(Inbound::Malformed(_)) => unreachable!("turned into a dead letter above"),
            None => frame_type(provider, "malformed"),
        }
        let frame = Frame {
            provider,
            connection_id: session_id.clone(),
            sequence: this,
            received_at,
            channel: channel.clone(),
            key,
            payload,
            dead_letter: dead,
        };
        // Backpressure: when the queue is full, wait for room, flushing the socket meanwhile
        // so that queued pongs still go out.
        let frame = match ctx.output.offer(frame) {
            Offer::Taken => continue,
            Offer::Closed => return Ended::Shutdown,
            Offer::Full(frame) => frame,
        };
        let send = ctx.output.wait_send(frame);
        tokio::pin!(send);
        let mut flush = tokio::time::interval_at(
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                delivered = &mut send => {
                    if !delivered {
                        return Ended::Shutdown;
                    }
                    break;
                }
                _ = flush.tick() => {
                    let _ = ws.flush().await;
                }
            }
        }
    }
}

/// How long a closing connection waits for the provider to answer our close frame, forwarding
/// what still arrives meanwhile.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Starts the closing handshake: sends a close frame; the session keeps reading until the
/// provider answers it (or `CLOSE_WAIT`), so nothing the provider sent before it saw our close
/// is left unread.
/// Returns when to stop waiting.
async fn begin_close<S>(ws: &mut S, closing: &mut Option<Ended>, ended: Ended) -> Instant
where
    S: futures::Sink<Message> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.send(Message::Close(None))).await;
    *closing = Some(ended);
    Instant::now() + CLOSE_WAIT
}

fn dead_frame(
    provider: &'static str,
    session: &Arc<str>,
    sequence: i64,
    received_at: i64,
    payload: Bytes,
    dead: DeadLetter,
) -> Frame {
    Frame {
        provider,
        connection_id: session.clone(),
        sequence,
        received_at,
        channel: "dead-letter".into(),
        key: None,
        payload,
        dead_letter: Some(dead),
    }
}
