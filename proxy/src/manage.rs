//! The management side (contract section 3): create, list, update, delete.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use sessiongate_core::is_valid_id;
use sessiongate_core::{CredentialRecord, Kind, Level, Sites};

use crate::{secret, store};

/// What `create` needs besides the kind.
pub struct NewCredential {
    pub name: String,
    pub description: Option<String>,
    pub customer: String,
    pub sites: Sites,
    pub level: Level,
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

/// Mints a secret, stores its hash, returns the secret (shown once).
pub fn create(path: &Path, kind: Kind, new: NewCredential) -> Result<String> {
    if new.name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    if !is_valid_id(&new.customer) {
        bail!(
            "customer id {:?} is not valid: use [A-Za-z0-9._-], 1 to 128 characters",
            new.customer
        );
    }
    let secret = match kind {
        Kind::Token => secret::new_token()?,
        Kind::Key => secret::new_key()?,
    };
    let record = CredentialRecord::for_secret(
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
        now_ms(),
    );
    store::insert(path, record)?;
    Ok(secret)
}

pub fn delete(path: &Path, kind: Kind, name: &str) -> Result<()> {
    store::update(path, |records| {
        let Some(pos) = records
            .iter()
            .position(|r| r.name == name && r.kind == kind)
        else {
            bail!(
                "no {} named {name:?} in {}",
                kind_word(kind),
                path.display()
            );
        };
        records.remove(pos);
        Ok(())
    })
}

/// Renames a key and/or changes its level; its secret stays the same.
pub fn update_key(
    path: &Path,
    name: &str,
    rename: Option<String>,
    level: Option<Level>,
) -> Result<()> {
    if rename.is_none() && level.is_none() {
        bail!("nothing to change: give --rename NEW and/or --level LEVEL");
    }
    store::update(path, |records| {
        if let Some(new) = &rename {
            if new.trim().is_empty() {
                bail!("--rename must not be empty");
            }
            if new != name && records.iter().any(|r| &r.name == new) {
                bail!("a credential named {new:?} already exists");
            }
        }
        let Some(record) = records.iter_mut().find(|r| r.name == name) else {
            bail!("no key named {name:?} in {}", path.display());
        };
        if record.kind == Kind::Token {
            bail!(
                "{name:?} is a token: tokens cannot be renamed or changed; create a new one and delete the old"
            );
        }
        if let Some(new) = &rename {
            record.name = new.clone();
        }
        if let Some(level) = level {
            record.level = level;
        }
        Ok(())
    })
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Token => "token",
        Kind::Key => "key",
    }
}

/// The listing: every field but the hash, never a secret.
pub fn list(path: &Path, kind: Kind, json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let records: Vec<CredentialRecord> = store::load(path)?
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect();
    if json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "description": r.description,
                    "kind": r.kind,
                    "customer": r.customer,
                    "sites": r.sites,
                    "level": r.level,
                    "hint": r.hint,
                    "created": r.created,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.customer.clone(),
                r.sites.to_string(),
                r.level.to_string(),
                r.hint.clone(),
                r.created.to_string(),
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
        "DESCRIPTION",
    ];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&head))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
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
        }
    }

    #[test]
    fn lifecycle_keeps_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let token = create(&path, Kind::Token, new("t")).unwrap();
        let key = create(&path, Kind::Key, new("k")).unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains(&token) && !raw.contains(&key));
        assert!(!raw.contains(&token[4..]) && !raw.contains(key.split('/').next().unwrap()));
        let records = store::load(&path).unwrap();
        assert_eq!(records[0].level, Level::Standard, "tokens are standard");
        assert_eq!(records[1].level, Level::Admin);
        let mut out = Vec::new();
        list(&path, Kind::Token, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("fus_****") && !text.contains(&token));
        assert!(
            create(&path, Kind::Key, new("t")).is_err(),
            "names are unique across kinds"
        );
        assert!(
            update_key(&path, "t", Some("x".into()), None).is_err(),
            "tokens cannot be renamed"
        );
        update_key(&path, "k", Some("k2".into()), Some(Level::Architect)).unwrap();
        let records = store::load(&path).unwrap();
        assert_eq!(records[1].name, "k2");
        assert_eq!(records[1].level, Level::Architect);
        assert_eq!(
            records[1].hash,
            sessiongate_core::hash_hex(&sessiongate_core::hash_secret(key.as_bytes())),
            "the key's value stays the same"
        );
        delete(&path, Kind::Token, "t").unwrap();
        assert!(delete(&path, Kind::Token, "t").is_err());
        assert_eq!(store::load(&path).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_store_is_an_error_naming_the_file_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let e = create(&path, Kind::Token, new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json") && e.contains("corrupt"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{ not json");
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::thread::scope(|s| {
            for t in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for i in 0..10 {
                        create(path, Kind::Token, new(&format!("t{t}-{i}"))).unwrap();
                    }
                });
            }
        });
        assert_eq!(store::load(&path).unwrap().len(), 80);
    }

    #[test]
    fn sites_arguments() {
        assert_eq!(sites_from_args(true, vec![]).unwrap(), Sites::All);
        assert!(sites_from_args(true, vec!["a".into()]).is_err());
        assert!(sites_from_args(false, vec![]).is_err());
        assert!(sites_from_args(false, vec!["a/b".into()]).is_err());
    }
}
