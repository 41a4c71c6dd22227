//! sessiongate's credential store: what the CLI, the console and `serve`
//! keep and read, behind one [`Store`] opened once (a JSON file, or keys in
//! etcd for a fleet).
//!
//! - [`Store`]: credentials (hashes only, never a secret), and kept with
//!   them the console's users ([`users`]), the audit log ([`audit`]) and
//!   each credential's last use ([`last_use`]).
//! - [`manage`]: creating, listing, changing and deleting a credential (the
//!   contract's section 3), under the store's lock or in one etcd txn.
//! - [`secret`]: fresh secrets from the operating system's CSPRNG.
//! - The file's format: read a piece at a time on every core, so a million
//!   credentials load in well under a second.
//!
//! It touches the file system and etcd (the one client, `sessiongate-etcd`),
//! nothing else: no listener, no wasm.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod audit;
mod etcd_store;
mod format;
pub mod last_use;
pub mod manage;
pub mod secret;
mod store;
pub mod users;

#[cfg(feature = "testing")]
pub mod fuzzing;

pub use etcd_store::{Document, EtcdStore};
pub use store::Store;
