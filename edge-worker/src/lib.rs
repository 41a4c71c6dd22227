//! sessiongate as a Cloudflare Worker: a thin adapter over `sessiongate-core`.
//!
//! The global limiter and the revocation list live in one Durable Object
//! (`GlobalLimiter`, one named instance), the only place Cloudflare offers
//! exact global coordination. [`shared_object`] is what that object does,
//! runtime-free so it is tested natively; when built for
//! `wasm32-unknown-unknown`, `object` binds it to the `worker` crate's
//! Durable Object (its credentials in `sql_table`, their last use in
//! `last_use`) and `fetch` is the Worker's fetch handler.

pub mod credential_store;
pub mod object_decision;
pub mod shared_object;

#[cfg(target_arch = "wasm32")]
mod fetch;
#[cfg(target_arch = "wasm32")]
mod last_use;
#[cfg(target_arch = "wasm32")]
mod object;
#[cfg(target_arch = "wasm32")]
mod sql_table;
