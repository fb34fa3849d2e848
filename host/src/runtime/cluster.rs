//! Several nodes on one shared store (the NATS store): each announces itself, and
//! what goes live on one node goes live on every node.
//!
//! Every [`FOLLOW_EVERY`], and at once when something changes here, a node compares
//! three things for its config and for each plugin instance: what it runs, what it
//! ran at the last look, and what the deployment says is live
//! ([`crate::store::Shared`]). A change made on this node since the last look (a hot
//! deploy, a promotion, a rollback, an approval, a config edit) is published;
//! otherwise a deployment version that differs from the one running here is loaded
//! (from the files kept under its digest) and swapped in, at this node's own message
//! boundary, as any swap.
//!
//! At start, what a node loaded from its own files counts as a change made here if
//! the deployment never saw that digest (it was deployed while the node was down, or
//! the node died before it published it); if the deployment saw it and moved on, the
//! node is out of date and takes the deployment's. So a node that joins takes the
//! deployment's versions, the first node seeds them, and a restart loses nothing.
//!
//! Trust: whoever may write the deployment's buckets deploys to every node. NATS
//! credentials for a Tenon deployment are admin credentials.

use super::Runtime;
use super::lifecycle::{Location, archive_dir, load_plugin_at};
use crate::model::{NodeStatus, now_ms};
use crate::store::{Shared, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a node announces itself and looks at what the deployment runs.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// What a node saw at its last look.
#[derive(Debug, Default)]
struct Seen {
    /// The config digest it ran.
    config: String,
    /// The live version of each instance it ran.
    plugins: BTreeMap<String, String>,
    /// Deployment versions (instance, digest) and configs that did not load here:
    /// tried once, then left to the operator (the refusal shows in the status).
    refused: BTreeSet<(String, String)>,
}

impl Runtime {
    /// The name this node announces: `[server] node`, or the host's name and the
    /// process id.
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.config().server.node {
            return name.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "node".to_owned());
        format!("{host}-{}", std::process::id())
    }

    /// Record where this node listens (the server does, once bound).
    pub fn set_listeners(&self, ingest: SocketAddr, admin: SocketAddr) {
        let _ = self.listeners.set((ingest, admin));
    }

    /// This node, as it announces itself.
    fn node_status(&self) -> NodeStatus {
        let show = |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
        let listeners = self.listeners.get();
        NodeStatus {
            name: self.node_name(),
            ingest: show(listeners.map(|l| l.0)),
            admin: show(listeners.map(|l| l.1)),
            started_ms: self.started_ms,
            seen_ms: now_ms(),
            config: self.config().digest(),
            plugins: self
                .plugin_status()
                .into_iter()
                .map(|p| (p.name, p.digest))
                .collect(),
        }
    }

    /// The nodes of the deployment: those that announced themselves on a shared
    /// store, or this one alone.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        match self.store.shared() {
            Some(shared) => shared.nodes().await,
            None => Ok(vec![self.node_status()]),
        }
    }

    /// Until `shutdown`: announce this node and keep it in step with the deployment
    /// (see the module documentation). Returns at once on a store of one node.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.store.shared().is_none() {
            return;
        }
        let mut seen = None;
        loop {
            let looked = match &mut seen {
                Some(seen) => self.follow_once(seen).await,
                None => match self.seen_at_start().await {
                    Ok(first) => self.follow_once(seen.insert(first)).await,
                    Err(error) => Err(error),
                },
            };
            if let Err(error) = looked {
                tracing::warn!(%error, "cannot keep in step with the deployment");
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                _ = self.changed_here.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// What counts as seen at start: what this node runs, except digests the
    /// deployment never saw, which are changes to publish (see the module docs).
    async fn seen_at_start(&self) -> Result<Seen, StoreError> {
        let Some(shared) = self.store.shared() else {
            return Ok(Seen::default());
        };
        let ours = self.config().digest();
        let mut seen = Seen {
            config: if shared.known(&ours).await? {
                ours
            } else {
                String::new()
            },
            ..Seen::default()
        };
        for (name, digest) in self.live_digests() {
            if shared.known(&digest).await? {
                seen.plugins.insert(name, digest);
            }
        }
        Ok(seen)
    }

    fn live_digests(&self) -> BTreeMap<String, String> {
        self.plugin_status()
            .into_iter()
            .map(|p| (p.name, p.digest))
            .collect()
    }

    async fn follow_once(self: &Arc<Self>, seen: &mut Seen) -> Result<(), StoreError> {
        let Some(shared) = self.store.shared() else {
            return Ok(());
        };
        shared.announce(&self.node_status()).await?;
        self.follow_config(shared, seen).await?;
        self.follow_plugins(shared, seen).await
    }

    async fn follow_config(
        self: &Arc<Self>,
        shared: &dyn Shared,
        seen: &mut Seen,
    ) -> Result<(), StoreError> {
        let config = self.config();
        let ours = config.digest();
        let deployed = shared.config().await?;
        let deployed_digest = deployed
            .as_deref()
            .map(|t| crate::model::digest(t.as_bytes()));
        if ours != seen.config || deployed.is_none() {
            // Changed here since the last look (or the first node): the deployment's now.
            shared.publish_config(config.text()).await?;
            tracing::info!(config = %ours, "config published to the deployment");
            seen.config = ours;
            return Ok(());
        }
        let (Some(text), Some(digest)) = (deployed, deployed_digest) else {
            return Ok(());
        };
        if digest == ours || !seen.refused.insert(("config".into(), digest.clone())) {
            return Ok(());
        }
        // Written where the operator's edits go, then applied as an edit is.
        let path = config.path.clone();
        let tmp = path.with_extension("toml.deploying");
        let written = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = written {
            tracing::error!(%error, config = %path.display(), "cannot write the deployment's config");
            return Ok(());
        }
        let runtime = self.clone();
        let applied = tokio::task::spawn_blocking(move || runtime.reload_config()).await;
        match applied {
            Ok(Ok(())) => {
                tracing::info!(config = %digest, "the deployment's config is live here");
                seen.config = self.config().digest();
                seen.refused.remove(&("config".into(), digest));
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, config = %digest, "the deployment's config does not load here")
            }
            Err(error) => tracing::error!(%error, "the config reload failed"),
        }
        Ok(())
    }

    async fn follow_plugins(
        self: &Arc<Self>,
        shared: &dyn Shared,
        seen: &mut Seen,
    ) -> Result<(), StoreError> {
        let deployed = shared.live_versions().await?;
        for plugin in self.plugin_status() {
            let (name, ours) = (plugin.name, plugin.digest);
            let changed_here = seen.plugins.get(&name) != Some(&ours);
            match deployed.get(&name) {
                _ if changed_here => {}
                None => {}
                Some(theirs) if *theirs == ours => continue,
                Some(theirs) => {
                    let theirs = theirs.clone();
                    let tried = (name.clone(), theirs.clone());
                    if seen.refused.insert(tried.clone()) {
                        self.adopt(shared, &name, &theirs).await?;
                    }
                    let now = self.live_digest(&name);
                    if now == theirs {
                        seen.refused.remove(&tried);
                    }
                    seen.plugins.insert(name.clone(), now);
                    continue;
                }
            }
            // Changed here since the last look, or new to the deployment: publish it.
            if let Some(live) = self.plugin(&name) {
                let files = live.files();
                shared.publish_version(&name, &ours, &files).await?;
                tracing::info!(plugin = %name, digest = %ours, "live version published to the deployment");
            }
            seen.plugins.insert(name, ours);
        }
        Ok(())
    }

    fn live_digest(&self, name: &str) -> String {
        self.plugin(name)
            .map(|p| p.digest().to_owned())
            .unwrap_or_default()
    }

    /// Load the deployment's version `digest` of `name` from its files and swap it in.
    async fn adopt(
        self: &Arc<Self>,
        shared: &dyn Shared,
        name: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        let Some(files) = shared.version_files(digest).await? else {
            tracing::warn!(plugin = name, %digest, "the deployment's version has no files; not loaded");
            return Ok(());
        };
        let runtime = self.clone();
        let (name, digest) = (name.to_owned(), digest.to_owned());
        let swapped = tokio::task::spawn_blocking(move || {
            let dir = archive_dir(runtime.data_dir(), &name, &digest);
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::write(dir.join(tenon_registry::MANIFEST_FILE), &files.manifest)
                })
                .and_then(|()| {
                    let path = dir.join(tenon_registry::MANIFEST_FILE);
                    let manifest = tenon_registry::Manifest::parse(&path, &files.manifest)
                        .map_err(std::io::Error::other)?;
                    std::fs::write(dir.join(&manifest.component), &files.component)
                })
                .and_then(|()| match &files.signature {
                    Some(signature) => {
                        std::fs::write(dir.join(tenon_registry::SIGNATURE_FILE), signature)
                    }
                    None => Ok(()),
                })
                .map_err(|e| format!("cannot write the version's files: {e}"))?;
            let loaded = load_plugin_at(
                &runtime.config(),
                runtime.engine(),
                &name,
                &name,
                Location::Path(&dir),
                runtime.keep(&name),
            )
            .map_err(|e| format!("{e:#}"))
            .and_then(|plugin| {
                if plugin.digest() == digest {
                    Ok(plugin)
                } else {
                    Err(format!(
                        "the files kept for {digest} load as {}",
                        plugin.digest()
                    ))
                }
            });
            runtime
                .swap_in(&name, loaded, true)
                .map_err(|e| e.to_string())
                .map(|reload| (name, digest, reload))
        })
        .await;
        match swapped {
            Ok(Ok((name, digest, reload))) => {
                tracing::info!(plugin = %name, %digest, ?reload, "the deployment's version is live here")
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the deployment's version does not load here")
            }
            Err(error) => tracing::error!(%error, "loading the deployment's version failed"),
        }
        Ok(())
    }
}
