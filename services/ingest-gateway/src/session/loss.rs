//! Why a session ended, and what follows a loss: the reconnect counter, the book, the backoff.

use std::time::Duration;

use tickflow_shared::domain::now_micros;
use tickflow_shared::retry::RetryPolicy;

use crate::config::ProviderSettings;
use crate::metrics::RECONNECTS;
use crate::state::{Book, SubState};

/// Why a session was lost; its code is the `reason` label of the reconnect counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    /// No connection (or stream) within `connect_timeout_ms`.
    ConnectTimeout,
    /// Dialling, TLS or the handshake failed.
    ConnectFailed,
    /// The WebSocket handshake was answered with an HTTP error status.
    HandshakeRefused,
    /// The gRPC server refused us (unauthenticated, permission denied, unimplemented).
    Refused,
    /// The gRPC stream could not be opened.
    OpenFailed,
    /// No frame for `silence_timeout_ms`.
    Silent,
    /// Frames, but no market data for `data_silence_timeout_ms`.
    NoData,
    /// The provider closed the connection or ended the stream.
    Closed,
    /// The provider said we send too much (close code 1008, RESOURCE_EXHAUSTED).
    RateLimited,
    /// A text frame that is not UTF-8: RFC 6455 fails the connection.
    InvalidUtf8,
    /// A frame or message beyond the transport's limit.
    Oversized,
    ReadFailed,
    SendFailed,
    /// The gRPC stream failed with another status.
    StreamError,
}

impl Loss {
    pub const fn as_str(self) -> &'static str {
        match self {
            Loss::ConnectTimeout => "connect_timeout",
            Loss::ConnectFailed => "connect_failed",
            Loss::HandshakeRefused => "handshake_refused",
            Loss::Refused => "refused",
            Loss::OpenFailed => "open_failed",
            Loss::Silent => "silent",
            Loss::NoData => "no_data",
            Loss::Closed => "closed",
            Loss::RateLimited => "rate_limited",
            Loss::InvalidUtf8 => "invalid_utf8",
            Loss::Oversized => "oversized",
            Loss::ReadFailed => "read_failed",
            Loss::SendFailed => "send_failed",
            Loss::StreamError => "stream_error",
        }
    }
}

/// Why a session ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Ended {
    Shutdown,
    /// Nothing is wanted from it any more.
    Stopped,
    Lost {
        reason: Loss,
        detail: String,
        rate_limited: bool,
        /// Data flowed: the next reconnect starts from the first backoff step again.
        healthy: bool,
    },
}

pub(crate) fn lost(reason: Loss, detail: String, rate_limited: bool, healthy: bool) -> Ended {
    Ended::Lost {
        reason,
        detail,
        rate_limited,
        healthy,
    }
}

/// Sleeps until `until`, or forever without one (a `select!` branch that never fires).
pub(crate) async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(u) => tokio::time::sleep_until(u).await,
        None => std::future::pending().await,
    }
}

/// After a lost session: counts the reconnect, logs it, records it in the book (the connection's
/// last error, its subscriptions back to connecting) and says how long to wait before the next
/// attempt. `attempt` is the backoff step; a healthy session (data flowed) resets it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn after_loss<'a>(
    book: &Book,
    settings: &ProviderSettings,
    provider: &'static str,
    connection: &str,
    symbols: impl IntoIterator<Item = &'a String>,
    attempt: &mut u32,
    ended: (Loss, String, bool, bool),
) -> Duration {
    let (loss, detail, rate_limited, healthy) = ended;
    let reason = loss.as_str();
    metrics::counter!(RECONNECTS, "provider" => provider, "reason" => reason).increment(1);
    if healthy {
        *attempt = 0;
    }
    let mut wait = backoff(settings, *attempt);
    *attempt = attempt.saturating_add(1);
    if loss == Loss::InvalidUtf8 && healthy {
        // The connection failed on one frame, not on the provider: come back at once.
        wait = Duration::ZERO;
    }
    if rate_limited {
        wait = wait.max(settings.rate_limit_backoff);
    }
    tracing::warn!(provider, connection, reason, detail = %detail, rate_limited, retry_in_ms = wait.as_millis() as u64, "connection lost; reconnecting");
    book.connection(provider, connection, |c| {
        c.up = false;
        c.session = None;
        c.since_us = now_micros();
        c.reconnects += 1;
        c.last_error = Some(format!("{reason}: {detail}"));
    });
    book.set(provider, symbols, SubState::Connecting, None);
    wait
}

/// The wait before reconnect attempt `attempt` (from 0): the shared retry policy with the
/// provider's `reconnect_initial_ms` and `reconnect_max_ms`, doubling, jittered.
pub fn backoff(settings: &ProviderSettings, attempt: u32) -> Duration {
    RetryPolicy {
        initial: settings.reconnect_initial,
        factor: 2.0,
        ceiling: settings.reconnect_max,
    }
    .delay(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderConfig;
    use tickflow_providers::WebSocket as _;

    #[test]
    fn backoff_grows_to_the_ceiling_with_jitter() {
        let settings = ProviderConfig {
            reconnect_initial_ms: Some(100),
            reconnect_max_ms: Some(1_000),
            ..Default::default()
        }
        .settings(&tickflow_providers::binance::Binance.defaults());
        for (attempt, full) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1_000),
            (30, 1_000),
        ] {
            for _ in 0..50 {
                let d = backoff(&settings, attempt).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d} ms");
            }
        }
    }
}
