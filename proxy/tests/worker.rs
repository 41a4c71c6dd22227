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
    log: Arc<Mutex<Vec<String>>>,
}

impl Workerd {
    fn start(store: &Path, state: &Path, requests: u32, window: u32) -> Workerd {
        let mut w = Workerd {
            child: None,
            port: free_port(),
            state: state.to_owned(),
            store: store.to_owned(),
            requests,
            window,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        w.launch(FIRST_START);
        w
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
            && start.elapsed() < Duration::from_secs(10)
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
    fn mint(&mut self, name: &str) -> Result<String, String> {
        let secret = mint_token(&self.fixture.store, name, &[]);
        self.fixture.secrets.push(secret.clone());
        self.workerd.stop();
        self.workerd.launch(Duration::from_secs(120));
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
    // BENCHMARKS.md, target 4: what a deploy uploads stays within 1 MB.
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

#[test]
fn worker_config_is_the_gate_config() {
    let fx = fixture();
    let json = cli(&["worker-config", "--store", fx.store.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["backend"], "stub");
    assert_eq!(v["credentials"].as_array().unwrap().len(), 5);
    assert_no_secret("worker-config output", &json, &fx.secrets);
}
