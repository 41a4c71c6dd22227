//! The Durable Object's job, without the runtime: one global sliding-log
//! limiter (core's, on an in-memory CAS store that only this single-threaded
//! object touches) and the set of revoked credential hashes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sessiongate_core::guard::{self, GuardConfig};
use sessiongate_core::limiter::{self, Limit, MemoryStore, Verdict};

/// What the Worker asks the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Spend one slot for `hash`'s request, unless `hash` is revoked.
    Acquire {
        hash: String,
        requests: u32,
        window_ms: u64,
    },
    /// Is `hash` revoked? With `state`, also the limiter's state, unspent.
    Check {
        hash: Option<String>,
        state: Option<(u32, u64)>,
    },
    /// Revoke a credential at once, everywhere.
    Revoke { hash: String },
    /// Is this client address held by the failed-credential guard?
    GuardCheck { client: String, guard: GuardConfig },
    /// Count one invalid credential from this client address.
    GuardFail { client: String, guard: GuardConfig },
}

/// What the object answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Answer {
    pub revoked: bool,
    pub verdict: Option<Verdict>,
    /// Seconds the guard still holds the client, if it does.
    #[serde(default)]
    pub blocked: Option<u64>,
}

/// The object's whole state.
#[derive(Debug, Default, Clone)]
pub struct LimiterObject {
    pub limiter: MemoryStore,
    pub revoked: BTreeSet<String>,
}

/// Whether a call changed what must be persisted. (The guard's counts are
/// not: they are a brake, and an evicted object may forget them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dirty {
    Nothing,
    Limiter,
    Revoked,
}

impl LimiterObject {
    /// Applies one call at `now_ms` (the object's clock: one clock for the
    /// whole world, so every window is exact).
    pub fn apply(&mut self, call: &Call, now_ms: u64) -> Result<(Answer, Dirty), String> {
        match call {
            Call::Acquire {
                hash,
                requests,
                window_ms,
            } => {
                let limit = Limit {
                    requests: *requests,
                    window_ms: *window_ms,
                };
                if self.revoked.contains(hash) {
                    let state = limiter::peek(&mut self.limiter, now_ms, limit)
                        .map_err(|e| e.describe())?;
                    return Ok((
                        Answer {
                            revoked: true,
                            verdict: Some(state),
                            blocked: None,
                        },
                        Dirty::Nothing,
                    ));
                }
                let before = self.limiter.version(limiter::LIMITER_KEY);
                let verdict =
                    limiter::acquire(&mut self.limiter, now_ms, limit).map_err(|e| e.describe())?;
                let dirty = if self.limiter.version(limiter::LIMITER_KEY) != before {
                    Dirty::Limiter
                } else {
                    Dirty::Nothing
                };
                Ok((
                    Answer {
                        revoked: false,
                        verdict: Some(verdict),
                        blocked: None,
                    },
                    dirty,
                ))
            }
            Call::Check { hash, state } => {
                let revoked = hash.as_ref().is_some_and(|h| self.revoked.contains(h));
                let verdict = match state {
                    Some((requests, window_ms)) => Some(
                        limiter::peek(
                            &mut self.limiter,
                            now_ms,
                            Limit {
                                requests: *requests,
                                window_ms: *window_ms,
                            },
                        )
                        .map_err(|e| e.describe())?,
                    ),
                    None => None,
                };
                Ok((
                    Answer {
                        revoked,
                        verdict,
                        blocked: None,
                    },
                    Dirty::Nothing,
                ))
            }
            Call::Revoke { hash } => {
                let added = self.revoked.insert(hash.clone());
                let answer = Answer {
                    revoked: true,
                    ..Answer::default()
                };
                Ok((
                    answer,
                    if added {
                        Dirty::Revoked
                    } else {
                        Dirty::Nothing
                    },
                ))
            }
            Call::GuardCheck { client, guard: cfg } => {
                let blocked = guard::blocked(&mut self.limiter, client, now_ms, cfg);
                let answer = Answer {
                    blocked,
                    ..Answer::default()
                };
                Ok((answer, Dirty::Nothing))
            }
            Call::GuardFail { client, guard: cfg } => {
                guard::record_failure(&mut self.limiter, client, now_ms, cfg);
                Ok((Answer::default(), Dirty::Nothing))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(o: &mut LimiterObject, hash: &str, now: u64) -> Answer {
        o.apply(
            &Call::Acquire {
                hash: hash.into(),
                requests: 2,
                window_ms: 1_000,
            },
            now,
        )
        .unwrap()
        .0
    }

    #[test]
    fn limits_globally_and_exactly() {
        let mut o = LimiterObject::default();
        assert!(acquire(&mut o, "a", 0).verdict.unwrap().admitted);
        assert!(acquire(&mut o, "b", 1).verdict.unwrap().admitted);
        let third = acquire(&mut o, "a", 2).verdict.unwrap();
        assert!(!third.admitted);
        assert_eq!(third.reset_seconds, 1);
        assert!(acquire(&mut o, "a", 1_000).verdict.unwrap().admitted);
    }

    #[test]
    fn revoked_hashes_spend_nothing() {
        let mut o = LimiterObject::default();
        let (_, dirty) = o.apply(&Call::Revoke { hash: "a".into() }, 0).unwrap();
        assert_eq!(dirty, Dirty::Revoked);
        let answer = acquire(&mut o, "a", 0);
        assert!(answer.revoked);
        assert_eq!(answer.verdict.unwrap().remaining, 2);
        let check = o
            .apply(
                &Call::Check {
                    hash: Some("a".into()),
                    state: None,
                },
                0,
            )
            .unwrap()
            .0;
        assert!(check.revoked);
        assert!(acquire(&mut o, "b", 0).verdict.unwrap().admitted);
    }

    #[test]
    fn the_guard_holds_a_client_after_its_failures() {
        let mut o = LimiterObject::default();
        let cfg = GuardConfig {
            failures: 2,
            window_seconds: 60,
        };
        let check = |o: &mut LimiterObject| {
            o.apply(
                &Call::GuardCheck {
                    client: "203.0.113.7".into(),
                    guard: cfg,
                },
                10,
            )
            .unwrap()
            .0
            .blocked
        };
        assert_eq!(check(&mut o), None);
        for _ in 0..2 {
            o.apply(
                &Call::GuardFail {
                    client: "203.0.113.7".into(),
                    guard: cfg,
                },
                0,
            )
            .unwrap();
        }
        assert_eq!(check(&mut o), Some(60));
    }

    #[test]
    fn wire_format() {
        let call: Call = serde_json::from_str(r#"{"op":"revoke","hash":"x"}"#).unwrap();
        assert_eq!(call, Call::Revoke { hash: "x".into() });
        let json = serde_json::to_string(&Call::Check {
            hash: None,
            state: Some((20, 60_000)),
        })
        .unwrap();
        assert_eq!(json, r#"{"op":"check","hash":null,"state":[20,60000]}"#);
    }
}
