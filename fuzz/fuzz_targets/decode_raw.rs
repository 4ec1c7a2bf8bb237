//! A RawEnvelope in the Confluent wire format on arbitrary bytes: the normalizer's straight read
//! of the body must fail with an error or give an envelope, never panic or allocate without
//! bound, and agree with the generic `Value` reader whenever both read one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickflow_shared::avro::fuzzing::check_decode_raw(data);
});
