//! A Trade in the Confluent wire format (magic byte, schema id, Avro datum) on arbitrary bytes:
//! decoding must fail with an error or give a Trade, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickflow_shared::avro::fuzzing::check_decode_trade(data);
});
