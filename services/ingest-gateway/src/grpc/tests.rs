use std::sync::atomic::AtomicUsize;

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
use crate::state::Subscription;

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

#[tokio::test]
async fn outbox_splits_large_sets_and_paces_them() {
    let mut outbox = Outbox::new(2.0);
    let symbols: Vec<String> = (0..1_200).map(|i| format!("S{i}")).collect();
    outbox.push(&symbols, true);
    outbox.push(&symbols[..1], false);
    let sizes: Vec<(bool, usize)> = outbox
        .paced
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
    assert!(outbox.pop_due().is_some());
    assert!(outbox.pop_due().is_none(), "the next one waits 500 ms");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(outbox.pop_due().is_some());
}

/// A feed server the test drives by hand: each stream it opens is announced with the sender of
/// its messages, and every request the gateway sends is passed on with its stream's number.
struct Feed {
    streams: AtomicUsize,
    opened: UnboundedSender<(usize, UnboundedSender<Result<ServerMessage, Status>>)>,
    requests: UnboundedSender<(usize, client_message::Kind)>,
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

impl Harness {
    async fn start(config: ProviderConfig, wanted: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let feed = Feed {
            streams: AtomicUsize::new(0),
            opened: opened_tx,
            requests: requests_tx,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MarketFeedServer::new(feed))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let settings = ProviderConfig {
            url: Some(format!("http://{address}")),
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
