//! The limiter on etcd (feature `fleet`): each step of a decision on the
//! limiter's log is a callout to etcd's HTTP/JSON gateway (`sessiongate-etcd`),
//! the request paused until its answer; the guard's steps stay on shared
//! data. A paused stream cannot keep core's pending decision (it borrows the
//! request), so the request and the answers so far are kept, and the
//! decision replayed.

use sessiongate_core::{Answer, Gate, KvError, LIMITER_KEY, LimiterStore, Progress, Request};
use sessiongate_etcd as etcd;
use sessiongate_etcd::{After, Attempt, Credentials, Step};

use crate::decide::{Next, carry_out, choose};
use crate::host::{Host, LogLevel, SharedKv};

/// A request waiting on the limiter's store: what it needs to decide again
/// when the answer comes (the decision is replayed from the answers so far,
/// as a paused stream cannot keep one that borrows its request).
#[derive(Debug)]
pub struct PausedRequest {
    method: String,
    target: String,
    authorization: Vec<Vec<u8>>,
    client: Option<String>,
    now: u64,
    answers: Vec<Answer<'static>>,
    sent: Option<Sent>,
    /// Where the call in flight is in etcd's login policy.
    attempt: Attempt,
}

/// The call in flight for a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Step(etcd::Sent),
    Login,
}

/// The request-headers phase of a filter whose limiter is on etcd: the
/// decision started, and paused on its first callout (`None`: the limiter
/// is in shared data, the caller decides).
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
    let LimiterStore::Etcd { .. } = gate.limiter_store() else {
        return None;
    };
    let mut w = PausedRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        authorization: authorization.iter().map(|v| v.to_vec()).collect(),
        client: client.clone(),
        now,
        answers: Vec::new(),
        sent: None,
        attempt: Attempt::new(),
    };
    let next = drive(gate, host, &mut w);
    if next == Next::Wait {
        *waiting = Some(w);
    }
    Some(next)
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
    let login = match gate.limiter_store() {
        LimiterStore::Etcd { user, password, .. } => {
            Credentials::of(user.as_deref(), password.as_deref())
        }
        LimiterStore::SharedData => None,
    };
    match sent {
        Sent::Login => match w.attempt.logged_in(status, body) {
            Ok(token) => host.set_etcd_token(Some(token)),
            Err(e) => w.answers.push(Answer::Failed(KvError(e))),
        },
        Sent::Step(sent) => match w.attempt.answered(login, status, body) {
            // The token expired (or etcd restarted): forget it; the same
            // step goes again after a login.
            After::Again => host.set_etcd_token(None),
            After::Done => w.answers.push(etcd::answer(sent, status, body)),
        },
    }
    let next = drive(gate, host, &mut w);
    if next == Next::Wait {
        *waiting = Some(w);
    }
    next
}

/// Replays the decision through the answers so far and takes it on: steps
/// on the guard's buckets on shared data at once, a step on the limiter's
/// log as a callout to etcd (then [`Next::Wait`]), and the decision, once
/// made, carried out.
fn drive<H: Host>(gate: &Gate, host: &mut H, w: &mut PausedRequest) -> Next {
    let LimiterStore::Etcd {
        cluster,
        key: etcd_key,
        timeout_ms,
        user,
        password,
    } = gate.limiter_store()
    else {
        return Next::Stop;
    };
    let PausedRequest {
        method,
        target,
        authorization,
        client,
        now,
        answers,
        sent,
        attempt,
    } = w;
    let authorization: Vec<&[u8]> = authorization.iter().map(Vec::as_slice).collect();
    let gate = choose(gate, host, &authorization);
    let req = Request {
        method,
        target,
        authorization: &authorization,
        client: client.as_deref(),
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
            Progress::Done(decision) => return carry_out(decision, host),
            Progress::Pending(pending) => pending,
        };
        let need = pending.need();
        let answer = match need.key() {
            Some(key) if key == LIMITER_KEY => {
                let login = Credentials::of(user.as_deref(), password.as_deref());
                let token = host.etcd_token();
                let (path, body, what, timeout_ms, token) =
                    match attempt.next(login, token.as_deref(), *timeout_ms) {
                        Step::LogIn { body, timeout_ms } => {
                            (etcd::AUTHENTICATE, body, Sent::Login, timeout_ms, None)
                        }
                        Step::Send { token } => match etcd::call(&need, etcd_key) {
                            Some(call) => (
                                call.path,
                                call.body,
                                Sent::Step(call.sent),
                                *timeout_ms,
                                token,
                            ),
                            None => return Next::Stop,
                        },
                    };
                match host.http_call(cluster, path, body.as_bytes(), timeout_ms, token) {
                    Ok(()) => {
                        *sent = Some(what);
                        return Next::Wait;
                    }
                    Err(e) => Answer::Failed(KvError(format!("cannot call {cluster}: {e}"))),
                }
            }
            _ => need.perform(&mut SharedKv(host)).into_owned(),
        };
        answers.push(answer.clone());
        progress = pending.resume(answer);
    }
}
