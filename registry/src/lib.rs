//! Plugin packages for Tenon.
//!
//! Today this crate holds the plugin manifest (`plugin.toml`): what a plugin is, which
//! world it implements, its configuration defaults and the capabilities it asks for.
//! Signing, the trust policy and the registry store will live here too.
//!
//! **Architecture invariant:** this crate knows nothing of wasmtime or of the host's
//! runtime: it describes packages, and the host decides what to link from it.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The file name of a plugin's manifest inside its directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// A plugin's manifest, as written in `plugin.toml`.
///
/// ```toml
/// name = "http-sink"
/// version = "0.1.0"
/// kind = "sink"
/// world = "tenon:plugin/sink@0.1.0"
/// component = "http_sink.wasm"
/// description = "POST each message as JSON"
///
/// [config]
/// reference_field = "id"
///
/// [grants]
/// http = ["https://*.example.com"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name, e.g. `"cpq-source"`: lower-case letters, digits and dashes.
    pub name: String,
    /// The plugin's version (semver), e.g. `"0.1.0"`.
    pub version: String,
    /// What the plugin does in a flow: `"source"`, `"transform"` or `"sink"`.
    pub kind: Kind,
    /// The WIT world the component implements, with its version, e.g.
    /// `"tenon:plugin/transform@0.1.0"`; it must match `kind`.
    pub world: String,
    /// The component file, relative to the manifest, e.g. `"cpq_source.wasm"`.
    pub component: PathBuf,
    /// One line on what the plugin does, e.g. `"Salesforce CPQ quotes in"`.
    #[serde(default)]
    pub description: Option<String>,
    /// Configuration defaults, e.g. `default_currency = "EUR"`; the operator's flow
    /// config may override them. Values are strings, numbers or booleans.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Capabilities the plugin asks for; anything not asked for is denied.
    #[serde(default)]
    pub grants: Grants,
}

/// Capabilities a plugin asks for (in its manifest) or is given (by the operator).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Outbound HTTP destinations as `scheme://host[:port]` patterns, where `*` stands
    /// for any run of characters, e.g. `["https://erp.example.com", "http://127.0.0.1:*"]`.
    /// Only sinks may reach the network.
    #[serde(default)]
    pub http: Vec<String>,
}

impl Grants {
    /// Narrow these grants to what `operator` asks for. Every operator pattern must be
    /// covered by one of these patterns: an operator can narrow, never widen.
    pub fn narrow(&self, operator: &Grants) -> Result<Grants, ManifestError> {
        for pattern in &operator.http {
            if !self.http.iter().any(|granted| glob_match(granted, pattern)) {
                return Err(ManifestError::Widened {
                    pattern: pattern.clone(),
                });
            }
        }
        Ok(operator.clone())
    }

    /// Whether an outbound request to `origin` (`scheme://host:port`, port always
    /// stated) is granted. A pattern without a port means the scheme's default port,
    /// unless it ends in `*`.
    pub fn allows_http(&self, origin: &str) -> bool {
        self.http
            .iter()
            .any(|pattern| glob_match(&with_default_port(pattern), origin))
    }
}

fn with_default_port(pattern: &str) -> String {
    let (scheme, rest) = pattern.split_once("://").unwrap_or(("", pattern));
    if rest.contains(':') || rest.ends_with('*') {
        return pattern.to_owned();
    }
    let port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    format!("{pattern}:{port}")
}

/// `*` in `pattern` matches any run of characters (ASCII case-insensitive).
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A configuration value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// `key = "text"`
    Text(String),
    /// `key = 42`
    Integer(i64),
    /// `key = true`
    Bool(bool),
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::Text(s) => f.write_str(s),
            ConfigValue::Integer(i) => write!(f, "{i}"),
            ConfigValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// What a plugin does in a flow; each kind has its own WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Turns inbound payloads into canonical messages (world `source`).
    Source,
    /// Maps, validates or routes messages (world `transform`).
    Transform,
    /// Delivers messages to a target system (world `sink`).
    Sink,
}

impl Kind {
    /// The versioned WIT world of this kind.
    pub fn world(self) -> String {
        format!("tenon:plugin/{self}@{WIT_VERSION}")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        })
    }
}

/// A manifest that cannot be read or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A field's value is not acceptable.
    #[error("{path}: field `{field}`: {message}")]
    Field {
        /// The manifest path.
        path: PathBuf,
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The operator asked for a grant the manifest does not have.
    #[error(
        "grant `{pattern}` is wider than the plugin's manifest allows: an operator can narrow grants, never widen them"
    )]
    Widened {
        /// The operator's pattern.
        pattern: String,
    },
}

impl Manifest {
    /// Read and check `dir/plugin.toml` (or a manifest file given directly).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let path = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        Manifest::parse(&path, &text)
    }

    /// Parse and check a manifest's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ManifestError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        manifest.check(path)?;
        Ok(manifest)
    }

    fn check(&self, path: &Path) -> Result<(), ManifestError> {
        let field = |field, message: String| ManifestError::Field {
            path: path.to_owned(),
            field,
            message,
        };
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(field(
                "name",
                format!(
                    "`{}` must be lower-case letters, digits and dashes",
                    self.name
                ),
            ));
        }
        if self.version.split('.').count() != 3
            || !self
                .version
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(field(
                "version",
                format!("`{}` is not a semver version like 1.2.3", self.version),
            ));
        }
        let expected = self.kind.world();
        if self.world != expected {
            return Err(field(
                "world",
                format!(
                    "`{}` does not match kind `{}`: this host implements `{expected}`",
                    self.world, self.kind
                ),
            ));
        }
        if self.kind != Kind::Sink && !self.grants.http.is_empty() {
            return Err(field(
                "grants.http",
                format!(
                    "a {} plugin cannot reach the network; only sinks can",
                    self.kind
                ),
            ));
        }
        for pattern in &self.grants.http {
            let rest = pattern
                .strip_prefix("http://")
                .or_else(|| pattern.strip_prefix("https://"));
            let ok = rest.is_some_and(|r| !r.is_empty() && !r.contains('/'));
            if !ok {
                return Err(field(
                    "grants.http",
                    format!("`{pattern}` is not a `scheme://host[:port]` pattern (no path)"),
                ));
            }
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("p/plugin.toml"), text)
    }

    const SINK: &str = r#"
name = "http-sink"
version = "0.1.0"
kind = "sink"
world = "tenon:plugin/sink@0.1.0"
component = "http_sink.wasm"
[grants]
http = ["http://*", "https://*.example.com"]
"#;

    #[test]
    fn a_good_manifest_parses() {
        let m = parse(SINK).unwrap();
        assert_eq!(m.kind, Kind::Sink);
        assert!(m.grants.allows_http("https://erp.example.com:443"));
        assert!(m.grants.allows_http("http://127.0.0.1:8080"));
        assert!(!m.grants.allows_http("https://evil.com:443"));
        assert!(!m.grants.allows_http("https://erp.example.com:8443"));
    }

    #[test]
    fn unknown_fields_name_line_and_field() {
        let err = parse("name = \"a\"\nversion = \"0.1.0\"\ncolour = \"red\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("p/plugin.toml:3:1: unknown field `colour`"),
            "{text}"
        );
    }

    #[test]
    fn world_must_match_kind() {
        let err = parse(&SINK.replace("sink@0.1.0", "transform@0.1.0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p/plugin.toml: field `world`: `tenon:plugin/transform@0.1.0` does not match kind `sink`: this host implements `tenon:plugin/sink@0.1.0`"
        );
    }

    #[test]
    fn only_sinks_reach_the_network() {
        let err = parse(
            &SINK
                .replace("kind = \"sink\"", "kind = \"transform\"")
                .replace("sink@", "transform@"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("a transform plugin cannot reach the network"),
            "{err}"
        );
    }

    #[test]
    fn operators_narrow_but_never_widen() {
        let m = parse(SINK).unwrap();
        let narrow = Grants {
            http: vec!["http://127.0.0.1:*".into()],
        };
        assert_eq!(m.grants.narrow(&narrow).unwrap(), narrow);
        let wide = Grants {
            http: vec!["https://*".into()],
        };
        assert!(matches!(
            m.grants.narrow(&wide),
            Err(ManifestError::Widened { .. })
        ));
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match(
            "https://*.example.com",
            "https://a.b.example.com"
        ));
        assert!(!glob_match("https://*.example.com", "https://example.org"));
        assert!(glob_match("http://127.0.0.1:*", "http://127.0.0.1:9000"));
        assert!(glob_match("*", ""));
    }
}
