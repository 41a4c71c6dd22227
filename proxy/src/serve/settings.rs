//! `serve`'s settings: the TOML file (or the embedded default), then the
//! command line over it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use sessiongate_core::{
    Backend, CredentialSet, CredentialSource, CredentialStore, GateConfig, LimitConfig,
    LimiterStore,
};
use sessiongate_etcd::{Login, PASSWORD_VARIABLE};

use super::ServeArgs;
use crate::connections::{Limits, default_max_connections};

const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

/// The TOML configuration of `serve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeConfig {
    listen: Option<String>,
    store: Option<PathBuf>,
    backend: Option<String>,
    limit: Option<LimitSection>,
    fail_open: Option<bool>,
    workers: Option<usize>,
    upstream_timeout_ms: Option<u64>,
    stub_sessions_per_site: Option<u32>,
    guard: Option<sessiongate_core::GuardConfig>,
    /// One line per request on stderr, written by a logging thread.
    access_log: Option<bool>,
    /// `"plain"` (default) or `"json"`.
    log_format: Option<crate::log::Format>,
    /// The admin listener (metrics, health): an address, or `"off"`.
    admin: Option<String>,
    connections: Option<ConnectionsSection>,
    /// The filter looks credentials up in the (etcd) store by digest.
    credentials_from_store: Option<bool>,
    /// With `credentials_from_store`: every token in the store carries a
    /// checksum (as `sessiongate check` says), so a wrong one costs no lookup.
    checksummed_tokens: Option<bool>,
    last_use: Option<LastUseSection>,
    testing: Option<Testing>,
}

/// `[last_use]`: how often what was admitted is written to the store, and
/// the name this instance writes it under.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastUseSection {
    flush_seconds: Option<u64>,
    instance: Option<String>,
}

/// `[connections]`: timeouts and caps for client connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionsSection {
    header_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max: Option<usize>,
    max_per_address: Option<usize>,
}

/// The admin listener's default, Envoy's admin port.
pub(super) const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// `[limit]`: the budget, and where its state lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSection {
    requests: Option<u32>,
    window_seconds: Option<u32>,
    /// `"local"` (default: shared data inside this process) or `"etcd"`.
    store: Option<String>,
    /// The etcd members' client URLs (`store = "etcd"`).
    etcd: Option<Vec<String>>,
    /// The etcd key the log lives under.
    key: Option<String>,
    /// How long one call to etcd may take, failovers included.
    timeout_ms: Option<u32>,
    /// etcd's user, when its authentication is on (its password in
    /// `SESSIONGATE_ETCD_PASSWORD`, as every etcd client's: `sessiongate_etcd::Login`).
    etcd_user: Option<String>,
    /// Refused with a pointer to the environment: a password is never read
    /// from a file.
    etcd_password: Option<toml::Value>,
    /// One write of the log in flight per VM, the admissions waiting on it
    /// going in the next together (default on; `store = "etcd"`).
    group_commit: Option<bool>,
}

/// The cluster name the filter calls etcd by (as an Envoy cluster is named).
pub(super) const ETCD_CLUSTER: &str = "sessiongate_etcd";
/// The cluster name of the store's members, when they are not the limiter's.
pub(super) const STORE_CLUSTER: &str = "sessiongate_store";

/// Fault injection, for chaos tests of a deployment: never set in production.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Testing {
    /// Every shared-data call fails, as a lost limiter store would.
    #[serde(default)]
    fail_limiter_store: bool,
}

/// Everything `serve` runs with, after defaults and flags.
pub(super) struct Settings {
    pub(super) listen: String,
    pub(super) store: PathBuf,
    pub(super) gate: GateConfig,
    pub(super) workers: usize,
    pub(super) upstream_timeout: Duration,
    pub(super) fail_limiter_store: bool,
    pub(super) access_log: bool,
    /// The etcd members, when the limiter lives there.
    pub(super) etcd: Vec<String>,
    /// The store's members (URLs) and login, when the filter looks
    /// credentials up there and they are not the limiter's cluster.
    pub(super) store_cluster: Option<(Vec<String>, Option<Login>)>,
    /// Where the admin listener is; `None`: off.
    pub(super) admin: Option<String>,
    pub(super) log_format: crate::log::Format,
    pub(super) limits: Limits,
    /// How often last use is flushed to the store (read at start).
    pub(super) last_use_flush: Duration,
    /// The name this instance gives last use (default: host and port).
    pub(super) last_use_instance: Option<String>,
}

/// What only a restart changes: a reload that changes any of it says so
/// and applies the rest.
#[derive(PartialEq, Eq)]
pub(super) struct RestartOnly {
    listen: String,
    admin: Option<String>,
    store: PathBuf,
    workers: usize,
    limiter: LimiterStore,
    etcd: Vec<String>,
    credentials: CredentialSource,
    log_format: crate::log::Format,
    access_log: bool,
    last_use: (Duration, Option<String>),
}

impl Settings {
    pub(super) fn restart_only(&self) -> RestartOnly {
        RestartOnly {
            listen: self.listen.clone(),
            admin: self.admin.clone(),
            store: self.store.clone(),
            workers: self.workers,
            limiter: self.gate.limiter.clone(),
            etcd: self.etcd.clone(),
            credentials: self.gate.credentials.clone(),
            log_format: self.log_format,
            access_log: self.access_log,
            last_use: (self.last_use_flush, self.last_use_instance.clone()),
        }
    }
}

impl RestartOnly {
    /// The names of the settings that differ.
    pub(super) fn changed(&self, other: &RestartOnly) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut differs = |name, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        differs("listen", self.listen == other.listen);
        differs("admin", self.admin == other.admin);
        differs("store", self.store == other.store);
        differs("workers", self.workers == other.workers);
        differs(
            "limit.store/etcd/key/timeout_ms/etcd_user",
            self.limiter == other.limiter && self.etcd == other.etcd,
        );
        differs(
            "credentials_from_store",
            self.credentials == other.credentials,
        );
        differs("log_format", self.log_format == other.log_format);
        differs("access_log", self.access_log == other.access_log);
        differs("last_use", self.last_use == other.last_use);
        changed
    }
}

/// Where the limiter's state lives (`[limit] store`), and etcd's members
/// when it is there.
fn limiter_store(name: &str, section: &LimitSection) -> Result<(LimiterStore, Vec<String>)> {
    Ok(match section.store.as_deref().unwrap_or("local") {
        "local" => {
            if section.etcd.is_some()
                || section.key.is_some()
                || section.timeout_ms.is_some()
                || section.etcd_user.is_some()
                || section.etcd_password.is_some()
                || section.group_commit.is_some()
            {
                bail!(
                    "{name}: limit.etcd, limit.key, limit.timeout_ms, limit.etcd_user and limit.group_commit need limit.store = \"etcd\""
                );
            }
            (LimiterStore::SharedData, Vec::new())
        }
        "etcd" => {
            if section.etcd_password.is_some() {
                bail!(
                    "{name}: limit.etcd_password: etcd's password is read from {PASSWORD_VARIABLE} only, never from a file; remove it"
                );
            }
            let login = section
                .etcd_user
                .as_deref()
                .map(Login::of_user)
                .transpose()
                .map_err(|e| anyhow!("{name}: limit.etcd_user: {e}"))?;
            let members = section.etcd.clone().unwrap_or_default();
            if members.is_empty() {
                bail!("{name}: limit.store = \"etcd\" needs limit.etcd, the members' URLs");
            }
            for member in &members {
                let uri: hyper::Uri = member
                    .parse()
                    .map_err(|e| anyhow!("{name}: limit.etcd: {member:?}: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    bail!("{name}: limit.etcd: {member:?} is not an http://host:port URL");
                }
            }
            let store = LimiterStore::Etcd {
                cluster: ETCD_CLUSTER.to_owned(),
                key: section
                    .key
                    .clone()
                    .unwrap_or_else(|| "sessiongate/limiter/v1".to_owned()),
                timeout_ms: section.timeout_ms.unwrap_or(250),
                user: login.as_ref().map(|l| l.user.clone()),
                password: login.map(|l| l.password),
                group_commit: section.group_commit.unwrap_or(true),
            };
            (store, members)
        }
        other => bail!("{name}: limit.store must be \"local\" or \"etcd\", not {other:?}"),
    })
}

/// Reads the settings: the file (or the embedded default), then `args` over
/// it; `file_limit` sizes the default connection cap.
pub(super) fn settings(args: &ServeArgs, file_limit: u64) -> Result<Settings> {
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
    let section = file.limit.unwrap_or_default();
    let defaults = LimitConfig::default();
    let limit = LimitConfig {
        requests: section.requests.unwrap_or(defaults.requests),
        window_seconds: section.window_seconds.unwrap_or(defaults.window_seconds),
    };
    let (limiter, etcd) = limiter_store(&name, &section)?;
    let gate = GateConfig {
        credentials: CredentialSet::default().into(),
        limit,
        limiter,
        backend,
        fail_open: file.fail_open.unwrap_or(false),
        stub_sessions_per_site: file
            .stub_sessions_per_site
            .unwrap_or(sessiongate_core::DEFAULT_SESSIONS_PER_SITE),
        guard: file.guard.unwrap_or_default(),
        // Set per store where the host keeps the credentials (serve/mod.rs).
        checksummed_tokens: false,
    };
    let store = args
        .store
        .clone()
        .or(file.store)
        .unwrap_or_else(|| "sessiongate-tokens.json".into());
    let mut gate = gate;
    let mut store_cluster = None;
    if args.credentials_from_store || file.credentials_from_store.unwrap_or(false) {
        let etcd_store = sessiongate_store::EtcdStore::parse(&store)
            .ok_or_else(|| {
                anyhow!(
                    "{name}: credentials_from_store needs a store in etcd (etcd://HOST:PORT…/PREFIX), not {}",
                    store.display()
                )
            })??;
        let members: Vec<String> = etcd_store
            .members()
            .iter()
            .map(|m| format!("http://{m}"))
            .collect();
        let login = etcd_store.login().cloned();
        // One cluster when the limiter's members are the store's.
        let cluster = if members == etcd {
            ETCD_CLUSTER
        } else {
            store_cluster = Some((members, login.clone()));
            STORE_CLUSTER
        };
        gate.checksummed_tokens = file.checksummed_tokens.unwrap_or(false);
        gate.credentials = CredentialSource::Etcd(CredentialStore {
            cluster: cluster.to_owned(),
            prefix: etcd_store.prefix().to_owned(),
            user: login.as_ref().map(|l| l.user.clone()),
            password: login.map(|l| l.password),
            ..CredentialStore::default()
        });
    } else if file.checksummed_tokens.is_some() {
        bail!(
            "{name}: checksummed_tokens is for credentials_from_store; with the credentials held, serve reads the mark from them"
        );
    }
    gate.validate().map_err(|e| anyhow!("{name}: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let admin = match args.admin.clone().or(file.admin) {
        None => Some(DEFAULT_ADMIN.to_owned()),
        Some(off) if off == "off" => None,
        Some(addr) => Some(addr),
    };
    let connections = file.connections.unwrap_or_default();
    let limits = Limits {
        header_timeout: Duration::from_millis(connections.header_timeout_ms.unwrap_or(10_000)),
        idle_timeout: Duration::from_millis(connections.idle_timeout_ms.unwrap_or(60_000)),
        max_connections: connections
            .max
            .unwrap_or_else(|| default_max_connections(file_limit)),
        max_per_address: connections.max_per_address.unwrap_or(0),
    };
    if limits.header_timeout.is_zero()
        || limits.idle_timeout.is_zero()
        || limits.max_connections == 0
    {
        bail!("{name}: connections.header_timeout_ms, idle_timeout_ms and max must be above 0");
    }
    let last_use = file.last_use.unwrap_or_default();
    let last_use_flush = Duration::from_secs(last_use.flush_seconds.unwrap_or(60));
    if last_use_flush.is_zero() {
        bail!("{name}: last_use.flush_seconds must be above 0");
    }
    if last_use
        .instance
        .as_deref()
        .is_some_and(|i| i.trim().is_empty())
    {
        bail!("{name}: last_use.instance must not be empty");
    }
    Ok(Settings {
        listen: args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
        store,
        gate,
        workers: args.workers.or(file.workers).unwrap_or(cores).max(1),
        upstream_timeout: Duration::from_millis(file.upstream_timeout_ms.unwrap_or(10_000)),
        fail_limiter_store: file.testing.is_some_and(|t| t.fail_limiter_store),
        access_log: args.access_log || file.access_log.unwrap_or(false),
        etcd,
        store_cluster,
        admin,
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        limits,
        last_use_flush,
        last_use_instance: last_use.instance,
    })
}

/// Where compiled plugins are kept between runs (`$XDG_CACHE_HOME` or `~/.cache`).
pub(super) fn module_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sessiongate").join("modules"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> Result<(LimiterStore, Vec<String>)> {
        let section: LimitSection = toml::from_str(text)?;
        limiter_store("test.toml", &section)
    }

    const ETCD: &str = "store = \"etcd\"\netcd = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn etcd_without_a_user_logs_in_as_no_one() {
        let (store, members) = limit(ETCD).unwrap();
        assert_eq!(members, ["http://127.0.0.1:2379"]);
        let LimiterStore::Etcd { user, password, .. } = store else {
            panic!("{store:?}");
        };
        assert_eq!((user, password), (None, None));
    }

    /// One way for every etcd client: a password in the file is refused,
    /// and the error says where it goes instead.
    #[test]
    fn a_password_in_the_file_is_refused() {
        let e = limit(&format!(
            "{ETCD}etcd_user = \"gate\"\netcd_password = \"pw\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("limit.etcd_password") && e.contains(PASSWORD_VARIABLE),
            "{e}"
        );
        let e = limit("etcd_password = \"pw\"\n").unwrap_err().to_string();
        assert!(e.contains("need limit.store = \"etcd\""), "{e}");
    }

    #[test]
    fn a_user_is_a_name_only() {
        let e = limit(&format!("{ETCD}etcd_user = \"gate:pw\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limit.etcd_user") && e.contains(PASSWORD_VARIABLE),
            "{e}"
        );
    }

    fn read(toml: &str, store: &str) -> Result<Settings> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, toml)?;
        let args = ServeArgs {
            config: Some(path),
            listen: None,
            admin: None,
            plugin: None,
            component: None,
            key_value_semantics: Default::default(),
            store: Some(store.into()),
            credentials_from_store: false,
            workers: None,
            access_log: false,
            log_format: None,
        };
        settings(&args, 1024)
    }

    /// A store in etcd that the filter reads: the operator says whether
    /// every token carries a checksum (serve does not read the store to
    /// learn it); a held store needs no such word, and refuses one.
    #[test]
    fn checksummed_tokens_is_the_operators_word_for_a_store_the_filter_reads() {
        let etcd = "etcd://127.0.0.1:2379/sg";
        let from_store = "credentials_from_store = true\n";
        let marked = read(&format!("{from_store}checksummed_tokens = true\n"), etcd).unwrap();
        assert!(marked.gate.checksummed_tokens);
        assert!(!read(from_store, etcd).unwrap().gate.checksummed_tokens);
        let e = read("checksummed_tokens = true\n", "tokens.json")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("checksummed_tokens is for credentials_from_store"),
            "{e}"
        );
    }

    #[test]
    fn a_last_use_flush_is_above_zero() {
        let e = read("[last_use]\nflush_seconds = 0\n", "tokens.json")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("last_use.flush_seconds must be above 0"), "{e}");
        let s = read(
            "[last_use]\nflush_seconds = 5\ninstance = \"a\"\n",
            "tokens.json",
        )
        .unwrap();
        assert_eq!(
            (s.last_use_flush, s.last_use_instance.as_deref()),
            (Duration::from_secs(5), Some("a"))
        );
    }

    #[test]
    fn etcd_settings_need_the_etcd_store() {
        let e = limit("etcd_user = \"gate\"\n").unwrap_err().to_string();
        assert!(e.contains("need limit.store = \"etcd\""), "{e}");
    }
}
