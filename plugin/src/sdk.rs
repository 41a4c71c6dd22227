//! The proxy-wasm SDK binding: root context (configuration, metrics, shared
//! state) and one HTTP context per request.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as PwLogLevel};
use sessiongate_core::Gate;

use crate::filter::{self, Next};
use crate::header_block::HeaderBlock;
use crate::host::{self, Host, LogLevel, Metric};
use crate::raw;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(PwLogLevel::Info);
    proxy_wasm::set_root_context(|context| Box::new(Root { context, ..Root::default() }));
}}

/// The host's id of each [`Metric`], once defined.
type Metrics = Rc<RefCell<[Option<u32>; Metric::COUNT]>>;

/// The VM's cache of credentials looked up in the store, shared by its requests.
#[cfg(feature = "fleet")]
type Cache = Rc<RefCell<crate::lookup::CredentialCache>>;

/// The VM's copy of the limiter's log in etcd, shared by its requests.
#[cfg(feature = "fleet")]
type LogCopy = Rc<RefCell<crate::vm_state::LogCopy>>;

/// The VM's group commit of the log, shared by its requests and the root.
#[cfg(feature = "fleet")]
type Commits = Rc<RefCell<crate::vm_state::Commits>>;

#[derive(Default)]
struct Root {
    /// The root context's id (the host's).
    context: u32,
    gate: Option<Rc<Gate>>,
    metrics: Metrics,
    etcd_token: EtcdToken,
    #[cfg(feature = "fleet")]
    cache: Cache,
    #[cfg(feature = "fleet")]
    log_copy: LogCopy,
    #[cfg(feature = "fleet")]
    commits: Commits,
    #[cfg(feature = "fleet")]
    tick: filter::Tick,
}

impl Root {
    fn host(&self) -> Wasm {
        self.host_for(self.context)
    }

    /// The host calls of `context` (the root's own, or a stream's).
    fn host_for(&self, context: u32) -> Wasm {
        let _ = context;
        Wasm {
            #[cfg(feature = "fleet")]
            context,
            metrics: self.metrics.clone(),
            etcd_token: self.etcd_token.clone(),
            #[cfg(feature = "fleet")]
            cache: self.cache.clone(),
            #[cfg(feature = "fleet")]
            log_copy: self.log_copy.clone(),
            #[cfg(feature = "fleet")]
            commits: self.commits.clone(),
        }
    }

    /// Whether the limiter's log is written by group commit.
    #[cfg(feature = "fleet")]
    fn group_commit(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| {
            matches!(
                g.limiter_store(),
                sessiongate_core::LimiterStore::Etcd {
                    group_commit: true,
                    ..
                }
            )
        })
    }
}

fn log(level: LogLevel, message: &str) {
    // The ABI's levels: trace 0, debug 1, info 2, warn 3, error 4.
    let level = match level {
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
    };
    raw::log(level, &format!("sessiongate: {message}"));
}

/// A callout's answer: its status (`None`: no headers, the call failed:
/// reset, timeout, no host) and body.
#[cfg(feature = "fleet")]
fn call_response(num_headers: usize, body_size: usize) -> (Option<u16>, Vec<u8>) {
    let status = if num_headers == 0 {
        None
    } else {
        raw::http_call_response_status()
    };
    (status, raw::http_call_response_body(body_size))
}

impl Context for Root {
    /// The answer to the group commit's call, or to a tick's read of the
    /// credentials' revision.
    #[cfg(feature = "fleet")]
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(gate) = self.gate.clone() else {
            return;
        };
        let (status, body) = call_response(num_headers, body_size);
        let mut host = self.host();
        if self.commits.borrow().is_ours(token_id) {
            crate::commit::on_response(&gate, &mut host, status, &body);
        } else {
            filter::on_tick_response(&gate, &mut host, &mut self.tick, status, &body);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match raw::plugin_configuration() {
            Ok(Some(b)) => b,
            Ok(None) => {
                log(
                    LogLevel::Error,
                    "no plugin configuration: refusing to start",
                );
                return false;
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("cannot read the plugin configuration ({e}): refusing to start"),
                );
                return false;
            }
        };
        match Gate::from_json(&bytes) {
            Ok(gate)
                if !cfg!(feature = "fleet")
                    && matches!(
                        gate.limiter_store(),
                        sessiongate_core::LimiterStore::Etcd { .. }
                    ) =>
            {
                log(
                    LogLevel::Error,
                    "limiter.store is \"etcd\", but this filter was built without the fleet \
                     feature: load the fleet build (scripts/build-plugin.sh --fleet)",
                );
                return false;
            }
            Ok(gate) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "configured: {} credentials, limit {}/{}s",
                        gate.credentials().len(),
                        gate.limit().requests,
                        gate.limit().window_seconds()
                    ),
                );
                self.gate = Some(Rc::new(gate));
            }
            Err(e) => {
                // Fail closed: Envoy will not start the filter with a bad configuration.
                log(
                    LogLevel::Error,
                    &format!("invalid configuration, refusing to start: {e}"),
                );
                return false;
            }
        }
        let mut metrics = self.metrics.borrow_mut();
        for (metric, slot) in Metric::all().zip(metrics.iter_mut()) {
            if slot.is_none() {
                *slot = raw::define_counter(&metric.name()).ok();
            }
        }
        drop(metrics);
        host::init_shared_state(&mut self.host());
        #[cfg(feature = "fleet")]
        {
            // A new configuration may name another store: nothing cached holds.
            *self.cache.borrow_mut() = crate::lookup::CredentialCache::default();
            *self.log_copy.borrow_mut() = crate::vm_state::LogCopy::default();
            // A group commit's batch goes on the root context's tick: a
            // millisecond, the shortest the ABI has.
            let tick = if self.group_commit() {
                1
            } else {
                self.gate
                    .as_ref()
                    .and_then(|g| g.credential_store())
                    .map_or(0, |store| store.tick_ms)
            };
            proxy_wasm::hostcalls::set_tick_period(std::time::Duration::from_millis(u64::from(
                tick,
            )))
            .ok();
        }
        true
    }

    #[cfg(feature = "fleet")]
    fn on_tick(&mut self) {
        let Some(gate) = self.gate.clone() else {
            return;
        };
        let mut host = self.host();
        crate::commit::on_tick(&gate, &mut host);
        filter::on_tick(&gate, &mut host, &mut self.tick);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gate = self.gate.clone()?;
        Some(Box::new(Request {
            gate,
            host: self.host_for(context_id),
            response_headers: Vec::new(),
            waiting: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    gate: Rc<Gate>,
    /// The VM's state its host calls use.
    host: Wasm,
    response_headers: Vec<(&'static str, String)>,
    /// The decision waiting on a callout to the limiter's store.
    waiting: Option<filter::PausedRequest>,
}

/// The host calls of the SDK behind the filter's [`Host`] trait.
#[derive(Clone)]
struct Wasm {
    /// The context its calls are for.
    #[cfg(feature = "fleet")]
    context: u32,
    metrics: Metrics,
    /// The VM's etcd token, shared by its requests.
    etcd_token: EtcdToken,
    #[cfg(feature = "fleet")]
    cache: Cache,
    #[cfg(feature = "fleet")]
    log_copy: LogCopy,
    #[cfg(feature = "fleet")]
    commits: Commits,
}

type EtcdToken = Rc<RefCell<Option<String>>>;

impl Host for Wasm {
    fn request_headers(&self) -> HeaderBlock {
        raw::get_request_headers()
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        if let Err(e) = raw::set_header(raw::HeaderMap::Request, name, value) {
            log(
                LogLevel::Error,
                &format!("cannot set request header {name}: {e}"),
            );
        }
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        if let Err(e) = raw::set_header(raw::HeaderMap::Response, name, Some(value)) {
            log(
                LogLevel::Error,
                &format!("cannot set response header {name}: {e}"),
            );
        }
    }
    fn send_reply(&mut self, status: u16, headers: &HeaderBlock, body: &[u8]) {
        if let Err(e) = raw::send_local_response(status, headers, body) {
            log(LogLevel::Error, &format!("cannot answer the request: {e}"));
        }
    }
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String> {
        raw::get_shared_data(key)
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
        raw::set_shared_data(key, value, cas)
    }
    fn source_address(&self) -> Option<String> {
        raw::get_property(b"source\0address")
    }
    /// Through the SDK, whose dispatcher must know the call's token to route
    /// its answer here. Its wrapper panics only on a status that neither
    /// Envoy nor `serve` returns for this call (they answer Ok, BadArgument
    /// or InternalFailure).
    fn http_call(
        &mut self,
        cluster: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u32,
        token: Option<&str>,
    ) -> Result<u32, String> {
        let mut headers = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", cluster),
            ("content-type", "application/json"),
        ];
        if let Some(token) = token {
            headers.push(("authorization", token));
        }
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, Some(body), vec![], timeout)
            .map_err(|status| format!("proxy_http_call: {status:?}"))
    }

    fn etcd_token(&self) -> Option<String> {
        self.etcd_token.borrow().clone()
    }

    #[cfg(feature = "fleet")]
    fn credential_cache(&self) -> &RefCell<crate::lookup::CredentialCache> {
        &self.cache
    }

    #[cfg(feature = "fleet")]
    fn log_copy(&self) -> &RefCell<crate::vm_state::LogCopy> {
        &self.log_copy
    }

    #[cfg(feature = "fleet")]
    fn context_id(&self) -> u32 {
        self.context
    }

    #[cfg(feature = "fleet")]
    fn act_for(&mut self, context: u32) -> bool {
        proxy_wasm::hostcalls::set_effective_context(context).is_ok()
    }

    #[cfg(feature = "fleet")]
    fn resume_request(&mut self) {
        if let Err(e) = raw::continue_request() {
            log(LogLevel::Error, &format!("cannot resume the request: {e}"));
        }
    }

    #[cfg(feature = "fleet")]
    fn commits(&self) -> &RefCell<crate::vm_state::Commits> {
        &self.commits
    }

    fn set_etcd_token(&mut self, token: Option<String>) {
        *self.etcd_token.borrow_mut() = token;
    }

    fn set_credential(&mut self, name: &str) {
        raw::set_property(sessiongate_core::CREDENTIAL_PROPERTY, name.as_bytes());
    }
    fn now_ms(&self) -> u64 {
        raw::now_ms()
    }
    fn log(&self, level: LogLevel, message: &str) {
        log(level, message);
    }
    fn increment(&mut self, metric: Metric) {
        if let Some(Some(id)) = self.metrics.borrow().get(metric.index()) {
            raw::increment(*id);
        }
    }
}

/// Nothing waits on a stream that has ended (its client may have gone
/// while it waited for a group commit).
#[cfg(feature = "fleet")]
impl Drop for Request {
    fn drop(&mut self) {
        if let Ok(mut commits) = self.host.commits.try_borrow_mut() {
            commits.forget(self.host.context);
        }
    }
}

impl Context for Request {
    #[cfg(feature = "fleet")]
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let mut host = self.host.clone();
        let (status, body) = call_response(num_headers, body_size);
        let next =
            filter::on_callout_response(&self.gate, &mut host, &mut self.waiting, status, &body);
        if let Next::Continue(headers) = next {
            self.response_headers = headers;
            if let Err(e) = raw::continue_request() {
                log(LogLevel::Error, &format!("cannot resume the request: {e}"));
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = self.host.clone();
        match filter::on_request_headers(&self.gate, &mut host, &mut self.waiting) {
            Next::Stop | Next::Wait => Action::Pause,
            Next::Continue(headers) => {
                self.response_headers = headers;
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[allow(unused_mut)]
        let mut headers = std::mem::take(&mut self.response_headers);
        // Let through by a group commit, from the root context.
        #[cfg(feature = "fleet")]
        if let Some(committed) = self
            .host
            .commits
            .borrow_mut()
            .take_response_headers(self.host.context)
        {
            headers = committed;
        }
        filter::on_response_headers(&mut self.host.clone(), &headers);
        Action::Continue
    }
}
