//! The error table of the contract (section 6): one code, one status, one JSON shape.

use std::borrow::Cow;
use std::fmt;

/// Every error the gate itself produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `400`: a path, method or query the API does not have the shape of.
    InvalidRequest,
    /// `401`: no `Authorization` header.
    Unauthorized,
    /// `401`: a credential that is malformed, unknown or revoked.
    InvalidCredentials,
    /// `403`: a credential that may not read this site or needs a higher level.
    Forbidden,
    /// `404`: no such route.
    NotFound,
    /// `405`: a method other than `GET` on the sessions route.
    MethodNotAllowed,
    /// `429`: the global limit is spent.
    RateLimited,
    /// `502`: the backend did not answer.
    UpstreamUnavailable,
    /// `503`: the limiter's shared state failed and the gate fails closed.
    LimiterUnavailable,
}

impl ErrorCode {
    /// All codes, in the order of the contract's table (metrics define one counter each).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidCredentials,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::LimiterUnavailable,
    ];

    /// The HTTP status the contract gives this error.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RateLimited => 429,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::LimiterUnavailable => 503,
        }
    }

    /// The code as the JSON body's `error` field spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::LimiterUnavailable => "limiter_unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: its code and the one sentence a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateError {
    /// Which error.
    pub code: ErrorCode,
    /// Most messages are fixed text: borrowed, not copied, per error.
    pub message: Cow<'static, str>,
}

impl GateError {
    /// An error with its code and message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        GateError {
            code,
            message: message.into(),
        }
    }

    /// `{"error":{"code":"…","message":"…"}}`
    pub fn body(&self) -> String {
        error_body(self.code, &self.message)
    }
}

/// The JSON body of section 6, written into one buffer: it is on every
/// error, and the 429 is the answer a flood gets: no map is built.
pub fn error_body(code: ErrorCode, message: &str) -> String {
    body_with_code(code.as_str(), message)
}

/// `400 invalid_request` for a request its host refused before the gate
/// saw it: not valid HTTP/1.1 (a malformed or oversized request line or
/// header), or a header that may come once sent twice. `serve`'s HTTP
/// parser and nginx (WasmX) answer such requests themselves, nginx among
/// them every request with two `Authorization` headers; both answer this.
pub fn malformed_request_body() -> String {
    error_body(
        ErrorCode::InvalidRequest,
        "The request is not valid HTTP/1.1: a malformed or oversized request line or header, \
         or a header sent twice that may come once (Authorization).",
    )
}

/// A host's own failure (a trapped VM, an unusable configuration): not a
/// contract error, but in the contract's shape, with status 500.
pub fn internal_error_body(message: &str) -> String {
    body_with_code("internal_error", message)
}

fn body_with_code(code: &str, message: &str) -> String {
    let mut out = String::with_capacity(36 + code.len() + message.len());
    out.push_str("{\"error\":{\"code\":\"");
    out.push_str(code);
    out.push_str("\",\"message\":");
    push_json_string(&mut out, message);
    out.push_str("}}");
    out
}

/// Appends `s` as a JSON string literal, quotes included: `"`, `\` and the
/// control characters escaped (RFC 8259 section 7), everything else as is.
/// Scans bytes: every byte that needs escaping is ASCII, and no byte of a
/// multi-byte UTF-8 character is below 0x80, so each cut is a char boundary.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    // The usual case, every fixed message: nothing to escape. A fold with no
    // early exit, so the compiler can check many bytes at a time.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b == b'"') | (b == b'\\') | (b < 0x20)
    });
    if !needs_escape {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut plain_from = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "\\u00",
            _ => continue,
        };
        out.push_str(s.get(plain_from..i).unwrap_or_default());
        out.push_str(escape);
        if b < 0x20 && escape.len() == 4 {
            out.push(char::from(
                HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
            ));
            out.push(char::from(
                HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0'),
            ));
        }
        plain_from = i + 1;
    }
    out.push_str(s.get(plain_from..).unwrap_or_default());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_error_table() {
        let table = [
            (400, "invalid_request"),
            (401, "unauthorized"),
            (401, "invalid_credentials"),
            (403, "forbidden"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (429, "rate_limited"),
            (502, "upstream_unavailable"),
            (503, "limiter_unavailable"),
        ];
        let got: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.status(), c.as_str()))
            .collect();
        assert_eq!(got, table);
    }

    #[test]
    fn body_is_the_contract_shape_and_escapes() {
        let body = error_body(ErrorCode::Forbidden, "a \"quoted\" word");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], "forbidden");
        assert_eq!(v["error"]["message"], "a \"quoted\" word");
        assert_eq!(v.as_object().map(|o| o.len()), Some(1));
        assert_eq!(v["error"].as_object().map(|o| o.len()), Some(2));
    }

    proptest::proptest! {
        #[test]
        fn json_strings_round_trip(s in proptest::prelude::any::<String>()) {
            let mut out = String::new();
            push_json_string(&mut out, &s);
            let back: Result<String, _> = serde_json::from_str(&out);
            proptest::prop_assert_eq!(back.ok(), Some(s));
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\u{0}b\u{1f}c\"d\\e\nf");
        assert_eq!(out, r#""a\u0000b\u001fc\"d\\e\nf""#);
    }
}
