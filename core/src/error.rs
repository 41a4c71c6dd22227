//! The error table of the contract (section 6): one code, one status, one JSON shape.

use std::fmt;

/// Every error the gate itself produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    InvalidCredentials,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RateLimited,
    UpstreamUnavailable,
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
    pub code: ErrorCode,
    pub message: String,
}

impl GateError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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

/// The JSON body of section 6. The message is escaped by serde_json; the rest
/// is fixed text (a `json!` map here cost a third of a 429 decision).
pub fn error_body(code: ErrorCode, message: &str) -> String {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        "{{\"error\":{{\"code\":\"{}\",\"message\":{message}}}}}",
        code.as_str()
    )
}

/// A host's own failure (a trapped VM, an unusable configuration): not a
/// contract error, but in the contract's shape, with status 500.
pub fn internal_error_body(message: &str) -> String {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    format!("{{\"error\":{{\"code\":\"internal_error\",\"message\":{message}}}}}")
}

/// The fixed message of the errors whose text never varies.
pub fn upstream_unavailable() -> GateError {
    GateError::new(
        ErrorCode::UpstreamUnavailable,
        "The sessions service could not be reached.",
    )
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
}
