//! The simulator parser on arbitrary bytes: it must answer (trades, a non-trade kind, or an error with
//! its reason), never panic; and every trade it returns must survive the decimal parsing the
//! normalizer applies next.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickflow_providers::simulator::Simulator;

fuzz_target!(|data: &[u8]| {
    normalizer::fuzzing::check_parse(&Simulator, data);
});
