//! The decision: one request in, one answer out. Checks run in the contract's
//! order: route, method, query, credential, scope and level, rate limit, backend.

use crate::config::{Backend, GateConfig};
use crate::credential::{CredentialRecord, CredentialSet, Level, parse_authorization};
use crate::error::{ErrorCode, GateError};
use crate::limiter::{self, Limit, LimiterError, SharedStore, Verdict};
use crate::query::{SessionQuery, parse_query};
use crate::route::{Route, is_limited_api, route, split_target};
use crate::stub::StubSite;

/// The header a challenge names both schemes in.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"sessions\", Basic realm=\"sessions\"";
/// Request headers the forwarded request gains.
pub const CREDENTIAL_HEADER: &str = "x-sessiongate-credential";
pub const CUSTOMER_HEADER: &str = "x-sessiongate-customer";
/// Request headers the forwarded request loses: never forward a secret.
pub const STRIPPED_HEADERS: &[&str] = &["authorization"];

/// What the adapter knows of a request. Header values are raw bytes: they may
/// not be UTF-8, and the engine must not fail on them.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query, as on the request line (`:path` in Envoy).
    pub target: &'a str,
    /// Every `Authorization` value, in order.
    pub authorization: &'a [&'a [u8]],
}

pub type Headers = Vec<(&'static str, String)>;

/// A response the gate sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
}

/// The request goes on to the sessions service, rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub remove_request_headers: &'static [&'static str],
    pub add_request_headers: Headers,
    /// Headers to add to the upstream's response (the rate-limit headers).
    pub response_headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    Forward(Forward),
}

/// How a request ended, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// The limiter failed and `fail_open` let the request through.
    AllowedFailOpen,
    Denied(ErrorCode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub outcome: Outcome,
    /// The credential's name once authenticated (never its secret).
    pub credential: Option<String>,
}

/// A configured gate: immutable, cheap to share, built once per configuration.
#[derive(Debug)]
pub struct Gate {
    credentials: CredentialSet,
    limit: Limit,
    backend: Backend,
    fail_open: bool,
    stub_sessions_per_site: u32,
}

const JSON: &str = "application/json";

fn json_headers() -> Headers {
    vec![("content-type", JSON.to_owned())]
}

impl Gate {
    pub fn new(config: GateConfig) -> Result<Gate, String> {
        config.validate()?;
        Ok(Gate {
            credentials: CredentialSet::new(config.credentials)?,
            limit: Limit::new(config.limit.requests, config.limit.window_seconds),
            backend: config.backend,
            fail_open: config.fail_open,
            stub_sessions_per_site: config.stub_sessions_per_site,
        })
    }

    pub fn from_json(bytes: &[u8]) -> Result<Gate, String> {
        Gate::new(GateConfig::from_json(bytes)?)
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn credentials(&self) -> &CredentialSet {
        &self.credentials
    }

    /// Decides one request. `now_ms` is Unix time in ms; `store` holds the
    /// global limiter's state.
    pub fn decide(&self, req: &Request<'_>, now_ms: u64, store: &mut dyn SharedStore) -> Decision {
        let (path, query) = split_target(req.target);
        let limited = is_limited_api(path);
        match self.check(req, path, query) {
            Err((error, credential)) => {
                self.deny(error, credential, limited.then_some((now_ms, store)))
            }
            Ok(Checked::Me(record)) => Decision {
                action: Action::Reply(Reply {
                    status: 200,
                    headers: json_headers(),
                    // In the contract's field order; serde_json escapes the strings.
                    body: format!(
                        "{{\"role\":\"{}\",\"name\":{},\"hint\":{}}}",
                        record.level.role(),
                        serde_json::Value::from(record.name.as_str()),
                        serde_json::Value::from(record.hint.as_str()),
                    ),
                }),
                outcome: Outcome::Allowed,
                credential: Some(record.name.clone()),
            },
            Ok(Checked::Sessions {
                record,
                customer,
                site,
                query,
            }) => self.admit(record, customer, site, &query, now_ms, store),
        }
    }

    fn check<'r>(
        &'r self,
        req: &Request<'_>,
        path: &'r str,
        query: Option<&str>,
    ) -> Result<Checked<'r>, (GateError, Option<String>)> {
        let plain = |e: GateError| (e, None);
        let route = route(path);
        if route == Route::NotFound {
            return Err(plain(GateError::new(
                ErrorCode::NotFound,
                "No such route: the API serves GET /v1/external/sessions/{customerId}/{siteId}.",
            )));
        }
        if req.method != "GET" {
            return Err(plain(GateError::new(
                ErrorCode::MethodNotAllowed,
                "Only GET is allowed: the API is read-only.",
            )));
        }
        let parsed = match route {
            Route::Me => {
                if query.is_some_and(|q| q.split('&').any(|p| !p.is_empty())) {
                    return Err(plain(GateError::new(
                        ErrorCode::InvalidRequest,
                        "GET /me takes no query parameters.",
                    )));
                }
                None
            }
            _ => Some(parse_query(query).map_err(plain)?),
        };
        let record = self.authenticate(req.authorization).map_err(plain)?;
        let with_name = |e: GateError| (e, Some(record.name.clone()));
        match (route, parsed) {
            (Route::Sessions { customer, site }, Some(query)) => {
                if record.customer != customer {
                    return Err(with_name(GateError::new(
                        ErrorCode::Forbidden,
                        "This credential does not grant access to this customer.",
                    )));
                }
                if !record.sites.contains(site) {
                    return Err(with_name(GateError::new(
                        ErrorCode::Forbidden,
                        "This credential does not grant access to this site.",
                    )));
                }
                if !record.level.satisfies(Level::Standard) {
                    return Err(with_name(GateError::new(
                        ErrorCode::Forbidden,
                        "This credential's permission level is too low to list sessions.",
                    )));
                }
                Ok(Checked::Sessions {
                    record,
                    customer,
                    site,
                    query,
                })
            }
            _ => Ok(Checked::Me(record)),
        }
    }

    fn authenticate(&self, values: &[&[u8]]) -> Result<&CredentialRecord, GateError> {
        let value = match values {
            [] => {
                return Err(GateError::new(
                    ErrorCode::Unauthorized,
                    "Send a credential: Authorization: Bearer <token> or Basic <API key>.",
                ));
            }
            [one] => *one,
            _ => {
                return Err(GateError::new(
                    ErrorCode::InvalidRequest,
                    "Send exactly one Authorization header.",
                ));
            }
        };
        let invalid = || {
            GateError::new(
                ErrorCode::InvalidCredentials,
                "The credential is malformed, unknown or revoked.",
            )
        };
        let presented = parse_authorization(value).map_err(|_| invalid())?;
        self.credentials.find(&presented).ok_or_else(invalid)
    }

    fn admit(
        &self,
        record: &CredentialRecord,
        customer: &str,
        site: &str,
        query: &SessionQuery,
        now_ms: u64,
        store: &mut dyn SharedStore,
    ) -> Decision {
        let name = Some(record.name.clone());
        let (verdict, outcome) = match limiter::acquire(store, now_ms, self.limit) {
            Ok(v) if v.admitted => (Some(v), Outcome::Allowed),
            Ok(v) => {
                let mut d = self.deny(
                    GateError::new(
                        ErrorCode::RateLimited,
                        "The global limit of this API is reached; retry after the time in Retry-After.",
                    ),
                    name,
                    None,
                );
                if let Action::Reply(reply) = &mut d.action {
                    reply
                        .headers
                        .push(("retry-after", v.reset_seconds.max(1).to_string()));
                    reply.headers.extend(self.rate_headers(Some(&v)));
                }
                return d;
            }
            Err(e) if self.fail_open => {
                let _ = e;
                (None, Outcome::AllowedFailOpen)
            }
            Err(_) => {
                let mut d = self.deny(
                    GateError::new(
                        ErrorCode::LimiterUnavailable,
                        "The rate limiter is unavailable; the request was not admitted.",
                    ),
                    name,
                    None,
                );
                if let Action::Reply(reply) = &mut d.action {
                    reply.headers.extend(self.rate_headers(None));
                }
                return d;
            }
        };
        let rate_headers = self.rate_headers(verdict.as_ref());
        let action = match &self.backend {
            Backend::Stub => {
                let site = StubSite::new(customer, site, self.stub_sessions_per_site);
                let mut headers = json_headers();
                headers.extend(rate_headers);
                Action::Reply(Reply {
                    status: 200,
                    headers,
                    body: site.page_json(query),
                })
            }
            Backend::Upstream(_) => Action::Forward(Forward {
                remove_request_headers: STRIPPED_HEADERS,
                add_request_headers: vec![
                    (CREDENTIAL_HEADER, record.name.clone()),
                    (CUSTOMER_HEADER, record.customer.clone()),
                ],
                response_headers: rate_headers,
            }),
        };
        Decision {
            action,
            outcome,
            credential: name,
        }
    }

    /// `RateLimit-Policy` always; `RateLimit` when the state is known.
    pub fn rate_headers(&self, verdict: Option<&Verdict>) -> Headers {
        let mut h = vec![("ratelimit-policy", limiter::policy_header(self.limit))];
        if let Some(v) = verdict {
            h.push(("ratelimit", limiter::ratelimit_header(self.limit, v)));
        }
        h
    }

    /// An error reply. Under `/v1/external/` it carries the limit's headers,
    /// read without spending anything.
    fn deny(
        &self,
        error: GateError,
        credential: Option<String>,
        peek: Option<(u64, &mut dyn SharedStore)>,
    ) -> Decision {
        let mut headers = json_headers();
        match error.code {
            ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => {
                headers.push(("www-authenticate", WWW_AUTHENTICATE.to_owned()));
            }
            ErrorCode::MethodNotAllowed => headers.push(("allow", "GET".to_owned())),
            _ => {}
        }
        if let Some((now, store)) = peek {
            let state = limiter::peek(store, now, self.limit).ok();
            headers.extend(self.rate_headers(state.as_ref()));
        }
        Decision {
            action: Action::Reply(Reply {
                status: error.code.status(),
                headers,
                body: error.body(),
            }),
            outcome: Outcome::Denied(error.code),
            credential,
        }
    }

    /// The reply a host sends when the forwarded request found no upstream.
    pub fn upstream_unavailable(&self) -> Reply {
        let error = crate::error::upstream_unavailable();
        Reply {
            status: error.code.status(),
            headers: json_headers(),
            body: error.body(),
        }
    }
}

/// What passed every check before the limiter.
enum Checked<'r> {
    Me(&'r CredentialRecord),
    Sessions {
        record: &'r CredentialRecord,
        customer: &'r str,
        site: &'r str,
        query: SessionQuery,
    },
}

impl LimiterError {
    pub fn describe(&self) -> String {
        match self {
            LimiterError::Store(e) => format!("shared store failed: {}", e.0),
            LimiterError::Corrupt => "shared state is not a limiter state".into(),
            LimiterError::Contended => "compare-and-swap kept losing".into(),
        }
    }
}
