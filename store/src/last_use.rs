//! Each credential's last use, kept with the store (issue 46): one document
//! per credential, apart from its record, so that a gate's flush never
//! conflicts with a rename or a delete and never makes a gate reload the
//! credentials. A file store keeps them in `NAME.last_used.json` (changed
//! under its lock), etcd under `PREFIX/last_used/NAME` (written with no
//! read, etcd comparing each key: `sessiongate_etcd::write_last_uses`).

use std::collections::HashMap;

use anyhow::Result;
use sessiongate_core::{CredentialRecord, LastUse, Uses};

use crate::{Document, Store};

impl Document for LastUse {
    const COLLECTION: &'static str = sessiongate_etcd::LAST_USED;
    fn name(&self) -> &str {
        &self.name
    }
}

/// Every credential's last use, by the credential's name.
pub struct LastUses(HashMap<String, LastUse>);

impl LastUses {
    /// Reads them from the store.
    pub fn load(store: &Store) -> Result<LastUses> {
        let uses: Vec<LastUse> = store.load_documents()?;
        Ok(LastUses(
            uses.into_iter().map(|u| (u.name.clone(), u)).collect(),
        ))
    }

    /// None at all (a store where nothing was ever admitted).
    pub fn none() -> LastUses {
        LastUses(HashMap::new())
    }

    /// The last use of the credential `name` created at `created`, if it
    /// was ever admitted.
    pub fn of(&self, name: &str, created: u64) -> Option<&LastUse> {
        self.0.get(name).filter(|u| u.is_of(name, created))
    }

    /// [`LastUses::of`] a record.
    pub fn of_record(&self, record: &CredentialRecord) -> Option<&LastUse> {
        self.of(&record.name, record.created)
    }
}

/// Writes what an instance admitted, merged into what is stored: returns
/// how many credentials' last use it moved on (none: nothing was written).
/// A file is read, merged and written under its lock; etcd compares each
/// key itself, so a flush reads nothing there, however many credentials
/// the store holds.
pub fn flush(store: &Store, uses: &Uses, instance: &str) -> Result<usize> {
    match store {
        Store::File(_) => store
            .update_documents(|stored: &mut Vec<LastUse>| Ok(uses.merge_into(stored, instance))),
        Store::Etcd(etcd) => etcd.write_last_uses(uses, instance),
    }
}

/// Forgets a deleted credential's last use (tidying only: a credential
/// created later under its name is never shown it, [`LastUse::is_of`]).
pub fn forget(store: &Store, name: &str) -> Result<()> {
    match store {
        Store::File(_) => store.update_documents(|stored: &mut Vec<LastUse>| {
            stored.retain(|u| u.name != name);
            Ok(())
        }),
        Store::Etcd(etcd) => etcd.delete_document::<LastUse>(name),
    }
}

/// Carries a renamed key's last use over to its new name.
pub fn rename(store: &Store, from: &str, to: &str) -> Result<()> {
    match store {
        Store::File(_) => store.update_documents(|stored: &mut Vec<LastUse>| {
            stored.retain(|u| u.name != to);
            if let Some(u) = stored.iter_mut().find(|u| u.name == from) {
                to.clone_into(&mut u.name);
            }
            Ok(())
        }),
        Store::Etcd(etcd) => etcd.change_document(from, |u: LastUse| LastUse {
            name: to.to_owned(),
            ..u
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::{self, NewCredential};
    use sessiongate_core::{Kind, Level, Sites};

    fn new(name: &str) -> NewCredential {
        NewCredential {
            name: name.into(),
            description: None,
            customer: "c".into(),
            sites: Sites::All,
            level: Level::Standard,
            owner: None,
            expires: None,
        }
    }

    #[test]
    fn flushes_merge_and_follow_renames_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(dir.path().join("s.json"));
        let (_, key) = manage::create(&store, Kind::Key, new("k")).unwrap();
        let now = manage::now_ms();
        let mut one = Uses::default();
        one.admitted("k", now);
        assert_eq!(flush(&store, &one, "one").unwrap(), 1);
        let mut two = Uses::default();
        two.admitted("k", now - 600_000);
        assert_eq!(
            flush(&store, &two, "two").unwrap(),
            0,
            "an older use moves nothing"
        );
        let uses = LastUses::load(&store).unwrap();
        let last = uses.of_record(&key).unwrap();
        assert_eq!(
            (last.at, last.instance.as_str()),
            (now - now % 60_000, "one")
        );

        let (_, renamed) =
            manage::update_key(&store, "k", Some("k2".into()), None, &|_| Ok(())).unwrap();
        assert_eq!(
            LastUses::load(&store)
                .unwrap()
                .of_record(&renamed)
                .unwrap()
                .instance,
            "one"
        );
        manage::delete(&store, Kind::Key, "k2", &|_| Ok(())).unwrap();
        let (_, again) = manage::create(&store, Kind::Key, new("k2")).unwrap();
        assert!(LastUses::load(&store).unwrap().of_record(&again).is_none());
        let stored: Vec<LastUse> = store.load_documents().unwrap();
        assert!(stored.is_empty(), "{stored:?}");
    }
}
