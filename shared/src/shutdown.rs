//! Graceful shutdown. One token every task listens to, plus a tracker so the service knows when
//! all of its tasks have finished (the mini-redis pattern with tokio-util's primitives).
//!
//! On SIGTERM or SIGINT: intake stops, tasks flush and commit, the process exits 0 — or, if the
//! tasks have not finished within the deadline, exits anyway with a log line saying so.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every task finished within the deadline.
    Clean,
    /// The deadline passed with the main task or a spawned task still running.
    TimedOut,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every task to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been asked for.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// A child token, for APIs that take a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a task the shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Triggers shutdown when `trigger` resolves (a signal, or anything a test chooses).
    pub fn trigger_on<F>(&self, trigger: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = trigger => this.trigger(),
                () = this.triggered() => {}
            }
        });
    }

    /// Awaits the service's main task, then every spawned task. Until shutdown is asked for,
    /// `main` runs as long as it takes; from the moment it is (or `main` ends by itself), `main`
    /// and the spawned tasks together get `deadline`. A main task still running then is dropped
    /// and its output is `None`: the deadline holds whatever it is waiting on (a Kafka commit,
    /// a broker that does not answer).
    pub async fn finish<F: Future>(
        &self,
        main: F,
        deadline: Duration,
    ) -> (Option<F::Output>, Drained) {
        tokio::pin!(main);
        let ended = tokio::select! {
            out = &mut main => Some(out),
            () = self.triggered() => None,
        };
        let end = tokio::time::Instant::now() + deadline;
        let out = match ended {
            Some(out) => Some(out),
            None => tokio::time::timeout_at(end, main).await.ok(),
        };
        self.trigger();
        self.tracker.close();
        let drained = match tokio::time::timeout_at(end, self.tracker.wait()).await {
            Ok(()) if out.is_some() => Drained::Clean,
            _ => Drained::TimedOut,
        };
        (out, drained)
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_tasks_that_listen() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let flushed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flushed.clone();
        shutdown.spawn(async move {
            s.triggered().await;
            tokio::time::sleep(Duration::from_millis(300)).await; // flushing
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let (out, drained) = shutdown.finish(async { 7 }, Duration::from_secs(5)).await;
        assert_eq!((out, drained), (Some(7), Drained::Clean));
        assert!(flushed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn finish_gives_up_on_tasks_at_the_deadline() {
        let shutdown = Shutdown::new();
        shutdown.spawn(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let (out, drained) = shutdown.finish(async {}, Duration::from_secs(2)).await;
        assert_eq!((out, drained), (Some(()), Drained::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn the_main_task_runs_as_long_as_no_shutdown_is_asked() {
        let shutdown = Shutdown::new();
        let main = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "done"
        };
        let (out, drained) = shutdown.finish(main, Duration::from_secs(2)).await;
        assert_eq!((out, drained), (Some("done"), Drained::Clean));
    }

    #[tokio::test(start_paused = true)]
    async fn a_main_task_that_does_not_stop_is_dropped_at_the_deadline() {
        // The hang this guards against: a main task that, once asked to stop, waits on
        // something that does not answer (a transaction commit after a broker restart).
        let shutdown = Shutdown::new();
        shutdown.trigger_on(tokio::time::sleep(Duration::from_secs(10)));
        let s = shutdown.clone();
        let main = async move {
            s.triggered().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        };
        let started = tokio::time::Instant::now();
        let (out, drained) = shutdown.finish(main, Duration::from_secs(2)).await;
        assert_eq!((out, drained), (None, Drained::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn trigger_on_any_future() {
        let shutdown = Shutdown::new();
        shutdown.trigger_on(tokio::time::sleep(Duration::from_secs(1)));
        tokio::time::timeout(Duration::from_secs(2), shutdown.triggered())
            .await
            .expect("triggered by the future");
    }
}
