//! What runs the requests (the filter's VMs, or a component) and the etcd
//! clusters their calls go to, made from the settings.

use super::*;

/// The clusters the filter's calls name: the limiter's etcd, and the
/// store's when the filter looks credentials up there and it is another.
pub(super) fn clusters(settings: &Settings) -> Vec<Arc<sessiongate_etcd::Cluster>> {
    let mut clusters = Vec::new();
    if let Some((members, login)) = &settings.store_cluster {
        let cluster = sessiongate_etcd::Cluster::new(settings::STORE_CLUSTER, members.clone());
        clusters.push(Arc::new(match login {
            Some(login) => cluster.with_login(login.clone()),
            None => cluster,
        }));
    }
    if settings.etcd.is_empty() {
        return clusters;
    }
    let cluster = sessiongate_etcd::Cluster::new(settings::ETCD_CLUSTER, settings.etcd.clone());
    let cluster = match &settings.gate.limiter {
        LimiterStore::Etcd {
            user: Some(user),
            password: Some(password),
            ..
        } => cluster.with_login(sessiongate_etcd::Login {
            user: user.clone(),
            password: password.clone(),
        }),
        _ => cluster,
    };
    clusters.push(Arc::new(cluster));
    clusters
}

pub(super) fn filter_runner(
    plugin: Option<&Path>,
    config: Arc<Vec<u8>>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    hosted: Option<Arc<CredentialSet>>,
) -> Result<Runner> {
    let wasm = match plugin {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?
        }
        None => EMBEDDED_PLUGIN.to_vec(),
    };
    let mut plugin =
        Plugin::compile_cached(&wasm, Arc::new(log_line), module_cache_dir().as_deref())?;
    plugin.set_clusters(clusters(settings).iter().map(|c| c.name().to_owned()));
    fail_shared_data_if_asked(plugin.shared(), settings.fail_limiter_store);
    if let Some(credentials) = hosted {
        plugin.credentials().set(credentials);
    }
    let vms = (0..settings.workers)
        .map(|i| plugin.start_vm(i, config.clone()).map(Mutex::new))
        .collect::<Result<Vec<_>>>()?;
    Ok(Runner::Filter(Pool {
        plugin,
        vms,
        next: AtomicUsize::new(0),
        config: RwLock::new(config),
        metrics: metrics.clone(),
        parked: Mutex::default(),
    }))
}

pub(super) fn component_runner(
    path: &Path,
    config: Arc<Vec<u8>>,
    settings: &Settings,
    clusters: &[Arc<sessiongate_etcd::Cluster>],
    semantics: Semantics,
) -> Result<Runner> {
    let engine = sessiongate_component_host::engine()?;
    let component = sessiongate_component_host::load(&engine, path)?;
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
            let shared = sessiongate_filter_host::SharedData::default();
            fail_shared_data_if_asked(&shared, settings.fail_limiter_store);
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
