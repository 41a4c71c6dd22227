//! The contract (`shared/CONTRACT.md`), rule by rule, against `Gate::decide`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use serde_json::Value;
use sessiongate_core::{
    Action, Backend, CREDENTIAL_HEADER, CUSTOMER_HEADER, CredentialSet, Decision, Entry, ErrorCode,
    FieldValue, Forward, Gate, GateConfig, Kind, Kv, KvError, LIMITER_KEY, Level, LimitConfig,
    MemoryKv, Outcome, Request, SecretHash, Sites, hash_secret, limiter_log,
};

const TOKEN: &str = "fus_AAAAAAAAAAbbbbbbbbbb0000000000cccccccc12";
const SITE_TOKEN: &str = "fus_ZZZZZZZZZZyyyyyyyyyy9999999999xxxxxxxx34";
const KEY_STD: &str = "StandardKeyBodyStandardKeyBody0001/STD0001";
const KEY_ARCH: &str = "ArchitectKeyBodyArchitectKeyBody002/ARC0002";
const KEY_ADMIN: &str = "AdminKeyBodyAdminKeyBodyAdminKeyBody/ADM0003";
const NOW: u64 = 1_800_000_000_000;

use sessiongate_core::fixtures::record as rec;

fn config(backend: Backend, requests: u32) -> GateConfig {
    GateConfig {
        credentials: CredentialSet::new(vec![
            rec(TOKEN, Kind::Token, "all-sites", Sites::All, Level::Standard),
            rec(
                SITE_TOKEN,
                Kind::Token,
                "site-a-only",
                Sites::List(vec!["site-a".into()]),
                Level::Standard,
            ),
            rec(KEY_STD, Kind::Key, "key-std", Sites::All, Level::Standard),
            rec(
                KEY_ARCH,
                Kind::Key,
                "key-arch",
                Sites::All,
                Level::Architect,
            ),
            rec(KEY_ADMIN, Kind::Key, "key-admin", Sites::All, Level::Admin),
        ])
        .unwrap()
        .into(),
        limit: LimitConfig {
            requests,
            window_seconds: 60,
        },
        backend,
        ..Default::default()
    }
}

/// A default gate of its own for each test: a gate remembers when the limit
/// is full, and each test has its own limiter state. Decisions borrow from
/// their gate, so it outlives them.
fn gate() -> &'static Gate {
    Box::leak(Box::new(Gate::new(config(Backend::Stub, 20)).unwrap()))
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

struct Call<'a> {
    method: &'a str,
    target: &'a str,
    auth: Vec<String>,
}

fn get(target: &str, auth: &[String]) -> Call<'static> {
    Call {
        method: "GET",
        target: Box::leak(target.to_owned().into_boxed_str()),
        auth: auth.to_vec(),
    }
}

fn run<'g>(g: &'g Gate, call: &Call<'_>, store: &mut dyn Kv) -> Decision<'g> {
    let values: Vec<&[u8]> = call.auth.iter().map(|s| s.as_bytes()).collect();
    g.decide(
        &Request {
            method: call.method,
            target: call.target,
            authorization: &values,
            client: None,
        },
        NOW,
        store,
    )
}

fn reply(d: &Decision<'_>) -> (u16, Vec<(&'static str, String)>, Value) {
    match &d.action {
        Action::Reply(r) => (
            r.status,
            r.headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
            serde_json::from_str(&r.body).unwrap(),
        ),
        Action::Forward(_) => panic!("expected a reply, got a forward"),
    }
}

fn header<'h>(h: &'h [(&'static str, String)], name: &str) -> Option<&'h str> {
    h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

fn expect_error(d: &Decision, code: ErrorCode) -> Vec<(&'static str, String)> {
    let (status, headers, body) = reply(d);
    assert_eq!(status, code.status(), "{body}");
    assert_eq!(body["error"]["code"], code.as_str());
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(d.outcome, Outcome::Denied(code));
    headers
}

const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

fn ok_auth() -> Vec<String> {
    vec![bearer(TOKEN)]
}

// ---- 1. The one endpoint -------------------------------------------------

#[test]
fn lists_sessions_with_a_valid_token() {
    let mut s = MemoryKv::default();
    let d = run(gate(), &get(SESSIONS, &ok_auth()), &mut s);
    let (status, headers, body) = reply(&d);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(body["data"]["sessions"].as_array().unwrap().len(), 1000);
    assert!(body["data"]["startAfter"].is_u64());
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(d.credential, Some("all-sites"));
}

#[test]
fn unknown_routes_are_404_before_anything_else() {
    let mut s = MemoryKv::default();
    for target in [
        "/",
        "/v1/external/sessions/acme/site-a/",
        "/v1/external/sessions/acme/site%2Fa",
        "/v1/external/sessions/acme/site-a/extra",
        "/v1/external/sessions/acme",
        "/v1/external/sessions/../site-a",
    ] {
        // Even with no credential and a bad method, the route is checked first.
        let d = run(
            gate(),
            &Call {
                method: "POST",
                target,
                auth: vec![],
            },
            &mut s,
        );
        expect_error(&d, ErrorCode::NotFound);
    }
    assert_eq!(s.version(LIMITER_KEY), None, "a 404 spends nothing");
}

#[test]
fn other_methods_are_405_with_allow_get() {
    let mut s = MemoryKv::default();
    for method in ["POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "get"] {
        let d = run(
            gate(),
            &Call {
                method,
                target: SESSIONS,
                auth: ok_auth(),
            },
            &mut s,
        );
        let h = expect_error(&d, ErrorCode::MethodNotAllowed);
        assert_eq!(header(&h, "allow"), Some("GET"));
    }
    let d = run(
        gate(),
        &Call {
            method: "POST",
            target: "/me",
            auth: ok_auth(),
        },
        &mut s,
    );
    expect_error(&d, ErrorCode::MethodNotAllowed);
}

#[test]
fn bad_queries_are_400_naming_the_parameter_before_credentials() {
    let mut s = MemoryKv::default();
    for (query, name) in [
        ("startTime=abc", "startTime"),
        ("endTime=-1", "endTime"),
        ("startAfter=9007199254740992", "startAfter"),
        ("startTime=1&startTime=2", "startTime"),
        ("startTime=5&endTime=4", "endTime"),
        ("pageSize=10", "pageSize"),
    ] {
        // No credential at all: the query is checked first.
        let d = run(gate(), &get(&format!("{SESSIONS}?{query}"), &[]), &mut s);
        let (_, _, body) = reply(&d);
        expect_error(&d, ErrorCode::InvalidRequest);
        assert!(
            body["error"]["message"].as_str().unwrap().contains(name),
            "{query}: {body}"
        );
    }
}

#[test]
fn query_filters_reach_the_stub() {
    let mut s = MemoryKv::default();
    let d = run(
        gate(),
        &get(&format!("{SESSIONS}?startTime=0&endTime=0"), &ok_auth()),
        &mut s,
    );
    let (status, _, body) = reply(&d);
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"data": {"sessions": []}}));
}

#[test]
fn paging_a_whole_site_through_the_gate() {
    let g = Gate::new(config(Backend::Stub, 100)).unwrap();
    let mut s = MemoryKv::default();
    let mut cursor: Option<u64> = None;
    let mut seen = Vec::new();
    loop {
        let target = match cursor {
            Some(c) => format!("{SESSIONS}?startAfter={c}"),
            None => SESSIONS.to_owned(),
        };
        let (status, _, body) = reply(&run(&g, &get(&target, &ok_auth()), &mut s));
        assert_eq!(status, 200);
        let page = body["data"]["sessions"].as_array().unwrap();
        assert!(page.len() <= 1000);
        seen.extend(page.iter().map(|x| x["timestamp"].as_u64().unwrap()));
        match body["data"]["startAfter"].as_u64() {
            Some(c) => {
                assert_eq!(Some(c), page.last().and_then(|x| x["timestamp"].as_u64()));
                cursor = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 2600);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

// ---- 2. Credentials ------------------------------------------------------

#[test]
fn missing_credential_is_401_unauthorized_with_challenge() {
    let mut s = MemoryKv::default();
    let h = expect_error(
        &run(gate(), &get(SESSIONS, &[]), &mut s),
        ErrorCode::Unauthorized,
    );
    assert_eq!(
        header(&h, "www-authenticate"),
        Some("Bearer realm=\"sessions\", Basic realm=\"sessions\"")
    );
}

#[test]
fn malformed_unknown_and_revoked_share_one_body() {
    let mut s = MemoryKv::default();
    let unknown = "fus_QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
    let cases = [
        "Bearer".to_owned(),
        "Bearer fus_short".to_owned(),
        bearer(&format!("{TOKEN}x")),
        bearer(unknown),
        "Token abc".to_owned(),
        "Basic not-a-key".to_owned(),
        format!("Basic {TOKEN}"),
        "   ".to_owned(),
    ];
    let bodies: Vec<String> = cases
        .iter()
        .map(|c| {
            let d = run(gate(), &get(SESSIONS, std::slice::from_ref(c)), &mut s);
            expect_error(&d, ErrorCode::InvalidCredentials);
            match d.action {
                Action::Reply(r) => r.body.into_string(),
                Action::Forward(_) => unreachable!(),
            }
        })
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // Revoked = no longer in the set: a gate built without the record.
    let mut cfg = config(Backend::Stub, 20);
    let kept = cfg.credentials.listed().unwrap().records().into_iter();
    cfg.credentials = CredentialSet::new(kept.filter(|r| r.name != "all-sites").collect())
        .unwrap()
        .into();
    let revoked = Gate::new(cfg).unwrap();
    let d = run(&revoked, &get(SESSIONS, &ok_auth()), &mut s);
    expect_error(&d, ErrorCode::InvalidCredentials);
    assert_eq!(
        s.version(LIMITER_KEY),
        None,
        "no failed credential spends the budget"
    );
}

#[test]
fn two_authorization_headers_are_400() {
    let mut s = MemoryKv::default();
    let d = run(
        gate(),
        &get(SESSIONS, &[bearer(TOKEN), bearer(TOKEN)]),
        &mut s,
    );
    expect_error(&d, ErrorCode::InvalidRequest);
}

#[test]
fn basic_raw_key_and_rfc7617() {
    let mut s = MemoryKv::default();
    let b64 = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);
    for auth in [
        format!("Basic {KEY_STD}"),
        format!("BASIC   {KEY_STD}"),
        format!("Basic {}", b64(&format!("me:{KEY_STD}"))),
        format!("Basic {}", b64(&format!("{KEY_STD}:"))),
    ] {
        let d = run(gate(), &get(SESSIONS, std::slice::from_ref(&auth)), &mut s);
        assert_eq!(reply(&d).0, 200, "{auth}");
        assert_eq!(d.credential, Some("key-std"));
    }
}

#[test]
fn scope_customer_and_site() {
    let mut s = MemoryKv::default();
    let d = run(
        gate(),
        &get("/v1/external/sessions/other/site-a", &ok_auth()),
        &mut s,
    );
    expect_error(&d, ErrorCode::Forbidden);
    let d = run(
        gate(),
        &get("/v1/external/sessions/acme/site-b", &[bearer(SITE_TOKEN)]),
        &mut s,
    );
    expect_error(&d, ErrorCode::Forbidden);
    let d = run(gate(), &get(SESSIONS, &[bearer(SITE_TOKEN)]), &mut s);
    assert_eq!(reply(&d).0, 200);
    let d = run(
        gate(),
        &get("/v1/external/sessions/acme/any-site", &ok_auth()),
        &mut s,
    );
    assert_eq!(reply(&d).0, 200, "`all` means every site of the customer");
    // Only the two admitted requests spent the budget.
    assert_eq!(limiter_log::decode(s.value(LIMITER_KEY)).unwrap().len(), 2);
}

#[test]
fn every_level_may_list_sessions() {
    let mut s = MemoryKv::default();
    for key in [KEY_STD, KEY_ARCH, KEY_ADMIN] {
        let d = run(gate(), &get(SESSIONS, &[format!("Basic {key}")]), &mut s);
        assert_eq!(reply(&d).0, 200);
    }
}

#[test]
fn me_reports_role_name_and_hint_and_spends_nothing() {
    let mut s = MemoryKv::default();
    for (auth, role, name, hint) in [
        (bearer(TOKEN), "USER", "all-sites", "fus_****c12"),
        (format!("Basic {KEY_STD}"), "USER", "key-std", "STD0001"),
        (
            format!("Basic {KEY_ARCH}"),
            "ARCHITECT",
            "key-arch",
            "ARC0002",
        ),
        (
            format!("Basic {KEY_ADMIN}"),
            "ADMIN",
            "key-admin",
            "ADM0003",
        ),
    ] {
        let d = run(gate(), &get("/me", &[auth]), &mut s);
        let (status, headers, body) = reply(&d);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            serde_json::json!({"role": role, "name": name, "hint": hint})
        );
        assert_eq!(
            header(&headers, "ratelimit"),
            None,
            "/me is outside the limited API"
        );
    }
    expect_error(
        &run(gate(), &get("/me", &[]), &mut s),
        ErrorCode::Unauthorized,
    );
    expect_error(
        &run(gate(), &get("/me?x=1", &ok_auth()), &mut s),
        ErrorCode::InvalidRequest,
    );
    assert_eq!(s.version(LIMITER_KEY), None);
}

// ---- 4. The global limit -------------------------------------------------

#[test]
fn twenty_then_429_with_headers() {
    let mut s = MemoryKv::default();
    let g = gate();
    for i in 0..20u32 {
        let (status, h, _) = reply(&run(g, &get(SESSIONS, &ok_auth()), &mut s));
        assert_eq!(status, 200);
        assert_eq!(header(&h, "ratelimit-policy"), Some("20;w=60"));
        assert_eq!(
            header(&h, "ratelimit"),
            Some(format!("limit=20, remaining={}, reset=60", 19 - i).as_str())
        );
    }
    // Shared across credentials: a different credential is limited too.
    let d = run(g, &get(SESSIONS, &[format!("Basic {KEY_STD}")]), &mut s);
    let h = expect_error(&d, ErrorCode::RateLimited);
    assert_eq!(header(&h, "retry-after"), Some("60"));
    assert_eq!(header(&h, "ratelimit-policy"), Some("20;w=60"));
    assert_eq!(
        header(&h, "ratelimit"),
        Some("limit=20, remaining=0, reset=60")
    );
    // Errors under /v1/external carry the headers too, read without spending.
    let h = expect_error(
        &run(g, &get(SESSIONS, &[]), &mut s),
        ErrorCode::Unauthorized,
    );
    assert_eq!(
        header(&h, "ratelimit"),
        Some("limit=20, remaining=0, reset=60")
    );
}

#[test]
fn only_requests_that_pass_every_check_spend_the_budget() {
    let mut s = MemoryKv::default();
    let g = Gate::new(config(Backend::Stub, 1)).unwrap();
    run(
        &g,
        &get(
            SESSIONS,
            &[bearer("fus_QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ")],
        ),
        &mut s,
    );
    run(
        &g,
        &get("/v1/external/sessions/other/x", &ok_auth()),
        &mut s,
    );
    run(&g, &get(&format!("{SESSIONS}?bad=1"), &ok_auth()), &mut s);
    assert_eq!(reply(&run(&g, &get(SESSIONS, &ok_auth()), &mut s)).0, 200);
    expect_error(
        &run(&g, &get(SESSIONS, &ok_auth()), &mut s),
        ErrorCode::RateLimited,
    );
}

struct BrokenStore;
impl Kv for BrokenStore {
    fn get(&mut self, _: &str) -> Result<Option<Entry<'_>>, KvError> {
        Err(KvError("unreachable".into()))
    }
    fn swap(&mut self, _: &str, _: u64, _: &[u8]) -> Result<bool, KvError> {
        Err(KvError("unreachable".into()))
    }
    fn create(&mut self, _: &str, _: &[u8]) -> Result<bool, KvError> {
        Err(KvError("unreachable".into()))
    }
}

#[test]
fn limiter_failure_is_503_unless_fail_open() {
    let d = run(gate(), &get(SESSIONS, &ok_auth()), &mut BrokenStore);
    let h = expect_error(&d, ErrorCode::LimiterUnavailable);
    assert_eq!(header(&h, "ratelimit-policy"), Some("20;w=60"));
    let mut cfg = config(Backend::Stub, 20);
    cfg.fail_open = true;
    let open = Gate::new(cfg).unwrap();
    let d = run(&open, &get(SESSIONS, &ok_auth()), &mut BrokenStore);
    assert_eq!(reply(&d).0, 200);
    assert_eq!(d.outcome, Outcome::AllowedFailOpen);
}

// ---- 5. Behind the gate --------------------------------------------------

#[test]
fn upstream_backend_forwards_rewritten() {
    let g = Gate::new(config(Backend::Upstream(None), 20)).unwrap();
    let d = run(&g, &get(SESSIONS, &ok_auth()), &mut MemoryKv::default());
    let Action::Forward(f) = d.action else {
        panic!("expected forward")
    };
    assert_eq!(Forward::REMOVED_REQUEST_HEADERS, ["authorization"]);
    assert_eq!(
        f.add_request_headers,
        [(CREDENTIAL_HEADER, "all-sites"), (CUSTOMER_HEADER, "acme")]
    );
    assert!(f.response_headers.iter().any(|(n, _)| *n == "ratelimit"));
    let r = Gate::internal_error_reply("The gate is misconfigured.");
    assert_eq!(r.status, 500);
    assert_eq!(
        r.headers,
        vec![("content-type", FieldValue::Borrowed("application/json"))]
    );
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert_eq!(body["error"]["message"], "The gate is misconfigured.");
    let r = Gate::upstream_unavailable(None);
    assert_eq!(r.status, 502);
    assert!(r.body.contains("upstream_unavailable"));
    let r = Gate::upstream_unavailable(Some(f));
    assert!(r.headers.iter().any(|(n, _)| *n == "ratelimit"));
}

#[test]
fn secrets_never_appear_in_any_decision() {
    let g = Gate::new(config(Backend::Upstream(None), 20)).unwrap();
    let mut s = MemoryKv::default();
    for secret in [TOKEN, KEY_STD] {
        for target in [SESSIONS, "/me", "/v1/external/sessions/other/x"] {
            let auth = if secret.starts_with("fus_") {
                bearer(secret)
            } else {
                format!("Basic {secret}")
            };
            let d = run(&g, &get(target, &[auth]), &mut s);
            let dump = format!("{d:?}");
            assert!(!dump.contains(secret), "{dump}");
            let hash = sessiongate_core::hash_hex(&hash_secret(secret.as_bytes()));
            assert!(!dump.contains(&hash));
        }
    }
}

/// A store with a revocation list, as the Worker's Durable Object keeps.
struct Revoking {
    kv: MemoryKv,
    revoked: Vec<SecretHash>,
}

impl Kv for Revoking {
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
        self.kv.get(key)
    }
    fn swap(&mut self, key: &str, version: u64, value: &[u8]) -> Result<bool, KvError> {
        self.kv.swap(key, version, value)
    }
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        self.kv.create(key, value)
    }
    fn revoked(&mut self, hash: &SecretHash) -> Result<bool, KvError> {
        Ok(self.revoked.contains(hash))
    }
}

#[test]
fn revoked_credentials_are_unknown_credentials() {
    let g = Box::leak(Box::new(
        Gate::new(config(Backend::Stub, 20))
            .unwrap()
            .with_revocation_list(),
    ));
    let mut s = Revoking {
        kv: MemoryKv::default(),
        revoked: vec![hash_secret(TOKEN.as_bytes())],
    };
    let h = expect_error(
        &run(g, &get(SESSIONS, &ok_auth()), &mut s),
        ErrorCode::InvalidCredentials,
    );
    assert!(header(&h, "ratelimit").is_some());
    assert_eq!(s.kv.version(LIMITER_KEY), None, "nothing spent");
    let others = get(SESSIONS, &[format!("Basic {KEY_STD}")]);
    assert_eq!(reply(&run(g, &others, &mut s)).0, 200);
    s.revoked.clear();
    assert_eq!(reply(&run(g, &get(SESSIONS, &ok_auth()), &mut s)).0, 200);
}

/// The failed-credential guard's 429 carries a `RateLimit` true for the
/// client it holds (nothing left until Retry-After), not the global budget's
/// room, which it does not give.
#[test]
fn the_guards_refusal_claims_no_budget() {
    let g = gate();
    let mut s = MemoryKv::default();
    let wrong = [b"Bearer fus_0000000000000000000000000000000000000000".as_slice()];
    let req = Request {
        method: "GET",
        target: SESSIONS,
        authorization: &wrong,
        client: Some("192.0.2.9:5000"),
    };
    for _ in 0..10 {
        expect_error(&g.decide(&req, NOW, &mut s), ErrorCode::InvalidCredentials);
    }
    let h = expect_error(&g.decide(&req, NOW, &mut s), ErrorCode::RateLimited);
    assert_eq!(header(&h, "retry-after"), Some("60"));
    assert_eq!(
        header(&h, "ratelimit"),
        Some("limit=20, remaining=0, reset=60")
    );
    assert_eq!(header(&h, "ratelimit-policy"), Some("20;w=60"));
    assert_eq!(
        s.version(LIMITER_KEY),
        None,
        "the global budget is untouched"
    );
}

/// A host that keeps credentials in a store it looks up by digest decides
/// exactly as a gate holding them all: the digests a request presents,
/// then `with_credentials` over what the store had under them. The
/// limiter's memo is shared with the gate it came from.
#[test]
fn deciding_over_credentials_looked_up_by_digest_is_the_same_decision() {
    use sessiongate_core::{CredentialRecord, presented_hashes};
    let all = gate();
    let store: Vec<CredentialRecord> = all.credentials().records();
    let empty = Gate::new(GateConfig {
        credentials: CredentialSet::default().into(),
        ..config(Backend::Stub, 20)
    })
    .unwrap();
    let raw_basic = format!("Basic {KEY_STD}");
    let rfc7617 = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(":{KEY_ARCH}"))
    );
    let cases = [
        bearer(TOKEN),
        bearer(SITE_TOKEN),
        raw_basic,
        rfc7617,
        format!("Basic {TOKEN}"),
        bearer(KEY_ADMIN),
        bearer("fus_0000000000000000000000000000000000000000"),
        "Bearer".to_owned(),
    ];
    for auth in cases {
        let values = [auth.as_bytes()];
        let digests = presented_hashes(&values);
        assert!(digests.len() <= 2, "{auth}");
        let found: Vec<CredentialRecord> = store
            .iter()
            .filter(|r| {
                digests
                    .iter()
                    .any(|d| sessiongate_core::hash_hex(d) == r.hash)
            })
            .cloned()
            .collect();
        let looked_up = empty.with_credentials(CredentialSet::new(found).unwrap());
        for target in [SESSIONS, "/me"] {
            let req = Request {
                method: "GET",
                target,
                authorization: &values,
                client: None,
            };
            let whole = all.decide(&req, NOW, &mut MemoryKv::default());
            let by_digest = looked_up.decide(&req, NOW, &mut MemoryKv::default());
            assert_eq!(reply(&whole), reply(&by_digest), "{auth} {target}");
        }
    }
    assert!(presented_hashes(&[b"Bearer a", b"Bearer b"]).is_empty());
}

/// Counts the calls a decision makes to its shared state.
struct Counting<'k> {
    inner: &'k mut MemoryKv,
    calls: usize,
}

impl Kv for Counting<'_> {
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
        self.calls += 1;
        self.inner.get(key)
    }
    fn swap(
        &mut self,
        key: &str,
        version: sessiongate_core::Version,
        value: &[u8],
    ) -> Result<bool, KvError> {
        self.calls += 1;
        self.inner.swap(key, version, value)
    }
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        self.calls += 1;
        self.inner.create(key, value)
    }
}

/// Once the guard holds a client, the gate remembers until when: the same
/// refusal with no call to the shared state (a guesser's requests cost the
/// store nothing), and the client free again exactly when its oldest
/// failure leaves the window, as a gate that remembers nothing would say.
#[test]
fn a_held_client_is_refused_without_a_call_until_exactly_its_hold_ends() {
    let remembering = gate();
    let mut state = MemoryKv::default();
    let wrong = [b"Bearer fus_0000000000000000000000000000000000000000".as_slice()];
    let req = Request {
        method: "GET",
        target: SESSIONS,
        authorization: &wrong,
        client: Some("192.0.2.44:5000"),
    };
    for i in 0..10 {
        expect_error(
            &remembering.decide(&req, NOW + i, &mut state),
            ErrorCode::InvalidCredentials,
        );
    }
    // The first refusal reads the bucket; every later one calls nothing.
    let mut counting = Counting {
        inner: &mut state,
        calls: 0,
    };
    expect_error(
        &remembering.decide(&req, NOW + 10, &mut counting),
        ErrorCode::RateLimited,
    );
    assert!(counting.calls > 0);
    for at in [NOW + 11, NOW + 30_000, NOW + 59_999] {
        let mut counting = Counting {
            inner: &mut state,
            calls: 0,
        };
        let memo = reply(&remembering.decide(&req, at, &mut counting));
        assert_eq!(counting.calls, 0, "a call at {at}");
        let fresh = Gate::new(config(Backend::Stub, 20)).unwrap();
        assert_eq!(
            memo,
            reply(&fresh.decide(&req, at, &mut state.clone())),
            "at {at}"
        );
    }
    // The first failure (at NOW) leaves the window at NOW + 60 s.
    expect_error(
        &remembering.decide(&req, NOW + 60_000, &mut state),
        ErrorCode::InvalidCredentials,
    );
}
