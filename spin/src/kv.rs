//! The component's side of `wasi:keyvalue`, the same in both builds:
//! bindings of `wit/`'s `key-value` world, the bucket as a [`CasBucket`],
//! the gate's configuration read from it, and a decision on it.

use std::cell::RefCell;
use std::hash::BuildHasher as _;
use std::rc::Rc;

use sessiongate_core::{Decision, Gate, Request};

use crate::CONFIG_KEY;
use crate::cas::{CasBucket, CasKv};
use crate::last_use;
use crate::record::Tags;

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "sessiongate:gate/key-value",
        generate_all,
    });
}

use bindings::wasi::keyvalue::{atomics, store};

/// The bucket Spin opens for a component granted `key_value_stores = ["default"]`.
const BUCKET: &str = "default";

thread_local! {
    /// The parsed configuration, rebuilt only when the stored bytes change
    /// (hosts that reuse an instance parse it once).
    static GATE: RefCell<Option<(Vec<u8>, Rc<Gate>)>> = const { RefCell::new(None) };
    /// This instance's write tags, seeded from the host's randomness.
    static TAGS: RefCell<Tags> = RefCell::new(Tags::new(
        std::collections::hash_map::RandomState::new().hash_one(0u8),
    ));
}

fn describe(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no such key-value store".to_owned(),
        store::Error::AccessDenied => "access to the key-value store denied".to_owned(),
        store::Error::Other(message) => message,
    }
}

/// The `default` bucket, open.
pub struct Bucket(store::Bucket);

impl Bucket {
    pub fn open() -> Result<Bucket, String> {
        store::open(BUCKET)
            .map(Bucket)
            .map_err(|e| format!("cannot open the key-value store: {}", describe(e)))
    }

    /// The gate as configured under [`CONFIG_KEY`], parsed again only if
    /// the bytes there changed.
    pub fn gate(&self) -> Result<Rc<Gate>, String> {
        let bytes = self.0.get(CONFIG_KEY).map_err(describe)?.ok_or_else(|| {
            format!("no configuration under {CONFIG_KEY:?} in the key-value store")
        })?;
        GATE.with(|cell| {
            if let Some((cached, gate)) = cell.borrow().as_ref()
                && *cached == bytes
            {
                return Ok(gate.clone());
            }
            let gate = Rc::new(Gate::from_json(&bytes).map_err(|e| e.to_string())?);
            *cell.borrow_mut() = Some((bytes, gate.clone()));
            Ok(gate)
        })
    }

    /// The gate's decision on `request`, its shared state in this bucket;
    /// an admission notes the credential's last use there.
    pub fn decide<'g>(&self, gate: &'g Gate, request: &Request<'_>) -> Decision<'g> {
        let now = now_ms();
        let decision = TAGS.with(|tags| {
            let mut tags = tags.borrow_mut();
            gate.decide(
                request,
                now,
                &mut CasKv::new(Handle(&self.0), now, &mut tags),
            )
        });
        if let Some(name) = decision.admitted() {
            self.note_use(name, now);
        }
        decision
    }

    /// Writes the credential's last use when its stored minute is older
    /// ([`last_use::update`]). A failure is logged, never the request's:
    /// last use is for people reading lists, not for the decision.
    fn note_use(&self, name: &str, now: u64) {
        let key = last_use::key(name);
        let written = self.0.get(&key).and_then(|stored| {
            match last_use::update(name, now, stored.as_deref()) {
                Some(value) => self.0.set(&key, &value),
                None => Ok(()),
            }
        });
        if let Err(e) = written {
            eprintln!(
                "sessiongate: last use of {name:?} not written: {}",
                describe(e)
            );
        }
    }
}

/// Unix time in ms (0 before 1970: the clock is the host's to keep).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Handle<'b>(&'b store::Bucket);

impl CasBucket for Handle<'_> {
    type Handle = atomics::Cas;

    fn begin(&mut self, key: &str) -> Result<(atomics::Cas, Option<Vec<u8>>), String> {
        let cas = atomics::Cas::new(self.0, key).map_err(describe)?;
        let value = cas.current().map_err(describe)?;
        Ok((cas, value))
    }

    fn swap(&mut self, handle: atomics::Cas, value: &[u8]) -> Result<bool, String> {
        match atomics::swap(handle, value) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(describe(e)),
        }
    }

    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map_err(describe)
    }

    fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
        atomics::increment(self.0, key, delta).map_err(describe)
    }

    fn delete(&mut self, key: &str) -> Result<(), String> {
        self.0.delete(key).map_err(describe)
    }

    fn pause(&mut self) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
