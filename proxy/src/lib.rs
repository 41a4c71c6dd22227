//! The `sessiongate` binary's parts, as a library so benches and tests can
//! drive them: `serve` (over the filter host and the component host
//! crates), the console, the connections both accept, and the CLI's
//! commands beyond the store's (`check`, `wasmx-config`, `worker-sync`).

pub mod allocator;
pub mod check;
pub mod connections;
pub mod console;
pub mod log;
pub mod parse_errors;
pub mod serve;
pub mod wasmx;
pub mod worker_sync;
