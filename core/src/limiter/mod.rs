//! The global limiter (contract section 4): at most N admissions in any rolling
//! window of W, exactly, across every caller that shares one compare-and-swap
//! store.
//!
//! The state is the sorted log of admission times still inside the window
//! ([`log`]). Exactness needs it: the moment the next slot frees is the expiry
//! of the N-th most recent admission, which no counter can know. Admission
//! times never go backwards (`max(now, newest)`), so callers whose clocks
//! disagree by a little still keep every window at or under N.
//!
//! This module decides on bytes already read; the compare-and-swap loop that
//! reads and writes them is the decision's ([`crate::Pending`]).

mod log;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use log::Log;
pub use log::{decode, encode};

use crate::kv::KvError;

/// Bounded retries on a lost compare-and-swap before the decision gives up
/// (`503`, or admitted when failing open).
pub(crate) const MAX_CAS_ATTEMPTS: usize = 64;
/// Upper bound on `requests` so the shared state stays bounded (at most
/// 12 bytes an admission, less when admissions share a millisecond).
pub(crate) const MAX_REQUESTS: u32 = 100_000;
/// The key of the global limiter's state in the shared state.
pub const LIMITER_KEY: &str = "sessiongate.limiter.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The global limit as the limiter counts it.
pub struct Limit {
    /// Requests admitted per window.
    pub requests: u32,
    /// The window's length in milliseconds.
    pub window_ms: u64,
}

impl Limit {
    /// A limit of `requests` per `window_seconds`.
    pub fn new(requests: u32, window_seconds: u32) -> Self {
        Limit {
            requests,
            window_ms: u64::from(window_seconds) * 1000,
        }
    }

    /// The window in whole seconds (for the policy header).
    pub fn window_seconds(&self) -> u64 {
        self.window_ms / 1000
    }
}

/// What the limiter says about one request, with what the headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Verdict {
    /// Whether this request is admitted.
    pub admitted: bool,
    /// Slots left in the window after this decision.
    pub remaining: u32,
    /// Whole seconds until the next slot frees (0 when nothing is in the window).
    pub reset_seconds: u64,
}

/// Why the limiter could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterError {
    /// The shared state could not be read or written.
    Store(KvError),
    /// The stored bytes are not a limiter state.
    Corrupt,
    /// Every compare-and-swap attempt lost to another writer.
    Contended,
}

impl fmt::Display for LimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterError::Store(e) => e.fmt(f),
            LimiterError::Corrupt => f.write_str("shared state is not a limiter state"),
            LimiterError::Contended => f.write_str("compare-and-swap kept losing"),
        }
    }
}

impl std::error::Error for LimiterError {}

/// What one read of the state decided.
#[derive(Debug)]
pub(crate) enum Step {
    /// Over the limit: nothing to write.
    Full(Verdict),
    /// Write `next` in place of what was read; `verdict` holds if that wins.
    Admit { next: Vec<u8>, verdict: Verdict },
}

/// The live window of the state `bytes` (absent: empty) at `now`, and the
/// time it is taken at: never before the newest admission, which keeps the
/// log sorted and every window exact when callers' clocks disagree slightly.
fn window(bytes: Option<&[u8]>, now: u64, limit: Limit) -> Result<(Log<'_>, u64), LimiterError> {
    let log = Log::parse(bytes.unwrap_or_default())?;
    let at = log.newest().map_or(now, |newest| now.max(newest));
    Ok((log.live(at, limit), at))
}

/// The step for a request at `now` on the state `bytes`, and, when the log
/// is full after it, the time until which it stays full.
pub(crate) fn step(
    bytes: Option<&[u8]>,
    now: u64,
    limit: Limit,
) -> Result<(Step, Option<u64>), LimiterError> {
    let (window, at) = window(bytes, now, limit)?;
    if window.len() >= u64::from(limit.requests) {
        let (verdict, full_until) = verdict(window, None, at, limit);
        return Ok((Step::Full(verdict), full_until));
    }
    let (verdict, full_until) = verdict(window, Some(at), at, limit);
    let next = window.encode_with(at);
    Ok((Step::Admit { next, verdict }, full_until))
}

/// The state's verdict without spending anything: the headers of an answer
/// that never reached the limiter.
pub(crate) fn peek(
    bytes: Option<&[u8]>,
    now: u64,
    limit: Limit,
) -> Result<(Verdict, Option<u64>), LimiterError> {
    let (window, at) = window(bytes, now, limit)?;
    Ok(verdict(window, None, at, limit))
}

/// The verdict on the live entries, followed by `admitted_at` if this step
/// records one; and when no slot is left, the time the next one frees.
fn verdict(
    live: Log<'_>,
    admitted_at: Option<u64>,
    now: u64,
    limit: Limit,
) -> (Verdict, Option<u64>) {
    let admitted = admitted_at.is_some();
    let count = live.len() + u64::from(admitted);
    let requests = u64::from(limit.requests);
    let remaining = u32::try_from(requests.saturating_sub(count)).unwrap_or(u32::MAX);
    // The slot that frees next for this caller: if over the limit, the entry
    // whose expiry brings the count back under it; else the oldest one.
    let pivot = count.saturating_sub(requests);
    let entry = live
        .at(pivot)
        .or(admitted_at.filter(|_| pivot == live.len()));
    // Saturating: a stored time near the end of u64 (a forged state, a clock
    // far ahead) must not wrap into a reset in the past.
    let frees_at = entry.map(|t| t.saturating_add(limit.window_ms));
    let reset_seconds = frees_at.map_or(0, |t| ceil_seconds(t.saturating_sub(now)));
    let verdict = Verdict {
        admitted,
        remaining,
        reset_seconds,
    };
    (verdict, frees_at.filter(|_| remaining == 0))
}

fn ceil_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// A gate instance's memo of "the log is full until T". Exact, not a guess:
/// slots free only when admissions expire, and nobody anywhere can admit
/// while the log is full, so until T every request is refused and needs no
/// read. It is what keeps a 429 flood cheap when the state is a network away.
#[derive(Debug, Default)]
pub(crate) struct FullUntil(AtomicU64);

impl FullUntil {
    /// The verdict at `now`, if the log is known to be full then.
    pub(crate) fn verdict(&self, now: u64) -> Option<Verdict> {
        let until = self.0.load(Ordering::Relaxed);
        (now < until).then(|| Verdict {
            admitted: false,
            remaining: 0,
            reset_seconds: ceil_seconds(until - now),
        })
    }

    pub(crate) fn remember(&self, until: Option<u64>) {
        if let Some(until) = until {
            self.0.fetch_max(until, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: Limit = Limit {
        requests: 3,
        window_ms: 10_000,
    };

    /// One caller on its own state: read, step, write.
    fn acquire(state: &mut Vec<u8>, now: u64, limit: Limit) -> Result<Verdict, LimiterError> {
        match step(Some(state), now, limit)?.0 {
            Step::Full(v) => Ok(v),
            Step::Admit { next, verdict } => {
                *state = next;
                Ok(verdict)
            }
        }
    }

    #[test]
    fn admits_n_then_denies_until_the_oldest_expires() {
        let mut s = Vec::new();
        for (i, t) in [1_000u64, 2_000, 3_000].iter().enumerate() {
            let v = acquire(&mut s, *t, L).unwrap();
            assert!(v.admitted);
            assert_eq!(v.remaining, 2 - i as u32);
        }
        let v = acquire(&mut s, 4_000, L).unwrap();
        assert!(!v.admitted);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.reset_seconds, 7); // the 1_000 entry frees at 11_000
        // At exactly 11_000 the first admission is out of (1_000, 11_000].
        assert!(!acquire(&mut s, 10_999, L).unwrap().admitted);
        assert!(acquire(&mut s, 11_000, L).unwrap().admitted);
        assert!(!acquire(&mut s, 11_500, L).unwrap().admitted);
    }

    #[test]
    fn rolling_not_fixed_window() {
        // A fixed window would admit 3 at the end of one and 3 at the start of the next.
        let mut s = Vec::new();
        for t in [9_000, 9_100, 9_200] {
            assert!(acquire(&mut s, t, L).unwrap().admitted);
        }
        assert!(!acquire(&mut s, 10_100, L).unwrap().admitted);
        assert!(!acquire(&mut s, 18_999, L).unwrap().admitted);
        assert!(acquire(&mut s, 19_000, L).unwrap().admitted);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let mut s = Vec::new();
        for t in [0, 1, 2] {
            acquire(&mut s, t, L).unwrap();
        }
        let v = acquire(&mut s, 1, L).unwrap();
        assert_eq!(v.reset_seconds, 10); // 9_999 ms → 10 s
        let v = acquire(&mut s, 9_500, L).unwrap();
        assert_eq!(v.reset_seconds, 1); // 500 ms → 1 s
    }

    #[test]
    fn peek_spends_nothing() {
        let mut s = Vec::new();
        acquire(&mut s, 0, L).unwrap();
        let before = s.clone();
        let (v, _) = peek(Some(&s), 100, L).unwrap();
        assert_eq!(v.remaining, 2);
        assert_eq!(s, before);
        assert_eq!(peek(None, 0, L).unwrap().0.reset_seconds, 0);
    }

    #[test]
    fn corrupt_state_fails_closed() {
        let mut s = b"garbage".to_vec();
        assert_eq!(acquire(&mut s, 0, L), Err(LimiterError::Corrupt));
        assert_eq!(peek(Some(b"SGL2x"), 0, L), Err(LimiterError::Corrupt));
    }

    #[test]
    fn admissions_in_one_millisecond_share_a_run() {
        let limit = Limit::new(1_000, 1);
        let mut s = Vec::new();
        for _ in 0..500 {
            assert!(acquire(&mut s, 7, limit).unwrap().admitted);
        }
        assert!(acquire(&mut s, 8, limit).unwrap().admitted);
        // Two runs of 12 bytes, not 501 times.
        assert_eq!(s.len(), 4 + 2 * 12);
        assert_eq!(peek(Some(&s), 8, limit).unwrap().0.remaining, 1_000 - 501);
    }

    #[test]
    fn the_step_that_fills_the_log_says_until_when() {
        let mut s = Vec::new();
        for t in [1_000, 2_000] {
            assert_eq!(step(Some(&s), t, L).unwrap().1, None);
            acquire(&mut s, t, L).unwrap();
        }
        assert_eq!(step(Some(&s), 3_000, L).unwrap().1, Some(11_000));
        acquire(&mut s, 3_000, L).unwrap();
        assert_eq!(step(Some(&s), 4_000, L).unwrap().1, Some(11_000));
        assert_eq!(peek(Some(&s), 4_000, L).unwrap().1, Some(11_000));
        assert_eq!(peek(Some(&s), 11_000, L).unwrap().1, None);
    }

    #[test]
    fn the_memo_answers_as_the_state_would() {
        let memo = FullUntil::default();
        assert_eq!(memo.verdict(0), None);
        memo.remember(Some(11_000));
        memo.remember(Some(5_000));
        assert_eq!(
            memo.verdict(4_000),
            Some(Verdict {
                admitted: false,
                remaining: 0,
                reset_seconds: 7
            })
        );
        assert_eq!(memo.verdict(11_000), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// With steady demand the limit is reached: no starvation.
        #[test]
        fn steady_demand_reaches_the_limit(gap in 1u64..500) {
            let mut s = Vec::new();
            let mut admitted = 0;
            let mut t = 0;
            while t < L.window_ms {
                if acquire(&mut s, t, L).unwrap().admitted { admitted += 1; }
                t += gap;
            }
            prop_assert_eq!(admitted, L.requests as usize);
        }

        /// The run-length log decides exactly as a plain list of times
        /// would, however many admissions share a millisecond; and whenever
        /// it says the log is full until T, it is, and frees at T.
        #[test]
        fn runs_decide_as_a_plain_log_would(
            steps in proptest::collection::vec((0u64..4, 0u64..400), 1..300),
            requests in 1u32..40,
        ) {
            let limit = Limit { requests, window_ms: 5_000 };
            let mut s = Vec::new();
            let mut plain: Vec<u64> = Vec::new();
            let mut clock = 0u64;
            for (advance, late) in steps {
                // Mostly the same millisecond, sometimes a step, callers late.
                clock += advance * advance * advance * 100;
                let now = clock.saturating_sub(late);
                let at = plain.last().map_or(now, |&newest| now.max(newest));
                plain.retain(|&t| t + limit.window_ms > at);
                let count = plain.len() + usize::from(plain.len() < requests as usize);
                let admitted = plain.len() < requests as usize;
                let freeing = plain.get(count.saturating_sub(requests as usize)).copied()
                    .or(admitted.then_some(at));
                let expected = Verdict {
                    admitted,
                    remaining: (requests as usize).saturating_sub(count) as u32,
                    reset_seconds: freeing.map_or(0, |t| (t + limit.window_ms - at).div_ceil(1000)),
                };
                let (_, full_until) = step(Some(&s), now, limit).unwrap();
                prop_assert_eq!(acquire(&mut s, now, limit).unwrap(), expected);
                if admitted { plain.push(at); }
                prop_assert_eq!(&decode(Some(&s)).unwrap(), &plain);
                if let Some(until) = full_until {
                    prop_assert_eq!(expected.remaining, 0);
                    let admits = |at: u64| matches!(step(Some(&s), at, limit), Ok((Step::Admit { .. }, _)));
                    prop_assert!(!admits(until - 1), "full until {}, but admits before", until);
                    prop_assert!(admits(until), "full until {}, but not free then", until);
                }
            }
        }
    }
}
