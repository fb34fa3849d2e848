//! Host capabilities: what a plugin can reach outside its sandbox.
//!
//! Every capability has the same shape: a per-plugin context built from the plugin's
//! grants that denies by default, held in the store's [`PluginState`], and an
//! `add_to_linker` that links it only when granted. A component that imports a
//! capability it is not granted is refused at load ([`crate::sandbox::inspect`]) with the
//! import and the missing grant named.
//!
//! | capability | WIT | linked for |
//! |---|---|---|
//! | log | `tenon:plugin/log` | every plugin; lines cut at 4 KiB, at most 64 KiB a call and 1 MiB a minute (the excess is dropped, counted and audited) |
//! | config | `tenon:plugin/config` | every plugin; keys outside its `[config]` and `grants.config` read as unset (and are audited) |
//! | kv | `tenon:plugin/kv` | transforms and sinks granted `kv`, in their own namespace, under a quota; writes commit with the step's result |
//! | secrets | `tenon:plugin/secrets` | plugins granted `secrets`: the ones the operator maps to the instance |
//! | outbound HTTP | `wasi:http/outgoing-handler` | sinks granted `http`, to those hosts ([`crate::sandbox::egress`]) |
//! | WASI basics | `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random`, `wasi:filesystem` | every plugin, with no files, no environment, no arguments; stderr captured |
//!
//! `wasi:sockets` is never linked. Every allow/deny decision goes to the audit log
//! ([`crate::audit`]), at most [`MAX_RECORDED_DECISIONS`] one by one per call (the rest
//! are counted in one record); secret values are redacted from what the host records
//! ([`crate::sandbox::redact`]).

use crate::audit::{AuditLog, AuditRecord, Decision};
use crate::sandbox::bindings::{config, kv, log, secrets, types};
use crate::sandbox::egress::{Egress, SendError};
use crate::sandbox::redact::Redactor;
use crate::store::{KvNamespace, KvWrites, kv_entry_size};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tenon_registry::{Grants, Kind};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Most bytes of a plugin's stderr kept per call (panic messages land there).
const STDERR_CAPACITY: usize = 16 << 10;
/// Longest log line kept; a longer one is cut.
pub const MAX_LOG_LINE: usize = 4 << 10;
/// Most bytes of log lines one call may write; the rest is dropped.
pub const LOG_BYTES_PER_CALL: usize = 64 << 10;
/// Most bytes of log lines one plugin version may write a minute; the rest is dropped.
pub const LOG_BYTES_PER_MINUTE: u64 = 1 << 20;
/// Most decisions (allowed or denied) of one call recorded one by one in the audit
/// log; the others are counted in one record at the end of the call.
pub const MAX_RECORDED_DECISIONS: u32 = 16;
/// Longest guest-chosen name (a config key, a secret name) the host records.
const MAX_TARGET_CHARS: usize = 256;
/// Longest text from a plugin the host records (a failure, a receipt, a reason).
pub const MAX_TEXT_CHARS: usize = 4096;

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
    /// The version's digest (manifest and component).
    pub digest: String,
    /// Its configuration: manifest defaults overridden by the operator.
    pub config: BTreeMap<String, String>,
    /// The config keys it may read: its `[config]` defaults and `grants.config`.
    pub readable_config: BTreeSet<String>,
    /// Its effective grants (the manifest's, narrowed by the operator).
    pub grants: Grants,
    /// The secrets the operator maps to this instance, by the plugin's names.
    pub secrets: BTreeMap<String, Secret>,
    /// Finds those secrets' values in what the host records.
    pub redactor: Redactor,
    /// Where decisions are recorded.
    pub audit: AuditLog,
    /// Its outbound HTTP client, when it is granted hosts.
    pub egress: Option<Arc<Egress>>,
    /// Its log allowance per minute, and what it dropped.
    pub logs: LogBudget,
}

impl PluginContext {
    /// Most linear memory the plugin may use, in bytes (all its memories together).
    pub fn memory_bytes(&self) -> usize {
        (self.grants.memory_mib as usize) << 20
    }

    /// Longest a call may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.grants.timeout_ms)
    }

    /// `text` with every granted secret's value, in any form, replaced by its name.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
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
            at_ms: crate::model::now_ms(),
            plugin: self.name.clone(),
            digest: self.digest.clone(),
            key: None,
            capability: capability.to_owned(),
            // Redacted whole, then cut: a cut must not split a secret out of reach
            // of the redactor.
            target: bounded(&self.redact(target), MAX_TARGET_CHARS),
            decision,
            reason: reason.map(|r| bounded(&self.redact(&r), MAX_TEXT_CHARS)),
        });
    }
}

/// `text`, cut to `max` characters: guest-chosen text is recorded in part, never
/// whole. Redact before cutting.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

/// A plugin version's log allowance per minute, and the count of what it dropped.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// The minute (since the Unix epoch) `used` counts.
    minute: AtomicU64,
    used: AtomicU64,
    /// The minute whose drops were last audited (plus one; 0: never).
    audited: AtomicU64,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl LogBudget {
    /// Take `bytes` from this minute's allowance; false when it would go over.
    fn take(&self, bytes: usize) -> bool {
        let minute = crate::model::now_ms() / 60_000;
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.used.store(0, Ordering::Relaxed);
        }
        let before = self.used.fetch_add(bytes as u64, Ordering::Relaxed);
        if before + bytes as u64 > LOG_BYTES_PER_MINUTE {
            self.used.fetch_sub(bytes as u64, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Lines and bytes dropped since the version was loaded.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_lines.load(Ordering::Relaxed),
            self.dropped_bytes.load(Ordering::Relaxed),
        )
    }

    /// Count a call's drops; true when they are the first of this minute (the ones
    /// to audit).
    fn note_dropped(&self, lines: u64, bytes: u64) -> bool {
        self.dropped_lines.fetch_add(lines, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        let minute = crate::model::now_ms() / 60_000 + 1;
        self.audited.swap(minute, Ordering::Relaxed) != minute
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

/// What the sandbox decided during one call, shared with the hooks that decide: the
/// first violation is kept (it decides how the call ends); at most
/// [`MAX_RECORDED_DECISIONS`] decisions are audited one by one, the others counted.
#[derive(Debug, Clone, Default)]
pub struct Violations(Arc<Mutex<CallDecisions>>);

#[derive(Debug, Default)]
struct CallDecisions {
    first: Option<Violation>,
    violations: u64,
    recorded: u32,
    unrecorded: u64,
    unrecorded_denials: u64,
    /// Secrets whose read was audited in this call (once each).
    secrets_read: BTreeSet<String>,
}

impl Violations {
    fn lock(&self) -> std::sync::MutexGuard<'_, CallDecisions> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, violation: Violation) {
        let mut seen = self.lock();
        seen.first.get_or_insert(violation);
        seen.violations += 1;
    }

    /// Audit a decision of this call, unless the call already had its share.
    fn decide(
        &self,
        ctx: &PluginContext,
        capability: &str,
        target: &str,
        decision: Decision,
        reason: Option<String>,
    ) {
        {
            let mut seen = self.lock();
            if seen.recorded >= MAX_RECORDED_DECISIONS {
                seen.unrecorded += 1;
                seen.unrecorded_denials += u64::from(decision == Decision::Deny);
                return;
            }
            seen.recorded += 1;
        }
        ctx.decide(capability, target, decision, reason);
    }

    /// Audit a refusal and keep it as a violation of the call.
    fn refuse(
        &self,
        ctx: &PluginContext,
        capability: &str,
        target: &str,
        reason: String,
        violation: Violation,
    ) {
        self.decide(ctx, capability, target, Decision::Deny, Some(reason));
        self.push(violation);
    }

    /// The first violation of the call, if any.
    pub fn first(&self) -> Option<Violation> {
        self.lock().first.clone()
    }

    /// How many there were.
    pub fn count(&self) -> u64 {
        self.lock().violations
    }
}

/// A call's key-value view: reads see its own writes, which are buffered until the
/// step commits.
struct KvCall {
    ns: KvNamespace,
    writes: KvWrites,
    /// The committed usage, read at the first write.
    committed: Option<u64>,
    /// What this call's writes add to it (may be negative).
    delta: i64,
}

/// The data of one store: one plugin call.
pub struct PluginState {
    pub(crate) ctx: Arc<PluginContext>,
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpGrants,
    kv: Option<KvCall>,
    limiter: Limiter,
    stderr: MemoryOutputPipe,
    violations: Violations,
    /// When the call must stop; guest code yields to the host every epoch tick
    /// until then.
    pub(crate) deadline: Instant,
    /// Log bytes written by this call, and lines and bytes dropped.
    logged: usize,
    log_dropped: (u64, u64),
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
                .memories(8)
                .build(),
            total: 0,
            ctx: ctx.clone(),
            violations: violations.clone(),
        };
        PluginState {
            hooks: HttpGrants {
                ctx: ctx.clone(),
                violations: violations.clone(),
            },
            deadline: Instant::now() + ctx.timeout(),
            ctx,
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            kv: kv.map(|ns| KvCall {
                writes: ns.writes(),
                ns,
                committed: None,
                delta: 0,
            }),
            limiter,
            stderr,
            violations,
            logged: 0,
            log_dropped: (0, 0),
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

    /// The call's key-value writes, to commit with its result.
    pub fn take_kv_writes(&mut self) -> Option<KvWrites> {
        self.kv
            .as_mut()
            .map(|kv| std::mem::take(&mut kv.writes))
            .filter(|w| !w.is_empty())
    }

    /// Audit what the call did beyond the records kept one by one: decisions past
    /// the first [`MAX_RECORDED_DECISIONS`], log lines dropped (once a minute per
    /// plugin).
    pub fn finish(&self) {
        let (more, denials) = {
            let seen = self.violations.lock();
            (seen.unrecorded, seen.unrecorded_denials)
        };
        if more > 0 {
            self.ctx.decide(
                "decisions",
                "this call",
                if denials > 0 {
                    Decision::Deny
                } else {
                    Decision::Allow
                },
                Some(format!(
                    "{more} more decisions in this call ({denials} denials), not recorded one by one"
                )),
            );
        }
        let (lines, bytes) = self.log_dropped;
        if lines > 0 && self.ctx.logs.note_dropped(lines, bytes) {
            self.ctx.decide(
                "log",
                "log lines",
                Decision::Deny,
                Some(format!(
                    "{lines} line{} ({bytes} bytes) dropped: over {LOG_BYTES_PER_CALL} bytes a call or {LOG_BYTES_PER_MINUTE} bytes a minute (later drops this minute are only counted)",
                    if lines == 1 { "" } else { "s" }
                )),
            );
        }
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    fn deny(&mut self, capability: &str, target: &str, reason: String) {
        let shown = bounded(&self.ctx.redact(target), MAX_TARGET_CHARS);
        let violation = Violation::Denied(format!("{capability} `{shown}`: {reason}"));
        self.violations
            .refuse(&self.ctx, capability, target, reason, violation);
    }
}

/// The memory limit, over all of a store's memories together, recording refusals.
struct Limiter {
    inner: StoreLimits,
    /// Bytes of every memory of the store together.
    total: usize,
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
        let total = self.total.saturating_sub(current).saturating_add(desired);
        let allowed = total <= self.ctx.memory_bytes()
            && self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.total = total;
        } else {
            let limit = self.ctx.grants.memory_mib;
            let reason = format!(
                "growth from {} to {} KiB refused: the limit is {limit} MiB over all the plugin's memories",
                current >> 10,
                desired >> 10
            );
            let violation = Violation::Limit(format!(
                "memory limit of {limit} MiB reached (growth to {} KiB refused)",
                total >> 10
            ));
            self.violations.refuse(
                &self.ctx,
                "memory",
                &format!("{limit} MiB"),
                reason,
                violation,
            );
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
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
    if grants.all_secrets().next().is_some() {
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
        // Redacted whole first: a cut must not leave part of a secret behind. Line
        // breaks are escaped: a plugin cannot forge lines of the host's log.
        let message = bounded(&self.ctx.redact(&message), MAX_LOG_LINE)
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        let len = message.len();
        if self.logged + len > LOG_BYTES_PER_CALL || !self.ctx.logs.take(len) {
            self.log_dropped.0 += 1;
            self.log_dropped.1 += len as u64;
            return;
        }
        self.logged += len;
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
        if !self.ctx.grants.all_secrets().any(|s| *s == name) {
            let reason = "not granted to this plugin".to_owned();
            self.deny("secret", &name, reason.clone());
            return Err(format!(
                "secret `{}` is {reason}",
                bounded(&name, MAX_TARGET_CHARS)
            ));
        }
        match self.ctx.secrets.get(&name) {
            Some(secret) => {
                // Each secret's read is audited once a call, however often it is read.
                if self.violations.lock().secrets_read.insert(name.clone()) {
                    self.violations
                        .decide(&self.ctx, "secret", &name, Decision::Allow, None);
                }
                Ok(secret.expose().to_owned())
            }
            None => {
                let reason = "not mapped to this plugin instance by the operator".to_owned();
                self.violations.decide(
                    &self.ctx,
                    "secret",
                    &name,
                    Decision::Deny,
                    Some(reason.clone()),
                );
                Err(format!("secret `{name}` is {reason}"))
            }
        }
    }
}

/// Run a blocking storage read off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StorageError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("key-value read failed: {e}"))?
        .map_err(|e| e.to_string())
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let kv = self.kv_call()?;
        if let Some(written) = kv.writes.get(&key) {
            return Ok(written.map(<[u8]>::to_vec));
        }
        let ns = kv.ns.clone();
        blocking(move || ns.get(&key)).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.write(key, Some(value)).await
    }

    async fn delete(&mut self, key: String) -> Result<(), String> {
        self.write(key, None).await
    }
}

impl PluginState {
    fn kv_call(&mut self) -> Result<&mut KvCall, String> {
        self.kv
            .as_mut()
            .ok_or_else(|| "key-value storage is not granted to this plugin".into())
    }

    /// Buffer a write after checking the quota against what is committed plus what
    /// this call wrote so far.
    async fn write(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), String> {
        let kv = self.kv_call()?;
        let old = match kv.writes.get(&key) {
            Some(written) => kv_entry_size(&key, written),
            None => {
                let (ns, k) = (kv.ns.clone(), key.clone());
                let committed = blocking(move || ns.get(&k)).await?;
                kv_entry_size(&key, committed.as_deref())
            }
        };
        let kv = self.kv_call()?;
        let committed = match kv.committed {
            Some(used) => used,
            None => {
                let ns = kv.ns.clone();
                let used = blocking(move || ns.usage()).await?;
                let kv = self.kv_call()?;
                kv.committed = Some(used);
                used
            }
        };
        let new = kv_entry_size(&key, value.as_deref());
        let kv = self.kv_call()?;
        let after = (committed as i64 + kv.delta - old as i64 + new as i64).max(0) as u64;
        if let Some(quota) = kv.ns.quota()
            && new > old
            && after > quota
        {
            let reason = format!(
                "key-value quota of {quota} bytes exceeded ({after} bytes after this write)"
            );
            let violation = Violation::Limit(reason.clone());
            self.violations
                .refuse(&self.ctx, "kv", &key, reason.clone(), violation);
            return Err(reason);
        }
        kv.delta += new as i64 - old as i64;
        kv.writes.put(&key, value);
        Ok(())
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
        let (ctx, violations) = (self.ctx.clone(), self.violations.clone());
        let origin = origin(request.uri());
        // Every decision about this request, through the call's capped record.
        let refuse = {
            let (ctx, violations) = (ctx.clone(), violations.clone());
            move |target: &str, reason: String, limit: bool| {
                let text = format!("http `{target}`: {reason}");
                let violation = if limit {
                    Violation::Limit(text)
                } else {
                    Violation::Denied(text)
                };
                violations.refuse(&ctx, "http", target, reason, violation);
            }
        };
        if !ctx.grants.allows_http(&origin) {
            refuse(&origin, "origin not granted".into(), false);
            return Box::new(async { Err(E::HttpRequestDenied) });
        }
        let Some(egress) = ctx.egress.clone() else {
            refuse(&origin, "the plugin has no outbound HTTP".into(), false);
            return Box::new(async { Err(E::HttpRequestDenied) });
        };
        let on_too_large = {
            let (refuse, origin) = (refuse.clone(), origin.clone());
            move |cap: u64| {
                refuse(
                    &origin,
                    format!("response body over the {cap}-byte cap"),
                    true,
                )
            }
        };
        Box::new(async move {
            let allowed = || violations.decide(&ctx, "http", &origin, Decision::Allow, None);
            let sent =
                tokio::time::timeout(ctx.timeout(), egress.send(request, on_too_large)).await;
            match sent {
                Err(_) => Err(E::ConnectionReadTimeout),
                Ok(Ok(response)) => {
                    allowed();
                    let io: Box<dyn Future<Output = _> + Send> = Box::new(async { Ok(()) });
                    Ok((response, io))
                }
                Ok(Err(SendError::Prohibited(p))) => {
                    refuse(&format!("{origin} ({})", p.ip), p.to_string(), false);
                    Err(E::DestinationIpProhibited)
                }
                Ok(Err(SendError::TooLarge(cap))) => {
                    refuse(
                        &origin,
                        format!("response body over the {cap}-byte cap"),
                        true,
                    );
                    Err(E::HttpResponseBodySize(Some(cap)))
                }
                Ok(Err(SendError::RequestTooLarge(cap))) => {
                    refuse(
                        &origin,
                        format!("request body over the {cap}-byte cap"),
                        true,
                    );
                    Err(E::HttpRequestBodySize(Some(cap)))
                }
                Ok(Err(SendError::Network(e))) => {
                    allowed();
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(memory_mib: u32) -> (tempfile::TempDir, Arc<PluginContext>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::store::Storage::open(dir.path()).unwrap();
        let ctx = PluginContext {
            name: "p".into(),
            version: "0.1.0".into(),
            digest: "sha256:0".into(),
            config: BTreeMap::new(),
            readable_config: BTreeSet::new(),
            grants: Grants {
                memory_mib,
                ..Grants::default()
            },
            secrets: BTreeMap::new(),
            redactor: Redactor::default(),
            audit: storage.audit().clone(),
            egress: None,
            logs: LogBudget::default(),
        };
        (dir, Arc::new(ctx))
    }

    #[test]
    fn the_memory_limit_covers_all_of_a_stores_memories() {
        let (_dir, ctx) = context(16);
        let mut state = PluginState::new(ctx, None);
        let limiter = state.limiter();
        let mib = |n: usize| n << 20;
        // Two memories of 10 MiB each would be 20 MiB: the second is refused.
        assert!(limiter.memory_growing(0, mib(10), None).unwrap());
        assert!(!limiter.memory_growing(0, mib(10), None).unwrap());
        // Growing the first within the limit is fine, past it is not.
        assert!(limiter.memory_growing(mib(10), mib(16), None).unwrap());
        assert!(!limiter.memory_growing(mib(16), mib(17), None).unwrap());
        assert!(matches!(
            state.violations().first(),
            Some(Violation::Limit(reason)) if reason.starts_with("memory limit of 16 MiB reached")
        ));
    }

    #[test]
    fn guest_chosen_names_are_cut_before_they_are_recorded() {
        let long = "k".repeat(10_000);
        let cut = bounded(&long, MAX_TARGET_CHARS);
        assert!(cut.len() < 300, "{}", cut.len());
        assert!(cut.ends_with("... (10000 bytes)"));
        assert_eq!(bounded("short", MAX_TARGET_CHARS), "short");
    }
}
