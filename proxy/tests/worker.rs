//! The edge build for real: the Worker built by worker-build, run on workerd
//! (`edge-worker/run-local.sh`) with its Durable Object on local disk, and the
//! whole conformance suite against it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Fixture, assert_functional_suite, assert_no_secret, cli, fixture, mint_token};
use sessiongate_conformance::http::request;
use sessiongate_conformance::{self as suite, Credentials, Harness};

const ADMIN_SECRET: &str = "sessiongate-test-admin-secret-0123456789";
/// A cold first run installs worker-build and wasm-bindgen-cli and builds the Worker.
const FIRST_START: Duration = Duration::from_secs(40 * 60);

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// workerd running the Worker, restartable on the same port and state.
struct Workerd {
    child: Option<Child>,
    port: u16,
    state: PathBuf,
    store: PathBuf,
    requests: u32,
    window: u32,
    /// `--filter-ttl-ms` (none: the Worker's default, 10 s).
    filter_ttl_ms: Option<u32>,
    /// `--credentials-in-store`: the binding holds none, the object's store all.
    credentials_in_store: bool,
    /// `--last-use-flush-ms` (none: the Worker's default, a minute).
    last_use_flush_ms: Option<u32>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A relaunch builds nothing: a generous bound on workerd's start.
const RELAUNCH: Duration = Duration::from_secs(300);

impl Workerd {
    fn start(store: &Path, state: &Path, requests: u32, window: u32) -> Workerd {
        Workerd::start_with(store, state, requests, window, None)
    }

    fn start_with(
        store: &Path,
        state: &Path,
        requests: u32,
        window: u32,
        filter_ttl_ms: Option<u32>,
    ) -> Workerd {
        let mut w = Workerd::unlaunched(store, state, requests, window);
        w.filter_ttl_ms = filter_ttl_ms;
        w.launch(FIRST_START);
        w
    }

    /// One not started yet, for a test to set more of before
    /// [`Workerd::launch`].
    fn unlaunched(store: &Path, state: &Path, requests: u32, window: u32) -> Workerd {
        Workerd {
            child: None,
            port: free_port(),
            state: state.to_owned(),
            store: store.to_owned(),
            requests,
            window,
            filter_ttl_ms: None,
            credentials_in_store: false,
            last_use_flush_ms: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn launch(&mut self, within: Duration) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-worker/run-local.sh");
        let mut child = Command::new("bash")
            .arg(script)
            .args(["--store", self.store.to_str().unwrap()])
            .args(["--port", &self.port.to_string()])
            .args(["--requests", &self.requests.to_string()])
            .args(["--window-seconds", &self.window.to_string()])
            .args(["--state-dir", self.state.to_str().unwrap()])
            .args(["--admin-hash", &sha256_hex(ADMIN_SECRET)])
            .args(
                self.filter_ttl_ms
                    .iter()
                    .flat_map(|ms| ["--filter-ttl-ms".to_owned(), ms.to_string()]),
            )
            .args(
                self.credentials_in_store
                    .then_some("--credentials-in-store"),
            )
            .args(
                self.last_use_flush_ms
                    .iter()
                    .flat_map(|ms| ["--last-use-flush-ms".to_owned(), ms.to_string()]),
            )
            .env("SESSIONGATE_BIN", BIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run edge-worker/run-local.sh");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("workerd| {line}");
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let start = Instant::now();
        let addr = self.addr();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("run-local.sh exited with {status}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < within,
                "workerd did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // workerd is exec'd by the script: the kill reached it. Wait for the port.
        let start = Instant::now();
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
            && start.elapsed() < suite::PATIENCE
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Workerd {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Edge<'a> {
    workerd: &'a mut Workerd,
    fixture: &'a mut Fixture,
}

impl Harness for Edge<'_> {
    fn addr(&self) -> SocketAddr {
        self.workerd.addr()
    }
    fn credentials(&self) -> &Credentials {
        &self.fixture.creds
    }
    /// Credentials reach a Worker by deployment: re-render the binding and
    /// restart workerd (its Durable Object state stays on disk).
    fn mint_with(&mut self, name: &str, expires_in: Option<Duration>) -> Result<String, String> {
        let secret = common::mint_token_expiring(&self.fixture.store, name, &[], expires_in);
        self.fixture.secrets.push(secret.clone());
        self.workerd.stop();
        self.workerd.launch(RELAUNCH);
        Ok(secret)
    }
    /// Revocation at once: the admin call records the hash in the Durable Object.
    fn revoke(&mut self, name: &str) -> Result<(), String> {
        let r = request(
            self.addr(),
            "POST",
            &format!("/__sessiongate/revoke/{name}"),
            &[
                ("Authorization", &format!("Bearer {ADMIN_SECRET}")),
                ("Content-Length", "0"),
            ],
        )?;
        if r.status != 200 {
            return Err(format!("revoke answered {}: {}", r.status, r.text()));
        }
        Ok(())
    }
}

#[test]
fn conformance_suite_against_the_worker_on_workerd() {
    let mut fx = fixture();
    let state = fx.dir.join("workerd-functional");
    let mut workerd = Workerd::start(&fx.store, &state, 100_000, 60);
    // What a deploy uploads stays within 1 MB (Workers' free plan).
    let bundle: u64 = ["index_bg.wasm", "index.js"]
        .iter()
        .map(|f| std::fs::metadata(state.join(f)).unwrap().len())
        .sum();
    assert!(bundle <= 1_000_000, "the Worker bundle is {bundle} bytes");
    assert_functional_suite(&mut Edge {
        workerd: &mut workerd,
        fixture: &mut fx,
    });

    // The admin route is invisible without the admin secret.
    let r = request(
        workerd.addr(),
        "POST",
        "/__sessiongate/revoke/all-sites",
        &[("Content-Length", "0")],
    )
    .unwrap();
    suite::expect_error(&r, 404, "not_found").unwrap();
    assert_no_secret("the workerd log", &workerd.log_text(), &fx.secrets);

    // The failed-credential guard, keyed by the address Cloudflare reports
    // (default: 10 failures a minute). Its state lives in the Durable Object.
    let from = |ip: &'static str, auth: String| {
        request(
            workerd.addr(),
            "GET",
            "/v1/external/sessions/acme/site-a",
            &[("Authorization", &auth), ("CF-Connecting-IP", ip)],
        )
        .unwrap()
    };
    let wrong = || "Bearer fus_0000000000000000000000000000000000000000".to_owned();
    for _ in 0..10 {
        suite::expect_error(&from("203.0.113.7", wrong()), 401, "invalid_credentials").unwrap();
    }
    let r = from("203.0.113.7", wrong());
    suite::guard_refusal_claims_no_budget(&r, 100_000).unwrap();
    let valid = format!("Bearer {}", fx.creds.token_all);
    suite::expect_error(&from("203.0.113.7", valid.clone()), 429, "rate_limited").unwrap();
    assert_eq!(
        from("203.0.113.8", valid).status,
        200,
        "other addresses are not held"
    );
    drop(workerd);

    // A fresh Durable Object with a small limit: exactly N of many concurrent.
    let state = fx.dir.join("workerd-limit");
    let mut workerd = Workerd::start(&fx.store, &state, 10, 60);
    let mut h = Edge {
        workerd: &mut workerd,
        fixture: &mut fx,
    };
    suite::exact_global_limit(&mut h, 10, 60, 64).unwrap();
    let config = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert_no_secret("the Worker's configuration binding", &config, &fx.secrets);
}

/// What each answer costs the Durable Object, from its own call counter.
/// Every request carries the client's address, as Cloudflare sends it, so
/// every request with a credential has the guard's bucket to read: an
/// admitted request is one call (the guard's bucket, revocation, the log
/// and its write, all taken by the object in that call: four before); a
/// 429 while the window is full is one (the bucket and revocation; two
/// before); a guessed credential is one (its failure counted) until the
/// guard holds its client, then none.
#[test]
fn an_admitted_request_is_one_object_call() {
    let fx = fixture();
    let state = fx.dir.join("workerd-calls");
    let workerd = Workerd::start(&fx.store, &state, 5, 60);
    let addr = workerd.addr();
    // As Cloudflare sends every request: with the client's address, which
    // the guard counts by (workerd sets none).
    let get = |auth: &str| {
        let headers = [("Authorization", auth), ("CF-Connecting-IP", "203.0.113.7")];
        request(addr, "GET", "/v1/external/sessions/acme/site-a", &headers).unwrap()
    };
    let valid = format!("Bearer {}", fx.creds.token_all);
    for i in 0..5 {
        let before = object_calls(addr);
        assert_eq!(get(&valid).status, 200, "admission {i}");
        let calls = object_calls(addr) - before - 1;
        assert_eq!(calls, 1, "admission {i} cost {calls} object calls");
    }
    let before = object_calls(addr);
    for _ in 0..20 {
        suite::expect_error(&get(&valid), 429, "rate_limited").unwrap();
    }
    let calls = object_calls(addr) - before - 1;
    assert_eq!(calls, 20, "{calls} object calls for 20 answers while full");
    // The guard's default allowance is 10 failures a minute: each costs one
    // call (its bucket read and the failure counted), then the client is
    // held, and refused from the isolate's memory of the hold.
    let before = object_calls(addr);
    for i in 0..10 {
        let r = get(&format!("Bearer fus_{i:040}"));
        suite::expect_error(&r, 401, "invalid_credentials").unwrap();
    }
    let calls = object_calls(addr) - before - 1;
    assert!(
        (10..=11).contains(&calls),
        "{calls} object calls for 10 guessed credentials"
    );
    let before = object_calls(addr);
    for i in 10..30 {
        let r = get(&format!("Bearer fus_{i:040}"));
        assert_eq!(r.status, 429, "guess {i} once held: {}", r.text());
    }
    // The first learns of the hold from the bucket; the isolate remembers.
    let calls = object_calls(addr) - before - 1;
    assert!(calls <= 1, "{calls} object calls for 20 guesses once held");
}

/// Credentials in the object's store, every token checksummed (the CLI
/// minted them), so `worker-config --without-credentials` marks the store:
/// 1,000 tokens with a wrong checksum cost the object no call at all (not
/// even the digest filter's fetch; unmarked, ~1 % of them would pass the
/// filter and be looked up), and the synced token is admitted. On `/me`:
/// under `/v1/external/` every answer carries the limit's state, which the
/// isolate reads from the object at most once a second either way.
#[test]
fn a_wrong_checksum_costs_the_object_no_call() {
    let fx = fixture();
    let state = fx.dir.join("workerd-checksums");
    let mut workerd = Workerd::unlaunched(&fx.store, &state, 100, 60);
    workerd.credentials_in_store = true;
    workerd.launch(FIRST_START);
    let config = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(config.contains("\"checksummed_tokens\": true"), "{config}");
    let out = worker_sync(&fx.store, workerd.addr(), &[]);
    assert!(out.contains("wrote 5, deleted 0"), "{out}");
    let token = &fx.creds.token_all;
    let get = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        request(
            workerd.addr(),
            "GET",
            path,
            &[("Authorization", auth.as_str())],
        )
        .unwrap()
    };
    let before = object_calls(workerd.addr());
    for i in 0..1_000usize {
        // Change one of the random characters: the shape holds, the checksum not.
        let at = 4 + i % 34;
        let mut changed = token.clone().into_bytes();
        changed[at] = if changed[at] == b'q' { b'r' } else { b'q' };
        // `/me`: outside the limit, so no answer reads the limiter's log.
        let r = get("/me", &String::from_utf8(changed).unwrap());
        suite::expect_error(&r, 401, "invalid_credentials").unwrap();
    }
    let calls = object_calls(workerd.addr()) - before - 1;
    assert_eq!(calls, 0, "{calls} object calls for 1,000 wrong checksums");
    let r = get("/v1/external/sessions/acme/site-a", token);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn worker_config_is_the_gate_config() {
    let fx = fixture();
    let json = cli(&["worker-config", "--store", fx.store.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["backend"], "stub");
    assert_eq!(v["credentials"].as_array().unwrap().len(), 5);
    assert_no_secret("worker-config output", &json, &fx.secrets);
}

/// `sessiongate worker-sync` against the running Worker, with the admin secret.
fn worker_sync(store: &Path, addr: SocketAddr, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["worker-sync", "--store", store.to_str().unwrap()])
        .args(["--url", &format!("http://{addr}")])
        .args(extra)
        .env("SESSIONGATE_ADMIN_SECRET", ADMIN_SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "worker-sync failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The object's call count (`/__sessiongate/stats`), less the stats call.
fn object_calls(addr: SocketAddr) -> u64 {
    object_stat(addr, "calls")
}

/// One of the object's own counters (`/__sessiongate/stats`).
fn object_stat(addr: SocketAddr, name: &str) -> u64 {
    let r = request(
        addr,
        "GET",
        "/__sessiongate/stats",
        &[("Authorization", &format!("Bearer {ADMIN_SECRET}"))],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()[name].as_u64().unwrap()
}

/// Issue 46, last use on the Worker: the object notes what its decisions
/// admit and an alarm writes it, a write a flush and never one a request
/// (counted by the object itself); `worker-sync` brings it into the store,
/// whose lists show it.
#[test]
fn the_objects_alarm_writes_last_use_and_worker_sync_brings_it_home() {
    let fx = fixture();
    let state = fx.dir.join("workerd-last-use");
    let mut workerd = Workerd::unlaunched(&fx.store, &state, 1_000, 60);
    workerd.last_use_flush_ms = Some(300);
    workerd.launch(FIRST_START);
    let addr = workerd.addr();
    let valid = format!("Bearer {}", fx.creds.token_all);
    const REQUESTS: usize = 30;
    for i in 0..REQUESTS {
        let r = request(
            addr,
            "GET",
            "/v1/external/sessions/acme/site-a",
            &[("Authorization", &valid)],
        )
        .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    suite::eventually(suite::PATIENCE, || {
        match object_stat(addr, "last_use_writes") {
            0 => Err("no alarm has written yet".to_owned()),
            _ => Ok(()),
        }
    })
    .unwrap();
    // One write when the row is new, and one more at most, should the
    // requests straddle a minute: never one a request.
    let writes = object_stat(addr, "last_use_writes");
    assert!(
        writes <= 2,
        "{writes} last-use writes for {REQUESTS} admissions"
    );

    let s = fx.store.to_str().unwrap();
    let synced = worker_sync(&fx.store, addr, &[]);
    assert!(
        synced.contains("last use of 1 credentials brought into the store"),
        "{synced}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&["token", "list", "--store", s, "--json"])).unwrap();
    let row = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let used = row("all-sites");
    assert_eq!(used["last_used"]["instance"], "worker", "{used}");
    assert_eq!(row("site-a-only")["last_used"], serde_json::Value::Null);
    // A second sync brings nothing new.
    let again = worker_sync(&fx.store, addr, &[]);
    assert!(again.contains("last use of 0 credentials"), "{again}");
}

/// The suite's view of a Worker whose credentials live in its store: minted
/// into the token store and synced; revoked by deleting and syncing.
struct Stored<'a> {
    workerd: &'a mut Workerd,
    fixture: &'a mut Fixture,
    /// How long each minted credential took to be admitted after its sync.
    admitted_after: Vec<Duration>,
}

impl Harness for Stored<'_> {
    fn addr(&self) -> SocketAddr {
        self.workerd.addr()
    }
    fn credentials(&self) -> &Credentials {
        &self.fixture.creds
    }
    /// Mints, syncs, and returns once the Worker admits the token (or, for
    /// one that expires, once it may have expired).
    fn mint_with(&mut self, name: &str, expires_in: Option<Duration>) -> Result<String, String> {
        let minting = Instant::now();
        let secret = common::mint_token_expiring(&self.fixture.store, name, &[], expires_in);
        self.fixture.secrets.push(secret.clone());
        worker_sync(&self.fixture.store, self.addr(), &[]);
        let synced = Instant::now();
        let auth = format!("Bearer {secret}");
        suite::eventually(suite::PATIENCE, || {
            match request(self.addr(), "GET", "/me", &[("Authorization", &auth)])?.status {
                200 => Ok(()),
                _ if expires_in.is_some_and(|d| minting.elapsed() >= d) => Ok(()),
                status => Err(format!("{name} not admitted after its sync: {status}")),
            }
        })?;
        self.admitted_after.push(synced.elapsed());
        Ok(secret)
    }
    fn revoke(&mut self, name: &str) -> Result<(), String> {
        common::delete_token(&self.fixture.store, name);
        worker_sync(&self.fixture.store, self.addr(), &[]);
        Ok(())
    }
}

/// A customer base's worth of credentials: 100,000 generated records
/// (hashes only) beside the suite's, in the Durable Object's store, synced
/// by `worker-sync`; the binding holds none.
#[test]
fn a_worker_with_100000_stored_credentials_passes_the_suite() {
    let mut fx = fixture();
    let mut records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fx.store).unwrap()).unwrap();
    let generated = sessiongate_core::fixtures::numbered(100_000);
    let list = records["credentials"].as_array_mut().unwrap();
    list.extend(generated.iter().map(|r| serde_json::to_value(r).unwrap()));
    std::fs::write(&fx.store, serde_json::to_vec(&records).unwrap()).unwrap();
    let state = fx.dir.join("workerd-stored");
    let empty = fx.dir.join("binding-holds-none.json");
    // The filter trusted for 300 ms: a synced credential is looked for in
    // the object's store that soon (the Worker's default is 10 s).
    let mut workerd = Workerd::start_with(&empty, &state, 100_000, 60, Some(300));
    let config = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(config.contains("\"credentials\": []"), "{config}");

    let synced = Instant::now();
    let out = worker_sync(&fx.store, workerd.addr(), &[]);
    eprintln!("{out}first sync of 100,005 took {:?}", synced.elapsed());
    assert!(out.contains("wrote 100005, deleted 0"), "{out}");
    // Idempotent: nothing to do the second time, and a dry run says so.
    let again = worker_sync(&fx.store, workerd.addr(), &["--dry-run"]);
    assert!(again.contains("0 to write, 0 to delete"), "{again}");
    assert_no_secret("worker-sync's output", &(out + &again), &fx.secrets);

    let mut h = Stored {
        workerd: &mut workerd,
        fixture: &mut fx,
        admitted_after: Vec::new(),
    };
    assert_functional_suite(&mut h);
    let delays = std::mem::take(&mut h.admitted_after);
    eprintln!("created credentials admitted {delays:?} after their sync");
    assert!(!delays.is_empty());

    // A dry run names what would change, and changes nothing.
    let secret = mint_token(&fx.store, "pending", &[]);
    fx.secrets.push(secret.clone());
    let plan = worker_sync(&fx.store, workerd.addr(), &["--dry-run"]);
    assert!(
        plan.contains("1 to write") && plan.contains("create pending (token, fus_****"),
        "{plan}"
    );
    // The object's own listing, read again by a second dry run, is the
    // proof: still one to write.
    let again = worker_sync(&fx.store, workerd.addr(), &["--dry-run"]);
    assert!(
        again.contains("1 to write"),
        "a dry run stored the credential: {again}"
    );
    let auth = format!("Bearer {secret}");
    let r = request(workerd.addr(), "GET", "/me", &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 401, "a dry run stored the credential");

    // 1,000 invalid credentials in a row: refused by the filter, no call to
    // the object each (only the ~1 % the filter wrongly passes are looked
    // up); from one address past the guard's allowance, the guard's
    // remembered hold answers.
    for client in [None, Some("198.51.100.4")] {
        let before = object_calls(workerd.addr());
        for i in 0..1_000 {
            let auth = format!("Bearer fus_{i:040}");
            let mut headers = vec![("Authorization", auth.as_str())];
            if let Some(ip) = client {
                headers.push(("CF-Connecting-IP", ip));
            }
            let r = request(
                workerd.addr(),
                "GET",
                "/v1/external/sessions/acme/site-a",
                &headers,
            )
            .unwrap();
            assert!(matches!(r.status, 401 | 429), "{}", r.status);
        }
        let calls = object_calls(workerd.addr()) - before - 1;
        eprintln!("1,000 invalid credentials (client {client:?}): {calls} object calls");
        assert!(
            calls <= 50,
            "{calls} object calls for 1,000 invalid credentials"
        );
    }

    // Exactly N of many concurrent, the credentials read from the store:
    // the same object, restarted with a limit of 10 in 2 s windows.
    workerd.requests = 10;
    workerd.window = 2;
    workerd.stop();
    workerd.launch(RELAUNCH);
    // Not a stand-in for a condition: the condition is time itself. The
    // suite's admissions must fall out of the new 2 s window before the
    // burst, and the relaunch began after the last of them.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut h = Stored {
        workerd: &mut workerd,
        fixture: &mut fx,
        admitted_after: Vec::new(),
    };
    suite::exact_global_limit(&mut h, 10, 2, 64).unwrap();
    assert_no_secret("the workerd log", &workerd.log_text(), &fx.secrets);
}
