//! The runtime: loaded plugins, flows, and the workers that move messages through them.
//!
//! A flow is a source, then stages: its transform steps, then its sink. In front of
//! each stage is a queue (`<flow>/<stage>`); each stage has `concurrency` workers that
//! lease from it, call the stage's plugin in a fresh instance, and commit the result
//! with the ack of the input ([`crate::queue::Queue::complete`]).
//!
//! **Architecture invariant:** the worker decides what a result means (forward,
//! finish, retry, dead letter) from the failure class alone; it knows nothing of what
//! the plugins do.

use crate::config::{Config, DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS};
use crate::engine::Engine;
use crate::plugin::{CallError, Failure, Plugin, PluginSettings, RawRequest};
use crate::queue::{
    Accepted, Attempt, Completion, DEFAULT_VISIBILITY, Envelope, Hop, IdempotencyClaim, Lease,
    Outcome, OutcomeKind, Queue, StoredMessage, now_ms, queue_name,
};
use crate::storage::{Storage, StorageError};
use crate::swap::{LiveStatus, PluginSlots, Reload};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tenon_model::Encoding;
use tenon_registry::Kind;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;

/// Backoff before the first retry unless the flow says otherwise (ms).
const RETRY_BASE_MS: u64 = 200;

/// The header carrying an idempotency key, on requests and on a source's messages.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Longest backoff unless the flow says otherwise (ms).
const RETRY_MAX_MS: u64 = 30_000;

/// A flow, resolved against the loaded plugins.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Its name.
    pub name: String,
    /// The source plugin instance, for a flow fed through ingress.
    pub source: Option<String>,
    /// The event kinds it takes from other flows, for a subscribing flow.
    pub subscribe: Vec<String>,
    /// Headers a subscribed message must carry.
    pub when: BTreeMap<String, String>,
    /// The stage plugin instances: the steps, then the sink.
    pub stages: Vec<String>,
    /// How each stage retries, in the order of `stages`.
    pub retry: Vec<RetryPolicy>,
    /// Workers per stage.
    pub concurrency: u32,
}

/// How a stage retries `retryable` failures, traps and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a dead letter.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per attempt.
    pub backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (from 1): exponential, capped, ±20% jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        let jitter = (uuid::Uuid::now_v7().as_u128() as u64 % 41) as f64 / 100.0 - 0.2;
        capped.mul_f64(1.0 + jitter)
    }
}

/// Why ingress could not accept a request.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No flow starts at this source.
    #[error("no flow has source `{0}`")]
    UnknownSource(String),
    /// The source plugin failed on the payload.
    #[error("source `{plugin}`: {error}")]
    Plugin {
        /// The source plugin instance.
        plugin: String,
        /// How it failed.
        error: CallError,
    },
    /// The `Idempotency-Key` was used before with another payload.
    #[error("idempotency key `{key}` was already used for a different payload")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The messages could not be committed: nothing was accepted.
    #[error("cannot commit the messages: {0}")]
    Storage(#[from] StorageError),
}

/// The running runtime. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Runtime {
    storage: Storage,
    keys: crate::auth::Keys,
    queue: Queue,
    engine: Engine,
    plugins: PluginSlots,
    data_dir: std::path::PathBuf,
    /// Every worker, so that shutdown can wait for them and reloads can add some.
    workers: Mutex<JoinSet<()>>,
    /// The queues that have workers.
    started: Mutex<std::collections::HashSet<String>>,
    /// The shutdown signal, once started.
    shutdown: Mutex<Option<watch::Receiver<bool>>>,
    flows: RwLock<BTreeMap<String, Flow>>,
    config: RwLock<Arc<Config>>,
    /// The last config file refused by a reload, if any since the live one.
    config_refused: Mutex<Option<crate::swap::Refusal>>,
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

impl Runtime {
    /// Open the data directory and load every plugin of the config; any plugin that
    /// does not load, or does not fit where a flow uses it, fails the whole start.
    pub fn open(config: Config, data_dir: &Path) -> anyhow::Result<Runtime> {
        let storage = Storage::open(data_dir)?;
        let engine = Engine::new(storage.clone(), data_dir)?;
        let keys = crate::auth::Keys::open(storage.clone())?;
        let mut plugins = BTreeMap::new();
        for name in config.plugins.keys() {
            let loaded = load_plugin(&config, &engine, &storage, name)
                .with_context(|| format!("{}: plugin `{name}`", config.path.display()))?;
            crate::swap::archive(data_dir, &loaded);
            // A version that widens the grants of the one approved before does not go
            // live because the process restarted: the approved one runs, it waits.
            let (live, waiting) = match storage.approved(name)? {
                Some(approved)
                    if approved.digest != loaded.digest()
                        && !loaded.grants().widening(&approved.grants).is_empty() =>
                {
                    let dir = crate::swap::archive_dir(data_dir, name, &approved.digest);
                    let live = load_plugin_from(&config, &engine, &storage, name, name, &dir)
                        .with_context(|| {
                            format!(
                                "plugin `{name}`: the version in its directory asks for wider grants ({}) than the approved version {}, which cannot be loaded from the archive",
                                loaded.grants().widening(&approved.grants).join(", "),
                                approved.digest
                            )
                        })?;
                    tracing::warn!(plugin = %name, waiting = %loaded.digest(), "a version with wider grants waits for approval; the approved one runs");
                    (live, Some(loaded))
                }
                _ => (loaded, None),
            };
            storage.set_approved(name, &approved_of(&live))?;
            plugins.insert(name.clone(), (live, waiting));
        }
        let flows = resolve_flows(&config, |name| plugins.get(name).map(|p| p.0.kind()))?;
        // A lease must outlast the longest call a stage can make, or a slow but
        // healthy call would see its message handed to a second worker.
        let longest_call = plugins
            .values()
            .map(|p| p.0.timeout())
            .max()
            .unwrap_or_default();
        let visibility = (longest_call * 2 + Duration::from_secs(10)).max(DEFAULT_VISIBILITY);
        Ok(Runtime {
            guests: Guests::new().context("cannot start the plugin threads")?,
            config_refused: Mutex::default(),
            queue: Queue::with_visibility(storage.clone(), visibility),
            keys,
            storage,
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
    pub fn config_refused(&self) -> Option<crate::swap::Refusal> {
        self.config_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Read the config file again and apply it without a restart: new and changed
    /// plugin instances are loaded, flows are added, removed or re-routed. Messages
    /// already accepted finish on the route they entered with. A config that does not
    /// parse, names an unknown plugin, or whose plugins do not load or fit is refused
    /// whole, and the running one stays.
    pub fn reload_config(self: &Arc<Self>) -> Result<(), String> {
        let path = self.config().path.clone();
        let attempt = || -> Result<Candidate, String> {
            let new = Config::load(&path).map_err(|e| e.to_string())?;
            let old = self.config();
            let mut loaded = Vec::new();
            for (name, entry) in &new.plugins {
                if old.plugins.get(name) == Some(entry) && self.plugin(name).is_some() {
                    continue;
                }
                let plugin = load_plugin(&new, &self.engine, &self.storage, name)
                    .map_err(|e| format!("plugin `{name}`: {e:#}"))?;
                if let Some(live) = self
                    .plugin(name)
                    .filter(|live| live.kind() != plugin.kind())
                {
                    return Err(format!(
                        "plugin `{name}` would change from {} to {} while messages may be on their way to it",
                        live.kind(),
                        plugin.kind()
                    ));
                }
                loaded.push(plugin);
            }
            let kind_of = |name: &str| {
                loaded
                    .iter()
                    .find(|p| p.name() == name)
                    .map(Plugin::kind)
                    .or_else(|| {
                        new.plugins
                            .contains_key(name)
                            .then(|| self.plugin(name).map(|p| p.kind()))
                            .flatten()
                    })
            };
            let flows = resolve_flows(&new, kind_of).map_err(|e| e.to_string())?;
            Ok(Candidate {
                config: new,
                loaded,
                flows,
            })
        };
        match attempt() {
            Ok(Candidate {
                config: new,
                loaded,
                flows,
            }) => {
                for plugin in loaded {
                    crate::swap::archive(&self.data_dir, &plugin);
                    let name = plugin.name().to_owned();
                    let approved = approved_of(&plugin);
                    match self.plugins.put(plugin, false) {
                        Reload::Held { digest, widening } => self.held(&name, &digest, &widening),
                        _ => self.record_approved(&name, &approved),
                    }
                }
                *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
                *self.flows.write().unwrap_or_else(PoisonError::into_inner) = flows;
                *self
                    .config_refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.ensure_workers();
                tracing::info!(config = %path.display(), "config reloaded");
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(config = %path.display(), %reason, "config refused; the running one stays");
                let refusal = crate::swap::Refusal {
                    at_ms: now_ms(),
                    reason: reason.clone(),
                };
                *self
                    .config_refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(refusal);
                Err(reason)
            }
        }
    }

    /// The durable queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The API keys.
    pub fn keys(&self) -> &crate::auth::Keys {
        &self.keys
    }

    /// Whether the source instance `name` authenticates its senders by signature
    /// (and so takes requests without an API key).
    pub fn source_signs(&self, name: &str) -> bool {
        self.config()
            .plugins
            .get(name)
            .is_some_and(|entry| entry.auth == crate::config::IngestAuth::Signature)
    }

    /// Record that `name`'s version `digest` waits for approval.
    fn held(&self, name: &str, digest: &str, widening: &[String]) {
        tracing::warn!(plugin = name, %digest, widening = %widening.join(", "), "new plugin version asks for wider grants; it waits for approval");
        if let Some(live) = self.plugin(name) {
            self.storage.audit().record(crate::audit::AuditRecord {
                seq: 0,
                at_ms: now_ms(),
                plugin: name.to_owned(),
                digest: digest.to_owned(),
                key: None,
                capability: "version".into(),
                target: digest.to_owned(),
                decision: crate::audit::Decision::Deny,
                reason: Some(format!(
                    "held for approval: its grants are wider than those of {} ({})",
                    live.digest(),
                    widening.join(", ")
                )),
            });
        }
    }

    fn record_approved(&self, name: &str, approved: &crate::storage::Approved) {
        if let Err(error) = self.storage.set_approved(name, approved) {
            tracing::error!(plugin = name, %error, "cannot record the approved version");
        }
    }

    /// Make the version of `name` that waits for approval live, approved by `key`, if
    /// its digest is `digest` (the one the operator reviewed).
    pub fn approve(&self, name: &str, digest: &str, key: &str) -> Result<Reload, String> {
        let (reload, plugin) = self.plugins.approve(name, digest)?;
        self.record_approved(name, &approved_of(&plugin));
        self.storage.audit().record(crate::audit::AuditRecord {
            seq: 0,
            at_ms: now_ms(),
            plugin: name.to_owned(),
            digest: plugin.digest().to_owned(),
            key: Some(key.to_owned()),
            capability: "version".into(),
            target: plugin.digest().to_owned(),
            decision: crate::audit::Decision::Allow,
            reason: Some("approved: its wider grants are allowed".into()),
        });
        tracing::info!(plugin = name, digest = %plugin.digest(), %key, "plugin version approved and live");
        Ok(reload)
    }

    /// The database.
    pub fn storage(&self) -> &Storage {
        &self.storage
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

    /// Load the version of `name` now in its directory and, if it loads and fits, make
    /// it live. Blocking (it may compile): call it off the async workers. Messages
    /// already leased finish on the version they started with.
    pub fn reload_plugin(&self, name: &str) -> Result<Reload, String> {
        let loaded = load_plugin(&self.config(), &self.engine, &self.storage, name)
            .map_err(|e| format!("{e:#}"));
        self.swap_in(name, loaded, false)
    }

    /// What the watcher does when a plugin's files change: [`Runtime::reload_plugin`],
    /// for a version whose manifest names its component (`component_digest`). Without
    /// it a deploy under way cannot be told from a finished one, so such a version is
    /// refused here and only loads by an operator's explicit reload or promotion.
    pub fn reload_watched(&self, name: &str) -> Result<Reload, String> {
        let loaded = load_plugin(&self.config(), &self.engine, &self.storage, name)
            .map_err(|e| format!("{e:#}"))
            .and_then(|plugin| match plugin.manifest().component_digest {
                Some(_) => Ok(plugin),
                None if self.plugin(name).is_some_and(|live| live.digest() == plugin.digest()) => {
                    Ok(plugin)
                }
                None => Err(format!(
                    "{}: a version dropped into a watched directory must name its component: add `component_digest = \"{}\"` to plugin.toml (or load it explicitly with `POST /v1/plugins/{name}/reload`)",
                    tenon_registry::MANIFEST_FILE,
                    plugin.component_digest()
                )),
            });
        self.swap_in(name, loaded, false)
    }

    /// Swap a loaded version in (or hold it for approval, unless `approved`), and
    /// record what happened.
    pub(crate) fn swap_in(
        &self,
        name: &str,
        loaded: Result<Plugin, String>,
        approved: bool,
    ) -> Result<Reload, String> {
        let loaded = loaded.inspect(|plugin| crate::swap::archive(&self.data_dir, plugin));
        let record = loaded.as_ref().map(approved_of).ok();
        let result = loaded.and_then(|candidate| self.plugins.swap(name, candidate, approved));
        match &result {
            Ok(Reload::Swapped { from, to }) => {
                if let Some(record) = &record {
                    self.record_approved(name, record);
                }
                tracing::info!(plugin = name, %from, %to, "new plugin version live")
            }
            Ok(Reload::Held { digest, widening }) => self.held(name, digest, widening),
            Ok(Reload::Unchanged) => tracing::debug!(plugin = name, "plugin unchanged"),
            Err(reason) => {
                tracing::warn!(plugin = name, %reason, "new plugin version refused; the live one keeps running");
                self.plugins.refuse(name, reason.clone());
            }
        }
        result
    }

    /// The flows.
    pub fn flows(&self) -> Vec<Flow> {
        self.flows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The flows `message` (emitted in flow `from`) enters as an event: those that
    /// subscribe to its kind and whose `when` headers it carries, except the flow it
    /// comes from and any flow its lineage went through already (no loops). Each gets
    /// an envelope at its first stage, with an id derived from the message's.
    fn published(
        &self,
        message: &StoredMessage,
        from: &str,
        root: &str,
        accepted_ms: u64,
        trail: &[Hop],
    ) -> Vec<(String, Envelope)> {
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        // On every step's every output: read the flows in place, clone none.
        let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
        flows
            .values()
            .filter(|f| f.subscribe.contains(&message.kind))
            .filter(|f| f.when.iter().all(|(k, v)| header(k) == Some(v.as_str())))
            .filter(|f| f.name != from && !message.id.contains(&format!("@{}", f.name)))
            .map(|f| {
                let mut copy = message.clone();
                copy.id = format!("{}@{}", message.id, f.name);
                let mut envelope = Envelope::entering(&f.name, &f.stages, copy, accepted_ms);
                envelope.root = root.to_owned();
                envelope.trail = trail.to_vec();
                (queue_name(&f.name, &f.stages[0]), envelope)
            })
            .collect()
    }

    /// Hand a raw request to a source and commit its messages to every flow that
    /// starts there. Returns the accepted message ids once they are durable.
    ///
    /// With an `Idempotency-Key` header, a repeat of the same payload returns the ids
    /// accepted the first time (and commits nothing); the same key with another
    /// payload is refused. Keys are remembered for `server.idempotency_retention_secs`.
    pub async fn ingest(&self, source: &str, request: RawRequest) -> Result<Ingested, IngestError> {
        let flows: Vec<Flow> = self
            .flows()
            .into_iter()
            .filter(|f| f.source.as_deref() == Some(source))
            .collect();
        let plugin = match (flows.is_empty(), self.plugin(source)) {
            (false, Some(plugin)) => plugin,
            _ => return Err(IngestError::UnknownSource(source.to_owned())),
        };
        let payload = crate::engine::digest(&request.body);
        let expires_ms = now_ms() + self.config().server.idempotency_retention_secs * 1000;
        let claim_for = |key: String| IdempotencyClaim {
            scope: source.to_owned(),
            key,
            payload: payload.clone(),
            expires_ms,
        };
        let claim = request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER))
            .map(|(_, key)| claim_for(key.clone()));
        if let Some(claim) = &claim {
            // The common retry: answer from the record without running the source.
            if let Some(record) = self.queue.idempotency(&claim.scope, &claim.key)? {
                return if record.payload == claim.payload {
                    Ok(Ingested {
                        ids: record
                            .ids
                            .into_iter()
                            .filter(|id| !id.contains('@'))
                            .collect(),
                        replayed: true,
                    })
                } else {
                    Err(IngestError::IdempotencyConflict {
                        key: claim.key.clone(),
                    })
                };
            }
        }
        let span = tracing::info_span!("ingest", source, plugin = %plugin.name(), digest = %plugin.digest());
        async {
            let started = Instant::now();
            // Guest code runs on the plugin threads, never on the ones serving HTTP.
            let call = {
                let plugin = plugin.clone();
                self.guests
                    .spawn(async move { plugin.ingest(request).await })
            };
            let messages = call
                .await
                .unwrap_or_else(|e| Err(CallError::Host(format!("the plugin call failed: {e}"))))
                .map_err(|error| IngestError::Plugin {
                    plugin: source.to_owned(),
                    error,
                })?;
            if let Some(bad) = messages
                .iter()
                .find(|m| Encoding::from_content_type(&m.content_type).is_err())
            {
                let error = CallError::Host(format!(
                    "the source produced a `{}` body; messages are application/json or \
                     application/msgpack",
                    bad.content_type
                ));
                return Err(IngestError::Plugin {
                    plugin: source.to_owned(),
                    error,
                });
            }
            let hop = Hop {
                plugin: plugin.name().to_owned(),
                version: plugin.version().to_owned(),
                digest: plugin.digest().to_owned(),
                micros: started.elapsed().as_micros() as u64,
            };
            let accepted_ms = now_ms();
            let mut items = Vec::with_capacity(messages.len() * flows.len());
            let mut events = Vec::new();
            for message in messages {
                let first = items.len();
                for flow in &flows {
                    let id = uuid::Uuid::now_v7().to_string();
                    let mut message = message.clone();
                    message.id = id.clone();
                    if message.key.is_empty() {
                        message.key = id.clone();
                    }
                    let mut envelope =
                        Envelope::entering(&flow.name, &flow.stages, message, accepted_ms);
                    envelope.trail.push(hop.clone());
                    items.push((queue_name(&flow.name, &flow.stages[0]), envelope));
                }
                // The message is an event too: the flows subscribing to its kind get it.
                if let Some((_, e)) = items.get(first) {
                    events.extend(self.published(
                        &e.message,
                        &e.flow,
                        &e.root,
                        accepted_ms,
                        &e.trail,
                    ));
                }
            }
            let ids: Vec<String> = items.iter().map(|(_, e)| e.message.id.clone()).collect();
            items.extend(events);
            // Without a key from the caller, the source may derive one from the payload
            // (e.g. quote id + last modification) by setting it on its messages.
            let claim = claim.or_else(|| {
                let mut keys: Vec<&str> = Vec::new();
                for (_, e) in &items {
                    let key = e
                        .message
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER))?;
                    keys.push(key.1.as_str());
                }
                keys.sort_unstable();
                keys.dedup();
                (!keys.is_empty()).then(|| claim_for(keys.join("|")))
            });
            let accepted = match claim {
                None => {
                    self.queue.enqueue(items).await?;
                    Ingested {
                        ids,
                        replayed: false,
                    }
                }
                // Racing with a request that claimed the same key: the transaction decides.
                Some(claim) => match self.queue.enqueue_claimed(items, claim.clone()).await? {
                    Accepted::Committed => Ingested {
                        ids,
                        replayed: false,
                    },
                    // The answer names the messages the source's flows accepted, not
                    // their copies as events (`<id>@<flow>`), as the first answer did.
                    Accepted::Duplicate(ids) => Ingested {
                        ids: ids.into_iter().filter(|id| !id.contains('@')).collect(),
                        replayed: true,
                    },
                    Accepted::Conflict => {
                        return Err(IngestError::IdempotencyConflict { key: claim.key });
                    }
                    // Only other writes report these; an enqueue never does.
                    Accepted::Missing | Accepted::OverQuota(_) => {
                        return Err(StorageError::Decode(
                            "enqueue reported the result of another write".into(),
                        )
                        .into());
                    }
                },
            };
            tracing::info!(
                accepted = accepted.ids.len(),
                replayed = accepted.replayed,
                "messages accepted"
            );
            Ok(accepted)
        }
        .instrument(span)
        .await
    }

    /// Start the workers of every stage of every flow; they stop when `shutdown`
    /// turns true, each after finishing (and committing) its current message.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut workers = JoinSet::new();
        let (queue, mut stop) = (self.queue.clone(), shutdown.clone());
        let keep = Duration::from_secs(self.config().server.retention_secs);
        let every = Duration::from_secs(self.config().server.sweep_interval_secs.max(1));
        workers.spawn(async move {
            // Expired idempotency keys, old outcomes and old events are removed, so the
            // database stays bounded under a steady load.
            loop {
                if let Err(error) = queue.sweep(keep).await {
                    tracing::warn!(%error, "idempotency sweep failed");
                }
                tokio::select! {
                                        _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
            }
        });
        *self.shutdown.lock().unwrap_or_else(PoisonError::into_inner) = Some(shutdown);
        *self.workers.lock().unwrap_or_else(PoisonError::into_inner) = workers;
        self.ensure_workers();
    }

    /// Wait until every worker has stopped (after `shutdown` turned true).
    pub async fn stopped(&self) {
        let mut workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        while workers.join_next().await.is_some() {}
    }

    /// Start the workers that are missing: for every stage of every flow, and for
    /// every queue still holding messages of a route no flow uses any more (they
    /// drain on their own route). Workers are never stopped before shutdown: an idle
    /// one costs a wake-up every 100 ms.
    fn ensure_workers(self: &Arc<Self>) {
        let Some(shutdown) = self
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        let mut wanted: Vec<(String, String, u32)> = Vec::new();
        for flow in self.flows() {
            for stage in &flow.stages {
                wanted.push((flow.name.clone(), stage.clone(), flow.concurrency));
            }
        }
        for name in self.queue.queue_names().unwrap_or_default() {
            if let Some((flow, stage)) = name.split_once('/') {
                wanted.push((flow.to_owned(), stage.to_owned(), DEFAULT_CONCURRENCY));
            }
        }
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        for (flow, stage, concurrency) in wanted {
            if !started.insert(queue_name(&flow, &stage)) {
                continue;
            }
            for _ in 0..concurrency {
                let (runtime, flow, stage) = (self.clone(), flow.clone(), stage.clone());
                let shutdown = shutdown.clone();
                // The workers call plugins: they run on the plugin threads.
                workers.spawn_on(
                    async move { runtime.work(flow, stage, shutdown).await },
                    self.guests.handle(),
                );
            }
        }
    }

    async fn work(
        self: Arc<Self>,
        flow: String,
        stage: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let queue_name = queue_name(&flow, &stage);
        let notify = self.queue.notifier(&queue_name);
        while !*shutdown.borrow() {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A lease is one short redb read: done inline, no thread hop.
            let lease = match self.queue.lease(&queue_name) {
                Ok(lease) => lease,
                Err(error) => {
                    tracing::error!(queue = %queue_name, %error, "cannot lease");
                    None
                }
            };
            match lease {
                Some(lease) => self.process(lease).await,
                None => {
                    // Woken by new work; the timer catches retries coming due.
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    async fn process(&self, lease: Lease) {
        let env = &lease.envelope;
        let Some(plugin) = env
            .route
            .get(env.stage as usize)
            .and_then(|name| self.plugin(name))
        else {
            tracing::error!(flow = %env.flow, stage = env.stage, "no plugin for this stage; message left queued");
            return;
        };
        let policy = self.retry_policy(&env.flow, plugin.name());
        let span = tracing::info_span!(
            "message",
            flow = %env.flow,
            step = %plugin.name(),
            plugin = %plugin.name(),
            digest = %plugin.digest(),
            key = %env.message.key,
            id = %env.message.id,
        );
        let (completion, kv) = self
            .run_stage(policy, &plugin, env)
            .instrument(span.clone())
            .await;
        if let Err(error) = self.queue.complete_with_kv(lease, completion, kv).await {
            let _enter = span.enter();
            tracing::error!(%error, "result not committed; the message will be processed again");
        }
    }

    /// How a stage retries: the current flow's policy for it, or the defaults when the
    /// message's route is no longer in the config.
    fn retry_policy(&self, flow: &str, stage: &str) -> RetryPolicy {
        let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
        flows
            .get(flow)
            .and_then(|f| f.stages.iter().position(|s| s == stage).map(|i| f.retry[i]))
            .unwrap_or(RetryPolicy {
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                backoff: Duration::from_millis(RETRY_BASE_MS),
                max_backoff: Duration::from_millis(RETRY_MAX_MS),
            })
    }

    /// Run the stage's plugin on a leased message and decide what its result means;
    /// the key-value writes come back only with a result that commits (outputs
    /// forwarded, a delivery, a message consumed), never with a failure.
    async fn run_stage(
        &self,
        policy: RetryPolicy,
        plugin: &Plugin,
        env: &Envelope,
    ) -> (Completion, Option<crate::storage::KvWrites>) {
        let started = Instant::now();
        let (result, kv) = match self.call_stage(plugin, env).await {
            Ok(called) => (Ok(called.value), called.kv),
            Err(error) => (Err(error), None),
        };
        let micros = started.elapsed().as_micros() as u64;
        let completion = self.classify(policy, plugin, env, result, micros);
        let commits = match &completion {
            Completion::Forward { .. } => true,
            Completion::Finish(outcome) => matches!(
                outcome.result,
                OutcomeKind::Delivered { .. } | OutcomeKind::Consumed
            ),
            Completion::Retry(_) => false,
        };
        (completion, kv.filter(|_| commits))
    }

    /// Call the stage's plugin: a sink delivers (unless the message was delivered
    /// before), a transform maps.
    async fn call_stage(
        &self,
        plugin: &Plugin,
        env: &Envelope,
    ) -> Result<crate::plugin::Called<Done>, CallError> {
        let is_sink = plugin.kind() == Kind::Sink;
        let recorded = match is_sink {
            true => self.queue.outcome(&env.message.id).ok().flatten(),
            false => None,
        };
        if let Some(Outcome {
            result: OutcomeKind::Delivered { reference, detail },
            ..
        }) = recorded
        {
            // Delivered before (a redrive or a replay of the same message): the
            // recorded outcome stands and the target system is not called again.
            tracing::info!(%reference, "already delivered; recorded outcome returned");
            return Ok(crate::plugin::Called {
                value: Done::Delivered(crate::plugin::Receipt { reference, detail }),
                kv: None,
            });
        }
        if is_sink {
            let called = plugin.deliver(&env.message, &env.message.id).await?;
            Ok(crate::plugin::Called {
                value: Done::Delivered(called.value),
                kv: called.kv,
            })
        } else {
            let called = plugin.transform_step(&env.message).await?;
            Ok(crate::plugin::Called {
                value: Done::Outputs(called.value),
                kv: called.kv,
            })
        }
    }

    /// What a stage's result means: forward the outputs, finish (delivered,
    /// consumed, rejected, dead letter), or retry later.
    fn classify(
        &self,
        policy: RetryPolicy,
        plugin: &Plugin,
        env: &Envelope,
        result: Result<Done, CallError>,
        micros: u64,
    ) -> Completion {
        let stage = env.stage;
        let hop = Hop {
            plugin: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            digest: plugin.digest().to_owned(),
            micros,
        };
        let mut trail = env.trail.clone();
        trail.push(hop);
        let finish = |result: OutcomeKind, trail: Vec<Hop>, attempts: Vec<Attempt>| {
            Completion::Finish(Box::new(Outcome {
                id: env.message.id.clone(),
                root: env.root.clone(),
                flow: env.flow.clone(),
                key: env.message.key.clone(),
                kind: env.message.kind.clone(),
                plugin: plugin.name().to_owned(),
                trail,
                attempts,
                at_ms: now_ms(),
                result,
            }))
        };
        // The attempts so far, with this one's error.
        let with_attempt = |error: &str| {
            let mut attempts = env.attempts.clone();
            attempts.push(Attempt {
                at_ms: now_ms(),
                plugin: plugin.name().to_owned(),
                digest: plugin.digest().to_owned(),
                error: error.to_owned(),
            });
            attempts
        };
        // An error no retry can fix: the message goes to the dead letters with it.
        let dead_letter = |error: String, trail: Vec<Hop>| {
            tracing::warn!(outcome = "dead-letter", %error, "message dead-lettered");
            let attempts = with_attempt(&error);
            finish(OutcomeKind::DeadLetter { error }, trail, attempts)
        };
        // Messages between steps travel in a canonical encoding; anything else is the
        // plugin's bug, not something a retry can fix.
        let bad_output = match &result {
            Ok(Done::Outputs(outputs)) => outputs
                .iter()
                .find(|m| Encoding::from_content_type(&m.content_type).is_err())
                .map(|m| m.content_type.clone()),
            _ => None,
        };
        if let Some(content_type) = bad_output {
            let error = format!(
                "invalid output: {} produced a `{content_type}` body; messages between steps are application/json or application/msgpack",
                plugin.name()
            );
            return dead_letter(error, trail);
        }
        match result {
            Ok(Done::Delivered(receipt)) => {
                tracing::info!(outcome = "delivered", reference = %receipt.reference, "message delivered");
                finish(
                    OutcomeKind::Delivered {
                        reference: receipt.reference,
                        detail: receipt.detail,
                    },
                    trail,
                    env.attempts.clone(),
                )
            }
            Ok(Done::Outputs(outputs)) if outputs.is_empty() => {
                tracing::info!(outcome = "consumed", "step produced no output");
                finish(OutcomeKind::Consumed, trail, env.attempts.clone())
            }
            Ok(Done::Outputs(outputs)) => {
                tracing::debug!(outputs = outputs.len(), "step done");
                let next = stage + 1;
                let outputs: Vec<Envelope> = outputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut message)| {
                        // Derived, not random: a re-run after a crash yields the same ids.
                        message.id = format!("{}.{i}", env.message.id);
                        if message.key.is_empty() {
                            message.key = env.message.key.clone();
                        }
                        Envelope {
                            message,
                            flow: env.flow.clone(),
                            route: env.route.clone(),
                            stage: next,
                            root: env.root.clone(),
                            accepted_ms: env.accepted_ms,
                            trail: trail.clone(),
                            attempts: Vec::new(),
                            not_before_ms: 0,
                        }
                    })
                    .collect();
                // After a flow's last step (a flow without a sink), outputs go only
                // to the flows that subscribe to them; one that no flow takes is an
                // error, never a silent drop.
                let queue = env
                    .route
                    .get(next as usize)
                    .map(|stage| queue_name(&env.flow, stage));
                let mut forward = Vec::with_capacity(outputs.len());
                let mut unrouted = Vec::new();
                for output in outputs {
                    let events = self.published(
                        &output.message,
                        &env.flow,
                        &env.root,
                        env.accepted_ms,
                        &output.trail,
                    );
                    match &queue {
                        Some(queue) => forward.push((queue.clone(), output)),
                        None if events.is_empty() => unrouted.push(describe_event(&output.message)),
                        None => {}
                    }
                    forward.extend(events);
                }
                if !unrouted.is_empty() {
                    let error = format!("no flow subscribes to {}", unrouted.join(", "));
                    return dead_letter(error, trail);
                }
                Completion::Forward { outputs: forward }
            }
            Err(CallError::Failure(Failure::Rejected(reasons))) => {
                tracing::info!(outcome = "rejected", reasons = %reasons.join("; "), "message rejected");
                finish(
                    OutcomeKind::Rejected { reasons },
                    trail,
                    env.attempts.clone(),
                )
            }
            Err(error) => {
                let attempts = with_attempt(&error.to_string());
                // Retrying cannot change the input, the grants or the limits.
                let permanent = matches!(
                    error,
                    CallError::Failure(Failure::Invalid(_))
                        | CallError::Denied(_)
                        | CallError::Limit(_)
                );

                if permanent || attempts.len() as u32 >= policy.max_attempts {
                    tracing::warn!(outcome = "dead-letter", %error, attempts = attempts.len(), "message dead-lettered");
                    return finish(
                        OutcomeKind::DeadLetter {
                            error: error.to_string(),
                        },
                        trail,
                        attempts,
                    );
                }
                let delay = policy.delay(attempts.len() as u32);
                tracing::warn!(outcome = "retry", %error, attempt = attempts.len(), delay_ms = delay.as_millis() as u64, "attempt failed; will retry");
                let mut retry = env.clone();
                retry.attempts = attempts;
                retry.not_before_ms = now_ms() + delay.as_millis() as u64;
                Completion::Retry(Box::new(retry))
            }
        }
    }

    /// What happened so far to an accepted message: its outcomes and what is still queued.
    pub fn status(&self, root: &str) -> Result<MessageStatus, StorageError> {
        // Pending first: a message leaves the queue in the transaction that records
        // its outcome, so outcomes read afterwards include every one that finished.
        // (The other order could see neither a message finishing in between.)
        let pending = self
            .queue
            .pending()?
            .into_iter()
            .filter(|e| e.root == root)
            .collect();
        let outcomes = self.queue.outcomes(root)?;
        Ok(MessageStatus { outcomes, pending })
    }
}

/// `OrderAccepted` with its `tenon-*` headers, for an error about routing it.
fn describe_event(message: &StoredMessage) -> String {
    let headers: Vec<String> = message
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("tenon-"))
        .map(|(k, v)| format!("{k} = `{v}`"))
        .collect();
    if headers.is_empty() {
        format!("`{}`", message.kind)
    } else {
        format!("`{}` with {}", message.kind, headers.join(", "))
    }
}

/// A config that loaded whole, ready to replace the running one.
struct Candidate {
    config: Config,
    /// Plugin instances new or changed in it, loaded.
    loaded: Vec<Plugin>,
    flows: BTreeMap<String, Flow>,
}

/// The flows of a config, with each stage checked against the kind of its plugin.
fn resolve_flows(
    config: &Config,
    kind_of: impl Fn(&str) -> Option<Kind>,
) -> Result<BTreeMap<String, Flow>, crate::config::ConfigError> {
    let mut flows = BTreeMap::new();
    for (name, entry) in &config.flows {
        let expect = |at: &serde_spanned::Spanned<String>, field: &str, kind: Kind| {
            let actual = kind_of(at.get_ref());
            if actual == Some(kind) {
                return Ok(());
            }
            let what = actual.map_or("an unknown".to_owned(), |k| format!("a {k}"));
            Err(config.error(
                at,
                format!(
                    "flow `{name}`: field `{field}`: `{}` is {what} plugin; {field} must be {kind} plugins",
                    at.get_ref()
                ),
            ))
        };
        if let Some(source) = &entry.source {
            expect(source, "source", Kind::Source)?;
        }
        for step in &entry.steps {
            expect(step, "steps", Kind::Transform)?;
        }
        if let Some(sink) = &entry.sink {
            expect(sink, "sink", Kind::Sink)?;
        }
        let policy = |stage: &str| {
            let own = entry.retry.get(stage).cloned().unwrap_or_default();
            RetryPolicy {
                max_attempts: own
                    .max_attempts
                    .or(entry.max_attempts)
                    .unwrap_or(DEFAULT_MAX_ATTEMPTS),
                backoff: Duration::from_millis(
                    own.backoff_ms.or(entry.backoff_ms).unwrap_or(RETRY_BASE_MS),
                ),
                max_backoff: Duration::from_millis(
                    own.max_backoff_ms
                        .or(entry.max_backoff_ms)
                        .unwrap_or(RETRY_MAX_MS),
                ),
            }
        };
        let stages: Vec<String> = entry.stages().map(|s| s.get_ref().clone()).collect();
        let flow = Flow {
            name: name.clone(),
            source: entry.source.as_ref().map(|s| s.get_ref().clone()),
            subscribe: entry
                .subscribe
                .iter()
                .map(|k| k.get_ref().clone())
                .collect(),
            when: entry.when.clone(),
            retry: stages.iter().map(|s| policy(s)).collect(),
            stages,
            concurrency: entry.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        };
        flows.insert(name.clone(), flow);
    }
    Ok(flows)
}

/// Load the plugin instance `name` of `config` from its directory.
pub(crate) fn load_plugin(
    config: &Config,
    engine: &Engine,
    storage: &Storage,
    name: &str,
) -> anyhow::Result<Plugin> {
    let entry = config
        .plugins
        .get(name)
        .with_context(|| format!("no plugin named `{name}`"))?;
    load_plugin_from(
        config,
        engine,
        storage,
        name,
        name,
        &config.plugin_dir(entry),
    )
}

/// Load the version in `dir` with the settings of plugin instance `name`, as instance
/// `as_name` (its kv namespace): a canary runs under a scratch name.
pub(crate) fn load_plugin_from(
    config: &Config,
    engine: &Engine,
    storage: &Storage,
    name: &str,
    as_name: &str,
    dir: &Path,
) -> anyhow::Result<Plugin> {
    load_plugin_at(config, engine, storage, name, as_name, Location::Path(dir))
}

/// Where a version's files are: a path, or a directory already opened (a candidate,
/// opened relative to its plugin root so that nothing can redirect it in between).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Location<'a> {
    /// A plugin directory (or its `plugin.toml`).
    Path(&'a Path),
    /// An opened directory, and its path for messages.
    Dir(&'a cap_std::fs::Dir, &'a Path),
}

/// Load the version at `location` with the settings of plugin instance `name`, as
/// instance `as_name`.
pub(crate) fn load_plugin_at(
    config: &Config,
    engine: &Engine,
    storage: &Storage,
    name: &str,
    as_name: &str,
    location: Location<'_>,
) -> anyhow::Result<Plugin> {
    let entry = config
        .plugins
        .get(name)
        .with_context(|| format!("no plugin named `{name}`"))?;
    let settings = PluginSettings {
        config: entry
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        grants: entry.grants.clone(),
        // Only the secrets mapped to this instance are read at all.
        secrets: entry
            .secrets
            .0
            .iter()
            .map(|(asked, provided)| {
                let value = config
                    .secret(provided)
                    .with_context(|| format!("plugin `{name}`: secrets.{asked} = `{provided}`"))?;
                Ok((asked.clone(), value))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let (plugin, dir) = match location {
        Location::Path(dir) => (Plugin::load(engine, storage, as_name, dir, &settings)?, dir),
        Location::Dir(root, dir) => {
            let manifest = Path::new(tenon_registry::MANIFEST_FILE);
            let plugin = Plugin::load_in(engine, storage, as_name, root, dir, manifest, &settings)?;
            (plugin, dir)
        }
    };
    if let Some(pin) = &entry.digest
        && pin != plugin.digest()
    {
        anyhow::bail!(
            "the config pins version {pin}; {} holds {}",
            dir.display(),
            plugin.digest()
        );
    }
    if entry.auth == crate::config::IngestAuth::Signature && plugin.kind() != Kind::Source {
        anyhow::bail!(
            "`auth = \"signature\"` is for source plugins; this is a {} plugin",
            plugin.kind()
        );
    }
    Ok(plugin)
}

/// The approval record of a version going live.
fn approved_of(plugin: &Plugin) -> crate::storage::Approved {
    crate::storage::Approved {
        digest: plugin.digest().to_owned(),
        grants: plugin.grants().clone(),
    }
}

/// What ingress accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The accepted message ids.
    pub ids: Vec<String>,
    /// True when these are the ids of an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// What happened to an accepted message and its descendants.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageStatus {
    /// Terminal outcomes reached so far.
    pub outcomes: Vec<Outcome>,
    /// Descendants still queued (waiting, leased or retrying).
    pub pending: Vec<Envelope>,
}

impl MessageStatus {
    /// True when nothing of the message is still in flight and it reached an end.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty() && !self.outcomes.is_empty()
    }
}

enum Done {
    Delivered(crate::plugin::Receipt),
    Outputs(Vec<StoredMessage>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for (attempt, nominal) in [
            (1, 100.0),
            (2, 200.0),
            (3, 400.0),
            (4, 800.0),
            (5, 1000.0),
            (30, 1000.0),
        ] {
            let ms = policy.delay(attempt).as_secs_f64() * 1000.0;
            assert!(
                (nominal * 0.79..=nominal * 1.21).contains(&ms),
                "attempt {attempt}: {ms} ms"
            );
        }
    }
}
