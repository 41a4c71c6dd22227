//! The values of the rate-limit headers, and decimal writing for them.

use crate::limiter::{Limit, Verdict};

/// `RateLimit-Policy: 20;w=60`
pub(crate) fn policy(limit: Limit) -> String {
    format!("{};w={}", limit.requests, limit.window_seconds())
}

/// `RateLimit: limit=20, remaining=N, reset=S`. Written by hand into a
/// value kept inline: it is on every answer of the API, so it allocates
/// nothing.
pub(crate) fn ratelimit(limit: Limit, v: &Verdict) -> Computed {
    let mut out = Computed::default();
    out.push(b"limit=");
    out.push_decimal(u64::from(limit.requests));
    out.push(b", remaining=");
    out.push_decimal(u64::from(v.remaining));
    out.push(b", reset=");
    out.push_decimal(v.reset_seconds);
    out
}

/// `n` in decimal (`Retry-After`).
pub(crate) fn decimal(n: u64) -> Computed {
    let mut out = Computed::default();
    out.push_decimal(n);
    out
}

/// Room for the longest value the gate computes: `RateLimit` with every
/// field at its largest (`limit=` and `remaining=` are `u32`s, `reset=` a
/// `u64`).
const CAPACITY: usize = 71;
const _: () =
    assert!("limit=4294967295, remaining=4294967295, reset=18446744073709551615".len() <= CAPACITY);

/// A header value the gate computes (`RateLimit`, `Retry-After`): a few
/// dozen ASCII bytes, held inline, so that a decision allocates no header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Computed {
    len: u8,
    bytes: [u8; CAPACITY],
}

impl Default for Computed {
    fn default() -> Self {
        Computed {
            len: 0,
            bytes: [0; CAPACITY],
        }
    }
}

impl Computed {
    /// Appends ASCII text of a length known when compiling (so the copy is
    /// a few moves, not a call); text that would not fit is not written
    /// (nothing the gate writes is that long: [`CAPACITY`] is checked).
    fn push<const N: usize>(&mut self, text: &[u8; N]) {
        let at = usize::from(self.len);
        if let Some(room) = self.bytes.get_mut(at..at + N) {
            room.copy_from_slice(text);
            self.len += N as u8;
        }
    }

    /// Appends `n` in decimal, each digit written in its place.
    fn push_decimal(&mut self, mut n: u64) {
        let width = n.checked_ilog10().map_or(1, |d| d as usize + 1);
        let at = usize::from(self.len);
        if let Some(room) = self.bytes.get_mut(at..at + width) {
            for slot in room.iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                n /= 10;
            }
            self.len += width as u8;
        }
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Only ASCII is ever pushed.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decimal_matches_display(n in any::<u64>()) {
            let d = decimal(n);
            prop_assert_eq!(d.as_str(), n.to_string());
        }

        #[test]
        fn ratelimit_matches_format(requests in 1..=u32::MAX, remaining in any::<u32>(), reset in any::<u64>()) {
            let v = Verdict { admitted: true, remaining, reset_seconds: reset };
            let l = Limit::new(requests, 60);
            let value = ratelimit(l, &v);
            prop_assert_eq!(
                value.as_str(),
                format!("limit={requests}, remaining={remaining}, reset={reset}")
            );
        }
    }

    #[test]
    fn the_longest_value_fits() {
        let v = Verdict {
            admitted: false,
            remaining: u32::MAX,
            reset_seconds: u64::MAX,
        };
        let longest = "limit=4294967295, remaining=4294967295, reset=18446744073709551615";
        assert_eq!(ratelimit(Limit::new(u32::MAX, 60), &v).as_str(), longest);
        let mut full = Computed::default();
        full.push(&[b'x'; CAPACITY - 1]);
        full.push(b"yz");
        let xs = "x".repeat(CAPACITY - 1);
        assert_eq!(full.as_str(), xs, "text that does not fit is not written");
        full.push_decimal(10);
        assert_eq!(full.as_str(), xs, "nor digits");
        full.push_decimal(7);
        assert_eq!(full.as_str(), format!("{xs}7"));
    }

    #[test]
    fn headers() {
        let l = Limit::new(20, 60);
        assert_eq!(policy(l), "20;w=60");
        let v = Verdict {
            admitted: true,
            remaining: 19,
            reset_seconds: 60,
        };
        assert_eq!(
            ratelimit(l, &v).as_str(),
            "limit=20, remaining=19, reset=60"
        );
        assert_eq!(decimal(0).as_str(), "0");
    }
}
