//! Replays the fuzzers' kept inputs (`fuzz/seeds/*` and
//! `fuzz/regressions/*`) of the store target through the checks it runs, so
//! every interesting input stays a test in `cargo test`.

use std::path::Path;

use sessiongate_store::fuzzing;

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
fn store_inputs() {
    assert!(replay("store", fuzzing::store) >= 1);
}
