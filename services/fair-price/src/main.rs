//! The fair-price binary: parses arguments and hands off to [`fair_price::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Computes a robust cross-provider fair price per instrument and watches data quality.
///
/// The fair-price operator is not implemented yet (issue 6): today the binary loads its configuration, creates md.fairprice (compacted) and md.anomalies, registers their schemas, connects to Cassandra, serves /metrics, /healthz and /readyz, and shuts down cleanly.
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
