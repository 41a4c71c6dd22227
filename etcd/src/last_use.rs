//! Each credential's last use in etcd (issue 46): `PREFIX/last_used/NAME`,
//! apart from the record. Written with no read, by the store's flush and by
//! the fleet filter alike: per key a nested txn whose compares etcd decides
//! (the key absent, or else its value below the new minute's
//! [`LastUse::later_than`]), so a later minute another writer stored is
//! never overwritten. String-built, as the filter's other calls are.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sessiongate_core::LastUse;

use crate::codec::{Call, Sent, TXN};

/// The collection of last uses, under a store's prefix.
pub const LAST_USED: &str = "last_used";

/// Nested txns in one call: under etcd's default `--max-txn-ops` of 128.
pub const USES_PER_CALL: usize = 64;

/// The key of the credential `name`'s last use.
pub fn last_use_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{LAST_USED}/{name}")
}

/// The call that writes each `(name, minute)` as used by `instance` where
/// no later minute is stored ([`USES_PER_CALL`] at most); its answer is
/// read with [`crate::nested_succeeded`], each one whether it wrote.
pub fn write_last_uses<'a>(
    prefix: &str,
    uses: impl Iterator<Item = (&'a str, u64)>,
    instance: &str,
) -> Call {
    let mut nested = Vec::new();
    for (name, at) in uses {
        let key = BASE64.encode(last_use_key(prefix, name));
        let value = BASE64.encode(format!(
            r#"{{"at":{at},"instance":{},"name":{}}}"#,
            json_string(instance),
            json_string(name)
        ));
        let bound = BASE64.encode(LastUse::later_than(at));
        let put = format!(r#"{{"request_put":{{"key":"{key}","value":"{value}"}}}}"#);
        nested.push(format!(
            r#"{{"request_txn":{{"compare":[{{"key":"{key}","target":"CREATE","result":"EQUAL","create_revision":"0"}}],"success":[{put}],"failure":[{{"request_txn":{{"compare":[{{"key":"{key}","target":"VALUE","result":"LESS","value":"{bound}"}}],"success":[{put}]}}}}]}}}}"#
        ));
    }
    Call {
        path: TXN,
        body: format!(r#"{{"success":[{}]}}"#, nested.join(",")),
        sent: Sent::Write,
    }
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_written_is_the_stored_form_of_a_last_use() {
        for name in ["ci", "with \"quotes\" and \\", "tab\there"] {
            let call = write_last_uses("sg", [(name, 120_000)].into_iter(), "gate-a");
            let body: serde_json::Value = serde_json::from_str(&call.body).unwrap();
            let put = &body["success"][0]["request_txn"]["success"][0]["request_put"];
            let value = BASE64.decode(put["value"].as_str().unwrap()).unwrap();
            let read: LastUse = serde_json::from_slice(&value).unwrap();
            assert_eq!(
                read,
                LastUse {
                    at: 120_000,
                    instance: "gate-a".into(),
                    name: name.into()
                }
            );
            let key = BASE64.decode(put["key"].as_str().unwrap()).unwrap();
            assert_eq!(key, format!("sg/last_used/{name}").into_bytes());
            assert!(value.starts_with(b"{\"at\":120000,"), "sorts by its minute");
        }
    }
}
