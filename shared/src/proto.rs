//! tickflow's gRPC APIs, generated from `proto/` at build time.

/// `tickflow.fairprice.v1`: the fair-price query API (served by fair-price).
pub mod fairprice {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tickflow.fairprice.v1");
}
