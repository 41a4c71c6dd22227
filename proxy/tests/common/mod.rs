//! What the end-to-end tests share: the binary, minting with the real CLI,
//! a fixture of credentials, and the secret-leak check.
#![allow(dead_code)] // each test binary uses its own part

pub mod components;
pub mod console;
pub mod etcd;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiongate_conformance::{self as suite, Credentials, Harness};

pub const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

/// What `serve` logs when a change to its token store is in force.
pub const STORE_RELOADED: &str = "token store reloaded: ";

pub fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run sessiongate");
    assert!(
        out.status.success(),
        "sessiongate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn mint_token(store: &Path, name: &str, sites: &[&str]) -> String {
    mint_token_expiring(store, name, sites, None)
}

/// As [`mint_token`], with `--expires-in` when `expires_in` is given.
pub fn mint_token_expiring(
    store: &Path,
    name: &str,
    sites: &[&str],
    expires_in: Option<Duration>,
) -> String {
    let expiry = expires_in.map(|d| format!("{}ms", d.as_millis()));
    let mut args = vec![
        "token",
        "create",
        "--store",
        store.to_str().unwrap(),
        "--name",
        name,
        "--customer",
        suite::CUSTOMER,
    ];
    if sites.is_empty() {
        args.push("--all-sites");
    }
    for s in sites {
        args.extend(["--site", s]);
    }
    if let Some(expiry) = &expiry {
        args.extend(["--expires-in", expiry]);
    }
    cli(&args)
}

pub fn mint_key(store: &Path, name: &str, level: &str) -> String {
    cli(&[
        "key",
        "create",
        "--store",
        store.to_str().unwrap(),
        "--name",
        name,
        "--customer",
        suite::CUSTOMER,
        "--level",
        level,
        "--all-sites",
    ])
}

/// Deletes a token from a store with the real CLI.
pub fn delete_token(store: &Path, name: &str) {
    cli(&["token", "delete", "--store", store.to_str().unwrap(), name]);
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub store: PathBuf,
    pub creds: Credentials,
    /// Every secret minted, for the leak checks.
    pub secrets: Vec<String>,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let store = path.join("tokens.json");
    let creds = Credentials {
        token_all: mint_token(&store, "all-sites", &[]),
        token_site_a: mint_token(&store, "site-a-only", &[suite::SITE_A]),
        key_standard: mint_key(&store, "key-standard", "standard"),
        key_architect: mint_key(&store, "key-architect", "architect"),
        key_admin: mint_key(&store, "key-admin", "admin"),
    };
    let secrets = vec![
        creds.token_all.clone(),
        creds.token_site_a.clone(),
        creds.key_standard.clone(),
        creds.key_architect.clone(),
        creds.key_admin.clone(),
    ];
    Fixture {
        _dir: dir,
        dir: path,
        store,
        creds,
        secrets,
    }
}

/// No minted secret, nor its 40-character body, anywhere in `haystack`.
pub fn assert_no_secret(what: &str, haystack: &str, secrets: &[String]) {
    for s in secrets {
        let body = s.trim_start_matches("fus_");
        let key_body = s.split('/').next().unwrap_or(s);
        assert!(
            !haystack.contains(s.as_str())
                && !haystack.contains(body)
                && !haystack.contains(key_body),
            "{what} contains a secret"
        );
    }
}

/// A running `sessiongate serve` and everything it printed.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (every test server has its own port).
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(dir: &Path, store: &Path, config: &str, workers: usize) -> Server {
        Server::start_with(dir, store, config, workers, &[])
    }

    /// As `start`, with more `serve` arguments (`--plugin FILE`).
    pub fn start_with(
        dir: &Path,
        store: &Path,
        config: &str,
        workers: usize,
        extra: &[&str],
    ) -> Server {
        let (command, config_path) = Server::command(dir, store, config, workers, extra);
        Server::spawn(command, config_path)
    }

    /// The command `start_with` runs and its config's path, for a test to
    /// add to (an environment variable) before [`Server::spawn`].
    pub fn command(
        dir: &Path,
        store: &Path,
        config: &str,
        workers: usize,
        extra: &[&str],
    ) -> (Command, PathBuf) {
        let config_path = dir.join(format!("config-{}.toml", rand_suffix()));
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
            ])
            .arg("--config")
            .arg(&config_path)
            .arg("--store")
            .arg(store)
            .args(extra)
            .args(if extra.contains(&"--admin") {
                &[][..]
            } else {
                &["--admin", "127.0.0.1:0"][..]
            });
        (command, config_path)
    }

    /// Runs a prepared `serve` command (its config at `config_path`) and
    /// waits for it to listen.
    pub fn spawn(mut command: Command, config_path: PathBuf) -> Server {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sessiongate serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let word = |s: &str| {
                        s.split(|c: char| c.is_whitespace() || c == ',' || c == '"')
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let admin = rest.split("admin http://").nth(1).map(word);
                    let _ = tx.send((word(rest), admin));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, admin) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        Server {
            child,
            addr: addr.parse().unwrap(),
            admin: admin.map(|a| a.parse().unwrap()),
            config: config_path,
            log,
        }
    }

    /// `GET` on the admin listener.
    pub fn admin_get(&self, path: &str) -> suite::http::Response {
        let admin = self.admin.expect("the admin listener is off");
        suite::http::get(admin, path, None).unwrap()
    }

    /// Sends SIGHUP (reload the configuration file).
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until the server has logged `needle`; panics with `what` (and
    /// the log) if it has not within the suite's patience.
    pub fn wait_for_log(&self, needle: &str, what: &str) {
        self.wait_for_logged(needle, 1, what);
    }

    /// Waits until the server has logged `needle` at least `times` times.
    pub fn wait_for_logged(&self, needle: &str, times: usize, what: &str) {
        suite::eventually(suite::PATIENCE, || {
            let seen = self.count_logged(needle);
            if seen >= times {
                Ok(())
            } else {
                Err(format!("{what}: {seen} of {times} {needle:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log_text()));
    }

    /// Lines the server has logged that contain `needle`.
    pub fn count_logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Runs `change` (a write to the token store) and waits until the
    /// server has reloaded the store once more: the next request sees it.
    pub fn store_changed<T>(&self, change: impl FnOnce() -> T) -> T {
        let before = self.count_logged(STORE_RELOADED);
        let changed = change();
        self.wait_for_logged(
            STORE_RELOADED,
            before + 1,
            "the store change was not loaded",
        );
        changed
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < suite::PATIENCE, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    format!("{:?}", Instant::now())
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// A one-request-at-a-time upstream that records what it received.
pub fn upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = vec![0u8; 65536];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let body = r#"{"data":{"sessions":[]}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream: yes\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

/// The suite's view of a `serve` (filter or component) with the CLI's store.
pub struct Local<'a> {
    pub server: &'a Server,
    pub fixture: &'a mut Fixture,
}

impl Harness for Local<'_> {
    fn addr(&self) -> SocketAddr {
        self.server.addr
    }
    fn credentials(&self) -> &Credentials {
        &self.fixture.creds
    }
    fn mint_with(&mut self, name: &str, expires_in: Option<Duration>) -> Result<String, String> {
        let store = &self.fixture.store;
        let secret = self
            .server
            .store_changed(|| mint_token_expiring(store, name, &[], expires_in));
        self.fixture.secrets.push(secret.clone());
        Ok(secret)
    }
    fn revoke(&mut self, name: &str) -> Result<(), String> {
        let store = &self.fixture.store;
        self.server.store_changed(|| delete_token(store, name));
        Ok(())
    }
}

/// Runs the functional cases of the conformance suite; fails with every failure.
pub fn assert_functional_suite(h: &mut dyn Harness) {
    let failures = suite::run(h, suite::FUNCTIONAL);
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

/// The request the upstream received for
/// `GET /v1/external/sessions/acme/site-a?startTime=5` with the all-sites
/// token and spoofed identity headers: rewritten as the contract says.
pub fn assert_forwarded(received: &str, secrets: &[String]) {
    let lower = received.to_ascii_lowercase();
    assert!(
        received.starts_with("GET /v1/external/sessions/acme/site-a?startTime=5 HTTP/1.1"),
        "{received}"
    );
    assert!(!lower.contains("authorization"), "{received}");
    assert!(
        lower.contains("x-sessiongate-credential: all-sites"),
        "{received}"
    );
    assert!(lower.contains("x-sessiongate-customer: acme"), "{received}");
    assert!(
        !lower.contains("spoofed") && !lower.contains("globex"),
        "{received}"
    );
    assert_no_secret("the forwarded request", received, secrets);
}

/// Sends that request, with identity headers a client must not be able to set.
pub fn request_to_forward(
    addr: SocketAddr,
    token: &str,
) -> sessiongate_conformance::http::Response {
    sessiongate_conformance::http::request(
        addr,
        "GET",
        "/v1/external/sessions/acme/site-a?startTime=5",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Sessiongate-Credential", "spoofed"),
            ("X-Sessiongate-Customer", "globex"),
        ],
    )
    .unwrap()
}

/// Every response since `start_transcript` (a whole suite's worth) holds no
/// minted secret.
pub fn assert_no_secret_in_transcript(secrets: &[String]) {
    let transcript = sessiongate_conformance::http::take_transcript();
    assert!(
        transcript.len() > 100_000,
        "the transcript recorded the run"
    );
    assert_no_secret(
        "every response",
        &String::from_utf8_lossy(&transcript),
        secrets,
    );
}

/// The upstream's answer to [`request_to_forward`], relayed with the limit's
/// state (1,000 a window, one spent).
pub fn assert_relayed(r: &sessiongate_conformance::http::Response) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert_eq!(r.text(), r#"{"data":{"sessions":[]}}"#);
    assert!(
        r.header("ratelimit")
            .is_some_and(|v| v.contains("remaining=999"))
    );
}

/// One response at the start of `raw`: status, headers' text, body, and
/// the bytes it took; `None` until it is all there.
pub fn parse_response(raw: &[u8]) -> Option<(u16, String, Vec<u8>, usize)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    // A response to HEAD has a length and no body: the next response
    // starts where its body would.
    if raw[head_end..].starts_with(b"HTTP/1.1 ") {
        return Some((status, head, Vec::new(), head_end));
    }
    let body = raw.get(head_end..head_end + length)?.to_vec();
    Some((status, head, body, head_end + length))
}

/// The scrape, parsed by the text format's rules (`prometheus-parse`).
pub fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let r = server.admin_get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` with the label `key=value` (or no labels: `None`).
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let found = scrape.samples.iter().find(|s| {
        s.metric == name
            && match label {
                Some((k, v)) => s.labels.get(k) == Some(v),
                None => true,
            }
    });
    match found.map(|s| &s.value) {
        Some(
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v),
        ) => *v,
        Some(other) => panic!("{name}: not a number: {other:?}"),
        None => 0.0,
    }
}
