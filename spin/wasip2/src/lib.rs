//! sessiongate as a wasi:http **0.2** component: `incoming-handler@0.2.0`
//! on spin-sdk 5, world `sessiongate:gate/gate-p2` in `wit/`. Every released
//! Spin from 3.0 (the first with `wasi:keyvalue`) loads it; the wasi:http 0.3
//! build (`spin/`) needs a host of `wasi:http@0.3.0`.
//!
//! A driver and nothing more: the key-value side is `sessiongate_spin`'s,
//! the decision `sessiongate_core`'s.

#[cfg(target_arch = "wasm32")]
mod handler;
