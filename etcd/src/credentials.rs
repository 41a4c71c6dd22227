//! The credential store's keys in etcd, as its writers (the CLI, the
//! console) keep them and the filter reads them:
//!
//! - `PREFIX/credentials/NAME`: a record by name (what lists and changes use);
//! - `PREFIX/digests/HEX`: the same record under the SHA-256 of its secret
//!   (what a filter looks a presented credential up by), changed in the
//!   same txn as the record, so the two never disagree;
//! - `PREFIX/credentials.changed`: written by every txn that changes a
//!   credential. Its `mod_revision` is the credentials' revision: a filter
//!   that reads it (one key, whatever the store's size) knows whether
//!   anything it cached may have changed.
//!
//! A lookup is one txn of two reads, the digest's key and the change key,
//! so every answer says which revision of the credentials it is of. Its
//! answer is read with string searches, as [`crate::answer`] is: the filter
//! carries no serde code for it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::codec::{Call, RANGE, Sent, TXN, excerpt, string_field, text};

/// The collection of records by name, under a store's prefix.
pub const BY_NAME: &str = "credentials";
/// The collection of records by digest, under a store's prefix.
pub const BY_DIGEST: &str = "digests";

/// The key of the record whose secret has the SHA-256 `hex` (lowercase).
pub fn digest_key(prefix: &str, hex: &str) -> String {
    format!("{prefix}/{BY_DIGEST}/{hex}")
}

/// The key every change of a credential writes.
pub fn change_key(prefix: &str) -> String {
    format!("{prefix}/{BY_NAME}.changed")
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The record's JSON, if a credential has the digest.
    pub record: Option<Vec<u8>>,
    /// The credentials' revision the answer is of (0: never changed).
    pub revision: u64,
}

/// The call that looks the digest `hex` up: the record and the
/// credentials' revision, in one txn.
pub fn lookup(prefix: &str, hex: &str) -> Call {
    let digest = BASE64.encode(digest_key(prefix, hex));
    let change = BASE64.encode(change_key(prefix));
    Call {
        path: TXN,
        body: format!(
            r#"{{"success":[{{"request_range":{{"key":"{digest}"}}}},{{"request_range":{{"key":"{change}"}}}}]}}"#
        ),
        sent: Sent::Read,
    }
}

/// The call that reads the credentials' revision alone.
pub fn revision(prefix: &str) -> Call {
    Call {
        path: RANGE,
        body: format!(
            r#"{{"key":"{}","keys_only":true}}"#,
            BASE64.encode(change_key(prefix))
        ),
        sent: Sent::Read,
    }
}

/// A lookup's answer. `status`: `None` when the call got no response.
pub fn lookup_answer(status: Option<u16>, body: &[u8]) -> Result<Found, String> {
    let json = ok_text(status, body)?;
    // Two ranges, in the order asked: the digest's, then the change key's.
    let mut ranges = json.split("\"response_range\"").skip(1);
    let (Some(digest), Some(change)) = (ranges.next(), ranges.next()) else {
        return Err(format!(
            "etcd's lookup answer has not two ranges: {}",
            excerpt(body)
        ));
    };
    let record = match string_field(digest, "value") {
        Some(value) => Some(
            BASE64
                .decode(value)
                .map_err(|_| format!("etcd sent a value that is not base64: {}", excerpt(body)))?,
        ),
        None => None,
    };
    Ok(Found {
        record,
        revision: mod_revision(change)?,
    })
}

/// A revision read's answer: the credentials' revision (0: never changed).
pub fn revision_answer(status: Option<u16>, body: &[u8]) -> Result<u64, String> {
    let json = ok_text(status, body)?;
    if !json.contains("\"header\"") {
        return Err(format!(
            "etcd's range answer has no header: {}",
            excerpt(body)
        ));
    }
    mod_revision(json)
}

fn ok_text(status: Option<u16>, body: &[u8]) -> Result<&str, String> {
    match status {
        Some(200) => text(body),
        Some(status) => Err(format!("etcd answered {status}: {}", excerpt(body))),
        None => Err("etcd did not answer".to_owned()),
    }
}

/// The `mod_revision` of the one key a range answer holds (0: none).
fn mod_revision(range: &str) -> Result<u64, String> {
    match string_field(range, "mod_revision") {
        None => Ok(0),
        Some(n) => n
            .parse()
            .map_err(|_| format!("etcd sent mod_revision {n:?}, not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        BASE64.encode(s)
    }

    #[test]
    fn a_lookup_reads_the_digest_and_the_change_key_at_once() {
        let call = lookup("sg", "ab12");
        assert_eq!(call.path, TXN);
        let first = call.body.find(&b64("sg/digests/ab12")).unwrap();
        let second = call.body.find(&b64("sg/credentials.changed")).unwrap();
        assert!(first < second, "{}", call.body);
        assert!(!call.body.contains("compare"), "a lookup compares nothing");
    }

    /// The gateway's answer, as etcd 3.5 writes it.
    fn answer(record: Option<&str>, changed: Option<u64>) -> String {
        let kv = |key: &str, value: &str, rev: u64| {
            format!(
                r#"{{"key":"{}","create_revision":"3","mod_revision":"{rev}","version":"1","value":"{}"}}"#,
                b64(key),
                b64(value)
            )
        };
        let range = |kvs: Option<String>| match kvs {
            Some(kv) => format!(
                r#"{{"response_range":{{"header":{{"revision":"9"}},"kvs":[{kv}],"count":"1"}}}}"#
            ),
            None => r#"{"response_range":{"header":{"revision":"9"}}}"#.to_owned(),
        };
        format!(
            r#"{{"header":{{"cluster_id":"1","revision":"9"}},"succeeded":true,"responses":[{},{}]}}"#,
            range(record.map(|r| kv("sg/digests/ab12", r, 7))),
            range(changed.map(|rev| kv("sg/credentials.changed", "", rev)))
        )
    }

    #[test]
    fn a_lookup_answer_gives_the_record_and_the_revision() {
        let found = lookup_answer(
            Some(200),
            answer(Some(r#"{"name":"ci"}"#), Some(8)).as_bytes(),
        )
        .unwrap();
        assert_eq!(found.record.as_deref(), Some(&br#"{"name":"ci"}"#[..]));
        assert_eq!(found.revision, 8);
    }

    #[test]
    fn a_miss_is_no_record_and_a_store_never_changed_is_revision_0() {
        let found = lookup_answer(Some(200), answer(None, None).as_bytes()).unwrap();
        assert_eq!(
            found,
            Found {
                record: None,
                revision: 0
            }
        );
        let found = lookup_answer(Some(200), answer(None, Some(5)).as_bytes()).unwrap();
        assert_eq!(found.revision, 5);
    }

    #[test]
    fn failures_are_errors_never_a_miss() {
        assert!(lookup_answer(None, b"").is_err());
        assert!(lookup_answer(Some(503), b"{}").is_err());
        assert!(lookup_answer(Some(200), b"{\"header\":{}}").is_err());
        assert!(lookup_answer(Some(200), b"not json").is_err());
        assert!(revision_answer(Some(200), b"{}").is_err());
        assert!(revision_answer(None, b"").is_err());
    }

    #[test]
    fn a_revision_read_is_one_key_without_its_value() {
        let call = revision("sg");
        assert_eq!(call.path, RANGE);
        assert!(call.body.contains(&b64("sg/credentials.changed")));
        assert!(call.body.contains("keys_only"));
        let body =
            r#"{"header":{"revision":"12"},"kvs":[{"key":"x","mod_revision":"11"}],"count":"1"}"#;
        assert_eq!(revision_answer(Some(200), body.as_bytes()), Ok(11));
        assert_eq!(
            revision_answer(Some(200), br#"{"header":{"revision":"12"}}"#),
            Ok(0)
        );
    }
}
