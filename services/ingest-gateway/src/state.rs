//! What the gateway is doing right now, for the admin API and the gauges: every subscription
//! with its state, and every connection with its state. Connections write it; readers take
//! snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tickflow_shared::domain::{now_micros, Micros};

/// A subscription's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubState {
    /// Wanted; its connection is not up (yet).
    Connecting,
    /// The subscribe request went out; no confirmation and no data yet.
    Pending,
    /// Confirmed by the provider, or data has arrived for it.
    Active,
    /// The provider refused it (see `detail`). Retried on the next reconnect.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub provider: &'static str,
    pub symbol: String,
    pub instrument: String,
    pub state: SubState,
    /// The connection that carries it (`<provider>-c<n>`).
    pub connection: Option<String>,
    pub detail: Option<String>,
    pub since_us: Micros,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub provider: &'static str,
    /// `<provider>-c<n>`: stable across reconnects (the metric label).
    pub name: String,
    /// The current session's id (the RawEnvelope's `connection_id`), while up.
    pub session: Option<String>,
    pub up: bool,
    pub since_us: Micros,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub streams: usize,
}

#[derive(Default)]
struct Inner {
    subscriptions: BTreeMap<(&'static str, String), Subscription>,
    connections: BTreeMap<(&'static str, String), Connection>,
}

/// Shared by every connection of every provider.
#[derive(Clone, Default)]
pub struct Book {
    inner: Arc<Mutex<Inner>>,
    last_data: Arc<Mutex<BTreeMap<&'static str, Arc<AtomicI64>>>>,
}

impl Book {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere mid-update; the map itself is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A subscription is wanted (or moved to another connection).
    pub fn want(&self, provider: &'static str, symbol: &str, instrument: &str, connection: &str) {
        let mut inner = self.lock();
        let entry = inner
            .subscriptions
            .entry((provider, symbol.to_string()))
            .or_insert_with(|| Subscription {
                provider,
                symbol: symbol.to_string(),
                instrument: instrument.to_string(),
                state: SubState::Connecting,
                connection: None,
                detail: None,
                since_us: now_micros(),
            });
        entry.connection = Some(connection.to_string());
    }

    pub fn forget(&self, provider: &'static str, symbol: &str) {
        self.lock()
            .subscriptions
            .remove(&(provider, symbol.to_string()));
    }

    /// Sets the state of `symbols` (on this provider); `detail` says why for `Failed`.
    pub fn set<'a>(
        &self,
        provider: &'static str,
        symbols: impl IntoIterator<Item = &'a String>,
        state: SubState,
        detail: Option<&str>,
    ) {
        let mut inner = self.lock();
        let now = now_micros();
        for symbol in symbols {
            if let Some(s) = inner.subscriptions.get_mut(&(provider, symbol.clone())) {
                if s.state != state {
                    s.since_us = now;
                }
                s.state = state;
                s.detail = detail.map(str::to_string);
            }
        }
    }

    pub fn connection(
        &self,
        provider: &'static str,
        name: &str,
        update: impl FnOnce(&mut Connection),
    ) {
        let mut inner = self.lock();
        let c = inner
            .connections
            .entry((provider, name.to_string()))
            .or_insert_with(|| Connection {
                provider,
                name: name.to_string(),
                session: None,
                up: false,
                since_us: now_micros(),
                reconnects: 0,
                last_error: None,
                streams: 0,
            });
        update(c);
    }

    pub fn drop_connection(&self, provider: &'static str, name: &str) {
        self.lock()
            .connections
            .remove(&(provider, name.to_string()));
    }

    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.lock().subscriptions.values().cloned().collect()
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.lock().connections.values().cloned().collect()
    }

    /// Active subscriptions by provider.
    pub fn active_by_provider(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for s in self.lock().subscriptions.values() {
            let n = counts.entry(s.provider).or_insert(0);
            if s.state == SubState::Active {
                *n += 1;
            }
        }
        counts
    }

    /// The clock of a provider's last market-data frame (µs), shared with its connections.
    pub fn last_data(&self, provider: &'static str) -> Arc<AtomicI64> {
        let mut map = self.last_data.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(provider)
            .or_insert_with(|| Arc::new(AtomicI64::new(now_micros())))
            .clone()
    }

    pub fn last_data_by_provider(&self) -> Vec<(&'static str, Micros)> {
        let map = self.last_data.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(p, t)| (*p, t.load(Ordering::Relaxed)))
            .collect()
    }
}
