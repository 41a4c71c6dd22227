//! sessiongate as a WebAssembly component (wasi:http 0.3, spin-sdk 7), for
//! Spin and any wasi-http host on wasmtime, such as `sessiongate serve
//! --component`. Its world is `sessiongate:gate/gate` in `wit/`.
//!
//! No contract rule lives here: `sessiongate_core` decides; this crate
//! carries wasi:http requests to it, its decisions back, and the limiter's
//! compare-and-swap steps to the host's `wasi:keyvalue/atomics`.

pub mod cas;
pub mod client;

#[cfg(target_arch = "wasm32")]
mod wasm;
