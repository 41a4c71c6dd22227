//! The `worker` crate binding: the fetch handler and the `GlobalLimiter`
//! Durable Object. No contract rule lives here: core decides, this file
//! carries requests to it and its decisions back.

use std::cell::RefCell;
use std::rc::Rc;

use sessiongate_core::credential::{hash_secret, parse_hash_hex, split_joined};
use sessiongate_core::limiter::{LIMITER_KEY, LimiterError, StoreError};
use sessiongate_core::{
    Action, Backend, Decision, Forward, Gate, Prepared, Request as GateRequest,
};
use worker::wasm_bindgen::JsValue;
use worker::{
    Context, Date, DurableObject, Env, Fetch, Headers, Method, Request, RequestInit, Response,
    Result, State, console_error, durable_object, event,
};

use crate::limiter_object::{Answer, Call, Dirty, LimiterObject};

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
        let gate = Rc::new(Gate::from_json(text.as_bytes())?);
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

async fn call_limiter(env: &Env, call: &Call) -> std::result::Result<Answer, String> {
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
    resp.json::<Answer>().await.map_err(|e| e.to_string())
}

/// The reply for a credential the limiter object says is revoked.
fn revoked<'g>(gate: &'g Gate, request: &GateRequest<'_>, answer: &Answer) -> Decision<'g> {
    match gate.prepare(request, |_| true, None) {
        Prepared::Reply {
            mut decision,
            wants_limit_state,
            ..
        } => {
            if wants_limit_state {
                gate.add_limit_state(&mut decision, answer.verdict.as_ref());
            }
            decision
        }
        Prepared::Admit(_) => gate.limiter_unavailable(None),
    }
}

/// The failed-credential guard's hold on this client, from the object. A
/// failed call holds nobody: the guard is a brake, the limiter is the lock.
async fn guard_blocked(env: &Env, gate: &Gate, request: &GateRequest<'_>) -> Option<u64> {
    let client = request.client?;
    if !gate.guard().enabled() || request.authorization.is_empty() {
        return None;
    }
    let call = Call::GuardCheck {
        client: sessiongate_core::guard::client_of(client).to_owned(),
        guard: *gate.guard(),
    };
    call_limiter(env, &call).await.ok()?.blocked
}

async fn decide<'g>(env: &Env, gate: &'g Gate, request: &GateRequest<'_>) -> Decision<'g> {
    let blocked = guard_blocked(env, gate, request).await;
    let decision = decide_unguarded(env, gate, request, blocked).await;
    if let (
        Some(client),
        sessiongate_core::Outcome::Denied(sessiongate_core::ErrorCode::InvalidCredentials),
    ) = (request.client, decision.outcome)
        && gate.guard().enabled()
    {
        let call = Call::GuardFail {
            client: sessiongate_core::guard::client_of(client).to_owned(),
            guard: *gate.guard(),
        };
        if let Err(e) = call_limiter(env, &call).await {
            console_error!("sessiongate: guard not updated: {e}");
        }
    }
    decision
}

async fn decide_unguarded<'g>(
    env: &Env,
    gate: &'g Gate,
    request: &GateRequest<'_>,
    blocked: Option<u64>,
) -> Decision<'g> {
    let limit = gate.limit();
    match gate.prepare(request, |_| false, blocked) {
        Prepared::Admit(admission) => {
            let call = Call::Acquire {
                hash: admission.credential().hash_hex(),
                requests: limit.requests,
                window_ms: limit.window_ms,
            };
            match call_limiter(env, &call).await {
                Ok(answer) if answer.revoked => revoked(gate, request, &answer),
                Ok(Answer {
                    verdict: Some(v), ..
                }) => gate.complete(admission, Ok(v)),
                Ok(_) => gate.complete(admission, Err(LimiterError::Corrupt)),
                Err(e) => {
                    console_error!("sessiongate: limiter unavailable: {e}");
                    gate.complete(admission, Err(LimiterError::Store(StoreError(e))))
                }
            }
        }
        Prepared::Reply {
            mut decision,
            wants_limit_state,
            authenticated,
        } => {
            let authenticated = authenticated.map(|r| r.hash_hex());
            if authenticated.is_none() && !wants_limit_state {
                return decision;
            }
            let call = Call::Check {
                hash: authenticated.clone(),
                state: wants_limit_state.then_some((limit.requests, limit.window_ms)),
            };
            match call_limiter(env, &call).await {
                Ok(answer) if answer.revoked => revoked(gate, request, &answer),
                Ok(answer) => {
                    gate.add_limit_state(&mut decision, answer.verdict.as_ref());
                    decision
                }
                // Without the object a revocation cannot be checked: fail closed
                // for authenticated answers unless fail-open was chosen.
                Err(e) if authenticated.is_some() && !gate.fail_open() => {
                    console_error!("sessiongate: limiter unavailable: {e}");
                    gate.limiter_unavailable(decision.credential)
                }
                Err(_) => decision,
            }
        }
    }
}

async fn forward(req: &Request, gate: &Gate, target: &str, f: Forward<'_>) -> Result<Response> {
    let Backend::Upstream(Some(origin)) = gate.backend() else {
        return internal_error("backend \"upstream\" needs an origin URL in a Worker");
    };
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        if !f.remove_request_headers.contains(&name.as_str()) {
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
            let reply = gate.upstream_failed(f);
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
        let body = sessiongate_core::error::error_body(
            sessiongate_core::ErrorCode::NotFound,
            "No credential has that name.",
        );
        return Some(respond(404, &json, body));
    };
    let call = Call::Revoke {
        hash: record.hash_hex(),
    };
    Some(match call_limiter(env, &call).await {
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

/// The global limiter and revocation list: one named instance for the world.
#[durable_object]
pub struct GlobalLimiter {
    state: State,
    inner: RefCell<Option<LimiterObject>>,
}

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
            let value: Option<Vec<u8>> = storage.get("limiter").await?;
            let revoked: Option<Vec<String>> = storage.get("revoked").await?;
            let mut object = LimiterObject::default();
            if let Some(value) = value {
                object.limiter.load(LIMITER_KEY, value);
            }
            object.revoked = revoked.unwrap_or_default().into_iter().collect();
            *self.inner.borrow_mut() = Some(object);
        }
        let now = Date::now().as_millis();
        let (answer, dirty, snapshot) = {
            let mut inner = self.inner.borrow_mut();
            let Some(object) = inner.as_mut() else {
                return Response::error("limiter state missing", 500);
            };
            let (answer, dirty) = match object.apply(&call, now) {
                Ok(r) => r,
                Err(e) => return Response::error(e, 500),
            };
            (answer, dirty, object.clone())
        };
        // The output gate holds the answer until the write is durable.
        match dirty {
            Dirty::Nothing => {}
            Dirty::Limiter => {
                let value = snapshot
                    .limiter
                    .value(LIMITER_KEY)
                    .unwrap_or_default()
                    .to_vec();
                storage.put("limiter", value).await?;
            }
            Dirty::Revoked => {
                let list: Vec<String> = snapshot.revoked.into_iter().collect();
                storage.put("revoked", list).await?;
            }
        }
        Response::from_json(&answer)
    }
}
