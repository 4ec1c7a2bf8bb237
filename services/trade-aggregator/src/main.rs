//! The trade-aggregator binary: parses arguments and hands off to [`trade_aggregator::run`].

use std::process::ExitCode;

use clap::Parser;
use tickflow_shared::service::{self, CommonArgs};

/// Computes 1-minute OHLC / count / volume / VWAP candles in event time, late data included, into Cassandra and Kafka.
///
/// Reads md.trades (Avro Trade), keeps 1-minute event-time windows per instrument and venue and
/// consolidated (*), fires them when the partition's watermark passes their end, re-emits them
/// for late trades within the allowed lateness, and sends later trades to md.trades.late.
/// Candles go to Cassandra candles_1m and Kafka md.candles.1m; state and input offsets are
/// checkpointed to Cassandra, so a crash leaves the same results as a run without it.
///
/// Needs the Cassandra tables: run `tickflow-admin migrate` first.
/// HTTP (default 127.0.0.1:9103): /metrics, /healthz, /readyz, /candles/{instrument}.
/// Configuration: [service], [kafka], [registry], [cassandra], [aggregator] (see docs/configuration.md).
#[derive(Parser)]
#[command(name = "trade-aggregator", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// mimalloc, not glibc's malloc: see bench/README.md, "The hot path, profiled".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    service::main::<trade_aggregator::Config, _, _>(
        trade_aggregator::NAME,
        args.common,
        trade_aggregator::run,
    )
}
