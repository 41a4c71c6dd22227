//! SIGHUP: the configuration file read again and applied without a restart
//! (limit, backend, guard, fail-open, connection settings), the limiter's
//! state kept: it lives in shared data or etcd, not in the configuration.
//! A file that does not parse or validate, or that a VM refuses, changes
//! nothing. Settings only a restart can change (listen, admin, store,
//! workers, where the limit lives, log format) are named in a warning and
//! left as they run.

use std::sync::Arc;

use anyhow::Result;

use super::metrics::bump;
use super::settings::{RestartOnly, Settings, settings};
use super::{App, Live, ServeArgs, fail_shared_data_if_asked};
use crate::log;

pub(super) async fn on_hangup(
    app: Arc<App>,
    args: ServeArgs,
    running: RestartOnly,
    file_limit: u64,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                log::warn(format_args!("no SIGHUP handler, so no reloads: {e}"));
                return;
            }
        };
        while hangups.recv().await.is_some() {
            reload(&app, &args, &running, file_limit);
        }
    }
    #[cfg(not(unix))]
    let _ = (app, args, running, file_limit);
}

fn reload(app: &App, args: &ServeArgs, running: &RestartOnly, file_limit: u64) {
    let Some(path) = &args.config else {
        log::warn(
            "SIGHUP: serving the embedded default configuration, there is no file to reload \
             (start with --config FILE)",
        );
        return;
    };
    match settings(args, file_limit).and_then(|new| apply(app, new, running)) {
        Ok(summary) => {
            bump(&app.metrics.config_reloads_ok);
            log::info(format_args!(
                "configuration {} reloaded: {summary}",
                path.display()
            ));
        }
        Err(e) => {
            bump(&app.metrics.config_reloads_failed);
            log::error(format_args!(
                "configuration {} not reloaded, nothing changed: {e:#}",
                path.display()
            ));
        }
    }
}

fn apply(app: &App, new: Settings, running: &RestartOnly) -> Result<String> {
    let restart_only = running.changed(&new.restart_only());
    let mut base = new.gate;
    base.limiter = app.gate_parts().base.limiter.clone();
    base.credentials = app.gate_parts().base.credentials.clone();
    let summary = format!(
        "limit {}/{}s, backend {}, fail_open {}",
        base.limit.requests,
        base.limit.window_seconds,
        super::describe(&base.backend),
        base.fail_open
    );
    // The one step that can refuse (a VM's configure): first, so a refusal
    // leaves everything as it was.
    app.set_base(base.clone())?;
    app.set_live(Live {
        backend: base.backend,
        upstream_timeout: new.upstream_timeout,
        limits: new.limits,
    });
    if let Some(shared) = app.shared_data() {
        fail_shared_data_if_asked(shared, new.fail_limiter_store);
    }
    if !restart_only.is_empty() {
        log::warn(format_args!(
            "SIGHUP: {} changed in the file and take(s) effect on the next restart; \
             the rest is applied",
            restart_only.join(", ")
        ));
    }
    Ok(summary)
}
