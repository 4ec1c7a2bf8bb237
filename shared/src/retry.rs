//! The reconnect / retry policy, named and visible: initial delay, factor, ceiling, with jitter.
//! Loops that wait on a dependency use it so a dead dependency costs a log line per attempt, not a
//! spinning CPU or a crash loop.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub factor: f32,
    pub ceiling: Duration,
}

impl RetryPolicy {
    /// For dependencies at start and after a loss: 0.5 s, doubling, at most 30 s.
    pub const DEPENDENCY: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(500),
        factor: 2.0,
        ceiling: Duration::from_secs(30),
    };

    /// For the `/readyz` checks of a dependency that is down: 0.5 s, doubling, at most 5 s. A
    /// check is one cheap request; with the 30 s of [`RetryPolicy::DEPENDENCY`], readiness came
    /// back up to a minute after the dependency did (a check just after it returned may still
    /// fail while the driver refills its connections, then the next one waited up to 30 s).
    pub const READINESS: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(500),
        factor: 2.0,
        ceiling: Duration::from_secs(5),
    };

    /// The delay before retry `attempt` (from 0), for loops that keep their own attempt count
    /// (and start it over after a healthy spell): `initial × factor^attempt`, at most the
    /// ceiling, then full jitter, a uniform draw from half of it up to all of it, so clients that
    /// failed together do not come back together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let grown =
            self.initial.as_secs_f64() * f64::from(self.factor).powi(attempt.min(64) as i32);
        let base = grown.min(self.ceiling.as_secs_f64());
        let millis = (base * 1_000.0) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }

    /// An endless iterator of delays (with jitter).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_factor(self.factor)
            .with_max_delay(self.ceiling)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Calls `attempt` until it succeeds or shutdown is triggered (then `None`). Every failure is
/// logged with what was tried, the attempt number and the next delay.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    policy: RetryPolicy,
    shutdown: &Shutdown,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    let mut n: u64 = 0;
    loop {
        n += 1;
        let outcome = tokio::select! {
            r = attempt() => r,
            () = shutdown.triggered() => return None,
        };
        match outcome {
            Ok(v) => {
                if n > 1 {
                    tracing::info!(what, attempts = n, "succeeded after retrying");
                }
                return Some(v);
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(policy.ceiling);
                tracing::warn!(what, attempt = n, retry_in_ms = delay.as_millis() as u64, error = %e, "failed, will retry");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.triggered() => return None,
                }
            }
        }
    }
}

/// Runs [`until_ok`] for every item, at most `max_in_flight` at once, and waits for all of them.
/// `true` if every one succeeded, `false` if shutdown cut any short. (A window over
/// `FuturesUnordered` rather than `buffer_unordered`: that combinator's closures keep a caller's
/// future from being provably `Send`, rust-lang/rust#102211.)
pub async fn each_until_ok<'a, T, E, F, Fut>(
    items: &'a [T],
    what: &str,
    policy: RetryPolicy,
    max_in_flight: usize,
    shutdown: &Shutdown,
    attempt: F,
) -> bool
where
    E: std::fmt::Display,
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    use futures::stream::{FuturesUnordered, StreamExt};
    let attempt = &attempt;
    let mut items = items.iter();
    let mut in_flight = FuturesUnordered::new();
    let mut all_landed = true;
    loop {
        while in_flight.len() < max_in_flight.max(1) {
            let Some(item) = items.next() else { break };
            in_flight.push(until_ok(what, policy, shutdown, move || attempt(item)));
        }
        match in_flight.next().await {
            Some(landed) => all_landed &= landed.is_some(),
            None => return all_landed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_stay() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            factor: 2.0,
            ceiling: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = policy.delays().take(20).collect();
        assert_eq!(delays.len(), 20, "endless");
        // Jitter adds up to one more delay on top; never beyond twice the ceiling.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays[19] >= Duration::from_secs(1), "{delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_then_succeeds() {
        let shutdown = Shutdown::new();
        let mut calls = 0;
        let got = until_ok("thing", RetryPolicy::DEPENDENCY, &shutdown, || {
            calls += 1;
            let ok = calls >= 3;
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err("down")
                }
            }
        })
        .await;
        assert_eq!(got, Some(7));
        assert_eq!(calls, 3);
    }

    #[test]
    fn delay_grows_by_the_factor_to_the_ceiling_with_full_jitter() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            factor: 3.0,
            ceiling: Duration::from_secs(2),
        };
        for (attempt, full) in [(0, 100), (1, 300), (2, 900), (3, 2_000), (200, 2_000)] {
            for _ in 0..50 {
                let d = policy.delay(attempt).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d} ms");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_stops_on_shutdown() {
        let shutdown = Shutdown::new();
        shutdown.trigger_on(tokio::time::sleep(Duration::from_secs(5)));
        let got: Option<()> = until_ok("never", RetryPolicy::DEPENDENCY, &shutdown, || async {
            Err::<(), _>("down")
        })
        .await;
        assert_eq!(got, None);
    }
}
