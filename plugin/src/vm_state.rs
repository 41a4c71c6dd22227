//! What a VM keeps between callbacks on the fleet path (feature `fleet`):
//! a request paused on etcd, the VM's copy of the limiter's log, and its
//! group commit's queue. Data only, with no host call in it: the host port
//! hands it out, and `fleet` and `commit` act on it.

use std::collections::VecDeque;
use std::rc::Rc;

use sessiongate_core::{Answer, Entry, Gate, SecretHash};
use sessiongate_etcd as etcd;
use sessiongate_etcd::Attempt;

/// A request waiting on the limiter's store: what it needs to decide again
/// when the answer comes (the decision is replayed from the answers so far,
/// as a paused stream cannot keep one that borrows its request).
#[derive(Debug)]
pub struct PausedRequest {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) authorization: Vec<Vec<u8>>,
    pub(crate) client: Option<String>,
    pub(crate) now: u64,
    pub(crate) answers: Vec<Answer<'static>>,
    /// What the store said of the presented credentials, once known: a
    /// gate over the one found (`None`: none was).
    pub(crate) credentials: Option<Option<Rc<Gate>>>,
    pub(crate) sent: Option<Sent>,
    /// Where the call in flight is in etcd's login policy.
    pub(crate) attempt: Attempt,
    /// Where in `answers` the read of the limiter's log is (the decision
    /// goes back to it when its write loses).
    pub(crate) read_at: Option<usize>,
    /// The log the write in flight puts, to keep as the VM's copy if it wins.
    pub(crate) writing: Option<Vec<u8>>,
    /// When this request's first write on the log lost.
    pub(crate) contended_since: Option<u64>,
}

/// This VM's copy of the limiter's log as it last saw it in etcd: the value
/// and `mod_revision` of its last read, or of its last write that won
/// (`Some(None)`: absent). The decision's read of the log is answered from
/// it, so an admission is one txn when nobody wrote since. A stale copy is
/// safe: its write loses the compare, and the txn's failure branch brings
/// the current log for the next attempt; and a copy that is full is full
/// now (admissions leave the log only by expiring), so a 429 makes no call.
#[derive(Debug, Default)]
pub struct LogCopy(Option<Option<Entry<'static>>>);

impl LogCopy {
    pub(crate) fn read(&self) -> Option<Option<Entry<'static>>> {
        self.0.clone()
    }

    pub(crate) fn set(&mut self, entry: Option<Entry<'static>>) {
        self.0 = Some(entry);
    }

    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

/// The call in flight for a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Step(etcd::Sent),
    /// A lookup of this digest in the credential store.
    Lookup(SecretHash),
    Login,
}

/// A VM's group commit: the write in flight, the requests waiting.
#[derive(Debug, Default)]
pub struct Commits {
    pub(crate) in_flight: Option<Writer>,
    /// Requests waiting at their write of the log, oldest first.
    pub(crate) parked: VecDeque<Member>,
    /// The batch whose write is in flight, and the log it writes.
    pub(crate) batch: Vec<Member>,
    pub(crate) writing: Option<Vec<u8>>,
    /// The root context's call in flight for the queue: its token, and what.
    pub(crate) sent: Option<(u32, BatchCall)>,
    pub(crate) attempt: etcd::Attempt,
    /// What a request a batch let through adds to its response (by
    /// context), until its response phase takes it. A list, not a map: it
    /// holds a batch's worth at most, and a map's code is ~3 KB of the filter.
    pub(crate) response_headers: Vec<(u32, Vec<(&'static str, String)>)>,
}

/// Who has a write of the log in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// A request, on its own (the stream's context).
    Request(u32),
    /// The root context, for a batch.
    Batch,
}

#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) context: u32,
    pub(crate) request: PausedRequest,
}

/// What the root context's call for the queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchCall {
    /// A read of the log (the VM holds no copy of it yet).
    Read,
    /// The batch's write.
    Write,
    Login,
}

impl Commits {
    /// Whether a request at its write must wait for the next batch.
    pub(crate) fn must_wait(&self) -> bool {
        self.in_flight.is_some() || !self.parked.is_empty()
    }

    pub(crate) fn park(&mut self, context: u32, request: PausedRequest) {
        self.parked.push_back(Member { context, request });
    }

    pub(crate) fn own_write_sent(&mut self, context: u32) {
        self.in_flight = Some(Writer::Request(context));
    }

    pub(crate) fn own_write_answered(&mut self, context: u32) {
        if self.in_flight == Some(Writer::Request(context)) {
            self.in_flight = None;
        }
    }

    /// A stream has ended (answered, or its client left): nothing waits on
    /// it any more, and a write of its own no longer holds the queue.
    pub fn forget(&mut self, context: u32) {
        self.parked.retain(|m| m.context != context);
        self.batch.retain(|m| m.context != context);
        self.take_response_headers(context);
        self.own_write_answered(context);
    }

    /// What a request a batch let through adds to its response.
    pub fn take_response_headers(&mut self, context: u32) -> Option<Vec<(&'static str, String)>> {
        let at = self
            .response_headers
            .iter()
            .position(|(c, _)| *c == context)?;
        Some(self.response_headers.swap_remove(at).1)
    }

    /// Whether the root context's call `token` is the queue's.
    pub fn is_ours(&self, token: u32) -> bool {
        self.sent.is_some_and(|(t, _)| t == token)
    }

    /// Requests waiting, and in the batch in flight.
    pub fn waiting(&self) -> usize {
        self.parked.len() + self.batch.len()
    }
}
