//! The session machine driven by hand with tokio's paused time: no socket, no provider.

use super::*;
use crate::config::ProviderConfig;
use crate::session::loss::after_loss;
use tickflow_providers::WebSocket as _;
use tickflow_shared::config::MetricsConfig;
use tokio::time::advance;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn settings(data_silence_ms: u64) -> ProviderSettings {
    ProviderConfig {
        ping_interval_ms: Some(1_000),
        silence_timeout_ms: Some(3_000),
        data_silence_timeout_ms: Some(data_silence_ms),
        max_messages_per_s: Some(2.0),
        reconnect_initial_ms: Some(100),
        reconnect_max_ms: Some(1_000),
        rate_limit_backoff_ms: Some(30_000),
        ..Default::default()
    }
    .settings(&tickflow_providers::binance::Binance.defaults())
}

fn symbols(list: &[&str]) -> Symbols {
    list.iter()
        .map(|s| (s.to_string(), format!("{s}-INSTR")))
        .collect()
}

/// A machine for a connection carrying `list`, connected now, its subscribe requests queued
/// (one symbol per request, the request id as the message).
fn connected(book: &Book, list: &[&str], handshake: bool, data_silence_ms: u64) -> Machine<u64> {
    let carried = symbols(list);
    for (s, i) in &carried {
        book.want("binance", s, i, "binance-c0");
    }
    let mut m = Machine::new(
        "binance",
        "binance-c0",
        "trade",
        &settings(data_silence_ms),
        handshake,
        book,
        InstrumentLabels::new(&MetricsConfig::default()),
        Instant::now(),
    );
    m.connected(Instant::now(), &carried);
    let wanted: Vec<String> = carried.keys().cloned().collect();
    m.request(&wanted, true, 1, |_, id| vec![id]);
    m
}

/// Every action due now.
fn due(m: &mut Machine<u64>) -> Vec<Action<u64>> {
    std::iter::from_fn(|| m.poll(Instant::now(), true)).collect()
}

/// Advances paused time to the machine's next deadline and returns what is due then, with the
/// time it took.
async fn next(m: &mut Machine<u64>) -> (Duration, Vec<Action<u64>>) {
    let from = Instant::now();
    let at = m.deadline(true);
    advance(at.saturating_duration_since(from)).await;
    (Instant::now() - from, due(m))
}

fn state(book: &Book, symbol: &str) -> Option<SubState> {
    book.subscriptions()
        .into_iter()
        .find(|s| s.symbol == symbol)
        .map(|s| s.state)
}

fn data(m: &mut Machine<u64>, carried: &Symbols, symbol: &str) -> Frame {
    m.message(
        Instant::now(),
        now_micros(),
        Heard::Data {
            symbol: Some(symbol.into()),
        },
        Bytes::from_static(b"{}"),
        carried,
    )
}

#[tokio::test(start_paused = true)]
async fn requests_go_out_paced_to_the_providers_limit() {
    let book = Book::default();
    let mut m = connected(&book, &["a", "b", "c"], true, 0);
    assert_eq!(m.queued().count(), 3);
    assert_eq!(due(&mut m), vec![Action::Send(1)], "the first at once");
    assert_eq!(state(&book, "a"), Some(SubState::Pending));
    // 2 per second: one every 500 ms.
    assert_eq!(next(&mut m).await, (MS(500), vec![Action::Send(2)]));
    // The ping is due a second after connecting, unpaced.
    assert_eq!(
        next(&mut m).await,
        (MS(500), vec![Action::Send(3), Action::Ping(1)])
    );
    assert_eq!(next(&mut m).await, (MS(1_000), vec![Action::Ping(2)]));
}

#[tokio::test(start_paused = true)]
async fn pings_every_interval_and_a_silent_connection_closes_with_a_handshake() {
    let book = Book::default();
    let mut m = connected(&book, &[], true, 0);
    for id in 1..=2 {
        assert_eq!(next(&mut m).await, (MS(1_000), vec![Action::Ping(id)]));
    }
    // A pong (any frame) 2 s in: silence counts from it.
    m.heard(Instant::now());
    assert_eq!(next(&mut m).await, (MS(1_000), vec![Action::Ping(3)]));
    assert_eq!(next(&mut m).await, (MS(1_000), vec![Action::Ping(4)]));
    // 3 s after the last frame: silent. The close frame goes out, then nothing else does.
    assert_eq!(
        next(&mut m).await,
        (MS(1_000), vec![Action::Ping(5), Action::Close])
    );
    assert!(m.is_closing());
    // The provider does not answer: the session ends after CLOSE_WAIT, as silent.
    let (waited, actions) = next(&mut m).await;
    assert_eq!(waited, CLOSE_WAIT);
    match actions.as_slice() {
        [Action::End(Ended::Lost {
            reason: Loss::Silent,
            healthy: false,
            rate_limited: false,
            ..
        })] => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_provider_answering_the_close_ends_the_session_with_our_reason() {
    let book = Book::default();
    let mut m = connected(&book, &[], true, 0);
    assert_eq!(
        m.close(Instant::now(), Ended::Stopped),
        Action::<u64>::Close
    );
    advance(MS(200)).await;
    assert_eq!(due(&mut m), vec![], "waiting for the provider's close");
    assert_eq!(m.close_answered(), Some(Ended::Stopped));
}

#[tokio::test(start_paused = true)]
async fn without_a_handshake_silence_ends_the_session_at_once() {
    let book = Book::default();
    let mut m = connected(&book, &[], false, 0);
    m.heard(Instant::now());
    advance(MS(2_999)).await;
    m.heard(Instant::now());
    let mut actions = Vec::new();
    while !matches!(actions.last(), Some(Action::End(_))) {
        actions.extend(next(&mut m).await.1);
    }
    assert!(
        matches!(
            actions.last(),
            Some(Action::End(Ended::Lost {
                reason: Loss::Silent,
                ..
            }))
        ),
        "{actions:?}"
    );
    assert!(!actions.contains(&Action::Close));
}

#[tokio::test(start_paused = true)]
async fn pings_and_heartbeats_are_no_market_data() {
    let book = Book::default();
    let carried = symbols(&["a"]);
    let mut m = connected(&book, &["a"], false, 2_500);
    let _ = due(&mut m);
    let mut elapsed = Duration::ZERO;
    let ended = loop {
        let (took, actions) = next(&mut m).await;
        elapsed += took;
        // Every second a heartbeat, never a trade.
        let _ = m.message(
            Instant::now(),
            now_micros(),
            Heard::Control("heartbeat"),
            Bytes::from_static(b"{}"),
            &carried,
        );
        if let Some(Action::End(e)) = actions.into_iter().last() {
            break e;
        }
    };
    assert_eq!(elapsed, MS(2_500), "data silence counts from the connect");
    assert!(
        matches!(
            ended,
            Ended::Lost {
                reason: Loss::NoData,
                ..
            }
        ),
        "{ended:?}"
    );
    // A trade now and then keeps it up.
    let mut m = connected(&book, &["a"], false, 2_500);
    for _ in 0..10 {
        let (_, actions) = next(&mut m).await;
        assert!(!actions.iter().any(|a| matches!(a, Action::End(_))));
        let _ = data(&mut m, &carried, "a");
    }
    // And with nothing carried it does not count at all.
    let mut idle = connected(&book, &[], false, 2_500);
    advance(MS(2_600)).await;
    m.heard(Instant::now());
    assert!(
        std::iter::from_fn(|| idle.poll(Instant::now(), false)).all(|a| !matches!(
            a,
            Action::End(Ended::Lost {
                reason: Loss::NoData,
                ..
            })
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn confirmations_refusals_and_data_move_each_subscription() {
    let book = Book::default();
    let carried = symbols(&["a", "b", "c", "d"]);
    let mut m = connected(&book, &["a", "b", "c", "d"], true, 0);
    let mut sent = Vec::new();
    while sent.len() < 4 {
        sent.extend(next(&mut m).await.1);
    }
    // "a" by its request id, "b" by name.
    for heard in [
        Heard::Subscribed {
            request_id: Some(1),
            symbols: vec![],
        },
        Heard::Subscribed {
            request_id: None,
            symbols: vec!["b".into()],
        },
    ] {
        let _ = m.message(Instant::now(), 0, heard, Bytes::new(), &carried);
    }
    assert_eq!(state(&book, "a"), Some(SubState::Active));
    assert_eq!(state(&book, "b"), Some(SubState::Active));
    assert_eq!(state(&book, "c"), Some(SubState::Pending));
    // Data for "c" makes it active without a confirmation; the frame is keyed by its symbol.
    let frame = data(&mut m, &carried, "c");
    assert_eq!(frame.key.as_deref(), Some("c"));
    assert_eq!(&*frame.channel, "trade");
    assert_eq!(state(&book, "c"), Some(SubState::Active));
    // A refusal that names nothing fails what is not active yet: "d" only.
    let frame = m.message(
        Instant::now(),
        0,
        Heard::Rejected {
            request_id: None,
            symbols: vec![],
            message: "invalid request".into(),
        },
        Bytes::new(),
        &carried,
    );
    assert_eq!(&*frame.channel, "control");
    assert_eq!(state(&book, "d"), Some(SubState::Failed));
    assert_eq!(state(&book, "a"), Some(SubState::Active));
    // The provider ends "a" on its own.
    let _ = m.message(
        Instant::now(),
        0,
        Heard::Ended {
            symbol: "a".into(),
            message: "delisted".into(),
        },
        Bytes::new(),
        &carried,
    );
    assert_eq!(state(&book, "a"), Some(SubState::Failed));
    // Frames are numbered in the order they arrived.
    let numbers: Vec<i64> = (0..3)
        .map(|_| data(&mut m, &carried, "b").sequence)
        .collect();
    assert_eq!(numbers, vec![5, 6, 7]);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_session_waits_the_rate_limit_backoff_and_a_healthy_one_starts_over() {
    let book = Book::default();
    let carried = symbols(&["a"]);
    let settings = settings(0);
    let mut attempt = 0;
    let wait = |ended: Ended, attempt: &mut u32| match ended {
        Ended::Lost {
            reason,
            detail,
            rate_limited,
            healthy,
        } => after_loss(
            &book,
            &settings,
            "binance",
            "binance-c0",
            carried.keys(),
            attempt,
            (reason, detail, rate_limited, healthy),
        ),
        other => panic!("{other:?}"),
    };
    // Three failed sessions: the backoff doubles (100, 200, 400 ms, each jittered down to half).
    for full in [100, 200, 400] {
        let m = connected(&book, &["a"], true, 0);
        let w = wait(m.lost(Loss::ConnectFailed, "refused".into()), &mut attempt);
        assert!((MS(full / 2)..=MS(full)).contains(&w), "{w:?} for {full}");
    }
    // The provider says we send too much, then closes with 1008: the wait is the rate limit's.
    let mut m = connected(&book, &["a"], true, 0);
    let _ = data(&mut m, &carried, "a");
    let _ = m.message(
        Instant::now(),
        0,
        Heard::Error {
            message: "too many requests".into(),
            rate_limited: true,
        },
        Bytes::new(),
        &carried,
    );
    let ended = m.closed_by_provider(1000, "bye", false);
    assert!(
        matches!(
            ended,
            Ended::Lost {
                reason: Loss::RateLimited,
                rate_limited: true,
                healthy: true,
                ..
            }
        ),
        "{ended:?}"
    );
    assert_eq!(wait(ended, &mut attempt), MS(30_000));
    // That session was healthy (data flowed): the step after it starts from the first again.
    let m = connected(&book, &["a"], true, 0);
    let w = wait(m.lost(Loss::ConnectFailed, "refused".into()), &mut attempt);
    assert!((MS(100)..=MS(200)).contains(&w), "{w:?}");
    assert_eq!(state(&book, "a"), Some(SubState::Connecting));
}
