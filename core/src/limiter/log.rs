//! The limiter's stored state: the sliding log of admission times still
//! inside the window, run-length encoded (one entry per distinct millisecond
//! with how many admissions it holds). It loses nothing (times are
//! milliseconds already) and bounds the state by the window's milliseconds as
//! well as by the limit: every step reads, checks and writes the whole state.
//!
//! Format: `SGL2`, then 12-byte runs (time in ms, then count, little-endian),
//! times strictly ascending, counts at least 1. An absent or empty value is
//! the empty log.

use super::{Limit, LimiterError, MAX_REQUESTS};

const MAGIC: &[u8; 4] = b"SGL2";
const RUN: usize = 12;

/// A validated log, read in place: a limiter step decodes nothing into
/// memory of its own.
#[derive(Clone, Copy)]
pub(super) struct Log<'a> {
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

impl<'a> Log<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Log<'a>, LimiterError> {
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

    pub(super) fn len(self) -> u64 {
        self.total
    }

    /// The time of the `i`-th admission, oldest first.
    pub(super) fn at(self, i: u64) -> Option<u64> {
        let mut before = 0u64;
        for run in self.runs {
            before += run_count(run);
            if i < before {
                return Some(run_time(run));
            }
        }
        None
    }

    pub(super) fn newest(self) -> Option<u64> {
        self.runs.last().map(run_time)
    }

    /// The admissions still inside the window that ends at `now`: `t > now - W`.
    pub(super) fn live(self, now: u64, limit: Limit) -> Log<'a> {
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

    /// This log with one admission at `at` (never before the newest) added.
    pub(super) fn encode_with(self, at: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + (self.runs.len() + 1) * RUN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.runs.as_flattened());
        push_admission(&mut out, at);
        out
    }
}

/// Adds one admission at `at` to an encoded log whose newest run is not
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
    let log = Log::parse(bytes.unwrap_or_default())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn corrupt_logs_are_refused() {
        assert_eq!(decode(Some(b"garbage")), Err(LimiterError::Corrupt));
        assert_eq!(decode(Some(&encode(&[5, 4]))), Err(LimiterError::Corrupt));
        // A run of nothing, or a millisecond in two runs, is not a state we write.
        let mut zero = MAGIC.to_vec();
        zero.extend_from_slice(&5u64.to_le_bytes());
        zero.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(Some(&zero)), Err(LimiterError::Corrupt));
        let mut split = encode(&[5]);
        split.extend_from_slice(&encode(&[5])[4..]);
        assert_eq!(decode(Some(&split)), Err(LimiterError::Corrupt));
        // More admissions than any limit allows.
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&5u64.to_le_bytes());
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(Some(&forged)), Err(LimiterError::Corrupt));
        let mut most = MAGIC.to_vec();
        most.extend_from_slice(&5u64.to_le_bytes());
        most.extend_from_slice(&MAX_REQUESTS.to_le_bytes());
        assert_eq!(
            decode(Some(&most)).map(|t| t.len()),
            Ok(MAX_REQUESTS as usize)
        );
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(mut times in proptest::collection::vec(any::<u64>(), 0..50)) {
            times.sort_unstable();
            prop_assert_eq!(decode(Some(&encode(&times))).unwrap(), times);
        }
    }
}
