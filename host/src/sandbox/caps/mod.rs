//! Host capabilities: what a plugin can reach outside its sandbox.
//!
//! Which capabilities exist, which kinds of plugin may have them and which grant turns
//! each on is one table, [`tenon_registry::CAPABILITIES`]; [`link`] reads it. Every
//! capability has the same shape, the one wasmtime's WASI crates use: a context for
//! the call built from the plugin's grants, denying by default; a view that borrows it
//! with the call's [`Call`] record, on which the WIT host trait is implemented; and its
//! own `add_to_linker`. A component that imports a capability it is not granted is
//! refused at load ([`crate::sandbox::inspect`]) with the import and the grant named.
//!
//! | capability | WIT | linked for |
//! |---|---|---|
//! | [`log`] | `tenon:plugin/log` | every plugin; lines cut at 4 KiB, at most 64 KiB a call and 1 MiB a minute (the excess is dropped, counted and audited) |
//! | [`config`] | `tenon:plugin/config` | every plugin; keys outside its `[config]` and `grants.config` read as unset (and are audited) |
//! | [`kv`] | `tenon:plugin/kv` | transforms and sinks granted `kv`, in their own namespace, under a quota; writes commit with the step's result |
//! | [`secrets`] | `tenon:plugin/secrets` | plugins granted `secrets`: the ones the operator maps to the instance |
//! | [`http`] | `wasi:http/outgoing-handler` | sinks and API plugins granted `http`, to those hosts ([`crate::sandbox::egress`]) |
//! | [`wasi`] | `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random`, `wasi:filesystem` | every plugin, with no files, no environment, no arguments; stderr captured |
//!
//! `wasi:sockets` is never linked. Every allow/deny decision goes to the audit log
//! ([`crate::store::audit`]), at most [`MAX_RECORDED_DECISIONS`] one by one per call (the rest
//! are counted in one record); secret values are redacted from what the host records
//! ([`crate::sandbox::redact`]); [`limits`] holds the memory limit over all of a store's
//! memories.

pub mod config;
pub mod http;
pub mod kv;
pub mod limits;
pub mod log;
pub mod secrets;
pub mod wasi;

use crate::sandbox::egress::Egress;
use crate::sandbox::redact::Redactor;
use crate::store::audit::{AuditLog, AuditRecord, Decision};
use crate::store::{KvNamespace, KvWrites};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tenon_registry::{Grants, Kind};
use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Most bytes of a plugin's stderr kept per call (panic messages land there).
pub(crate) const STDERR_CAPACITY: usize = 16 << 10;
/// Most decisions (allowed or denied) of one call recorded one by one in the audit
/// log; the others are counted in one record at the end of the call.
pub const MAX_RECORDED_DECISIONS: u32 = 16;
/// Longest guest-chosen name (a config key, a secret name) the host records.
const MAX_TARGET_CHARS: usize = 256;
/// Longest text from a plugin the host records (a failure, a receipt, a reason).
pub const MAX_TEXT_CHARS: usize = 4096;

pub use crate::model::Secret;

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
    /// What the instance may send out, shared by its versions.
    pub throttle: Arc<crate::sandbox::throttle::Throttle>,
    /// Its log allowance per minute, and what it dropped.
    pub logs: log::LogBudget,
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
pub(crate) struct CallDecisions {
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

    /// Forget the decisions of the previous call (an instance kept for the next).
    fn clear(&self) {
        *self.lock() = CallDecisions::default();
    }
}

/// What every capability's view borrows of the call: the plugin version's context and
/// the record of what was decided.
#[derive(Debug)]
pub struct Call {
    /// The plugin version's context.
    pub ctx: Arc<PluginContext>,
    /// What was decided during the call.
    pub violations: Violations,
}

impl Call {
    /// Refuse a capability: audited (within the call's share) and kept as a
    /// violation that decides how the call ends.
    fn deny(&self, capability: &str, target: &str, reason: String) {
        let shown = bounded(&self.ctx.redact(target), MAX_TARGET_CHARS);
        let violation = Violation::Denied(format!("{capability} `{shown}`: {reason}"));
        self.violations
            .refuse(&self.ctx, capability, target, reason, violation);
    }
}

/// The data of one store: one plugin call, with each capability's context.
pub struct PluginState {
    call: Call,
    table: ResourceTable,
    /// Made at the guest's first WASI call: most calls make none, and making one
    /// (two random generators seeded, a few boxes) is a measurable part of a fresh
    /// instance's cost.
    wasi: Option<WasiCtx>,
    http: http::HttpCall,
    log: log::LogCall,
    kv: Option<kv::KvCall>,
    limiter: limits::Limiter,
    stderr: MemoryOutputPipe,
    /// Where this call's stderr starts in the pipe (after what earlier calls on a
    /// kept instance wrote: never shown with this call).
    stderr_from: usize,
    /// When the call must stop; guest code yields to the host every epoch tick
    /// until then.
    pub(crate) deadline: Instant,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("plugin", &self.call.ctx.name)
            .finish_non_exhaustive()
    }
}

impl PluginState {
    /// Fresh state for one call, denying everything the context does not grant.
    pub fn new(ctx: Arc<PluginContext>, kv: Option<KvNamespace>) -> PluginState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let violations = Violations::default();
        PluginState {
            wasi: None,
            http: http::HttpCall::new(ctx.clone(), violations.clone()),
            log: log::LogCall::default(),
            kv: kv.map(kv::KvCall::new),
            limiter: limits::Limiter::new(ctx.clone(), violations.clone()),
            deadline: Instant::now() + ctx.timeout(),
            table: ResourceTable::new(),
            stderr,
            stderr_from: 0,
            call: Call { ctx, violations },
        }
    }

    /// The plugin version's context.
    pub fn ctx(&self) -> &Arc<PluginContext> {
        &self.call.ctx
    }

    /// What the plugin wrote to stderr during this call (e.g. its panic message),
    /// secrets redacted.
    pub fn stderr(&self) -> String {
        let written = self.stderr.contents();
        let this_call = written.get(self.stderr_from..).unwrap_or_default();
        self.call
            .ctx
            .redact(String::from_utf8_lossy(this_call).trim())
    }

    /// What the sandbox refused during this call.
    pub fn violations(&self) -> &Violations {
        &self.call.violations
    }

    /// The call's key-value writes, to commit with its result.
    pub fn take_kv_writes(&mut self) -> Option<KvWrites> {
        self.kv.as_mut().and_then(kv::KvCall::take_writes)
    }

    /// Audit what the call did beyond the records kept one by one: decisions past
    /// the first [`MAX_RECORDED_DECISIONS`], log lines dropped (once a minute per
    /// plugin).
    pub fn finish(&self) {
        let (more, denials) = {
            let seen = self.call.violations.lock();
            (seen.unrecorded, seen.unrecorded_denials)
        };
        if more > 0 {
            self.call.ctx.decide(
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
        self.log.finish(&self.call);
    }

    /// Start the next call on a kept instance: nothing decided, logged or written
    /// yet, a new deadline. What the guest itself keeps in its memory is not reset:
    /// that is why reuse is the operator's choice (`reuse_instances`).
    pub fn renew(&mut self) {
        self.call.violations.clear();
        self.log = log::LogCall::default();
        if let Some(kv) = &mut self.kv {
            kv.renew();
        }
        self.deadline = Instant::now() + self.call.ctx.timeout();
        self.stderr_from = self.stderr_len();
    }

    /// Bytes the guest wrote to stderr since the instance started (the pipe keeps
    /// at most 16 KiB).
    pub fn stderr_len(&self) -> usize {
        self.stderr.contents().len()
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }
}

/// Link what a plugin of `kind` with `grants` may use into `linker`, capability by
/// capability as the table says: nothing else.
pub fn link(linker: &mut Linker<PluginState>, kind: Kind, grants: &Grants) -> anyhow::Result<()> {
    for capability in tenon_registry::CAPABILITIES {
        if !capability.linked_for(kind, grants) {
            continue;
        }
        match capability.name {
            "log" => log::add_to_linker(linker)?,
            "config" => config::add_to_linker(linker)?,
            "kv" => kv::add_to_linker(linker)?,
            "secrets" => secrets::add_to_linker(linker)?,
            "http" => http::add_to_linker(linker)?,
            "wasi" => wasi::add_to_linker(linker)?,
            other => {
                anyhow::bail!("the capability table names `{other}`, which this host cannot link")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(memory_mib: u32) -> (tempfile::TempDir, Arc<PluginContext>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::store::NodeDb::open(dir.path()).unwrap();
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
            throttle: Arc::default(),
            logs: log::LogBudget::default(),
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
