//! Group commit of the limiter's log in etcd (feature `fleet`, on unless
//! the configuration's `group_commit` is `false`): at most one write of the
//! log in flight from a VM. A request that reaches its write while one is in
//! flight (or others wait) waits in the VM's queue; the root context's next
//! tick, or the answer to the write before, takes every waiting request in
//! one txn: each decision replayed on the log as the ones before it in the
//! batch leave it, the last one's log written with one compare on the
//! revision they were all read at. So N requests racing on one VM cost one
//! txn, not N racing ones, and a fleet's admissions a second are bounded by
//! etcd's txns a second times the batch, not by retries.
//!
//! The batch is sent from the root context (its answer comes back there,
//! whichever request's client has gone meanwhile), and its members are
//! answered from there (`proxy_set_effective_context`). A request that
//! finds nothing in flight and nobody waiting writes on its own: one txn,
//! and no tick's wait.

use std::borrow::Cow;
use std::collections::VecDeque;

use sessiongate_core::{Answer, Entry, Gate, KvError, LIMITER_KEY, LimiterStore, Need};
use sessiongate_etcd as etcd;
use sessiongate_etcd::After;

use crate::decide::Next;
use crate::fleet;
use crate::host::{Host, LogLevel};
use crate::vm_state::{self, BatchCall, Member, Writer};

/// The root context's tick: the waiting requests' batch sent, when no write
/// is in flight.
pub fn on_tick<H: Host>(gate: &Gate, host: &mut H) {
    let idle = {
        let commits = host.commits().borrow();
        commits.in_flight.is_none() && commits.sent.is_none() && !commits.parked.is_empty()
    };
    if idle {
        send_batch(gate, host, true);
    }
}

/// The answer to the root context's call for the queue.
pub fn on_response<H: Host>(gate: &Gate, host: &mut H, status: Option<u16>, body: &[u8]) {
    let Some((_, sent)) = host.commits().borrow_mut().sent.take() else {
        return;
    };
    let login = fleet::login(gate);
    let mut commits = host.commits().borrow_mut();
    let after = match sent {
        BatchCall::Login => None,
        BatchCall::Read | BatchCall::Write => Some(commits.attempt.answered(login, status, body)),
    };
    let members = std::mem::take(&mut commits.batch);
    let written = commits.writing.take();
    commits.in_flight = None;
    drop(commits);
    match (sent, after) {
        (BatchCall::Login, _) => {
            let logged_in = host.commits().borrow_mut().attempt.logged_in(status, body);
            match logged_in {
                Ok(token) => host.set_etcd_token(Some(token)),
                Err(e) => {
                    host.log(
                        LogLevel::Error,
                        &format!("cannot log in to the limiter's store: {e}"),
                    );
                    let parked = std::mem::take(&mut host.commits().borrow_mut().parked);
                    fail(gate, host, parked.into_iter().chain(members), &e);
                    return;
                }
            }
            requeue(host, members);
            send_batch(gate, host, false);
            return;
        }
        // The token expired (or etcd restarted): log in again, same batch.
        (_, Some(After::Again)) => {
            host.set_etcd_token(None);
            requeue(host, members);
            send_batch(gate, host, false);
            return;
        }
        (BatchCall::Read, _) => match etcd::answer(etcd::Sent::Read, status, body) {
            Answer::Value(entry) => host.log_copy().borrow_mut().set(entry),
            other => {
                let parked = std::mem::take(&mut host.commits().borrow_mut().parked);
                fail(gate, host, parked.into_iter(), &reason(&other));
                return;
            }
        },
        (BatchCall::Write, _) => {
            let answer = etcd::answer(etcd::Sent::Write, status, body);
            match &answer {
                Answer::Written => {
                    match (written, etcd::written_revision(body)) {
                        (Some(value), Some(version)) => {
                            host.log_copy().borrow_mut().set(Some(Entry {
                                value: Cow::Owned(value),
                                version,
                            }));
                        }
                        _ => host.log_copy().borrow_mut().forget(),
                    }
                    finish(gate, host, members, Answer::Written);
                }
                Answer::Value(entry) => {
                    host.log_copy().borrow_mut().set(entry.clone());
                    lost(gate, host, members);
                }
                Answer::Conflict => {
                    host.log_copy().borrow_mut().forget();
                    lost(gate, host, members);
                }
                other => {
                    host.log_copy().borrow_mut().forget();
                    fail(gate, host, members.into_iter(), &reason(other));
                }
            }
        }
    }
    // Whoever waits goes in the next batch at once: its answer comes back here.
    if !host.commits().borrow().parked.is_empty() {
        send_batch(gate, host, true);
    }
}

fn reason(answer: &Answer<'_>) -> String {
    match answer {
        Answer::Failed(KvError(e)) => e.clone(),
        other => format!("etcd answered {other:?}"),
    }
}

/// Back to the front of the queue, in their order.
fn requeue<H: Host>(host: &mut H, members: Vec<Member>) {
    let mut commits = host.commits().borrow_mut();
    for member in members.into_iter().rev() {
        commits.parked.push_front(member);
    }
}

/// The batch lost its compare: its members go in the next batch, on the
/// log the loss came back with; one that has lost for too long fails.
fn lost<H: Host>(gate: &Gate, host: &mut H, members: Vec<Member>) {
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    for mut member in members {
        match fleet::lost(host, &mut member.request) {
            Some(_) => kept.push(member),
            None => gone.push(member),
        }
    }
    requeue(host, kept);
    for member in gone {
        answer(gate, host, member);
    }
}

/// Every member's step fails with `why` (503, or admitted with fail_open).
fn fail<H: Host>(gate: &Gate, host: &mut H, members: impl Iterator<Item = Member>, why: &str) {
    host.log(
        LogLevel::Error,
        &format!("the limiter's store failed a group commit: {why}"),
    );
    finish(gate, host, members, Answer::Failed(KvError(why.to_owned())));
}

/// Each member's decision given `result` as its write's answer, and
/// carried out on its stream.
fn finish<H: Host>(
    gate: &Gate,
    host: &mut H,
    members: impl IntoIterator<Item = Member>,
    result: Answer<'static>,
) {
    for mut member in members {
        fleet::answered(&mut member.request, result.clone());
        answer(gate, host, member);
    }
}

/// Carries a member's decision out on its own stream, from the root context.
fn answer<H: Host>(gate: &Gate, host: &mut H, member: Member) {
    let root = host.context_id();
    if !host.act_for(member.context) {
        // Its client has gone.
        host.act_for(root);
        return;
    }
    let next = fleet::conclude(gate, host, &member.request);
    if let Next::Continue(headers) = next {
        host.commits()
            .borrow_mut()
            .response_headers
            .push((member.context, headers));
        host.resume_request();
    }
    host.act_for(root);
}

/// Forms the next batch from the waiting requests and sends it: each
/// decision replayed on the log as the batch so far leaves it. A request
/// the log as etcd holds it already refuses (full) is answered now; one the
/// batch's own admissions fill the log for waits for the next batch.
/// `fresh`: a new call in etcd's login policy (not the same one again after
/// a login).
fn send_batch<H: Host>(gate: &Gate, host: &mut H, fresh: bool) {
    if fresh {
        host.commits().borrow_mut().attempt = etcd::Attempt::new();
    }
    let LimiterStore::Etcd {
        cluster,
        key,
        timeout_ms,
        ..
    } = gate.limiter_store()
    else {
        return;
    };
    let Some(base) = host.log_copy().borrow().read() else {
        let call = etcd::call(&Need::Read { key: LIMITER_KEY }, key);
        if let Some(call) = call {
            send(gate, host, cluster, *timeout_ms, call, BatchCall::Read);
        }
        return;
    };
    let version = base.as_ref().map_or(0, |e| e.version);
    let mut waiting = std::mem::take(&mut host.commits().borrow_mut().parked);
    let mut batch = Vec::new();
    let mut deferred = VecDeque::new();
    let mut log: Option<Vec<u8>> = None;
    while let Some(mut member) = waiting.pop_front() {
        let Some(on_base) = fleet::write_on(gate, host, &mut member.request, base.clone()) else {
            answer(gate, host, member);
            continue;
        };
        let written = match &log {
            None => Some(on_base),
            Some(after) => {
                let read = Some(Entry {
                    value: Cow::Owned(after.clone()),
                    version,
                });
                fleet::write_on(gate, host, &mut member.request, read)
            }
        };
        match written {
            Some(next) => {
                log = Some(next);
                batch.push(member);
            }
            None => deferred.push_back(member),
        }
    }
    {
        let mut commits = host.commits().borrow_mut();
        // Any request that joined while the batch formed waits behind it.
        deferred.extend(commits.parked.drain(..));
        commits.parked = deferred;
    }
    let Some(log) = log else {
        return;
    };
    let need = match &base {
        Some(entry) => Need::Swap {
            key: LIMITER_KEY,
            version: entry.version,
            value: &log,
        },
        None => Need::Create {
            key: LIMITER_KEY,
            value: &log,
        },
    };
    let Some(call) = etcd::call(&need, key) else {
        return;
    };
    {
        let mut commits = host.commits().borrow_mut();
        commits.batch = batch;
        commits.writing = Some(log);
    }
    send(gate, host, cluster, *timeout_ms, call, BatchCall::Write);
}

/// Sends the queue's call from the root context (a login first where etcd
/// needs one); a call the host refuses fails the batch and the queue.
fn send<H: Host>(
    gate: &Gate,
    host: &mut H,
    cluster: &str,
    timeout_ms: u32,
    call: etcd::Call,
    what: BatchCall,
) {
    let mut attempt = std::mem::take(&mut host.commits().borrow_mut().attempt);
    let sent = fleet::send(
        host,
        &mut attempt,
        fleet::login(gate),
        cluster,
        timeout_ms,
        call,
        vm_state::Sent::Step(etcd::Sent::Write),
    );
    let mut commits = host.commits().borrow_mut();
    commits.attempt = attempt;
    match sent {
        Ok((vm_state::Sent::Login, token)) => {
            commits.sent = Some((token, BatchCall::Login));
            commits.in_flight = Some(Writer::Batch);
        }
        Ok((_, token)) => {
            commits.sent = Some((token, what));
            commits.in_flight = Some(Writer::Batch);
        }
        Err(e) => {
            let members = std::mem::take(&mut commits.batch);
            let parked = std::mem::take(&mut commits.parked);
            commits.writing = None;
            drop(commits);
            fail(gate, host, members.into_iter().chain(parked), &e);
        }
    }
}
