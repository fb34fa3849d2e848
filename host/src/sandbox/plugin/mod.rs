//! A loaded plugin version: manifest, verified component, pre-linked instance, and the
//! four calls (ingest, transform, deliver, respond), each in a fresh sandboxed instance
//! (a transform's kept for the next message only where the operator says so).
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
//!
//! [`load`](Plugin::load) is in `load.rs`, the calls in `call.rs`.

mod call;
mod load;

pub use call::{
    ApiRequest, ApiResponse, CallError, Called, Entry, Failure, MAX_REASONS, RawRequest, Receipt,
};
pub use load::LoadError;

use crate::sandbox::bindings::{self};
use crate::sandbox::caps::{PluginContext, PluginState, Secret};
use crate::sandbox::engine::Engine;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tenon_registry::{Kind, Manifest, Narrowing};

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
    /// What it may send out (`[plugins.<name>] outbound`).
    pub outbound: crate::config::Outbound,
    /// Whose signatures are trusted for which names (`[trust]`): checked before
    /// anything of a version is compiled.
    pub trust: tenon_registry::TrustPolicy,
    /// The plugin (manifest `name`) a version must be to load into this instance, when
    /// that is settled: checked before anything of it is compiled.
    pub identity: Option<Identity>,
    /// Keep a transform's instances from one message to the next
    /// (`[plugins.<name>] reuse_instances = true`): no instantiation per message,
    /// but whatever the guest keeps in its memory carries over. Off by default.
    pub reuse_instances: bool,
}

/// The plugin an instance runs, and what settles it: the config's binding
/// (`[plugins.<name>] plugin`), or the version live in the instance. A version of
/// another plugin, however well signed, never gets the instance's config, flows and
/// secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The plugin's name (a manifest's `name`).
    pub name: String,
    /// What settles it, and how an operator changes it, for the refusal.
    pub because: String,
}

enum Pre {
    Source(bindings::source::SourcePre<PluginState>),
    Transform(bindings::transform::TransformPre<PluginState>),
    /// A sink, and the same instance pre-linked as a compensating sink when the
    /// component also exports `compensator`, and as a reconciling sink when it also
    /// exports `records`.
    Sink(
        bindings::sink::SinkPre<PluginState>,
        Option<bindings::compensating_sink::CompensatingSinkPre<PluginState>>,
        Option<bindings::reconciling_sink::ReconcilingSinkPre<PluginState>>,
    ),
    Api(bindings::api::ApiPre<PluginState>),
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
    /// Its compiled component, shared with every instance of it (see
    /// [`Engine::component`]).
    _component: Arc<wasmtime::component::Component>,
    engine: Engine,
    /// Who signed it, as the trust policy sees it; `None`: unsigned.
    signer: Option<tenon_registry::Signer>,
    /// Its idle instances, when the operator lets it keep them
    /// ([`PluginSettings::reuse_instances`]).
    kept: Option<call::Kept>,
}

/// A plugin version's files, as loaded.
#[derive(Debug)]
struct PluginFiles {
    manifest: String,
    wasm: Vec<u8>,
    /// Its `plugin.sig`, if it has one.
    signature: Option<String>,
}

/// The digest of a plugin version: its manifest and its component together (defined
/// in `tenon_registry`, where packages and signatures use it too).
pub use tenon_registry::version_digest;

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.ctx.name)
            .field("version", &self.ctx.version)
            .field("digest", &self.ctx.digest)
            .finish_non_exhaustive()
    }
}

impl Plugin {
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

    /// This version's files (manifest and component), as loaded: what loads it
    /// anywhere else.
    pub fn files(&self) -> crate::model::VersionFiles {
        crate::model::VersionFiles {
            manifest: self.files.manifest.clone(),
            component: self.files.wasm.clone(),
            signature: self.files.signature.clone(),
        }
    }

    /// Its signature document (`plugin.sig`), as loaded, if it is signed.
    pub fn signature(&self) -> Option<&str> {
        self.files.signature.as_deref()
    }

    /// Who signed this version, as the trust policy sees it; `None`: unsigned.
    pub fn signer(&self) -> Option<&tenon_registry::Signer> {
        self.signer.as_ref()
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

    /// The instance's outbound gate (its pause, if a `Retry-After` stopped it).
    pub fn throttle(&self) -> &crate::sandbox::throttle::Throttle {
        &self.ctx.throttle
    }

    /// The effective grants (the manifest's, narrowed by the operator).
    pub fn grants(&self) -> &tenon_registry::Grants {
        &self.ctx.grants
    }

    /// Whether its instances are kept from one message to the next.
    pub fn reuses_instances(&self) -> bool {
        self.kept.is_some()
    }

    /// What the plugin is.
    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }
}
