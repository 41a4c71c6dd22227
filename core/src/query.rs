//! Strict query validation (contract section 1).

use std::borrow::Cow;

use crate::error::{ErrorCode, GateError};

/// Largest value a query integer may take: JavaScript's `Number.MAX_SAFE_INTEGER`.
pub(crate) const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// The three optional parameters of the sessions endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SessionQuery {
    /// Sessions that start at or after this time (Unix ms).
    pub start_time: Option<u64>,
    /// Sessions that end at or before this time (Unix ms).
    pub end_time: Option<u64>,
    /// The pagination cursor: sessions that start strictly after this time.
    pub start_after: Option<u64>,
}

const PARAMS: [&str; 3] = ["startTime", "endTime", "startAfter"];

fn invalid(message: String) -> GateError {
    GateError::new(ErrorCode::InvalidRequest, message)
}

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` (form
/// encoding: queries, form bodies; not paths). `None` when an escape is
/// malformed. Text without either is borrowed, as nearly every query is.
pub fn percent_decode(raw: &str, plus_is_space: bool) -> Option<Cow<'_, [u8]>> {
    decode(raw.as_bytes(), plus_is_space)
}

fn decode(bytes: &[u8], plus_is_space: bool) -> Option<Cow<'_, [u8]>> {
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Some(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|h| (*h as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|h| (*h as char).to_digit(16))?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(Cow::Owned(out))
}

/// Longest unknown parameter name quoted back in a message.
const QUOTABLE_LEN: usize = 32;

/// A parameter name fit to quote back in a message: a short identifier. Any
/// other name is described, not echoed, so a client that puts a secret in a
/// query (a 44-character token, a key with its `/`) never sees it reflected in
/// a body that proxies and logs may keep.
fn quotable(name: &[u8]) -> String {
    let identifier = name.len() <= QUOTABLE_LEN
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    match std::str::from_utf8(name) {
        Ok(text) if identifier => text.to_owned(),
        _ => format!("(a {}-byte name)", name.len()),
    }
}

fn parse_integer(name: &str, value: Option<&[u8]>) -> Result<u64, GateError> {
    let bad = || {
        invalid(format!(
            "Query parameter `{name}` must be a decimal integer from 0 to {MAX_SAFE_INTEGER}."
        ))
    };
    let digits = value.ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 16 {
        return Err(bad());
    }
    // Sixteen digits cannot overflow a u64: check and add in one pass.
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        n = n * 10 + u64::from(d - b'0');
    }
    if n > MAX_SAFE_INTEGER {
        return Err(bad());
    }
    Ok(n)
}

/// Parses the raw query (the part after `?`, if any). Every failure is
/// `400 invalid_request` with a message that names the parameter.
pub(crate) fn parse_query(raw: Option<&str>) -> Result<SessionQuery, GateError> {
    let mut values: [Option<u64>; 3] = [None; 3];
    // Bytes, not `str` patterns: the query is ASCII in every answer that
    // passes, and a byte split is a plain loop.
    let raw = raw.unwrap_or("").as_bytes();
    // Nearly every query holds no escape: then nothing needs decoding, and
    // one scan of the whole query says so instead of one per name and value.
    // A fold with no early exit, so the compiler checks 16 bytes at a time.
    let plain = !raw
        .iter()
        .fold(false, |any, &b| any | (b == b'%') | (b == b'+'));
    let unescape = |text| {
        if plain {
            Some(Cow::Borrowed(text))
        } else {
            decode(text, true)
        }
    };
    let pairs = raw.split(|&b| b == b'&');
    for pair in pairs.filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => {
                let (name, rest) = pair.split_at(at);
                (name, rest.get(1..))
            }
            None => (pair, None),
        };
        let name = unescape(raw_name).ok_or_else(|| {
            invalid(format!(
                "Query parameter name `{}` is not valid percent-encoding.",
                quotable(raw_name)
            ))
        })?;
        let Some(index) = PARAMS.iter().position(|p| p.as_bytes() == &*name) else {
            return Err(invalid(format!(
                "Unknown query parameter `{}`: only startTime, endTime and startAfter are accepted.",
                quotable(&name)
            )));
        };
        #[allow(clippy::indexing_slicing)] // the position just found
        let param = PARAMS[index];
        let value = match raw_value {
            Some(v) => Some(unescape(v).ok_or_else(|| {
                invalid(format!(
                    "Query parameter `{param}` is not valid percent-encoding."
                ))
            })?),
            None => None,
        };
        let slot = values
            .get_mut(index)
            .ok_or_else(|| invalid(String::new()))?;
        if slot.is_some() {
            return Err(invalid(format!(
                "Query parameter `{param}` may be given at most once."
            )));
        }
        *slot = Some(parse_integer(param, value.as_deref())?);
    }
    let [start_time, end_time, start_after] = values;
    if let (Some(s), Some(e)) = (start_time, end_time)
        && s > e
    {
        return Err(invalid(
            "Query parameter `startTime` must not be after `endTime`.".to_owned(),
        ));
    }
    Ok(SessionQuery {
        start_time,
        end_time,
        start_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> GateError {
        parse_query(Some(raw)).expect_err(raw)
    }

    #[test]
    fn empty_and_absent_queries() {
        assert_eq!(parse_query(None), Ok(SessionQuery::default()));
        assert_eq!(parse_query(Some("")), Ok(SessionQuery::default()));
        assert_eq!(parse_query(Some("&&")), Ok(SessionQuery::default()));
    }

    #[test]
    fn all_three_parameters() {
        let q = parse_query(Some("startTime=1&endTime=9007199254740991&startAfter=0")).unwrap();
        assert_eq!(q.start_time, Some(1));
        assert_eq!(q.end_time, Some(MAX_SAFE_INTEGER));
        assert_eq!(q.start_after, Some(0));
    }

    #[test]
    fn percent_encoded_digits_are_decoded() {
        let q = parse_query(Some("start%54ime=%31%32")).unwrap();
        assert_eq!(q.start_time, Some(12));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for raw in [
            "startTime=",
            "startTime",
            "startTime=abc",
            "startTime=-1",
            "startTime=+1",
            "startTime=1.5",
            "startTime=1e3",
            "startTime= 1",
            "startTime=9007199254740992",
            "startTime=99999999999999999999",
            "startTime=0x10",
        ] {
            let e = err(raw);
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{raw}");
            assert!(e.message.contains("`startTime`"), "{raw}: {}", e.message);
        }
        assert!(err("endTime=x").message.contains("`endTime`"));
        assert!(err("startAfter=x").message.contains("`startAfter`"));
    }

    #[test]
    fn repeated_parameters_are_rejected() {
        let e = err("startAfter=1&startAfter=1");
        assert!(e.message.contains("`startAfter`") && e.message.contains("once"));
    }

    #[test]
    fn unknown_parameters_are_rejected_by_name() {
        let e = err("limit=10");
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("`limit`"));
        assert!(err("starttime=1").message.contains("`starttime`"));
        assert!(err(&format!("{}=1", "x".repeat(500))).message.len() < 200);
        // Nothing shaped like a secret is echoed back.
        let token = "fus_0123456789012345678901234567890123456789";
        assert!(!err(&format!("{token}=1")).message.contains(token));
        let key = "abcdefghijabcdefghijabcdefghij12/ABCDEFG";
        assert!(!err(&format!("{key}=1")).message.contains("ABCDEFG"));
    }

    #[test]
    fn start_after_end_is_rejected() {
        let e = err("startTime=10&endTime=9");
        assert!(e.message.contains("`startTime`") && e.message.contains("`endTime`"));
        assert!(parse_query(Some("startTime=10&endTime=10")).is_ok());
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        assert_eq!(err("startTime=%4").code, ErrorCode::InvalidRequest);
        assert_eq!(err("%zz=1").code, ErrorCode::InvalidRequest);
    }
}
