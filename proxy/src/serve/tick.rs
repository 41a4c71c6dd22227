//! The filter's root-context ticks, as Envoy runs them: each VM ticked at
//! the period it asked for (`proxy_set_tick_period_milliseconds`), and the
//! calls it makes then sent and answered, as a request's callouts are. The
//! filter that looks credentials up in the store reads their revision so.

use std::sync::Arc;
use std::time::Duration;

use sessiongate_filter_host::Callout;

use super::handle::send_callout;
use super::{App, Runner};

/// How often a VM that asked for no tick is asked again (a reload may ask).
const IDLE: Duration = Duration::from_secs(1);

/// Starts one ticking task per VM.
pub(super) fn start(app: &Arc<App>) {
    let Runner::Filter(pool) = &app.runner else {
        return;
    };
    for vm in 0..pool.vms.len() {
        tokio::spawn(tick(app.clone(), vm));
    }
}

async fn tick(app: Arc<App>, vm: usize) {
    let Runner::Filter(pool) = &app.runner else {
        return;
    };
    loop {
        let period = pool.with_vm(vm, |v| Ok(v.tick_period())).ok().flatten();
        tokio::time::sleep(period.unwrap_or(IDLE)).await;
        if period.is_none() {
            continue;
        }
        let mut calls: Vec<Callout> = pool.with_vm(vm, |v| v.on_tick()).unwrap_or_default();
        // A call's answer may make another (a login, then the read).
        while !calls.is_empty() {
            let mut next = Vec::new();
            for call in calls {
                let response = send_callout(&app, &call).await;
                let more = pool.with_vm(vm, |v| v.on_root_call_response(call.token, response));
                next.extend(more.unwrap_or_default());
            }
            calls = next;
        }
    }
}
