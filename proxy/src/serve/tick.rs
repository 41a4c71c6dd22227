//! The filter's root-context ticks, as Envoy runs them: each VM ticked at
//! the period it asked for (`proxy_set_tick_period_milliseconds`), and the
//! calls it makes then sent and answered, as a request's callouts are. The
//! filter that looks credentials up in the store reads their revision so;
//! one whose limiter is on etcd sends its group commit's batches so.

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
        let calls: Vec<Callout> = pool.with_vm(vm, |v| v.on_tick()).unwrap_or_default();
        // Each on its way while ticks go on (a group commit's write may be
        // in flight for a while, and the next tick must still come).
        for call in calls {
            tokio::spawn(root_call(app.clone(), vm, call));
        }
    }
}

/// Sends a call the root context made and hands its answer back; the
/// calls it makes then (a login, then the read; a group commit's next
/// batch) go the same way.
fn root_call(
    app: Arc<App>,
    vm: usize,
    call: Callout,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let Runner::Filter(pool) = &app.runner else {
            return;
        };
        let response = send_callout(&app, &call).await;
        let more = pool
            .with_vm(vm, |v| v.on_root_call_response(call.token, response))
            .unwrap_or_default();
        for next in more {
            tokio::spawn(root_call(app.clone(), vm, next));
        }
    })
}
