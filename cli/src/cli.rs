//! The `tenon` command line. The binary only calls [`main`]; what it runs lives in the
//! `tenon` library (serving) or talks to a running server's admin API.

use crate::admin::{self, Admin};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tenon::config::Config;
use tenon::runtime::Runtime;
use tenon::server::Server;

/// What `tenon --version` says: the release, and the plugin contract it runs (the WIT
/// package and its worlds), which is what decides whether a plugin loads.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (plugins: WIT tenon:plugin@0.1.0, worlds source, transform, sink, api)"
);

/// Tenon: an integration runtime for the quote-to-cash chain.
///
/// Connectors and mappings are sandboxed WebAssembly plugins; the host supplies a
/// durable queue, storage, HTTP and tracing. Start with `tenon demo`.
#[derive(Debug, Parser)]
#[command(name = "tenon", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// Where Tenon keeps its database and its cache of compiled plugins.
    #[arg(
        long,
        global = true,
        env = "TENON_DATA_DIR",
        default_value = "./tenon-data"
    )]
    pub data_dir: PathBuf,

    /// Log filter, e.g. `info` or `tenon=debug,wasmtime=warn` (default: `info` for
    /// `run`, `warn` otherwise). `RUST_LOG` works too.
    #[arg(long, global = true, env = "TENON_LOG")]
    pub log: Option<String>,

    /// How logs are written (to stderr): `text` for people, `json` (one object a
    /// line, with each message's `trace_id` and `span_id`) for a log pipeline.
    #[arg(long, global = true, env = "TENON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A running server's admin API, for the commands that talk to it (`status`,
    /// `plugin`, `dlq`, `exceptions`, `replay`, `audit`, `keys`).
    #[arg(
        long,
        global = true,
        env = "TENON_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    pub server: String,

    /// A file holding the API key to send to the admin API. The key itself may come
    /// from the `TENON_TOKEN` environment variable instead; without either, the CLI
    /// reads `<data-dir>/admin.key`, which a first `tenon run` writes.
    #[arg(long, global = true, env = "TENON_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the flows of a config: HTTP ingress, the workers of every flow, the admin API.
    ///
    /// Prints `tenon listening on http://ADDR` (ingestion) and `tenon admin API on
    /// http://ADDR` once ready; stops cleanly on Ctrl-C or SIGTERM, letting each worker
    /// commit the message it holds. Messages not yet finished are kept and resumed at
    /// the next start. On a data directory without an API key it first creates an
    /// admin key and says where its token is.
    Run {
        /// The flow config.
        #[arg(long, short, default_value = "tenon.toml")]
        config: PathBuf,
        /// Ingestion's listen address, overriding `server.listen` (port 0 picks a free
        /// port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The admin API's listen address, overriding `server.admin_listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Check a config and load (compile) its plugins, without serving.
    Check {
        /// The flow config.
        #[arg(long, short, default_value = "tenon.toml")]
        config: PathBuf,
    },
    /// Run the quote-to-cash example end to end and print what happened to each quote.
    ///
    /// Extracts the embedded plugins and example config into `<data-dir>/demo`, starts
    /// a mock ERP and the runtime on free local ports, posts the sample quotes (a plain
    /// one, a bundle, an invalid one) and waits for each to settle. Exits 0 when every
    /// quote ended as expected.
    Demo,
    /// Audit plugins (offline) or try, promote and roll back their versions on a
    /// running server.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Show the live version of every plugin of a running server: digest, since when,
    /// swaps, and the last version refused (with why).
    Status,
    /// Print the business KPIs of a running server over a window of accepted messages:
    /// quote-to-order latency, order rejection rate (by rule), invoice posting
    /// success, amendment propagation delay, billing accuracy (from reconciliations).
    Kpis {
        /// Start of the window: ms since the Unix epoch, an RFC 3339 time, or a span
        /// back from now (`15m`, `24h`, `7d`). Default: 24 hours ago.
        #[arg(long)]
        from: Option<String>,
        /// End of the window (same forms). Default: now.
        #[arg(long)]
        to: Option<String>,
        /// Print the JSON the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// Follow a business key (a quote number, an order id, an ERP order number...)
    /// through every flow: each message it led to, the plugin versions that handled
    /// it, latencies, outcomes, ERP references, dead letters and retries.
    Trace {
        /// The key.
        key: String,
        /// Print the JSON the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// Re-run the messages a flow accepted in a range of the event log, through the
    /// flow's current plugin versions (on a running server). Messages keep their ids,
    /// so sinks return recorded outcomes instead of delivering twice.
    Replay {
        /// The flow.
        #[arg(long)]
        flow: String,
        /// First event: an offset (e.g. `120`) or an RFC 3339 time (e.g.
        /// `2026-11-27T09:00:00Z`).
        #[arg(long)]
        from: String,
        /// Last event (inclusive): an offset or an RFC 3339 time; default the end.
        #[arg(long)]
        to: Option<String>,
    },
    /// Read the sandbox's audit log on a running server: every allow/deny decision
    /// (time, plugin, digest, capability, target, decision, reason), oldest first.
    Audit {
        /// Only this plugin instance's decisions.
        #[arg(long)]
        plugin: Option<String>,
        /// Only `allow` or only `deny`.
        #[arg(long, value_parser = ["allow", "deny"])]
        decision: Option<String>,
        /// At most this many (the most recent).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON records, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and handle dead letters on a running server (its admin API).
    ///
    /// A dead letter is a message that cannot succeed as things stand: its plugin said
    /// `invalid`, or it failed every attempt. Each keeps the message, the stage, the
    /// plugin digest, and every attempt's error and time.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Reconcile billing with the ERP now, on a running server (its admin API).
    ///
    /// Billing documents (invoices, credit notes, voided invoices from the event log)
    /// dated in the window are matched with the ERP's records (read through the
    /// configured sink) by reference, amount and currency. Each mismatch (missing on one
    /// side, amount, currency, duplicate) becomes an exception for a person; the match
    /// rate is the billing-accuracy KPI.
    Reconcile {
        /// The reconciliation (`[reconciliations.<name>]`); may be left out when the
        /// config has one.
        name: Option<String>,
        /// The first day of the window (documents' dates), e.g. `2026-11-01`; default:
        /// the configured `window_days` before `--to`.
        #[arg(long)]
        from: Option<String>,
        /// The last day, included; default today.
        #[arg(long)]
        to: Option<String>,
        /// Print the JSON the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// Check the customer master against a target's copy now, on a running server.
    ///
    /// The master (each customer's latest CustomerUpserted) is compared field by field
    /// (name, country, parent) with what the target's sink reads back; each customer
    /// whose copy differs or is missing is published as a MasterDataDrift.
    Drift {
        /// The drift check (`[drift.<name>]`); may be left out when the config has one.
        name: Option<String>,
        /// Print the JSON the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and decide exceptions on a running server (its admin API).
    ///
    /// An exception is a message held for a person: a rule of its flow holds it (an
    /// approval threshold), or part of its transaction was delivered and this part
    /// failed where the flow's saga asks a person. Approve: it goes on (a failed
    /// part is tried again). Reject: it ends rejected, and what its transaction
    /// delivered is undone where its flows have a saga.
    Exceptions {
        #[command(subcommand)]
        action: ExceptionAction,
    },
    /// Create, list and revoke the API keys of a running server (and, offline,
    /// `generate` a key pair to sign plugins with).
    ///
    /// Scopes: `ingest:<source>` or `ingest:*` (post to sources), `api:<name>` or
    /// `api:*` (call the synchronous APIs), `admin:read`,
    /// `admin:write` (dead letters, replay, reload, keys), `plugins:promote` (try,
    /// promote, roll back, approve versions). A key can only create keys with scopes
    /// it holds.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

/// What to do with API keys.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key; its token is printed once and never shown again.
    Create {
        /// A scope; repeat for several, e.g. `--scope ingest:cpq-source`.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// What the key is for, e.g. `partner-acme`.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys: id, name, scopes, created, revoked.
    List,
    /// Revoke keys: their tokens stop working at once.
    Revoke {
        /// Key ids (`k_...`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Not an API key: an ed25519 key pair to sign plugins with, offline (the same as
    /// `tenon plugin keygen`).
    Generate(crate::packages::KeygenArgs),
}

/// What to do with a plugin or its versions.
#[derive(Debug, Subcommand)]
pub enum PluginAction {
    /// Create a plugin crate (builds outside this repository): `Cargo.toml` with the
    /// SDK by version, `plugin.toml` with its grants documented, the function with its
    /// tests (`cargo test` runs it natively, `tenon_sdk::testing`), a README and an
    /// example case for `tenon plugin test`.
    New {
        /// The plugin's name: lower-case letters, digits and dashes.
        name: String,
        /// What it does in a flow.
        #[arg(long, value_parser = ["source", "transform", "sink", "api"])]
        kind: String,
        /// Where to create it (default: `./<name>`; it must not exist or be empty).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Take the SDK from this checkout of Tenon's `plugin-sdk/` instead of
        /// crates.io (a `[patch.crates-io]` in the new Cargo.toml).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin crate's component for `wasm32-wasip2` (the target is added with
    /// rustup when missing) and lay out `dist/<name>/`: the manifest, with the
    /// component's file name and digest, and the component; checked as the host would
    /// load it.
    Build {
        /// The plugin crate (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a built plugin's component in Tenon's sandbox on recorded cases and compare
    /// its outputs with the expected ones (a diff for each that differs). A case is a
    /// directory with `input.json` (a source's request, a transform's message, an API
    /// request; optionally `"config": {...}`) and `expected.json`.
    Test {
        /// The plugin crate (its `dist/<name>/` is tested) or a plugin directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The directory of cases.
        #[arg(long, default_value = "cases")]
        cases: PathBuf,
        /// Write what the component makes as each case's `expected.json`.
        #[arg(long)]
        bless: bool,
    },
    /// Show what a plugin really imports and exports (read from its component), the
    /// grants its manifest asks for, and every difference: imports the host would
    /// refuse, grants nothing uses. Also its digest and signer. Offline: no server.
    ///
    /// Exits 0 when the host would load it, 1 when it would be refused.
    Audit {
        /// A plugin directory, its `plugin.toml`, or its `.wasm` component (with the
        /// `plugin.toml` beside it).
        path: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Check its signature against the `[trust]` of this `tenon.toml`, as the
        /// host would (without it, the signature is checked only for itself).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Make one file (a package: an OCI image layout in a tar) of a plugin directory's
    /// version: its manifest (made to name its component, as hot swap needs), its
    /// component and its signature. Prints the version digest that names it.
    Pack(crate::packages::PackArgs),
    /// Make an ed25519 key pair to sign plugins with: the secret key (PKCS#8 PEM, mode
    /// 0600) and `<out>.pub`; prints the public key (`ed25519:...`) and its id, for
    /// operators' `[[trust.publishers]]`. (`tenon keys` is for API keys.)
    Keygen(crate::packages::KeygenArgs),
    /// Sign a package or a plugin directory's version (its digest) with your secret
    /// key: the signature travels in the package and lands in the plugin directory as
    /// `plugin.sig`.
    Sign(crate::packages::SignArgs),
    /// Check a package's or plugin directory's signature: against a config's `[trust]`
    /// or one `--key`, or (without either) for itself. Exits 1 when it is unsigned,
    /// changed after signing, badly signed, not trusted for its name, or revoked.
    Verify(crate::packages::VerifyArgs),
    /// Push a package (or a plugin directory, packed on the way) to an OCI registry:
    /// `oci://host[:port]/namespace/name:version` (Wasm OCI artifact layout). Prints
    /// the digest that pins it.
    Publish(crate::packages::PublishArgs),
    /// Pull a package from an OCI registry (`oci://...:tag`, `:1.2` for the highest
    /// 1.2.x, or `@sha256:...`; no tag: `latest`), check it (signed by a key the
    /// policy trusts for its name; the plugin the repository and `--dir` hold; its
    /// version against an exact tag and, no lower, against `--dir`'s), and install it
    /// into a plugin directory, where a running Tenon's watcher swaps it in.
    Install(crate::packages::InstallArgs),
    /// Run a candidate version beside the live one on the last messages a flow
    /// accepted (from the event log) and print where their outputs differ. Nothing
    /// is delivered: sinks are not called, and both run with a scratch kv namespace.
    Try {
        /// The plugin instance (a transform step of the flow).
        plugin: String,
        /// The flow whose recorded messages to use.
        #[arg(long)]
        against: String,
        /// The candidate: a plugin directory (plugin.toml and its component).
        #[arg(long)]
        candidate: PathBuf,
        /// How many recent messages.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Make a candidate version live (it is loaded and checked first).
    Promote {
        /// The plugin instance.
        plugin: String,
        /// The candidate: a plugin directory.
        #[arg(long)]
        candidate: PathBuf,
    },
    /// Put the previous version (kept on disk by digest) back in place.
    Rollback {
        /// The plugin instance.
        plugin: String,
    },
    /// Let the version that waits for approval go live: a new version whose grants
    /// are wider than the live one's (`tenon status` shows it, and how) waits until
    /// an operator approves it.
    Approve {
        /// The plugin instance.
        plugin: String,
        /// The digest of the version you reviewed, as `tenon status` shows it: a
        /// version dropped in since is not approved unseen.
        #[arg(long)]
        digest: String,
    },
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List them, oldest first.
    List,
    /// Show one: the message, its stage and plugin, every attempt.
    Show {
        /// The message id.
        id: String,
    },
    /// Put them back in front of the stage that failed them, with a fresh count of
    /// attempts; they run on that stage's current plugin (so a fix can be redriven).
    Redrive {
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Forget them (their outcome stays recorded).
    Discard {
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// What to do with exceptions.
#[derive(Debug, Subcommand)]
pub enum ExceptionAction {
    /// List them, oldest first: what, why, the business key.
    List,
    /// Show one: the message, its reasons, what a decision does.
    Show {
        /// The message id.
        id: String,
    },
    /// Approve them: each goes back before its stage, which takes it.
    Approve {
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why, recorded with the decision.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Reject them: each ends rejected; what its transaction delivered is undone.
    Reject {
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why, recorded with the decision and in the rejection's reason.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line.
    Json,
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_log.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let admin = Admin::new(&cli.server, cli.token_file.as_deref(), &cli.data_dir)?;
    match cli.command {
        Command::Run {
            config,
            listen,
            admin_listen,
        } => {
            let config = Config::load(&config)?;
            let listen = tenon::server::Listen {
                ingest: listen,
                admin: admin_listen,
            };
            let server = Server::start(config, &cli.data_dir, listen).await?;
            if let Some(file) = &server.admin_key_file {
                println!(
                    "tenon created an admin API key (every scope); its token is in {}",
                    file.display()
                );
            }
            println!("tenon admin API on http://{}", server.admin_addr);
            println!("tenon listening on http://{}", server.addr);
            wait_for_signal().await;
            server.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            // Its warnings (`Config::warnings`) are logged as it opens.
            let config = Config::load(&config)?;
            let data_dir = cli.data_dir.clone();
            let runtime =
                tokio::task::spawn_blocking(move || Runtime::open(config, &data_dir)).await??;
            for flow in runtime.flows() {
                println!(
                    "flow {}: {} -> {}",
                    flow.name,
                    match &flow.source {
                        Some(source) => source.clone(),
                        None => format!("events {}", flow.subscribe.join(", ")),
                    },
                    flow.stages.join(" -> ")
                );
            }
            for name in runtime.config().plugins.keys() {
                if let Some(p) = runtime.plugin(name) {
                    println!("plugin {name}: {} {} {}", p.kind(), p.version(), p.digest());
                }
            }
            println!("config ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action } => admin::dlq(&admin, action).await,
        Command::Exceptions { action } => admin::exceptions(&admin, action).await,
        Command::Drift { name, json } => admin::drift(&admin, name, json).await,
        Command::Reconcile {
            name,
            from,
            to,
            json,
        } => admin::reconcile(&admin, name, from, to, json).await,
        Command::Keys { action } => admin::keys(&admin, action).await,
        Command::Audit {
            plugin,
            decision,
            limit,
            json,
        } => admin::audit(&admin, plugin, decision, limit, json).await,
        Command::Plugin { action } => admin::plugin(&admin, action).await,
        Command::Status => admin::status(&admin).await,
        Command::Kpis { from, to, json } => admin::kpis(&admin, from, to, json).await,
        Command::Trace { key, json } => admin::trace(&admin, &key, json).await,
        Command::Replay { flow, from, to } => admin::replay(&admin, &flow, from, to).await,
        Command::Demo => {
            let ok = crate::demo::run(&cli.data_dir).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_wit_package_the_host_implements() {
        let wit = format!("tenon:plugin@{}", tenon_registry::WIT_VERSION);
        assert!(super::VERSION.contains(&wit), "{}", super::VERSION);
    }
}
