//! A real OCI registry on 127.0.0.1 (the CNCF distribution registry, Debian's
//! `docker-registry`), for the tests of `tenon plugin publish` and `install`.
//!
//! `docker-registry` comes from `scripts/registry/install.sh` (Debian's package,
//! installed by apt when running as root; otherwise the script says which command to
//! run). Each server has its own port, config and filesystem storage in a temporary
//! directory, no authentication, and is killed when dropped, and, should the test
//! process die first, by a small watchdog that outlives it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long [`RegistryServer::start`] waits for `/v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `docker-registry` binary, installed on first use.
pub fn server_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| crate::local::install("registry/install.sh"))
        .clone()
}

/// A running registry.
#[derive(Debug)]
pub struct RegistryServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl RegistryServer {
    /// Start a registry on a free port of 127.0.0.1, its storage in a temporary
    /// directory, and wait until it answers `GET /v2/`. Blocks the calling thread.
    pub fn start() -> std::io::Result<RegistryServer> {
        let binary = server_binary().map_err(std::io::Error::other)?;
        let dir = tempfile::tempdir()?;
        let port = crate::local::free_port();
        let child = spawn(&binary, dir.path(), port)?;
        let mut server = RegistryServer { dir, port, child };
        // The port was free when chosen, but another process may take it before the
        // server binds it: then try another.
        let mut attempts = 1;
        loop {
            match server.wait_ready() {
                Ok(()) => break,
                Err(e) => {
                    server.stop();
                    if attempts >= 3 || !server.log_tail().contains("address already in use") {
                        return Err(e);
                    }
                    attempts += 1;
                    server.port = crate::local::free_port();
                    server.child = spawn(&binary, server.dir.path(), server.port)?;
                }
            }
        }
        crate::local::watchdog("docker-registry", &[server.child.id()]);
        Ok(server)
    }

    /// `host:port`, as an `oci://` reference names it, e.g. `127.0.0.1:40123`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Where it keeps what is pushed.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "docker-registry exited ({status}) before it was ready; log:\n{}",
                    self.log_tail()
                )));
            }
            if answers_v2(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "docker-registry on port {} not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The registry's config: filesystem storage in `dir/data`, deletes allowed, on
/// `127.0.0.1:<port>`, no authentication.
fn config_yaml(dir: &Path, port: u16) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
        quote(&dir.join("data").display().to_string()),
        quote(&format!("127.0.0.1:{port}")),
    )
}

/// Start `binary` on `port` with its config, storage and log in `dir`.
fn spawn(binary: &Path, dir: &Path, port: u16) -> std::io::Result<Child> {
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(dir, port))?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    Command::new(binary)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot start {}: {e}", binary.display())))
}

/// True when `GET /v2/` answers 200 (a blocking HTTP/1.0 request).
fn answers_v2(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    head[..read].starts_with(b"HTTP/1.") && head[..read].get(8..13) == Some(b" 200 ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_starts_answers_and_stops() {
        let registry = RegistryServer::start().unwrap();
        assert!(registry.host().starts_with("127.0.0.1:"));
        assert!(answers_v2(registry.port));
        let port = registry.port;
        drop(registry);
        assert!(!answers_v2(port), "stopped when dropped");
    }

    #[test]
    fn the_config_is_on_loopback_with_its_own_storage() {
        let yaml = config_yaml(Path::new("/t"), 5001);
        assert!(yaml.contains("addr: \"127.0.0.1:5001\""), "{yaml}");
        assert!(yaml.contains("rootdirectory: \"/t/data\""), "{yaml}");
    }
}
