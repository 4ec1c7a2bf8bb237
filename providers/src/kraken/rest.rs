//! Kraken's REST API for past trades, to fill a gap in the WebSocket v2 `trade` channel.
//!
//! <https://docs.kraken.com/api/docs/rest-api/get-recent-trades>
//!
//! `GET /0/public/Trades?pair=XBTUSD&since=<ns>&count=1000`: up to `count` (at most 1000) trades
//! after `since`, oldest first; `last` is the cursor of the next page. Kraken pages by time
//! only, so a gap is looked for from the time of the trade before it (the gap record's
//! `after_time`), page after page, until its last id has been seen or passed.
//!
//! ```json
//! {"error":[],"result":{"XXBTZUSD":[["30243.40000","0.34507674",1688669597.8277369,"b","m","",61044952],
//!  ["30243.30000","0.00376960",1688669598.2804112,"s","l","",61044953]],"last":"1688671969993150842"}}
//! ```
//! Each trade is `[price, volume, time, buy/sell, market/limit, miscellaneous, trade_id]`:
//! price and volume as strings, time as seconds with a fraction, `trade_id` the same per-pair
//! sequence the WebSocket's `trade_id` carries. The result is keyed by Kraken's own pair name
//! (`XXBTZUSD` for `XBTUSD`), the one key beside `last`. The pair is asked for as the v2 symbol
//! without its slash (`BTC/USD` → `BTCUSD`), a name Kraken's REST API resolves to its own.
//!
//! Public endpoints allow about one call per second per IP and pair; beyond that the body says
//! `{"error":["EGeneral:Too many requests"]}` (with HTTP 200).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use tickflow_shared::domain::Micros;

use crate::backfill::{Backfill, Page, PageError, Want};

use super::Kraken;

impl Backfill for Kraken {
    fn default_rest_url(&self) -> &'static str {
        "https://api.kraken.com"
    }

    fn page_url(&self, base: &str, want: &Want<'_>) -> String {
        let pair: String = want.symbol.chars().filter(|c| *c != '/').collect();
        // `since` is in nanoseconds; one below the trade before the gap, so that it is on the
        // page (whether Kraken takes `since` as inclusive or not) and nothing after it is missed.
        let since = match want.cursor {
            Some(cursor) => cursor.to_string(),
            None => (want.after_time.max(0) as i128 * 1_000 - 1)
                .max(0)
                .to_string(),
        };
        format!(
            "{}/0/public/Trades?pair={pair}&since={since}&count={}",
            crate::backfill::base(base),
            want.limit.clamp(1, 1000)
        )
    }

    fn page(&self, symbol: &str, body: &[u8]) -> Result<Page, PageError> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(default)]
            error: Vec<String>,
            #[serde(borrow, default)]
            result: Option<BTreeMap<&'a str, &'a RawValue>>,
        }
        let body: Body = serde_json::from_slice(body)
            .map_err(|e| PageError::Unreadable(format!("not a Kraken Trades response: {e}")))?;
        if let Some(e) = body.error.first() {
            let all = body.error.join("; ");
            return Err(
                if e.contains("Too many requests") || e.contains("Rate limit") {
                    PageError::RateLimited(all)
                } else {
                    PageError::Unreadable(format!("Kraken says: {all}"))
                },
            );
        }
        let result = body
            .result
            .ok_or_else(|| PageError::Unreadable("no `result` and no `error`".into()))?;
        let next = match result.get("last") {
            Some(last) => serde_json::from_str::<String>(last.get())
                .or_else(|_| Ok::<_, serde_json::Error>(last.get().to_string()))
                .ok(),
            None => None,
        };
        let list = result
            .iter()
            .find(|(key, _)| **key != "last")
            .map(|(_, v)| *v)
            .ok_or_else(|| PageError::Unreadable("no pair in `result`".into()))?;
        let items: Vec<(&str, &str, &RawValue, &str, &str, &RawValue, u64)> =
            serde_json::from_str(list.get()).map_err(|e| {
                PageError::Unreadable(format!(
                    "a trade is not [price, volume, time, side, type, misc, trade_id]: {e}"
                ))
            })?;
        let mut trades = Vec::with_capacity(items.len());
        for (price, volume, time, side, kind, _, id) in items {
            let time = seconds_to_micros(time.get()).ok_or_else(|| {
                PageError::Unreadable(format!("trade {id}: time {} is not seconds", time.get()))
            })?;
            let timestamp = chrono::DateTime::from_timestamp_micros(time)
                .ok_or_else(|| PageError::Unreadable(format!("trade {id}: time out of range")))?
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let side = match side {
                "b" => "buy",
                "s" => "sell",
                other => {
                    return Err(PageError::Unreadable(format!(
                        "trade {id}: side {other:?} is neither b nor s"
                    )))
                }
            };
            let ord_type = if kind == "m" { "market" } else { "limit" };
            // The live frame's numbers are the REST strings' text, unchanged (exact decimals).
            let number = |text: &str| -> Result<(), PageError> {
                text.parse::<rust_decimal::Decimal>()
                    .map(drop)
                    .map_err(|e| PageError::Unreadable(format!("trade {id}: {text:?}: {e}")))
            };
            number(price)?;
            number(volume)?;
            let frame = format!(
                r#"{{"channel":"trade","type":"update","data":[{{"symbol":{},"side":"{side}","price":{price},"qty":{volume},"ord_type":"{ord_type}","trade_id":{id},"timestamp":"{timestamp}"}}]}}"#,
                serde_json::Value::String(symbol.to_string())
            );
            trades.push((id, frame));
        }
        Ok(Page { trades, next })
    }

    fn pages_by_time(&self) -> bool {
        true
    }

    fn requests_per_s(&self) -> f64 {
        // About one per second per IP and pair: half of it.
        0.5
    }
}

/// `1688669597.8277369` (seconds) to µs, from the text (no `f64`): the fraction's first six
/// digits.
fn seconds_to_micros(text: &str) -> Option<Micros> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(6)
        .collect();
    seconds
        .checked_mul(1_000_000)?
        .checked_add(micros.parse::<i64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, Provider};

    /// The docs' example page.
    const PAGE: &[u8] = br#"{"error":[],"result":{"XXBTZUSD":[["30243.40000","0.34507674",1688669597.8277369,"b","m","",61044952],["30243.30000","0.00376960",1688669598.2804112,"s","l","",61044953],["30243.30000","0.01235716",1688669602.698379,"s","m","",61044956]],"last":"1688671969993150842"}}"#;

    #[test]
    fn the_documented_page_becomes_live_frames_and_a_cursor() {
        let page = Kraken.page("BTC/USD", PAGE).unwrap();
        assert_eq!(page.next.as_deref(), Some("1688671969993150842"));
        let ids: Vec<u64> = page.trades.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![61044952, 61044953, 61044956]);
        // Read back by the live parser: the same trade, the decimals' text unchanged.
        let Frame::Trades(trades) = Kraken.parse(page.trades[1].1.as_bytes()).unwrap() else {
            panic!("{}", page.trades[1].1)
        };
        let t = &trades[0];
        assert_eq!(
            (
                t.symbol.as_ref(),
                t.trade_id.as_deref(),
                t.price.as_ref(),
                t.size.as_ref(),
                t.side,
                t.event_time
            ),
            (
                "BTC/USD",
                Some("61044953"),
                "30243.30000",
                "0.00376960",
                tickflow_shared::domain::Side::Sell,
                1_688_669_598_280_411
            )
        );
        assert_eq!(Kraken.trade_number(t), Some(61044953));
    }

    #[test]
    fn errors_in_the_body_are_told_apart() {
        assert_eq!(
            Kraken
                .page("BTC/USD", br#"{"error":["EGeneral:Too many requests"]}"#)
                .unwrap_err(),
            PageError::RateLimited("EGeneral:Too many requests".into())
        );
        assert!(matches!(
            Kraken.page("BTC/USD", br#"{"error":["EQuery:Unknown asset pair"]}"#),
            Err(PageError::Unreadable(_))
        ));
        assert!(matches!(
            Kraken.page(
                "BTC/USD",
                br#"{"error":[],"result":{"XXBTZUSD":[["x","1",1.5,"q","m","",1]],"last":"1"}}"#
            ),
            Err(PageError::Unreadable(_))
        ));
    }

    #[test]
    fn pages_start_before_the_trade_before_the_gap_then_follow_the_cursor() {
        let want = Want {
            symbol: "BTC/USD",
            first: 10,
            last: 20,
            after_time: 1_688_669_597_827_736,
            cursor: None,
            limit: 5_000,
        };
        assert_eq!(
            Kraken.page_url("https://api.kraken.com/", &want),
            "https://api.kraken.com/0/public/Trades?pair=BTCUSD&since=1688669597827735999&count=1000"
        );
        let next = Want {
            cursor: Some("1688671969993150842"),
            ..want
        };
        assert_eq!(
            Kraken.page_url("https://api.kraken.com", &next),
            "https://api.kraken.com/0/public/Trades?pair=BTCUSD&since=1688671969993150842&count=1000"
        );
    }

    #[test]
    fn seconds_are_read_without_floating_point() {
        assert_eq!(
            seconds_to_micros("1688669597.8277369"),
            Some(1_688_669_597_827_736)
        );
        assert_eq!(
            seconds_to_micros("1688669602.698379"),
            Some(1_688_669_602_698_379)
        );
        assert_eq!(
            seconds_to_micros("1688669602.5"),
            Some(1_688_669_602_500_000)
        );
        assert_eq!(seconds_to_micros("1688669602"), Some(1_688_669_602_000_000));
        assert_eq!(seconds_to_micros("1e9"), None);
    }
}
