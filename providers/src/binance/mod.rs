//! Binance spot trade streams.
//!
//! [`stream`]: the WebSocket endpoint, subscriptions and frame classification (ingest-gateway);
//! [`trades`]: the trades in a frame (normalizer). Each file opens with the provider's
//! documentation and the payloads it shows; its tests use those payloads.

pub mod stream;
pub mod trades;

use crate::backfill::{Page, PageError, Want};
use crate::{ParseResult, Provider, ProviderId, ProviderTrade, WebSocket};

pub const ID: ProviderId = ProviderId::new("binance");

pub struct Binance;

impl Provider for Binance {
    fn id(&self) -> ProviderId {
        ID
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> ParseResult<'a> {
        trades::parse(payload)
    }

    /// `t`, "trade id", is consecutive per symbol (historical trades are fetched by `fromId`).
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

/// Binance spot's old trade lookup.
///
/// <https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#old-trade-lookup>
///
/// `GET /api/v3/historicalTrades?symbol=BNBBTC&fromId=28457&limit=500` (limit up to 1000, weight
/// 25 of 6000 per minute) returns the trades from `fromId` on, oldest first:
/// `[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",
/// "time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]`. Each becomes the raw stream's
/// trade event (`{"e":"trade","s":..,"t":..,"p":..,"q":..,"T":..,"m":..}`).
impl crate::backfill::Backfill for Binance {
    fn default_rest_url(&self) -> &'static str {
        "https://api.binance.com"
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
            "{}/api/v3/historicalTrades?symbol={symbol}&fromId={first}&limit={limit}",
            crate::backfill::base(base)
        )
    }

    fn page(&self, symbol: &str, body: &[u8]) -> Result<Page, PageError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Item<'a> {
            id: u64,
            #[serde(borrow)]
            price: &'a str,
            #[serde(borrow)]
            qty: &'a str,
            time: i64,
            is_buyer_maker: bool,
            #[serde(default)]
            is_best_match: Option<bool>,
        }
        let items: Vec<Item> = serde_json::from_slice(body).map_err(|e| {
            PageError::Unreadable(format!("not a list of Binance historical trades: {e}"))
        })?;
        let trades = items
            .into_iter()
            .map(|t| {
                let frame = serde_json::json!({
                    "e": "trade", "E": t.time, "s": symbol, "t": t.id, "p": t.price,
                    "q": t.qty, "T": t.time, "m": t.is_buyer_maker, "M": t.is_best_match,
                });
                (t.id, frame.to_string())
            })
            .collect();
        Ok(Page { trades, next: None })
    }

    fn requests_per_s(&self) -> f64 {
        // 6000 weight per minute, 25 per request: 4 per second; half of it.
        2.0
    }
}
