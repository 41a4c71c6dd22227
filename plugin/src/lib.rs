//! sessiongate as a proxy-wasm filter (ABI 0.2.1): a thin adapter over
//! `sessiongate-core`. [`filter`] is the host-agnostic entry, over the
//! [`host`] port and the step every decision shares (`decide`); `sdk` binds
//! it to the proxy-wasm SDK when built for `wasm32-wasip1`.

#[cfg(feature = "fleet")]
pub mod commit;
mod decide;
pub mod filter;
#[cfg(feature = "fleet")]
mod fleet;
pub mod header_block;
pub mod host;
#[cfg(feature = "fleet")]
pub mod lookup;
#[cfg(feature = "fleet")]
mod tick;
#[cfg(feature = "fleet")]
pub mod vm_state;

#[cfg(target_arch = "wasm32")]
mod raw;
#[cfg(target_arch = "wasm32")]
mod sdk;
