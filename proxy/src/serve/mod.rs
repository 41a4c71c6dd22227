//! `sessiongate serve`: HTTP/1.1 on tokio + hyper, every request through the
//! proxy-wasm filter under wasmtime, as Envoy would run it (or through the
//! wasi:http component, as Spin would).
//!
//! - [`settings`]: the TOML and the flags over it;
//! - [`pool`]: the filter's VMs;
//! - [`handle`]: one request, and hyper's types to the host's;
//! - [`watch`]: the token store, reloaded when it changes;
//! - [`access_log`]: off the request path.

mod access_log;
mod handle;
mod pool;
mod settings;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessiongate_core::{Backend, LimiterStore};
use tokio::net::TcpListener;

use crate::backing::{Backing, EtcdBucket};
use crate::component::{ComponentHost, KeyValue, Semantics};
use crate::host::Plugin;
use crate::parse_errors::JsonParseErrors;
use crate::store;
use access_log::AccessLog;
use pool::{Pool, log_line};
use settings::{Settings, module_cache_dir, settings};
use watch::{gate_config_json, watch_store};

/// The filter built by `build.rs` for wasm32-wasip1.
pub static EMBEDDED_PLUGIN: &[u8] = include_bytes!(env!("SESSIONGATE_PLUGIN_WASM"));

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration (default: the embedded one, shown in the README).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
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
    /// Number of VMs, like Envoy's worker threads (default: the number of cores).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Log one line per request (overrides `access_log`).
    #[arg(long)]
    pub(crate) access_log: bool,
}

/// What runs the gate: the proxy-wasm filter's VMs, or a component.
enum Runner {
    Filter(Pool),
    Component(ComponentHost),
}

struct App {
    runner: Runner,
    access_log: AccessLog,
    backend: Backend,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream_timeout: Duration,
    /// The clusters the filter's `proxy_http_call`s go to (etcd's members).
    clusters: Vec<Arc<crate::cluster::Cluster>>,
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

pub fn run(args: ServeArgs) -> Result<()> {
    let settings = settings(&args)?;
    let started = Instant::now();
    let credentials = match store::load_set(&settings.store) {
        Ok(credentials) => credentials,
        // A fleet's store that is down: start (every credential refused),
        // and take the credentials as soon as etcd answers.
        Err(e) if crate::etcd_store::EtcdStore::parse(&settings.store).is_some() => {
            eprintln!(
                "sessiongate ERROR: token store {} could not be loaded: {e:#}. \
                 Starting with no credentials until it can.",
                settings.store.display()
            );
            sessiongate_core::CredentialSet::default()
        }
        Err(e) => return Err(e),
    };
    if credentials.is_empty() {
        eprintln!(
            "sessiongate: the token store {} has no credentials yet. Mint one (in another shell):\n  \
             TOKEN=$(sessiongate token create --store {} --name demo --customer acme --all-sites)",
            settings.store.display(),
            settings.store.display()
        );
    }
    let config = Arc::new(gate_config_json(&settings.gate, credentials)?);
    let clusters = clusters(&settings);
    let runner = match &args.component {
        Some(path) => {
            component_runner(path, config, &settings, &clusters, args.key_value_semantics)?
        }
        None => filter_runner(args.plugin.as_deref(), config, &settings)?,
    };
    let app = Arc::new(App {
        runner,
        access_log: AccessLog::start(settings.access_log),
        backend: settings.gate.backend.clone(),
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream_timeout: settings.upstream_timeout,
        clusters,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        .build()?;
    runtime.block_on(serve(app, settings, started))
}

fn fail_shared_data_if_asked(shared: &crate::host::SharedData, settings: &Settings) {
    if settings.fail_limiter_store {
        eprintln!(
            "sessiongate WARNING: [testing] fail_limiter_store is set: every shared-data call fails"
        );
        shared.set_failing(true);
    }
}

fn clusters(settings: &Settings) -> Vec<Arc<crate::cluster::Cluster>> {
    if settings.etcd.is_empty() {
        return Vec::new();
    }
    let cluster = crate::cluster::Cluster::new(settings::ETCD_CLUSTER, settings.etcd.clone());
    let cluster = match &settings.gate.limiter {
        LimiterStore::Etcd {
            user: Some(user),
            password: Some(password),
            ..
        } => cluster.with_login(user.clone(), password.clone()),
        _ => cluster,
    };
    vec![Arc::new(cluster)]
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
    let mut plugin =
        Plugin::compile_cached(&wasm, Arc::new(log_line), module_cache_dir().as_deref())?;
    plugin.clusters = Arc::new(
        clusters(settings)
            .iter()
            .map(|c| c.name().to_owned())
            .collect(),
    );
    fail_shared_data_if_asked(&plugin.shared, settings);
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

fn component_runner(
    path: &Path,
    config: Arc<Vec<u8>>,
    settings: &Settings,
    clusters: &[Arc<crate::cluster::Cluster>],
    semantics: Semantics,
) -> Result<Runner> {
    let engine = crate::component::engine()?;
    let component = crate::component::load(&engine, path)?;
    // With the limit on etcd, the component's whole bucket lives there too
    // (under the limiter's key + "/kv"), so a fleet of components is exact.
    let backing = match (&settings.gate.limiter, clusters.first()) {
        (
            LimiterStore::Etcd {
                key, timeout_ms, ..
            },
            Some(cluster),
        ) => {
            if semantics != Semantics::Strict {
                anyhow::bail!(
                    "--key-value-semantics rehearses Spin's stores on shared data: not with limit.store = \"etcd\""
                );
            }
            Backing::Etcd(EtcdBucket {
                cluster: cluster.clone(),
                prefix: format!("{key}/kv"),
                timeout_ms: *timeout_ms,
            })
        }
        _ => {
            let shared = crate::host::SharedData::default();
            fail_shared_data_if_asked(&shared, settings);
            Backing::Shared(shared)
        }
    };
    let kv = KeyValue {
        backing,
        config: Arc::new(RwLock::new(config)),
        semantics,
    };
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
            Runner::Component(host) => host.describe().to_owned(),
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
                    async move { Ok::<_, std::convert::Infallible>(handle::handle(app, req, peer).await) }
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
