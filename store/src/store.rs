//! The token store: one JSON file of credential records (hashes only), or,
//! for a fleet, keys in etcd ([`EtcdStore`], `--store etcd://…`).
//!
//! Every change holds an exclusive lock on a sidecar `FILE.lock` for the whole
//! read-modify-write, and lands with write-temp, fsync, rename: two CLI calls
//! never lose each other's change, and a reader never sees half a file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::format::{Splitter, parse_record};
use anyhow::{Context as _, Result};
use sessiongate_core::{CredentialRecord, CredentialSet, CredentialSetBuilder};

use crate::etcd_store::Document;
use crate::etcd_store::EtcdStore;

/// The token store, opened once (a `--store` value parsed, its etcd client
/// made and logged in once): a JSON file, or keys in etcd.
#[derive(Clone)]
pub enum Store {
    /// One JSON file of records; what is kept with it sits beside it.
    File(PathBuf),
    /// Keys under a prefix in etcd.
    Etcd(EtcdStore),
}

impl Store {
    /// The store `location` names: `etcd://…`, or a file's path (which need
    /// not exist: a missing file is an empty store).
    pub fn open(location: &Path) -> Result<Store> {
        match EtcdStore::parse(location) {
            Some(etcd) => etcd.map(Store::Etcd),
            None => Ok(Store::File(location.to_owned())),
        }
    }

    /// The store as the user named it, for messages.
    pub fn location(&self) -> String {
        match self {
            Store::File(path) => path.display().to_string(),
            Store::Etcd(etcd) => etcd.location(),
        }
    }

    /// A file store that is not there (`check` says so; `serve` takes it
    /// for an empty store).
    pub fn is_missing_file(&self) -> bool {
        matches!(self, Store::File(path) if !path.exists())
    }

    /// Reads the store's records, in order (what the CLI edits). A missing
    /// file is an empty store; anything unreadable is an error naming the
    /// file, never silently treated as empty.
    pub fn load(&self) -> Result<Vec<CredentialRecord>> {
        match self {
            Store::File(path) => load_set(path).map(|set| set.records()),
            Store::Etcd(etcd) => etcd.load(),
        }
    }

    /// Reads the store into the set a gate uses (what `serve` and the config
    /// commands load).
    pub fn load_set(&self) -> Result<CredentialSet> {
        match self {
            Store::File(path) => load_set(path),
            Store::Etcd(etcd) => etcd.load_set(),
        }
    }

    /// Runs `change` on the records and writes the result: for a file under
    /// its exclusive lock, atomically; in etcd in one txn, retried on a
    /// fresh read when another change got there first.
    pub fn update<T>(
        &self,
        change: impl FnMut(&mut Vec<CredentialRecord>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Store::File(path) => update(path, change),
            Store::Etcd(etcd) => etcd.update(change),
        }
    }

    /// The documents of `T`'s collection kept with the store: in etcd
    /// beside the credentials, or for a file store in
    /// `NAME.COLLECTION.json` next to it (a JSON list). Missing: none.
    pub fn load_documents<T: Document>(&self) -> Result<Vec<T>> {
        match self {
            Store::File(path) => load_documents(path),
            Store::Etcd(etcd) => etcd.load_documents(),
        }
    }

    /// Runs `change` on the documents of `T`'s collection, with the same
    /// guarantees as [`Store::update`].
    pub fn update_documents<T: Document, R>(
        &self,
        change: impl FnMut(&mut Vec<T>) -> Result<R>,
    ) -> Result<R> {
        match self {
            Store::File(path) => update_documents(path, change),
            Store::Etcd(etcd) => etcd.update_documents(change),
        }
    }

    /// Appends one line (no newline in it) to the store's log `collection`:
    /// in etcd a key per line, for a file store `NAME.COLLECTION.jsonl`
    /// next to it, written and synced under its lock.
    pub fn append_line(&self, collection: &str, at_ms: u64, line: &[u8]) -> Result<()> {
        match self {
            Store::File(path) => append_line(path, collection, line),
            Store::Etcd(etcd) => etcd.append(collection, at_ms, line),
        }
    }

    /// The lines of the store's log `collection`, oldest first.
    pub fn lines(&self, collection: &str) -> Result<Vec<Vec<u8>>> {
        match self {
            Store::File(path) => lines(path, collection),
            Store::Etcd(etcd) => etcd.lines(collection),
        }
    }
}

/// A file store's records into the set a gate uses. A missing file is an
/// empty store. Read a piece at a time, its records parsed on every core: a
/// million credentials load in well under a second, and the file is never
/// in memory whole.
fn load_set(path: &Path) -> Result<CredentialSet> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CredentialSet::default()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read token store {}", path.display()));
        }
    };
    let size = file.metadata().ok().map(|m| m.len());
    read_set(file, size, parallelism())
        .map_err(|e| anyhow::anyhow!("token store {} is corrupt: {e}", path.display()))
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// What one read asks for, and how many bytes of records a parsing thread
/// gets at once.
const PIECE: usize = 1 << 20;
const BATCH: usize = 1 << 20;

/// Records cut from the store, back to back, for one parsing thread.
#[derive(Default)]
struct Batch {
    /// The list position of the first record.
    first: usize,
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<usize>,
}

impl Batch {
    fn parse(self) -> Result<CredentialSetBuilder, String> {
        let mut builder = CredentialSetBuilder::starting_at(self.first);
        let mut start = 0;
        for (n, &end) in self.ends.iter().enumerate() {
            let record = self.bytes.get(start..end).unwrap_or_default();
            builder.push(&parse_record(self.first + n, record)?)?;
            start = end;
        }
        Ok(builder)
    }
}

/// A parsed batch: its records, and how many bytes of the file they were.
type Parsed = (Result<CredentialSetBuilder, String>, usize);

/// Joins parsed batches in list order as they come back, so that each is
/// freed once appended.
#[derive(Default)]
struct Joined {
    set: CredentialSetBuilder,
    /// The file's size, if known: the first batch tells how large a set it
    /// makes, and the set is sized for the whole file at once (grown by
    /// doubling, it was copied and its pages touched anew at every step).
    file_size: Option<u64>,
    next: usize,
    waiting: BTreeMap<usize, Parsed>,
    error: Option<String>,
}

impl Joined {
    fn new(file_size: Option<u64>) -> Joined {
        Joined {
            file_size,
            ..Joined::default()
        }
    }

    fn take(&mut self, seq: usize, parsed: Parsed) {
        self.waiting.insert(seq, parsed);
        while let Some((batch, bytes)) = self.waiting.remove(&self.next) {
            if let (0, Ok(part), Some(size)) = (self.next, &batch, self.file_size) {
                // 2 % over the first batch's ratio: a set of like records
                // is not copied, and one that is not still grows as before.
                // Never more than the file's size in text (and its records'
                // entries): what is reserved and not used is never touched.
                let scale = |n: usize| {
                    let n = (n as u64).saturating_mul(size) / bytes.max(1) as u64;
                    usize::try_from(n.saturating_mul(51) / 50).unwrap_or(usize::MAX)
                };
                self.set.reserve(scale(part.len()), scale(part.text_len()));
            }
            self.next += 1;
            match batch {
                Ok(part) if self.error.is_none() => {
                    if let Err(e) = self.set.append(part) {
                        self.error = Some(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
    }
}

/// The store's bytes from `input`, split on this thread and parsed on
/// `threads` others.
fn read_set(
    mut input: impl Read,
    size: Option<u64>,
    threads: usize,
) -> Result<CredentialSet, String> {
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel();
        let mut workers = Vec::new();
        for _ in 0..threads.max(1) {
            let (tx, rx) = mpsc::sync_channel::<(usize, Batch)>(2);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                for (seq, batch) in rx {
                    let bytes = batch.bytes.len();
                    if done_tx.send((seq, (batch.parse(), bytes))).is_err() {
                        break;
                    }
                }
            });
            workers.push(tx);
        }
        drop(done_tx);
        let mut joined = Joined::new(size);
        let mut sent = 0;
        let mut send = |batch: Batch, joined: &mut Joined| -> Result<(), String> {
            while let Ok((seq, parsed)) = done_rx.try_recv() {
                joined.take(seq, parsed);
            }
            let worker = workers
                .get(sent % workers.len())
                .ok_or("no parsing thread")?;
            worker
                .send((sent, batch))
                .map_err(|_| "a parsing thread stopped".to_owned())?;
            sent += 1;
            Ok(())
        };
        let mut splitter = Splitter::new();
        let mut batch = Batch::default();
        let mut piece = vec![0; PIECE];
        loop {
            let n = match input.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            };
            let mut full = Vec::new();
            splitter.feed(piece.get(..n).unwrap_or_default(), &mut |index, record| {
                if batch.ends.is_empty() {
                    batch.first = index;
                    // Sized once: growing it would copy it.
                    batch.bytes.reserve(BATCH + BATCH / 4);
                    batch.ends.reserve(BATCH / 128);
                }
                batch.bytes.extend_from_slice(record);
                batch.ends.push(batch.bytes.len());
                if batch.bytes.len() >= BATCH {
                    full.push(std::mem::take(&mut batch));
                }
                Ok(())
            })?;
            for b in full {
                send(b, &mut joined)?;
            }
        }
        if !batch.ends.is_empty() {
            send(std::mem::take(&mut batch), &mut joined)?;
        }
        drop(send);
        drop(workers);
        let count = splitter.finish()?;
        for (seq, parsed) in done_rx {
            joined.take(seq, parsed);
        }
        if let Some(e) = joined.error {
            return Err(e);
        }
        debug_assert_eq!(joined.set.len(), count);
        // The index and the check for repeated names side by side.
        joined.set.finish_with(|index, names| {
            std::thread::scope(|scope| {
                scope.spawn(names);
                index();
            });
        })
    })
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

fn write_atomically(path: &Path, json: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(json)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn update<T>(
    path: &Path,
    mut change: impl FnMut(&mut Vec<CredentialRecord>) -> Result<T>,
) -> Result<T> {
    let lock = lock(path)?;
    let mut records = load_set(path)?.records();
    let out = change(&mut records)?;
    write_atomically(path, &crate::format::serialize(&records))?;
    drop(lock);
    Ok(out)
}

/// Holds the exclusive lock of `path` (its sidecar `.lock`) until dropped.
fn lock(path: &Path) -> Result<File> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))
        .with_context(|| format!("cannot open the lock file of {}", path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(lock)
}

/// Beside a file store `DIR/NAME.json`: `DIR/NAME.{what}`.
fn beside(store: &Path, what: &str) -> PathBuf {
    let stem = store
        .file_stem()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut name = stem;
    name.push(format!(".{what}"));
    store.with_file_name(name)
}

fn load_documents<T: Document>(store: &Path) -> Result<Vec<T>> {
    let path = beside(store, &format!("{}.json", T::COLLECTION));
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn update_documents<T: Document, R>(
    store: &Path,
    mut change: impl FnMut(&mut Vec<T>) -> Result<R>,
) -> Result<R> {
    let path = beside(store, &format!("{}.json", T::COLLECTION));
    let lock = lock(&path)?;
    let mut documents = load_documents(store)?;
    let before = documents.clone();
    let out = change(&mut documents)?;
    // As etcd's txn writes only what changed: a change that changes
    // nothing (a flush of uses already stored) writes nothing.
    if documents != before {
        let mut json = serde_json::to_vec_pretty(&documents)?;
        json.push(b'\n');
        write_atomically(&path, &json)?;
    }
    drop(lock);
    Ok(out)
}

fn append_line(store: &Path, collection: &str, line: &[u8]) -> Result<()> {
    let path = beside(store, &format!("{collection}.jsonl"));
    let lock = lock(&path)?;
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(lock);
    Ok(())
}

fn lines(store: &Path, collection: &str) -> Result<Vec<Vec<u8>>> {
    let path = beside(store, &format!("{collection}.jsonl"));
    match fs::read(&path) {
        Ok(bytes) => Ok(bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{parse_set, serialize};

    use sessiongate_core::fixtures::numbered as records;

    /// Reads at most `max` bytes a call, like a pipe.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn threads_read_what_one_parse_reads() {
        // Enough records for several batches.
        let bytes = serialize(&records(12_000));
        assert!(bytes.len() > 2 * BATCH);
        let whole = parse_set(&bytes).unwrap();
        for threads in [1, 3] {
            for max in [PIECE, 4093] {
                assert_eq!(
                    read_set(Trickle(&bytes, max), None, threads).unwrap(),
                    whole
                );
            }
        }
        // The size only sizes the set: right, far under or far over, or a
        // file that has grown since.
        let len = bytes.len() as u64;
        for size in [len, len / 10, len * 10, 0, 1] {
            assert_eq!(read_set(&bytes[..], Some(size), 2).unwrap(), whole);
        }
    }

    #[test]
    fn errors_name_the_record_wherever_it_is() {
        let mut r = records(12_000);
        r[11_000].customer = "not/an/id".into();
        let bytes = serialize(&r);
        let e = read_set(&bytes[..], None, 2).unwrap_err();
        assert!(e.starts_with("credentials[11000].customer"), "{e}");
        r[11_000].customer = "acme".into();
        r[9_000].name = r[10].name.clone();
        let e = read_set(&serialize(&r)[..], None, 2).unwrap_err();
        assert!(e.starts_with("credentials[9000].name"), "{e}");
        r[9_000].name = "unique".into();
        r[10_500].hash = r[20].hash.clone();
        let e = read_set(&serialize(&r)[..], None, 2).unwrap_err();
        assert!(e.starts_with("credentials[10500].hash"), "{e}");
        let mut text = String::from_utf8(serialize(&records(3))).unwrap();
        text = text.replacen("\"hint\"", "\"hunt\"", 2);
        let e = read_set(text.as_bytes(), None, 2).unwrap_err();
        assert!(e.starts_with("credentials[0]: unknown field `hunt`"), "{e}");
        assert!(read_set(&text.as_bytes()[..text.len() - 3], None, 2).is_err());
    }
}
