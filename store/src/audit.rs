//! The append-only audit log of management actions: who, what, which
//! credential (by name and hint), when; never a secret. Kept with the token
//! store (etcd: a key per event under `PREFIX/audit/`, named by time; a
//! file store: `NAME.audit.jsonl` beside it, one JSON object a line).

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sessiongate_core::{CredentialRecord, Kind, Level};

use crate::manage;
use crate::store::Store;
use crate::users::User;

const LOG: &str = "audit";

/// Who acted for an operator's CLI call.
pub const OPERATOR: &str = "operator";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// What was acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Token,
    Key,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix milliseconds.
    pub at: u64,
    /// The user's name, or [`OPERATOR`].
    pub actor: String,
    /// The account acted in.
    pub customer: String,
    pub action: Action,
    pub subject: Subject,
    pub name: String,
    /// The credential's (or user's) hint, never its secret.
    pub hint: String,
    /// A key's level after the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// What an update changed: the name and level before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_level: Option<Level>,
}

impl Event {
    /// `actor` acted on a credential (`before`: what an update changed).
    pub fn on_credential(
        actor: &str,
        action: Action,
        record: &CredentialRecord,
        before: Option<&CredentialRecord>,
    ) -> Event {
        let key = record.kind == Kind::Key;
        Event {
            at: manage::now_ms(),
            actor: actor.to_owned(),
            customer: record.customer.clone(),
            action,
            subject: if key { Subject::Key } else { Subject::Token },
            name: record.name.clone(),
            hint: record.hint.clone(),
            level: key.then_some(record.level),
            previous_name: before
                .filter(|b| b.name != record.name)
                .map(|b| b.name.clone()),
            previous_level: before.filter(|b| b.level != record.level).map(|b| b.level),
        }
    }

    pub fn by_operator(
        action: Action,
        record: &CredentialRecord,
        before: Option<&CredentialRecord>,
    ) -> Event {
        Event::on_credential(OPERATOR, action, record, before)
    }

    /// The operator created or deleted a user.
    pub fn on_user(action: Action, user: &User) -> Event {
        Event {
            at: manage::now_ms(),
            actor: OPERATOR.to_owned(),
            customer: user.customer.clone(),
            action,
            subject: Subject::User,
            name: user.name.clone(),
            hint: user.hint.clone(),
            level: None,
            previous_name: None,
            previous_level: None,
        }
    }
}

/// Appends the event to the store's audit log.
pub fn record(store: &Store, event: &Event) -> Result<()> {
    let line = serde_json::to_vec(event)?;
    store
        .append_line(LOG, event.at, &line)
        .context("cannot write the audit log")
}

/// The events of one account, oldest first.
pub fn events(store: &Store, customer: &str) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for (n, line) in store.lines(LOG)?.iter().enumerate() {
        let event: Event = serde_json::from_slice(line)
            .with_context(|| format!("the audit log's entry {n} is corrupt"))?;
        if event.customer == customer {
            out.push(event);
        }
    }
    Ok(out)
}
