//! The flow config, `tenon.toml`: the server, the plugin instances, the flows.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"      # where partner systems post (/v1/sources/*)
//! admin_listen = "127.0.0.1:8081"  # the admin API: keep it on loopback
//! plugin_roots = ["candidates"]  # where candidate versions may be promoted from
//! max_body_bytes = 1048576       # larger request bodies get 413
//! idempotency_retention_secs = 86400  # how long an Idempotency-Key is remembered
//! retention_secs = 604800        # how long outcomes and events are kept
//! sweep_interval_secs = 60       # how often expired records are removed
//! resident_mib = 16              # MiB a plugin slot keeps resident between instances (speed vs RSS)
//!
//! [plugins.cpq-source]           # a plugin instance, named for flows to use
//! path = "plugins/cpq-source"    # its directory (plugin.toml + component), relative to this file
//! plugin = "cpq-source"          # optional: only this plugin (manifest `name`) runs in it
//! config = { default_currency = "EUR" }
//! digest = "sha256:..."          # optional: run this version only (as `tenon status` shows it)
//!
//! [plugins.erp-sink]
//! path = "plugins/http-sink"
//! config = { url = "http://127.0.0.1:9000/orders" }
//! # Narrows the manifest's grants (never widens them); see tenon_registry::Narrowing.
//! grants = { http = ["http://127.0.0.1:*"], timeout_ms = 10000 }
//!
//! [plugins.erp-de]
//! path = "plugins/http-sink"
//! secrets = { authorization = "erp_de_token" }   # the plugin's name -> the [secrets] one
//!
//! [plugins.stripe]
//! path = "plugins/stripe-source"
//! secrets = ["stripe_webhook_secret"]            # the same name on both sides
//! auth = "signature"             # the source checks the sender's signature: no API key
//!
//! [secrets]                      # secrets plugins may be granted, by name
//! erp_token = { env = "TENON_ERP_TOKEN" }        # from an environment variable
//! sap_password = { file = "/run/secrets/sap" }   # from a file (trailing newline dropped)
//!
//! [trust]                        # signed plugins (see tenon_registry::trust)
//! require_signatures = true      # every plugin must be signed by a key trusted for its name
//! revoked_keys = ["5b1e0c7d9a3f2e41"]            # key ids (or keys) whose signatures are refused (needs require_signatures)
//! revoked_digests = ["sha256:..."]               # versions refused whoever signed them
//!
//! [[trust.publishers]]
//! name = "acme"
//! key = "ed25519:8R0m..."        # as `tenon plugin keygen` prints it
//! prefixes = ["acme-"]           # the plugin names (manifest `name`) it may sign; "*": any
//!
//! [flows.erp-de]                 # a flow fed by the events other flows emit
//! subscribe = ["OrderAccepted"]  # the canonical kinds it takes
//! when = { tenon-entity = "DE01" }  # headers they must carry (set by a routing step)
//! sink = "erp-sink"              # without a sink, a flow's last step emits events
//!
//! [flows.invoices]
//! source = "stripe"
//! sink = "finance"
//! emit = ["InvoicePosted"]       # also published where it is made (here: at ingress)
//!
//! [flows.quote-to-order]
//! source = "cpq-source"          # POST /v1/sources/cpq-source feeds this flow
//! steps = ["quote-to-order"]     # transforms, in order
//! sink = "erp-sink"
//! max_attempts = 5               # per stage, for retryable failures and traps
//! backoff_ms = 200               # first retry after ~200 ms, doubling, ±20% jitter
//! max_backoff_ms = 30000
//! retry.erp-sink = { max_attempts = 10, backoff_ms = 1000 }   # one stage differs
//! ```
//!
//! Errors name the file, the line and column, and the field.

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tenon_registry::{ConfigValue, Narrowing, line_col};

/// Default listen address of ingestion.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default listen address of the admin API.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// Default request body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default time an idempotency key is remembered: a day.
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 24 * 3600;
/// Default attempts per stage.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default concurrent messages per stage.
pub const DEFAULT_CONCURRENCY: u32 = 4;

/// A config error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line; 0 when the error is about the whole file.
    pub line: usize,
    /// 1-based column; 0 when the error is about the whole file.
    pub column: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.path.display(), self.message),
            line => write!(
                f,
                "{}:{line}:{}: {}",
                self.path.display(),
                self.column,
                self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The parsed config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ingress and admin settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where messages are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where traces go.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Plugin instances by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginEntry>,
    /// Flows by name.
    #[serde(default)]
    pub flows: BTreeMap<String, FlowEntry>,
    /// Synchronous APIs by name (`/v1/apis/<name>`).
    #[serde(default)]
    pub apis: BTreeMap<String, ApiEntry>,
    /// Reconciliations of billing with the ERP, by name.
    #[serde(default)]
    pub reconciliations: BTreeMap<String, ReconciliationEntry>,
    /// Drift checks of the customer master against its copies, by name.
    #[serde(default)]
    pub drift: BTreeMap<String, DriftEntry>,
    /// Where secrets come from, by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Whose signed plugins are trusted for which names; whether every plugin must be
    /// signed (see [`tenon_registry::trust`]).
    #[serde(default)]
    pub trust: tenon_registry::TrustPolicy,
    /// Where the file is (set after parsing).
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    text: String,
}

/// `[telemetry]`: traces exported over OTLP/HTTP (protobuf) to a collector. Off
/// (no `otlp_endpoint`) by default; trace context is carried and logged either way.
///
/// ```toml
/// [telemetry]
/// otlp_endpoint = "http://127.0.0.1:4318"   # spans are posted to <endpoint>/v1/traces
/// service_name = "tenon"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (plain `http://`, e.g. a local agent).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of this node's spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

fn default_service_name() -> String {
    "tenon".into()
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, e.g. `"127.0.0.1:8080"`; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest accepted request body in bytes, e.g. `1048576`.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long an `Idempotency-Key` is remembered, in seconds, e.g. `86400`.
    #[serde(default = "default_idempotency_retention")]
    pub idempotency_retention_secs: u64,
    /// How long outcomes and events are kept, in seconds, e.g. `604800` (a week).
    #[serde(default = "default_retention")]
    pub retention_secs: u64,
    /// How often expired records are swept, in seconds, e.g. `60`.
    #[serde(default = "default_sweep_interval")]
    pub sweep_interval_secs: u64,
    /// Where the admin API listens, e.g. `"127.0.0.1:8081"`; port 0 picks a free port.
    /// Keep it on loopback or a management network: it is not for partner systems.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Timeouts, connection caps and rate limits of the listeners.
    #[serde(default)]
    pub limits: Limits,
    /// Directories from which candidate versions may be tried and promoted, relative
    /// to this file, e.g. `["candidates"]`; default: this file's directory. A
    /// candidate outside them (after resolving symlinks) is refused.
    #[serde(default)]
    pub plugin_roots: Vec<PathBuf>,
    /// This node's name among the nodes of a shared store, e.g. `"eu-1"`; default:
    /// the host's name and the process id.
    #[serde(default)]
    pub node: Option<String>,
    /// How much of a plugin instance's linear memory, in MiB, its pooled slot keeps
    /// resident for the next instance, e.g. `16`: the pages an instance dirtied there
    /// are zeroed and kept, not returned to the kernel and faulted in again. A fresh
    /// instance per message runs faster (the `mapping` bench's `fresh_keep_resident_*`
    /// lines), at the price of up to this much resident memory per slot a plugin has
    /// used (the pool has 512). Default: 16 where Linux has `PAGEMAP_SCAN` (6.7 and
    /// later: only dirtied pages are reset), else 2 (the whole range is cleared at every
    /// reset, touched or not). `0` returns everything; at most 512 (the largest memory
    /// a plugin may be granted). Read at start.
    #[serde(default)]
    pub resident_mib: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body_bytes: DEFAULT_MAX_BODY,
            idempotency_retention_secs: default_idempotency_retention(),
            retention_secs: default_retention(),
            sweep_interval_secs: default_sweep_interval(),
            admin_listen: default_admin_listen(),
            plugin_roots: Vec::new(),
            node: None,
            limits: Limits::default(),
            resident_mib: None,
        }
    }
}

/// The largest linear memory, in MiB, any plugin may be granted (the pool reserves
/// this much address space per slot).
pub const MAX_PLUGIN_MEMORY_MIB: usize = 512;

/// `[server.limits]`: what one client, key or source may take of the listeners.
///
/// ```toml
/// [server.limits]
/// header_timeout_ms = 10000        # request headers, and an idle kept-alive connection
/// body_timeout_ms = 30000          # a request body, whole (408 past it)
/// max_connections = 1024           # per listener; more wait to be accepted
/// max_concurrent_ingest = 256      # source calls at once; more get 503 + Retry-After
/// per_key = { per_second = 100, burst = 200 }   # every API key, on both listeners
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest wait for a request's headers, and on an idle kept-alive connection
    /// for the next request's (ms).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Longest time to receive a request's body (ms); past it, `408`.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Connections served at once by each listener; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Source calls at once; more are answered `503` with `Retry-After`.
    #[serde(default = "default_max_concurrent_ingest")]
    pub max_concurrent_ingest: usize,
    /// Requests per API key (each key its own bucket), on both listeners; none: no limit.
    #[serde(default)]
    pub per_key: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout_ms: default_header_timeout(),
            body_timeout_ms: default_body_timeout(),
            max_connections: default_max_connections(),
            max_concurrent_ingest: default_max_concurrent_ingest(),
            per_key: None,
        }
    }
}

fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_concurrent_ingest() -> usize {
    256
}

/// A token bucket: `per_second` on average, up to `burst` at once (default: one
/// second's worth), e.g. `{ per_second = 100, burst = 200 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests allowed at once; default `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rate {
    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second).max(1)
    }
}

/// `[plugins.<name>] outbound`: what the instance may send to the systems it calls,
/// e.g. a cloud ERP's API limits: `{ per_second = 10, burst = 20, concurrency = 4 }`.
/// A `429` or `503` with `Retry-After` pauses the instance until then, whatever
/// these say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Requests per second on average (with `burst`); none: no rate limit.
    #[serde(default)]
    pub per_second: Option<u32>,
    /// Requests at once within the rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests in flight at once; none: no limit.
    #[serde(default)]
    pub concurrency: Option<usize>,
}

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}
fn default_idempotency_retention() -> u64 {
    DEFAULT_IDEMPOTENCY_RETENTION_SECS
}
fn default_retention() -> u64 {
    7 * 24 * 3600
}
fn default_sweep_interval() -> u64 {
    60
}

/// `[store]`: where messages, outcomes, dead letters, events and plugins' key-value
/// data are kept.
///
/// ```toml
/// [store]
/// kind = "nats"                                   # default: "redb"
/// servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
/// replicas = 3
/// prefix = "tenon"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// redb in the data directory: one machine, no server to run (the default).
    #[default]
    Redb,
    /// A NATS JetStream cluster, shared by every node of the deployment.
    Nats(NatsStoreConfig),
}

/// `[store] kind = "nats"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStoreConfig {
    /// Server URLs, e.g. `["nats://127.0.0.1:4222"]`.
    pub servers: Vec<String>,
    /// Replicas of every stream and bucket: 1, or 3 on a cluster of three or more.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The prefix of every stream, bucket and subject (`[A-Za-z0-9_-]+`), so that
    /// deployments can share a cluster; default `tenon`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_replicas() -> usize {
    1
}

fn default_prefix() -> String {
    "tenon".into()
}

/// `[plugins.<name>]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The plugin directory (or its `plugin.toml`), relative to the config file.
    pub path: PathBuf,
    /// The plugin this instance runs, by its manifest's `name`, e.g. `"acme-crm"`:
    /// a version whose manifest names another plugin is refused before anything of it
    /// is compiled, at start and on every load (reload, the watcher, promote,
    /// rollback, a version from another node). It pins the instance's identity: the
    /// trust policy says who may sign a name, this says which name runs here (with
    /// this instance's config, flows and secrets). Without it, a new version must
    /// have the name of the version live (or approved before a restart) in the instance.
    #[serde(default)]
    pub plugin: Option<String>,
    /// Configuration overriding the manifest's defaults.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Grants narrowing the manifest's (never widening them), limits among them:
    /// `grants = { http = ["http://127.0.0.1:*"], timeout_ms = 10000 }`.
    #[serde(default)]
    pub grants: Narrowing,
    /// The secrets this instance may read: which of the config's `[secrets]` each
    /// name the plugin asks for stands for, `secrets = { token = "erp_de_token" }`, or
    /// a list when the names are the same, `secrets = ["stripe_webhook_secret"]`. The
    /// instance sees these and no other; a secret its manifest needs must be here.
    #[serde(default)]
    pub secrets: SecretMap,
    /// Pins the version: only the version with this digest (`tenon status` and
    /// `tenon plugin audit` print it) is loaded, e.g. `"sha256:3f5a..."`; any other
    /// is refused, at start and on every reload.
    #[serde(default)]
    pub digest: Option<String>,
    /// How requests to a source instance are authenticated: `"key"` (the default: an
    /// API key with scope `ingest:<name>` or `ingest:*`) or `"signature"` (the source
    /// plugin checks the sender's signature itself, as Stripe's webhooks are, and
    /// needs no key).
    #[serde(default)]
    pub auth: IngestAuth,
    /// Requests to a source instance (all callers together), a token bucket:
    /// `rate_limit = { per_second = 50, burst = 100 }`; over it, `429`.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
    /// What the instance may send out (see [`Outbound`]).
    #[serde(default)]
    pub outbound: Outbound,
    /// When a source's sender gets its answer: `"durable"` (the default: `202` once
    /// the messages are committed) or `"validated"` (committed, then up to
    /// `ack_deadline_ms` for its flows' steps to run: `201` with what they made, e.g.
    /// the orders, or `422` with every reason; past the deadline `202` as for
    /// `"durable"`).
    #[serde(default)]
    pub ack: Ack,
    /// How long an `ack = "validated"` waits for the steps, in milliseconds (default 5000).
    #[serde(default = "default_deadline")]
    pub ack_deadline_ms: u64,
    /// Keep a transform's instances from one message to the next instead of a fresh
    /// instance per message (default `false`). It saves the instantiation and the
    /// guest's start-up per message, but whatever the guest keeps in its memory (a
    /// cache, a global, a leak) carries over to the next message, of any customer:
    /// for a pure mapping the operator trusts. An instance that trapped, timed out or
    /// hit a limit is never reused. Transforms only; a source, sink or API refuses it.
    #[serde(default)]
    pub reuse_instances: bool,
}

/// `[plugins.<name>] ack`: when a source answers its sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// Once the messages are durable (`202`).
    #[default]
    Durable,
    /// Once they are durable and through their flows' steps (`201` or `422`).
    Validated,
}

/// `[plugins.<name>] auth`: how a source's requests are authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestAuth {
    /// An API key with scope `ingest:<source>` or `ingest:*`.
    #[default]
    Key,
    /// The source plugin verifies a signature over the request itself.
    Signature,
}

/// `[plugins.<name>] secrets`: the plugin's name for each secret -> the `[secrets]`
/// entry it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretMap(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for SecretMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Map(BTreeMap<String, String>),
            Same(Vec<String>),
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a table `{ plugin_name = \"name in [secrets]\" }` or a list of names",
            )
        })? {
            Form::Map(map) => Ok(SecretMap(map)),
            Form::Same(names) => Ok(SecretMap(
                names.into_iter().map(|n| (n.clone(), n)).collect(),
            )),
        }
    }
}

/// `[secrets.<name>]`: where one secret's value comes from; exactly one field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the Tenon process, e.g. `"TENON_ERP_TOKEN"`.
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding the value (one trailing newline dropped), relative to the
    /// config file, e.g. `"/run/secrets/sap"`.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[flows.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEntry {
    /// The source plugin instance; `POST /v1/sources/<source>` feeds the flow. A flow
    /// has a source or subscribes to events, not both.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// Event kinds this flow takes from the other flows, instead of a source: every
    /// message of one of these kinds that another flow emits also enters this flow,
    /// e.g. `subscribe = ["OrderAccepted"]`. A flow emits what its last step makes
    /// when it has no sink, and the kinds its `emit` names; nothing else it makes on
    /// the way reaches subscribers.
    #[serde(default)]
    pub subscribe: Vec<Spanned<String>>,
    /// Headers a subscribed message must carry, e.g. `when = { tenon-entity = "DE01" }`
    /// (set by a routing step): the way to send each message to one of several flows.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// Transform plugin instances, in order.
    #[serde(default)]
    pub steps: Vec<Spanned<String>>,
    /// The sink plugin instance. A flow without one ends with its last step, whose
    /// outputs go to the flows that subscribe to them.
    #[serde(default)]
    pub sink: Option<Spanned<String>>,
    /// Kinds this flow also publishes where they are made, before its end: its
    /// source's messages or a step's outputs, e.g. `emit = ["InvoicePosted"]` on a flow
    /// that delivers invoices to finance, so that a revenue flow takes them too. A
    /// kind a step makes on the way (an order not yet through the gateway) reaches
    /// no subscriber unless named here.
    #[serde(default)]
    pub emit: Vec<Spanned<String>>,
    /// Attempts per stage before a message becomes a dead letter (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Backoff before the first retry in milliseconds, doubling per attempt with ±20%
    /// jitter (default 200).
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// Longest backoff in milliseconds (default 30000).
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
    /// Retry settings of single stages, by plugin instance name, overriding the
    /// flow's: `retry.erp-sink = { max_attempts = 10, backoff_ms = 1000 }`.
    #[serde(default)]
    pub retry: BTreeMap<String, RetrySettings>,
    /// Messages processed at once per stage (default 4).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// For a subscribing flow: a CEL expression a message must satisfy to enter it,
    /// beside `when`, e.g. `filter = 'double(order.total.amount) >= 1000.0'` (see
    /// [`crate::policy`] for what an expression sees).
    #[serde(default)]
    pub filter: Option<Spanned<String>>,
    /// Rules checked on each message before a stage takes it: a CEL expression and
    /// what happens when it holds (`hold` for a person's approval, or `reject`).
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
    /// This flow's deliveries are part of their input's business transaction (every
    /// message derived from one input): when another part of it fails for good (a
    /// rejection or a dead letter, in any flow), what this flow's sink delivered is
    /// undone through its `compensate` export. `"compensate"` does that at once;
    /// `"exception"` makes the failure an exception a person decides first (approve:
    /// try the failed part again; reject: compensate).
    #[serde(default)]
    pub saga: Option<Spanned<SagaPolicy>>,
    /// Run consecutive transform steps, and the flow's sink after them, in one lease
    /// and one commit (default `true`): a message a step forwards to the next step
    /// of this flow, when that step is a transform or the sink with no rule before
    /// it, is taken at once by the same worker, and only what the last transform
    /// makes is queued; how the sink ended the first of them (with its key-value
    /// writes) is committed with the first step's ack (the others go through the
    /// sink's queue, one after another's commit, as hop by hop; with a `saga`, none
    /// once an output of the lease was left queued). Ids are derived and
    /// mappings deterministic, so a crash re-runs them to the same result (the sink
    /// delivers again under the same idempotency key). Per-key order holds as hop by
    /// hop: a fused step claims its message's key in the queue it skips until the
    /// commit (refused while a message of that key waits there or another run holds
    /// it), and what comes there meanwhile waits for the release. A transform that
    /// finishes the message or writes key-value data leaves its input queued for its
    /// own workers (which call it again), a transient failure leaves it waiting for
    /// its retry there. What the flow publishes to a subscribing flow that fuses too
    /// enters it the same way, in the same lease (logged as that flow's accepted
    /// message, so its replay covers it). `false`: every step is a hop, and nothing
    /// enters this flow, or leaves it, within another step's lease.
    #[serde(default = "default_true")]
    pub fuse: bool,
}

/// The kind of the messages a reconciliation publishes, one per mismatch.
pub const RECONCILIATION_EXCEPTION: &str = "ReconciliationException";

/// `[reconciliations.<name>]`: billing documents compared with the ERP's records, by
/// reference, amount and currency; each mismatch is a `ReconciliationException` that
/// enters the flows subscribing to it held for a person (approve: the flow takes it,
/// e.g. to finance; reject: dismissed).
///
/// ```toml
/// [reconciliations.billing-vs-erp]
/// erp = "tryton"                  # a sink instance that reads back records (`records`)
/// billing = ["InvoicePosted", "CreditIssued", "InvoiceVoided"]   # the default
/// every_secs = 86400              # and on demand: `tenon reconcile`
/// window_days = 7                 # the documents dated in the last 7 days (at most
///                                 # what the event log keeps: server.retention_secs)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationEntry {
    /// The sink plugin instance whose `records` export reads the ERP's documents.
    pub erp: Spanned<String>,
    /// The billing kinds compared, from the event log: `InvoicePosted` (reference: the
    /// invoice's id), `CreditIssued` (the credit note's id, its total negative),
    /// `InvoiceVoided` (`<invoice id>/void`, negative).
    #[serde(default = "default_billing_kinds")]
    pub billing: Vec<Spanned<String>>,
    /// Run on its own every this many seconds over the last `window_days`; unset: on
    /// demand only.
    #[serde(default)]
    pub every_secs: Option<u64>,
    /// How many days back a scheduled run looks (by the documents' dates; default 7).
    /// At most what the event log keeps (`server.retention_secs`): billing documents
    /// older than that are gone from it, and the ERP's records of them would all look
    /// unexplained.
    #[serde(default = "default_window_days")]
    pub window_days: u32,
}

/// The kind of the messages a drift check publishes, one per customer that drifted.
pub const MASTER_DATA_DRIFT: &str = "MasterDataDrift";

/// `[drift.<name>]`: the customer master (the latest `CustomerUpserted` of each
/// customer, from the event log) compared with a target's copy (its sink's `records` of
/// kind `account`), field by field (`name`, `country`, `parent`); each customer whose
/// copy differs or is missing is a `MasterDataDrift` for the flows subscribing to it.
///
/// ```toml
/// [drift.cpq-accounts]
/// target = "cpq"          # a sink that reads back accounts (`records`)
/// every_secs = 3600       # and on demand: `tenon drift`
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftEntry {
    /// The sink plugin instance whose `records` export reads the target's accounts.
    pub target: Spanned<String>,
    /// Run on its own every this many seconds; unset: on demand only.
    #[serde(default)]
    pub every_secs: Option<u64>,
}

/// The billing kinds a reconciliation knows.
pub const BILLING_KINDS: [&str; 3] = ["InvoicePosted", "CreditIssued", "InvoiceVoided"];

fn default_billing_kinds() -> Vec<Spanned<String>> {
    BILLING_KINDS
        .iter()
        .map(|k| Spanned::new(0..0, (*k).to_owned()))
        .collect()
}

fn default_window_days() -> u32 {
    7
}

/// What a flow taking part in sagas does when part of a transaction fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaPolicy {
    /// Undo the deliveries already made, at once.
    Compensate,
    /// Hold the failure as an exception: a person approves (the failed part is tried
    /// again) or rejects (the deliveries are undone).
    Exception,
}

/// `[[flows.<name>.rules]]`: a policy without code.
///
/// ```toml
/// [[flows.quote-to-order.rules]]
/// at = "router"                  # the stage whose input it judges (default: the first)
/// when = 'double(order.total.amount) > 50000.0'
/// then = "hold"                  # an exception, until a person approves or rejects
/// reason = "orders over 50,000 need finance's approval"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// The stage (plugin instance of the flow) before which the rule is checked.
    #[serde(default)]
    pub at: Option<Spanned<String>>,
    /// A CEL expression over the message: the rule applies when it is true.
    pub when: Spanned<String>,
    /// What happens when it applies.
    pub then: RuleAction,
    /// Why, in words: the exception's or the rejection's reason.
    pub reason: String,
}

/// What a rule does to a message it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Hold it as an exception until a person approves (it goes on) or rejects it.
    Hold,
    /// Reject it with the rule's reason.
    Reject,
}

/// `[apis.<name>]`: a synchronous route, `/v1/apis/<name>` on the ingest listener, for
/// callers that wait for the answer (a price, "would this quote pass?"). It is answered
/// by an API plugin, or by a source and transform steps run at once, nothing queued
/// (their outputs, or every reason they refused). Callers need a key with `api:<name>`
/// (or `api:*`).
///
/// ```toml
/// [apis.prices]
/// plugin = "tryton-prices"          # an API plugin instance
/// path = "/products/{code}"         # below /v1/apis/prices; {code} is a parameter
/// methods = ["GET"]
/// deadline_ms = 2000                # 504 past it
/// cache_ttl_secs = 60               # same request, same live plugins: the answer kept
/// rate_limit = { per_second = 100 }
///
/// [apis.validate-quote]
/// source = "cpq-source"             # reads the body, as for POST /v1/sources/cpq-source
/// steps = ["quote-to-order", "gateway"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiEntry {
    /// The API plugin instance that answers. Give `plugin`, or `source` and `steps`.
    #[serde(default)]
    pub plugin: Option<Spanned<String>>,
    /// The source plugin instance that turns the request body into messages.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// Transform plugin instances run in order on the source's messages (key-value
    /// reads see the committed data; writes are dropped: an answer changes nothing).
    #[serde(default)]
    pub steps: Vec<Spanned<String>>,
    /// The methods served (default `["GET", "POST"]` for a plugin, `["POST"]` for steps).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The path below `/v1/apis/<name>`, with `{parameters}`, e.g. `"/products/{code}"`.
    /// Without it, any path below the prefix reaches the plugin as is.
    #[serde(default)]
    pub path: Option<String>,
    /// Longest the whole answer may take, in milliseconds (default 5000): past it,
    /// `504` and the calls under way are stopped.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// Requests to this route (all callers together), a token bucket; over it, `429`.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
    /// Successful answers kept this long, by request (method, path, query, content type,
    /// body) and the digests of the live plugins that answered (a hot swap misses).
    /// `0`, the default: never kept.
    #[serde(default)]
    pub cache_ttl_secs: u64,
}

fn default_true() -> bool {
    true
}

fn default_deadline() -> u64 {
    5_000
}

impl ApiEntry {
    /// The methods served, upper case.
    pub fn methods(&self) -> Vec<String> {
        match (self.methods.is_empty(), self.plugin.is_some()) {
            (false, _) => self
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            (true, true) => vec!["GET".into(), "POST".into()],
            (true, false) => vec!["POST".into()],
        }
    }

    /// The plugin instances it runs: its plugin, or its source and steps.
    pub fn plugins(&self) -> impl Iterator<Item = &Spanned<String>> {
        self.plugin
            .iter()
            .chain(self.source.iter())
            .chain(self.steps.iter())
    }
}

/// `[flows.<name>.retry.<stage>]`: how one stage retries `retryable` failures, traps
/// and timeouts. Unset fields fall back to the flow's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts before a dead letter, e.g. `10`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First backoff in milliseconds, e.g. `1000`.
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// Longest backoff in milliseconds, e.g. `60000`.
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
}

impl Config {
    /// Read the secret `[secrets.<name>]`. A secret the config does not define, a
    /// variable that is not set or a file that cannot be read is an error naming the
    /// secret, never its value.
    pub fn secret(&self, name: &str) -> Result<crate::model::Secret, ConfigError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let whole = |message: String| ConfigError {
            path: self.path.clone(),
            line: 0,
            column: 0,
            message,
        };
        let source = self
            .secrets
            .get(name)
            .ok_or_else(|| whole(format!("no secret named `{name}` in [secrets]")))?;
        let value = match (&source.env, &source.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                whole(format!(
                    "secrets.{name}: environment variable `{var}` is not set"
                ))
            })?,
            (None, Some(file)) => {
                let path = base.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    whole(format!(
                        "secrets.{name}: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                text.strip_suffix('\n').unwrap_or(&text).to_owned()
            }
            _ => {
                return Err(whole(format!(
                    "secrets.{name}: give exactly one of `env` or `file`"
                )));
            }
        };
        Ok(crate::model::Secret::new(value))
    }
}

impl FlowEntry {
    /// The stages after the source: the steps, then the sink.
    pub fn stages(&self) -> impl Iterator<Item = &Spanned<String>> {
        self.steps.iter().chain(self.sink.iter())
    }
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read the config: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parse and check a config's text; `path` names it in errors and anchors
    /// relative plugin paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        config.path = path.to_owned();
        config.text = text.to_owned();
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let limits = &self.server.limits;
        let mut zeros: Vec<(String, &str)> = [
            ("header_timeout_ms", limits.header_timeout_ms as usize),
            ("body_timeout_ms", limits.body_timeout_ms as usize),
            ("max_connections", limits.max_connections),
            ("max_concurrent_ingest", limits.max_concurrent_ingest),
        ]
        .into_iter()
        .filter(|(_, v)| *v == 0)
        .map(|(k, _)| (format!("server.limits.{k}"), k))
        .collect();
        let rates = limits
            .per_key
            .iter()
            .map(|r| ("server.limits.per_key".to_owned(), "per_key", *r))
            .chain(self.plugins.iter().filter_map(|(name, p)| {
                p.rate_limit
                    .map(|r| (format!("plugins.{name}.rate_limit"), "rate_limit", r))
            }))
            .chain(self.apis.iter().filter_map(|(name, a)| {
                a.rate_limit
                    .map(|r| (format!("apis.{name}.rate_limit"), "rate_limit", r))
            }));
        for (field, key, rate) in rates {
            if rate.per_second == 0 || rate.burst == Some(0) {
                zeros.push((format!("{field}: per_second and burst"), key));
            }
        }
        for (name, p) in &self.plugins {
            if p.ack_deadline_ms == 0 {
                zeros.push((format!("plugins.{name}.ack_deadline_ms"), "ack_deadline_ms"));
            }
            let o = p.outbound;
            if o.per_second == Some(0) || o.burst == Some(0) || o.concurrency == Some(0) {
                zeros.push((format!("plugins.{name}.outbound"), "outbound"));
            }
        }
        if let Some((field, key)) = zeros.first() {
            return Err(self.error_at_key(
                key,
                format!("field `{field}`: must be at least 1 (leave it out for no limit)"),
            ));
        }
        let most = MAX_PLUGIN_MEMORY_MIB;
        if let Some(mib) = self.server.resident_mib.filter(|mib| *mib > most) {
            return Err(self.error_at_key(
                "resident_mib",
                format!(
                    "field `server.resident_mib`: {mib} is more than a plugin's memory can be ({most} MiB)"
                ),
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            let usable = endpoint
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") && u.host().is_some());
            if usable.is_none() {
                return Err(self.error_at_key(
                    "otlp_endpoint",
                    format!(
                        "field `telemetry.otlp_endpoint`: `{endpoint}` is not an http:// URL (the exporter speaks OTLP/HTTP without TLS: point it at a local collector or agent)"
                    ),
                ));
            }
        }
        if let Err(e) = self.server.listen.parse::<std::net::SocketAddr>() {
            return Err(self.error_at_key(
                "listen",
                format!("field `server.listen`: `{}`: {e}", self.server.listen),
            ));
        }
        if let Err(e) = self.server.admin_listen.parse::<std::net::SocketAddr>() {
            return Err(self.error_at_key(
                "admin_listen",
                format!(
                    "field `server.admin_listen`: `{}`: {e}",
                    self.server.admin_listen
                ),
            ));
        }
        if let Some((key, message)) = self.trust.problem() {
            return Err(self.error_at_key(key, format!("[trust]: {message}")));
        }
        for (name, p) in &self.plugins {
            let Some(plugin) = &p.plugin else { continue };
            let ok = !plugin.is_empty()
                && plugin
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(self.error_at_key(
                    &format!("plugins.{name}"),
                    format!(
                        "field `plugins.{name}.plugin`: `{plugin}` is not a plugin name (a manifest's `name`: lower-case letters, digits and dashes)"
                    ),
                ));
            }
        }
        self.check_apis()?;
        for (flow, entry) in &self.flows {
            let anchor = match (&entry.source, entry.subscribe.first()) {
                (Some(source), None) => source,
                (None, Some(kind)) => kind,
                (Some(source), Some(_)) => {
                    return Err(self.error(
                        source,
                        format!("flow `{flow}`: give `source` or `subscribe`, not both"),
                    ));
                }
                (None, None) => {
                    return Err(self.error_at_key(
                        flow,
                        format!("flow `{flow}`: needs a `source` or events to `subscribe` to"),
                    ));
                }
            };
            if entry.steps.is_empty() && entry.sink.is_none() {
                return Err(self.error(anchor, format!("flow `{flow}`: needs steps or a sink")));
            }
            if !entry.when.is_empty() && entry.subscribe.is_empty() {
                return Err(self.error(
                    anchor,
                    format!("flow `{flow}`: `when` filters subscribed events; this flow subscribes to none"),
                ));
            }
            let fields = entry
                .source
                .iter()
                .map(|s| ("source", s))
                .chain(entry.steps.iter().map(|s| ("steps", s)))
                .chain(entry.sink.iter().map(|s| ("sink", s)));
            for (field, name) in fields {
                if !self.plugins.contains_key(name.get_ref()) {
                    let known: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
                    return Err(self.error(
                        name,
                        format!(
                            "flow `{flow}`: field `{field}`: no plugin named `{}` (defined: {})",
                            name.get_ref(),
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
            for stage in entry.retry.keys() {
                if !entry.stages().any(|s| s.get_ref() == stage) {
                    let stages: Vec<&str> = entry.stages().map(|s| s.get_ref().as_str()).collect();
                    return Err(self.error_at_key(
                        stage,
                        format!(
                            "flow `{flow}`: field `retry`: `{stage}` is not a stage of this flow (stages: {})",
                            stages.join(", ")
                        ),
                    ));
                }
            }
            let zero_attempts = entry.max_attempts == Some(0)
                || entry.retry.values().any(|r| r.max_attempts == Some(0));
            if zero_attempts {
                return Err(self.error(
                    anchor,
                    format!("flow `{flow}`: field `max_attempts` must be at least 1"),
                ));
            }
            if entry.concurrency == Some(0) {
                return Err(self.error(
                    anchor,
                    format!("flow `{flow}`: field `concurrency` must be at least 1"),
                ));
            }
        }
        self.check_policies()?;
        self.check_reconciliations()?;
        self.check_drift()?;
        self.check_subscriptions()
    }

    /// Each drift check reads a plugin instance of this config and has a flow to take
    /// what it finds.
    fn check_drift(&self) -> Result<(), ConfigError> {
        for (name, entry) in &self.drift {
            if !self.plugins.contains_key(entry.target.get_ref()) {
                return Err(self.error(
                    &entry.target,
                    format!(
                        "drift check `{name}`: `target = \"{}\"` is not a plugin instance of this config",
                        entry.target.get_ref()
                    ),
                ));
            }
            if entry.every_secs == Some(0) {
                return Err(self.error(
                    &entry.target,
                    format!("drift check `{name}`: `every_secs` is at least 1"),
                ));
            }
            let taken = self
                .flows
                .values()
                .any(|f| f.subscribe.iter().any(|k| k.get_ref() == MASTER_DATA_DRIFT));
            if !taken {
                return Err(self.error(
                    &entry.target,
                    format!(
                        "drift check `{name}`: no flow subscribes to `{MASTER_DATA_DRIFT}`: what it finds would reach nobody"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Each reconciliation reads a sink instance, compares kinds it knows, and has a
    /// flow to take its exceptions.
    fn check_reconciliations(&self) -> Result<(), ConfigError> {
        for (name, entry) in &self.reconciliations {
            if !self.plugins.contains_key(entry.erp.get_ref()) {
                return Err(self.error(
                    &entry.erp,
                    format!(
                        "reconciliation `{name}`: `erp = \"{}\"` is not a plugin instance of this config",
                        entry.erp.get_ref()
                    ),
                ));
            }
            for kind in &entry.billing {
                if !BILLING_KINDS.contains(&kind.get_ref().as_str()) {
                    return Err(self.error(
                        kind,
                        format!(
                            "reconciliation `{name}`: billing kind `{}` is not one it compares ({})",
                            kind.get_ref(),
                            BILLING_KINDS.join(", ")
                        ),
                    ));
                }
            }
            let kept_days = self.server.retention_secs / 86_400;
            if u64::from(entry.window_days) > kept_days {
                return Err(self.error(
                    &entry.erp,
                    format!(
                        "reconciliation `{name}`: `window_days = {}` looks further back than the event log keeps billing documents (`server.retention_secs` = {}: {kept_days} days); raise the retention or shorten the window",
                        entry.window_days, self.server.retention_secs
                    ),
                ));
            }
            if entry.every_secs == Some(0) || entry.window_days == 0 {
                return Err(self.error(
                    &entry.erp,
                    format!(
                        "reconciliation `{name}`: `every_secs` and `window_days` are at least 1"
                    ),
                ));
            }
            let taken = self.flows.values().any(|f| {
                f.subscribe
                    .iter()
                    .any(|k| k.get_ref() == RECONCILIATION_EXCEPTION)
            });
            if !taken {
                return Err(self.error(
                    &entry.erp,
                    format!(
                        "reconciliation `{name}`: no flow subscribes to `{RECONCILIATION_EXCEPTION}`: its mismatches would reach no person (e.g. a flow with `subscribe = [\"{RECONCILIATION_EXCEPTION}\"]` and a sink to finance)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every CEL expression compiles (the error names the expression and the place
    /// in it), every rule's stage is one of its flow's, filters are on subscribers.
    fn check_policies(&self) -> Result<(), ConfigError> {
        for (flow, entry) in &self.flows {
            if let Some(filter) = &entry.filter {
                if entry.subscribe.is_empty() {
                    return Err(self.error(
                        filter,
                        format!("flow `{flow}`: `filter` is for a flow that subscribes to events; a source's flow takes what its source sends"),
                    ));
                }
                crate::policy::Expression::compile(filter.get_ref()).map_err(|e| {
                    self.error(
                        filter,
                        format!("flow `{flow}`: `filter = '{}'`: {e}", filter.get_ref()),
                    )
                })?;
            }
            for (n, rule) in entry.rules.iter().enumerate() {
                let n = n + 1;
                crate::policy::Expression::compile(rule.when.get_ref()).map_err(|e| {
                    self.error(
                        &rule.when,
                        format!(
                            "flow `{flow}`: rule {n}: `when = '{}'`: {e}",
                            rule.when.get_ref()
                        ),
                    )
                })?;
                if let Some(at) = &rule.at
                    && !entry.stages().any(|s| s.get_ref() == at.get_ref())
                {
                    return Err(self.error(
                        at,
                        format!(
                            "flow `{flow}`: rule {n}: `at = \"{}\"` is not a stage of the flow (its stages: {})",
                            at.get_ref(),
                            entry.stages().map(|s| s.get_ref().as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            if let Some(saga) = &entry.saga
                && entry.sink.is_none()
            {
                return Err(self.error(
                    saga,
                    format!("flow `{flow}`: `saga` is for a flow with a sink (what it undoes is what its sink delivered)"),
                ));
            }
        }
        Ok(())
    }

    /// Every subscribed kind can reach its subscriber: some other flow either ends
    /// without a sink (its last step's outputs are published, whatever their kind) or
    /// names the kind in `emit`. Otherwise the subscriber would silently get nothing.
    fn check_subscriptions(&self) -> Result<(), ConfigError> {
        for (flow, entry) in &self.flows {
            for kind in &entry.subscribe {
                let reached = self.flows.iter().any(|(other, e)| {
                    other != flow
                        && (e.sink.is_none()
                            || e.emit.iter().any(|k| k.get_ref() == kind.get_ref()))
                }) || (kind.get_ref() == RECONCILIATION_EXCEPTION
                    && !self.reconciliations.is_empty())
                    || (kind.get_ref() == MASTER_DATA_DRIFT && !self.drift.is_empty());
                if !reached {
                    return Err(self.error(
                        kind,
                        format!(
                            "flow `{flow}`: subscribes to `{kind}`, which no flow emits: name it in the `emit` of the flow that makes it (a flow without a sink emits its last step's outputs)",
                            kind = kind.get_ref()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[apis.*]`: names, what answers, methods, paths, deadlines.
    fn check_apis(&self) -> Result<(), ConfigError> {
        for (name, api) in &self.apis {
            let at = |message: String| self.error_at_key(&format!("apis.{name}"), message);
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(at(format!(
                    "API `{name}`: a name is lower-case letters, digits and dashes (it is a path segment)"
                )));
            }
            match (&api.plugin, &api.source, api.steps.is_empty()) {
                (Some(_), None, true) | (None, Some(_), false) => {}
                (Some(plugin), _, _) => {
                    return Err(self.error(
                        plugin,
                        format!("API `{name}`: give `plugin`, or `source` and `steps`, not both"),
                    ));
                }
                (None, None, false) => {
                    return Err(at(format!(
                        "API `{name}`: `steps` need a `source` that turns the request body into messages"
                    )));
                }
                (None, Some(source), true) => {
                    return Err(self.error(
                        source,
                        format!("API `{name}`: a `source` needs `steps` to run on its messages"),
                    ));
                }
                (None, None, true) => {
                    return Err(at(format!(
                        "API `{name}`: needs a `plugin` (an API plugin) or a `source` and `steps`"
                    )));
                }
            }
            for plugin in api.plugins() {
                if !self.plugins.contains_key(plugin.get_ref()) {
                    return Err(self.error(
                        plugin,
                        format!("API `{name}`: no plugin named `{}`", plugin.get_ref()),
                    ));
                }
            }
            const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
            if let Some(bad) = api
                .methods()
                .into_iter()
                .find(|m| !METHODS.contains(&m.as_str()))
            {
                return Err(at(format!(
                    "API `{name}`: field `methods`: `{bad}` is not one of {}",
                    METHODS.join(", ")
                )));
            }
            if let Some(path) = &api.path {
                let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let bad_param = segments.iter().any(|s| {
                    (s.starts_with('{') || s.ends_with('}'))
                        && !(s.len() > 2 && s.starts_with('{') && s.ends_with('}'))
                });
                if !path.starts_with('/') || path.contains("//") || bad_param {
                    return Err(at(format!(
                        "API `{name}`: field `path`: `{path}` is not a path like \"/products/{{code}}\""
                    )));
                }
            }
            if api.deadline_ms == 0 {
                return Err(at(format!(
                    "API `{name}`: field `deadline_ms` must be at least 1"
                )));
            }
        }
        Ok(())
    }

    /// An error pointing at a spanned value of this file.
    pub fn error<T>(&self, at: &Spanned<T>, message: String) -> ConfigError {
        let (line, column) = line_col(&self.text, at.span().start);
        ConfigError {
            path: self.path.clone(),
            line,
            column,
            message,
        }
    }

    fn error_at_key(&self, key: &str, message: String) -> ConfigError {
        let offset = self.text.find(key).unwrap_or(0);
        let (line, column) = line_col(&self.text, offset);
        ConfigError {
            path: self.path.clone(),
            line,
            column,
            message,
        }
    }

    /// The directories candidate versions may come from, resolved against the config
    /// file's directory (that directory itself when none is configured).
    pub fn plugin_roots(&self) -> Vec<PathBuf> {
        let base = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if self.server.plugin_roots.is_empty() {
            return vec![base.to_owned()];
        }
        self.server
            .plugin_roots
            .iter()
            .map(|r| base.join(r))
            .collect()
    }

    /// The sha256 of the config file's text, as `sha256:<hex>`: which config is live.
    pub fn digest(&self) -> String {
        crate::model::digest(self.text.as_bytes())
    }

    /// The file's text, as loaded.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What in the config is allowed but does not do what it seems to, one line each
    /// (`tenon check` prints them; a start and a reload log them).
    pub fn warnings(&self) -> Vec<String> {
        self.trust.warnings()
    }

    /// A plugin entry's directory, resolved against the config file's directory.
    pub fn plugin_dir(&self, entry: &PluginEntry) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(&entry.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("conf/tenon.toml"), text)
    }

    const GOOD: &str = r#"
[plugins.src]
path = "plugins/cpq-source"
[plugins.map]
path = "plugins/quote-to-order"
[plugins.out]
path = "plugins/http-sink"
config = { url = "http://127.0.0.1:1/orders" }

[flows.q2o]
source = "src"
steps = ["map"]
sink = "out"
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        let stages: Vec<&str> = c.flows["q2o"]
            .stages()
            .map(|s| s.get_ref().as_str())
            .collect();
        assert_eq!(stages, ["map", "out"]);
        assert_eq!(
            c.plugin_dir(&c.plugins["src"]),
            Path::new("conf/plugins/cpq-source")
        );
    }

    #[test]
    fn resident_memory_is_the_engines_default_unless_set_and_no_more_than_a_plugin_may_have() {
        assert_eq!(parse(GOOD).unwrap().server.resident_mib, None);
        let zero = format!("[server]\nresident_mib = 0\n{GOOD}");
        assert_eq!(parse(&zero).unwrap().server.resident_mib, Some(0));
        let err = parse(&format!("[server]\nresident_mib = 600\n{GOOD}")).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(
            err.to_string().ends_with(
                "field `server.resident_mib`: 600 is more than a plugin's memory can be (512 MiB)"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let err =
            parse(&GOOD.replace("sink = \"out\"", "sink = \"out\"\nretries = 3")).unwrap_err();
        assert_eq!(err.line, 14, "{err}");
        assert!(
            err.to_string()
                .starts_with("conf/tenon.toml:14:1: unknown field `retries`"),
            "{err}"
        );
    }

    #[test]
    fn a_subscription_no_flow_can_emit_is_refused_at_its_line() {
        // q2o has a sink and no `emit`: nothing it makes reaches subscribers.
        let watch = "\n[flows.watch]\nsubscribe = [\"OrderAccepted\"]\nsink = \"out\"\n";
        let err = parse(&format!("{GOOD}{watch}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conf/tenon.toml:16:14: flow `watch`: subscribes to `OrderAccepted`, which no flow emits: name it in the `emit` of the flow that makes it (a flow without a sink emits its last step's outputs)"
        );
        // Named in q2o's `emit`, or q2o without a sink (its last step's outputs are
        // published): accepted.
        let emitting = GOOD.replace(
            "sink = \"out\"",
            "sink = \"out\"\nemit = [\"OrderAccepted\"]",
        );
        assert!(parse(&format!("{emitting}{watch}")).is_ok());
        let sinkless = GOOD.replace("sink = \"out\"\n", "");
        assert!(parse(&format!("{sinkless}{watch}")).is_ok());
    }

    #[test]
    fn a_missing_plugin_is_named_with_its_line_and_field() {
        let err = parse(&GOOD.replace("steps = [\"map\"]", "steps = [\"mapp\"]")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conf/tenon.toml:12:10: flow `q2o`: field `steps`: no plugin named `mapp` (defined: map, out, src)"
        );
    }

    #[test]
    fn the_trust_policy_is_read_and_checked_with_its_line() {
        let key = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let trust = format!(
            "{GOOD}\n[trust]\nrequire_signatures = true\n[[trust.publishers]]\nname = \"acme\"\nkey = \"{key}\"\nprefixes = [\"acme-\"]\n"
        );
        let c = parse(&trust).unwrap();
        assert!(c.trust.require_signatures);
        assert_eq!(c.trust.publishers[0].key.to_string(), key);
        assert!(!parse(GOOD).unwrap().trust.require_signatures);
        let err = parse(&trust.replace(key, "ed25519:AAAA")).unwrap_err();
        assert!(
            err.line > 0 && err.to_string().contains("32 bytes"),
            "{err}"
        );
        let err = parse(&trust.replace("[\"acme-\"]", "[]")).unwrap_err();
        assert!(
            err.line > 0
                && err
                    .to_string()
                    .contains("[trust]: publisher `acme`: `prefixes`"),
            "{err}"
        );
    }

    #[test]
    fn an_instance_may_be_bound_to_a_plugin_name() {
        let bound = GOOD.replace(
            "path = \"plugins/quote-to-order\"",
            "path = \"plugins/quote-to-order\"\nplugin = \"quote-to-order\"",
        );
        let c = parse(&bound).unwrap();
        assert_eq!(c.plugins["map"].plugin.as_deref(), Some("quote-to-order"));
        assert_eq!(c.plugins["src"].plugin, None);
        let err = parse(&bound.replace("plugin = \"quote-to-order\"", "plugin = \"Quote To\""))
            .unwrap_err();
        assert!(
            err.line > 0
                && err
                    .to_string()
                    .contains("field `plugins.map.plugin`: `Quote To` is not a plugin name"),
            "{err}"
        );
    }

    #[test]
    fn revoked_keys_without_required_signatures_warn() {
        assert!(parse(GOOD).unwrap().warnings().is_empty());
        let lax = parse(&format!(
            "{GOOD}\n[trust]\nrevoked_keys = [\"0123456789abcdef\"]\nrevoked_digests = [\"SHA256:{}\"]\n",
            "AB".repeat(32)
        ))
        .unwrap();
        let warnings = lax.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("plugin.sig deleted"), "{warnings:?}");
        // Upper case digests are read as the lower case digests versions have.
        assert_eq!(
            lax.trust.revoked_digests,
            [format!("sha256:{}", "ab".repeat(32))]
        );
        let strict = parse(&format!(
            "{GOOD}\n[trust]\nrequire_signatures = true\nrevoked_keys = [\"0123456789abcdef\"]\n"
        ))
        .unwrap();
        assert!(strict.warnings().is_empty());
    }

    #[test]
    fn api_routes_are_checked_with_clear_errors() {
        let ok = parse(&format!(
            "{GOOD}\n[apis.check]\nsource = \"src\"\nsteps = [\"map\"]\n"
        ))
        .unwrap();
        assert_eq!(ok.apis["check"].methods(), ["POST"]);
        assert_eq!(ok.apis["check"].deadline_ms, 5_000);
        for (api, wanted) in [
            (
                "[apis.x]\nplugin = \"out\"\nsteps = [\"map\"]",
                "give `plugin`, or `source` and `steps`, not both",
            ),
            ("[apis.x]\nsteps = [\"map\"]", "`steps` need a `source`"),
            ("[apis.x]\nsource = \"src\"", "a `source` needs `steps`"),
            ("[apis.x]\ndeadline_ms = 5", "needs a `plugin`"),
            ("[apis.x]\nplugin = \"nope\"", "no plugin named `nope`"),
            (
                "[apis.x]\nplugin = \"out\"\nmethods = [\"TRACE\"]",
                "`TRACE` is not one of",
            ),
            (
                "[apis.x]\nplugin = \"out\"\npath = \"items/{id}\"",
                "is not a path like",
            ),
            (
                "[apis.x]\nplugin = \"out\"\npath = \"/items/{id\"",
                "is not a path like",
            ),
            ("[apis.x]\nplugin = \"out\"\ndeadline_ms = 0", "at least 1"),
            ("[apis.X_1]\nplugin = \"out\"", "lower-case letters"),
            (
                "[apis.x]\nplugin = \"out\"\nrate_limit = { per_second = 0 }",
                "must be at least 1",
            ),
        ] {
            let err = parse(&format!("{GOOD}\n{api}\n")).unwrap_err();
            assert!(err.to_string().contains(wanted), "{api}: {err}");
        }
    }

    #[test]
    fn retry_settings_name_stages_of_their_flow() {
        let ok = parse(&format!(
            "{GOOD}retry.out = {{ max_attempts = 9, backoff_ms = 50 }}\n"
        ))
        .unwrap();
        assert_eq!(ok.flows["q2o"].retry["out"].max_attempts, Some(9));
        let err = parse(&format!("{GOOD}retry.src = {{ max_attempts = 9 }}\n")).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "flow `q2o`: field `retry`: `src` is not a stage of this flow (stages: map, out)"
            ),
            "{err}"
        );
        let err = parse(&format!("{GOOD}retry.out = {{ attempts = 9 }}\n")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `attempts`"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_listen_address_is_refused() {
        let err = parse(&format!("[server]\nlisten = \"localhost\"\n{GOOD}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("field `server.listen`: `localhost`"),
            "{err}"
        );
    }
}
