//! sessiongate-core: every rule of the sessions API contract, and nothing else.
//!
//! Sans-IO: no sockets, no clock, no threads, no globals. An adapter passes the
//! request, the time and a handle to the limiter's compare-and-swap store;
//! [`Gate::decide`] returns what to do. Every build of sessiongate (proxy-wasm
//! filter, Worker, component, local host) is a thin adapter over this crate.

pub mod config;
pub mod credential;
pub mod credential_set;
pub mod error;
#[doc(hidden)]
pub mod fixtures;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod guard;
pub mod limiter;
pub mod query;
pub mod route;
pub mod store_format;
pub mod stub;

pub use config::{Backend, GateConfig, LimitConfig};
pub use credential::{CredentialRecord, Kind, Level, Sites};
pub use credential_set::{Credential, CredentialSet, CredentialSetBuilder, SiteScope};
pub use error::{ErrorCode, GateError};
pub use gate::{
    Action, Admission, Body, Decision, Forward, Gate, Outcome, Prepared, Reply, Request,
};
pub use limiter::{CasOutcome, Limit, LimiterError, MemoryStore, SharedStore, StoreError, Verdict};
