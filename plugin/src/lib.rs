//! sessiongate as a proxy-wasm filter (ABI 0.2.1): a thin adapter over
//! `sessiongate-core`. [`filter`] is the host-agnostic adapter; `sdk` binds
//! it to the proxy-wasm SDK when built for `wasm32-wasip1`.

pub mod filter;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod header_block;

#[cfg(target_arch = "wasm32")]
mod raw;
#[cfg(target_arch = "wasm32")]
mod sdk;
