//! The fleet: several `serve` processes, each running the filter with the
//! limiter on a real three-member etcd cluster (Debian's `etcd-server`,
//! started here on free loopback ports), share one exact limit, and keep
//! answering within the timeout when members die.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::etcd::{
    Etcd, assert_admissions_go_on, assert_no_window_over_the_limit, free_port, load, load_through,
};
use common::{Fixture, Server, fixture};
use sessiongate_conformance::http::{get, send_raw};
use sessiongate_conformance::{self as suite, eventually};

const SESSIONS: &str = "/v1/external/sessions/acme/site-a";
const LIMIT: usize = 5;
const WINDOW: Duration = Duration::from_secs(2);

fn config(etcd: &[String], fail_open: bool) -> String {
    limited(etcd, LIMIT, WINDOW, fail_open)
}

fn limited(etcd: &[String], requests: usize, window: Duration, fail_open: bool) -> String {
    let members: Vec<String> = etcd.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "fail_open = {fail_open}\n[limit]\nrequests = {requests}\nwindow_seconds = {}\nstore = \"etcd\"\netcd = [{}]\ntimeout_ms = 500\n[guard]\nfailures = 0\n",
        window.as_secs(),
        members.join(", ")
    )
}

/// Waits until `addr` admits `auth` (the limit may refuse some on the way).
fn admitted_eventually(addr: SocketAddr, auth: &str, what: &str) {
    eventually(suite::PATIENCE, || {
        let status = get(addr, SESSIONS, Some(auth)).map_or(0, |r| r.status);
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{what}: {status}"))
        }
    })
    .unwrap();
}

fn serves(fx: &Fixture, etcd: &[String], n: usize, fail_open: bool) -> Vec<Server> {
    let config = config(etcd, fail_open);
    (0..n)
        .map(|_| Server::start(&fx.dir, &fx.store, &config, 2))
        .collect()
}

/// Three `serve`s, two VMs each, ~100 clients across them for several
/// windows: one limit for the fleet, exact, and reached.
#[test]
fn three_serves_on_one_etcd_cluster_share_one_exact_limit() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 3);
    let servers = serves(&fx, &etcd.urls(), 3, false);
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let run = Duration::from_millis(7_000);
    let seen = load(&addrs, &auth, 96, run);
    assert!(
        seen.statuses.iter().all(|s| *s == 200 || *s == 429),
        "only admissions and refusals: {:?}",
        seen.statuses
            .iter()
            .filter(|s| **s != 200 && **s != 429)
            .collect::<Vec<_>>()
    );
    assert_no_window_over_the_limit(&seen.admitted, LIMIT, WINDOW);
    let windows = (run.as_millis() / WINDOW.as_millis()) as usize;
    assert!(
        seen.admitted.len() >= LIMIT * windows && seen.admitted.len() <= LIMIT * (windows + 1),
        "{} admitted in {run:?} by the fleet: expected {}..={}",
        seen.admitted.len(),
        LIMIT * windows,
        LIMIT * (windows + 1)
    );
}

/// A window with room and 96 clients on 3 `serve`s × 2 VMs, every
/// admission racing for one key: each instance writes the admissions
/// waiting on it together (group commit), so every request is admitted
/// (no 503 while etcd is healthy) and the limiter's log in etcd holds
/// exactly one entry per 200: none recorded and then refused, none lost.
#[test]
fn with_room_in_the_window_every_contended_request_is_admitted_and_counted_once() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 3);
    let config = limited(&etcd.urls(), 100_000, Duration::from_secs(60), false);
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::start(&fx.dir, &fx.store, &config, 2))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let seen = load(&addrs, &auth, 96, Duration::from_millis(3_000));
    let refused: Vec<&u16> = seen.statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of {} answers were not 200: {refused:?}",
        refused.len(),
        seen.statuses.len()
    );
    let range = format!(r#"{{"key":"{}"}}"#, base64_of("sessiongate/limiter/v1"));
    let read = etcd.post(0, "/v3/kv/range", &range).expect("the log read");
    let value = read["kvs"][0]["value"].as_str().expect("the limiter's log");
    let bytes = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap()
    };
    let logged = sessiongate_core::limiter_log::decode(Some(&bytes)).unwrap();
    assert_eq!(
        logged.len(),
        seen.admitted.len(),
        "entries in the log against 200s answered"
    );
    assert!(
        seen.admitted.len() >= 96,
        "{} admitted",
        seen.admitted.len()
    );
}

/// The leader dies mid-run: still exact, every request answered within the
/// timeout (plus the fleet's own time), only 503 besides 200 and 429, and
/// admissions go on once a new leader is elected.
#[test]
fn the_leader_dies_and_the_limit_stays_exact() {
    let fx = fixture();
    let mut etcd = Etcd::start(&fx.dir, 3);
    let servers = serves(&fx, &etcd.urls(), 3, false);
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let leader = etcd.leader();
    // The leader killed once a window's worth is admitted; 6 s more after.
    let after = Duration::from_millis(6_000);
    let seen = load_through(&addrs, &auth, 96, LIMIT, after, || etcd.kill(leader));
    let odd: Vec<&u16> = seen
        .statuses
        .iter()
        .filter(|s| ![200, 429, 503].contains(*s))
        .collect();
    assert!(odd.is_empty(), "every request answered: {odd:?}");
    assert!(
        // A bound, not a measurement: a request left to etcd through an
        // election would wait for etcd's own timeout (5 s and more).
        seen.slowest < Duration::from_millis(3_000),
        "an answer took {:?} (timeout 500 ms)",
        seen.slowest
    );
    assert_no_window_over_the_limit(&seen.admitted, LIMIT, WINDOW);
    assert_admissions_go_on(&seen, after, WINDOW);
}

/// Quorum lost: 503 `limiter_unavailable` within the timeout, or admitted
/// with fail_open; the members back, the fleet recovers without a restart.
#[test]
fn without_quorum_the_gate_fails_closed_and_recovers() {
    let fx = fixture();
    let mut etcd = Etcd::start(&fx.dir, 3);
    let closed = serves(&fx, &etcd.urls(), 1, false).pop().unwrap();
    let open = serves(&fx, &etcd.urls(), 1, true).pop().unwrap();
    let auth = format!("Bearer {}", fx.creds.token_all);
    assert_eq!(get(closed.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    let ready = closed.admin_get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        ready.json().unwrap()["checks"]["limiter"]["detail"],
        "etcd: a quorum answered"
    );
    etcd.kill(1);
    etcd.kill(2);
    // One member alive is no quorum: not ready (once the last member has
    // noticed it leads nobody), and saying why.
    let unready = eventually(suite::PATIENCE, || {
        let r = closed.admin_get("/readyz");
        if r.status == 503 {
            Ok(r)
        } else {
            Err(format!("still ready without a quorum: {}", r.text()))
        }
    })
    .unwrap();
    let checks = &unready.json().unwrap()["checks"];
    assert_eq!(checks["limiter"]["ok"], false);
    assert_eq!(checks["credentials"]["ok"], true);
    let sent = Instant::now();
    let r = get(closed.addr, SESSIONS, Some(&auth)).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"]["code"], "limiter_unavailable");
    // A bound, not a measurement: a request left to etcd would wait for
    // its own request timeout (5 s and more), the gate's is 500 ms.
    assert!(
        sent.elapsed() < Duration::from_millis(3_000),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(get(open.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_healthy(&[0, 1, 2]);
    admitted_eventually(closed.addr, &auth, "the fleet did not recover");
    assert_eq!(closed.admin_get("/readyz").status, 200);
}

/// etcd not there yet when `serve` starts: it starts, fails closed, and
/// admits once etcd appears.
#[test]
fn serve_starts_without_etcd_and_recovers_when_it_appears() {
    let fx = fixture();
    let clients: Vec<u16> = (0..1).map(|_| free_port()).collect();
    let urls: Vec<String> = clients
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let server = serves(&fx, &urls, 1, false).pop().unwrap();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    let mut etcd = Etcd {
        dir: fx.dir.join("late-etcd"),
        token: "sessiongate-late".to_owned(),
        clients,
        peers: vec![free_port()],
        members: vec![None],
        extra: Vec::new(),
    };
    etcd.start_member(0);
    etcd.wait_healthy(&[0]);
    admitted_eventually(server.addr, &auth, "never recovered");
}

/// One token store for the fleet, in the same etcd: a credential created
/// through the CLI on one machine is admitted by every `serve`, and refused
/// by every one shortly after it is deleted (the watch polls every 200 ms).
#[test]
fn one_credential_store_for_the_fleet() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 3);
    let members: Vec<String> = etcd
        .clients
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let store = format!("etcd://{}/sessiongate-test", members.join(","));
    let store_path = Path::new(&store);
    let config = config(&etcd.urls(), false);
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::start(&fx.dir, store_path, &config, 2))
        .collect();
    let token = common::mint_token(store_path, "fleet-ci", &[]);
    let auth = format!("Bearer {token}");
    // Names are unique across the fleet's store.
    let again = Command::new(common::BIN)
        .args(["token", "create", "--store", &store, "--name", "fleet-ci"])
        .args(["--customer", "acme", "--all-sites"])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a second fleet-ci was created");
    let listed = common::cli(&["token", "list", "--store", &store]);
    assert!(
        listed.contains("fleet-ci") && !listed.contains(&token),
        "{listed}"
    );
    let until = |what: &str, ok: &dyn Fn(u16) -> bool| {
        let start = Instant::now();
        for server in &servers {
            loop {
                let status = get(server.addr, "/me", Some(&auth)).unwrap().status;
                if ok(status) {
                    break;
                }
                assert!(
                    start.elapsed() < suite::PATIENCE,
                    "{what}: {status} after {:?}",
                    start.elapsed()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        start.elapsed()
    };
    let appeared = until("created", &|s| s == 200);
    // The config commands render from the fleet's store as from a file.
    for command in ["envoy-config", "worker-config", "spin-config"] {
        let rendered = common::cli(&[command, "--store", &store]);
        assert!(rendered.contains("fleet-ci"), "{command}: {rendered}");
        assert!(!rendered.contains(&token), "{command} printed the secret");
    }
    common::cli(&["token", "delete", "--store", &store, "fleet-ci"]);
    let gone = until("deleted", &|s| s == 401);
    eprintln!("created: all three within {appeared:?}; deleted: within {gone:?}");
}

/// The Spin component under `serve --component`, two of them on one etcd:
/// their key-value bucket lives there, so the fleet of components shares
/// one exact limit too.
#[test]
fn components_on_one_etcd_share_one_exact_limit() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 3);
    let config = config(&etcd.urls(), false);
    let component = common::components::p3();
    let servers: Vec<Server> = (0..2)
        .map(|_| Server::start_with(&fx.dir, &fx.store, &config, 2, &["--component", component]))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let auth = format!("Bearer {}", fx.creds.token_all);
    let run = Duration::from_millis(6_000);
    let seen = load(&addrs, &auth, 48, run);
    let odd: Vec<&u16> = seen
        .statuses
        .iter()
        .filter(|s| ![200, 429].contains(*s))
        .collect();
    assert!(odd.is_empty(), "only admissions and refusals: {odd:?}");
    assert_no_window_over_the_limit(&seen.admitted, LIMIT, WINDOW);
    let windows = (run.as_millis() / WINDOW.as_millis()) as usize;
    assert!(
        seen.admitted.len() >= LIMIT * windows && seen.admitted.len() <= LIMIT * (windows + 1),
        "{} admitted in {run:?} by the components: expected {}..={}",
        seen.admitted.len(),
        LIMIT * windows,
        LIMIT * (windows + 1)
    );
}

/// etcd with authentication on (and tokens that live 2 s): the filter logs
/// in as a user allowed the limiter's keys only, keeps admitting after its
/// token expires (it logs in again), and a wrong password fails closed.
#[test]
fn the_limiter_logs_in_to_an_etcd_with_authentication() {
    let fx = fixture();
    let etcd = Etcd::start_with(
        &fx.dir,
        1,
        &["--auth-token", "simple", "--auth-token-ttl", "2"],
    );
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let setup = [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#.to_owned(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#.to_owned(),
        ),
        ("/v3/auth/role/add", r#"{"name":"gate"}"#.to_owned()),
        (
            "/v3/auth/role/grant",
            format!(
                r#"{{"name":"gate","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                b64("sessiongate/"),
                b64("sessiongate0")
            ),
        ),
        (
            "/v3/auth/user/add",
            r#"{"name":"gate","password":"gatepw"}"#.to_owned(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"gate","role":"gate"}"#.to_owned(),
        ),
        ("/v3/auth/enable", "{}".to_owned()),
    ];
    for (path, body) in &setup {
        assert!(
            etcd.post(0, path, body).is_some(),
            "etcd refused {path} {body}"
        );
    }
    let auth = format!("Bearer {}", fx.creds.token_all);
    // etcd's user in the config, its password in the environment, as
    // for the token store below.
    let with = |user: &str, password: &str| {
        let config = config(&etcd.urls(), false).replace(
            "timeout_ms = 500\n",
            &format!("timeout_ms = 500\netcd_user = {user:?}\n"),
        );
        let (mut command, path) = Server::command(&fx.dir, &fx.store, &config, 1, &[]);
        command.env("SESSIONGATE_ETCD_PASSWORD", password);
        Server::spawn(command, path)
    };
    let server = with("gate", "gatepw");
    let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), server.log_text());
    // etcd counts the logins that succeeded.
    let logins = || -> f64 {
        let metrics = get(etcd.addr(0), "/metrics", None).unwrap().text();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_handled_total")
                    && l.contains("grpc_method=\"Authenticate\"")
                    && l.contains("grpc_code=\"OK\"")
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    };
    // Requests go on, every one admitted, until the token has expired and
    // the gate has logged in again (paced under the limit of 5 in 2 s).
    let start = Instant::now();
    while logins() < 2.0 {
        assert!(
            start.elapsed() < suite::PATIENCE,
            "{} logins: the expired token was never replaced\n{}",
            logins(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(450));
        let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
        assert_eq!(
            r.status,
            200,
            "while the token expired: {}\n{}",
            r.text(),
            server.log_text()
        );
    }
    // Without a login etcd refuses the limiter's calls: the gate fails closed.
    let wrong = with("gate", "not-the-password");
    let r = get(wrong.addr, SESSIONS, Some(&auth)).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"]["code"], "limiter_unavailable");

    // The fleet's token store on the same etcd, as `gate` (the password in
    // the environment), and a component whose bucket is there too.
    let store = format!(
        "etcd://gate@127.0.0.1:{}/sessiongate/tokens",
        etcd.clients[0]
    );
    let cli = |args: &[&str], password: &str| {
        Command::new(common::BIN)
            .args(args)
            .env("SESSIONGATE_ETCD_PASSWORD", password)
            .output()
            .unwrap()
    };
    let created = cli(
        &[
            "token",
            "create",
            "--store",
            &store,
            "--name",
            "authed",
            "--customer",
            "acme",
            "--all-sites",
        ],
        "gatepw",
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let refused = cli(&["token", "list", "--store", &store], "wrong");
    assert!(
        !refused.status.success(),
        "a wrong password listed the store"
    );
    let config = config(&etcd.urls(), false).replace(
        "timeout_ms = 500\n",
        "timeout_ms = 500\netcd_user = \"gate\"\n",
    );
    let config_path = fx.dir.join("authed.toml");
    std::fs::write(&config_path, &config).unwrap();
    let component = common::components::p3();
    // Server::spawn keeps what serve prints, for the failure's message.
    let mut command = Command::new(common::BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--store",
            &store,
        ])
        .arg("--config")
        .arg(&config_path)
        .args(["--component", component, "--admin", "off"])
        .env("SESSIONGATE_ETCD_PASSWORD", "gatepw");
    let server = Server::spawn(command, config_path.clone());
    let r = get(server.addr, SESSIONS, Some(&format!("Bearer {token}"))).unwrap();
    let log = server.log_text();
    drop(server);
    assert_eq!(
        r.status,
        200,
        "the component on an authenticated etcd: {}\n{log}",
        r.text()
    );

    // The console opens the store once: its requests share one etcd token,
    // logging in again only when etcd's 2 s token expires.
    let user = cli(
        &[
            "user",
            "create",
            "--store",
            &store,
            "--customer",
            "acme",
            "--name",
            "ada",
            "--role",
            "admin",
            "--permission",
            "api_tokens:view",
        ],
        "gatepw",
    );
    assert!(
        user.status.success(),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    let login = String::from_utf8(user.stdout).unwrap().trim().to_owned();
    let mut command = Command::new(common::BIN);
    command
        .args(["console", "--listen", "127.0.0.1:0", "--store", &store])
        .env("SESSIONGATE_ETCD_PASSWORD", "gatepw");
    let console = Server::spawn(command, config_path);
    let ada = common::console::As::new(console.addr, &login);
    let (before, started) = (logins(), Instant::now());
    const REQUESTS: u32 = 10;
    for _ in 0..REQUESTS {
        assert_eq!(ada.names("tokens"), ["authed"]);
    }
    let (made, took) = (logins() - before, started.elapsed());
    // One login per expiry at most, and one more for a token that expired
    // between two requests.
    let expiries = (took.as_secs_f64() / 2.0).ceil();
    assert!(
        made <= expiries + 1.0 && made < f64::from(REQUESTS),
        "{REQUESTS} console requests in {took:?} logged in {made} times\n{}",
        console.log_text()
    );
}

/// The fleet's token store goes away: `serve` keeps the last good
/// credentials (and says so), and the limiter, kept locally here, goes on.
#[test]
fn a_token_store_that_goes_away_keeps_the_last_good_credentials() {
    let fx = fixture();
    let mut etcd = Etcd::start(&fx.dir, 1);
    let store = format!("etcd://127.0.0.1:{}/sessiongate-keep", etcd.clients[0]);
    let token = common::mint_token(Path::new(&store), "kept", &[]);
    let config = "[limit]\nrequests = 100\nwindow_seconds = 60\n[guard]\nfailures = 0\n";
    let server = Server::start(&fx.dir, Path::new(&store), config, 1);
    let auth = format!("Bearer {token}");
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    etcd.kill(0);
    server.wait_for_log("cannot be read", "serve did not say the store is gone");
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    assert!(
        server
            .log_text()
            .contains("Keeping the last good credentials")
    );
}

/// The console on the fleet's store: users, credentials and the audit log
/// all in etcd, users unique, a running `serve` following what the console
/// creates and deletes, and no revealed secret anywhere in etcd.
#[test]
fn the_console_manages_the_fleets_store_in_etcd() {
    use common::console::{As, create_user, gate_answers, start_console};
    use serde_json::json;

    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 1);
    let store = format!("etcd://127.0.0.1:{}/sessiongate-console", etcd.clients[0]);
    let store_path = Path::new(&store);
    let all = ["api_tokens:view", "api_tokens:create", "api_tokens:delete"];
    let login = create_user(store_path, "acme", "ada", "admin", &all);
    let twice = Command::new(common::BIN)
        .args(["user", "create", "--store", &store, "--customer", "globex"])
        .args(["--name", "ada", "--role", "standard"])
        .output()
        .unwrap();
    assert!(!twice.status.success(), "a second user ada was created");
    let console = start_console(store_path);
    let serve = Server::start(&fx.dir, store_path, "[guard]\nfailures = 0\n", 1);
    let ada = As::new(console.addr, &login);

    let made = ada.ok(
        "POST",
        "tokens",
        Some(json!({"name": "fleet-console", "sites": "all"})),
        201,
    );
    let token = made["secret"].as_str().unwrap().to_owned();
    gate_answers(&serve, &token, 200);
    let key = ada.ok(
        "POST",
        "keys",
        Some(json!({"name": "fleet-key", "level": "admin", "sites": "all"})),
        201,
    );
    let key_secret = key["secret"].as_str().unwrap().to_owned();
    ada.ok(
        "PATCH",
        "keys/fleet-key",
        Some(json!({"level": "architect"})),
        200,
    );
    assert_eq!(ada.names("keys"), ["fleet-key"]);
    assert_eq!(ada.names("tokens"), ["fleet-console"]);
    ada.ok("DELETE", "tokens/fleet-console", None, 204);
    gate_answers(&serve, &token, 401);
    let events = ada.ok("GET", "audit", None, 200)["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(events, 5, "user, token, key, key update, token delete");

    // Everything is in etcd, and no secret is.
    let range = format!(
        r#"{{"key":"{}","range_end":"AA=="}}"#,
        base64_of("sessiongate-console/")
    );
    let request = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{range}",
        range.len()
    );
    let dump = send_raw(
        format!("127.0.0.1:{}", etcd.clients[0]).parse().unwrap(),
        request.as_bytes(),
    )
    .unwrap();
    let mut decoded = String::new();
    for kv in dump.json().unwrap()["kvs"].as_array().unwrap() {
        for field in ["key", "value"] {
            decoded.push_str(&decode_base64(kv[field].as_str().unwrap()));
            decoded.push('\n');
        }
    }
    for key in ["users/ada\n", "credentials/fleet-key\n", "audit/"] {
        assert!(
            decoded.contains(&format!("sessiongate-console/{key}")),
            "no {key} in etcd: {decoded}"
        );
    }
    assert!(decoded.contains("sgu_****"), "{decoded}");
    common::assert_no_secret("etcd", &decoded, &[login, token, key_secret]);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn decode_base64(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}

/// Issue 46, last use on a fleet's store in etcd: two `serve`s flush what
/// they admit into one key per credential (`PREFIX/last_used/NAME`), never
/// into the record, so a rename is never in conflict with a flush and the
/// gates never reload for one; the rename carries the last use over.
#[test]
fn last_use_in_etcd_is_a_key_per_credential_apart_from_its_record() {
    use common::console::gate_answers;

    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 1);
    let store = format!("etcd://127.0.0.1:{}/sessiongate-used", etcd.clients[0]);
    let store_path = Path::new(&store);
    let key = common::mint_key(store_path, "etl", "standard");
    let servers: Vec<Server> = ["gate-1", "gate-2"]
        .iter()
        .map(|name| {
            let config = format!(
                "[guard]\nfailures = 0\n[last_use]\nflush_seconds = 1\ninstance = \"{name}\"\n"
            );
            Server::start(&fx.dir, store_path, &config, 1)
        })
        .collect();
    let last_used = |name: &str| -> serde_json::Value {
        let listed: serde_json::Value =
            serde_json::from_str(&common::cli(&["key", "list", "--store", &store, "--json"]))
                .unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map_or(serde_json::Value::Null, |r| r["last_used"].clone())
    };
    let flushed = |name: &str| {
        eventually(suite::PATIENCE, || match last_used(name) {
            serde_json::Value::Null => Err(format!("no last use of {name} yet")),
            used => Ok(used),
        })
        .unwrap()
    };
    let revision = |key: &str| -> u64 {
        let body = format!(r#"{{"key":"{}"}}"#, base64_of(key));
        let answer = etcd.post(0, "/v3/kv/range", &body).unwrap();
        answer["kvs"][0]["mod_revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let minted = revision("sessiongate-used/credentials/etl");
    gate_answers(&servers[0], &key, 200);
    let first = flushed("etl");
    assert_eq!(first["instance"], "gate-1");
    revision("sessiongate-used/last_used/etl");
    assert_eq!(
        revision("sessiongate-used/credentials/etl"),
        minted,
        "the flush wrote the record"
    );
    // Renamed: the last use goes with it at once.
    common::cli(&[
        "key", "update", "--store", &store, "etl", "--rename", "etl-2",
    ]);
    assert_eq!(last_used("etl-2"), first);
    revision("sessiongate-used/last_used/etl-2");
    // Both admit it under its new record; a later flush moves nothing back.
    for server in &servers {
        gate_answers(server, &key, 200);
    }
    for server in &servers {
        let failed = common::sample(
            &common::scrape(server),
            "sessiongate_last_use_flushes_total",
            Some(("result", "failed")),
        );
        assert_eq!(failed, 0.0, "a flush failed");
    }
    assert!(last_used("etl-2")["at"].as_u64() >= first["at"].as_u64());
}

/// Issue 46, last use by the component (`serve --component`, its bucket in
/// etcd): an admission writes the credential's last-use key only when its
/// stored minute is older, so many admissions are one write, counted by
/// etcd itself (the key's `version` is its number of writes).
#[test]
fn the_component_writes_a_credentials_last_use_once_a_minute() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 1);
    let config = limited(&etcd.urls(), 1_000, Duration::from_secs(60), false);
    let component = common::components::p3();
    let server = Server::start_with(&fx.dir, &fx.store, &config, 2, &["--component", component]);
    let auth = format!("Bearer {}", fx.creds.token_all);
    const REQUESTS: usize = 40;
    for i in 0..REQUESTS {
        let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let key = "sessiongate/limiter/v1/kv/sessiongate.last_used.all-sites";
    let body = format!(r#"{{"key":"{}"}}"#, base64_of(key));
    let answer = etcd.post(0, "/v3/kv/range", &body).unwrap();
    let kv = &answer["kvs"][0];
    let value: serde_json::Value =
        serde_json::from_str(&decode_base64(kv["value"].as_str().unwrap())).unwrap();
    assert_eq!(value["name"], "all-sites");
    assert_eq!(value["instance"], "component");
    let now = sessiongate_store::manage::now_ms();
    let at = value["at"].as_u64().unwrap();
    assert!(at.is_multiple_of(60_000) && now - at < 120_000, "{value}");
    let writes: u64 = kv["version"].as_str().unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&writes),
        "{writes} writes of the last use for {REQUESTS} admissions"
    );
}

/// The etcd side of a flush, on a real etcd: 130 credentials' uses in one
/// flush (over etcd's 128 operations a txn, so in batches), nothing written
/// again for the same minute, a later minute written, and another writer's
/// later minute never overwritten by an older one; a rename and a delete
/// touch one key each.
#[test]
fn last_use_flushes_any_number_into_etcd_and_never_move_a_use_back() {
    use sessiongate_core::{LastUse, Uses};
    use sessiongate_store::last_use::{LastUses, flush, forget, rename};

    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 1);
    let store = format!("etcd://127.0.0.1:{}/sessiongate-flush", etcd.clients[0]);
    let store = sessiongate_store::Store::open(Path::new(&store)).unwrap();
    let minute = 1_796_185_680_000;
    let mut uses = Uses::default();
    for i in 0..130 {
        uses.admitted(&format!("c{i:03}"), minute + 5);
    }
    assert_eq!(flush(&store, &uses, "a").unwrap(), 130);
    assert_eq!(
        flush(&store, &uses, "b").unwrap(),
        0,
        "the same minute again"
    );
    let mut later = Uses::default();
    later.admitted("c000", minute + 60_000);
    assert_eq!(flush(&store, &later, "b").unwrap(), 1);
    let mut older = Uses::default();
    older.admitted("c000", minute);
    older.admitted("c001", minute - 60_000);
    assert_eq!(
        flush(&store, &older, "c").unwrap(),
        0,
        "an older minute moves nothing"
    );
    let stored: Vec<LastUse> = store.load_documents().unwrap();
    assert_eq!(stored.len(), 130);
    let c000 = stored.iter().find(|u| u.name == "c000").unwrap();
    assert_eq!((c000.at, c000.instance.as_str()), (minute + 60_000, "b"));
    let c001 = stored.iter().find(|u| u.name == "c001").unwrap();
    assert_eq!((c001.at, c001.instance.as_str()), (minute, "a"));

    rename(&store, "c001", "renamed").unwrap();
    forget(&store, "c002").unwrap();
    let stored: Vec<LastUse> = store.load_documents().unwrap();
    assert_eq!(stored.len(), 129);
    assert!(stored.iter().any(|u| u.name == "renamed" && u.at == minute));
    assert!(!stored.iter().any(|u| u.name == "c001" || u.name == "c002"));
    let uses = LastUses::load(&store).unwrap();
    assert_eq!(uses.of("renamed", minute).map(|u| u.at), Some(minute));
}
