//! sessiongate as a WebAssembly component, for Spin and any wasi-http host
//! on wasmtime, such as `sessiongate serve --component`.
//!
//! This crate is the wasi:http 0.3 build (feature `wasip3`, spin-sdk 7;
//! world `sessiongate:gate/gate` in `wit/`) and what both builds share: the
//! key-value side ([`cas`], [`record`], and on wasm the bucket itself). The
//! wasi:http 0.2 build (`wasip2/`, spin-sdk 5, world `gate-p2`) depends on
//! it with the feature off.
//!
//! No contract rule lives here: `sessiongate_core` decides; this crate
//! carries wasi:http requests to it, its decisions back, and its steps on
//! shared state to the host's `wasi:keyvalue`.

pub mod cas;
pub mod client;
pub mod last_use;
pub mod record;

#[cfg(target_arch = "wasm32")]
pub mod kv;
#[cfg(all(target_arch = "wasm32", feature = "wasip3"))]
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
