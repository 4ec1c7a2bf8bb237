//! The query API for downstream systems, from the fair prices published on the output topic by
//! every instance (see [`crate::query_feed`]), so every replica answers for every instrument:
//! HTTP `GET /v1/fairprice` (every instrument) and `GET /v1/fairprice/{instrument}`, and the gRPC
//! service of `proto/tickflow/fairprice/v1/fair_price.proto` (`Latest`, `Subscribe`).
//! Decimals are strings so no digit is lost.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use crate::records::FairPrice;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde_json::{json, Value};
use tickflow_shared::proto::fairprice as pb;
use tickflow_shared::shutdown::Shutdown;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// Publications a slow gRPC subscriber may fall behind by before it is cut off.
const SUBSCRIBER_BUFFER: usize = 4096;

/// The latest fair price of each instrument, and every publication as it happens.
pub struct Latest {
    prices: RwLock<BTreeMap<String, FairPrice>>,
    updates: broadcast::Sender<FairPrice>,
}

impl Default for Latest {
    fn default() -> Self {
        Self {
            prices: RwLock::new(BTreeMap::new()),
            updates: broadcast::channel(SUBSCRIBER_BUFFER).0,
        }
    }
}

impl Latest {
    /// Takes `fp` if it is newer (by `computed_at`) than the instrument's latest, and tells the
    /// subscribers; an older or repeated one (a replayed record) changes nothing.
    pub fn offer(&self, fp: &FairPrice) {
        // A poisoned lock only means a reader panicked; the map is still whole.
        let mut prices = self.prices.write().unwrap_or_else(|p| p.into_inner());
        if prices
            .get(&fp.instrument)
            .is_some_and(|old| old.computed_at >= fp.computed_at)
        {
            return;
        }
        prices.insert(fp.instrument.clone(), fp.clone());
        drop(prices);
        // No subscriber is not an error.
        let _ = self.updates.send(fp.clone());
    }

    pub fn get(&self, instrument: &str) -> Option<FairPrice> {
        let prices = self.prices.read().unwrap_or_else(|p| p.into_inner());
        prices.get(instrument).cloned()
    }

    pub fn all(&self) -> Vec<FairPrice> {
        let prices = self.prices.read().unwrap_or_else(|p| p.into_inner());
        prices.values().cloned().collect()
    }
}

pub fn routes(latest: Arc<Latest>) -> Router {
    Router::new()
        .route("/v1/fairprice", get(all))
        .route("/v1/fairprice/{instrument}", get(one))
        .with_state(latest)
}

async fn all(State(latest): State<Arc<Latest>>) -> impl IntoResponse {
    let prices: Vec<Value> = latest.all().iter().map(fair_price_json).collect();
    Json(json!({ "fair_prices": prices }))
}

async fn one(
    State(latest): State<Arc<Latest>>,
    Path(instrument): Path<String>,
) -> impl IntoResponse {
    match latest.get(&instrument) {
        Some(fp) => (StatusCode::OK, Json(fair_price_json(&fp))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": format!("no fair price for {instrument} published (no trade yet, or none within fair_price.query_history_ms)")
            })),
        ),
    }
}

pub fn fair_price_json(fp: &FairPrice) -> Value {
    json!({
        "instrument": fp.instrument,
        "price": fp.price.map(|p| p.to_string()),
        "method": fp.method.as_str(),
        "sources_used": fp.sources_used.iter().map(|s| json!({
            "provider": s.provider,
            "exchange": s.exchange,
            "price": s.price.to_string(),
            "volume": s.volume.to_string(),
            "last_event_time_us": s.last_event_time,
        })).collect::<Vec<Value>>(),
        "sources_excluded": fp.sources_excluded.iter().map(|s| json!({
            "provider": s.provider,
            "exchange": s.exchange,
            "reason": s.reason.as_str(),
            "detail": s.detail,
        })).collect::<Vec<Value>>(),
        "dispersion": fp.dispersion,
        "confidence": fp.confidence,
        "lookback_volume": fp.lookback_volume.to_string(),
        "newest_event_time_us": fp.newest_event_time,
        "computed_at_us": fp.computed_at,
        "stale": fp.stale,
        "trigger": fp.trigger.as_str(),
    })
}

pub fn to_proto(fp: &FairPrice) -> pb::FairPrice {
    pb::FairPrice {
        instrument: fp.instrument.clone(),
        price: fp.price.map(|p| p.to_string()).unwrap_or_default(),
        method: fp.method.as_str().into(),
        sources_used: fp
            .sources_used
            .iter()
            .map(|s| pb::Source {
                provider: s.provider.clone(),
                exchange: s.exchange.clone(),
                price: s.price.to_string(),
                volume: s.volume.to_string(),
                last_event_time_us: s.last_event_time,
            })
            .collect(),
        sources_excluded: fp
            .sources_excluded
            .iter()
            .map(|s| pb::ExcludedSource {
                provider: s.provider.clone(),
                exchange: s.exchange.clone(),
                reason: s.reason.as_str().into(),
                detail: s.detail.clone(),
            })
            .collect(),
        dispersion: fp.dispersion,
        confidence: fp.confidence,
        lookback_volume: fp.lookback_volume.to_string(),
        newest_event_time_us: fp.newest_event_time.unwrap_or(0),
        computed_at_us: fp.computed_at,
        stale: fp.stale,
        trigger: fp.trigger.as_str().into(),
    }
}

/// The gRPC service. Subscriptions end when `shutdown` is triggered, so the server can stop.
pub struct Grpc {
    pub latest: Arc<Latest>,
    pub shutdown: Shutdown,
}

type FairPriceStream = Pin<Box<dyn Stream<Item = Result<pb::FairPrice, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fair_price_service_server::FairPriceService for Grpc {
    async fn latest(
        &self,
        request: Request<pb::LatestRequest>,
    ) -> Result<Response<pb::FairPrice>, Status> {
        let instrument = request.into_inner().instrument;
        match self.latest.get(&instrument) {
            Some(fp) => Ok(Response::new(to_proto(&fp))),
            None => Err(Status::not_found(format!(
                "no fair price for {instrument} published"
            ))),
        }
    }

    type SubscribeStream = FairPriceStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let wanted: std::collections::BTreeSet<String> =
            request.into_inner().instruments.into_iter().collect();
        // Subscribe before taking the snapshot, so nothing published in between is missed.
        let updates = BroadcastStream::new(self.latest.updates.subscribe());
        let matches = move |fp: &FairPrice| wanted.is_empty() || wanted.contains(&fp.instrument);
        let snapshot: Vec<Result<pb::FairPrice, Status>> = self
            .latest
            .all()
            .iter()
            .filter(|fp| matches(fp))
            .map(|fp| Ok(to_proto(fp)))
            .collect();
        let live = updates.filter_map(move |update| match update {
            Ok(fp) if matches(&fp) => Some(Ok(to_proto(&fp))),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(format!(
                "subscriber fell {n} publications behind; resubscribe"
            )))),
        });
        let shutdown = self.shutdown.clone();
        let stream =
            futures::StreamExt::take_until(tokio_stream::iter(snapshot).chain(live), async move {
                shutdown.triggered().await
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
