//! Helpers shared by the end-to-end tests: a plugin directory, a `tenon` process, HTTP.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tenon_cli::client;

/// How long a test waits for a message to settle.
pub const SETTLE: Duration = Duration::from_secs(60);

/// A temporary directory holding the first-party plugins, the fixtures and a config.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// The `[store]` section every config of this workspace gets (see [`Store`]).
    store: Option<String>,
}

/// The store the behaviour tests run on: redb by default; with `TENON_TEST_STORE=nats`
/// every workspace's config keeps its state in the suite's nats-server instead (under
/// a prefix of its own), so the same list of tests checks both stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Redb,
    Nats,
}

impl Store {
    /// The store this run uses; an unknown value is a mistake, not a default.
    pub fn current() -> Store {
        match std::env::var("TENON_TEST_STORE").as_deref() {
            Err(_) | Ok("") | Ok("redb") => Store::Redb,
            Ok("nats") => Store::Nats,
            Ok(other) => panic!("TENON_TEST_STORE={other}: use `redb` or `nats`"),
        }
    }
}

impl Workspace {
    /// A fresh workspace with every plugin under `plugins/<name>/`.
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugins = dir.path().join("plugins");
        tenon_cli::artifacts::extract_first_party(&plugins).expect("extract plugins");
        for (name, manifest, component) in tenon_cli::artifacts::FIXTURES {
            let target = plugins.join(name);
            std::fs::create_dir_all(&target).unwrap();
            std::fs::copy(manifest, target.join("plugin.toml")).unwrap();
            let file = Path::new(component).file_name().unwrap();
            std::fs::copy(component, target.join(file)).unwrap();
        }
        let store = match Store::current() {
            Store::Redb => None,
            Store::Nats => {
                Some(crate::store::shared_nats().store_section(&crate::store::fresh_prefix(), 1))
            }
        };
        Workspace { dir, store }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Write `tenon.toml` (with this run's `[store]`, unless `text` names one) and
    /// return its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path().join("tenon.toml");
        std::fs::write(&path, self.config_text(text)).unwrap();
        path
    }

    /// The config file `write_config(text)` writes: `text`, then this run's `[store]`
    /// (so the lines of `text` keep their numbers in error messages).
    pub fn config_text(&self, text: &str) -> String {
        match &self.store {
            Some(store) if !text.contains("[store]") => format!("{text}\n{store}"),
            _ => text.to_owned(),
        }
    }
}

/// The quote-to-cash flow with its sink pointed at `erp_url`, 20 attempts per stage,
/// plus `extra` TOML (in the flow's table, or tables after it).
pub fn quote_to_cash_config(erp_url: &str, extra: &str) -> String {
    tenon_testkit::quote_to_cash_config(erp_url, &format!("max_attempts = 20\n{extra}"))
}

/// A running `tenon run` process; killed (SIGKILL) when dropped.
pub struct Tenon {
    child: Child,
    /// Ingestion: `/v1/sources/*`, `/healthz`.
    pub base: String,
    /// The admin API.
    pub admin: String,
    /// The admin key's token (every scope), which the first start wrote.
    pub token: String,
    /// Where that token is.
    pub token_file: PathBuf,
}

/// The example's validation gateway (tax nexus DE, FR and US; `SW-ANL-LIC` sold in FR
/// only) and the master-data flow that feeds it customers through the `master` source,
/// as [`Tenon::load_customers`] posts them: a config section.
pub const GATEWAY_AND_MASTER: &str = r#"
[plugins.master]
path = "plugins/canonical-source"
[plugins.gateway]
path = "plugins/order-gateway"
config = { tax_nexus = '["DE", "FR", "US"]', product_restrictions = '{"SW-ANL-LIC": ["FR"]}' }

[flows.master-data]
source = "master"
steps = ["gateway"]
"#;

impl Tenon {
    /// The customers of the samples (`samples/customers.json`) into the gateway's
    /// master, through the `master` source ([`GATEWAY_AND_MASTER`]): each settled,
    /// consumed by the gateway.
    pub async fn load_customers(&self) {
        let customers = include_str!("../../examples/quote-to-cash/samples/customers.json");
        for id in self.send_quote_to("master", customers).await {
            let status = self.settled(&id).await;
            assert_eq!(status["outcomes"][0]["result"], "Consumed", "{status:#}");
        }
    }

    /// Start `tenon run` on a free port and wait until it listens.
    pub fn start(ws: &Workspace) -> Tenon {
        Tenon::start_with_env(ws, &[])
    }

    /// [`Tenon::start`], with these environment variables.
    pub fn start_with_env(ws: &Workspace, env: &[(&str, &str)]) -> Tenon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ws.path().join("tenon.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenon"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(ws.path().join("tenon.toml"))
            .arg("--data-dir")
            .arg(ws.data_dir())
            .env("TENON_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tenon");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tenon admin API on ") {
                    admin = Some(addr.to_owned());
                }
                if let Some(addr) = line.strip_prefix("tenon listening on ") {
                    let _ = tx.send((addr.to_owned(), admin.clone().unwrap_or_default()));
                }
            }
        });
        let (base, admin) = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap_or_default();
                panic!("tenon did not start listening; its log:\n{log}");
            }
        };
        let token_file = ws.data_dir().join("admin.key");
        let token = std::fs::read_to_string(&token_file)
            .expect("the first start writes the admin key")
            .trim()
            .to_owned();
        Tenon {
            child,
            base,
            admin,
            token,
            token_file,
        }
    }

    /// The listener a path belongs to: ingestion or the admin API.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("/v1/sources/") || path.starts_with("/v1/apis/") || path == "/healthz" {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}", self.admin)
        }
    }

    /// A request to the right listener with the admin key (which holds every scope).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> client::Response {
        let auth = format!("Bearer {}", self.token);
        client::request(method, &self.url(path), &[("authorization", &auth)], body)
            .await
            .expect("request")
    }

    /// Run the `tenon` CLI against this server's admin API, with its admin key.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let token_file = self.token_file.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &self.admin, "--token-file", &token_file]);
        tenon_cli(&all)
    }

    /// Write a new config and wait until the running server has applied it (its flows
    /// include `flow`); panics with the reason if it refused it.
    pub async fn reconfigure(&self, ws: &Workspace, text: &str, flow: &str) {
        ws.write_config(text);
        let digest = tenon::model::digest(ws.config_text(text).as_bytes());
        let deadline = Instant::now() + SETTLE;
        loop {
            let plugins = self.get("/v1/plugins").await.json().unwrap();
            let config = &plugins["config"];
            if let Some(reason) = config["refused"]["reason"].as_str() {
                panic!("the new config was refused: {reason}");
            }
            let flows = config["flows"].as_array().unwrap();
            if config["digest"] == digest.as_str() && flows.iter().any(|f| f == flow) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the config was not applied in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn post(&self, path: &str, content_type: &str, body: &[u8]) -> client::Response {
        self.request("POST", path, Some((content_type, body.to_vec())))
            .await
    }

    pub async fn get(&self, path: &str) -> client::Response {
        self.request("GET", path, None).await
    }

    /// POST a quote to the CPQ source; return the accepted ids (asserting 202).
    pub async fn send_quote(&self, body: &str) -> Vec<String> {
        self.send_quote_to("cpq-source", body).await
    }

    /// POST a quote to a source; return the accepted ids (asserting 202).
    pub async fn send_quote_to(&self, source: &str, body: &str) -> Vec<String> {
        let path = format!("/v1/sources/{source}");
        let reply = self.post(&path, "application/json", body.as_bytes()).await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let json = reply.json().unwrap();
        serde_json::from_value(json["accepted"].clone()).unwrap()
    }

    /// Wait until a message has settled; return its status document.
    pub async fn settled(&self, id: &str) -> Value {
        self.wait_for(id, |s| s["settled"] == true).await
    }

    /// [`Tenon::metric`] once it reads `expected`, or what it reads after a few
    /// seconds: counters move just after the commit a status already shows.
    pub async fn metric_reaching(&self, series: &str, expected: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let value = self.metric(series).await;
            if value == expected || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one series on `/metrics` (its name and labels as printed, e.g.
    /// `tenon_steps_fused_total{flow="f",stage="s"}`); 0 while it has no line.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = String::from_utf8_lossy(&self.get("/metrics").await.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{series}: not a count: {n}"))
            })
    }

    /// Wait until every queue is empty (as `/metrics` counts them).
    pub async fn drained(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = String::from_utf8_lossy(&self.get("/metrics").await.body).into_owned();
            let busy: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("tenon_queue_depth{"))
                .filter(|l| !l.ends_with(" 0"))
                .collect();
            if busy.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "queues never drained: {busy:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until a message's status satisfies `done`.
    pub async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let reply = self.get(&format!("/v1/messages/{id}")).await;
            if reply.status == 200 {
                let status = reply.json().unwrap();
                if done(&status) {
                    return status;
                }
                if Instant::now() > deadline {
                    panic!("message {id} did not get there in time: {status:#}");
                }
            } else if Instant::now() > deadline {
                panic!("message {id}: status {}", reply.status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Tenon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The series counting the steps of `stage` run in another step's lease in `flow`
/// (fused).
pub fn fused(flow: &str, stage: &str) -> String {
    format!(r#"tenon_steps_fused_total{{flow="{flow}",stage="{stage}"}}"#)
}

/// A sample quote of the example.
pub fn sample(name: &str) -> &'static str {
    tenon_testkit::SAMPLES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, body, _)| *body)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// Compare `actual` with the JSON file at `path` (relative to the repository root);
/// with `TENON_BLESS=1`, write `actual` there instead.
pub fn check_json(path: &str, actual: &Value) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("TENON_BLESS").is_some() {
        std::fs::write(&full, &pretty).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&full).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with TENON_BLESS=1 to create it)",
            full.display()
        )
    });
    let expected: Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(
        actual, &expected,
        "{path} differs (TENON_BLESS=1 rewrites it); actual:\n{pretty}"
    );
}

/// Run the `tenon` binary to completion: (succeeded, stdout, stderr).
pub fn tenon_cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tenon"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A public fixture of `tests/fixtures/public/`, verbatim, as JSON.
pub fn public_fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/public")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}
