//! The `tenon` command line. The binary only calls [`main`]; what it runs lives in the
//! `tenon` library (serving) or talks to a running server's admin API.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tenon::config::Config;
use tenon::runtime::Runtime;
use tenon::server::Server;

/// Tenon: an integration runtime for the quote-to-cash chain.
///
/// Connectors and mappings are sandboxed WebAssembly plugins; the host supplies a
/// durable queue, storage, HTTP and tracing. Start with `tenon demo`.
#[derive(Debug, Parser)]
#[command(name = "tenon", version, propagate_version = true)]
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

    /// A running server's admin API, for the commands that talk to it (`status`,
    /// `plugin`, `dlq`, `replay`, `audit`, `keys`).
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
    /// Create, list and revoke the API keys of a running server.
    ///
    /// Scopes: `ingest:<source>` or `ingest:*` (post to sources), `admin:read`,
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
}

/// What to do with a plugin or its versions.
#[derive(Debug, Subcommand)]
pub enum PluginAction {
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
    },
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
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

/// The admin API of a running server, with the operator's key.
struct Admin {
    base: String,
    token: Option<String>,
}

impl Admin {
    /// The server and key the command line names: `TENON_TOKEN`, else the token file,
    /// else `<data-dir>/admin.key` when it exists.
    fn of(cli: &Cli) -> anyhow::Result<Admin> {
        let token = match (std::env::var("TENON_TOKEN").ok(), &cli.token_file) {
            (Some(token), _) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            (_, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the token file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            _ => std::fs::read_to_string(cli.data_dir.join(tenon::auth::ADMIN_KEY_FILE))
                .ok()
                .map(|t| t.trim().to_owned()),
        };
        Ok(Admin {
            base: cli.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn headers(&self) -> Vec<(&str, String)> {
        self.token
            .iter()
            .map(|t| ("authorization", format!("Bearer {t}")))
            .collect()
    }

    async fn get(&self, path: &str) -> anyhow::Result<crate::client::Response> {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::client::request("GET", &format!("{}{path}", self.base), &headers, None).await
    }

    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<crate::client::Response> {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::client::request(
            "POST",
            &format!("{}{path}", self.base),
            &headers,
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
    }

    /// The JSON of a successful reply, or an error with the server's reason.
    fn json(&self, reply: &crate::client::Response) -> anyhow::Result<serde_json::Value> {
        if (200..300).contains(&reply.status) {
            return reply.json();
        }
        Err(self.failure(reply))
    }

    fn failure(&self, reply: &crate::client::Response) -> anyhow::Error {
        let detail = reply
            .json()
            .ok()
            .and_then(|p| p["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
        let hint = match (reply.status, &self.token) {
            (401, None) => {
                "\nno API key was given: set TENON_TOKEN or --token-file, or point --data-dir at the server's data directory (its admin.key)"
            }
            _ => "",
        };
        anyhow::anyhow!("{detail}{hint}")
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let admin = Admin::of(&cli)?;
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
        Command::Dlq { action } => dlq(&admin, action).await,
        Command::Keys { action } => keys(&admin, action).await,
        Command::Audit {
            plugin,
            decision,
            limit,
            json,
        } => {
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(plugin) = plugin {
                path.push_str(&format!("&plugin={plugin}"));
            }
            if let Some(decision) = decision {
                path.push_str(&format!("&decision={decision}"));
            }
            let reply = admin.get(&path).await?;
            let body = admin.json(&reply)?;
            for r in body["records"].as_array().cloned().unwrap_or_default() {
                if json {
                    println!("{r}");
                    continue;
                }
                let at = r["at_ms"].as_i64().unwrap_or(0);
                let at = tenon_model::chrono::DateTime::from_timestamp_millis(at)
                    .map(|t| t.to_rfc3339_opts(tenon_model::chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                let digest = r["digest"].as_str().unwrap_or("");
                let who = match r["key"].as_str() {
                    Some(key) => format!("key {key}"),
                    None => r["plugin"].as_str().unwrap_or("?").to_owned(),
                };
                println!(
                    "{at} {:<5} {:<16} {:<8} {}{}  [{}]",
                    r["decision"].as_str().unwrap_or("?"),
                    who,
                    r["capability"].as_str().unwrap_or("?"),
                    r["target"].as_str().unwrap_or("?"),
                    r["reason"]
                        .as_str()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default(),
                    digest.get(..19).unwrap_or(digest),
                );
            }
            if let Some(dropped) = body["dropped"].as_u64().filter(|d| *d > 0) {
                println!(
                    "({dropped} records were dropped because the audit log could not keep up)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { action } => plugin_command(&admin, action).await,
        Command::Status => {
            let reply = admin.get("/v1/plugins").await?;
            let json = admin.json(&reply)?;
            for p in json["plugins"].as_array().cloned().unwrap_or_default() {
                let since = p["live_since_ms"].as_u64().unwrap_or(0);
                let since = tenon_model::chrono::DateTime::from_timestamp_millis(since as i64)
                    .map(|t| t.to_rfc3339_opts(tenon_model::chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                println!(
                    "{:<18} {:<9} {:<8} {}  live since {since}  swaps={}",
                    p["name"].as_str().unwrap_or("?"),
                    p["kind"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?"),
                    p["digest"].as_str().unwrap_or("?"),
                    p["swaps"],
                );
                if let Some(pending) = p["pending"].as_object() {
                    let widening: Vec<&str> = pending["widening"]
                        .as_array()
                        .map(|w| w.iter().filter_map(|x| x.as_str()).collect())
                        .unwrap_or_default();
                    println!(
                        "{:<18} waiting for approval: {} {} (wider grants: {}); `tenon plugin approve {} --digest {}`",
                        "",
                        pending["version"].as_str().unwrap_or("?"),
                        pending["digest"].as_str().unwrap_or("?"),
                        widening.join(", "),
                        p["name"].as_str().unwrap_or("?"),
                        pending["digest"].as_str().unwrap_or("?"),
                    );
                }
                if let Some(reason) = p["refused"]["reason"].as_str() {
                    println!("{:<18} refused: {reason}", "");
                }
            }
            if let Some(reason) = json["config"]["refused"]["reason"].as_str() {
                println!(
                    "config {} refused: {reason}",
                    json["config"]["path"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { flow, from, to } => {
            let mut body = serde_json::json!({ "from": from });
            if let Some(to) = to {
                body["to"] = serde_json::json!(to);
            }
            let reply = admin
                .post(&format!("/v1/flows/{flow}/replay"), body)
                .await?;
            let json = admin.json(&reply)?;
            println!(
                "replayed {} messages of flow {flow} (offsets {})",
                json["replayed"], json["offsets"]
            );
            Ok(ExitCode::SUCCESS)
        }
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

async fn keys(admin: &Admin, action: KeysAction) -> anyhow::Result<ExitCode> {
    match action {
        KeysAction::Create { scopes, name } => {
            for scope in &scopes {
                scope.parse::<tenon::auth::Scope>()?;
            }
            let mut body = serde_json::json!({ "scopes": scopes });
            if let Some(name) = name {
                body["name"] = serde_json::json!(name);
            }
            let reply = admin.post("/v1/keys", body).await?;
            let json = admin.json(&reply)?;
            println!("key {} created", json["key"]["id"].as_str().unwrap_or("?"));
            println!("token (shown once, keep it secret):");
            println!("{}", json["token"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::List => {
            let reply = admin.get("/v1/keys").await?;
            let json = admin.json(&reply)?;
            for k in json["keys"].as_array().cloned().unwrap_or_default() {
                let when = |field: &str| {
                    k[field].as_i64().and_then(|ms| {
                        tenon_model::chrono::DateTime::from_timestamp_millis(ms).map(|t| {
                            t.to_rfc3339_opts(tenon_model::chrono::SecondsFormat::Secs, true)
                        })
                    })
                };
                let scopes: Vec<&str> = k["scopes"]
                    .as_array()
                    .map(|s| s.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "{}  {:<16} {:<48} created {}{}",
                    k["id"].as_str().unwrap_or("?"),
                    k["name"].as_str().unwrap_or("?"),
                    scopes.join(" "),
                    when("created_ms").unwrap_or_default(),
                    when("revoked_ms")
                        .map(|t| format!("  REVOKED {t}"))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::Revoke { ids } => {
            handle_each(admin, &ids, |id| format!("/v1/keys/{id}/revoke"), "revoke").await
        }
    }
}

async fn dlq(admin: &Admin, action: DlqAction) -> anyhow::Result<ExitCode> {
    match action {
        DlqAction::List => {
            let reply = admin.get("/v1/dlq").await?;
            let letters = admin.json(&reply)?["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in &letters {
                println!(
                    "{}  flow={} stage={} plugin={} attempts={}  {}",
                    l["id"].as_str().unwrap_or("?"),
                    l["flow"].as_str().unwrap_or("?"),
                    l["stage"],
                    l["plugin"].as_str().unwrap_or("?"),
                    l["attempt_count"],
                    l["error"].as_str().unwrap_or("?"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { id } => {
            let reply = admin.get(&format!("/v1/dlq/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&admin.json(&reply)?)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Redrive { ids } => {
            handle_each(admin, &ids, |id| format!("/v1/dlq/{id}/redrive"), "redrive").await
        }
        DlqAction::Discard { ids } => {
            handle_each(admin, &ids, |id| format!("/v1/dlq/{id}/discard"), "discard").await
        }
    }
}

async fn plugin_command(admin: &Admin, action: PluginAction) -> anyhow::Result<ExitCode> {
    let absolute = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let (plugin, verb, body) = match &action {
        PluginAction::Try {
            plugin,
            against,
            candidate,
            limit,
        } => (
            plugin,
            "try",
            serde_json::json!({ "flow": against, "candidate": absolute(candidate), "limit": limit }),
        ),
        PluginAction::Promote { plugin, candidate } => (
            plugin,
            "promote",
            serde_json::json!({ "candidate": absolute(candidate) }),
        ),
        PluginAction::Rollback { plugin } => (plugin, "rollback", serde_json::json!({})),
        PluginAction::Approve { plugin, digest } => {
            (plugin, "approve", serde_json::json!({ "digest": digest }))
        }
        PluginAction::Audit { path, json } => return audit_plugin(path.clone(), *json).await,
    };
    let reply = admin
        .post(&format!("/v1/plugins/{plugin}/{verb}"), body)
        .await?;
    let json = admin.json(&reply)?;
    if verb != "try" {
        match (json["swapped"].as_bool(), json["pending"].as_object()) {
            (Some(true), _) => println!(
                "{plugin}: {} -> {} live",
                json["from"].as_str().unwrap_or("?"),
                json["to"].as_str().unwrap_or("?")
            ),
            (_, Some(pending)) => println!(
                "{plugin}: {} waits for approval (wider grants: {})",
                pending["digest"].as_str().unwrap_or("?"),
                pending["widening"]
            ),
            _ => println!("{plugin}: that version is already live"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let results = json["results"].as_array().cloned().unwrap_or_default();
    let mut differing = 0;
    for r in &results {
        let ops = r["differences"].as_array().cloned().unwrap_or_default();
        if ops.is_empty() {
            println!(
                "#{} {}: same",
                r["offset"],
                r["key"].as_str().unwrap_or("?")
            );
            continue;
        }
        differing += 1;
        println!(
            "#{} {}: {} difference(s)",
            r["offset"],
            r["key"].as_str().unwrap_or("?"),
            ops.len()
        );
        for op in ops {
            let value = op
                .get("value")
                .map(|v| format!(" = {v}"))
                .unwrap_or_default();
            println!(
                "    {} {}{value}",
                op["op"].as_str().unwrap_or("?"),
                op["path"].as_str().unwrap_or("?")
            );
        }
    }
    println!("{} of {} recorded inputs differ", differing, results.len());
    Ok(ExitCode::SUCCESS)
}

/// `tenon plugin audit`: offline, from the plugin's own files.
async fn audit_plugin(path: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let report =
        tokio::task::spawn_blocking(move || tenon::sandbox::inspect::AuditReport::of_path(&path))
            .await??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.loadable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// POST to one path per id; report each, fail if any failed.
async fn handle_each(
    admin: &Admin,
    ids: &[String],
    path: impl Fn(&str) -> String,
    action: &str,
) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for id in ids {
        let reply = admin.post(&path(id), serde_json::json!({})).await?;
        if (200..300).contains(&reply.status) {
            println!("{action} {id}: done");
        } else {
            eprintln!("{action} {id}: {}", admin.failure(&reply));
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
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
