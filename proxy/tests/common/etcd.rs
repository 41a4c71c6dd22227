//! A real etcd cluster for the fleet tests (Debian's `etcd-server`, one
//! process per member on free loopback ports), and the load that checks a
//! fleet's one limit.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sessiongate_conformance::http::{Response, get, send_raw};
use sessiongate_conformance::{PATIENCE, eventually};

const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd cluster: one process per member, data in `dir`.
pub struct Etcd {
    pub dir: PathBuf,
    pub token: String,
    pub clients: Vec<u16>,
    pub peers: Vec<u16>,
    pub members: Vec<Option<Child>>,
    /// More flags for every member.
    pub extra: Vec<String>,
}

impl Etcd {
    pub fn start(dir: &Path, size: usize) -> Etcd {
        Etcd::start_with(dir, size, &[])
    }

    pub fn start_with(dir: &Path, size: usize, extra: &[&str]) -> Etcd {
        let binary = Command::new("etcd").arg("--version").output();
        assert!(
            binary.is_ok_and(|o| o.status.success()),
            "etcd is not installed: `apt-get install etcd-server` (.ci/run does)"
        );
        // A port found free can be taken by a parallel test before etcd
        // binds it (the member then exits): such a cluster is started again
        // on fresh ports. Any other early exit fails with the member's log.
        let mut attempt = 1;
        loop {
            let mut etcd = Etcd {
                dir: dir.join(format!("etcd-{}", free_port())),
                token: format!("sessiongate-test-{}", free_port()),
                clients: (0..size).map(|_| free_port()).collect(),
                peers: (0..size).map(|_| free_port()).collect(),
                members: (0..size).map(|_| None).collect(),
                extra: extra.iter().map(|e| (*e).to_owned()).collect(),
            };
            for i in 0..size {
                etcd.start_member(i);
            }
            match etcd.try_wait_healthy(&(0..size).collect::<Vec<_>>()) {
                Ok(()) => return etcd,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    eprintln!("etcd lost a port to another test, starting again: {log}");
                    attempt += 1;
                }
                Err(log) => panic!("{log}"),
            }
        }
    }

    pub fn start_member(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let client = format!("http://127.0.0.1:{}", self.clients[i]);
        let peer = format!("http://127.0.0.1:{}", self.peers[i]);
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections, so a lost leader is replaced within a window.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(self.log_file(i))
            .spawn()
            .expect("start etcd");
        self.members[i] = Some(child);
    }

    pub fn urls(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        format!("127.0.0.1:{}", self.clients[i]).parse().unwrap()
    }

    /// `POST path` with a JSON body to member `i`, through etcd's gateway.
    pub fn post(&self, i: usize, path: &str, body: &str) -> Option<serde_json::Value> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = send_raw(self.addr(i), request.as_bytes()).ok()?;
        (response.status == 200)
            .then(|| response.json().ok())
            .flatten()
    }

    /// Where member `i` writes its errors (opened anew at each start).
    fn log_file(&self, i: usize) -> std::fs::File {
        std::fs::create_dir_all(&self.dir).expect("etcd data directory");
        std::fs::File::create(self.dir.join(format!("m{i}.log"))).expect("etcd log file")
    }

    pub fn wait_healthy(&mut self, members: &[usize]) {
        if let Err(log) = self.try_wait_healthy(members) {
            panic!("{log}");
        }
    }

    /// Waits for `members` to answer healthy; on failure, why, with the
    /// member's own log when it exited.
    pub fn try_wait_healthy(&mut self, members: &[usize]) -> Result<(), String> {
        let start = Instant::now();
        for &i in members {
            loop {
                let healthy = get(self.addr(i), "/health", None)
                    .is_ok_and(|r| r.status == 200 && r.text().contains("true"));
                if healthy {
                    break;
                }
                let exited = self.members[i]
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let log = std::fs::read_to_string(self.dir.join(format!("m{i}.log")));
                    return Err(format!(
                        "etcd member {i} exited ({status}): {}",
                        log.unwrap_or_default().trim()
                    ));
                }
                if start.elapsed() > PATIENCE {
                    return Err(format!(
                        "etcd member {i} never became healthy in {PATIENCE:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The member that leads now.
    pub fn leader(&self) -> usize {
        let start = Instant::now();
        loop {
            for i in 0..self.members.len() {
                if self.members[i].is_none() {
                    continue;
                }
                if let Some(status) = self.post(i, "/v3/maintenance/status", "{}")
                    && status["leader"].as_str().is_some()
                    && status["leader"] == status["header"]["member_id"]
                {
                    return i;
                }
            }
            assert!(start.elapsed() < PATIENCE, "no leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// What many clients saw, spread over every server, for `run`.
pub struct Load {
    /// (sent, received) of each admitted request.
    pub admitted: Vec<(Instant, Instant)>,
    /// Status of every answer, and the slowest answer.
    pub statuses: Vec<u16>,
    pub slowest: Duration,
}

pub fn load(servers: &[SocketAddr], auth: &str, clients: usize, run: Duration) -> Load {
    let start = Instant::now();
    drive(servers, auth, clients, &|_| start.elapsed() < run)
}

/// As [`load`], with a fault in the middle: `fault` runs once the fleet has
/// admitted `admitted` requests (the load is under way, however slowly the
/// machine started it), and the load goes on for `after` past it.
pub fn load_through(
    servers: &[SocketAddr],
    auth: &str,
    clients: usize,
    admitted: usize,
    after: Duration,
    fault: impl FnOnce() + Send,
) -> Load {
    let faulted: Mutex<Option<Instant>> = Mutex::new(None);
    let progress = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let waited = eventually(PATIENCE, || {
                let n = progress.load(Ordering::Relaxed);
                if n >= admitted {
                    Ok(())
                } else {
                    Err(format!("{n} of {admitted} admitted before the fault"))
                }
            });
            // Whatever the wait's outcome, the load must end.
            fault();
            *faulted.lock().unwrap() = Some(Instant::now());
            waited.unwrap();
        });
        drive(servers, auth, clients, &|n| {
            progress.store(n, Ordering::Relaxed);
            faulted
                .lock()
                .unwrap()
                .is_none_or(|at| at.elapsed() < after)
        })
    })
}

/// Clients on every server while `go_on(admitted so far)` says so.
fn drive(
    servers: &[SocketAddr],
    auth: &str,
    clients: usize,
    go_on: &(dyn Fn(usize) -> bool + Sync),
) -> Load {
    let admitted = Mutex::new(Vec::new());
    let statuses = Mutex::new(Vec::new());
    let slowest = Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for c in 0..clients {
            let (admitted, statuses, slowest) = (&admitted, &statuses, &slowest);
            s.spawn(move || {
                let mut n = c;
                while go_on(admitted.lock().unwrap().len()) {
                    let addr = servers[n % servers.len()];
                    n += 1;
                    let sent = Instant::now();
                    let status = get(addr, SESSIONS, Some(auth)).map_or(0, |r: Response| r.status);
                    let received = Instant::now();
                    {
                        let mut slowest = slowest.lock().unwrap();
                        *slowest = (*slowest).max(received - sent);
                    }
                    statuses.lock().unwrap().push(status);
                    match status {
                        200 => admitted.lock().unwrap().push((sent, received)),
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
    });
    let mut admitted = admitted.into_inner().unwrap();
    admitted.sort_by_key(|(_, received)| *received);
    Load {
        admitted,
        statuses: statuses.into_inner().unwrap(),
        slowest: slowest.into_inner().unwrap(),
    }
}

/// Any `limit` + 1 admissions span at least a window (2 ms for the limiter's
/// whole milliseconds, as in the hardening test). Each was admitted between
/// its send and its receipt, so a group is proven to fit in less than a
/// window only when its latest receipt is less than a window after its
/// earliest send: the earliest of the group, which need not be the first
/// received (a request held through a leader election is sent early and
/// received late).
pub fn assert_no_window_over_the_limit(
    admitted: &[(Instant, Instant)],
    limit: usize,
    window: Duration,
) {
    for group in admitted.windows(limit + 1) {
        let earliest = group.iter().map(|(sent, _)| *sent).min().unwrap();
        let span = group[limit].1 - earliest;
        assert!(
            span + Duration::from_millis(2) >= window,
            "{} admissions within {span:?} across the fleet",
            limit + 1
        );
    }
}

/// Liveness through a fault: admissions went on to the load's last window,
/// so the fleet came back (a new leader elected) within `after` less a
/// window. A bound, not a measurement: how many windows were full depends
/// on how fast a loaded machine elects a leader, which no test should claim.
pub fn assert_admissions_go_on(seen: &Load, after: Duration, window: Duration) {
    let last = seen.admitted.last().expect("nothing admitted").1;
    let first = seen.admitted.first().unwrap().0;
    assert!(
        last - first > after - window,
        "admissions stopped after the fault: {} admitted, the last {:?} after the first",
        seen.admitted.len(),
        last - first
    );
}

/// Writes `count` token records under `prefix` as the store keeps them
/// (by name and by digest, 60 a txn), the first one `first_token`'s: a
/// large store, faster than one CLI call per credential.
pub fn write_credentials(etcd: &Etcd, prefix: &str, count: usize, first_token: &str) {
    use sessiongate_core::CredentialRecord;
    let record = |i: usize| {
        let secret = if i == 0 {
            first_token.to_owned()
        } else {
            format!("fus_{i:040}")
        };
        token_record(&format!("c{i:06}"), &secret)
    };
    let records: Vec<CredentialRecord> = (0..count).map(record).collect();
    for batch in records.chunks(60) {
        let mut txn = sessiongate_etcd::Txn::new();
        for r in batch {
            let json = serde_json::to_vec(r).unwrap();
            txn.put(&format!("{prefix}/credentials/{}", r.name), &json);
            txn.put(&sessiongate_etcd::digest_key(prefix, &r.hash), &json);
        }
        let call = txn.call();
        etcd.post(0, call.path, &call.body)
            .expect("a batch written");
    }
}

/// The record a token store keeps for the token `secret` named `name`
/// (every site of the suite's customer).
pub fn token_record(name: &str, secret: &str) -> sessiongate_core::CredentialRecord {
    use sessiongate_core::{CredentialRecord, Kind, Level, Sites, hash_hex, hash_secret};
    CredentialRecord {
        name: name.to_owned(),
        description: None,
        kind: Kind::Token,
        hash: hash_hex(&hash_secret(secret.as_bytes())),
        hint: sessiongate_core::hint(Kind::Token, secret),
        customer: sessiongate_conformance::CUSTOMER.to_owned(),
        sites: Sites::All,
        level: Level::Standard,
        created: 1,
        owner: None,
        checksum: sessiongate_core::is_checksummed_token(secret),
        expires: None,
    }
}
