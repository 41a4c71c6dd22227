//! sessiongate as a WebAssembly component (wasi:http 0.3, spin-sdk 7), for
//! Spin and any wasi-http host on wasmtime, such as `sessiongate serve
//! --component`. Its world is `sessiongate:gate/gate` in `wit/`.
//!
//! No contract rule lives here: `sessiongate_core` decides; this crate
//! carries wasi:http requests to it, its decisions back, and the limiter's
//! compare-and-swap steps to the host's `wasi:keyvalue/atomics`.

pub mod cas;
pub mod client;
pub mod record;

#[cfg(target_arch = "wasm32")]
mod sdk;

/// Where the component reads its gate configuration (JSON) in its
/// key-value bucket. The host writes it; the component reads it on every
/// request, so a revoked credential is refused on the next one.
pub const CONFIG_KEY: &str = "sessiongate.config.v1";

/// The header Spin puts the client's address in (`sessiongate serve
/// --component` appends it too, as Spin does). The failed-credential guard
/// keys on it.
pub const CLIENT_ADDR_HEADER: &str = "spin-client-addr";

/// Whether a request header is Spin's own (`spin-full-url`,
/// `spin-client-addr`, …): the runtime's business, never forwarded.
pub fn is_runtime_header(name: &str) -> bool {
    name.starts_with("spin-")
}
