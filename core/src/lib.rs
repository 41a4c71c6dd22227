//! sessiongate-core: every rule of the sessions API contract, and nothing else.
//!
//! Sans-IO: no sockets, no clock, no threads, no globals. A host hands
//! [`Gate::start`] the request and the time; the decision says which step of
//! the shared state it needs next ([`Need`]) and takes the host's answer
//! ([`Pending::resume`]) until it is done. [`Gate::decide`] drives it over a
//! synchronous [`Kv`]. Every build of sessiongate (proxy-wasm filter,
//! Worker, component, local host) is a thin driver over this crate.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs)]

mod config;
mod credential;
mod credential_set;
mod decision;
mod digest_filter;
mod error;
mod gate;
mod guard;
mod headers;
mod kv;
mod last_use;
mod limiter;
mod management;
mod pending;
mod query;
mod route;
mod stub;
mod token_checksum;

#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;

// Driving a decision: a gate, a request in, steps of the shared state, a
// decision out.
pub use decision::{
    Action, Body, Decision, FieldValue, Forward, Headers, Outcome, Reply, Request, is_per_hop,
};
pub use gate::Gate;
pub use headers::Computed;
pub use kv::{Entry, Kv, KvError, MemoryKv, Version};
pub use pending::{Answer, Need, Pending, Progress};

// Configuring a gate.
#[cfg(feature = "etcd")]
pub use config::CredentialStore;
pub use config::{Backend, ConfigError, CredentialSource, GateConfig, LimitConfig, LimiterStore};
pub use guard::GuardConfig;
pub use limiter::{LIMITER_KEY, Limit, LimiterError};

/// The limiter's stored log, for tests and tools that inspect a state.
pub mod limiter_log {
    pub use crate::limiter::{decode, encode};
}

// Credentials: their shapes, digests and records, and the set a gate admits.
pub use credential::{
    CredentialRecord, KEY_MIN_BODY_LEN, KEY_SUFFIX_LEN, Kind, Level, Malformed, Presented,
    SecretHash, Sites, TOKEN_BODY_LEN, TOKEN_PREFIX, hash_hex, hash_secret, hint,
    is_checksummed_token, is_key, is_token, parse_authorization, parse_hash_hex, presented_hashes,
    split_joined,
};
pub use credential_set::{Credential, CredentialSet, CredentialSetBuilder, SiteScope};
pub use digest_filter::DigestFilter;
pub use last_use::{LastUse, MINUTE_MS, Uses};
pub use token_checksum::{TOKEN_CHECKSUM_LEN, TOKEN_RANDOM_LEN, token_checksum};

// Who may manage which credentials (contract section 7).
pub use management::{Manager, Permission, Refusal, Role};

// The wire: errors, headers, ids, and the stub's sessions.
pub use decision::{CREDENTIAL_HEADER, CUSTOMER_HEADER, RATELIMIT_HEADER, RATELIMIT_POLICY_HEADER};
pub use error::{ErrorCode, GateError, error_body, internal_error_body, malformed_request_body};
pub use query::percent_decode;
pub use route::is_valid_id;
pub use stub::{DEFAULT_SESSIONS_PER_SITE, Session};

/// The shared-data key under which a host that keeps credentials itself
/// (`serve` with a large store) answers a credential, by its digest in hex
/// (`sessiongate/credential/<sha-256 hex>`): a JSON list of its one record.
pub const CREDENTIAL_KEY_PREFIX: &str = "sessiongate/credential/";

/// The stream property a filter sets to the admitted credential's name, for
/// the host's access log (Envoy: filter state `wasm.sessiongate_credential`,
/// which `plugin/envoy.yaml`'s access log prints).
pub const CREDENTIAL_PROPERTY: &str = "sessiongate_credential";
