//! A loaded plugin version: manifest, verified component, pre-linked instance, and the
//! three calls (ingest, transform, deliver), each in a fresh sandboxed instance.
//!
//! Loading does everything that can fail ahead of traffic: read the manifest and the
//! component through a capability on the plugin's directory (nothing outside it can
//! be named, not even through a symlink), check that they belong together, digest
//! them, compile the component (or load the cached artifact), link it against exactly
//! what its world and grants allow, and pre-instantiate it. A call then only
//! instantiates from the `InstancePre`-backed `*Pre` (microseconds with the pooling
//! allocator) and runs under the plugin's memory and time limits.
//!
//! A **version** is its manifest and its component together: [`version_digest`] over
//! both identifies it in trails, status, the audit log and the archive, so a change
//! to either file is a new version.
//!
//! **Architecture invariant:** a guest trap, a timeout or an error of any kind comes
//! back as a [`CallError`]; nothing a plugin does panics the host.

use crate::audit::Decision;
use crate::model::StoredMessage;
use crate::sandbox::bindings::{self, types};
use crate::sandbox::caps::{self, PluginContext, PluginState, Secret, Violation};
use crate::sandbox::engine::{EPOCH_TICK, Engine, digest};
use crate::sandbox::inspect::Inspection;
use crate::store::KvWrites;
use crate::store::Storage;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenon_registry::{Kind, Manifest, Narrowing};
use tracing::Instrument as _;
use wasmtime::Store;
use wasmtime::component::Linker;

/// What the operator says about a plugin in the flow config.
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    /// Configuration values overriding the manifest's defaults.
    pub config: BTreeMap<String, String>,
    /// Grants narrowing the manifest's (limits among them).
    pub grants: Narrowing,
    /// The secrets the operator maps to this instance, by the plugin's names for
    /// them: all it may ever read.
    pub secrets: BTreeMap<String, Secret>,
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest is missing or wrong.
    #[error(transparent)]
    Manifest(#[from] tenon_registry::ManifestError),
    /// A file of the plugin could not be read (or lies outside its directory).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest names another component than the one in the directory: a deploy
    /// is under way, or the files do not belong together.
    #[error(
        "{path}: the manifest names component {expected} but {component} is {actual}: a deploy is under way, or the two files do not belong together"
    )]
    Mismatch {
        /// The manifest.
        path: PathBuf,
        /// The component file named by the manifest.
        component: PathBuf,
        /// The digest the manifest names.
        expected: String,
        /// The component's digest.
        actual: String,
    },
    /// The component does not compile, or does not fit its world and grants.
    #[error("plugin `{name}` ({path}): {message}")]
    Component {
        /// The plugin instance name.
        name: String,
        /// The component path.
        path: PathBuf,
        /// What is wrong, with wasmtime's reasons.
        message: String,
    },
}

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The plugin returned a failure.
    Failure(Failure),
    /// The guest trapped (a panic, an out-of-bounds access, memory exhausted...).
    Trap(String),
    /// The call ran past its time limit.
    Timeout(Duration),
    /// The plugin ran into one of its limits (memory, stack, output size, quota).
    Limit(String),
    /// The plugin tried something its grants do not allow.
    Denied(String),
    /// The host could not set up the call.
    Host(String),
}

/// A failure the plugin itself reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Can never succeed.
    Invalid(String),
    /// Refused by business rules.
    Rejected(Vec<String>),
    /// Transient.
    Retryable(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Failure(Failure::Invalid(s)) => write!(f, "invalid: {s}"),
            CallError::Failure(Failure::Rejected(r)) => write!(f, "rejected: {}", r.join("; ")),
            CallError::Failure(Failure::Retryable(s)) => write!(f, "retryable: {s}"),
            CallError::Trap(s) => write!(f, "plugin trapped: {s}"),
            CallError::Timeout(d) => write!(f, "plugin timed out after {} ms", d.as_millis()),
            CallError::Limit(s) => write!(f, "plugin limit: {s}"),
            CallError::Denied(s) => write!(f, "sandbox denied: {s}"),
            CallError::Host(s) => write!(f, "host error: {s}"),
        }
    }
}

impl From<types::Failure> for Failure {
    fn from(f: types::Failure) -> Self {
        match f {
            types::Failure::Invalid(s) => Failure::Invalid(s),
            types::Failure::Rejected(r) => Failure::Rejected(r),
            types::Failure::Retryable(s) => Failure::Retryable(s),
        }
    }
}

enum Pre {
    Source(bindings::source::SourcePre<PluginState>),
    Transform(bindings::transform::TransformPre<PluginState>),
    Sink(bindings::sink::SinkPre<PluginState>),
}

/// One loaded plugin version, ready to be called. Cheap to share behind an `Arc`.
pub struct Plugin {
    ctx: Arc<PluginContext>,
    /// The component's own digest (the key of its compiled artifact).
    component_digest: String,
    manifest: Manifest,
    /// The files this version was loaded from, exactly as read: archived for rollback.
    files: Arc<PluginFiles>,
    pre: Pre,
    engine: Engine,
    storage: Storage,
}

/// A plugin version's files, as loaded.
#[derive(Debug)]
struct PluginFiles {
    manifest: String,
    wasm: Vec<u8>,
}

/// The digest of a plugin version: its manifest and its component together,
/// `sha256:<hex>` of `tenon-plugin-version\0`, the manifest's sha256 and the
/// component's sha256. A change to either file is a new version.
pub fn version_digest(manifest: &[u8], component: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"tenon-plugin-version\0");
    hasher.update(Sha256::digest(manifest));
    hasher.update(Sha256::digest(component));
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// What a call produced, with the key-value writes to commit with it.
#[derive(Debug)]
pub struct Called<T> {
    /// The call's result.
    pub value: T,
    /// Its key-value writes (none for sources or plugins without `kv`).
    pub kv: Option<KvWrites>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.ctx.name)
            .field("version", &self.ctx.version)
            .field("digest", &self.ctx.digest)
            .finish_non_exhaustive()
    }
}

/// The raw request a source receives.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Its content type.
    pub content_type: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// What a sink reports after a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The target system's reference.
    pub reference: String,
    /// Anything else it reported.
    pub detail: Option<String>,
}

impl Plugin {
    /// Load the plugin in `dir` (its `plugin.toml` and the component it names) as
    /// instance `name`, with the operator's settings.
    pub fn load(
        engine: &Engine,
        storage: &Storage,
        name: &str,
        dir: &Path,
        settings: &PluginSettings,
    ) -> Result<Plugin, LoadError> {
        let (base, manifest_file) = if dir.is_dir() {
            (dir, PathBuf::from(tenon_registry::MANIFEST_FILE))
        } else {
            let file = dir.file_name().map(PathBuf::from).unwrap_or_default();
            (dir.parent().unwrap_or(Path::new(".")), file)
        };
        let root = cap_std::fs::Dir::open_ambient_dir(base, cap_std::ambient_authority()).map_err(
            |source| LoadError::Read {
                path: base.to_owned(),
                source,
            },
        )?;
        Plugin::load_in(engine, storage, name, &root, base, &manifest_file, settings)
    }

    /// Load the plugin whose files are in `root` (shown as `base` in messages), its
    /// manifest being `manifest_file` there. Every file is opened relative to the
    /// directory's handle: a name or a symlink that leads outside it is refused.
    pub fn load_in(
        engine: &Engine,
        storage: &Storage,
        name: &str,
        root: &cap_std::fs::Dir,
        base: &Path,
        manifest_file: &Path,
        settings: &PluginSettings,
    ) -> Result<Plugin, LoadError> {
        let manifest_path = base.join(manifest_file);
        let read_error = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Read { path, source }
        };
        let text = root
            .read_to_string(manifest_file)
            .map_err(read_error(&manifest_path))?;
        let manifest = Manifest::parse(&manifest_path, &text)?;
        let path = base.join(&manifest.component);
        let wasm = root.read(&manifest.component).map_err(read_error(&path))?;
        if let Some(expected) = &manifest.component_digest {
            let actual = digest(&wasm);
            if *expected != actual {
                return Err(LoadError::Mismatch {
                    path: manifest_path,
                    component: path,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let files = PluginFiles {
            manifest: text,
            wasm,
        };
        Plugin::from_parts(engine, storage, name, manifest, &path, files, settings)
    }

    /// Write this version's files (its manifest and component, as loaded) into `dir`,
    /// each through a temporary file renamed into place, component first: a plugin
    /// directory holding exactly this version.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())?;
        for (name, bytes) in [
            (
                self.manifest.component.as_path(),
                self.files.wasm.as_slice(),
            ),
            (
                Path::new(tenon_registry::MANIFEST_FILE),
                self.files.manifest.as_bytes(),
            ),
        ] {
            let tmp = PathBuf::from(format!(".{}.tmp", name.display()));
            root.write(&tmp, bytes)?;
            root.rename(&tmp, &root, name)?;
        }
        Ok(())
    }

    /// Load a plugin from its parsed manifest and its files.
    fn from_parts(
        engine: &Engine,
        storage: &Storage,
        name: &str,
        manifest: Manifest,
        path: &Path,
        files: PluginFiles,
        settings: &PluginSettings,
    ) -> Result<Plugin, LoadError> {
        let wasm = files.wasm.as_slice();
        let fail = |message: String| LoadError::Component {
            name: name.to_owned(),
            path: path.to_owned(),
            message,
        };
        let component_digest = digest(wasm);
        let digest = version_digest(files.manifest.as_bytes(), wasm);
        let grants = manifest
            .grants
            .narrow(&settings.grants)
            .map_err(|e| fail(e.to_string()))?;
        if grants.memory_mib as usize > crate::sandbox::engine::MAX_PLUGIN_MEMORY >> 20 {
            return Err(fail(format!(
                "memory limit {} MiB is above the host's maximum of {} MiB",
                grants.memory_mib,
                crate::sandbox::engine::MAX_PLUGIN_MEMORY >> 20
            )));
        }
        let readable_config: BTreeSet<String> = manifest
            .config
            .keys()
            .chain(&manifest.grants.config)
            .cloned()
            .collect();
        if let Some(key) = settings
            .config
            .keys()
            .find(|k| !readable_config.contains(*k))
        {
            return Err(fail(format!(
                "config key `{key}` is not one the plugin reads (it reads: {}); add it to the manifest's grants.config or remove it",
                if readable_config.is_empty() {
                    "none".to_owned()
                } else {
                    readable_config
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        let mut config: BTreeMap<String, String> = manifest
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        config.extend(settings.config.clone());
        // The instance sees exactly the secrets the operator maps to it: each must be
        // one the plugin asks for, and each one it needs must be mapped.
        if let Some(extra) = settings
            .secrets
            .keys()
            .find(|s| !grants.all_secrets().any(|g| g == *s))
        {
            return Err(fail(format!(
                "the config maps secret `{extra}` to it, which its grants do not ask for (they ask for: {})",
                names(grants.all_secrets())
            )));
        }
        if let Some(missing) = grants
            .secrets
            .iter()
            .find(|s| !settings.secrets.contains_key(*s))
        {
            return Err(fail(format!(
                "its manifest asks for secret `{missing}`, which the config does not map to it: add `secrets = {{ {missing} = \"<a name in [secrets]>\" }}` to its entry, or withdraw it with `grants = {{ secrets = [] }}`"
            )));
        }
        let secrets = settings.secrets.clone();
        let redactor = crate::sandbox::redact::Redactor::new(
            secrets.iter().map(|(n, v)| (n.as_str(), v.expose())),
        )
        .map_err(|e| fail(e.to_string()))?;
        let egress = (manifest.kind == Kind::Sink && !grants.http.is_empty())
            .then(|| crate::sandbox::egress::Egress::new(&grants, engine.listeners()).map(Arc::new))
            .transpose()
            .map_err(|e| fail(format!("cannot set up outbound HTTP: {e}")))?;
        let ctx = Arc::new(PluginContext {
            name: name.to_owned(),
            version: manifest.version.clone(),
            digest: digest.clone(),
            config,
            readable_config,
            grants,
            secrets,
            redactor,
            audit: storage.audit().clone(),
            egress,
            logs: caps::log::LogBudget::default(),
        });

        let component = engine
            .component(wasm, &component_digest)
            .map_err(|e| fail(format!("{e:#}")))?;
        // Deny by default: every import must be one the grants allow.
        let inspection = Inspection::of(engine.wasmtime(), &component);
        let refusals = inspection.refusals(manifest.kind, &ctx.grants);
        for import in &inspection.imports {
            match refusals.iter().find(|r| &r.import == import) {
                Some(r) => ctx.decide("link", import, Decision::Deny, Some(r.reason.clone())),
                None => ctx.decide("link", import, Decision::Allow, None),
            }
        }
        if !refusals.is_empty() {
            let reasons: Vec<&str> = refusals.iter().map(|r| r.reason.as_str()).collect();
            return Err(fail(reasons.join("; ")));
        }
        let mut linker = Linker::new(engine.wasmtime());
        caps::link(&mut linker, manifest.kind, &ctx.grants).map_err(|e| fail(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| fail(format!("the component cannot be linked: {e:#}")))?;
        let world = |e: wasmtime::Error| {
            fail(format!(
                "the component does not implement world `{}`: {e:#}",
                manifest.world
            ))
        };
        let pre = match manifest.kind {
            Kind::Source => {
                Pre::Source(bindings::source::SourcePre::new(instance_pre).map_err(world)?)
            }
            Kind::Transform => {
                Pre::Transform(bindings::transform::TransformPre::new(instance_pre).map_err(world)?)
            }
            Kind::Sink => Pre::Sink(bindings::sink::SinkPre::new(instance_pre).map_err(world)?),
        };
        tracing::info!(plugin = name, version = %manifest.version, %digest, component = %component_digest, kind = %manifest.kind, "plugin loaded");
        Ok(Plugin {
            files: Arc::new(files),
            component_digest,
            ctx,
            manifest,
            pre,
            engine: engine.clone(),
            storage: storage.clone(),
        })
    }

    /// The plugin instance name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// The version's digest: manifest and component ([`version_digest`]).
    pub fn digest(&self) -> &str {
        &self.ctx.digest
    }

    /// The component's own digest.
    pub fn component_digest(&self) -> &str {
        &self.component_digest
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Log lines and bytes this version dropped over its budget.
    pub fn log_dropped(&self) -> (u64, u64) {
        self.ctx.logs.dropped()
    }

    /// The manifest's version.
    pub fn version(&self) -> &str {
        &self.ctx.version
    }

    /// Longest a call may take.
    pub fn timeout(&self) -> Duration {
        self.ctx.timeout()
    }

    /// The effective grants (the manifest's, narrowed by the operator).
    pub fn grants(&self) -> &tenon_registry::Grants {
        &self.ctx.grants
    }

    /// What the plugin is.
    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }

    fn store(&self) -> Store<PluginState> {
        let kv = self.ctx.grants.kv.then(|| {
            self.storage
                .kv_with_quota(&self.ctx.name, self.ctx.grants.kv_quota_bytes)
        });
        let mut store = Store::new(
            self.engine.wasmtime(),
            PluginState::new(self.ctx.clone(), kv),
        );
        if self.engine.limits() {
            store.limiter(|s| s.limiter());
        }
        // Guest code gives the thread back to the async runtime at every epoch tick
        // (so a looping plugin never holds a worker thread) and is stopped once the
        // call's deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        store
    }

    /// Run a call in a fresh store, under the time limit; classify what went wrong.
    async fn run<T, F>(&self, call: &'static str, f: F) -> Result<Called<T>, CallError>
    where
        F: AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<Result<T, types::Failure>>,
    {
        let span = tracing::debug_span!("plugin_call", call, plugin = %self.ctx.name, digest = %self.ctx.digest);
        let mut store = self.store();
        let timeout = self.ctx.timeout();
        // The epoch deadline stops guest code; this stops a call stuck in host I/O.
        let outcome = tokio::time::timeout(timeout + EPOCH_TICK * 10, f(&mut store))
            .instrument(span)
            .await;
        let result = match outcome {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(failure))) => Err(CallError::Failure(failure.into())),
            Ok(Err(error)) => Err(classify_trap(error, store.data().stderr(), timeout)),
        };
        store.data().finish();
        let value = self.settle(result, store.data())?;
        Ok(Called {
            value,
            kv: store.data_mut().take_kv_writes(),
        })
    }

    /// The call's outcome as the host sees it: a failure that follows a sandbox
    /// refusal is that refusal (the plugin's own message about it is not trusted);
    /// limits are audited; every error text is redacted of secrets.
    fn settle<T>(&self, result: Result<T, CallError>, state: &PluginState) -> Result<T, CallError> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let error = match (state.violations().first(), error) {
            (Some(Violation::Denied(what)), _) => CallError::Denied(what),
            (Some(Violation::Limit(what)), _) => CallError::Limit(what),
            (None, CallError::Timeout(d)) => {
                self.ctx.decide(
                    "time",
                    &format!("{} ms", d.as_millis()),
                    Decision::Deny,
                    Some("the call ran past its time limit and was stopped".into()),
                );
                CallError::Timeout(d)
            }
            (None, CallError::Trap(t)) if t.starts_with(STACK_OVERFLOW) => {
                self.ctx
                    .decide("stack", "call stack", Decision::Deny, Some(t.clone()));
                CallError::Limit(t)
            }
            (None, other) => other,
        };
        Err(self.redact(error))
    }

    /// The error as the host records it: redacted, then cut (a plugin's text is kept
    /// to [`caps::MAX_TEXT_CHARS`]; at most [`MAX_REASONS`] reasons).
    fn redact(&self, error: CallError) -> CallError {
        let r = |s: String| self.text(&s);
        match error {
            CallError::Failure(Failure::Invalid(s)) => CallError::Failure(Failure::Invalid(r(s))),
            CallError::Failure(Failure::Rejected(v)) => {
                let total = v.len();
                let mut reasons: Vec<String> = v.into_iter().take(MAX_REASONS).map(r).collect();
                if total > MAX_REASONS {
                    reasons.push(format!("... and {} more reasons", total - MAX_REASONS));
                }
                CallError::Failure(Failure::Rejected(reasons))
            }
            CallError::Failure(Failure::Retryable(s)) => {
                CallError::Failure(Failure::Retryable(r(s)))
            }
            CallError::Trap(s) => CallError::Trap(r(s)),
            CallError::Limit(s) => CallError::Limit(r(s)),
            CallError::Denied(s) => CallError::Denied(r(s)),
            CallError::Host(s) => CallError::Host(r(s)),
            CallError::Timeout(d) => CallError::Timeout(d),
        }
    }

    /// Text from the plugin as the host records it: redacted whole, then cut.
    fn text(&self, text: &str) -> String {
        caps::bounded(&self.ctx.redact(text), caps::MAX_TEXT_CHARS)
    }

    /// Refuse output messages that carry a secret's value, in any form: the host
    /// never records one, and editing the message would pass a damaged one on.
    fn check_secrets(&self, messages: &[types::Message]) -> Result<(), CallError> {
        check_secrets(&self.ctx, messages)
    }

    /// Refuse an output larger than the plugin's cap.
    fn check_output(&self, bytes: usize) -> Result<(), CallError> {
        let cap = self.ctx.grants.max_output_bytes;
        if bytes as u64 <= cap {
            return Ok(());
        }
        let reason = format!("output of {bytes} bytes is over the {cap}-byte cap");
        self.ctx.decide(
            "output",
            &format!("{cap} bytes"),
            Decision::Deny,
            Some(reason.clone()),
        );
        Err(CallError::Limit(reason))
    }

    /// Source: turn a raw request into messages.
    pub async fn ingest(&self, request: RawRequest) -> Result<Vec<StoredMessage>, CallError> {
        let Pre::Source(pre) = &self.pre else {
            return Err(self.wrong_kind("ingest"));
        };
        let request = types::RawRequest {
            content_type: request.content_type,
            headers: request.headers,
            body: request.body,
        };
        let out = self
            .run("ingest", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_ingester()
                    .call_ingest(&mut *store, &request)
                    .await
            })
            .await?
            .value;
        self.check_output(out.iter().map(message_size).sum())?;
        self.check_secrets(&out)?;
        Ok(out.into_iter().map(StoredMessage::from).collect())
    }

    /// Transform: map one message to zero or more. Its key-value writes are
    /// discarded: for runs that must leave nothing behind (a canary, a test).
    pub async fn transform(&self, input: &StoredMessage) -> Result<Vec<StoredMessage>, CallError> {
        self.transform_step(input).await.map(|called| called.value)
    }

    /// Transform as a step: the outputs, with the key-value writes to commit with them.
    pub async fn transform_step(
        &self,
        input: &StoredMessage,
    ) -> Result<Called<Vec<StoredMessage>>, CallError> {
        let Pre::Transform(pre) = &self.pre else {
            return Err(self.wrong_kind("transform"));
        };
        let input = types::Message::from(input.clone());
        let out = self
            .run("transform", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_transformer()
                    .call_transform(&mut *store, &input)
                    .await
            })
            .await?;
        self.check_output(out.value.iter().map(message_size).sum())?;
        self.check_secrets(&out.value)?;
        Ok(Called {
            value: out.value.into_iter().map(StoredMessage::from).collect(),
            kv: out.kv,
        })
    }

    /// Sink: deliver one message with its idempotency key; the receipt, with the
    /// key-value writes to commit with it.
    pub async fn deliver(
        &self,
        message: &StoredMessage,
        idempotency_key: &str,
    ) -> Result<Called<Receipt>, CallError> {
        let Pre::Sink(pre) = &self.pre else {
            return Err(self.wrong_kind("deliver"));
        };
        let message = types::Message::from(message.clone());
        let receipt = self
            .run("deliver", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_deliverer()
                    .call_deliver(&mut *store, &message, idempotency_key)
                    .await
            })
            .await?;
        let Called { value: receipt, kv } = receipt;
        self.check_output(
            receipt.reference.len() + receipt.detail.as_ref().map_or(0, String::len),
        )?;
        Ok(Called {
            value: Receipt {
                reference: self.text(&receipt.reference),
                detail: receipt.detail.map(|d| self.text(&d)),
            },
            kv,
        })
    }

    /// A transform instance kept across calls: no instantiation per message, but the
    /// guest's memory carries over from one message to the next, so it is only for
    /// trusted, pure mappings (and for measuring what instantiation costs). After a
    /// trap or timeout the instance is spent: drop it and take a new one.
    pub async fn reused_transform(&self) -> Result<ReusedTransform, CallError> {
        let Pre::Transform(pre) = &self.pre else {
            return Err(self.wrong_kind("transform"));
        };
        let mut store = self.store();
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| CallError::Host(format!("cannot instantiate: {e:#}")))?;
        Ok(ReusedTransform {
            store,
            instance,
            timeout: self.ctx.timeout(),
        })
    }

    fn wrong_kind(&self, call: &str) -> CallError {
        CallError::Host(format!(
            "{} is a {} plugin; it cannot {call}",
            self.ctx.name, self.manifest.kind
        ))
    }
}

/// A transform instance reused across calls; see [`Plugin::reused_transform`].
pub struct ReusedTransform {
    store: Store<PluginState>,
    instance: bindings::transform::Transform,
    timeout: Duration,
}

impl fmt::Debug for ReusedTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReusedTransform")
            .field("plugin", &self.store.data().ctx().name)
            .finish()
    }
}

impl ReusedTransform {
    /// Map one message on the kept instance, under a fresh deadline.
    pub async fn transform(
        &mut self,
        input: &StoredMessage,
    ) -> Result<Vec<StoredMessage>, CallError> {
        self.store.data_mut().deadline = Instant::now() + self.timeout;
        self.store.set_epoch_deadline(1);
        let input = types::Message::from(input.clone());
        let result = self
            .instance
            .tenon_plugin_transformer()
            .call_transform(&mut self.store, &input)
            .await;
        match result {
            Ok(Ok(out)) => {
                check_secrets(self.store.data().ctx(), &out)?;
                Ok(out.into_iter().map(StoredMessage::from).collect())
            }
            Ok(Err(failure)) => Err(CallError::Failure(failure.into())),
            Err(error) => Err(classify_trap(
                error,
                self.store.data().stderr(),
                self.timeout,
            )),
        }
    }
}

/// `a, b, c`, or `none`.
fn names<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = items.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// Refuse output messages that carry one of the plugin's secrets, in any form.
fn check_secrets(ctx: &PluginContext, messages: &[types::Message]) -> Result<(), CallError> {
    if ctx.redactor.is_empty() {
        return Ok(());
    }
    let found = messages.iter().find_map(|m| {
        let fields = [&m.id, &m.key, &m.kind, &m.content_type];
        fields
            .iter()
            .map(|f| f.as_bytes())
            .chain(
                m.headers
                    .iter()
                    .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]),
            )
            .chain(std::iter::once(m.body.as_slice()))
            .find_map(|bytes| ctx.redactor.find(bytes))
    });
    let Some(secret) = found else {
        return Ok(());
    };
    let reason = format!("an output message carries the value of secret `{secret}`");
    ctx.decide("output", secret, Decision::Deny, Some(reason.clone()));
    Err(CallError::Denied(reason))
}

/// Most reasons of one rejection the host records.
pub const MAX_REASONS: usize = 100;

/// Most characters of a guest's stderr quoted in an error.
const MAX_STDERR_IN_ERROR: usize = 1_000;

/// How a stack-overflow trap's message starts.
const STACK_OVERFLOW: &str = "stack overflow";

/// The bytes a message takes: what the output cap counts.
fn message_size(m: &types::Message) -> usize {
    m.id.len()
        + m.key.len()
        + m.kind.len()
        + m.content_type.len()
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + m.body.len()
}

fn classify_trap(error: wasmtime::Error, stderr: String, timeout: Duration) -> CallError {
    let trap = error.downcast_ref::<wasmtime::Trap>().copied();
    if trap == Some(wasmtime::Trap::Interrupt) {
        return CallError::Timeout(timeout);
    }
    if trap == Some(wasmtime::Trap::StackOverflow) {
        return CallError::Trap(format!(
            "{STACK_OVERFLOW}: the call recursed deeper than the host's stack limit"
        ));
    }
    let mut message = trap.map_or_else(|| format!("{error}"), |t| t.to_string());
    // A Rust guest's panic prints `panicked at <location>:` and then its message.
    let lines: Vec<&str> = stderr.lines().collect();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        if let Some(panic) = lines.get(at + 1) {
            message = format!("{message}: panicked: {}", panic.trim());
        }
    } else if !stderr.is_empty() {
        let tail: String = stderr.chars().take(MAX_STDERR_IN_ERROR).collect();
        message = format!("{message}: {tail}");
    }
    CallError::Trap(message)
}

impl From<types::Message> for StoredMessage {
    fn from(m: types::Message) -> Self {
        StoredMessage {
            id: m.id.into(),
            key: m.key,
            kind: m.kind,
            content_type: m.content_type,
            headers: m.headers,
            body: m.body,
        }
    }
}

impl From<StoredMessage> for types::Message {
    fn from(m: StoredMessage) -> Self {
        types::Message {
            id: m.id.into(),
            key: m.key,
            kind: m.kind,
            content_type: m.content_type,
            headers: m.headers,
            body: m.body,
        }
    }
}
