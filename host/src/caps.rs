//! Host capabilities: what a plugin can reach outside its sandbox.
//!
//! Every capability has the same shape: a per-plugin context built from the plugin's
//! grants that denies by default, held in the store's [`PluginState`], and an
//! `add_to_linker` that links it. A capability the plugin's world or grants do not
//! include is not linked at all, so a component that imports it fails to load.
//!
//! | capability | WIT | linked for |
//! |---|---|---|
//! | log | `tenon:plugin/log` | every plugin |
//! | config | `tenon:plugin/config` | every plugin |
//! | kv | `tenon:plugin/kv` | transforms, sinks |
//! | outbound HTTP | `wasi:http/outgoing-handler` | sinks, to the hosts granted |
//! | WASI CLI basics | `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random` | every plugin, with no files, no environment, no sockets; stderr captured |

use crate::bindings::{config, kv, log, types};
use crate::storage::KvNamespace;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tenon_registry::{Grants, Kind};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Most bytes of a plugin's stderr kept per call (panic messages land there).
const STDERR_CAPACITY: usize = 16 << 10;

/// What every call of one plugin version shares: identity, config, grants, limits.
#[derive(Debug)]
pub struct PluginContext {
    /// The plugin instance name in the flow config (the kv namespace, the log tag).
    pub name: String,
    /// Its version, from the manifest.
    pub version: String,
    /// The component's digest.
    pub digest: String,
    /// Its configuration: manifest defaults overridden by the operator.
    pub config: BTreeMap<String, String>,
    /// Its effective grants (the manifest's, narrowed by the operator).
    pub grants: Grants,
    /// Most linear memory the plugin may use, in bytes.
    pub memory_bytes: usize,
    /// Longest a call may take.
    pub timeout: Duration,
}

/// The data of one store: one plugin call.
pub struct PluginState {
    pub(crate) ctx: Arc<PluginContext>,
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpGrants,
    kv: Option<KvNamespace>,
    limits: StoreLimits,
    stderr: MemoryOutputPipe,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("plugin", &self.ctx.name)
            .finish_non_exhaustive()
    }
}

impl PluginState {
    /// Fresh state for one call, denying everything the context does not grant.
    pub fn new(ctx: Arc<PluginContext>, kv: Option<KvNamespace>) -> PluginState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopened files, no environment, no arguments, no sockets (the WASI
        // defaults); stdout is discarded, stderr kept for the trap report.
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(ctx.memory_bytes)
            .instances(16)
            .tables(64)
            .memories(4)
            .build();
        PluginState {
            hooks: HttpGrants {
                plugin: ctx.name.clone(),
                grants: ctx.grants.clone(),
            },
            ctx,
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            kv,
            limits,
            stderr,
        }
    }

    /// What the plugin wrote to stderr during this call (e.g. its panic message).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned()
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }
}

/// Link what a plugin of `kind` may use into `linker`.
pub fn add_to_linker(linker: &mut Linker<PluginState>, kind: Kind) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    types::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    log::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    config::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    if matches!(kind, Kind::Transform | Kind::Sink) {
        kv::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    }
    if kind == Kind::Sink {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    }
    Ok(())
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = self.ctx.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl config::Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }
}

impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.kv()?.get(&key).map_err(|e| e.to_string())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.kv()?.set(&key, &value).map_err(|e| e.to_string())
    }

    fn delete(&mut self, key: String) -> Result<(), String> {
        self.kv()?.delete(&key).map_err(|e| e.to_string())
    }
}

impl PluginState {
    fn kv(&self) -> Result<&KvNamespace, String> {
        self.kv
            .as_ref()
            .ok_or_else(|| "key-value storage is not granted to this plugin".into())
    }
}

/// Outbound HTTP policy: only the origins the grants name.
struct HttpGrants {
    plugin: String,
    grants: Grants,
}

/// `scheme://host:port` of a URI, the port always stated.
fn origin(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{host}:{port}")
}

type HttpResponse = (
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
);

impl WasiHttpHooks for HttpGrants {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<HttpResponse, wasmtime_wasi_http::Error>> + Send> {
        let origin = origin(request.uri());
        if !self.grants.allows_http(&origin) {
            tracing::warn!(plugin = %self.plugin, %origin, decision = "deny", "outbound HTTP refused: origin not granted");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(plugin = %self.plugin, %origin, decision = "allow", "outbound HTTP");
        let options = options.unwrap_or(wasmtime_wasi_http::RequestOptions {
            connect_timeout: Some(Duration::from_secs(5)),
            first_byte_timeout: Some(Duration::from_secs(30)),
            between_bytes_timeout: Some(Duration::from_secs(30)),
        });
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let io: Box<dyn Future<Output = _> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}
