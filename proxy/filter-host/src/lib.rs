//! A proxy-wasm host on wasmtime, shaped like Envoy's: one compiled module,
//! several VMs (one per worker), one shared-data store and one set of stats
//! for all of them, and the stream lifecycle Envoy drives
//! (`context_create → request_headers → response_headers → done → log → delete`).
//!
//! It sends nothing itself: a filter's `proxy_http_call`s come back as
//! [`Callout`]s for the caller to send, their answers handed back with
//! [`Vm::on_call_response`]. It touches wasmtime and, for the module cache,
//! one directory.

mod abi;

pub use sessiongate_shared_data::{SharedData, SharedDataDown};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, TypedFunc};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

/// The root context id, as Envoy numbers it.
const ROOT_CONTEXT: u32 = 1;
/// `Action::Continue` of the ABI.
const ACTION_CONTINUE: u32 = 0;

pub type HeaderList = Vec<(String, Vec<u8>)>;

/// Credentials the host keeps for every VM, answered by digest through
/// shared data ([`sessiongate_core::CREDENTIAL_KEY_PREFIX`]) instead of
/// being parsed into each VM's configuration: one compact set for the whole
/// process, however many VMs (`serve` with a large store).
#[derive(Clone, Default)]
pub struct HostCredentials(Arc<std::sync::RwLock<Arc<sessiongate_core::CredentialSet>>>);

impl HostCredentials {
    pub fn set(&self, credentials: Arc<sessiongate_core::CredentialSet>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = credentials;
    }

    /// The credential whose digest is `hex`, if held, as a JSON list of its
    /// one record.
    fn record_json(&self, hex: &str) -> Option<Vec<u8>> {
        let digest = sessiongate_core::parse_hash_hex(hex)?;
        let set = self.0.read().ok()?.clone();
        let record = set.by_hash(&digest)?.to_record();
        serde_json::to_vec(&[record]).ok()
    }
}

/// Counters every VM defines and increments by name (Envoy's stats).
#[derive(Default)]
pub struct Stats {
    names: Mutex<Vec<String>>,
    values: Mutex<Vec<Arc<AtomicI64>>>,
}

impl Stats {
    fn define(&self, _kind: u32, name: &str) -> u32 {
        let (Ok(mut names), Ok(mut values)) = (self.names.lock(), self.values.lock()) else {
            return 0;
        };
        if let Some(i) = names.iter().position(|n| n == name) {
            return i as u32;
        }
        names.push(name.to_owned());
        values.push(Arc::new(AtomicI64::new(0)));
        (names.len() - 1) as u32
    }

    fn increment(&self, id: u32, by: i64) -> bool {
        let Ok(values) = self.values.lock() else {
            return false;
        };
        match values.get(id as usize) {
            Some(v) => {
                v.fetch_add(by, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn snapshot(&self) -> Vec<(String, i64)> {
        let (Ok(names), Ok(values)) = (self.names.lock(), self.values.lock()) else {
            return Vec::new();
        };
        names
            .iter()
            .zip(values.iter())
            .map(|(n, v)| (n.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A response the filter sent itself.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: u16,
    pub headers: HeaderList,
    pub body: Vec<u8>,
}

/// Streams by context id. The host numbers contexts itself (no client
/// picks a key), so a multiply hash does: every host call looks its stream
/// up, and SipHash's resistance to chosen keys buys nothing here.
type Streams = rustc_hash::FxHashMap<u32, Stream>;

/// An HTTP call a filter made (`proxy_http_call`), for the host to send.
#[derive(Debug, Clone)]
pub struct Callout {
    /// The stream that made it, and the token its answer goes back with.
    pub context: u32,
    pub token: u32,
    pub cluster: String,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) and the rest.
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// A callout's answer as the filter reads it.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// With `:status`.
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
}

impl CallResponse {
    /// Its headers', body's and trailers' sizes, as
    /// `proxy_on_http_call_response` takes them (zeros: the call failed).
    fn sizes(response: Option<&CallResponse>) -> (u32, u32, u32) {
        response.map_or((0, 0, 0), |r| {
            (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            )
        })
    }
}

/// The host's view of one HTTP stream.
#[derive(Default)]
pub struct Stream {
    pub request_headers: HeaderList,
    pub response_headers: HeaderList,
    pub local_reply: Option<LocalReply>,
    /// The client's address, formatted only if the filter asks for it.
    pub source_address: Option<std::net::SocketAddr>,
    /// What the filter set with `proxy_set_property` (path parts joined by `.`).
    pub properties: HashMap<String, Vec<u8>>,
    /// The callout answer being delivered.
    pub call_response: Option<CallResponse>,
    /// The filter let the paused request go on (`proxy_continue_stream`).
    pub continued: bool,
}

/// Where log lines go, with proxy-wasm's level (0 trace … 5 critical): the
/// filter's and the host's own.
pub type LogSink = Arc<dyn Fn(u32, &str) + Send + Sync>;
/// proxy-wasm's `warn` level.
const LOG_WARN: u32 = 3;
/// The host clock, in Unix nanoseconds: the system clock, or a fake one for benches.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// Exports of the guest the host calls back into, found on first use.
#[derive(Default)]
pub struct GuestExports {
    memory: Option<wasmtime::Memory>,
    allocate: Option<wasmtime::TypedFunc<u32, u32>>,
}

pub struct VmState {
    wasi: WasiP1Ctx,
    guest: GuestExports,
    vm_id: usize,
    effective: u32,
    plugin_config: Arc<Vec<u8>>,
    streams: Streams,
    shared: SharedData,
    credentials: HostCredentials,
    stats: Arc<Stats>,
    log: LogSink,
    clock: Clock,
    /// The clusters `proxy_http_call` may name.
    clusters: Arc<HashSet<String>>,
    /// Calls made during the current callback, for the host to send.
    calls: Vec<Callout>,
    next_token: u32,
    /// What the filter asked with `proxy_set_tick_period_milliseconds` (0: no tick).
    tick_ms: u32,
}

/// The compiled filter and what every VM shares.
#[derive(Clone)]
pub struct Plugin {
    engine: Engine,
    module: Module,
    linker: Arc<Linker<VmState>>,
    shared: SharedData,
    credentials: HostCredentials,
    stats: Arc<Stats>,
    log: LogSink,
    /// What `proxy_get_current_time_nanoseconds` answers in new VMs.
    clock: Clock,
    /// The clusters `proxy_http_call` may name (Envoy's cluster names).
    clusters: Arc<HashSet<String>>,
}

impl Plugin {
    /// Compiles a filter module and checks it speaks ABI 0.2.1.
    pub fn compile(wasm: &[u8], log: LogSink) -> Result<Plugin> {
        Plugin::compile_cached(wasm, log, None)
    }

    /// As [`Plugin::compile`], keeping the compiled module in `cache_dir`
    /// (keyed by the module's SHA-256 and wasmtime's compatibility hash), so
    /// a restart skips Cranelift.
    pub fn compile_cached(
        wasm: &[u8],
        log: LogSink,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Plugin> {
        let mut config = Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `perf` names the guest's functions from /tmp/perf-<pid>.map (build
        // the filter with its name section for Rust names).
        let perfmap = std::env::var_os("SESSIONGATE_PERF_MAP").is_some();
        if perfmap {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| anyhow!("wasmtime: {e:?}"))?;
        // A cached module was compiled without the map: compile afresh.
        let module = load_or_compile(&engine, wasm, cache_dir.filter(|_| !perfmap), &log)?;
        if module.get_export("proxy_abi_version_0_2_1").is_none() {
            bail!(
                "the plugin does not export proxy_abi_version_0_2_1: not a proxy-wasm 0.2.1 filter"
            );
        }
        let mut linker: Linker<VmState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut VmState| &mut s.wasi)
            .map_err(|e| anyhow!("{e:?}"))?;
        abi::add_to_linker(&mut linker).map_err(|e| anyhow!("{e:?}"))?;
        // Imports the filter links but never calls (gRPC, queues): calling
        // one traps, and the host then replaces the VM.
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| anyhow!("{e:?}"))?;
        Ok(Plugin {
            engine,
            module,
            linker: Arc::new(linker),
            shared: SharedData::default(),
            credentials: HostCredentials::default(),
            stats: Arc::new(Stats::default()),
            log,
            clock: system_clock(),
            clusters: Arc::new(HashSet::new()),
        })
    }

    /// The shared data every VM of this plugin uses.
    pub fn shared(&self) -> &SharedData {
        &self.shared
    }

    /// The credentials the host answers by digest through shared data.
    pub fn credentials(&self) -> &HostCredentials {
        &self.credentials
    }

    /// The stats every VM defines and counts.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// New VMs read this clock (benches run a fake one).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The clusters a filter's `proxy_http_call` may name in new VMs; a
    /// call to another is refused as Envoy refuses it (`BadArgument`).
    pub fn set_clusters(&mut self, clusters: impl IntoIterator<Item = String>) {
        self.clusters = Arc::new(clusters.into_iter().collect());
    }

    /// Starts one VM and configures it. A refused configuration is an error.
    pub fn start_vm(&self, vm_id: usize, config: Arc<Vec<u8>>) -> Result<Vm> {
        let state = VmState {
            wasi: WasiCtxBuilder::new().inherit_stderr().build_p1(),
            guest: GuestExports::default(),
            vm_id,
            effective: ROOT_CONTEXT,
            plugin_config: config,
            streams: Streams::default(),
            shared: self.shared.clone(),
            credentials: self.credentials.clone(),
            stats: self.stats.clone(),
            log: self.log.clone(),
            clock: self.clock.clone(),
            clusters: self.clusters.clone(),
            calls: Vec::new(),
            next_token: 0,
            tick_ms: 0,
        };
        let mut store = Store::new(&self.engine, state);
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| anyhow!("cannot instantiate the plugin: {e:?}"))?;
        let exports = Exports::new(&mut store, &instance)?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())
                .map_err(|e| anyhow!("_initialize trapped: {e:?}"))?;
        }
        let mut vm = Vm {
            store,
            exports,
            next_context: ROOT_CONTEXT + 1,
            parked: Default::default(),
        };
        vm.call(|vm| {
            vm.exports
                .on_context_create
                .call(&mut vm.store, (ROOT_CONTEXT, 0))
        })?;
        let started = vm.call(|vm| {
            vm.exports
                .on_vm_start
                .call(&mut vm.store, (ROOT_CONTEXT, 0))
        })?;
        if started == 0 {
            bail!("the plugin refused to start (proxy_on_vm_start returned false)");
        }
        vm.configure(vm.store.data().plugin_config.clone())?;
        Ok(vm)
    }
}

fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&std::path::Path>,
    log: &LogSink,
) -> Result<Module> {
    use std::hash::{Hash as _, Hasher as _};
    let compile =
        || Module::new(engine, wasm).map_err(|e| anyhow!("cannot compile the plugin: {e:?}"));
    let Some(dir) = cache_dir else {
        return compile();
    };
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let digest = sessiongate_core::hash_hex(&sessiongate_core::hash_secret(wasm));
    let path = dir.join(format!("{digest}-{:016x}.cwasm", compat.finish()));
    if path.exists() {
        // SAFETY: the file is one this host wrote with `Module::serialize` for
        // this exact module and engine configuration (both are in its name).
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => return Ok(module),
            Err(e) => log(
                LOG_WARN,
                &format!("ignoring the module cache {}: {e:?}", path.display()),
            ),
        }
    }
    let module = compile()?;
    let written = module
        .serialize()
        .map_err(|e| anyhow!("{e:?}"))
        .and_then(|bytes| {
            std::fs::create_dir_all(dir)?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        });
    if let Err(e) = written {
        log(
            LOG_WARN,
            &format!("cannot write the module cache {}: {e:#}", path.display()),
        );
    }
    Ok(module)
}

struct Exports {
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_vm_start: TypedFunc<(u32, u32), u32>,
    on_configure: TypedFunc<(u32, u32), u32>,
    on_request_headers: TypedFunc<(u32, u32, u32), u32>,
    on_response_headers: TypedFunc<(u32, u32, u32), u32>,
    on_http_call_response: TypedFunc<(u32, u32, u32, u32, u32), ()>,
    on_tick: TypedFunc<u32, ()>,
    on_done: TypedFunc<u32, u32>,
    on_log: TypedFunc<u32, ()>,
    on_delete: TypedFunc<u32, ()>,
}

impl Exports {
    fn new(store: &mut Store<VmState>, instance: &Instance) -> Result<Exports> {
        macro_rules! get {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut *store, $name)
                    .map_err(|e| anyhow!("the plugin's {} is missing or mistyped: {e:?}", $name))?
            };
        }
        Ok(Exports {
            on_context_create: get!("proxy_on_context_create"),
            on_vm_start: get!("proxy_on_vm_start"),
            on_configure: get!("proxy_on_configure"),
            on_request_headers: get!("proxy_on_request_headers"),
            on_response_headers: get!("proxy_on_response_headers"),
            on_http_call_response: get!("proxy_on_http_call_response"),
            on_tick: get!("proxy_on_tick"),
            on_done: get!("proxy_on_done"),
            on_log: get!("proxy_on_log"),
            on_delete: get!("proxy_on_delete"),
        })
    }
}

/// One VM: a store and an instance of the filter. Not shared between threads
/// at once (the caller holds it behind a lock, as Envoy pins a VM to a worker).
pub struct Vm {
    store: Store<VmState>,
    exports: Exports,
    next_context: u32,
    /// Streams the filter paused with no call of their own: another
    /// context's callback answers them (a group commit's, from the root
    /// context, through `proxy_set_effective_context`).
    parked: std::collections::BTreeSet<u32>,
}

impl Vm {
    /// Streams the VM holds: each ends when its request is answered.
    pub fn open_streams(&self) -> usize {
        self.store.data().streams.len()
    }
}

mod root;

impl Vm {}

/// What the request phase decided.
pub enum RequestPhase {
    /// The filter answered; the stream is finished.
    Reply(LocalReply, HashMap<String, Vec<u8>>),
    /// Forward upstream with these (rewritten) headers; finish with `respond`.
    Continue { context: u32, headers: HeaderList },
    /// The filter paused the request on these calls: send them, and hand
    /// each answer back with [`Vm::on_call_response`]. No calls: another
    /// context's callback answers it; [`Vm::take_resumed`] says when.
    Paused { context: u32, calls: Vec<Callout> },
}

impl Vm {
    fn call<T>(&mut self, f: impl FnOnce(&mut Vm) -> wasmtime::Result<T>) -> Result<T> {
        f(self).map_err(|e| anyhow!("the plugin trapped: {e:?}"))
    }

    /// Gives the root context a new configuration (`proxy_on_configure`). On
    /// refusal the filter keeps its last good configuration.
    pub fn configure(&mut self, config: Arc<Vec<u8>>) -> Result<()> {
        let size = config.len() as u32;
        self.store.data_mut().plugin_config = config;
        self.store.data_mut().effective = ROOT_CONTEXT;
        let ok = self.call(|vm| {
            vm.exports
                .on_configure
                .call(&mut vm.store, (ROOT_CONTEXT, size))
        })?;
        if ok == 0 {
            bail!("the plugin refused its configuration (see its log above)");
        }
        Ok(())
    }

    /// Runs `proxy_on_request_headers` for a new stream.
    pub fn on_request(
        &mut self,
        headers: HeaderList,
        source: Option<std::net::SocketAddr>,
    ) -> Result<RequestPhase> {
        let context = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(ROOT_CONTEXT + 1);
        let count = headers.len() as u32;
        self.store.data_mut().streams.insert(
            context,
            Stream {
                request_headers: headers,
                source_address: source,
                ..Stream::default()
            },
        );
        self.store.data_mut().effective = context;
        let result = self
            .call(|vm| {
                vm.exports
                    .on_context_create
                    .call(&mut vm.store, (context, ROOT_CONTEXT))
            })
            .and_then(|()| {
                self.call(|vm| {
                    vm.exports
                        .on_request_headers
                        .call(&mut vm.store, (context, count, 1))
                })
            });
        let action = match result {
            Ok(a) => a,
            Err(e) => {
                self.store.data_mut().streams.remove(&context);
                return Err(e);
            }
        };
        self.after_callback(context, action == ACTION_CONTINUE)
    }

    /// Delivers a callout's answer (`None`: the call failed: no response,
    /// reset, timeout) to the filter, as Envoy does, and says what the
    /// stream does next.
    pub fn on_call_response(
        &mut self,
        context: u32,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<RequestPhase> {
        let sizes = CallResponse::sizes(response.as_ref());
        match self.store.data_mut().streams.get_mut(&context) {
            Some(stream) => stream.call_response = response,
            None => bail!("no stream {context} for the callout's answer"),
        }
        self.store.data_mut().effective = context;
        let result = self.call(|vm| vm.deliver_call_response(token, sizes));
        if let Some(stream) = self.store.data_mut().streams.get_mut(&context) {
            stream.call_response = None;
        }
        if let Err(e) = result {
            self.store.data_mut().streams.remove(&context);
            return Err(e);
        }
        let continued = self
            .store
            .data_mut()
            .streams
            .get_mut(&context)
            .is_some_and(|s| std::mem::take(&mut s.continued));
        self.after_callback(context, continued)
    }

    /// Runs `proxy_on_http_call_response` for the call `token`, whose answer
    /// the effective context's stream holds.
    fn deliver_call_response(
        &mut self,
        token: u32,
        (headers, body, trailers): (u32, u32, u32),
    ) -> wasmtime::Result<()> {
        self.exports.on_http_call_response.call(
            &mut self.store,
            (ROOT_CONTEXT, token, headers, body, trailers),
        )
    }

    /// After a callback on a request: its local reply, the calls it made, or
    /// (if it let the request go on) the headers to forward with.
    fn after_callback(&mut self, context: u32, continued: bool) -> Result<RequestPhase> {
        let reply = self
            .store
            .data_mut()
            .streams
            .get_mut(&context)
            .and_then(|s| s.local_reply.take());
        let calls = std::mem::take(&mut self.store.data_mut().calls);
        if let Some(reply) = reply {
            let props = self.finish(context)?;
            return Ok(RequestPhase::Reply(reply, props));
        }
        if !continued {
            if calls.is_empty() {
                self.parked.insert(context);
            }
            return Ok(RequestPhase::Paused { context, calls });
        }
        let headers = self
            .store
            .data()
            .streams
            .get(&context)
            .map(|s| s.request_headers.clone())
            .unwrap_or_default();
        Ok(RequestPhase::Continue { context, headers })
    }

    /// Runs `proxy_on_response_headers` on the upstream's (or the host's own)
    /// response, then ends the stream. Returns the headers as the filter left them.
    pub fn on_response(
        &mut self,
        context: u32,
        headers: HeaderList,
    ) -> Result<(HeaderList, HashMap<String, Vec<u8>>)> {
        let count = headers.len() as u32;
        match self.store.data_mut().streams.get_mut(&context) {
            Some(s) => s.response_headers = headers,
            None => bail!("no stream {context}"),
        }
        self.store.data_mut().effective = context;
        let result = self.call(|vm| {
            vm.exports
                .on_response_headers
                .call(&mut vm.store, (context, count, 0))
        });
        let headers = self
            .store
            .data_mut()
            .streams
            .get_mut(&context)
            .map(|s| std::mem::take(&mut s.response_headers))
            .unwrap_or_default();
        let props = self.finish(context)?;
        result?;
        Ok((headers, props))
    }

    /// The parked streams another context's callback has answered since:
    /// each with its phase (a reply, or headers to forward with).
    pub fn take_resumed(&mut self) -> Vec<(u32, Result<RequestPhase>)> {
        let mut resumed = Vec::new();
        for context in std::mem::take(&mut self.parked) {
            let Some(s) = self.store.data_mut().streams.get_mut(&context) else {
                continue;
            };
            let reply = s.local_reply.take();
            let continued = std::mem::take(&mut s.continued).then(|| s.request_headers.clone());
            match (reply, continued) {
                (Some(reply), _) => {
                    let phase = self
                        .finish(context)
                        .map(|props| RequestPhase::Reply(reply, props));
                    resumed.push((context, phase));
                }
                (None, Some(headers)) => {
                    resumed.push((context, Ok(RequestPhase::Continue { context, headers })));
                }
                (None, None) => {
                    self.parked.insert(context);
                }
            }
        }
        resumed
    }

    /// Ends a parked stream whose request will not be answered (its client
    /// went away, or the host gave up on it): the filter forgets it.
    pub fn abandon(&mut self, context: u32) -> Result<()> {
        if self.parked.remove(&context) {
            self.finish(context)?;
        }
        Ok(())
    }

    /// Ends a stream as Envoy does: done, log, delete.
    fn finish(&mut self, context: u32) -> Result<HashMap<String, Vec<u8>>> {
        self.store.data_mut().effective = context;
        let result = self
            .call(|vm| vm.exports.on_done.call(&mut vm.store, context))
            .and_then(|_| self.call(|vm| vm.exports.on_log.call(&mut vm.store, context)))
            .and_then(|()| self.call(|vm| vm.exports.on_delete.call(&mut vm.store, context)));
        let props = self
            .store
            .data_mut()
            .streams
            .remove(&context)
            .map(|s| s.properties)
            .unwrap_or_default();
        result.context("ending the stream")?;
        Ok(props)
    }
}
