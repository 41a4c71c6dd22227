//! Connections: who is let in, how long one may sit half-sent or idle, and
//! what a failing `accept` does. hyper has no idle timeout and its header
//! timeout needs a timer and covers keep-alive waits too, so both are kept
//! here, per connection, in one small state machine:
//!
//! ```text
//!   accepted ──► Reading ──(headers parsed: service called)──► Busy
//!                  ▲                                            │
//!                  └──(a byte arrives)── Idle ◄──(response ready)┘
//! ```
//!
//! `Reading` may last `header_timeout`, `Idle` `idle_timeout`; `Busy` is
//! bounded by the upstream's timeout, not here. A connection past its
//! deadline is dropped, which closes it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connection settings (`[connections]`), all changeable by a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// From a connection's first byte (or its accept) to its request's last
    /// header byte.
    pub(crate) header_timeout: Duration,
    /// Between a response and the next request's first byte.
    pub(crate) idle_timeout: Duration,
    /// Open connections at most; past it new ones are closed at once.
    pub(crate) max_connections: usize,
    /// Open connections from one client address at most; 0: no cap.
    pub(crate) max_per_address: usize,
}

/// Descriptors kept out of the connection budget: the store, the module
/// cache, etcd, the admin listener, logs.
const RESERVED_FILES: u64 = 64;

/// The default connection cap: half of what the file limit leaves, so every
/// client connection can have an upstream connection beside it.
pub(crate) fn default_max_connections(file_limit: u64) -> usize {
    let half = file_limit.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(16)
}

/// Raises the soft file limit to the hard one (as Go's runtime and nginx's
/// `worker_rlimit_nofile` do) and returns the limit in force.
pub(crate) fn raise_file_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return 1024;
        }
        // An unlimited hard limit is not a count the kernel accepts as soft.
        let wanted = if limit.rlim_max == libc::RLIM_INFINITY {
            1 << 20
        } else {
            limit.rlim_max
        };
        if wanted > limit.rlim_cur {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: a valid rlimit no higher than the hard limit.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return wanted;
            }
        }
        limit.rlim_cur
    }
    #[cfg(not(unix))]
    1024
}

/// Listens on `addr` with the backlog Envoy uses on Linux, the kernel's
/// `somaxconn`: std's (and so tokio's) `bind` asks for 128, and a burst of
/// connects while the accept loop is busy overflows that, so the kernel
/// drops SYNs and clients wait a whole second to retransmit. `shared`: one
/// of several listeners on the same port (SO_REUSEPORT), one per worker,
/// among which the kernel spreads the connections.
pub(crate) async fn listen(addr: &str, shared: bool) -> io::Result<tokio::net::TcpListener> {
    let backlog = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1024);
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on");
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        if shared {
            socket.set_reuseport(true)?;
        }
        #[cfg(not(unix))]
        let _ = shared;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open.
    Full,
    /// `max_per_address` are open from this address.
    AddressFull,
}

/// The open connections, in all and by client address.
#[derive(Default)]
pub(crate) struct Admission {
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection's place; giving it back (on drop) frees it.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        limits: &Limits,
    ) -> Result<Ticket, Refusal> {
        // Every worker's accept loop admits: the check and the count happen
        // under the one lock, so no two admissions pass one last place;
        // closes only ever lower the count.
        let mut by_address = self
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.open.load(Ordering::Relaxed) >= limits.max_connections {
            return Err(Refusal::Full);
        }
        let mine = by_address.entry(address).or_insert(0);
        if limits.max_per_address > 0 && *mine >= limits.max_per_address {
            return Err(Refusal::AddressFull);
        }
        *mine += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            address,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
        let mut by_address = self
            .admission
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = by_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// Where a connection is in its life (see the module's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Reading = 0,
    Busy = 1,
    Idle = 2,
}

/// One connection's phase and since when, shared by its reader, its
/// service and its supervisor.
pub(crate) struct Activity {
    epoch: tokio::time::Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: tokio::time::Instant::now(),
            phase: AtomicU8::new(Phase::Reading as u8),
            since_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Reading,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    fn enter(&self, phase: Phase) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The service was called: the request's headers are in.
    pub(crate) fn request_started(&self) {
        self.enter(Phase::Busy);
    }

    /// The service answered.
    pub(crate) fn request_finished(&self) {
        self.enter(Phase::Idle);
    }

    fn bytes_arrived(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::Reading);
        }
    }

    /// When the current phase runs out, if it can.
    fn deadline(&self, limits: &Limits) -> Option<(Phase, tokio::time::Instant)> {
        let allowed = match self.phase() {
            Phase::Reading => limits.header_timeout,
            Phase::Idle => limits.idle_timeout,
            Phase::Busy => return None,
        };
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        Some((self.phase(), since + allowed))
    }
}

/// `handle` as a hyper service that moves `activity` through its phases:
/// busy from the call (the headers are in) to the answer, idle after.
pub(crate) fn tracked_service<H, F, B>(
    activity: Arc<Activity>,
    handle: H,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<B>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<B>, std::convert::Infallible>> + Send + 'static,
>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F,
    F: Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body,
{
    hyper::service::service_fn(move |req| {
        activity.request_started();
        let (activity, answer) = (activity.clone(), handle(req));
        async move {
            let response = answer.await;
            activity.request_finished();
            Ok(response)
        }
    })
}

/// Serves a side listener (the admin's, the console's) with fixed `limits`:
/// each admitted connection's requests through `handle`, under the limits'
/// cap and timeouts. `what` names the listener in a failed accept's warning.
pub(crate) async fn serve_side_listener<H, F>(
    listener: tokio::net::TcpListener,
    limits: Limits,
    what: &'static str,
    handle: H,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let admission = Arc::new(Admission::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                crate::log::warn(format_args!("{what} accept failed: {e}"));
                tokio::time::sleep(EXHAUSTED_PAUSE).await;
                continue;
            }
        };
        let Ok(ticket) = admission.admit(peer.ip(), &limits) else {
            continue;
        };
        let activity = Activity::new();
        let service = tracked_service(activity.clone(), handle.clone());
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(
            hyper_util::rt::TokioIo::new(Tracked::new(stream, activity.clone())),
            service,
        );
        tokio::spawn(async move {
            let _ticket = ticket;
            supervise(conn, &activity, || limits).await;
        });
    }
}

/// How often a busy connection's supervisor looks again: a request's end
/// does not wake it, so this bounds how late an idle deadline can start.
const BUSY_RECHECK: Duration = Duration::from_millis(500);

/// Runs `conn` until it ends or its phase's deadline passes; returns the
/// phase that ran out, if one did (the connection is then dropped, closed).
pub(crate) async fn supervise<F: Future>(
    conn: F,
    activity: &Activity,
    limits: impl Fn() -> Limits,
) -> Option<Phase> {
    let mut conn = std::pin::pin!(conn);
    loop {
        let (expiring, wake) = match activity.deadline(&limits()) {
            Some((phase, at)) => (Some(phase), at),
            None => (None, tokio::time::Instant::now() + BUSY_RECHECK),
        };
        tokio::select! {
            _ = &mut conn => return None,
            () = tokio::time::sleep_until(wake) => {
                // The phase may have moved on while asleep: only a deadline
                // still in force closes the connection.
                if let (Some(phase), Some((now_phase, at))) = (expiring, activity.deadline(&limits()))
                    && phase == now_phase
                    && at <= tokio::time::Instant::now()
                {
                    return Some(phase);
                }
            }
        }
    }
}

/// The connection's bytes, telling its [`Activity`] when a request starts
/// to arrive.
pub(crate) struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the accept loop does after a failed `accept`: out of descriptors
/// (or kernel memory) it pauses, since the pending connection stays queued
/// and retrying at once only spins; any other failure concerns that one
/// connection. Warnings come at most once a second, with a count.
pub(crate) struct AcceptErrors {
    last_warning: Option<Instant>,
    unreported: u64,
}

/// How long the accept loop rests when out of descriptors.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

impl AcceptErrors {
    pub(crate) fn new() -> Self {
        AcceptErrors {
            last_warning: None,
            unreported: 0,
        }
    }

    /// The pause before the next accept, and the warning to log, if due.
    pub(crate) fn failed(&mut self, error: &io::Error, now: Instant) -> (Duration, Option<String>) {
        let exhausted = exhausted(error);
        self.unreported += 1;
        let due = self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        let warning = due.then(|| {
            let n = std::mem::take(&mut self.unreported);
            self.last_warning = Some(now);
            let pause = if exhausted {
                format!(
                    ", pausing accept for {} ms each time",
                    EXHAUSTED_PAUSE.as_millis()
                )
            } else {
                String::new()
            };
            format!("accept failed {n} time(s) since the last warning: {error}{pause}")
        });
        let pause = if exhausted {
            EXHAUSTED_PAUSE
        } else {
            Duration::ZERO
        };
        (pause, warning)
    }
}

fn exhausted(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_address: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(40),
            idle_timeout: Duration::from_millis(80),
            max_connections: max,
            max_per_address: per_address,
        }
    }

    #[test]
    fn admission_caps_in_all_and_per_address_and_frees_on_drop() {
        let admission = Arc::new(Admission::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let l = limits(3, 2);
        let t1 = admission.admit(a, &l).unwrap();
        let _t2 = admission.admit(a, &l).unwrap();
        assert_eq!(admission.admit(a, &l).err(), Some(Refusal::AddressFull));
        let _t3 = admission.admit(b, &l).unwrap();
        assert_eq!(admission.admit(b, &l).err(), Some(Refusal::Full));
        assert_eq!(admission.open(), 3);
        drop(t1);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a, &l).is_ok());
        // No per-address cap at 0.
        let open = Arc::new(Admission::default());
        let all: Vec<_> = (0..5)
            .map(|_| open.admit(a, &limits(5, 0)).unwrap())
            .collect();
        assert_eq!(open.open(), all.len());
    }

    #[test]
    fn the_file_limit_leaves_room_for_upstreams() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(20), 16);
        assert_eq!(default_max_connections(1 << 20), 524_256);
    }

    #[test]
    fn accept_errors_pause_when_exhausted_and_warn_once_a_second() {
        let mut errors = AcceptErrors::new();
        let start = Instant::now();
        #[cfg(unix)]
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        #[cfg(not(unix))]
        let emfile = io::Error::other("exhausted");
        let (pause, warning) = errors.failed(&emfile, start);
        #[cfg(unix)]
        assert_eq!(pause, EXHAUSTED_PAUSE);
        let _ = pause;
        assert!(warning.unwrap().contains("1 time(s)"));
        for i in 1..50 {
            let (_, warning) = errors.failed(&emfile, start + Duration::from_millis(i * 10));
            assert!(warning.is_none());
        }
        let (_, warning) = errors.failed(&emfile, start + Duration::from_secs(1));
        assert!(warning.unwrap().contains("50 time(s)"));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(errors.failed(&aborted, start).0, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_request_runs_out_and_a_busy_one_never_does() {
        let l = limits(10, 0);
        let activity = Activity::new();
        let never = std::future::pending::<()>();
        assert_eq!(
            supervise(never, &activity, || l).await,
            Some(Phase::Reading)
        );
        let activity = Activity::new();
        activity.request_started();
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(supervise(slow, &activity, || l).await, None);
        activity.request_finished();
        let never = std::future::pending::<()>();
        assert_eq!(supervise(never, &activity, || l).await, Some(Phase::Idle));
    }
}
