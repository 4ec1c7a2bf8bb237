//! The ingest-gateway binary: parses arguments and hands off to [`ingest_gateway::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Holds live connections to market-data providers and puts every frame on Kafka untouched, with its receive time.
///
/// Providers: binance, coinbase, kraken, finnhub (WebSocket), grpc (the tickflow.feed.v1 feed)
/// and the built-in simulator ([gateway.<provider>] enabled = true; the simulator is on by
/// default). Subscriptions come from the instruments file or [gateway.<provider>] instruments,
/// split over replicas by gateway.replica_index / replica_count, and change at runtime through
/// the admin API (gateway.admin.listen, bearer token from TICKFLOW_GATEWAY_ADMIN_TOKEN) or by
/// editing the config file. Every frame goes as a RawEnvelope to md.raw.<provider> (idempotent
/// producer, acks=all); frames that cannot be forwarded go to md.dlq.gateway with the reason.
/// Serves /metrics, /healthz and /readyz.
#[derive(Parser)]
#[command(name = "ingest-gateway", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = args.common.config.clone();
    service::main::<ingest_gateway::Config, _, _>(
        ingest_gateway::NAME,
        args.common,
        move |config, shutdown| ingest_gateway::run(config, shutdown, path),
    )
}
