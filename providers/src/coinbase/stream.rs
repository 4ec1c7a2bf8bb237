//! Coinbase Exchange, the `matches` channel (with `heartbeat` to keep the connection alive).
//!
//! <https://docs.cdp.coinbase.com/exchange/websocket-feed/channels>
//!
//! - Endpoint `wss://ws-feed.exchange.coinbase.com`; a subscribe must come within 5 s of connecting.
//! - `{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches","heartbeat"]}` is answered
//!   by `{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]},...]}`,
//!   which lists everything the connection is now subscribed to.
//! - Data: `{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"..","taker_order_id":"..",
//!   "time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512",
//!   "price":"400.23","side":"sell"}`; `last_match` (the same shape) right after subscribing.
//! - Errors: `{"type":"error","message":"Failed to subscribe","reason":"BTC-XXX is not a valid
//!   product"}`: the request is refused as a whole.

use std::borrow::Cow;

use serde::Deserialize;

use super::Coinbase;
use crate::websocket::{read, says_rate_limited, Defaults, Inbound, WebSocket};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channels: Option<Vec<Channel<'a>>>,
}

#[derive(Deserialize)]
struct Channel<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    product_ids: Vec<String>,
}

impl WebSocket for Coinbase {
    fn defaults(&self) -> Defaults {
        Defaults {
            url: "wss://ws-feed.exchange.coinbase.com",
            max_streams_per_connection: 100,
            max_messages_per_s: 5.0,
            data_silence_timeout_ms: 120_000,
        }
    }

    fn symbols_per_request(&self) -> usize {
        100
    }

    fn subscribe(&self, symbols: &[String], _request_id: u64) -> Vec<String> {
        vec![serde_json::json!({"type": "subscribe", "product_ids": symbols, "channels": ["matches", "heartbeat"]}).to_string()]
    }

    fn unsubscribe(&self, symbols: &[String], _request_id: u64) -> Vec<String> {
        vec![serde_json::json!({"type": "unsubscribe", "product_ids": symbols, "channels": ["matches", "heartbeat"]}).to_string()]
    }

    fn classify(&self, text: &str) -> Inbound {
        let m: Message = match read(text) {
            Ok(m) => m,
            Err(e) => return e,
        };
        match m.kind.as_ref() {
            "match" | "last_match" => Inbound::Data {
                symbol: m.product_id.map(Cow::into_owned),
            },
            "subscriptions" => Inbound::Subscribed {
                request_id: None,
                symbols: m
                    .channels
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.name == "matches")
                    .flat_map(|c| c.product_ids)
                    .collect(),
            },
            "heartbeat" => Inbound::Control("heartbeat"),
            "error" => {
                let message = format!(
                    "{}: {}",
                    m.message.as_deref().unwrap_or(""),
                    m.reason.as_deref().unwrap_or("")
                );
                if says_rate_limited(&message) {
                    Inbound::Error {
                        message,
                        rate_limited: true,
                    }
                } else {
                    Inbound::Rejected {
                        request_id: None,
                        symbols: Vec::new(),
                        message,
                    }
                }
            }
            other => Inbound::Malformed(format!("unknown message type {other:?}")),
        }
    }

    fn data_channel(&self) -> &'static str {
        "matches"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_frames() {
        let p = Coinbase;
        let m = r#"{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}"#;
        assert_eq!(
            p.classify(m),
            Inbound::Data {
                symbol: Some("BTC-USD".into())
            }
        );
        let subs = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD","ETH-USD"]},{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD"]}]}"#;
        assert_eq!(
            p.classify(subs),
            Inbound::Subscribed {
                request_id: None,
                symbols: vec!["BTC-USD".into(), "ETH-USD".into()]
            }
        );
        let hb = r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#;
        assert_eq!(p.classify(hb), Inbound::Control("heartbeat"));
        let err = r#"{"type":"error","message":"Failed to subscribe","reason":"BTC-XXX is not a valid product"}"#;
        assert!(matches!(
            p.classify(err),
            Inbound::Rejected {
                request_id: None,
                ..
            }
        ));
        assert!(matches!(
            p.classify(r#"{"type":"ticker"}"#),
            Inbound::Malformed(_)
        ));
        assert!(matches!(p.classify("[1,2"), Inbound::Malformed(_)));
    }
}
