//! The filter's VMs, one per worker as Envoy runs one per worker thread,
//! and the configuration they run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

use super::metrics::{Metrics, bump};
use crate::log;
use sessiongate_filter_host::{Plugin, RequestPhase, Vm};

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
    /// Requests the filter parked (no call of their own), by VM and
    /// context: what waits for another callback to answer them, or the
    /// answer that came first.
    pub(super) parked: Mutex<HashMap<(usize, u32), Parked>>,
}

/// A parked request's side of its answer.
pub(super) enum Parked {
    Waiting(oneshot::Sender<Result<RequestPhase>>),
    Answered(Result<RequestPhase>),
}

/// How long a parked request waits for another callback to answer it (the
/// filter answers it within its etcd calls' timeouts; this is the host's
/// own bound, should it not).
const PARKED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

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
        // Any callback may have answered requests the filter parked.
        for (context, phase) in vm.take_resumed() {
            self.answer_parked(i, context, phase);
        }
        if let Err(e) = &result {
            // The parked requests die with the VM.
            let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            let lost: Vec<(usize, u32)> = parked.keys().filter(|(v, _)| *v == i).copied().collect();
            for key in lost {
                if let Some(Parked::Waiting(tx)) = parked.remove(&key) {
                    let _ = tx.send(Err(anyhow!("VM {i} failed")));
                }
            }
            drop(parked);
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

    fn answer_parked(&self, vm: usize, context: u32, phase: Result<RequestPhase>) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        match parked.remove(&(vm, context)) {
            Some(Parked::Waiting(tx)) => {
                let _ = tx.send(phase);
            }
            _ => {
                parked.insert((vm, context), Parked::Answered(phase));
            }
        }
    }

    /// Waits for another callback to answer the request the filter parked
    /// as `context` on `vm` (within [`PARKED_FOR`]; then the stream ends).
    pub(super) async fn parked_answer(&self, vm: usize, context: u32) -> Result<RequestPhase> {
        let rx = {
            let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(Parked::Answered(phase)) = parked.remove(&(vm, context)) {
                return phase;
            }
            let (tx, rx) = oneshot::channel();
            parked.insert((vm, context), Parked::Waiting(tx));
            rx
        };
        match tokio::time::timeout(PARKED_FOR, rx).await {
            Ok(Ok(phase)) => phase,
            Ok(Err(_)) => Err(anyhow!("a parked request's answer was lost")),
            Err(_) => {
                self.parked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(vm, context));
                let _ = self.with_vm(vm, |v| v.abandon(context));
                Err(anyhow!("the filter never answered a parked request"))
            }
        }
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
