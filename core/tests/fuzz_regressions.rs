//! Replays the fuzzers' kept inputs (`fuzz/seeds/*` and
//! `fuzz/regressions/*`) through the same checks the fuzz targets run, so
//! every interesting input stays a test in `cargo test`.

use std::path::Path;

use sessiongate_core::fuzzing;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(data) = std::fs::read(entry.path()) {
                check(&data);
                count += 1;
            }
        }
    }
    count
}

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
