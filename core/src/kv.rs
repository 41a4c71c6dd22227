//! The shared state's interface: a map of keys to versioned values with
//! compare-and-swap, where the limiter and the failed-credential guard keep
//! what every caller must see. Envoy's shared data, a Durable Object, etcd and
//! `wasi:keyvalue` atomics all fit. [`Gate::decide`](crate::Gate::decide)
//! drives a decision over one synchronously; asynchronous hosts answer the
//! same steps themselves ([`Need`](crate::Need)).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// A value's version: it changes on every write. Stores with narrower
/// versions (Envoy's `u32` cas) convert; etcd's `mod_revision` fits as is.
pub type Version = u64;

/// A key's value and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The bytes stored.
    pub value: Cow<'a, [u8]>,
    /// The version they were read at (compare-and-swap takes it).
    pub version: Version,
}

impl<'a> Entry<'a> {
    /// An entry that borrows its bytes.
    pub fn borrowed(value: &'a [u8], version: Version) -> Entry<'a> {
        Entry {
            value: Cow::Borrowed(value),
            version,
        }
    }

    /// The same entry, its bytes owned.
    pub fn into_owned(self) -> Entry<'static> {
        Entry {
            value: Cow::Owned(self.value.into_owned()),
            version: self.version,
        }
    }
}

/// The shared state could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared state failed: {}", self.0)
    }
}

impl std::error::Error for KvError {}

/// A versioned key-value map with compare-and-swap.
pub trait Kv {
    /// `key`'s value and version; `None` when absent. The entry may borrow
    /// from the map (an in-memory one lends its bytes).
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError>;
    /// Writes `value` if `key` is still at `version`: `Ok(false)` when
    /// another writer got there first.
    fn swap(&mut self, key: &str, version: Version, value: &[u8]) -> Result<bool, KvError>;
    /// Writes `value` if `key` is absent: `Ok(false)` when it exists. An
    /// implementation that cannot make this atomic says so in its docs.
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError>;
    /// Whether the credential with this SHA-256 was revoked ahead of the
    /// configuration. Only a [`Kv`] that holds a revocation list answers
    /// anything but `false`; a gate asks only when built to
    /// ([`Gate::with_revocation_list`](crate::Gate::with_revocation_list)).
    fn revoked(&mut self, _hash: &[u8; 32]) -> Result<bool, KvError> {
        Ok(false)
    }
}

/// An in-memory [`Kv`]: tests, benchmarks, single-process hosts and the
/// Durable Object (which is single-threaded).
#[derive(Debug, Clone)]
pub struct MemoryKv {
    /// Ordered, not hashed: a gate touches one to a few keys, and comparing
    /// them costs less than hashing each lookup.
    entries: BTreeMap<String, (Vec<u8>, Version)>,
    /// The version the next created key starts at.
    first_version: Version,
}

impl Default for MemoryKv {
    fn default() -> Self {
        MemoryKv::starting_at(1)
    }
}

impl MemoryKv {
    /// Versions of keys created from now on start at `first` (never 0). A
    /// map that is rebuilt (an evicted Durable Object) starts above every
    /// version its predecessor handed out, so a stale swap cannot match.
    pub fn starting_at(first: Version) -> MemoryKv {
        MemoryKv {
            entries: BTreeMap::new(),
            first_version: first.max(1),
        }
    }

    /// The value stored at `key`, if any.
    pub fn value(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|(v, _)| v.as_slice())
    }

    /// `None` for a key never written.
    pub fn version(&self, key: &str) -> Option<Version> {
        self.entries.get(key).map(|(_, v)| *v)
    }

    /// Sets a value unconditionally (restoring a persisted one, or a test's
    /// fixture); its version moves on as a write's would.
    pub fn put(&mut self, key: &str, value: Vec<u8>) {
        let version = self
            .entries
            .get(key)
            .map_or(self.first_version, |(_, v)| v.saturating_add(1));
        self.entries.insert(key.to_owned(), (value, version));
    }
}

impl Kv for MemoryKv {
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
        Ok(self
            .entries
            .get(key)
            .map(|(value, version)| Entry::borrowed(value, *version)))
    }

    fn swap(&mut self, key: &str, version: Version, value: &[u8]) -> Result<bool, KvError> {
        match self.entries.get_mut(key) {
            Some((stored, current)) if *current == version => {
                // The key keeps its buffer: no allocation per write.
                stored.clear();
                stored.extend_from_slice(value);
                *current = current.saturating_add(1);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        if self.entries.contains_key(key) {
            return Ok(false);
        }
        self.put(key, value.to_vec());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_needs_the_version_it_read() {
        let mut kv = MemoryKv::default();
        assert_eq!(kv.get("k"), Ok(None));
        assert_eq!(kv.swap("k", 1, b"x"), Ok(false), "absent: nothing to swap");
        assert_eq!(kv.create("k", b"a"), Ok(true));
        assert_eq!(kv.create("k", b"b"), Ok(false), "create never overwrites");
        let v = kv.version("k").unwrap();
        assert_eq!(kv.swap("k", v + 1, b"c"), Ok(false));
        assert_eq!(kv.swap("k", v, b"c"), Ok(true));
        assert_eq!(kv.swap("k", v, b"d"), Ok(false), "a version is spent once");
        assert_eq!(kv.value("k"), Some(&b"c"[..]));
    }

    #[test]
    fn a_rebuilt_map_never_reuses_a_version() {
        let mut old = MemoryKv::default();
        old.create("k", b"a").unwrap();
        let stale = old.version("k").unwrap();
        let mut rebuilt = MemoryKv::starting_at(1_000);
        rebuilt.put("k", b"a".to_vec());
        assert_eq!(rebuilt.swap("k", stale, b"b"), Ok(false));
    }
}
