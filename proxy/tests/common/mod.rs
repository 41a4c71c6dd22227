//! What the end-to-end tests share: the binary, minting with the real CLI,
//! a fixture of credentials, and the secret-leak check.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use sessiongate_conformance::{self as suite, Credentials};

pub const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

pub fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run sessiongate");
    assert!(
        out.status.success(),
        "sessiongate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn mint_token(store: &Path, name: &str, sites: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        "--store",
        store.to_str().unwrap(),
        "--name",
        name,
        "--customer",
        suite::CUSTOMER,
    ];
    if sites.is_empty() {
        args.push("--all-sites");
    }
    for s in sites {
        args.extend(["--site", s]);
    }
    cli(&args)
}

pub fn mint_key(store: &Path, name: &str, level: &str) -> String {
    cli(&[
        "key",
        "create",
        "--store",
        store.to_str().unwrap(),
        "--name",
        name,
        "--customer",
        suite::CUSTOMER,
        "--level",
        level,
        "--all-sites",
    ])
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub store: PathBuf,
    pub creds: Credentials,
    /// Every secret minted, for the leak checks.
    pub secrets: Vec<String>,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let store = path.join("tokens.json");
    let creds = Credentials {
        token_all: mint_token(&store, "all-sites", &[]),
        token_site_a: mint_token(&store, "site-a-only", &[suite::SITE_A]),
        key_standard: mint_key(&store, "key-standard", "standard"),
        key_architect: mint_key(&store, "key-architect", "architect"),
        key_admin: mint_key(&store, "key-admin", "admin"),
    };
    let secrets = vec![
        creds.token_all.clone(),
        creds.token_site_a.clone(),
        creds.key_standard.clone(),
        creds.key_architect.clone(),
        creds.key_admin.clone(),
    ];
    Fixture {
        _dir: dir,
        dir: path,
        store,
        creds,
        secrets,
    }
}

/// No minted secret, nor its 40-character body, anywhere in `haystack`.
pub fn assert_no_secret(what: &str, haystack: &str, secrets: &[String]) {
    for s in secrets {
        let body = s.trim_start_matches("fus_");
        let key_body = s.split('/').next().unwrap_or(s);
        assert!(
            !haystack.contains(s.as_str())
                && !haystack.contains(body)
                && !haystack.contains(key_body),
            "{what} contains a secret"
        );
    }
}
