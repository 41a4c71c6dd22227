//! Last use (issue 46): when each credential was last admitted, to the
//! minute, and by which gate instance.
//!
//! Nothing is written on the request path: an instance notes what it
//! admits in memory ([`Uses`]) and, at most once a minute, merges that into
//! the stored documents, one [`LastUse`] per credential ([`Uses::merge_into`]).
//! The merge keeps the later minute of each credential, so writers never
//! undo each other, and writes nothing when a minute is already stored.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The resolution of last use: a minute, in milliseconds.
pub const MINUTE_MS: u64 = 60_000;

/// A credential's last admitted use, as stored: one document per
/// credential, named by the credential. `at` is its first field, so its
/// JSON sorts by time as bytes do ([`LastUse::later_than`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastUse {
    /// The minute of its last admission: Unix milliseconds, a multiple of
    /// [`MINUTE_MS`].
    pub at: u64,
    /// The gate instance that admitted it then.
    pub instance: String,
    /// The credential's name.
    pub name: String,
}

impl LastUse {
    /// The bytes that this use's JSON sorts after exactly when it is of a
    /// later minute than `at` (among times of 13 digits, 1973 to 2286): a
    /// store that compares values as bytes (etcd's `VALUE` `LESS`) keeps
    /// the later minute with no read, the merge rule of [`Uses::merge_into`].
    pub fn later_than(at: u64) -> Vec<u8> {
        format!("{{\"at\":{at}").into_bytes()
    }

    /// Whether this is a use of the credential `name` created at
    /// `created` (Unix milliseconds), not of a deleted credential that had
    /// its name: the use is no earlier than the minute it was created.
    pub fn is_of(&self, name: &str, created: u64) -> bool {
        self.name == name && self.at >= minute(created)
    }
}

/// The minute `ms` falls in, as its first millisecond.
pub(crate) fn minute(ms: u64) -> u64 {
    ms - ms % MINUTE_MS
}

/// What one instance admitted since it last flushed: each credential's
/// latest minute.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uses {
    latest: HashMap<Box<str>, u64>,
}

impl Uses {
    /// Notes that the credential `name` was admitted at `now_ms`.
    pub fn admitted(&mut self, name: &str, now_ms: u64) {
        let at = minute(now_ms);
        match self.latest.get_mut(name) {
            Some(seen) => *seen = (*seen).max(at),
            None => {
                self.latest.insert(name.into(), at);
            }
        }
    }

    /// Nothing admitted since the last flush.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// How many credentials were admitted since the last flush.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Each credential noted and the minute of its latest admission, for a
    /// store that merges by the same rule itself (an SQL upsert that keeps
    /// the later minute).
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.latest.iter().map(|(name, &at)| (&**name, at))
    }

    /// Takes what was noted, leaving nothing: what a flush writes.
    pub fn take(&mut self) -> Uses {
        std::mem::take(self)
    }

    /// Adds back what a failed flush took, keeping the later minute of each
    /// credential noted meanwhile.
    pub fn put_back(&mut self, taken: Uses) {
        for (name, at) in taken.latest {
            let seen = self.latest.entry(name).or_insert(at);
            *seen = (*seen).max(at);
        }
    }

    /// Merges these uses by `instance` into the stored documents: a later
    /// minute replaces a stored one, an earlier or equal one changes
    /// nothing (the instance that stored it keeps its name). Returns how
    /// many documents changed (none: nothing to write).
    pub fn merge_into(&self, stored: &mut Vec<LastUse>, instance: &str) -> usize {
        let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(stored.len());
        for (i, u) in stored.iter().enumerate() {
            by_name.insert(u.name.as_str(), i);
        }
        let mut updates = Vec::new();
        let mut added = Vec::new();
        for (name, &at) in &self.latest {
            match by_name.get(&**name) {
                Some(&i) if stored.get(i).is_some_and(|u| u.at < at) => updates.push((i, at)),
                Some(_) => {}
                None => added.push(LastUse {
                    at,
                    instance: instance.to_owned(),
                    name: name.to_string(),
                }),
            }
        }
        let changed = updates.len() + added.len();
        for (i, at) in updates {
            if let Some(u) = stored.get_mut(i) {
                u.at = at;
                instance.clone_into(&mut u.instance);
            }
        }
        // In name order, so that a store's file does not churn by hash order.
        added.sort_by(|a, b| a.name.cmp(&b.name));
        stored.extend(added);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_are_kept_to_the_minute_and_the_latest_wins() {
        let mut uses = Uses::default();
        uses.admitted("a", 120_500);
        uses.admitted("a", 60_001);
        uses.admitted("b", 59_999);
        let mut stored = Vec::new();
        assert_eq!(uses.merge_into(&mut stored, "one"), 2);
        assert_eq!(
            stored,
            [
                LastUse {
                    name: "a".into(),
                    at: 120_000,
                    instance: "one".into()
                },
                LastUse {
                    name: "b".into(),
                    at: 0,
                    instance: "one".into()
                },
            ]
        );
    }

    #[test]
    fn a_merge_never_moves_a_use_back_and_writes_nothing_already_there() {
        let mut stored = vec![LastUse {
            name: "a".into(),
            at: 180_000,
            instance: "other".into(),
        }];
        let mut older = Uses::default();
        older.admitted("a", 130_000);
        assert_eq!(older.merge_into(&mut stored, "one"), 0);
        let mut same = Uses::default();
        same.admitted("a", 200_000);
        assert_eq!(same.merge_into(&mut stored, "one"), 0);
        assert_eq!(
            stored[0].instance, "other",
            "the first to store a minute keeps it"
        );
        let mut later = Uses::default();
        later.admitted("a", 240_000);
        assert_eq!(later.merge_into(&mut stored, "one"), 1);
        assert_eq!(
            (stored[0].at, stored[0].instance.as_str()),
            (240_000, "one")
        );
    }

    #[test]
    fn a_failed_flush_puts_back_what_it_took_without_moving_anything_back() {
        let mut uses = Uses::default();
        uses.admitted("a", 60_000);
        uses.admitted("b", 60_000);
        let taken = uses.take();
        assert!(uses.is_empty());
        uses.admitted("a", 120_000);
        uses.put_back(taken);
        let mut stored = Vec::new();
        uses.merge_into(&mut stored, "one");
        let at: Vec<(&str, u64)> = stored.iter().map(|u| (u.name.as_str(), u.at)).collect();
        assert_eq!(at, [("a", 120_000), ("b", 60_000)]);
    }

    #[test]
    fn stored_uses_sort_as_bytes_by_their_minute() {
        let json = |at: u64, instance: &str| {
            serde_json::to_vec(&LastUse {
                at,
                instance: instance.into(),
                name: "ci".into(),
            })
            .unwrap()
        };
        let minute = 1_796_185_680_000;
        let bound = LastUse::later_than(minute);
        assert!(
            json(minute - 60_000, "zz") < bound,
            "an older minute is below"
        );
        assert!(json(minute, "a") > bound, "the same minute is not");
        assert!(json(minute + 60_000, "a") > bound);
        assert!(json(1_000_000_000_000, "a") < LastUse::later_than(9_999_999_940_000));
    }

    #[test]
    fn a_use_before_a_credential_was_created_is_a_deleted_namesakes() {
        let old = LastUse {
            name: "ci".into(),
            at: 60_000,
            instance: "one".into(),
        };
        assert!(old.is_of("ci", 60_000));
        assert!(old.is_of("ci", 119_999), "the same minute");
        assert!(!old.is_of("ci", 120_000), "made after that use");
        assert!(!old.is_of("cd", 0));
    }
}
