//! The root context's tick (feature `fleet`): the credentials' revision
//! read from the store, one read at a time, so the VM's cache of looked-up
//! credentials ([`crate::lookup`]) drops what changed. The VMs of one proxy
//! share the last read through shared data: a VM whose peer read the
//! revision within the tick period takes that read instead of making its
//! own, so a pod's workers make about one read a tick between them, and a
//! change holds in every VM within two tick periods and a call.

use sessiongate_core::Gate;
use sessiongate_etcd as etcd;
use sessiongate_etcd::{After, Attempt, Credentials, Step};

use crate::host::{Host, LogLevel};

/// The root context's tick: one read of the credentials' revision at a
/// time (a login first, where etcd needs one).
#[derive(Debug, Default)]
pub struct Tick {
    attempt: Attempt,
    sent: Option<TickSent>,
    /// When this VM last sent a read (Unix ms): the root context may tick
    /// faster than the store's tick (a group commit's), and a store that
    /// fails is not asked again at that pace.
    tried_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TickSent {
    Login,
    Revision,
}

/// The shared-data key where a proxy's VMs keep the last revision read:
/// `"<read at, Unix ms> <revision>"`.
pub const SHARED_REVISION: &str = "sessiongate.credentials.revision";

/// A tick (`proxy_on_tick`): the credentials' revision read, unless a read
/// is still in flight or a peer VM read it within the tick period.
pub fn on_tick<H: Host>(gate: &Gate, host: &mut H, tick: &mut Tick) {
    let Some(store) = gate.credential_store() else {
        return;
    };
    if tick.sent.is_some() {
        return;
    }
    let now = host.now_ms();
    if let Some((at, revision)) = shared_revision(host)
        && now.saturating_sub(at) < u64::from(store.tick_ms)
    {
        host.credential_cache().borrow_mut().confirmed(revision, at);
        return;
    }
    // Half the store's tick: a timer that fires a little early still reads.
    if now.saturating_sub(tick.tried_at) < u64::from(store.tick_ms / 2) {
        return;
    }
    tick.tried_at = now;
    tick.attempt = Attempt::new();
    send_tick(gate, host, tick);
}

fn shared_revision<H: Host>(host: &H) -> Option<(u64, u64)> {
    let (value, _) = host.shared_get(SHARED_REVISION).ok()?;
    let text = String::from_utf8(value?).ok()?;
    let (at, revision) = text.split_once(' ')?;
    Some((at.parse().ok()?, revision.parse().ok()?))
}

fn send_tick<H: Host>(gate: &Gate, host: &mut H, tick: &mut Tick) {
    let Some(store) = gate.credential_store() else {
        return;
    };
    let login = Credentials::of(store.user.as_deref(), store.password.as_deref());
    let token = host.etcd_token();
    let (path, body, what, timeout_ms, token) =
        match tick.attempt.next(login, token.as_deref(), store.timeout_ms) {
            Step::LogIn { body, timeout_ms } => {
                (etcd::AUTHENTICATE, body, TickSent::Login, timeout_ms, None)
            }
            Step::Send { token } => {
                let call = etcd::revision(&store.prefix);
                (
                    call.path,
                    call.body,
                    TickSent::Revision,
                    store.timeout_ms,
                    token,
                )
            }
        };
    match host
        .http_call(&store.cluster, path, body.as_bytes(), timeout_ms, token)
        .map(|_| ())
    {
        Ok(()) => tick.sent = Some(what),
        Err(e) => host.log(
            LogLevel::Warn,
            &format!("cannot read the credentials' revision: {e}"),
        ),
    }
}

/// The answer to a tick's call (`status`: `None` when the call failed).
pub fn on_tick_response<H: Host>(
    gate: &Gate,
    host: &mut H,
    tick: &mut Tick,
    status: Option<u16>,
    body: &[u8],
) {
    let Some(store) = gate.credential_store() else {
        return;
    };
    let login = Credentials::of(store.user.as_deref(), store.password.as_deref());
    match tick.sent.take() {
        None => {}
        Some(TickSent::Login) => match tick.attempt.logged_in(status, body) {
            Ok(token) => {
                host.set_etcd_token(Some(token));
                send_tick(gate, host, tick);
            }
            Err(e) => host.log(LogLevel::Warn, &format!("cannot log in to etcd: {e}")),
        },
        Some(TickSent::Revision) => match tick.attempt.answered(login, status, body) {
            After::Again => {
                host.set_etcd_token(None);
                send_tick(gate, host, tick);
            }
            After::Done => match etcd::revision_answer(status, body) {
                Ok(revision) => {
                    let now = host.now_ms();
                    host.credential_cache()
                        .borrow_mut()
                        .confirmed(revision, now);
                    // For the peers; a write lost to a peer's is as good.
                    let shared = format!("{now} {revision}");
                    let _ = host.shared_set(SHARED_REVISION, shared.as_bytes(), 0);
                }
                // The cache answers on until its answers are max_stale_ms old.
                Err(e) => host.log(
                    LogLevel::Warn,
                    &format!("cannot read the credentials' revision: {e}"),
                ),
            },
        },
    }
}
