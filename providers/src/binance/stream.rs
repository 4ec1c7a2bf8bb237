//! Binance spot, combined streams.
//!
//! <https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams>
//!
//! - Endpoint `wss://stream.binance.com:443/stream` (or port 9443; 443 passes the cluster's egress
//!   policy); streams are named `<symbol lowercase>@trade`.
//! - `{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}` is answered by
//!   `{"result":null,"id":1}`; an error by `{"code":2,"msg":"Invalid request ...","id":1}` (or
//!   the same inside `"error"`).
//! - Data: `{"stream":"btcusdt@trade","data":{"e":"trade","E":..,"s":"BTCUSDT","t":..,"p":"..",
//!   "q":"..","T":..,"m":true,"M":true}}`.
//! - Limits: 5 incoming messages per second per connection (pings included), 1024 streams per
//!   connection; the server pings every 20 s and disconnects every 24 h. Too many messages close
//!   the connection with code 1008.

use std::borrow::Cow;

use serde::Deserialize;

use super::Binance;
use crate::websocket::{read, says_rate_limited, Defaults, Inbound, WebSocket};

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(borrow, default)]
    msg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
    /// A raw (not combined) stream's event type.
    #[serde(borrow, default)]
    e: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    s: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    s: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(default)]
    code: Option<i64>,
    #[serde(borrow, default)]
    msg: Option<Cow<'a, str>>,
}

fn stream_name(symbol: &str) -> String {
    format!("{}@trade", symbol.to_ascii_lowercase())
}

impl WebSocket for Binance {
    fn defaults(&self) -> Defaults {
        Defaults {
            url: "wss://stream.binance.com:443/stream",
            max_streams_per_connection: 1024,
            // Below the documented 5/s, leaving room for pongs.
            max_messages_per_s: 4.0,
            data_silence_timeout_ms: 120_000,
        }
    }

    fn symbols_per_request(&self) -> usize {
        200
    }

    fn subscribe(&self, symbols: &[String], request_id: u64) -> Vec<String> {
        let params: Vec<String> = symbols.iter().map(|s| stream_name(s)).collect();
        vec![
            serde_json::json!({"method": "SUBSCRIBE", "params": params, "id": request_id})
                .to_string(),
        ]
    }

    fn unsubscribe(&self, symbols: &[String], request_id: u64) -> Vec<String> {
        let params: Vec<String> = symbols.iter().map(|s| stream_name(s)).collect();
        vec![
            serde_json::json!({"method": "UNSUBSCRIBE", "params": params, "id": request_id})
                .to_string(),
        ]
    }

    fn classify(&self, text: &str) -> Inbound {
        let m: Message = match read(text) {
            Ok(m) => m,
            Err(e) => return e,
        };
        if let Some(data) = m.data {
            if m.stream.is_some() {
                return Inbound::Data {
                    symbol: data.s.map(Cow::into_owned),
                };
            }
        }
        if m.e.is_some() {
            // A raw stream (`/ws/<stream>`), the same event without the wrapper.
            return Inbound::Data {
                symbol: m.s.map(Cow::into_owned),
            };
        }
        let error = match (m.code, m.msg, m.error) {
            (_, _, Some(e)) => Some((e.code, e.msg.map(Cow::into_owned).unwrap_or_default())),
            (Some(code), msg, None) => {
                Some((Some(code), msg.map(Cow::into_owned).unwrap_or_default()))
            }
            _ => None,
        };
        if let Some((code, msg)) = error {
            let message = format!("code {}: {msg}", code.unwrap_or_default());
            return match m.id {
                Some(id) => Inbound::Rejected {
                    request_id: Some(id),
                    symbols: Vec::new(),
                    message,
                },
                None => Inbound::Error {
                    rate_limited: says_rate_limited(&msg),
                    message,
                },
            };
        }
        if let Some(id) = m.id {
            return Inbound::Subscribed {
                request_id: Some(id),
                symbols: Vec::new(),
            };
        }
        Inbound::Malformed("neither a stream event nor a reply to a request".into())
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
        let p = Binance;
        let trade = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}"#;
        assert_eq!(
            p.classify(trade),
            Inbound::Data {
                symbol: Some("BTCUSDT".into())
            }
        );
        let raw = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
        assert_eq!(
            p.classify(raw),
            Inbound::Data {
                symbol: Some("BNBBTC".into())
            }
        );
        assert_eq!(
            p.classify(r#"{"result":null,"id":7}"#),
            Inbound::Subscribed {
                request_id: Some(7),
                symbols: vec![]
            }
        );
        assert!(matches!(
            p.classify(r#"{"code":2,"msg":"Invalid request: unknown variant","id":3}"#),
            Inbound::Rejected {
                request_id: Some(3),
                ..
            }
        ));
        assert!(matches!(
            p.classify(r#"{"error":{"code":-1003,"msg":"Too many requests queued."},"id":null}"#),
            Inbound::Error {
                rate_limited: true,
                ..
            }
        ));
        assert!(matches!(p.classify("garbage"), Inbound::Malformed(_)));
        assert!(matches!(
            p.classify(r#"{"hello":1}"#),
            Inbound::Malformed(_)
        ));
    }

    #[test]
    fn subscribe_names_lowercase_trade_streams() {
        let m = Binance.subscribe(&["BTCUSDT".into(), "ETHUSDT".into()], 9);
        assert_eq!(
            m,
            vec![r#"{"id":9,"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"]}"#]
        );
    }
}
