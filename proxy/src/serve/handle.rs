//! One request: through the filter's VM (and on to the upstream if it says
//! so) or through the component; and the translation between hyper's
//! requests and responses and the host's header lists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sessiongate_core::{Backend, RATELIMIT_HEADER, RATELIMIT_POLICY_HEADER, is_per_hop};
use sessiongate_etcd::{HttpAnswer, HttpCall};
use sessiongate_spin::CLIENT_ADDR_HEADER;

use super::body::Chunks;
use super::pool::Pool;
use super::{App, Runner};
use crate::log;
use sessiongate_component_host::ComponentHost;
use sessiongate_filter_host::{CallResponse, Callout, HeaderList, LocalReply, RequestPhase};

fn request_headers<B>(req: &Request<B>) -> HeaderList {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| req.headers().get("host").map(|h| h.as_bytes().to_vec()))
        .unwrap_or_default();
    let mut headers = vec![
        (
            ":method".to_owned(),
            req.method().as_str().as_bytes().to_vec(),
        ),
        (":path".to_owned(), path.into_bytes()),
        (":authority".to_owned(), authority),
        (":scheme".to_owned(), b"http".to_vec()),
    ];
    for (name, value) in req.headers() {
        headers.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
    }
    headers
}

/// The filter's status and headers as hyper's response. Each value's bytes
/// become the header's own (`from_maybe_shared`), not a copy.
fn build_response(status: u16, headers: HeaderList, body: Chunks) -> Response<Chunks> {
    let mut response = Response::new(body);
    let Ok(status) = StatusCode::from_u16(status) else {
        return internal_error();
    };
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.reserve(headers.len());
    for (name, value) in headers {
        if is_per_hop(&name) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            header_name(&name),
            HeaderValue::from_maybe_shared(Bytes::from(value)),
        ) else {
            return internal_error();
        };
        map.append(name, value);
    }
    response
}

/// A header's name for hyper. The rate-limit headers, on every answer of
/// the API, are names `http` does not know: parsed, each would be copied
/// into an allocation of its own; named here, they are static.
fn header_name(name: &str) -> Result<HeaderName, hyper::header::InvalidHeaderName> {
    match name {
        RATELIMIT_HEADER => Ok(HeaderName::from_static(RATELIMIT_HEADER)),
        RATELIMIT_POLICY_HEADER => Ok(HeaderName::from_static(RATELIMIT_POLICY_HEADER)),
        _ => HeaderName::from_bytes(name.as_bytes()),
    }
}

fn internal_error() -> Response<Chunks> {
    let reply =
        sessiongate_core::Gate::internal_error_reply("The gate failed to process the request.");
    let mut r = Response::new(Chunks::from(Bytes::from(reply.body.into_string())));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, value);
        }
    }
    r
}

pub(super) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Chunks> {
    let started = Instant::now();
    // Nothing is kept for the log unless it is on.
    let logged = app
        .access_log
        .enabled()
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let (response, credential) = match &app.runner {
        Runner::Filter(pool) => match start_filter(pool, &req, peer) {
            Started::Answered(response, credential) => (response, credential),
            Started::InFilter(waiting) => Box::pin(finish_filter(&app, pool, waiting)).await,
        },
        Runner::Component(host) => (Box::pin(handle_component(host, req, peer)).await, None),
    };
    if let Some(Credential {
        name,
        admitted: true,
    }) = &credential
    {
        app.last_use.admitted(name);
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    app.metrics.responded(status);
    app.metrics.took(elapsed);
    if let Some((method, path)) = logged {
        let credential = credential
            .as_ref()
            .map(|c| String::from_utf8_lossy(&c.name));
        app.access_log.write(
            log::Access {
                method: method.as_str(),
                path: &path,
                status,
                credential: credential.as_deref(),
                latency_us: elapsed.as_micros(),
            }
            .line(),
        );
    }
    response
}

/// One request through the component. The client's address goes in the
/// header Spin uses, appended after the request's own headers as Spin's
/// trigger does: a value the client sent stays first, so the component is
/// tested here against what Spin really hands it (it trusts the last).
async fn handle_component(
    host: &ComponentHost,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Chunks> {
    if let Ok(value) = hyper::header::HeaderValue::from_str(&peer.to_string()) {
        req.headers_mut().append(CLIENT_ADDR_HEADER, value);
    }
    match host.handle(req).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let mut out = Response::new(Chunks::from(body));
            *out.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if !is_per_hop(name.as_str()) {
                    out.headers_mut().append(name, value.clone());
                }
            }
            out
        }
        Err(e) => {
            log::error(format_args!("{e:#}"));
            internal_error()
        }
    }
}

/// The credential the filter authenticated: its name, which it set on the
/// stream (for the access log), and whether it was admitted (for its last
/// use): the filter let the request through, or answered it from the stub.
struct Credential {
    name: Vec<u8>,
    admitted: bool,
}

fn credential(mut props: HashMap<String, Vec<u8>>, admitted: bool) -> Option<Credential> {
    let name = props.remove(sessiongate_core::CREDENTIAL_PROPERTY)?;
    Some(Credential { name, admitted })
}

/// Where the request phase left a request.
enum Started {
    Answered(Response<Chunks>, Option<Credential>),
    InFilter(InFilter),
}

/// A request the filter has not finished with: paused on its callouts, or
/// let through to the upstream.
struct InFilter {
    method: hyper::Method,
    vm: usize,
    phase: Result<RequestPhase>,
}

/// One request's request phase through a filter VM: answered at once (a
/// local reply, as every 429 is), or waiting on the network. Not async, so
/// the future hyper moves into place for every request stays small; what
/// waits on the network is boxed in [`finish_filter`], so a 429 moves none
/// of it.
fn start_filter(pool: &Pool, req: &Request<Incoming>, peer: SocketAddr) -> Started {
    let headers = request_headers(req);
    let vm = pool.pick();
    match pool.with_vm(vm, |v| v.on_request(headers, Some(peer))) {
        Ok(RequestPhase::Reply(reply, props)) => {
            let (response, credential) = local_reply(reply, props);
            Started::Answered(response, credential)
        }
        phase => Started::InFilter(InFilter {
            method: req.method().clone(),
            vm,
            phase,
        }),
    }
}

/// A reply of the filter's own: after authentication every refusal is an
/// error status, and an admission answered by the stub a success.
fn local_reply(
    reply: LocalReply,
    props: HashMap<String, Vec<u8>>,
) -> (Response<Chunks>, Option<Credential>) {
    let admitted = reply.status < 400;
    (
        build_response(reply.status, reply.headers, Bytes::from(reply.body).into()),
        credential(props, admitted),
    )
}

/// The rest of a request the filter paused or let through: its callouts
/// sent and answered, or the upstream's response through the filter's
/// response phase.
async fn finish_filter(
    app: &App,
    pool: &Pool,
    waiting: InFilter,
) -> (Response<Chunks>, Option<Credential>) {
    let InFilter {
        method,
        vm,
        mut phase,
    } = waiting;
    // A paused request: its calls sent (the VM free for other requests
    // meanwhile, as an Envoy worker is), each answer handed back, until the
    // filter answers or lets the request go on.
    while let Ok(RequestPhase::Paused { context, calls }) = phase {
        if calls.is_empty() {
            // Parked: another callback answers it (a group commit's).
            phase = pool.parked_answer(vm, context).await;
            continue;
        }
        phase = Err(anyhow!("the filter paused on no call"));
        for call in calls {
            let response = send_callout(app, &call).await;
            phase = pool.with_vm(vm, |v| v.on_call_response(context, call.token, response));
            if !matches!(phase, Ok(RequestPhase::Paused { .. })) {
                break;
            }
        }
    }
    match phase {
        Ok(RequestPhase::Reply(reply, props)) => local_reply(reply, props),
        Ok(RequestPhase::Continue { context, headers }) => {
            let upstream = forward(app, &method, &headers).await;
            let (status, response_headers, body) = match upstream {
                Ok(r) => r,
                Err(e) => {
                    log::warn(format_args!("upstream unavailable: {e:#}"));
                    // The filter's response phase adds the rate-limit headers.
                    let reply = sessiongate_core::Gate::upstream_unavailable(None);
                    let headers = reply.headers.iter();
                    let headers = headers.map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()));
                    (
                        reply.status,
                        headers.collect(),
                        Bytes::from(reply.body.into_string()).into(),
                    )
                }
            };
            let mut with_status = vec![(":status".to_owned(), status.to_string().into_bytes())];
            with_status.extend(response_headers);
            match pool.with_vm(vm, |v| v.on_response(context, with_status)) {
                Ok((headers, props)) => (
                    build_response(status, headers, body),
                    credential(props, true),
                ),
                Err(_) => (internal_error(), None),
            }
        }
        Ok(RequestPhase::Paused { .. }) => (internal_error(), None),
        Err(e) => {
            log::error(format_args!("the filter could not finish a request: {e:#}"));
            (internal_error(), None)
        }
    }
}

thread_local! {
    /// The upstream client of this worker's runtime: its pooled
    /// connections live on the thread that made them, so a request never
    /// waits on another worker's reactor (one client shared by every worker
    /// would make each pooled request wake another thread).
    static UPSTREAM: Client<HttpConnector, Full<Bytes>> = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    };
}

/// Sends the rewritten request to the upstream and reads its whole response
/// (its body in the chunks it arrived in).
async fn forward(
    app: &App,
    method: &hyper::Method,
    headers: &HeaderList,
) -> Result<(u16, HeaderList, Chunks)> {
    let live = app.live();
    let Backend::Upstream(Some(base)) = &live.backend else {
        bail!("the filter forwarded but no upstream URL is configured");
    };
    let path = headers
        .iter()
        .find(|(n, _)| n == ":path")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "/".into());
    let uri: hyper::Uri = format!("{base}{path}").parse()?;
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in headers {
        // The filter rewrote the request; what belongs to this hop stays.
        if is_per_hop(name) || name == "host" {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let request = builder.body(Full::new(Bytes::new()))?;
    let exchange = async {
        let response = UPSTREAM.with(Client::clone).request(request).await?;
        let status = response.status().as_u16();
        let headers: HeaderList = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let mut incoming = response.into_body();
        let mut body = Chunks::default();
        while let Some(frame) = incoming.frame().await {
            if let Ok(chunk) = frame?.into_data() {
                body.push(chunk);
            }
        }
        anyhow::Ok((status, headers, body))
    };
    tokio::time::timeout(live.upstream_timeout, exchange)
        .await
        .map_err(|_| anyhow!("timed out after {:?}", live.upstream_timeout))?
}

/// Sends a filter's callout to its cluster: the answer, or `None` when it
/// failed (no such cluster, no member answered), as Envoy delivers it.
pub(super) async fn send_callout(app: &App, call: &Callout) -> Option<CallResponse> {
    let cluster = app.clusters.iter().find(|c| c.name() == call.cluster)?;
    let http = http_call(call)?;
    cluster.send(&http).await.map(call_response)
}

/// A filter's callout as the cluster sends it (`None` without `:method`
/// or `:path`: a call the filter could not have meant, failed as Envoy
/// fails it).
fn http_call(call: &Callout) -> Option<HttpCall> {
    let pseudo = |name: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    Some(HttpCall {
        method: pseudo(":method")?,
        path: pseudo(":path")?,
        headers: call
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .cloned()
            .collect(),
        body: call.body.clone(),
        timeout_ms: call.timeout_ms,
    })
}

/// A member's answer as the filter reads it: the status as `:status`.
fn call_response(answer: HttpAnswer) -> CallResponse {
    let mut headers = vec![(":status".to_owned(), answer.status.to_string().into_bytes())];
    headers.extend(answer.headers);
    CallResponse {
        headers,
        body: answer.body,
        trailers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_headers_are_the_parsed_ones() {
        for name in [
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "content-type",
            "x-other",
        ] {
            assert_eq!(
                header_name(name).unwrap(),
                HeaderName::from_bytes(name.as_bytes()).unwrap()
            );
        }
        assert!(header_name("bad name").is_err());
    }
}
