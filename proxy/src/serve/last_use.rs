//! Last use (issue 46): what this instance admitted, kept in memory and
//! merged into the store at most every `[last_use] flush_seconds` (60 by
//! default), never on the request path. A flush that fails keeps what it
//! took for the next; shutting down flushes once more, so an instance that
//! dies loses at most its last period.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sessiongate_core::Uses;
use sessiongate_store::Store;

use super::metrics::bump;
use crate::log;

pub(super) struct LastUseLog {
    uses: Mutex<Uses>,
    /// How this instance is named in the store: `[last_use] instance`, or
    /// the host's name and the port it listens on.
    instance: OnceLock<String>,
    pub(super) every: Duration,
    /// Flushes that wrote to the store, and flushes that failed.
    pub(super) writes: AtomicU64,
    pub(super) failures: AtomicU64,
}

impl LastUseLog {
    pub(super) fn new(every: Duration, instance: Option<String>) -> LastUseLog {
        let named = OnceLock::new();
        if let Some(instance) = instance {
            let _ = named.set(instance);
        }
        LastUseLog {
            uses: Mutex::new(Uses::default()),
            instance: named,
            every,
            writes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Names the instance by the host and `port` unless the settings did.
    pub(super) fn listening_on(&self, port: u16) {
        let _ = self.instance.set(format!("{}:{port}", host_name()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Uses> {
        self.uses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes an admitted request of the credential `name` (the filter's
    /// stream property, its bytes).
    pub(super) fn admitted(&self, name: &[u8]) {
        if let Ok(name) = std::str::from_utf8(name) {
            self.lock()
                .admitted(name, sessiongate_store::manage::now_ms());
        }
    }

    /// Merges what was admitted since the last flush into the store.
    pub(super) fn flush(&self, store: &Store) {
        let taken = self.lock().take();
        if taken.is_empty() {
            return;
        }
        let instance = self.instance.get().map_or("serve", String::as_str);
        match sessiongate_store::last_use::flush(store, &taken, instance) {
            Ok(0) => {}
            Ok(_) => bump(&self.writes),
            Err(e) => {
                bump(&self.failures);
                log::warn(format_args!(
                    "last use of {} credentials not written to {}, kept for the next flush: {e:#}",
                    taken.len(),
                    store.location()
                ));
                self.lock().put_back(taken);
            }
        }
    }
}

/// The machine's host name (a pod's name on Kubernetes), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Flushes every period until the process ends (off the request path: the
/// store's file or etcd is written on a blocking thread).
pub(super) async fn flush_periodically(app: std::sync::Arc<super::App>) {
    let mut ticks = tokio::time::interval(app.last_use.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || app.last_use.flush(&app.store)).await;
    }
}
