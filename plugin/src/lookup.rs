//! Credentials read from the fleet's store in etcd (feature `fleet`,
//! configuration `"credentials": {"store": "etcd", …}`): a request's
//! presented digests are looked up by digest (one txn call per digest not
//! cached), and the answers kept in a bounded cache per VM, hits and misses
//! alike. The root context's tick (tick.rs) reads the credentials' revision
//! (one key) and drops every cached answer when it moved, so a change
//! anywhere holds in this VM within two tick periods and a call. When etcd
//! cannot be read an answer is kept only `max_stale_ms` past its last
//! confirmation; then the request is `503`, never a `401` that would tell a
//! valid customer their credential was revoked.

use std::rc::Rc;

use sessiongate_core::{CredentialSet, CredentialStore, Gate, SecretHash};
use sessiongate_etcd::Found;

/// What the cache holds of one digest.
#[derive(Debug, Clone)]
struct Cached {
    /// A gate over the credential (built once, shared by the requests that
    /// present it), or `None`: no credential has the digest.
    credential: Option<Rc<Gate>>,
    /// When etcd said so (ms).
    fetched_at: u64,
}

/// One VM's cache of looked-up credentials.
#[derive(Debug, Default)]
pub struct CredentialCache {
    /// Sorted by digest (a vector, not a map: the filter is size-bound, and
    /// a binary search of a few thousand digests is a few comparisons).
    entries: Vec<(SecretHash, Cached)>,
    /// The credentials' revision the entries are of (`None`: none read yet).
    revision: Option<u64>,
    /// When a tick last read the revision (ms).
    confirmed_at: u64,
}

/// What a request's credentials need before its decision.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Decide with this gate over the credential found (`None`: nothing
    /// presented is a credential).
    Decide(Option<Rc<Gate>>),
    /// Look this digest up first.
    Fetch(SecretHash),
}

impl CredentialCache {
    /// What the cache says of `digests` at `now`: the first that is a
    /// credential, or the first it does not know (or knows too long ago).
    pub(crate) fn lookup(
        &self,
        store: &CredentialStore,
        digests: &[SecretHash],
        now: u64,
    ) -> Lookup {
        for digest in digests {
            match self.get(digest) {
                Some(cached) if self.fresh(store, cached, now) => {
                    if let Some(gate) = &cached.credential {
                        return Lookup::Decide(Some(gate.clone()));
                    }
                }
                _ => return Lookup::Fetch(*digest),
            }
        }
        Lookup::Decide(None)
    }

    /// Whether an answer may still be used: confirmed (fetched, or its
    /// revision read since) within `max_stale_ms`.
    fn fresh(&self, store: &CredentialStore, cached: &Cached, now: u64) -> bool {
        let confirmed = cached.fetched_at.max(self.confirmed_at);
        now.saturating_sub(confirmed) <= u64::from(store.max_stale_ms)
    }

    /// A lookup's answer for `digest`. A record that does not parse is
    /// `Err` (and not kept): the store is corrupt, not the credential absent.
    pub(crate) fn found(
        &mut self,
        gate: &Gate,
        store: &CredentialStore,
        digest: SecretHash,
        found: Found,
        now: u64,
    ) -> Result<(), String> {
        let credential = match &found.record {
            None => None,
            Some(record) => {
                let mut list = Vec::with_capacity(record.len() + 2);
                list.push(b'[');
                list.extend_from_slice(record);
                list.push(b']');
                let set = CredentialSet::from_json(&list)
                    .map_err(|e| format!("the record under this digest is corrupt: {e}"))?;
                Some(Rc::new(gate.with_credentials(set)))
            }
        };
        if !self.at_revision(found.revision) {
            // An answer older than what a tick read since: not kept.
            return Ok(());
        }
        if self.entries.len() >= store.cache_entries {
            self.entries.clear();
        }
        let cached = Cached {
            credential,
            fetched_at: now,
        };
        match self.entries.binary_search_by(|(d, _)| d.cmp(&digest)) {
            Ok(at) => {
                if let Some(entry) = self.entries.get_mut(at) {
                    entry.1 = cached;
                }
            }
            Err(at) => self.entries.insert(at, (digest, cached)),
        }
        Ok(())
    }

    fn get(&self, digest: &SecretHash) -> Option<&Cached> {
        let at = self.entries.binary_search_by(|(d, _)| d.cmp(digest)).ok()?;
        self.entries.get(at).map(|(_, cached)| cached)
    }

    /// A tick read the credentials' revision at `now`.
    pub(crate) fn confirmed(&mut self, revision: u64, at: u64) {
        if self.at_revision(revision) {
            self.confirmed_at = self.confirmed_at.max(at);
        }
    }

    /// Moves the cache to `revision` if it is newer (dropping every entry:
    /// any of them may have changed); whether `revision` is the cache's now.
    fn at_revision(&mut self, revision: u64) -> bool {
        match self.revision {
            Some(current) if revision < current => false,
            Some(current) if revision == current => true,
            _ => {
                if self.revision.is_some() {
                    self.entries.clear();
                }
                self.revision = Some(revision);
                true
            }
        }
    }

    /// How many answers the cache holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::{Kind, Level, Sites, fixtures, hash_secret};

    const TOKEN: &str = "fus_abcdefghijABCDEFGHIJ0123456789klmnopqrst";

    fn store() -> CredentialStore {
        CredentialStore {
            max_stale_ms: 1_000,
            cache_entries: 3,
            ..CredentialStore::default()
        }
    }

    fn record_json() -> Vec<u8> {
        let record = fixtures::record(TOKEN, Kind::Token, "ci", Sites::All, Level::Standard);
        serde_json::to_vec(&record).unwrap()
    }

    fn found(record: bool, revision: u64) -> Found {
        Found {
            record: record.then(record_json),
            revision,
        }
    }

    fn decided(lookup: Lookup) -> usize {
        match lookup {
            Lookup::Decide(found) => found.map_or(0, |g| g.credentials().len()),
            Lookup::Fetch(_) => panic!("fetched"),
        }
    }

    fn gate() -> Gate {
        Gate::from_json(b"{}").unwrap()
    }

    #[test]
    fn hits_and_misses_are_kept_until_stale() {
        let g = gate();
        let (s, d, other) = (store(), hash_secret(TOKEN.as_bytes()), [7u8; 32]);
        let mut cache = CredentialCache::default();
        assert!(matches!(cache.lookup(&s, &[d], 0), Lookup::Fetch(x) if x == d));
        cache.found(&g, &s, d, found(true, 4), 10).unwrap();
        cache.found(&g, &s, other, found(false, 4), 10).unwrap();
        assert_eq!(decided(cache.lookup(&s, &[d], 500)), 1);
        assert_eq!(
            decided(cache.lookup(&s, &[other], 500)),
            0,
            "a miss is cached"
        );
        assert_eq!(
            decided(cache.lookup(&s, &[other, d], 500)),
            1,
            "the first credential"
        );
        // No tick confirmed it: after max_stale_ms it is looked up again.
        assert!(matches!(cache.lookup(&s, &[d], 1_011), Lookup::Fetch(_)));
        cache.confirmed(4, 1_500);
        assert_eq!(
            decided(cache.lookup(&s, &[d], 2_400)),
            1,
            "a tick confirmed it"
        );
    }

    #[test]
    fn a_newer_revision_drops_everything_and_an_older_answer_is_not_kept() {
        let g = gate();
        let (s, d) = (store(), hash_secret(TOKEN.as_bytes()));
        let mut cache = CredentialCache::default();
        cache.found(&g, &s, d, found(true, 4), 0).unwrap();
        cache.confirmed(5, 1);
        assert!(
            cache.is_empty(),
            "the revision moved: a deletion may be among it"
        );
        // A lookup sent before the change, answered after the tick.
        cache.found(&g, &s, d, found(true, 4), 2).unwrap();
        assert!(cache.is_empty());
        cache.found(&g, &s, d, found(false, 5), 3).unwrap();
        assert_eq!(decided(cache.lookup(&s, &[d], 4)), 0, "revoked");
        // A newer answer moves the cache too.
        cache.found(&g, &s, [1; 32], found(false, 6), 5).unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_a_corrupt_record_is_an_error() {
        let g = gate();
        let s = store();
        let mut cache = CredentialCache::default();
        for i in 0..10u8 {
            cache.found(&g, &s, [i; 32], found(false, 1), 0).unwrap();
            assert!(cache.len() <= s.cache_entries);
        }
        let corrupt = Found {
            record: Some(b"{\"name\":".to_vec()),
            revision: 1,
        };
        assert!(cache.found(&g, &s, [99; 32], corrupt, 0).is_err());
        assert!(matches!(cache.lookup(&s, &[[99; 32]], 0), Lookup::Fetch(_)));
    }
}
