//! A step of a decision ([`Need`]) as one gateway call, and the gateway's
//! answer as an [`Answer`].
//!
//! - A read is `POST /v3/kv/range {"key"}`; the version a decision sees is
//!   the key's `mod_revision`.
//! - A swap is `POST /v3/kv/txn` comparing `mod_revision` to that version; a
//!   create compares `create_revision` to 0 (the key does not exist). The
//!   txn's failure branch reads the key, so a lost write comes back with
//!   what won: one round trip, not two.
//! - Facts of the gateway (etcd 3.4 on): keys and values are base64, int64
//!   fields are JSON strings, `succeeded` is left out when the compare
//!   failed, `kvs` when no key matched.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use sessiongate_core::{Answer, Entry, KvError, Need};

/// The gateway's path of a read.
pub const RANGE: &str = "/v3/kv/range";
/// The gateway's path of a transaction.
pub const TXN: &str = "/v3/kv/txn";
/// The gateway's path of a delete.
pub const DELETE_RANGE: &str = "/v3/kv/deleterange";

/// What a call was, to read its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A range of one key.
    Read,
    /// A txn that writes the key if it is as read (its failure branch reads it).
    Write,
}

/// One gateway call: `POST path` with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The gateway's path ([`RANGE`] or [`TXN`]).
    pub path: &'static str,
    /// The JSON body.
    pub body: String,
    /// What the call is, to read its answer with [`answer`].
    pub sent: Sent,
}

/// The call that performs `need` on the etcd key `key` (the host chooses
/// the key a gate key lives under). `None` for what etcd does not hold (a
/// revocation check).
pub fn call(need: &Need<'_>, key: &str) -> Option<Call> {
    let key = BASE64.encode(key);
    let (path, body, sent) = match need {
        Need::Read { .. } => (RANGE, format!(r#"{{"key":"{key}"}}"#), Sent::Read),
        Need::Swap { version, value, .. } => (
            TXN,
            txn(
                &key,
                &format!(r#""target":"MOD","mod_revision":"{version}""#),
                value,
            ),
            Sent::Write,
        ),
        Need::Create { value, .. } => (
            TXN,
            txn(&key, r#""target":"CREATE","create_revision":"0""#, value),
            Sent::Write,
        ),
        Need::Revoked { .. } => return None,
    };
    Some(Call { path, body, sent })
}

/// The call that writes `value` under the etcd key `key`, whatever is
/// there (a txn with no compare; its answer matters only by its status).
pub fn put(key: &str, value: &[u8]) -> Call {
    let body = format!(
        r#"{{"success":[{{"request_put":{{"key":"{}","value":"{}"}}}}]}}"#,
        BASE64.encode(key),
        BASE64.encode(value)
    );
    Call {
        path: TXN,
        body,
        sent: Sent::Write,
    }
}

/// The call that counts the keys named `key` (0 or 1) and reads nothing
/// else: a linearizable read, so it is answered only with a quorum (a
/// readiness check).
pub fn count(key: &str) -> Call {
    Call {
        path: RANGE,
        body: format!(r#"{{"key":"{}","count_only":true}}"#, BASE64.encode(key)),
        sent: Sent::Read,
    }
}

/// The call that deletes the etcd key `key` (its answer matters only by
/// its status).
pub fn delete(key: &str) -> Call {
    Call {
        path: DELETE_RANGE,
        body: format!(r#"{{"key":"{}"}}"#, BASE64.encode(key)),
        sent: Sent::Write,
    }
}

fn txn(key: &str, compare: &str, value: &[u8]) -> String {
    let value = BASE64.encode(value);
    format!(
        concat!(
            r#"{{"compare":[{{"key":"{key}","result":"EQUAL",{compare}}}],"#,
            r#""success":[{{"request_put":{{"key":"{key}","value":"{value}"}}}}],"#,
            r#""failure":[{{"request_range":{{"key":"{key}"}}}}]}}"#
        ),
        key = key,
        compare = compare,
        value = value
    )
}

/// What the gateway's answer to a call means for the decision. `status`
/// is the HTTP status; `None` when the call got no response at all (reset,
/// timeout, no member reachable).
pub fn answer(sent: Sent, status: Option<u16>, body: &[u8]) -> Answer<'static> {
    match status {
        Some(200) => {}
        Some(status) => return failed(format!("etcd answered {status}: {}", excerpt(body))),
        None => return failed("etcd did not answer".to_owned()),
    }
    let parsed = text(body).and_then(|json| match sent {
        Sent::Read => range(json).map(Answer::Value),
        Sent::Write => txn_answer(json),
    });
    parsed.unwrap_or_else(|e| {
        failed(format!(
            "etcd's answer does not parse ({e}): {}",
            excerpt(body)
        ))
    })
}

// The gateway's answers are read with a few string searches, not serde: the
// fields read here are strings without escapes (base64, decimal numbers,
// tokens), and serde's code for five answer shapes would be ~15 KB of the
// filter, whose size is held under 250 KB. Tested on the gateway's own output, and
// against a real etcd in proxy/tests/fleet.rs.

pub(crate) fn text(body: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_owned())?;
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return Err("not a JSON object".to_owned());
    }
    Ok(trimmed)
}

/// The value of the first `"name": "…"` in `json`.
pub(crate) fn string_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let pattern = format!("\"{name}\"");
    let after = json.get(json.find(&pattern)? + pattern.len()..)?;
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    value.get(..value.find('"')?)
}

/// The first key-value of a range answer (its `kvs`), if any.
fn range(json: &str) -> Result<Option<Entry<'static>>, String> {
    let Some(at) = json.find("\"kvs\"") else {
        return Ok(None);
    };
    let kvs = json.get(at..).unwrap_or_default();
    let list = kvs
        .find('[')
        .and_then(|open| kvs.get(open + 1..))
        .ok_or_else(|| "kvs is not a list".to_owned())?;
    if list.trim_start().starts_with(']') {
        return Ok(None);
    }
    let first = list
        .find('{')
        .and_then(|open| Some((open, kvs.get(open..)?.find('}')?)))
        .and_then(|(open, len)| kvs.get(open..=open + len))
        .ok_or_else(|| "kvs without an entry".to_owned())?;
    let revision = string_field(first, "mod_revision").ok_or("no mod_revision")?;
    let version = revision
        .parse()
        .map_err(|_| format!("mod_revision {revision:?} is not a number"))?;
    // Left out for an empty value.
    let value = string_field(first, "value").unwrap_or("");
    let value = BASE64
        .decode(value)
        .map_err(|e| format!("value is not base64: {e}"))?;
    Ok(Some(Entry {
        value: Cow::Owned(value),
        version,
    }))
}

fn txn_answer(json: &str) -> Result<Answer<'static>, String> {
    if !json.contains("\"header\"") {
        return Err("no header".to_owned());
    }
    let succeeded = json
        .find("\"succeeded\"")
        .and_then(|at| json.get(at + "\"succeeded\"".len()..))
        .and_then(|rest| rest.trim_start().strip_prefix(':'))
        .is_some_and(|rest| rest.trim_start().starts_with("true"));
    if succeeded {
        return Ok(Answer::Written);
    }
    // Lost: the failure branch read what is there now.
    match json.find("\"response_range\"") {
        Some(at) => range(json.get(at..).unwrap_or_default()).map(Answer::Value),
        None => Ok(Answer::Conflict),
    }
}

/// The revision a txn that won wrote at (its header's `revision`): the
/// written key's `mod_revision` from then on, so a driver that keeps what it
/// wrote can swap on it next without reading it first.
pub fn written_revision(body: &[u8]) -> Option<sessiongate_core::Version> {
    let json = text(body).ok()?;
    let header = json.get(json.find("\"header\"")?..)?;
    string_field(header, "revision")?.parse().ok()
}

fn failed(message: String) -> Answer<'static> {
    Answer::Failed(KvError(message))
}

pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        BASE64.encode(s)
    }

    #[test]
    fn a_read_is_a_range_of_the_key() {
        let c = call(&Need::Read { key: "ignored" }, "sessiongate/limiter/v1").unwrap();
        assert_eq!((c.path, c.sent), (RANGE, Sent::Read));
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["key"], b64("sessiongate/limiter/v1"));
    }

    #[test]
    fn a_swap_compares_mod_revision_and_reads_on_failure() {
        let need = Need::Swap {
            key: "k",
            version: 42,
            value: b"log",
        };
        let c = call(&need, "sg/k").unwrap();
        assert_eq!((c.path, c.sent), (TXN, Sent::Write));
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        let compare = &body["compare"][0];
        assert_eq!(compare["key"], b64("sg/k"));
        assert_eq!(compare["target"], "MOD");
        assert_eq!(compare["result"], "EQUAL");
        assert_eq!(compare["mod_revision"], "42", "int64 as a JSON string");
        assert_eq!(body["success"][0]["request_put"]["value"], b64("log"));
        assert_eq!(body["failure"][0]["request_range"]["key"], b64("sg/k"));
    }

    #[test]
    fn a_put_and_a_delete_name_the_key() {
        let put = put("sg/k", b"v");
        assert_eq!(put.path, TXN);
        let body: serde_json::Value = serde_json::from_str(&put.body).unwrap();
        assert_eq!(body["success"][0]["request_put"]["key"], b64("sg/k"));
        assert_eq!(body["success"][0]["request_put"]["value"], b64("v"));
        assert!(body.get("compare").is_none(), "whatever is there");
        let delete = delete("sg/k");
        assert_eq!(delete.path, DELETE_RANGE);
        let body: serde_json::Value = serde_json::from_str(&delete.body).unwrap();
        let counted: serde_json::Value = serde_json::from_str(&count("k").body).unwrap();
        assert_eq!(
            counted,
            serde_json::json!({"key": b64("k"), "count_only": true})
        );
        assert_eq!(body["key"], b64("sg/k"));
    }

    #[test]
    fn a_create_compares_create_revision_to_zero() {
        let c = call(
            &Need::Create {
                key: "k",
                value: b"v",
            },
            "sg/k",
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["compare"][0]["target"], "CREATE");
        assert_eq!(body["compare"][0]["create_revision"], "0");
    }

    #[test]
    fn a_revocation_check_is_not_etcds() {
        let hash = sessiongate_core::hash_secret(b"x");
        assert_eq!(call(&Need::Revoked { hash: &hash }, "k"), None);
    }

    #[test]
    fn range_answers() {
        let found = format!(
            r#"{{"header":{{"revision":"9"}},"kvs":[{{"key":"{}","create_revision":"3","mod_revision":"8","version":"2","value":"{}"}}],"count":"1"}}"#,
            b64("k"),
            b64("SGL2")
        );
        assert_eq!(
            answer(Sent::Read, Some(200), found.as_bytes()),
            Answer::Value(Some(Entry {
                value: Cow::Owned(b"SGL2".to_vec()),
                version: 8
            }))
        );
        let absent = br#"{"header":{"revision":"9"}}"#;
        assert_eq!(answer(Sent::Read, Some(200), absent), Answer::Value(None));
        let empty = br#"{"header":{"revision":"9"},"kvs":[],"count":"0"}"#;
        assert_eq!(answer(Sent::Read, Some(200), empty), Answer::Value(None));
        // Spaces where a JSON writer may put them, and an empty value left out.
        let spaced = br#"{ "header": {}, "kvs": [ { "key": "aw==", "mod_revision": "4" } ] }"#;
        assert_eq!(
            answer(Sent::Read, Some(200), spaced),
            Answer::Value(Some(Entry {
                value: Cow::Owned(Vec::new()),
                version: 4
            }))
        );
    }

    #[test]
    fn txn_answers() {
        let won = br#"{"header":{"revision":"10"},"succeeded":true,"responses":[{"response_put":{"header":{}}}]}"#;
        assert_eq!(answer(Sent::Write, Some(200), won), Answer::Written);
        assert_eq!(written_revision(won), Some(10));
        let spaced =
            br#"{ "header" : { "cluster_id": "1", "revision" : "12" }, "succeeded": true }"#;
        assert_eq!(written_revision(spaced), Some(12));
        assert_eq!(written_revision(br#"{"succeeded":true}"#), None);
        // `succeeded` left out: the compare failed; the failure branch read the winner.
        let lost = format!(
            r#"{{"header":{{"revision":"11"}},"responses":[{{"response_range":{{"header":{{}},"kvs":[{{"key":"{}","mod_revision":"11","value":"{}"}}],"count":"1"}}}}]}}"#,
            b64("k"),
            b64("theirs")
        );
        assert_eq!(
            answer(Sent::Write, Some(200), lost.as_bytes()),
            Answer::Value(Some(Entry {
                value: Cow::Owned(b"theirs".to_vec()),
                version: 11
            }))
        );
        // A create that lost to a key deleted since: absent now.
        let gone = br#"{"header":{},"responses":[{"response_range":{"header":{}}}]}"#;
        assert_eq!(answer(Sent::Write, Some(200), gone), Answer::Value(None));
    }

    #[test]
    fn failures_are_failures() {
        for (status, body) in [
            (None, &b""[..]),
            (Some(503), b"{\"error\":\"etcdserver: request timed out\"}"),
            (Some(200), b"not json"),
            (Some(200), b"{}"),
            (
                Some(200),
                b"{\"header\":{},\"kvs\":[{\"mod_revision\":\"x\"}]}",
            ),
            (
                Some(200),
                b"{\"header\":{},\"kvs\":[{\"mod_revision\":\"1\",\"value\":\"***\"}]}",
            ),
        ] {
            let sent = if body.starts_with(b"{\"header\":{},\"kvs") {
                Sent::Read
            } else {
                Sent::Write
            };
            assert!(
                matches!(answer(sent, status, body), Answer::Failed(_)),
                "{status:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest::proptest! {
        /// Whatever a member (or something posing as one) sends back, the
        /// answer is an answer: a proxy-wasm VM must not panic on it.
        #[test]
        fn any_answer_is_read_without_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            status in proptest::option::of(100u16..600),
        ) {
            let _ = answer(Sent::Read, status, &body);
            let _ = answer(Sent::Write, status, &body);
        }

        /// And answers shaped like etcd's, cut or spliced anywhere.
        #[test]
        fn etcd_like_answers_are_read_without_a_panic(cut in 0usize..200, splice in "[{}\\[\\]\":,a-z0-9= ]{0,12}") {
            let whole = r#"{"header":{},"responses":[{"response_range":{"kvs":[{"key":"aw==","mod_revision":"7","value":"U0dMMg=="}]}}],"kvs":[],"token":"t"}"#;
            let cut = cut.min(whole.len());
            let (a, b) = whole.split_at(cut);
            let body = format!("{a}{splice}{b}");
            let _ = answer(Sent::Read, Some(200), body.as_bytes());
            let _ = answer(Sent::Write, Some(200), body.as_bytes());
        }
    }
}
