//! The admin listener, off the public port as Envoy's admin is: `GET
//! /metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (it can do its job: credentials loaded, the limiter's store
//! answering). Its connections have their own small cap and timeouts, so a
//! flood of the public port never locks an operator out, nor the reverse.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};
use sessiongate_core::{ErrorCode, LimiterStore, error_body};
use tokio::net::TcpListener;

use super::metrics::Scrape;
use super::{App, Runner};
use crate::connections::{Limits, serve_side_listener};

/// The admin listener's connections: a handful of scrapers and probes.
const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_connections: 64,
    max_per_address: 0,
};

pub(super) async fn bind(addr: &str) -> Result<TcpListener> {
    crate::connections::listen(addr, false)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {addr} for the admin listener (another serve on this machine? \
             give each its own with --admin ADDR, or --admin off)"
            )
        })
}

pub(super) async fn serve(app: Arc<App>, listener: TcpListener) {
    serve_side_listener(listener, LIMITS, "admin", move |req| {
        let app = app.clone();
        async move { route(&app, &req).await }
    })
    .await;
}

async fn route(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return error(
            404,
            ErrorCode::NotFound,
            "The admin listener serves /metrics, /healthz and /readyz.",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = error(
            405,
            ErrorCode::MethodNotAllowed,
            "The admin listener answers GET only.",
        );
        r.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path {
        "/metrics" => respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(&scrape(app)),
        ),
        "/healthz" => respond(
            200,
            "application/json",
            json!({"status": "serving"}).to_string(),
        ),
        _ => {
            let (ready, body) = readiness(app).await;
            respond(
                if ready { 200 } else { 503 },
                "application/json",
                body.to_string(),
            )
        }
    }
}

fn scrape(app: &App) -> Scrape {
    let (filter, component_instances) = match &app.runner {
        Runner::Filter(pool) => (pool.plugin.stats().snapshot(), None),
        Runner::Component(host) => (Vec::new(), Some(host.instances_created())),
    };
    Scrape {
        filter,
        component_instances,
        connections_open: app.admission.open(),
        credentials: app.credential_count(),
        limiter_store_errors: app.limiter_store_errors(),
        last_use_flushes: (
            app.last_use.writes.load(Ordering::Relaxed),
            app.last_use.failures.load(Ordering::Relaxed),
        ),
    }
}

/// Each check, and whether all pass.
async fn readiness(app: &App) -> (bool, Value) {
    let credentials = {
        let loaded = app.store_health.loaded.load(Ordering::Relaxed);
        let error = app
            .store_health
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let store = app.store.location();
        let count = app.credential_count();
        match (loaded, error) {
            (true, None) => check(true, format!("{count} credential(s) from {store}")),
            // Serving the last good set is ready: taking every instance out
            // of rotation for a bad write to the store would be the outage.
            (true, Some(e)) => check(
                true,
                format!(
                    "serving the last good {count} credential(s); {store} could not be reloaded: {e}"
                ),
            ),
            (false, e) => check(
                false,
                format!(
                    "the token store {store} could not be loaded: {}",
                    e.unwrap_or_default()
                ),
            ),
        }
    };
    let limiter = limiter_check(app).await;
    let ready = [&credentials, &limiter]
        .iter()
        .all(|c| c["ok"] == Value::Bool(true));
    (
        ready,
        json!({"ready": ready, "checks": {"credentials": credentials, "limiter": limiter}}),
    )
}

async fn limiter_check(app: &App) -> Value {
    let limiter = app.gate_parts().base.limiter.clone();
    match (limiter, app.clusters.first()) {
        (
            LimiterStore::Etcd {
                key, timeout_ms, ..
            },
            Some(cluster),
        ) => {
            // A linearizable read (etcd's default) needs a quorum: a
            // minority member alone does not answer it.
            let call = sessiongate_etcd::count(&key);
            match cluster.post_json(call.path, call.body, timeout_ms).await {
                Some((200, _)) => check(true, "etcd: a quorum answered".to_owned()),
                Some((status, _)) => check(false, format!("etcd answered {status}")),
                None => check(
                    false,
                    format!("etcd: no quorum answered within {timeout_ms} ms"),
                ),
            }
        }
        _ => match app.shared_data() {
            Some(shared) if shared.answers() => check(true, "shared data answers".to_owned()),
            Some(_) => check(false, "shared data does not answer".to_owned()),
            None => check(false, "no limiter store".to_owned()),
        },
    }
}

fn check(ok: bool, detail: String) -> Value {
    json!({"ok": ok, "detail": detail})
}

fn error(status: u16, code: ErrorCode, message: &str) -> Response<Full<Bytes>> {
    respond(status, "application/json", error_body(code, message))
}

fn respond(status: u16, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}
