//! The runtime: loaded plugins, flows, and the workers that move messages through them.
//!
//! A flow is a source, then stages: its transform steps, then its sink. In front of
//! each stage is a queue (`<flow>/<stage>`); each stage has `concurrency` workers that
//! lease from it, call the stage's plugin in a fresh instance, and commit the result
//! with the ack of the input ([`crate::store::Store::complete`]).
//!
//! **Architecture invariant:** the worker decides what a result means (forward,
//! finish, retry, dead letter) from the failure class alone; it knows nothing of what
//! the plugins do.

pub mod apis;
pub mod canary;
pub mod cluster;
pub mod drift;
pub mod flows;
pub mod ingest;
pub mod lifecycle;
pub mod observe;
pub mod process;
pub mod reconcile;
pub mod replay;
pub mod slots;
pub mod watch;
pub mod worker;

pub use flows::{Flow, RetryPolicy};
pub use ingest::{IDEMPOTENCY_HEADER, IngestError, Ingested, Validation};
pub use slots::{LiveStatus, Refusal, Reload};
pub use worker::MessageStatus;

use crate::config::Config;
use crate::config::StoreConfig;
use crate::sandbox::engine::Engine;
use crate::sandbox::plugin::Plugin;
use crate::store::nats::{NatsOptions, NatsStore};
use crate::store::redb::RedbStore;
use crate::store::{NodeDb, Store};
use anyhow::Context as _;
use flows::resolve_flows;
use lifecycle::{approved_of, load_plugin, load_plugin_from};
use slots::PluginSlots;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::task::JoinSet;

/// The running runtime. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Runtime {
    node: NodeDb,
    store: Arc<dyn Store>,
    engine: Engine,
    plugins: PluginSlots,
    data_dir: std::path::PathBuf,
    /// Every worker, so that shutdown can wait for them and reloads can add some.
    workers: Mutex<JoinSet<()>>,
    /// The queues that have workers.
    started: Mutex<std::collections::HashSet<String>>,
    /// The shutdown signal, once started.
    shutdown: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    flows: RwLock<BTreeMap<String, Flow>>,
    config: RwLock<Arc<Config>>,
    /// The last config file refused by a reload, if any since the live one.
    config_refused: Mutex<Option<Refusal>>,
    /// When this node started (ms since the Unix epoch).
    started_ms: u64,
    /// Where this node listens (ingestion, admin API), once the server is up.
    listeners: std::sync::OnceLock<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Woken when a plugin version or the config changes on this node, for the
    /// deployment to hear of it at once (see [`cluster`]).
    changed_here: tokio::sync::Notify,
    /// Woken after every result a worker of this node commits: what a sender waiting
    /// for its messages' steps (`ack = "validated"`) listens to.
    progressed: tokio::sync::Notify,
    /// The last run of each reconciliation on this node.
    reconciled: Mutex<BTreeMap<String, reconcile::Reconciled>>,
    /// The last run of each drift check on this node.
    drifted: Mutex<BTreeMap<String, drift::DriftReport>>,
    /// When each scheduled check last started here (`reconciliation:<name>`,
    /// `drift:<name>`), whether it succeeded or not.
    scheduled: Mutex<BTreeMap<String, u64>>,
    /// The threads guest code runs on, apart from those that serve HTTP: a plugin
    /// spinning until its deadline never delays an answer.
    guests: Guests,
}

/// A multi-threaded async runtime of its own for plugin calls (the stage workers and
/// the calls of sources), one thread per core.
struct Guests {
    handle: tokio::runtime::Handle,
    /// Kept to be shut down without blocking when the runtime goes.
    threads: Option<tokio::runtime::Runtime>,
}

impl Guests {
    fn new() -> std::io::Result<Guests> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tenon-guest")
            .enable_all()
            .build()?;
        Ok(Guests {
            handle: rt.handle().clone(),
            threads: Some(rt),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        // Dropped from async code, a runtime must not block: its threads end on their own.
        if let Some(rt) = self.threads.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Guests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guests")
    }
}

/// The store the config names. Blocking: call it off the async workers.
fn open_store(config: &Config, node: &NodeDb) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.store {
        StoreConfig::Redb => Arc::new(RedbStore::open(node)?),
        StoreConfig::Nats(nats) => {
            anyhow::ensure!(
                !nats.servers.is_empty(),
                "{}: [store] kind = \"nats\" needs `servers`, e.g. [\"nats://127.0.0.1:4222\"]",
                config.path.display()
            );
            let options = NatsOptions {
                servers: nats.servers.clone(),
                replicas: nats.replicas.max(1),
                prefix: nats.prefix.clone(),
                retention: std::time::Duration::from_secs(config.server.retention_secs),
                idempotency_retention: std::time::Duration::from_secs(
                    config.server.idempotency_retention_secs,
                ),
            };
            let store = tokio::runtime::Handle::current()
                .block_on(NatsStore::connect(&options))
                .with_context(|| format!("{}: [store]", config.path.display()))?;
            Arc::new(store)
        }
    })
}

/// Load plugin instance `name` at start: the version in its directory, or the one
/// approved before when that one widens its grants (then the directory's waits).
/// Returns the live version and the waiting one.
fn open_plugin(
    config: &Config,
    engine: &Engine,
    node: &NodeDb,
    data_dir: &Path,
    name: &str,
) -> anyhow::Result<(Plugin, Option<Plugin>)> {
    // A restart does not take a version of another plugin than the one approved
    // in the instance before (one the watcher refused, say): the instance keeps
    // its plugin unless the config says otherwise.
    let approved = node.approved(name)?;
    let keep = approved
        .as_ref()
        .and_then(|a| lifecycle::keep_approved(data_dir, name, &a.digest));
    let loaded = load_plugin(config, engine, name, keep.clone())?;
    lifecycle::archive(data_dir, &loaded);
    // A version that widens the grants of the one approved before does not go
    // live because the process restarted: the approved one runs, it waits. (A
    // version of another plugin, which the config's binding let in, is the
    // operator's choice: the one approved before is not its measure.)
    let same_plugin = keep
        .as_ref()
        .is_none_or(|k| k.name == loaded.manifest().name);
    let (live, waiting) = match &approved {
        Some(approved)
            if approved.digest != loaded.digest()
                && same_plugin
                && !loaded.grants().widening(&approved.grants).is_empty() =>
        {
            let dir = lifecycle::archive_dir(data_dir, name, &approved.digest);
            let live = load_plugin_from(config, engine, name, name, &dir, None).with_context(|| {
                format!(
                    "the version in its directory asks for wider grants ({}) than the approved version {}, which cannot be loaded from the archive",
                    loaded.grants().widening(&approved.grants).join(", "),
                    approved.digest
                )
            })?;
            tracing::warn!(plugin = %name, waiting = %loaded.digest(), "a version with wider grants waits for approval; the approved one runs");
            (live, Some(loaded))
        }
        _ => (loaded, None),
    };
    // Written only when it changed: a restart of the same versions commits nothing.
    let record = approved_of(&live);
    if approved.as_ref() != Some(&record) {
        node.set_approved(name, &record)?;
    }
    Ok((live, waiting))
}

/// `f` of every item, on as many threads as there are cores; the results in the
/// items' order, or the error of the first item (in that order) that failed: items
/// after a failed one are not started. The threads run in the caller's tracing span
/// and tokio runtime. Plain scoped threads, not rayon's pool: a load can wait for
/// another load of its component under a lock, which a pool thread that steals work
/// must never do.
fn side_by_side<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(items.len());
    let next = AtomicUsize::new(0);
    // The lowest index that failed so far: nothing after it is started.
    let failed = AtomicUsize::new(usize::MAX);
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Handle::try_current().ok();
    let work = || {
        let _span = span.enter();
        let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Relaxed);
            let Some(item) = items.get(i).filter(|_| i < failed.load(Relaxed)) else {
                return done;
            };
            let result = f(item);
            if result.is_err() {
                failed.fetch_min(i, Relaxed);
            }
            done.push((i, result));
        }
    };
    let mut done: Vec<(usize, Result<R, E>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    // Every item before the first failure was started (the counter hands them out in
    // order) and finished, so the first error here is the first in order.
    done.into_iter().map(|(_, r)| r).collect()
}

impl Runtime {
    /// Open the data directory and load every plugin of the config; any plugin that
    /// does not load, or does not fit where a flow uses it, fails the whole start.
    pub fn open(config: Config, data_dir: &Path) -> anyhow::Result<Runtime> {
        let node = NodeDb::open(data_dir)?;
        let store = open_store(&config, &node)?;
        let mut options = crate::sandbox::engine::EngineOptions::default();
        if let Some(mib) = config.server.resident_mib {
            options.keep_resident = mib << 20;
        }
        let engine = Engine::with_options(node.clone(), store.clone(), data_dir, &options)?;
        for warning in config.warnings() {
            tracing::warn!(config = %config.path.display(), "{warning}");
        }
        // The plugins load side by side: reading, hashing and deserialising (or
        // compiling) their components is most of a start. The first of them (by
        // name) that does not load fails the start.
        let names: Vec<&String> = config.plugins.keys().collect();
        let opened = side_by_side(&names, |name| {
            open_plugin(&config, &engine, &node, data_dir, name)
                .with_context(|| format!("{}: plugin `{name}`", config.path.display()))
        })?;
        let plugins: BTreeMap<_, _> = names.into_iter().cloned().zip(opened).collect();
        let kind_of = |name: &str| plugins.get(name).map(|p| p.0.kind());
        let flows = resolve_flows(&config, kind_of)?;
        apis::check_apis(&config, kind_of)?;
        flows::check_models(&flows, |name| {
            plugins.get(name).map(|p| p.0.manifest().models.clone())
        })
        .map_err(|why| anyhow::anyhow!("{}: {why}", config.path.display()))?;
        process::check_abilities(&config, &flows, |name| {
            plugins.get(name).map(|p| process::Abilities::of(&p.0))
        })
        .map_err(|why| anyhow::anyhow!("{}: {why}", config.path.display()))?;
        Ok(Runtime {
            guests: Guests::new().context("cannot start the plugin threads")?,
            config_refused: Mutex::default(),
            started_ms: crate::model::now_ms(),
            listeners: std::sync::OnceLock::new(),
            changed_here: tokio::sync::Notify::new(),
            progressed: tokio::sync::Notify::new(),
            reconciled: Mutex::new(BTreeMap::new()),
            drifted: Mutex::new(BTreeMap::new()),
            scheduled: Mutex::new(BTreeMap::new()),
            store,
            node,
            engine,
            plugins: PluginSlots::new(plugins),
            data_dir: data_dir.to_owned(),
            workers: Mutex::default(),
            started: Mutex::default(),
            shutdown: Mutex::default(),
            flows: RwLock::new(flows),
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// The config the runtime started from.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last config refused by a reload since the live one went live, if any.
    pub fn config_refused(&self) -> Option<Refusal> {
        self.config_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The message store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the source instance `name` authenticates its senders by signature
    /// (and so takes requests without an API key).
    pub fn source_signs(&self, name: &str) -> bool {
        self.config()
            .plugins
            .get(name)
            .is_some_and(|entry| entry.auth == crate::config::IngestAuth::Signature)
    }

    /// This node's database.
    pub fn node(&self) -> &NodeDb {
        &self.node
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The live version of a plugin instance.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// The live version of every plugin instance, when it went live, what was refused.
    pub fn plugin_status(&self) -> Vec<LiveStatus> {
        self.plugins.status()
    }
}

#[cfg(test)]
mod tests {
    use super::side_by_side;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    #[test]
    fn side_by_side_keeps_the_order_and_reports_the_first_failure_in_it() {
        let items: Vec<usize> = (0..40).collect();
        assert_eq!(
            side_by_side(&items, |i| Ok::<_, usize>(i * 2)),
            Ok((0..40).map(|i| i * 2).collect())
        );

        // Items 9 and 23 fail: whichever thread meets which first, the error is 9's,
        // and every item before it ran.
        let ran = AtomicUsize::new(0);
        let result = side_by_side(&items, |&i| {
            if i < 9 {
                ran.fetch_add(1, Relaxed);
            }
            if i == 23 || i == 9 { Err(i) } else { Ok(i) }
        });
        assert_eq!(result, Err(9));
        assert_eq!(ran.load(Relaxed), 9);
        assert_eq!(
            side_by_side(&[] as &[usize], |&i| Ok::<_, ()>(i)),
            Ok(vec![])
        );
    }
}
