//! What the end-to-end benches share: a `tenon run` node in its own process (the
//! release binary) and a saturating load of ~2 KB quotes from this process.

// Each bench uses a part of it.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

/// Keep-alive connections posting at once.
pub const LANES: usize = 64;
/// How long a saturating load lasts.
pub const SATURATION: Duration = Duration::from_secs(8);

/// A `tenon run` process, killed when dropped.
pub struct Node {
    child: Child,
    pub addr: String,
    pub auth: String,
}

impl Node {
    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the node's process has used so far, all its threads, user and
    /// system (`/proc/<pid>/stat`, in the kernel's fixed 100 ticks a second).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The fields after the command name (which may hold spaces, in parentheses):
        // state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat: {stat}"))?
            .1
            .split_whitespace()
            .collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields
                .get(i - 3)
                .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat: {stat}"))?
                .parse()?)
        };
        Ok(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lay out a node's directory (the first-party plugins, `config`) and start it.
pub fn start(dir: &Path, config: &str) -> anyhow::Result<Node> {
    prepare(dir, config)?;
    spawn(dir)
}

/// Lay out a node's directory: the first-party plugins and `config`.
pub fn prepare(dir: &Path, config: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    tenon_cli::artifacts::extract_first_party(&dir.join("plugins"))?;
    std::fs::write(dir.join("tenon.toml"), config)?;
    Ok(())
}

/// The `tenon` binary the benches run: this build's, or `TENON_BENCH_BIN` (another
/// build of the host, to compare two in alternating runs).
fn binary() -> std::path::PathBuf {
    std::env::var_os("TENON_BENCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tenon").into())
}

/// Start `tenon run` on a prepared directory; back once it listens.
pub fn spawn(dir: &Path) -> anyhow::Result<Node> {
    let mut child = Command::new(binary())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log", "warn", "--config"])
        .arg(dir.join("tenon.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut addr = String::new();
    for line in BufReader::new(stdout).lines() {
        if let Some(a) = line?.strip_prefix("tenon listening on http://") {
            addr = a.to_owned();
            break;
        }
    }
    anyhow::ensure!(!addr.is_empty(), "tenon did not start");
    let token = std::fs::read_to_string(dir.join("data/admin.key"))?;
    Ok(Node {
        child,
        addr,
        auth: format!("Bearer {}", token.trim()),
    })
}

/// What a load posted: each accepted quote's id with the time it was due (at a fixed
/// rate, the time its send was scheduled for, however late it went), and how many
/// were refused for a limit (`429`).
#[derive(Debug, Default)]
pub struct Posted {
    pub accepted: Vec<(String, Instant)>,
    pub limited: usize,
}

/// A keep-alive HTTP/1 connection to a node, posting with the node's key.
pub struct Conn {
    addr: String,
    auth: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connect to the node at `addr`; requests carry `auth` as their authorization.
    pub async fn open(addr: &str, auth: &str) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            addr: addr.to_owned(),
            auth: auth.to_owned(),
            sender,
        })
    }

    /// POST `body` as JSON to `path`: the answer's status and body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let request = hyper::Request::post(format!("http://{}{path}", self.addr))
            .header("host", self.addr.as_str())
            .header("content-type", "application/json")
            .header("authorization", self.auth.as_str())
            .body(Full::new(body.into()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// Post ~2 KB quotes on [`LANES`] keep-alive connections spread over the nodes for
/// `duration`: as fast as answered, or at `rate` per second in all.
pub async fn post(
    nodes: &[&Node],
    tag: &str,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<Posted> {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let node = nodes[lane % nodes.len()];
        let (addr, auth, tag) = (node.addr.clone(), node.auth.clone(), tag.to_owned());
        let template = tenon_testkit::SAMPLES[0].1.to_owned();
        lanes.spawn(async move {
            let mut conn = Conn::open(&addr, &auth).await?;
            let gap = rate.map(|r| Duration::from_secs_f64(LANES as f64 / r));
            let started = Instant::now();
            let mut next =
                started + gap.map_or(Duration::ZERO, |g| g.mul_f64(lane as f64 / LANES as f64));
            let mut posted = Posted::default();
            let mut n = 0u64;
            while started.elapsed() < duration {
                let due = match gap {
                    Some(gap) => {
                        let due = next;
                        tokio::time::sleep_until(due.into()).await;
                        next += gap;
                        due
                    }
                    None => Instant::now(),
                };
                let body = template.replace("Q-00101", &format!("Q-{tag}{lane:02}-{n:07}"));
                n += 1;
                let (status, body) = conn.post_json("/v1/sources/cpq-source", body).await?;
                match status {
                    202 => {
                        let json: serde_json::Value = serde_json::from_slice(&body)?;
                        if let Some(id) = json["accepted"][0].as_str() {
                            posted.accepted.push((id.to_owned(), due));
                        }
                    }
                    429 => posted.limited += 1,
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(posted)
        });
    }
    let mut all = Posted::default();
    while let Some(done) = lanes.join_next().await {
        let posted = done??;
        all.accepted.extend(posted.accepted);
        all.limited += posted.limited;
    }
    Ok(all)
}

/// [`post`] as fast as answered: how many were accepted, and how many refused for a
/// limit.
pub async fn post_for(
    nodes: &[&Node],
    tag: &str,
    duration: Duration,
) -> anyhow::Result<(usize, usize)> {
    let posted = post(nodes, tag, None, duration).await?;
    Ok((posted.accepted.len(), posted.limited))
}

/// Post as fast as answered for [`SATURATION`], the lanes spread over the nodes;
/// the figure is orders delivered at the ERP per second, everything drained.
pub async fn saturate(erp: &MockErp, nodes: &[&Node], tag: &str) -> anyhow::Result<f64> {
    let before = erp.orders();
    let started = Instant::now();
    let (accepted, _) = post_for(nodes, tag, SATURATION).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while erp.orders() < before + accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = erp.orders() - before;
    anyhow::ensure!(
        delivered >= accepted,
        "{tag}: {accepted} accepted, {delivered} delivered within two minutes"
    );
    Ok(delivered as f64 / started.elapsed().as_secs_f64())
}
