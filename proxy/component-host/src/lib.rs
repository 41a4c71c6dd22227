//! `serve --component`: a wasi:http component (either Spin build: 0.3's
//! `handler` or 0.2's `incoming-handler`) under wasmtime, as `wasmtime
//! serve` or Spin would run it, with the imports of `wit/gate.wit`'s
//! `key-value` world beyond WASI: a `wasi:keyvalue` bucket (`default`) whose
//! swap runs on the very [`SharedData`] the filter host uses (strictly, or as
//! one of Spin's stores would: [`Semantics`]), and the gate's configuration
//! under [`CONFIG_KEY`].
//!
//! A 0.3 instance is reused, one request at a time, as `wasmtime serve`
//! does (so it parses its configuration once); a 0.2 instance serves one
//! request, as Spin and `wasmtime serve` make them. Concurrent requests get
//! instances of their own, so the exact global limit across instances is
//! the key-value store and nothing else.

mod backing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use sessiongate_spin::CONFIG_KEY;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p3::Request as WasiRequest;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::backing::BucketUnavailable;
pub use crate::backing::{Backing, EtcdBucket};

/// Host bindings of `wit/gate.wit`'s `host` world. wasi:http and wasi:clocks
/// are wasmtime's own; only wasi:keyvalue is ours to provide.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sessiongate:gate/host",
        // wasmtime's wasi:http linker functions need `Send` store data.
        require_store_data_send: true,
        // Each key-value call lets other requests run (as Spin's store calls
        // do, on SQLite's lock or Redis's socket), so concurrent instances
        // interleave between a read and its swap as they would there.
        imports: { default: async },
        with: {
            "wasi:http": wasmtime_wasi_http::p3::bindings::http,
            "wasi:clocks": wasmtime_wasi::p3::bindings::clocks,
            "wasi:keyvalue/store.bucket": super::BucketHandle,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, store};

/// The one bucket there is (Spin's default store).
const BUCKET: &str = "default";

/// An open `default` bucket.
pub struct BucketHandle;

/// A CAS in progress: the key, and the value and version it saw (0: absent).
pub struct CasHandle {
    key: String,
    value: Option<Vec<u8>>,
    version: u64,
}

/// How the bucket's `wasi:keyvalue/atomics.swap` behaves: strictly, or as
/// one of Spin's stores does (read in Spin's `crates/key-value-*/src/store.rs`),
/// to rehearse a component against the store it will meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Semantics {
    /// Versions compared; a key absent when read is created by one swap only.
    #[default]
    Strict,
    /// Spin's SQLite store: a present key's swap compares values; an absent
    /// key's swap inserts or overwrites, so every racer wins.
    SpinSqlite,
    /// Spin's Redis store against a real Redis: `WATCH`ed, so a lost swap
    /// does not write, but every swap reports failure (Spin ends it with
    /// `UNWATCH <key>`, which Redis refuses: it takes no arguments).
    SpinRedis,
}

/// The key-value side of the host: the bucket (shared data or etcd), and
/// the configuration.
#[derive(Clone)]
pub struct KeyValue {
    pub backing: Backing,
    pub config: Arc<RwLock<Arc<Vec<u8>>>>,
    pub semantics: Semantics,
}

impl KeyValue {
    fn config(&self) -> Arc<Vec<u8>> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    async fn read(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, store::Error> {
        if key == CONFIG_KEY {
            return Ok(Some((self.config().to_vec(), 1)));
        }
        self.backing.get(key).await.map_err(down)
    }

    /// The swap as the chosen semantics make it: strict on any backing, or
    /// as one of Spin's stores (on shared data: a rehearsal, never a fleet).
    async fn swap(&self, cas: &CasHandle, value: Vec<u8>) -> Result<bool, store::Error> {
        let shared = match (&self.backing, self.semantics) {
            (backing, Semantics::Strict) => {
                return backing
                    .swap(&cas.key, value, cas.version)
                    .await
                    .map_err(down);
            }
            (Backing::Shared(shared), _) => shared,
            (Backing::Etcd(_), _) => {
                return Err(store::Error::Other(
                    "Spin's semantics are rehearsed on shared data only".into(),
                ));
            }
        };
        let seen = u32::try_from(cas.version).unwrap_or(u32::MAX);
        match (self.semantics, &cas.value) {
            (Semantics::SpinSqlite, None) => shared.set(&cas.key, value, 0),
            (Semantics::SpinSqlite, Some(old)) => shared.replace_if_equal(&cas.key, old, value),
            (Semantics::SpinRedis, _) => shared.swap_if(&cas.key, value, seen).map(|_| false),
            (Semantics::Strict, _) => shared.swap_if(&cas.key, value, seen),
        }
        .map_err(|e| down(BucketUnavailable::shared(e)))
    }

    fn host_owned(key: &str) -> Result<(), store::Error> {
        if key == CONFIG_KEY {
            return Err(store::Error::AccessDenied);
        }
        Ok(())
    }
}

fn down(BucketUnavailable(why): BucketUnavailable) -> store::Error {
    store::Error::Other(why)
}

pub struct ComponentState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    kv: KeyValue,
}

/// Outgoing requests (the upstream backend): wasmtime's client, with the
/// configured timeout as the default for connect and first byte.
struct Hooks {
    upstream_timeout: Duration,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        _ = fut;
        let mut options = options.unwrap_or_default();
        options.connect_timeout.get_or_insert(self.upstream_timeout);
        options
            .first_byte_timeout
            .get_or_insert(self.upstream_timeout);
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(|b| b.boxed_unsync()),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

type TableResult<T> = wasmtime::Result<T>;

impl store::Host for ComponentState {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, store::Error> {
        if identifier != BUCKET {
            return Err(store::Error::NoSuchStore);
        }
        self.table
            .push(BucketHandle)
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::HostBucket for ComponentState {
    async fn get(
        &mut self,
        _: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        tokio::task::yield_now().await;
        Ok(self.kv.read(&key).await?.map(|(value, _)| value))
    }

    async fn set(
        &mut self,
        _: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        KeyValue::host_owned(&key)?;
        self.kv.backing.set(&key, value).await.map_err(down)
    }

    async fn delete(&mut self, _: Resource<BucketHandle>, key: String) -> Result<(), store::Error> {
        KeyValue::host_owned(&key)?;
        self.kv.backing.delete(&key).await.map_err(down)
    }

    async fn exists(
        &mut self,
        _: Resource<BucketHandle>,
        key: String,
    ) -> Result<bool, store::Error> {
        Ok(self.kv.read(&key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        _: Resource<BucketHandle>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let mut keys = self.kv.backing.keys().map_err(down)?;
        keys.push(CONFIG_KEY.to_owned());
        keys.sort();
        if let Some(after) = cursor {
            keys.retain(|k| *k > after);
        }
        Ok(store::KeyResponse { keys, cursor: None })
    }

    async fn drop(&mut self, rep: Resource<BucketHandle>) -> TableResult<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl ComponentState {
    async fn begin_cas(&mut self, key: String) -> Result<Resource<CasHandle>, store::Error> {
        let (value, version) = match self.kv.read(&key).await? {
            Some((value, version)) => (Some(value), version),
            None => (None, 0),
        };
        self.table
            .push(CasHandle {
                key,
                value,
                version,
            })
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl atomics::Host for ComponentState {
    async fn increment(
        &mut self,
        _: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> Result<i64, store::Error> {
        tokio::task::yield_now().await;
        KeyValue::host_owned(&key)?;
        // A CAS loop over an 8-byte little-endian counter.
        loop {
            let (current, version) = match self.kv.backing.get(&key).await.map_err(down)? {
                Some((bytes, version)) => {
                    let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                        store::Error::Other(format!("{key:?} does not hold a counter"))
                    })?;
                    (i64::from_le_bytes(bytes), version)
                }
                None => (0, 0),
            };
            let next = current.wrapping_add(delta);
            if self
                .kv
                .backing
                .swap(&key, next.to_le_bytes().to_vec(), version)
                .await
                .map_err(down)?
            {
                return Ok(next);
            }
        }
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> Result<(), atomics::CasError> {
        tokio::task::yield_now().await;
        let cas = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(store::Error::Other(e.to_string())))?;
        KeyValue::host_owned(&cas.key).map_err(atomics::CasError::StoreError)?;
        let written = self
            .kv
            .swap(&cas, value)
            .await
            .map_err(atomics::CasError::StoreError)?;
        if written {
            return Ok(());
        }
        // The spec asks for a handle that has seen the latest version.
        let fresh = self
            .begin_cas(cas.key)
            .await
            .map_err(atomics::CasError::StoreError)?;
        Err(atomics::CasError::CasFailed(fresh))
    }
}

impl atomics::HostCas for ComponentState {
    async fn new(
        &mut self,
        _: Resource<BucketHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, store::Error> {
        tokio::task::yield_now().await;
        self.begin_cas(key).await
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, store::Error> {
        let cas = self
            .table
            .get(&cas)
            .map_err(|e| store::Error::Other(e.to_string()))?;
        Ok(cas.value.clone())
    }

    async fn drop(&mut self, rep: Resource<CasHandle>) -> TableResult<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

/// Idle instances kept for reuse; more concurrent requests make more.
const MAX_IDLE: usize = 64;
/// Requests one instance serves before it is replaced, bounding whatever a
/// long-lived guest might accumulate.
const MAX_USES: u32 = 10_000;

/// An instance between requests.
struct Warm {
    store: Store<ComponentState>,
    service: Service,
    uses: u32,
}

/// The component's handler, pre-instantiated: which wasi:http it serves.
enum Handler {
    /// `wasi:http/handler@0.3.0`: instances reused.
    P3(ServicePre<ComponentState>),
    /// `wasi:http/incoming-handler@0.2.x`: an instance per request.
    P2(ProxyPre<ComponentState>),
}

/// A compiled component, linked, with a pool of (0.3) instances.
pub struct ComponentHost {
    engine: Engine,
    handler: Handler,
    pub kv: KeyValue,
    upstream_timeout: Duration,
    idle: Mutex<Vec<Warm>>,
    instantiated: AtomicU64,
}

/// Every import either build may use: WASI 0.2 (Rust's std on
/// wasm32-wasip2), WASI 0.3 (clocks, random, cli), wasi:http 0.3 and 0.2,
/// and the key-value interfaces of `wit/gate.wit`.
fn linker(engine: &Engine) -> Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow!("{e:?}"))?;
    wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(|e| anyhow!("{e:?}"))?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(|e| anyhow!("{e:?}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| anyhow!("{e:?}"))?;
    store::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| anyhow!("{e:?}"))?;
    atomics::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| anyhow!("{e:?}"))?;
    Ok(linker)
}

/// The engine configuration for components: wasi:http 0.3 needs the
/// component model's async ABI.
pub fn engine() -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config).map_err(|e| anyhow!("wasmtime: {e:?}"))
}

impl ComponentHost {
    pub fn new(
        engine: Engine,
        component: &Component,
        kv: KeyValue,
        upstream_timeout: Duration,
    ) -> Result<ComponentHost> {
        let linker = linker(&engine)?;
        let instance = linker
            .instantiate_pre(component)
            .map_err(|e| anyhow!("the component cannot be linked: {e:?}"))?;
        let handler = match ServicePre::new(instance.clone()) {
            Ok(pre) => Handler::P3(pre),
            Err(p3) => Handler::P2(ProxyPre::new(instance).map_err(|p2| {
                anyhow!(
                    "the component exports neither wasi:http/handler@0.3.0 ({p3:?}) \
                     nor wasi:http/incoming-handler@0.2 ({p2:?})"
                )
            })?),
        };
        Ok(ComponentHost {
            engine,
            handler,
            kv,
            upstream_timeout,
            idle: Mutex::new(Vec::new()),
            instantiated: AtomicU64::new(0),
        })
    }

    /// Which wasi:http the component serves, for the start-up line.
    pub fn describe(&self) -> &'static str {
        match self.handler {
            Handler::P3(_) => "component (wasi:http 0.3), instances reused",
            Handler::P2(_) => "component (wasi:http 0.2), an instance per request",
        }
    }

    /// Serves one request; the response body is read whole. A 0.3 instance
    /// comes from the idle ones (or is made) and goes back if it did not
    /// fail; a 0.2 instance is made for the request.
    pub async fn handle<B>(&self, request: http::Request<B>) -> Result<http::Response<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<HttpError>,
    {
        let pre = match &self.handler {
            Handler::P3(pre) => pre,
            Handler::P2(pre) => return self.handle_p2(pre, request).await,
        };
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut warm = match idle {
            Some(warm) => warm,
            None => self.instantiate(pre).await?,
        };
        let response = serve_on(&mut warm, request).await?;
        warm.uses += 1;
        if warm.uses < MAX_USES
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(warm);
        }
        Ok(response)
    }

    /// wasi:http 0.2: the handler runs in a task of its own, which writes
    /// the body after handing over the response, while this reads it.
    async fn handle_p2<B>(
        &self,
        pre: &ProxyPre<ComponentState>,
        request: http::Request<B>,
    ) -> Result<http::Response<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<HttpError>,
    {
        let mut store = Store::new(&self.engine, self.state());
        self.instantiated.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        let (incoming, outparam) = {
            let mut http = store.data_mut().http();
            let incoming = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| anyhow!("{e:?}"))?;
            (
                incoming,
                http.new_response_outparam(sender)
                    .map_err(|e| anyhow!("{e:?}"))?,
            )
        };
        let pre = pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        });
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(anyhow!("the component failed the request: {code:?}")),
            Err(_) => {
                let why = match task.await {
                    Ok(Ok(())) => "it returned without a response".to_owned(),
                    Ok(Err(e)) => format!("{e:?}"),
                    Err(e) => format!("{e:?}"),
                };
                return Err(anyhow!("the component trapped: {why}"));
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| anyhow!("the component's response body: {e:?}"))?
            .to_bytes();
        match task.await {
            Ok(Ok(())) => Ok(http::Response::from_parts(parts, body)),
            Ok(Err(e)) => Err(anyhow!("the component trapped after answering: {e:?}")),
            Err(e) => Err(anyhow!("the component's task: {e:?}")),
        }
    }

    /// How many instances were made so far (a metric, logged at shutdown).
    pub fn instances_created(&self) -> u64 {
        self.instantiated.load(Ordering::Relaxed)
    }

    fn state(&self) -> ComponentState {
        ComponentState {
            table: ResourceTable::new(),
            wasi: WasiCtxBuilder::new().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                upstream_timeout: self.upstream_timeout,
            },
            kv: self.kv.clone(),
        }
    }

    async fn instantiate(&self, pre: &ServicePre<ComponentState>) -> Result<Warm> {
        self.instantiated.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(&self.engine, self.state());
        let service = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow!("cannot instantiate the component: {e:?}"))?;
        Ok(Warm {
            store,
            service,
            uses: 0,
        })
    }
}

async fn serve_on<B>(warm: &mut Warm, request: http::Request<B>) -> Result<http::Response<Bytes>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<HttpError>,
{
    let Warm { store, service, .. } = warm;
    let (request, body_io) = WasiRequest::from_http(&mut store.data_mut().hooks, request);
    store
        .run_concurrent(async |store| {
            let (response, ()) = tokio::try_join!(
                async {
                    let response = match service.handle(store, request).await? {
                        Ok(r) => r,
                        Err(code) => {
                            return Err(wasmtime::format_err!(
                                "the component failed the request: {code:?}"
                            ));
                        }
                    };
                    let response = store.with(|s| response.into_http(s, async { Ok(()) }))?;
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map_err(|e| wasmtime::format_err!("response body: {e:?}"))?
                        .to_bytes();
                    wasmtime::error::Ok(http::Response::from_parts(parts, body))
                },
                async {
                    body_io
                        .await
                        .map_err(|e| wasmtime::format_err!("request body: {e:?}"))
                }
            )?;
            wasmtime::error::Ok(response)
        })
        .await
        .and_then(|r| r)
        .map_err(|e| anyhow!("{e:?}"))
        .context("the component trapped")
}

/// Compiles a component file (no cache: components are compiled once per
/// `serve`).
pub fn load(engine: &Engine, path: &std::path::Path) -> Result<Component> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
    Component::new(engine, &bytes).map_err(|e| {
        anyhow!(
            "{} is not a WebAssembly component wasmtime can compile: {e:?}",
            path.display()
        )
    })
}
