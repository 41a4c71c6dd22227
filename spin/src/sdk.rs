//! The wasi:http 0.3 build (spin-sdk 7): the request in, the decision on
//! the key-value bucket ([`crate::kv`]), the answer out (or on to the
//! sessions service over `wasi:http/client`).

use sessiongate_core::{Action, Backend, Forward, Gate, Request as GateRequest};
use spin_sdk::http::{EmptyBody, IntoResponse, Request};
use spin_sdk::wasip3::http::types::{ErrorCode, Response as WasiResponse};

use crate::kv::Bucket;
use crate::{CLIENT_ADDR_HEADER, is_runtime_header};

type Answer = Result<WasiResponse, ErrorCode>;

fn respond(status: u16, headers: &[(&str, impl AsRef<str>)], body: String) -> Answer {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_ref());
    }
    match builder.body(body) {
        Ok(response) => response.into_response(),
        Err(e) => Err(ErrorCode::InternalError(Some(e.to_string()))),
    }
}

fn internal_error(message: &str) -> Answer {
    eprintln!("sessiongate: {message}");
    let reply = Gate::internal_error_reply("The gate is misconfigured.");
    respond(reply.status, &reply.headers, reply.body.into_string())
}

#[spin_sdk::http_service]
async fn handle(req: Request) -> Answer {
    let bucket = match Bucket::open() {
        Ok(b) => b,
        Err(e) => return internal_error(&e),
    };
    let gate = match bucket.gate() {
        Ok(g) => g,
        Err(e) => return internal_error(&format!("invalid configuration, refusing requests: {e}")),
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let authorization: Vec<&[u8]> = req
        .headers()
        .get_all("authorization")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let client = crate::client::runtime_client_addr(
        req.headers()
            .get_all(CLIENT_ADDR_HEADER)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let request = GateRequest {
        method: req.method().as_str(),
        target: &target,
        authorization: &authorization,
        client,
    };
    let decision = bucket.decide(&gate, &request);
    match decision.action {
        Action::Reply(reply) => respond(reply.status, &reply.headers, reply.body.into_string()),
        Action::Forward(f) => forward(&req, &gate, &target, f).await,
    }
}

/// Sends the admitted request to the sessions service over `wasi:http/client`
/// and relays its answer with the rate-limit headers added.
async fn forward(req: &Request, gate: &Gate, target: &str, f: Forward<'_>) -> Answer {
    let Backend::Upstream(Some(origin)) = gate.backend() else {
        return internal_error("backend \"upstream\" needs an origin URL in a component");
    };
    let mut builder = http::Request::get(format!("{origin}{target}"));
    for (name, value) in req.headers() {
        let name = name.as_str();
        if Forward::keeps_request_header(name) && !is_runtime_header(name) {
            builder = builder.header(name, value);
        }
    }
    let mut upstream = match builder.body(EmptyBody::new()) {
        Ok(r) => r,
        Err(e) => return internal_error(&format!("cannot build the upstream request: {e}")),
    };
    // Replaces any a client sent: the upstream trusts these.
    for (name, value) in &f.add_request_headers {
        match http::HeaderValue::from_str(value) {
            Ok(value) => {
                upstream.headers_mut().insert(*name, value);
            }
            Err(e) => return internal_error(&format!("bad header {name}: {e}")),
        }
    }
    match spin_sdk::http::send(upstream).await {
        Ok(mut response) => {
            for (name, value) in &f.response_headers {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    response.headers_mut().insert(*name, value);
                }
            }
            response.into_response()
        }
        Err(e) => {
            eprintln!("sessiongate: upstream unavailable: {e:?}");
            let reply = Gate::upstream_unavailable(Some(f));
            respond(reply.status, &reply.headers, reply.body.into_string())
        }
    }
}
