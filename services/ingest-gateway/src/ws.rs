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

use std::collections::BTreeMap;
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
    after_loss, frame_type, lost, sleep_until_some, Action, Ended, Heard, Loss, Machine, CLOSE_WAIT,
};
use crate::sink::{DeadLetter, Offer, Output};
use crate::state::Book;
use tickflow_providers::WebSocket;

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
    let mut m: Machine<String> = Machine::new(
        provider,
        name,
        protocol.data_channel(),
        s,
        true,
        &ctx.book,
        ctx.labels.clone(),
        Instant::now(),
    );
    m.connected(Instant::now(), symbols);
    let chunk = protocol.symbols_per_request();
    let wanted: Vec<String> = symbols.keys().cloned().collect();
    m.request(&wanted, true, chunk, |c, id| protocol.subscribe(c, id));

    loop {
        while let Some(action) = m.poll(Instant::now(), !symbols.is_empty()) {
            if let Some(ended) = perform(&mut ws, &m, action).await {
                return ended;
            }
        }
        let deadline = m.deadline(!symbols.is_empty());
        let open = !m.is_closing();
        let received = tokio::select! {
            biased;
            () = ctx.shutdown.triggered(), if open => {
                let action = m.close(Instant::now(), Ended::Shutdown);
                if let Some(ended) = perform(&mut ws, &m, action).await {
                    return ended;
                }
                continue;
            }
            command = commands.recv(), if open => {
                match command {
                    None => {
                        let action = m.close(Instant::now(), Ended::Stopped);
                        if let Some(ended) = perform(&mut ws, &m, action).await {
                            return ended;
                        }
                    }
                    Some(Command::Subscribe(pairs)) => {
                        let new: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
                        apply(ctx, name, symbols, &Command::Subscribe(pairs));
                        m.request(&new, true, chunk, |c, id| protocol.subscribe(c, id));
                    }
                    Some(Command::Unsubscribe(list)) => {
                        let gone: Vec<String> = list.iter().filter(|s| symbols.contains_key(*s)).cloned().collect();
                        apply(ctx, name, symbols, &Command::Unsubscribe(list));
                        m.request(&gone, false, chunk, |c, id| protocol.unsubscribe(c, id));
                    }
                }
                continue;
            }
            () = sleep_until(deadline) => continue,
            received = ws.next() => received,
        };
        let received_at = now_micros();
        // Closing: frames still come until the provider has seen our close frame; they are
        // forwarded like any other. Its close (or the end of the stream) ends the session.
        if m.is_closing() && matches!(received, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
            return m.close_answered().unwrap_or(Ended::Shutdown);
        }
        let message = match received {
            None => return m.lost(Loss::Closed, "closed without a close frame".into()),
            Some(Err(WsError::Utf8(detail))) => {
                let frame = m.failed_frame(
                    received_at,
                    format!("tungstenite: {detail}"),
                    DeadLetter::new("invalid_utf8", format!("a text frame that is not UTF-8 ({detail}); RFC 6455 makes the connection fail")),
                );
                ctx.output.send(frame).await;
                return m.lost(Loss::InvalidUtf8, detail);
            }
            Some(Err(WsError::Capacity(e))) => {
                let frame = m.failed_frame(
                    received_at,
                    format!("tungstenite: {e}"),
                    DeadLetter::new("oversized", format!("{e}: beyond the WebSocket limit of {limit} bytes, the connection fails")),
                );
                ctx.output.send(frame).await;
                return m.lost(Loss::Oversized, e.to_string());
            }
            Some(Err(e)) => return m.lost(Loss::ReadFailed, e.to_string()),
            Some(Ok(message)) => message,
        };
        let now = Instant::now();
        m.heard(now);
        let payload: Bytes = match message {
            Message::Text(text) => text.into(),
            Message::Binary(bytes) => bytes,
            Message::Ping(_) => {
                frame_type(provider, "ping");
                // tungstenite queued the pong; send it now rather than on the next write.
                if let Err(e) = ws.flush().await {
                    return m.lost(Loss::SendFailed, e.to_string());
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
                return m.closed_by_provider(u16::from(code), &reason, code == CloseCode::Policy);
            }
            Message::Frame(_) => continue,
        };
        let heard = match std::str::from_utf8(&payload) {
            Err(e) => Heard::Unread {
                kind: "malformed",
                dead: Some(DeadLetter::new(
                    "invalid_utf8",
                    format!("binary frame that is not UTF-8: {e}"),
                )),
            },
            // Not parsed: the sink dead-letters it.
            Ok(_) if payload.len() > ctx.output.max_frame_bytes() => Heard::Unread {
                kind: "oversized",
                dead: None,
            },
            Ok(text) => Heard::from(protocol.classify(text)),
        };
        let frame = m.message(now, received_at, heard, payload, symbols);
        // Backpressure: when the queue is full, wait for room, flushing the socket meanwhile
        // so that queued pongs still go out. The wait is ours, not the provider's silence.
        let frame = match ctx.output.offer(frame) {
            Offer::Taken => continue,
            Offer::Closed => return Ended::Shutdown,
            Offer::Full(frame) => frame,
        };
        let waiting = Instant::now();
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
        m.waited(waiting.elapsed());
    }
}

/// Carries out what the session machine asked; `Some` when that ends the session.
async fn perform<S>(ws: &mut S, m: &Machine<String>, action: Action<String>) -> Option<Ended>
where
    S: futures::Sink<Message, Error = WsError> + Unpin,
{
    let sent = match action {
        Action::Send(text) => ws.send(Message::text(text)).await,
        Action::Ping(_) => {
            ws.send(Message::Ping(Bytes::from_static(b"tickflow")))
                .await
        }
        Action::Close => {
            // The session reads on until the provider answers (or CLOSE_WAIT passes).
            let _ = tokio::time::timeout(CLOSE_WAIT, ws.send(Message::Close(None))).await;
            Ok(())
        }
        Action::End(ended) => return Some(ended),
    };
    sent.err().map(|e| m.lost(Loss::SendFailed, e.to_string()))
}
