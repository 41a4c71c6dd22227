//! `sessiongate serve`: HTTP/1.1 on tokio + hyper, every request through the
//! proxy-wasm filter under wasmtime, as Envoy would run it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use sessiongate_core::{Backend, CredentialSet, GateConfig, LimitConfig, is_per_hop};
use tokio::net::TcpListener;

use crate::component::{ComponentHost, KeyValue};
use crate::host::{HeaderList, Plugin, RequestPhase, Vm};
use crate::parse_errors::JsonParseErrors;
use crate::store;
use sessiongate_spin::CLIENT_ADDR_HEADER;

/// The filter built by `build.rs` for wasm32-wasip1.
pub static EMBEDDED_PLUGIN: &[u8] = include_bytes!(env!("SESSIONGATE_PLUGIN_WASM"));
const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration (default: the embedded one, shown in the README).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Load this filter instead of the embedded one.
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// Serve a wasi:http 0.3 component (the Spin build) instead of the
    /// filter: instances reused one request at a time, its key-value store on the same
    /// shared data.
    #[arg(long, value_name = "FILE", conflicts_with = "plugin")]
    component: Option<PathBuf>,
    /// Token store (overrides `store`).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Number of VMs, like Envoy's worker threads (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Log one line per request (overrides `access_log`).
    #[arg(long)]
    access_log: bool,
}

/// The TOML configuration of `serve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeConfig {
    listen: Option<String>,
    store: Option<PathBuf>,
    backend: Option<String>,
    limit: Option<LimitConfig>,
    fail_open: Option<bool>,
    workers: Option<usize>,
    upstream_timeout_ms: Option<u64>,
    stub_sessions_per_site: Option<u32>,
    guard: Option<sessiongate_core::GuardConfig>,
    /// One line per request on stderr, written by a logging thread.
    access_log: Option<bool>,
    testing: Option<Testing>,
}

/// Fault injection, for chaos tests of a deployment: never set in production.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Testing {
    /// Every shared-data call fails, as a lost limiter store would.
    #[serde(default)]
    fail_limiter_store: bool,
}

/// Everything `serve` runs with, after defaults and flags.
struct Settings {
    listen: String,
    store: PathBuf,
    gate: GateConfig,
    workers: usize,
    upstream_timeout: Duration,
    fail_limiter_store: bool,
    access_log: bool,
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?,
        None => DEFAULT_CONFIG.to_owned(),
    };
    let name = args
        .config
        .as_ref()
        .map_or("the embedded default config".to_owned(), |p| {
            p.display().to_string()
        });
    let file: ServeConfig = toml::from_str(&text).map_err(|e| anyhow!("{name}: {e}"))?;
    let backend = Backend::parse(file.backend.as_deref().unwrap_or("stub"))
        .map_err(|e| anyhow!("{name}: {e}"))?;
    if backend == Backend::Upstream(None) {
        bail!("{name}: backend must be \"stub\" or an http:// URL for `serve`");
    }
    let gate = GateConfig {
        credentials: CredentialSet::default(),
        limit: file.limit.unwrap_or_default(),
        backend,
        fail_open: file.fail_open.unwrap_or(false),
        stub_sessions_per_site: file
            .stub_sessions_per_site
            .unwrap_or(sessiongate_core::DEFAULT_SESSIONS_PER_SITE),
        guard: file.guard.unwrap_or_default(),
    };
    gate.validate().map_err(|e| anyhow!("{name}: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(Settings {
        listen: args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
        store: args
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| "sessiongate-tokens.json".into()),
        gate,
        workers: args.workers.or(file.workers).unwrap_or(cores).max(1),
        upstream_timeout: Duration::from_millis(file.upstream_timeout_ms.unwrap_or(10_000)),
        fail_limiter_store: file.testing.is_some_and(|t| t.fail_limiter_store),
        access_log: args.access_log || file.access_log.unwrap_or(false),
    })
}

/// Where compiled plugins are kept between runs (`$XDG_CACHE_HOME` or `~/.cache`).
fn module_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sessiongate").join("modules"))
}

fn log_line(level: u32, msg: &str) {
    let tag = match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        _ => "critical",
    };
    if level >= 2 {
        eprintln!("sessiongate {tag}: {msg}");
    }
}

/// The VMs, one per worker, and the configuration they run.
struct Pool {
    plugin: Plugin,
    vms: Vec<Mutex<Vm>>,
    next: AtomicUsize,
    config: RwLock<Arc<Vec<u8>>>,
}

impl Pool {
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.vms.len()
    }

    /// Runs `f` on VM `i`. A trap kills a VM, as in Envoy; here it is replaced
    /// by a fresh one so the next request is served normally.
    fn with_vm<T>(&self, i: usize, f: impl FnOnce(&mut Vm) -> Result<T>) -> Result<T> {
        let slot = self.vms.get(i).ok_or_else(|| anyhow!("no VM {i}"))?;
        let mut vm = slot.lock().map_err(|_| anyhow!("VM {i} lock poisoned"))?;
        let result = f(&mut vm);
        if let Err(e) = &result {
            eprintln!("sessiongate error: VM {i} failed: {e:#}; starting a fresh one");
            let config = self.current_config();
            match self.plugin.start_vm(i, config) {
                Ok(fresh) => *vm = fresh,
                Err(e) => eprintln!("sessiongate error: cannot restart VM {i}: {e:#}"),
            }
        }
        result
    }

    fn current_config(&self) -> Arc<Vec<u8>> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Hands every VM a new configuration; on refusal the VMs keep the old one.
    fn reconfigure(&self, config: Vec<u8>) -> Result<()> {
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

/// What runs the gate: the proxy-wasm filter's VMs, or a component.
enum Runner {
    Filter(Pool),
    Component(ComponentHost),
}

/// The access log: off by default, so the hot path logs nothing. When on,
/// request threads hand their line to a logging thread that writes through a
/// buffer and flushes whenever it runs out of lines: no syscall on the
/// request path, and one write per burst under load.
struct AccessLog(Option<std::sync::mpsc::Sender<String>>);

impl AccessLog {
    fn start(enabled: bool) -> AccessLog {
        if !enabled {
            return AccessLog(None);
        }
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                use std::io::Write as _;
                let mut out = std::io::BufWriter::new(std::io::stderr());
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            });
        match spawned {
            Ok(_) => AccessLog(Some(tx)),
            Err(e) => {
                eprintln!("sessiongate warn: no access log: {e}");
                AccessLog(None)
            }
        }
    }

    fn enabled(&self) -> bool {
        self.0.is_some()
    }

    fn write(&self, line: String) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(line);
        }
    }
}

struct App {
    runner: Runner,
    access_log: AccessLog,
    backend: Backend,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream_timeout: Duration,
}

impl App {
    /// Hands the gate a new configuration; on refusal the old one stays.
    fn reconfigure(&self, config: Vec<u8>) -> Result<()> {
        match &self.runner {
            Runner::Filter(pool) => pool.reconfigure(config),
            Runner::Component(host) => {
                // Checked here, as a filter VM would on configure: the
                // component would otherwise refuse every request.
                sessiongate_core::Gate::from_json(&config).map_err(|e| anyhow!(e))?;
                let mut current = host
                    .kv
                    .config
                    .write()
                    .map_err(|_| anyhow!("configuration lock poisoned"))?;
                *current = Arc::new(config);
                Ok(())
            }
        }
    }
}

fn gate_config_json(base: &GateConfig, credentials: CredentialSet) -> Result<Vec<u8>> {
    let config = GateConfig {
        credentials,
        ..base.clone()
    };
    Ok(serde_json::to_vec(&config)?)
}

pub fn run(args: ServeArgs) -> Result<()> {
    let settings = settings(&args)?;
    let started = Instant::now();
    let credentials = store::load_set(&settings.store)?;
    if credentials.is_empty() {
        eprintln!(
            "sessiongate: the token store {} has no credentials yet. Mint one (in another shell):\n  \
             TOKEN=$(sessiongate token create --store {} --name demo --customer acme --all-sites)",
            settings.store.display(),
            settings.store.display()
        );
    }
    let config = Arc::new(gate_config_json(&settings.gate, credentials)?);
    let runner = match &args.component {
        Some(path) => component_runner(path, config, &settings)?,
        None => filter_runner(args.plugin.as_deref(), config, &settings)?,
    };
    let app = Arc::new(App {
        runner,
        access_log: AccessLog::start(settings.access_log),
        backend: settings.gate.backend.clone(),
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream_timeout: settings.upstream_timeout,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        .build()?;
    runtime.block_on(serve(app, settings, started))
}

fn fail_store_if_asked(shared: &crate::host::SharedData, settings: &Settings) {
    if settings.fail_limiter_store {
        eprintln!(
            "sessiongate WARNING: [testing] fail_limiter_store is set: every shared-data call fails"
        );
        shared.set_failing(true);
    }
}

fn filter_runner(
    plugin: Option<&Path>,
    config: Arc<Vec<u8>>,
    settings: &Settings,
) -> Result<Runner> {
    let wasm = match plugin {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?
        }
        None => EMBEDDED_PLUGIN.to_vec(),
    };
    let plugin = Plugin::compile_cached(&wasm, Arc::new(log_line), module_cache_dir().as_deref())?;
    fail_store_if_asked(&plugin.shared, settings);
    let vms = (0..settings.workers)
        .map(|i| plugin.start_vm(i, config.clone()).map(Mutex::new))
        .collect::<Result<Vec<_>>>()?;
    Ok(Runner::Filter(Pool {
        plugin,
        vms,
        next: AtomicUsize::new(0),
        config: RwLock::new(config),
    }))
}

fn component_runner(path: &Path, config: Arc<Vec<u8>>, settings: &Settings) -> Result<Runner> {
    let engine = crate::component::engine()?;
    let component = crate::component::load(&engine, path)?;
    let kv = KeyValue {
        shared: crate::host::SharedData::default(),
        config: Arc::new(RwLock::new(config)),
    };
    fail_store_if_asked(&kv.shared, settings);
    let host = ComponentHost::new(engine, &component, kv, settings.upstream_timeout)?;
    Ok(Runner::Component(host))
}

async fn serve(app: Arc<App>, settings: Settings, started: Instant) -> Result<()> {
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr()?;
    eprintln!(
        "sessiongate: listening on http://{local} ({}, backend {}, limit {}/{}s, store {}, ready in {} ms)",
        match &app.runner {
            Runner::Filter(_) => format!("{} VMs", settings.workers),
            Runner::Component(_) => "component, instances reused".to_owned(),
        },
        match &app.backend {
            Backend::Stub => "stub".to_owned(),
            Backend::Upstream(u) => u.clone().unwrap_or_default(),
        },
        settings.gate.limit.requests,
        settings.gate.limit.window_seconds,
        settings.store.display(),
        started.elapsed().as_millis()
    );
    tokio::spawn(watch_store(
        app.clone(),
        settings.gate.clone(),
        settings.store.clone(),
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("sessiongate warn: accept failed: {e}");
                        continue;
                    }
                };
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(app, req, peer).await) }
                });
                // Room for hostile header counts: the gate, not the parser,
                // answers many Authorization headers (400 invalid_request).
                let conn = http1::Builder::new()
                    .max_headers(1024)
                    .serve_connection(TokioIo::new(JsonParseErrors::new(stream)), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    eprintln!("sessiongate: shutting down, finishing requests in flight");
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("sessiongate warn: some connections did not finish within 10 s");
    }
    match &app.runner {
        Runner::Filter(pool) => {
            for (name, value) in pool.plugin.metrics.snapshot() {
                eprintln!("sessiongate metric: {name} {value}");
            }
        }
        Runner::Component(host) => eprintln!(
            "sessiongate metric: component_instances_created {}",
            host.instances_created()
        ),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Polls the token store; a change reaches every VM within the poll period.
/// An unreadable or corrupt store is logged loudly and the last good
/// credentials stay in force: never everything, never nothing by accident.
async fn watch_store(app: Arc<App>, base: GateConfig, path: PathBuf) {
    let stamp = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0u64;
            (m.modified().ok(), m.len(), ino)
        })
    };
    let mut last = stamp(&path);
    let mut interval = tokio::time::interval(Duration::from_millis(200));
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
            store::load_set(&path)
                .and_then(|credentials| gate_config_json(&base, credentials))
                .and_then(|config| app.reconfigure(config))
        };
        match reloaded {
            Ok(()) => eprintln!("sessiongate: token store {} reloaded", path.display()),
            Err(e) => eprintln!(
                "sessiongate ERROR: token store {} could not be loaded: {e:#}. \
                 Keeping the last good credentials.",
                path.display()
            ),
        }
    }
}

fn request_headers<B>(req: &Request<B>) -> HeaderList {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| req.headers().get("host").map(|h| h.as_bytes().to_vec()))
        .unwrap_or_default();
    let mut headers = vec![
        (
            ":method".to_owned(),
            req.method().as_str().as_bytes().to_vec(),
        ),
        (":path".to_owned(), path.into_bytes()),
        (":authority".to_owned(), authority),
        (":scheme".to_owned(), b"http".to_vec()),
    ];
    for (name, value) in req.headers() {
        headers.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
    }
    headers
}

fn build_response(status: u16, headers: &HeaderList, body: Bytes) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        if is_per_hop(name) {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| internal_error())
}

fn internal_error() -> Response<Full<Bytes>> {
    let reply =
        sessiongate_core::Gate::internal_error_reply("The gate failed to process the request.");
    let mut r = Response::new(Full::new(Bytes::from(reply.body.into_string())));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, value);
        }
    }
    r
}

async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    // Nothing is kept for the log unless it is on.
    let logged = app.access_log.enabled().then(|| {
        (
            Instant::now(),
            req.method().clone(),
            req.uri().path().to_owned(),
        )
    });
    let (response, credential) = match &app.runner {
        Runner::Filter(pool) => handle_filter(&app, pool, req, peer).await,
        Runner::Component(host) => (handle_component(host, req, peer).await, None),
    };
    if let Some((started, method, path)) = logged {
        app.access_log.write(format!(
            "access method={} path={} status={} credential={} latency_us={}",
            method,
            sanitize(&path),
            response.status().as_u16(),
            credential
                .as_deref()
                .map_or("-".to_owned(), |c| sanitize(&String::from_utf8_lossy(c))),
            started.elapsed().as_micros()
        ));
    }
    response
}

/// One request through the component. The client's address goes in the
/// header Spin uses, appended after the request's own headers as Spin's
/// trigger does: a value the client sent stays first, so the component is
/// tested here against what Spin really hands it (it trusts the last).
async fn handle_component(
    host: &ComponentHost,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if let Ok(value) = hyper::header::HeaderValue::from_str(&peer.to_string()) {
        req.headers_mut().append(CLIENT_ADDR_HEADER, value);
    }
    match host.handle(req).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let mut out = Response::new(Full::new(body));
            *out.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if !is_per_hop(name.as_str()) {
                    out.headers_mut().append(name, value.clone());
                }
            }
            out
        }
        Err(e) => {
            eprintln!("sessiongate error: {e:#}");
            internal_error()
        }
    }
}

type Credential = Option<Vec<u8>>;

/// One request through a filter VM, and on to the upstream if it says so.
async fn handle_filter(
    app: &App,
    pool: &Pool,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (Response<Full<Bytes>>, Credential) {
    let method = req.method().clone();
    let headers = request_headers(&req);
    let vm = pool.pick();
    let phase = pool.with_vm(vm, |v| v.on_request(headers, Some(peer.to_string())));
    match phase {
        Ok(RequestPhase::Reply(reply, props)) => (
            build_response(reply.status, &reply.headers, Bytes::from(reply.body)),
            props.get("sessiongate_credential").cloned(),
        ),
        Ok(RequestPhase::Continue { context, headers }) => {
            let upstream = forward(app, &method, &headers).await;
            let (status, response_headers, body) = match upstream {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sessiongate warn: upstream unavailable: {e:#}");
                    // The filter's response phase adds the rate-limit headers.
                    let reply = sessiongate_core::Gate::upstream_unavailable(None);
                    let headers = reply.headers.iter();
                    let headers = headers.map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()));
                    (
                        reply.status,
                        headers.collect(),
                        Bytes::from(reply.body.into_string()),
                    )
                }
            };
            let mut with_status = vec![(":status".to_owned(), status.to_string().into_bytes())];
            with_status.extend(response_headers);
            match pool.with_vm(vm, |v| v.on_response(context, with_status)) {
                Ok((headers, props)) => (
                    build_response(status, &headers, body),
                    props.get("sessiongate_credential").cloned(),
                ),
                Err(_) => (internal_error(), None),
            }
        }
        Err(_) => (internal_error(), None),
    }
}

/// Log fields stay on one line and printable.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(256)
        .map(|c| if c.is_control() || c == ' ' { '_' } else { c })
        .collect()
}

/// Sends the rewritten request to the upstream and reads its whole response.
async fn forward(
    app: &App,
    method: &hyper::Method,
    headers: &HeaderList,
) -> Result<(u16, HeaderList, Bytes)> {
    let Backend::Upstream(Some(base)) = &app.backend else {
        bail!("the filter forwarded but no upstream URL is configured");
    };
    let path = headers
        .iter()
        .find(|(n, _)| n == ":path")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "/".into());
    let uri: hyper::Uri = format!("{base}{path}").parse()?;
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in headers {
        // The filter rewrote the request; what belongs to this hop stays.
        if is_per_hop(name) || name == "host" {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let request = builder.body(Full::new(Bytes::new()))?;
    let exchange = async {
        let response = app.client.request(request).await?;
        let status = response.status().as_u16();
        let headers: HeaderList = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, headers, body))
    };
    tokio::time::timeout(app.upstream_timeout, exchange)
        .await
        .map_err(|_| anyhow!("timed out after {:?}", app.upstream_timeout))?
}
