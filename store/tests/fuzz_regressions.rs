//! Replays the fuzzers' kept inputs of the store target through the checks
//! it runs (fuzz/replay.rs).

#[path = "../../fuzz/replay.rs"]
mod replay;

use replay::replay;
use sessiongate_store::fuzzing;

#[test]
fn store_inputs() {
    assert!(replay("store", fuzzing::store) >= 1);
}
