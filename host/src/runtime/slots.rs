//! Hot swap: each plugin instance has a slot holding its live version (and a version
//! waiting for approval). A worker takes the live `Arc<Plugin>` when it leases a
//! message and keeps it to the end, so a message is processed wholly by one version;
//! the next lease gets whatever is live then.
//!
//! **An instance keeps its plugin.** A new version must be of the plugin (manifest
//! `name`) live in the slot, or of the one the config binds the instance to
//! (`[plugins.<name>] plugin`): loading checks that before compiling, and a swap
//! checks it again. Only a config change (another `path`, a `plugin` binding) runs
//! another plugin in an instance.
//!
//! **Grant changes are approved.** A new version whose grants are wider than the live
//! one's (an origin, a literal address, a secret, kv, a larger limit) is not swapped
//! in: it waits, shown by `tenon status`, until an operator approves it (`tenon plugin
//! approve`, scope `plugins:promote`). An equal or narrower one swaps at once.

use super::lifecycle::LifecycleError;
use crate::model::now_ms;
use crate::sandbox::plugin::Plugin;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

/// A version that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Refusal {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Why, with the loader's reasons.
    pub reason: String,
}

/// A version waiting for an operator's approval, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Who signed the live version (publisher and key id), if it is signed.
    #[serde(default)]
    pub signer: Option<String>,
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
    /// Why the instance sends nothing until when (a `Retry-After`), if it is paused.
    #[serde(default)]
    pub paused: Option<crate::sandbox::throttle::Pause>,
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
    pub fn swap(
        &self,
        name: &str,
        candidate: Plugin,
        approved: bool,
    ) -> Result<Reload, LifecycleError> {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = slots.get_mut(name) else {
            return Err(LifecycleError::UnknownPlugin(name.to_owned()));
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
            return Err(LifecycleError::Refused(reason));
        }
        if candidate.manifest().name != slot.live.manifest().name {
            // Loading checks it before compiling; this is the slot's own guard.
            let reason = format!(
                "the new version is plugin `{}`; `{name}` runs plugin `{}`: an instance keeps its plugin",
                candidate.manifest().name,
                slot.live.manifest().name
            );
            slot.refused = Some(Refusal {
                at_ms: now_ms(),
                reason: reason.clone(),
            });
            return Err(LifecycleError::Refused(reason));
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
    pub fn approve(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<(Reload, Arc<Plugin>), LifecycleError> {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| LifecycleError::UnknownPlugin(name.to_owned()))?;
        let waiting = slot
            .pending
            .as_ref()
            .map(|p| p.plugin.digest().to_owned())
            .ok_or_else(|| {
                LifecycleError::Conflict(format!("no version of `{name}` waits for approval"))
            })?;
        if waiting != digest {
            return Err(LifecycleError::Conflict(format!(
                "the version of `{name}` waiting for approval is {waiting}, not {digest}: review it (`tenon status`) and approve that one"
            )));
        }
        let pending = slot.pending.take().ok_or_else(|| {
            LifecycleError::Conflict(format!("no version of `{name}` waits for approval"))
        })?;
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
                signer: slot.live.signer().map(ToString::to_string),
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
                paused: slot.live.throttle().paused(),
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }
}
