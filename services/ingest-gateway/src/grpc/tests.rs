use std::sync::atomic::{AtomicUsize, Ordering};

use tickflow_shared::config::MetricsConfig;
use tickflow_shared::proto::feed::market_feed_server::{MarketFeed, MarketFeedServer};
use tickflow_shared::proto::feed::{
    self, server_message, subscription_status, ServerMessage, Side, SubscriptionStatus,
};
use tickflow_shared::proto::Message as _;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::config::ProviderConfig;
use crate::sink::Frame;
use crate::state::{SubState, Subscription};

fn message(kind: server_message::Kind) -> Vec<u8> {
    ServerMessage { kind: Some(kind) }.encode_to_vec()
}

fn trade(symbol: &str, id: &str) -> server_message::Kind {
    server_message::Kind::Trade(feed::Trade {
        symbol: symbol.into(),
        exchange: Some("xnas".into()),
        trade_id: id.into(),
        price: "67012.34000000".into(),
        size: "0.000012345678".into(),
        side: Side::Buy as i32,
        event_time_us: 1_763_769_600_123_457,
        sequence: Some(7),
        number: None,
    })
}

fn status(symbol: &str, state: subscription_status::State, why: &str) -> server_message::Kind {
    server_message::Kind::SubscriptionStatus(SubscriptionStatus {
        symbol: symbol.into(),
        state: state as i32,
        message: why.into(),
    })
}

#[test]
fn every_server_message_is_classified() {
    use subscription_status::State;
    let cases = [
        (
            message(trade("AAPL", "1")),
            Received::Trade {
                symbol: Some("AAPL".into()),
            },
        ),
        (message(trade("", "1")), Received::Trade { symbol: None }),
        (
            message(status("AAPL", State::Subscribed, "")),
            Received::Subscribed("AAPL".into()),
        ),
        (
            message(status("AAPL", State::Unsubscribed, "delisted")),
            Received::Unsubscribed {
                symbol: "AAPL".into(),
                message: "delisted".into(),
            },
        ),
        (
            message(status("XYZ", State::Rejected, "unknown symbol")),
            Received::Rejected {
                symbol: "XYZ".into(),
                message: "unknown symbol".into(),
            },
        ),
        (
            message(status("AAPL", State::Unspecified, "")),
            Received::Control("status"),
        ),
        (
            message(server_message::Kind::Heartbeat(feed::Heartbeat {
                server_time_us: 1,
            })),
            Received::Control("heartbeat"),
        ),
        (
            message(server_message::Kind::Pong(feed::Pong { id: 3 })),
            Received::Control("pong"),
        ),
        (
            message(server_message::Kind::Error(feed::Error {
                code: "RATE_LIMITED".into(),
                message: "slow down".into(),
                rate_limited: true,
            })),
            Received::Error {
                code: "RATE_LIMITED".into(),
                message: "slow down".into(),
                rate_limited: true,
            },
        ),
        // A kind a newer server knows and this build does not: field 15, a string.
        (vec![0x7a, 0x01, b'x'], Received::Control("unknown")),
    ];
    for (bytes, expected) in cases {
        assert_eq!(classify(&bytes), expected, "{bytes:?}");
    }
    // Truncated (a length of 5 with one byte behind it), and a symbol that is not UTF-8.
    for bad in [&[0x0a, 0x05, 0x01][..], &[0x0a, 0x03, 0x0a, 0x01, 0xff]] {
        assert!(
            matches!(classify(bad), Received::Malformed(_)),
            "{bad:?}: {:?}",
            classify(bad)
        );
    }
}

#[test]
fn diff_names_only_what_changed() {
    let pairs = |list: &[&str]| -> Desired {
        list.iter()
            .map(|s| (s.to_string(), format!("{s}-I")))
            .collect()
    };
    assert_eq!(
        diff(&pairs(&["a", "b", "c"]), &pairs(&["a", "c", "d"])),
        Diff {
            added: vec!["d".into()],
            removed: vec!["b".into()]
        }
    );
    assert_eq!(diff(&pairs(&["a"]), &pairs(&["a"])), Diff::default());
}

#[tokio::test(start_paused = true)]
async fn requests_split_large_sets_and_go_out_paced() {
    let settings = ProviderConfig {
        max_messages_per_s: Some(2.0),
        ..Default::default()
    }
    .settings(&DEFAULTS);
    let book = Book::default();
    let now = Instant::now();
    let mut m = Machine::new(
        PROVIDER,
        CONNECTION,
        "trade",
        &settings,
        false,
        &book,
        InstrumentLabels::new(&MetricsConfig::default()),
        now,
    );
    let symbols: Vec<String> = (0..1_200).map(|i| format!("S{i}")).collect();
    m.request(&symbols, true, SYMBOLS_PER_MESSAGE, |c, _| request(c, true));
    m.request(&symbols[..1], false, SYMBOLS_PER_MESSAGE, |c, _| {
        request(c, false)
    });
    let sizes: Vec<(bool, usize)> = m
        .queued()
        .map(|m| match &m.kind {
            Some(client_message::Kind::Subscribe(s)) => (true, s.symbols.len()),
            Some(client_message::Kind::Unsubscribe(u)) => (false, u.symbols.len()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sizes,
        vec![(true, 500), (true, 500), (true, 200), (false, 1)]
    );
    assert!(matches!(m.poll(now, true), Some(Action::Send(_))));
    assert!(m.poll(now, true).is_none(), "the next one waits 500 ms");
    assert_eq!(m.deadline(true), now + Duration::from_millis(500));
    assert!(matches!(
        m.poll(now + Duration::from_millis(500), true),
        Some(Action::Send(_))
    ));
}

/// A feed server the test drives by hand: each stream it opens is announced with the sender of
/// its messages, and every request the gateway sends is passed on with its stream's number.
struct Feed {
    streams: AtomicUsize,
    opened: UnboundedSender<(usize, UnboundedSender<Result<ServerMessage, Status>>)>,
    requests: UnboundedSender<(usize, client_message::Kind)>,
    /// The trades Replay serves, and its calls so far (the first is refused as too many).
    held: Vec<feed::Trade>,
    replays: AtomicUsize,
    /// Each Replay call's `authorization` metadata.
    replay_tokens: std::sync::Mutex<Vec<Option<String>>>,
}

#[tonic::async_trait]
impl MarketFeed for Feed {
    type StreamStream = UnboundedReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<ClientMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, Status> {
        let n = self.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(kind) = m.kind {
                    let _ = requests.send((n, kind));
                }
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.opened.send((n, tx));
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }

    type ReplayStream = tokio_stream::Iter<std::vec::IntoIter<Result<ServerMessage, Status>>>;

    async fn replay(
        &self,
        request: tonic::Request<feed::ReplayRequest>,
    ) -> Result<tonic::Response<Self::ReplayStream>, Status> {
        self.replay_tokens.lock().unwrap().push(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
        if self.replays.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Status::resource_exhausted("too many replays"));
        }
        let r = request.into_inner();
        let messages: Vec<Result<ServerMessage, Status>> = self
            .held
            .iter()
            .filter(|t| {
                t.symbol == r.symbol && t.number.is_some_and(|n| (r.first..=r.last).contains(&n))
            })
            .map(|t| {
                Ok(ServerMessage {
                    kind: Some(server_message::Kind::Trade(t.clone())),
                })
            })
            .collect();
        Ok(tonic::Response::new(tokio_stream::iter(messages)))
    }
}

struct Harness {
    opened: UnboundedReceiver<(usize, UnboundedSender<Result<ServerMessage, Status>>)>,
    requests: UnboundedReceiver<(usize, client_message::Kind)>,
    frames: mpsc::Receiver<Frame>,
    desired: watch::Sender<Desired>,
    book: Book,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

const WAIT: Duration = Duration::from_secs(10);

async fn next<T>(rx: &mut UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

/// The server's side of TLS: its certificate and key, and the CA it requires client
/// certificates from (mutual TLS), if any.
struct ServerTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

impl Harness {
    async fn start(config: ProviderConfig, wanted: &[&str]) -> Self {
        Self::start_tls(config, wanted, None, None).await
    }

    /// With `server_tls`, the feed serves TLS on `https://localhost:<port>`; `client_tls` is
    /// the gateway's side, as [`client_tls`] makes it from `[gateway.grpc.tls]`.
    async fn start_tls(
        config: ProviderConfig,
        wanted: &[&str],
        server_tls: Option<ServerTls>,
        client_tls: Option<ClientTlsConfig>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let feed = Feed {
            streams: AtomicUsize::new(0),
            opened: opened_tx,
            requests: requests_tx,
            held: Vec::new(),
            replays: AtomicUsize::new(0),
            replay_tokens: Default::default(),
        };
        let mut server = tonic::transport::Server::builder();
        let scheme = match &server_tls {
            Some(tls) => {
                let mut config = tonic::transport::ServerTlsConfig::new()
                    .identity(Identity::from_pem(&tls.cert, &tls.key));
                if let Some(ca) = &tls.client_ca {
                    config = config.client_ca_root(Certificate::from_pem(ca));
                }
                server = server.tls_config(config).unwrap();
                "https://localhost"
            }
            None => "http://127.0.0.1",
        };
        tokio::spawn(
            server
                .add_service(MarketFeedServer::new(feed))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let settings = ProviderConfig {
            url: Some(format!("{scheme}:{}", address.port())),
            reconnect_initial_ms: Some(10),
            reconnect_max_ms: Some(20),
            ..config
        }
        .settings(&DEFAULTS);
        let (output, frames) = crate::sink::queue(64, false, 1 << 20, true);
        let book = Book::default();
        let shutdown = Shutdown::new();
        let ctx = Context {
            settings,
            token: None,
            tls: client_tls,
            output,
            book: book.clone(),
            labels: InstrumentLabels::new(&MetricsConfig::default()),
            shutdown: shutdown.clone(),
        };
        let (desired, rx) = watch::channel(pairs(wanted));
        let task = tokio::spawn(run(ctx, rx));
        Self {
            opened,
            requests,
            frames,
            desired,
            book,
            shutdown,
            task,
        }
    }

    async fn frame(&mut self) -> Frame {
        tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("a frame in time")
            .expect("open")
    }

    fn state(&self, symbol: &str) -> Option<SubState> {
        self.book
            .subscriptions()
            .into_iter()
            .find(|s: &Subscription| s.symbol == symbol)
            .map(|s| s.state)
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .unwrap();
        assert!(self.book.connections().is_empty(), "retired");
    }
}

fn pairs(symbols: &[&str]) -> Desired {
    symbols
        .iter()
        .map(|s| (s.to_string(), format!("{s}-I")))
        .collect()
}

fn subscribe(symbols: &[&str]) -> client_message::Kind {
    client_message::Kind::Subscribe(feed::Subscribe {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
    })
}

#[tokio::test]
async fn subscribes_on_connect_follows_changes_and_resubscribes_after_a_loss() {
    let mut h = Harness::start(ProviderConfig::default(), &["A", "B"]).await;
    let (n, stream) = next(&mut h.opened).await;
    assert_eq!(n, 0);
    assert_eq!(next(&mut h.requests).await, (0, subscribe(&["A", "B"])));

    let sent = [
        message(status("A", subscription_status::State::Subscribed, "")),
        message(trade("B", "b-1")),
    ];
    for bytes in &sent {
        let m = ServerMessage::decode(bytes.as_slice()).unwrap();
        stream.send(Ok(m)).unwrap();
    }
    let first = h.frame().await;
    let second = h.frame().await;
    assert_eq!(
        (first.sequence, &*first.channel, first.key.as_deref()),
        (0, "control", None)
    );
    assert_eq!(
        (second.sequence, &*second.channel, second.key.as_deref()),
        (1, "trade", Some("B"))
    );
    assert_eq!(
        [&first.payload[..], &second.payload[..]],
        [&sent[0][..], &sent[1][..]],
        "the bytes as they came"
    );
    assert_eq!(first.connection_id, second.connection_id);
    assert_eq!(h.state("A"), Some(SubState::Active));
    assert_eq!(h.state("B"), Some(SubState::Active));

    // B goes, C comes: only the difference is sent.
    h.desired.send(pairs(&["A", "C"])).unwrap();
    let unsubscribe = client_message::Kind::Unsubscribe(feed::Unsubscribe {
        symbols: vec!["B".into()],
    });
    assert_eq!(next(&mut h.requests).await, (0, unsubscribe));
    assert_eq!(next(&mut h.requests).await, (0, subscribe(&["C"])));
    assert_eq!(h.state("B"), None);
    assert_eq!(h.state("C"), Some(SubState::Pending));

    // The server aborts: a new stream subscribes everything again and numbers from 0.
    stream.send(Err(Status::unavailable("restarting"))).unwrap();
    let (n, stream) = next(&mut h.opened).await;
    assert_eq!(n, 1);
    assert_eq!(next(&mut h.requests).await, (1, subscribe(&["A", "C"])));
    stream
        .send(Ok(ServerMessage {
            kind: Some(trade("C", "c-1")),
        }))
        .unwrap();
    let third = h.frame().await;
    assert_eq!((third.sequence, third.key.as_deref()), (0, Some("C")));
    assert_ne!(third.connection_id, first.connection_id);
    assert_eq!(h.state("C"), Some(SubState::Active));
    let connection = h.book.connections().pop().unwrap();
    assert_eq!((connection.up, connection.reconnects), (true, 1));
    h.stop().await;
}

#[tokio::test]
async fn pings_and_a_silent_stream_is_replaced() {
    let config = ProviderConfig {
        ping_interval_ms: Some(100),
        silence_timeout_ms: Some(600),
        ..Default::default()
    };
    let mut h = Harness::start(config, &["A"]).await;
    let (_, stream) = next(&mut h.opened).await;
    assert_eq!(next(&mut h.requests).await, (0, subscribe(&["A"])));
    let ping = next(&mut h.requests).await;
    assert!(
        matches!(ping, (0, client_message::Kind::Ping(feed::Ping { id: 1 }))),
        "{ping:?}"
    );
    // Heartbeats keep it alive well past the silence timeout...
    let started = Instant::now();
    for _ in 0..12 {
        let beat = server_message::Kind::Heartbeat(feed::Heartbeat { server_time_us: 1 });
        stream.send(Ok(ServerMessage { kind: Some(beat) })).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.opened.try_recv().is_err(), "no new stream while alive");
    // ...then silence, and a new stream.
    let (n, _stream) = next(&mut h.opened).await;
    assert_eq!(n, 1);
    assert!(started.elapsed() >= Duration::from_millis(1_200));
    h.stop().await;
}

/// A CA made for the test, and certificates it signs.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn sign(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// `[gateway.grpc.tls]` with its files written into `dir`.
fn tls_files(dir: &std::path::Path, ca: &str, client: Option<&(String, String)>) -> TlsConfig {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    TlsConfig {
        ca_file: Some(write("ca.pem", ca)),
        cert_file: client.map(|(cert, _)| write("client.pem", cert)),
        key_file: client.map(|(_, key)| write("client.key", key)),
        domain: None,
    }
}

/// Sends one trade on the stream the server opened and returns the frame that reached the
/// gateway's output.
async fn one_trade_through(h: &mut Harness) -> Frame {
    let (_, stream) = next(&mut h.opened).await;
    assert_eq!(next(&mut h.requests).await.1, subscribe(&["A"]));
    stream
        .send(Ok(ServerMessage {
            kind: Some(trade("A", "a-1")),
        }))
        .unwrap();
    h.frame().await
}

#[tokio::test]
async fn an_https_feed_is_read_over_tls_trusting_the_configured_ca() {
    let ca = TestCa::new("tickflow test CA");
    let (cert, key) = ca.sign(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let url = "https://localhost:1";
    let tls = client_tls(url, &tls_files(dir.path(), &ca.pem, None)).unwrap();
    let server = ServerTls {
        cert,
        key,
        client_ca: None,
    };
    let mut h = Harness::start_tls(ProviderConfig::default(), &["A"], Some(server), tls).await;
    let frame = one_trade_through(&mut h).await;
    assert_eq!((frame.sequence, frame.key.as_deref()), (0, Some("A")));
    h.stop().await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_and_retried() {
    let ours = TestCa::new("the CA the gateway trusts");
    let theirs = TestCa::new("some other CA");
    let (cert, key) = theirs.sign(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let tls = client_tls("https://x", &tls_files(dir.path(), &ours.pem, None)).unwrap();
    let server = ServerTls {
        cert,
        key,
        client_ca: None,
    };
    let h = Harness::start_tls(ProviderConfig::default(), &["A"], Some(server), tls).await;
    // Refused at the handshake, again after each backoff: never a stream, and the reason said.
    let deadline = Instant::now() + WAIT;
    let connection = loop {
        let c = h.book.connections().pop();
        if let Some(c) = c.filter(|c| c.reconnects >= 2) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no retried connection failure in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!connection.up);
    let error = connection.last_error.unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");
    let mut h = h;
    assert!(
        h.opened.try_recv().is_err(),
        "no stream over an untrusted certificate"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_server_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let ca = TestCa::new("tickflow test CA");
    let (server_cert, server_key) = ca.sign(&["localhost"]);
    let clients = TestCa::new("client CA");
    let client = clients.sign(&["gateway"]);
    let dir = tempfile::tempdir().unwrap();
    let tls = client_tls("https://x", &tls_files(dir.path(), &ca.pem, Some(&client))).unwrap();
    let server = ServerTls {
        cert: server_cert,
        key: server_key,
        client_ca: Some(clients.pem.clone()),
    };
    let mut h = Harness::start_tls(ProviderConfig::default(), &["A"], Some(server), tls).await;
    let frame = one_trade_through(&mut h).await;
    assert_eq!(frame.key.as_deref(), Some("A"));
    h.stop().await;
}

#[test]
fn tls_settings_name_their_key_when_wrong() {
    let missing = TlsConfig {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    let e = client_tls("https://feed:443", &missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.grpc.tls.ca_file"), "{e}");
    assert!(
        client_tls("http://feed:80", &missing).unwrap().is_none(),
        "plain http ignores it"
    );
}

/// A numbered trade the feed holds.
fn numbered(symbol: &str, n: u64) -> feed::Trade {
    feed::Trade {
        symbol: symbol.into(),
        exchange: None,
        trade_id: format!("{symbol}-{n}"),
        price: format!("{}.25", 100 + n),
        size: "1".into(),
        side: feed::Side::Buy as i32,
        event_time_us: 1_763_769_600_000_000 + n as i64,
        sequence: None,
        number: Some(n),
    }
}

#[tokio::test]
async fn a_hole_is_replayed_and_what_the_feed_no_longer_holds_is_reported() {
    // The feed holds AAPL from number 10 on (older ones are gone), and MSFT.
    let held: Vec<feed::Trade> = (10..=60)
        .map(|n| numbered("AAPL", n))
        .chain((1..=5).map(|n| numbered("MSFT", n)))
        .collect();
    let feed = std::sync::Arc::new(Feed {
        streams: AtomicUsize::new(0),
        opened: mpsc::unbounded_channel().0,
        requests: mpsc::unbounded_channel().0,
        held: held.clone(),
        replays: AtomicUsize::new(0),
        replay_tokens: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MarketFeedServer::from_arc(feed.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let settings = ProviderConfig {
        url: Some(format!("http://127.0.0.1:{}", address.port())),
        ..Default::default()
    }
    .settings(&DEFAULTS);
    let source = crate::backfill::Source {
        provider: &tickflow_providers::grpc::Grpc,
        via: crate::backfill::Via::Replay(
            Replayer::new(&settings, None, Some("secret".into()), 1 << 20).unwrap(),
        ),
        rate_limit_backoff: Duration::from_millis(300),
        retry: tickflow_shared::retry::RetryPolicy {
            initial: Duration::from_millis(10),
            factor: 2.0,
            ceiling: Duration::from_millis(20),
        },
    };
    let crate::backfill::Via::Replay(replayer) = &source.via else {
        unreachable!()
    };
    let (output, mut frames) = crate::sink::queue(256, false, 1 << 20, true);
    let gap = tickflow_shared::gap::GapRecord {
        provider: PROVIDER.into(),
        exchange: PROVIDER.into(),
        symbol: "AAPL".into(),
        instrument: "AAPL".into(),
        first_missing: 5,
        last_missing: 40,
        after_time: 0,
        status: "OPEN".into(),
        still_missing: 36,
        found: "reconnect".into(),
        reason: String::new(),
        source: "md.raw.grpc/0@1".into(),
        at: 1,
    };
    let started = Instant::now();
    let mut next_at = Instant::now();
    let walk = crate::backfill::replay(
        &crate::config::BackfillConfig::default(),
        &output,
        &Shutdown::new(),
        &source,
        replayer,
        &mut next_at,
        &gap,
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "RESOURCE_EXHAUSTED waited out"
    );
    assert_eq!(walk.stopped, None);
    assert_eq!((walk.sent, walk.unrecoverable), (31, 5));
    assert_eq!(walk.gone, vec![(5, 9)], "the feed no longer holds 5..=9");
    drop(output);
    let mut got = Vec::new();
    while let Some(frame) = frames.recv().await {
        assert_eq!(&*frame.channel, crate::backfill::CHANNEL);
        assert_eq!(frame.key.as_deref(), Some("AAPL"));
        let Some(server_message::Kind::Trade(t)) =
            ServerMessage::decode(frame.payload.as_ref()).unwrap().kind
        else {
            panic!("not a trade")
        };
        got.push(t);
    }
    let expected: Vec<feed::Trade> = (10..=40).map(|n| numbered("AAPL", n)).collect();
    assert_eq!(
        got, expected,
        "in number order, each once, as the feed holds them"
    );
    assert_eq!(
        *feed.replay_tokens.lock().unwrap(),
        vec![Some("Bearer secret".to_string()); 2],
        "the Stream's token on every call"
    );
}
