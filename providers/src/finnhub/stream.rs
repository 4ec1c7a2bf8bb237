//! Finnhub, real-time trades.
//!
//! <https://finnhub.io/docs/api/websocket-trades>
//!
//! - Endpoint `wss://ws.finnhub.io?token=<API key>`; the key comes from an environment variable
//!   or a secret file, never from the committed config, and never appears in a log.
//! - One message per symbol: `{"type":"subscribe","symbol":"BINANCE:BTCUSDT"}`; no
//!   acknowledgement (a subscription counts as live once its first trade arrives).
//! - Data: `{"type":"trade","data":[{"s":"AAPL","p":7296.89,"t":1575526691134,"v":0.011467,
//!   "c":["1","12"]}]}`; `{"type":"ping"}` keeps the connection open; `{"type":"error","msg":..}`.
//! - Finnhub sometimes keeps sending pings while no trade comes for subscribed symbols: the
//!   gateway watches for data, not just for frames (`data_silence_timeout_ms`).

use std::borrow::Cow;

use serde::Deserialize;

use super::Finnhub;
use crate::websocket::{read, says_rate_limited, Defaults, Inbound, WebSocket};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    msg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Vec<Item<'a>>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    s: Option<Cow<'a, str>>,
}

impl WebSocket for Finnhub {
    fn defaults(&self) -> Defaults {
        Defaults {
            url: "wss://ws.finnhub.io",
            max_streams_per_connection: 50,
            max_messages_per_s: 5.0,
            data_silence_timeout_ms: 60_000,
        }
    }

    fn connect_url(&self, url: &str, token: Option<&str>) -> String {
        let Some(t) = token else {
            return url.to_string();
        };
        // `wss://ws.finnhub.io?token=..` has an empty path, which the handshake request line
        // cannot carry: make it `/`.
        let has_path = url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('?').next().unwrap_or("").contains('/'));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let slash = if has_path { "" } else { "/" };
        if query.is_empty() {
            format!("{base}{slash}?token={t}")
        } else {
            format!("{base}{slash}?{query}&token={t}")
        }
    }

    fn needs_token(&self) -> bool {
        true
    }

    fn symbols_per_request(&self) -> usize {
        1
    }

    fn subscribe(&self, symbols: &[String], _request_id: u64) -> Vec<String> {
        symbols
            .iter()
            .map(|s| serde_json::json!({"type": "subscribe", "symbol": s}).to_string())
            .collect()
    }

    fn unsubscribe(&self, symbols: &[String], _request_id: u64) -> Vec<String> {
        symbols
            .iter()
            .map(|s| serde_json::json!({"type": "unsubscribe", "symbol": s}).to_string())
            .collect()
    }

    fn classify(&self, text: &str) -> Inbound {
        let m: Message = match read(text) {
            Ok(m) => m,
            Err(e) => return e,
        };
        match m.kind.as_ref() {
            "trade" => Inbound::Data {
                symbol: m
                    .data
                    .and_then(|d| d.into_iter().next())
                    .and_then(|i| i.s)
                    .map(Cow::into_owned),
            },
            "ping" => Inbound::Control("ping"),
            "error" => {
                let message = m.msg.map(Cow::into_owned).unwrap_or_default();
                Inbound::Error {
                    rate_limited: says_rate_limited(&message),
                    message,
                }
            }
            other => Inbound::Malformed(format!("unknown message type {other:?}")),
        }
    }

    fn data_channel(&self) -> &'static str {
        "trade"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_frames() {
        let p = Finnhub;
        let t = r#"{"data":[{"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467}],"type":"trade"}"#;
        assert_eq!(
            p.classify(t),
            Inbound::Data {
                symbol: Some("BINANCE:BTCUSDT".into())
            }
        );
        assert_eq!(p.classify(r#"{"type":"ping"}"#), Inbound::Control("ping"));
        assert!(matches!(
            p.classify(r#"{"type":"error","msg":"Subscribing to too many symbols"}"#),
            Inbound::Error {
                rate_limited: true,
                ..
            }
        ));
        assert!(matches!(
            p.classify(r#"{"type":"news"}"#),
            Inbound::Malformed(_)
        ));
        assert_eq!(
            p.connect_url("wss://ws.finnhub.io", Some("k")),
            "wss://ws.finnhub.io/?token=k"
        );
        assert_eq!(
            p.connect_url("ws://127.0.0.1:1/feed?a=b", Some("k")),
            "ws://127.0.0.1:1/feed?a=b&token=k"
        );
        assert_eq!(
            p.subscribe(&["AAPL".into(), "MSFT".into()], 0),
            vec![
                r#"{"symbol":"AAPL","type":"subscribe"}"#,
                r#"{"symbol":"MSFT","type":"subscribe"}"#
            ]
        );
    }
}
