//! The keys under a prefix as a collection of records (the credential
//! store, the console's users, the audit log): a range over the prefix and
//! a txn of many compares and writes, all or nothing. Read with serde: only
//! the CLI and `serve` make these calls, never the filter.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::codec::{Call, RANGE, Sent, TXN, excerpt};

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a `keys_only` range).
    pub value: Vec<u8>,
    /// The revision that created the key: keys in creation order sort by it.
    pub create_revision: u64,
    /// The revision of the key's last change, which a txn compares.
    pub mod_revision: u64,
}

/// The call that reads every key under `prefix` (`keys_only`: without
/// their values), in one answer.
pub fn range_prefix(prefix: &str, keys_only: bool) -> Call {
    range_page(prefix, keys_only, &Page::default())
}

/// Where a page of a range starts, how many keys it holds at most, and
/// the revision every page of one read is read at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The first key (none: the prefix itself).
    pub from: Option<String>,
    /// At most this many keys (0: all of them).
    pub limit: u64,
    /// Read at this revision (none: the newest; the first page's answer
    /// says which that was).
    pub revision: Option<u64>,
}

/// The call that reads one page of the keys under `prefix`.
pub fn range_page(prefix: &str, keys_only: bool, page: &Page) -> Call {
    // The range end is the prefix with its last byte + 1: every key that
    // starts with the prefix sorts before it.
    let mut end = prefix.as_bytes().to_vec();
    match end.last_mut() {
        Some(last) if *last < u8::MAX => *last += 1,
        // An empty prefix (or one ending in 0xff): every key from it on.
        _ => end = vec![0],
    }
    let mut body = serde_json::Map::new();
    let from = page.from.as_deref().unwrap_or(prefix);
    body.insert("key".into(), BASE64.encode(from).into());
    body.insert("range_end".into(), BASE64.encode(end).into());
    body.insert("keys_only".into(), keys_only.into());
    if page.limit > 0 {
        body.insert("limit".into(), page.limit.to_string().into());
    }
    if let Some(revision) = page.revision {
        body.insert("revision".into(), revision.to_string().into());
    }
    Call {
        path: RANGE,
        body: serde_json::Value::Object(body).to_string(),
        sent: Sent::Read,
    }
}

/// One page of a range answer: its keys in etcd's order (by key), the
/// revision it was read at, and whether more keys follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    /// The keys, in order.
    pub kvs: Vec<KeyValue>,
    /// The store's revision the page was read at.
    pub revision: u64,
    /// More keys follow the last one (the page was cut at its limit).
    pub more: bool,
}

impl RangePage {
    /// The next page of `limit` keys at most, read at this one's revision
    /// (none: this was the last).
    pub fn next(&self, limit: u64) -> Option<Page> {
        let last = self.kvs.last().filter(|_| self.more)?;
        Some(Page {
            from: Some(format!("{}\0", last.key)),
            limit,
            revision: Some(self.revision),
        })
    }
}

/// The key-values of a range answer, in etcd's order (by key). `status`:
/// the HTTP status.
pub fn range_answer(status: u16, body: &[u8]) -> Result<Vec<KeyValue>, String> {
    range_page_answer(status, body).map(|page| page.kvs)
}

/// A range answer as a page.
pub fn range_page_answer(status: u16, body: &[u8]) -> Result<RangePage, String> {
    #[derive(Deserialize)]
    struct Range {
        header: Option<Header>,
        #[serde(default)]
        kvs: Vec<Wire>,
        #[serde(default)]
        more: bool,
    }
    #[derive(Deserialize)]
    struct Header {
        #[serde(default)]
        revision: Option<String>,
    }
    #[derive(Deserialize)]
    struct Wire {
        key: String,
        #[serde(default)]
        value: String,
        #[serde(default)]
        create_revision: Option<String>,
        #[serde(default)]
        mod_revision: Option<String>,
    }
    let range: Range = parsed(status, body)?;
    let Some(header) = range.header else {
        return Err(format!(
            "etcd's range answer has no header: {}",
            excerpt(body)
        ));
    };
    let revision = |field: Option<String>, name: &str| -> Result<u64, String> {
        let text = field.unwrap_or_else(|| "0".to_owned());
        text.parse()
            .map_err(|_| format!("etcd sent {name} {text:?}, not a number"))
    };
    let kvs = range
        .kvs
        .into_iter()
        .map(|kv| {
            let key = String::from_utf8(decode(&kv.key)?)
                .map_err(|_| "etcd sent a key that is not UTF-8".to_owned())?;
            Ok(KeyValue {
                value: decode(&kv.value)?,
                create_revision: revision(kv.create_revision, "create_revision")?,
                mod_revision: revision(kv.mod_revision, "mod_revision")?,
                key,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RangePage {
        kvs,
        revision: revision(header.revision, "the header's revision")?,
        more: range.more,
    })
}

/// A transaction: every compare must hold for every write to happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    compare: Vec<serde_json::Value>,
    success: Vec<serde_json::Value>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Holds if `key` is still at `mod_revision` (unchanged since read).
    pub fn unchanged(&mut self, key: &str, mod_revision: u64) -> &mut Txn {
        self.compare.push(serde_json::json!({
            "key": BASE64.encode(key), "target": "MOD", "result": "EQUAL",
            "mod_revision": mod_revision.to_string(),
        }));
        self
    }

    /// Holds if `key` does not exist.
    pub fn absent(&mut self, key: &str) -> &mut Txn {
        self.compare.push(serde_json::json!({
            "key": BASE64.encode(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": "0",
        }));
        self
    }

    /// Writes `value` under `key`.
    pub fn put(&mut self, key: &str, value: &[u8]) -> &mut Txn {
        self.success.push(serde_json::json!({ "request_put": {
            "key": BASE64.encode(key), "value": BASE64.encode(value),
        }}));
        self
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &str) -> &mut Txn {
        self.success.push(serde_json::json!({
            "request_delete_range": { "key": BASE64.encode(key) },
        }));
        self
    }

    /// No write: nothing to send.
    pub fn writes_nothing(&self) -> bool {
        self.success.is_empty()
    }

    /// The call; its answer is read with [`txn_succeeded`].
    pub fn call(&self) -> Call {
        Call {
            path: TXN,
            body: serde_json::json!({ "compare": self.compare, "success": self.success })
                .to_string(),
            sent: Sent::Write,
        }
    }
}

/// For a txn of nested ones ([`crate::write_last_uses`]), each one's
/// outcome in order: whether its compares held, or failing that, those of
/// the txn its failure branch ran (so: whether it wrote).
pub fn nested_succeeded(status: u16, body: &[u8]) -> Result<Vec<bool>, String> {
    let answer: serde_json::Value = parsed(status, body)?;
    let nested = |op: &serde_json::Value| -> bool {
        let Some(txn) = op.get("response_txn") else {
            return false;
        };
        if txn.get("succeeded") == Some(&serde_json::Value::Bool(true)) {
            return true;
        }
        txn.get("responses")
            .and_then(|r| r.as_array())
            .is_some_and(|inner| {
                inner.iter().any(|op| {
                    op.get("response_txn").and_then(|t| t.get("succeeded"))
                        == Some(&serde_json::Value::Bool(true))
                })
            })
    };
    Ok(answer
        .get("responses")
        .and_then(|r| r.as_array())
        .map(|ops| ops.iter().map(nested).collect())
        .unwrap_or_default())
}

/// Whether a txn's compares held (and so its writes happened).
pub fn txn_succeeded(status: u16, body: &[u8]) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct TxnAnswer {
        header: Option<serde_json::Value>,
        // Left out when the compare failed.
        #[serde(default)]
        succeeded: bool,
    }
    let answer: TxnAnswer = parsed(status, body)?;
    if answer.header.is_none() {
        return Err(format!(
            "etcd's txn answer has no header: {}",
            excerpt(body)
        ));
    }
    Ok(answer.succeeded)
}

fn parsed<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, String> {
    if status != 200 {
        return Err(format!("etcd answered {status}: {}", excerpt(body)));
    }
    serde_json::from_slice(body)
        .map_err(|e| format!("etcd's answer does not parse ({e}): {}", excerpt(body)))
}

fn decode(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text)
        .map_err(|e| format!("etcd sent bad base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        BASE64.encode(s)
    }

    fn json(call: &Call) -> serde_json::Value {
        serde_json::from_str(&call.body).unwrap()
    }

    #[test]
    fn pages_go_on_after_the_last_key_at_the_first_pages_revision() {
        let first = Page {
            limit: 2,
            ..Page::default()
        };
        let call = json(&range_page("sg/c/", false, &first));
        assert_eq!(call["key"], b64("sg/c/"));
        assert_eq!(call["range_end"], b64("sg/c0"));
        assert_eq!(call["limit"], "2");
        assert!(call.get("revision").is_none());
        let answer = format!(
            r#"{{"header":{{"revision":"41"}},"kvs":[{{"key":"{}","mod_revision":"3"}},{{"key":"{}","mod_revision":"4"}}],"more":true,"count":"3"}}"#,
            b64("sg/c/a"),
            b64("sg/c/b")
        );
        let page = range_page_answer(200, answer.as_bytes()).unwrap();
        assert_eq!((page.kvs.len(), page.revision, page.more), (2, 41, true));
        let next = page.next(2).unwrap();
        assert_eq!(next.from.as_deref(), Some("sg/c/b\0"));
        let call = json(&range_page("sg/c/", false, &next));
        assert_eq!(call["key"], b64("sg/c/b\0"));
        assert_eq!(call["revision"], "41");
        let last = format!(
            r#"{{"header":{{"revision":"41"}},"kvs":[{{"key":"{}"}}],"count":"3"}}"#,
            b64("sg/c/c")
        );
        let page = range_page_answer(200, last.as_bytes()).unwrap();
        assert_eq!(page.next(2), None, "no more");
    }

    #[test]
    fn a_prefix_range_ends_where_the_prefix_does() {
        let call = range_prefix("sg/credentials/", true);
        assert_eq!(call.path, RANGE);
        let body = json(&call);
        assert_eq!(body["key"], b64("sg/credentials/"));
        // '/' + 1 is '0'.
        assert_eq!(body["range_end"], b64("sg/credentials0"));
        assert_eq!(body["keys_only"], true);
        assert_eq!(
            json(&range_prefix("", false))["range_end"],
            BASE64.encode([0])
        );
    }

    /// etcd's own answer (3.5), and one with no key: `kvs` left out.
    #[test]
    fn range_answers() {
        let answer = format!(
            r#"{{"header":{{"revision":"9"}},"kvs":[{{"key":"{}","create_revision":"4","mod_revision":"7","version":"2","value":"{}"}},{{"key":"{}","create_revision":"5","mod_revision":"5"}}],"count":"2"}}"#,
            b64("p/a"),
            b64("{}"),
            b64("p/b"),
        );
        let kvs = range_answer(200, answer.as_bytes()).unwrap();
        assert_eq!(
            kvs,
            [
                KeyValue {
                    key: "p/a".into(),
                    value: b"{}".to_vec(),
                    create_revision: 4,
                    mod_revision: 7,
                },
                KeyValue {
                    key: "p/b".into(),
                    value: Vec::new(),
                    create_revision: 5,
                    mod_revision: 5,
                },
            ]
        );
        let none = range_answer(200, br#"{"header":{"revision":"9"}}"#).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        for (status, body, says) in [
            (503, &b"busy"[..], "etcd answered 503: busy"),
            (200, b"<html>", "does not parse"),
            (200, br#"{"kvs":[]}"#, "no header"),
            (200, br#"{"header":{},"kvs":[{"key":"!!"}]}"#, "bad base64"),
            (
                200,
                br#"{"header":{},"kvs":[{"key":"YQ==","mod_revision":"x"}]}"#,
                "mod_revision \"x\"",
            ),
        ] {
            let e = range_answer(status, body).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let e = txn_succeeded(401, br#"{"error":"etcdserver: user name is empty"}"#).unwrap_err();
        assert!(e.contains("401"), "{e}");
    }

    #[test]
    fn a_txn_compares_then_writes() {
        let mut txn = Txn::new();
        assert!(txn.writes_nothing());
        txn.unchanged("p/a", 7)
            .delete("p/a")
            .absent("p/b")
            .put("p/b", b"v");
        let call = txn.call();
        assert_eq!((call.path, call.sent), (TXN, Sent::Write));
        let body = json(&call);
        assert_eq!(
            body["compare"],
            serde_json::json!([
                {"key": b64("p/a"), "target": "MOD", "result": "EQUAL", "mod_revision": "7"},
                {"key": b64("p/b"), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
            ])
        );
        assert_eq!(
            body["success"],
            serde_json::json!([
                {"request_delete_range": {"key": b64("p/a")}},
                {"request_put": {"key": b64("p/b"), "value": b64("v")}},
            ])
        );
    }

    #[test]
    fn a_txn_that_lost_leaves_succeeded_out() {
        assert!(txn_succeeded(200, br#"{"header":{},"succeeded":true}"#).unwrap());
        assert!(!txn_succeeded(200, br#"{"header":{}}"#).unwrap());
        assert!(txn_succeeded(200, b"{}").is_err());
    }
}
