//! The `GlobalLimiter` Durable Object (the `worker` crate binding): one
//! named instance for the world that runs [`SharedObject`] on the object's
//! storage (a decision's steps in one call, [`ObjectDecision`]), and the
//! credential store in its SQLite table ([`SqlTable`]).

use std::cell::{Cell, RefCell};

use worker::{Date, DurableObject, Env, Request, Response, Result, State, durable_object};

use sessiongate_core::{Request as GateRequest, Uses, parse_hash_hex};

use crate::credential_store::{self, Applied, Batch, LISTING_PAGE, Table};
use crate::last_use;
use crate::object_decision::{DecideCall, DecideReply, ObjectDecision, deciding_gate};
use crate::shared_object::{Call, Changed, ObjectReply, SharedObject};
use crate::sql_table::{CountRow, SqlTable, sql_error};

/// The gate's shared state and revocation list: one named instance for the
/// world. Each key is loaded from storage on its first call and written back
/// on every change; the output gate holds the answer until that write is
/// durable.
#[durable_object]
pub struct GlobalLimiter {
    state: State,
    /// The Worker's bindings: the gate's configuration, for a decision.
    env: Env,
    inner: RefCell<Option<(SharedObject, std::collections::BTreeSet<String>)>>,
    /// Calls this instance served (`/__sessiongate/stats`).
    calls: Cell<u64>,
    /// The credential table exists.
    table_ready: Cell<bool>,
    /// The stored digests' filter, until the store changes.
    filter: RefCell<Option<Vec<u8>>>,
    /// What its decisions admitted since the last alarm wrote it.
    uses: RefCell<Uses>,
    /// An alarm is set to write `uses`.
    flush_set: Cell<bool>,
    /// Alarms that wrote last use (`/__sessiongate/stats`).
    last_use_writes: Cell<u64>,
}

/// Where the revocation list is persisted.
const REVOKED_KEY: &str = "revoked";
const LEGACY_LIMITER_KEY: &str = "limiter";

impl DurableObject for GlobalLimiter {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            inner: RefCell::new(None),
            calls: Cell::new(0),
            table_ready: Cell::new(false),
            filter: RefCell::new(None),
            uses: RefCell::new(Uses::default()),
            flush_set: Cell::new(false),
            last_use_writes: Cell::new(0),
        }
    }

    /// Writes what was admitted since the last alarm; what fails to be
    /// written is kept for the next.
    async fn alarm(&self) -> Result<Response> {
        self.flush_set.set(false);
        let taken = self.uses.borrow_mut().take();
        if taken.is_empty() {
            return Response::ok("");
        }
        match last_use::write(&self.state.storage().sql(), &taken) {
            Ok(0) => {}
            Ok(_) => self.last_use_writes.set(self.last_use_writes.get() + 1),
            Err(e) => {
                worker::console_error!("last use not written, kept for the next alarm: {e}");
                self.uses.borrow_mut().put_back(taken);
                self.schedule_flush().await;
            }
        }
        Response::ok("")
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        self.calls.set(self.calls.get() + 1);
        self.load().await?;
        let path = req.path();
        let answered = match path.as_str() {
            "/" => self.step(&mut req).await,
            "/decide" => self.decide(&mut req).await,
            _ => self.store(&mut req, &path).await,
        };
        match answered {
            Ok(resp) => Ok(resp),
            Err(e) => Response::error(e, 500),
        }
    }
}

impl GlobalLimiter {
    /// The revocation list, loaded on the object's first call. Storage
    /// calls hold the input gate: no other call runs meanwhile.
    async fn load(&self) -> Result<()> {
        if self.inner.borrow().is_some() {
            return Ok(());
        }
        let revoked: Option<Vec<String>> = self.state.storage().get(REVOKED_KEY).await?;
        // Versions in microseconds of this start: above any an earlier
        // instance handed out.
        let mut object = SharedObject::new(Date::now().as_millis().saturating_mul(1000));
        object.revoked = revoked.unwrap_or_default().into_iter().collect();
        *self.inner.borrow_mut() = Some((object, Default::default()));
        Ok(())
    }

    /// One step of a decision (and the admin's revocation).
    async fn step(&self, req: &mut Request) -> std::result::Result<Response, String> {
        let call: Call = req
            .json()
            .await
            .map_err(|e| format!("bad limiter call: {e}"))?;
        if let Some(key) = call.key() {
            self.loaded(key).await?;
        }
        let (reply, changed) = self.with_object(|object| object.apply(&call))?;
        self.persist(changed).await?;
        Response::from_json(&reply).map_err(|e| e.to_string())
    }

    /// A whole decision's steps on this object's state, in one call
    /// (`object_decision`): the Worker replays the decision on the answers.
    async fn decide(&self, req: &mut Request) -> std::result::Result<Response, String> {
        let call: DecideCall = req
            .json()
            .await
            .map_err(|e| format!("bad decide call: {e}"))?;
        let gate = crate::fetch::load_gate(&self.env)?;
        let authorization = call
            .authorization()
            .ok_or("an Authorization value that is not base64")?;
        let authorization: Vec<&[u8]> = authorization.iter().map(Vec::as_slice).collect();
        let request = GateRequest {
            method: &call.method,
            target: &call.target,
            authorization: &authorization,
            client: call.client.as_deref(),
        };
        let records = if call.lookup.is_empty() {
            Vec::new()
        } else {
            self.table()?.get(&call.lookup)?
        };
        let fresh = records
            .iter()
            .filter_map(|r| parse_hash_hex(&r.hash))
            .collect();
        let deciding = deciding_gate(&gate, &authorization, records.clone());
        let deciding = deciding.as_ref().unwrap_or(&gate);
        let mut decision = ObjectDecision::new(deciding, &request, call.now, fresh);
        while !decision.done() {
            if let Some(key) = decision.key() {
                self.loaded(&key).await?;
            }
            let changed = self.with_object(|object| decision.step(object))?;
            self.persist(changed).await?;
        }
        let log = self.with_object(|object| {
            Ok(object
                .kv
                .version(sessiongate_core::LIMITER_KEY)
                .map(|version| ObjectReply::Value {
                    value: object
                        .kv
                        .value(sessiongate_core::LIMITER_KEY)
                        .map(<[u8]>::to_vec),
                    version,
                }))
        })?;
        if let Some(name) = decision.admitted() {
            self.uses.borrow_mut().admitted(name, call.now);
            self.schedule_flush().await;
        }
        let reply = DecideReply {
            records,
            answers: decision.answers(),
            log,
        };
        Response::from_json(&reply).map_err(|e| e.to_string())
    }

    /// Sets the alarm that writes last use, unless one is set: one alarm a
    /// flush period, whatever the traffic. A failure to set it is logged
    /// and never fails the request (the next admission tries again).
    async fn schedule_flush(&self) {
        if self.flush_set.replace(true) {
            return;
        }
        let after = crate::fetch::binding_text(&self.env, last_use::FLUSH_BINDING)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|ms| *ms > 0)
            .unwrap_or(last_use::DEFAULT_FLUSH_MS);
        if let Err(e) = self.state.storage().set_alarm(after).await {
            worker::console_error!("cannot set the last-use alarm: {e}");
            self.flush_set.set(false);
        }
    }

    /// Runs `f` on the object's state (never across an await).
    fn with_object<T>(
        &self,
        f: impl FnOnce(&mut SharedObject) -> std::result::Result<T, sessiongate_core::KvError>,
    ) -> std::result::Result<T, String> {
        let mut inner = self.inner.borrow_mut();
        let (object, _) = inner.as_mut().ok_or("shared state missing")?;
        f(object).map_err(|e| e.to_string())
    }

    /// Loads `key` from storage on its first use by this instance.
    async fn loaded(&self, key: &str) -> std::result::Result<(), String> {
        let loaded = self
            .inner
            .borrow()
            .as_ref()
            .is_some_and(|(_, loaded)| loaded.contains(key));
        if loaded {
            return Ok(());
        }
        let storage = self.state.storage();
        let mut value: Option<Vec<u8>> = storage.get(key).await.map_err(|e| e.to_string())?;
        if value.is_none() && key == sessiongate_core::LIMITER_KEY {
            // Where the limiter's log was kept before the object stored
            // every key under its own name.
            value = storage
                .get(LEGACY_LIMITER_KEY)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some((object, loaded)) = self.inner.borrow_mut().as_mut() {
            if let Some(value) = value {
                object.kv.put(key, value);
            }
            loaded.insert(key.to_owned());
        }
        Ok(())
    }

    /// Writes back what a step changed; the output gate holds the answer
    /// until it is durable.
    async fn persist(&self, changed: Changed) -> std::result::Result<(), String> {
        let persist = {
            let inner = self.inner.borrow();
            let Some((object, _)) = inner.as_ref() else {
                return Err("shared state missing".into());
            };
            match changed {
                Changed::Nothing => Persist::Nothing,
                Changed::Key(key) => match object.kv.value(&key) {
                    Some(value) => Persist::Key(key, value.to_vec()),
                    None => Persist::Nothing,
                },
                Changed::Revoked => Persist::Revoked(object.revoked.iter().cloned().collect()),
            }
        };
        let storage = self.state.storage();
        let written = match persist {
            Persist::Nothing => Ok(()),
            Persist::Key(key, value) => storage.put(&key, value).await,
            Persist::Revoked(list) => storage.put(REVOKED_KEY, list).await,
        };
        written.map_err(|e| e.to_string())
    }

    /// The credential table, created on this instance's first use of it.
    fn table(&self) -> std::result::Result<SqlTable, String> {
        let sql = self.state.storage().sql();
        if !self.table_ready.get() {
            sql.exec(
                "CREATE TABLE IF NOT EXISTS credentials (hash TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
                 record TEXT NOT NULL, fingerprint TEXT NOT NULL)",
                None,
            )
            .map_err(sql_error)?;
            self.table_ready.set(true);
        }
        Ok(SqlTable(sql))
    }

    /// The credential store's calls (the fetch handler's admin API is over them).
    async fn store(&self, req: &mut Request, path: &str) -> std::result::Result<Response, String> {
        let mut table = self.table()?;
        let sql = self.state.storage().sql();
        let body = |v: serde_json::Value| Response::from_json(&v).map_err(|e| e.to_string());
        match path {
            "/credentials/filter" => {
                let cached = self.filter.borrow().clone();
                let bits = match cached {
                    Some(bits) => bits,
                    None => {
                        let bits = credential_store::filter(&mut table)?.as_bytes().to_vec();
                        *self.filter.borrow_mut() = Some(bits.clone());
                        bits
                    }
                };
                Response::from_bytes(bits).map_err(|e| e.to_string())
            }
            "/credentials/list" => {
                #[derive(serde::Deserialize)]
                struct After {
                    after: String,
                }
                let after: After = req.json().await.map_err(|e| e.to_string())?;
                let page = table.list(&after.after, LISTING_PAGE)?;
                Response::from_json(&page).map_err(|e| e.to_string())
            }
            "/credentials/sync" => {
                #[derive(serde::Deserialize)]
                struct Sync {
                    batch: Batch,
                    binding: Vec<String>,
                }
                let sync: Sync = req.json().await.map_err(|e| e.to_string())?;
                let applied: Applied = credential_store::apply(&mut table, &sync.batch)?;
                *self.filter.borrow_mut() = None;
                // Trim the revocation list to what the binding still holds.
                let trimmed = {
                    let mut inner = self.inner.borrow_mut();
                    inner.as_mut().and_then(|(object, _)| {
                        let before = object.revoked.len();
                        object.revoked.retain(|h| sync.binding.contains(h));
                        (object.revoked.len() != before)
                            .then(|| object.revoked.iter().cloned().collect::<Vec<_>>())
                    })
                };
                if let Some(list) = trimmed {
                    self.state
                        .storage()
                        .put(REVOKED_KEY, list)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Response::from_json(&applied).map_err(|e| e.to_string())
            }
            "/credentials/delete-name" => {
                #[derive(serde::Deserialize)]
                struct Name {
                    name: String,
                }
                let name: Name = req.json().await.map_err(|e| e.to_string())?;
                let deleted = match table.named(&name.name)? {
                    Some(hash) => table.delete(&hash)?,
                    None => false,
                };
                if deleted {
                    *self.filter.borrow_mut() = None;
                }
                body(serde_json::json!({ "deleted": deleted }))
            }
            "/credentials/last-used" => {
                #[derive(serde::Deserialize)]
                struct After {
                    after: String,
                }
                let after: After = req.json().await.map_err(|e| e.to_string())?;
                let page = last_use::page(&sql, &after.after, LISTING_PAGE)?;
                Response::from_json(&page).map_err(|e| e.to_string())
            }
            "/stats" => {
                let count: CountRow = sql
                    .exec("SELECT COUNT(*) AS n FROM credentials", None)
                    .and_then(|c| c.one())
                    .map_err(sql_error)?;
                let revoked = self
                    .inner
                    .borrow()
                    .as_ref()
                    .map_or(0, |(o, _)| o.revoked.len());
                body(serde_json::json!({
                    "calls": self.calls.get(),
                    "last_use_writes": self.last_use_writes.get(),
                    "credentials": count.n,
                    "revoked": revoked,
                }))
            }
            other => Err(format!("no such call {other}")),
        }
    }
}

enum Persist {
    Nothing,
    Key(String, Vec<u8>),
    Revoked(Vec<String>),
}
