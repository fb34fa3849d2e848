//! A real Prometheus server on 127.0.0.1 scraping one target, for the tests of what
//! Tenon exports on its admin listener's `/metrics`.
//!
//! `prometheus` comes from `scripts/prometheus/install.sh` (Debian's package, installed
//! by apt when running as root; otherwise the script says which command to run). Each
//! server has its own port, config and storage in a temporary directory, scrapes its
//! target every second as job `tenon`, and is killed when dropped, and, should the
//! test process die first, by a small watchdog that outlives it.
//!
//! The query helpers panic (with the server's answer and log) instead of returning
//! errors: they are meant for tests.

use crate::local::Daemon;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long [`PrometheusServer::start`] waits for `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `prometheus` binary, installed on first use.
pub fn server_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| crate::local::install("prometheus/install.sh"))
        .clone()
}

/// A running Prometheus server scraping one target as job `tenon`.
#[derive(Debug)]
pub struct PrometheusServer {
    daemon: Daemon,
}

impl PrometheusServer {
    /// Start a server scraping `http://<target><metrics_path>` (`target` like
    /// `127.0.0.1:8081`) every second, with `Authorization: Bearer <the file's
    /// content>` when `bearer_token_file` is given, and wait until it is ready.
    ///
    /// Blocks the calling thread (up to a minute); from a tokio test, use the
    /// multi-threaded runtime or `spawn_blocking`.
    pub fn start(
        target: &str,
        metrics_path: &str,
        bearer_token_file: Option<&Path>,
    ) -> std::io::Result<PrometheusServer> {
        let binary = server_binary().map_err(std::io::Error::other)?;
        let yaml = config_yaml(target, metrics_path, bearer_token_file);
        let daemon = Daemon::start(
            "prometheus",
            "/-/ready",
            READY_TIMEOUT,
            &|dir, port, log| spawn(&binary, dir, &yaml, port, log),
        )?;
        Ok(PrometheusServer { daemon })
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.daemon.port())
    }

    /// Evaluate `promql` now (`/api/v1/query`) and return `data.result`: for an
    /// instant vector, an array of `{"metric": {..}, "value": [<time>, "<value>"]}`.
    /// Panics unless Prometheus answers `"status": "success"`.
    #[allow(clippy::panic, reason = "a test helper: a failed query fails the test")]
    pub async fn query(&self, promql: &str) -> Value {
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(promql, NON_ALPHANUMERIC)
        );
        let (status, body) = match self.get(&path).await {
            Ok(answer) => answer,
            Err(e) => panic!("query {promql:?}: {e}\n{}", self.log_tail()),
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if json["status"] != "success" {
            panic!(
                "query {promql:?} failed ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        json["data"]["result"].clone()
    }

    /// Wait until `up{job="tenon"}` is 1: the target was scraped successfully. Panics
    /// after `timeout` with the target's last scrape error and the server's log.
    #[allow(clippy::panic, reason = "a test helper: a timeout fails the test")]
    pub async fn wait_until_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.query(r#"up{job="tenon"}"#).await;
            if last
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "job tenon not up after {timeout:?}: up = {last}; targets: {}\nlog:\n{}",
            self.targets().await,
            self.log_tail()
        );
    }

    /// Wait until `promql` returns a non-empty result, and return it. Panics after
    /// `timeout` with the last result.
    #[allow(clippy::panic, reason = "a test helper: a timeout fails the test")]
    pub async fn wait_for(&self, promql: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.query(promql).await;
            if last.as_array().is_some_and(|r| !r.is_empty()) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{promql:?} still empty after {timeout:?}: last result {last}");
    }

    /// The scrape targets' state (`job`, `health`, `lastError`), from
    /// `/api/v1/targets`, or the error fetching it.
    async fn targets(&self) -> String {
        match self.get("/api/v1/targets").await {
            Ok((_, body)) => {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let targets: Vec<Value> = json["data"]["activeTargets"]
                    .as_array()
                    .map(|ts| {
                        ts.iter()
                            .map(|t| {
                                serde_json::json!({
                                    "job": t["labels"]["job"],
                                    "scrapeUrl": t["scrapeUrl"],
                                    "health": t["health"],
                                    "lastError": t["lastError"],
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Value::Array(targets).to_string()
            }
            Err(e) => format!("(cannot read /api/v1/targets: {e})"),
        }
    }

    /// GET `path_and_query` on the server.
    async fn get(&self, path_and_query: &str) -> Result<(StatusCode, Bytes), String> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: hyper::Uri = format!("{}{path_and_query}", self.url())
            .parse()
            .map_err(|e| format!("bad URI {path_and_query:?}: {e}"))?;
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

/// Start `binary` on `port` of 127.0.0.1 with the config `yaml`, its config and data
/// in `dir`, writing to `log`.
fn spawn(
    binary: &Path,
    dir: &Path,
    yaml: &str,
    port: u16,
    log: std::fs::File,
) -> std::io::Result<Child> {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, yaml)?;
    Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot start {}: {e}", binary.display())))
}

/// The server's config: one job, `tenon`, scraping `target` every second.
fn config_yaml(target: &str, metrics_path: &str, bearer_token_file: Option<&Path>) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    let quote = |s: &str| Value::String(s.to_owned()).to_string();
    let mut yaml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: tenon\n    metrics_path: {}\n    \
         static_configs:\n      - targets: [{}]\n",
        quote(metrics_path),
        quote(target)
    );
    if let Some(file) = bearer_token_file {
        yaml.push_str(&format!(
            "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
            quote(&file.display().to_string())
        ));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const METRICS: &str = "# TYPE demo_total counter\ndemo_total{flow=\"a\"} 3\n";

    /// Scrapes answered, by outcome.
    #[derive(Debug, Default)]
    struct Scrapes {
        served: AtomicUsize,
        refused: AtomicUsize,
    }

    /// A `/metrics` endpoint on a free port of 127.0.0.1 serving [`METRICS`] to
    /// `Authorization: Bearer s3cret` only (401 otherwise).
    async fn metrics_server() -> (SocketAddr, Arc<Scrapes>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scrapes = Arc::new(Scrapes::default());
        let shared = scrapes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let scrapes = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let scrapes = scrapes.clone();
                        async move {
                            let authorized = req
                                .headers()
                                .get(hyper::header::AUTHORIZATION)
                                .is_some_and(|v| v == "Bearer s3cret");
                            let response = if req.uri().path() != "/metrics" {
                                Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                            } else if !authorized {
                                scrapes.refused.fetch_add(1, Ordering::SeqCst);
                                Response::builder()
                                    .status(401)
                                    .body(Full::new(Bytes::from_static(b"unauthorized\n")))
                            } else {
                                scrapes.served.fetch_add(1, Ordering::SeqCst);
                                Response::builder()
                                    .header("content-type", "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from_static(METRICS.as_bytes())))
                            };
                            Ok::<_, Infallible>(response.unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, scrapes, task)
    }

    fn token_file(dir: &tempfile::TempDir, token: &str) -> PathBuf {
        let path = dir.path().join("token");
        std::fs::write(&path, token).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_with_the_bearer_token_and_answers_queries() {
        let (addr, scrapes, task) = metrics_server().await;
        let dir = tempfile::tempdir().unwrap();
        let token = token_file(&dir, "s3cret\n");
        let prometheus =
            PrometheusServer::start(&addr.to_string(), "/metrics", Some(&token)).unwrap();
        assert!(prometheus.url().starts_with("http://127.0.0.1:"));

        prometheus.wait_until_up(Duration::from_secs(30)).await;
        assert!(scrapes.served.load(Ordering::SeqCst) >= 1);
        assert_eq!(scrapes.refused.load(Ordering::SeqCst), 0);

        let result = prometheus.query(r#"demo_total{flow="a"}"#).await;
        let series = result.as_array().unwrap();
        assert_eq!(series.len(), 1, "{result}");
        assert_eq!(series[0]["metric"]["__name__"], "demo_total");
        assert_eq!(series[0]["metric"]["flow"], "a");
        assert_eq!(series[0]["metric"]["job"], "tenon");
        assert_eq!(series[0]["metric"]["instance"], addr.to_string());
        assert_eq!(series[0]["value"][1], "3");

        // Label matchers that select nothing give an empty result, not an error.
        assert_eq!(
            prometheus.query(r#"demo_total{flow="b"}"#).await,
            serde_json::json!([])
        );
        let summed = prometheus
            .wait_for(r#"sum by (flow) (demo_total) * 2"#, Duration::from_secs(10))
            .await;
        assert_eq!(summed[0]["value"][1], "6", "{summed}");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_token_makes_the_target_down() {
        let (addr, scrapes, task) = metrics_server().await;
        let dir = tempfile::tempdir().unwrap();
        let token = token_file(&dir, "wrong");
        let prometheus =
            PrometheusServer::start(&addr.to_string(), "/metrics", Some(&token)).unwrap();

        // A few scrapes, all refused.
        let deadline = Instant::now() + Duration::from_secs(30);
        while scrapes.refused.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "fewer than 3 scrapes in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(scrapes.served.load(Ordering::SeqCst), 0);

        let up = prometheus
            .wait_for(r#"up{job="tenon"}"#, Duration::from_secs(10))
            .await;
        let series = up.as_array().unwrap();
        assert_eq!(series.len(), 1, "{up}");
        assert_eq!(series[0]["value"][1], "0", "{up}");
        assert_eq!(
            prometheus.query("demo_total").await,
            serde_json::json!([]),
            "nothing ingested from a refused scrape"
        );
        let targets = prometheus.targets().await;
        assert!(targets.contains("401"), "{targets}");
        task.abort();
    }

    #[test]
    fn the_config_quotes_its_values_and_adds_the_bearer_token_file() {
        let yaml = config_yaml("127.0.0.1:8081", "/metrics", Some(Path::new("/t/key")));
        assert!(yaml.contains("targets: [\"127.0.0.1:8081\"]"), "{yaml}");
        assert!(yaml.contains("metrics_path: \"/metrics\""), "{yaml}");
        assert!(
            yaml.contains(
                "authorization:\n      type: Bearer\n      credentials_file: \"/t/key\"\n"
            ),
            "{yaml}"
        );
        assert!(!config_yaml("x:1", "/m", None).contains("authorization"));
    }
}
