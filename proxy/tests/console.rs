//! `sessiongate console` over HTTP, the real binary: every row of section
//! 7's role table and every token permission, across two accounts; the
//! session cookie's flags and CSRF; a running `serve` admitting what the
//! console created and refusing what it deleted; and no secret anywhere
//! after its one reveal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;

use common::console::{As, call, create_user, gate_answers, start_console};
use common::{Server, assert_no_secret, cli};
use serde_json::{Value, json};
use sessiongate_conformance::{self as suite, http::Response};

const ALL: [&str; 3] = ["api_tokens:view", "api_tokens:create", "api_tokens:delete"];

fn key(name: &str, level: &str) -> Option<Value> {
    Some(json!({ "name": name, "level": level, "sites": "all" }))
}

#[test]
fn the_role_table_and_token_permissions_hold_across_two_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");
    let mut secrets = Vec::new();
    let mut user = |customer: &str, name: &str, role: &str, permissions: &[&str]| {
        let s = create_user(&store, customer, name, role, permissions);
        secrets.push(s.clone());
        s
    };
    let standard = user(suite::CUSTOMER, "stan", "standard", &ALL);
    let architect = user(suite::CUSTOMER, "archie", "architect", &["api_tokens:view"]);
    let admin = user(suite::CUSTOMER, "ada", "admin", &[]);
    let creator = user(suite::CUSTOMER, "cree", "standard", &["api_tokens:create"]);
    let other = user("globex", "gus", "admin", &ALL);
    // What the operator made with the CLI: no owner, so only admins see it.
    let operators_key = common::mint_key(&store, "operators-key", "standard");
    secrets.push(operators_key);

    let mut console = start_console(&store);
    let addr = console.addr;
    let standard = As::new(addr, &standard);
    let architect = As::new(addr, &architect);
    let admin = As::new(addr, &admin);
    let creator = As::new(addr, &creator);
    let other = As::new(addr, &other);

    // Who they are.
    let me = architect.ok("GET", "me", None, 200);
    assert_eq!(me["name"], "archie");
    assert_eq!(me["customer"], suite::CUSTOMER);
    assert_eq!(me["role"], "architect");
    assert_eq!(me["permissions"], json!(["api_tokens:view"]));

    // Column one of the table: the levels each role may create.
    let table = [
        (&standard, "stan", vec!["standard"]),
        (&architect, "archie", vec!["standard", "architect"]),
        (&admin, "ada", vec!["standard", "architect", "admin"]),
    ];
    for (who, name, allowed) in &table {
        for level in ["standard", "architect", "admin"] {
            let key_name = format!("{name}-{level}");
            if allowed.contains(&level) {
                let made = who.ok("POST", "keys", key(&key_name, level), 201);
                assert_eq!(made["key"]["owner"], *name);
                assert_eq!(made["key"]["level"], level);
                assert_eq!(made["key"]["customer"], suite::CUSTOMER);
                let secret = made["secret"].as_str().unwrap().to_owned();
                assert!(sessiongate_core::is_key(&secret));
                assert!(
                    secret.ends_with(made["key"]["hint"].as_str().unwrap()),
                    "the suffix identifies it"
                );
                secrets.push(secret);
            } else {
                let message = who.refused("POST", "keys", key(&key_name, level), 403, "forbidden");
                assert!(
                    message.contains("cannot exceed") && message.contains(level),
                    "{message}"
                );
            }
        }
    }

    // Column two: whose keys each role sees.
    assert_eq!(standard.names("keys"), ["stan-standard"]);
    assert_eq!(
        architect.names("keys"),
        ["archie-architect", "archie-standard"]
    );
    assert_eq!(
        admin.names("keys"),
        [
            "ada-admin",
            "ada-architect",
            "ada-standard",
            "archie-architect",
            "archie-standard",
            "operators-key",
            "stan-standard"
        ]
    );
    assert!(other.names("keys").is_empty(), "nothing of another account");

    // Changing and deleting: their own only, below admin; admins anything of the account.
    let m = standard.refused(
        "PATCH",
        "keys/archie-standard",
        Some(json!({"name": "mine"})),
        403,
        "forbidden",
    );
    assert_eq!(
        m,
        "a standard user may view and change only the keys they created"
    );
    standard.refused("DELETE", "keys/archie-standard", None, 403, "forbidden");
    standard.refused("DELETE", "keys/operators-key", None, 403, "forbidden");
    let m = architect.refused(
        "PATCH",
        "keys/archie-standard",
        Some(json!({"level": "admin"})),
        403,
        "forbidden",
    );
    assert!(
        m.contains("an architect user may give keys the level standard or architect, not admin"),
        "{m}"
    );
    let moved = architect.ok(
        "PATCH",
        "keys/archie-standard",
        Some(json!({"name": "archie two", "level": "architect"})),
        200,
    );
    assert_eq!(moved["key"]["name"], "archie two");
    assert_eq!(moved["key"]["level"], "architect");
    let moved = admin.ok(
        "PATCH",
        "keys/stan-standard",
        Some(json!({"level": "admin"})),
        200,
    );
    assert_eq!(moved["key"]["level"], "admin");
    // Now above its owner's role: a rename by them would leave it there.
    standard.refused(
        "PATCH",
        "keys/stan-standard",
        Some(json!({"name": "x"})),
        403,
        "forbidden",
    );
    admin.ok("DELETE", "keys/archie%20two", None, 204);
    admin.ok("DELETE", "keys/operators-key", None, 204);
    architect.refused(
        "PATCH",
        "keys/archie%20two",
        Some(json!({"name": "y"})),
        404,
        "not_found",
    );

    // Tokens: each action needs its permission, whatever the role.
    let made = creator.ok(
        "POST",
        "tokens",
        Some(json!({"name": "ci", "description": "nightly", "sites": ["site-a"]})),
        201,
    );
    assert_eq!(
        made["token"]["hint"].as_str().unwrap().len(),
        "fus_****abc".len()
    );
    assert_eq!(made["token"]["sites"], json!(["site-a"]));
    assert_eq!(made["token"]["owner"], "cree");
    secrets.push(made["secret"].as_str().unwrap().to_owned());
    let m = creator.refused("GET", "tokens", None, 403, "forbidden");
    assert_eq!(m, "this needs the permission api_tokens:view");
    creator.refused("DELETE", "tokens/ci", None, 403, "forbidden");
    assert_eq!(architect.names("tokens"), ["ci"]);
    let m = architect.refused(
        "POST",
        "tokens",
        Some(json!({"name": "t2", "sites": "all"})),
        403,
        "forbidden",
    );
    assert_eq!(m, "this needs the permission api_tokens:create");
    architect.refused("DELETE", "tokens/ci", None, 403, "forbidden");
    admin.refused("GET", "tokens", None, 403, "forbidden");
    admin.refused(
        "POST",
        "tokens",
        Some(json!({"name": "t3", "sites": "all"})),
        403,
        "forbidden",
    );
    // Tokens cannot be renamed or regenerated; names are unique; fields are checked.
    let m = admin.refused(
        "PATCH",
        "keys/ci",
        Some(json!({"name": "x"})),
        400,
        "invalid_request",
    );
    assert!(m.contains("tokens cannot be renamed"), "{m}");
    standard.refused(
        "POST",
        "tokens",
        Some(json!({"name": "ci", "sites": "all"})),
        400,
        "invalid_request",
    );
    standard.refused(
        "POST",
        "tokens",
        Some(json!({"name": "t4", "sites": []})),
        400,
        "invalid_request",
    );
    standard.refused(
        "POST",
        "tokens",
        Some(json!({"name": "t4", "sites": "all", "level": "admin"})),
        400,
        "invalid_request",
    );
    standard.refused("POST", "tokens", None, 400, "invalid_request");
    standard.refused("DELETE", "tokens/nope", None, 404, "not_found");
    standard.refused("PUT", "tokens", None, 405, "method_not_allowed");
    standard.refused("GET", "nothing", None, 404, "not_found");

    // Another account: nothing of acme is visible or changeable.
    assert!(other.names("tokens").is_empty());
    other.refused("DELETE", "tokens/ci", None, 404, "not_found");
    other.refused(
        "PATCH",
        "keys/ada-admin",
        Some(json!({"name": "ci"})),
        404,
        "not_found",
    );
    // Not even whether a name of acme's is a token.
    other.refused(
        "PATCH",
        "keys/ci",
        Some(json!({"name": "x"})),
        404,
        "not_found",
    );
    other.refused(
        "PATCH",
        "keys/ada-admin",
        Some(json!({"name": "mine"})),
        404,
        "not_found",
    );
    other.refused("DELETE", "keys/ada-admin", None, 404, "not_found");
    let theirs = other.ok(
        "POST",
        "tokens",
        Some(json!({"name": "globex-ci", "sites": "all"})),
        201,
    );
    secrets.push(theirs["secret"].as_str().unwrap().to_owned());
    assert_eq!(theirs["token"]["customer"], "globex");
    assert_eq!(standard.names("tokens"), ["ci"]);
    standard.ok("DELETE", "tokens/ci", None, 204);

    // The audit log: admins only, their account only, every action, no secret.
    let m = standard.refused("GET", "audit", None, 403, "forbidden");
    assert_eq!(m, "only an admin may read the audit log");
    let audit = admin.ok("GET", "audit", None, 200);
    let events = audit["events"].as_array().unwrap();
    let line = |e: &Value| {
        format!(
            "{} {} {} {}",
            e["actor"].as_str().unwrap(),
            e["action"].as_str().unwrap(),
            e["subject"].as_str().unwrap(),
            e["name"].as_str().unwrap()
        )
    };
    let lines: Vec<String> = events.iter().map(line).collect();
    for expected in [
        "operator create user stan",
        "operator create key operators-key",
        "stan create key stan-standard",
        "archie update key archie two",
        "ada update key stan-standard",
        "ada delete key archie two",
        "cree create token ci",
        "stan delete token ci",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "{expected} not in {lines:#?}"
        );
    }
    assert!(events.iter().all(|e| e["customer"] == suite::CUSTOMER));
    let renamed = events
        .iter()
        .find(|e| line(e) == "archie update key archie two")
        .unwrap();
    assert_eq!(renamed["previous_name"], "archie-standard");
    assert!(
        events
            .iter()
            .all(|e| e["hint"].as_str().is_some_and(|h| !h.is_empty()))
    );
    let theirs = other.ok("GET", "audit", None, 200);
    assert!(
        theirs["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["customer"] == "globex")
    );

    // Who is not a user.
    let r = call(addr, "GET", "/api/v1/me", &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["error"]["code"], "unauthorized");
    let wrong = As::new(addr, "sgu_000000000000000000000000000000000000wrong");
    wrong.refused("GET", "me", None, 401, "invalid_credentials");
    cli(&["user", "delete", "--store", store.to_str().unwrap(), "gus"]);
    other.refused("GET", "me", None, 401, "invalid_credentials");

    // No secret after its reveal: not in any listing, the audit log, the
    // store's files, the CLI's listings or the console's log.
    let mut seen = String::new();
    for who in [&standard, &architect, &admin] {
        for path in ["me", "tokens", "keys", "audit"] {
            seen.push_str(&who.call("GET", path, None).text());
        }
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        seen.push_str(&String::from_utf8_lossy(
            &std::fs::read(entry.unwrap().path()).unwrap(),
        ));
    }
    let s = store.to_str().unwrap();
    for what in ["token", "key", "user"] {
        seen.push_str(&cli(&[what, "list", "--store", s]));
        seen.push_str(&cli(&[what, "list", "--store", s, "--json"]));
    }
    console.terminate();
    seen.push_str(&console.log_text());
    assert!(
        seen.contains("sgu_****"),
        "the check reads the files it means to"
    );
    assert_no_secret("the console's answers, files and log", &seen, &secrets);
}

fn set_cookie(r: &Response) -> String {
    r.header("set-cookie")
        .expect("a Set-Cookie header")
        .to_owned()
}

/// `name=value` of a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn form(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    suite::http::send_raw(addr, request.as_bytes()).unwrap()
}

#[test]
fn the_page_logs_in_with_a_strict_http_only_cookie_and_changes_need_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");
    let secret = create_user(&store, suite::CUSTOMER, "ann", "architect", &ALL);
    let mut console = start_console(&store);
    let addr = console.addr;

    // Not logged in: the page sends you to the form.
    let r = call(addr, "GET", "/", &[], None);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let r = call(addr, "GET", "/login", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains(r#"<form method="post" action="/login">"#));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );

    // A wrong secret, and a right one from another site's page, log no one in.
    let r = form(addr, "/login", "secret=sgu_nobody", &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = form(
        addr,
        "/login",
        &format!("secret={secret}"),
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());

    let r = form(
        addr,
        "/login",
        &format!("secret={secret}"),
        &[("Origin", &format!("http://{addr}"))],
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let flags = set_cookie(&r);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            flags.split("; ").any(|f| f == flag),
            "{flag} not in {flags}"
        );
    }
    let cookie = cookie_pair(&flags);
    assert!(!cookie.contains(&secret));

    // The page carries the CSRF token; reads need only the cookie.
    let page = call(addr, "GET", "/", &[("Cookie", &cookie)], None);
    assert_eq!(page.status, 200);
    let html = page.text();
    let csrf = html
        .split(r#"<meta name="csrf-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(csrf.len(), 64);
    let me = call(addr, "GET", "/api/v1/me", &[("Cookie", &cookie)], None);
    assert_eq!(me.json().unwrap()["name"], "ann");
    for asset in ["/assets/app.js", "/assets/app.css"] {
        assert_eq!(
            call(addr, "GET", asset, &[], None).status,
            200,
            "{asset} is embedded"
        );
    }

    // A change with the cookie alone, or a wrong token, is refused.
    let body = json!({"name": "from-page", "sites": "all"});
    for headers in [
        vec![("Cookie", cookie.as_str())],
        vec![("Cookie", cookie.as_str()), ("X-CSRF-Token", "0000")],
    ] {
        let r = call(addr, "POST", "/api/v1/tokens", &headers, Some(&body));
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("X-CSRF-Token"));
    }
    let r = call(
        addr,
        "POST",
        "/api/v1/tokens",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "a one-time secret is never cached"
    );

    // Log out: the cookie is cleared and no longer works.
    let r = form(addr, "/logout", "csrf=wrong", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 403);
    let r = form(
        addr,
        "/logout",
        &format!("csrf={csrf}"),
        &[("Cookie", &cookie)],
    );
    assert_eq!(r.status, 303);
    assert!(set_cookie(&r).contains("Max-Age=0"));
    assert_eq!(
        call(addr, "GET", "/api/v1/me", &[("Cookie", &cookie)], None).status,
        401
    );

    // A deleted user's session ends with them.
    let r = form(addr, "/login", &format!("secret={secret}"), &[]);
    let cookie = cookie_pair(&set_cookie(&r));
    assert_eq!(
        call(addr, "GET", "/api/v1/me", &[("Cookie", &cookie)], None).status,
        200
    );
    cli(&["user", "delete", "--store", store.to_str().unwrap(), "ann"]);
    assert_eq!(
        call(addr, "GET", "/api/v1/me", &[("Cookie", &cookie)], None).status,
        401
    );
    console.terminate();
}

#[test]
fn a_running_serve_admits_what_the_console_creates_and_refuses_what_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");
    let secret = create_user(&store, suite::CUSTOMER, "ann", "standard", &ALL);
    let mut console = start_console(&store);
    let mut serve = Server::start(dir.path(), &store, "", 1);
    let ann = As::new(console.addr, &secret);
    let made = ann.ok(
        "POST",
        "tokens",
        Some(json!({"name": "live", "sites": "all"})),
        201,
    );
    let token = made["secret"].as_str().unwrap().to_owned();
    gate_answers(&serve, &token, 200);
    ann.ok("DELETE", "tokens/live", None, 204);
    gate_answers(&serve, &token, 401);
    // The CLI's listing shows the date, not milliseconds.
    let listed = cli(&["user", "list", "--store", store.to_str().unwrap()]);
    assert!(
        listed.contains(&format!(
            "{}T",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string()
                .split('T')
                .next()
                .unwrap()
        )),
        "{listed}"
    );
    serve.terminate();
    console.terminate();
}

#[test]
fn a_key_made_in_the_console_may_expire_and_a_token_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");
    let secret = create_user(&store, suite::CUSTOMER, "ada", "admin", &ALL);
    let mut console = start_console(&store);
    let mut serve = Server::start(dir.path(), &store, "", 1);
    let ada = As::new(console.addr, &secret);
    let now = sessiongate_store::manage::now_ms();
    let with_expiry = |name: &str, expires: u64| {
        Some(json!({ "name": name, "level": "standard", "sites": "all", "expires": expires }))
    };

    let past = ada.refused(
        "POST",
        "keys",
        with_expiry("late", now - 1),
        400,
        "invalid_request",
    );
    assert!(past.contains("not in the future"), "{past}");
    let in_a_year = now + 365 * 86_400_000;
    let made = ada.ok("POST", "keys", with_expiry("yearly", in_a_year), 201);
    assert_eq!(made["key"]["expires"], in_a_year);
    assert_eq!(made["key"]["expired"], false);
    gate_answers(&serve, made["secret"].as_str().unwrap(), 200);
    let listed = ada.ok("GET", "keys", None, 200);
    let yearly = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "yearly")
        .unwrap();
    assert_eq!(yearly["expires"], in_a_year);
    let never = ada.ok("POST", "keys", key("forever", "standard"), 201);
    assert_eq!(never["key"]["expires"], Value::Null);

    // Section 7: tokens have no expiry.
    let token = json!({ "name": "t", "sites": "all", "expires": in_a_year });
    let refused = ada.refused("POST", "tokens", Some(token), 400, "invalid_request");
    assert!(refused.contains("expires"), "{refused}");
    assert!(ada.names("tokens").is_empty());
    serve.terminate();
    console.terminate();
}

/// Issue 46, last use on `serve` over a file store: written by a flush,
/// never by a request (counted), shown by the CLI's lists, the console's
/// API and `check`, and flushed once more when `serve` stops.
#[test]
fn last_use_is_flushed_not_written_per_request_and_shown_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");
    let s = store.to_str().unwrap();
    let login = create_user(&store, suite::CUSTOMER, "ada", "admin", &ALL);
    let used = common::mint_token(&store, "used", &[]);
    common::mint_token(&store, "idle", &[]);
    let key = common::mint_key(&store, "old-key", "standard");
    // A key made 100 days ago and never used since: what `check` counts.
    let mut records: Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let hundred_days_ago = sessiongate_store::manage::now_ms() - 100 * 86_400_000;
    for r in records["credentials"].as_array_mut().unwrap() {
        if r["name"] == "old-key" {
            r["created"] = json!(hundred_days_ago);
        }
    }
    std::fs::write(&store, serde_json::to_vec(&records).unwrap()).unwrap();
    let config =
        "[limit]\nrequests = 100000\n[last_use]\nflush_seconds = 1\ninstance = \"gate-a\"\n";
    let mut serve = Server::start(dir.path(), &store, config, 2);

    const REQUESTS: usize = 200;
    for _ in 0..REQUESTS {
        gate_answers(&serve, &used, 200);
    }
    let last_used = |name: &str| -> Value {
        let listed: Value =
            serde_json::from_str(&cli(&["token", "list", "--store", s, "--json"])).unwrap();
        let mut rows = listed.as_array().unwrap().clone();
        let keys: Value =
            serde_json::from_str(&cli(&["key", "list", "--store", s, "--json"])).unwrap();
        rows.extend(keys.as_array().unwrap().iter().cloned());
        rows.into_iter().find(|r| r["name"] == name).unwrap()["last_used"].clone()
    };
    suite::eventually(suite::PATIENCE, || match last_used("used") {
        Value::Null => Err("not flushed yet".to_owned()),
        _ => Ok(()),
    })
    .unwrap();
    let now = sessiongate_store::manage::now_ms();
    let used_at = last_used("used");
    assert_eq!(used_at["instance"], "gate-a");
    let at = used_at["at"].as_u64().unwrap();
    assert!(at.is_multiple_of(60_000) && now - at < 120_000, "{used_at}");
    assert_eq!(
        last_used("idle"),
        Value::Null,
        "never admitted, never shown"
    );
    // Two writes at most (the requests may straddle a minute), never one a
    // request: the in-memory log merges them.
    let written = common::sample(
        &common::scrape(&serve),
        "sessiongate_last_use_flushes_total",
        Some(("result", "written")),
    );
    assert!(
        (1.0..=2.0).contains(&written),
        "{written} writes for {REQUESTS} requests"
    );

    let table = cli(&["token", "list", "--store", s]);
    assert!(
        table.contains("LAST USED") && table.contains("gate-a"),
        "{table}"
    );
    let console = start_console(&store);
    let ada = As::new(console.addr, &login);
    let tokens = ada.ok("GET", "tokens", None, 200);
    let row = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "used")
        .unwrap()
        .clone();
    assert_eq!(row["last_used"], used_at);
    let checked = cli(&["check", "--store", s]);
    assert!(
        checked.contains("last use: 1 credentials unused for 90 days"),
        "{checked}"
    );

    // Admitted, then stopped before a flush could come: written on the way out.
    serve.terminate();
    let config = "[last_use]\nflush_seconds = 3600\ninstance = \"gate-b\"\n";
    let mut serve = Server::start(dir.path(), &store, config, 1);
    gate_answers(&serve, &key, 200);
    assert_eq!(last_used("old-key"), Value::Null);
    assert!(serve.terminate().success());
    assert_eq!(last_used("old-key")["instance"], "gate-b");
    let checked = cli(&["check", "--store", s]);
    assert!(
        checked.contains("last use: 0 credentials unused for 90 days"),
        "{checked}"
    );
}
