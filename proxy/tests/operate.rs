//! Operating `serve` as an edge proxy: hostile connections (slowloris, a
//! connection flood, no file descriptors left), the admin listener's
//! `/metrics`, `/healthz` and `/readyz`, SIGHUP reloads and JSON logs.
//! The real binary, over loopback; CPU read from `/proc`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{Server, assert_no_secret, fixture, parse_response, sample, scrape};
use sessiongate_conformance::http::get;
use sessiongate_conformance::{self as suite, eventually};

const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

/// A connection to `to` from the loopback address `from` (127.0.0.2 is as
/// much this machine as 127.0.0.1, and a different client to the server).
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&SockAddr::from(local))?;
    socket.connect_timeout(&SockAddr::from(to), Duration::from_millis(500))?;
    Ok(socket.into())
}

/// Whether the server has closed `stream` (EOF or reset) within `wait`.
fn closed_within(mut stream: &TcpStream, wait: Duration) -> bool {
    stream
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Waits until `expected` of `streams` have been closed by the server and
/// returns how many are closed then. The others must be held open far
/// longer than a wait can take (a header timeout of a minute, say), so a
/// count above `expected` is a connection closed that should not have been.
fn closed_reaches(streams: &[TcpStream], expected: usize) -> usize {
    let mut closed = vec![false; streams.len()];
    eventually(suite::PATIENCE, || {
        for (done, stream) in closed.iter_mut().zip(streams) {
            if !*done {
                *done = closed_within(stream, Duration::from_millis(1));
            }
        }
        let n = closed.iter().filter(|c| **c).count();
        if n >= expected {
            Ok(n)
        } else {
            Err(format!("{n} of {expected} connections closed"))
        }
    })
    .unwrap()
}

/// A keep-alive client: one connection, many requests.
struct KeepAlive(TcpStream);

impl KeepAlive {
    fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        KeepAlive(stream)
    }

    /// One `GET /me`; its status.
    fn me(&mut self, auth: &str) -> std::io::Result<u16> {
        write!(
            self.0,
            "GET /me HTTP/1.1\r\nHost: gate\r\nAuthorization: {auth}\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.0.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some((status, _, _, used)) = parse_response(&raw) {
                assert_eq!(used, raw.len());
                return Ok(status);
            }
        }
    }
}

/// CPU seconds the process has used (user + system), from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // After the command: state is field 3, so utime (14) and stime (15)
    // are the 12th and 13th here.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let per_second: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    ticks / per_second
}

#[test]
fn a_slowloris_delays_no_real_client_and_is_closed_after_the_header_timeout() {
    let fx = fixture();
    // A header timeout far above how long a served request takes, so a
    // real client held up by the lorises could not pass for one served.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(8);
    let config = format!(
        "[limit]\nrequests = 100000\n[connections]\nheader_timeout_ms = {}\nidle_timeout_ms = 1000\n",
        HEADER_TIMEOUT.as_millis()
    );
    let config = config.as_str();
    let server = Server::start(&fx.dir, &fx.store, config, 2);
    let auth = format!("Bearer {}", fx.creds.token_all);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers = std::sync::atomic::AtomicUsize::new(0);
    /// Stops the client however the scope ends: a failed assertion must
    /// fail the test, not wait forever for the client thread.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let (slowest, answered, half_sent, closed_in) = std::thread::scope(|s| {
        // A real client throughout: a new connection and a request every 20 ms.
        let client = s.spawn(|| {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
                slowest = slowest.max(sent.elapsed());
                answered += 1;
                answers.store(answered, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            (slowest, answered)
        });
        let stopping = Stop(&stop);
        // 2,000 connections that send half a request line and stop.
        let opened = Instant::now();
        let loris: Vec<TcpStream> = (0..2_000)
            .map(|i| {
                let mut c = connect_from("127.0.0.2", server.addr)
                    .unwrap_or_else(|e| panic!("connection {i} after {:?}: {e}", opened.elapsed()));
                c.write_all(b"GET /v1/external/sess").unwrap();
                c
            })
            .collect();
        let half_sent = loris.len();
        // Every one is closed once its header timeout has passed.
        let closed = closed_reaches(&loris, half_sent);
        let closed_in = opened.elapsed();
        assert_eq!(closed, half_sent);
        // The real client goes on being served after they are gone.
        let after = answers.load(std::sync::atomic::Ordering::Relaxed);
        eventually(suite::PATIENCE, || {
            let now = answers.load(std::sync::atomic::Ordering::Relaxed);
            if now >= after + 10 {
                Ok(())
            } else {
                Err(format!("{} answers since the lorises closed", now - after))
            }
        })
        .unwrap();
        drop(stopping);
        let (slowest, answered) = client.join().unwrap();
        (slowest, answered, half_sent, closed_in)
    });
    eprintln!(
        "slowloris: {half_sent} half-sent connections closed within {closed_in:?}; \
         real client: {answered} answers, slowest {slowest:?}"
    );
    // Served throughout: no answer waited for the lorises' timeout (a
    // bound, not a measurement: a served request takes milliseconds).
    assert!(slowest < HEADER_TIMEOUT / 2, "slowest {slowest:?}");
    assert!(answered > 20, "{answered}");
    assert!(
        closed_in >= HEADER_TIMEOUT,
        "closed before the timeout: {closed_in:?}"
    );
    let metrics = scrape(&server);
    let timed_out = sample(
        &metrics,
        "sessiongate_connections_timed_out_total",
        Some(("timeout", "header")),
    );
    assert!(timed_out >= 2_000.0, "{timed_out}");
    assert_eq!(sample(&metrics, "sessiongate_connections_open", None), 0.0);

    // A keep-alive connection left idle is closed after the idle timeout.
    let mut idle = KeepAlive::connect(server.addr);
    assert_eq!(idle.me(&auth).unwrap(), 200);
    let since = Instant::now();
    assert_eq!(closed_reaches(std::slice::from_ref(&idle.0), 1), 1);
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "idle connection closed before its timeout, after {waited:?}"
    );
}

#[test]
fn past_the_connection_caps_admitted_clients_are_served_and_nothing_spins() {
    let fx = fixture();
    let config = "[limit]\nrequests = 100000\n[connections]\nmax = 50\nmax_per_address = 20\nheader_timeout_ms = 60000\n";
    let server = Server::start(&fx.dir, &fx.store, config, 2);
    let auth = format!("Bearer {}", fx.creds.token_all);
    let mut admitted = KeepAlive::connect(server.addr);
    assert_eq!(admitted.me(&auth).unwrap(), 200);
    // One address may hold 20: the 21st to the 30th from it are closed at once.
    let one_address: Vec<TcpStream> = (0..30)
        .map(|_| connect_from("127.0.0.3", server.addr).unwrap())
        .collect();
    assert_eq!(closed_reaches(&one_address, 10), 10);
    // 29 more places in all (1 + 20 + 29 = 50): of 300 more, 271 are closed.
    let flood: Vec<TcpStream> = (0..300)
        .map(|i| connect_from(&format!("127.0.1.{}", 1 + i % 200), server.addr).unwrap())
        .collect();
    assert_eq!(closed_reaches(&flood, 271), 271);
    // The admitted keep-alive client is served throughout, and the process,
    // with 50 connections held open and none let in, does nothing.
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    let watched = Instant::now();
    for _ in 0..30 {
        assert_eq!(admitted.me(&auth).unwrap(), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = cpu_seconds(pid) - before;
    let share = used / watched.elapsed().as_secs_f64();
    eprintln!("caps: {used:.3} s of CPU over {:?}", watched.elapsed());
    assert!(
        share < 0.10,
        "the server used {share:.2} of a core while capped"
    );
    let metrics = scrape(&server);
    let refused = |cap| {
        sample(
            &metrics,
            "sessiongate_connections_refused_total",
            Some(("cap", cap)),
        )
    };
    assert_eq!(refused("max_per_address"), 10.0);
    assert_eq!(refused("max_connections"), 271.0);
    assert_eq!(sample(&metrics, "sessiongate_connections_open", None), 50.0);
    drop((one_address, flood));
}

/// The cap set above what the file limit allows: `accept` runs out of
/// descriptors. It must back off (not spin on the queued connection), warn
/// at most once a second, keep serving the connections it has, and accept
/// again once descriptors are free.
#[test]
fn out_of_file_descriptors_accept_backs_off_and_recovers() {
    let fx = fixture();
    let config =
        "[limit]\nrequests = 100000\n[connections]\nmax = 100000\nheader_timeout_ms = 60000\n";
    let config_path = fx.dir.join("emfile.toml");
    std::fs::write(&config_path, config).unwrap();
    // The server under a file limit of 200 (soft and hard: it raises the
    // soft one to the hard one itself).
    let mut command = Command::new("prlimit");
    command
        .args([
            "--nofile=200:200",
            common::BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--admin", "off", "--workers", "2", "--config"])
        .arg(&config_path)
        .arg("--store")
        .arg(&fx.store);
    let server = Server::spawn(command, config_path);
    let addr = server.addr;
    let auth = format!("Bearer {}", fx.creds.token_all);
    let mut admitted = KeepAlive::connect(addr);
    assert_eq!(admitted.me(&auth).unwrap(), 200);
    let held: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    server.wait_for_log("accept failed", "no warning with the file limit reached");
    let warnings = || server.log_text().matches("accept failed").count();
    assert!(warnings() >= 1, "{}", server.log_text());
    let warnings_before = warnings();
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    let watched = Instant::now();
    for _ in 0..30 {
        assert_eq!(admitted.me(&auth).unwrap(), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = cpu_seconds(pid) - before;
    let share = used / watched.elapsed().as_secs_f64();
    let warnings = warnings() - warnings_before;
    eprintln!(
        "emfile: {} held, {used:.3} s of CPU and {warnings} warnings over {:?}",
        held.len(),
        watched.elapsed()
    );
    assert!(share < 0.15, "accept spun: {share:.2} of a core");
    let allowed = watched.elapsed().as_secs() as usize + 1;
    assert!(
        warnings <= allowed,
        "{warnings} warnings in {:?}",
        watched.elapsed()
    );
    drop(held);
    // Descriptors free again: new clients are accepted.
    eventually(suite::PATIENCE, || match get(addr, "/me", Some(&auth)) {
        Ok(r) if r.status == 200 => Ok(()),
        other => Err(format!(
            "accept never recovered: {:?}",
            other.map(|r| r.status)
        )),
    })
    .unwrap();
}

#[test]
fn readyz_follows_the_store_and_the_limiter() {
    let fx = fixture();
    let good = std::fs::read(&fx.store).unwrap();
    std::fs::write(&fx.store, b"{ this is not a store").unwrap();
    let config = "[limit]\nrequests = 100000\n";
    let server = Server::start(&fx.dir, &fx.store, config, 2);
    server.wait_for_log("could not be loaded", "the corrupt store was not reported");
    assert_eq!(server.admin_get("/healthz").status, 200);
    let r = server.admin_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["checks"]["credentials"]["ok"], false);
    let detail = v["checks"]["credentials"]["detail"].as_str().unwrap();
    assert!(detail.contains(fx.store.to_str().unwrap()), "{detail}");
    assert_eq!(v["checks"]["limiter"]["ok"], true);
    let auth = format!("Bearer {}", fx.creds.token_all);
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 401);
    // The store mended: ready, and the token admitted.
    std::fs::write(&fx.store, &good).unwrap();
    until_ready(&server);
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    // The limiter's store failing (the fault injection, by a reload): not
    // ready, saying why; and back.
    std::fs::write(
        &server.config,
        format!("{config}[testing]\nfail_limiter_store = true\n"),
    )
    .unwrap();
    server.hangup();
    server.wait_for_log("reloaded: limit", "no reload");
    let r = server.admin_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["checks"]["limiter"]["ok"], false);
    assert_eq!(v["checks"]["credentials"]["ok"], true);
    let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
    assert_eq!(r.status, 503);
    std::fs::write(&server.config, config).unwrap();
    server.hangup();
    until_ready(&server);
    let metrics = scrape(&server);
    assert!(sample(&metrics, "sessiongate_limiter_store_errors_total", None) >= 1.0);
    // A store that turns corrupt while serving keeps the last good set: ready.
    std::fs::write(&fx.store, b"[ broken").unwrap();
    server.wait_for_log(
        "Keeping the last good credentials",
        "corruption not reported",
    );
    let r = server.admin_get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json().unwrap()["checks"]["credentials"]["detail"]
            .as_str()
            .unwrap()
            .contains("serving the last good")
    );
}

/// Waits until `/readyz` answers 200.
fn until_ready(server: &Server) {
    eventually(suite::PATIENCE, || {
        let r = server.admin_get("/readyz");
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("not ready: {}", r.text()))
        }
    })
    .unwrap();
}

/// The reload line for the `n`th SIGHUP (1-based), ok or not.
fn wait_for_reloads(server: &Server, n: usize) {
    eventually(suite::PATIENCE, || {
        let seen = server.count_logged("reloaded: limit") + server.count_logged("not reloaded");
        if seen >= n {
            Ok(())
        } else {
            Err(format!("reload {n} not logged:\n{}", server.log_text()))
        }
    })
    .unwrap();
}

/// Writes `config` over the server's file, sends SIGHUP, and waits for the
/// `n`th reload to be logged.
fn reload(server: &Server, config: &str, n: usize) {
    std::fs::write(&server.config, config).unwrap();
    server.hangup();
    wait_for_reloads(server, n);
}

#[test]
fn sighup_applies_a_changed_limit_keeping_the_count_and_refuses_an_invalid_file() {
    let fx = fixture();
    let config = "[limit]\nrequests = 100\n[guard]\nfailures = 0\n";
    let server = Server::start(&fx.dir, &fx.store, config, 2);
    let auth = format!("Bearer {}", fx.creds.token_all);
    for _ in 0..3 {
        assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    }
    // Limit 5: the 3 already spent still count, so 2 more pass.
    reload(&server, "[limit]\nrequests = 5\n[guard]\nfailures = 0\n", 1);
    assert!(
        server.log_text().contains("reloaded: limit 5/60s"),
        "{}",
        server.log_text()
    );
    let statuses: Vec<u16> = (0..3)
        .map(|_| get(server.addr, SESSIONS, Some(&auth)).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    // An invalid file: nothing changes, and the error names it.
    reload(&server, "[limit]\nrequests = \"many\"\n", 2);
    let log = server.log_text();
    assert!(log.contains("not reloaded, nothing changed"), "{log}");
    assert!(log.contains(server.config.to_str().unwrap()), "{log}");
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 429);
    // A valid file that changes a restart-only setting: the rest applies,
    // and the warning names what waits for a restart.
    reload(
        &server,
        "log_format = \"json\"\n[limit]\nrequests = 1000\n[guard]\nfailures = 0\n",
        3,
    );
    assert!(
        server.log_text().contains("log_format changed in the file"),
        "{}",
        server.log_text()
    );
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    let metrics = scrape(&server);
    let reloads = |result| {
        sample(
            &metrics,
            "sessiongate_config_reloads_total",
            Some(("result", result)),
        )
    };
    assert_eq!(reloads("ok"), 2.0);
    assert_eq!(reloads("failed"), 1.0);
}

#[test]
fn json_logs_are_one_object_a_line_and_hold_no_secret() {
    let fx = fixture();
    let config = "access_log = true\n[limit]\nrequests = 100\n";
    let server = Server::start_with(&fx.dir, &fx.store, config, 2, &["--log-format", "json"]);
    let auth = format!("Bearer {}", fx.creds.token_all);
    assert_eq!(get(server.addr, SESSIONS, Some(&auth)).unwrap().status, 200);
    let bad = "Bearer fus_0000000000000000000000000000000000000000";
    assert_eq!(get(server.addr, "/me", Some(bad)).unwrap().status, 401);
    server.wait_for_log("\"status\":401", "no access line for the 401");
    let log = server.log_text();
    let mut access = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(),
            "{line}"
        );
        if v["msg"] == "access" {
            access.push(v);
        }
    }
    assert_eq!(access.len(), 2, "{log}");
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["path"], SESSIONS);
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["credential"], "all-sites");
    assert!(access[0]["latency_us"].is_u64());
    assert_eq!(access[1]["status"], 401);
    assert!(access[1]["credential"].is_null());
    assert_no_secret("the JSON log", &log, &fx.secrets);
}
