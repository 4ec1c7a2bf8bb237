//! The trade-aggregator binary: parses arguments and hands off to [`trade_aggregator::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Computes 1-minute OHLC / count / volume / VWAP candles in event time, late data included, into Cassandra and Kafka.
///
/// Windowing is not implemented yet (issue 5): today the binary loads its configuration, creates md.candles.1m and md.trades.late, registers their schemas, connects to Cassandra, serves /metrics, /healthz and /readyz, and shuts down cleanly.
#[derive(Parser)]
#[command(name = "trade-aggregator", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main::<trade_aggregator::Config, _, _>(
        trade_aggregator::NAME,
        args.common,
        trade_aggregator::run,
    )
}
