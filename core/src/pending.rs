//! The decision as a state machine, sans-IO: [`Gate::start`] runs every
//! check it can on its own and, where the shared state is needed, returns a
//! [`Pending`] that names the one step it needs next ([`Need`]). The host
//! performs that step however it can (a host call, a Durable Object round
//! trip, a network callout) and hands the result back
//! ([`Pending::resume`]), until the decision is [`Progress::Done`]. A failed
//! step is an answer too; what follows it is decided here.
//!
//! Everything about the sequence is this module's: the contract's order of
//! checks, the failed-credential guard, revocation, the bounded
//! compare-and-swap loop, failing closed or open, and the rate-limit headers
//! on every answer of the limited API. A host's driver is a loop with no
//! rule in it; [`Gate::decide`] is the one for a synchronous [`Kv`].

use crate::credential::SecretHash;
use crate::credential_set::Credential;
use crate::decision::{Decision, Request};
use crate::error::{ErrorCode, GateError};
use crate::gate::{Admission, Gate, Routed, Scoped};
use crate::guard;
use crate::kv::{Entry, Kv, KvError, Version};
use crate::limiter::{self, LIMITER_KEY, LimiterError, MAX_CAS_ATTEMPTS, Step, Verdict};

/// Where a decision is.
// A pending decision is moved from step to step, a few hundred bytes on the
// stack; boxing it would be an allocation per step.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Progress<'g, 'r> {
    /// Decided.
    Done(Decision<'g>),
    /// Needs a step of the shared state first.
    Pending(Pending<'g, 'r>),
}

/// The one step a pending decision needs, and the answers it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'p> {
    /// Read `key`: [`Answer::Value`].
    Read {
        /// The key.
        key: &'p str,
    },
    /// Write `value` to `key` if it is still at `version`:
    /// [`Answer::Written`], or [`Answer::Conflict`] when another writer got
    /// there first ([`Answer::Value`] with what is there now, where the
    /// shared state returns it in the same round trip, saves a read).
    Swap {
        /// The key.
        key: &'p str,
        /// The version the value was read at.
        version: Version,
        /// The value to write.
        value: &'p [u8],
    },
    /// Write `value` to `key` if it is absent: answered as a swap is. Apart
    /// from [`Need::Swap`] because some key-value services make a swap
    /// atomic but not a create.
    Create {
        /// The key.
        key: &'p str,
        /// The value to write.
        value: &'p [u8],
    },
    /// Was the credential with this SHA-256 revoked? [`Answer::Revoked`].
    Revoked {
        /// SHA-256 of the whole secret.
        hash: &'p SecretHash,
    },
}

impl Need<'_> {
    /// The key the step reads or writes (`None`: a revocation check).
    pub fn key(&self) -> Option<&str> {
        match self {
            Need::Read { key } | Need::Swap { key, .. } | Need::Create { key, .. } => Some(key),
            Need::Revoked { .. } => None,
        }
    }

    /// Performs the step on a synchronous [`Kv`].
    pub fn perform<'k>(&self, kv: &'k mut dyn Kv) -> Answer<'k> {
        match *self {
            Need::Read { key } => match kv.get(key) {
                Ok(entry) => Answer::Value(entry),
                Err(e) => Answer::Failed(e),
            },
            Need::Swap {
                key,
                version,
                value,
            } => Answer::written(kv.swap(key, version, value)),
            Need::Create { key, value } => Answer::written(kv.create(key, value)),
            Need::Revoked { hash } => match kv.revoked(hash) {
                Ok(revoked) => Answer::Revoked(revoked),
                Err(e) => Answer::Failed(e),
            },
        }
    }
}

/// What a step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The key's value and version; `None`: absent.
    Value(Option<Entry<'a>>),
    /// The write went through.
    Written,
    /// The write lost to another writer.
    Conflict,
    /// Whether the credential was revoked.
    Revoked(bool),
    /// The step could not be performed (the shared state failed, timed out,
    /// answered what this is not).
    Failed(KvError),
}

/// A decision waiting for one step. It borrows from its gate and its request.
#[derive(Debug)]
pub struct Pending<'g, 'r> {
    gate: &'g Gate,
    now: u64,
    phase: Phase<'g, 'r>,
}

#[derive(Debug)]
enum Phase<'g, 'r> {
    /// Reading the guard's bucket for `client`, before any lookup.
    Guard {
        routed: Routed<'r>,
        client: Box<Client>,
    },
    /// Asking whether the authenticated credential was revoked (only where
    /// the gate keeps a revocation list, a host that pays a round trip for
    /// it: boxed, so that every other phase moves fewer bytes).
    Revocation(Box<Revocation<'g, 'r>>),
    /// Spending one slot of the limit.
    Limiter {
        admission: Admission<'g>,
        cas: Cas<(Verdict, Option<u64>)>,
    },
    /// Counting an invalid credential against its client, then finishing.
    Failure(Failure<'g>),
    /// Reading the limiter's state for the `RateLimit` header of `decision`.
    Peek { decision: Decision<'g> },
}

/// What a revocation check holds on to.
#[derive(Debug)]
struct Revocation<'g, 'r> {
    routed: Routed<'r>,
    record: Credential<'g>,
    client: Option<Box<Client>>,
}

/// The client address the guard counts, and its bucket as last read.
/// Boxed where a phase holds it: the guard's phases are the rarer ones, and
/// a pending decision is moved at every step.
#[derive(Debug)]
struct Client {
    address: String,
    key: String,
    bucket: Option<(Vec<u8>, Version)>,
}

/// An answer the gate decided before the limiter, not yet finished.
#[derive(Debug)]
struct Denial<'g> {
    decision: Decision<'g>,
    limited: bool,
}

/// One compare-and-swap loop: read, compute, write, again on a conflict.
#[derive(Debug)]
struct Cas<T> {
    /// The write to make, once a read decided it: to replace `version`
    /// (`None`: create), and what holds if it wins.
    write: Option<(Option<Version>, Vec<u8>, T)>,
    /// Writes lost so far.
    lost: usize,
}

impl<T> Cas<T> {
    fn new() -> Self {
        Cas {
            write: None,
            lost: 0,
        }
    }

    fn need<'p>(&'p self, key: &'p str) -> Need<'p> {
        match &self.write {
            None => Need::Read { key },
            Some((Some(version), value, _)) => Need::Swap {
                key,
                version: *version,
                value,
            },
            Some((None, value, _)) => Need::Create { key, value },
        }
    }
}

/// What a compare-and-swap loop makes of an answer.
enum CasStep<'a, T> {
    /// Compute a write from this value (absent: `None`).
    Read(Option<&'a [u8]>, Option<Version>),
    /// The write lost and the current value is not known: read it.
    Reread,
    Won(T),
    /// Lost more often than allowed.
    Exhausted,
    Failed(KvError),
}

impl<T> Cas<T> {
    fn answer<'a>(&mut self, answer: &'a Answer<'_>) -> CasStep<'a, T> {
        let writing = self.write.is_some();
        match answer {
            Answer::Written if writing => match self.write.take() {
                Some((_, _, won)) => CasStep::Won(won),
                None => CasStep::Exhausted,
            },
            Answer::Conflict | Answer::Value(_) if writing => {
                self.write = None;
                self.lost += 1;
                if self.lost >= MAX_CAS_ATTEMPTS {
                    return CasStep::Exhausted;
                }
                match answer {
                    Answer::Value(entry) => Self::read(entry),
                    _ => CasStep::Reread,
                }
            }
            Answer::Value(entry) => Self::read(entry),
            Answer::Failed(e) => CasStep::Failed(e.clone()),
            other => CasStep::Failed(KvError(format!("unexpected answer {other:?}"))),
        }
    }

    fn read<'a>(entry: &'a Option<Entry<'_>>) -> CasStep<'a, T> {
        match entry {
            Some(e) => CasStep::Read(Some(&e.value), Some(e.version)),
            None => CasStep::Read(None, None),
        }
    }
}

impl Gate {
    /// Starts the decision on one request at `now_ms` (Unix ms): runs every
    /// check that needs no shared state, and says what it needs next.
    pub fn start<'g, 'r>(&'g self, req: &Request<'r>, now_ms: u64) -> Progress<'g, 'r> {
        self.start_with(req, now_ms, true)
    }

    /// The decision as far as `answers` take it: started at `now_ms` and
    /// resumed with each in turn. For hosts that cannot keep a [`Pending`]
    /// across callbacks (a proxy-wasm filter waiting on `proxy_http_call`):
    /// they keep the request and the answers so far, and replay. The replay
    /// takes the path the answers were given on: the gate's "full until"
    /// memo, which another request may have set meanwhile, does not answer
    /// for the limiter in it.
    pub fn replay<'g, 'r, 'a>(
        &'g self,
        req: &Request<'r>,
        now_ms: u64,
        answers: impl IntoIterator<Item = &'a Answer<'a>>,
    ) -> Progress<'g, 'r> {
        let mut progress = self.start_with(req, now_ms, false);
        for answer in answers {
            progress = match progress {
                Progress::Pending(pending) => pending.resume(answer.clone()),
                done => return done,
            };
        }
        progress
    }

    fn start_with<'g, 'r>(
        &'g self,
        req: &Request<'r>,
        now_ms: u64,
        memo: bool,
    ) -> Progress<'g, 'r> {
        let routed = match self.route(req) {
            Ok(r) => Routed { memo, ..r },
            Err((error, limited)) => return self.finish(error, None, limited, now_ms),
        };
        let client = req.client.filter(|_| self.guard().enabled());
        let pending = |phase| {
            Progress::Pending(Pending {
                gate: self,
                now: now_ms,
                phase,
            })
        };
        match client {
            Some(source) if !routed.authorization.is_empty() => {
                let address = guard::client_of(source);
                if let Some(seconds) = self.common.held.seconds(address, now_ms).filter(|_| memo) {
                    return Progress::Done(self.guard_refusal(seconds, routed.limited));
                }
                pending(Phase::Guard {
                    routed,
                    client: Box::new(Client {
                        address: address.to_owned(),
                        key: guard::bucket_key(address),
                        bucket: None,
                    }),
                })
            }
            _ => self.authenticate_then(routed, None, now_ms),
        }
    }

    /// Decides one request over a synchronous [`Kv`]: the driver loop for
    /// hosts whose shared state answers at once (Envoy's shared data, Spin's
    /// key-value store, tests and benches).
    pub fn decide<'g>(&'g self, req: &Request<'_>, now_ms: u64, kv: &mut dyn Kv) -> Decision<'g> {
        let mut progress = self.start(req, now_ms);
        loop {
            let pending = match progress {
                Progress::Done(decision) => return decision,
                Progress::Pending(pending) => pending,
            };
            let answer = pending.need().perform(kv);
            progress = pending.resume(answer);
        }
    }

    /// The guard has spoken (`held`: seconds it holds the client): the
    /// credential, then revocation where the gate keeps a list.
    fn authenticate_then<'g, 'r>(
        &'g self,
        routed: Routed<'r>,
        client: Option<(Box<Client>, Option<u64>)>,
        now: u64,
    ) -> Progress<'g, 'r> {
        let (client, held) = client.map_or((None, None), |(c, held)| (Some(c), held));
        if let Some(seconds) = held {
            return Progress::Done(self.guard_refusal(seconds, routed.limited));
        }
        let record = match self.authenticate(routed.authorization, now) {
            Ok(record) => record,
            Err(error) => return self.refuse_credential(error, &routed, client, now),
        };
        if self.revocation_list() {
            return Progress::Pending(Pending {
                gate: self,
                now,
                phase: Phase::Revocation(Box::new(Revocation {
                    routed,
                    record,
                    client,
                })),
            });
        }
        self.admit(&routed, record, now)
    }

    /// A credential that did not authenticate: counted against its client
    /// when the guard watches it.
    fn refuse_credential<'g, 'r>(
        &'g self,
        error: GateError,
        routed: &Routed<'r>,
        client: Option<Box<Client>>,
        now: u64,
    ) -> Progress<'g, 'r> {
        match client {
            Some(mut client) if error.code == ErrorCode::InvalidCredentials => {
                let denial = Denial {
                    decision: self.deny(error, None, routed.limited),
                    limited: routed.limited,
                };
                // The bucket read for the guard's check is the first read of
                // the update: no second round trip.
                let bucket = client.bucket.take();
                let value = bucket.as_ref().map(|(v, _)| v.as_slice());
                let version = bucket.as_ref().map(|(_, v)| *v);
                Failure {
                    denial,
                    client,
                    cas: Cas::new(),
                }
                .count(self, now, value, version)
            }
            _ => self.finish(error, None, routed.limited, now),
        }
    }

    /// Scope and level, then the limiter for an admission.
    fn admit<'g, 'r>(
        &'g self,
        routed: &Routed<'r>,
        record: Credential<'g>,
        now: u64,
    ) -> Progress<'g, 'r> {
        match self.scope(routed, record) {
            Err(error) => self.finish(error, Some(record.name), routed.limited, now),
            Ok(Scoped::Me(decision)) => Progress::Done(decision),
            Ok(Scoped::Sessions(admission)) => {
                match self.common.full_until.verdict(now).filter(|_| routed.memo) {
                    Some(full) => Progress::Done(self.complete(admission, Ok(full))),
                    None => Progress::Pending(Pending {
                        gate: self,
                        now,
                        phase: Phase::Limiter {
                            admission,
                            cas: Cas::new(),
                        },
                    }),
                }
            }
        }
    }

    /// An answer decided before the limiter: under the limited API it
    /// carries the limit's state, read without spending.
    fn finish<'g, 'r>(
        &'g self,
        error: GateError,
        credential: Option<&'g str>,
        limited: bool,
        now: u64,
    ) -> Progress<'g, 'r> {
        let decision = self.deny(error, credential, limited);
        self.with_limit_state(decision, limited, now)
    }

    fn with_limit_state<'g, 'r>(
        &'g self,
        mut decision: Decision<'g>,
        limited: bool,
        now: u64,
    ) -> Progress<'g, 'r> {
        if !limited {
            return Progress::Done(decision);
        }
        if let Some(full) = self.common.full_until.verdict(now) {
            self.add_limit_state(&mut decision, &full);
            return Progress::Done(decision);
        }
        Progress::Pending(Pending {
            gate: self,
            now,
            phase: Phase::Peek { decision },
        })
    }
}

impl<'a> Answer<'a> {
    /// The answer to a swap or a create from a [`Kv`]'s result.
    /// The same answer, owning what it holds (to keep it for a replay).
    pub fn into_owned(self) -> Answer<'static> {
        match self {
            Answer::Value(entry) => Answer::Value(entry.map(Entry::into_owned)),
            Answer::Written => Answer::Written,
            Answer::Conflict => Answer::Conflict,
            Answer::Revoked(revoked) => Answer::Revoked(revoked),
            Answer::Failed(e) => Answer::Failed(e),
        }
    }

    /// A write's answer from a key-value call's result (`false`: lost to another writer).
    pub fn written(result: Result<bool, KvError>) -> Answer<'a> {
        match result {
            Ok(true) => Answer::Written,
            Ok(false) => Answer::Conflict,
            Err(e) => Answer::Failed(e),
        }
    }
}

impl<'g, 'r> Pending<'g, 'r> {
    /// The step this decision needs next.
    pub fn need(&self) -> Need<'_> {
        match &self.phase {
            Phase::Guard { client, .. } => Need::Read { key: &client.key },
            Phase::Revocation(revocation) => Need::Revoked {
                hash: revocation.record.hash,
            },
            Phase::Limiter { cas, .. } => cas.need(LIMITER_KEY),
            Phase::Failure(Failure { client, cas, .. }) => cas.need(&client.key),
            Phase::Peek { .. } => Need::Read { key: LIMITER_KEY },
        }
    }

    /// Hands the result of [`Pending::need`]'s step back.
    pub fn resume(self, answer: Answer<'_>) -> Progress<'g, 'r> {
        let Pending { gate, now, phase } = self;
        match phase {
            Phase::Guard { routed, mut client } => {
                let held = match &answer {
                    Answer::Value(entry) => {
                        let bytes = entry.as_ref().map(|e| e.value.as_ref());
                        client.bucket = entry.as_ref().map(|e| (e.value.to_vec(), e.version));
                        // Remembered in a replay too: the bucket as read is a
                        // fact wherever the decision is taken (a Worker
                        // replays what its object decided).
                        let until = guard::held_until(bytes, &client.address, now, gate.guard());
                        if let Some(until) = until {
                            gate.common.held.remember(&client.address, until);
                        }
                        guard::held(bytes, &client.address, now, gate.guard())
                    }
                    // The guard is a brake, the limiter is the lock: a
                    // bucket that cannot be read holds nobody.
                    _ => None,
                };
                gate.authenticate_then(routed, Some((client, held)), now)
            }
            Phase::Revocation(revocation) => {
                let Revocation {
                    routed,
                    record,
                    client,
                } = *revocation;
                match answer {
                    Answer::Revoked(false) => gate.admit(&routed, record, now),
                    Answer::Revoked(true) => {
                        gate.refuse_credential(Gate::invalid_credentials(), &routed, client, now)
                    }
                    // Unknown: admitting could let a revoked credential through.
                    _ if gate.fail_open() => gate.admit(&routed, record, now),
                    _ => Progress::Done(gate.limiter_unavailable(Some(record.name))),
                }
            }
            Phase::Limiter { admission, mut cas } => match cas.answer(&answer) {
                CasStep::Won((verdict, full_until)) => {
                    gate.common.full_until.remember(full_until);
                    Progress::Done(gate.complete(admission, Ok(verdict)))
                }
                CasStep::Reread => Progress::Pending(Pending {
                    gate,
                    now,
                    phase: Phase::Limiter { admission, cas },
                }),
                CasStep::Read(bytes, version) => match limiter::step(bytes, now, gate.limit()) {
                    Ok((Step::Full(verdict), full_until)) => {
                        gate.common.full_until.remember(full_until);
                        Progress::Done(gate.complete(admission, Ok(verdict)))
                    }
                    Ok((Step::Admit { next, verdict }, full_until)) => {
                        cas.write = Some((version, next, (verdict, full_until)));
                        Progress::Pending(Pending {
                            gate,
                            now,
                            phase: Phase::Limiter { admission, cas },
                        })
                    }
                    Err(e) => Progress::Done(gate.complete(admission, Err(e))),
                },
                CasStep::Exhausted => {
                    Progress::Done(gate.complete(admission, Err(LimiterError::Contended)))
                }
                CasStep::Failed(e) => {
                    Progress::Done(gate.complete(admission, Err(LimiterError::Store(e))))
                }
            },
            Phase::Failure(mut failure) => match failure.cas.answer(&answer) {
                CasStep::Reread => failure.wait(gate, now),
                CasStep::Read(bytes, version) => failure.count(gate, now, bytes, version),
                // Counted, or not countable: the guard is a brake, never a
                // reason to fail the answer.
                CasStep::Won(()) | CasStep::Exhausted | CasStep::Failed(_) => {
                    let Denial { decision, limited } = failure.denial;
                    gate.with_limit_state(decision, limited, now)
                }
            },
            Phase::Peek { mut decision } => {
                if let Answer::Value(entry) = &answer {
                    let bytes = entry.as_ref().map(|e| e.value.as_ref());
                    if let Ok((state, full_until)) = limiter::peek(bytes, now, gate.limit()) {
                        gate.common.full_until.remember(full_until);
                        gate.add_limit_state(&mut decision, &state);
                    }
                }
                Progress::Done(decision)
            }
        }
    }
}

/// Counting an invalid credential against its client.
#[derive(Debug)]
struct Failure<'g> {
    denial: Denial<'g>,
    client: Box<Client>,
    cas: Cas<()>,
}

impl<'g> Failure<'g> {
    /// The guard's update from the bucket as read (`version`: `None` when
    /// absent): the write to make, or the answer if there is none.
    fn count<'r>(
        self,
        gate: &'g Gate,
        now: u64,
        bytes: Option<&[u8]>,
        version: Option<Version>,
    ) -> Progress<'g, 'r> {
        // Failures counted since this request's guard check may have used up
        // the client's budget: then this one is over it, and told so.
        if let Some(seconds) = guard::held(bytes, &self.client.address, now, gate.guard()) {
            return Progress::Done(gate.guard_refusal(seconds, self.denial.limited));
        }
        match guard::with_failure(bytes, &self.client.address, now, gate.guard()) {
            Some(next) => {
                let mut failure = self;
                failure.cas.write = Some((version, next, ()));
                failure.wait(gate, now)
            }
            None => gate.with_limit_state(self.denial.decision, self.denial.limited, now),
        }
    }

    /// Waits for the next step of the count.
    fn wait<'r>(self, gate: &'g Gate, now: u64) -> Progress<'g, 'r> {
        Progress::Pending(Pending {
            gate,
            now,
            phase: Phase::Failure(self),
        })
    }
}
