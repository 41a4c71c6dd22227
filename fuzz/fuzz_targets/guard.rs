#![no_main]
//! See `sessiongate_core::fuzzing::guard_state` for the input shape and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate_core::fuzzing::guard_state(data));
