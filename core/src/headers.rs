//! The values of the rate-limit headers, and decimal writing for them.

use crate::limiter::{Limit, Verdict};

/// `RateLimit-Policy: 20;w=60`
pub fn policy(limit: Limit) -> String {
    format!("{};w={}", limit.requests, limit.window_seconds())
}

/// `RateLimit: limit=20, remaining=N, reset=S`. Written by hand: it is on
/// every answer of the API (BENCHMARKS.md has what `format!` cost).
pub fn ratelimit(limit: Limit, v: &Verdict) -> String {
    let mut out = String::with_capacity(48);
    out.push_str("limit=");
    push_decimal(&mut out, u64::from(limit.requests));
    out.push_str(", remaining=");
    push_decimal(&mut out, u64::from(v.remaining));
    out.push_str(", reset=");
    push_decimal(&mut out, v.reset_seconds);
    out
}

pub fn decimal(n: u64) -> String {
    let mut digits = String::with_capacity(20);
    push_decimal(&mut digits, n);
    digits
}

/// Appends `n` in decimal, straight into a `String`. Numbers under 100 (a
/// remaining count, seconds to a reset: every answer has two) take the
/// short way.
pub fn push_decimal(out: &mut String, mut n: u64) {
    let digit = |d: u64| char::from(b'0' + (d % 10) as u8);
    if n < 100 {
        if n >= 10 {
            out.push(digit(n / 10));
        }
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
    #[allow(clippy::indexing_slicing)] // `start` counts down from the length, at most 20 times.
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            assert_eq!(decimal(n), n.to_string());
        }
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
        assert_eq!(ratelimit(l, &v), "limit=20, remaining=19, reset=60");
        assert_eq!(decimal(0), "0");
    }
}
