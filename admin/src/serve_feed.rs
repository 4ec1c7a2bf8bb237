//! `tickflow-admin serve-feed`: a `tickflow.feed.v1.MarketFeed` server with made-up trades, as a
//! vendor adapter would serve them, for the demo and for trying the gateway's gRPC feed.
//!
//! Each symbol trades `rate` times a second on a random walk, numbered 1, 2, 3, ... (`number`,
//! so the normalizer follows its numbering; `trade_id` is the number). With `--state-file` the
//! numbering goes on where the last run stopped, as an exchange's does: a restarted feed
//! repeats no id (the normalizer would drop its trades as duplicates) and opens no hole. Every `hole_every` one symbol's next `hole_len`
//! trades are printed but not sent on the streams, as a lossy link would lose them: the
//! normalizer finds the hole, and the gateway's backfill gets the trades back through `Replay`,
//! which serves the last 100,000 trades of each symbol. Streams answer subscriptions, pings and
//! send heartbeats as `proto/tickflow/feed/v1/feed.proto` asks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tickflow_shared::domain::now_micros;
use tickflow_shared::proto::feed::market_feed_server::{MarketFeed, MarketFeedServer};
use tickflow_shared::proto::feed::{
    self, client_message, server_message, subscription_status, ClientMessage, ReplayRequest,
    ServerMessage,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Trades of each symbol kept for Replay.
const HELD: usize = 100_000;

pub struct Options {
    pub listen: SocketAddr,
    pub symbols: Vec<String>,
    /// Trades per second and symbol.
    pub rate: f64,
    /// Every this often, one symbol's next `hole_len` trades are not sent (zero: never).
    pub hole_every: Duration,
    pub hole_len: u32,
    /// Stop printing after this long (zero: until Ctrl-C).
    pub seconds: u64,
    /// After printing stopped, go on serving (heartbeats, Replay) this long.
    pub linger: Duration,
    /// Where each symbol's next number is kept between runs.
    pub state_file: Option<std::path::PathBuf>,
}

struct Symbol {
    next: u64,
    /// In 1/10,000 of a unit: prices are exact decimals.
    price: i64,
    held: VecDeque<feed::Trade>,
    /// Trades still to leave out of the streams.
    hole_left: u32,
}

type Book = Arc<Mutex<HashMap<String, Symbol>>>;

struct Feed {
    book: Book,
    trades: broadcast::Sender<feed::Trade>,
}

fn message(kind: server_message::Kind) -> ServerMessage {
    ServerMessage { kind: Some(kind) }
}

fn status(symbol: String, state: subscription_status::State, why: &str) -> ServerMessage {
    message(server_message::Kind::SubscriptionStatus(
        feed::SubscriptionStatus {
            symbol,
            state: state as i32,
            message: why.to_string(),
        },
    ))
}

#[tonic::async_trait]
impl MarketFeed for Feed {
    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let mut trades = self.trades.subscribe();
        let known: BTreeSet<String> = self.book.lock().unwrap().keys().cloned().collect();
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut subscribed: BTreeSet<String> = BTreeSet::new();
            let mut beat = tokio::time::interval(Duration::from_secs(2));
            loop {
                let out: Vec<ServerMessage> = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(m)) => match m.kind {
                            Some(client_message::Kind::Subscribe(s)) => s
                                .symbols
                                .into_iter()
                                .map(|symbol| {
                                    if known.contains(&symbol) {
                                        subscribed.insert(symbol.clone());
                                        status(symbol, subscription_status::State::Subscribed, "")
                                    } else {
                                        status(symbol, subscription_status::State::Rejected, "unknown symbol")
                                    }
                                })
                                .collect(),
                            Some(client_message::Kind::Unsubscribe(u)) => u
                                .symbols
                                .into_iter()
                                .map(|symbol| {
                                    subscribed.remove(&symbol);
                                    status(symbol, subscription_status::State::Unsubscribed, "")
                                })
                                .collect(),
                            Some(client_message::Kind::Ping(p)) => {
                                vec![message(server_message::Kind::Pong(feed::Pong { id: p.id }))]
                            }
                            None => Vec::new(),
                        },
                        _ => return,
                    },
                    t = trades.recv() => match t {
                        Ok(t) if subscribed.contains(&t.symbol) => {
                            vec![message(server_message::Kind::Trade(t))]
                        }
                        // Lagging behind: those trades are lost to this stream, a hole the
                        // gateway will ask for again.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = beat.tick() => vec![message(server_message::Kind::Heartbeat(feed::Heartbeat {
                        server_time_us: now_micros(),
                    }))],
                };
                for m in out {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ReplayStream = tokio_stream::Iter<std::vec::IntoIter<Result<ServerMessage, Status>>>;

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let r = request.into_inner();
        let book = self.book.lock().unwrap();
        let Some(symbol) = book.get(&r.symbol) else {
            return Err(Status::not_found(format!("unknown symbol {}", r.symbol)));
        };
        let messages: Vec<Result<ServerMessage, Status>> = symbol
            .held
            .iter()
            .filter(|t| t.number.is_some_and(|n| (r.first..=r.last).contains(&n)))
            .map(|t| Ok(message(server_message::Kind::Trade(t.clone()))))
            .collect();
        tracing::info!(symbol = %r.symbol, first = r.first, last = r.last, trades = messages.len(), "replay");
        Ok(Response::new(tokio_stream::iter(messages)))
    }
}

/// Each symbol's next number, as the state file keeps it.
fn save(book: &Book, path: &std::path::Path) {
    let next: std::collections::BTreeMap<String, u64> = book
        .lock()
        .unwrap()
        .iter()
        .map(|(s, v)| (s.clone(), v.next))
        .collect();
    if let Err(e) = std::fs::write(path, serde_json::to_vec(&next).unwrap_or_default()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the feed's state file");
    }
}

/// Prints every symbol's trades, leaving the holes out of the streams.
async fn print(book: Book, trades: broadcast::Sender<feed::Trade>, options: &Options) {
    let mut rng = StdRng::from_os_rng();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate.max(0.01)));
    let mut next_hole = tokio::time::Instant::now() + options.hole_every;
    let symbols: Vec<String> = book.lock().unwrap().keys().cloned().collect();
    let mut saved = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Some(path) = &options.state_file {
            if saved.elapsed() >= Duration::from_secs(1) {
                saved = tokio::time::Instant::now();
                save(&book, path);
            }
        }
        if !options.hole_every.is_zero() && tokio::time::Instant::now() >= next_hole {
            next_hole += options.hole_every;
            let victim = &symbols[rng.random_range(0..symbols.len())];
            if let Some(s) = book.lock().unwrap().get_mut(victim) {
                s.hole_left = options.hole_len;
                tracing::info!(symbol = %victim, trades = options.hole_len, first = s.next, "leaving the next trades out of the streams (a hole)");
            }
        }
        let mut sent = Vec::new();
        {
            let mut book = book.lock().unwrap();
            for (name, s) in book.iter_mut() {
                s.price = (s.price + rng.random_range(-50..=50)).max(10_000);
                let n = s.next;
                s.next += 1;
                let trade = feed::Trade {
                    symbol: name.clone(),
                    exchange: Some("feed".into()),
                    trade_id: n.to_string(),
                    price: format!("{}.{:04}", s.price / 10_000, s.price % 10_000),
                    size: format!("{}", rng.random_range(1..=500)),
                    side: if rng.random_bool(0.5) {
                        feed::Side::Buy as i32
                    } else {
                        feed::Side::Sell as i32
                    },
                    event_time_us: now_micros(),
                    sequence: Some(n as i64),
                    number: Some(n),
                };
                s.held.push_back(trade.clone());
                if s.held.len() > HELD {
                    s.held.pop_front();
                }
                if s.hole_left > 0 {
                    s.hole_left -= 1;
                } else {
                    sent.push(trade);
                }
            }
        }
        for t in sent {
            let _ = trades.send(t);
        }
    }
}

pub async fn run(options: Options) -> tickflow_shared::Result<()> {
    if options.symbols.is_empty() {
        return Err(tickflow_shared::Error::Config(
            "`--symbols`: give at least one symbol".into(),
        ));
    }
    let resumed: std::collections::BTreeMap<String, u64> = match &options.state_file {
        Some(path) if path.exists() => {
            let text = std::fs::read(path)?;
            serde_json::from_slice(&text).map_err(|e| {
                tickflow_shared::Error::Config(format!(
                    "`--state-file` {}: not the feed's state ({e})",
                    path.display()
                ))
            })?
        }
        _ => Default::default(),
    };
    let book: Book = Arc::new(Mutex::new(
        options
            .symbols
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.clone(),
                    Symbol {
                        next: resumed.get(s).copied().unwrap_or(1),
                        price: 1_000_000 * (i as i64 + 1) + 4_321,
                        held: VecDeque::new(),
                        hole_left: 0,
                    },
                )
            })
            .collect(),
    ));
    let (trades, _) = broadcast::channel(65_536);
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let feed = Feed {
        book: book.clone(),
        trades: trades.clone(),
    };
    println!(
        "serving tickflow.feed.v1.MarketFeed on http://{} ({} symbols, {} trades/s each, a hole of {} trades every {:?})",
        listener.local_addr()?,
        options.symbols.len(),
        options.rate,
        options.hole_len,
        options.hole_every
    );
    let server = tonic::transport::Server::builder()
        .add_service(MarketFeedServer::new(feed))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::pin!(server);
    let failed = |e: tonic::transport::Error| {
        tickflow_shared::Error::Config(format!("the feed server failed: {e}"))
    };
    let interrupted = tokio::select! {
        served = &mut server => return served.map_err(failed),
        () = print(book.clone(), trades, &options) => false,
        () = tokio::time::sleep(Duration::from_secs(options.seconds)), if options.seconds > 0 => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if let Some(path) = &options.state_file {
        save(&book, path);
    }
    let printed: u64 = book
        .lock()
        .unwrap()
        .values()
        .map(|s| s.next.saturating_sub(1))
        .sum();
    println!("stopped printing: the last numbers are in the state file; {printed} numbered in all");
    if !interrupted && !options.linger.is_zero() {
        tokio::select! {
            served = &mut server => return served.map_err(failed),
            () = tokio::time::sleep(options.linger) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}
