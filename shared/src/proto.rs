//! tickflow's gRPC APIs, generated from `proto/` at build time.

/// `tickflow.fairprice.v1`: the fair-price query API (served by fair-price).
pub mod fairprice {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tickflow.fairprice.v1");
}

/// `tickflow.feed.v1`: the vendor-neutral market-data feed (a vendor adapter or internal service
/// serves it; ingest-gateway is the client, the normalizer reads the messages it stored).
pub mod feed {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tickflow.feed.v1");
}

/// prost's `Message` trait (`decode`, `encode_to_vec`), so that crates reading these messages do
/// not need prost as a dependency of their own.
pub use prost::Message;
