//! Loading a plugin version: everything that can fail ahead of traffic.

use super::{Plugin, PluginFiles, PluginSettings, Pre};
use crate::sandbox::bindings;
use crate::sandbox::caps::{self, PluginContext};
use crate::sandbox::engine::Engine;
use crate::sandbox::inspect::Inspection;
use crate::store::audit::{AuditRecord, Decision};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tenon_registry::{Kind, Manifest, VersionDigests, version_digests};
use wasmtime::component::Linker;

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
    /// The trust policy (`[trust]`) refuses the version: unsigned when signatures are
    /// required, changed after signing, badly signed, signed by a key not trusted for
    /// its name, or revoked. Nothing of it was compiled.
    #[error("plugin `{name}` ({path}): refused by the trust policy before compiling: {reason}")]
    Untrusted {
        /// The plugin instance name.
        name: String,
        /// The manifest.
        path: PathBuf,
        /// Why, and what to do.
        reason: Box<tenon_registry::TrustError>,
    },
    /// The version is of another plugin than the one the instance runs (its
    /// manifest's `name`): the config binds the instance to a plugin, or the version
    /// live in it is another. Nothing of it was compiled.
    #[error(
        "plugin `{name}` ({path}): refused before compiling: its manifest names plugin `{found}`, but instance `{name}` runs plugin `{expected}`: {because}"
    )]
    Identity {
        /// The plugin instance name.
        name: String,
        /// The manifest.
        path: PathBuf,
        /// The name its manifest gives.
        found: String,
        /// The name the instance runs.
        expected: String,
        /// What settles that, and what to do.
        because: String,
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

/// A version read, its digests taken and its signature judged: ready to compile.
struct Checked {
    manifest: Manifest,
    files: PluginFiles,
    digests: VersionDigests,
    /// Who signed it; `None`: unsigned.
    signer: Option<tenon_registry::Signer>,
}

impl Plugin {
    /// Load the plugin in `dir` (its `plugin.toml` and the component it names) as
    /// instance `name`, with the operator's settings.
    pub fn load(
        engine: &Engine,
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
        Plugin::load_in(engine, name, &root, base, &manifest_file, settings)
    }

    /// Load the plugin whose files are in `root` (shown as `base` in messages), its
    /// manifest being `manifest_file` there. Every file is opened relative to the
    /// directory's handle: a name or a symlink that leads outside it is refused.
    pub fn load_in(
        engine: &Engine,
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
        if settings.reuse_instances && manifest.kind != Kind::Transform {
            return Err(LoadError::Component {
                name: name.to_owned(),
                path: manifest_path,
                message: format!(
                    "`reuse_instances = true` applies to transforms only; this is a {} plugin (each of its calls runs in a fresh instance)",
                    manifest.kind
                ),
            });
        }
        let wasm = root.read(&manifest.component).map_err(read_error(&path))?;
        // The component is hashed once, for both digests (the large file of a load).
        let digests = version_digests(text.as_bytes(), &wasm);
        if let Some(expected) = &manifest.component_digest
            && *expected != digests.component
        {
            return Err(LoadError::Mismatch {
                path: manifest_path,
                component: path,
                expected: expected.clone(),
                actual: digests.component,
            });
        }
        // The trust policy decides before anything of the version is compiled.
        let sig_file = Path::new(tenon_registry::SIGNATURE_FILE);
        let signature = match root.read_to_string(sig_file) {
            Ok(signature) => Some(signature),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(LoadError::Read {
                    path: base.join(sig_file),
                    source,
                });
            }
        };
        let version = digests.version.clone();
        let shown = base.join(sig_file).display().to_string();
        if let Some(identity) = &settings.identity
            && identity.name != manifest.name
        {
            let refusal = LoadError::Identity {
                name: name.to_owned(),
                path: manifest_path,
                found: manifest.name.clone(),
                expected: identity.name.clone(),
                because: identity.because.clone(),
            };
            engine.audit().record(AuditRecord {
                seq: 0,
                at_ms: crate::model::now_ms(),
                plugin: name.to_owned(),
                digest: version.clone(),
                key: None,
                capability: "identity".into(),
                target: manifest.name.clone(),
                decision: Decision::Deny,
                reason: Some(refusal.to_string()),
            });
            return Err(refusal);
        }
        let decided = settings.trust.check(
            &manifest.name,
            &version,
            signature.as_deref().map(|s| (shown.as_str(), s)),
        );
        let audit = |target: String, decision: Decision, reason: String| {
            engine.audit().record(AuditRecord {
                seq: 0,
                at_ms: crate::model::now_ms(),
                plugin: name.to_owned(),
                digest: version.clone(),
                key: None,
                capability: "signature".into(),
                target,
                decision,
                reason: Some(reason),
            })
        };
        let signer = match decided {
            Ok(signer) => signer,
            Err(reason) => {
                let target = signature
                    .as_deref()
                    .and_then(|s| tenon_registry::SignatureFile::parse(s).ok())
                    .map_or_else(
                        || "unsigned".to_owned(),
                        |s| format!("\"{}\" (key {})", s.publisher, s.key_id),
                    );
                audit(target, Decision::Deny, reason.to_string());
                return Err(LoadError::Untrusted {
                    name: name.to_owned(),
                    path: manifest_path,
                    reason: Box::new(reason),
                });
            }
        };
        if let Some(signer) = &signer {
            let why = match signer.trusted {
                true => "signed by a key trusted for its name",
                false => {
                    "validly signed, by a key not trusted for its name (signatures are not required)"
                }
            };
            audit(signer.to_string(), Decision::Allow, why.to_owned());
        }
        let files = PluginFiles {
            manifest: text,
            wasm,
            signature,
        };
        let checked = Checked {
            manifest,
            files,
            digests,
            signer,
        };
        Plugin::from_parts(engine, name, &path, checked, settings)
    }

    /// Write this version's files (its manifest, component and signature, as loaded)
    /// into `dir`, each through a temporary file renamed into place, component first
    /// and manifest last: a plugin directory holding exactly this version (a
    /// signature of another version is removed).
    pub fn write_files(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())?;
        let write = |name: &Path, bytes: &[u8]| {
            let tmp = PathBuf::from(format!(".{}.tmp", name.display()));
            root.write(&tmp, bytes)?;
            root.rename(&tmp, &root, name)
        };
        write(&self.manifest.component, &self.files.wasm)?;
        let sig = Path::new(tenon_registry::SIGNATURE_FILE);
        match &self.files.signature {
            Some(signature) => write(sig, signature.as_bytes())?,
            None => match root.remove_file(sig) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        write(
            Path::new(tenon_registry::MANIFEST_FILE),
            self.files.manifest.as_bytes(),
        )
    }

    /// Compile and link a version whose files were read and checked.
    fn from_parts(
        engine: &Engine,
        name: &str,
        path: &Path,
        checked: Checked,
        settings: &PluginSettings,
    ) -> Result<Plugin, LoadError> {
        let Checked {
            manifest,
            files,
            digests,
            signer,
        } = checked;
        let wasm = files.wasm.as_slice();
        let fail = |message: String| LoadError::Component {
            name: name.to_owned(),
            path: path.to_owned(),
            message,
        };
        let VersionDigests {
            version: digest,
            component: component_digest,
        } = digests;
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
        let egress = (matches!(manifest.kind, Kind::Sink | Kind::Api) && !grants.http.is_empty())
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
            audit: engine.audit().clone(),
            egress,
            throttle: engine.throttle(name, settings.outbound),
            logs: caps::log::LogBudget::default(),
        });

        // A grant smaller than the memory the component starts with would refuse every
        // instance at its start: refused here, before compiling, with what to grant.
        let initial = crate::sandbox::inspect::initial_memory(wasm);
        if let Some(reason) = crate::sandbox::inspect::memory_refusal(initial, &ctx.grants) {
            ctx.decide(
                "memory",
                &format!("{} MiB", ctx.grants.memory_mib),
                Decision::Deny,
                Some(reason.clone()),
            );
            return Err(fail(reason));
        }
        let component = engine
            .component(wasm, &component_digest)
            .map_err(|e| fail(format!("{e:#}")))?;
        // Deny by default: every import must be one the grants allow.
        let inspection = Inspection::of(engine.wasmtime(), &component, initial);
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
            Kind::Sink => {
                let compensates =
                    bindings::compensating_sink::CompensatingSinkPre::new(instance_pre.clone())
                        .ok();
                let reads =
                    bindings::reconciling_sink::ReconcilingSinkPre::new(instance_pre.clone()).ok();
                Pre::Sink(
                    bindings::sink::SinkPre::new(instance_pre).map_err(world)?,
                    compensates,
                    reads,
                )
            }
            Kind::Api => Pre::Api(bindings::api::ApiPre::new(instance_pre).map_err(world)?),
        };
        tracing::info!(plugin = name, version = %manifest.version, %digest, component = %component_digest, kind = %manifest.kind, "plugin loaded");
        Ok(Plugin {
            files: Arc::new(files),
            component_digest,
            ctx,
            manifest,
            pre,
            _component: component,
            engine: engine.clone(),
            signer,
            kept: settings.reuse_instances.then(super::call::Kept::default),
        })
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
