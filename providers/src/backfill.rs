//! Fetching a provider's past trades by trade id from its REST API, to fill a gap (a hole in its
//! trade numbering found by the normalizer). No I/O here: a provider says which URL returns the
//! page of trades from a given id, and turns a page into frames of its live format, so that a
//! recovered trade enters the pipeline exactly like a live one (the gateway puts the frames on
//! `md.raw.<id>` with the channel `backfill`; the normalizer parses them with
//! [`crate::Provider::parse`] and drops what it already has by trade id).

use tickflow_shared::domain::Micros;

/// A page of trades to ask for: what is still missing of a gap.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub symbol: &'a str,
    /// The missing trade ids still to fetch, inclusive.
    pub first: u64,
    pub last: u64,
    /// The event time (µs) of the trade before the gap: where an API that pages by time starts.
    pub after_time: Micros,
    /// The cursor the previous page of this walk gave ([`Page::next`]), if any.
    pub cursor: Option<&'a str>,
    /// At most this many trades (the provider's own maximum may be lower).
    pub limit: u32,
}

/// A page of past trades.
#[derive(Debug, Default)]
pub struct Page {
    /// Each trade as (trade id, a frame of the provider's live format), in any order, the ones
    /// outside the range asked for included.
    pub trades: Vec<(u64, String)>,
    /// For an API that pages forward by a cursor (Kraken's `last`): where the next page starts.
    /// `None` for one addressed by trade id (Binance, Coinbase).
    pub next: Option<String>,
}

/// Why a page gave no trades.
#[derive(Debug, PartialEq, Eq)]
pub enum PageError {
    /// The provider says we ask too often (in the body, where its API says so there).
    RateLimited(String),
    /// Not a page of this API.
    Unreadable(String),
}

/// A provider's REST access to past trades.
pub trait Backfill: Send + Sync {
    /// The REST API's base URL in production (`[gateway.<id>] rest_url` overrides it).
    fn default_rest_url(&self) -> &'static str;

    /// The URL of the page `want` asks for: a provider that pages forward by id gives the oldest
    /// from `first` on (Binance), one that pages backward the newest up to `last` (Coinbase), one
    /// that pages by time those after `after_time`, then after the cursor (Kraken). The gateway's
    /// walk takes any of them.
    fn page_url(&self, base: &str, want: &Want<'_>) -> String;

    /// The trades of a page, or why there are none.
    fn page(&self, symbol: &str, body: &[u8]) -> Result<Page, PageError>;

    /// Whether the API finds trades by time only: a gap without the time of the trade before
    /// it cannot be fetched.
    fn pages_by_time(&self) -> bool {
        false
    }

    /// Requests per second the provider allows for this endpoint, with room to spare.
    fn requests_per_s(&self) -> f64;
}

/// Where `page_url` adds query parameters.
pub(crate) fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use tickflow_shared::domain::Side;

    use crate::{binance::Binance, coinbase::Coinbase, Frame, Provider};

    /// A page as the provider's docs show it becomes frames the live parser reads back into the
    /// same trade: id, price and size text, side, time.
    #[test]
    fn documented_pages_become_live_frames() {
        let binance = br#"[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]"#;
        let coinbase = br#"[{"time":"2014-11-07T22:19:28.578544Z","trade_id":74,"price":"10.00000000","size":"0.01000000","side":"buy"}]"#;
        // provider, symbol, page, then the trade: id, price, size, aggressor side, time
        type Case<'a> = (
            &'a dyn Provider,
            &'a str,
            &'a [u8],
            (&'a str, &'a str, &'a str, Side, i64),
        );
        let cases: [Case; 2] = [
            (
                &Binance,
                "BNBBTC",
                binance,
                (
                    "28457",
                    "4.00000100",
                    "12.00000000",
                    Side::Sell,
                    1_499_865_549_590_000,
                ),
                // The buyer made the market: the aggressor sold.
            ),
            (
                &Coinbase,
                "BTC-USD",
                coinbase,
                (
                    "74",
                    "10.00000000",
                    "0.01000000",
                    Side::Sell,
                    1_415_398_768_578_544,
                ),
                // The maker bought: the aggressor sold.
            ),
        ];
        for (provider, symbol, page, (id, price, size, side, time)) in cases {
            let backfill = provider.backfill().unwrap();
            let page = backfill.page(symbol, page).unwrap();
            assert_eq!(page.next, None, "paged by id, not by a cursor");
            let frames = page.trades;
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].0.to_string(), id);
            let Frame::Trades(trades) = provider.parse(frames[0].1.as_bytes()).unwrap() else {
                panic!("{}", frames[0].1)
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
                (symbol, Some(id), price, size, side, time),
                "{}",
                provider.id()
            );
            assert_eq!(provider.trade_number(t), Some(id.parse().unwrap()));
            assert!(backfill.page(symbol, b"{\"code\":-1121}").is_err());
        }
    }

    fn want(symbol: &str, first: u64, last: u64, limit: u32) -> super::Want<'_> {
        super::Want {
            symbol,
            first,
            last,
            after_time: 0,
            cursor: None,
            limit,
        }
    }

    #[test]
    fn page_urls_start_at_the_first_missing_trade() {
        assert_eq!(
            Binance
                .backfill()
                .unwrap()
                .page_url("http://127.0.0.1:9/", &want("BTCUSDT", 100, 105, 1000)),
            "http://127.0.0.1:9/api/v3/historicalTrades?symbol=BTCUSDT&fromId=100&limit=6"
        );
        // Coinbase pages backwards from a cursor: the ids below `after`, newest first.
        assert_eq!(
            Coinbase
                .backfill()
                .unwrap()
                .page_url("http://127.0.0.1:9", &want("BTC-USD", 100, 5_000, 100)),
            "http://127.0.0.1:9/products/BTC-USD/trades?limit=100&after=5001"
        );
    }
}
