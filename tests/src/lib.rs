//! The sessiongate conformance suite: the contract (`shared/CONTRACT.md`) as
//! black-box HTTP cases against any running build (local host, Worker,
//! component). A build's test provides a [`Harness`]: where the gate listens
//! and how to mint and revoke credentials for it.
#![allow(clippy::indexing_slicing)] // test code: slicing bounded bodies and lists

pub mod http;
mod lifecycle;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Response, get, request};
use serde_json::Value;

/// The customer every suite credential belongs to.
pub const CUSTOMER: &str = "acme";
/// The one site the site-scoped token may read.
pub const SITE_A: &str = "site-a";

/// The credentials a suite run uses, minted by the harness for [`CUSTOMER`].
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Token, all sites.
    pub token_all: String,
    /// Token, only [`SITE_A`].
    pub token_site_a: String,
    pub key_standard: String,
    pub key_architect: String,
    pub key_admin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Token,
    Key,
}

/// What a build under test offers the suite.
pub trait Harness {
    fn addr(&self) -> SocketAddr;
    fn credentials(&self) -> &Credentials;
    /// Mints a standard token for all sites of [`CUSTOMER`] that expires
    /// `expires_in` after its creation (the CLI's `--expires-in`; none:
    /// never); returns its secret once the build holds it (the next request
    /// may use it), which for a short expiry may be after it expired.
    fn mint_with(&mut self, name: &str, expires_in: Option<Duration>) -> Result<String, String>;
    /// [`Harness::mint_with`] a token that never expires.
    fn mint(&mut self, name: &str) -> Result<String, String> {
        self.mint_with(name, None)
    }
    /// Revokes a credential by name; returns once the build refuses it (the
    /// next request is told 401).
    fn revoke(&mut self, name: &str) -> Result<(), String>;
    /// Sessions per site of the stub backend.
    fn stub_sessions_per_site(&self) -> usize {
        2_600
    }
}

pub type Case = fn(&mut dyn Harness) -> Result<(), String>;

/// Cases that need a limit high enough never to be reached (≥ 200 a window).
pub const FUNCTIONAL: &[(&str, Case)] = &[
    ("routing: unknown paths are 404", unknown_routes),
    ("method: only GET, 405 with Allow", methods),
    (
        "query: strict validation naming the parameter",
        query_validation,
    ),
    (
        "credentials: missing is 401 unauthorized with challenge",
        missing_credential,
    ),
    (
        "credentials: malformed/unknown share one 401 body",
        invalid_credentials,
    ),
    (
        "credentials: two Authorization headers are 400",
        duplicate_authorization,
    ),
    (
        "credentials: Bearer token lists sessions",
        bearer_lists_sessions,
    ),
    ("credentials: Basic raw key and RFC 7617", basic_schemes),
    ("scope: customer and sites", scope),
    (
        "levels: every level lists sessions; /me reports roles",
        levels_and_me,
    ),
    ("/me: outside the limit", me_spends_nothing),
    (
        "paging: a whole site, once each, in order",
        paging_whole_site,
    ),
    ("paging: startTime and endTime filters", time_filters),
    (
        "revocation: a deleted token fails on the next request",
        lifecycle::revocation,
    ),
    (
        "expiry: admitted until it expires, then answered as an unknown token",
        lifecycle::expiry,
    ),
];

/// Runs cases; returns a line per failure (empty: all passed).
pub fn run(h: &mut dyn Harness, cases: &[(&str, Case)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, case) in cases {
        let started = Instant::now();
        match case(h) {
            Ok(()) => eprintln!(
                "conformance ok   {name} ({} ms)",
                started.elapsed().as_millis()
            ),
            Err(e) => {
                eprintln!("conformance FAIL {name}: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    failures
}

const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn basic(k: &str) -> String {
    format!("Basic {k}")
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Checks an error response: status, JSON body shape, code.
/// The failed-credential guard's 429 (issue 15): its `RateLimit` is true
/// for the client it holds (nothing remains until `Retry-After`), never the
/// global budget's room, which it does not give.
pub fn guard_refusal_claims_no_budget(r: &Response, limit: u32) -> Result<(), String> {
    expect_error(r, 429, "rate_limited")?;
    let retry = r
        .header("retry-after")
        .ok_or("the guard's 429 has no Retry-After")?;
    let want = format!("limit={limit}, remaining=0, reset={retry}");
    match r.header("ratelimit") {
        Some(got) if got == want => Ok(()),
        other => Err(format!("guard's RateLimit {other:?}, expected {want:?}")),
    }
}

pub fn expect_error(r: &Response, status: u16, code: &str) -> Result<Value, String> {
    ensure(r.status == status, || {
        format!("expected {status} {code}, got {} {}", r.status, r.text())
    })?;
    ensure(r.header("content-type") == Some("application/json"), || {
        format!("{code}: content-type {:?}", r.header("content-type"))
    })?;
    let v = r.json()?;
    ensure(v["error"]["code"] == code, || {
        format!("expected code {code}, got {v}")
    })?;
    ensure(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        || format!("{code}: no message in {v}"),
    )?;
    ensure(v.as_object().map(|o| o.len()) == Some(1), || {
        format!("extra fields: {v}")
    })?;
    Ok(v)
}

fn expect_ok(r: &Response) -> Result<Value, String> {
    ensure(r.status == 200, || {
        format!("expected 200, got {} {}", r.status, r.text())
    })?;
    ensure(r.header("content-type") == Some("application/json"), || {
        format!("content-type {:?}", r.header("content-type"))
    })?;
    r.json()
}

fn unknown_routes(h: &mut dyn Harness) -> Result<(), String> {
    let auth = bearer(&h.credentials().token_all);
    for target in [
        "/",
        "/v1/external/sessions",
        "/v1/external/sessions/acme",
        "/v1/external/sessions/acme/site-a/",
        "/v1/external/sessions/acme/site-a/extra",
        "/v1/external/sessions/acme/site%2Fa",
        "/v1/external/sessions/acme%2Fsite-a/x",
        "/v1/external/sessions/acme/..",
        "/v1/external/sessions/./site-a",
        "/v1/external/sessions//site-a",
        "/v1/external//sessions/acme/site-a",
        "/v2/external/sessions/acme/site-a",
        "/me/",
    ] {
        let r = get(h.addr(), target, Some(&auth))?;
        expect_error(&r, 404, "not_found").map_err(|e| format!("{target}: {e}"))?;
    }
    let long = format!("/v1/external/sessions/acme/{}", "a".repeat(129));
    expect_error(&get(h.addr(), &long, Some(&auth))?, 404, "not_found")?;
    let max = format!("/v1/external/sessions/acme/{}", "a".repeat(128));
    expect_ok(&get(h.addr(), &max, Some(&auth))?).map(|_| ())
}

fn methods(h: &mut dyn Harness) -> Result<(), String> {
    let auth = bearer(&h.credentials().token_all);
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = request(
            h.addr(),
            method,
            SESSIONS,
            &[("Authorization", &auth), ("Content-Length", "0")],
        )?;
        expect_error(&r, 405, "method_not_allowed").map_err(|e| format!("{method}: {e}"))?;
        ensure(r.header("allow") == Some("GET"), || {
            format!("{method}: Allow {:?}", r.header("allow"))
        })?;
    }
    let r = request(h.addr(), "HEAD", SESSIONS, &[("Authorization", &auth)])?;
    ensure(r.status == 405 && r.header("allow") == Some("GET"), || {
        format!("HEAD: {} {:?}", r.status, r.header("allow"))
    })
}

fn query_validation(h: &mut dyn Harness) -> Result<(), String> {
    let auth = bearer(&h.credentials().token_all);
    for (query, name) in [
        ("startTime=abc", "startTime"),
        ("startTime=-1", "startTime"),
        ("startTime=1.5", "startTime"),
        ("endTime=9007199254740992", "endTime"),
        ("endTime=99999999999999999999999", "endTime"),
        ("startAfter=", "startAfter"),
        ("startAfter=1&startAfter=2", "startAfter"),
        ("startTime=10&endTime=5", "startTime"),
        ("limit=5", "limit"),
    ] {
        let r = get(h.addr(), &format!("{SESSIONS}?{query}"), Some(&auth))?;
        let v = expect_error(&r, 400, "invalid_request").map_err(|e| format!("{query}: {e}"))?;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        ensure(msg.contains(name), || {
            format!("{query}: message {msg:?} does not name {name}")
        })?;
    }
    // The largest safe integer is valid; the query is checked before the credential.
    expect_ok(&get(
        h.addr(),
        &format!("{SESSIONS}?endTime=9007199254740991"),
        Some(&auth),
    )?)?;
    expect_error(
        &get(h.addr(), &format!("{SESSIONS}?x=1"), None)?,
        400,
        "invalid_request",
    )?;
    Ok(())
}

fn missing_credential(h: &mut dyn Harness) -> Result<(), String> {
    let r = get(h.addr(), SESSIONS, None)?;
    expect_error(&r, 401, "unauthorized")?;
    ensure(
        r.header("www-authenticate") == Some(r#"Bearer realm="sessions", Basic realm="sessions""#),
        || format!("WWW-Authenticate {:?}", r.header("www-authenticate")),
    )
}

fn invalid_credentials(h: &mut dyn Harness) -> Result<(), String> {
    let token = h.credentials().token_all.clone();
    let cases = [
        "Bearer".to_owned(),
        "Bearer fus_tooShort".to_owned(),
        bearer(&token[..token.len() - 1]),
        bearer(&format!("{token}A")),
        bearer("fus_0000000000000000000000000000000000000000"),
        format!("Token {token}"),
        basic("not-a-key"),
        basic(&token),
        basic(&b64("user:not-a-key")),
        "Basic %%%".to_owned(),
    ];
    let mut bodies = BTreeSet::new();
    for auth in &cases {
        let r = get(h.addr(), SESSIONS, Some(auth))?;
        expect_error(&r, 401, "invalid_credentials").map_err(|e| format!("{auth:.12}…: {e}"))?;
        bodies.insert(r.body.clone());
    }
    ensure(bodies.len() == 1, || {
        format!("{} different bodies", bodies.len())
    })
}

fn duplicate_authorization(h: &mut dyn Harness) -> Result<(), String> {
    let auth = bearer(&h.credentials().token_all);
    let r = request(
        h.addr(),
        "GET",
        SESSIONS,
        &[("Authorization", &auth), ("Authorization", &auth)],
    )?;
    expect_error(&r, 400, "invalid_request").map(|_| ())
}

fn check_page(v: &Value) -> Result<&Vec<Value>, String> {
    let sessions = v["data"]["sessions"]
        .as_array()
        .ok_or_else(|| format!("no data.sessions in {v:.200}"))?;
    ensure(sessions.len() <= 1000, || {
        format!("{} sessions in a page", sessions.len())
    })?;
    for s in sessions {
        for f in ["id", "pages", "duration", "timestamp", "endTimestamp"] {
            ensure(!s[f].is_null(), || format!("session without {f}: {s}"))?;
        }
        ensure(
            s["user"]["id"].is_string() && s["user"]["email"].is_string(),
            || format!("session user: {s}"),
        )?;
    }
    Ok(sessions)
}

fn bearer_lists_sessions(h: &mut dyn Harness) -> Result<(), String> {
    for auth in [
        bearer(&h.credentials().token_all),
        format!("bearer {}", h.credentials().token_all),
        format!("BEARER    {}", h.credentials().token_all),
    ] {
        let r = get(h.addr(), SESSIONS, Some(&auth))?;
        let v = expect_ok(&r)?;
        check_page(&v)?;
        ensure(
            r.header("ratelimit-policy").is_some() && r.header("ratelimit").is_some(),
            || "no RateLimit headers on 200".into(),
        )?;
    }
    Ok(())
}

fn basic_schemes(h: &mut dyn Harness) -> Result<(), String> {
    let key = h.credentials().key_standard.clone();
    for auth in [
        basic(&key),
        format!("basic   {key}"),
        basic(&b64(&format!("user:{key}"))),
        basic(&b64(&format!("{key}:"))),
    ] {
        expect_ok(&get(h.addr(), SESSIONS, Some(&auth))?)
            .map_err(|e| format!("{auth:.10}…: {e}"))?;
    }
    Ok(())
}

fn scope(h: &mut dyn Harness) -> Result<(), String> {
    let c = h.credentials().clone();
    let all = bearer(&c.token_all);
    let site_a = bearer(&c.token_site_a);
    expect_error(
        &get(h.addr(), "/v1/external/sessions/globex/site-a", Some(&all))?,
        403,
        "forbidden",
    )?;
    expect_error(
        &get(h.addr(), "/v1/external/sessions/acme/site-b", Some(&site_a))?,
        403,
        "forbidden",
    )?;
    expect_ok(&get(h.addr(), SESSIONS, Some(&site_a))?)?;
    expect_ok(&get(
        h.addr(),
        "/v1/external/sessions/acme/any-other-site",
        Some(&all),
    )?)?;
    Ok(())
}

fn levels_and_me(h: &mut dyn Harness) -> Result<(), String> {
    let c = h.credentials().clone();
    for (auth, role) in [
        (bearer(&c.token_all), "USER"),
        (basic(&c.key_standard), "USER"),
        (basic(&c.key_architect), "ARCHITECT"),
        (basic(&c.key_admin), "ADMIN"),
    ] {
        expect_ok(&get(h.addr(), SESSIONS, Some(&auth))?)?;
        let me = expect_ok(&get(h.addr(), "/me", Some(&auth))?)?;
        ensure(me["role"] == role, || {
            format!("/me role {} != {role}", me["role"])
        })?;
        ensure(me["name"].is_string(), || format!("/me name: {me}"))?;
        ensure(me["hint"].as_str().is_some_and(|h| !h.is_empty()), || {
            format!("/me hint: {me}")
        })?;
        let secret = auth.split(' ').next_back().unwrap_or_default();
        ensure(!me.to_string().contains(secret), || {
            "/me leaks the secret".into()
        })?;
    }
    let token_hint =
        expect_ok(&get(h.addr(), "/me", Some(&bearer(&c.token_all)))?)?["hint"].clone();
    let expected = format!("fus_****{}", &c.token_all[c.token_all.len() - 3..]);
    ensure(token_hint == expected.as_str(), || {
        format!("token hint {token_hint} != {expected}")
    })?;
    expect_error(&get(h.addr(), "/me", None)?, 401, "unauthorized")?;
    Ok(())
}

fn remaining(r: &Response) -> Result<u64, String> {
    let v = r.header("ratelimit").ok_or("no RateLimit header")?;
    v.split(',')
        .find_map(|p| p.trim().strip_prefix("remaining="))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad RateLimit {v:?}"))
}

fn me_spends_nothing(h: &mut dyn Harness) -> Result<(), String> {
    let auth = bearer(&h.credentials().token_all);
    let before = remaining(&get(h.addr(), SESSIONS, Some(&auth))?)?;
    for _ in 0..5 {
        expect_ok(&get(h.addr(), "/me", Some(&auth))?)?;
        expect_error(
            &get(h.addr(), SESSIONS, Some("Bearer nope"))?,
            401,
            "invalid_credentials",
        )?;
    }
    let after = remaining(&get(h.addr(), SESSIONS, Some(&auth))?)?;
    ensure(after + 1 == before, || {
        format!(
            "remaining went {before} → {after}: something besides the two listings spent the budget"
        )
    })
}

fn page_all(h: &mut dyn Harness, base: &str) -> Result<Vec<Value>, String> {
    let auth = bearer(&h.credentials().token_all);
    let mut all = Vec::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..100 {
        let sep = if base.contains('?') { '&' } else { '?' };
        let target = match cursor {
            Some(c) => format!("{base}{sep}startAfter={c}"),
            None => base.to_owned(),
        };
        let v = expect_ok(&get(h.addr(), &target, Some(&auth))?)?;
        let page = check_page(&v)?.clone();
        match v["data"]["startAfter"].as_u64() {
            Some(c) => {
                ensure(page.len() == 1000, || {
                    format!("cursor after a short page of {}", page.len())
                })?;
                ensure(
                    page.last().and_then(|s| s["timestamp"].as_u64()) == Some(c),
                    || "startAfter is not the last session's start".into(),
                )?;
                all.extend(page);
                cursor = Some(c);
            }
            None => {
                all.extend(page);
                return Ok(all);
            }
        }
    }
    Err("more than 100 pages".into())
}

fn paging_whole_site(h: &mut dyn Harness) -> Result<(), String> {
    let all = page_all(h, "/v1/external/sessions/acme/paging-site")?;
    let expected = h.stub_sessions_per_site();
    ensure(all.len() == expected, || {
        format!("{} sessions, expected {expected}", all.len())
    })?;
    let starts: Vec<u64> = all.iter().filter_map(|s| s["timestamp"].as_u64()).collect();
    ensure(starts.windows(2).all(|w| w[0] < w[1]), || {
        "not strictly ascending".into()
    })?;
    let ids: BTreeSet<String> = all.iter().map(|s| s["id"].to_string()).collect();
    ensure(ids.len() == all.len(), || "duplicate session ids".into())
}

fn time_filters(h: &mut dyn Harness) -> Result<(), String> {
    let all = page_all(h, "/v1/external/sessions/acme/filter-site")?;
    let t = |i: usize, f: &str| all[i][f].as_u64().unwrap_or_default();
    let (start, end) = (t(300, "timestamp"), t(1900, "endTimestamp"));
    let filtered = page_all(
        h,
        &format!("/v1/external/sessions/acme/filter-site?startTime={start}&endTime={end}"),
    )?;
    let expected: Vec<&Value> = all
        .iter()
        .filter(|s| {
            s["timestamp"].as_u64() >= Some(start) && s["endTimestamp"].as_u64() <= Some(end)
        })
        .collect();
    ensure(filtered.len() == expected.len(), || {
        format!("{} filtered, expected {}", filtered.len(), expected.len())
    })?;
    ensure(filtered.iter().zip(expected).all(|(a, b)| a == b), || {
        "filtered sessions differ".into()
    })
}

/// Polls `check` until it passes and returns what it returned; past
/// `within`, its last failure and how long it was waited for. `within` is a
/// generous bound on a condition, not a measurement: a loaded machine may
/// take many times the usual, and a test that needs a time belongs in a
/// benchmark.
pub fn eventually<T>(
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if start.elapsed() > within => {
                return Err(format!("{e} (still, after {:?})", start.elapsed()));
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// How long a test waits for a condition that normally takes well under a
/// second: long enough for a machine loaded many times over.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The global limit, against a gate whose limiter is fresh, with `requests`
/// admissions in a window long enough that none frees during the case.
/// `concurrent` requests are sent at once from as many threads.
pub fn exact_global_limit(
    h: &mut dyn Harness,
    requests: u32,
    window_seconds: u32,
    concurrent: usize,
) -> Result<(), String> {
    let c = h.credentials().clone();
    let addr = h.addr();
    // Failed credentials first: they must not spend anything.
    for _ in 0..5 {
        expect_error(
            &get(
                addr,
                SESSIONS,
                Some(&bearer("fus_0000000000000000000000000000000000000000")),
            )?,
            401,
            "invalid_credentials",
        )?;
    }
    let auths = [
        bearer(&c.token_all),
        basic(&c.key_standard),
        bearer(&c.token_site_a),
        basic(&c.key_admin),
    ];
    let barrier = std::sync::Barrier::new(concurrent);
    let results: Vec<Result<Response, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrent)
            .map(|i| {
                let auth = auths[i % auths.len()].clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    get(addr, SESSIONS, Some(&auth))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect()
    });
    let mut admitted = 0;
    let policy = format!("{requests};w={window_seconds}");
    for r in results {
        let r = r?;
        ensure(
            r.header("ratelimit-policy") == Some(policy.as_str()),
            || {
                format!(
                    "RateLimit-Policy {:?} != {policy}",
                    r.header("ratelimit-policy")
                )
            },
        )?;
        match r.status {
            200 => admitted += 1,
            429 => {
                expect_error(&r, 429, "rate_limited")?;
                let retry: u64 = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .ok_or("429 without a numeric Retry-After")?;
                ensure((1..=u64::from(window_seconds)).contains(&retry), || {
                    format!("Retry-After {retry}")
                })?;
                ensure(remaining(&r)? == 0, || "429 with remaining > 0".into())?;
            }
            other => return Err(format!("unexpected status {other}: {}", r.text())),
        }
    }
    ensure(admitted == requests as usize, || {
        format!("{admitted} admitted out of {concurrent}, limit {requests}")
    })?;
    // /me still answers while the API is limited.
    expect_ok(&get(addr, "/me", Some(&bearer(&c.token_all)))?).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(b64("f"), "Zg==");
        assert_eq!(b64("fo"), "Zm8=");
        assert_eq!(b64("foo"), "Zm9v");
        assert_eq!(b64("foobar"), "Zm9vYmFy");
    }
}
