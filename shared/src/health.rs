//! Health, readiness and the HTTP endpoint of every service: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (every dependency answers a real request).
//!
//! Dependencies are watched by background checks that back off while a dependency is down and
//! log each change of state once, so a dead dependency shows in `/readyz`, in
//! `tickflow_dependency_up` and in the log — not as a crash loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::domain::{now_micros, Micros};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::telemetry::{DEPENDENCY_CHECK_FAILURES, DEPENDENCY_UP};

/// What `/readyz` reports for one dependency.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DependencyStatus {
    pub ready: bool,
    pub detail: String,
    /// When it last changed state, µs since the epoch.
    pub since: Micros,
}

/// Readiness of the service: ready when every registered dependency is.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<RwLock<BTreeMap<String, DependencyStatus>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dependency, not ready until its first successful check.
    pub fn register(&self, name: &str) {
        self.write()
            .entry(name.to_string())
            .or_insert(DependencyStatus {
                ready: false,
                detail: "not checked yet".into(),
                since: now_micros(),
            });
        metrics::gauge!(DEPENDENCY_UP, "dependency" => name.to_string()).set(0.0);
    }

    /// Records a check result; returns true if the state changed.
    pub fn set(&self, name: &str, ready: bool, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        let mut map = self.write();
        let entry = map.entry(name.to_string()).or_insert(DependencyStatus {
            ready: !ready,
            detail: String::new(),
            since: 0,
        });
        let changed = entry.ready != ready;
        if changed {
            entry.since = now_micros();
        }
        entry.ready = ready;
        entry.detail = detail;
        metrics::gauge!(DEPENDENCY_UP, "dependency" => name.to_string()).set(if ready {
            1.0
        } else {
            0.0
        });
        changed
    }

    pub fn is_ready(&self) -> bool {
        self.read().values().all(|s| s.ready)
    }

    pub fn snapshot(&self) -> BTreeMap<String, DependencyStatus> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, DependencyStatus>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, DependencyStatus>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often a healthy dependency is checked.
pub const HEALTHY_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Watches one dependency until shutdown: checks it every [`HEALTHY_CHECK_INTERVAL`] while it
/// answers, and with [`RetryPolicy::READINESS`] backoff while it does not.
pub fn watch_dependency<F, Fut>(
    name: &'static str,
    readiness: &Readiness,
    shutdown: &Shutdown,
    check: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String>> + Send,
{
    readiness.register(name);
    let readiness = readiness.clone();
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut delays = RetryPolicy::READINESS.delays();
        let mut first_check = true;
        loop {
            let wait = match check().await {
                Ok(detail) => {
                    if readiness.set(name, true, detail.clone()) {
                        tracing::info!(dependency = name, %detail, "dependency is up");
                    }
                    delays = RetryPolicy::READINESS.delays();
                    HEALTHY_CHECK_INTERVAL
                }
                Err(e) => {
                    metrics::counter!(DEPENDENCY_CHECK_FAILURES, "dependency" => name, "error_type" => e.kind())
                        .increment(1);
                    let delay = delays.next().unwrap_or(RetryPolicy::READINESS.ceiling);
                    if readiness.set(name, false, e.to_string()) || first_check {
                        tracing::warn!(dependency = name, error = %e, retry_in_ms = delay.as_millis() as u64, "dependency is down");
                    } else {
                        tracing::debug!(dependency = name, error = %e, retry_in_ms = delay.as_millis() as u64, "dependency still down");
                    }
                    delay
                }
            };
            first_check = false;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.triggered() => break,
            }
        }
    });
}

#[derive(Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    dependencies: BTreeMap<String, DependencyStatus>,
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the service's own `routes` until shutdown.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Readiness,
    routes: Router,
    shutdown: &Shutdown,
) -> Result<SocketAddr> {
    let state = HttpState { metrics, readiness };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
        .merge(routes);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("service.http_listen {listen}: cannot bind: {e}")))?;
    let bound = listener.local_addr()?;
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.triggered().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed: /metrics and the probes stay down until the service restarts");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let body = ReadyBody {
        ready: state.readiness.is_ready(),
        dependencies: state.readiness.snapshot(),
    };
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_dependency_is() {
        let r = Readiness::new();
        assert!(r.is_ready(), "nothing to wait for");
        r.register("kafka");
        r.register("cassandra");
        assert!(!r.is_ready());
        assert!(r.set("kafka", true, "3 brokers"));
        assert!(!r.is_ready());
        assert!(r.set("cassandra", true, "5.0.9"));
        assert!(r.is_ready());
        assert!(!r.set("cassandra", true, "5.0.9"), "no change");
        assert!(r.set("cassandra", false, "connection refused"));
        assert!(!r.is_ready());
        assert_eq!(r.snapshot()["cassandra"].detail, "connection refused");
    }
}
