//! Queryable state: `GET /candles/{instrument}` returns the candles the operator holds for an
//! instrument right now (in progress, and closed ones within the allowed lateness), newest first,
//! straight from the operator. Decimals are JSON strings so no digit is lost. With several
//! instances each holds the instruments of its own partitions: 404 for the others (the results
//! of every instance are in Cassandra and on the candle topic).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tickflow_shared::domain::Candle;
use tokio::sync::{mpsc, oneshot};

use tickflow_shared::runtime::Inspect;

use crate::operator::Aggregator;

/// The channel queries reach the running operator through.
pub type Queries = mpsc::Sender<Inspect<Aggregator>>;

pub fn routes(queries: Queries) -> Router {
    Router::new()
        .route("/candles/{instrument}", get(candles))
        .with_state(queries)
}

async fn candles(
    State(queries): State<Queries>,
    Path(instrument): Path<String>,
) -> impl IntoResponse {
    let (reply, answer) = oneshot::channel();
    let asked = queries
        .send({
            let instrument = instrument.clone();
            Box::new(move |operator: &Aggregator| {
                let _ = reply.send(operator.candles_of(&instrument));
            })
        })
        .await;
    match (asked, answer.await) {
        (Ok(()), Ok(candles)) if candles.is_empty() => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": format!("this instance holds no candle of {instrument}: no trade yet, or its partition is owned by another instance (every instance's candles are in Cassandra candles_1m and on the candle topic)")
            })),
        ),
        (Ok(()), Ok(candles)) => (
            StatusCode::OK,
            Json(json!({
                "instrument": instrument,
                "candles": candles.iter().map(candle_json).collect::<Vec<Value>>(),
            })),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "the operator is not running yet"})),
        ),
    }
}

pub fn candle_json(c: &Candle) -> Value {
    json!({
        "instrument": c.instrument,
        "venue": c.venue,
        "interval": c.interval,
        "window_start_us": c.window_start,
        "window_end_us": c.window_end,
        "open": c.open.to_string(),
        "high": c.high.to_string(),
        "low": c.low.to_string(),
        "close": c.close.to_string(),
        "count": c.count,
        "volume": c.volume.to_string(),
        "notional": c.notional.to_string(),
        "vwap": c.vwap.to_string(),
        "avg_price": c.avg_price.to_string(),
        "buy_volume": c.buy_volume.to_string(),
        "sell_volume": c.sell_volume.to_string(),
        "first_trade_us": c.first_trade_time,
        "last_trade_us": c.last_trade_time,
        "is_final": c.is_final,
        "revision": c.revision,
    })
}
