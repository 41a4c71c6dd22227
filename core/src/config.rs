//! The configuration every adapter reads (the plugin's `configuration` JSON,
//! the Worker's binding): credentials by hash, the limit, the backend.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::credential_set::CredentialSet;
use crate::guard::GuardConfig;
use crate::limiter::MAX_REQUESTS;
use crate::stub::DEFAULT_SESSIONS_PER_SITE;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The global limit: `requests` per `window_seconds` (the contract: 20 a minute).
pub struct LimitConfig {
    #[serde(default = "default_requests")]
    /// Requests admitted per window, all credentials together.
    pub requests: u32,
    #[serde(default = "default_window")]
    /// The window's length in seconds.
    pub window_seconds: u32,
}

fn default_requests() -> u32 {
    20
}
fn default_window() -> u32 {
    60
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            requests: default_requests(),
            window_seconds: default_window(),
        }
    }
}

/// Where admitted requests go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// The gate answers from deterministic synthetic sessions.
    #[default]
    Stub,
    /// The request continues to the real sessions service. In Envoy the route
    /// picks the cluster; a host that proxies itself uses the URL.
    Upstream(Option<String>),
}

impl Backend {
    /// Parses `stub` or an upstream's `http://host:port` (as the CLI's `--backend` takes it).
    pub fn parse(s: &str) -> Result<Backend, String> {
        match s {
            "stub" => Ok(Backend::Stub),
            "upstream" => Ok(Backend::Upstream(None)),
            url if url.starts_with("http://") || url.starts_with("https://") => Ok(
                Backend::Upstream(Some(url.trim_end_matches('/').to_owned())),
            ),
            other => Err(format!(
                "backend must be \"stub\", \"upstream\" or an http(s):// URL, not {other:?}"
            )),
        }
    }
}

impl Serialize for Backend {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Backend::Stub => s.serialize_str("stub"),
            Backend::Upstream(None) => s.serialize_str("upstream"),
            Backend::Upstream(Some(url)) => s.serialize_str(url),
        }
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Backend::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The JSON does not parse, or names a field that does not exist, or
    /// gives one the wrong type.
    Syntax(String),
    /// A field holds a value the gate does not accept.
    Invalid {
        /// The field, as the JSON names it.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Syntax(e) => write!(f, "configuration: {e}"),
            ConfigError::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

/// The gate's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The credentials a gate admits: listed (checked and indexed as they
    /// are parsed, see [`CredentialSet`]), or, in builds with the `etcd`
    /// feature, where to look them up (`{"store": "etcd", …}`).
    #[serde(default)]
    pub credentials: CredentialSource,
    #[serde(default)]
    /// The global limit (defaults to the contract's 20 a minute).
    pub limit: LimitConfig,
    #[serde(default)]
    /// Where admitted requests go: the stub, or an upstream.
    pub backend: Backend,
    /// Admit when the limiter's shared state fails. Off: fail closed (`503`).
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default = "default_stub_sessions")]
    /// Sessions the stub answers per site (the contract's paging needs more than 1,000).
    pub stub_sessions_per_site: u32,
    /// The failed-credential guard (per client address).
    #[serde(default)]
    pub guard: GuardConfig,
    /// Where a proxy-wasm host keeps the limiter's state. Only in builds
    /// with the `etcd` feature (the fleet filter, the CLI and `serve`, the
    /// component): elsewhere the field is unknown, so a filter built for one
    /// Envoy refuses a fleet configuration instead of ignoring it, and
    /// carries no code to parse it.
    #[cfg(feature = "etcd")]
    #[serde(default, skip_serializing_if = "LimiterStore::is_shared_data")]
    pub limiter: LimiterStore,
    /// Every token the credentials' store holds carries a checksum (a host
    /// that keeps the store sets it from the records' `checksum`): a
    /// presented token whose checksum fails is refused without a lookup.
    /// Off (the default), a host looks every well-formed token up, since
    /// the store may hold tokens minted before checksums.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checksummed_tokens: bool,
}

/// Where the filter keeps the limiter's state (the guard's buckets stay in
/// the host's shared data either way: a brake, per instance). In JSON a flat
/// object, `{"store": "shared_data"}` or `{"store": "etcd", "cluster": …}`
/// (read through [`LimiterRepr`]: serde's tagged enums cost the filter ~40 KB).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "LimiterRepr", into = "LimiterRepr")]
pub enum LimiterStore {
    /// Proxy-wasm shared data: every VM of one proxy (one Envoy, one `serve`).
    #[default]
    SharedData,
    /// etcd, through its HTTP/JSON gateway by `proxy_http_call` to `cluster`
    /// (the `sessiongate-etcd` crate): every proxy that shares the cluster.
    Etcd {
        /// The host's name for the etcd members (an Envoy cluster).
        cluster: String,
        /// The etcd key the limiter's log lives under.
        key: String,
        /// How long one call may take before the request is answered
        /// `503 limiter_unavailable` (or admitted with `fail_open`).
        timeout_ms: u32,
        /// etcd's own user, when the cluster has authentication on: the
        /// filter logs in for a token and again when it expires.
        user: Option<String>,
        /// etcd's password for `user`; the filter reads it from its configuration, the CLI from `SESSIONGATE_ETCD_PASSWORD`.
        password: Option<String>,
        /// One write of the log in flight per VM, the admissions that reach
        /// their write meanwhile going in the next one together (JSON
        /// `group_commit`, default on). It answers requests from the root
        /// context's callbacks (`proxy_set_effective_context`), which a host
        /// must implement: Envoy and `serve` do; WasmX's is a no-op, so
        /// `wasmx-config` turns it off.
        group_commit: bool,
    },
}

/// [`LimiterStore`] as JSON has it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimiterRepr {
    #[serde(default)]
    store: StoreName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group_commit: Option<bool>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoreName {
    #[default]
    SharedData,
    Etcd,
}

impl LimiterStore {
    /// Whether the limiter lives in the host's shared data (one VM set) rather than etcd.
    pub fn is_shared_data(&self) -> bool {
        *self == LimiterStore::SharedData
    }
}

impl TryFrom<LimiterRepr> for LimiterStore {
    type Error = String;

    fn try_from(r: LimiterRepr) -> Result<LimiterStore, String> {
        match r.store {
            StoreName::SharedData => {
                let etcd = [
                    r.cluster.is_some(),
                    r.key.is_some(),
                    r.timeout_ms.is_some(),
                    r.user.is_some(),
                    r.password.is_some(),
                    r.group_commit.is_some(),
                ];
                if etcd.into_iter().any(|set| set) {
                    return Err(
                        "cluster, key, timeout_ms, user, password and group_commit need \"store\": \"etcd\""
                            .into(),
                    );
                }
                Ok(LimiterStore::SharedData)
            }
            StoreName::Etcd => Ok(LimiterStore::Etcd {
                cluster: r.cluster.unwrap_or_else(default_etcd_cluster),
                key: r.key.unwrap_or_else(default_etcd_key),
                timeout_ms: r.timeout_ms.unwrap_or_else(default_etcd_timeout),
                user: r.user,
                password: r.password,
                group_commit: r.group_commit.unwrap_or(true),
            }),
        }
    }
}

impl From<LimiterStore> for LimiterRepr {
    fn from(store: LimiterStore) -> LimiterRepr {
        match store {
            LimiterStore::SharedData => LimiterRepr {
                store: StoreName::SharedData,
                cluster: None,
                key: None,
                timeout_ms: None,
                user: None,
                password: None,
                group_commit: None,
            },
            LimiterStore::Etcd {
                cluster,
                key,
                timeout_ms,
                user,
                password,
                group_commit,
            } => LimiterRepr {
                store: StoreName::Etcd,
                cluster: Some(cluster),
                key: Some(key),
                timeout_ms: Some(timeout_ms),
                user,
                password,
                group_commit: (!group_commit).then_some(false),
            },
        }
    }
}

/// Where a gate's credentials come from. In JSON a list of records, or (in
/// builds with the `etcd` feature) an object naming the store,
/// `{"store": "etcd", "cluster": …, "prefix": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Listed in the configuration.
    Listed(CredentialSet),
    /// Looked up by digest in etcd, as a request presents them.
    #[cfg(feature = "etcd")]
    Etcd(CredentialStore),
}

impl Default for CredentialSource {
    fn default() -> Self {
        CredentialSource::Listed(CredentialSet::default())
    }
}

impl From<CredentialSet> for CredentialSource {
    fn from(set: CredentialSet) -> Self {
        CredentialSource::Listed(set)
    }
}

impl CredentialSource {
    /// The listed credentials (none when they are looked up).
    pub fn listed(&self) -> Option<&CredentialSet> {
        match self {
            CredentialSource::Listed(set) => Some(set),
            #[cfg(feature = "etcd")]
            CredentialSource::Etcd(_) => None,
        }
    }
}

impl Serialize for CredentialSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CredentialSource::Listed(set) => set.serialize(s),
            #[cfg(feature = "etcd")]
            CredentialSource::Etcd(store) => store.serialize(s),
        }
    }
}

/// A list is read record by record (never held whole); an object is a
/// store. A build without the `etcd` feature reads a list only, with the
/// list's own code.
impl<'de> Deserialize<'de> for CredentialSource {
    #[cfg(not(feature = "etcd"))]
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CredentialSet::deserialize(d).map(CredentialSource::Listed)
    }

    #[cfg(feature = "etcd")]
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Source;
        impl<'de> serde::de::Visitor<'de> for Source {
            type Value = CredentialSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of credential records, or {\"store\": \"etcd\", …}")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<CredentialSource, A::Error> {
                crate::credential_set::CredentialSetBuilder::from_seq(seq)?
                    .finish()
                    .map(CredentialSource::Listed)
                    .map_err(serde::de::Error::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<CredentialSource, A::Error> {
                let d = serde::de::value::MapAccessDeserializer::new(map);
                CredentialStore::deserialize(d).map(CredentialSource::Etcd)
            }
        }
        d.deserialize_any(Source)
    }
}

/// Where a filter looks credentials up: etcd's HTTP/JSON gateway by
/// `proxy_http_call` to `cluster`, under a store's `prefix` (the
/// `sessiongate-etcd` crate's key layout), with a cache per VM.
#[cfg(feature = "etcd")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialStore {
    /// Must be `"etcd"`.
    #[serde(default = "etcd_store_name")]
    pub store: String,
    /// The host's name for the etcd members (an Envoy cluster).
    #[serde(default = "default_etcd_cluster")]
    pub cluster: String,
    /// The store's prefix, as in `etcd://…/PREFIX`.
    pub prefix: String,
    /// How long one call may take before the request is answered `503`.
    #[serde(default = "default_etcd_timeout")]
    pub timeout_ms: u32,
    /// etcd's own user, when the cluster has authentication on (the
    /// limiter's, when both are on etcd: a VM holds one token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// etcd's password for `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How often each VM reads the credentials' revision (its tick): a
    /// change anywhere holds in every VM within this and one call.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u32,
    /// How long a cached answer is used after its last confirmation when
    /// etcd cannot be read; then a request is `503`.
    #[serde(default = "default_max_stale_ms")]
    pub max_stale_ms: u32,
    /// Cached answers per VM, hits and misses (full: all dropped).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

#[cfg(feature = "etcd")]
impl Default for CredentialStore {
    fn default() -> Self {
        CredentialStore {
            store: etcd_store_name(),
            cluster: default_etcd_cluster(),
            prefix: "sessiongate".to_owned(),
            timeout_ms: default_etcd_timeout(),
            user: None,
            password: None,
            tick_ms: default_tick_ms(),
            max_stale_ms: default_max_stale_ms(),
            cache_entries: default_cache_entries(),
        }
    }
}

#[cfg(feature = "etcd")]
fn etcd_store_name() -> String {
    "etcd".to_owned()
}
#[cfg(feature = "etcd")]
fn default_tick_ms() -> u32 {
    250
}
#[cfg(feature = "etcd")]
fn default_max_stale_ms() -> u32 {
    30_000
}
#[cfg(feature = "etcd")]
fn default_cache_entries() -> usize {
    10_000
}

fn default_etcd_cluster() -> String {
    "sessiongate_etcd".to_owned()
}
fn default_etcd_key() -> String {
    "sessiongate/limiter/v1".to_owned()
}
fn default_etcd_timeout() -> u32 {
    250
}

fn default_stub_sessions() -> u32 {
    DEFAULT_SESSIONS_PER_SITE
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            credentials: CredentialSource::default(),
            limit: LimitConfig::default(),
            backend: Backend::Stub,
            fail_open: false,
            stub_sessions_per_site: DEFAULT_SESSIONS_PER_SITE,
            guard: GuardConfig::default(),
            #[cfg(feature = "etcd")]
            limiter: LimiterStore::default(),
            checksummed_tokens: false,
        }
    }
}

impl GateConfig {
    /// Parses the JSON form; the error names what is wrong and where.
    pub fn from_json(bytes: &[u8]) -> Result<GateConfig, ConfigError> {
        let config: GateConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks serde cannot express (credentials are checked as they are parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limit.requests == 0 || self.limit.requests > MAX_REQUESTS {
            return Err(invalid(
                "limit.requests",
                format!(
                    "must be from 1 to {MAX_REQUESTS}, not {}",
                    self.limit.requests
                ),
            ));
        }
        if self.limit.window_seconds == 0 || self.limit.window_seconds > 86_400 {
            return Err(invalid(
                "limit.window_seconds",
                format!("must be from 1 to 86400, not {}", self.limit.window_seconds),
            ));
        }
        if self.guard.enabled() && self.guard.window_seconds == 0 {
            return Err(invalid("guard.window_seconds", "must be at least 1".into()));
        }
        #[cfg(feature = "etcd")]
        if let LimiterStore::Etcd {
            cluster,
            key,
            timeout_ms,
            user,
            password,
            ..
        } = &self.limiter
        {
            if user.is_some() != password.is_some() {
                return Err(invalid("limiter", "user and password go together".into()));
            }
            if cluster.is_empty() || key.is_empty() {
                return Err(invalid(
                    "limiter",
                    "cluster and key must not be empty".into(),
                ));
            }
            // Envoy reads a timeout of 0 as none; etcd without quorum holds
            // a request ~7 s: the gate must answer long before.
            if *timeout_ms == 0 || *timeout_ms > 10_000 {
                return Err(invalid(
                    "limiter.timeout_ms",
                    format!("must be from 1 to 10000, not {timeout_ms}"),
                ));
            }
        }
        #[cfg(feature = "etcd")]
        if let CredentialSource::Etcd(store) = &self.credentials {
            self.validate_store(store)?;
        }
        if self.stub_sessions_per_site > 1_000_000 {
            return Err(invalid("stub_sessions_per_site", "at most 1000000".into()));
        }
        Ok(())
    }
}

#[cfg(feature = "etcd")]
impl GateConfig {
    fn validate_store(&self, store: &CredentialStore) -> Result<(), ConfigError> {
        let field = "credentials";
        if store.store != "etcd" {
            return Err(invalid(
                "credentials.store",
                format!("must be \"etcd\", not {:?}", store.store),
            ));
        }
        if store.cluster.is_empty() || store.prefix.bytes().all(|b| b == b'/') {
            return Err(invalid(
                field,
                "cluster and prefix must not be empty".into(),
            ));
        }
        if store.user.is_some() != store.password.is_some() {
            return Err(invalid(field, "user and password go together".into()));
        }
        for (name, value, max) in [
            ("credentials.timeout_ms", store.timeout_ms, 10_000),
            ("credentials.tick_ms", store.tick_ms, 60_000),
        ] {
            if value == 0 || value > max {
                return Err(invalid(
                    name,
                    format!("must be from 1 to {max}, not {value}"),
                ));
            }
        }
        if store.max_stale_ms < store.tick_ms {
            return Err(invalid(
                "credentials.max_stale_ms",
                "must be at least tick_ms".into(),
            ));
        }
        if store.cache_entries == 0 {
            return Err(invalid(
                "credentials.cache_entries",
                "must be at least 1".into(),
            ));
        }
        // One etcd token per VM: the limiter and the store log in as one user.
        if let LimiterStore::Etcd { cluster, user, .. } = &self.limiter
            && (user.is_some() || store.user.is_some())
            && (*cluster != store.cluster || *user != store.user)
        {
            return Err(invalid(
                field,
                "with authentication, the store's cluster and user must be the limiter's".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_the_defaults() {
        let c = GateConfig::from_json(b"{}").unwrap();
        assert_eq!(c, GateConfig::default());
        assert_eq!(c.limit.requests, 20);
        assert_eq!(c.limit.window_seconds, 60);
        assert_eq!(c.backend, Backend::Stub);
        assert!(!c.fail_open);
    }

    #[test]
    fn backends() {
        let c = GateConfig::from_json(br#"{"backend":"http://127.0.0.1:9/"}"#).unwrap();
        assert_eq!(
            c.backend,
            Backend::Upstream(Some("http://127.0.0.1:9".into()))
        );
        let c = GateConfig::from_json(br#"{"backend":"upstream"}"#).unwrap();
        assert_eq!(c.backend, Backend::Upstream(None));
        let e = GateConfig::from_json(br#"{"backend":"ftp://x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backend"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = GateConfig::from_json(br#"{"limits":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits"), "{e}");
        let e = GateConfig::from_json(br#"{"limit":{"requests":0}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit.requests"), "{e}");
        let e = GateConfig::from_json(br#"{"limit":{"window_seconds":0}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit.window_seconds"), "{e}");
        let e = GateConfig::from_json(br#"{"fail_open":"yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("configuration"), "{e}");
        assert!(GateConfig::from_json(b"not json").is_err());
    }

    #[test]
    fn roundtrip() {
        let c = GateConfig {
            backend: Backend::Upstream(Some("http://x".into())),
            fail_open: true,
            ..Default::default()
        };
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(GateConfig::from_json(&json).unwrap(), c);
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn credentials_can_name_a_store_instead_of_a_list() {
        let c = GateConfig::from_json(
            br#"{"credentials":{"store":"etcd","cluster":"etcd_c","prefix":"sg","tick_ms":100}}"#,
        )
        .unwrap();
        let CredentialSource::Etcd(store) = &c.credentials else {
            panic!("{c:?}");
        };
        assert_eq!(
            (store.cluster.as_str(), store.prefix.as_str()),
            ("etcd_c", "sg")
        );
        assert_eq!(
            (store.tick_ms, store.max_stale_ms, store.timeout_ms),
            (100, 30_000, 250)
        );
        // Round trip, and a gate made of it holds no credentials but the store.
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(GateConfig::from_json(&json).unwrap(), c);
        let gate = crate::Gate::new(c).unwrap();
        assert!(gate.credentials().is_empty());
        assert_eq!(gate.credential_store().unwrap().prefix, "sg");
        // A list is still a list.
        let listed = GateConfig::from_json(br#"{"credentials":[]}"#).unwrap();
        assert_eq!(listed.credentials, CredentialSource::default());
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn a_bad_store_is_refused_with_its_field() {
        for (json, field) in [
            (
                r#"{"credentials":{"store":"redis","prefix":"sg"}}"#,
                "credentials.store",
            ),
            (r#"{"credentials":{"store":"etcd"}}"#, "prefix"),
            (
                r#"{"credentials":{"store":"etcd","prefix":"/"}}"#,
                "credentials",
            ),
            (
                r#"{"credentials":{"store":"etcd","prefix":"sg","tick_ms":0}}"#,
                "credentials.tick_ms",
            ),
            (
                r#"{"credentials":{"store":"etcd","prefix":"sg","tick_ms":500,"max_stale_ms":100}}"#,
                "credentials.max_stale_ms",
            ),
            (
                r#"{"credentials":{"store":"etcd","prefix":"sg","user":"u"}}"#,
                "user and password",
            ),
            (
                r#"{"credentials":{"store":"etcd","prefix":"sg","cache_entries":0}}"#,
                "credentials.cache_entries",
            ),
            (
                r#"{"credentials":{"store":"etcd","prefix":"sg","bogus":1}}"#,
                "bogus",
            ),
            (
                r#"{"credentials":{"store":"etcd","prefix":"sg","user":"a","password":"p"},"limiter":{"store":"etcd","user":"b","password":"p"}}"#,
                "the limiter's",
            ),
        ] {
            let e = GateConfig::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
