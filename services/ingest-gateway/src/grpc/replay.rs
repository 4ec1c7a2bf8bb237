//! The feed's `Replay` call (`proto/tickflow/feed/v1/feed.proto`, REPLAY): the trades of a hole
//! in a symbol's numbering (`Trade.number`), asked for again, for the backfill.

use bytes::Bytes;
use tickflow_shared::proto::feed::market_feed_client::MarketFeedClient;
use tickflow_shared::proto::feed::{server_message, ReplayRequest};
use tickflow_shared::proto::Message as _;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use crate::config::ProviderSettings;

/// Calls per second the backfill makes to the feed, one at a time.
pub const CALLS_PER_S: f64 = 5.0;

/// A client of the feed's Replay call, its connection made on first use.
#[derive(Clone)]
pub struct Replayer {
    client: MarketFeedClient<Channel>,
    token: Option<String>,
}

impl Replayer {
    /// For the feed at `settings.url` (over TLS when `tls` is given), with the Stream's token.
    /// `max_bytes`: the largest message read.
    pub fn new(
        settings: &ProviderSettings,
        tls: Option<ClientTlsConfig>,
        token: Option<String>,
        max_bytes: usize,
    ) -> tickflow_shared::Result<Self> {
        let endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|e| tickflow_shared::Error::Config(format!("`gateway.grpc.url`: {e}")))?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true);
        let endpoint = match tls {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| tickflow_shared::Error::Config(format!("`gateway.grpc.tls`: {e}")))?,
            None => endpoint,
        };
        Ok(Self {
            client: MarketFeedClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(max_bytes),
            token,
        })
    }

    /// The trades numbered `first..=last` of `symbol` that the feed still holds: each number
    /// with its ServerMessage, encoded as the feed sends it on the Stream.
    pub async fn call(
        &self,
        symbol: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, Bytes)>, Status> {
        let mut request = tonic::Request::new(ReplayRequest {
            symbol: symbol.to_string(),
            first,
            last,
        });
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut stream = self.client.clone().replay(request).await?.into_inner();
        let mut trades = Vec::new();
        while let Some(message) = stream.message().await? {
            if let Some(server_message::Kind::Trade(trade)) = &message.kind {
                if let Some(n) = trade.number.filter(|n| (first..=last).contains(n)) {
                    if trade.symbol == symbol {
                        trades.push((n, Bytes::from(message.encode_to_vec())));
                    }
                }
            }
        }
        Ok(trades)
    }
}
