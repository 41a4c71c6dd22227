//! The failed-credential guard: a client address that keeps presenting
//! invalid credentials is slowed (`429` with `Retry-After`) before its
//! credentials are even looked at, without touching the customers' global
//! budget.
//!
//! State lives in the same shared state as the limiter, spread over a fixed
//! number of buckets (keys) so memory stays bounded whatever the number of
//! addresses: each bucket holds at most [`ADDRESSES_PER_BUCKET`] addresses and
//! forgets the quietest when full.

use serde::{Deserialize, Serialize};

/// Buckets (shared-store keys) the addresses are spread over.
pub(crate) const BUCKETS: u64 = 1024;
/// Addresses one bucket remembers.
pub(crate) const ADDRESSES_PER_BUCKET: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The failed-credential guard: how many bad credentials one client address may present per window.
pub struct GuardConfig {
    /// Failed credentials an address may present per window; 0 turns the guard off.
    #[serde(default = "default_failures")]
    pub failures: u32,
    #[serde(default = "default_window")]
    /// The window's length in seconds.
    pub window_seconds: u32,
}

fn default_failures() -> u32 {
    10
}
fn default_window() -> u32 {
    60
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            failures: default_failures(),
            window_seconds: default_window(),
        }
    }
}

impl GuardConfig {
    /// Whether the guard is on.
    pub fn enabled(&self) -> bool {
        self.failures > 0
    }

    fn window_ms(&self) -> u64 {
        u64::from(self.window_seconds) * 1000
    }
}

/// One bucket: address → the times of its recent failures, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Bucket(Vec<(String, Vec<u64>)>);

pub(crate) fn bucket_key(address: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sessiongate.guard.v1.{}", h % BUCKETS)
}

/// The client part of `ip:port` (Envoy's `source.address`), so every
/// connection of one client counts together.
pub(crate) fn client_of(source: &str) -> &str {
    if let Some(rest) = source.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(source);
    }
    match source.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => source,
    }
}

fn parse(bytes: Option<&[u8]>) -> Option<Bucket> {
    match bytes {
        Some(b) if !b.is_empty() => serde_json::from_slice(b).ok(),
        _ => Some(Bucket::default()),
    }
}

/// Whole seconds until `address` may present credentials again, if its
/// bucket (`bytes`, absent: empty) holds it now. A bucket that does not
/// parse holds nobody: the guard is a brake, the limiter is the lock.
pub(crate) fn held(
    bytes: Option<&[u8]>,
    address: &str,
    now: u64,
    cfg: &GuardConfig,
) -> Option<u64> {
    held_until(bytes, address, now, cfg).map(|until| seconds_until(until, now))
}

fn seconds_until(until: u64, now: u64) -> u64 {
    until.saturating_sub(now).div_ceil(1000).max(1)
}

/// The instant (Unix ms) `address` may present credentials again, if its
/// bucket holds it now.
pub(crate) fn held_until(
    bytes: Option<&[u8]>,
    address: &str,
    now: u64,
    cfg: &GuardConfig,
) -> Option<u64> {
    if !cfg.enabled() {
        return None;
    }
    let bucket = parse(bytes)?;
    let (_, times) = bucket.0.iter().find(|(a, _)| a == address)?;
    let live: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| t.saturating_add(cfg.window_ms()) > now)
        .collect();
    let over = live.len().checked_sub(cfg.failures as usize)?;
    live.get(over).map(|t| t.saturating_add(cfg.window_ms()))
}

/// The bucket `bytes` (absent: empty) with one more failed credential from
/// `address`; `None` when the bytes are not a bucket (left alone).
pub(crate) fn with_failure(
    bytes: Option<&[u8]>,
    address: &str,
    now: u64,
    cfg: &GuardConfig,
) -> Option<Vec<u8>> {
    let mut bucket = parse(bytes)?;
    for (_, times) in bucket.0.iter_mut() {
        times.retain(|t| t.saturating_add(cfg.window_ms()) > now);
    }
    bucket.0.retain(|(_, times)| !times.is_empty());
    match bucket.0.iter_mut().find(|(a, _)| a == address) {
        Some((_, times)) => times.push(now),
        None => {
            if bucket.0.len() >= ADDRESSES_PER_BUCKET {
                // Forget the address whose latest failure is oldest.
                if let Some(quietest) = (0..bucket.0.len())
                    .min_by_key(|&i| bucket.0.get(i).and_then(|(_, t)| t.last().copied()))
                {
                    bucket.0.remove(quietest);
                }
            }
            bucket.0.push((address.to_owned(), vec![now]));
        }
    }
    // Keep only what can still hold: the last `failures + 1` times.
    let keep = cfg.failures as usize + 1;
    for (_, times) in bucket.0.iter_mut() {
        let excess = times.len().saturating_sub(keep);
        times.drain(..excess);
    }
    serde_json::to_vec(&bucket).ok()
}

/// How many addresses a bucket's bytes hold.
#[cfg(test)]
fn addresses_in(bytes: &[u8]) -> Option<usize> {
    parse(Some(bytes)).map(|b| b.0.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CFG: GuardConfig = GuardConfig {
        failures: 3,
        window_seconds: 10,
    };

    /// Buckets by key, one caller: read, add, write.
    #[derive(Default)]
    struct Buckets(HashMap<String, Vec<u8>>);

    impl Buckets {
        fn held(&self, address: &str, now: u64, cfg: &GuardConfig) -> Option<u64> {
            let bytes = self.0.get(&bucket_key(address)).map(Vec::as_slice);
            held(bytes, address, now, cfg)
        }
        fn fail(&mut self, address: &str, now: u64, cfg: &GuardConfig) {
            let key = bucket_key(address);
            if let Some(next) = with_failure(self.0.get(&key).map(Vec::as_slice), address, now, cfg)
            {
                self.0.insert(key, next);
            }
        }
    }

    #[test]
    fn holds_after_n_failures_until_the_oldest_expires() {
        let mut s = Buckets::default();
        for t in [0, 1_000, 2_000] {
            assert_eq!(s.held("10.0.0.1", t, &CFG), None);
            s.fail("10.0.0.1", t, &CFG);
        }
        assert_eq!(s.held("10.0.0.1", 2_500, &CFG), Some(8));
        assert_eq!(s.held("10.0.0.2", 2_500, &CFG), None, "per address");
        assert_eq!(s.held("10.0.0.1", 10_000, &CFG), None);
    }

    #[test]
    fn buckets_stay_bounded() {
        let mut s = Buckets::default();
        for i in 0..10_000u64 {
            s.fail(
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                i,
                &CFG,
            );
        }
        assert!(s.0.len() <= BUCKETS as usize);
        for bytes in s.0.values() {
            assert!(addresses_in(bytes).unwrap() <= ADDRESSES_PER_BUCKET);
        }
    }

    #[test]
    fn disabled_guard_holds_nobody() {
        let off = GuardConfig { failures: 0, ..CFG };
        let mut s = Buckets::default();
        for t in 0..100 {
            s.fail("a", t, &off);
        }
        assert_eq!(s.held("a", 100, &off), None);
    }

    #[test]
    fn a_bucket_that_does_not_parse_is_left_alone() {
        assert_eq!(held(Some(b"{"), "a", 0, &CFG), None);
        assert_eq!(with_failure(Some(b"{"), "a", 0, &CFG), None);
    }

    #[test]
    fn client_addresses() {
        assert_eq!(client_of("10.1.2.3:5555"), "10.1.2.3");
        assert_eq!(client_of("[::1]:80"), "::1");
        assert_eq!(client_of("::1"), "::1");
        assert_eq!(client_of("host"), "host");
    }
}

/// Clients the guard is known to hold, and until when (Unix ms): a held
/// client is refused again with no read of its bucket, so a guesser's
/// requests cost no call to the shared state. Exact: a client's failures
/// only age out, so no other gate can shorten a hold. Bounded, and a list
/// rather than a hash map: a map's code cost the shipped filter ~10 KB of
/// its 250,000-byte budget, and a few hundred held clients scan in
/// microseconds. When full, the oldest hold is forgotten (it costs one read).
#[derive(Debug, Default)]
pub(crate) struct HeldClients(std::sync::Mutex<Vec<(String, u64)>>);

const HELD_CLIENTS_MAX: usize = 256;

impl HeldClients {
    /// Seconds `address` is still held at `now`, if it is known to be.
    pub(crate) fn seconds(&self, address: &str, now: u64) -> Option<u64> {
        let list = self.0.lock().ok()?;
        let (_, until) = list.iter().find(|(a, _)| a == address)?;
        (*until > now).then(|| seconds_until(*until, now))
    }

    pub(crate) fn remember(&self, address: &str, until: u64) {
        if let Ok(mut list) = self.0.lock() {
            list.retain(|(a, _)| a != address);
            if list.len() >= HELD_CLIENTS_MAX {
                list.remove(0);
            }
            list.push((address.to_owned(), until));
        }
    }
}
