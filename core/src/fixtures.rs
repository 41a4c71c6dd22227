//! Credential records for tests, benches and fuzz targets, in one place.
//! Never for a real store: their secrets are in the source.

use crate::config::{Backend, GateConfig};
use crate::credential::{CredentialRecord, Kind, Level, Sites};
use crate::credential_set::CredentialSet;
use crate::decision::{Action, Outcome, Request};
use crate::gate::Gate;
use crate::kv::Kv;

/// A record of customer `acme` for `secret`.
pub fn record(
    secret: &str,
    kind: Kind,
    name: &str,
    sites: Sites,
    level: Level,
) -> CredentialRecord {
    CredentialRecord::for_secret(
        secret,
        kind,
        name.into(),
        None,
        "acme".into(),
        sites,
        level,
        1,
    )
}

/// `n` records named `c{i}` for the made-up secrets `secret {i}`: every
/// fourth a key, the others tokens, all of every site.
pub fn numbered(n: usize) -> Vec<CredentialRecord> {
    (0..n)
        .map(|i| {
            let kind = if i % 4 == 3 { Kind::Key } else { Kind::Token };
            let secret = format!("secret {i}");
            let mut r = record(&secret, kind, &format!("c{i}"), Sites::All, Level::Standard);
            r.created = i as u64;
            r
        })
        .collect()
}

/// A set of one token of every site.
pub fn token_set(secret: &str, name: &str) -> Result<CredentialSet, String> {
    CredentialSet::new(vec![record(
        secret,
        Kind::Token,
        name,
        Sites::All,
        Level::Standard,
    )])
}

/// A gate over `records` that forwards what it admits (no stub pages to
/// build), with the default limit.
pub fn gate_over(records: Vec<CredentialRecord>) -> Result<Gate, String> {
    Gate::new(GateConfig {
        credentials: CredentialSet::new(records)?.into(),
        backend: Backend::Upstream(None),
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

/// How `gate` ends `GET target` with `Authorization: authorization` at
/// `now_ms`, and the body of its reply (empty for a forward).
pub fn answer(
    gate: &Gate,
    authorization: &str,
    target: &str,
    now_ms: u64,
    kv: &mut dyn Kv,
) -> (Outcome, String) {
    let values = [authorization.as_bytes()];
    let req = Request {
        method: "GET",
        target,
        authorization: &values,
        client: None,
    };
    let d = gate.decide(&req, now_ms, kv);
    let body = match d.action {
        Action::Reply(r) => r.body.as_str().to_owned(),
        Action::Forward(_) => String::new(),
    };
    (d.outcome, body)
}
