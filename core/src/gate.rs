//! The gate: one configuration, built once and shared by reference, and the
//! checks and answers of the contract. The order they run in is the
//! decision's ([`crate::Pending`]).

use std::sync::{Arc, Mutex};

use crate::credential::SecretHash;

use crate::config::LimiterStore;
use crate::config::{Backend, ConfigError, GateConfig};
use crate::credential::{Level, parse_authorization_checked};
use crate::credential_set::{Credential, CredentialSet};
use crate::decision::{
    Action, Body, CREDENTIAL_HEADER, CUSTOMER_HEADER, Decision, FieldValue, Forward, Headers,
    Outcome, RATELIMIT_HEADER, RATELIMIT_POLICY_HEADER, Reply, Request, WWW_AUTHENTICATE,
};
use crate::error::{ErrorCode, GateError};
use crate::guard::GuardConfig;
use crate::headers;
use crate::limiter::{FullUntil, Limit, LimiterError, Verdict};
use crate::query::{SessionQuery, parse_query};
use crate::route::{Route, route};
use crate::stub::PageCache;

/// A configured gate: immutable but for the stub's page cache and the
/// memos (the limiter's "full until", the guard's holds), the only state it
/// keeps. Neither is shared between configurations, so a reconfiguration
/// starts them afresh.
#[derive(Debug)]
pub struct Gate {
    credentials: CredentialSet,
    /// Shared by the gates [`Gate::with_credentials`] makes.
    pub(crate) common: Arc<Common>,
}

/// Everything of a gate but its credentials.
#[derive(Debug)]
pub(crate) struct Common {
    limit: Limit,
    backend: Backend,
    fail_open: bool,
    stub_sessions_per_site: u32,
    guard: GuardConfig,
    limiter: LimiterStore,
    #[cfg(feature = "etcd")]
    credential_store: Option<crate::config::CredentialStore>,
    revocation_list: bool,
    /// [`GateConfig::checksummed_tokens`].
    checksummed_tokens: bool,
    /// `RateLimit-Policy`, the same on every answer: written once.
    policy: String,
    /// The 429 of the global limit, the answer a flood gets: written once.
    rate_limited_body: Arc<String>,
    pages: Mutex<PageCache>,
    pub(crate) full_until: FullUntil,
    pub(crate) held: crate::guard::HeldClients,
}

const JSON: &str = "application/json";
const RATE_LIMITED: &str =
    "The global limit of this API is reached; retry after the time in Retry-After.";

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::error::push_json_string(&mut out, s);
    out
}

/// Room for what any reply adds (challenge or allow, the rate-limit headers,
/// retry-after): one allocation, never a regrowth.
fn json_headers() -> Headers<'static> {
    let mut headers = Vec::with_capacity(5);
    headers.push(("content-type", FieldValue::Borrowed(JSON)));
    headers
}

/// A request past routing, method and query: what the credential checks
/// need of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routed<'r> {
    pub(crate) route: Route<'r>,
    pub(crate) query: Option<SessionQuery>,
    /// Under `/v1/external/`: every answer carries the rate-limit headers.
    pub(crate) limited: bool,
    pub(crate) authorization: &'r [&'r [u8]],
    /// Whether "full until" may answer for the limiter (not in a replay,
    /// whose recorded answers must be followed).
    pub(crate) memo: bool,
}

/// A request that passed every check and waits for the limiter.
#[derive(Debug)]
pub(crate) struct Admission<'g> {
    /// The credential's name and customer, all the answer needs of it (not
    /// the whole record: a pending admission is moved at every step).
    pub(crate) name: &'g str,
    pub(crate) customer: &'g str,
    pub(crate) site: String,
    pub(crate) query: SessionQuery,
}

/// What the scope check let through.
pub(crate) enum Scoped<'g> {
    Me(Decision<'g>),
    Sessions(Admission<'g>),
}

impl Gate {
    /// A gate for a checked configuration.
    pub fn new(config: GateConfig) -> Result<Gate, ConfigError> {
        config.validate()?;
        let limit = Limit::new(config.limit.requests, config.limit.window_seconds);
        #[cfg(feature = "etcd")]
        let (credentials, credential_store) = match config.credentials {
            crate::config::CredentialSource::Listed(set) => (set, None),
            crate::config::CredentialSource::Etcd(store) => (CredentialSet::default(), Some(store)),
        };
        #[cfg(not(feature = "etcd"))]
        let crate::config::CredentialSource::Listed(credentials) = config.credentials;
        Ok(Gate {
            credentials,
            common: Arc::new(Common {
                limit,
                policy: headers::policy(limit),
                rate_limited_body: Arc::new(
                    GateError::new(ErrorCode::RateLimited, RATE_LIMITED).body(),
                ),
                pages: Mutex::new(PageCache::default()),
                full_until: FullUntil::default(),
                held: crate::guard::HeldClients::default(),
                backend: config.backend,
                fail_open: config.fail_open,
                stub_sessions_per_site: config.stub_sessions_per_site,
                guard: config.guard,
                #[cfg(feature = "etcd")]
                limiter: config.limiter,
                #[cfg(not(feature = "etcd"))]
                limiter: LimiterStore::SharedData,
                #[cfg(feature = "etcd")]
                credential_store,
                revocation_list: false,
                checksummed_tokens: config.checksummed_tokens,
            }),
        })
    }

    /// A gate from the configuration's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Gate, ConfigError> {
        Gate::new(GateConfig::from_json(bytes)?)
    }

    /// The digests a request presents that this gate does not hold: what a
    /// host that keeps credentials elsewhere looks up before deciding
    /// (empty: decide as is; the gate holds it, or nothing well-formed was
    /// presented, or a token whose checksum fails where the store's tokens
    /// all carry one: [`GateConfig::checksummed_tokens`]).
    pub fn missing_digests(&self, authorization: &[&[u8]]) -> Vec<SecretHash> {
        let digests = crate::credential::presented_hashes_checked(
            authorization,
            self.common.checksummed_tokens,
        );
        let held = digests
            .iter()
            .any(|d| self.credentials.by_hash(d).is_some());
        if held { Vec::new() } else { digests }
    }

    /// This gate with other credentials: for hosts that look the presented
    /// credential up elsewhere ([`crate::presented_hashes`], then a store by
    /// digest) and decide over just what they found. The limiter's memo and
    /// the stub's page cache are this gate's, shared.
    pub fn with_credentials(&self, credentials: CredentialSet) -> Gate {
        Gate {
            credentials,
            common: self.common.clone(),
        }
    }

    /// A gate whose decisions ask whether each authenticated credential was
    /// revoked ([`crate::Need::Revoked`]): for hosts that keep a revocation
    /// list ahead of the configuration (the Worker's Durable Object).
    /// Called on a gate just made (the only time its common part is not
    /// shared yet).
    pub fn with_revocation_list(mut self) -> Gate {
        if let Some(common) = Arc::get_mut(&mut self.common) {
            common.revocation_list = true;
        }
        self
    }

    /// The global limit in force.
    pub fn limit(&self) -> Limit {
        self.common.limit
    }

    /// Where admitted requests go.
    pub fn backend(&self) -> &Backend {
        &self.common.backend
    }

    /// The credentials the gate admits.
    pub fn credentials(&self) -> &CredentialSet {
        &self.credentials
    }

    /// Where the credentials are looked up, when the configuration lists
    /// none but names a store.
    #[cfg(feature = "etcd")]
    pub fn credential_store(&self) -> Option<&crate::config::CredentialStore> {
        self.common.credential_store.as_ref()
    }

    /// The digests to look up before deciding `req` over credentials kept
    /// elsewhere ([`Gate::with_credentials`]): none when its decision ends
    /// before the credential (route, method, query), when nothing
    /// well-formed is presented, or when this gate holds it.
    pub fn digests_to_look_up(&self, req: &Request<'_>) -> Vec<SecretHash> {
        if self.route(req).is_err() {
            return Vec::new();
        }
        self.missing_digests(req.authorization)
    }

    /// The answer to a request whose credential could not be looked up
    /// (its store unreachable): `503 limiter_unavailable`, never a `401`
    /// that would tell a valid customer their credential was revoked.
    pub fn lookup_unavailable(&self) -> Decision<'_> {
        self.limiter_unavailable(None)
    }

    /// Where its host keeps the limiter's state.
    pub fn limiter_store(&self) -> &LimiterStore {
        &self.common.limiter
    }

    pub(crate) fn fail_open(&self) -> bool {
        self.common.fail_open
    }

    /// Whether a decision uses the client's address ([`Request::client`]):
    /// only the failed-credential guard does. A host whose address costs
    /// something to get (a proxy-wasm property) asks first.
    pub fn uses_client_address(&self) -> bool {
        self.common.guard.enabled()
    }

    pub(crate) fn guard(&self) -> &GuardConfig {
        &self.common.guard
    }

    pub(crate) fn revocation_list(&self) -> bool {
        self.common.revocation_list
    }

    /// Route, method and query, in the contract's order.
    pub(crate) fn route<'r>(&self, req: &Request<'r>) -> Result<Routed<'r>, (GateError, bool)> {
        let (path, query) = crate::route::split_target(req.target);
        let limited = crate::route::is_limited_api(path);
        let fail = |e: GateError| (e, limited);
        let route = route(path);
        if route == Route::NotFound {
            return Err(fail(GateError::new(
                ErrorCode::NotFound,
                "No such route: the API serves GET /v1/external/sessions/{customerId}/{siteId}.",
            )));
        }
        if req.method != "GET" {
            return Err(fail(GateError::new(
                ErrorCode::MethodNotAllowed,
                "Only GET is allowed: the API is read-only.",
            )));
        }
        let query = match route {
            Route::Me => {
                if query.is_some_and(|q| q.split('&').any(|p| !p.is_empty())) {
                    return Err(fail(GateError::new(
                        ErrorCode::InvalidRequest,
                        "GET /me takes no query parameters.",
                    )));
                }
                None
            }
            _ => Some(parse_query(query).map_err(fail)?),
        };
        Ok(Routed {
            route,
            query,
            limited,
            authorization: req.authorization,
            memo: true,
        })
    }

    /// The guard's refusal of a client it holds for `seconds`, before any
    /// lookup. Its `RateLimit` is true for this client, not the global
    /// budget's: nothing remains to it until the hold ends. (Telling it the
    /// budget has room while refusing it would mislead a client that paces
    /// itself on those fields.)
    pub(crate) fn guard_refusal(&self, seconds: u64, limited: bool) -> Decision<'_> {
        let error = GateError::new(
            ErrorCode::RateLimited,
            "Too many invalid credentials from this address; retry after the time in Retry-After.",
        );
        let mut decision = self.deny(error, None, limited);
        if let Action::Reply(reply) = &mut decision.action {
            let retry_after = headers::decimal(seconds);
            reply
                .headers
                .push(("retry-after", FieldValue::Computed(retry_after)));
        }
        if limited {
            let held = Verdict {
                admitted: false,
                remaining: 0,
                reset_seconds: seconds,
            };
            self.add_limit_state(&mut decision, &held);
        }
        decision
    }

    /// The credential the one `Authorization` value names, if it has not
    /// expired at `now_ms`.
    pub(crate) fn authenticate(
        &self,
        values: &[&[u8]],
        now_ms: u64,
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
        // A token with a wrong checksum is refused before it is hashed,
        // unless this set holds tokens minted before checksums.
        let checksums = !self.credentials.holds_unchecksummed_tokens();
        parse_authorization_checked(value, checksums)
            .ok()
            .and_then(|presented| self.credentials.find(&presented))
            .filter(|credential| !credential.expired(now_ms))
            .ok_or_else(Gate::invalid_credentials)
    }

    /// Malformed, unknown or revoked: one answer for all three.
    pub(crate) fn invalid_credentials() -> GateError {
        GateError::new(
            ErrorCode::InvalidCredentials,
            "The credential is malformed, unknown or revoked.",
        )
    }

    /// Customer, site and level: the answer to `/me`, or an admission.
    #[allow(clippy::result_large_err)]
    pub(crate) fn scope<'g>(
        &'g self,
        routed: &Routed<'_>,
        record: Credential<'g>,
    ) -> Result<Scoped<'g>, GateError> {
        let (Route::Sessions { customer, site }, Some(query)) = (routed.route, routed.query) else {
            return Ok(Scoped::Me(self.me(record)));
        };
        if record.customer != customer {
            return Err(GateError::new(
                ErrorCode::Forbidden,
                "This credential does not grant access to this customer.",
            ));
        }
        if !record.sites.contains(site) {
            return Err(GateError::new(
                ErrorCode::Forbidden,
                "This credential does not grant access to this site.",
            ));
        }
        if !record.level.satisfies(Level::Standard) {
            return Err(GateError::new(
                ErrorCode::Forbidden,
                "This credential's permission level is too low to list sessions.",
            ));
        }
        Ok(Scoped::Sessions(Admission {
            name: record.name,
            customer: record.customer,
            // Only the stub reads the site; a forward keeps it in the path.
            site: match self.common.backend {
                Backend::Stub => site.to_owned(),
                Backend::Upstream(_) => String::new(),
            },
            query,
        }))
    }

    fn me<'g>(&'g self, record: Credential<'g>) -> Decision<'g> {
        Decision {
            action: Action::Reply(Reply {
                status: 200,
                headers: json_headers(),
                // In the contract's field order, the strings escaped.
                body: Body::Made(format!(
                    "{{\"role\":\"{}\",\"name\":{},\"hint\":{}}}",
                    record.level.role(),
                    json_string(record.name),
                    json_string(record.hint),
                )),
            }),
            outcome: Outcome::Allowed,
            credential: Some(record.name),
        }
    }

    /// `503 limiter_unavailable`: the limiter's shared state failed and the
    /// gate fails closed.
    pub(crate) fn limiter_unavailable<'g>(&'g self, credential: Option<&'g str>) -> Decision<'g> {
        self.deny(
            GateError::new(
                ErrorCode::LimiterUnavailable,
                "The rate limiter is unavailable; the request was not admitted.",
            ),
            credential,
            true,
        )
    }

    /// Finishes an admitted request with the limiter's verdict (or failure).
    pub(crate) fn complete<'g>(
        &'g self,
        admission: Admission<'g>,
        verdict: Result<Verdict, LimiterError>,
    ) -> Decision<'g> {
        let Admission {
            name,
            customer,
            site,
            query,
        } = admission;
        let (verdict, outcome) = match verdict {
            Ok(v) if v.admitted => (Some(v), Outcome::Allowed),
            Ok(v) => {
                let body = Body::Shared(Arc::clone(&self.common.rate_limited_body));
                let mut d = self.deny_with(ErrorCode::RateLimited, body, Some(name), false);
                if let Action::Reply(reply) = &mut d.action {
                    let retry_after = headers::decimal(v.reset_seconds.max(1));
                    reply
                        .headers
                        .push(("retry-after", FieldValue::Computed(retry_after)));
                    self.push_rate_headers(&mut reply.headers, Some(&v));
                }
                return d;
            }
            Err(_) if self.common.fail_open => (None, Outcome::AllowedFailOpen),
            Err(_) => return self.limiter_unavailable(Some(name)),
        };
        let action = match &self.common.backend {
            Backend::Stub => {
                let mut headers = json_headers();
                self.push_rate_headers(&mut headers, verdict.as_ref());
                let per_site = self.common.stub_sessions_per_site;
                let body = match self.common.pages.lock() {
                    Ok(mut pages) => {
                        Body::Shared(pages.page_json(customer, &site, per_site, &query))
                    }
                    // Poisoned only if a render panicked: render without the cache.
                    Err(_) => Body::Made(
                        crate::stub::StubSite::new(customer, &site, per_site).page_json(&query),
                    ),
                };
                Action::Reply(Reply {
                    status: 200,
                    headers,
                    body,
                })
            }
            Backend::Upstream(_) => Action::Forward(Forward {
                add_request_headers: [(CREDENTIAL_HEADER, name), (CUSTOMER_HEADER, customer)],
                response_headers: {
                    let mut headers = Vec::with_capacity(2);
                    self.push_rate_headers(&mut headers, verdict.as_ref());
                    headers
                },
            }),
        };
        Decision {
            action,
            outcome,
            credential: Some(name),
        }
    }

    /// `RateLimit-Policy` always; `RateLimit` when the state is known.
    /// Pushed onto the headers at hand: a reply's room is made for them
    /// ([`json_headers`]), so they cost no vector of their own.
    fn push_rate_headers<'g>(&'g self, h: &mut Headers<'g>, verdict: Option<&Verdict>) {
        h.push((
            RATELIMIT_POLICY_HEADER,
            FieldValue::Borrowed(self.common.policy.as_str()),
        ));
        if let Some(v) = verdict {
            h.push((
                RATELIMIT_HEADER,
                FieldValue::Computed(headers::ratelimit(self.common.limit, v)),
            ));
        }
    }

    /// Adds the `RateLimit` header to a reply that never reached the limiter.
    pub(crate) fn add_limit_state(&self, decision: &mut Decision<'_>, state: &Verdict) {
        if let Action::Reply(reply) = &mut decision.action {
            let value = headers::ratelimit(self.common.limit, state);
            reply
                .headers
                .push((RATELIMIT_HEADER, FieldValue::Computed(value)));
        }
    }

    /// An error reply. Under `/v1/external/` it carries the limit's policy;
    /// the decision adds the limit's current state when it can read it.
    pub(crate) fn deny<'g>(
        &'g self,
        error: GateError,
        credential: Option<&'g str>,
        limited: bool,
    ) -> Decision<'g> {
        self.deny_with(error.code, Body::Made(error.body()), credential, limited)
    }

    /// As [`Gate::deny`], with the error's body at hand.
    fn deny_with<'g>(
        &'g self,
        code: ErrorCode,
        body: Body,
        credential: Option<&'g str>,
        limited: bool,
    ) -> Decision<'g> {
        let mut headers = json_headers();
        match code {
            ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => {
                headers.push(("www-authenticate", FieldValue::Borrowed(WWW_AUTHENTICATE)));
            }
            ErrorCode::MethodNotAllowed => headers.push(("allow", FieldValue::Borrowed("GET"))),
            _ => {}
        }
        if limited {
            self.push_rate_headers(&mut headers, None);
        }
        Decision {
            action: Action::Reply(Reply {
                status: code.status(),
                headers,
                body,
            }),
            outcome: Outcome::Denied(code),
            credential,
        }
    }

    /// The reply a host sends when it cannot run the gate at all (no usable
    /// configuration, a trapped VM): 500 in the contract's shape. Every
    /// host sends this one, so they cannot drift apart.
    pub fn internal_error_reply(message: &str) -> Reply<'static> {
        Reply {
            status: 500,
            headers: json_headers(),
            body: Body::Made(crate::error::internal_error_body(message)),
        }
    }

    /// `502 upstream_unavailable`: the forwarded request found no upstream
    /// (unreachable, timed out). With the forward's rate-limit headers, as
    /// the upstream's answer would have carried; without, for a host that
    /// kept none.
    pub fn upstream_unavailable<'g>(forward: Option<Forward<'g>>) -> Reply<'g> {
        let error = GateError::new(
            ErrorCode::UpstreamUnavailable,
            "The sessions service could not be reached.",
        );
        let mut headers = json_headers();
        if let Some(forward) = forward {
            headers.extend(forward.response_headers);
        }
        Reply {
            status: error.code.status(),
            headers,
            body: Body::Made(error.body()),
        }
    }
}
