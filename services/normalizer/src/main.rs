//! The normalizer binary: parses arguments and hands off to [`normalizer::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Turns every provider's raw frames into one exact Avro trade stream on md.trades, exactly once.
///
/// Reads md.raw.* (RawEnvelope), parses each provider's frames (Binance, Coinbase, Kraken v2,
/// Finnhub, the simulator), maps provider symbols to canonical instruments (instruments file +
/// the compacted md.instruments topic, live), validates, drops duplicates and writes md.trades
/// in Kafka transactions together with the input offsets. Bad input goes to md.dlq.normalizer
/// with the reason in headers. Serves /metrics, /healthz and /readyz.
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
