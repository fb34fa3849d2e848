//! The one wasmtime [`Engine`] of the process, its epoch ticker, and the on-disk cache
//! of compiled components.
//!
//! Compiling a component takes 100 ms to seconds; loading a compiled one ~0.5 ms. The
//! cache is keyed by the component's sha256 and the engine's compatibility hash, and
//! each artifact's own BLAKE3 digest is recorded in the database and checked before
//! the artifact is loaded: native code is never loaded from a file that changed
//! behind our back. (BLAKE3 rather than SHA-256 because a restart hashes every
//! artifact, ~14 MB for the example: SHA-256 was the larger part of a cached start.)

use crate::store::{NodeDb, Store, StoreError};
use anyhow::Context as _;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; per-call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest linear memory any plugin may be granted (the pool reserves this much
/// address space per slot); each plugin's own limit is enforced per store.
pub const MAX_PLUGIN_MEMORY: usize = crate::config::MAX_PLUGIN_MEMORY_MIB << 20;

/// Engine settings; the defaults are what production runs with.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Interrupt guest code at per-call deadlines (the time limit). Off only to
    /// measure what the limit costs.
    pub epoch_interruption: bool,
    /// Give each store the plugin's resource limiter (its memory limit). Off only
    /// to measure what the limit costs.
    pub memory_limiter: bool,
    /// Bytes of each linear-memory slot kept resident (zeroed rather than returned to
    /// the kernel) between instances; see [`default_keep_resident`].
    pub keep_resident: usize,
    /// Reset only the pages of a slot an instance dirtied, found by Linux's
    /// `PAGEMAP_SCAN` (6.7 and later; elsewhere the `memset` of the first
    /// `keep_resident` bytes, touched or not). On by default: the `mapping` bench's
    /// `fresh_memset_2mb_vs_default` line measures what a kernel without it gets.
    pub pagemap_scan: bool,
    /// Have wasmtime write `/tmp/perf-<pid>.map`, so that `perf report` names guest
    /// functions instead of lumping them as JIT code (how the profiles in the README
    /// were read). Off in production; the `mapping` bench sets it from `TENON_PERFMAP`.
    pub perfmap: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            epoch_interruption: true,
            memory_limiter: true,
            keep_resident: default_keep_resident(),
            pagemap_scan: true,
            perfmap: false,
        }
    }
}

/// Bytes of a memory slot kept resident between instances unless `[server]
/// resident_mib` says otherwise: [`KEEP_RESIDENT`] where the kernel has
/// `PAGEMAP_SCAN`, else [`KEEP_RESIDENT_MEMSET`].
pub fn default_keep_resident() -> usize {
    match PoolingAllocationConfig::is_pagemap_scan_available() {
        true => KEEP_RESIDENT,
        false => KEEP_RESIDENT_MEMSET,
    }
}

/// With `PAGEMAP_SCAN` only the pages an instance dirtied are reset, so a slot keeps
/// what its plugin's instances use, up to this: nothing of the range is returned to
/// the kernel and faulted in again by the next instance. The `mapping` bench's fresh
/// path ran 1.11x, 1.23x and 1.31x faster than with 2 MiB in three runs, and the
/// `footprint` bench's node held 138.6 MiB instead of 142.0. At worst (every slot of
/// the pool used by instances that dirty it all) 512 slots hold 8 GiB.
pub const KEEP_RESIDENT: usize = 16 << 20;

/// Without `PAGEMAP_SCAN` (Linux before 6.7) a slot's reset is a `memset` of the
/// whole resident range, touched or not: 2 MiB, what was measured for it.
pub const KEEP_RESIDENT_MEMSET: usize = 2 << 20;

/// The engine, shared by every plugin.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    cache_dir: PathBuf,
    /// This node's database: the compiled-artifact index and the audit log.
    node: NodeDb,
    /// Where plugins' key-value data lives.
    store: Arc<dyn Store>,
    compat: String,
    epochs: bool,
    limiter: bool,
    /// This host's own listeners, which no plugin may reach.
    listeners: crate::sandbox::egress::Listeners,
    /// Each plugin instance's outbound gate.
    throttles: Arc<crate::sandbox::throttle::Throttles>,
    /// The compiled components in memory, by cache key: the instances of one
    /// component share one copy of its machine code, however many load it. An entry
    /// lives as long as a plugin holds its component or a load is filling it.
    loaded: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
    /// Components compiled since the engine started.
    compiled: Arc<std::sync::atomic::AtomicU64>,
    /// Stops the epoch thread when the last clone goes.
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The digest recorded for a compiled artifact: `blake3:<hex>`. (A record of another
/// form, as an older version wrote, never matches: the component is compiled again.)
fn artifact_digest(artifact: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(artifact).to_hex())
}

/// A compiled component in memory, while some plugin holds it; loads of it take the
/// lock in turn.
type Slot = Mutex<Weak<Component>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// An engine with the component model, async calls, epoch interruption and the
    /// pooling allocator, caching compiled components under `data_dir/cache`.
    /// Plugins' key-value data goes to `store`, the audit log to `node`.
    pub fn new(node: NodeDb, store: Arc<dyn Store>, data_dir: &Path) -> anyhow::Result<Engine> {
        Engine::with_options(node, store, data_dir, &EngineOptions::default())
    }

    /// An engine with explicit [`EngineOptions`].
    pub fn with_options(
        node: NodeDb,
        store: Arc<dyn Store>,
        data_dir: &Path,
        options: &EngineOptions,
    ) -> anyhow::Result<Engine> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(512)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(1024)
            .max_memory_size(MAX_PLUGIN_MEMORY)
            // Keep what a slot's instances dirtied resident between instances: a
            // fresh instance's first call otherwise pays page faults on a cold heap.
            .linear_memory_keep_resident(options.keep_resident)
            .table_keep_resident(64 << 10)
            .pagemap_scan(if options.pagemap_scan {
                wasmtime::Enabled::Auto
            } else {
                wasmtime::Enabled::No
            });
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(options.epoch_interruption)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if options.perfmap {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let inner = wasmtime::Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        inner.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        let epochs = options.epoch_interruption;

        let stop = Arc::new(AtomicBool::new(false));
        let weak = inner.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("tenon-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("cannot start the epoch ticker")?;

        let cache_dir = data_dir.join("cache");
        std::fs::create_dir_all(&cache_dir)
            .with_context(|| format!("cannot create {}", cache_dir.display()))?;
        Ok(Engine {
            inner,
            cache_dir,
            node,
            store,
            compat,
            epochs,
            limiter: options.memory_limiter,
            listeners: crate::sandbox::egress::Listeners::default(),
            throttles: Arc::default(),
            loaded: Arc::default(),
            compiled: Arc::default(),
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    /// Whether guest code is interrupted at deadlines.
    pub fn epoch_interruption(&self) -> bool {
        self.epochs
    }

    /// Whether stores get the plugins' resource limiters.
    pub fn limits(&self) -> bool {
        self.limiter
    }

    /// The addresses this host listens on: every plugin's egress refuses them. The
    /// server adds its listeners once bound.
    pub fn listeners(&self) -> crate::sandbox::egress::Listeners {
        self.listeners.clone()
    }

    /// The outbound gate of plugin instance `name`, with its settings applied.
    pub fn throttle(
        &self,
        name: &str,
        outbound: crate::config::Outbound,
    ) -> Arc<crate::sandbox::throttle::Throttle> {
        self.throttles.of(name, outbound)
    }

    /// The store that keeps plugins' key-value data.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The sandbox's audit log.
    pub fn audit(&self) -> &crate::store::audit::AuditLog {
        self.node.audit()
    }

    /// How many components this engine compiled (found neither in memory nor in
    /// the cache).
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// The wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// The component for these bytes: the one already in memory when a plugin holds
    /// it, else from the cache when it holds a verified artifact, else compiled (and
    /// cached). `digest` is the bytes' [`crate::model::digest`]; whoever keeps the
    /// component keeps it shared.
    pub fn component(&self, wasm: &[u8], digest: &str) -> anyhow::Result<Arc<Component>> {
        let key = format!("{digest}@{}", self.compat);
        let slot = {
            let mut loaded = lock(&self.loaded);
            // The versions no plugin holds any more go (a swapped-out mapping's code);
            // a slot a load is using stays.
            loaded.retain(|_, slot| Arc::strong_count(slot) > 1 || lock(slot).strong_count() > 0);
            loaded.entry(key.clone()).or_default().clone()
        };
        // Loads of one component wait for each other (plugins load side by side at
        // start): the second gets the first's copy instead of reading, hashing and
        // deserialising, or compiling, it again.
        let mut held = lock(&slot);
        if let Some(component) = held.upgrade() {
            return Ok(component);
        }
        let component = Arc::new(self.load(wasm, digest, &key)?);
        *held = Arc::downgrade(&component);
        Ok(component)
    }

    /// The component from the on-disk cache, or compiled and cached.
    fn load(&self, wasm: &[u8], digest: &str, key: &str) -> anyhow::Result<Component> {
        let hex = digest.trim_start_matches("sha256:");
        let path = self.cache_dir.join(format!("{hex}-{}.cwasm", self.compat));
        if let Some(component) = self.cached(&path, key)? {
            tracing::debug!(%digest, "compiled component loaded from cache");
            return Ok(component);
        }
        let started = std::time::Instant::now();
        let component = Component::new(&self.inner, wasm)
            .map_err(anyhow::Error::from)
            .context("component does not compile")?;
        let artifact = component
            .serialize()
            .map_err(anyhow::Error::from)
            .context("cannot serialise the compiled component")?;
        // A temporary file of this load's own: loads of one component in two engines
        // (or processes) at once each write theirs, and the last rename wins (the
        // same bytes).
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
        std::fs::write(&tmp, &artifact)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.node.set_compiled(key, &artifact_digest(&artifact))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%digest, ms = started.elapsed().as_millis() as u64, "component compiled");
        Ok(component)
    }

    fn cached(&self, path: &Path, key: &str) -> Result<Option<Component>, StoreError> {
        let Some(expected) = self.node.compiled(key)? else {
            return Ok(None);
        };
        if !expected.starts_with("blake3:") {
            tracing::debug!(path = %path.display(), "the artifact's digest was recorded in an older form; recompiling");
            return Ok(None);
        }
        let Ok(artifact) = std::fs::read(path) else {
            return Ok(None);
        };
        if artifact_digest(&artifact) != expected {
            tracing::warn!(path = %path.display(), "cached artifact does not match its recorded digest; recompiling");
            return Ok(None);
        }
        // SAFETY: the artifact was produced by `Component::serialize` of an engine with
        // the same compatibility hash (part of the key), and its bytes match the
        // digest recorded when we wrote it, so it is our own, unmodified output.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.inner, &artifact) };
        Ok(component.ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    /// The smallest valid component: the preamble, nothing in it.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn an_artifact_is_compiled_once_then_verified_and_an_older_record_compiles_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeDb::open(dir.path()).unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&node).unwrap());
        let engine = Engine::new(node.clone(), store, dir.path()).unwrap();
        let digest = crate::model::digest(EMPTY_COMPONENT);
        let key = format!("{digest}@{}", engine.compat);

        drop(engine.component(EMPTY_COMPONENT, &digest).unwrap());
        assert_eq!(engine.compiled(), 1);
        let recorded = node.compiled(&key).unwrap().unwrap();
        assert!(recorded.starts_with("blake3:"), "{recorded}");
        // Nobody holds it: the next load reads and verifies the cached artifact.
        drop(engine.component(EMPTY_COMPONENT, &digest).unwrap());
        assert_eq!(engine.compiled(), 1, "the verified artifact was not used");

        // A record of the form an older Tenon wrote (sha256) is not trusted as a
        // match: the component is compiled again and recorded the new way.
        node.set_compiled(&key, &crate::model::digest(b"an older record"))
            .unwrap();
        drop(engine.component(EMPTY_COMPONENT, &digest).unwrap());
        assert_eq!(engine.compiled(), 2);
        assert!(node.compiled(&key).unwrap().unwrap().starts_with("blake3:"));
    }
}
