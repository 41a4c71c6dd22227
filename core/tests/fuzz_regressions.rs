//! Replays the fuzzers' kept inputs of core's targets through the checks
//! the fuzz targets run (fuzz/replay.rs).

#[path = "../../fuzz/replay.rs"]
mod replay;

use replay::replay;
use sessiongate_core::fuzzing;

#[test]
fn decision_inputs() {
    assert!(replay("decision", fuzzing::decision) >= 4);
}

#[test]
fn config_inputs() {
    assert!(replay("config", fuzzing::config) >= 2);
}

#[test]
fn limiter_inputs() {
    assert!(replay("limiter", fuzzing::limiter_state) >= 4);
}

#[test]
fn guard_inputs() {
    assert!(replay("guard", fuzzing::guard_state) >= 3);
}
