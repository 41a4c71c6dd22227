//! The filter's VMs, one per worker as Envoy runs one per worker thread,
//! and the configuration they run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Result, anyhow};

use super::metrics::{Metrics, bump};
use crate::log;
use sessiongate_filter_host::{Plugin, Vm};

/// The filter's `proxy_log`: info and above, as Envoy logs by default.
pub(super) fn log_line(level: u32, msg: &str) {
    match level {
        0 | 1 => {}
        2 => log::info(msg),
        3 => log::warn(msg),
        _ => log::error(msg),
    }
}

/// The VMs, one per worker, and the configuration they run.
pub(super) struct Pool {
    pub(super) plugin: Plugin,
    pub(super) vms: Vec<Mutex<Vm>>,
    pub(super) next: AtomicUsize,
    pub(super) config: RwLock<Arc<Vec<u8>>>,
    pub(super) metrics: Arc<Metrics>,
}

thread_local! {
    /// The VM of this worker thread, when each worker has its own.
    static HOME_VM: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Gives this thread its own VM: its requests go to VM `i` (as an Envoy
/// worker thread has its VM), so no two threads wait on one VM.
pub(super) fn set_home_vm(i: usize) {
    HOME_VM.with(|h| h.set(Some(i)));
}

impl Pool {
    /// This thread's VM, or the next in turn (a thread with none).
    pub(super) fn pick(&self) -> usize {
        match HOME_VM.with(std::cell::Cell::get) {
            Some(i) if i < self.vms.len() => i,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % self.vms.len(),
        }
    }

    /// Runs `f` on VM `i`. A trap kills a VM, as in Envoy; here it is replaced
    /// by a fresh one so the next request is served normally.
    pub(super) fn with_vm<T>(&self, i: usize, f: impl FnOnce(&mut Vm) -> Result<T>) -> Result<T> {
        let slot = self.vms.get(i).ok_or_else(|| anyhow!("no VM {i}"))?;
        let mut vm = slot.lock().map_err(|_| anyhow!("VM {i} lock poisoned"))?;
        let result = f(&mut vm);
        if let Err(e) = &result {
            bump(&self.metrics.vm_traps);
            log::error(format_args!("VM {i} failed: {e:#}; starting a fresh one"));
            let config = self.current_config();
            match self.plugin.start_vm(i, config) {
                Ok(fresh) => {
                    bump(&self.metrics.vm_replacements_ok);
                    *vm = fresh;
                }
                Err(e) => {
                    bump(&self.metrics.vm_replacements_failed);
                    log::error(format_args!("cannot restart VM {i}: {e:#}"));
                }
            }
        }
        result
    }

    pub(super) fn current_config(&self) -> Arc<Vec<u8>> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Hands every VM a new configuration; on refusal the VMs keep the old one.
    pub(super) fn reconfigure(&self, config: Vec<u8>) -> Result<()> {
        let config = Arc::new(config);
        for (i, slot) in self.vms.iter().enumerate() {
            let mut vm = slot.lock().map_err(|_| anyhow!("VM {i} lock poisoned"))?;
            vm.configure(config.clone())?;
        }
        if let Ok(mut c) = self.config.write() {
            *c = config;
        }
        Ok(())
    }
}
