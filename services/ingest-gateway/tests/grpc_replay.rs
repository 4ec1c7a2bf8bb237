//! No gRPC trade lost, end to end: `tickflow-admin serve-feed` (a `tickflow.feed.v1` server
//! whose trades carry `number`) leaves a hole of 7 trades out of its stream every 2 s, and the
//! gateway and the normalizer run as processes on the real stack.
//!
//! Afterwards `md.trades` holds every trade the feed numbered from the first one the gateway
//! received to the last one printed, exactly once and as the feed holds it (price, size, time,
//! read back from the feed's own Replay), and `md.gaps` says that each hole was found and
//! filled: the normalizer found the holes in the numbering, the gateway got them back with
//! Replay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::gap::GapRecord;
use tickflow_shared::kafka;
use tickflow_shared::proto::feed::market_feed_client::MarketFeedClient;
use tickflow_shared::proto::feed::{server_message, ReplayRequest};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};

const HOLE: u64 = 7;

/// The feed server as a child process; killed when dropped.
struct Feed {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Feed {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_in_the_feeds_numbering_are_replayed_onto_md_trades_once() {
    let stack = Stack::require().await;
    let gateway_bin = env!("CARGO_BIN_EXE_ingest-gateway");
    let admin_bin = testkit::workspace_binary(gateway_bin, "tickflow-admin", "tickflow-admin");
    let normalizer_bin = testkit::workspace_binary(gateway_bin, "normalizer", "normalizer");
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", testkit::unique_topic("replay-raw"));
    let trades_topic = testkit::unique_topic("replay-trades");
    let gaps_topic = testkit::unique_topic("replay-gaps");
    let instruments = dir.path().join("instruments.toml");
    std::fs::write(
        &instruments,
        "[[instrument]]\ninstrument = \"MSFT\"\nbase = \"MSFT\"\nquote = \"USD\"\nasset_class = \"EQUITY\"\nlistings = [{ provider = \"grpc\", symbol = \"MSFT\" }]\n",
    )
    .unwrap();
    let file = instruments.display().to_string();

    // The normalizer first: it creates the gaps topic the gateway's backfill reads.
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(
        &admin,
        &[kafka::TopicSpec::new(format!("{prefix}grpc"), 1)],
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let mut normalizer = ServiceProcess::spawn(
        &normalizer_bin,
        &stack,
        &testkit::normalizer_env(
            "replay",
            &format!("{prefix}grpc"),
            &trades_topic,
            &gaps_topic,
            &file,
        ),
    );
    normalizer
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    // The feed: 50 trades/s for 11 s, a hole of 7 every 2 s, then 60 s more of Replay.
    let port = testkit::free_port();
    let state = dir.path().join("feed-state.json");
    let log = dir.path().join("feed.log");
    let mut feed = Feed {
        child: std::process::Command::new(&admin_bin)
            .args([
                "serve-feed",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--symbols",
                "MSFT",
                "--rate",
                "50",
                "--hole-every-s",
                "2",
                "--hole-len",
                &HOLE.to_string(),
                "--seconds",
                "11",
                "--linger-s",
                "60",
                "--state-file",
                &state.display().to_string(),
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("feed.err")).unwrap())
            .spawn()
            .expect("tickflow-admin serve-feed"),
        log: log.clone(),
    };
    let mut gateway = ServiceProcess::spawn(
        gateway_bin,
        &stack,
        &[
            ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", prefix.clone()),
            ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "false".into()),
            ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
            ("TICKFLOW_GATEWAY__INSTRUMENTS_FILE", file.clone()),
            ("TICKFLOW_GATEWAY__GRPC__ENABLED", "true".into()),
            (
                "TICKFLOW_GATEWAY__GRPC__URL",
                format!("http://127.0.0.1:{port}"),
            ),
            ("TICKFLOW_GATEWAY__GRPC__RECONNECT_INITIAL_MS", "100".into()),
            ("TICKFLOW_GATEWAY__GRPC__RECONNECT_MAX_MS", "400".into()),
            ("TICKFLOW_GATEWAY__BACKFILL__GAPS_TOPIC", gaps_topic.clone()),
            (
                "TICKFLOW_GATEWAY__BACKFILL__GROUP_ID",
                testkit::unique_name("replay", "gw", '-'),
            ),
        ],
    );
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;

    // Until the feed has stopped printing: then the state file has its last number.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !feed.log().contains("stopped printing") {
        assert!(
            Instant::now() < deadline,
            "the feed did not stop printing:\n{}",
            feed.log()
        );
        if let Ok(Some(status)) = feed.child.try_wait() {
            panic!("the feed exited ({status}):\n{}", feed.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let next: BTreeMap<String, u64> =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let last = next["MSFT"] - 1;
    assert!(last > 400, "about 550 trades printed: {last}");

    let registry = Registry::new(&stack.registry).unwrap();
    let reader = AvroCodec::new(&registry, &[]);
    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "it",
        &testkit::unique_name("it", "replay", '-'),
    )
    .unwrap();
    consumer
        .subscribe(&[trades_topic.as_str(), gaps_topic.as_str()])
        .unwrap();
    let mut trades: BTreeMap<u64, Vec<tickflow_shared::domain::Trade>> = BTreeMap::new();
    let mut gaps: Vec<GapRecord> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut settled: Option<Instant> = None;
    let complete = |trades: &BTreeMap<u64, Vec<_>>| {
        trades.keys().next().is_some_and(|first| {
            trades.len() as u64 == last - first + 1 && trades.contains_key(&last)
        })
    };
    while Instant::now() < deadline && settled.is_none_or(|s| s.elapsed() < Duration::from_secs(3))
    {
        if settled.is_none() && complete(&trades) {
            settled = Some(Instant::now());
        }
        let Ok(message) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let Ok(message) = message else { continue };
        let value = reader.decode(message.payload().unwrap()).await.unwrap();
        if message.topic() == trades_topic {
            let trade = tickflow_shared::avro::trade_from_value(value).unwrap();
            trades
                .entry(trade.trade_id.parse().unwrap())
                .or_default()
                .push(trade);
        } else {
            gaps.push(GapRecord::from_value(value).unwrap());
        }
    }
    let logs = format!(
        "--- gateway\n{}\n--- normalizer\n{}\n--- feed\n{}",
        gateway.log(),
        normalizer.log(),
        feed.log()
    );
    let first = *trades.keys().next().expect("trades on md.trades");
    let numbers: Vec<u64> = trades.keys().copied().collect();
    assert_eq!(
        numbers,
        (first..=last).collect::<Vec<_>>(),
        "every number from the first received to the last printed\n{logs}"
    );

    // Each once, as the feed holds it: read back with its own Replay.
    let mut client = MarketFeedClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut held = client
        .replay(ReplayRequest {
            symbol: "MSFT".into(),
            first,
            last,
        })
        .await
        .unwrap()
        .into_inner();
    let mut compared = 0;
    while let Some(message) = held.message().await.unwrap() {
        let Some(server_message::Kind::Trade(t)) = message.kind else {
            continue;
        };
        let n = t.number.unwrap();
        let got = &trades[&n];
        assert_eq!(got.len(), 1, "trade {n} once\n{logs}");
        let got = &got[0];
        // Equal as decimals (the Trade topic's Avro decimal has a fixed scale).
        let decimal = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
        assert_eq!(
            (got.price, got.size, got.event_time, got.instrument.as_str()),
            (decimal(&t.price), decimal(&t.size), t.event_time_us, "MSFT"),
            "trade {n}"
        );
        compared += 1;
    }
    assert_eq!(compared, last - first + 1);

    // The holes: each found and filled, none dropped.
    let holes = |status: &str| -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = gaps
            .iter()
            .filter(|g| g.status == status)
            .map(|g| (g.first_missing, g.last_missing))
            .collect();
        v.sort_unstable();
        v
    };
    let (opened, filled) = (holes("OPEN"), holes("FILLED"));
    assert!(
        opened.len() >= 3,
        "a hole every 2 s over 11 s: {gaps:?}\n{logs}"
    );
    assert!(
        opened.iter().all(|(a, b)| b - a + 1 == HOLE as i64),
        "{opened:?}"
    );
    assert_eq!(opened, filled, "every hole filled\n{logs}");
    assert!(gaps.iter().all(|g| g.status != "DROPPED"), "{gaps:?}");
    assert_eq!(
        gateway
            .metric_sum(
                "tickflow_gateway_backfill_trades_total",
                "provider=\"grpc\""
            )
            .await,
        (opened.len() as u64 * HOLE) as f64
    );
    gateway.terminate(Duration::from_secs(20));
    normalizer.terminate(Duration::from_secs(20));
}
