//! A real OCI registry on 127.0.0.1 (the CNCF distribution registry, Debian's
//! `docker-registry`), for the tests of `tenon plugin publish` and `install`.
//!
//! `docker-registry` comes from `scripts/registry/install.sh` (Debian's package,
//! installed by apt when running as root; otherwise the script says which command to
//! run). Each server has its own port, config and filesystem storage in a temporary
//! directory, no authentication, and is killed when dropped, and, should the test
//! process die first, by a small watchdog that outlives it.

use crate::local::Daemon;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

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
    daemon: Daemon,
}

impl RegistryServer {
    /// Start a registry on a free port of 127.0.0.1, its storage in a temporary
    /// directory, and wait until it answers `GET /v2/`. Blocks the calling thread.
    pub fn start() -> std::io::Result<RegistryServer> {
        let binary = server_binary().map_err(std::io::Error::other)?;
        let daemon = Daemon::start(
            "docker-registry",
            "/v2/",
            READY_TIMEOUT,
            &|dir, port, log| spawn(&binary, dir, port, log),
        )?;
        Ok(RegistryServer { daemon })
    }

    /// `host:port`, as an `oci://` reference names it, e.g. `127.0.0.1:40123`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.daemon.port())
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Where it keeps what is pushed.
    pub fn storage(&self) -> PathBuf {
        self.daemon.dir().join("data")
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
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

/// Start `binary` on `port` with its config and storage in `dir`, writing to `log`.
fn spawn(binary: &Path, dir: &Path, port: u16, log: std::fs::File) -> std::io::Result<Child> {
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(dir, port))?;
    Command::new(binary)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot start {}: {e}", binary.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::answers_200;

    #[test]
    fn a_registry_starts_answers_and_stops() {
        let registry = RegistryServer::start().unwrap();
        assert!(registry.host().starts_with("127.0.0.1:"));
        let port = registry.daemon.port();
        assert!(answers_200(port, "/v2/"));
        drop(registry);
        assert!(!answers_200(port, "/v2/"), "stopped when dropped");
    }

    #[test]
    fn the_config_is_on_loopback_with_its_own_storage() {
        let yaml = config_yaml(Path::new("/t"), 5001);
        assert!(yaml.contains("addr: \"127.0.0.1:5001\""), "{yaml}");
        assert!(yaml.contains("rootdirectory: \"/t/data\""), "{yaml}");
    }
}
