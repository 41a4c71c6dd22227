//! etcd as sessiongate speaks it, through etcd's v3 HTTP/JSON gateway
//! (etcd 3.4 on), sans-IO: this crate builds calls and reads answers; a
//! driver sends them (the filter with `proxy_http_call`, `serve` and the
//! CLI with the proxy's one client).
//!
//! - [`call`] and [`answer`]: a step of core's decision on the limiter's
//!   log as one call, and what etcd's answer means for the decision.
//! - [`lookup`] and [`revision`]: the credential store's keys as the
//!   filter reads them (by digest, and the credentials' revision).
//! - [`write_last_uses`]: credentials' last uses, written with no read
//!   (etcd compares each key), by the store's flush and the fleet filter.
//! - [`Attempt`]: the one login policy, for a cluster with authentication.
//! - [`range_prefix`] and [`Txn`]: the keys under a prefix as a collection
//!   of records (the proxy's stores), read with [`range_answer`] and
//!   [`txn_succeeded`].
//! - `Cluster` (feature `client`): the one client, async, with one member
//!   failover policy and one way to configure a login (`Login`).
//!
//! Facts of the gateway: keys and values are base64, int64 fields are JSON
//! strings, `succeeded` is left out when a compare failed, `kvs` when no key
//! matched. A read's version is the key's `mod_revision`; a swap compares
//! it, a create compares `create_revision` to 0, and a txn's failure branch
//! reads the key, so a lost write comes back with what won.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "client")]
mod client;
mod codec;
mod credentials;
mod last_use;
mod login;
mod prefix;

#[cfg(feature = "client")]
pub use client::{Cluster, HttpAnswer, HttpCall, Login, PASSWORD_VARIABLE};
pub use codec::{
    Call, DELETE_RANGE, RANGE, Sent, TXN, answer, call, count, delete, put, written_revision,
};
pub use credentials::{
    BY_DIGEST, BY_NAME, Found, change_key, digest_key, lookup, lookup_answer, revision,
    revision_answer,
};
pub use last_use::{LAST_USED, USES_PER_CALL, last_use_key, write_last_uses};
pub use login::{AUTHENTICATE, After, Attempt, Credentials, LOGIN_TIMEOUT_MS, Step};
pub use prefix::{
    KeyValue, Page, RangePage, Txn, nested_succeeded, range_answer, range_page, range_page_answer,
    range_prefix, txn_succeeded,
};
