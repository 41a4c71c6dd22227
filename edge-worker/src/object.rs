//! The `GlobalLimiter` Durable Object (the `worker` crate binding): one
//! named instance for the world that runs [`SharedObject`] on the object's
//! storage, and the credential store in its SQLite table ([`SqlTable`]).

use std::cell::{Cell, RefCell};

use worker::{Date, DurableObject, Env, Request, Response, Result, State, durable_object};

use crate::credential_store::{self, Applied, Batch, LISTING_PAGE, Table};
use crate::shared_object::{Call, Changed, SharedObject};
use crate::sql_table::{CountRow, SqlTable, sql_error};

/// The gate's shared state and revocation list: one named instance for the
/// world. Each key is loaded from storage on its first call and written back
/// on every change; the output gate holds the answer until that write is
/// durable.
#[durable_object]
pub struct GlobalLimiter {
    state: State,
    inner: RefCell<Option<(SharedObject, std::collections::BTreeSet<String>)>>,
    /// Calls this instance served (`/__sessiongate/stats`).
    calls: Cell<u64>,
    /// The credential table exists.
    table_ready: Cell<bool>,
    /// The stored digests' filter, until the store changes.
    filter: RefCell<Option<Vec<u8>>>,
}

/// Where the revocation list is persisted.
const REVOKED_KEY: &str = "revoked";
const LEGACY_LIMITER_KEY: &str = "limiter";

impl DurableObject for GlobalLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
            inner: RefCell::new(None),
            calls: Cell::new(0),
            table_ready: Cell::new(false),
            filter: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        self.calls.set(self.calls.get() + 1);
        self.load().await?;
        let path = req.path();
        if path != "/" {
            return match self.store(&mut req, &path).await {
                Ok(resp) => Ok(resp),
                Err(e) => Response::error(e, 500),
            };
        }
        let call: Call = match req.json().await {
            Ok(c) => c,
            Err(e) => return Response::error(format!("bad limiter call: {e}"), 400),
        };
        let storage = self.state.storage();
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
        let (reply, persist) = {
            let mut inner = self.inner.borrow_mut();
            let Some((object, _)) = inner.as_mut() else {
                return Response::error("shared state missing", 500);
            };
            let (reply, changed) = match object.apply(&call) {
                Ok(r) => r,
                Err(e) => return Response::error(e.to_string(), 500),
            };
            let persist = match changed {
                Changed::Nothing => Persist::Nothing,
                Changed::Key(key) => match object.kv.value(&key) {
                    Some(value) => Persist::Key(key, value.to_vec()),
                    None => Persist::Nothing,
                },
                Changed::Revoked => Persist::Revoked(object.revoked.iter().cloned().collect()),
            };
            (reply, persist)
        };
        match persist {
            Persist::Nothing => {}
            Persist::Key(key, value) => storage.put(&key, value).await?,
            Persist::Revoked(list) => storage.put(REVOKED_KEY, list).await?,
        }
        Response::from_json(&reply)
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

    /// The credential store's calls (the fetch handler's admin API is over them).
    async fn store(&self, req: &mut Request, path: &str) -> std::result::Result<Response, String> {
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
        let mut table = SqlTable(sql.clone());
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
            "/credentials/lookup" => {
                #[derive(serde::Deserialize)]
                struct Lookup {
                    hashes: Vec<String>,
                }
                let lookup: Lookup = req.json().await.map_err(|e| e.to_string())?;
                let records = table.get(&lookup.hashes)?;
                Response::from_json(&records).map_err(|e| e.to_string())
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
