//! What a decision is made of: the request as a host sees it, and the answer
//! the gate gives (a reply of its own, or a forward to the sessions service).

use std::sync::Arc;

use crate::error::ErrorCode;
use crate::headers::Computed;

/// The header a challenge names both schemes in.
pub(crate) const WWW_AUTHENTICATE: &str = "Bearer realm=\"sessions\", Basic realm=\"sessions\"";
/// Request headers the forwarded request gains (the credential's name, its
/// customer): set by the gate, replacing any a client sent.
pub const CREDENTIAL_HEADER: &str = "x-sessiongate-credential";
/// The request header a forward names the customer in (the gate removes any the client sent).
pub const CUSTOMER_HEADER: &str = "x-sessiongate-customer";
/// The rate-limit headers of section 4, as the gate names them (lowercase).
pub const RATELIMIT_HEADER: &str = "ratelimit";
/// The IETF `RateLimit-Policy` header: the limit in force.
pub const RATELIMIT_POLICY_HEADER: &str = "ratelimit-policy";

/// What the host knows of a request. Header values are raw bytes: they may
/// not be UTF-8, and the gate must not fail on them.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method, as the host received it.
    pub method: &'a str,
    /// Path and query, as on the request line (`:path` in Envoy).
    pub target: &'a str,
    /// Every `Authorization` value, in order.
    pub authorization: &'a [&'a [u8]],
    /// The client's address (`ip:port` or `ip`), for the failed-credential
    /// guard; `None` where the host cannot tell.
    pub client: Option<&'a str>,
}

/// A reply's or a forward's headers, in order.
pub type Headers<'g> = Vec<(&'static str, FieldValue<'g>)>;

/// A header's value (a field value, RFC 9110): borrowed from the gate (the policy, constants) or
/// computed by the decision and held inline (`RateLimit`, `Retry-After`),
/// so that a decision allocates no header value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'g> {
    /// Text the gate holds: the policy, a constant.
    Borrowed(&'g str),
    /// Text the decision made (`RateLimit`, `Retry-After`).
    Computed(Computed),
}

impl FieldValue<'_> {
    /// The value as text.
    pub fn as_str(&self) -> &str {
        match self {
            FieldValue::Borrowed(s) => s,
            FieldValue::Computed(c) => c.as_str(),
        }
    }
}

impl std::ops::Deref for FieldValue<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for FieldValue<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for FieldValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for FieldValue<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FieldValue<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A response the gate sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'g> {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: Headers<'g>,
    /// The response body (JSON).
    pub body: Body,
}

/// A reply's body: made for this reply, or shared with the gate: a page of
/// the stub's cache (~160 KB: a host copies it once, not twice) or the
/// limit's 429, made once with the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Made for this reply.
    Made(String),
    /// Made once and shared (the stub's cache, the 429).
    Shared(Arc<String>),
}

impl Body {
    /// The body as text.
    pub fn as_str(&self) -> &str {
        match self {
            Body::Made(s) => s,
            Body::Shared(s) => s,
        }
    }

    /// An owned copy for hosts whose response type owns its bytes (a made
    /// body moves, a shared one is copied once).
    pub fn into_string(self) -> String {
        match self {
            Body::Made(s) => s,
            Body::Shared(s) => String::clone(&s),
        }
    }
}

impl std::ops::Deref for Body {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::Made(s)
    }
}

/// The request goes on to the sessions service, rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward<'g> {
    /// Set on the forwarded request, replacing any value the client sent:
    /// the credential's name and its customer. (Always these two: an array,
    /// not an allocation per request.)
    pub add_request_headers: [(&'static str, &'g str); 2],
    /// Added to the upstream's response (the rate-limit headers).
    pub response_headers: Headers<'g>,
}

impl Forward<'_> {
    /// Request headers the gate removes before forwarding: never forward a
    /// secret. (Envoy's filter removes these; a host that forwards itself
    /// asks [`Forward::keeps_request_header`].)
    pub const REMOVED_REQUEST_HEADERS: &'static [&'static str] = &["authorization"];

    /// Whether a client's request header (lowercase name) goes on to the
    /// upstream as it is. Not the secret, not the identity headers the gate
    /// sets, not what belongs to one hop. (A runtime's own headers, such as
    /// Spin's `spin-*`, are its driver's to drop.)
    pub fn keeps_request_header(name: &str) -> bool {
        !(Self::REMOVED_REQUEST_HEADERS.contains(&name)
            || name == CREDENTIAL_HEADER
            || name == CUSTOMER_HEADER
            || name == "host"
            || is_per_hop(name))
    }
}

/// Whether a header (lowercase name) belongs to one hop and is never relayed
/// as it is, in either direction: HTTP/2 pseudo-headers, the
/// connection-specific headers of RFC 9110 section 7.6.1, and the length,
/// which the host sets for the body it sends.
pub fn is_per_hop(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "content-length"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "trailer"
        )
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// What a host does with a request: answer it, or send it on.
pub enum Action<'g> {
    /// Answer it here.
    Reply(Reply<'g>),
    /// Send it to the backend, with these changes.
    Forward(Forward<'g>),
}

/// How a request ended, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted by credential, scope, level and limit.
    Allowed,
    /// The limiter failed and `fail_open` let the request through.
    AllowedFailOpen,
    /// Refused with this error.
    Denied(ErrorCode),
}

/// What to do with a request. It borrows from the gate that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'g> {
    /// Answer or forward.
    pub action: Action<'g>,
    /// How it ended, for metrics.
    pub outcome: Outcome,
    /// The credential's name once authenticated (never its secret).
    pub credential: Option<&'g str>,
}

impl<'g> Decision<'g> {
    /// The credential it admitted, if it admitted one (what a host notes
    /// as the credential's last use).
    pub fn admitted(&self) -> Option<&'g str> {
        match self.outcome {
            Outcome::Allowed | Outcome::AllowedFailOpen => self.credential,
            Outcome::Denied(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_keeps_the_request_but_not_its_secret_or_hop_headers() {
        for kept in ["accept", "x-request-id", "user-agent", "traceparent"] {
            assert!(Forward::keeps_request_header(kept), "{kept}");
        }
        for dropped in [
            "authorization",
            CREDENTIAL_HEADER,
            CUSTOMER_HEADER,
            "host",
            ":path",
            "connection",
            "transfer-encoding",
            "content-length",
        ] {
            assert!(!Forward::keeps_request_header(dropped), "{dropped}");
        }
        assert!(!is_per_hop("content-type"));
        assert!(is_per_hop("connection"));
        assert!(is_per_hop(":status"));
    }
}
