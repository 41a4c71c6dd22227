//! The Durable Object's job, without the runtime: the gate's shared state
//! (an in-memory [`MemoryKv`] that only this single-threaded object
//! touches, persisted key by key) and the set of revoked credential hashes.
//! The Worker's driver carries each step a decision needs here as one
//! [`Call`] and hands what the object [`ObjectReply`] back to the decision: no
//! contract rule lives on either side of the wire.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sessiongate_core::{Answer, Entry, Kv, KvError, MemoryKv, Need, Version, hash_hex};

/// One step, on the wire: a [`Need`], or the admin's revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    Read {
        key: String,
    },
    Swap {
        key: String,
        version: Version,
        #[serde(with = "b64")]
        value: Vec<u8>,
    },
    Create {
        key: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
    },
    /// Is the credential with this SHA-256 (hex) revoked?
    Revoked {
        hash: String,
    },
    /// Revoke a credential at once, everywhere.
    Revoke {
        hash: String,
    },
}

impl Call {
    pub fn for_need(need: Need<'_>) -> Call {
        match need {
            Need::Read { key } => Call::Read { key: key.into() },
            Need::Swap {
                key,
                version,
                value,
            } => Call::Swap {
                key: key.into(),
                version,
                value: value.to_vec(),
            },
            Need::Create { key, value } => Call::Create {
                key: key.into(),
                value: value.to_vec(),
            },
            Need::Revoked { hash } => Call::Revoked {
                hash: hash_hex(hash),
            },
        }
    }

    /// The key this call reads or writes, which the object loads from its
    /// storage before the first call on it.
    pub fn key(&self) -> Option<&str> {
        match self {
            Call::Read { key } | Call::Swap { key, .. } | Call::Create { key, .. } => Some(key),
            Call::Revoked { .. } | Call::Revoke { .. } => None,
        }
    }
}

/// What the object answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "said", rename_all = "snake_case")]
pub enum ObjectReply {
    /// The key's value and version; also the answer to a write that lost,
    /// so the next attempt needs no read.
    Value {
        #[serde(with = "b64_option")]
        value: Option<Vec<u8>>,
        version: Version,
    },
    Written,
    Revoked {
        revoked: bool,
    },
}

impl ObjectReply {
    pub fn answer(&self) -> Answer<'_> {
        match self {
            ObjectReply::Value {
                value: Some(value),
                version,
            } => Answer::Value(Some(Entry::borrowed(value, *version))),
            ObjectReply::Value { value: None, .. } => Answer::Value(None),
            ObjectReply::Written => Answer::Written,
            ObjectReply::Revoked { revoked } => Answer::Revoked(*revoked),
        }
    }
}

/// The object's whole state.
#[derive(Debug, Clone)]
pub struct SharedObject {
    pub kv: MemoryKv,
    pub revoked: BTreeSet<String>,
}

/// What a call changed, for the object to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    Nothing,
    Key(String),
    Revoked,
}

impl SharedObject {
    /// A fresh object whose versions start at `first_version`: above every
    /// version an earlier instance handed out (the runtime passes its clock
    /// in microseconds), so a swap read before an eviction cannot match.
    pub fn new(first_version: Version) -> SharedObject {
        SharedObject {
            kv: MemoryKv::starting_at(first_version),
            revoked: BTreeSet::new(),
        }
    }

    pub fn apply(&mut self, call: &Call) -> Result<(ObjectReply, Changed), KvError> {
        let current = |kv: &mut MemoryKv, key: &str| -> Result<ObjectReply, KvError> {
            Ok(match kv.get(key)? {
                Some(e) => ObjectReply::Value {
                    value: Some(e.value.into_owned()),
                    version: e.version,
                },
                None => ObjectReply::Value {
                    value: None,
                    version: 0,
                },
            })
        };
        let wrote = |written: bool,
                     kv: &mut MemoryKv,
                     key: &str|
         -> Result<(ObjectReply, Changed), KvError> {
            if written {
                Ok((ObjectReply::Written, Changed::Key(key.to_owned())))
            } else {
                Ok((current(kv, key)?, Changed::Nothing))
            }
        };
        match call {
            Call::Read { key } => Ok((current(&mut self.kv, key)?, Changed::Nothing)),
            Call::Swap {
                key,
                version,
                value,
            } => {
                let written = self.kv.swap(key, *version, value)?;
                wrote(written, &mut self.kv, key)
            }
            Call::Create { key, value } => {
                let written = self.kv.create(key, value)?;
                wrote(written, &mut self.kv, key)
            }
            Call::Revoked { hash } => Ok((
                ObjectReply::Revoked {
                    revoked: self.revoked.contains(hash),
                },
                Changed::Nothing,
            )),
            Call::Revoke { hash } => {
                let added = self.revoked.insert(hash.clone());
                let dirty = if added {
                    Changed::Revoked
                } else {
                    Changed::Nothing
                };
                Ok((ObjectReply::Revoked { revoked: true }, dirty))
            }
        }
    }
}

mod b64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_option {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::{
        Backend, Decision, ErrorCode, Gate, GateConfig, LimitConfig, Outcome, Progress, Request,
    };

    const TOKEN: &str = "fus_0123456789012345678901234567890123456789";

    fn gate(requests: u32) -> Gate {
        Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
                .unwrap()
                .into(),
            limit: LimitConfig {
                requests,
                window_seconds: 1,
            },
            backend: Backend::Stub,
            ..Default::default()
        })
        .unwrap()
        .with_revocation_list()
    }

    /// The Worker's driver, with the wire in between (every call and answer
    /// goes through JSON, as between the Worker and the object).
    fn decide<'g>(gate: &'g Gate, object: &mut SharedObject, auth: &str, now: u64) -> Decision<'g> {
        let values = [auth.as_bytes()];
        let request = Request {
            method: "GET",
            target: "/v1/external/sessions/acme/s",
            authorization: &values,
            client: Some("203.0.113.7"),
        };
        let mut progress = gate.start(&request, now);
        loop {
            let pending = match progress {
                Progress::Done(d) => return d,
                Progress::Pending(p) => p,
            };
            let call = Call::for_need(pending.need());
            let call: Call = serde_json::from_str(&serde_json::to_string(&call).unwrap()).unwrap();
            let (said, _) = object.apply(&call).unwrap();
            let said: ObjectReply =
                serde_json::from_str(&serde_json::to_string(&said).unwrap()).unwrap();
            progress = pending.resume(said.answer());
        }
    }

    #[test]
    fn limits_globally_and_exactly() {
        let (a, b) = (gate(2), gate(2));
        let mut o = SharedObject::new(1);
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(decide(&a, &mut o, &bearer, 0).outcome, Outcome::Allowed);
        assert_eq!(decide(&b, &mut o, &bearer, 1).outcome, Outcome::Allowed);
        let third = decide(&a, &mut o, &bearer, 2);
        assert_eq!(third.outcome, Outcome::Denied(ErrorCode::RateLimited));
        assert_eq!(decide(&b, &mut o, &bearer, 1_000).outcome, Outcome::Allowed);
    }

    #[test]
    fn revoked_hashes_spend_nothing() {
        let g = gate(2);
        let mut o = SharedObject::new(1);
        let hash = hash_hex(&sessiongate_core::hash_secret(TOKEN.as_bytes()));
        let (_, dirty) = o.apply(&Call::Revoke { hash: hash.clone() }).unwrap();
        assert_eq!(dirty, Changed::Revoked);
        let d = decide(&g, &mut o, &format!("Bearer {TOKEN}"), 0);
        assert_eq!(d.outcome, Outcome::Denied(ErrorCode::InvalidCredentials));
        assert_eq!(o.kv.version(sessiongate_core::LIMITER_KEY), None);
        let (said, _) = o.apply(&Call::Revoked { hash }).unwrap();
        assert_eq!(said, ObjectReply::Revoked { revoked: true });
    }

    #[test]
    fn the_guard_holds_a_client_after_its_failures() {
        let g = gate(20);
        let mut o = SharedObject::new(1);
        let wrong = "Bearer fus_0000000000000000000000000000000000000000";
        for _ in 0..10 {
            let d = decide(&g, &mut o, wrong, 10);
            assert_eq!(d.outcome, Outcome::Denied(ErrorCode::InvalidCredentials));
        }
        let held = decide(&g, &mut o, &format!("Bearer {TOKEN}"), 10);
        assert_eq!(held.outcome, Outcome::Denied(ErrorCode::RateLimited));
    }

    #[test]
    fn a_lost_write_answers_with_what_is_there() {
        let mut o = SharedObject::new(7);
        let create = Call::Create {
            key: "k".into(),
            value: b"a".to_vec(),
        };
        assert_eq!(
            o.apply(&create).unwrap(),
            (ObjectReply::Written, Changed::Key("k".into()))
        );
        let (said, dirty) = o.apply(&create).unwrap();
        assert_eq!(dirty, Changed::Nothing);
        assert_eq!(
            said,
            ObjectReply::Value {
                value: Some(b"a".to_vec()),
                version: 7
            }
        );
        let stale = Call::Swap {
            key: "k".into(),
            version: 6,
            value: b"b".to_vec(),
        };
        assert!(matches!(
            o.apply(&stale).unwrap().0,
            ObjectReply::Value { .. }
        ));
    }

    #[test]
    fn wire_format() {
        let call: Call = serde_json::from_str(r#"{"op":"revoke","hash":"x"}"#).unwrap();
        assert_eq!(call, Call::Revoke { hash: "x".into() });
        let json = serde_json::to_string(&Call::Swap {
            key: "k".into(),
            version: 3,
            value: b"hi".to_vec(),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"op":"swap","key":"k","version":3,"value":"aGk="}"#
        );
        let json = serde_json::to_string(&ObjectReply::Value {
            value: None,
            version: 0,
        })
        .unwrap();
        assert_eq!(json, r#"{"said":"value","value":null,"version":0}"#);
    }
}
