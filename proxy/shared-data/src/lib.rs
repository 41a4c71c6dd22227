//! Proxy-wasm shared data as `serve` keeps it: one map for every VM of the
//! filter host and for the component host's `wasi:keyvalue` bucket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A shared-data value and its CAS version.
type Versioned = (Vec<u8>, u32);

/// One map for every VM, with Envoy's CAS rules (cas 0 writes
/// unconditionally; every write bumps the version, never to 0).
#[derive(Clone, Default)]
pub struct SharedData {
    inner: Arc<Mutex<HashMap<String, Versioned>>>,
    /// Fault injection for tests: every call fails while set.
    failing: Arc<AtomicBool>,
    /// Calls that failed, for the limiter-store error metric.
    failures: Arc<AtomicU64>,
}

/// The shared-data store failed (injected, or a poisoned lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedDataDown;

impl SharedData {
    /// The map, unless the store is failing (injected, or a poisoned lock).
    fn map(&self) -> Result<MutexGuard<'_, HashMap<String, Versioned>>, SharedDataDown> {
        let map = match self.failing.load(Ordering::Relaxed) {
            true => Err(SharedDataDown),
            false => self.inner.lock().map_err(|_| SharedDataDown),
        };
        if map.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        map
    }

    /// Calls that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether the store answers now (for readiness).
    pub fn answers(&self) -> bool {
        self.map().is_ok()
    }
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, SharedDataDown> {
        let map = self.map()?;
        Ok(map.get(key).cloned())
    }

    pub fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> Result<bool, SharedDataDown> {
        let mut map = self.map()?;
        let current = map.get(key).map_or(0, |(_, c)| *c);
        if cas != 0 && cas != current {
            return Ok(false);
        }
        let next = current.wrapping_add(1).max(1);
        map.insert(key.to_owned(), (value, next));
        Ok(true)
    }

    /// Strict compare-and-swap, for `wasi:keyvalue/atomics`: writes only if
    /// the version is still `seen`, where 0 means "absent" (unlike Envoy's
    /// cas 0, which writes unconditionally).
    pub fn swap_if(&self, key: &str, value: Vec<u8>, seen: u32) -> Result<bool, SharedDataDown> {
        let mut map = self.map()?;
        let current = map.get(key).map_or(0, |(_, c)| *c);
        if seen != current {
            return Ok(false);
        }
        map.insert(key.to_owned(), (value, current.wrapping_add(1).max(1)));
        Ok(true)
    }

    /// Writes `value` if the key holds exactly `expected` (a compare of
    /// values, as Spin's SQLite key-value store makes it).
    pub fn replace_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        value: Vec<u8>,
    ) -> Result<bool, SharedDataDown> {
        let mut map = self.map()?;
        match map.get_mut(key) {
            Some((current, version)) if current.as_slice() == expected => {
                *current = value;
                *version = version.wrapping_add(1).max(1);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn delete(&self, key: &str) -> Result<(), SharedDataDown> {
        let mut map = self.map()?;
        map.remove(key);
        Ok(())
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Result<Vec<String>, SharedDataDown> {
        let map = self.map()?;
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.sort();
        Ok(keys)
    }

    /// Fault injection: while set, every call fails as a lost store would.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_follows_envoy_cas_rules() {
        let s = SharedData::default();
        assert_eq!(s.get("k"), Ok(None));
        assert_eq!(s.set("k", b"a".to_vec(), 0), Ok(true));
        let (_, v1) = s.get("k").unwrap().unwrap();
        assert_eq!(s.set("k", b"b".to_vec(), v1), Ok(true));
        assert_eq!(s.set("k", b"c".to_vec(), v1), Ok(false), "stale cas");
        assert_eq!(s.get("k").unwrap().unwrap().0, b"b");
    }
}
