#![no_main]
//! See `sessiongate_store::fuzzing::store` for the input shape and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate_store::fuzzing::store(data));
