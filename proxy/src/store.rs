//! The token store: one JSON file of credential records (hashes only).
//!
//! Every change holds an exclusive lock on a sidecar `FILE.lock` for the whole
//! read-modify-write, and lands with write-temp, fsync, rename: two CLI calls
//! never lose each other's change, and a reader never sees half a file.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use sessiongate_core::CredentialRecord;

/// Parses a store's bytes (the format lives in core).
pub fn parse(bytes: &[u8]) -> Result<Vec<CredentialRecord>, String> {
    sessiongate_core::store_format::parse(bytes)
}

/// Reads the store. A missing file is an empty store; anything unreadable is
/// an error naming the file, never silently treated as empty.
pub fn load(path: &Path) -> Result<Vec<CredentialRecord>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read token store {}", path.display()));
        }
    };
    parse(&bytes).map_err(|e| anyhow::anyhow!("token store {} is corrupt: {e}", path.display()))
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

fn write_atomically(path: &Path, records: &[CredentialRecord]) -> Result<()> {
    let json = sessiongate_core::store_format::serialize(records);
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
        f.write_all(&json)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `change` on the records under the store's exclusive lock, then writes
/// the result atomically.
pub fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut Vec<CredentialRecord>) -> Result<T>,
) -> Result<T> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))
        .with_context(|| format!("cannot open the lock file of {}", path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    let mut records = load(path)?;
    let out = change(&mut records)?;
    write_atomically(path, &records)?;
    drop(lock);
    Ok(out)
}

/// Adds a record; names are unique across the store.
pub fn insert(path: &Path, record: CredentialRecord) -> Result<()> {
    update(path, |records| {
        if records.iter().any(|r| r.name == record.name) {
            bail!(
                "a credential named {:?} already exists in {}",
                record.name,
                path.display()
            );
        }
        records.push(record);
        sessiongate_core::credential::CredentialSet::new(records.clone())
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(())
    })
}
