//! The ingest-gateway binary: parses arguments and hands off to [`ingest_gateway::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Holds live connections to market-data providers and puts every frame on Kafka untouched, with its receive time.
///
/// Provider connections are not implemented yet (issue 3): today the binary loads its configuration, creates its raw topic, registers the RawEnvelope schema, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#[derive(Parser)]
#[command(name = "ingest-gateway", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main::<ingest_gateway::Config, _, _>(
        ingest_gateway::NAME,
        args.common,
        ingest_gateway::run,
    )
}
