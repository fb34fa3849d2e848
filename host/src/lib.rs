//! Tenon's host runtime.
//!
//! A small host supplies durable queues, storage, HTTP and tracing; every connector
//! and mapping is a sandboxed WebAssembly component loaded through the WIT worlds in
//! `wit/`. See `ARCHITECTURE.md` at the repository root for the map. The layers, each
//! naming only those below it:
//!
//! | layer | modules |
//! |---|---|
//! | serving | [`server`]; [`http`] (ingestion, the admin API) over [`api`] (its types) |
//! | running flows | [`runtime`] (flows, ingestion, workers, plugin lifecycle, hot swap) |
//! | the sandbox | [`sandbox`] (engine, plugins, capabilities, egress, inspection, redaction); [`auth`] (API keys) |
//! | keeping state | [`store`] (the message store seam and its backends, this node's database, the audit log) |
//! | telling | [`telemetry`] (trace context and spans, metrics, the business KPIs) |
//! | foundations | [`model`] (messages, outcomes, events, ids) below [`policy`] (the config's CEL expressions) below [`config`] (the flow config) |
//!
//! `layers_hold` (a test in this file) fails the build of any `crate::` path that
//! names a module of its own layer or one above.

pub mod api;
pub mod auth;
pub mod config;
pub mod http;
pub mod model;
pub mod policy;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;

/// The layers, lowest first: a module may name (by a `crate::` path) only modules of
/// the layers below its own.
#[cfg(test)]
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["policy"],
    &["config"],
    &["telemetry"],
    &["store"],
    &["auth", "sandbox"],
    &["runtime"],
    &["api"],
    &["http"],
    &["server"],
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::path::Path;

    /// Every `crate::<module>` a source file names, grouped imports
    /// (`crate::{a, b::c}`) included.
    fn named_modules(text: &str) -> Vec<&str> {
        fn ident(s: &str) -> &str {
            let s = s.trim_start();
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            &s[..end]
        }
        let mut out = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    out.extend(group.split(',').map(ident));
                }
                None => out.push(ident(rest)),
            }
        }
        out
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn layers_hold() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let layer_of = |module: &str| LAYERS.iter().position(|l| l.contains(&module));
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut wrong = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = first.to_str().unwrap().trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let Some(own) = layer_of(module) else {
                wrong.push(format!("{module}: a top-level module missing from LAYERS"));
                continue;
            };
            let text = std::fs::read_to_string(file).unwrap();
            for named in named_modules(&text) {
                if named == module || named.is_empty() {
                    continue;
                }
                match layer_of(named) {
                    Some(layer) if layer < own => {}
                    _ => wrong.push(format!("{} names `{named}`", relative.display())),
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    }
}
