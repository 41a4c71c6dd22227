//! The `sessiongate` binary's parts, as a library so benches and tests can
//! drive them: the proxy-wasm host on wasmtime, the HTTP server, the token
//! store and credential management.

pub mod allocator;
pub mod backing;
pub mod component;
pub mod connections;
pub mod console;
pub mod host;
pub mod log;
pub mod parse_errors;
pub mod serve;
pub mod shared_data;
pub mod wasmx;
pub mod worker_sync;
