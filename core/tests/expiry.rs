//! Opt-in expiry at the gate: from its `expires` instant on, a credential
//! is answered exactly as a revoked (unknown) one, on `/me` and on the
//! sessions API, and spends nothing of the limit; without `expires` nothing
//! changes.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use sessiongate_core::{
    CredentialRecord, CredentialSet, ErrorCode, Gate, Kind, Kv, LIMITER_KEY, Level, MemoryKv,
    Outcome, Sites, fixtures, limiter_log,
};

const TOKEN: &str = "fus_abcdefghijABCDEFGHIJ0123456789klmnopqrst";
const KEY: &str = "k3yB0dyk3yB0dyk3yB0dyk3yB0dyk3yB0dyXY/AB12CD3";
const UNKNOWN: &str = "fus_ZZZZZZZZZZABCDEFGHIJ0123456789klmnopqrst";
const SESSIONS: &str = "/v1/external/sessions/acme/site-1";
const EXPIRES: u64 = 1_800_000_000_000;

fn expiring(secret: &str, kind: Kind, name: &str, expires: Option<u64>) -> CredentialRecord {
    let level = if kind == Kind::Key {
        Level::Admin
    } else {
        Level::Standard
    };
    let mut r = fixtures::record(secret, kind, name, Sites::All, level);
    r.expires = expires;
    r
}

fn gate() -> Gate {
    fixtures::gate_over(vec![
        expiring(TOKEN, Kind::Token, "t", Some(EXPIRES)),
        expiring(KEY, Kind::Key, "k", Some(EXPIRES)),
    ])
    .unwrap()
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn basic(secret: &str) -> String {
    format!("Basic {secret}")
}

#[test]
fn admitted_until_the_instant_then_answered_as_an_unknown_credential() {
    let g = gate();
    for auth in [bearer(TOKEN), basic(KEY)] {
        for target in [SESSIONS, "/me"] {
            let at = |now| fixtures::answer(&g, &auth, target, now, &mut MemoryKv::default());
            let unknown = fixtures::answer(
                &g,
                &bearer(UNKNOWN),
                target,
                EXPIRES,
                &mut MemoryKv::default(),
            );
            assert_eq!(unknown.0, Outcome::Denied(ErrorCode::InvalidCredentials));
            assert_eq!(at(EXPIRES - 1).0, Outcome::Allowed, "{auth} {target}");
            assert_eq!(at(EXPIRES), unknown, "{auth} {target}: the same body");
            assert_eq!(at(EXPIRES + 86_400_000), unknown, "{auth} {target}");
        }
    }
}

#[test]
fn an_expired_credential_spends_nothing_of_the_limit() {
    let g = gate();
    let mut kv = MemoryKv::default();
    let admitted = |kv: &mut MemoryKv| {
        let entry = kv.get(LIMITER_KEY).unwrap();
        limiter_log::decode(entry.as_ref().map(|e| e.value.as_ref()))
            .unwrap()
            .len()
    };
    let (o, _) = fixtures::answer(&g, &bearer(TOKEN), SESSIONS, EXPIRES - 1, &mut kv);
    assert_eq!(o, Outcome::Allowed);
    assert_eq!(admitted(&mut kv), 1);
    for now in EXPIRES..EXPIRES + 30 {
        let (o, _) = fixtures::answer(&g, &bearer(TOKEN), SESSIONS, now, &mut kv);
        assert_eq!(o, Outcome::Denied(ErrorCode::InvalidCredentials));
    }
    assert_eq!(admitted(&mut kv), 1, "no expired request was counted");
}

#[test]
fn without_expires_nothing_changes() {
    let g = fixtures::gate_over(vec![expiring(TOKEN, Kind::Token, "t", None)]).unwrap();
    let (o, _) = fixtures::answer(
        &g,
        &bearer(TOKEN),
        SESSIONS,
        u64::MAX / 2,
        &mut MemoryKv::default(),
    );
    assert_eq!(o, Outcome::Allowed);
}

#[test]
fn the_record_writes_expires_only_when_set_and_the_set_keeps_it() {
    let never = expiring(TOKEN, Kind::Token, "t", None);
    assert!(!serde_json::to_string(&never).unwrap().contains("expires"));
    let record = expiring(TOKEN, Kind::Token, "t", Some(EXPIRES));
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains(&format!("\"expires\":{EXPIRES}")), "{json}");
    let set = CredentialSet::from_json(format!("[{json}]").as_bytes()).unwrap();
    let kept = set.iter().next().unwrap();
    assert_eq!(kept.expires, Some(EXPIRES));
    assert!(!kept.expired(EXPIRES - 1) && kept.expired(EXPIRES));
    assert_eq!(set.records(), vec![record]);
}
