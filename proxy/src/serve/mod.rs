//! `sessiongate serve`: HTTP/1.1 on tokio + hyper, every request through the
//! proxy-wasm filter under wasmtime, as Envoy would run it (or through the
//! wasi:http component, as Spin would).
//!
//! - [`settings`]: the TOML and the flags over it;
//! - [`pool`]: the filter's VMs;
//! - [`handle`]: one request, and hyper's types to the host's;
//! - [`connections`]: caps, header and idle timeouts, `accept` failures;
//! - [`watch`]: the token store, reloaded when it changes;
//! - [`reload`]: the configuration file, reloaded on SIGHUP;
//! - [`admin`]: `/metrics` ([`metrics`]), `/healthz`, `/readyz`;
//! - [`access_log`]: off the request path;
//! - [`last_use`]: what was admitted, flushed to the store off the request path.

mod access_log;
mod admin;
mod body;
mod handle;
mod last_use;
mod metrics;
mod pool;
mod reload;
mod runner;
mod settings;
use runner::{clusters, component_runner, filter_runner};
mod tick;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use sessiongate_core::{Backend, CredentialSet, CredentialSource, GateConfig, LimiterStore};
use tokio::net::TcpStream;

use crate::connections::{
    AcceptErrors, Activity, Admission, Limits, Phase, Refusal, Ticket, Tracked, supervise,
    tracked_service,
};
use crate::log;
use crate::parse_errors::JsonParseErrors;
use access_log::AccessLog;
use metrics::Metrics;
use pool::{Pool, log_line};
use sessiongate_component_host::{Backing, EtcdBucket};
use sessiongate_component_host::{ComponentHost, KeyValue, Semantics};
use sessiongate_filter_host::Plugin;
use sessiongate_store::Store;
use settings::{Settings, module_cache_dir, settings};
use watch::{gate_config_json, watch_store};

/// The filter built by `build.rs` for wasm32-wasip1.
pub static EMBEDDED_PLUGIN: &[u8] = include_bytes!(env!("SESSIONGATE_PLUGIN_WASM"));

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// TOML configuration (default: the embedded one, shown in the README).
    /// Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// The admin listener for /metrics, /healthz and /readyz (overrides
    /// `admin`; default 127.0.0.1:9901), or `off`.
    #[arg(long, value_name = "ADDR|off")]
    pub(crate) admin: Option<String>,
    /// Load this filter instead of the embedded one.
    #[arg(long, value_name = "FILE")]
    pub(crate) plugin: Option<PathBuf>,
    /// Serve a wasi:http component (either Spin build: 0.3 or 0.2) instead
    /// of the filter, its key-value store on the same shared data.
    #[arg(long, value_name = "FILE", conflicts_with = "plugin")]
    pub(crate) component: Option<PathBuf>,
    /// How the component's key-value swap behaves: `strict`, or as Spin's
    /// SQLite (`spin-sqlite`) or Redis (`spin-redis`) store does.
    #[arg(long, value_enum, default_value_t, requires = "component")]
    pub(crate) key_value_semantics: Semantics,
    /// Token store (overrides `store`).
    #[arg(long, value_name = "FILE")]
    pub(crate) store: Option<PathBuf>,
    /// The filter looks each presented credential up in the store (an
    /// etcd:// one) by digest, with a cache per VM and a tick that drops
    /// what changed, instead of holding every credential (overrides
    /// `credentials_from_store`).
    #[arg(long)]
    pub(crate) credentials_from_store: bool,
    /// Number of VMs, like Envoy's worker threads (default: the number of cores).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Log one line per request (overrides `access_log`).
    #[arg(long)]
    pub(crate) access_log: bool,
    /// `plain` lines for people, or `json`: one object a line, for log
    /// pipelines (overrides `log_format`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<log::Format>,
}

/// What runs the gate: the proxy-wasm filter's VMs, or a component.
enum Runner {
    Filter(Pool),
    Component(ComponentHost),
}

/// What a reload can change besides the gate's own configuration.
struct Live {
    backend: Backend,
    upstream_timeout: Duration,
    limits: Limits,
}

/// The gate's configuration in its two halves: the settings' and the
/// store's. Either changes alone, and the gate is handed both.
struct GateParts {
    base: GateConfig,
    credentials: Arc<CredentialSet>,
}

/// Above this many credentials the filter's VMs do not get them in their
/// configuration: the host keeps one set and answers each lookup by digest
/// (`HostCredentials`). Below it, inline is a little faster a request and
/// costs little memory; above, parsing the set into every VM costs seconds
/// and a copy per VM.
const INLINE_MAX: usize = 10_000;

/// Whether `credentials` are kept by the host rather than each VM.
fn hosted(runner_is_filter: bool, credentials: &CredentialSet) -> bool {
    runner_is_filter && credentials.len() > INLINE_MAX
}

/// The configuration JSON the gate runs: with the credentials, or without
/// when the host keeps them.
/// A host that keeps the set tells the VMs whether every token in it
/// carries a checksum, so that a wrong one costs no lookup.
fn gate_config(base: &GateConfig, credentials: &CredentialSet, hosted: bool) -> Result<Vec<u8>> {
    if !hosted {
        return gate_config_json(base, credentials.clone());
    }
    let base = GateConfig {
        checksummed_tokens: !credentials.holds_unchecksummed_tokens(),
        ..base.clone()
    };
    gate_config_json(&base, CredentialSet::default())
}

/// Whether the token store has been loaded, and its last failure.
#[derive(Default)]
struct StoreHealth {
    loaded: AtomicBool,
    error: Mutex<Option<String>>,
}

struct App {
    runner: Runner,
    access_log: AccessLog,
    /// The clusters the filter's `proxy_http_call`s go to (etcd's members).
    clusters: Vec<Arc<sessiongate_etcd::Cluster>>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    accept_errors: Mutex<AcceptErrors>,
    live: RwLock<Arc<Live>>,
    gate: Mutex<GateParts>,
    /// The token store, opened once.
    store: Store,
    store_health: StoreHealth,
    /// The file store's stamp as it was loaded (what the watch compares with).
    loaded_stamp: watch::FileStamp,
    last_use: last_use::LastUseLog,
}

impl App {
    fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_live(&self, live: Live) {
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
    }

    fn gate_parts(&self) -> std::sync::MutexGuard<'_, GateParts> {
        self.gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// New credentials from the store, with the settings in force.
    fn set_credentials(&self, credentials: CredentialSet) -> Result<()> {
        let mut parts = self.gate_parts();
        let base = parts.base.clone();
        self.apply(&mut parts, base, Arc::new(credentials))
    }

    /// New settings (a reload), with the credentials in force.
    fn set_base(&self, base: GateConfig) -> Result<()> {
        let mut parts = self.gate_parts();
        let credentials = parts.credentials.clone();
        self.apply(&mut parts, base, credentials)
    }

    /// Hands the gate `base` and `credentials`, and keeps them in `parts`;
    /// on refusal nothing changes. A credential is never in neither place:
    /// the host's set is filled before the VMs drop theirs, and emptied
    /// after they take them.
    fn apply(
        &self,
        parts: &mut GateParts,
        base: GateConfig,
        credentials: Arc<CredentialSet>,
    ) -> Result<()> {
        let host = match &self.runner {
            Runner::Filter(pool) => Some(pool.plugin.credentials()),
            Runner::Component(_) => None,
        };
        let was_hosted = hosted(host.is_some(), &parts.credentials);
        let hosted = hosted(host.is_some(), &credentials);
        if let (Some(host), true) = (host, hosted) {
            host.set(credentials.clone());
        }
        let configured = gate_config(&base, &credentials, hosted).and_then(|c| self.reconfigure(c));
        if let Err(e) = configured {
            if let Some(host) = host {
                host.set(if was_hosted {
                    parts.credentials.clone()
                } else {
                    Arc::default()
                });
            }
            return Err(e);
        }
        if let (Some(host), false) = (host, hosted) {
            host.set(Arc::default());
        }
        // The base holds no list (its credentials are in `parts`), or the
        // store the filter looks them up in.
        parts.base = base;
        parts.credentials = credentials;
        Ok(())
    }

    fn credential_count(&self) -> usize {
        self.gate_parts().credentials.len()
    }

    /// The limiter's shared data, when the limit lives in this process.
    fn shared_data(&self) -> Option<&sessiongate_filter_host::SharedData> {
        match &self.runner {
            Runner::Filter(pool) => Some(pool.plugin.shared()),
            Runner::Component(host) => match &host.kv.backing {
                Backing::Shared(shared) => Some(shared),
                Backing::Etcd(_) => None,
            },
        }
    }

    fn limiter_store_errors(&self) -> u64 {
        let shared = self.shared_data().map_or(0, |s| s.failures());
        shared + self.clusters.iter().map(|c| c.failures()).sum::<u64>()
    }

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

pub fn run(args: ServeArgs) -> Result<()> {
    let file_limit = crate::connections::raise_file_limit();
    let settings = settings(&args, file_limit)?;
    log::set_format(settings.log_format);
    let started = Instant::now();
    let store_health = StoreHealth::default();
    let store = Store::open(&settings.store)?;
    let loaded_stamp = match &store {
        Store::File(path) => watch::stamp(path),
        Store::Etcd(_) => None,
    };
    let looked_up = matches!(settings.gate.credentials, CredentialSource::Etcd(_));
    let loaded = if looked_up {
        log::info(format_args!(
            "credentials: looked up by digest in {} as requests present them (a cache per VM; \
             a change holds in every VM within a tick)",
            store.location()
        ));
        Ok(CredentialSet::default())
    } else {
        store.load_set()
    };
    let credentials = match loaded {
        Ok(credentials) => {
            store_health.loaded.store(true, Ordering::Relaxed);
            credentials
        }
        // A store that cannot be read: serve (every credential refused,
        // /readyz not ready) and take the credentials as soon as it can be.
        Err(e) => {
            log::error(format_args!(
                "token store {} could not be loaded: {e:#}. \
                 Starting with no credentials (not ready) until it can.",
                store.location()
            ));
            *store_health
                .error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!("{e:#}"));
            CredentialSet::default()
        }
    };
    if credentials.is_empty() && store_health.loaded.load(Ordering::Relaxed) && !looked_up {
        log::info(format_args!(
            "the token store {} has no credentials yet. Mint one (in another shell):\n  \
             TOKEN=$(sessiongate token create --store {} --name demo --customer acme --all-sites)",
            settings.store.display(),
            settings.store.display()
        ));
    }
    let credentials = Arc::new(credentials);
    let hosted = hosted(args.component.is_none(), &credentials);
    if hosted {
        log::info(format_args!(
            "{} credentials (more than {INLINE_MAX}): kept by the host, looked up by digest",
            credentials.len()
        ));
    }
    let config = Arc::new(gate_config(&settings.gate, &credentials, hosted)?);
    let clusters = clusters(&settings);
    let metrics = Arc::new(Metrics::default());
    let runner = match &args.component {
        Some(path) => {
            component_runner(path, config, &settings, &clusters, args.key_value_semantics)?
        }
        None => {
            let host = hosted.then(|| credentials.clone());
            filter_runner(args.plugin.as_deref(), config, &settings, &metrics, host)?
        }
    };
    let app = Arc::new(App {
        runner,
        access_log: AccessLog::start(settings.access_log),
        clusters,
        metrics,
        admission: Arc::new(Admission::default()),
        accept_errors: Mutex::new(AcceptErrors::new()),
        live: RwLock::new(Arc::new(Live {
            backend: settings.gate.backend.clone(),
            upstream_timeout: settings.upstream_timeout,
            limits: settings.limits,
        })),
        gate: Mutex::new(GateParts {
            // No list (the credentials are beside it), or the store.
            base: settings.gate.clone(),
            credentials,
        }),
        store,
        store_health,
        loaded_stamp,
        last_use: last_use::LastUseLog::new(
            settings.last_use_flush,
            settings.last_use_instance.clone(),
        ),
    });
    // One single-threaded runtime per worker, each with its own listener on
    // the same port (SO_REUSEPORT, as nginx's workers) and its own VM: no
    // work stealing, no VM shared between threads.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (bound, bound_rx) = tokio::sync::watch::channel::<Option<SocketAddr>>(None);
    let mut others = Vec::new();
    for worker in 1..settings.workers {
        let (app, stopped, mut bound_rx) = (app.clone(), stopped.clone(), bound_rx.clone());
        others.push(
            std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn(move || -> Result<()> {
                    pool::set_home_vm(worker);
                    let runtime = single_threaded()?;
                    runtime.block_on(async move {
                        // The first worker's address (its port, when asked for 0).
                        let Ok(addr) = bound_rx.wait_for(Option::is_some).await.map(|a| *a) else {
                            return Ok(());
                        };
                        let Some(addr) = addr else { return Ok(()) };
                        let listener = crate::connections::listen(&addr.to_string(), true)
                            .await
                            .with_context(|| format!("worker {worker} cannot listen on {addr}"))?;
                        accept_loop(&app, listener, stopped).await;
                        Ok(())
                    })
                })?,
        );
    }
    pool::set_home_vm(0);
    let runtime = single_threaded()?;
    let served = runtime.block_on(serve(
        app.clone(),
        args,
        settings,
        started,
        file_limit,
        stop,
        bound,
    ));
    for thread in others {
        if let Ok(Err(e)) = thread.join() {
            log::error(format_args!("{e:#}"));
        }
    }
    // What was admitted since the last flush, now that nothing more is.
    app.last_use.flush(&app.store);
    served
}

fn single_threaded() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn describe(backend: &Backend) -> String {
    match backend {
        Backend::Stub => "stub".to_owned(),
        Backend::Upstream(u) => u.clone().unwrap_or_default(),
    }
}

fn fail_shared_data_if_asked(shared: &sessiongate_filter_host::SharedData, failing: bool) {
    if failing {
        log::warn("[testing] fail_limiter_store is set: every shared-data call fails");
    }
    shared.set_failing(failing);
}

/// The first worker: its listener, whose address the others then share, the
/// admin listener, the watchers, the signals; and, on SIGINT or SIGTERM,
/// the stop of every worker.
#[allow(clippy::too_many_arguments)]
async fn serve(
    app: Arc<App>,
    args: ServeArgs,
    settings: Settings,
    started: Instant,
    file_limit: u64,
    stop: tokio::sync::watch::Sender<bool>,
    bound: tokio::sync::watch::Sender<Option<SocketAddr>>,
) -> Result<()> {
    // The port is this process's alone: a plain bind first fails when
    // unrestricted holds it (SO_REUSEPORT would let a second serve share it), and
    // names the port when 0 was asked for.
    let listen = std::net::TcpListener::bind(&settings.listen)
        .and_then(|probe| probe.local_addr())
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let listener = crate::connections::listen(&listen.to_string(), settings.workers > 1)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr()?;
    let _ = bound.send(Some(local));
    app.last_use.listening_on(local.port());
    let admin = match &settings.admin {
        Some(addr) => Some(admin::bind(addr).await?),
        None => None,
    };
    // What start-up parsed (the store's JSON) is garbage now.
    crate::allocator::release_freed_memory();
    log::info(format_args!(
        "listening on http://{local} ({}, backend {}, limit {}/{}s, store {}, admin {}, ready in {} ms)",
        match &app.runner {
            Runner::Filter(_) => format!("{} VMs", settings.workers),
            Runner::Component(host) => host.describe().to_owned(),
        },
        describe(&settings.gate.backend),
        settings.gate.limit.requests,
        settings.gate.limit.window_seconds,
        settings.store.display(),
        match &admin {
            Some(listener) => listener
                .local_addr()
                .map_or("?".to_owned(), |a| format!("http://{a}")),
            None => "off".to_owned(),
        },
        started.elapsed().as_millis()
    ));
    if let Some(listener) = admin {
        tokio::spawn(admin::serve(app.clone(), listener));
    }
    // The filter that looks credentials up reads their revision on its
    // tick; one whose limiter is on etcd sends its group commits on it.
    let from_store = matches!(app.gate_parts().base.credentials, CredentialSource::Etcd(_));
    if from_store || !app.gate_parts().base.limiter.is_shared_data() {
        tick::start(&app);
    }
    if !from_store {
        tokio::spawn(watch_store(app.clone()));
    }
    tokio::spawn(last_use::flush_periodically(app.clone()));
    for cluster in &app.clusters {
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.log_in_early().await });
    }
    tokio::spawn(reload::on_hangup(
        app.clone(),
        args,
        settings.restart_only(),
        file_limit,
    ));
    let stop_receiver = stop.subscribe();
    tokio::spawn(async move {
        shutdown_signal().await;
        log::info("shutting down, finishing requests in flight");
        let _ = stop.send(true);
    });
    accept_loop(&app, listener, stop_receiver).await;
    Ok(())
}

/// One worker's accept loop, until the stop; then its connections finish
/// (10 s at most).
async fn accept_loop(
    app: &Arc<App>,
    listener: tokio::net::TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    match app.admission.admit(peer.ip(), &app.live().limits) {
                        Ok(ticket) => connection(app, stream, peer, ticket, &graceful),
                        // Closed at once: the connections being served keep
                        // their share, and the client learns now, not later.
                        Err(Refusal::Full) => metrics::bump(&app.metrics.refused_full),
                        Err(Refusal::AddressFull) => metrics::bump(&app.metrics.refused_address),
                    }
                }
                Err(e) => {
                    metrics::bump(&app.metrics.accept_errors);
                    // One count for every worker: a warning a second at most.
                    let (pause, warning) = app
                        .accept_errors
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .failed(&e, Instant::now());
                    if let Some(warning) = warning {
                        log::warn(warning);
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            },
            _ = stopped.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        log::warn("some connections did not finish within 10 s");
    }
}

/// Serves one admitted connection until it ends or runs out of time.
fn connection(
    app: &Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    graceful: &GracefulShutdown,
) {
    metrics::bump(&app.metrics.connections_accepted);
    // As nginx's `tcp_nodelay on`: an answer's last partial segment goes out
    // at once, not after the client's ACK of the segments before it.
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let service = {
        let app = app.clone();
        tracked_service(activity.clone(), move |req| {
            handle::handle(app.clone(), req, peer)
        })
    };
    let counted = app.metrics.clone();
    let io = JsonParseErrors::new(stream).on_replace(move || counted.responded(400));
    // hyper's default of 100 headers, as Envoy's `max_request_headers_count`:
    // more is answered 400 invalid_request (parse_errors.rs). Setting any
    // count makes hyper allocate two arrays of that size for every request
    // it parses (64 KB at 1,024), which the 429 flood's profile showed.
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(Tracked::new(io, activity.clone())), service);
    let conn = graceful.watch(conn);
    let app = app.clone();
    tokio::spawn(async move {
        let _ticket = ticket;
        match supervise(conn, &activity, || app.live().limits).await {
            Some(Phase::Reading) => metrics::bump(&app.metrics.header_timeouts),
            Some(Phase::Idle) => metrics::bump(&app.metrics.idle_timeouts),
            Some(Phase::Busy) | None => {}
        }
    });
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
