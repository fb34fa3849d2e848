//! The `tenon` command line. The binary only calls [`main`]; everything it runs lives
//! in the library.

use crate::config::Config;
use crate::runtime::Runtime;
use crate::server::Server;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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

    /// A running server's address, for the commands that talk to its admin API
    /// (`status`, `plugin`, `dlq`, `replay`).
    #[arg(
        long,
        global = true,
        env = "TENON_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the flows of a config: HTTP ingress, the workers of every flow, the admin API.
    ///
    /// Prints `tenon listening on http://ADDR` once ready; stops cleanly on Ctrl-C or
    /// SIGTERM, letting each worker commit the message it holds. Messages not yet
    /// finished are kept and resumed at the next start.
    Run {
        /// The flow config.
        #[arg(long, short, default_value = "tenon.toml")]
        config: PathBuf,
        /// Listen address, overriding `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, listen } => {
            let config = Config::load(&config)?;
            let server = Server::start(config, &cli.data_dir, listen).await?;
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
        Command::Dlq { action } => dlq(&cli.server, action).await,
        Command::Audit {
            plugin,
            decision,
            limit,
            json,
        } => {
            let base = cli.server.trim_end_matches('/');
            let mut url = format!("{base}/v1/audit?limit={limit}");
            if let Some(plugin) = plugin {
                url.push_str(&format!("&plugin={plugin}"));
            }
            if let Some(decision) = decision {
                url.push_str(&format!("&decision={decision}"));
            }
            let reply = crate::client::get(&url).await?;
            let body = reply.json()?;
            anyhow::ensure!(
                reply.status == 200,
                "{base}: HTTP {}: {}",
                reply.status,
                body["detail"].as_str().unwrap_or("")
            );
            for r in body["records"].as_array().cloned().unwrap_or_default() {
                if json {
                    println!("{r}");
                    continue;
                }
                let at = r["at_ms"].as_i64().unwrap_or(0);
                let at = tenon_model::chrono::DateTime::from_timestamp_millis(at)
                    .map(|t| t.to_rfc3339_opts(tenon_model::chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                let digest = r["digest"].as_str().unwrap_or("?");
                println!(
                    "{at} {:<5} {:<16} {:<8} {}{}  [{}]",
                    r["decision"].as_str().unwrap_or("?"),
                    r["plugin"].as_str().unwrap_or("?"),
                    r["capability"].as_str().unwrap_or("?"),
                    r["target"].as_str().unwrap_or("?"),
                    r["reason"]
                        .as_str()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default(),
                    digest.get(..19).unwrap_or(digest),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { action } => plugin_command(&cli.server, action).await,
        Command::Status => {
            let base = cli.server.trim_end_matches('/');
            let reply = crate::client::get(&format!("{base}/v1/plugins")).await?;
            anyhow::ensure!(reply.status == 200, "{base}: HTTP {}", reply.status);
            let json = reply.json()?;
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
            let base = cli.server.trim_end_matches('/');
            let mut body = serde_json::json!({ "from": from });
            if let Some(to) = to {
                body["to"] = serde_json::json!(to);
            }
            let url = format!("{base}/v1/flows/{flow}/replay");
            let reply =
                crate::client::post(&url, "application/json", body.to_string().into_bytes())
                    .await?;
            let json = reply.json()?;
            if reply.status != 200 {
                anyhow::bail!("{}", json["detail"].as_str().unwrap_or("replay failed"));
            }
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

async fn dlq(server: &str, action: DlqAction) -> anyhow::Result<ExitCode> {
    use crate::client;
    let base = server.trim_end_matches('/');
    let fail = |reply: &client::Response| {
        let detail = reply
            .json()
            .ok()
            .and_then(|p| p["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
        anyhow::anyhow!("{base}: HTTP {}: {detail}", reply.status)
    };
    match action {
        DlqAction::List => {
            let reply = client::get(&format!("{base}/v1/dlq")).await?;
            if reply.status != 200 {
                return Err(fail(&reply));
            }
            let letters = reply.json()?["dead_letters"]
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
            let reply = client::get(&format!("{base}/v1/dlq/{id}")).await?;
            if reply.status != 200 {
                return Err(fail(&reply));
            }
            println!("{}", serde_json::to_string_pretty(&reply.json()?)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Redrive { ids } => handle_each(base, "redrive", &ids).await,
        DlqAction::Discard { ids } => handle_each(base, "discard", &ids).await,
    }
}

async fn plugin_command(server: &str, action: PluginAction) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/');
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
        PluginAction::Audit { path, json } => return audit_plugin(path.clone(), *json).await,
    };
    let url = format!("{base}/v1/plugins/{plugin}/{verb}");
    let reply =
        crate::client::post(&url, "application/json", body.to_string().into_bytes()).await?;
    let json = reply.json()?;
    if reply.status != 200 {
        anyhow::bail!("{}", json["detail"].as_str().unwrap_or("refused"));
    }
    if verb != "try" {
        match json["swapped"].as_bool() {
            Some(true) => println!(
                "{plugin}: {} -> {} live",
                json["from"].as_str().unwrap_or("?"),
                json["to"].as_str().unwrap_or("?")
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
        tokio::task::spawn_blocking(move || crate::inspect::AuditReport::of_path(&path)).await??;
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

async fn handle_each(base: &str, action: &str, ids: &[String]) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for id in ids {
        let reply =
            crate::client::request("POST", &format!("{base}/v1/dlq/{id}/{action}"), &[], None)
                .await?;
        if reply.status == 200 {
            println!("{action} {id}: done");
        } else {
            let detail = reply
                .json()
                .ok()
                .and_then(|p| p["detail"].as_str().map(str::to_owned));
            eprintln!(
                "{action} {id}: {}",
                detail.unwrap_or_else(|| format!("HTTP {}", reply.status))
            );
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
