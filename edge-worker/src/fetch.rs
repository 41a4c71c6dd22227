//! The Worker's fetch handler (the `worker` crate binding): each request
//! decided by core, the steps it needs on shared state taken by the
//! `GlobalLimiter` object in one call (`object_decision`), the admin API
//! over the object's credential store. No contract rule lives here.

use std::cell::RefCell;
use std::rc::Rc;

use sessiongate_core::{
    Action, Answer, Backend, Decision, DigestFilter, Entry, Forward, Gate, LIMITER_KEY, Need,
    Progress, Request as GateRequest, Version, hash_hex, hash_secret, parse_hash_hex, split_joined,
};
use worker::wasm_bindgen::JsValue;
use worker::{
    Context, Date, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result,
    console_error, event,
};

use crate::credential_store::{Batch, FILTER_TTL_MS, filter_ttl_ms};
use crate::object_decision::{self, DecideCall, DecideReply, deciding_gate};
use crate::shared_object::{Call, ObjectReply};

/// The gate's configuration JSON (`sessiongate worker-config`): a secret or a var.
const CONFIG_BINDING: &str = "SESSIONGATE_CONFIG";
/// Optional: how long the Worker trusts its copy of the stored digests' filter.
const TTL_BINDING: &str = "SESSIONGATE_FILTER_TTL_MS";
/// SHA-256 (hex) of the admin secret that may revoke credentials.
const ADMIN_BINDING: &str = "SESSIONGATE_ADMIN_HASH";
const LIMITER_BINDING: &str = "LIMITER";
/// The one instance every location talks to.
const LIMITER_NAME: &str = "global";
const REVOKE_PREFIX: &str = "/__sessiongate/revoke/";
/// The admin API of the credential store (`sessiongate worker-sync`).
const CREDENTIALS_PATH: &str = "/__sessiongate/credentials";
const STATS_PATH: &str = "/__sessiongate/stats";
const LAST_USED_PATH: &str = "/__sessiongate/last-used";
/// The object's own paths: its limiter calls at `/`, the store's below.
const OBJECT: &str = "https://limiter.internal";

thread_local! {
    /// The parsed configuration, rebuilt only when the binding's text changes.
    static GATE: RefCell<Option<(String, Rc<Gate>)>> = const { RefCell::new(None) };
    /// The stored digests' filter and when it was fetched (ms).
    static FILTER: RefCell<Option<(u64, Rc<DigestFilter>)>> = const { RefCell::new(None) };
    /// The limiter's log as the object's last answer left it: when (ms),
    /// the value (absent: `None`) and its version.
    static LOG: RefCell<Option<LogCopy>> = const { RefCell::new(None) };
}

/// When a copy of the log was taken (ms), its value (absent: `None`), its version.
type LogCopy = (u64, Option<Vec<u8>>, Version);

/// How long this isolate answers a read of the limiter's log from its last
/// copy, deciding without the object. What it saves is the read behind a
/// refusal's `RateLimit` header (a 401 costs no call), whose `remaining`
/// may then miss admissions made elsewhere in the last second, and the call
/// for a 429 while the copy is full (full now too: admissions leave the log
/// only by expiring). An admission is never decided on it: its write goes
/// to the object, which decides again on the log itself.
const LOG_COPY_MS: u64 = 1_000;

fn log_copy(now: u64) -> Option<(Option<Vec<u8>>, Version)> {
    LOG.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(at, _, _)| now.saturating_sub(*at) < LOG_COPY_MS)
            .map(|(_, value, version)| (value.clone(), *version))
    })
}

fn remember_log(now: u64, log: Option<&ObjectReply>) {
    LOG.with(|l| {
        *l.borrow_mut() = match log {
            Some(ObjectReply::Value { value, version }) => Some((now, value.clone(), *version)),
            _ => None,
        }
    });
}

/// As far as the decision goes without the object: its reads of the log
/// answered from this isolate's copy. `None`: it needs the object.
fn decide_locally<'g>(gate: &'g Gate, request: &GateRequest<'_>, now: u64) -> Option<Decision<'g>> {
    let mut progress = gate.start(request, now);
    loop {
        let pending = match progress {
            Progress::Done(decision) => return Some(decision),
            Progress::Pending(pending) => pending,
        };
        let on_log = matches!(pending.need(), Need::Read { key } if key == LIMITER_KEY);
        let (value, version) = log_copy(now).filter(|_| on_log)?;
        let entry = value.as_deref().map(|v| Entry::borrowed(v, version));
        progress = pending.resume(Answer::Value(entry));
        if let Progress::Pending(next) = &progress
            && !matches!(next.need(), Need::Read { .. })
        {
            // A write: the object's to decide.
            return None;
        }
    }
}

pub(crate) fn binding_text(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
}

pub(crate) fn load_gate(env: &Env) -> std::result::Result<Rc<Gate>, String> {
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

/// One request to the object: `POST path` with a JSON body, or `GET`.
async fn object_request(
    env: &Env,
    path: &str,
    body: Option<String>,
) -> std::result::Result<Response, String> {
    let stub = env
        .durable_object(LIMITER_BINDING)
        .and_then(|ns| ns.id_from_name(LIMITER_NAME)?.get_stub())
        .map_err(|e| format!("no limiter object: {e}"))?;
    let mut init = RequestInit::new();
    match body {
        Some(body) => init
            .with_method(Method::Post)
            .with_body(Some(JsValue::from_str(&body))),
        None => init.with_method(Method::Get),
    };
    let req =
        Request::new_with_init(&format!("{OBJECT}{path}"), &init).map_err(|e| e.to_string())?;
    let resp = stub
        .fetch_with_request(req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status_code() != 200 {
        return Err(format!(
            "the limiter object answered {}",
            resp.status_code()
        ));
    }
    Ok(resp)
}

async fn call_object(env: &Env, call: &Call) -> std::result::Result<ObjectReply, String> {
    let body = serde_json::to_string(call).map_err(|e| e.to_string())?;
    let mut resp = object_request(env, "/", Some(body)).await?;
    resp.json::<ObjectReply>().await.map_err(|e| e.to_string())
}

/// How long the filter is trusted: [`FILTER_TTL_MS`] or the binding's.
fn filter_ttl(env: &Env) -> u64 {
    filter_ttl_ms(binding_text(env, TTL_BINDING).as_deref()).unwrap_or_else(|e| {
        console_error!("sessiongate: {e}; using {FILTER_TTL_MS} ms");
        FILTER_TTL_MS
    })
}

/// The stored digests' filter, fetched again once it is older than its
/// lifetime ([`filter_ttl`]). Without one (the object unreachable) every
/// lookup goes to the object, which then fails it.
async fn digest_filter(env: &Env) -> Option<Rc<DigestFilter>> {
    let now = Date::now().as_millis();
    let cached = FILTER.with(|f| f.borrow().clone());
    if let Some((at, filter)) = &cached
        && now.saturating_sub(*at) < filter_ttl(env)
    {
        return Some(filter.clone());
    }
    let fetched = match object_request(env, "/credentials/filter", None).await {
        Ok(mut resp) => resp.bytes().await.ok(),
        Err(e) => {
            console_error!("sessiongate: no credential filter: {e}");
            None
        }
    };
    match fetched.and_then(DigestFilter::from_bytes) {
        Some(filter) => {
            let filter = Rc::new(filter);
            FILTER.with(|f| *f.borrow_mut() = Some((now, filter.clone())));
            Some(filter)
        }
        None => cached.map(|(_, f)| f),
    }
}

/// The digests a request presents that the binding does not hold and the
/// object's store may: a digest the filter rules out costs no call.
async fn candidates(env: &Env, gate: &Gate, authorization: &[&[u8]]) -> Vec<String> {
    let digests = gate.missing_digests(authorization);
    if digests.is_empty() {
        return Vec::new();
    }
    let filter = digest_filter(env).await;
    digests
        .iter()
        .filter(|d| filter.as_ref().is_none_or(|f| f.may_contain(d)))
        .map(hash_hex)
        .collect()
}

async fn call_decide(env: &Env, call: &DecideCall) -> std::result::Result<DecideReply, String> {
    let body = serde_json::to_string(call).map_err(|e| e.to_string())?;
    let mut resp = object_request(env, "/decide", Some(body)).await?;
    resp.json::<DecideReply>().await.map_err(|e| e.to_string())
}

/// Decides `request` and answers it: at once when core decides alone (a
/// known-full window's 429, a route it refuses, a client the guard holds);
/// otherwise with one call to the object, which looks up what the request
/// presents, takes every step of the decision on its state and answers
/// with what it found and every answer it gave, on which the decision is
/// replayed here.
async fn decide_and_answer(
    req: &Request,
    env: &Env,
    gate: &Rc<Gate>,
    request: &GateRequest<'_>,
    target: &str,
) -> Result<Response> {
    let now = Date::now().as_millis();
    let lookup = candidates(env, gate, request.authorization).await;
    if lookup.is_empty() {
        let local = deciding_gate(gate, request.authorization, Vec::new());
        let local = local.as_ref().unwrap_or(gate);
        if let Some(decision) = decide_locally(local, request, now) {
            return answer(req, local, target, decision).await;
        }
    }
    let looked_up = !lookup.is_empty();
    let call = DecideCall::new(request, now, lookup);
    let (records, answers) = match call_decide(env, &call).await {
        Ok(reply) => {
            remember_log(now, reply.log.as_ref());
            (reply.records, reply.answers)
        }
        Err(e) => {
            console_error!("sessiongate: shared state unavailable: {e}");
            if looked_up {
                // Never a 401 for a credential the store was not asked about.
                return answer(req, gate, target, gate.lookup_unavailable()).await;
            }
            // The decision's next step fails: 503, or admitted with fail_open.
            (Vec::new(), Vec::new())
        }
    };
    let deciding = deciding_gate(gate, request.authorization, records);
    let deciding = deciding.as_ref().unwrap_or(gate);
    let decision = object_decision::replay(deciding, request, now, &answers);
    answer(req, deciding, target, decision).await
}

async fn answer(
    req: &Request,
    gate: &Gate,
    target: &str,
    decision: Decision<'_>,
) -> Result<Response> {
    match decision.action {
        Action::Reply(reply) => respond(reply.status, &reply.headers, reply.body.into_string()),
        Action::Forward(f) => forward(req, gate, target, f).await,
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

/// Whether `req` carries the admin secret (`Authorization: Bearer …`
/// whose SHA-256 is `SESSIONGATE_ADMIN_HASH`).
fn is_admin(req: &Request, env: &Env) -> bool {
    let Some(expected) = binding_text(env, ADMIN_BINDING).and_then(|h| parse_hash_hex(h.trim()))
    else {
        return false;
    };
    let Ok(Some(auth)) = req.headers().get("authorization") else {
        return false;
    };
    auth.split_once(' ').is_some_and(|(scheme, secret)| {
        scheme.eq_ignore_ascii_case("bearer") && hash_secret(secret.trim().as_bytes()) == expected
    })
}

/// The admin API, with the admin secret only; anything else is left to the
/// contract (and so is a 404):
/// - `POST /__sessiongate/revoke/{name}`: revokes at once (a credential of
///   the binding through the revocation list, a stored one by deleting it);
/// - `GET /__sessiongate/credentials?after=HASH`: stored digests and
///   fingerprints, a page at a time;
/// - `POST /__sessiongate/credentials`: a [`Batch`] to store and delete;
/// - `GET /__sessiongate/last-used?after=NAME`: each credential's last
///   admitted use, by name, a page at a time;
/// - `GET /__sessiongate/stats`: the object's call count and store size.
async fn admin(
    req: &mut Request,
    env: &Env,
    gate: &Gate,
    url: &worker::Url,
) -> Option<Result<Response>> {
    let path = url.path();
    let known = path.starts_with(REVOKE_PREFIX)
        || [CREDENTIALS_PATH, STATS_PATH, LAST_USED_PATH].contains(&path);
    if !known || !is_admin(req, env) {
        return None;
    }
    let json = [("content-type", "application/json".to_owned())];
    let relay = |result: std::result::Result<Response, String>| match result {
        Ok(resp) => Ok(resp),
        Err(e) => internal_error(&format!("credential store: {e}")),
    };
    match (req.method(), path) {
        (Method::Post, _) if path.starts_with(REVOKE_PREFIX) => {
            let name = path.strip_prefix(REVOKE_PREFIX)?;
            Some(revoke(env, gate, name).await)
        }
        (Method::Get, CREDENTIALS_PATH | LAST_USED_PATH) => {
            let after = url
                .query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let body = serde_json::json!({ "after": after }).to_string();
            let call = if path == CREDENTIALS_PATH {
                "/credentials/list"
            } else {
                "/credentials/last-used"
            };
            Some(relay(object_request(env, call, Some(body)).await))
        }
        (Method::Post, CREDENTIALS_PATH) => {
            let batch: Batch = match req.json().await {
                Ok(b) => b,
                Err(e) => {
                    let body = sessiongate_core::error_body(
                        sessiongate_core::ErrorCode::InvalidRequest,
                        &format!("The body is not a credential batch: {e}"),
                    );
                    return Some(respond(400, &json, body));
                }
            };
            // The revocation list only covers credentials of the binding:
            // what it holds beyond them, the store has caught up with.
            let binding: Vec<String> = gate.credentials().iter().map(|c| c.hash_hex()).collect();
            let body = serde_json::json!({ "batch": batch, "binding": binding }).to_string();
            Some(relay(
                object_request(env, "/credentials/sync", Some(body)).await,
            ))
        }
        (Method::Get, STATS_PATH) => Some(relay(object_request(env, "/stats", None).await)),
        _ => None,
    }
}

async fn revoke(env: &Env, gate: &Gate, name: &str) -> Result<Response> {
    let json = [("content-type", "application/json".to_owned())];
    let revoked = serde_json::json!({ "revoked": name }).to_string();
    if let Some(record) = gate.credentials().iter().find(|r| r.name == name) {
        let call = Call::Revoke {
            hash: record.hash_hex(),
        };
        return match call_object(env, &call).await {
            Ok(_) => respond(200, &json, revoked),
            Err(e) => internal_error(&format!("revocation failed: {e}")),
        };
    }
    let body = serde_json::json!({ "name": name }).to_string();
    match object_request(env, "/credentials/delete-name", Some(body)).await {
        Ok(mut resp) => match resp.json::<serde_json::Value>().await {
            Ok(v) if v.get("deleted") == Some(&serde_json::Value::Bool(true)) => {
                respond(200, &json, revoked)
            }
            _ => respond(
                404,
                &json,
                sessiongate_core::error_body(
                    sessiongate_core::ErrorCode::NotFound,
                    "No credential has that name.",
                ),
            ),
        },
        Err(e) => internal_error(&format!("revocation failed: {e}")),
    }
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let gate = match load_gate(&env) {
        Ok(g) => g,
        Err(e) => return internal_error(&format!("invalid configuration, refusing requests: {e}")),
    };
    let url = req.url()?;
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    if let Some(resp) = admin(&mut req, &env, &gate, &url).await {
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
    decide_and_answer(&req, &env, &gate, &request, &target).await
}
