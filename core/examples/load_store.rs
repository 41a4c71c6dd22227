//! Loads a token store into a gate and reports how long it took:
//! `cargo run --release -p sessiongate-core --example load_store -- FILE`
//! (run under `/usr/bin/time -v` for the peak resident memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use sessiongate_core::{Gate, GateConfig, store_format};

fn main() {
    let path = std::env::args().nth(1).expect("usage: load_store FILE");
    let bytes = std::fs::read(&path).expect("read the store");
    let started = Instant::now();
    let credentials = store_format::parse(&bytes).expect("a valid store");
    let parsed = started.elapsed();
    let n = credentials.len();
    let gate = Gate::new(GateConfig {
        credentials,
        ..Default::default()
    })
    .expect("a valid gate");
    println!(
        "{n} credentials: parsed in {} ms, gate ready in {} ms ({} indexed)",
        parsed.as_millis(),
        started.elapsed().as_millis(),
        gate.credentials().len()
    );
}
