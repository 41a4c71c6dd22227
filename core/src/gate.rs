//! The decision: one request in, one answer out. Checks run in the contract's
//! order: route, method, query, credential, scope and level, rate limit, backend.

use crate::config::{Backend, GateConfig};
use crate::credential::{Level, parse_authorization};
use crate::credential_set::{Credential, CredentialSet};
use crate::error::{ErrorCode, GateError};
use crate::guard::{self, GuardConfig};
use crate::limiter::{self, Limit, LimiterError, SharedStore, Verdict};
use crate::query::{SessionQuery, parse_query};
use crate::route::{Route, is_limited_api, route, split_target};
use crate::stub::PageCache;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

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
    /// The client's address (`ip:port` or `ip`), for the failed-credential
    /// guard; `None` where the host cannot tell.
    pub client: Option<&'a str>,
}

/// Header values borrow from the gate where they can (a credential's name,
/// the policy, constants): a decision allocates only what it computes.
pub type Headers<'g> = Vec<(&'static str, Cow<'g, str>)>;

/// A response the gate sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'g> {
    pub status: u16,
    pub headers: Headers<'g>,
    pub body: Body,
}

/// A reply's body: made for this reply, or shared with the stub's page
/// cache. A page is ~160 KB; cloning it for every admitted request was a
/// copy the filter's host then made again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Made(String),
    Shared(Arc<String>),
}

impl Body {
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
    pub remove_request_headers: &'static [&'static str],
    pub add_request_headers: Headers<'g>,
    /// Headers to add to the upstream's response (the rate-limit headers).
    pub response_headers: Headers<'g>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'g> {
    Reply(Reply<'g>),
    Forward(Forward<'g>),
}

/// How a request ended, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// The limiter failed and `fail_open` let the request through.
    AllowedFailOpen,
    Denied(ErrorCode),
}

/// What to do with a request. It borrows from the gate that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'g> {
    pub action: Action<'g>,
    pub outcome: Outcome,
    /// The credential's name once authenticated (never its secret).
    pub credential: Option<&'g str>,
}

/// A configured gate, built once per configuration and shared by reference:
/// immutable but for the stub's page cache (behind a lock).
#[derive(Debug)]
pub struct Gate {
    credentials: CredentialSet,
    limit: Limit,
    backend: Backend,
    fail_open: bool,
    stub_sessions_per_site: u32,
    guard: GuardConfig,
    /// `RateLimit-Policy`, the same on every answer: written once.
    policy: String,
    /// The stub's last pages (the only state a gate keeps; never shared
    /// between gates, so a reconfiguration starts it afresh).
    pages: Mutex<PageCache>,
}

const JSON: &str = "application/json";

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::error::push_json_string(&mut out, s);
    out
}

fn decimal(n: u64) -> String {
    let mut digits = String::with_capacity(20);
    limiter::push_decimal(&mut digits, n);
    digits
}

/// Room for what any reply adds (challenge or allow, the rate-limit headers,
/// retry-after): one allocation, never a regrowth.
fn json_headers() -> Headers<'static> {
    let mut headers = Vec::with_capacity(5);
    headers.push(("content-type", Cow::Borrowed(JSON)));
    headers
}

impl Gate {
    pub fn new(config: GateConfig) -> Result<Gate, String> {
        config.validate()?;
        let limit = Limit::new(config.limit.requests, config.limit.window_seconds);
        Ok(Gate {
            credentials: config.credentials,
            limit,
            policy: limiter::policy_header(limit),
            pages: Mutex::new(PageCache::default()),
            backend: config.backend,
            fail_open: config.fail_open,
            stub_sessions_per_site: config.stub_sessions_per_site,
            guard: config.guard,
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
    /// global limiter's state. The synchronous path: [`Gate::prepare`], the
    /// limiter on `store`, [`Gate::complete`].
    pub fn decide(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        store: &mut dyn SharedStore,
    ) -> Decision<'_> {
        let client = req
            .client
            .map(guard::client_of)
            .filter(|_| self.guard.enabled());
        let blocked = match client {
            Some(c) if !req.authorization.is_empty() => {
                guard::blocked(store, c, now_ms, &self.guard)
            }
            _ => None,
        };
        match self.prepare(req, |_| false, blocked) {
            Prepared::Reply {
                mut decision,
                wants_limit_state,
                ..
            } => {
                if let (Some(c), Outcome::Denied(ErrorCode::InvalidCredentials)) =
                    (client, decision.outcome)
                {
                    guard::record_failure(store, c, now_ms, &self.guard);
                }
                if wants_limit_state {
                    let state = limiter::peek(store, now_ms, self.limit).ok();
                    self.add_limit_state(&mut decision, state.as_ref());
                }
                decision
            }
            Prepared::Admit(admission) => {
                let verdict = limiter::acquire(store, now_ms, self.limit);
                self.complete(admission, verdict)
            }
        }
    }

    /// The authenticated credential of a request, if its one `Authorization`
    /// value names a known one. Adapters whose revocation list lives
    /// elsewhere (a Durable Object) look it up with this, then `prepare`.
    pub fn identify(&self, authorization: &[&[u8]]) -> Option<Credential<'_>> {
        match authorization {
            [one] => parse_authorization(one)
                .ok()
                .and_then(|p| self.credentials.find(&p)),
            _ => None,
        }
    }

    /// Every check before the limiter, in the contract's order. `revoked`
    /// lets an adapter withdraw a credential the configuration still holds;
    /// `guard_blocked` (seconds) answers a client that presents a credential
    /// while the failed-credential guard holds it, before any lookup.
    pub fn prepare<'g>(
        &'g self,
        req: &Request<'_>,
        revoked: impl Fn(&Credential<'_>) -> bool,
        guard_blocked: Option<u64>,
    ) -> Prepared<'g> {
        let (path, query) = split_target(req.target);
        let limited = is_limited_api(path);
        match self.check(req, path, query, &revoked, guard_blocked) {
            Err((error, authenticated)) => {
                let name = authenticated.map(|r| r.name);
                let mut decision = self.deny(error, name, limited);
                if let (Some(seconds), Action::Reply(reply)) = (guard_blocked, &mut decision.action)
                    && decision.outcome == Outcome::Denied(ErrorCode::RateLimited)
                {
                    reply
                        .headers
                        .push(("retry-after", Cow::Owned(decimal(seconds))));
                }
                Prepared::Reply {
                    decision,
                    wants_limit_state: limited,
                    authenticated,
                }
            }
            Ok(Checked::Me(record)) => Prepared::Reply {
                decision: Decision {
                    action: Action::Reply(Reply {
                        status: 200,
                        headers: json_headers(),
                        // In the contract's field order; serde_json escapes the strings.
                        body: Body::Made(format!(
                            "{{\"role\":\"{}\",\"name\":{},\"hint\":{}}}",
                            record.level.role(),
                            json_string(record.name),
                            json_string(record.hint),
                        )),
                    }),
                    outcome: Outcome::Allowed,
                    credential: Some(record.name),
                },
                wants_limit_state: false,
                authenticated: Some(record),
            },
            // The path's customer is the record's: the scope check made sure.
            Ok(Checked::Sessions {
                record,
                site,
                query,
            }) => Prepared::Admit(Admission {
                record,
                // Only the stub reads the site; a forward keeps it in the path.
                site: match self.backend {
                    Backend::Stub => site.to_owned(),
                    Backend::Upstream(_) => String::new(),
                },
                query,
            }),
        }
    }

    /// `503 limiter_unavailable`: the limiter's shared state failed and the
    /// gate fails closed.
    pub fn limiter_unavailable<'g>(&'g self, credential: Option<&'g str>) -> Decision<'g> {
        self.deny(
            GateError::new(
                ErrorCode::LimiterUnavailable,
                "The rate limiter is unavailable; the request was not admitted.",
            ),
            credential,
            true,
        )
    }

    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    pub fn guard(&self) -> &GuardConfig {
        &self.guard
    }

    /// Adds the `RateLimit` header to a reply that never reached the limiter.
    pub fn add_limit_state(&self, decision: &mut Decision<'_>, state: Option<&Verdict>) {
        if let (Action::Reply(reply), Some(v)) = (&mut decision.action, state) {
            reply.headers.push((
                "ratelimit",
                Cow::Owned(limiter::ratelimit_header(self.limit, v)),
            ));
        }
    }

    // The error carries the credential (a borrowed view, no heap) when it
    // was authenticated before the check failed.
    #[allow(clippy::result_large_err)]
    fn check<'g, 'p>(
        &'g self,
        req: &Request<'_>,
        path: &'p str,
        query: Option<&str>,
        revoked: &dyn Fn(&Credential<'_>) -> bool,
        guard_blocked: Option<u64>,
    ) -> Result<Checked<'g, 'p>, (GateError, Option<Credential<'g>>)> {
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
        if guard_blocked.is_some() && !req.authorization.is_empty() {
            return Err(plain(GateError::new(
                ErrorCode::RateLimited,
                "Too many invalid credentials from this address; retry after the time in Retry-After.",
            )));
        }
        let record = self
            .authenticate(req.authorization, revoked)
            .map_err(plain)?;
        let with_name = |e: GateError| (e, Some(record));
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
                    site,
                    query,
                })
            }
            _ => Ok(Checked::Me(record)),
        }
    }

    fn authenticate(
        &self,
        values: &[&[u8]],
        revoked: &dyn Fn(&Credential<'_>) -> bool,
    ) -> Result<Credential<'_>, GateError> {
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
        self.credentials
            .find(&presented)
            .filter(|r| !revoked(r))
            .ok_or_else(invalid)
    }

    /// Finishes an admitted request with the limiter's verdict (or failure).
    pub fn complete<'g>(
        &'g self,
        admission: Admission<'g>,
        verdict: Result<Verdict, LimiterError>,
    ) -> Decision<'g> {
        let Admission {
            record,
            site,
            query,
        } = admission;
        let (customer, site, query) = (record.customer, site.as_str(), &query);
        let name = Some(record.name);
        let (verdict, outcome) = match verdict {
            Ok(v) if v.admitted => (Some(v), Outcome::Allowed),
            Ok(v) => {
                let mut d = self.deny(
                    GateError::new(
                        ErrorCode::RateLimited,
                        "The global limit of this API is reached; retry after the time in Retry-After.",
                    ),
                    name,
                    false,
                );
                if let Action::Reply(reply) = &mut d.action {
                    reply
                        .headers
                        .push(("retry-after", Cow::Owned(decimal(v.reset_seconds.max(1)))));
                    reply.headers.extend(self.rate_headers(Some(&v)));
                }
                return d;
            }
            Err(e) if self.fail_open => {
                let _ = e;
                (None, Outcome::AllowedFailOpen)
            }
            Err(_) => return self.limiter_unavailable(name),
        };
        let rate_headers = self.rate_headers(verdict.as_ref());
        let action = match &self.backend {
            Backend::Stub => {
                let mut headers = json_headers();
                headers.extend(rate_headers);
                let body = match self.pages.lock() {
                    Ok(mut pages) => Body::Shared(pages.page_json(
                        customer,
                        site,
                        self.stub_sessions_per_site,
                        query,
                    )),
                    // Poisoned only if a render panicked: render without the cache.
                    Err(_) => Body::Made(
                        crate::stub::StubSite::new(customer, site, self.stub_sessions_per_site)
                            .page_json(query),
                    ),
                };
                Action::Reply(Reply {
                    status: 200,
                    headers,
                    body,
                })
            }
            Backend::Upstream(_) => Action::Forward(Forward {
                remove_request_headers: STRIPPED_HEADERS,
                add_request_headers: vec![
                    (CREDENTIAL_HEADER, Cow::Borrowed(record.name)),
                    (CUSTOMER_HEADER, Cow::Borrowed(record.customer)),
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
    pub fn rate_headers(&self, verdict: Option<&Verdict>) -> Headers<'_> {
        let mut h = Vec::with_capacity(2);
        h.push(("ratelimit-policy", Cow::Borrowed(self.policy.as_str())));
        if let Some(v) = verdict {
            h.push((
                "ratelimit",
                Cow::Owned(limiter::ratelimit_header(self.limit, v)),
            ));
        }
        h
    }

    /// An error reply. Under `/v1/external/` it carries the limit's policy;
    /// its current state is added by the caller ([`Gate::add_limit_state`]).
    fn deny<'g>(
        &'g self,
        error: GateError,
        credential: Option<&'g str>,
        limited: bool,
    ) -> Decision<'g> {
        let mut headers = json_headers();
        match error.code {
            ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => {
                headers.push(("www-authenticate", Cow::Borrowed(WWW_AUTHENTICATE)));
            }
            ErrorCode::MethodNotAllowed => headers.push(("allow", Cow::Borrowed("GET"))),
            _ => {}
        }
        if limited {
            headers.extend(self.rate_headers(None));
        }
        Decision {
            action: Action::Reply(Reply {
                status: error.code.status(),
                headers,
                body: Body::Made(error.body()),
            }),
            outcome: Outcome::Denied(error.code),
            credential,
        }
    }

    /// The reply a host sends when it cannot run the gate at all (no usable
    /// configuration, a trapped VM): 500 in the contract's shape. Every
    /// adapter sends this one, so they cannot drift apart.
    pub fn internal_error_reply(message: &str) -> Reply<'static> {
        Reply {
            status: 500,
            headers: json_headers(),
            body: Body::Made(crate::error::internal_error_body(message)),
        }
    }

    /// The reply a host sends when the forwarded request found no upstream.
    pub fn upstream_unavailable(&self) -> Reply<'static> {
        let error = crate::error::upstream_unavailable();
        Reply {
            status: error.code.status(),
            headers: json_headers(),
            body: Body::Made(error.body()),
        }
    }

    /// `502 upstream_unavailable` for a forward that failed, with the
    /// rate-limit headers the upstream's answer would have carried.
    pub fn upstream_failed<'g>(&self, forward: Forward<'g>) -> Reply<'g> {
        let mut reply = self.upstream_unavailable();
        reply.headers.extend(forward.response_headers);
        reply
    }
}

/// What [`Gate::prepare`] found.
#[derive(Debug)]
pub enum Prepared<'g> {
    /// Answered without the limiter. When `wants_limit_state`, the reply is
    /// under the limited API and its `RateLimit` header needs the limiter's
    /// current state ([`Gate::add_limit_state`]): read it without spending.
    Reply {
        decision: Decision<'g>,
        wants_limit_state: bool,
        /// The credential, when it was authenticated before the answer
        /// (`/me`, or a denial for scope): an adapter with its own revocation
        /// list checks this record, without hashing the header again.
        authenticated: Option<Credential<'g>>,
    },
    /// Passed every check: run the limiter, then [`Gate::complete`].
    Admit(Admission<'g>),
}

/// A request that passed every check and waits for the limiter.
#[derive(Debug)]
pub struct Admission<'g> {
    record: Credential<'g>,
    site: String,
    query: SessionQuery,
}

impl<'g> Admission<'g> {
    /// The credential being admitted (its hash, for a revocation check).
    pub fn credential(&self) -> Credential<'g> {
        self.record
    }
}

/// What passed every check before the limiter.
enum Checked<'g, 'p> {
    Me(Credential<'g>),
    Sessions {
        record: Credential<'g>,
        site: &'p str,
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
