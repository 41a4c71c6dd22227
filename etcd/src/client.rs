//! The one etcd client (feature `client`): a named cluster of etcd's
//! members, reached as Envoy reaches a cluster: one member, the next on a
//! connect error or a 503 (as outlier detection would), all within the
//! call's timeout; the member that last answered is tried first. Its own
//! calls log in by the one login policy ([`Attempt`]); a proxy-wasm host
//! passes the filter's `proxy_http_call`s through it as they are
//! ([`Cluster::send`]), and the CLI runs it on a current-thread runtime.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::codec::count;
use crate::login::{AUTHENTICATE, After, Attempt, Credentials, Step};

/// A call with no timeout (0, as Envoy reads it) still ends: etcd without a
/// quorum holds a request for seconds, and a paused request must be answered.
const LONGEST_CALL: Duration = Duration::from_secs(30);

/// Where every etcd client reads etcd's password: never a file or a
/// command line (where `ps` shows it).
pub const PASSWORD_VARIABLE: &str = "SESSIONGATE_ETCD_PASSWORD";

/// etcd's user and password, configured one way for every etcd client (the
/// token store's `etcd://USER@…`, `serve`'s `[limit] etcd_user`): the user
/// named beside the members, the password in [`PASSWORD_VARIABLE`].
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// etcd's user name.
    pub user: String,
    /// Its password (never logged).
    pub password: String,
}

impl Login {
    /// `user`'s login, its password from the environment.
    pub fn of_user(user: &str) -> Result<Login, String> {
        if user.is_empty() || user.contains(':') {
            return Err(format!(
                "etcd's user {user:?} is a name only: its password goes in {PASSWORD_VARIABLE}"
            ));
        }
        let password = std::env::var(PASSWORD_VARIABLE).map_err(|_| {
            format!("etcd's user {user:?} needs its password in {PASSWORD_VARIABLE}")
        })?;
        Ok(Login {
            user: user.to_owned(),
            password,
        })
    }

    fn credentials(&self) -> Credentials<'_> {
        Credentials {
            user: &self.user,
            password: &self.password,
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An HTTP call to a member, as a host's `proxy_http_call` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The method (`POST`).
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Headers besides the pseudo-headers, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
    /// The whole call's deadline, every member's try included (0: the
    /// longest a call may take, 30 s).
    pub timeout_ms: u32,
}

/// A member's whole answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

/// One named cluster: its members' base URLs.
pub struct Cluster {
    name: String,
    members: Vec<String>,
    preferred: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    /// etcd's user and password, for the cluster's own calls
    /// ([`Cluster::post_json`]); a filter's callouts carry its own token.
    login: Option<Login>,
    token: Mutex<Option<String>>,
    /// Calls no member answered in time, for the limiter-store error metric.
    failures: AtomicU64,
}

impl Cluster {
    /// A cluster named `name` (a proxy-wasm host's cluster name) of
    /// `members`, base URLs such as `http://10.0.0.1:2379`.
    pub fn new(name: &str, members: Vec<String>) -> Cluster {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Cluster {
            name: name.to_owned(),
            members: members
                .into_iter()
                .map(|m| m.trim_end_matches('/').to_owned())
                .collect(),
            preferred: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build(connector),
            login: None,
            token: Mutex::new(None),
            failures: AtomicU64::new(0),
        }
    }

    /// The cluster's own calls log in to etcd as `login` (and again when
    /// etcd refuses the token).
    pub fn with_login(mut self, login: Login) -> Cluster {
        self.login = Some(login);
        self
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `call` as it is (no login of the cluster's) and reads its
    /// whole answer; `None` when no member answered in time (a filter then
    /// sees a failed call).
    pub async fn send(&self, call: &HttpCall) -> Option<HttpAnswer> {
        let timeout = match call.timeout_ms {
            0 => LONGEST_CALL,
            ms => Duration::from_millis(u64::from(ms)).min(LONGEST_CALL),
        };
        let answer = tokio::time::timeout(timeout, self.failover(call))
            .await
            .ok()
            .flatten();
        if answer.is_none() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Calls no member answered in time, so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Logs in ahead of the first request, when the cluster has a login:
    /// etcd checks a password with bcrypt, tens of milliseconds that the
    /// first request's call would otherwise spend out of its timeout.
    pub async fn log_in_early(&self) {
        if self.login.is_some() {
            // Any authenticated call logs in; this one reads nothing.
            let call = count("\0");
            let _ = self.post_json(call.path, call.body, 5_000).await;
        }
    }

    /// `POST path` with a JSON body: the status and body, or `None` when no
    /// member answered in time. Logged in, when the cluster has a login
    /// (etcd's one login policy, [`Attempt`]).
    pub async fn post_json(
        &self,
        path: &str,
        body: String,
        timeout_ms: u32,
    ) -> Option<(u16, Vec<u8>)> {
        self.post_logged_in(path, body, timeout_ms).await.ok()
    }

    /// [`Cluster::post_json`], saying why when there is no answer.
    pub async fn post_logged_in(
        &self,
        path: &str,
        body: String,
        timeout_ms: u32,
    ) -> Result<(u16, Vec<u8>), String> {
        let login = self.login.as_ref().map(Login::credentials);
        let mut attempt = Attempt::new();
        loop {
            let held = self.token.lock().ok().and_then(|t| t.clone());
            match attempt.next(login, held.as_deref(), timeout_ms) {
                Step::LogIn { body, timeout_ms } => {
                    let answer = self.post_with(AUTHENTICATE, body, timeout_ms, None).await;
                    let (status, body) = answer.map_or((None, Vec::new()), |(s, b)| (Some(s), b));
                    let token = attempt.logged_in(status, &body)?;
                    if let Ok(mut slot) = self.token.lock() {
                        *slot = Some(token);
                    }
                }
                Step::Send { token } => {
                    let answer = self
                        .post_with(path, body.clone(), timeout_ms, token)
                        .await
                        .ok_or_else(|| format!("no member of {} answered in time", self.name))?;
                    match attempt.answered(login, Some(answer.0), &answer.1) {
                        After::Done => return Ok(answer),
                        After::Again => {
                            if let Ok(mut slot) = self.token.lock() {
                                *slot = None;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn post_with(
        &self,
        path: &str,
        body: String,
        timeout_ms: u32,
        token: Option<&str>,
    ) -> Option<(u16, Vec<u8>)> {
        let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
        if let Some(token) = token {
            headers.push(("authorization".to_owned(), token.as_bytes().to_vec()));
        }
        let call = HttpCall {
            method: "POST".to_owned(),
            path: path.to_owned(),
            headers,
            body: body.into_bytes(),
            timeout_ms,
        };
        let answer = self.send(&call).await?;
        Some((answer.status, answer.body))
    }

    async fn failover(&self, call: &HttpCall) -> Option<HttpAnswer> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut unavailable = None;
        for i in 0..self.members.len() {
            let at = (first + i) % self.members.len();
            let Some(member) = self.members.get(at) else {
                continue;
            };
            match self.exchange(member, call).await {
                Some(response) if response.status != 503 => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Some(response);
                }
                // A 503 is kept in case every member answers so.
                Some(response) => unavailable = Some(response),
                None => {}
            }
        }
        unavailable
    }

    async fn exchange(&self, member: &str, call: &HttpCall) -> Option<HttpAnswer> {
        let mut builder = Request::builder()
            .method(call.method.as_str())
            .uri(format!("{member}{}", call.path));
        for (name, value) in &call.headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        let request = builder
            .body(Full::new(Bytes::from(call.body.clone())))
            .ok()?;
        let response = self.client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(HttpAnswer {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A member that answers every request with `status`, and counts them.
    async fn member(status: u16) -> (String, std::sync::Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let body = format!("{{\"member\":{status}}}");
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        (url, seen)
    }

    /// A port nothing listens on.
    fn dead() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn call() -> HttpCall {
        HttpCall {
            method: "POST".into(),
            path: "/v3/kv/range".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: b"{}".to_vec(),
            timeout_ms: 5_000,
        }
    }

    /// A dead member and one that answers 503 are passed over; the member
    /// that answered is tried first next time.
    #[tokio::test]
    async fn failover_passes_over_dead_and_unavailable_members() {
        let (busy, busy_seen) = member(503).await;
        let (good, good_seen) = member(200).await;
        let cluster = Cluster::new("etcd", vec![dead(), busy, good]);
        let answer = cluster.send(&call()).await.unwrap();
        assert_eq!(
            (answer.status, &answer.body[..]),
            (200, &b"{\"member\":200}"[..])
        );
        assert_eq!(busy_seen.load(Ordering::SeqCst), 1);
        cluster.send(&call()).await.unwrap();
        assert_eq!(
            busy_seen.load(Ordering::SeqCst),
            1,
            "the preferred member first"
        );
        assert_eq!(good_seen.load(Ordering::SeqCst), 2);
        assert_eq!(cluster.failures(), 0);
    }

    /// Every member unavailable: their 503 is the answer; none reachable:
    /// no answer, counted as a failure.
    #[tokio::test]
    async fn no_member_answering_is_said() {
        let (busy, _) = member(503).await;
        let cluster = Cluster::new("etcd", vec![dead(), busy]);
        assert_eq!(cluster.send(&call()).await.unwrap().status, 503);
        let gone = Cluster::new("etcd", vec![dead(), dead()]);
        assert!(gone.send(&call()).await.is_none());
        assert_eq!(gone.failures(), 1);
        let e = gone.post_logged_in("/v3/kv/range", "{}".into(), 500).await;
        assert!(e.unwrap_err().contains("no member of etcd answered"));
    }

    #[test]
    fn a_login_names_a_user_only() {
        assert!(
            Login::of_user("a:b")
                .unwrap_err()
                .contains(PASSWORD_VARIABLE)
        );
        assert!(Login::of_user("").is_err());
        let login = Login {
            user: "gate".into(),
            password: "secret".into(),
        };
        assert!(!format!("{login:?}").contains("secret"));
    }
}
