//! What the stand-ins share: serving HTTP on a free port of 127.0.0.1, finding one
//! for a server of our own, and installing a real server with its script.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serve HTTP/1 on `bind` (port 0: a free one), each request answered by `handle`
/// with `state`; stops when the returned task is aborted.
pub(crate) async fn serve<S, F, Fut>(
    bind: SocketAddr,
    state: Arc<S>,
    handle: F,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (state, handle) = (state.clone(), handle.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let answer = handle(state.clone(), req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// A free TCP port on 127.0.0.1 (the OS's choice; free when this returns).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Run an install script of `scripts/` (e.g. `nats/install.sh`), which prints the
/// path of the binary it installed or found.
pub(crate) fn install(script: &str) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed", script.display()));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// Kill the processes `pids` (whose command line names `program`) once this process
/// is gone, however it ends: a test that panics or is killed leaves no server behind.
pub(crate) fn watchdog(program: &str, pids: &[u32]) {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
         for p in {pids}; do grep -q {program} /proc/$p/cmdline 2>/dev/null && kill -9 $p; done",
        parent = std::process::id(),
        pids = pids.join(" ")
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A real server of ours (Prometheus, an OCI registry...) on a free port of
/// 127.0.0.1: its config, data and log (`<name>.log`) in a temporary directory; ready
/// once `GET <ready_path>` answers 200; started again on another port when the one
/// chosen was taken meanwhile; killed when dropped and, should the test process die
/// first, by a watchdog that outlives it.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: &'static str,
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

/// Starts a daemon's process: given its directory, its port and its log file.
pub(crate) type Spawn<'a> = &'a dyn Fn(&Path, u16, std::fs::File) -> std::io::Result<Child>;

impl Daemon {
    /// Start `name` with `spawn` and wait (blocking the thread, up to `timeout`) until
    /// `GET ready_path` answers 200; the log's tail in the error otherwise.
    pub(crate) fn start(
        name: &'static str,
        ready_path: &str,
        timeout: std::time::Duration,
        spawn: Spawn<'_>,
    ) -> std::io::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let launch = |dir: &Path| -> std::io::Result<(u16, Child)> {
            let port = free_port();
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            Ok((port, spawn(dir, port, log)?))
        };
        let (port, child) = launch(dir.path())?;
        let mut daemon = Daemon {
            name,
            dir,
            port,
            child,
        };
        let mut attempts = 1;
        while let Err(e) = daemon.wait_ready(ready_path, timeout) {
            daemon.stop();
            // The port was free when chosen, but another process may have taken it
            // before the server bound it: then try another.
            if attempts >= 3 || !daemon.log_tail().contains("address already in use") {
                return Err(e);
            }
            attempts += 1;
            (daemon.port, daemon.child) = launch(daemon.dir.path())?;
        }
        watchdog(name, &[daemon.child.id()]);
        Ok(daemon)
    }

    /// Its port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (config, data, log).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last 40 lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.name)))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait_ready(&mut self, path: &str, timeout: std::time::Duration) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "{} exited ({status}) before it was ready; log:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            if answers_200(self.port, path) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{} on port {} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200 (a blocking HTTP/1.0 request:
/// servers are started from sync code).
pub(crate) fn answers_200(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
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
    // "HTTP/1.0 200 OK" or "HTTP/1.1 200 OK"
    head[..read].starts_with(b"HTTP/1.") && head[..read].get(8..13) == Some(b" 200 ")
}
