//! The component's binding of spin-sdk: wasi:http in, `Gate::decide` on a
//! [`Kv`](sessiongate_core::Kv) over `wasi:keyvalue`, the decision out (or on
//! to the sessions service).

use std::cell::RefCell;
use std::rc::Rc;

use sessiongate_core::{Action, Backend, Forward, Gate, Request as GateRequest};
use spin_sdk::http::{EmptyBody, IntoResponse, Request};
use spin_sdk::wasip3::http::types::{ErrorCode, Response as WasiResponse};

use std::hash::BuildHasher as _;

use crate::cas::{CasBucket, CasKv};
use crate::record::Tags;
use crate::{CLIENT_ADDR_HEADER, CONFIG_KEY, is_runtime_header};

/// Bindings of the `host` world of `wit/gate.wit`: the wasi:keyvalue imports
/// are generated from our WIT; wasi:http and wasi:clocks come from spin-sdk's
/// own bindings, so there is one copy of each type.
mod bindings {
    spin_sdk::wit_bindgen::generate!({
        path: "../wit",
        world: "sessiongate:gate/host",
        runtime_path: "spin_sdk::wit_bindgen::rt",
        with: {
            "wasi:http/types@0.3.0": spin_sdk::wasip3::http::types,
            "wasi:http/client@0.3.0": spin_sdk::wasip3::http::client,
            "wasi:clocks/system-clock@0.3.0": spin_sdk::wasip3::clocks::system_clock,
            "wasi:clocks/types@0.3.0": spin_sdk::wasip3::clocks::types,
        },
        // Everything not mapped above (wasi:keyvalue) is generated here.
        generate_all,
    });
}

use bindings::wasi::keyvalue::{atomics, store};

/// The bucket Spin opens for a component granted `key_value_stores = ["default"]`.
const BUCKET: &str = "default";

thread_local! {
    /// The parsed configuration, rebuilt only when the stored bytes change
    /// (hosts that reuse an instance, as wasi:http 0.3 hosts do, parse once).
    static GATE: RefCell<Option<(Vec<u8>, Rc<Gate>)>> = const { RefCell::new(None) };
    /// This instance's write tags, seeded from the host's randomness.
    static TAGS: RefCell<Tags> = RefCell::new(Tags::new(
        std::collections::hash_map::RandomState::new().hash_one(0u8),
    ));
}

fn describe(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no such key-value store".to_owned(),
        store::Error::AccessDenied => "access to the key-value store denied".to_owned(),
        store::Error::Other(message) => message,
    }
}

struct KvBucket<'b>(&'b store::Bucket);

impl CasBucket for KvBucket<'_> {
    type Handle = atomics::Cas;

    fn begin(&mut self, key: &str) -> Result<(atomics::Cas, Option<Vec<u8>>), String> {
        let cas = atomics::Cas::new(self.0, key).map_err(describe)?;
        let value = cas.current().map_err(describe)?;
        Ok((cas, value))
    }

    fn swap(&mut self, handle: atomics::Cas, value: &[u8]) -> Result<bool, String> {
        match atomics::swap(handle, value) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(describe(e)),
        }
    }

    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map_err(describe)
    }

    fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
        atomics::increment(self.0, key, delta).map_err(describe)
    }

    fn delete(&mut self, key: &str) -> Result<(), String> {
        self.0.delete(key).map_err(describe)
    }
}

fn load_gate(bucket: &store::Bucket) -> Result<Rc<Gate>, String> {
    let bytes = bucket
        .get(CONFIG_KEY)
        .map_err(describe)?
        .ok_or_else(|| format!("no configuration under {CONFIG_KEY:?} in the key-value store"))?;
    GATE.with(|cell| {
        if let Some((cached, gate)) = cell.borrow().as_ref()
            && *cached == bytes
        {
            return Ok(gate.clone());
        }
        let gate = Rc::new(Gate::from_json(&bytes).map_err(|e| e.to_string())?);
        *cell.borrow_mut() = Some((bytes, gate.clone()));
        Ok(gate)
    })
}

fn now_ms() -> u64 {
    let now = spin_sdk::wasip3::clocks::system_clock::now();
    let seconds = u64::try_from(now.seconds).unwrap_or(0);
    seconds
        .saturating_mul(1000)
        .saturating_add(u64::from(now.nanoseconds / 1_000_000))
}

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
    let bucket = match store::open(BUCKET) {
        Ok(b) => b,
        Err(e) => {
            return internal_error(&format!("cannot open the key-value store: {}", describe(e)));
        }
    };
    let gate = match load_gate(&bucket) {
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
    let now = now_ms();
    let decision = TAGS.with(|tags| {
        let mut tags = tags.borrow_mut();
        gate.decide(
            &request,
            now,
            &mut CasKv::new(KvBucket(&bucket), now, &mut tags),
        )
    });
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
