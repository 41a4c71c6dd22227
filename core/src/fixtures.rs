//! Credential records for tests, benches and fuzz targets, in one place.
//! Never for a real store: their secrets are in the source.

use crate::credential::{CredentialRecord, Kind, Level, Sites};
use crate::credential_set::CredentialSet;

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
