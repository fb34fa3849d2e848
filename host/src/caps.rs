//! Host capabilities: what a plugin can reach outside its sandbox.
//!
//! Every capability has the same shape: a per-plugin context built from the plugin's
//! grants that denies by default, held in the store's [`PluginState`], and an
//! `add_to_linker` that links it only when granted. A component that imports a
//! capability it is not granted is refused at load ([`crate::inspect`]) with the
//! import and the missing grant named.
//!
//! | capability | WIT | linked for |
//! |---|---|---|
//! | log | `tenon:plugin/log` | every plugin |
//! | config | `tenon:plugin/config` | every plugin; keys outside its `[config]` and `grants.config` read as unset (and are audited) |
//! | kv | `tenon:plugin/kv` | transforms and sinks granted `kv`, in their own namespace, under a quota |
//! | secrets | `tenon:plugin/secrets` | plugins granted `secrets`, the names granted |
//! | outbound HTTP | `wasi:http/outgoing-handler` | sinks granted `http`, to those hosts ([`crate::egress`]) |
//! | WASI basics | `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random`, `wasi:filesystem` | every plugin, with no files, no environment, no arguments; stderr captured |
//!
//! `wasi:sockets` is never linked. Every allow/deny decision goes to the audit log
//! ([`crate::audit`]); secret values are redacted from what the host records.

use crate::audit::{AuditLog, AuditRecord, Decision};
use crate::bindings::{config, kv, log, secrets, types};
use crate::egress::{Egress, SendError};
use crate::storage::KvNamespace;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tenon_registry::{Grants, Kind};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Most bytes of a plugin's stderr kept per call (panic messages land there).
const STDERR_CAPACITY: usize = 16 << 10;
/// Secrets shorter than this are not redacted from text (they would match everywhere).
const MIN_REDACTED_LEN: usize = 4;

/// A secret's value: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

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
    /// The config keys it may read: its `[config]` defaults and `grants.config`.
    pub readable_config: BTreeSet<String>,
    /// Its effective grants (the manifest's, narrowed by the operator).
    pub grants: Grants,
    /// The granted secrets the operator provides.
    pub secrets: BTreeMap<String, Secret>,
    /// Where decisions are recorded.
    pub audit: AuditLog,
    /// Its outbound HTTP client, when it is granted hosts.
    pub egress: Option<Arc<Egress>>,
}

impl PluginContext {
    /// Most linear memory the plugin may use, in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.grants.memory_mib as usize) << 20
    }

    /// Longest a call may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.grants.timeout_ms)
    }

    /// `text` with every granted secret's value replaced by its name.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, secret) in &self.secrets {
            if secret.0.len() >= MIN_REDACTED_LEN && out.contains(&secret.0) {
                out = out.replace(&secret.0, &format!("[redacted secret `{name}`]"));
            }
        }
        out
    }

    /// Record a sandbox decision about this plugin.
    pub fn decide(
        &self,
        capability: &str,
        target: &str,
        decision: Decision,
        reason: Option<String>,
    ) {
        self.audit.record(AuditRecord {
            seq: 0,
            at_ms: crate::queue::now_ms(),
            plugin: self.name.clone(),
            digest: self.digest.clone(),
            capability: capability.to_owned(),
            target: self.redact(target),
            decision,
            reason: reason.map(|r| self.redact(&r)),
        });
    }
}

/// Something the sandbox refused during one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A capability the plugin is not granted.
    Denied(String),
    /// A limit it ran into.
    Limit(String),
}

/// The violations of one call, shared with the hooks that detect them.
#[derive(Debug, Clone, Default)]
pub struct Violations(Arc<Mutex<Vec<Violation>>>);

impl Violations {
    fn push(&self, violation: Violation) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(violation);
    }

    /// The first violation of the call, if any.
    pub fn first(&self) -> Option<Violation> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .cloned()
    }
}

/// The data of one store: one plugin call.
pub struct PluginState {
    pub(crate) ctx: Arc<PluginContext>,
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpGrants,
    kv: Option<KvNamespace>,
    limiter: Limiter,
    stderr: MemoryOutputPipe,
    violations: Violations,
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
        let violations = Violations::default();
        let limiter = Limiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(ctx.memory_bytes())
                .instances(16)
                .tables(64)
                .memories(4)
                .build(),
            ctx: ctx.clone(),
            violations: violations.clone(),
        };
        PluginState {
            hooks: HttpGrants {
                ctx: ctx.clone(),
                violations: violations.clone(),
            },
            ctx,
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            kv,
            limiter,
            stderr,
            violations,
        }
    }

    /// What the plugin wrote to stderr during this call (e.g. its panic message),
    /// secrets redacted.
    pub fn stderr(&self) -> String {
        self.ctx
            .redact(String::from_utf8_lossy(&self.stderr.contents()).trim())
    }

    /// What the sandbox refused during this call.
    pub fn violations(&self) -> &Violations {
        &self.violations
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    fn deny(&self, capability: &str, target: &str, reason: String) {
        self.ctx
            .decide(capability, target, Decision::Deny, Some(reason.clone()));
        self.violations.push(Violation::Denied(format!(
            "{capability} `{target}`: {reason}"
        )));
    }
}

/// Memory limit that records its refusals.
struct Limiter {
    inner: StoreLimits,
    ctx: Arc<PluginContext>,
    violations: Violations,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if !allowed {
            let limit = self.ctx.grants.memory_mib;
            let reason = format!(
                "growth from {} to {} KiB refused: the limit is {limit} MiB",
                current >> 10,
                desired >> 10
            );
            self.ctx.decide(
                "memory",
                &format!("{limit} MiB"),
                Decision::Deny,
                Some(reason),
            );
            self.violations.push(Violation::Limit(format!(
                "memory limit of {limit} MiB reached (growth to {} KiB refused)",
                desired >> 10
            )));
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Link what a plugin of `kind` with `grants` may use into `linker`: nothing else.
pub fn add_to_linker(
    linker: &mut Linker<PluginState>,
    kind: Kind,
    grants: &Grants,
) -> anyhow::Result<()> {
    link_wasi_basics(linker)?;
    types::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    log::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    config::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    if grants.kv && kind != Kind::Source {
        kv::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    }
    if !grants.secrets.is_empty() {
        secrets::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    }
    if !grants.http.is_empty() && kind == Kind::Sink {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    }
    Ok(())
}

/// WASI's basics, without `wasi:sockets` (which wasmtime-wasi's own
/// `add_to_linker_async` would link too).
fn link_wasi_basics(l: &mut Linker<PluginState>) -> anyhow::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    type S = PluginState;
    wasmtime_wasi_io::add_to_linker_async(l)?;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, <S as WasiClocksView>::clocks)?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, <S as WasiClocksView>::clocks)?;
    filesystem::types::add_to_linker::<S, WasiFilesystem>(
        l,
        <S as WasiFilesystemView>::filesystem,
    )?;
    filesystem::preopens::add_to_linker::<S, WasiFilesystem>(
        l,
        <S as WasiFilesystemView>::filesystem,
    )?;
    random::random::add_to_linker::<S, WasiRandom>(l, <S as WasiRandomView>::random)?;
    random::insecure::add_to_linker::<S, WasiRandom>(l, <S as WasiRandomView>::random)?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(l, <S as WasiRandomView>::random)?;
    let cli = <S as WasiCliView>::cli;
    cli::exit::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::environment::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stdin::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stdout::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stderr::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, cli)?;
    Ok(())
}

impl wasmtime_wasi_io::IoView for PluginState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
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
        let message = self.ctx.redact(&message);
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
        if !self.ctx.readable_config.contains(&key) {
            self.deny(
                "config",
                &key,
                "the key is neither in the manifest's [config] nor in grants.config".into(),
            );
            return None;
        }
        self.ctx.config.get(&key).cloned()
    }
}

impl secrets::Host for PluginState {
    fn get(&mut self, name: String) -> Result<String, String> {
        if !self.ctx.grants.secrets.contains(&name) {
            let reason = "not granted to this plugin".to_owned();
            self.deny("secret", &name, reason.clone());
            return Err(format!("secret `{name}` is {reason}"));
        }
        match self.ctx.secrets.get(&name) {
            Some(secret) => {
                self.ctx.decide("secret", &name, Decision::Allow, None);
                Ok(secret.expose().to_owned())
            }
            None => {
                let reason = "granted but not provided by the operator's [secrets]".to_owned();
                self.ctx
                    .decide("secret", &name, Decision::Deny, Some(reason.clone()));
                Err(format!("secret `{name}` is {reason}"))
            }
        }
    }
}

impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.kv()?.get(&key).map_err(|e| e.to_string())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        match self.kv()?.set(&key, &value) {
            Err(crate::storage::StorageError::QuotaExceeded { used, quota }) => {
                let reason = format!(
                    "key-value quota of {quota} bytes exceeded ({used} bytes after this write)"
                );
                self.ctx
                    .decide("kv", &key, Decision::Deny, Some(reason.clone()));
                self.violations.push(Violation::Limit(reason.clone()));
                Err(reason)
            }
            other => other.map_err(|e| e.to_string()),
        }
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

/// Outbound HTTP policy: only the origins the grants name, through the plugin's
/// [`Egress`].
struct HttpGrants {
    ctx: Arc<PluginContext>,
    violations: Violations,
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
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<HttpResponse, wasmtime_wasi_http::Error>> + Send> {
        use wasmtime_wasi_http::Error as E;
        let ctx = self.ctx.clone();
        let violations = self.violations.clone();
        let origin = origin(request.uri());
        let deny = move |target: &str, reason: String| {
            ctx.decide("http", target, Decision::Deny, Some(reason.clone()));
            violations.push(Violation::Denied(format!("http `{target}`: {reason}")));
        };
        if !self.ctx.grants.allows_http(&origin) {
            deny(&origin, "origin not granted".into());
            return Box::new(async { Err(E::HttpRequestDenied) });
        }
        let Some(egress) = self.ctx.egress.clone() else {
            deny(&origin, "the plugin has no outbound HTTP".into());
            return Box::new(async { Err(E::HttpRequestDenied) });
        };
        let ctx = self.ctx.clone();
        let on_too_large = {
            let (ctx, violations) = (ctx.clone(), self.violations.clone());
            let origin = origin.clone();
            move |cap: u64| {
                let reason = format!("response body over the {cap}-byte cap");
                ctx.decide("http", &origin, Decision::Deny, Some(reason.clone()));
                violations.push(Violation::Limit(format!("http `{origin}`: {reason}")));
            }
        };
        let violations = self.violations.clone();
        Box::new(async move {
            let sent =
                tokio::time::timeout(ctx.timeout(), egress.send(request, on_too_large)).await;
            match sent {
                Err(_) => Err(E::ConnectionReadTimeout),
                Ok(Ok(response)) => {
                    ctx.decide("http", &origin, Decision::Allow, None);
                    let io: Box<dyn Future<Output = _> + Send> = Box::new(async { Ok(()) });
                    Ok((response, io))
                }
                Ok(Err(SendError::Prohibited(p))) => {
                    let target = format!("{origin} ({})", p.ip);
                    let reason = p.to_string();
                    ctx.decide("http", &target, Decision::Deny, Some(reason.clone()));
                    violations.push(Violation::Denied(format!("http `{target}`: {reason}")));
                    Err(E::DestinationIpProhibited)
                }
                Ok(Err(SendError::TooLarge(cap))) => {
                    let reason = format!("response body over the {cap}-byte cap");
                    ctx.decide("http", &origin, Decision::Deny, Some(reason.clone()));
                    violations.push(Violation::Limit(format!("http `{origin}`: {reason}")));
                    Err(E::HttpResponseBodySize(Some(cap)))
                }
                Ok(Err(SendError::Network(e))) => {
                    ctx.decide("http", &origin, Decision::Allow, None);
                    Err(e)
                }
            }
        })
    }
}
