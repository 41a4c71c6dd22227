//! Credentials for a whole customer base, in the Durable Object's SQLite
//! storage, runtime-free: the table's operations behind [`Table`] (SQLite
//! in the object, a map in tests), the admin wire that `sessiongate
//! worker-sync` speaks, and the diff it computes.
//!
//! Why the object's storage and not Workers KV or D1 (README, "Edge"): every
//! admitted request already calls the object for the global limit, so a
//! lookup there adds no new place to fail; it is strongly consistent, so a
//! created credential works and a deleted one is refused on the next
//! request, with no ~60 s KV propagation for a revocation list to paper
//! over; and a guess costs nothing, because the Worker asks a
//! [`DigestFilter`] of every stored digest first and calls the object only
//! for the ~1 % of guesses it wrongly passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sessiongate_core::{CredentialRecord, DigestFilter, SecretHash, hash_hex, parse_hash_hex};

/// The instance the Worker's last uses are stored under: its one object.
pub const LAST_USE_INSTANCE: &str = "worker";

/// Records in one sync call: a few hundred KB of JSON, well inside a
/// Worker's request limits.
pub const SYNC_BATCH: usize = 1_000;
/// Digests in one listing page.
pub const LISTING_PAGE: usize = 10_000;
/// How long the Worker trusts its copy of the filter: the longest a created
/// credential waits to be admitted, unless the `SESSIONGATE_FILTER_TTL_MS`
/// binding says otherwise.
pub const FILTER_TTL_MS: u64 = 10_000;

/// The filter's lifetime from the binding's text: the default without one;
/// a binding that is not a whole number of milliseconds from 1 to an hour
/// is an error (the Worker says so and keeps the default).
pub fn filter_ttl_ms(binding: Option<&str>) -> Result<u64, String> {
    let Some(text) = binding else {
        return Ok(FILTER_TTL_MS);
    };
    match text.trim().parse::<u64>() {
        Ok(ms) if (1..=3_600_000).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "SESSIONGATE_FILTER_TTL_MS is {text:?}: milliseconds from 1 to 3600000"
        )),
    }
}

/// The table of stored credentials, keyed by digest (hex).
pub trait Table {
    /// The records stored under any of `hashes`.
    fn get(&mut self, hashes: &[String]) -> Result<Vec<CredentialRecord>, String>;
    /// Stores each record (replacing one with the same digest).
    fn put(&mut self, record: &CredentialRecord, fingerprint: &str) -> Result<(), String>;
    /// Deletes by digest; whether it was there.
    fn delete(&mut self, hash: &str) -> Result<bool, String>;
    /// The digest of the record named `name`, if one is.
    fn named(&mut self, name: &str) -> Result<Option<String>, String>;
    /// Up to `limit` (digest, fingerprint) pairs after `after`, in digest order.
    fn list(&mut self, after: &str, limit: usize) -> Result<Vec<(String, String)>, String>;
    /// Every digest.
    fn digests(&mut self) -> Result<Vec<String>, String>;
}

/// What identifies a record's content: a change to any field (a rename, a
/// new level) changes it, so a sync rewrites exactly what changed.
pub fn fingerprint(record: &CredentialRecord) -> String {
    let json = serde_json::to_vec(record).unwrap_or_default();
    hash_hex(&sessiongate_core::hash_secret(&json))
}

/// The filter of every stored digest.
pub fn filter(table: &mut dyn Table) -> Result<DigestFilter, String> {
    let digests: Vec<SecretHash> = table
        .digests()?
        .iter()
        .filter_map(|h| parse_hash_hex(h))
        .collect();
    Ok(DigestFilter::new(digests.iter()))
}

/// One admin sync call: records to store, digests to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub put: Vec<CredentialRecord>,
    #[serde(default)]
    pub delete: Vec<String>,
}

/// What a sync call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub put: usize,
    pub deleted: usize,
}

/// Applies a batch; every record is checked first, so a bad one changes
/// nothing of its batch.
pub fn apply(table: &mut dyn Table, batch: &Batch) -> Result<Applied, String> {
    for record in &batch.put {
        if parse_hash_hex(&record.hash).is_none() {
            return Err(format!(
                "record {:?}: hash is not 64 hex digits",
                record.name
            ));
        }
        sessiongate_core::CredentialSet::new(vec![record.clone()])
            .map_err(|e| format!("record {:?}: {e}", record.name))?;
    }
    let mut applied = Applied::default();
    for record in &batch.put {
        table.put(record, &fingerprint(record))?;
        applied.put += 1;
    }
    for hash in &batch.delete {
        if table.delete(hash)? {
            applied.deleted += 1;
        }
    }
    Ok(applied)
}

/// What `worker-sync` does to make the stored set the store's: the records
/// to write (new or changed) and the digests to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub put: Vec<CredentialRecord>,
    pub delete: Vec<String>,
}

/// `wanted` (the store file) against `stored` (digest → fingerprint, as
/// listed by the Worker).
pub fn diff(wanted: &[CredentialRecord], stored: &BTreeMap<String, String>) -> Diff {
    let mut diff = Diff::default();
    let mut kept = std::collections::BTreeSet::new();
    for record in wanted {
        kept.insert(record.hash.as_str());
        if stored.get(&record.hash) != Some(&fingerprint(record)) {
            diff.put.push(record.clone());
        }
    }
    diff.delete = stored
        .keys()
        .filter(|h| !kept.contains(h.as_str()))
        .cloned()
        .collect();
    diff
}

/// The map a test stands in for SQLite with.
#[derive(Debug, Default, Clone)]
pub struct MapTable(pub BTreeMap<String, (CredentialRecord, String)>);

impl Table for MapTable {
    fn get(&mut self, hashes: &[String]) -> Result<Vec<CredentialRecord>, String> {
        Ok(hashes
            .iter()
            .filter_map(|h| self.0.get(h).map(|(r, _)| r.clone()))
            .collect())
    }
    fn put(&mut self, record: &CredentialRecord, fingerprint: &str) -> Result<(), String> {
        if let Some((other, _)) = self.0.values().find(|(r, _)| r.name == record.name)
            && other.hash != record.hash
        {
            return Err(format!("the name {:?} is taken", record.name));
        }
        self.0.insert(
            record.hash.clone(),
            (record.clone(), fingerprint.to_owned()),
        );
        Ok(())
    }
    fn delete(&mut self, hash: &str) -> Result<bool, String> {
        Ok(self.0.remove(hash).is_some())
    }
    fn named(&mut self, name: &str) -> Result<Option<String>, String> {
        Ok(self
            .0
            .values()
            .find(|(r, _)| r.name == name)
            .map(|(r, _)| r.hash.clone()))
    }
    fn list(&mut self, after: &str, limit: usize) -> Result<Vec<(String, String)>, String> {
        Ok(self
            .0
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(h, (_, f))| (h.clone(), f.clone()))
            .collect())
    }
    fn digests(&mut self) -> Result<Vec<String>, String> {
        Ok(self.0.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::fixtures::numbered;

    #[test]
    fn the_filters_lifetime_is_the_bindings_or_the_default() {
        assert_eq!(filter_ttl_ms(None), Ok(FILTER_TTL_MS));
        assert_eq!(filter_ttl_ms(Some("250")), Ok(250));
        assert_eq!(filter_ttl_ms(Some(" 250\n")), Ok(250));
        for bad in ["", "0", "-5", "1.5", "3600001", "soon"] {
            let e = filter_ttl_ms(Some(bad)).unwrap_err();
            assert!(e.contains("SESSIONGATE_FILTER_TTL_MS"), "{e}");
        }
    }

    fn stored(table: &mut MapTable) -> BTreeMap<String, String> {
        table.list("", usize::MAX).unwrap().into_iter().collect()
    }

    #[test]
    fn a_sync_makes_the_table_the_store_and_a_second_one_does_nothing() {
        let mut table = MapTable::default();
        let mut records = numbered(50);
        let first = diff(&records, &stored(&mut table));
        assert_eq!((first.put.len(), first.delete.len()), (50, 0));
        apply(
            &mut table,
            &Batch {
                put: first.put,
                delete: first.delete,
            },
        )
        .unwrap();
        assert!(diff(&records, &stored(&mut table)) == Diff::default());
        // One renamed, one gone, one new: exactly those.
        records[3].name = "renamed".into();
        let gone = records.remove(7);
        records.push(numbered(51).pop().unwrap());
        let second = diff(&records, &stored(&mut table));
        assert_eq!(second.put.len(), 2);
        assert_eq!(second.delete, vec![gone.hash.clone()]);
        let applied = apply(
            &mut table,
            &Batch {
                put: second.put,
                delete: second.delete,
            },
        )
        .unwrap();
        assert_eq!(applied, Applied { put: 2, deleted: 1 });
        assert_eq!(
            table.named("renamed").unwrap(),
            Some(records[3].hash.clone())
        );
        assert!(table.get(&[gone.hash]).unwrap().is_empty());
        let filter = filter(&mut table).unwrap();
        for r in &records {
            assert!(filter.may_contain(&parse_hash_hex(&r.hash).unwrap()));
        }
    }

    #[test]
    fn a_bad_record_changes_nothing_of_its_batch() {
        let mut table = MapTable::default();
        let mut records = numbered(3);
        records[2].hash = "not hex".into();
        let batch = Batch {
            put: records,
            delete: Vec::new(),
        };
        assert!(apply(&mut table, &batch).is_err());
        assert!(table.0.is_empty());
    }

    #[test]
    fn listing_pages_in_digest_order() {
        let mut table = MapTable::default();
        apply(
            &mut table,
            &Batch {
                put: numbered(25),
                delete: Vec::new(),
            },
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = table.list(&after, 10).unwrap();
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            seen.extend(page.into_iter().map(|(h, _)| h));
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        assert_eq!(seen.len(), 25);
    }
}
