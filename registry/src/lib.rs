//! Plugin packages for Tenon.
//!
//! - The plugin manifest (`plugin.toml`): what a plugin is, which world it implements,
//!   its configuration defaults and the capabilities it asks for.
//! - [`version_digest`]: the one digest over a manifest and its component that names
//!   a plugin version everywhere.
//! - [`package`]: one file holding a version (an OCI image layout in a tar, the Wasm
//!   OCI artifact layout), what `tenon plugin pack` writes and a registry serves.
//! - [`signing`]: ed25519 publisher keys and the signature of a version (`plugin.sig`).
//! - [`trust`]: the trust policy (`[trust]` of `tenon.toml`): which publishers' keys
//!   may sign which plugin names, revocations, whether signatures are required.
//! - `oci` (feature `oci`): publishing packages to and installing them from OCI
//!   registries.
//!
//! **Architecture invariant:** this crate knows nothing of wasmtime or of the host's
//! runtime: it describes packages, and the host decides what to link from it.

mod capabilities;
#[cfg(feature = "oci")]
pub mod oci;
pub mod package;
pub mod signing;
pub mod trust;

pub use capabilities::{CAPABILITIES, Capability, capability, capability_of, never};
pub use package::{Package, PackageError};
pub use signing::{PublicKey, SIGNATURE_FILE, SecretKey, SignatureFile};
pub use trust::{Signer, TrustError, TrustPolicy};

/// The digest of a plugin version: its manifest and its component together,
/// `sha256:<hex>` of `tenon-plugin-version\0`, the manifest's sha256 and the
/// component's sha256. A change to either file is a new version. It names the version
/// in trails, status, the audit log, the archive, and it is what a signature signs.
pub fn version_digest(manifest: &[u8], component: &[u8]) -> String {
    version_digests(manifest, component).version
}

/// A version's two digests, from one pass over its component: the version's
/// ([`version_digest`]) and the component's own `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDigests {
    /// The version: manifest and component ([`version_digest`]).
    pub version: String,
    /// The component alone ([`sha256`] of its bytes).
    pub component: String,
}

/// The [`VersionDigests`] of a manifest and its component; the component, the large
/// file, is hashed once.
pub fn version_digests(manifest: &[u8], component: &[u8]) -> VersionDigests {
    use sha2::{Digest, Sha256};
    let component = Sha256::digest(component);
    let mut hasher = Sha256::new();
    hasher.update(b"tenon-plugin-version\0");
    hasher.update(Sha256::digest(manifest));
    hasher.update(component);
    VersionDigests {
        version: format!("sha256:{}", hex::encode(hasher.finalize())),
        component: format!("sha256:{}", hex::encode(component)),
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
use serde::{Deserialize, Serialize};
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
    /// The component file: a plain file name in the plugin's directory (no
    /// directories, no `..`), e.g. `"cpq_source.wasm"`.
    pub component: PathBuf,
    /// The component's digest, e.g. `"sha256:3f5a..."` (as `tenon plugin audit`
    /// prints it). When given, the manifest is loaded only with exactly that
    /// component: a deploy that writes the two files one after the other, in either
    /// order, never runs one with the other's partner. Recommended for every plugin
    /// that is hot-swapped.
    #[serde(default)]
    pub component_digest: Option<String>,
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
    /// The canonical models it reads and writes, each `Kind@major`. A flow in which a
    /// plugin writes a kind at a version the next one reads at another is refused.
    #[serde(default)]
    pub models: Models,
}

/// `[models]` of a manifest:
///
/// ```toml
/// [models]
/// reads = ["QuoteApproved@1"]
/// writes = ["OrderAccepted@1"]
/// ```
///
/// Only what is declared is checked: a kind of a plugin's own, or a plugin that
/// declares nothing, goes unchecked. Versions are majors: additive changes keep a
/// model's major (a reader of 1 reads every 1.x), a removal takes the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// What it takes in.
    #[serde(default)]
    pub reads: Vec<ModelRef>,
    /// What it puts out.
    #[serde(default)]
    pub writes: Vec<ModelRef>,
}

/// A canonical model at a major version, written `Kind@major`, e.g. `OrderAccepted@1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ModelRef {
    /// The event kind, e.g. `OrderAccepted`.
    pub kind: String,
    /// The model's major version.
    pub major: u32,
}

impl TryFrom<String> for ModelRef {
    type Error = String;

    fn try_from(text: String) -> Result<ModelRef, String> {
        let (kind, major) = text
            .split_once('@')
            .ok_or_else(|| format!("`{text}` is not `Kind@major` (e.g. `OrderAccepted@1`)"))?;
        let kind_ok = !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        let major = major
            .parse::<u32>()
            .ok()
            .filter(|_| kind_ok)
            .ok_or_else(|| format!("`{text}` is not `Kind@major` (e.g. `OrderAccepted@1`)"))?;
        Ok(ModelRef {
            kind: kind.to_owned(),
            major,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.kind, self.major)
    }
}

impl Models {
    /// Why a plugin that writes with these models may not feed one that reads with
    /// `next` (each named by `writer` and `reader`): the first kind `next` reads at
    /// other majors only. `None` when they agree, or either side is silent on a kind.
    pub fn mismatch(&self, next: &Models, writer: &str, reader: &str) -> Option<String> {
        self.writes.iter().find_map(|w| {
            let read: Vec<&ModelRef> = next.reads.iter().filter(|r| r.kind == w.kind).collect();
            (!read.is_empty() && !read.iter().any(|r| r.major == w.major)).then(|| {
                let read: Vec<String> = read.iter().map(ToString::to_string).collect();
                format!(
                    "`{writer}` writes {w}, but `{reader}` reads {}",
                    read.join(", ")
                )
            })
        })
    }
}

/// Memory a plugin gets when its manifest names no limit, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// Time a call gets when the manifest names no limit, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Largest output of a call (messages or receipt) when the manifest names no limit.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 4 << 20;
/// Largest HTTP response body a sink may read when the manifest names no limit.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// Key-value quota when the manifest grants `kv` without naming one.
pub const DEFAULT_KV_QUOTA_BYTES: u64 = 16 << 20;
/// Largest HTTP request body a sink may send when the manifest names no limit.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 4 << 20;

/// Capabilities and limits a plugin asks for, in its manifest's `[grants]` table.
/// Anything not asked for is denied: an interface not granted is not even linked.
///
/// ```toml
/// [grants]
/// http = ["https://*.example.com", "http://127.0.0.1:8000"]  # sinks only
/// kv = true                      # transforms and sinks only
/// kv_quota_bytes = 1048576
/// config = ["url", "company"]    # config keys it reads besides its [config] defaults
/// secrets = ["erp_token"]        # secrets it needs, by name
/// optional_secrets = ["api_key"] # secrets it can do without
/// memory_mib = 64
/// timeout_ms = 5000
/// max_output_bytes = 4194304
/// max_response_bytes = 4194304
/// max_request_bytes = 4194304
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Outbound HTTP destinations as `scheme://host[:port]` patterns, where `*` stands
    /// for any run of characters, e.g. `["https://erp.example.com", "http://127.0.0.1:*"]`.
    /// Only sinks may reach the network. Loopback, private, link-local and cloud
    /// metadata addresses are refused, whatever a host name resolves to, unless a
    /// pattern names the address itself (`http://127.0.0.1:*`, `http://10.0.0.7:8000`)
    /// or `localhost`.
    #[serde(default)]
    pub http: Vec<String>,
    /// Key-value storage in the plugin's own namespace, e.g. `true`. Off by default.
    #[serde(default)]
    pub kv: bool,
    /// Most bytes (keys and values) the plugin may keep in key-value storage, e.g.
    /// `1048576`; default 16 MiB.
    #[serde(default = "default_kv_quota")]
    pub kv_quota_bytes: u64,
    /// Config keys the plugin reads beyond those its `[config]` table gives defaults
    /// for, e.g. `["url"]`. The operator may set only keys the plugin reads.
    #[serde(default)]
    pub config: Vec<String>,
    /// Secrets the plugin needs, by name, e.g. `["erp_token"]`. The operator maps
    /// each to one of the config's `[secrets]` (`[plugins.<name>] secrets = {
    /// erp_token = "erp_de_token" }`); a plugin whose needed secret is not mapped is
    /// refused at load. A manifest never holds a secret's value.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Secrets the plugin can do without, by name, e.g. `["api_key"]` for a
    /// generic sink whose authentication is optional: mapped ones are provided,
    /// others read as not provided.
    #[serde(default)]
    pub optional_secrets: Vec<String>,
    /// Most linear memory, in MiB, e.g. `64` (the default).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Longest a call may run, in milliseconds, e.g. `5000` (the default); enforced
    /// by an epoch deadline inside guest code and a timer around host calls.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Largest output of one call in bytes (all output messages, or a sink's
    /// receipt), e.g. `4194304` (the default).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Largest HTTP response body a sink may read, in bytes, e.g. `4194304` (the
    /// default).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: u64,
    /// Largest HTTP request body a sink may send, in bytes, e.g. `4194304` (the
    /// default).
    #[serde(default = "default_max_request")]
    pub max_request_bytes: u64,
}

fn default_kv_quota() -> u64 {
    DEFAULT_KV_QUOTA_BYTES
}
fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}
fn default_max_response() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_max_request() -> u64 {
    DEFAULT_MAX_REQUEST_BYTES
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            http: Vec::new(),
            kv: false,
            kv_quota_bytes: DEFAULT_KV_QUOTA_BYTES,
            config: Vec::new(),
            secrets: Vec::new(),
            optional_secrets: Vec::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// What an operator's `[plugins.<name>.grants]` may say: each field narrows the
/// manifest's grant of the same name; a field left out keeps the manifest's.
///
/// ```toml
/// [plugins.erp-sink.grants]
/// http = ["http://127.0.0.1:*"]
/// timeout_ms = 10000
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrowing {
    /// Outbound HTTP patterns, each covered by one of the manifest's.
    pub http: Option<Vec<String>>,
    /// `false` withdraws key-value storage.
    pub kv: Option<bool>,
    /// A smaller key-value quota.
    pub kv_quota_bytes: Option<u64>,
    /// A subset of the manifest's secrets (needed and optional): the others are
    /// withdrawn.
    pub secrets: Option<Vec<String>>,
    /// A smaller memory limit, in MiB.
    pub memory_mib: Option<u32>,
    /// A shorter time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// A smaller output cap, in bytes.
    pub max_output_bytes: Option<u64>,
    /// A smaller HTTP response cap, in bytes.
    pub max_response_bytes: Option<u64>,
    /// A smaller HTTP request cap, in bytes.
    pub max_request_bytes: Option<u64>,
}

impl Grants {
    /// Narrow these grants as the operator says. Whatever the operator asks for must
    /// be within these grants: an operator can narrow, never widen.
    pub fn narrow(&self, operator: &Narrowing) -> Result<Grants, ManifestError> {
        let mut out = self.clone();
        if let Some(http) = &operator.http {
            for pattern in http {
                if !self.http.iter().any(|granted| glob_match(granted, pattern)) {
                    return Err(ManifestError::Widened {
                        grant: "http",
                        asked: pattern.clone(),
                    });
                }
            }
            out.http = http.clone();
        }
        if let Some(secrets) = &operator.secrets {
            let known = |s: &String| self.secrets.contains(s) || self.optional_secrets.contains(s);
            if let Some(extra) = secrets.iter().find(|s| !known(s)) {
                return Err(ManifestError::Widened {
                    grant: "secrets",
                    asked: extra.clone(),
                });
            }
            out.secrets.retain(|s| secrets.contains(s));
            out.optional_secrets.retain(|s| secrets.contains(s));
        }
        if let Some(kv) = operator.kv {
            if kv && !self.kv {
                return Err(ManifestError::Widened {
                    grant: "kv",
                    asked: "true".into(),
                });
            }
            out.kv = kv;
        }
        fn lower<T: PartialOrd + Copy + fmt::Display>(
            grant: &'static str,
            manifest: T,
            operator: Option<T>,
        ) -> Result<T, ManifestError> {
            match operator {
                Some(asked) if asked > manifest => Err(ManifestError::Widened {
                    grant,
                    asked: asked.to_string(),
                }),
                Some(asked) => Ok(asked),
                None => Ok(manifest),
            }
        }
        out.kv_quota_bytes = lower(
            "kv_quota_bytes",
            self.kv_quota_bytes,
            operator.kv_quota_bytes,
        )?;
        out.memory_mib = lower("memory_mib", self.memory_mib, operator.memory_mib)?;
        out.timeout_ms = lower("timeout_ms", self.timeout_ms, operator.timeout_ms)?;
        out.max_output_bytes = lower(
            "max_output_bytes",
            self.max_output_bytes,
            operator.max_output_bytes,
        )?;
        out.max_response_bytes = lower(
            "max_response_bytes",
            self.max_response_bytes,
            operator.max_response_bytes,
        )?;
        out.max_request_bytes = lower(
            "max_request_bytes",
            self.max_request_bytes,
            operator.max_request_bytes,
        )?;
        Ok(out)
    }

    /// Every secret the plugin may read: those it needs, then those it can do without.
    pub fn all_secrets(&self) -> impl Iterator<Item = &String> {
        self.secrets.iter().chain(&self.optional_secrets)
    }

    /// How these grants go beyond `live`'s: one line per widening (an origin no live
    /// pattern covers, a secret, key-value storage, a larger limit); empty when they
    /// are equal or narrower. A new version with wider grants waits for approval.
    pub fn widening(&self, live: &Grants) -> Vec<String> {
        let mut wider = Vec::new();
        let live_named = live.named_origins();
        for pattern in &self.http {
            let covered = live
                .http
                .iter()
                .any(|l| glob_match(&with_default_port(l), &with_default_port(pattern)));
            // A pattern naming a host literally opens that address even when it is
            // loopback, private or metadata: a live wildcard does not cover that.
            let named = Grants {
                http: vec![pattern.clone()],
                ..Grants::default()
            }
            .named_origins();
            let new_exemption = named.iter().filter(|n| n.is_address()).any(|n| {
                !live_named.iter().any(|l| {
                    l.host == n.host
                        && l.scheme.eq_ignore_ascii_case(&n.scheme)
                        && (l.port.is_none() || l.port == n.port)
                })
            });
            if !covered {
                wider.push(format!("http: `{pattern}`"));
            } else if new_exemption {
                wider.push(format!("http: `{pattern}` (names its host literally)"));
            }
        }
        let live_secrets: Vec<&String> = live.all_secrets().collect();
        for secret in self.all_secrets().filter(|s| !live_secrets.contains(s)) {
            wider.push(format!("secret `{secret}`"));
        }
        if self.kv && !live.kv {
            wider.push("kv".into());
        }
        let limits = [
            ("kv_quota_bytes", self.kv_quota_bytes, live.kv_quota_bytes),
            (
                "memory_mib",
                u64::from(self.memory_mib),
                u64::from(live.memory_mib),
            ),
            ("timeout_ms", self.timeout_ms, live.timeout_ms),
            (
                "max_output_bytes",
                self.max_output_bytes,
                live.max_output_bytes,
            ),
            (
                "max_response_bytes",
                self.max_response_bytes,
                live.max_response_bytes,
            ),
            (
                "max_request_bytes",
                self.max_request_bytes,
                live.max_request_bytes,
            ),
        ];
        for (name, new, old) in limits {
            if new > old && (name != "kv_quota_bytes" || self.kv) {
                wider.push(format!("{name}: {old} -> {new}"));
            }
        }
        wider
    }

    /// Whether an outbound request to `origin` (`scheme://host:port`, port always
    /// stated) is granted. A pattern without a port means the scheme's default port,
    /// unless it ends in `*`.
    pub fn allows_http(&self, origin: &str) -> bool {
        self.http
            .iter()
            .any(|pattern| glob_match(&with_default_port(pattern), origin))
    }

    /// The origins whose host the HTTP patterns name literally (no wildcard in the
    /// host): the only way to a non-public destination, and only to that scheme and
    /// port.
    pub fn named_origins(&self) -> Vec<NamedOrigin> {
        self.http
            .iter()
            .filter_map(|pattern| {
                let (scheme, rest) = pattern.split_once("://")?;
                let (host, port) = match rest.strip_prefix('[') {
                    Some(v6) => {
                        let (host, after) = v6.split_once(']')?;
                        (host, after.strip_prefix(':'))
                    }
                    None => match rest.split_once(':') {
                        Some((host, port)) => (host, Some(port)),
                        None => (rest, None),
                    },
                };
                if host.is_empty() || host.contains('*') {
                    return None;
                }
                let scheme = scheme.to_ascii_lowercase();
                let port = match port {
                    Some("*") => None,
                    Some(port) => Some(port.parse().ok()?),
                    None => Some(if scheme == "https" { 443 } else { 80 }),
                };
                Some(NamedOrigin {
                    scheme,
                    host: host.to_ascii_lowercase(),
                    port,
                })
            })
            .collect()
    }
}

/// An origin an HTTP grant names literally: `http://127.0.0.1:8000`,
/// `http://localhost:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedOrigin {
    /// `http` or `https`.
    pub scheme: String,
    /// The host as written, lower-case: an IP address or a name such as `localhost`.
    pub host: String,
    /// The port; `None` when the pattern's port is `*`.
    pub port: Option<u16>,
}

impl NamedOrigin {
    /// Whether the host is an address (an IP literal, or `localhost`): the only named
    /// hosts that open a special (loopback, private, metadata) address.
    pub fn is_address(&self) -> bool {
        self.host == "localhost" || self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// Whether a request with this scheme and port is to this origin's scheme and port.
    pub fn matches(&self, scheme: &str, port: u16) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme) && self.port.is_none_or(|p| p == port)
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
    /// Answers synchronous requests on `/v1/apis/<name>` (world `api`).
    Api,
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
            Kind::Api => "api",
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
    /// The operator asked for more than the manifest grants.
    #[error(
        "grant `{grant}` = `{asked}` is wider than the plugin's manifest allows: an operator can narrow grants, never widen them"
    )]
    Widened {
        /// The grant, e.g. `"http"`.
        grant: &'static str,
        /// What the operator asked for.
        asked: String,
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
        let plain = {
            let mut parts = self.component.components();
            matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            )
        };
        if !plain {
            return Err(field(
                "component",
                format!(
                    "`{}` must be a file name in the plugin's directory (no directories, no `..`, not absolute)",
                    self.component.display()
                ),
            ));
        }
        // The directory's own files: a component by one of these names would be
        // written over by (or write over) the manifest or the signature.
        if [MANIFEST_FILE, SIGNATURE_FILE]
            .iter()
            .any(|reserved| self.component.as_os_str() == *reserved)
        {
            return Err(field(
                "component",
                format!(
                    "`{}` is the name of the plugin directory's own {} file: name the component `<name>.wasm`",
                    self.component.display(),
                    match self.component.as_os_str() == MANIFEST_FILE {
                        true => "manifest",
                        false => "signature",
                    }
                ),
            ));
        }
        if let Some(digest) = &self.component_digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field(
                    "component_digest",
                    format!("`{digest}` is not `sha256:` and 64 hex digits"),
                ));
            }
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
        // A grant the plugin's kind may not have (the capability table says which).
        if let Some(c) = CAPABILITIES
            .iter()
            .find(|c| c.gated && c.granted(&self.grants) && !c.allowed_for(self.kind))
        {
            let field_name = match c.name {
                "http" => "grants.http",
                "kv" => "grants.kv",
                _ => "grants",
            };
            return Err(field(
                field_name,
                format!(
                    "a {} plugin cannot have it: {}",
                    self.kind, c.not_for_others
                ),
            ));
        }
        let limits = [
            ("grants.memory_mib", u64::from(self.grants.memory_mib)),
            ("grants.timeout_ms", self.grants.timeout_ms),
            ("grants.max_output_bytes", self.grants.max_output_bytes),
            ("grants.max_response_bytes", self.grants.max_response_bytes),
            ("grants.max_request_bytes", self.grants.max_request_bytes),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(field(name, "must be above 0".into()));
        }
        for name in self.grants.config.iter().chain(self.grants.all_secrets()) {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
                return Err(field(
                    "grants",
                    format!("`{name}` is not a config key or secret name"),
                ));
            }
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
            err.to_string().ends_with(
                "field `grants.http`: a transform plugin cannot have it: only sink and API plugins reach the network"
            ),
            "{err}"
        );
    }

    #[test]
    fn operators_narrow_but_never_widen() {
        let m = parse(SINK).unwrap();
        let narrow = Narrowing {
            http: Some(vec!["http://127.0.0.1:*".into()]),
            timeout_ms: Some(100),
            ..Narrowing::default()
        };
        let narrowed = m.grants.narrow(&narrow).unwrap();
        assert_eq!(narrowed.http, vec!["http://127.0.0.1:*".to_owned()]);
        assert_eq!(narrowed.timeout_ms, 100);
        assert_eq!(narrowed.memory_mib, DEFAULT_MEMORY_MIB);
        let wide = Narrowing {
            http: Some(vec!["https://*".into()]),
            ..Narrowing::default()
        };
        assert_eq!(
            m.grants.narrow(&wide).unwrap_err().to_string(),
            "grant `http` = `https://*` is wider than the plugin's manifest allows: an operator can narrow grants, never widen them"
        );
        let longer = Narrowing {
            timeout_ms: Some(DEFAULT_TIMEOUT_MS + 1),
            ..Narrowing::default()
        };
        assert!(m.grants.narrow(&longer).is_err());
        let kv = Narrowing {
            kv: Some(true),
            ..Narrowing::default()
        };
        assert!(m.grants.narrow(&kv).is_err());
        let secret = Narrowing {
            secrets: Some(vec!["root".into()]),
            ..Narrowing::default()
        };
        assert!(m.grants.narrow(&secret).is_err());
    }

    #[test]
    fn named_origins_keep_scheme_and_port() {
        let grants = Grants {
            http: vec![
                "http://127.0.0.1:*".into(),
                "https://*.example.com".into(),
                "http://[::1]:8080".into(),
                "http://LocalHost".into(),
                "https://10.0.0.7".into(),
            ],
            ..Grants::default()
        };
        let named: Vec<(String, String, Option<u16>)> = grants
            .named_origins()
            .into_iter()
            .map(|o| (o.scheme, o.host, o.port))
            .collect();
        let o = |s: &str, h: &str, p: Option<u16>| (s.to_owned(), h.to_owned(), p);
        assert_eq!(
            named,
            [
                o("http", "127.0.0.1", None),
                o("http", "::1", Some(8080)),
                o("http", "localhost", Some(80)),
                o("https", "10.0.0.7", Some(443)),
            ]
        );
        let localhost = &grants.named_origins()[2];
        assert!(localhost.matches("http", 80));
        assert!(!localhost.matches("http", 8081), "another port");
        assert!(!localhost.matches("https", 80), "another scheme");
    }

    #[test]
    fn a_component_is_a_plain_file_name() {
        for bad in [
            "../other/x.wasm",
            "/etc/x.wasm",
            "sub/x.wasm",
            "..",
            "",
            "plugin.toml",
            "plugin.sig",
            "./plugin.sig",
        ] {
            let err = parse(&SINK.replace("http_sink.wasm", bad)).unwrap_err();
            assert!(
                err.to_string().contains("field `component`"),
                "{bad}: {err}"
            );
        }
        let digest = format!("sha256:{}", "ab".repeat(32));
        let bound = parse(&SINK.replace(
            "component = \"http_sink.wasm\"",
            &format!("component = \"http_sink.wasm\"\ncomponent_digest = \"{digest}\""),
        ))
        .unwrap();
        assert_eq!(bound.component_digest, Some(digest));
        let err = parse(&SINK.replace(
            "component = \"http_sink.wasm\"",
            "component = \"http_sink.wasm\"\ncomponent_digest = \"md5:00\"",
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("field `component_digest`"),
            "{err}"
        );
    }

    #[test]
    fn widening_names_each_grant_beyond_the_live_one() {
        let live = Grants {
            http: vec![
                "https://erp.example.com".into(),
                "http://127.0.0.1:*".into(),
            ],
            secrets: vec!["token".into()],
            ..Grants::default()
        };
        assert!(live.widening(&live).is_empty(), "equal is not wider");
        let narrower = Grants {
            http: vec!["http://127.0.0.1:8080".into()],
            timeout_ms: 100,
            ..live.clone()
        };
        assert!(
            narrower.widening(&live).is_empty(),
            "{:?}",
            narrower.widening(&live)
        );
        let wild = Grants {
            http: vec!["http://*".into()],
            ..Grants::default()
        };
        for exempt in [
            "http://169.254.169.254",
            "http://localhost:*",
            "http://10.0.0.5:5432",
        ] {
            let named = Grants {
                http: vec![exempt.into()],
                ..Grants::default()
            };
            assert_eq!(
                named.widening(&wild),
                [format!("http: `{exempt}` (names its host literally)")],
                "a wildcard does not reach special addresses; naming one does"
            );
        }
        let local = Grants {
            http: vec!["http://127.0.0.1:*".into()],
            ..Grants::default()
        };
        let one_port = Grants {
            http: vec!["http://127.0.0.1:8000".into()],
            ..Grants::default()
        };
        assert!(one_port.widening(&local).is_empty(), "narrower");
        assert!(!local.widening(&one_port).is_empty(), "wider");
        let by_name = Grants {
            http: vec!["https://erp.example.com".into()],
            ..Grants::default()
        };
        let https_wild = Grants {
            http: vec!["https://*".into()],
            ..Grants::default()
        };
        assert!(
            by_name.widening(&https_wild).is_empty(),
            "a name opens no special address"
        );
        let wider = Grants {
            http: vec![
                "https://erp.example.com:443".into(),
                "https://*.example.com".into(),
            ],
            optional_secrets: vec!["api_key".into()],
            kv: true,
            memory_mib: live.memory_mib * 2,
            ..live.clone()
        };
        assert_eq!(
            wider.widening(&live),
            [
                "http: `https://*.example.com`",
                "secret `api_key`",
                "kv",
                "memory_mib: 64 -> 128",
            ]
        );
    }

    #[test]
    fn narrowing_secrets_covers_optional_ones() {
        let grants = Grants {
            secrets: vec!["token".into()],
            optional_secrets: vec!["api_key".into()],
            ..Grants::default()
        };
        let none = grants
            .narrow(&Narrowing {
                secrets: Some(vec![]),
                ..Narrowing::default()
            })
            .unwrap();
        assert_eq!(none.all_secrets().count(), 0);
        let some = grants
            .narrow(&Narrowing {
                secrets: Some(vec!["api_key".into()]),
                ..Narrowing::default()
            })
            .unwrap();
        assert_eq!(some.optional_secrets, ["api_key"]);
        assert!(some.secrets.is_empty());
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
