//! wasi:http 0.2 in and out. Requests and responses stay in wasi:http's own
//! types, whose header lists keep every value of a repeated header (two
//! `Authorization` headers are the gate's to refuse, and an upstream's
//! repeated `Set-Cookie` is relayed whole).

use sessiongate_core::{Action, Backend, Forward, Gate, Reply, Request as GateRequest, is_per_hop};
use sessiongate_spin::kv::Bucket;
use sessiongate_spin::{CLIENT_ADDR_HEADER, client, is_runtime_header};
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, Method, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

/// An answer before it is written: status, headers, body.
struct Outgoing {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Outgoing {
    fn reply(reply: Reply<'_>) -> Outgoing {
        Outgoing {
            status: reply.status,
            headers: reply
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: reply.body.into_string().into_bytes(),
        }
    }

    fn internal_error(message: &str) -> Outgoing {
        eprintln!("sessiongate: {message}");
        Outgoing::reply(Gate::internal_error_reply("The gate is misconfigured."))
    }
}

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let answer = answer(&req).await;
    let response = match Fields::from_list(&answer.headers) {
        Ok(headers) => OutgoingResponse::new(headers),
        Err(e) => {
            eprintln!("sessiongate: bad response headers: {e:?}");
            OutgoingResponse::new(Fields::new())
        }
    };
    if response.set_status_code(answer.status).is_err() {
        eprintln!("sessiongate: bad status {}", answer.status);
    }
    if let Err(e) = out.set_with_body(response, answer.body).await {
        eprintln!("sessiongate: writing the response: {e:?}");
    }
}

async fn answer(req: &IncomingRequest) -> Outgoing {
    let bucket = match Bucket::open() {
        Ok(b) => b,
        Err(e) => return Outgoing::internal_error(&e),
    };
    let gate = match bucket.gate() {
        Ok(g) => g,
        Err(e) => {
            return Outgoing::internal_error(&format!(
                "invalid configuration, refusing requests: {e}"
            ));
        }
    };
    let target = req.path_with_query().unwrap_or_else(|| "/".to_owned());
    let headers = req.headers().entries();
    let values = |wanted: &'static str| {
        headers
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.as_slice())
    };
    let authorization: Vec<&[u8]> = values("authorization").collect();
    let client = client::runtime_client_addr(values(CLIENT_ADDR_HEADER));
    let method = req.method().to_string();
    let request = GateRequest {
        method: &method,
        target: &target,
        authorization: &authorization,
        client,
    };
    let decision = bucket.decide(&gate, &request);
    match decision.action {
        Action::Reply(reply) => Outgoing::reply(reply),
        Action::Forward(f) => forward(&headers, &gate, &target, f).await,
    }
}

/// Sends the admitted request to the sessions service over
/// `wasi:http/outgoing-handler` and relays its answer with the rate-limit
/// headers added.
async fn forward(
    headers: &[(String, Vec<u8>)],
    gate: &Gate,
    target: &str,
    f: Forward<'_>,
) -> Outgoing {
    let Backend::Upstream(Some(origin)) = gate.backend() else {
        return Outgoing::internal_error("backend \"upstream\" needs an origin URL in a component");
    };
    let url = format!("{origin}{target}");
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Outgoing::internal_error(&format!("bad upstream URL {url:?}"));
    };
    let mut sent: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            Forward::keeps_request_header(&name) && !is_runtime_header(&name)
        })
        .cloned()
        .collect();
    // Replaces any a client sent: the upstream trusts these.
    sent.retain(|(name, _)| {
        !f.add_request_headers
            .iter()
            .any(|(added, _)| name.eq_ignore_ascii_case(added))
    });
    sent.extend(
        f.add_request_headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    let request = match Fields::from_list(&sent) {
        Ok(fields) => OutgoingRequest::new(fields),
        Err(e) => return Outgoing::internal_error(&format!("bad upstream headers: {e:?}")),
    };
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let path = uri.path_and_query().map(|p| p.as_str());
    if request.set_method(&Method::Get).is_err()
        || request.set_scheme(Some(&scheme)).is_err()
        || request
            .set_authority(uri.authority().map(|a| a.as_str()))
            .is_err()
        || request.set_path_with_query(path).is_err()
    {
        return Outgoing::internal_error(&format!("cannot address the upstream at {url:?}"));
    }
    let relayed = match spin_sdk::http::send::<_, IncomingResponse>(request).await {
        Ok(response) => {
            let status = response.status();
            let mut headers = response.headers().entries();
            match response.into_body().await {
                Ok(body) => Some((status, std::mem::take(&mut headers), body)),
                Err(e) => {
                    eprintln!("sessiongate: upstream body: {e:?}");
                    None
                }
            }
        }
        Err(e) => {
            eprintln!("sessiongate: upstream unavailable: {e:?}");
            None
        }
    };
    let Some((status, mut headers, body)) = relayed else {
        return Outgoing::reply(Gate::upstream_unavailable(Some(f)));
    };
    // One hop's headers stay on it (wasi:http refuses them in a response).
    headers.retain(|(name, _)| {
        !is_per_hop(&name.to_ascii_lowercase())
            && !f
                .response_headers
                .iter()
                .any(|(ours, _)| name.eq_ignore_ascii_case(ours))
    });
    headers.extend(
        f.response_headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    Outgoing {
        status,
        headers,
        body,
    }
}
