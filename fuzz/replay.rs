//! Replays the fuzzers' kept inputs of one target (`fuzz/seeds/<target>/*`
//! and `fuzz/regressions/<target>/*`) through a check, so every interesting
//! input stays a test in `cargo test`. Included by the replay tests of the
//! crates that hold fuzz targets (`#[path]`), from a sibling of `fuzz/`.

use std::path::Path;

/// Runs `check` on each kept input of `target`; returns how many there were.
pub fn replay(target: &str, check: fn(&[u8])) -> usize {
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
