//! The console's JSON API, `/api/v1/…`: each route checks the rules of
//! contract section 7 (core's [`Manager`]) and makes its change through
//! [`sessiongate_store::manage`], under the store's lock, then appends to the audit log.

use anyhow::Result;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sessiongate_core::{
    CredentialRecord, ErrorCode, GateError, Kind, Level, Manager, Refusal, Sites,
};

use super::{Call, Console, Reply, error, json, store_failed};
use sessiongate_store::audit::{self, Action, Event};
use sessiongate_store::last_use::LastUses;
use sessiongate_store::manage::{self, NewCredential, Problem, listed};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    description: Option<String>,
    sites: Sites,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    description: Option<String>,
    level: Level,
    sites: Sites,
    /// When the key stops being accepted, Unix milliseconds as lists give
    /// `created` (none: never). Tokens take none: section 7 says "no expiry".
    #[serde(default)]
    expires: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyChange {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    level: Option<Level>,
}

pub(super) fn handle(console: &Console, call: &Call) -> Reply {
    let Some(route) = call.path.strip_prefix("/api/v1/") else {
        return not_found();
    };
    let parts: Vec<&str> = route.split('/').collect();
    let manager = call.user.manager();
    let answer = match (&call.method, parts.as_slice()) {
        (&Method::GET, ["me"]) => Ok(me(call)),
        (&Method::GET, ["tokens"]) => list(console, &manager, Kind::Token),
        (&Method::POST, ["tokens"]) => create_token(console, call, &manager),
        (&Method::DELETE, ["tokens", name]) => delete(console, call, &manager, Kind::Token, name),
        (&Method::GET, ["keys"]) => list(console, &manager, Kind::Key),
        (&Method::POST, ["keys"]) => create_key(console, call, &manager),
        (&Method::PATCH, ["keys", name]) => change_key(console, call, &manager, name),
        (&Method::DELETE, ["keys", name]) => delete(console, call, &manager, Kind::Key, name),
        (&Method::GET, ["audit"]) => read_audit(console, &manager),
        (_, ["me" | "tokens" | "keys" | "audit"] | ["tokens" | "keys", _]) => {
            return error(&GateError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} is not allowed on {}", call.method, call.path),
            ));
        }
        _ => return not_found(),
    };
    answer.unwrap_or_else(|e| failed(&e))
}

fn not_found() -> Reply {
    error(&GateError::new(
        ErrorCode::NotFound,
        "no such route; see GET /api/v1/me, /tokens, /keys, /audit",
    ))
}

/// A failed change as the contract's error: what the rules refused is a
/// 403 naming the rule, what is not there a 404, a bad field a 400.
fn failed(e: &anyhow::Error) -> Reply {
    if let Some(refusal) = e.downcast_ref::<Refusal>() {
        return error(&refusal.error());
    }
    match e.downcast_ref::<Problem>() {
        Some(p @ Problem::NotFound(_)) => {
            error(&GateError::new(ErrorCode::NotFound, p.to_string()))
        }
        Some(p) => error(&GateError::new(ErrorCode::InvalidRequest, p.to_string())),
        None => store_failed(e),
    }
}

fn body<T: DeserializeOwned>(call: &Call) -> Result<T> {
    serde_json::from_slice(&call.body).map_err(|e| {
        Problem::Invalid(format!(
            "the request body is not what this route takes: {e}"
        ))
        .into()
    })
}

/// A name from the path, percent-decoded.
fn path_name(raw: &str) -> Result<String> {
    super::percent_decode(raw, false).ok_or_else(|| {
        Problem::Invalid("a name in the path is badly percent-encoded".into()).into()
    })
}

fn me(call: &Call) -> Reply {
    let user = &call.user;
    json(
        StatusCode::OK,
        &json!({
            "name": user.name,
            "customer": user.customer,
            "role": user.role,
            "permissions": user.permissions,
            "key_levels": user.role.levels(),
        }),
    )
}

fn list(console: &Console, manager: &Manager<'_>, kind: Kind) -> Result<Reply> {
    if kind == Kind::Token {
        manager.may_list_tokens()?;
    }
    let uses = LastUses::load(&console.store)?;
    let rows: Vec<serde_json::Value> = console
        .store
        .load()?
        .iter()
        .filter(|r| r.kind == kind && manager.lists(r))
        .map(|r| listed(r, uses.of_record(r)))
        .collect();
    let field = if kind == Kind::Token {
        "tokens"
    } else {
        "keys"
    };
    Ok(json(StatusCode::OK, &json!({ field: rows })))
}

fn create_token(console: &Console, call: &Call, manager: &Manager<'_>) -> Result<Reply> {
    manager.may_create_token()?;
    let new: NewToken = body(call)?;
    let token = NewKey {
        name: new.name,
        description: new.description,
        level: Level::Standard,
        sites: new.sites,
        expires: None,
    };
    let (secret, record) = create(console, call, Kind::Token, token)?;
    Ok(json(
        StatusCode::CREATED,
        &json!({ "token": listed(&record, None), "secret": secret }),
    ))
}

fn create_key(console: &Console, call: &Call, manager: &Manager<'_>) -> Result<Reply> {
    let new: NewKey = body(call)?;
    manager.may_create_key(new.level)?;
    let (secret, record) = create(console, call, Kind::Key, new)?;
    Ok(json(
        StatusCode::CREATED,
        &json!({ "key": listed(&record, None), "secret": secret }),
    ))
}

/// Creates what a user asked for (a token is a standard key's fields
/// without an expiry), owned by them, in their account.
fn create(
    console: &Console,
    call: &Call,
    kind: Kind,
    new: NewKey,
) -> Result<(String, CredentialRecord)> {
    let (secret, record) = manage::create(
        &console.store,
        kind,
        NewCredential {
            name: new.name,
            description: new.description.filter(|d| !d.trim().is_empty()),
            customer: call.user.customer.clone(),
            sites: new.sites,
            level: new.level,
            owner: Some(call.user.name.clone()),
            expires: new.expires,
        },
    )?;
    log_action(
        console,
        Event::on_credential(&call.user.name, Action::Create, &record, None),
    );
    Ok((secret, record))
}

/// What is not of the user's account is, for them, not there.
fn in_account(manager: &Manager<'_>, record: &CredentialRecord) -> Result<()> {
    if manager.in_account(record) {
        Ok(())
    } else {
        let what = if record.kind == Kind::Token {
            "token"
        } else {
            "key"
        };
        Err(Problem::NotFound(format!("{what} named {:?}", record.name)).into())
    }
}

fn delete(
    console: &Console,
    call: &Call,
    manager: &Manager<'_>,
    kind: Kind,
    raw: &str,
) -> Result<Reply> {
    let name = path_name(raw)?;
    let check = |record: &CredentialRecord| -> Result<()> {
        in_account(manager, record)?;
        match kind {
            Kind::Token => manager.may_delete_token()?,
            Kind::Key => manager.may_delete_key(record)?,
        }
        Ok(())
    };
    let record = manage::delete(&console.store, kind, &name, &check)?;
    log_action(
        console,
        Event::on_credential(&call.user.name, Action::Delete, &record, None),
    );
    Ok(super::reply(StatusCode::NO_CONTENT, "application/json", ""))
}

fn change_key(console: &Console, call: &Call, manager: &Manager<'_>, raw: &str) -> Result<Reply> {
    let name = path_name(raw)?;
    let change: KeyChange = body(call)?;
    let check = |record: &CredentialRecord| -> Result<()> {
        in_account(manager, record)?;
        if record.kind == Kind::Key {
            manager.may_change_key(record, change.level)?;
        }
        Ok(())
    };
    let (before, after) = manage::update_key(
        &console.store,
        &name,
        change.name.clone(),
        change.level,
        &check,
    )?;
    log_action(
        console,
        Event::on_credential(&call.user.name, Action::Update, &after, Some(&before)),
    );
    let uses = LastUses::load(&console.store)?;
    Ok(json(
        StatusCode::OK,
        &json!({ "key": listed(&after, uses.of_record(&after)) }),
    ))
}

fn read_audit(console: &Console, manager: &Manager<'_>) -> Result<Reply> {
    manager.may_read_audit()?;
    let events = audit::events(&console.store, manager.customer)?;
    Ok(json(StatusCode::OK, &json!({ "events": events })))
}

/// The change is made; an audit log that cannot be written is said loudly,
/// not turned into a failure of what already happened.
fn log_action(console: &Console, event: Event) {
    if let Err(e) = audit::record(&console.store, &event) {
        crate::log::error(format_args!(
            "console: {} {:?} by {} was made, but not audited: {e:#}",
            event.action.as_str(),
            event.name,
            event.actor
        ));
    }
}
