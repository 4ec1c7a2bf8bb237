//! The gateway against a local gRPC feed server (`tickflow.feed.v1.MarketFeed` on 127.0.0.1),
//! writing to the real Kafka of the local stack.
//!
//! The server answers the gateway's subscriptions with statuses, trades, heartbeats, an error,
//! one message that is not a ServerMessage, pongs to its pings, and aborts the first stream
//! midway. Afterwards, every message the server sent on a live stream is on Kafka exactly once:
//! on the raw topic byte for byte, or on the dead-letter topic with reason `malformed`, numbered
//! per stream from 0 without gap in the order sent; and the gateway subscribed again on the new
//! stream.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message as _};
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::kafka;
use tickflow_shared::proto::feed::{
    self, client_message, server_message, subscription_status, ClientMessage, ServerMessage,
};
use tickflow_shared::proto::Message as _;
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, StreamingService};
use tonic::Status;

/// provider symbol → canonical instrument, as the instruments file lists them for "grpc".
const SYMBOLS: [(&str, &str); 2] = [("XBT/USD", "BTC-USD"), ("AAPL.XNAS", "AAPL")];
const INSTRUMENTS: &str = r#"
[[instrument]]
instrument = "BTC-USD"
base = "BTC"
quote = "USD"
asset_class = "CRYPTO"
listings = [{ provider = "grpc", symbol = "XBT/USD" }]

[[instrument]]
instrument = "AAPL"
base = "AAPL"
quote = "USD"
asset_class = "EQUITY"
listings = [{ provider = "grpc", symbol = "AAPL.XNAS" }]
"#;
/// Truncated: a field of length 5 with one byte behind it. prost cannot decode it.
const UNDECODABLE: &[u8] = &[0x0a, 0x05, 0x01];

// ---- the server ------------------------------------------------------------------------------

/// The server's side of the wire: what it sends goes out as prepared bytes (so that it can send
/// bytes that are not a ServerMessage); what it receives is decoded.
#[derive(Clone, Copy, Default)]
struct ServerCodec;

struct BytesEncoder;
struct ClientDecoder;

impl Codec for ServerCodec {
    type Encode = Bytes;
    type Decode = ClientMessage;
    type Encoder = BytesEncoder;
    type Decoder = ClientDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ClientDecoder {
        ClientDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ClientDecoder {
    type Item = ClientMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ClientMessage>, Status> {
        let message = ClientMessage::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Some(message))
    }
}

/// One stream as the server saw it: everything it put on the wire, in order.
struct Outgoing {
    tx: mpsc::UnboundedSender<Result<Bytes, Status>>,
    sent: Vec<Bytes>,
    /// Aborted, or the server went quiet: nothing more goes out.
    closed: bool,
}

impl Outgoing {
    fn send(&mut self, bytes: Bytes) {
        if !self.closed && self.tx.send(Ok(bytes.clone())).is_ok() {
            self.sent.push(bytes);
        }
    }
}

#[derive(Default)]
struct Feed {
    streams: Mutex<Vec<Arc<Mutex<Outgoing>>>>,
    /// Every request, with the number of the stream it came on.
    requests: Mutex<Vec<(usize, client_message::Kind)>>,
    /// Streams whose script has finished.
    finished: Mutex<BTreeSet<usize>>,
    quiet: AtomicBool,
}

fn encode(kind: server_message::Kind) -> Bytes {
    ServerMessage { kind: Some(kind) }.encode_to_vec().into()
}

fn trade(symbol: &str, n: usize) -> Bytes {
    encode(server_message::Kind::Trade(feed::Trade {
        symbol: symbol.into(),
        exchange: n.is_multiple_of(3).then(|| "xnas".to_string()),
        trade_id: format!("t-{n}"),
        price: format!("67012.{n:02}000000"),
        size: format!("0.0000123456{n:02}"),
        side: [feed::Side::Buy, feed::Side::Sell, feed::Side::Unspecified][n % 3] as i32,
        event_time_us: 1_763_769_600_000_000 + n as i64,
        sequence: n.is_multiple_of(2).then_some(n as i64),
        number: None,
    }))
}

fn subscribed(symbol: &str) -> Bytes {
    encode(server_message::Kind::SubscriptionStatus(
        feed::SubscriptionStatus {
            symbol: symbol.into(),
            state: subscription_status::State::Subscribed as i32,
            message: String::new(),
        },
    ))
}

fn heartbeat(time: i64) -> Bytes {
    encode(server_message::Kind::Heartbeat(feed::Heartbeat {
        server_time_us: time,
    }))
}

impl Feed {
    fn subscribed_on(&self, stream: usize) -> BTreeSet<String> {
        let requests = self.requests.lock().unwrap();
        let mut symbols = BTreeSet::new();
        for (n, kind) in requests.iter() {
            match kind {
                client_message::Kind::Subscribe(s) if *n == stream => {
                    symbols.extend(s.symbols.iter().cloned())
                }
                client_message::Kind::Unsubscribe(u) if *n == stream => {
                    for s in &u.symbols {
                        symbols.remove(s);
                    }
                }
                _ => {}
            }
        }
        symbols
    }

    /// What stream `n` does once the gateway has subscribed both symbols on it.
    async fn script(self: Arc<Self>, n: usize, out: Arc<Mutex<Outgoing>>) {
        let all: BTreeSet<String> = SYMBOLS.iter().map(|(s, _)| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.subscribed_on(n) != all {
            if Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let send = |bytes: Bytes| out.lock().unwrap().send(bytes);
        for (symbol, _) in SYMBOLS {
            send(subscribed(symbol));
        }
        send(heartbeat(n as i64 + 1));
        let base = n * 100;
        for i in 0..10 {
            send(trade(SYMBOLS[i % 2].0, base + i));
        }
        if n == 0 {
            send(Bytes::from_static(UNDECODABLE));
            for i in 10..20 {
                send(trade(SYMBOLS[i % 2].0, base + i));
            }
            send(encode(server_message::Kind::Error(feed::Error {
                code: "UPSTREAM_SLOW".into(),
                message: "the upstream lags by 2 s".into(),
                rate_limited: false,
            })));
        }
        // Long enough for a few of the gateway's pings (every 300 ms) to be answered.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        send(heartbeat(n as i64 + 1_000));
        if n == 0 {
            let mut out = out.lock().unwrap();
            out.closed = true;
            let _ = out.tx.send(Err(Status::unavailable("the feed restarts")));
        }
        self.finished.lock().unwrap().insert(n);
    }

    fn open(
        self: &Arc<Self>,
        mut inbound: tonic::Streaming<ClientMessage>,
    ) -> UnboundedReceiverStream<Result<Bytes, Status>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Arc::new(Mutex::new(Outgoing {
            tx,
            sent: Vec::new(),
            closed: self.quiet.load(Ordering::SeqCst),
        }));
        let n = {
            let mut streams = self.streams.lock().unwrap();
            streams.push(out.clone());
            streams.len() - 1
        };
        let feed = self.clone();
        let replies = out.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Some(kind) = message.kind else { continue };
                if let client_message::Kind::Ping(ping) = &kind {
                    let pong = encode(server_message::Kind::Pong(feed::Pong { id: ping.id }));
                    replies.lock().unwrap().send(pong);
                }
                feed.requests.lock().unwrap().push((n, kind));
            }
        });
        if !self.quiet.load(Ordering::SeqCst) {
            tokio::spawn(self.clone().script(n, out));
        }
        UnboundedReceiverStream::new(rx)
    }
}

/// `tickflow.feed.v1.MarketFeed` by hand (the generated server only sends what prost encodes).
#[derive(Clone)]
struct FeedService(Arc<Feed>);

struct StreamCall(Arc<Feed>);

impl StreamingService<ClientMessage> for StreamCall {
    type Response = Bytes;
    type ResponseStream = UnboundedReceiverStream<Result<Bytes, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<ClientMessage>>) -> Self::Future {
        let stream = self.0.open(request.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

impl NamedService for FeedService {
    const NAME: &'static str = "tickflow.feed.v1.MarketFeed";
}

impl<B> Service<http::Request<B>> for FeedService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let feed = self.0.clone();
        Box::pin(async move {
            assert_eq!(request.uri().path(), "/tickflow.feed.v1.MarketFeed/Stream");
            let mut grpc = tonic::server::Grpc::new(ServerCodec);
            Ok(grpc.streaming(StreamCall(feed), request).await)
        })
    }
}

// ---- what Kafka holds ------------------------------------------------------------------------

#[derive(Debug)]
struct Record {
    connection: String,
    sequence: i64,
    received_at: i64,
    payload: Vec<u8>,
    /// `None` on the dead-letter topic.
    channel: Option<String>,
    reason: Option<String>,
    key: Option<Vec<u8>>,
    partition: (String, i32),
    offset: i64,
}

fn header(message: &impl rdkafka::message::Message, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

async fn record(
    codec: &AvroCodec,
    dlq_topic: &str,
    message: &rdkafka::message::BorrowedMessage<'_>,
) -> Record {
    let partition = (message.topic().to_string(), message.partition());
    let key = message.key().map(<[u8]>::to_vec);
    let payload = message.payload().unwrap_or_default();
    if message.topic() == dlq_topic {
        let number = |h: &str| {
            header(message, h)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("dead letter without {h}"))
        };
        return Record {
            connection: header(message, "tickflow.connection_id").unwrap(),
            sequence: number("tickflow.sequence"),
            received_at: number("tickflow.received_at"),
            payload: payload.to_vec(),
            channel: None,
            reason: header(message, "tickflow.reason"),
            key,
            partition,
            offset: message.offset(),
        };
    }
    let envelope = codec.decode_raw(payload).await.unwrap();
    assert_eq!(envelope.provider, "grpc");
    Record {
        connection: envelope.connection_id,
        sequence: envelope.sequence,
        received_at: envelope.received_at,
        payload: envelope.payload,
        channel: Some(envelope.channel),
        reason: None,
        key,
        partition,
        offset: message.offset(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feed_message_reaches_kafka_once_in_order_across_a_reconnect() {
    let stack = Stack::require().await;
    let name = testkit::unique_topic("grpc-feed");
    let prefix = format!("{name}.raw.");
    let raw_topic = format!("{prefix}grpc");
    let dlq_topic = format!("{name}.dlq");
    let instruments = std::env::temp_dir().join(format!("{name}.instruments.toml"));
    std::fs::write(&instruments, INSTRUMENTS).unwrap();

    let feed = Arc::new(Feed::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FeedService(feed.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let env = vec![
        ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", prefix.clone()),
        ("TICKFLOW_GATEWAY__DLQ_TOPIC", dlq_topic.clone()),
        ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "false".to_string()),
        ("TICKFLOW_GATEWAY__GRPC__ENABLED", "true".to_string()),
        ("TICKFLOW_GATEWAY__GRPC__URL", format!("http://{address}")),
        (
            "TICKFLOW_GATEWAY__GRPC__PING_INTERVAL_MS",
            "300".to_string(),
        ),
        (
            "TICKFLOW_GATEWAY__GRPC__SILENCE_TIMEOUT_MS",
            "60000".to_string(),
        ),
        (
            "TICKFLOW_GATEWAY__GRPC__RECONNECT_INITIAL_MS",
            "100".to_string(),
        ),
        (
            "TICKFLOW_GATEWAY__GRPC__RECONNECT_MAX_MS",
            "400".to_string(),
        ),
        (
            "TICKFLOW_GATEWAY__INSTRUMENTS_FILE",
            instruments.display().to_string(),
        ),
        ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
    ];
    let mut gateway = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ingest-gateway"), &stack, &env);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    // Both streams play their script; then the server goes quiet (no pong either), so that what
    // it sent is final.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !feed.finished.lock().unwrap().contains(&1) {
        assert!(
            Instant::now() < deadline,
            "the feed's second stream did not finish; requests {:?}\nlog:\n{}",
            feed.requests.lock().unwrap(),
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    feed.quiet.store(true, Ordering::SeqCst);
    let sent: Vec<Vec<Bytes>> = {
        let streams = feed.streams.lock().unwrap();
        streams
            .iter()
            .map(|s| {
                let mut s = s.lock().unwrap();
                s.closed = true;
                s.sent.clone()
            })
            .filter(|sent| !sent.is_empty())
            .collect()
    };
    assert_eq!(sent.len(), 2, "two streams carried data");
    let expected: usize = sent.iter().map(Vec::len).sum();

    let registry = Registry::new(&stack.registry).unwrap();
    let codec = AvroCodec::new(&registry, &[]);
    let consumer =
        kafka::stream_consumer(&stack.kafka, "it", &testkit::unique_name("it", "grpc", '-'))
            .unwrap();
    consumer
        .subscribe(&[raw_topic.as_str(), dlq_topic.as_str()])
        .unwrap();
    let mut records: Vec<Record> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while records.len() < expected && Instant::now() < deadline {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        records.push(record(&codec, &dlq_topic, &message.unwrap()).await);
    }
    let (code, _) = gateway.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", gateway.log());
    // Anything more would be a repeat: give it a moment to show up.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
    {
        records.push(record(&codec, &dlq_topic, &message).await);
    }
    server.abort();
    let _ = std::fs::remove_file(&instruments);
    let log = gateway.log();

    // Per connection, sequences 0..n exactly once each.
    let mut by_connection: BTreeMap<String, BTreeMap<i64, &Record>> = BTreeMap::new();
    for r in &records {
        let previous = by_connection
            .entry(r.connection.clone())
            .or_default()
            .insert(r.sequence, r);
        assert!(
            previous.is_none(),
            "{} sequence {} twice on Kafka",
            r.connection,
            r.sequence
        );
    }
    let mut connections: Vec<&BTreeMap<i64, &Record>> = by_connection.values().collect();
    connections.sort_by_key(|c| c.values().next().map(|r| r.received_at));
    assert_eq!(
        connections.len(),
        sent.len(),
        "one connection per stream: {:?}\nlog:\n{log}",
        by_connection.keys().collect::<Vec<_>>()
    );
    for (stream, (got, sent)) in connections.iter().zip(&sent).enumerate() {
        let sequences: Vec<i64> = got.keys().copied().collect();
        assert_eq!(
            sequences,
            (0..sent.len() as i64).collect::<Vec<_>>(),
            "stream {stream}: a gap or an extra message"
        );
        for (sequence, (record, bytes)) in got.values().zip(sent).enumerate() {
            let at = format!("stream {stream}, sequence {sequence}");
            assert_eq!(record.payload, bytes.as_ref(), "{at}: not the bytes sent");
            match ServerMessage::decode(bytes.as_ref()) {
                Err(_) => {
                    assert_eq!(record.reason.as_deref(), Some("malformed"), "{at}");
                    assert_eq!(record.channel, None, "{at}: on the dead-letter topic");
                }
                Ok(ServerMessage {
                    kind: Some(server_message::Kind::Trade(t)),
                }) => {
                    assert_eq!(record.channel.as_deref(), Some("trade"), "{at}");
                    assert_eq!(record.key.as_deref(), Some(t.symbol.as_bytes()), "{at}");
                }
                Ok(_) => {
                    assert_eq!(record.channel.as_deref(), Some("control"), "{at}");
                    assert_eq!(record.key, None, "{at}");
                }
            }
        }
    }
    // Kafka keeps each partition in the order the gateway received.
    // (offset, sequence) by topic, partition and connection.
    let mut by_partition: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for r in &records {
        let (topic, partition) = &r.partition;
        by_partition
            .entry(format!("{topic}/{partition} {}", r.connection))
            .or_default()
            .push((r.offset, r.sequence));
    }
    for (place, mut list) in by_partition {
        list.sort();
        assert!(
            list.windows(2).all(|w| w[0].1 < w[1].1),
            "{place}: out of order {list:?}"
        );
    }

    // The stream was aborted and the gateway subscribed everything again on the new one.
    let all: BTreeSet<String> = SYMBOLS.iter().map(|(s, _)| s.to_string()).collect();
    assert_eq!(feed.subscribed_on(0), all);
    assert_eq!(feed.subscribed_on(1), all, "resubscribed after the abort");
    let pongs = sent[0]
        .iter()
        .filter(|b| {
            matches!(
                ServerMessage::decode(b.as_ref()),
                Ok(ServerMessage {
                    kind: Some(server_message::Kind::Pong(_))
                })
            )
        })
        .count();
    assert!(pongs >= 1, "the gateway pinged: {pongs} pongs");
    assert!(log.contains("connection lost; reconnecting"), "{log}");
    assert!(sent[0].iter().any(|b| b.as_ref() == UNDECODABLE));
}
