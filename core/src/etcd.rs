//! The gate's shared state on etcd, as etcd's v3 HTTP/JSON gateway speaks
//! it: a step of a decision ([`Need`]) as one gateway call, and the
//! gateway's answer as an [`Answer`]. Sans-IO: the filter sends the call
//! with `proxy_http_call`, any other host with its own client.
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

use crate::kv::{Entry, KvError};
use crate::pending::{Answer, Need};

/// The gateway's paths.
pub const RANGE: &str = "/v3/kv/range";
pub const TXN: &str = "/v3/kv/txn";

pub const AUTHENTICATE: &str = "/v3/auth/authenticate";

/// The shortest deadline a login gets. etcd checks the password with
/// bcrypt (cost 10: ~90 ms on an idle core here, ~230 ms with the cores
/// three times over-subscribed), so the limiter's step deadline (250 ms by
/// default) would fail logins exactly when the machine is busy, and each
/// request that follows would try again, adding bcrypt load to the cluster.
pub const LOGIN_TIMEOUT_MS: u32 = 2_000;

/// The deadline of a login by a limiter whose steps get `step_timeout_ms`.
pub fn login_timeout_ms(step_timeout_ms: u32) -> u32 {
    step_timeout_ms.max(LOGIN_TIMEOUT_MS)
}

/// What a call was, to read its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Read,
    Write,
}

/// The call that asks a cluster with authentication on for a token.
pub fn authenticate(user: &str, password: &str) -> String {
    let mut body = String::from(r#"{"name":"#);
    crate::error::push_json_string(&mut body, user);
    body.push_str(r#","password":"#);
    crate::error::push_json_string(&mut body, password);
    body.push('}');
    body
}

/// The token in an answer to [`authenticate`].
pub fn token(status: Option<u16>, body: &[u8]) -> Result<String, String> {
    match status {
        Some(200) => string_field(text(body)?, "token")
            .map(str::to_owned)
            .ok_or_else(|| format!("etcd's login answer has no token: {}", excerpt(body))),
        Some(status) => Err(format!(
            "etcd refused the login ({status}): {}",
            excerpt(body)
        )),
        None => Err("etcd did not answer the login".to_owned()),
    }
}

/// Whether an answer says the call's token is missing, expired or invalid
/// (log in again and retry), rather than anything about the key.
pub fn needs_login(status: Option<u16>, body: &[u8]) -> bool {
    if status == Some(401) {
        return true;
    }
    let text = String::from_utf8_lossy(body);
    status != Some(200)
        && (text.contains("invalid auth token")
            || text.contains("user name is empty")
            || text.contains("\"code\":16"))
}

/// One gateway call: `POST path` with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub path: &'static str,
    pub body: String,
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
// tokens), and serde's code for five answer shapes was ~15 KB of the filter
// (BENCHMARKS.md, size target). Tested on the gateway's own output, and
// against a real etcd in proxy/tests/fleet.rs.

fn text(body: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_owned())?;
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return Err("not a JSON object".to_owned());
    }
    Ok(trimmed)
}

/// The value of the first `"name": "…"` in `json`.
fn string_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
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

fn failed(message: String) -> Answer<'static> {
    Answer::Failed(KvError(message))
}

fn excerpt(body: &[u8]) -> String {
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
        let hash = crate::hash_secret(b"x");
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
    fn a_login_gets_at_least_its_own_deadline() {
        assert_eq!(login_timeout_ms(250), LOGIN_TIMEOUT_MS);
        assert_eq!(login_timeout_ms(0), LOGIN_TIMEOUT_MS);
        assert_eq!(login_timeout_ms(5_000), 5_000);
    }

    #[test]
    fn logins() {
        let body: serde_json::Value = serde_json::from_str(&authenticate("root", "p\"w")).unwrap();
        assert_eq!(
            (body["name"].as_str(), body["password"].as_str()),
            (Some("root"), Some("p\"w"))
        );
        assert_eq!(
            token(Some(200), br#"{"header":{},"token":"abc.42"}"#),
            Ok("abc.42".to_owned())
        );
        assert!(
            token(
                Some(400),
                br#"{"error":"etcdserver: authentication failed"}"#
            )
            .is_err()
        );
        assert!(token(None, b"").is_err());
        let expired = br#"{"error":"etcdserver: invalid auth token","code":16}"#;
        assert!(needs_login(Some(401), expired));
        assert!(needs_login(Some(400), expired));
        assert!(!needs_login(Some(200), br#"{"header":{}}"#));
        assert!(!needs_login(
            Some(503),
            br#"{"error":"etcdserver: request timed out","code":14}"#
        ));
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
            let _ = token(status, &body);
            let _ = needs_login(status, &body);
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
            let _ = token(Some(200), body.as_bytes());
        }
    }
}
