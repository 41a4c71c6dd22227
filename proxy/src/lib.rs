//! The `sessiongate` binary's parts, as a library so benches and tests can
//! drive them: the proxy-wasm host on wasmtime, the HTTP server, the token
//! store and credential management.

pub mod allocator;
pub mod audit;
pub mod backing;
pub mod component;
pub mod console;
pub mod etcd_store;
pub mod host;
pub mod log;
pub mod manage;
pub mod parse_errors;
pub mod secret;
pub mod serve;
pub mod shared_data;
pub mod store;
pub mod users;
pub mod wasmx;
pub mod worker_sync;
