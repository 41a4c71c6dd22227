//! Hostile input, contention and faults against the real `sessiongate serve`:
//! each answer is the contract's, nothing panics or kills a VM, nobody is let
//! in by accident.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, fixture};
use sessiongate_conformance::http::{Response, get, send_raw};
use sessiongate_conformance::{self as suite};

const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

fn raw_get(addr: SocketAddr, target: &str, headers: &[u8]) -> Vec<u8> {
    let mut r =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    r.extend_from_slice(headers);
    r.extend_from_slice(b"\r\n");
    r
}

#[test]
fn hostile_input_gets_the_contracts_answer_and_never_hurts_the_server() {
    let fx = fixture();
    let config = "[limit]\nrequests = 100000\nwindow_seconds = 60\n[guard]\nfailures = 0\n";
    let server = Server::start(&fx.dir, &fx.store, config, 4);
    let addr = server.addr;
    let token = fx.creds.token_all.clone();
    let auth = |v: &[u8]| {
        let mut h = b"Authorization: ".to_vec();
        h.extend_from_slice(v);
        h.extend_from_slice(b"\r\n");
        h
    };
    let bearer = |t: &str| auth(format!("Bearer {t}").as_bytes());
    let good = bearer(&token);
    let many: Vec<u8> = (0..200).flat_map(|_| good.clone()).collect();
    let huge_query = format!("{SESSIONS}?startTime={}", "9".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "control character in a header value",
            raw_get(addr, SESSIONS, &auth(b"Bearer \x01\x02abc")),
            400,
            "invalid_request",
        ),
        (
            "NUL in a header value",
            raw_get(addr, SESSIONS, &auth(b"Bearer fus_\x00")),
            400,
            "invalid_request",
        ),
        (
            "non-ASCII bytes in the credential",
            raw_get(addr, SESSIONS, &auth(b"Bearer fus_\xff\xfe\xc3\xa9")),
            401,
            "invalid_credentials",
        ),
        (
            "64 KiB Authorization",
            raw_get(addr, SESSIONS, &bearer(&"A".repeat(64 * 1024))),
            401,
            "invalid_credentials",
        ),
        (
            "200 Authorization headers",
            raw_get(addr, SESSIONS, &many),
            400,
            "invalid_request",
        ),
        (
            "Bearer one character short",
            raw_get(addr, SESSIONS, &bearer(&token[..43])),
            401,
            "invalid_credentials",
        ),
        (
            "Bearer one character long",
            raw_get(addr, SESSIONS, &bearer(&format!("{token}x"))),
            401,
            "invalid_credentials",
        ),
        (
            "empty credential",
            raw_get(addr, SESSIONS, b"Authorization:\r\n"),
            401,
            "invalid_credentials",
        ),
        (
            "whitespace credential",
            raw_get(addr, SESSIONS, b"Authorization:    \t  \r\n"),
            401,
            "invalid_credentials",
        ),
        (
            "scheme only",
            raw_get(addr, SESSIONS, &auth(b"Bearer    ")),
            401,
            "invalid_credentials",
        ),
        (
            "Basic that is not base64",
            raw_get(addr, SESSIONS, &auth(b"Basic !!!***")),
            401,
            "invalid_credentials",
        ),
        (
            "Basic of non-UTF-8",
            raw_get(addr, SESSIONS, &auth(b"Basic //79")),
            401,
            "invalid_credentials",
        ),
        (
            "percent-encoded segment",
            raw_get(addr, "/v1/external/sessions/ac%6De/site-a", &good),
            404,
            "not_found",
        ),
        (
            "encoded slash",
            raw_get(addr, "/v1/external/sessions/acme%2Fsite-a/x", &good),
            404,
            "not_found",
        ),
        (
            "dot segment",
            raw_get(addr, "/v1/external/sessions/acme/./site-a", &good),
            404,
            "not_found",
        ),
        (
            "dot-dot segment",
            raw_get(addr, "/v1/external/sessions/acme/x/../site-a", &good),
            404,
            "not_found",
        ),
        (
            "doubled slash",
            raw_get(addr, "/v1/external/sessions//acme/site-a", &good),
            404,
            "not_found",
        ),
        (
            "non-ASCII path",
            raw_get(addr, "/v1/external/sessions/acm\u{e9}/site-a", &good),
            404,
            "not_found",
        ),
        (
            "huge query parameter",
            raw_get(addr, &huge_query, &good),
            400,
            "invalid_request",
        ),
        (
            "repeated query parameter",
            raw_get(
                addr,
                &format!("{SESSIONS}?startAfter=1&startAfter=1"),
                &good,
            ),
            400,
            "invalid_request",
        ),
        (
            "integer past 2^53",
            raw_get(addr, &format!("{SESSIONS}?endTime=9007199254740992"), &good),
            400,
            "invalid_request",
        ),
        (
            "integer far past 2^64",
            raw_get(
                addr,
                &format!("{SESSIONS}?endTime={}", "9".repeat(40)),
                &good,
            ),
            400,
            "invalid_request",
        ),
        (
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "2000 headers",
            raw_get(addr, SESSIONS, &b"X-Junk: 1\r\n".repeat(2000)),
            400,
            "invalid_request",
        ),
    ];
    for (name, request, status, code) in cases {
        let r = send_raw(addr, &request).unwrap_or_else(|e| panic!("{name}: {e}"));
        suite::expect_error(&r, status, code).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The server answers the next valid request normally.
        let next = get(addr, SESSIONS, Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(next.status, 200, "after {name}: {}", next.text());
    }
    // At 2^53 - 1 exactly, and in absolute form, the request is valid.
    let ok = send_raw(
        addr,
        &raw_get(addr, &format!("{SESSIONS}?endTime=9007199254740991"), &good),
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let absolute = format!("http://{addr}{SESSIONS}");
    let ok = send_raw(addr, &raw_get(addr, &absolute, &good)).unwrap();
    assert_eq!(ok.status, 200, "absolute-form: {}", ok.text());
    let log = server.log_text();
    assert!(
        !log.contains("trapped") && !log.contains("panicked"),
        "{log}"
    );
}

#[test]
fn repeated_invalid_credentials_are_slowed_without_spending_the_budget() {
    let fx = fixture();
    let config =
        "[limit]\nrequests = 20\nwindow_seconds = 60\n[guard]\nfailures = 3\nwindow_seconds = 60\n";
    let server = Server::start(&fx.dir, &fx.store, config, 2);
    let wrong = "Bearer fus_0000000000000000000000000000000000000000";
    for _ in 0..3 {
        let r = get(server.addr, SESSIONS, Some(wrong)).unwrap();
        suite::expect_error(&r, 401, "invalid_credentials").unwrap();
    }
    let r = get(server.addr, SESSIONS, Some(wrong)).unwrap();
    suite::expect_error(&r, 429, "rate_limited").unwrap();
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    suite::guard_refusal_claims_no_budget(&r, 20).unwrap();
    // From this address even a valid credential waits: it is not even looked up.
    let r = get(
        server.addr,
        SESSIONS,
        Some(&format!("Bearer {}", fx.creds.token_all)),
    )
    .unwrap();
    suite::expect_error(&r, 429, "rate_limited").unwrap();
    // A request without any credential is not a guessed one.
    suite::expect_error(
        &get(server.addr, SESSIONS, None).unwrap(),
        401,
        "unauthorized",
    )
    .unwrap();
}

#[test]
fn a_failing_limiter_store_fails_closed_or_open_as_configured() {
    let fx = fixture();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let closed = Server::start(
        &fx.dir,
        &fx.store,
        "[testing]\nfail_limiter_store = true\n",
        2,
    );
    let r = get(closed.addr, SESSIONS, Some(&auth)).unwrap();
    suite::expect_error(&r, 503, "limiter_unavailable").unwrap();
    assert_eq!(r.header("ratelimit-policy"), Some("20;w=60"));
    // /me needs no limiter.
    assert_eq!(get(closed.addr, "/me", Some(&auth)).unwrap().status, 200);
    let open = Server::start(
        &fx.dir,
        &fx.store,
        "fail_open = true\n[testing]\nfail_limiter_store = true\n",
        2,
    );
    let r = get(open.addr, SESSIONS, Some(&auth)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    open.wait_for_log("fail_open", "admitting without the limiter is logged");
}

/// An upstream that accepts and then does `misbehave` with each connection.
fn bad_upstream(misbehave: fn(std::net::TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || misbehave(stream));
        }
    });
    addr
}

#[test]
fn upstream_faults_are_502() {
    let fx = fixture();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let hangs = bad_upstream(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        // Hangs: answers nothing until the gate gives up and closes.
        let _ = s.read_to_end(&mut Vec::new());
    });
    let closes_mid_response = bad_upstream(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"data\":");
    });
    for (what, upstream) in [
        ("hangs", hangs),
        ("closes mid-response", closes_mid_response),
    ] {
        let config = format!("backend = \"http://{upstream}\"\nupstream_timeout_ms = 500\n");
        let server = Server::start(&fx.dir, &fx.store, &config, 2);
        let started = Instant::now();
        let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
        suite::expect_error(&r, 502, "upstream_unavailable")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            r.header("ratelimit").is_some(),
            "{what}: RateLimit on the 502"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn an_unreadable_store_keeps_the_last_good_credentials() {
    let fx = fixture();
    let server = Server::start(&fx.dir, &fx.store, "", 2);
    let auth = format!("Bearer {}", fx.creds.token_all);
    assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    // Gone, then a directory where the file was: every read fails. Neither
    // may revoke everyone (nor let anyone new in).
    std::fs::remove_file(&fx.store).unwrap();
    server.wait_for_logged("the file is gone", 1, "the vanished store was not noticed");
    assert_eq!(
        get(server.addr, "/me", Some(&auth)).unwrap().status,
        200,
        "a vanished store revoked everyone"
    );
    std::fs::create_dir(&fx.store).unwrap();
    server.wait_for_logged("could not be loaded", 2, "the failure was not reported");
    assert!(
        server
            .log_text()
            .contains("Keeping the last good credentials")
    );
    assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    let r = get(
        server.addr,
        "/me",
        Some("Bearer fus_0000000000000000000000000000000000000000"),
    )
    .unwrap();
    assert_eq!(r.status, 401, "nobody new gets in");
}

/// 200 concurrent clients against 8 VMs for several windows of a small limit:
/// no window ever holds more than the limit, and steady demand reaches it.
#[test]
fn contention_never_exceeds_the_limit_and_never_starves() {
    const LIMIT: usize = 5;
    const WINDOW: Duration = Duration::from_secs(2);
    const RUN: Duration = Duration::from_millis(7_000);
    let fx = fixture();
    let config = "[limit]\nrequests = 5\nwindow_seconds = 2\n[guard]\nfailures = 0\n";
    let server = Server::start(&fx.dir, &fx.store, config, 8);
    let addr = server.addr;
    let auth = format!("Bearer {}", fx.creds.token_all);
    // (sent, received) for every admitted request; the admission happened in between.
    let admitted: Mutex<Vec<(Instant, Instant)>> = Mutex::new(Vec::new());
    let errors = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..200 {
            s.spawn(|| {
                while start.elapsed() < RUN {
                    let sent = Instant::now();
                    match get(addr, SESSIONS, Some(&auth)) {
                        Ok(Response { status: 200, .. }) => {
                            admitted.lock().unwrap().push((sent, Instant::now()))
                        }
                        Ok(Response { status: 429, .. }) => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => errors.store(true, Ordering::Relaxed),
                    }
                }
            });
        }
    });
    assert!(!errors.load(Ordering::Relaxed), "a request failed outright");
    let mut times = admitted.into_inner().unwrap();
    times.sort_by_key(|(_, received)| *received);
    // Any LIMIT + 1 admissions must span at least a window: even measured from
    // the earliest send to the last receipt, none may fall short. The
    // limiter keeps whole milliseconds (the ABI's clock, truncated), so two
    // admissions a window apart on its clock can be up to 1 ms closer in real
    // time; 2 ms allows for that and for the two clocks' reading order. A
    // broken limiter misses by far more (tens of ms with a lost CAS).
    const MS_GRANULARITY: Duration = Duration::from_millis(2);
    // Sorted by receipt, the first of a group need not be the first sent
    // (a reply can arrive after a later one's): the group's admissions all
    // happened between its earliest send and its last receipt.
    for group in times.windows(LIMIT + 1) {
        let first_sent = group.iter().map(|(sent, _)| *sent).min().unwrap();
        let span = group[LIMIT].1 - first_sent;
        assert!(
            span + MS_GRANULARITY >= WINDOW,
            "{} admissions within {span:?}",
            LIMIT + 1
        );
    }
    let windows = (RUN.as_millis() / WINDOW.as_millis()) as usize;
    assert!(
        times.len() >= LIMIT * windows && times.len() <= LIMIT * (windows + 1),
        "{} admitted in {RUN:?}: expected {}..={}",
        times.len(),
        LIMIT * windows,
        LIMIT * (windows + 1)
    );
}
