//! Coinbase Exchange, the `matches` channel.
//!
//! [`stream`]: the WebSocket endpoint, subscriptions and frame classification (ingest-gateway);
//! [`trades`]: the trades in a frame (normalizer). Each file opens with the provider's
//! documentation and the payloads it shows; its tests use those payloads.

pub mod stream;
pub mod trades;

use crate::backfill::{Page, PageError, Want};
use crate::{ParseResult, Provider, ProviderId, ProviderTrade, WebSocket};

pub const ID: ProviderId = ProviderId::new("coinbase");

pub struct Coinbase;

impl Provider for Coinbase {
    fn id(&self) -> ProviderId {
        ID
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a> {
        trades::parse(payload)
    }

    /// `trade_id` is consecutive per product (the REST trades endpoint pages by it).
    fn trade_number(&self, trade: &ProviderTrade<'_>) -> Option<u64> {
        trade.trade_id.as_deref()?.parse().ok()
    }

    fn websocket(&self) -> Option<&dyn WebSocket> {
        Some(self)
    }

    fn backfill(&self) -> Option<&dyn crate::Backfill> {
        Some(self)
    }
}

/// Coinbase Exchange's product trades.
///
/// <https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproducttrades>
///
/// `GET /products/BTC-USD/trades?limit=100&after=75` returns the trades with an id below the
/// cursor `after`, newest first (`limit` up to 1000; public endpoints allow 10 requests per
/// second): `[{"time":"2014-11-07T22:19:28.578544Z","trade_id":74,"price":"10.00000000",
/// "size":"0.01000000","side":"buy"}]`, `side` being the maker's as in the `matches` channel.
/// A page of `first..=last` asks for the ids below `last + 1`: the walk goes down from the newest.
/// Each trade becomes a `match`.
impl crate::backfill::Backfill for Coinbase {
    fn default_rest_url(&self) -> &'static str {
        "https://api.exchange.coinbase.com"
    }

    fn page_url(&self, base: &str, want: &Want<'_>) -> String {
        let Want {
            symbol,
            first,
            last,
            limit,
            ..
        } = *want;
        let limit = u64::from(limit.clamp(1, 1000)).min(last.saturating_sub(first) + 1);
        format!(
            "{}/products/{symbol}/trades?limit={limit}&after={}",
            crate::backfill::base(base),
            last + 1
        )
    }

    fn page(&self, symbol: &str, body: &[u8]) -> Result<Page, PageError> {
        #[derive(serde::Deserialize)]
        struct Item<'a> {
            trade_id: u64,
            #[serde(borrow)]
            time: &'a str,
            #[serde(borrow)]
            price: &'a str,
            #[serde(borrow)]
            size: &'a str,
            #[serde(borrow)]
            side: &'a str,
        }
        let items: Vec<Item> = serde_json::from_slice(body)
            .map_err(|e| PageError::Unreadable(format!("not a list of Coinbase trades: {e}")))?;
        let trades = items
            .into_iter()
            .map(|t| {
                let frame = serde_json::json!({
                    "type": "match", "trade_id": t.trade_id, "time": t.time, "product_id": symbol,
                    "size": t.size, "price": t.price, "side": t.side,
                });
                (t.trade_id, frame.to_string())
            })
            .collect();
        Ok(Page { trades, next: None })
    }

    fn requests_per_s(&self) -> f64 {
        5.0
    }
}
