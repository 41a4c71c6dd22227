//! etcd (feature `fleet`): the credentials a request presents, looked up
//! by digest in the fleet's store ([`crate::lookup`]), and the limiter,
//! each step of a decision on its log a callout to etcd's HTTP/JSON gateway
//! (`sessiongate-etcd`); the request paused until each answer, the guard's
//! steps on shared data. A paused stream cannot keep core's pending decision
//! (it borrows the request), so the request and the answers so far are
//! kept, and the decision replayed.

use sessiongate_core::{
    Answer, Entry, Gate, KvError, LIMITER_KEY, LimiterStore, Need, Progress, Request, hash_hex,
};
use std::rc::Rc;

use sessiongate_etcd as etcd;
use sessiongate_etcd::{After, Attempt, Credentials, Step};

use crate::decide::{DecidingGate, Next, carry_out, choose};
use crate::host::{Host, LogLevel, SharedKv};
use crate::lookup::Lookup;
use crate::vm_state::{PausedRequest, Sent};

/// How long a request keeps trying to win the limiter's log while etcd
/// answers and others keep winning it (then `503`): a lost write is not a
/// failure, only a request that cannot get a turn in this long is.
pub const CONTENDED_MS: u64 = 5_000;

/// What driving a decision came to.
enum Driven {
    /// What the host does with the stream (a call of its own in flight:
    /// [`Next::Wait`]).
    Next(Next),
    /// It waits at its write of the log for the VM's next group commit.
    Parked,
}

/// Keeps a request that waits: on its own call, or in the VM's queue.
fn wait<H: Host>(
    host: &mut H,
    waiting: &mut Option<PausedRequest>,
    w: PausedRequest,
    driven: Driven,
) -> Next {
    match driven {
        Driven::Next(Next::Wait) => {
            *waiting = Some(w);
            Next::Wait
        }
        Driven::Next(next) => next,
        Driven::Parked => {
            let context = host.context_id();
            host.commits().borrow_mut().park(context, w);
            Next::Wait
        }
    }
}

/// The request-headers phase of a filter that uses etcd (its credentials
/// or its limiter there): the decision started, and paused on its first
/// callout (`None`: neither is on etcd, the caller decides).
#[allow(clippy::too_many_arguments)]
pub fn begin<H: Host>(
    gate: &Gate,
    host: &mut H,
    waiting: &mut Option<PausedRequest>,
    method: &str,
    target: &str,
    authorization: &[&[u8]],
    now: u64,
    client: &Option<String>,
) -> Option<Next> {
    if gate.limiter_store().is_shared_data() && gate.credential_store().is_none() {
        return None;
    }
    let mut w = PausedRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        authorization: authorization.iter().map(|v| v.to_vec()).collect(),
        client: client.clone(),
        now,
        answers: Vec::new(),
        credentials: None,
        sent: None,
        attempt: Attempt::new(),
        read_at: None,
        writing: None,
        contended_since: None,
    };
    let driven = drive(gate, host, &mut w);
    Some(wait(host, waiting, w, driven))
}

/// A callout's answer (`status`: `None` when the call failed): the decision
/// goes on. [`Next::Continue`]: the host lets the paused request go on.
pub fn on_callout_response<H: Host>(
    gate: &Gate,
    host: &mut H,
    waiting: &mut Option<PausedRequest>,
    status: Option<u16>,
    body: &[u8],
) -> Next {
    let Some(mut w) = waiting.take() else {
        host.log(LogLevel::Warn, "a callout answered for no waiting request");
        return Next::Stop;
    };
    let Some(sent) = w.sent.take() else {
        host.log(LogLevel::Warn, "a callout answered that was not sent");
        return Next::Stop;
    };
    let login = login(gate);
    match sent {
        Sent::Login => match w.attempt.logged_in(status, body) {
            Ok(token) => host.set_etcd_token(Some(token)),
            Err(e) if w.credentials.is_none() && gate.credential_store().is_some() => {
                host.log(
                    LogLevel::Error,
                    &format!("cannot log in to the credential store: {e}"),
                );
                return carry_out(gate.lookup_unavailable(), host);
            }
            Err(e) => w.answers.push(Answer::Failed(KvError(e))),
        },
        Sent::Lookup(digest) => match w.attempt.answered(login, status, body) {
            After::Again => host.set_etcd_token(None),
            After::Done => {
                let found = etcd::lookup_answer(status, body).and_then(|found| {
                    let store = gate.credential_store().ok_or("no credential store")?;
                    let now = host.now_ms();
                    host.credential_cache()
                        .borrow_mut()
                        .found(gate, store, digest, found, now)
                });
                if let Err(e) = found {
                    host.log(
                        LogLevel::Error,
                        &format!("cannot look the credential up in the store: {e}"),
                    );
                    return carry_out(gate.lookup_unavailable(), host);
                }
            }
        },
        Sent::Step(sent) => match w.attempt.answered(login, status, body) {
            // The token expired (or etcd restarted): forget it; the same
            // step goes again after a login.
            After::Again => host.set_etcd_token(None),
            After::Done => {
                let answer = etcd::answer(sent, status, body);
                on_log_answer(host, &mut w, sent, answer, body);
            }
        },
    }
    let driven = drive(gate, host, &mut w);
    wait(host, waiting, w, driven)
}

/// An answer of etcd on the limiter's log: kept as the VM's copy, and
/// handed to the decision; a write that lost takes the decision back to its
/// read, on the value the loss came back with, so that losing is not
/// counted against the request while etcd answers (until [`CONTENDED_MS`]).
fn on_log_answer<H: Host>(
    host: &mut H,
    w: &mut PausedRequest,
    sent: etcd::Sent,
    answer: Answer<'static>,
    body: &[u8],
) {
    let written = w.writing.take();
    if sent == etcd::Sent::Write {
        let context = host.context_id();
        host.commits().borrow_mut().own_write_answered(context);
    }
    let mut copy = host.log_copy().borrow_mut();
    let was_lost = match (&answer, sent) {
        (Answer::Value(entry), etcd::Sent::Read) => {
            copy.set(entry.clone());
            false
        }
        (Answer::Written, _) => {
            match (written, etcd::written_revision(body)) {
                (Some(value), Some(version)) => copy.set(Some(Entry {
                    value: std::borrow::Cow::Owned(value),
                    version,
                })),
                _ => copy.forget(),
            }
            false
        }
        (Answer::Value(entry), etcd::Sent::Write) => {
            copy.set(entry.clone());
            true
        }
        (Answer::Conflict, _) => {
            copy.forget();
            true
        }
        _ => {
            copy.forget();
            false
        }
    };
    drop(copy);
    if !was_lost {
        w.answers.push(answer);
        return;
    }
    if let Some(at) = lost(host, w) {
        w.answers.truncate(at);
    }
}

/// A write of `w`'s that lost: where to take its decision back to (its
/// read of the log), or `None` when it has lost for [`CONTENDED_MS`] (its
/// next step then fails).
pub(crate) fn lost<H: Host>(host: &H, w: &mut PausedRequest) -> Option<usize> {
    let now = host.now_ms();
    let since = *w.contended_since.get_or_insert(now);
    match w.read_at {
        Some(at) if now.saturating_sub(since) < CONTENDED_MS => Some(at),
        _ => {
            w.answers.push(Answer::Failed(KvError(format!(
                "the limiter's log kept changing under this request for {CONTENDED_MS} ms"
            ))));
            None
        }
    }
}

/// etcd's login for the calls a gate makes (the store's and the limiter's
/// are one, when both are on etcd: the configuration requires it).
pub(crate) fn login(gate: &Gate) -> Option<Credentials<'_>> {
    if let Some(store) = gate.credential_store()
        && store.user.is_some()
    {
        return Credentials::of(store.user.as_deref(), store.password.as_deref());
    }
    match gate.limiter_store() {
        LimiterStore::Etcd { user, password, .. } => {
            Credentials::of(user.as_deref(), password.as_deref())
        }
        LimiterStore::SharedData => None,
    }
}

/// Sends one call to etcd for a paused request: logged in first where the
/// cluster needs it; what went, and its token. `Err`: the host refused to
/// send it.
pub(crate) fn send<H: Host>(
    host: &mut H,
    attempt: &mut Attempt,
    login: Option<Credentials<'_>>,
    cluster: &str,
    timeout_ms: u32,
    call: etcd::Call,
    what: Sent,
) -> Result<(Sent, u32), String> {
    let token = host.etcd_token();
    let (path, body, what, timeout_ms, token) =
        match attempt.next(login, token.as_deref(), timeout_ms) {
            Step::LogIn { body, timeout_ms } => {
                (etcd::AUTHENTICATE, body, Sent::Login, timeout_ms, None)
            }
            Step::Send { token } => (call.path, call.body, what, timeout_ms, token),
        };
    host.http_call(cluster, path, body.as_bytes(), timeout_ms, token)
        .map(|token| (what, token))
        .map_err(|e| format!("cannot call {cluster}: {e}"))
}

/// Replays the decision through the answers so far and takes it on: the
/// presented credentials looked up in the store first (from the cache, or
/// a callout), then steps on the guard's buckets on shared data at once, a
/// step on the limiter's log as a callout to etcd (then [`Next::Wait`]),
/// and the decision, once made, carried out.
fn drive<H: Host>(gate: &Gate, host: &mut H, w: &mut PausedRequest) -> Driven {
    let PausedRequest {
        method,
        target,
        authorization,
        client,
        now,
        answers,
        credentials,
        sent,
        attempt,
        read_at,
        writing,
        contended_since: _,
    } = w;
    let authorization: Vec<&[u8]> = authorization.iter().map(Vec::as_slice).collect();
    let req = Request {
        method,
        target,
        authorization: &authorization,
        client: client.as_deref(),
    };
    if let (Some(store), None) = (gate.credential_store(), &credentials) {
        let digests = gate.digests_to_look_up(&req);
        let at = host.now_ms();
        let lookup = host.credential_cache().borrow().lookup(store, &digests, at);
        match lookup {
            Lookup::Decide(found) => *credentials = Some(found),
            Lookup::Fetch(digest) => {
                let call = etcd::lookup(&store.prefix, &hash_hex(&digest));
                let what = Sent::Lookup(digest);
                match send(
                    host,
                    attempt,
                    login(gate),
                    &store.cluster,
                    store.timeout_ms,
                    call,
                    what,
                ) {
                    Ok((what, _)) => {
                        *sent = Some(what);
                        return Driven::Next(Next::Wait);
                    }
                    Err(e) => {
                        host.log(LogLevel::Error, &e);
                        return Driven::Next(carry_out(gate.lookup_unavailable(), host));
                    }
                }
            }
        }
    }
    let gate = deciding(gate, host, credentials, &authorization);
    let LimiterStore::Etcd {
        cluster,
        key: etcd_key,
        timeout_ms,
        group_commit,
        ..
    } = gate.limiter_store()
    else {
        let decision = gate.decide(&req, *now, &mut SharedKv(host));
        return Driven::Next(carry_out(decision, host));
    };
    // The first run may be answered by the "full until" memo (a 429 with no
    // call at all); a replay follows the answers it was given.
    let mut progress = if answers.is_empty() {
        gate.start(&req, *now)
    } else {
        gate.replay(&req, *now, answers.iter())
    };
    loop {
        let pending = match progress {
            Progress::Done(decision) => return Driven::Next(carry_out(decision, host)),
            Progress::Pending(pending) => pending,
        };
        let need = pending.need();
        let is_read = matches!(need, Need::Read { .. });
        let on_log = need.key() == Some(LIMITER_KEY);
        if on_log && !is_read && *group_commit && host.commits().borrow().must_wait() {
            return Driven::Parked;
        }
        let copy = host.log_copy().borrow().read();
        let answer = match need.key() {
            Some(key) if key == LIMITER_KEY && is_read && copy.is_some() => {
                *read_at = Some(answers.len());
                Answer::Value(copy.flatten())
            }
            Some(key) if key == LIMITER_KEY => {
                let Some(call) = etcd::call(&need, etcd_key) else {
                    return Driven::Next(Next::Stop);
                };
                *writing = match need {
                    Need::Swap { value, .. } | Need::Create { value, .. } => Some(value.to_vec()),
                    Need::Read { .. } | Need::Revoked { .. } => None,
                };
                if is_read {
                    *read_at = Some(answers.len());
                }
                let what = Sent::Step(call.sent);
                match send(
                    host,
                    attempt,
                    login(&gate),
                    cluster,
                    *timeout_ms,
                    call,
                    what,
                ) {
                    Ok((what, _)) => {
                        *sent = Some(what);
                        if !is_read {
                            let context = host.context_id();
                            host.commits().borrow_mut().own_write_sent(context);
                        }
                        return Driven::Next(Next::Wait);
                    }
                    Err(e) => Answer::Failed(KvError(e)),
                }
            }
            _ => need.perform(&mut SharedKv(host)).into_owned(),
        };
        answers.push(answer.clone());
        progress = pending.resume(answer);
    }
}

/// `w`'s decision replayed on `read` as its read of the log (the log as a
/// group commit would leave it): the log it would write then, or `None`
/// when it decides without writing (full: the caller answers it, or lets
/// it wait for the next commit).
pub(crate) fn write_on<H: Host>(
    gate: &Gate,
    host: &mut H,
    w: &mut PausedRequest,
    read: Option<Entry<'static>>,
) -> Option<Vec<u8>> {
    let at = w.read_at?;
    w.answers.truncate(at);
    w.answers.push(Answer::Value(read));
    replayed(gate, host, w, |progress, _| match progress {
        Progress::Pending(pending) => match pending.need() {
            Need::Swap { key, value, .. } | Need::Create { key, value } if key == LIMITER_KEY => {
                Some(value.to_vec())
            }
            _ => None,
        },
        Progress::Done(_) => None,
    })
}

/// `w`'s decision replayed through its answers and carried out; a step its
/// answers do not cover fails (a request resumed by the root context makes
/// no call of its own).
pub(crate) fn conclude<H: Host>(gate: &Gate, host: &mut H, w: &PausedRequest) -> Next {
    replayed(gate, host, w, |mut progress, host| {
        loop {
            match progress {
                Progress::Done(decision) => return carry_out(decision, host),
                Progress::Pending(pending) => {
                    let failed = KvError("a step after the group commit".into());
                    progress = pending.resume(Answer::Failed(failed));
                }
            }
        }
    })
}

/// `w`'s decision replayed through its answers so far, handed to `then`
/// (a paused request keeps its parts, not a [`Request`], which borrows).
fn replayed<H: Host, R>(
    gate: &Gate,
    host: &mut H,
    w: &PausedRequest,
    then: impl FnOnce(Progress<'_, '_>, &mut H) -> R,
) -> R {
    let authorization: Vec<&[u8]> = w.authorization.iter().map(Vec::as_slice).collect();
    let req = Request {
        method: &w.method,
        target: &w.target,
        authorization: &authorization,
        client: w.client.as_deref(),
    };
    let gate = deciding(gate, host, &w.credentials, &authorization);
    then(gate.replay(&req, w.now, w.answers.iter()), host)
}

/// Pushes an answer to `w`'s decision (a group commit's, for its members).
pub(crate) fn answered(w: &mut PausedRequest, answer: Answer<'static>) {
    w.answers.push(answer);
}

/// The gate that decides a request: the one its credential was looked up
/// as, or the configured one (over what the host keeps, `choose`).
fn deciding<'g, H: Host>(
    gate: &'g Gate,
    host: &H,
    credentials: &Option<Option<Rc<Gate>>>,
    authorization: &[&[u8]],
) -> DecidingGate<'g> {
    match credentials {
        Some(Some(found)) => DecidingGate::LookedUp(found.clone()),
        Some(None) => DecidingGate::Configured(gate),
        None => choose(gate, host, authorization),
    }
}
