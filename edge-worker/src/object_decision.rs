//! A decision's shared-state steps run by the object in one call: the
//! Worker sends the request once ([`DecideCall`]); the object looks up what
//! it presents, drives core's decision over its own state step by step
//! ([`ObjectDecision`]) and answers with what it found and every answer it
//! gave ([`DecideReply`]); the Worker replays the decision on those answers
//! (`Gate::replay`), so both sides decide the same thing and neither holds a
//! rule. One round trip to the object, wherever the Worker runs, instead of
//! one a step.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sessiongate_core::{
    Answer, CredentialRecord, CredentialSet, Gate, KvError, Need, Progress, Request, SecretHash,
};

use crate::shared_object::{Call, Changed, ObjectReply, SharedObject};

/// The Worker's one call: the request as the gate reads it, when it was
/// decided, and the digests it presents that the object's store may hold
/// (hex; the Worker's digest filter has ruled the others out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideCall {
    pub method: String,
    pub target: String,
    /// Each `Authorization` value, base64 (they are bytes).
    pub authorization: Vec<String>,
    pub client: Option<String>,
    /// Unix ms: the Worker's clock decides, as for every step before.
    pub now: u64,
    pub lookup: Vec<String>,
}

impl DecideCall {
    pub fn new(request: &Request<'_>, now: u64, lookup: Vec<String>) -> DecideCall {
        let b64 = base64::engine::general_purpose::STANDARD;
        DecideCall {
            method: request.method.to_owned(),
            target: request.target.to_owned(),
            authorization: request
                .authorization
                .iter()
                .map(|v| b64.encode(v))
                .collect(),
            client: request.client.map(str::to_owned),
            now,
            lookup,
        }
    }

    /// The `Authorization` values as bytes (`None`: not base64).
    pub fn authorization(&self) -> Option<Vec<Vec<u8>>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.authorization
            .iter()
            .map(|v| b64.decode(v).ok())
            .collect()
    }
}

/// The object's answer: the records it found for [`DecideCall::lookup`],
/// its answers to the decision's steps, in order, and the limiter's log as
/// the decision left it (a `Value`; `None` before the first admission), for
/// the Worker's copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideReply {
    pub records: Vec<CredentialRecord>,
    pub answers: Vec<ObjectReply>,
    #[serde(default)]
    pub log: Option<ObjectReply>,
}

/// The gate a request is decided with on both sides: the configured one
/// (`None`), or, when the request presents digests the configuration does
/// not hold, the configured one over the records found for them (none
/// found: none).
pub fn deciding_gate(
    gate: &Gate,
    authorization: &[&[u8]],
    records: Vec<CredentialRecord>,
) -> Option<Gate> {
    if gate.missing_digests(authorization).is_empty() {
        return None;
    }
    Some(gate.with_credentials(CredentialSet::new(records).unwrap_or_default()))
}

/// A decision the object takes through its steps on its own state.
/// Sans-IO over the object's storage: [`ObjectDecision::key`] names the key
/// the next step touches, for the object to load it first; then
/// [`ObjectDecision::step`] takes that step and says what it changed, to
/// persist before the next.
pub struct ObjectDecision<'g, 'r> {
    progress: Option<Progress<'g, 'r>>,
    /// Digests just read in the store: not revoked (the store is the truth
    /// for them; the revocation list covers the configuration's).
    fresh: Vec<SecretHash>,
    answers: Vec<ObjectReply>,
}

impl<'g, 'r> ObjectDecision<'g, 'r> {
    /// The decision on `request` at `now`, as a replay takes it: the
    /// Worker's own memos answered before it called.
    pub fn new(gate: &'g Gate, request: &Request<'r>, now: u64, fresh: Vec<SecretHash>) -> Self {
        ObjectDecision {
            progress: Some(gate.replay(request, now, std::iter::empty())),
            fresh,
            answers: Vec::new(),
        }
    }

    /// Whether it has no step left.
    pub fn done(&self) -> bool {
        !matches!(self.progress, Some(Progress::Pending(_)))
    }

    /// The key the next step reads or writes, if any.
    pub fn key(&self) -> Option<String> {
        match &self.progress {
            Some(Progress::Pending(pending)) => pending.need().key().map(str::to_owned),
            _ => None,
        }
    }

    /// Takes the next step on `object` (its key loaded): what it changed.
    pub fn step(&mut self, object: &mut SharedObject) -> Result<Changed, KvError> {
        let Some(Progress::Pending(pending)) = self.progress.take() else {
            return Ok(Changed::Nothing);
        };
        let (reply, changed) = match pending.need() {
            Need::Revoked { hash } if self.fresh.contains(hash) => {
                (ObjectReply::Revoked { revoked: false }, Changed::Nothing)
            }
            need => object.apply(&Call::for_need(need))?,
        };
        self.progress = Some(pending.resume(reply.answer()));
        self.answers.push(reply);
        Ok(changed)
    }

    /// The credential it admitted, once done (what the object notes as its
    /// last use).
    pub fn admitted(&self) -> Option<&str> {
        match &self.progress {
            Some(Progress::Done(decision)) => decision.admitted(),
            _ => None,
        }
    }

    /// Every answer it gave, in order.
    pub fn answers(self) -> Vec<ObjectReply> {
        self.answers
    }
}

/// The Worker's side: the decision replayed on the object's answers. A
/// replay the answers do not finish (an object of another build) fails
/// its next step, as an unreachable object does.
pub fn replay<'g>(
    gate: &'g Gate,
    request: &Request<'_>,
    now: u64,
    answers: &[ObjectReply],
) -> sessiongate_core::Decision<'g> {
    let answers: Vec<Answer<'_>> = answers.iter().map(ObjectReply::answer).collect();
    let mut progress = gate.replay(request, now, answers.iter());
    loop {
        match progress {
            Progress::Done(decision) => return decision,
            Progress::Pending(pending) => {
                let failed = KvError("the object's answers did not finish the decision".into());
                progress = pending.resume(Answer::Failed(failed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::{
        Backend, ErrorCode, GateConfig, LIMITER_KEY, LimitConfig, Outcome, fixtures,
    };

    const TOKEN: &str = "fus_0123456789012345678901234567890123456789";
    const STORED: &str = "fus_9999999999999999999999999999999999999998";

    fn gate(requests: u32) -> Gate {
        Gate::new(GateConfig {
            credentials: fixtures::token_set(TOKEN, "t").unwrap().into(),
            limit: LimitConfig {
                requests,
                window_seconds: 60,
            },
            backend: Backend::Stub,
            ..Default::default()
        })
        .unwrap()
        .with_revocation_list()
    }

    /// The object's side over the wire and back, as the Durable Object runs
    /// it (its store holding `stored`), and the Worker's replay: the
    /// decision and the steps the object took.
    fn one_call(
        gate: &Gate,
        object: &mut SharedObject,
        stored: &[CredentialRecord],
        auth: &str,
        now: u64,
    ) -> (Outcome, u16, usize) {
        let values = [auth.as_bytes()];
        let request = Request {
            method: "GET",
            target: "/v1/external/sessions/acme/s",
            authorization: &values,
            client: Some("203.0.113.7"),
        };
        let lookup = gate
            .missing_digests(&values)
            .iter()
            .map(sessiongate_core::hash_hex)
            .collect();
        let call = DecideCall::new(&request, now, lookup);
        let call: DecideCall =
            serde_json::from_str(&serde_json::to_string(&call).unwrap()).unwrap();
        // The object.
        let auth = call.authorization().unwrap();
        let auth: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
        let theirs = Request {
            method: &call.method,
            target: &call.target,
            authorization: &auth,
            client: call.client.as_deref(),
        };
        let records: Vec<CredentialRecord> = stored
            .iter()
            .filter(|r| call.lookup.contains(&r.hash))
            .cloned()
            .collect();
        let fresh = records
            .iter()
            .filter_map(|r| sessiongate_core::parse_hash_hex(&r.hash))
            .collect();
        let deciding = deciding_gate(gate, &auth, records.clone());
        let deciding = deciding.as_ref().unwrap_or(gate);
        let mut decision = ObjectDecision::new(deciding, &theirs, call.now, fresh);
        let mut steps = 0;
        while !decision.done() {
            decision.step(object).unwrap();
            steps += 1;
        }
        let reply = DecideReply {
            records,
            answers: decision.answers(),
            log: None,
        };
        let reply: DecideReply =
            serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        // The Worker.
        let deciding = deciding_gate(gate, &values, reply.records);
        let decision = replay(
            deciding.as_ref().unwrap_or(gate),
            &request,
            now,
            &reply.answers,
        );
        let status = match &decision.action {
            sessiongate_core::Action::Reply(r) => r.status,
            sessiongate_core::Action::Forward(_) => 200,
        };
        (decision.outcome, status, steps)
    }

    #[test]
    fn one_call_decides_as_the_steps_did_and_limits_exactly() {
        let g = gate(2);
        let mut o = SharedObject::new(1);
        let bearer = format!("Bearer {TOKEN}");
        // Guard, revocation, the log, the write: four steps, one call.
        let (outcome, status, steps) = one_call(&g, &mut o, &[], &bearer, 1_000);
        assert_eq!((outcome, status, steps), (Outcome::Allowed, 200, 4));
        assert_eq!(
            one_call(&g, &mut o, &[], &bearer, 1_001).0,
            Outcome::Allowed
        );
        let third = one_call(&g, &mut o, &[], &bearer, 1_002);
        assert_eq!(third.0, Outcome::Denied(ErrorCode::RateLimited));
        assert!(o.kv.version(LIMITER_KEY).is_some());
        // A window later: room again.
        assert_eq!(
            one_call(&g, &mut o, &[], &bearer, 61_001).0,
            Outcome::Allowed
        );
    }

    #[test]
    fn a_stored_credential_is_looked_up_in_the_same_call() {
        let g = gate(5);
        let mut o = SharedObject::new(1);
        let record = fixtures::record(
            STORED,
            sessiongate_core::Kind::Token,
            "stored",
            sessiongate_core::Sites::All,
            sessiongate_core::Level::Standard,
        );
        let bearer = format!("Bearer {STORED}");
        // On the list from when the configuration held it: the store, just
        // read, is the truth for it.
        o.apply(&Call::Revoke {
            hash: record.hash.clone(),
        })
        .unwrap();
        let (outcome, _, steps) = one_call(&g, &mut o, std::slice::from_ref(&record), &bearer, 5);
        assert_eq!((outcome, steps), (Outcome::Allowed, 4));
        // Not in the store (deleted): refused as any unknown credential.
        let (outcome, status, _) = one_call(&g, &mut o, &[], &bearer, 6);
        assert_eq!(
            (outcome, status),
            (Outcome::Denied(ErrorCode::InvalidCredentials), 401)
        );
    }

    #[test]
    fn a_revoked_credential_spends_nothing() {
        let g = gate(5);
        let mut o = SharedObject::new(1);
        let hash = sessiongate_core::hash_hex(&sessiongate_core::hash_secret(TOKEN.as_bytes()));
        o.apply(&Call::Revoke { hash }).unwrap();
        let (outcome, status, _) = one_call(&g, &mut o, &[], &format!("Bearer {TOKEN}"), 5);
        assert_eq!(
            (outcome, status),
            (Outcome::Denied(ErrorCode::InvalidCredentials), 401)
        );
        let log = sessiongate_core::limiter_log::decode(o.kv.value(LIMITER_KEY)).unwrap();
        assert!(log.is_empty());
    }

    #[test]
    fn answers_that_do_not_finish_the_decision_fail_it() {
        let g = gate(5);
        let values = [b"Bearer fus_0123456789012345678901234567890123456789".as_slice()];
        let request = Request {
            method: "GET",
            target: "/v1/external/sessions/acme/s",
            authorization: &values,
            client: None,
        };
        let decision = replay(&g, &request, 5, &[]);
        assert_eq!(
            decision.outcome,
            Outcome::Denied(ErrorCode::LimiterUnavailable)
        );
    }
}
