//! The gate's [`Kv`] (get with a version, then write if the version still
//! holds) over a handle-based compare-and-swap, the shape of
//! `wasi:keyvalue/atomics`: `cas::new(bucket, key)` remembers what it read,
//! `swap(cas, value)` writes only if nobody wrote since.
//!
//! Generic over [`CasBucket`] so the mapping is tested natively; the
//! component plugs the real imports in (`bindings.rs`).

use std::borrow::Cow;
use std::collections::HashMap;

use sessiongate_core::{Entry, Kv, KvError, Version};

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

/// An open CAS handle: the version number it was handed out as, and
/// whether its read found the key absent.
struct Open<H> {
    version: Version,
    handle: H,
    absent: bool,
}

/// [`Kv`] over a [`CasBucket`]: each `get` opens a CAS handle and hands out
/// a fresh version number naming it; a swap with that number goes through
/// the handle. A swap with any other number is a conflict, so a stale read
/// can never write.
pub struct CasKv<B: CasBucket> {
    bucket: B,
    open: HashMap<String, Open<B::Handle>>,
    issued: Version,
}

impl<B: CasBucket> CasKv<B> {
    pub fn new(bucket: B) -> Self {
        CasKv {
            bucket,
            open: HashMap::new(),
            issued: 0,
        }
    }

    fn begin(&mut self, key: &str) -> Result<(Version, Option<Vec<u8>>), KvError> {
        let (handle, value) = self.bucket.begin(key).map_err(KvError)?;
        self.issued += 1;
        let open = Open {
            version: self.issued,
            handle,
            absent: value.is_none(),
        };
        self.open.insert(key.to_owned(), open);
        Ok((self.issued, value))
    }
}

impl<B: CasBucket> Kv for CasKv<B> {
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
        let (version, value) = self.begin(key)?;
        Ok(value.map(|v| Entry {
            value: Cow::Owned(v),
            version,
        }))
    }

    fn swap(&mut self, key: &str, version: Version, value: &[u8]) -> Result<bool, KvError> {
        match self.open.remove(key) {
            Some(open) if open.version == version && !open.absent => {
                self.bucket.swap(open.handle, value).map_err(KvError)
            }
            _ => Ok(false),
        }
    }

    /// Through the handle of the read that found the key absent, or a new
    /// one. (Whether the bucket's swap of an absent key is atomic is the
    /// bucket's: Spin's is not.)
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        let open = match self.open.remove(key) {
            Some(open) if open.absent => open,
            _ => {
                let (_, current) = self.begin(key)?;
                match self.open.remove(key) {
                    Some(open) if current.is_none() => open,
                    _ => return Ok(false),
                }
            }
        };
        self.bucket.swap(open.handle, value).map_err(KvError)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use sessiongate_core::{Backend, Gate, GateConfig, LimitConfig, Outcome, Request};

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

    fn version(store: &mut CasKv<Bucket>, key: &str) -> Version {
        match store.get(key) {
            Ok(Some(entry)) => entry.version,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn a_read_then_write_goes_through() {
        let mut store = CasKv::new(Bucket::default());
        assert_eq!(store.get("k"), Ok(None));
        assert_eq!(store.create("k", b"v"), Ok(true));
        let v = version(&mut store, "k");
        assert_eq!(store.swap("k", v, b"w"), Ok(true));
        assert_eq!(
            store.get("k").map(|e| e.map(|e| e.value.into_owned())),
            Ok(Some(b"w".to_vec()))
        );
        assert_eq!(store.create("k", b"x"), Ok(false), "it exists");
    }

    #[test]
    fn a_write_after_someone_elses_is_a_conflict() {
        let shared = Bucket::default();
        let mut a = CasKv::new(shared.clone());
        let mut b = CasKv::new(shared);
        a.create("k", b"0").unwrap();
        let va = version(&mut a, "k");
        let vb = version(&mut b, "k");
        assert_eq!(b.swap("k", vb, b"b"), Ok(true));
        assert_eq!(a.swap("k", va, b"a"), Ok(false));
    }

    #[test]
    fn a_version_not_from_the_last_read_never_writes() {
        let mut store = CasKv::new(Bucket::default());
        store.create("k", b"0").unwrap();
        let first = version(&mut store, "k");
        let second = version(&mut store, "k");
        assert_ne!(first, second);
        assert_eq!(store.swap("k", first, b"x"), Ok(false));
        // The handle was spent by the failed attempt: read again to write.
        assert_eq!(store.swap("k", second, b"x"), Ok(false));
        assert_eq!(store.swap("other", 1, b"x"), Ok(false));
    }

    fn gate(requests: u32) -> Gate {
        Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t").unwrap(),
            limit: LimitConfig {
                requests,
                window_seconds: 60,
            },
            backend: Backend::Stub,
            ..Default::default()
        })
        .unwrap()
    }

    const TOKEN: &str = "fus_0123456789012345678901234567890123456789";

    fn decide(gate: &Gate, store: &mut CasKv<Bucket>, now: u64) -> Outcome {
        let auth = format!("Bearer {TOKEN}");
        let values = [auth.as_bytes()];
        let req = Request {
            method: "GET",
            target: "/v1/external/sessions/acme/s",
            authorization: &values,
            client: None,
        };
        gate.decide(&req, now, store).outcome
    }

    #[test]
    fn store_failures_reach_the_limiter_as_errors() {
        let mut store = CasKv::new(Bucket {
            fail: true,
            ..Bucket::default()
        });
        assert_eq!(
            decide(&gate(20), &mut store, 1_000),
            Outcome::Denied(sessiongate_core::ErrorCode::LimiterUnavailable)
        );
    }

    #[test]
    fn several_instances_on_one_bucket_admit_exactly_the_limit() {
        let shared = Bucket::default();
        // One gate per instance, as each component instance parses its own.
        let mut instances: Vec<_> = (0..5)
            .map(|_| (gate(7), CasKv::new(shared.clone())))
            .collect();
        let mut admitted = 0;
        for round in 0..4 {
            for (gate, store) in &mut instances {
                if decide(gate, store, 1_000 + round) == Outcome::Allowed {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 7);
    }
}
