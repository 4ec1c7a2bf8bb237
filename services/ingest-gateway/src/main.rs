//! The ingest-gateway binary: parses arguments and hands off to [`ingest_gateway::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Holds live connections to market-data providers and puts every frame on Kafka untouched, with its receive time.
///
/// Runs the built-in simulated provider ([gateway.simulator]: venues, rate, seed, faults) and
/// writes every frame as a RawEnvelope to md.raw.<provider> through a bounded queue and the
/// idempotent producer (acks=all). The WebSocket and gRPC providers are not implemented yet.
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
