//! A named cluster of HTTP members (etcd's), reached as Envoy reaches a
//! cluster: one member, the next on a connect error or a 503 (as outlier
//! detection would), all within the call's timeout; the member that last
//! answered is tried first. The filter's `proxy_http_call`s go through it, and
//! so does the component host's key-value store on etcd.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use sessiongate_etcd::{AUTHENTICATE, After, Attempt, Credentials, RANGE, Step};

use crate::host::{CallResponse, Callout};

/// A call with no timeout (0, as Envoy reads it) still ends: etcd without a
/// quorum holds a request for seconds, and a paused request must be answered.
const LONGEST_CALL: Duration = Duration::from_secs(30);

/// Where every etcd client the proxy runs reads etcd's password: never a
/// file or a command line (where `ps` shows it).
pub const PASSWORD_VARIABLE: &str = "SESSIONGATE_ETCD_PASSWORD";

/// etcd's user and password, configured one way for every etcd client the
/// proxy runs (the token store's `etcd://USER@…`, `serve`'s `[limit]
/// etcd_user`): the user named beside the members, the password in
/// [`PASSWORD_VARIABLE`].
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
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

/// One named cluster: its members' base URLs.
pub struct Cluster {
    name: String,
    members: Vec<String>,
    preferred: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    /// etcd's user and password, for the host's own calls ([`Cluster::post_json`]);
    /// the filter's callouts carry the filter's token.
    login: Option<Login>,
    token: Mutex<Option<String>>,
    /// Calls no member answered in time, for the limiter-store error metric.
    failures: AtomicU64,
}

impl Cluster {
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

    /// The host's calls log in to etcd as `user` (and again when etcd
    /// refuses the token).
    pub fn with_login(mut self, login: Login) -> Cluster {
        self.login = Some(login);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `call` and reads its whole answer; `None` when no member
    /// answered in time (the filter then sees a failed call).
    pub async fn send(&self, call: &Callout) -> Option<CallResponse> {
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
            let body = r#"{"key":"AA==","count_only":true}"#.to_owned();
            let _ = self.post_json(RANGE, body, 5_000).await;
        }
    }

    /// `POST path` with a JSON body: the status and body, or `None` when no
    /// member answered in time. Logged in, when the cluster has a login
    /// (etcd's one login policy, `sessiongate_etcd::Attempt`).
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
        let mut headers = vec![
            (":method".to_owned(), b"POST".to_vec()),
            (":path".to_owned(), path.as_bytes().to_vec()),
            (":authority".to_owned(), self.name.as_bytes().to_vec()),
            ("content-type".to_owned(), b"application/json".to_vec()),
        ];
        if let Some(token) = token {
            headers.push(("authorization".to_owned(), token.as_bytes().to_vec()));
        }
        let call = Callout {
            context: 0,
            token: 0,
            cluster: self.name.clone(),
            headers,
            body: body.into_bytes(),
            timeout_ms,
        };
        let response = self.send(&call).await?;
        Some((status(&response)?, response.body))
    }

    async fn failover(&self, call: &Callout) -> Option<CallResponse> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut unavailable = None;
        for i in 0..self.members.len() {
            let at = (first + i) % self.members.len();
            let Some(member) = self.members.get(at) else {
                continue;
            };
            match self.exchange(member, call).await {
                Some(response) if status(&response) != Some(503) => {
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

    async fn exchange(&self, member: &str, call: &Callout) -> Option<CallResponse> {
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let path = header(":path")?;
        let method = header(":method")?;
        let mut builder = Request::builder()
            .method(method.as_str())
            .uri(format!("{member}{path}"));
        for (name, value) in &call.headers {
            if !name.starts_with(':') {
                builder = builder.header(name.as_str(), value.as_slice());
            }
        }
        let request = builder
            .body(Full::new(Bytes::from(call.body.clone())))
            .ok()?;
        let response = self.client.request(request).await.ok()?;
        let mut headers = vec![(
            ":status".to_owned(),
            response.status().as_u16().to_string().into_bytes(),
        )];
        headers.extend(
            response
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())),
        );
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(CallResponse {
            headers,
            body: body.to_vec(),
            trailers: Vec::new(),
        })
    }
}

fn status(response: &CallResponse) -> Option<u16> {
    let (_, value) = response.headers.iter().find(|(k, _)| k == ":status")?;
    std::str::from_utf8(value).ok()?.parse().ok()
}
