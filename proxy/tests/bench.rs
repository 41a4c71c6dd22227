//! `scripts/bench-load.sh` run for real, briefly, on this build: nginx, the
//! Kong-like gate and `serve` started as the script starts them, every
//! server checked to answer what its row claims (the floods 429, the page
//! and each forwarded page byte for byte) before wrk measures it. The
//! figures of such a short run on a debug build mean nothing; that the
//! script runs from a clean clone and measures what it says does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

#[test]
fn bench_load_measures_the_servers_it_names() {
    for tool in ["nginx", "wrk"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: `apt-get install nginx libnginx-mod-http-lua wrk` (.ci/run does)"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/bench-load.sh"))
        .args(["1", "4", "1"])
        .env(
            "SESSIONGATE_BENCH_BINARY",
            env!("CARGO_BIN_EXE_sessiongate"),
        )
        .output()
        .expect("bench-load.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-load.sh failed:\n{stdout}\n{stderr}"
    );
    let rows = [
        ("(a) 429 flood", "nginx"),
        ("(a) 429 flood", "kong"),
        ("(a) 429 flood", "sessiongate"),
        ("(b) admitted page", "nginx"),
        ("(b) admitted page", "kong"),
        ("(b) admitted page", "sessiongate"),
        ("(c) forwarded page", "nginx"),
        ("(c) forwarded page", "nginx-tuned"),
        ("(c) forwarded page", "sessiongate"),
    ];
    for (path, server) in rows {
        let line = stdout
            .lines()
            .find(|l| {
                l.starts_with(path) && l[path.len()..].split_whitespace().next() == Some(server)
            })
            .unwrap_or_else(|| panic!("no row {path} / {server} in:\n{stdout}"));
        let rps: f64 = line[path.len()..]
            .split_whitespace()
            .nth(1)
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no requests/s in {line:?}"));
        assert!(rps > 0.0, "{path} / {server} answered nothing: {line:?}");
    }
}
