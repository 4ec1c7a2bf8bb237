//! The normalizer binary: parses arguments and hands off to [`normalizer::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Turns every provider's raw frames into one exact Avro trade stream on md.trades, exactly once.
///
/// Normalization is not implemented yet (issue 4): today the binary loads its configuration, creates md.trades and md.dlq.normalizer, registers the Trade schema, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#[derive(Parser)]
#[command(name = "normalizer", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main::<normalizer::Config, _, _>(normalizer::NAME, args.common, normalizer::run)
}
