//! A plugin version's life: loaded from its directory (or a candidate from a plugin
//! root, or the archive), checked, archived by digest, swapped in or held for
//! approval, approved, promoted, rolled back; the config file reloaded whole or
//! refused whole. The approved version of each instance is recorded, so a restart
//! does not approve what is waiting.

use super::Flow;
use super::Runtime;
use super::flows::resolve_flows;
use super::slots::Reload;
use crate::config::Config;
use crate::model::now_ms;
use crate::sandbox::engine::Engine;
use crate::sandbox::plugin::{Identity, Plugin, PluginSettings};
use crate::store::StoreError;
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError};
use tenon_registry::Kind;

/// A config that loaded whole, ready to replace the running one.
struct Candidate {
    config: Config,
    /// Plugin instances new or changed in it, loaded.
    loaded: Vec<Plugin>,
    flows: BTreeMap<String, Flow>,
}

/// Load the plugin instance `name` of `config` from its directory; unless the config
/// binds the instance to a plugin, a version of the plugin `keep` names only.
pub(crate) fn load_plugin(
    config: &Config,
    engine: &Engine,
    name: &str,
    keep: Option<Identity>,
) -> anyhow::Result<Plugin> {
    let entry = config
        .plugins
        .get(name)
        .with_context(|| format!("no plugin named `{name}`"))?;
    load_plugin_from(config, engine, name, name, &config.plugin_dir(entry), keep)
}

/// Load the version in `dir` with the settings of plugin instance `name`, as instance
/// `as_name` (its kv namespace): a canary runs under a scratch name.
pub(crate) fn load_plugin_from(
    config: &Config,
    engine: &Engine,
    name: &str,
    as_name: &str,
    dir: &Path,
    keep: Option<Identity>,
) -> anyhow::Result<Plugin> {
    load_plugin_at(config, engine, name, as_name, Location::Path(dir), keep)
}

/// The plugin instance `name` keeps: that of `live`, the version live in it.
pub(crate) fn keep_live(name: &str, live: &Plugin) -> Identity {
    Identity {
        name: live.manifest().name.clone(),
        because: format!(
            "an instance keeps the plugin of the version live in it ({}); to run another plugin in it, say so in its config entry (`plugin = \"<name>\"` in [plugins.{name}], or another `path`)",
            live.digest()
        ),
    }
}

/// The plugin instance `name` keeps across a restart: that of the version approved in
/// it before (`digest`), as its archived manifest names it; `None` when the archive
/// does not have it.
pub(crate) fn keep_approved(data_dir: &Path, name: &str, digest: &str) -> Option<Identity> {
    let manifest = archive_dir(data_dir, name, digest).join(tenon_registry::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).ok()?;
    let parsed = tenon_registry::Manifest::parse(&manifest, &text).ok()?;
    Some(Identity {
        name: parsed.name,
        because: format!(
            "an instance keeps the plugin of the version approved in it before this start ({digest}); to run another plugin in it, say so in its config entry (`plugin = \"<name>\"` in [plugins.{name}])"
        ),
    })
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
/// instance `as_name`. The version must be of the plugin the config binds the
/// instance to (`[plugins.<name>] plugin`) or, without a binding, of the plugin
/// `keep` names (the version live in the instance): checked before compiling.
pub(crate) fn load_plugin_at(
    config: &Config,
    engine: &Engine,
    name: &str,
    as_name: &str,
    location: Location<'_>,
    keep: Option<Identity>,
) -> anyhow::Result<Plugin> {
    let entry = config
        .plugins
        .get(name)
        .with_context(|| format!("no plugin named `{name}`"))?;
    let identity = match &entry.plugin {
        Some(bound) => Some(Identity {
            name: bound.clone(),
            because: format!(
                "`plugin = \"{bound}\"` in [plugins.{name}] of {} binds it",
                config.path.display()
            ),
        }),
        None => keep,
    };
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
        outbound: entry.outbound,
        trust: config.trust.clone(),
        identity,
        reuse_instances: entry.reuse_instances,
    };
    let (plugin, dir) = match location {
        Location::Path(dir) => (Plugin::load(engine, as_name, dir, &settings)?, dir),
        Location::Dir(root, dir) => {
            let manifest = Path::new(tenon_registry::MANIFEST_FILE);
            let plugin = Plugin::load_in(engine, as_name, root, dir, manifest, &settings)?;
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
    if entry.ack == crate::config::Ack::Validated && plugin.kind() != Kind::Source {
        anyhow::bail!(
            "`ack = \"validated\"` is for source plugins; this is a {} plugin",
            plugin.kind()
        );
    }
    Ok(plugin)
}

/// The approval record of a version going live.
pub(crate) fn approved_of(plugin: &Plugin) -> crate::store::Approved {
    crate::store::Approved {
        digest: plugin.digest().to_owned(),
        grants: plugin.grants().clone(),
    }
}

/// Why an operation on plugin versions or the config could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No plugin instance has that name.
    #[error("no plugin named `{0}`")]
    UnknownPlugin(String),
    /// No flow has that name.
    #[error("no flow named `{0}`")]
    UnknownFlow(String),
    /// The version (or config) does not load or does not fit: the live one stays.
    #[error("{0}")]
    Refused(String),
    /// The request does not fit the current state: nothing waits for approval, the
    /// waiting version is another, there is no previous version, not a step of that flow.
    #[error("{0}")]
    Conflict(String),
    /// A candidate from outside the plugin roots.
    #[error("{0}")]
    OutsideRoots(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Runtime {
    /// Read the config file again and apply it without a restart: new and changed
    /// plugin instances are loaded, flows are added, removed or re-routed. Messages
    /// already accepted finish on the route they entered with. A config that does not
    /// parse, names an unknown plugin, or whose plugins do not load or fit is refused
    /// whole, and the running one stays.
    pub fn reload_config(self: &Arc<Self>) -> Result<(), LifecycleError> {
        let path = self.config().path.clone();
        let attempt = || -> Result<Candidate, String> {
            let new = Config::load(&path).map_err(|e| e.to_string())?;
            let old = self.config();
            let mut loaded = Vec::new();
            for (name, entry) in &new.plugins {
                // A changed trust policy (a revocation, a publisher added or removed)
                // checks every plugin again.
                if old.plugins.get(name) == Some(entry)
                    && old.trust == new.trust
                    && self.plugin(name).is_some()
                {
                    continue;
                }
                // The same directory keeps its plugin; a new `path` (or a `plugin`
                // binding) is the operator saying which plugin the instance runs.
                let same_dir = old
                    .plugins
                    .get(name)
                    .is_some_and(|e| old.plugin_dir(e) == new.plugin_dir(entry));
                let keep = self
                    .plugin(name)
                    .filter(|_| same_dir)
                    .map(|live| keep_live(name, &live));
                let plugin = load_plugin(&new, &self.engine, name, keep)
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
            super::apis::check_apis(&new, kind_of).map_err(|e| e.to_string())?;
            super::flows::check_models(&flows, |name| {
                loaded
                    .iter()
                    .find(|p| p.name() == name)
                    .map(|p| p.manifest().models.clone())
                    .or_else(|| self.plugin(name).map(|p| p.manifest().models.clone()))
            })?;
            super::process::check_abilities(&new, &flows, |name| {
                loaded
                    .iter()
                    .find(|p| p.name() == name)
                    .map(super::process::Abilities::of)
                    .or_else(|| {
                        new.plugins
                            .contains_key(name)
                            .then(|| self.plugin(name).map(|p| super::process::Abilities::of(&p)))
                            .flatten()
                    })
            })?;
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
                    archive(&self.data_dir, &plugin);
                    let name = plugin.name().to_owned();
                    let approved = approved_of(&plugin);
                    match self.plugins.put(plugin, false) {
                        Reload::Held { digest, widening } => self.held(&name, &digest, &widening),
                        _ => self.record_approved(&name, &approved),
                    }
                }
                for warning in new.warnings() {
                    tracing::warn!(config = %path.display(), "{warning}");
                }
                *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
                *self.flows.write().unwrap_or_else(PoisonError::into_inner) = flows;
                *self
                    .config_refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.ensure_workers(&[]);
                self.changed_here.notify_one();
                tracing::info!(config = %path.display(), "config reloaded");
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(config = %path.display(), %reason, "config refused; the running one stays");
                let refusal = crate::runtime::Refusal {
                    at_ms: now_ms(),
                    reason: reason.clone(),
                };
                *self
                    .config_refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(refusal);
                Err(LifecycleError::Refused(reason))
            }
        }
    }

    /// Record that `name`'s version `digest` waits for approval.
    fn held(&self, name: &str, digest: &str, widening: &[String]) {
        tracing::warn!(plugin = name, %digest, widening = %widening.join(", "), "new plugin version asks for wider grants; it waits for approval");
        if let Some(live) = self.plugin(name) {
            self.node.audit().record(crate::store::audit::AuditRecord {
                seq: 0,
                at_ms: now_ms(),
                plugin: name.to_owned(),
                digest: digest.to_owned(),
                key: None,
                capability: "version".into(),
                target: digest.to_owned(),
                decision: crate::store::audit::Decision::Deny,
                reason: Some(format!(
                    "held for approval: its grants are wider than those of {} ({})",
                    live.digest(),
                    widening.join(", ")
                )),
            });
        }
    }

    fn record_approved(&self, name: &str, approved: &crate::store::Approved) {
        if let Err(error) = self.node.set_approved(name, approved) {
            tracing::error!(plugin = name, %error, "cannot record the approved version");
        }
    }

    /// Make the version of `name` that waits for approval live, approved by `key`, if
    /// its digest is `digest` (the one the operator reviewed).
    pub fn approve(&self, name: &str, digest: &str, key: &str) -> Result<Reload, LifecycleError> {
        let (reload, plugin) = self.plugins.approve(name, digest)?;
        self.record_approved(name, &approved_of(&plugin));
        self.changed_here.notify_one();
        self.node.audit().record(crate::store::audit::AuditRecord {
            seq: 0,
            at_ms: now_ms(),
            plugin: name.to_owned(),
            digest: plugin.digest().to_owned(),
            key: Some(key.to_owned()),
            capability: "version".into(),
            target: plugin.digest().to_owned(),
            decision: crate::store::audit::Decision::Allow,
            reason: Some("approved: its wider grants are allowed".into()),
        });
        tracing::info!(plugin = name, digest = %plugin.digest(), %key, "plugin version approved and live");
        Ok(reload)
    }

    /// Load the version of `name` now in its directory and, if it loads and fits, make
    /// it live. Blocking (it may compile): call it off the async workers. Messages
    /// already leased finish on the version they started with.
    pub fn reload_plugin(&self, name: &str) -> Result<Reload, LifecycleError> {
        let loaded = load_plugin(&self.config(), &self.engine, name, self.keep(name))
            .map_err(|e| format!("{e:#}"));
        self.swap_in(name, loaded, false)
    }

    /// The plugin instance `name` keeps: that of its live version.
    pub(crate) fn keep(&self, name: &str) -> Option<Identity> {
        self.plugin(name).map(|live| keep_live(name, &live))
    }

    /// What the watcher does when a plugin's files change: [`Runtime::reload_plugin`],
    /// for a version whose manifest names its component (`component_digest`). Without
    /// it a deploy under way cannot be told from a finished one, so such a version is
    /// refused here and only loads by an operator's explicit reload or promotion.
    pub fn reload_watched(&self, name: &str) -> Result<Reload, LifecycleError> {
        let loaded = load_plugin(&self.config(), &self.engine, name, self.keep(name))
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
    ) -> Result<Reload, LifecycleError> {
        let loaded = loaded
            .inspect(|plugin| archive(&self.data_dir, plugin))
            .and_then(|plugin| {
                // The new version must read and write what its neighbours write and read.
                let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
                super::flows::check_models(&flows, |other| match other == name {
                    true => Some(plugin.manifest().models.clone()),
                    false => self.plugin(other).map(|p| p.manifest().models.clone()),
                })
                .map(|()| plugin)
            });
        let record = loaded.as_ref().map(approved_of).ok();
        let result = loaded
            .map_err(LifecycleError::Refused)
            .and_then(|candidate| self.plugins.swap(name, candidate, approved));
        match &result {
            Ok(Reload::Swapped { from, to }) => {
                if let Some(record) = &record {
                    self.record_approved(name, record);
                }
                self.changed_here.notify_one();
                crate::telemetry::metrics::swapped(name);
                tracing::info!(plugin = name, %from, %to, "new plugin version live")
            }
            Ok(Reload::Held { digest, widening }) => self.held(name, digest, widening),
            Ok(Reload::Unchanged) => tracing::debug!(plugin = name, "plugin unchanged"),
            Err(LifecycleError::Refused(reason)) => {
                crate::telemetry::metrics::refused(name);
                tracing::warn!(plugin = name, %reason, "new plugin version refused; the live one keeps running");
                self.plugins.refuse(name, reason.clone());
            }
            Err(_) => {}
        }
        result
    }
}

/// Where the files of a version are kept: `<data-dir>/archive/<plugin>/<sha256 hex>/`.
pub(crate) fn archive_dir(data_dir: &Path, name: &str, digest: &str) -> std::path::PathBuf {
    data_dir
        .join("archive")
        .join(name)
        .join(digest.trim_start_matches("sha256:"))
}

/// Keep the files of a loaded version on disk (once per digest), so that a rollback
/// and a canary run can load it again whatever its directory holds by then. A
/// signature that came after the version was archived is added.
pub fn archive(data_dir: &Path, plugin: &Plugin) {
    let dir = archive_dir(data_dir, plugin.name(), plugin.digest());
    if dir.exists() {
        let sig = dir.join(tenon_registry::SIGNATURE_FILE);
        if let Some(signature) = plugin.signature()
            && !sig.exists()
            && let Err(error) = std::fs::write(&sig, signature)
        {
            tracing::warn!(plugin = plugin.name(), %error, "cannot archive the version's signature");
        }
        return;
    }
    let tmp = dir.with_extension("tmp");
    let written = plugin
        .write_files(&tmp)
        .and_then(|()| std::fs::rename(&tmp, &dir));
    if let Err(error) = written {
        tracing::warn!(plugin = plugin.name(), %error, "cannot archive the plugin version");
    }
}

impl Runtime {
    /// Make the version in `candidate` (a directory under one of the config's plugin
    /// roots) live: it is loaded and checked first, then written into the plugin's
    /// directory (so a restart keeps it) and swapped in. The operator's promotion is
    /// the approval of its grants.
    pub fn promote(&self, name: &str, candidate: &Path) -> Result<Reload, LifecycleError> {
        let (dir, shown) = self.candidate_dir(candidate)?;
        self.promote_from(name, Location::Dir(&dir, &shown))
    }

    /// Promote from a directory already checked (a candidate, or the archive).
    fn promote_from(&self, name: &str, location: Location<'_>) -> Result<Reload, LifecycleError> {
        let config = self.config();
        let entry = config
            .plugins
            .get(name)
            .ok_or_else(|| LifecycleError::UnknownPlugin(name.to_owned()))?;
        let loaded = load_plugin_at(
            &config,
            self.engine(),
            name,
            name,
            location,
            self.keep(name),
        )
        .map_err(|e| LifecycleError::Refused(format!("{e:#}")))?;
        loaded.write_files(&config.plugin_dir(entry)).map_err(|e| {
            LifecycleError::Refused(format!("cannot write the plugin directory: {e}"))
        })?;
        self.swap_in(name, Ok(loaded), true)
    }

    /// `dir`, opened, if it lies under one of the config's plugin roots. It is opened
    /// relative to the root's own handle: a symlink swapped in after the check cannot
    /// lead it out of the root.
    pub(crate) fn candidate_dir(
        &self,
        dir: &Path,
    ) -> Result<(cap_std::fs::Dir, std::path::PathBuf), LifecycleError> {
        let resolved = dir
            .canonicalize()
            .map_err(|e| LifecycleError::Refused(format!("candidate {}: {e}", dir.display())))?;
        let roots = self.config().plugin_roots();
        for root in roots.iter().filter_map(|root| root.canonicalize().ok()) {
            let Ok(relative) = resolved.strip_prefix(&root) else {
                continue;
            };
            let opened = cap_std::fs::Dir::open_ambient_dir(&root, cap_std::ambient_authority())
                .and_then(|root| {
                    if relative.as_os_str().is_empty() {
                        root.open_dir(".")
                    } else {
                        root.open_dir(relative)
                    }
                })
                .map_err(|e| {
                    LifecycleError::Refused(format!("candidate {}: {e}", resolved.display()))
                })?;
            return Ok((opened, resolved));
        }
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(LifecycleError::OutsideRoots(format!(
            "candidate {} is outside the plugin roots ({}): candidates are taken only from there (server.plugin_roots)",
            resolved.display(),
            roots.join(", ")
        )))
    }

    /// Put the version that was live before the current one back in place, from the
    /// archive.
    pub fn rollback(&self, name: &str) -> Result<Reload, LifecycleError> {
        let status = self.plugin_status();
        let slot = status
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| LifecycleError::UnknownPlugin(name.to_owned()))?;
        let previous = slot.previous.as_deref().ok_or_else(|| {
            LifecycleError::Conflict(format!("`{name}` has no previous version to roll back to"))
        })?;
        let dir = archive_dir(self.data_dir(), name, previous);
        if !dir.exists() {
            return Err(LifecycleError::Conflict(format!(
                "version {previous} of `{name}` is not in the archive"
            )));
        }
        self.promote_from(name, Location::Path(&dir))
    }
}
