//! Checksummed tokens at the gate: a token whose checksum fails is refused
//! as any unknown credential is, unhashed where every token the gate holds
//! carries a checksum; tokens minted before checksums stay valid.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use sessiongate_core::{
    Backend, CredentialSet, ErrorCode, Gate, GateConfig, Kind, Level, MemoryKv, Outcome, Sites,
    fixtures, is_checksummed_token, token_checksum,
};

/// A token in the checksummed format, from 34 made-up random characters.
fn checksummed(random: &str) -> String {
    assert_eq!(random.len(), 34);
    let checksum = token_checksum(random.as_bytes());
    format!("fus_{random}{}", std::str::from_utf8(&checksum).unwrap())
}

const LEGACY: &str = "fus_LegacyLegacyLegacyLegacyLegacyLegacy0000";

fn gate(secrets: &[&str]) -> Gate {
    let records = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            fixtures::record(
                s,
                Kind::Token,
                &format!("t{i}"),
                Sites::All,
                Level::Standard,
            )
        })
        .collect();
    fixtures::gate_over(records).unwrap()
}

fn outcome(gate: &Gate, token: &str) -> (Outcome, String) {
    let auth = format!("Bearer {token}");
    let target = "/v1/external/sessions/acme/site-1";
    fixtures::answer(gate, &auth, target, 1_000, &mut MemoryKv::default())
}

/// Every one-character change of `token` that keeps its shape.
fn one_character_changes(token: &str) -> impl Iterator<Item = String> + '_ {
    (4..token.len()).flat_map(move |at| {
        ['0', 'Q', 'z'].into_iter().filter_map(move |c| {
            let mut t = token.to_owned().into_bytes();
            (t[at] != c as u8).then(|| {
                t[at] = c as u8;
                String::from_utf8(t).unwrap()
            })
        })
    })
}

#[test]
fn records_say_which_tokens_carry_a_checksum() {
    let new = checksummed("abcdefghijABCDEFGHIJ0123456789klmn");
    assert!(is_checksummed_token(&new));
    assert!(!is_checksummed_token(LEGACY));
    let record = |s: &str| fixtures::record(s, Kind::Token, "t", Sites::All, Level::Standard);
    assert!(record(&new).checksum);
    assert!(!record(LEGACY).checksum);
    // Written only when true: an older store reads and writes as before.
    assert!(
        !serde_json::to_string(&record(LEGACY))
            .unwrap()
            .contains("checksum")
    );
    let json = serde_json::to_string(&record(&new)).unwrap();
    assert!(json.contains("\"checksum\":true"), "{json}");
    let set = CredentialSet::from_json(format!("[{json}]").as_bytes()).unwrap();
    assert!(!set.holds_unchecksummed_tokens());
    assert!(set.iter().next().unwrap().checksum);
}

#[test]
fn a_changed_character_is_refused_as_an_unknown_credential_is() {
    let new = checksummed("abcdefghijABCDEFGHIJ0123456789klmn");
    let g = gate(&[&new]);
    assert!(!g.credentials().holds_unchecksummed_tokens());
    assert_eq!(outcome(&g, &new).0, Outcome::Allowed);
    let (unknown, unknown_body) = outcome(&g, &checksummed("ZZZZZZZZZZABCDEFGHIJ0123456789klmn"));
    assert_eq!(unknown, Outcome::Denied(ErrorCode::InvalidCredentials));
    for changed in one_character_changes(&new) {
        assert!(!is_checksummed_token(&changed), "{changed}");
        let (o, body) = outcome(&g, &changed);
        assert_eq!(
            o,
            Outcome::Denied(ErrorCode::InvalidCredentials),
            "{changed}"
        );
        assert_eq!(body, unknown_body, "the same body whichever it was");
    }
}

#[test]
fn tokens_minted_before_checksums_are_still_admitted() {
    let new = checksummed("abcdefghijABCDEFGHIJ0123456789klmn");
    let g = gate(&[LEGACY, &new]);
    assert!(g.credentials().holds_unchecksummed_tokens());
    assert_eq!(outcome(&g, LEGACY).0, Outcome::Allowed);
    assert_eq!(outcome(&g, &new).0, Outcome::Allowed);
    // Looked up rather than refused unhashed, and not found.
    for changed in one_character_changes(&new).take(20) {
        assert_eq!(
            outcome(&g, &changed).0,
            Outcome::Denied(ErrorCode::InvalidCredentials)
        );
    }
}

/// A host that looks credentials up by digest (none configured): with the
/// store marked checksummed, a changed token names nothing to look up, and
/// its decision is the unknown credential's 401; unmarked, every
/// well-formed token is looked up, since the store may hold old ones.
#[test]
fn a_store_marked_checksummed_is_not_asked_for_a_wrong_checksum() {
    let token = checksummed("abcdefghijABCDEFGHIJ0123456789klmn");
    let lookup = |marked: bool, presented: &str| {
        let gate = Gate::new(GateConfig {
            backend: Backend::Upstream(None),
            checksummed_tokens: marked,
            ..Default::default()
        })
        .unwrap();
        let auth = format!("Bearer {presented}");
        let digests = gate.missing_digests(&[auth.as_bytes()]).len();
        (digests, outcome(&gate, presented).1)
    };
    let (unknown, unknown_body) = lookup(true, &token);
    assert_eq!(unknown, 1, "a valid checksum is looked up");
    for changed in one_character_changes(&token) {
        let (digests, body) = lookup(true, &changed);
        assert_eq!(digests, 0, "{changed} was looked up");
        assert_eq!(body, unknown_body);
        assert_eq!(lookup(false, &changed).0, 1);
    }
    assert_eq!(lookup(false, LEGACY).0, 1);
    assert_eq!(lookup(true, LEGACY).0, 0);
}
