//! The fair-price binary: parses arguments and hands off to [`fair_price::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Computes a robust cross-provider fair price per instrument from md.trades and watches data
/// quality.
///
/// Publishes FairPrice records to md.fairprice and Cassandra (fair_prices, fair_price_latest),
/// anomalies (NO_DATA, PRICE_DIVERGENCE, RATE_DROP, RECOVERED) to md.anomalies and Cassandra,
/// and serves the latest prices over HTTP (GET /v1/fairprice[/{instrument}]) and gRPC
/// (proto/tickflow/fairprice/v1/fair_price.proto, default 127.0.0.1:9204).
/// Configuration: [fair_price] in the config file or TICKFLOW_FAIR_PRICE__<KEY>; see docs/configuration.md.
#[derive(Parser)]
#[command(name = "fair-price", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main::<fair_price::Config, _, _>(fair_price::NAME, args.common, fair_price::run)
}
