//! Hot swap: plugin versions replaced at a message boundary, without a redeploy.
//!
//! Each plugin instance has a slot holding its live version. A worker takes the live
//! `Arc<Plugin>` when it leases a message and keeps it to the end, so a message is
//! processed wholly by one version; the next lease gets whatever is live then.
//!
//! The watcher (notify, debounced) sees a plugin directory change, and the new version
//! is loaded off the hot path: read, digest, compile, pre-instantiate, checked against
//! the slot (same kind, hence same world and exports). Only then is it swapped in. A
//! version that fails any of that never goes live; the old one keeps running and the
//! refusal is kept for `tenon status` and the admin API. Editors that write a file in
//! several steps are covered twice: events are debounced (a burst of writes is one
//! reload) and a half-written component does not compile, so it is refused and the
//! final write, a new event, loads the whole file. A manifest that names its
//! component's digest is loaded only with that component, so a deploy that writes the
//! two files one after the other, in either order, never runs one with the other's
//! partner: until both are in place the load is refused and the live version stays.
//!
//! **Grant changes are approved.** A new version whose grants are wider than the live
//! one's (an origin, a secret, kv, a larger limit) is not swapped in: it waits, shown
//! by `tenon status`, until an operator approves it (`tenon plugin approve`, scope
//! `plugins:promote`). An equal or narrower one swaps as before. The approved version
//! of each instance is recorded, so a restart does not approve what is waiting.

use crate::plugin::Plugin;
use crate::queue::now_ms;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

/// A version that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Why, with the loader's reasons.
    pub reason: String,
}

/// A version waiting for an operator's approval, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingStatus {
    /// Its version (from its manifest).
    pub version: String,
    /// Its digest.
    pub digest: String,
    /// How its grants go beyond the live version's.
    pub widening: Vec<String>,
    /// Since when it waits (ms since the Unix epoch).
    pub since_ms: u64,
}

/// What a slot holds, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveStatus {
    /// The plugin instance name.
    pub name: String,
    /// `source`, `transform` or `sink`.
    pub kind: String,
    /// The live version (from its manifest).
    pub version: String,
    /// The live version's digest (manifest and component).
    pub digest: String,
    /// The live component's own digest.
    pub component_digest: String,
    /// Log lines the live version dropped over its budget.
    pub log_lines_dropped: u64,
    /// A version waiting for approval, if any.
    pub pending: Option<PendingStatus>,
    /// When this version went live (ms since the Unix epoch).
    pub live_since_ms: u64,
    /// Versions swapped in since start.
    pub swaps: u32,
    /// The digest live before this one, if any.
    pub previous: Option<String>,
    /// The last refused version since this one went live, if any.
    pub refused: Option<Refusal>,
}

/// What a reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new version is live.
    Swapped {
        /// The digest that was live.
        from: String,
        /// The digest now live.
        to: String,
    },
    /// The files hold the version already live.
    Unchanged,
    /// The new version asks for wider grants: it waits for an operator's approval.
    Held {
        /// Its digest.
        digest: String,
        /// How its grants go beyond the live version's.
        widening: Vec<String>,
    },
}

#[derive(Debug)]
struct Pending {
    plugin: Arc<Plugin>,
    widening: Vec<String>,
    since_ms: u64,
}

#[derive(Debug)]
struct Slot {
    live: Arc<Plugin>,
    since_ms: u64,
    swaps: u32,
    previous: Option<String>,
    refused: Option<Refusal>,
    pending: Option<Pending>,
}

impl Slot {
    fn new(plugin: Arc<Plugin>) -> Slot {
        Slot {
            live: plugin,
            since_ms: now_ms(),
            swaps: 0,
            previous: None,
            refused: None,
            pending: None,
        }
    }

    /// Make `plugin` live.
    fn replace(&mut self, plugin: Arc<Plugin>) -> Reload {
        let from = self.live.digest().to_owned();
        let to = plugin.digest().to_owned();
        self.previous = Some(from.clone());
        self.live = plugin;
        self.since_ms = now_ms();
        self.swaps += 1;
        self.refused = None;
        self.pending = None;
        Reload::Swapped { from, to }
    }
}

/// The live version of every plugin instance.
#[derive(Debug, Default)]
pub struct PluginSlots {
    slots: RwLock<BTreeMap<String, Slot>>,
}

impl PluginSlots {
    /// Slots for the plugins loaded at start, each with the version waiting for
    /// approval, if any.
    pub fn new(plugins: BTreeMap<String, (Plugin, Option<Plugin>)>) -> PluginSlots {
        let slots = plugins
            .into_iter()
            .map(|(name, (plugin, waiting))| {
                let mut slot = Slot::new(Arc::new(plugin));
                slot.pending = waiting.map(|w| Pending {
                    widening: w.grants().widening(slot.live.grants()),
                    plugin: Arc::new(w),
                    since_ms: now_ms(),
                });
                (name, slot)
            })
            .collect();
        PluginSlots {
            slots: RwLock::new(slots),
        }
    }

    /// The live version of a plugin instance.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.read().get(name).map(|s| s.live.clone())
    }

    /// Put a loaded version in place of the live one, if it fits the slot. Unless
    /// `approved` (an operator's own action), a version with wider grants than the live
    /// one is held for approval instead.
    pub fn swap(&self, name: &str, candidate: Plugin, approved: bool) -> Result<Reload, String> {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = slots.get_mut(name) else {
            return Err(format!("no plugin named `{name}`"));
        };
        if candidate.kind() != slot.live.kind() {
            let reason = format!(
                "the new version is a {} plugin; `{name}` is a {} plugin in its flows",
                candidate.kind(),
                slot.live.kind()
            );
            slot.refused = Some(Refusal {
                at_ms: now_ms(),
                reason: reason.clone(),
            });
            return Err(reason);
        }
        if candidate.digest() == slot.live.digest() {
            // The directory holds the live version again: nothing waits any more.
            slot.pending = None;
            return Ok(Reload::Unchanged);
        }
        let widening = candidate.grants().widening(slot.live.grants());
        if !approved && !widening.is_empty() {
            let digest = candidate.digest().to_owned();
            slot.pending = Some(Pending {
                plugin: Arc::new(candidate),
                widening: widening.clone(),
                since_ms: now_ms(),
            });
            return Ok(Reload::Held { digest, widening });
        }
        Ok(slot.replace(Arc::new(candidate)))
    }

    /// Make the version waiting for approval live, if it is the one the operator
    /// looked at (`digest`): a version dropped in between is not approved unseen.
    pub fn approve(&self, name: &str, digest: &str) -> Result<(Reload, Arc<Plugin>), String> {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| format!("no plugin named `{name}`"))?;
        let waiting = slot
            .pending
            .as_ref()
            .map(|p| p.plugin.digest().to_owned())
            .ok_or_else(|| format!("no version of `{name}` waits for approval"))?;
        if waiting != digest {
            return Err(format!(
                "the version of `{name}` waiting for approval is {waiting}, not {digest}: review it (`tenon status`) and approve that one"
            ));
        }
        let pending = slot
            .pending
            .take()
            .ok_or_else(|| format!("no version of `{name}` waits for approval"))?;
        let plugin = pending.plugin.clone();
        Ok((slot.replace(pending.plugin), plugin))
    }

    /// Put a plugin instance's version in place: a new slot, or a swap (a config
    /// reload that adds an instance or changes its settings). Unless `approved`, a
    /// new version with wider grants is held for approval instead.
    pub fn put(&self, plugin: Plugin, approved: bool) -> Reload {
        let name = plugin.name().to_owned();
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        match slots.get_mut(&name) {
            Some(slot) => {
                let widening = plugin.grants().widening(slot.live.grants());
                let new_files = plugin.digest() != slot.live.digest();
                if !approved && new_files && !widening.is_empty() {
                    let digest = plugin.digest().to_owned();
                    slot.pending = Some(Pending {
                        plugin: Arc::new(plugin),
                        widening: widening.clone(),
                        since_ms: now_ms(),
                    });
                    return Reload::Held { digest, widening };
                }
                slot.replace(Arc::new(plugin))
            }
            None => {
                let digest = plugin.digest().to_owned();
                slots.insert(name, Slot::new(Arc::new(plugin)));
                Reload::Swapped {
                    from: String::new(),
                    to: digest,
                }
            }
        }
    }

    /// Record that a new version of `name` could not be loaded.
    pub fn refuse(&self, name: &str, reason: String) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(name) {
            slot.refused = Some(Refusal {
                at_ms: now_ms(),
                reason,
            });
        }
    }

    /// What every slot holds.
    pub fn status(&self) -> Vec<LiveStatus> {
        self.read()
            .iter()
            .map(|(name, slot)| LiveStatus {
                name: name.clone(),
                kind: slot.live.kind().to_string(),
                version: slot.live.version().to_owned(),
                digest: slot.live.digest().to_owned(),
                component_digest: slot.live.component_digest().to_owned(),
                log_lines_dropped: slot.live.log_dropped().0,
                pending: slot.pending.as_ref().map(|p| PendingStatus {
                    version: p.plugin.version().to_owned(),
                    digest: p.plugin.digest().to_owned(),
                    widening: p.widening.clone(),
                    since_ms: p.since_ms,
                }),
                live_since_ms: slot.since_ms,
                swaps: slot.swaps,
                previous: slot.previous.clone(),
                refused: slot.refused.clone(),
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Quiet time after the last file event before a plugin is reloaded.
pub const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

/// Watch the directory of every plugin instance of the runtime's config, and reload
/// an instance when files in its directory change. Returns the task to run; it stops
/// when `shutdown` turns true.
pub fn watch(
    runtime: Arc<Runtime>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use notify_debouncer_full::notify::{EventKind, RecursiveMode};
    use notify_debouncer_full::{DebounceEventResult, new_debouncer};
    use std::path::PathBuf;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut debouncer =
        new_debouncer(
            DEBOUNCE,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    // Only changes count: the runtime reading a file (to reload it) is an
                    // access event, and counting it would reload again and again.
                    let paths: Vec<PathBuf> = events
                        .into_iter()
                        .filter(|e| !matches!(e.kind, EventKind::Access(_)))
                        .flat_map(|e| e.event.paths)
                        .collect();
                    if !paths.is_empty() {
                        let _ = tx.send(paths);
                    }
                }
                Err(errors) => {
                    for error in errors {
                        tracing::warn!(%error, "plugin watcher error");
                    }
                }
            },
        )?;
    let config = runtime.config();
    let mut dirs: Vec<(PathBuf, String)> = Vec::new();
    for (name, entry) in &config.plugins {
        let path = config.plugin_dir(entry);
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().map(PathBuf::from).unwrap_or_default()
        };
        let dir = dir.canonicalize().unwrap_or(dir);
        debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
        tracing::debug!(plugin = %name, dir = %dir.display(), "watching");
        dirs.push((dir, name.clone()));
    }
    // The flow config too: a change is applied (or refused whole) without a restart.
    let config_path = config
        .path
        .canonicalize()
        .unwrap_or_else(|_| config.path.clone());
    if let Some(config_dir) = config_path.parent() {
        debouncer.watch(config_dir, RecursiveMode::NonRecursive)?;
    }
    Ok(async move {
        let _debouncer = debouncer;
        loop {
            let paths = tokio::select! {
                Some(paths) = rx.recv() => paths,
                _ = shutdown.changed() => break,
                else => break,
            };
            let mut names: Vec<String> = dirs
                .iter()
                .filter(|(dir, _)| {
                    paths
                        .iter()
                        .any(|p| p.parent() == Some(dir.as_path()) || p == dir)
                })
                .map(|(_, name)| name.clone())
                .collect();
            names.dedup();
            if paths.iter().any(|p| p == &config_path) {
                let runtime = runtime.clone();
                let _ = tokio::task::spawn_blocking(move || runtime.reload_config()).await;
            }
            for name in names {
                let runtime = runtime.clone();
                // Loading compiles: off the async workers, one plugin at a time.
                let _ = tokio::task::spawn_blocking(move || runtime.reload_watched(&name)).await;
            }
        }
    })
}

/// Where the files of a version are kept: `<data-dir>/archive/<plugin>/<sha256 hex>/`.
pub(crate) fn archive_dir(
    data_dir: &std::path::Path,
    name: &str,
    digest: &str,
) -> std::path::PathBuf {
    data_dir
        .join("archive")
        .join(name)
        .join(digest.trim_start_matches("sha256:"))
}

/// Keep the files of a loaded version on disk (once per digest), so that a rollback
/// and a canary run can load it again whatever its directory holds by then.
pub fn archive(data_dir: &std::path::Path, plugin: &Plugin) {
    let dir = archive_dir(data_dir, plugin.name(), plugin.digest());
    if dir.exists() {
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

use crate::runtime::{Location, Runtime};

impl Runtime {
    /// Make the version in `candidate` (a directory under one of the config's plugin
    /// roots) live: it is loaded and checked first, then written into the plugin's
    /// directory (so a restart keeps it) and swapped in. The operator's promotion is
    /// the approval of its grants.
    pub fn promote(&self, name: &str, candidate: &std::path::Path) -> Result<Reload, String> {
        let (dir, shown) = self.candidate_dir(candidate)?;
        self.promote_from(name, Location::Dir(&dir, &shown))
    }

    /// Promote from a directory already checked (a candidate, or the archive).
    fn promote_from(&self, name: &str, location: Location<'_>) -> Result<Reload, String> {
        let config = self.config();
        let entry = config
            .plugins
            .get(name)
            .ok_or_else(|| format!("no plugin named `{name}`"))?;
        let loaded = crate::runtime::load_plugin_at(
            &config,
            self.engine(),
            self.storage(),
            name,
            name,
            location,
        )
        .map_err(|e| format!("{e:#}"))?;
        loaded
            .write_files(&config.plugin_dir(entry))
            .map_err(|e| format!("cannot write the plugin directory: {e}"))?;
        self.swap_in(name, Ok(loaded), true)
    }

    /// `dir`, opened, if it lies under one of the config's plugin roots. It is opened
    /// relative to the root's own handle: a symlink swapped in after the check cannot
    /// lead it out of the root.
    fn candidate_dir(
        &self,
        dir: &std::path::Path,
    ) -> Result<(cap_std::fs::Dir, std::path::PathBuf), String> {
        let resolved = dir
            .canonicalize()
            .map_err(|e| format!("candidate {}: {e}", dir.display()))?;
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
                .map_err(|e| format!("candidate {}: {e}", resolved.display()))?;
            return Ok((opened, resolved));
        }
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "candidate {} is outside the plugin roots ({}): candidates are taken only from there (server.plugin_roots)",
            resolved.display(),
            roots.join(", ")
        ))
    }

    /// Put the version that was live before the current one back in place, from the
    /// archive.
    pub fn rollback(&self, name: &str) -> Result<Reload, String> {
        let status = self.plugin_status();
        let slot = status
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no plugin named `{name}`"))?;
        let previous = slot
            .previous
            .as_deref()
            .ok_or_else(|| format!("`{name}` has no previous version to roll back to"))?;
        let dir = archive_dir(self.data_dir(), name, previous);
        if !dir.exists() {
            return Err(format!(
                "version {previous} of `{name}` is not in the archive"
            ));
        }
        self.promote_from(name, Location::Path(&dir))
    }

    /// Run a candidate version of the transform `name` beside its live version on the
    /// last `limit` messages `flow` accepted (the event log), and compare their
    /// outputs. Nothing leaves the process: sinks are not called, and both versions
    /// run with a scratch key-value namespace.
    pub async fn try_candidate(
        &self,
        name: &str,
        flow: &str,
        candidate: &std::path::Path,
        limit: usize,
    ) -> Result<Vec<CanaryResult>, String> {
        let flows = self.flows();
        let flow = flows
            .iter()
            .find(|f| f.name == flow)
            .ok_or_else(|| format!("no flow named `{flow}`"))?;
        let stage = flow
            .stages
            .iter()
            .position(|s| s == name)
            .filter(|&i| i + 1 < flow.stages.len())
            .ok_or_else(|| format!("`{name}` is not a transform step of flow `{}`", flow.name))?;
        let (candidate_root, shown) = self.candidate_dir(candidate)?;
        // Both versions read the instance's own key-value data; neither writes it
        // (a canary's writes are never committed).
        let load = |location: Location<'_>| {
            crate::runtime::load_plugin_at(
                &self.config(),
                self.engine(),
                self.storage(),
                name,
                name,
                location,
            )
            .map_err(|e| format!("{e:#}"))
        };
        let live_digest = self
            .plugin(name)
            .map(|p| p.digest().to_owned())
            .unwrap_or_default();
        let live = load(Location::Path(&archive_dir(
            self.data_dir(),
            name,
            &live_digest,
        )))?;
        let candidate = load(Location::Dir(&candidate_root, &shown))?;
        let before: Vec<Arc<Plugin>> = flow.stages[..stage]
            .iter()
            .filter_map(|s| self.plugin(s))
            .collect();

        let events = self
            .queue()
            .events(1, u64::MAX)
            .map_err(|e| e.to_string())?;
        let recent = events.into_iter().rev().filter_map(|e| match e.body {
            crate::events::EventBody::Accepted { envelope } if e.flow == flow.name => {
                Some((e.offset, envelope.message))
            }
            _ => None,
        });
        let mut results = Vec::new();
        for (offset, message) in recent.take(limit) {
            // The inputs of this step: the message through the live steps before it.
            let mut inputs = vec![message];
            for step in &before {
                let mut next = Vec::new();
                for input in &inputs {
                    next.extend(step.transform(input).await.unwrap_or_default());
                }
                inputs = next;
            }
            for input in inputs {
                let (live_out, candidate_out) =
                    (run(&live, &input).await, run(&candidate, &input).await);
                let as_json = |r: &Result<Vec<serde_json::Value>, String>| match r {
                    Ok(v) => serde_json::json!({ "outputs": v }),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                let diff = json_patch::diff(&as_json(&live_out), &as_json(&candidate_out));
                results.push(CanaryResult {
                    offset,
                    id: input.id.clone(),
                    key: input.key.clone(),
                    live: live.digest().to_owned(),
                    candidate: candidate.digest().to_owned(),
                    differences: serde_json::to_value(&diff).unwrap_or_default(),
                });
            }
        }
        Ok(results)
    }
}

/// The comparison of a candidate with the live version on one recorded input.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryResult {
    /// The event's offset.
    pub offset: u64,
    /// The input message's id.
    pub id: String,
    /// Its business key.
    pub key: String,
    /// The live digest.
    pub live: String,
    /// The candidate's digest.
    pub candidate: String,
    /// What the candidate's result changes, as a JSON Patch (RFC 6902) from the live
    /// result `{"outputs": [...]}` or `{"error": ...}`; empty when they agree.
    pub differences: serde_json::Value,
}

fn body_json(message: &crate::queue::StoredMessage) -> serde_json::Value {
    tenon_model::Encoding::from_content_type(&message.content_type)
        .ok()
        .and_then(|enc| enc.decode(&message.body).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Run a transform and decode its outputs, or say why it failed.
async fn run(
    plugin: &Plugin,
    input: &crate::queue::StoredMessage,
) -> Result<Vec<serde_json::Value>, String> {
    plugin
        .transform(input)
        .await
        .map(|outs| outs.iter().map(body_json).collect())
        .map_err(|e| e.to_string())
}
