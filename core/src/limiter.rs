//! The global limiter (contract section 4): at most N admissions in any rolling
//! window of W, exactly, across every caller that shares one compare-and-swap store.
//!
//! The state is the sorted list of admission times still inside the window (a
//! sliding log). Exactness needs it: the moment the next slot frees is the
//! expiry of the N-th most recent admission, which no counter can know.
//! Admission times never go backwards (`max(now, newest)`), so callers whose
//! clocks disagree by a little still keep every window at or under N.
//!
//! The log is stored run-length: one entry per distinct millisecond with how
//! many admissions it holds. It loses nothing (times are milliseconds already)
//! and bounds the state by the window's milliseconds as well as by N: a
//! window admitting 50,000 requests a second is ~1,000 entries, not 50,000,
//! and every step reads, checks and writes the whole state.

/// Bounded retries on CAS mismatch before the engine gives up (`503`).
pub const MAX_CAS_ATTEMPTS: usize = 64;
/// Upper bound on `requests` so the shared state stays bounded (at most
/// 12 bytes an admission, less when admissions share a millisecond).
pub const MAX_REQUESTS: u32 = 100_000;

/// The state's format: `SGL2`, then 12-byte runs (time in ms, then count,
/// little-endian), times strictly ascending, counts at least 1.
const MAGIC: &[u8; 4] = b"SGL2";
/// The format before runs (one 8-byte time per admission), still read so a
/// filter upgraded in place takes over the state its predecessor left in
/// Envoy's shared data instead of failing closed on it.
const MAGIC_V1: &[u8; 4] = b"SGL1";
const RUN: usize = 12;

/// The key of the global limiter's state in the shared store.
pub const LIMITER_KEY: &str = "sessiongate.limiter.v1";

/// A key-value store that offers compare-and-swap per key. Envoy's shared
/// data, a Durable Object, Redis (`WATCH`/`MULTI`) and wasi keyvalue atomics
/// all fit.
pub trait SharedStore {
    /// The current value of `key` and its version. Absent is `(None, 0)`.
    fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError>;
    /// Writes `value` if `key`'s version is still `version`.
    fn set(&mut self, key: &str, value: &[u8], version: u32) -> Result<CasOutcome, StoreError>;
    /// Hands `key`'s value and version to `read` without copying them where
    /// the store can lend its bytes (an in-memory store can; a host call
    /// cannot, and the default copies through [`SharedStore::get`]).
    fn read(
        &mut self,
        key: &str,
        read: &mut dyn FnMut(Option<&[u8]>, u32),
    ) -> Result<(), StoreError> {
        let (value, version) = self.get(key)?;
        read(value.as_deref(), version);
        Ok(())
    }
}

/// What one read of the limiter's state decided.
enum Step {
    /// Over the limit: nothing to write.
    Full(Verdict),
    /// Write `next` if the state is still at `version`; the verdict if it is.
    Admit {
        next: Vec<u8>,
        version: u32,
        verdict: Verdict,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Written,
    Mismatch,
}

/// The store could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// Why the limiter could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterError {
    Store(StoreError),
    /// The stored bytes are not a limiter state.
    Corrupt,
    /// Every CAS attempt lost to another writer.
    Contended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub window_ms: u64,
}

impl Limit {
    pub fn new(requests: u32, window_seconds: u32) -> Self {
        Limit {
            requests,
            window_ms: u64::from(window_seconds) * 1000,
        }
    }

    pub fn window_seconds(&self) -> u64 {
        self.window_ms / 1000
    }
}

/// What the limiter says about one request, with what the headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub admitted: bool,
    /// Slots left in the window after this decision.
    pub remaining: u32,
    /// Whole seconds until the next slot frees (0 when nothing is in the window).
    pub reset_seconds: u64,
}

/// A validated state, read in place: the stored bytes are the log, so a
/// limiter step decodes nothing into memory of its own.
#[derive(Clone, Copy)]
struct Log<'a> {
    runs: &'a [[u8; RUN]],
    /// Admissions in `runs`.
    total: u64,
}

fn run_time(run: &[u8; RUN]) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = *run;
    u64::from_le_bytes([a, b, c, d, e, f, g, h])
}

fn run_count(run: &[u8; RUN]) -> u64 {
    let [.., a, b, c, d] = *run;
    u64::from(u32::from_le_bytes([a, b, c, d]))
}

/// The stored bytes in the current format: borrowed, or converted from the
/// one-time-per-admission format.
fn current_format(bytes: Option<&[u8]>) -> Result<std::borrow::Cow<'_, [u8]>, LimiterError> {
    let bytes = bytes.unwrap_or_default();
    let Some(times) = bytes.strip_prefix(MAGIC_V1) else {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    };
    let (times, rest) = times.as_chunks::<8>();
    if !rest.is_empty() {
        return Err(LimiterError::Corrupt);
    }
    let mut runs = MAGIC.to_vec();
    for t in times {
        push_admission(&mut runs, u64::from_le_bytes(*t));
    }
    Ok(std::borrow::Cow::Owned(runs))
}

impl<'a> Log<'a> {
    /// An absent or empty value is the empty state.
    fn parse(bytes: &'a [u8]) -> Result<Log<'a>, LimiterError> {
        if bytes.is_empty() {
            return Ok(Log {
                runs: &[],
                total: 0,
            });
        }
        let body = bytes.strip_prefix(MAGIC).ok_or(LimiterError::Corrupt)?;
        let (runs, rest) = body.as_chunks::<RUN>();
        if !rest.is_empty() {
            return Err(LimiterError::Corrupt);
        }
        // One pass: counts at least 1, times strictly ascending, the total.
        let mut total = 0u64;
        let mut newest = None;
        for run in runs {
            let (time, count) = (run_time(run), run_count(run));
            if count == 0 || newest.is_some_and(|n| n >= time) {
                return Err(LimiterError::Corrupt);
            }
            total += count;
            newest = Some(time);
        }
        // Every state written holds at most `requests` admissions, and
        // `requests` is capped: more is not a state we wrote (and `decode`
        // must not expand a forged count into gigabytes).
        if total > u64::from(MAX_REQUESTS) {
            return Err(LimiterError::Corrupt);
        }
        Ok(Log { runs, total })
    }

    fn len(self) -> usize {
        usize::try_from(self.total).unwrap_or(usize::MAX)
    }

    /// The time of the `i`-th admission, oldest first.
    fn at(self, i: usize) -> Option<u64> {
        let mut before = 0u64;
        for run in self.runs {
            before += run_count(run);
            if (i as u64) < before {
                return Some(run_time(run));
            }
        }
        None
    }

    fn last(self) -> Option<u64> {
        self.runs.last().map(run_time)
    }

    /// Times still inside the window that ends at `now`: `t > now - W`.
    fn live(self, now: u64, limit: Limit) -> Log<'a> {
        let first = self
            .runs
            .partition_point(|r| run_time(r).saturating_add(limit.window_ms) <= now);
        let (expired, live) = self.runs.split_at(first);
        Log {
            runs: live,
            total: self
                .total
                .saturating_sub(expired.iter().map(run_count).sum::<u64>()),
        }
    }

    /// The encoded state of this log with one admission at `at` (never
    /// before the newest) added.
    fn encode_with(self, at: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + (self.runs.len() + 1) * RUN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.runs.as_flattened());
        push_admission(&mut out, at);
        out
    }
}

/// Adds one admission at `at` to an encoded state whose newest run is not
/// after it: the newest run's count if it is the same millisecond, else a run.
fn push_admission(out: &mut Vec<u8>, at: u64) {
    let newest = out.len().checked_sub(RUN).filter(|&i| i >= MAGIC.len());
    if let Some(run) = newest
        .and_then(|i| out.get_mut(i..))
        .and_then(|r| <&mut [u8; RUN]>::try_from(r).ok())
        && run_time(run) == at
        && let Some(count) = u32::try_from(run_count(run))
            .ok()
            .and_then(|c| c.checked_add(1))
    {
        let [.., a, b, c, d] = run;
        [*a, *b, *c, *d] = count.to_le_bytes();
        return;
    }
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
}

/// Decodes a state into its admission times, oldest first; an absent value
/// is the empty state.
pub fn decode(bytes: Option<&[u8]>) -> Result<Vec<u64>, LimiterError> {
    let bytes = current_format(bytes)?;
    let log = Log::parse(&bytes)?;
    Ok(log
        .runs
        .iter()
        .flat_map(|r| std::iter::repeat_n(run_time(r), run_count(r) as usize))
        .collect())
}

/// Encodes admission times (oldest first; equal times share a run).
pub fn encode(times: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + times.len() * RUN);
    out.extend_from_slice(MAGIC);
    for &t in times {
        push_admission(&mut out, t);
    }
    out
}

fn ceil_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The verdict on the live entries, followed by `admitted_at` if this step
/// recorded one.
fn verdict(live: Log<'_>, admitted_at: Option<u64>, now: u64, limit: Limit) -> Verdict {
    let admitted = admitted_at.is_some();
    let count = live.len() + usize::from(admitted);
    let requests = limit.requests as usize;
    let remaining = requests.saturating_sub(count) as u32;
    // The slot that frees next for this caller: if over the limit, the entry
    // whose expiry brings the count back under it; else the oldest one.
    let pivot = count.saturating_sub(requests);
    let entry = live
        .at(pivot)
        .or(admitted_at.filter(|_| pivot == live.len()));
    // Saturating: a stored time near the end of u64 (a forged state, a clock
    // far ahead) must not wrap into a reset in the past.
    let reset_seconds = entry.map_or(0, |t| {
        ceil_seconds(t.saturating_add(limit.window_ms).saturating_sub(now))
    });
    Verdict {
        admitted,
        remaining,
        reset_seconds,
    }
}

/// One limiter step: admit and record `now`, or deny; retried on CAS mismatch.
pub fn acquire(
    store: &mut dyn SharedStore,
    now: u64,
    limit: Limit,
) -> Result<Verdict, LimiterError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let mut step = Err(LimiterError::Corrupt);
        store
            .read(LIMITER_KEY, &mut |bytes, version| {
                let bytes = current_format(bytes);
                step = bytes
                    .as_deref()
                    .map_err(Clone::clone)
                    .and_then(Log::parse)
                    .map(|log| {
                        // Never record a time before the newest one: keeps the log
                        // sorted and every window exact when callers' clocks
                        // disagree slightly.
                        let at = log.last().map_or(now, |newest| now.max(newest));
                        let window = log.live(at, limit);
                        if window.len() >= limit.requests as usize {
                            return Step::Full(verdict(window, None, at, limit));
                        }
                        Step::Admit {
                            next: window.encode_with(at),
                            version,
                            verdict: verdict(window, Some(at), at, limit),
                        }
                    });
            })
            .map_err(LimiterError::Store)?;
        let (next, version, admitted) = match step? {
            Step::Full(v) => return Ok(v),
            Step::Admit {
                next,
                version,
                verdict,
            } => (next, version, verdict),
        };
        match store
            .set(LIMITER_KEY, &next, version)
            .map_err(LimiterError::Store)?
        {
            CasOutcome::Written => return Ok(admitted),
            CasOutcome::Mismatch => continue,
        }
    }
    Err(LimiterError::Contended)
}

/// Reads the state without spending anything: the headers of a response that
/// never reached the limiter.
pub fn peek(store: &mut dyn SharedStore, now: u64, limit: Limit) -> Result<Verdict, LimiterError> {
    let (bytes, _) = store.get(LIMITER_KEY).map_err(LimiterError::Store)?;
    let bytes = current_format(bytes.as_deref())?;
    let log = Log::parse(&bytes)?;
    let at = log.last().map_or(now, |newest| now.max(newest));
    Ok(verdict(log.live(at, limit), None, at, limit))
}

/// `RateLimit-Policy: 20;w=60`
pub fn policy_header(limit: Limit) -> String {
    format!("{};w={}", limit.requests, limit.window_seconds())
}

/// `RateLimit: limit=20, remaining=N, reset=S`. Written by hand:
/// it is on every answer of the API, and `format!` was a quarter of a
/// decision.
pub fn ratelimit_header(limit: Limit, v: &Verdict) -> String {
    let mut out = String::with_capacity(48);
    out.push_str("limit=");
    push_decimal(&mut out, u64::from(limit.requests));
    out.push_str(", remaining=");
    push_decimal(&mut out, u64::from(v.remaining));
    out.push_str(", reset=");
    push_decimal(&mut out, v.reset_seconds);
    out
}

/// Appends `n` in decimal, without the formatting machinery (and straight
/// into a `String`: no UTF-8 check of bytes that are digits). Numbers under
/// 100 (a remaining count, seconds to a reset) take the short way.
pub fn push_decimal(out: &mut String, mut n: u64) {
    let digit = |d: u64| char::from(b'0' + (d % 10) as u8);
    if n < 10 {
        out.push(digit(n));
        return;
    }
    if n < 100 {
        out.push(digit(n / 10));
        out.push(digit(n));
        return;
    }
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in digits.get(start..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// An in-memory CAS store: for tests, benchmarks, single-process hosts and
/// the Durable Object (which is single-threaded).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// [`LIMITER_KEY`]'s entry, apart: it is read and written on every
    /// admitted request, and hashing its key was a fifth of a decision.
    limiter: Option<(Vec<u8>, u32)>,
    entries: std::collections::HashMap<String, (Vec<u8>, u32)>,
}

impl MemoryStore {
    fn entry(&self, key: &str) -> Option<&(Vec<u8>, u32)> {
        if key == LIMITER_KEY {
            self.limiter.as_ref()
        } else {
            self.entries.get(key)
        }
    }

    pub fn value(&self, key: &str) -> Option<&[u8]> {
        self.entry(key).map(|(v, _)| v.as_slice())
    }

    /// 0 for a key never written.
    pub fn version(&self, key: &str) -> u32 {
        self.entry(key).map_or(0, |(_, v)| *v)
    }

    /// Restores a persisted value (version 1).
    pub fn load(&mut self, key: &str, value: Vec<u8>) {
        if key == LIMITER_KEY {
            self.limiter = Some((value, 1));
        } else {
            self.entries.insert(key.to_owned(), (value, 1));
        }
    }
}

impl SharedStore for MemoryStore {
    fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        Ok(self
            .entry(key)
            .map_or((None, 0), |(v, n)| (Some(v.clone()), *n)))
    }

    fn read(
        &mut self,
        key: &str,
        read: &mut dyn FnMut(Option<&[u8]>, u32),
    ) -> Result<(), StoreError> {
        match self.entry(key) {
            Some((value, version)) => read(Some(value), *version),
            None => read(None, 0),
        }
        Ok(())
    }

    fn set(&mut self, key: &str, value: &[u8], version: u32) -> Result<CasOutcome, StoreError> {
        let slot = if key == LIMITER_KEY {
            self.limiter.as_mut()
        } else {
            self.entries.get_mut(key)
        };
        // A key written before keeps its buffer: no allocation per step.
        if let Some((stored, current)) = slot {
            if version != *current {
                return Ok(CasOutcome::Mismatch);
            }
            stored.clear();
            stored.extend_from_slice(value);
            *current = current.wrapping_add(1).max(1);
            return Ok(CasOutcome::Written);
        }
        if version != 0 {
            return Ok(CasOutcome::Mismatch);
        }
        self.load(key, value.to_vec());
        Ok(CasOutcome::Written)
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

    #[test]
    fn admits_n_then_denies_until_the_oldest_expires() {
        let mut s = MemoryStore::default();
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
        let mut s = MemoryStore::default();
        for t in [9_000, 9_100, 9_200] {
            assert!(acquire(&mut s, t, L).unwrap().admitted);
        }
        assert!(!acquire(&mut s, 10_100, L).unwrap().admitted);
        assert!(!acquire(&mut s, 18_999, L).unwrap().admitted);
        assert!(acquire(&mut s, 19_000, L).unwrap().admitted);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let mut s = MemoryStore::default();
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
        let mut s = MemoryStore::default();
        acquire(&mut s, 0, L).unwrap();
        let before = s.version(LIMITER_KEY);
        let v = peek(&mut s, 100, L).unwrap();
        assert_eq!(v.remaining, 2);
        assert_eq!(s.version(LIMITER_KEY), before);
        assert_eq!(
            peek(&mut MemoryStore::default(), 0, L)
                .unwrap()
                .reset_seconds,
            0
        );
    }

    proptest! {
        #[test]
        fn decimal_matches_display(n in any::<u64>()) {
            let mut out = String::from("x");
            push_decimal(&mut out, n);
            prop_assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn small_decimals_take_the_short_way_right() {
        for n in 0..1_000u64 {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn headers() {
        let l = Limit::new(20, 60);
        assert_eq!(policy_header(l), "20;w=60");
        let v = Verdict {
            admitted: true,
            remaining: 19,
            reset_seconds: 60,
        };
        assert_eq!(ratelimit_header(l, &v), "limit=20, remaining=19, reset=60");
    }

    #[test]
    fn corrupt_state_fails_closed() {
        let mut s = MemoryStore::default();
        s.load(LIMITER_KEY, b"garbage".to_vec());
        assert_eq!(acquire(&mut s, 0, L), Err(LimiterError::Corrupt));
        s.load(LIMITER_KEY, encode(&[5, 4]));
        assert_eq!(acquire(&mut s, 0, L), Err(LimiterError::Corrupt));
        // A run of nothing, or a millisecond in two runs, is not a state we write.
        let mut zero = b"SGL2".to_vec();
        zero.extend_from_slice(&5u64.to_le_bytes());
        zero.extend_from_slice(&0u32.to_le_bytes());
        s.load(LIMITER_KEY, zero);
        assert_eq!(acquire(&mut s, 0, L), Err(LimiterError::Corrupt));
        let mut split = encode(&[5]);
        split.extend_from_slice(&encode(&[5])[4..]);
        s.load(LIMITER_KEY, split);
        assert_eq!(acquire(&mut s, 0, L), Err(LimiterError::Corrupt));
        // More admissions than any limit allows.
        let mut forged = b"SGL2".to_vec();
        forged.extend_from_slice(&5u64.to_le_bytes());
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(Some(&forged)), Err(LimiterError::Corrupt));
        let mut most = b"SGL2".to_vec();
        most.extend_from_slice(&5u64.to_le_bytes());
        most.extend_from_slice(&MAX_REQUESTS.to_le_bytes());
        assert_eq!(
            decode(Some(&most)).map(|t| t.len()),
            Ok(MAX_REQUESTS as usize)
        );
    }

    #[test]
    fn admissions_in_one_millisecond_share_a_run() {
        let limit = Limit::new(1_000, 1);
        let mut s = MemoryStore::default();
        for _ in 0..500 {
            assert!(acquire(&mut s, 7, limit).unwrap().admitted);
        }
        assert!(acquire(&mut s, 8, limit).unwrap().admitted);
        // Two runs of 12 bytes, not 501 times.
        assert_eq!(s.value(LIMITER_KEY).map(<[u8]>::len), Some(4 + 2 * 12));
        let v = peek(&mut s, 8, limit).unwrap();
        assert_eq!(v.remaining, 1_000 - 501);
    }

    /// A filter upgraded in place finds its predecessor's state in Envoy's
    /// shared data: it carries on from it rather than failing closed.
    #[test]
    fn the_one_time_per_admission_format_is_read_and_replaced() {
        let mut old = b"SGL1".to_vec();
        for t in [1_000u64, 1_000, 2_000] {
            old.extend_from_slice(&t.to_le_bytes());
        }
        let mut s = MemoryStore::default();
        s.load(LIMITER_KEY, old);
        assert_eq!(decode(s.value(LIMITER_KEY)).unwrap(), [1_000, 1_000, 2_000]);
        let v = acquire(&mut s, 3_000, L).unwrap();
        assert!(!v.admitted, "the old state's three admissions still count");
        assert_eq!(v.reset_seconds, 8);
        assert!(acquire(&mut s, 11_000, L).unwrap().admitted);
        assert!(s.value(LIMITER_KEY).unwrap().starts_with(MAGIC));
        assert_eq!(decode(s.value(LIMITER_KEY)).unwrap(), [2_000, 11_000]);
        s.load(LIMITER_KEY, b"SGL1\x01".to_vec());
        assert_eq!(acquire(&mut s, 0, L), Err(LimiterError::Corrupt));
    }

    struct Failing;
    impl SharedStore for Failing {
        fn get(&mut self, _: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
            Err(StoreError("down".into()))
        }
        fn set(&mut self, _: &str, _: &[u8], _: u32) -> Result<CasOutcome, StoreError> {
            Err(StoreError("down".into()))
        }
    }

    /// Loses every CAS, as if another writer always got there first.
    struct AlwaysMismatch(MemoryStore);
    impl SharedStore for AlwaysMismatch {
        fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
            self.0.get(key)
        }
        fn set(&mut self, _: &str, _: &[u8], _: u32) -> Result<CasOutcome, StoreError> {
            Ok(CasOutcome::Mismatch)
        }
    }

    #[test]
    fn store_failures_and_endless_contention_are_errors() {
        assert!(matches!(
            acquire(&mut Failing, 0, L),
            Err(LimiterError::Store(_))
        ));
        assert_eq!(
            acquire(&mut AlwaysMismatch(MemoryStore::default()), 0, L),
            Err(LimiterError::Contended)
        );
    }

    /// A shared store whose writes may be lost to interleaved callers: each
    /// caller reads, then (per the strategy) another caller's write lands
    /// before its own `set`, which then mismatches and retries.
    struct Interleaved<'a> {
        shared: &'a mut MemoryStore,
        /// Interfering admissions to land between this caller's get and set.
        interference: Vec<u64>,
        log: &'a mut Vec<u64>,
    }

    impl SharedStore for Interleaved<'_> {
        fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
            self.shared.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], version: u32) -> Result<CasOutcome, StoreError> {
            if let Some(t) = self.interference.pop() {
                // Another caller completes a whole admission first.
                if let Ok(v) = acquire(self.shared, t, L)
                    && v.admitted
                {
                    let times = decode(self.shared.value(LIMITER_KEY)).unwrap_or_default();
                    self.log.push(times.last().copied().unwrap_or(t));
                }
            }
            self.shared.set(key, value, version)
        }
    }

    fn max_in_any_window(times: &[u64], window_ms: u64) -> usize {
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        (0..sorted.len())
            .map(|i| {
                let end = sorted[i] + window_ms;
                sorted[i..].iter().take_while(|&&t| t < end).count()
            })
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never more than N admissions in any window of W, whatever the
        /// arrival times, clock jitter between callers and CAS conflicts.
        #[test]
        fn never_more_than_n_in_any_window(
            steps in proptest::collection::vec((0u64..2_000, 0u64..300, proptest::collection::vec(0u64..300, 0..3)), 1..200)
        ) {
            let mut shared = MemoryStore::default();
            let mut admitted = Vec::new();
            let mut clock = 0u64;
            for (advance, jitter, interference) in steps {
                clock += advance;
                // Callers see the clock up to 300 ms late, as VMs on other threads may.
                let now = clock.saturating_sub(jitter);
                let interference = interference.into_iter().map(|j| clock.saturating_sub(j)).collect();
                let mut log = Vec::new();
                let mut store = Interleaved { shared: &mut shared, interference, log: &mut log };
                let result = acquire(&mut store, now, L);
                admitted.append(&mut log);
                if let Ok(v) = result {
                    if v.admitted {
                        let times = decode(shared.value(LIMITER_KEY)).unwrap();
                        admitted.push(*times.last().unwrap());
                    }
                    prop_assert!(v.remaining <= L.requests);
                }
            }
            prop_assert!(max_in_any_window(&admitted, L.window_ms) <= L.requests as usize);
        }

        /// With steady demand the limit is reached: no starvation.
        #[test]
        fn steady_demand_reaches_the_limit(gap in 1u64..500) {
            let mut s = MemoryStore::default();
            let mut admitted = 0;
            let mut t = 0;
            while t < L.window_ms {
                if acquire(&mut s, t, L).unwrap().admitted { admitted += 1; }
                t += gap;
            }
            prop_assert_eq!(admitted, L.requests as usize);
        }

        /// The run-length log decides exactly as a plain list of times
        /// would, however many admissions share a millisecond.
        #[test]
        fn runs_decide_as_a_plain_log_would(
            steps in proptest::collection::vec((0u64..4, 0u64..400), 1..300),
            requests in 1u32..40,
        ) {
            let limit = Limit { requests, window_ms: 5_000 };
            let mut s = MemoryStore::default();
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
                if admitted { plain.push(at); }
                prop_assert_eq!(acquire(&mut s, now, limit).unwrap(), expected);
                let stored = decode(s.value(LIMITER_KEY)).unwrap();
                prop_assert_eq!(&stored, &plain);
            }
        }

        #[test]
        fn encode_decode_roundtrip(mut times in proptest::collection::vec(any::<u64>(), 0..50)) {
            times.sort_unstable();
            prop_assert_eq!(decode(Some(&encode(&times))).unwrap(), times);
        }
    }
}
