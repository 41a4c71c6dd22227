//! Watching the token store: a change reaches the gate within a poll period.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use anyhow::{Result, anyhow};
use sessiongate_core::{CredentialSet, CredentialSource, GateConfig};

use super::App;
use super::metrics::bump;
use crate::log;
use sessiongate_store::EtcdStore;
use sessiongate_store::Store;

/// How often the store is looked at: the longest a change waits to reach
/// the gate, besides loading it.
const POLL: Duration = Duration::from_millis(200);

/// What tells one version of a store's file from another: its modification
/// time, length and inode (`None`: no file).
pub(super) type FileStamp = Option<(Option<std::time::SystemTime>, u64, u64)>;

/// The store file's stamp now.
pub(super) fn stamp(p: &Path) -> FileStamp {
    std::fs::metadata(p).ok().map(|m| {
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0u64;
        (m.modified().ok(), m.len(), ino)
    })
}

/// The filter's configuration: `base` with `credentials` listed, or, when
/// the filter looks them up in the store, with the store named.
pub(super) fn gate_config_json(base: &GateConfig, credentials: CredentialSet) -> Result<Vec<u8>> {
    let credentials = match &base.credentials {
        CredentialSource::Etcd(_) => base.credentials.clone(),
        CredentialSource::Listed(_) => credentials.into(),
    };
    let config = GateConfig {
        credentials,
        ..base.clone()
    };
    Ok(serde_json::to_vec(&config)?)
}

/// Polls the token store; a change reaches every VM within the poll period.
/// An unreadable or corrupt store is logged loudly and the last good
/// credentials stay in force: never everything, never nothing by accident.
pub(super) async fn watch_store(app: Arc<App>) {
    let path = match &app.store {
        Store::File(path) => path.clone(),
        Store::Etcd(etcd) => return watch_etcd(app.clone(), etcd.clone()).await,
    };
    // The file as it was loaded at start-up, not as it is when this task
    // first runs: a change in between (a loaded machine) is still a change.
    let mut last = app.loaded_stamp;
    let mut interval = tokio::time::interval(POLL);
    loop {
        interval.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        // Missing is an empty store only at start-up: a store that vanishes
        // while serving is an accident, not a revocation of everyone.
        let reloaded = if now.is_none() {
            Err(anyhow!("the file is gone"))
        } else {
            let loaded = app
                .store
                .load_set()
                .and_then(|credentials| app.set_credentials(credentials));
            crate::allocator::release_freed_memory();
            loaded
        };
        reported(&app, reloaded);
    }
}

/// Logs and counts a reload, and keeps what `/readyz` says of the store.
fn reported(app: &App, reloaded: Result<()>) -> bool {
    let mut error = app
        .store_health
        .error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match reloaded {
        Ok(()) => {
            bump(&app.metrics.store_reloads_ok);
            app.store_health.loaded.store(true, Ordering::Relaxed);
            *error = None;
            log::info(format_args!(
                "token store reloaded: {}",
                app.store.location()
            ));
            true
        }
        Err(e) => {
            bump(&app.metrics.store_reloads_failed);
            let kept = if app.store_health.loaded.load(Ordering::Relaxed) {
                "Keeping the last good credentials."
            } else {
                "Still no credentials (not ready)."
            };
            log::error(format_args!(
                "token store {} could not be loaded: {e:#}. {kept}",
                app.store.location()
            ));
            *error = Some(format!("{e:#}"));
            false
        }
    }
}

/// The same for a store in etcd: the credentials' keys (count and newest
/// revision) are polled, and a change reloads them. A failure keeps the
/// last good credentials and is logged once until it mends.
async fn watch_etcd(app: Arc<App>, etcd: EtcdStore) {
    let mut last = {
        let etcd = etcd.clone();
        tokio::task::spawn_blocking(move || etcd.signature())
            .await
            .ok()
            .and_then(Result::ok)
    };
    let mut failing = !app.store_health.loaded.load(Ordering::Relaxed);
    let mut interval = tokio::time::interval(POLL);
    loop {
        interval.tick().await;
        let etcd = etcd.clone();
        let polled = tokio::task::spawn_blocking(move || {
            let now = etcd.signature()?;
            Ok::<_, anyhow::Error>((now, etcd))
        })
        .await
        .map_err(|e| anyhow!("{e}"))
        .and_then(|r| r);
        let (now, etcd) = match polled {
            Ok(p) => p,
            Err(e) => {
                if !failing {
                    reported(&app, Err(e.context("cannot be read")));
                }
                failing = true;
                continue;
            }
        };
        if last == Some(now) && !failing {
            continue;
        }
        let reloaded = tokio::task::spawn_blocking(move || {
            let loaded = etcd.load_set();
            crate::allocator::release_freed_memory();
            loaded
        })
        .await
        .map_err(|e| anyhow!("{e}"))
        .and_then(|r| r)
        .and_then(|credentials| app.set_credentials(credentials));
        if reported(&app, reloaded) {
            last = Some(now);
            failing = false;
        } else {
            failing = true;
        }
    }
}
