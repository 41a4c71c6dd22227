//! The management side (contract section 3): create, list, update, delete.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use sessiongate_core::is_valid_id;
use sessiongate_core::{CredentialRecord, Kind, LastUse, Level, Sites};

use crate::last_use::{self, LastUses};
use crate::secret;
use crate::store::Store;

/// What `create` needs besides the kind.
pub struct NewCredential {
    pub name: String,
    pub description: Option<String>,
    pub customer: String,
    pub sites: Sites,
    pub level: Level,
    /// The user creating it (none: the operator's CLI).
    pub owner: Option<String>,
    /// When it stops being accepted, Unix milliseconds (none: never).
    pub expires: Option<u64>,
}

/// Why a change was not made, for a caller that answers each differently
/// (the console: 404, 400, and the refusal's 403). Carried in the
/// [`anyhow::Error`] the functions here return.
#[derive(Debug)]
pub enum Problem {
    /// No credential of that kind and name (that the caller may see).
    NotFound(String),
    /// The name is taken (names are unique across the store).
    NameTaken(String),
    /// A field is not acceptable; the message says which and why.
    Invalid(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NotFound(what) => write!(f, "no {what}"),
            Problem::NameTaken(name) => write!(f, "a credential named {name:?} already exists"),
            Problem::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Problem {}

/// A check run under the store's lock on the record about to change
/// (the console's rules); the operator's CLI passes [`unrestricted`].
pub type Check<'a> = &'a dyn Fn(&CredentialRecord) -> Result<()>;

pub fn unrestricted(_: &CredentialRecord) -> Result<()> {
    Ok(())
}

/// Unix milliseconds as RFC 3339 in UTC, to the second.
pub fn rfc3339(ms: u64) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn sites_from_args(all_sites: bool, sites: Vec<String>) -> Result<Sites> {
    match (all_sites, sites.is_empty()) {
        (true, true) => Ok(Sites::All),
        (false, false) => {
            if let Some(bad) = sites.iter().find(|s| !is_valid_id(s)) {
                bail!("site id {bad:?} is not valid: use [A-Za-z0-9._-], 1 to 128 characters");
            }
            Ok(Sites::List(sites))
        }
        (true, false) => bail!("give either --all-sites or --site, not both"),
        (false, true) => bail!("give --all-sites or at least one --site ID"),
    }
}

/// When a credential created now with `--expires-in`/`--expires-at` (at
/// most one of them) expires: Unix milliseconds, checked to be in the future.
pub fn expiry_from_args(
    expires_in: Option<&str>,
    expires_at: Option<&str>,
    now_ms: u64,
) -> Result<Option<u64>> {
    let at = match (expires_in, expires_at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => bail!("give either --expires-in or --expires-at, not both"),
        (Some(span), None) => {
            let length = humantime::parse_duration(span).map_err(|e| {
                anyhow::anyhow!("--expires-in {span:?}: {e} (write e.g. 90d, 12h, 30min)")
            })?;
            u64::try_from(length.as_millis())
                .ok()
                .and_then(|ms| now_ms.checked_add(ms))
                .ok_or_else(|| anyhow::anyhow!("--expires-in {span:?} is too far away"))?
        }
        (None, Some(date)) => {
            let at = humantime::parse_rfc3339_weak(date).map_err(|e| {
                anyhow::anyhow!("--expires-at {date:?}: {e} (write e.g. 2027-03-01T00:00:00Z)")
            })?;
            let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            u64::try_from(ms).unwrap_or(u64::MAX)
        }
    };
    Ok(Some(at))
}

/// Mints a secret, stores its hash; returns the secret (shown once) and
/// the record kept.
pub fn create(store: &Store, kind: Kind, new: NewCredential) -> Result<(String, CredentialRecord)> {
    if new.name.trim().is_empty() {
        return Err(Problem::Invalid("the name must not be empty".into()).into());
    }
    let created = now_ms();
    if let Some(at) = new.expires.filter(|&at| at <= created) {
        return Err(
            Problem::Invalid(format!("the expiry {} is not in the future", rfc3339(at))).into(),
        );
    }
    if !is_valid_id(&new.customer) {
        return Err(Problem::Invalid(format!(
            "customer id {:?} is not valid: use [A-Za-z0-9._-], 1 to 128 characters",
            new.customer
        ))
        .into());
    }
    let secret = match kind {
        Kind::Token => secret::new_token()?,
        Kind::Key => secret::new_key()?,
    };
    let mut record = CredentialRecord::for_secret(
        &secret,
        kind,
        new.name,
        new.description,
        new.customer,
        new.sites,
        if kind == Kind::Token {
            Level::Standard
        } else {
            new.level
        },
        created,
    );
    record.owner = new.owner;
    record.expires = new.expires;
    record.checked_hash().map_err(Problem::Invalid)?;
    let name = record.name.clone();
    store.update(|records| {
        if records.iter().any(|r| r.name == name) {
            return Err(Problem::NameTaken(name.clone()).into());
        }
        records.push(record.clone());
        Ok(())
    })?;
    Ok((secret, record))
}

/// Deletes (revokes) a credential that `check` accepts; returns it.
pub fn delete(store: &Store, kind: Kind, name: &str, check: Check<'_>) -> Result<CredentialRecord> {
    let deleted = store.update(|records| {
        let Some(pos) = records
            .iter()
            .position(|r| r.name == name && r.kind == kind)
        else {
            return Err(Problem::NotFound(format!("{} named {name:?}", kind_word(kind))).into());
        };
        if let Some(record) = records.get(pos) {
            check(record)?;
        }
        Ok(records.remove(pos))
    })?;
    // Tidying only, after the revocation that matters: a use left behind is
    // never shown for a credential created later under the name
    // (`LastUse::is_of`), so a failure here is no failure of the delete.
    let _ = last_use::forget(store, name);
    Ok(deleted)
}

/// Renames a key and/or changes its level, if `check` accepts the
/// credential of that name (run before anything is said of it); its secret
/// stays the same. Returns the key before and after.
pub fn update_key(
    store: &Store,
    name: &str,
    rename: Option<String>,
    level: Option<Level>,
    check: Check<'_>,
) -> Result<(CredentialRecord, CredentialRecord)> {
    if rename.is_none() && level.is_none() {
        return Err(
            Problem::Invalid("nothing to change: give a new name and/or a level".into()).into(),
        );
    }
    let (before, after) = store.update(|records| {
        let taken = rename
            .as_ref()
            .is_some_and(|new| new != name && records.iter().any(|r| &r.name == new));
        let Some(record) = records.iter_mut().find(|r| r.name == name) else {
            return Err(Problem::NotFound(format!("key named {name:?}")).into());
        };
        // First: a caller that may not see it is told it is not there.
        check(record)?;
        if record.kind == Kind::Token {
            return Err(Problem::Invalid(format!(
                "{name:?} is a token: tokens cannot be renamed or changed; create a new one and delete the old"
            ))
            .into());
        }
        if let Some(new) = &rename {
            if new.trim().is_empty() {
                return Err(Problem::Invalid("the new name must not be empty".into()).into());
            }
            if taken {
                return Err(Problem::NameTaken(new.clone()).into());
            }
        }
        let before = record.clone();
        if let Some(new) = &rename {
            record.name = new.clone();
        }
        if let Some(level) = level {
            record.level = level;
        }
        Ok((before, record.clone()))
    })?;
    if before.name != after.name {
        // Best effort, after the rename that matters: should it fail, the
        // key shows no last use until it is next admitted.
        let _ = last_use::rename(store, &before.name, &after.name);
    }
    Ok((before, after))
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Token => "token",
        Kind::Key => "key",
    }
}

/// A credential as listed (`list --json`, the console's API): every
/// field but the hash, never a secret.
pub fn listed(r: &CredentialRecord, last_use: Option<&LastUse>) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "description": r.description,
        "kind": r.kind,
        "customer": r.customer,
        "sites": r.sites,
        "level": r.level,
        "hint": r.hint,
        "created": r.created,
        "owner": r.owner,
        "expires": r.expires,
        "expired": r.expires.is_some_and(|at| now_ms() >= at),
        "last_used": last_use.map(|u| serde_json::json!({ "at": u.at, "instance": u.instance })),
    })
}

/// When a credential expires, as lists show it.
fn expiry_cell(expires: Option<u64>, now_ms: u64) -> String {
    match expires {
        None => "never".into(),
        Some(at) if now_ms >= at => format!("expired {}", rfc3339(at)),
        Some(at) => rfc3339(at),
    }
}

/// When a credential was last admitted, as lists show it: the minute, and
/// the gate instance.
fn last_use_cell(last_use: Option<&LastUse>) -> String {
    match last_use {
        None => "never".into(),
        Some(u) => format!("{} {}", rfc3339(u.at), u.instance),
    }
}

/// The listing: every field but the hash, never a secret.
pub fn list(store: &Store, kind: Kind, json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let records: Vec<CredentialRecord> = store
        .load()?
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect();
    let uses = LastUses::load(store)?;
    if json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| listed(r, uses.of_record(r)))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.customer.clone(),
                r.sites.to_string(),
                r.level.to_string(),
                r.hint.clone(),
                rfc3339(r.created),
                expiry_cell(r.expires, now),
                last_use_cell(uses.of_record(r)),
                r.owner.clone().unwrap_or_else(|| "-".into()),
                r.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "CUSTOMER",
        "SITES",
        "LEVEL",
        "HINT",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "OWNER",
        "DESCRIPTION",
    ];
    table(&head, &rows, out)
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(head: &[&str], rows: &[Vec<String>], out: &mut dyn std::io::Write) -> Result<()> {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&mut head.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewCredential {
        NewCredential {
            name: name.into(),
            description: Some("d".into()),
            customer: "acme".into(),
            sites: Sites::All,
            level: Level::Admin,
            owner: None,
            expires: None,
        }
    }

    #[test]
    fn lifecycle_keeps_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let store = Store::File(path.clone());
        let (token, _) = create(&store, Kind::Token, new("t")).unwrap();
        let (key, _) = create(&store, Kind::Key, new("k")).unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains(&token) && !raw.contains(&key));
        assert!(!raw.contains(&token[4..]) && !raw.contains(key.split('/').next().unwrap()));
        let records = store.load().unwrap();
        assert_eq!(records[0].level, Level::Standard, "tokens are standard");
        assert_eq!(records[1].level, Level::Admin);
        let mut out = Vec::new();
        list(&store, Kind::Token, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("fus_****") && !text.contains(&token));
        assert!(
            create(&store, Kind::Key, new("t")).is_err(),
            "names are unique across kinds"
        );
        assert!(
            update_key(&store, "t", Some("x".into()), None, &unrestricted).is_err(),
            "tokens cannot be renamed"
        );
        update_key(
            &store,
            "k",
            Some("k2".into()),
            Some(Level::Architect),
            &unrestricted,
        )
        .unwrap();
        let records = store.load().unwrap();
        assert_eq!(records[1].name, "k2");
        assert_eq!(records[1].level, Level::Architect);
        assert_eq!(
            records[1].hash,
            sessiongate_core::hash_hex(&sessiongate_core::hash_secret(key.as_bytes())),
            "the key's value stays the same"
        );
        delete(&store, Kind::Token, "t", &unrestricted).unwrap();
        assert!(delete(&store, Kind::Token, "t", &unrestricted).is_err());
        assert_eq!(store.load().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_store_is_an_error_naming_the_file_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        let store = Store::File(path.clone());
        std::fs::write(&path, b"{ not json").unwrap();
        let e = create(&store, Kind::Token, new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json") && e.contains("corrupt"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{ not json");
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let store = Store::File(path.clone());
        std::thread::scope(|s| {
            for t in 0..8 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..10 {
                        create(store, Kind::Token, new(&format!("t{t}-{i}"))).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.load().unwrap().len(), 80);
    }

    #[test]
    fn created_is_shown_as_a_date() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_185_704_364), "2026-12-02T04:28:24Z");
    }

    #[test]
    fn expiry_arguments() {
        let now = 1_796_185_704_000;
        assert_eq!(expiry_from_args(None, None, now).unwrap(), None);
        assert_eq!(
            expiry_from_args(Some("90d"), None, now).unwrap(),
            Some(now + 90 * 86_400_000)
        );
        assert_eq!(
            expiry_from_args(None, Some("2027-03-01T00:00:00Z"), now).unwrap(),
            Some(1_803_859_200_000)
        );
        assert!(expiry_from_args(Some("90d"), Some("2027-03-01T00:00:00Z"), now).is_err());
        let e = expiry_from_args(Some("ninety days"), None, now).unwrap_err();
        assert!(e.to_string().contains("--expires-in"), "{e}");
        assert!(expiry_from_args(None, Some("tomorrow"), now).is_err());
    }

    #[test]
    fn an_expiry_is_in_the_future_and_lists_show_when_it_passed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(dir.path().join("s.json"));
        let past = NewCredential {
            expires: Some(now_ms() - 1),
            ..new("t")
        };
        let e = create(&store, Kind::Token, past).unwrap_err();
        assert!(e.to_string().contains("not in the future"), "{e}");
        let soon = now_ms() + 60_000;
        let (_, record) = create(
            &store,
            Kind::Token,
            NewCredential {
                expires: Some(soon),
                ..new("t")
            },
        )
        .unwrap();
        assert_eq!(record.expires, Some(soon));
        assert_eq!(expiry_cell(None, soon), "never");
        assert_eq!(expiry_cell(Some(soon), soon - 1), rfc3339(soon));
        assert_eq!(
            expiry_cell(Some(soon), soon),
            format!("expired {}", rfc3339(soon))
        );
        let listed = listed(&record, None);
        assert_eq!(listed["expires"], soon);
        assert_eq!(listed["expired"], false);
    }

    #[test]
    fn sites_arguments() {
        assert_eq!(sites_from_args(true, vec![]).unwrap(), Sites::All);
        assert!(sites_from_args(true, vec!["a".into()]).is_err());
        assert!(sites_from_args(false, vec![]).is_err());
        assert!(sites_from_args(false, vec!["a/b".into()]).is_err());
    }
}
