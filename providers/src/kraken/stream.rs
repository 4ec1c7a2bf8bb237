//! Kraken WebSocket API v2, the `trade` channel.
//!
//! <https://docs.kraken.com/api/docs/websocket-v2/trade>
//!
//! - Endpoint `wss://ws.kraken.com/v2`.
//! - `{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"],"snapshot":false},
//!   "req_id":1}` is answered once per symbol: `{"method":"subscribe","result":{"channel":"trade",
//!   "snapshot":false,"symbol":"BTC/USD"},"success":true,"time_in":..,"time_out":..,"req_id":1}`,
//!   or `{"error":"Currency pair not supported XXX/YYY","method":"subscribe","req_id":1,
//!   "success":false,"symbol":"XXX/YYY",..}`.
//! - Data: `{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy",
//!   "price":..,"qty":..,"ord_type":"limit","trade_id":..,"timestamp":".."}]}`.
//! - Control: `{"channel":"heartbeat"}` every second, `{"channel":"status",...}` on connect,
//!   `{"method":"pong",...}`. Too many requests: an error "Exceeded msg rate".

use std::borrow::Cow;

use serde::Deserialize;

use super::Kraken;
use crate::websocket::{read, says_rate_limited, Defaults, Inbound, WebSocket};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    req_id: Option<u64>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    symbol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    result: Option<Item<'a>>,
    #[serde(borrow, default)]
    data: Option<Vec<Item<'a>>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    symbol: Option<Cow<'a, str>>,
}

impl WebSocket for Kraken {
    fn defaults(&self) -> Defaults {
        Defaults {
            url: "wss://ws.kraken.com/v2",
            max_streams_per_connection: 200,
            max_messages_per_s: 5.0,
            data_silence_timeout_ms: 120_000,
        }
    }

    fn symbols_per_request(&self) -> usize {
        50
    }

    fn subscribe(&self, symbols: &[String], request_id: u64) -> Vec<String> {
        vec![serde_json::json!({"method": "subscribe", "params": {"channel": "trade", "symbol": symbols, "snapshot": false}, "req_id": request_id}).to_string()]
    }

    fn unsubscribe(&self, symbols: &[String], request_id: u64) -> Vec<String> {
        vec![serde_json::json!({"method": "unsubscribe", "params": {"channel": "trade", "symbol": symbols}, "req_id": request_id}).to_string()]
    }

    fn classify(&self, text: &str) -> Inbound {
        let m: Message = match read(text) {
            Ok(m) => m,
            Err(e) => return e,
        };
        if let Some(channel) = m.channel.as_deref() {
            return match channel {
                "trade" => Inbound::Data {
                    symbol: m
                        .data
                        .and_then(|d| d.into_iter().next())
                        .and_then(|i| i.symbol)
                        .map(Cow::into_owned),
                },
                "heartbeat" => Inbound::Control("heartbeat"),
                "status" => Inbound::Control("status"),
                other => Inbound::Malformed(format!("unexpected channel {other:?}")),
            };
        }
        match (m.method.as_deref(), m.success) {
            (Some("subscribe"), Some(true)) => Inbound::Subscribed {
                request_id: m.req_id,
                symbols: m
                    .result
                    .and_then(|r| r.symbol)
                    .map(|s| vec![s.into_owned()])
                    .unwrap_or_default(),
            },
            (Some("unsubscribe"), Some(true)) => Inbound::Control("unsubscribed"),
            (Some("pong"), _) => Inbound::Control("pong"),
            (_, Some(false)) => {
                let message = m
                    .error
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| "request failed".into());
                if says_rate_limited(&message) {
                    Inbound::Error {
                        message,
                        rate_limited: true,
                    }
                } else {
                    Inbound::Rejected {
                        request_id: m.req_id,
                        symbols: m.symbol.map(|s| vec![s.into_owned()]).unwrap_or_default(),
                        message,
                    }
                }
            }
            _ => Inbound::Malformed("neither a channel message nor a method reply".into()),
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
        let p = Kraken;
        let t = r#"{"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"buy","price":0.5147,"qty":6423.46326,"ord_type":"limit","trade_id":4665846,"timestamp":"2023-09-25T07:48:36.925533Z"}]}"#;
        assert_eq!(
            p.classify(t),
            Inbound::Data {
                symbol: Some("MATIC/USD".into())
            }
        );
        let ack = r#"{"method":"subscribe","result":{"channel":"trade","snapshot":false,"symbol":"BTC/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z","req_id":4}"#;
        assert_eq!(
            p.classify(ack),
            Inbound::Subscribed {
                request_id: Some(4),
                symbols: vec!["BTC/USD".into()]
            }
        );
        let err = r#"{"error":"Currency pair not supported XXX/YYY","method":"subscribe","req_id":5,"success":false,"symbol":"XXX/YYY","time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#;
        assert_eq!(
            p.classify(err),
            Inbound::Rejected {
                request_id: Some(5),
                symbols: vec!["XXX/YYY".into()],
                message: "Currency pair not supported XXX/YYY".into()
            }
        );
        assert_eq!(
            p.classify(r#"{"channel":"heartbeat"}"#),
            Inbound::Control("heartbeat")
        );
        let status = r#"{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.0"}],"type":"update"}"#;
        assert_eq!(p.classify(status), Inbound::Control("status"));
        assert!(matches!(
            p.classify(r#"{"error":"Exceeded msg rate","method":"subscribe","success":false}"#),
            Inbound::Error {
                rate_limited: true,
                ..
            }
        ));
        assert!(matches!(p.classify("\u{1}\u{2}"), Inbound::Malformed(_)));
    }
}
