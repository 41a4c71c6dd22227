//! The token store in etcd, for a fleet: `--store etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
//!
//! One key per credential, `PREFIX/credentials/NAME`, holding the same JSON
//! record as the file store (hashes only). A name is unique because its key
//! is: a create is a txn that requires the key absent. A change (delete,
//! rename, level) is one txn that requires every key it touches to be at the
//! revision it was read at, so two CLI calls on two machines never lose each
//! other's change; one that lost is retried on a fresh read.
//!
//! The CLI is synchronous, and so is this store's face: each call runs the
//! proxy's one etcd client ([`Cluster`]: its failover, etcd's one login
//! policy) on a runtime of the store's own, so it works from the CLI and
//! from a blocking task of `serve` alike.
//!
//! With etcd's authentication on: `etcd://USER@HOST:PORT…/PREFIX`, the
//! password in `SESSIONGATE_ETCD_PASSWORD` ([`Login`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use sessiongate_core::{CredentialRecord, CredentialSet, Uses};
use sessiongate_etcd::{
    BY_DIGEST, BY_NAME, Call, KeyValue, Page, Txn, USES_PER_CALL, change_key, digest_key,
    nested_succeeded, range_page, range_page_answer, txn_succeeded,
};

use sessiongate_etcd::{Cluster, Login};

const SCHEME: &str = "etcd://";
/// A call's deadline, every member's try and a login included.
const CALL_TIMEOUT_MS: u32 = 6_000;
/// Keys a range reads in one call: ~3 MB of credential records.
const RANGE_PAGE: u64 = 10_000;

/// Retries of a change that lost to a concurrent one.
const CHANGE_ATTEMPTS: usize = 5;
/// Records per txn of an index repair: etcd takes at most 128 operations
/// of each kind in one txn (`--max-txn-ops`).
pub(crate) const REPAIR_BATCH: usize = 100;

/// What the change key holds: when the change was made (Unix ms, for an
/// operator reading it; readers use its revision).
fn changed_at() -> Vec<u8> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
        .into_bytes()
}

/// A token store in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    members: Vec<String>,
    login: Option<Login>,
    prefix: String,
    cluster: Arc<Cluster>,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// What the store keeps one key per: a JSON document under
/// `PREFIX/COLLECTION/NAME`.
pub trait Document: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Clone {
    /// The collection's name, under the store's prefix.
    const COLLECTION: &'static str;
    /// The document's name, unique in its collection.
    fn name(&self) -> &str;
    /// The key it is also kept under by digest (credentials: the SHA-256
    /// of the secret, in hex), changed in the same txn as the document;
    /// `None`: not indexed.
    fn digest(&self) -> Option<&str> {
        None
    }
}

impl Document for CredentialRecord {
    const COLLECTION: &'static str = BY_NAME;
    fn name(&self) -> &str {
        &self.name
    }
    fn digest(&self) -> Option<&str> {
        Some(&self.hash)
    }
}

/// A document as stored, and the revision it was read at.
struct Stored<T> {
    key: String,
    record: T,
    mod_revision: u64,
}

impl EtcdStore {
    /// The store a `--store` value names, if it is an `etcd://` URL.
    pub fn parse(location: &Path) -> Option<Result<EtcdStore>> {
        let text = location.to_str()?;
        let rest = text.strip_prefix(SCHEME)?;
        Some(
            Self::parse_rest(rest)
                .with_context(|| format!("{text}: expected etcd://HOST:PORT[,HOST:PORT…]/PREFIX")),
        )
    }

    fn parse_rest(rest: &str) -> Result<EtcdStore> {
        let (hosts, prefix) = rest.split_once('/').ok_or_else(|| anyhow!("no /PREFIX"))?;
        let (user, hosts) = match hosts.split_once('@') {
            Some((user, hosts)) => (Some(user), hosts),
            None => (None, hosts),
        };
        let login = user
            .map(Login::of_user)
            .transpose()
            .map_err(|e| anyhow!(e))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            bail!("an empty prefix");
        }
        let members: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if members.is_empty() || members.iter().any(|m| !m.contains(':')) {
            bail!("members must be HOST:PORT");
        }
        let mut cluster = Cluster::new(
            "etcd",
            members.iter().map(|m| format!("http://{m}")).collect(),
        );
        if let Some(login) = login.clone() {
            cluster = cluster.with_login(login);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the etcd client's runtime")?;
        Ok(EtcdStore {
            members,
            login,
            prefix: prefix.to_owned(),
            cluster: Arc::new(cluster),
            runtime: Arc::new(runtime),
        })
    }

    /// The members, `HOST:PORT` each.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The prefix every key of the store is under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// etcd's login, when the URL names a user.
    pub fn login(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    /// `etcd://MEMBERS/PREFIX`, for messages (the user, not the password).
    pub fn location(&self) -> String {
        format!("etcd://{}/{}", self.members.join(","), self.prefix)
    }

    fn collection_prefix(&self, collection: &str) -> String {
        format!("{}/{collection}/", self.prefix)
    }

    fn key<T: Document>(&self, name: &str) -> String {
        format!("{}{name}", self.collection_prefix(T::COLLECTION))
    }

    /// Every key of `collection`, read a page at a time, every page at the
    /// first one's revision: one consistent read, however large, and no
    /// answer so large that it cannot come within a call's deadline.
    fn range(&self, collection: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        let prefix = self.collection_prefix(collection);
        let mut page = Page {
            limit: RANGE_PAGE,
            ..Page::default()
        };
        let mut kvs = Vec::new();
        loop {
            let (status, answer) = self.post(&range_page(&prefix, keys_only, &page))?;
            let read = range_page_answer(status, &answer).map_err(|e| anyhow!(e))?;
            let next = read.next(RANGE_PAGE);
            kvs.extend(read.kvs);
            match next {
                Some(more) => page = more,
                None => return Ok(kvs),
            }
        }
    }

    /// Every credential, in the order they were created.
    pub fn load(&self) -> Result<Vec<CredentialRecord>> {
        self.load_documents()
    }

    /// Every document of `T`'s collection, in the order they were created.
    pub fn load_documents<T: Document>(&self) -> Result<Vec<T>> {
        Ok(self.read::<T>()?.into_iter().map(|s| s.record).collect())
    }

    pub fn load_set(&self) -> Result<CredentialSet> {
        CredentialSet::new(self.load()?).map_err(|e| anyhow!("the token store in etcd: {e}"))
    }

    fn read<T: Document>(&self) -> Result<Vec<Stored<T>>> {
        let mut kvs = self.range(T::COLLECTION, false)?;
        kvs.sort_by_key(|kv| kv.create_revision);
        kvs.into_iter()
            .map(|kv| {
                let record: T = serde_json::from_slice(&kv.value)
                    .with_context(|| format!("the record under {:?} is corrupt", kv.key))?;
                Ok(Stored {
                    key: kv.key,
                    record,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect()
    }

    /// What changes when any credential does: their count and newest
    /// revision (keys only: nothing else of etcd, not the limiter's writes).
    pub fn signature(&self) -> Result<(u64, u64)> {
        let kvs = self.range(CredentialRecord::COLLECTION, true)?;
        let newest = kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
        Ok((kvs.len() as u64, newest))
    }

    /// Runs `change` on the records and writes what it changed in one txn,
    /// again on a fresh read if another change got there first.
    pub fn update<T>(
        &self,
        mut change: impl FnMut(&mut Vec<CredentialRecord>) -> Result<T>,
    ) -> Result<T> {
        self.update_documents(|records| {
            let out = change(records)?;
            CredentialSet::new(records.clone()).map_err(|e| anyhow!(e))?;
            Ok(out)
        })
    }

    /// Runs `change` on the documents of `T`'s collection and writes what
    /// it changed in one txn, again on a fresh read if another change got
    /// there first.
    pub fn update_documents<T: Document, R>(
        &self,
        mut change: impl FnMut(&mut Vec<T>) -> Result<R>,
    ) -> Result<R> {
        for _ in 0..CHANGE_ATTEMPTS {
            let before = self.read::<T>()?;
            let mut records: Vec<T> = before.iter().map(|s| s.record.clone()).collect();
            let out = change(&mut records)?;
            if self.commit(&before, &records)? {
                return Ok(out);
            }
        }
        bail!("the store in etcd kept changing; try again")
    }

    /// Writes each credential's use in `uses` by `instance` where none is
    /// stored or the stored one is of an earlier minute, with no read
    /// ([`sessiongate_etcd::write_last_uses`]: etcd compares each key), in
    /// calls of [`USES_PER_CALL`]. Returns how many it wrote.
    pub fn write_last_uses(&self, uses: &Uses, instance: &str) -> Result<usize> {
        let all: Vec<(&str, u64)> = uses.iter().collect();
        let mut written = 0;
        for batch in all.chunks(USES_PER_CALL) {
            let call =
                sessiongate_etcd::write_last_uses(&self.prefix, batch.iter().copied(), instance);
            let (status, answer) = self.post(&call)?;
            let wrote = nested_succeeded(status, &answer).map_err(|e| anyhow!(e))?;
            written += wrote.into_iter().filter(|w| *w).count();
        }
        Ok(written)
    }

    /// Deletes `T`'s document `name`, if there is one (no read).
    pub fn delete_document<T: Document>(&self, name: &str) -> Result<()> {
        let mut txn = Txn::new();
        txn.delete(&self.key::<T>(name));
        self.commit_txn(&txn).map(drop)
    }

    /// Replaces `T`'s document `name`, if there is one, with what `change`
    /// makes of it (under its new name, the old key deleted): one key read,
    /// one txn that holds only if the key is unchanged since, again if not.
    pub fn change_document<T: Document>(&self, name: &str, change: impl Fn(T) -> T) -> Result<()> {
        let key = self.key::<T>(name);
        for _ in 0..CHANGE_ATTEMPTS {
            let read = sessiongate_etcd::call(&sessiongate_core::Need::Read { key: &key }, &key)
                .ok_or_else(|| anyhow!("no read call for {key}"))?;
            let (status, answer) = self.post(&read)?;
            let page = range_page_answer(status, &answer).map_err(|e| anyhow!(e))?;
            let Some(kv) = page.kvs.into_iter().find(|kv| kv.key == key) else {
                return Ok(());
            };
            let document: T = serde_json::from_slice(&kv.value)
                .with_context(|| format!("the record under {key:?} is corrupt"))?;
            let changed = change(document);
            let new_key = self.key::<T>(changed.name());
            let mut txn = Txn::new();
            txn.unchanged(&key, kv.mod_revision);
            if new_key != key {
                txn.delete(&key);
            }
            txn.put(&new_key, &serde_json::to_vec(&changed)?);
            if self.commit_txn(&txn)? {
                return Ok(());
            }
        }
        bail!("{key} kept changing; try again")
    }

    /// Adds `line` under a new key of `collection`, after every earlier one
    /// (keys sort by time, then by a random tail): an append-only log.
    pub fn append(&self, collection: &str, at_ms: u64, line: &[u8]) -> Result<()> {
        let mut tail = [0u8; 4];
        getrandom::fill(&mut tail).map_err(|e| anyhow!("the system CSPRNG failed: {e}"))?;
        let key = format!(
            "{}{at_ms:020}-{:08x}",
            self.collection_prefix(collection),
            u32::from_le_bytes(tail)
        );
        if !self.commit_txn(Txn::new().absent(&key).put(&key, line))? {
            bail!("{key} exists already");
        }
        Ok(())
    }

    /// Every value of `collection`, in key order.
    pub fn lines(&self, collection: &str) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .range(collection, false)?
            .into_iter()
            .map(|kv| kv.value)
            .collect())
    }

    fn commit<T: Document>(&self, before: &[Stored<T>], after: &[T]) -> Result<bool> {
        // By key, not by scanning: a store of a million records takes a
        // change in one pass over each side.
        let old: std::collections::HashMap<&str, &Stored<T>> =
            before.iter().map(|s| (s.key.as_str(), s)).collect();
        let new: std::collections::HashMap<String, &T> =
            after.iter().map(|r| (self.key::<T>(r.name()), r)).collect();
        let mut txn = Txn::new();
        for stored in before {
            let kept = new.get(&stored.key);
            if kept == Some(&&stored.record) {
                continue;
            }
            txn.unchanged(&stored.key, stored.mod_revision);
            if kept.is_none() {
                txn.delete(&stored.key);
            }
        }
        for record in after {
            let key = self.key::<T>(record.name());
            let was = old.get(key.as_str());
            if was.is_some_and(|s| s.record == *record) {
                continue;
            }
            if was.is_none() {
                txn.absent(&key);
            }
            txn.put(&key, &serde_json::to_vec(record)?);
        }
        if txn.writes_nothing() {
            return Ok(true);
        }
        self.index(&mut txn, before, after)?;
        self.commit_txn(&txn)
    }

    /// The digest index's writes for a change from `before` to `after`, and
    /// the change key's: in the change's own txn, so the index never
    /// disagrees with the records (the records' compares guard both).
    fn index<T: Document>(&self, txn: &mut Txn, before: &[Stored<T>], after: &[T]) -> Result<()> {
        let old: std::collections::HashMap<&str, &T> = before
            .iter()
            .filter_map(|s| Some((s.record.digest()?, &s.record)))
            .collect();
        let new: std::collections::HashMap<&str, &T> = after
            .iter()
            .filter_map(|r| Some((r.digest()?, r)))
            .collect();
        if old.is_empty() && new.is_empty() {
            return Ok(());
        }
        for digest in old.keys().filter(|d| !new.contains_key(*d)) {
            txn.delete(&digest_key(&self.prefix, digest));
        }
        for (digest, record) in &new {
            let key = digest_key(&self.prefix, digest);
            match old.get(digest) {
                Some(was) if was == record => continue,
                Some(_) => {}
                None => {
                    txn.absent(&key);
                }
            }
            txn.put(&key, &serde_json::to_vec(record)?);
        }
        txn.put(&change_key(&self.prefix), &changed_at());
        Ok(())
    }

    /// Where the digest index disagrees with the records, a line each
    /// (empty: it agrees).
    pub fn index_disagreements(&self) -> Result<Vec<String>> {
        let (records, index) = self.records_and_index()?;
        let mut out = Vec::new();
        for (digest, record) in &records {
            match index.get(digest) {
                None => out.push(format!("{:?} is not indexed by its digest", record.name)),
                Some(indexed) if indexed != record => out.push(format!(
                    "{:?}'s record under its digest differs from the one under its name",
                    record.name
                )),
                Some(_) => {}
            }
        }
        for (digest, indexed) in &index {
            if !records.contains_key(digest) {
                out.push(format!(
                    "the digest {digest}… ({:?}) is indexed but no record has it",
                    indexed.name
                ));
            }
        }
        Ok(out)
    }

    /// Writes the digest index from the records (a store written before
    /// the index was kept, or one mended by hand): what is missing or
    /// differs, and removes what no record has, in txns of at most
    /// 100 records that each require those records unchanged.
    /// Returns how many index keys it wrote or removed.
    pub fn repair_index(&self) -> Result<usize> {
        let stored = self.read::<CredentialRecord>()?;
        let (_, index) = self.records_and_index()?;
        let mut fixes: Vec<(Option<&Stored<CredentialRecord>>, String)> = Vec::new();
        for s in &stored {
            if index.get(&s.record.hash) != Some(&s.record) {
                fixes.push((Some(s), s.record.hash.clone()));
            }
        }
        let named: std::collections::HashSet<&str> =
            stored.iter().map(|s| s.record.hash.as_str()).collect();
        for digest in index.keys().filter(|d| !named.contains(d.as_str())) {
            fixes.push((None, digest.clone()));
        }
        for batch in fixes.chunks(REPAIR_BATCH) {
            let mut txn = Txn::new();
            for (record, digest) in batch {
                let key = digest_key(&self.prefix, digest);
                match record {
                    Some(s) => {
                        txn.unchanged(&s.key, s.mod_revision);
                        txn.put(&key, &serde_json::to_vec(&s.record)?);
                    }
                    None => {
                        txn.delete(&key);
                    }
                }
            }
            txn.put(&change_key(&self.prefix), &changed_at());
            if !self.commit_txn(&txn)? {
                bail!("the store changed while its index was repaired; run it again");
            }
        }
        Ok(fixes.len())
    }

    /// The records by digest, and the index's.
    #[allow(clippy::type_complexity)]
    fn records_and_index(
        &self,
    ) -> Result<(
        std::collections::BTreeMap<String, CredentialRecord>,
        std::collections::BTreeMap<String, CredentialRecord>,
    )> {
        let records = self
            .load()?
            .into_iter()
            .map(|r| (r.hash.clone(), r))
            .collect();
        let index = self
            .range(BY_DIGEST, false)?
            .into_iter()
            .map(|kv| {
                let record: CredentialRecord = serde_json::from_slice(&kv.value)
                    .with_context(|| format!("the index entry {:?} is corrupt", kv.key))?;
                let digest = kv.key.rsplit('/').next().unwrap_or_default().to_owned();
                Ok((digest, record))
            })
            .collect::<Result<_>>()?;
        Ok((records, index))
    }

    /// Sends `txn`: whether its compares held.
    fn commit_txn(&self, txn: &Txn) -> Result<bool> {
        let (status, answer) = self.post(&txn.call())?;
        txn_succeeded(status, &answer).map_err(|e| anyhow!(e))
    }

    /// Sends `call`, logged in when the store has a user: the status and
    /// body of the first member that answers (one not a 503).
    fn post(&self, call: &Call) -> Result<(u16, Vec<u8>)> {
        let sent = self
            .cluster
            .post_logged_in(call.path, call.body.clone(), CALL_TIMEOUT_MS);
        self.runtime
            .block_on(sent)
            .map_err(|e| anyhow!("etcd at {}: {e}", self.members.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        let s = EtcdStore::parse(Path::new("etcd://10.0.0.1:2379,10.0.0.2:2379/sg/"))
            .unwrap()
            .unwrap();
        assert_eq!(s.members, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(s.key::<CredentialRecord>("ci"), "sg/credentials/ci");
        assert!(EtcdStore::parse(Path::new("tokens.json")).is_none());
        for bad in [
            "etcd://",
            "etcd://host/p",
            "etcd://h:1",
            "etcd://h:1/",
            "etcd://u:pw@h:1/p",
        ] {
            assert!(EtcdStore::parse(Path::new(bad)).unwrap().is_err(), "{bad}");
        }
    }
}
