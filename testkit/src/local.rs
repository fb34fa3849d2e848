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
use std::process::{Command, Stdio};
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
