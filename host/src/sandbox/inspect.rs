//! What a component really imports and exports, against what its manifest grants.
//!
//! One table decides which grant each import needs ([`need`]); the loader refuses a
//! component with an import it is not granted ([`Inspection::refusals`]), and
//! `tenon plugin audit` prints the same comparison for a security reviewer.
//!
//! What each import needs comes from the one capability table,
//! [`tenon_registry::CAPABILITIES`]:
//!
//! | import | needs |
//! |---|---|
//! | `tenon:plugin/{types,log,config}` | nothing: every plugin has them |
//! | `tenon:plugin/kv` | grant `kv` (transforms, sinks) |
//! | `tenon:plugin/secrets` | grant `secrets` |
//! | `wasi:http/*` | grant `http` (sinks) |
//! | `wasi:{cli,io,clocks,random}/*` | nothing: no arguments, no environment, stdout discarded |
//! | `wasi:filesystem/*` | nothing: no directory is preopened, so no file is reachable |
//! | `wasi:sockets/*`, anything else | never: the network is reachable only through `wasi:http` |

use anyhow::Context as _;
use serde::Serialize;
use std::path::Path;
use tenon_registry::{Grants, Kind, Manifest};
use wasmtime::component::Component;

/// What an import needs to be linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "needs", content = "detail")]
pub enum Need {
    /// Every plugin has it.
    Nothing,
    /// The named grant, e.g. `"kv"`.
    Grant(&'static str),
    /// No plugin can have it; why.
    Never(&'static str),
}

/// What `import` (a versioned interface name) needs in a plugin of `kind`, as the
/// capability table ([`tenon_registry::CAPABILITIES`]) says.
pub fn need(import: &str, kind: Kind) -> Need {
    match tenon_registry::capability_of(import) {
        Some(c) if !c.allowed_for(kind) => Need::Never(c.not_for_others),
        Some(c) if c.gated => Need::Grant(c.name),
        Some(_) => Need::Nothing,
        None => {
            Need::Never(tenon_registry::never(import).unwrap_or("this host does not provide it"))
        }
    }
}

/// Whether `grants` hold the grant named `grant`.
fn holds(grants: &Grants, grant: &str) -> bool {
    tenon_registry::capability(grant).is_some_and(|c| c.granted(grants))
}

/// The linear memory an instance of the component starts with, in bytes: the initial
/// sizes of the memories its core modules define (a memory one module imports from
/// another is counted once, where it is defined). A module instantiated twice counts
/// once; one defined but never instantiated counts all the same (no toolchain makes
/// such components). Bytes that do not parse count as far as they do: compiling them
/// says what is wrong.
pub fn initial_memory(wasm: &[u8]) -> u64 {
    use wasmparser::{Parser, Payload};
    let mut bytes = 0u64;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::MemorySection(memories)) => {
                for memory in memories.into_iter().flatten() {
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16).min(16);
                    bytes = bytes.saturating_add(memory.initial.saturating_mul(page));
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    bytes
}

/// Why a component whose instances start with `initial` bytes of linear memory
/// cannot run under `grants`: more than the memory grant, so every instance would be
/// refused as it starts. `None` when it fits.
pub fn memory_refusal(initial: u64, grants: &Grants) -> Option<String> {
    let limit = u64::from(grants.memory_mib) << 20;
    if initial <= limit {
        return None;
    }
    let needed = initial.div_ceil(1 << 20);
    let host_max = (crate::sandbox::engine::MAX_PLUGIN_MEMORY >> 20) as u64;
    let what = match needed <= host_max {
        true => format!("grant `memory_mib = {needed}` or more"),
        false => format!("this host grants at most {host_max} MiB, so it cannot run here"),
    };
    Some(format!(
        "the component starts with {} KiB of linear memory, more than its memory grant of {} MiB, so no instance of it could start: {what}",
        initial >> 10,
        grants.memory_mib,
    ))
}

/// A component's interface, read from the component itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// Versioned interface names it imports, sorted.
    pub imports: Vec<String>,
    /// Names it exports, sorted.
    pub exports: Vec<String>,
    /// The linear memory an instance starts with, in bytes ([`initial_memory`]).
    pub initial_memory: u64,
}

/// An import the plugin may not have, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRefusal {
    /// The import.
    pub import: String,
    /// The grant it needs, when a grant would allow it.
    pub missing_grant: Option<&'static str>,
    /// The whole reason, for people.
    pub reason: String,
}

impl Inspection {
    /// Read a compiled component's imports and exports; `initial_memory` is what
    /// [`initial_memory`] read from its bytes.
    pub fn of(engine: &wasmtime::Engine, component: &Component, initial_memory: u64) -> Inspection {
        let ty = component.component_type();
        let mut imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let mut exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        imports.sort();
        exports.sort();
        Inspection {
            imports,
            exports,
            initial_memory,
        }
    }

    /// The imports that `grants` do not allow a plugin of `kind`, each with its reason.
    pub fn refusals(&self, kind: Kind, grants: &Grants) -> Vec<ImportRefusal> {
        self.imports
            .iter()
            .filter_map(|import| match need(import, kind) {
                Need::Nothing => None,
                Need::Grant(grant) if holds(grants, grant) => None,
                Need::Grant(grant) => Some(ImportRefusal {
                    import: import.clone(),
                    missing_grant: Some(grant),
                    reason: format!(
                        "the component imports `{import}`, which needs grant `{grant}`; its manifest does not grant it"
                    ),
                }),
                Need::Never(why) => Some(ImportRefusal {
                    import: import.clone(),
                    missing_grant: None,
                    reason: format!(
                        "the component imports `{import}`, which a {kind} plugin cannot have: {why}"
                    ),
                }),
            })
            .collect()
    }

    /// Grants the manifest asks for that no import uses (asking for more than needed).
    pub fn unused_grants(&self, kind: Kind, grants: &Grants) -> Vec<&'static str> {
        tenon_registry::CAPABILITIES
            .iter()
            .filter(|c| c.gated)
            .map(|c| c.name)
            .filter(|grant| holds(grants, grant))
            .filter(|grant| {
                !self
                    .imports
                    .iter()
                    .any(|i| need(i, kind) == Need::Grant(grant))
            })
            .collect()
    }

    /// The export the manifest's world requires, when the component lacks it.
    pub fn missing_export(&self, kind: Kind) -> Option<String> {
        let wanted = format!(
            "tenon:plugin/{}@{}",
            match kind {
                Kind::Source => "ingester",
                Kind::Transform => "transformer",
                Kind::Sink => "deliverer",
                Kind::Api => "responder",
            },
            tenon_registry::WIT_VERSION
        );
        (!self.exports.contains(&wanted)).then_some(wanted)
    }
}

/// The report of `tenon plugin audit`: what a plugin is, asks for and really uses.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its kind.
    pub kind: String,
    /// Its world.
    pub world: String,
    /// The version's digest (`sha256:...`), over the manifest and the component: what
    /// `tenon status`, the audit log and a config's `digest = ...` pin name.
    pub digest: String,
    /// The component's own digest: what the manifest's `component_digest` names.
    pub component_digest: String,
    /// Whether the manifest names its component's digest (so that a deploy never
    /// pairs it with another component); `false` when it names none, or another.
    pub component_bound: bool,
    /// Who signed it (its `plugin.sig`, or the package's signature): the publisher and
    /// key, and whether a trust policy trusts it; `None`: unsigned.
    pub signer: Option<String>,
    /// Why the trust policy (or, without one, the signature's own check) refuses it:
    /// the host would not load it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<String>,
    /// Each import and what it needs.
    pub imports: Vec<ImportLine>,
    /// Its exports.
    pub exports: Vec<String>,
    /// The grants its manifest asks for.
    pub grants: Grants,
    /// Imports the host would refuse: the plugin would not load.
    pub refused: Vec<ImportRefusal>,
    /// The linear memory an instance starts with, in bytes.
    pub initial_memory: u64,
    /// Why the memory grant is too small for the component to start: the plugin would
    /// not load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_refused: Option<String>,
    /// The world's export, when the component lacks it.
    pub missing_export: Option<String>,
    /// Grants asked for that no import uses.
    pub unused_grants: Vec<&'static str>,
    /// The manifest names another component than this one.
    pub mismatch: Option<String>,
    /// Whether the host would load it with these grants.
    pub loadable: bool,
}

/// One import in an [`AuditReport`].
#[derive(Debug, Clone, Serialize)]
pub struct ImportLine {
    /// The versioned interface name.
    pub name: String,
    /// What it needs.
    #[serde(flatten)]
    pub need: Need,
}

impl AuditReport {
    /// Compare a component with its manifest.
    pub fn new(
        manifest: &Manifest,
        digest: String,
        component_digest: String,
        inspection: Inspection,
    ) -> AuditReport {
        let kind = manifest.kind;
        let mut report = AuditReport {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            kind: kind.to_string(),
            world: manifest.world.clone(),
            digest,
            component_bound: manifest.component_digest.as_ref() == Some(&component_digest),
            component_digest,
            signer: None,
            untrusted: None,
            imports: inspection
                .imports
                .iter()
                .map(|name| ImportLine {
                    name: name.clone(),
                    need: need(name, kind),
                })
                .collect(),
            refused: inspection.refusals(kind, &manifest.grants),
            initial_memory: inspection.initial_memory,
            memory_refused: memory_refusal(inspection.initial_memory, &manifest.grants),
            missing_export: inspection.missing_export(kind),
            unused_grants: inspection.unused_grants(kind, &manifest.grants),
            exports: inspection.exports,
            grants: manifest.grants.clone(),
            mismatch: None,
            loadable: false,
        };
        report.loadable = report.refused.is_empty()
            && report.missing_export.is_none()
            && report.memory_refused.is_none();
        report
    }

    /// Audit the plugin at `path`: a plugin directory, its `plugin.toml`, its
    /// component (with the `plugin.toml` beside it), or a package (`tenon plugin
    /// pack`). The component is compiled to read its real interface; nothing is
    /// instantiated. Its signature, if any, is checked for itself (that it verifies
    /// and is for these files).
    pub fn of_path(path: &Path) -> anyhow::Result<AuditReport> {
        AuditReport::of_path_trusting(path, None)
    }

    /// [`AuditReport::of_path`], with the signature checked against `trust` when
    /// given (as the host would check it).
    pub fn of_path_trusting(
        path: &Path,
        trust: Option<&tenon_registry::TrustPolicy>,
    ) -> anyhow::Result<AuditReport> {
        let is_wasm = path.extension().is_some_and(|e| e == "wasm");
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let (manifest_path, text, component_path, wasm, signature) =
            if path.is_file() && !is_wasm && !is_toml {
                let package = tenon_registry::Package::open(path)?;
                let component = path.join(&package.manifest().component);
                (
                    path.to_owned(),
                    package.manifest_text().to_owned(),
                    component,
                    package.component().to_vec(),
                    package.signature().map(str::to_owned),
                )
            } else {
                Self::files_at(path, is_wasm)?
            };
        let manifest = Manifest::parse(&manifest_path, &text)?;
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config).map_err(anyhow::Error::from)?;
        let component = Component::new(&engine, &wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a valid component", component_path.display()))?;
        let inspection = Inspection::of(&engine, &component, initial_memory(&wasm));
        let mut report = AuditReport::new(
            &manifest,
            crate::sandbox::plugin::version_digest(text.as_bytes(), &wasm),
            crate::model::digest(&wasm),
            inspection,
        );
        if let Some(named) = &manifest.component_digest
            && *named != report.component_digest
        {
            report.loadable = false;
            report.mismatch = Some(format!(
                "the manifest names component {named}, but the component is {}",
                report.component_digest
            ));
        }
        let policy = trust.cloned().unwrap_or_default();
        let sig = signature
            .as_deref()
            .map(|s| (tenon_registry::SIGNATURE_FILE, s));
        match policy.check(&manifest.name, &report.digest, sig) {
            Ok(None) => {}
            Ok(Some(signer)) if trust.is_none() => {
                report.signer = Some(format!(
                    "\"{}\" (key {}; the signature verifies: give --config to check it against a trust policy)",
                    signer.publisher, signer.key_id
                ));
            }
            Ok(Some(signer)) => report.signer = Some(signer.to_string()),
            Err(refusal) => {
                report.signer = signature
                    .as_deref()
                    .and_then(|s| tenon_registry::SignatureFile::parse(s).ok())
                    .map(|s| format!("\"{}\" (key {}; refused)", s.publisher, s.key_id));
                report.untrusted = Some(refusal.to_string());
                report.loadable = false;
            }
        }
        Ok(report)
    }

    /// The files of the plugin at `path` (a directory, its manifest, or its
    /// component): manifest path and text, component path and bytes, signature.
    #[allow(clippy::type_complexity)]
    fn files_at(
        path: &Path,
        is_wasm: bool,
    ) -> anyhow::Result<(
        std::path::PathBuf,
        String,
        std::path::PathBuf,
        Vec<u8>,
        Option<String>,
    )> {
        let manifest_path = match (path.is_dir(), is_wasm) {
            (true, _) => path.join(tenon_registry::MANIFEST_FILE),
            (false, true) => path
                .parent()
                .unwrap_or(Path::new("."))
                .join(tenon_registry::MANIFEST_FILE),
            (false, false) => path.to_owned(),
        };
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?;
        let manifest = Manifest::parse(&manifest_path, &text)?;
        let base = manifest_path.parent().unwrap_or(Path::new("."));
        let component_path = if is_wasm {
            path.to_owned()
        } else {
            base.join(&manifest.component)
        };
        if is_wasm && base.join(&manifest.component) != component_path {
            anyhow::bail!(
                "{} names component `{}`, not {}",
                manifest_path.display(),
                manifest.component.display(),
                component_path.display()
            );
        }
        let wasm = std::fs::read(&component_path)
            .with_context(|| format!("cannot read {}", component_path.display()))?;
        let sig_path = base.join(tenon_registry::SIGNATURE_FILE);
        let signature = match std::fs::read_to_string(&sig_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", sig_path.display())),
        };
        Ok((manifest_path, text, component_path, wasm, signature))
    }

    /// The report for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let g = &self.grants;
        let _ = writeln!(
            out,
            "plugin   {} {} ({})",
            self.name, self.version, self.kind
        );
        let _ = writeln!(out, "world    {}", self.world);
        let _ = writeln!(out, "digest   {}", self.digest);
        let _ = writeln!(
            out,
            "component {}{}",
            self.component_digest,
            if self.component_bound {
                " (named by the manifest)"
            } else {
                " (not named by the manifest: add `component_digest` so a deploy cannot pair it with another manifest)"
            }
        );
        let _ = writeln!(
            out,
            "signer   {}",
            self.signer.as_deref().unwrap_or("unsigned")
        );
        let _ = writeln!(out, "\nimports (read from the component):");
        for import in &self.imports {
            let needs = match import.need {
                Need::Nothing => "always linked".to_owned(),
                Need::Grant(grant) => format!("needs grant `{grant}`"),
                Need::Never(why) => format!("never linked: {why}"),
            };
            let _ = writeln!(out, "  {:<40} {needs}", import.name);
        }
        let _ = writeln!(out, "\nexports:");
        for export in &self.exports {
            let _ = writeln!(out, "  {export}");
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(out, "\ngrants (asked for in plugin.toml):");
        let _ = writeln!(out, "  http               {}", list(&g.http));
        let _ = writeln!(
            out,
            "  kv                 {}",
            if g.kv {
                format!("yes, quota {} bytes", g.kv_quota_bytes)
            } else {
                "no".into()
            }
        );
        let _ = writeln!(out, "  config keys        {}", list(&g.config));
        let _ = writeln!(out, "  secrets            {}", list(&g.secrets));
        let _ = writeln!(out, "  optional secrets   {}", list(&g.optional_secrets));
        let _ = writeln!(
            out,
            "  memory             {} MiB (an instance starts with {} KiB)",
            g.memory_mib,
            self.initial_memory >> 10
        );
        let _ = writeln!(out, "  time per call      {} ms", g.timeout_ms);
        let _ = writeln!(out, "  output cap         {} bytes", g.max_output_bytes);
        let _ = writeln!(out, "  HTTP response cap  {} bytes", g.max_response_bytes);
        let _ = writeln!(out, "  HTTP request cap   {} bytes", g.max_request_bytes);
        let _ = writeln!(out, "\ndifferences:");
        if let Some(mismatch) = &self.mismatch {
            let _ = writeln!(out, "  REFUSED  {mismatch}");
        }
        if let Some(untrusted) = &self.untrusted {
            let _ = writeln!(out, "  REFUSED  {untrusted}");
        }
        if self.refused.is_empty()
            && self.unused_grants.is_empty()
            && self.missing_export.is_none()
            && self.mismatch.is_none()
            && self.untrusted.is_none()
            && self.memory_refused.is_none()
        {
            let _ = writeln!(out, "  none: the component uses exactly what it is granted");
        }
        for refusal in &self.refused {
            let _ = writeln!(out, "  REFUSED  {}", refusal.reason);
        }
        if let Some(memory) = &self.memory_refused {
            let _ = writeln!(out, "  REFUSED  {memory}");
        }
        if let Some(export) = &self.missing_export {
            let _ = writeln!(
                out,
                "  REFUSED  the component does not export `{export}`, which world `{}` requires",
                self.world
            );
        }
        for grant in &self.unused_grants {
            let _ = writeln!(
                out,
                "  unused   grant `{grant}` is asked for but no import uses it"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_import_needs_its_grant() {
        assert_eq!(need("tenon:plugin/log@0.1.0", Kind::Source), Need::Nothing);
        assert_eq!(need("tenon:plugin/kv@0.1.0", Kind::Sink), Need::Grant("kv"));
        assert!(matches!(
            need("tenon:plugin/kv@0.1.0", Kind::Source),
            Need::Never(_)
        ));
        assert_eq!(
            need("wasi:http/outgoing-handler@0.2.4", Kind::Sink),
            Need::Grant("http")
        );
        assert!(matches!(
            need("wasi:http/outgoing-handler@0.2.4", Kind::Transform),
            Need::Never(_)
        ));
        assert!(matches!(
            need("wasi:sockets/tcp@0.2.4", Kind::Sink),
            Need::Never(_)
        ));
        assert_eq!(need("wasi:cli/stderr@0.2.4", Kind::Sink), Need::Nothing);
        assert!(matches!(need("acme:evil/x", Kind::Sink), Need::Never(_)));
    }

    #[test]
    fn the_initial_memory_is_read_from_the_modules_memory_sections() {
        // A core module whose memory section defines one memory of 3 pages, then one
        // of 2 pages of 1 byte (custom page sizes).
        let header = b"\0asm\x01\0\0\0".to_vec();
        let module = [header.clone(), vec![5, 3, 1, 0, 3]].concat();
        assert_eq!(initial_memory(&module), 3 << 16);
        let tiny_pages = [header.clone(), vec![5, 4, 1, 0x08, 2, 0]].concat();
        assert_eq!(initial_memory(&tiny_pages), 2);
        // Bytes that are not WebAssembly, or stop early, count as far as they parse.
        assert_eq!(initial_memory(b"not wasm at all"), 0);
        assert_eq!(initial_memory(&module[..module.len() - 1]), 0);
        assert_eq!(
            initial_memory(&[module.clone(), vec![0xff, 0xff]].concat()),
            3 << 16
        );
    }

    #[test]
    fn a_grant_below_the_initial_memory_is_refused_with_what_to_grant() {
        let grants = |memory_mib| Grants {
            memory_mib,
            ..Grants::default()
        };
        assert_eq!(memory_refusal(1 << 20, &grants(1)), None);
        assert_eq!(
            memory_refusal((1 << 20) + 1, &grants(1)).unwrap(),
            "the component starts with 1024 KiB of linear memory, more than its memory grant of 1 MiB, so no instance of it could start: grant `memory_mib = 2` or more"
        );
        let max = crate::sandbox::engine::MAX_PLUGIN_MEMORY as u64;
        let refusal = memory_refusal(max + 1, &grants(16)).unwrap();
        assert!(
            refusal.ends_with(&format!(
                "this host grants at most {} MiB, so it cannot run here",
                max >> 20
            )),
            "{refusal}"
        );
    }

    #[test]
    fn refusals_name_the_import_and_the_grant() {
        let inspection = Inspection {
            imports: vec![
                "tenon:plugin/kv@0.1.0".into(),
                "tenon:plugin/log@0.1.0".into(),
            ],
            exports: vec!["tenon:plugin/transformer@0.1.0".into()],
            initial_memory: 0,
        };
        let refusals = inspection.refusals(Kind::Transform, &Grants::default());
        assert_eq!(
            refusals,
            [ImportRefusal {
                import: "tenon:plugin/kv@0.1.0".into(),
                missing_grant: Some("kv"),
                reason: "the component imports `tenon:plugin/kv@0.1.0`, which needs grant `kv`; its manifest does not grant it".into(),
            }]
        );
        let granted = Grants {
            kv: true,
            secrets: vec!["x".into()],
            ..Grants::default()
        };
        assert!(inspection.refusals(Kind::Transform, &granted).is_empty());
        assert_eq!(
            inspection.unused_grants(Kind::Transform, &granted),
            ["secrets"]
        );
        assert_eq!(inspection.missing_export(Kind::Transform), None);
        assert!(inspection.missing_export(Kind::Sink).is_some());
    }
}
