//! `sessiongate console`: the management server for the people of each
//! account (contract section 7), over the same token store the gates read.
//! A JSON API (`/api/v1/…`), authenticated by a user's login secret
//! (`Authorization: Bearer sgu_…`) or by the session cookie the login form
//! sets, and the web page of the API Tokens and API Keys settings, its
//! assets embedded in the binary.
//!
//! Every change goes through the store's locking and atomic writes, exactly
//! as the CLI's do: a running `serve` sees it on its next reload.

mod api;
mod page;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use sessiongate_core::{ErrorCode, GateError};

use crate::connections::{Limits, serve_side_listener};
use crate::log;
use sessiongate_store::Store;
use sessiongate_store::users::{self, User};

pub use session::COOKIE;

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// The token store (a file, or etcd://…), as for every other command.
    #[arg(long, value_name = "FILE")]
    pub store: PathBuf,
    /// Where the API and the page listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Mark the session cookie `Secure` (when the console is reached over
    /// HTTPS, through a proxy that terminates TLS).
    #[arg(long)]
    pub secure_cookie: bool,
    #[arg(long, value_enum, default_value = "plain")]
    pub log_format: log::Format,
}

/// What every request of the console shares.
pub struct Console {
    /// Opened once: an etcd store logs in once, not per request.
    store: Store,
    sessions: session::Sessions,
    secure_cookie: bool,
}

/// The console's connections: a team's browsers and automation, with the
/// header and idle timeouts `serve` has (a slow or idle client is closed).
const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_connections: 256,
    max_per_address: 0,
};

/// Request bodies beyond this are refused (a create is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

pub fn run(args: ConsoleArgs) -> Result<()> {
    log::set_format(args.log_format);
    // Fail now, not on the first request, if the store cannot be read.
    let store = Store::open(&args.store)?;
    store.load()?;
    users::load(&store)?;
    let console = Arc::new(Console {
        store,
        sessions: session::Sessions::default(),
        secure_cookie: args.secure_cookie,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        log::info(format_args!(
            "console listening on http://{}",
            listener.local_addr()?
        ));
        serve_side_listener(listener, LIMITS, "console", move |request| {
            let console = console.clone();
            async move { console.handle(request).await }
        })
        .await;
        Ok(())
    })
}

/// A request as the handlers see it: its body read, its user known.
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub body: Bytes,
    pub user: User,
}

type Reply = Response<Full<Bytes>>;

impl Console {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Reply {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let reply = self.route(request).await;
        log::info(format_args!(
            "console {} {} {}",
            method,
            path,
            reply.status().as_u16()
        ));
        reply
    }

    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Reply {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let body = match read_body(body).await {
            Ok(body) => body,
            Err(reply) => return *reply,
        };
        if !path.starts_with("/api/") {
            let console = self.clone();
            return blocking(move || page::serve(&console, &parts, &body)).await;
        }
        let console = self.clone();
        // The store is read and written synchronously (file locks, the
        // blocking etcd client): on a blocking thread.
        blocking(move || {
            let user = match console.authenticate(&parts) {
                Ok(user) => user,
                Err(reply) => return *reply,
            };
            let call = Call {
                method: parts.method.clone(),
                path,
                body,
                user,
            };
            api::handle(&console, &call)
        })
        .await
    }

    /// The user behind a request: by `Authorization: Bearer sgu_…`, or by
    /// the session cookie, then (for anything but a read) the CSRF token the
    /// page was given in `X-CSRF-Token`.
    fn authenticate(&self, parts: &http::request::Parts) -> Result<User, Box<Reply>> {
        let stored = users::load(&self.store).map_err(|e| Box::new(store_failed(&e)))?;
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let secret = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            return users::authenticate(&stored, secret.trim()).ok_or_else(|| {
                refuse(&GateError::new(
                    ErrorCode::InvalidCredentials,
                    "the login secret is malformed, unknown or revoked",
                ))
            });
        }
        let Some(session) = self.sessions.find(&parts.headers) else {
            return Err(refuse(&GateError::new(
                ErrorCode::Unauthorized,
                "log in, or send a user's login secret: Authorization: Bearer sgu_…",
            )));
        };
        let writes = !matches!(parts.method, Method::GET | Method::HEAD);
        if writes && !session.csrf_matches(&parts.headers) {
            return Err(refuse(&GateError::new(
                ErrorCode::Forbidden,
                "a change made with the session cookie needs the page's X-CSRF-Token header",
            )));
        }
        stored
            .into_iter()
            .find(|u| u.name == session.user)
            .ok_or_else(|| {
                self.sessions.end(&parts.headers);
                refuse(&GateError::new(
                    ErrorCode::Unauthorized,
                    "this user no longer exists: the session has ended",
                ))
            })
    }
}

async fn blocking(f: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| internal("the request's handler failed"))
}

async fn read_body(body: Incoming) -> Result<Bytes, Box<Reply>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(refuse(&GateError::new(
            ErrorCode::InvalidRequest,
            "the request body is too large or was cut off",
        ))),
    }
}

/// A reply with `no-store`: nothing of the console belongs in a cache (a
/// one-time secret least of all).
pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

/// The contract's error format (section 6).
pub(crate) fn error(e: &GateError) -> Reply {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    reply(status, "application/json", e.body())
}

fn refuse(e: &GateError) -> Box<Reply> {
    Box::new(error(e))
}

pub(crate) fn internal(message: &str) -> Reply {
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        "application/json",
        sessiongate_core::internal_error_body(message),
    )
}

pub(crate) fn store_failed(e: &anyhow::Error) -> Reply {
    log::error(format_args!("console: the token store failed: {e:#}"));
    internal("the token store could not be read or written; the change was not made")
}

/// `%XX`-decoded text (`+` as a space in a form body), or none if it is
/// badly encoded or not UTF-8: core's decoding of query strings.
pub(crate) fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = sessiongate_core::percent_decode(text, plus_is_space)?;
    String::from_utf8(bytes.into_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c", true).as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a+b%20c", false).as_deref(), Some("a+b c"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }
}
