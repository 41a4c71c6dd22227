//! sessiongate as a Cloudflare Worker: a thin adapter over `sessiongate-core`.
//!
//! The global limiter and the revocation list live in one Durable Object
//! (`GlobalLimiter`, one named instance), the only place Cloudflare offers
//! exact global coordination. [`shared_object`] is what that object does,
//! runtime-free so it is tested natively; `sdk` binds it and the fetch
//! handler to the `worker` crate when built for `wasm32-unknown-unknown`.

pub mod credential_store;
pub mod shared_object;

#[cfg(target_arch = "wasm32")]
mod sdk;
