//! The `worker` crate binding: the fetch handler and the `GlobalLimiter`
//! Durable Object. No contract rule lives here: core decides, this file
//! carries requests to it, each step it needs to the object, and its
//! decisions back.

use std::cell::RefCell;
use std::rc::Rc;

use sessiongate_core::{
    Action, Answer, Backend, Decision, Forward, Gate, KvError, Progress, Request as GateRequest,
    hash_secret, parse_hash_hex, split_joined,
};
use worker::wasm_bindgen::JsValue;
use worker::{
    Context, Date, DurableObject, Env, Fetch, Headers, Method, Request, RequestInit, Response,
    Result, State, console_error, durable_object, event,
};

use crate::shared_object::{Call, Dirty, Said, SharedObject};

/// The gate's configuration JSON (`sessiongate worker-config`): a secret or a var.
const CONFIG_BINDING: &str = "SESSIONGATE_CONFIG";
/// SHA-256 (hex) of the admin secret that may revoke credentials.
const ADMIN_BINDING: &str = "SESSIONGATE_ADMIN_HASH";
const LIMITER_BINDING: &str = "LIMITER";
/// The one instance every location talks to.
const LIMITER_NAME: &str = "global";
const REVOKE_PREFIX: &str = "/__sessiongate/revoke/";

thread_local! {
    /// The parsed configuration, rebuilt only when the binding's text changes.
    static GATE: RefCell<Option<(String, Rc<Gate>)>> = const { RefCell::new(None) };
}

fn binding_text(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
}

fn load_gate(env: &Env) -> std::result::Result<Rc<Gate>, String> {
    let text = binding_text(env, CONFIG_BINDING)
        .ok_or_else(|| format!("the {CONFIG_BINDING} binding is missing"))?;
    GATE.with(|cell| {
        if let Some((cached, gate)) = cell.borrow().as_ref()
            && *cached == text
        {
            return Ok(gate.clone());
        }
        let gate = Gate::from_json(text.as_bytes()).map_err(|e| e.to_string())?;
        // The object's revocation list refuses a deleted credential on the
        // next request, while the configuration still holds it.
        let gate = Rc::new(gate.with_revocation_list());
        *cell.borrow_mut() = Some((text, gate.clone()));
        Ok(gate)
    })
}

fn respond(status: u16, headers: &[(&str, impl AsRef<str>)], body: String) -> Result<Response> {
    let h = Headers::new();
    for (name, value) in headers {
        h.append(name, value.as_ref())?;
    }
    Ok(Response::from_bytes(body.into_bytes())?
        .with_status(status)
        .with_headers(h))
}

fn internal_error(message: &str) -> Result<Response> {
    console_error!("sessiongate: {message}");
    let reply = Gate::internal_error_reply("The gate is misconfigured.");
    respond(reply.status, &reply.headers, reply.body.into_string())
}

async fn call_object(env: &Env, call: &Call) -> std::result::Result<Said, String> {
    let stub = env
        .durable_object(LIMITER_BINDING)
        .and_then(|ns| ns.id_from_name(LIMITER_NAME)?.get_stub())
        .map_err(|e| format!("no limiter object: {e}"))?;
    let body = serde_json::to_string(call).map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(JsValue::from_str(&body)));
    let req =
        Request::new_with_init("https://limiter.internal/", &init).map_err(|e| e.to_string())?;
    let mut resp = stub
        .fetch_with_request(req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status_code() != 200 {
        return Err(format!(
            "the limiter object answered {}",
            resp.status_code()
        ));
    }
    resp.json::<Said>().await.map_err(|e| e.to_string())
}

/// The driver: every step the decision needs is one call to the object.
async fn decide<'g>(env: &Env, gate: &'g Gate, request: &GateRequest<'_>) -> Decision<'g> {
    let mut progress = gate.start(request, Date::now().as_millis());
    loop {
        let pending = match progress {
            Progress::Done(decision) => return decision,
            Progress::Pending(pending) => pending,
        };
        let said = call_object(env, &Call::for_need(pending.need())).await;
        progress = match &said {
            Ok(said) => pending.resume(said.answer()),
            Err(e) => {
                console_error!("sessiongate: shared state unavailable: {e}");
                pending.resume(Answer::Failed(KvError(e.clone())))
            }
        };
    }
}

async fn forward(req: &Request, gate: &Gate, target: &str, f: Forward<'_>) -> Result<Response> {
    let Backend::Upstream(Some(origin)) = gate.backend() else {
        return internal_error("backend \"upstream\" needs an origin URL in a Worker");
    };
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        if Forward::keeps_request_header(&name) {
            headers.append(&name, &value)?;
        }
    }
    for (name, value) in &f.add_request_headers {
        headers.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let upstream = Request::new_with_init(&format!("{origin}{target}"), &init)?;
    match Fetch::Request(upstream).send().await {
        Ok(resp) => {
            let headers = resp.headers().clone();
            for (name, value) in &f.response_headers {
                headers.set(name, value)?;
            }
            Ok(resp.with_headers(headers))
        }
        Err(e) => {
            console_error!("sessiongate: upstream unavailable: {e}");
            let reply = Gate::upstream_unavailable(Some(f));
            respond(reply.status, &reply.headers, reply.body.into_string())
        }
    }
}

/// `POST /__sessiongate/revoke/{name}` with the admin secret: revokes at once.
/// Anything not exactly that, with the right secret, is left to the contract
/// (and so is a 404).
async fn admin(req: &Request, env: &Env, gate: &Gate, path: &str) -> Option<Result<Response>> {
    let name = path.strip_prefix(REVOKE_PREFIX)?;
    let expected = parse_hash_hex(binding_text(env, ADMIN_BINDING)?.trim())?;
    let auth = req.headers().get("authorization").ok()??;
    let (scheme, secret) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer")
        || hash_secret(secret.trim().as_bytes()) != expected
        || req.method() != Method::Post
    {
        return None;
    }
    let json = [("content-type", "application/json".to_owned())];
    let Some(record) = gate.credentials().iter().find(|r| r.name == name) else {
        let body = sessiongate_core::error_body(
            sessiongate_core::ErrorCode::NotFound,
            "No credential has that name.",
        );
        return Some(respond(404, &json, body));
    };
    let call = Call::Revoke {
        hash: record.hash_hex(),
    };
    Some(match call_object(env, &call).await {
        Ok(_) => respond(
            200,
            &json,
            serde_json::json!({"revoked": record.name}).to_string(),
        ),
        Err(e) => internal_error(&format!("revocation failed: {e}")),
    })
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let gate = match load_gate(&env) {
        Ok(g) => g,
        Err(e) => return internal_error(&format!("invalid configuration, refusing requests: {e}")),
    };
    let url = req.url()?;
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    if let Some(resp) = admin(&req, &env, &gate, url.path()).await {
        return resp;
    }
    let joined = req.headers().get("authorization")?;
    let authorization = joined
        .as_deref()
        .map(|v| split_joined(v.as_bytes()))
        .unwrap_or_default();
    let method = req.method().to_string();
    // Cloudflare sets CF-Connecting-IP on every request (a client cannot).
    let client = req.headers().get("cf-connecting-ip")?;
    let request = GateRequest {
        method: &method,
        target: &target,
        authorization: &authorization,
        client: client.as_deref(),
    };
    let decision = decide(&env, &gate, &request).await;
    match decision.action {
        Action::Reply(reply) => respond(reply.status, &reply.headers, reply.body.into_string()),
        Action::Forward(f) => forward(&req, &gate, &target, f).await,
    }
}

/// The gate's shared state and revocation list: one named instance for the
/// world. Each key is loaded from storage on its first call and written back
/// on every change; the output gate holds the answer until that write is
/// durable.
#[durable_object]
pub struct GlobalLimiter {
    state: State,
    inner: RefCell<Option<(SharedObject, std::collections::BTreeSet<String>)>>,
}

/// Where the revocation list is persisted.
const REVOKED_KEY: &str = "revoked";
const LEGACY_LIMITER_KEY: &str = "limiter";

impl DurableObject for GlobalLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
            inner: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let call: Call = match req.json().await {
            Ok(c) => c,
            Err(e) => return Response::error(format!("bad limiter call: {e}"), 400),
        };
        let storage = self.state.storage();
        if self.inner.borrow().is_none() {
            // Storage calls hold the input gate: no other call runs meanwhile.
            let revoked: Option<Vec<String>> = storage.get(REVOKED_KEY).await?;
            // Versions in microseconds of this start: above any an earlier
            // instance handed out.
            let mut object = SharedObject::new(Date::now().as_millis().saturating_mul(1000));
            object.revoked = revoked.unwrap_or_default().into_iter().collect();
            *self.inner.borrow_mut() = Some((object, Default::default()));
        }
        if let Some(key) = call.key() {
            let loaded = self
                .inner
                .borrow()
                .as_ref()
                .is_some_and(|(_, loaded)| loaded.contains(key));
            if !loaded {
                let mut value: Option<Vec<u8>> = storage.get(key).await?;
                if value.is_none() && key == sessiongate_core::LIMITER_KEY {
                    // Where the limiter's log was kept before the object
                    // stored every key under its own name.
                    value = storage.get(LEGACY_LIMITER_KEY).await?;
                }
                if let Some((object, loaded)) = self.inner.borrow_mut().as_mut() {
                    if let Some(value) = value {
                        object.kv.put(key, value);
                    }
                    loaded.insert(key.to_owned());
                }
            }
        }
        // What to write back, taken while the state is borrowed; written
        // after, since a borrow cannot be held across an await.
        let (said, persist) = {
            let mut inner = self.inner.borrow_mut();
            let Some((object, _)) = inner.as_mut() else {
                return Response::error("shared state missing", 500);
            };
            let (said, dirty) = match object.apply(&call) {
                Ok(r) => r,
                Err(e) => return Response::error(e.to_string(), 500),
            };
            let persist = match dirty {
                Dirty::Nothing => Persist::Nothing,
                Dirty::Key(key) => match object.kv.value(&key) {
                    Some(value) => Persist::Key(key, value.to_vec()),
                    None => Persist::Nothing,
                },
                Dirty::Revoked => Persist::Revoked(object.revoked.iter().cloned().collect()),
            };
            (said, persist)
        };
        match persist {
            Persist::Nothing => {}
            Persist::Key(key, value) => storage.put(&key, value).await?,
            Persist::Revoked(list) => storage.put(REVOKED_KEY, list).await?,
        }
        Response::from_json(&said)
    }
}

enum Persist {
    Nothing,
    Key(String, Vec<u8>),
    Revoked(Vec<String>),
}
