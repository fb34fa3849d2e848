//! The watcher: a plugin directory or the config file changes, and the new version
//! (or config) is loaded off the hot path and swapped in, or refused with the live one
//! kept. Events are debounced (a burst of writes is one reload); a half-written
//! component does not compile and a manifest naming another component's digest is
//! refused, so the final write, a new event, loads the whole version. The watcher
//! takes only manifests that name their component (`component_digest`): without it a
//! deploy under way cannot be told from a finished one.

use super::Runtime;
use std::sync::Arc;

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
