//! The core's [`SharedStore`] (get with a version, then write if the version
//! still holds) over a handle-based compare-and-swap, the shape of
//! `wasi:keyvalue/atomics`: `cas::new(bucket, key)` remembers what it read,
//! `swap(cas, value)` writes only if nobody wrote since.
//!
//! Generic over [`CasBucket`] so the mapping is tested natively; the
//! component plugs the real imports in (`wasm.rs`).

use std::collections::HashMap;

use sessiongate_core::limiter::{CasOutcome, SharedStore, StoreError};

/// A bucket with handle-based CAS.
pub trait CasBucket {
    /// What `swap` needs to know the read it follows.
    type Handle;
    /// Starts a CAS on `key`: a handle and the value it saw.
    fn begin(&mut self, key: &str) -> Result<(Self::Handle, Option<Vec<u8>>), String>;
    /// Writes `value` if nothing was written to the key since `handle` was
    /// made: `Ok(false)` when something was.
    fn swap(&mut self, handle: Self::Handle, value: &[u8]) -> Result<bool, String>;
}

/// [`SharedStore`] over a [`CasBucket`]: each `get` opens a CAS handle and
/// hands out a fresh version number naming it; `set` with that number swaps
/// through the handle. A `set` with any other number is a mismatch, so a
/// stale read can never write.
pub struct CasStore<B: CasBucket> {
    bucket: B,
    open: HashMap<String, (u32, B::Handle)>,
    issued: u32,
}

impl<B: CasBucket> CasStore<B> {
    pub fn new(bucket: B) -> Self {
        CasStore {
            bucket,
            open: HashMap::new(),
            issued: 0,
        }
    }
}

impl<B: CasBucket> SharedStore for CasStore<B> {
    fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        let (handle, value) = self.bucket.begin(key).map_err(StoreError)?;
        // Never 0: the core's "never written" version.
        self.issued = self.issued.wrapping_add(1).max(1);
        self.open.insert(key.to_owned(), (self.issued, handle));
        Ok((value, self.issued))
    }

    fn set(&mut self, key: &str, value: &[u8], version: u32) -> Result<CasOutcome, StoreError> {
        match self.open.remove(key) {
            Some((issued, handle)) if issued == version => {
                match self.bucket.swap(handle, value).map_err(StoreError)? {
                    true => Ok(CasOutcome::Written),
                    false => Ok(CasOutcome::Mismatch),
                }
            }
            _ => Ok(CasOutcome::Mismatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use sessiongate_core::limiter::{self, Limit};

    use super::*;

    /// An in-memory bucket with a write counter per key, shared between
    /// "instances" the way a host's store is.
    /// Each key's value and how many writes it has seen.
    type Entries = HashMap<String, (Vec<u8>, u64)>;

    #[derive(Clone, Default)]
    struct Bucket {
        data: Rc<RefCell<Entries>>,
        fail: bool,
    }

    impl CasBucket for Bucket {
        type Handle = (String, u64);
        fn begin(&mut self, key: &str) -> Result<(Self::Handle, Option<Vec<u8>>), String> {
            if self.fail {
                return Err("store down".into());
            }
            let data = self.data.borrow();
            let (value, writes) = data
                .get(key)
                .map_or((None, 0), |(v, w)| (Some(v.clone()), *w));
            Ok(((key.to_owned(), writes), value))
        }
        fn swap(&mut self, (key, seen): Self::Handle, value: &[u8]) -> Result<bool, String> {
            let mut data = self.data.borrow_mut();
            let writes = data.get(&key).map_or(0, |(_, w)| *w);
            if writes != seen {
                return Ok(false);
            }
            data.insert(key, (value.to_vec(), writes + 1));
            Ok(true)
        }
    }

    #[test]
    fn a_read_then_write_goes_through() {
        let mut store = CasStore::new(Bucket::default());
        let (value, version) = store.get("k").ok().unzip_version();
        assert_eq!(value, None);
        assert_eq!(store.set("k", b"v", version), Ok(CasOutcome::Written));
        assert_eq!(
            store.get("k").ok().map(|(v, _)| v),
            Some(Some(b"v".to_vec()))
        );
    }

    #[test]
    fn a_write_after_someone_elses_is_a_mismatch() {
        let shared = Bucket::default();
        let mut a = CasStore::new(shared.clone());
        let mut b = CasStore::new(shared);
        let (_, va) = a.get("k").ok().unzip_version();
        let (_, vb) = b.get("k").ok().unzip_version();
        assert_eq!(b.set("k", b"b", vb), Ok(CasOutcome::Written));
        assert_eq!(a.set("k", b"a", va), Ok(CasOutcome::Mismatch));
    }

    #[test]
    fn a_version_not_from_the_last_read_never_writes() {
        let mut store = CasStore::new(Bucket::default());
        let (_, first) = store.get("k").ok().unzip_version();
        let (_, second) = store.get("k").ok().unzip_version();
        assert_ne!(first, second);
        assert_eq!(store.set("k", b"x", first), Ok(CasOutcome::Mismatch));
        // The handle was spent by the failed attempt: read again to write.
        assert_eq!(store.set("k", b"x", second), Ok(CasOutcome::Mismatch));
        assert_eq!(store.set("other", b"x", 1), Ok(CasOutcome::Mismatch));
    }

    #[test]
    fn store_failures_reach_the_limiter_as_errors() {
        let mut store = CasStore::new(Bucket {
            fail: true,
            ..Bucket::default()
        });
        assert!(limiter::acquire(&mut store, 1_000, Limit::new(20, 60)).is_err());
    }

    #[test]
    fn several_instances_on_one_bucket_admit_exactly_the_limit() {
        let shared = Bucket::default();
        let mut instances: Vec<_> = (0..5).map(|_| CasStore::new(shared.clone())).collect();
        let limit = Limit::new(7, 60);
        let mut admitted = 0;
        for round in 0..4 {
            for store in &mut instances {
                let verdict = limiter::acquire(store, 1_000 + round, limit);
                if verdict.is_ok_and(|v| v.admitted) {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 7);
    }

    trait UnzipVersion {
        fn unzip_version(self) -> (Option<Vec<u8>>, u32);
    }
    impl UnzipVersion for Option<(Option<Vec<u8>>, u32)> {
        fn unzip_version(self) -> (Option<Vec<u8>>, u32) {
            self.unwrap_or((None, u32::MAX))
        }
    }
}
