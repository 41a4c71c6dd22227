#![no_main]
//! See `sessiongate_core::fuzzing::decision` for the input shape and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate_core::fuzzing::decision(data));
