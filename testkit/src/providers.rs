//! Local WebSocket servers that speak the providers' protocols as their public API docs show
//! them (subscribe handshake, acknowledgements, heartbeats, errors, trade JSON), with faults on
//! demand, and a record of every frame they sent during a live connection.
//!
//! With [`ProviderServer::number_per_symbol`] the server is an exchange: each symbol's trades are
//! numbered consecutively across connections, a symbol no open connection carries (the client
//! is reconnecting, or down) goes on trading unseen, and [`ProviderServer::serve_rest`] serves
//! every trade printed from the provider's documented REST endpoint for past trades (Binance's
//! `historicalTrades` by `fromId`, Coinbase's product trades by the `after` cursor, Kraken's
//! `Trades` by time), so that a gateway can fill what a dropped connection lost.

// The handshake callback's error type is tungstenite's own.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Which provider the server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Binance,
    Coinbase,
    Kraken,
    Finnhub,
}

/// A frame the server sent while a connection was live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Text the gateway must have put on Kafka as it is (raw topic, or the DLQ when malformed).
    Text(String),
    /// A text frame with invalid UTF-8: the DLQ gets a description, not the bytes.
    InvalidUtf8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Drop every connection's TCP stream without a close frame.
    Kill,
    /// Stop reading and writing (so no pong either) on current connections.
    Mute,
    Garbage,
    /// A frame of this many bytes (JSON-looking text).
    Oversized(usize),
    InvalidUtf8,
    /// The provider's documented error message.
    ProviderError,
}

#[derive(Default)]
pub struct Record {
    /// Per connection (by accept order): frames sent.
    pub sent: BTreeMap<u64, Vec<Sent>>,
    /// Per connection: the symbols currently subscribed.
    pub subscribed: BTreeMap<u64, BTreeSet<String>>,
    /// Every subscribe/unsubscribe seen: (connection, symbol, subscribe?).
    pub requests: Vec<(u64, String, bool)>,
    /// Connections accepted, and the query strings they came with.
    pub connections: Vec<String>,
    pub open: BTreeSet<u64>,
}

/// The exchange behind a server numbering per symbol: the next number of each symbol, and every
/// trade sent, as its REST endpoint returns it.
#[derive(Default)]
struct Exchange {
    per_symbol: AtomicBool,
    numbers: Mutex<HashMap<String, u64>>,
    printed: Mutex<BTreeMap<String, Printed>>,
}

/// One symbol's trades by id: each as the REST endpoint returns it, and its live frame.
type Printed = BTreeMap<u64, (Value, String)>;

impl Exchange {
    fn number(&self, symbol: &str) -> u64 {
        let mut numbers = self.numbers.lock().unwrap();
        let n = numbers.entry(symbol.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// Keeps trade `n` of `symbol` for the REST endpoint.
    fn print(&self, dialect: Dialect, symbol: &str, n: u64, live_ms: Option<u64>) {
        if let Some(item) = rest_item(dialect, n, live_ms) {
            let frame = trade(dialect, symbol, n, live_ms);
            self.printed
                .lock()
                .unwrap()
                .entry(symbol.to_string())
                .or_default()
                .insert(n, (item, frame));
        }
    }

    /// Trade `n` never left (its connection failed first): the number is free again, unless
    /// another connection has numbered past it meanwhile (then it is a hole nobody printed).
    fn unnumber(&self, symbol: &str, n: u64) {
        if let Some(next) = self.numbers.lock().unwrap().get_mut(symbol) {
            if *next == n {
                *next -= 1;
            }
        }
    }
}

pub struct ProviderServer {
    pub addr: SocketAddr,
    pub dialect: Dialect,
    pub record: Arc<Mutex<Record>>,
    faults: tokio::sync::broadcast::Sender<Fault>,
    /// Trades still to send, shared by all connections.
    budget: Arc<Mutex<u64>>,
    /// Rejects this symbol when subscribed.
    pub reject: Option<String>,
    /// No more heartbeats (so that nothing is in flight when the gateway stops).
    quiet: Arc<std::sync::atomic::AtomicBool>,
    /// Trades carry the wall-clock time they are sent at, not a fixed 2023 time.
    live: Arc<std::sync::atomic::AtomicBool>,
    exchange: Arc<Exchange>,
    task: tokio::task::JoinHandle<()>,
    printer: tokio::task::JoinHandle<()>,
    rest: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ProviderServer {
    fn drop(&mut self) {
        self.task.abort();
        self.printer.abort();
        if let Some(rest) = self.rest.lock().unwrap().take() {
            rest.abort();
        }
    }
}

impl ProviderServer {
    /// Starts a server on 127.0.0.1 that sends up to `trades` trades in total, one every
    /// `every` per connection, round-robin over the connection's subscribed symbols.
    pub async fn start(
        dialect: Dialect,
        trades: u64,
        every: Duration,
        reject: Option<&str>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let (faults, _) = tokio::sync::broadcast::channel(64);
        let budget = Arc::new(Mutex::new(trades));
        let reject = reject.map(str::to_string);
        let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exchange = Arc::new(Exchange::default());
        let task = {
            let exchange = exchange.clone();
            let quiet = quiet.clone();
            let live = live.clone();
            let record = record.clone();
            let faults = faults.clone();
            let budget = budget.clone();
            let reject = reject.clone();
            tokio::spawn(async move {
                let mut next = 0u64;
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let id = next;
                    next += 1;
                    let record = record.clone();
                    let faults = faults.subscribe();
                    let budget = budget.clone();
                    let reject = reject.clone();
                    let quiet = quiet.clone();
                    let live = live.clone();
                    let exchange = exchange.clone();
                    tokio::spawn(async move {
                        let mut query = String::new();
                        let callback = |req: &Request,
                                        resp: Response|
                         -> Result<Response, ErrorResponse> {
                            query = req.uri().query().unwrap_or_default().to_string();
                            if dialect == Dialect::Finnhub && !query.contains("token=test-token") {
                                let mut e = ErrorResponse::new(Some("invalid token".into()));
                                *e.status_mut() =
                                    tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                                return Err(e);
                            }
                            Ok(resp)
                        };
                        let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                        else {
                            return;
                        };
                        {
                            let mut r = record.lock().unwrap();
                            r.connections.push(query.clone());
                            r.open.insert(id);
                        }
                        serve(
                            dialect,
                            id,
                            ws,
                            record.clone(),
                            faults,
                            budget,
                            every,
                            reject,
                            quiet,
                            live,
                            exchange,
                        )
                        .await;
                        record.lock().unwrap().open.remove(&id);
                    });
                }
            })
        };
        // While numbering per symbol: every symbol subscribed once and carried by no open
        // connection now trades unseen, one trade every `every`, as an exchange goes on without
        // its client.
        let printer = {
            let (exchange, record, budget, live) = (
                exchange.clone(),
                record.clone(),
                budget.clone(),
                live.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if !exchange.per_symbol.load(Ordering::SeqCst) {
                        continue;
                    }
                    let unseen: Vec<String> = {
                        let r = record.lock().unwrap();
                        let carried: BTreeSet<&String> = r
                            .open
                            .iter()
                            .filter_map(|c| r.subscribed.get(c))
                            .flatten()
                            .collect();
                        let known: BTreeSet<&String> = r.subscribed.values().flatten().collect();
                        known
                            .into_iter()
                            .filter(|s| !carried.contains(s))
                            .cloned()
                            .collect()
                    };
                    for symbol in unseen {
                        {
                            let mut b = budget.lock().unwrap();
                            if *b == 0 {
                                break;
                            }
                            *b -= 1;
                        }
                        let live_ms = live
                            .load(Ordering::SeqCst)
                            .then(|| tickflow_shared::domain::now_micros() as u64 / 1000);
                        let n = exchange.number(&symbol);
                        exchange.print(dialect, &symbol, n, live_ms);
                    }
                }
            })
        };
        Self {
            addr,
            dialect,
            record,
            faults,
            budget,
            reject,
            quiet,
            live,
            exchange,
            task,
            printer,
            rest: Mutex::new(None),
        }
    }

    /// Every trade printed while numbering per symbol, sent or not, as its live frame.
    pub fn printed(&self) -> Vec<String> {
        self.exchange
            .printed
            .lock()
            .unwrap()
            .values()
            .flat_map(|trades| trades.values().map(|(_, frame)| frame.clone()))
            .collect()
    }

    /// From now on each symbol's trades are numbered 1, 2, 3, ... across connections, as an
    /// exchange numbers them, and every trade sent is kept for [`ProviderServer::serve_rest`].
    pub fn number_per_symbol(&self) {
        self.exchange.per_symbol.store(true, Ordering::SeqCst);
    }

    /// Serves the provider's REST endpoint for past trades (Binance, Coinbase) on another port
    /// of 127.0.0.1, from every trade sent while numbering per symbol; returns its base URL.
    pub async fn serve_rest(&self) -> String {
        let router = match self.dialect {
            Dialect::Binance => {
                axum::Router::new().route("/api/v3/historicalTrades", get(binance_history))
            }
            Dialect::Coinbase => {
                axum::Router::new().route("/products/{product}/trades", get(coinbase_history))
            }
            Dialect::Kraken => axum::Router::new().route("/0/public/Trades", get(kraken_history)),
            other => panic!("no REST history for {other:?}"),
        }
        .with_state(self.exchange.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        *self.rest.lock().unwrap() = Some(task);
        format!("http://{addr}")
    }

    pub fn url(&self) -> String {
        match self.dialect {
            Dialect::Binance => format!("ws://{}/stream", self.addr),
            Dialect::Kraken => format!("ws://{}/v2", self.addr),
            _ => format!("ws://{}", self.addr),
        }
    }

    pub fn fault(&self, fault: Fault) {
        let _ = self.faults.send(fault);
    }

    /// Stops heartbeats; with the trade budget spent, the server then sends nothing more.
    pub fn quiet(&self) {
        self.quiet.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on trades are stamped with the wall clock when sent (a live feed), so that the
    /// normalizer takes them as current.
    pub fn live_clock(&self) {
        self.live.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sends no more trades (until `add_trades`).
    pub fn stop_trades(&self) {
        *self.budget.lock().unwrap() = 0;
    }

    pub fn add_trades(&self, n: u64) {
        *self.budget.lock().unwrap() += n;
    }

    pub fn trades_left(&self) -> u64 {
        *self.budget.lock().unwrap()
    }

    /// Every frame sent, across connections.
    pub fn sent(&self) -> Vec<Sent> {
        self.record
            .lock()
            .unwrap()
            .sent
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.record.lock().unwrap().connections.len()
    }

    /// The symbols subscribed on currently open connections.
    pub fn subscribed_now(&self) -> BTreeSet<String> {
        let r = self.record.lock().unwrap();
        r.open
            .iter()
            .filter_map(|c| r.subscribed.get(c))
            .flatten()
            .cloned()
            .collect()
    }

    /// Waits until `check` holds, up to `timeout`.
    pub async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(self) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("timed out waiting for: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Parses a client message: (subscribe?, symbols, request id).
fn parse_request(dialect: Dialect, text: &str) -> Option<(bool, Vec<String>, Value)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let strings = |a: &Value| -> Vec<String> {
        a.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    match dialect {
        Dialect::Binance => {
            let method = v["method"].as_str()?;
            let symbols = strings(&v["params"])
                .into_iter()
                .map(|s| s.trim_end_matches("@trade").to_ascii_uppercase())
                .collect();
            Some((method == "SUBSCRIBE", symbols, v["id"].clone()))
        }
        Dialect::Coinbase => {
            let kind = v["type"].as_str()?;
            Some((kind == "subscribe", strings(&v["product_ids"]), Value::Null))
        }
        Dialect::Kraken => {
            let method = v["method"].as_str()?;
            if method == "ping" {
                return None;
            }
            Some((
                method == "subscribe",
                strings(&v["params"]["symbol"]),
                v["req_id"].clone(),
            ))
        }
        Dialect::Finnhub => {
            let kind = v["type"].as_str()?;
            Some((
                kind == "subscribe",
                vec![v["symbol"].as_str()?.to_string()],
                Value::Null,
            ))
        }
    }
}

/// The provider's replies to a request, as its docs show them.
fn replies(
    dialect: Dialect,
    subscribe: bool,
    symbols: &[String],
    id: &Value,
    all: &BTreeSet<String>,
    reject: Option<&str>,
) -> Vec<String> {
    let rejected = symbols.iter().find(|s| Some(s.as_str()) == reject);
    match dialect {
        Dialect::Binance => match rejected {
            Some(_) => vec![json!({"code": 2, "msg": "Invalid request: invalid symbol", "id": id}).to_string()],
            None => vec![json!({"result": null, "id": id}).to_string()],
        },
        Dialect::Coinbase => match rejected {
            Some(s) => vec![json!({"type": "error", "message": "Failed to subscribe", "reason": format!("{s} is not a valid product")}).to_string()],
            None => vec![json!({"type": "subscriptions", "channels": [
                {"name": "matches", "product_ids": all},
                {"name": "heartbeat", "product_ids": all}
            ]}).to_string()],
        },
        Dialect::Kraken => symbols
            .iter()
            .map(|s| {
                let method = if subscribe { "subscribe" } else { "unsubscribe" };
                if Some(s.as_str()) == reject {
                    json!({"error": format!("Currency pair not supported {s}"), "method": method, "req_id": id, "success": false, "symbol": s, "time_in": "2023-09-25T09:04:31.742599Z", "time_out": "2023-09-25T09:04:31.742648Z"}).to_string()
                } else {
                    json!({"method": method, "result": {"channel": "trade", "snapshot": false, "symbol": s}, "success": true, "time_in": "2023-09-25T09:04:31.742599Z", "time_out": "2023-09-25T09:04:31.742648Z", "req_id": id}).to_string()
                }
            })
            .collect(),
        Dialect::Finnhub => match rejected {
            Some(_) => vec![json!({"type": "error", "msg": "Invalid symbol"}).to_string()],
            None => vec![],
        },
    }
}

/// A trade as the provider writes it; `n` makes every frame unique. Stamped `live_ms` (a live
/// feed: prices stay within a few percent) or else at a fixed time in 2023 plus `n` ms.
fn trade(dialect: Dialect, symbol: &str, n: u64, live_ms: Option<u64>) -> String {
    let Stamps {
        ms,
        price,
        time,
        kraken_time,
    } = stamps(n, live_ms);
    match dialect {
        Dialect::Binance => json!({"stream": format!("{}@trade", symbol.to_ascii_lowercase()), "data": {
            "e": "trade", "E": ms, "s": symbol, "t": n, "p": price, "q": "0.01000000", "T": ms, "m": n.is_multiple_of(2), "M": true}}).to_string(),
        Dialect::Coinbase => json!({"type": "match", "trade_id": n, "sequence": n, "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
            "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1", "time": time,
            "product_id": symbol, "size": "0.01", "price": price, "side": "sell"}).to_string(),
        Dialect::Kraken => format!(
            r#"{{"channel":"trade","type":"update","data":[{{"symbol":"{symbol}","side":"buy","price":{price},"qty":0.5,"ord_type":"limit","trade_id":{n},"timestamp":"{kraken_time}"}}]}}"#
        ),
        Dialect::Finnhub => format!(r#"{{"data":[{{"p":{price},"s":"{symbol}","t":{ms},"v":0.5,"c":["1"]}}],"type":"trade"}}"#),
    }
}

/// The same trade as the provider's REST endpoint for past trades returns it (the fields its
/// docs show), for the providers that have one.
fn rest_item(dialect: Dialect, n: u64, live_ms: Option<u64>) -> Option<Value> {
    let Stamps {
        ms,
        price,
        time,
        kraken_time,
    } = stamps(n, live_ms);
    match dialect {
        Dialect::Binance => Some(
            json!({"id": n, "price": price, "qty": "0.01000000", "quoteQty": "0",
            "time": ms, "isBuyerMaker": n.is_multiple_of(2), "isBestMatch": true}),
        ),
        Dialect::Coinbase => Some(
            json!({"time": time, "trade_id": n, "price": price, "size": "0.01", "side": "sell"}),
        ),
        // [price, volume, time (s), side, type, misc, trade_id]; the time as the live frame's.
        Dialect::Kraken => {
            let us = chrono::DateTime::parse_from_rfc3339(&kraken_time)
                .expect("our own time")
                .timestamp_micros();
            Some(json!([
                price,
                "0.5",
                format!("{}.{:06}", us / 1_000_000, us % 1_000_000),
                "b",
                "l",
                "",
                n
            ]))
        }
        _ => None,
    }
}

/// A trade's time and price: `n` makes every trade unique.
struct Stamps {
    ms: u64,
    price: String,
    /// RFC 3339 with microseconds (Coinbase).
    time: String,
    /// RFC 3339 with microseconds, unique per trade when not live (Kraken).
    kraken_time: String,
}

fn stamps(n: u64, live_ms: Option<u64>) -> Stamps {
    let ms = live_ms.unwrap_or(1_700_000_000_000u64 + n);
    let price = match live_ms {
        Some(_) => format!("{}.{:02}", 100 + n % 3, n % 100),
        None => format!("{}.{:02}", 100 + n % 50, n % 100),
    };
    // 1_700_000_000_000 ms is 2023-11-14T22:13:20Z.
    let (time, kraken_time) = match live_ms {
        Some(ms) => {
            let t = chrono::DateTime::from_timestamp_millis(ms as i64).expect("a valid time");
            let text = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            // Kraken's: `n`'s last digits as the µs, so that a symbol's trades never share a
            // time (its REST API pages by time).
            let kraken =
                chrono::DateTime::from_timestamp_micros(ms as i64 * 1_000 + (n % 1_000) as i64)
                    .expect("a valid time")
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            (text, kraken)
        }
        None => (
            "2023-11-14T22:13:20.000000Z".to_string(),
            format!("2023-11-14T22:13:20.{:06}Z", n % 1_000_000),
        ),
    };
    Stamps {
        ms,
        price,
        time,
        kraken_time,
    }
}

/// Binance `GET /api/v3/historicalTrades?symbol=&fromId=&limit=`: the trades from `fromId` on,
/// oldest first, at most `limit` (default 500, at most 1000).
async fn binance_history(
    State(exchange): State<Arc<Exchange>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::Json<Vec<Value>> {
    let from: u64 = q.get("fromId").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
        .min(1000);
    let symbol = q.get("symbol").cloned().unwrap_or_default();
    let printed = exchange.printed.lock().unwrap();
    axum::Json(
        printed
            .get(&symbol)
            .map(|trades| {
                trades
                    .range(from..)
                    .take(limit)
                    .map(|(_, v)| v.0.clone())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Kraken `GET /0/public/Trades?pair=&since=&count=`: the trades after `since` (ns), oldest
/// first, at most `count` (at most 1000), keyed by the pair as Kraken names it, with the `last`
/// cursor (the last trade's time in ns). The pair is the v2 symbol without its slash.
async fn kraken_history(
    State(exchange): State<Arc<Exchange>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let since: i128 = q.get("since").and_then(|v| v.parse().ok()).unwrap_or(0);
    let count: usize = q
        .get("count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(1000);
    let pair = q.get("pair").cloned().unwrap_or_default();
    let printed = exchange.printed.lock().unwrap();
    let Some((_, trades)) = printed
        .iter()
        .find(|(symbol, _)| symbol.replace('/', "") == pair)
    else {
        return axum::Json(json!({"error": ["EQuery:Unknown asset pair"]})).into_response();
    };
    let ns = |item: &Value| -> i128 {
        let text = item[2].as_str().unwrap_or_default();
        let (s, f) = text.split_once('.').unwrap_or((text, "0"));
        s.parse::<i128>().unwrap_or_default() * 1_000_000_000
            + format!("{f:0<9}")[..9].parse::<i128>().unwrap_or_default()
    };
    let page: Vec<&Value> = trades
        .values()
        .map(|(item, _)| item)
        .filter(|item| ns(item) > since)
        .take(count)
        .collect();
    let last = page.last().map_or(since, |item| ns(item));
    // The time is a JSON number in Kraken's body: written from the text, not through f64.
    let items: Vec<String> = page
        .iter()
        .map(|item| {
            format!(
                r#"["{}","{}",{},"{}","{}","",{}]"#,
                item[0].as_str().unwrap_or_default(),
                item[1].as_str().unwrap_or_default(),
                item[2].as_str().unwrap_or_default(),
                item[3].as_str().unwrap_or_default(),
                item[4].as_str().unwrap_or_default(),
                item[6]
            )
        })
        .collect();
    let body = format!(
        r#"{{"error":[],"result":{{"X{}":[{}],"last":"{last}"}}}}"#,
        pair,
        items.join(",")
    );
    ([("content-type", "application/json")], body).into_response()
}

/// Coinbase `GET /products/{product}/trades?after=&limit=`: the trades older than the `after`
/// cursor (a trade id), newest first, at most `limit` (default 100, at most 1000).
async fn coinbase_history(
    State(exchange): State<Arc<Exchange>>,
    Path(product): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::Json<Vec<Value>> {
    let after: u64 = q
        .get("after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(1000);
    let printed = exchange.printed.lock().unwrap();
    axum::Json(
        printed
            .get(&product)
            .map(|trades| {
                trades
                    .range(..after)
                    .rev()
                    .take(limit)
                    .map(|(_, v)| v.0.clone())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn heartbeat(dialect: Dialect) -> Option<String> {
    match dialect {
        Dialect::Kraken => Some(r#"{"channel":"heartbeat"}"#.into()),
        Dialect::Finnhub => Some(r#"{"type":"ping"}"#.into()),
        _ => None,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Sends a text frame and records it as sent, once the socket took it (after the peer's close
/// frame it no longer does: such a frame never left).
async fn send_recorded(
    ws: &mut Ws,
    record: &Mutex<Record>,
    id: u64,
    text: String,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::text(text.clone())).await?;
    record
        .lock()
        .unwrap()
        .sent
        .entry(id)
        .or_default()
        .push(Sent::Text(text));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    dialect: Dialect,
    id: u64,
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    record: Arc<Mutex<Record>>,
    mut faults: tokio::sync::broadcast::Receiver<Fault>,
    budget: Arc<Mutex<u64>>,
    every: Duration,
    reject: Option<String>,
    quiet: Arc<std::sync::atomic::AtomicBool>,
    live: Arc<std::sync::atomic::AtomicBool>,
    exchange: Arc<Exchange>,
) {
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(every);
    let mut beat = tokio::time::interval(Duration::from_millis(300));
    let mut turn = 0usize;
    let mut n = id * 1_000_000;
    if dialect == Dialect::Kraken {
        let status = r#"{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.0"}],"type":"update"}"#;
        if send_recorded(&mut ws, &record, id, status.to_string())
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            message = ws.next() => {
                let Some(Ok(message)) = message else { return };
                let Message::Text(text) = message else { continue };
                let Some((subscribe, symbols, req)) = parse_request(dialect, text.as_str()) else { continue };
                {
                    let mut r = record.lock().unwrap();
                    for s in &symbols {
                        r.requests.push((id, s.clone(), subscribe));
                    }
                }
                for s in &symbols {
                    if subscribe && Some(s) != reject.as_ref() {
                        subscribed.insert(s.clone());
                    } else if !subscribe {
                        subscribed.remove(s);
                    }
                }
                record.lock().unwrap().subscribed.insert(id, subscribed.clone());
                for reply in replies(dialect, subscribe, &symbols, &req, &subscribed, reject.as_deref()) {
                    if send_recorded(&mut ws, &record, id, reply).await.is_err() {
                        return;
                    }
                }
            }
            _ = tick.tick() => {
                if subscribed.is_empty() {
                    continue;
                }
                {
                    let mut b = budget.lock().unwrap();
                    if *b == 0 {
                        continue;
                    }
                    *b -= 1;
                }
                let symbol = subscribed.iter().nth(turn % subscribed.len()).unwrap().clone();
                turn += 1;
                let per_symbol = exchange.per_symbol.load(Ordering::SeqCst);
                let number = if per_symbol {
                    exchange.number(&symbol)
                } else {
                    n += 1;
                    n
                };
                let live_ms = live
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .then(|| tickflow_shared::domain::now_micros() as u64 / 1000);
                if send_recorded(&mut ws, &record, id, trade(dialect, &symbol, number, live_ms)).await.is_err() {
                    if per_symbol {
                        exchange.unnumber(&symbol, number);
                    }
                    return;
                }
                if per_symbol {
                    exchange.print(dialect, &symbol, number, live_ms);
                }
            }
            _ = beat.tick() => {
                if quiet.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                if let Some(h) = heartbeat(dialect) {
                    if send_recorded(&mut ws, &record, id, h).await.is_err() {
                        return;
                    }
                }
            }
            fault = faults.recv() => {
                let Ok(fault) = fault else { continue };
                match fault {
                    Fault::Kill => return,
                    Fault::Mute => {
                        // Neither read (so no pong goes out) nor write, until the peer gives up.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    Fault::Garbage => {
                        if send_recorded(&mut ws, &record, id, "}{ not json at all".into()).await.is_err() { return; }
                    }
                    Fault::Oversized(len) => {
                        let mut big = String::from("{\"junk\":\"");
                        big.push_str(&"x".repeat(len));
                        big.push_str("\"}");
                        if send_recorded(&mut ws, &record, id, big).await.is_err() { return; }
                    }
                    Fault::ProviderError => {
                        let text = match dialect {
                            Dialect::Binance => json!({"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1", "id": null}).to_string(),
                            Dialect::Coinbase => json!({"type": "error", "message": "Internal error", "reason": "try again"}).to_string(),
                            Dialect::Kraken => json!({"error": "EGeneral:Internal error", "method": "subscribe", "success": false, "time_in": "2023-09-25T09:04:31.742599Z", "time_out": "2023-09-25T09:04:31.742648Z"}).to_string(),
                            Dialect::Finnhub => json!({"type": "error", "msg": "Internal error"}).to_string(),
                        };
                        if send_recorded(&mut ws, &record, id, text).await.is_err() { return; }
                    }
                    Fault::InvalidUtf8 => {
                        record.lock().unwrap().sent.entry(id).or_default().push(Sent::InvalidUtf8);
                        let frame = Frame::message(&b"{\"x\":\"\xff\xfe\"}"[..], OpCode::Data(Data::Text), true);
                        if ws.send(Message::Frame(frame)).await.is_err() { return; }
                        // The client must fail the connection now (RFC 6455 §8.1): send nothing
                        // more that it could not read, and wait for it to go.
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                }
            }
        }
    }
}
