//! Runtime control of the subscriptions, without restart:
//! - the admin HTTP API (JSON, bearer token, on localhost unless configured) lists every
//!   subscription and connection with its state, and adds or removes instruments per provider;
//! - the config file and the instruments file are re-read when they change; the new instrument
//!   lists take effect at once. Other changed keys are reported as needing a restart.
//!
//! Each change is turned into the wanted set of each provider (`plan`), which its manager
//! follows, touching only the subscriptions that differ.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tickflow_shared::instruments::{self, InstrumentIndex};
use tickflow_shared::shutdown::Shutdown;
use tokio::sync::watch;

use crate::config::{Config, GatewayConfig};
use crate::plan::{self, Desired, Overrides, Shard};
use crate::state::{Book, Connection, Subscription};

/// The providers whose subscriptions can change at runtime (the simulator's are fixed).
pub struct Control {
    shard: Shard,
    book: Book,
    inner: Mutex<Inner>,
}

struct Inner {
    gateway: GatewayConfig,
    index: InstrumentIndex,
    overrides: BTreeMap<&'static str, Overrides>,
    senders: BTreeMap<&'static str, watch::Sender<Desired>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("unknown or disabled provider {0:?}; enabled: {1}")]
    Provider(String, String),
    #[error("{instrument:?} has no listing for {provider} in the instruments file")]
    Unlisted {
        provider: String,
        instrument: String,
    },
    #[error("{instrument:?} belongs to gateway replica {owner} (this is replica {this} of {count}); ask that replica")]
    OtherShard {
        instrument: String,
        owner: u32,
        this: u32,
        count: u32,
    },
}

impl Control {
    pub fn new(gateway: GatewayConfig, index: InstrumentIndex, book: Book) -> Self {
        Self {
            shard: Shard {
                index: gateway.replica_index,
                count: gateway.replica_count,
            },
            book,
            inner: Mutex::new(Inner {
                gateway,
                index,
                overrides: BTreeMap::new(),
                senders: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Registers an enabled provider; its manager follows the returned receiver.
    pub fn register(&self, provider: &'static str) -> watch::Receiver<Desired> {
        let mut inner = self.lock();
        let wanted = inner.desired(provider, self.shard);
        let (tx, rx) = watch::channel(wanted);
        inner.senders.insert(provider, tx);
        rx
    }

    /// Adds and removes instruments on a provider; returns the provider's wanted set after it.
    pub fn change(
        &self,
        provider: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Desired, ChangeError> {
        let mut inner = self.lock();
        let Some((&name, _)) = inner.senders.get_key_value(provider) else {
            let enabled: Vec<&str> = inner.senders.keys().copied().collect();
            return Err(ChangeError::Provider(
                provider.to_string(),
                enabled.join(", "),
            ));
        };
        for instrument in add.iter().chain(remove) {
            if plan::symbol_of(&inner.index, name, instrument).is_none() {
                return Err(ChangeError::Unlisted {
                    provider: name.to_string(),
                    instrument: instrument.clone(),
                });
            }
            if !self.shard.owns(instrument) {
                return Err(ChangeError::OtherShard {
                    instrument: instrument.clone(),
                    owner: plan::owner(instrument, self.shard.count),
                    this: self.shard.index,
                    count: self.shard.count,
                });
            }
        }
        let overrides = inner.overrides.entry(name).or_default();
        for a in add {
            overrides.removed.remove(a);
            overrides.added.insert(a.clone());
        }
        for r in remove {
            overrides.added.remove(r);
            overrides.removed.insert(r.clone());
        }
        tracing::info!(provider = name, added = ?add, removed = ?remove, "subscriptions changed through the admin API");
        Ok(inner.publish(name, self.shard))
    }

    /// Takes a re-read configuration: new instrument lists and reference data apply now.
    pub fn reload(&self, config: &Config, index: InstrumentIndex) {
        let mut inner = self.lock();
        let old = &inner.gateway;
        for ((name, before), (_, after)) in
            old.providers().into_iter().zip(config.gateway.providers())
        {
            let mut a = before.clone();
            let mut b = after.clone();
            a.instruments.clear();
            b.instruments.clear();
            if a != b {
                tracing::warn!(provider = name, "gateway.{name} changed beyond its instruments: that part takes effect at the next restart");
            }
        }
        inner.gateway = config.gateway.clone();
        inner.index = index;
        let providers: Vec<&'static str> = inner.senders.keys().copied().collect();
        for p in providers {
            let wanted = inner.publish(p, self.shard);
            tracing::info!(
                provider = p,
                symbols = wanted.len(),
                "configuration reloaded"
            );
        }
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        Status {
            replica_index: self.shard.index,
            replica_count: self.shard.count,
            providers: inner.senders.keys().map(|p| p.to_string()).collect(),
            connections: self.book.connections(),
            subscriptions: self.book.subscriptions(),
        }
    }
}

impl Inner {
    fn desired(&self, provider: &'static str, shard: Shard) -> Desired {
        let config = self
            .gateway
            .providers()
            .into_iter()
            .find(|(n, _)| *n == provider)
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        let overrides = self.overrides.get(provider).cloned().unwrap_or_default();
        let (wanted, unlisted) = plan::desired(provider, &config, &self.index, &overrides, shard);
        if !unlisted.is_empty() {
            tracing::warn!(provider, instruments = ?unlisted, "no listing for these instruments in the instruments file (or inactive): not subscribed");
        }
        wanted
    }

    fn publish(&mut self, provider: &'static str, shard: Shard) -> Desired {
        let wanted = self.desired(provider, shard);
        if let Some(tx) = self.senders.get(provider) {
            tx.send_if_modified(|current| {
                let changed = *current != wanted;
                *current = wanted.clone();
                changed
            });
        }
        wanted
    }
}

/// `GET /v1/subscriptions`
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub replica_index: u32,
    pub replica_count: u32,
    pub providers: Vec<String>,
    #[serde(skip_deserializing)]
    pub connections: Vec<Connection>,
    #[serde(skip_deserializing)]
    pub subscriptions: Vec<Subscription>,
}

/// `POST /v1/subscriptions/{provider}`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangeRequest {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

#[derive(Clone)]
struct Api {
    control: Arc<Control>,
    token_digest: [u8; 32],
    reload: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

impl Api {
    fn authorised(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared as digests, so the time taken says nothing about the token.
        match given {
            Some(t) if Sha256::digest(t.as_bytes())[..] == self.token_digest[..] => Ok(()),
            Some(_) => Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "wrong bearer token",
            ))),
            None => Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "missing header: Authorization: Bearer <gateway.admin token>",
            ))),
        }
    }
}

async fn list(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.authorised(&headers) {
        return *r;
    }
    Json(api.control.status()).into_response()
}

async fn change(
    State(api): State<Api>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = api.authorised(&headers) {
        return *r;
    }
    let request: ChangeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                "body must be {{\"add\": [instrument, ...], \"remove\": [instrument, ...]}}: {e}"
            ),
            )
        }
    };
    match api.control.change(&provider, &request.add, &request.remove) {
        Ok(wanted) => {
            Json(serde_json::json!({ "provider": provider, "subscribed": wanted })).into_response()
        }
        Err(e @ ChangeError::OtherShard { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ChangeError::Provider(..)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn reload(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.authorised(&headers) {
        return *r;
    }
    match (api.reload)() {
        Ok(()) => Json(serde_json::json!({ "reloaded": true })).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// The admin token: the variable named by `gateway.admin.token_env`, else the file.
pub fn admin_token(g: &GatewayConfig) -> Option<String> {
    let from_env = std::env::var(&g.admin.token_env).ok();
    let from_file = || {
        g.admin
            .token_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
    };
    from_env
        .or_else(from_file)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Serves the admin API until shutdown. Without a token it is not served at all.
pub async fn serve_admin(
    control: Arc<Control>,
    g: &GatewayConfig,
    reloader: Arc<Reloader>,
    shutdown: Shutdown,
) -> tickflow_shared::Result<()> {
    if g.admin.listen.is_empty() {
        return Ok(());
    }
    let Some(token) = admin_token(g) else {
        tracing::warn!(variable = %g.admin.token_env, file = ?g.admin.token_file, "the admin API is off: no token (set the variable or gateway.admin.token_file)");
        return Ok(());
    };
    let api = Api {
        control,
        token_digest: Sha256::digest(token.as_bytes()).into(),
        reload: Arc::new(move || reloader.reload_now()),
    };
    let app = Router::new()
        .route("/v1/subscriptions", get(list))
        .route("/v1/subscriptions/{provider}", post(change))
        .route("/v1/reload", post(reload))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(&g.admin.listen)
        .await
        .map_err(|e| {
            tickflow_shared::Error::Config(format!(
                "gateway.admin.listen = {}: {e}",
                g.admin.listen
            ))
        })?;
    tracing::info!(listen = %g.admin.listen, "admin API listening");
    tokio::spawn(async move {
        let stop = shutdown.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.triggered().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(())
}

/// Re-reads the config file and the instruments file when their content changes.
pub struct Reloader {
    control: Arc<Control>,
    path: Option<PathBuf>,
    seen: Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    pub fn new(control: Arc<Control>, path: Option<PathBuf>) -> Self {
        let reloader = Self {
            control,
            path,
            seen: Mutex::new(None),
        };
        let fingerprint = reloader.fingerprint();
        *reloader.seen.lock().unwrap_or_else(|p| p.into_inner()) = fingerprint;
        reloader
    }

    /// A digest of both files' bytes (the instruments file named by the current config).
    fn fingerprint(&self) -> Option<[u8; 32]> {
        let path = self.path.as_ref()?;
        let mut hash = Sha256::new();
        hash.update(std::fs::read(path).ok()?);
        let instruments = self.control.lock().gateway.instruments_file.clone();
        if let Some(i) = instruments {
            hash.update(std::fs::read(i).unwrap_or_default());
        }
        Some(hash.finalize().into())
    }

    /// Loads and applies the files now. A file that does not load or validate changes nothing.
    pub fn reload_now(&self) -> Result<(), String> {
        use tickflow_shared::config::Validate as _;
        let config: Config = tickflow_shared::config::load(self.path.as_deref())
            .and_then(Config::validated)
            .map_err(|e| e.to_string())?;
        let index = InstrumentIndex::new(match &config.gateway.instruments_file {
            Some(p) => instruments::load_file(p).map_err(|e| e.to_string())?,
            None => Vec::new(),
        });
        self.control.reload(&config, index);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = self.fingerprint();
        Ok(())
    }

    /// Checks for changes every `interval` until shutdown.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        if self.path.is_none() || interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = shutdown.triggered() => return,
                _ = tick.tick() => {}
            }
            let now = self.fingerprint();
            let before = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if now.is_some() && now != before {
                match self.reload_now() {
                    Ok(()) => {
                        tracing::info!(path = ?self.path, "configuration file changed: reloaded")
                    }
                    Err(e) => {
                        // Not retried until the file changes again.
                        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
                        tracing::error!(path = ?self.path, error = %e, "configuration file changed but does not load: keeping the running configuration");
                    }
                }
            }
        }
    }
}
