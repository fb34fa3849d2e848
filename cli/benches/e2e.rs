//! End to end, accepted -> delivered: this process is the load generator (and the
//! mock ERP); the runtime is the release `tenon` binary in its own process, with the
//! quote-to-order flow (CPQ source, quote-to-order transform, HTTP sink), ~2 KB quotes.
//!
//! 1. Saturation: lanes post as fast as they are answered for a few seconds; the
//!    figure is orders delivered at the ERP per second (`e2e_quotes_per_s`).
//! 2. Latency at 50% and at 80% of that rate, a fixed offered load: p50 / p99 / p99.9
//!    from the moment each quote was *scheduled* to be posted (so a stall delays the
//!    sends behind it and is counted, not hidden) to the moment its order reaches the
//!    ERP (`e2e_p50_ms`, `e2e_p99_ms`, `e2e_p999_ms`, and `_80` for 80%). Quotes accepted
//!    but not delivered within a minute are counted and printed (`e2e_undelivered`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

const LANES: usize = 64;
const SATURATION: Duration = Duration::from_secs(6);
const STEADY: Duration = Duration::from_secs(6);

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let dir = tempfile::tempdir()?;
    tenon_cli::artifacts::extract_first_party(&dir.path().join("plugins"))?;
    let config = tenon_testkit::quote_to_cash_config(&erp.orders_url(), "concurrency = 32");
    std::fs::write(dir.path().join("tenon.toml"), config)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenon"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--config",
        ])
        .arg(dir.path().join("tenon.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut addr = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("tenon listening on http://") {
            addr = a.to_owned();
            break;
        }
    }
    anyhow::ensure!(!addr.is_empty(), "tenon did not start");
    // The load generator posts as a partner system does: with an API key (the admin
    // key the first start wrote holds `ingest:*`).
    let token = std::fs::read_to_string(dir.path().join("data/admin.key"))?;
    let auth = format!("Bearer {}", token.trim());

    let template = tenon_testkit::SAMPLES[0].1;
    let result = async {
        // 1. Saturation.
        let before = erp.orders();
        let started = Instant::now();
        let sent = load(&addr, &auth, template, "S", None, SATURATION).await?;
        drain(&erp, before + sent.len(), Duration::from_secs(60)).await;
        let delivered = erp.orders() - before;
        let rate = delivered as f64 / started.elapsed().as_secs_f64();
        tenon_testkit::bench::line("e2e_offered_saturation", sent.len() as f64, "quotes", 0);
        tenon_testkit::bench::line("e2e_quotes_per_s", rate as f64, "1/s", 0);

        // 2. Latency at 50% and 80% of that rate.
        for (share, suffix, tag) in [(0.5, "", "L"), (0.8, "_80", "M")] {
            let offered = (rate * share).max(10.0);
            let before = erp.orders();
            let sent = load(&addr, &auth, template, tag, Some(offered), STEADY).await?;
            drain(&erp, before + sent.len(), Duration::from_secs(60)).await;
            let arrived: HashMap<String, Instant> = erp
                .received()
                .into_iter()
                .filter(|r| !r.duplicate)
                .filter_map(|r| Some((r.idempotency_key?.split('.').next()?.to_owned(), r.at)))
                .collect();
            let mut latencies: Vec<f64> = sent
                .iter()
                .filter_map(|(id, at)| {
                    Some(arrived.get(id)?.duration_since(*at).as_secs_f64() * 1000.0)
                })
                .collect();
            let undelivered = sent.len() - latencies.len();
            latencies.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                latencies
                    .get(
                        ((latencies.len() as f64 * p) as usize)
                            .min(latencies.len().saturating_sub(1)),
                    )
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            tenon_testkit::bench::line(
                &format!("e2e_offered_rate{suffix}"),
                offered as f64,
                "1/s",
                0,
            );
            tenon_testkit::bench::line(
                &format!("e2e_measured{suffix}"),
                latencies.len() as f64,
                "quotes",
                0,
            );
            tenon_testkit::bench::line(
                &format!("e2e_undelivered{suffix}"),
                undelivered as f64,
                "quotes",
                0,
            );
            tenon_testkit::bench::line(&format!("e2e_p50_ms{suffix}"), pct(0.50), "ms", 1);
            tenon_testkit::bench::line(&format!("e2e_p99_ms{suffix}"), pct(0.99), "ms", 1);
            tenon_testkit::bench::line(&format!("e2e_p999_ms{suffix}"), pct(0.999), "ms", 1);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Post quotes on `LANES` keep-alive connections for `duration`: as fast as answered,
/// or at `rate` per second in all. Returns (accepted id, time it was due) of each 202:
/// at a fixed rate, the time its send was scheduled for, however late it went.
async fn load(
    addr: &str,
    auth: &str,
    template: &str,
    tag: &str,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let (addr, template, tag) = (addr.to_owned(), template.to_owned(), tag.to_owned());
        let auth = auth.to_owned();
        lanes.spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let gap = rate.map(|r| Duration::from_secs_f64(LANES as f64 / r));
            let started = Instant::now();
            let mut next =
                started + gap.map_or(Duration::ZERO, |g| g.mul_f64(lane as f64 / LANES as f64));
            let mut out = Vec::new();
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
                let request = hyper::Request::post(format!("http://{addr}/v1/sources/cpq-source"))
                    .header("host", addr.as_str())
                    .header("content-type", "application/json")
                    .header("authorization", auth.as_str())
                    .body(Full::new(Bytes::from(body)))?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if status == 202 {
                    let json: serde_json::Value = serde_json::from_slice(&body)?;
                    if let Some(id) = json["accepted"][0].as_str() {
                        out.push((id.to_owned(), due));
                    }
                }
            }
            Ok::<_, anyhow::Error>(out)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = lanes.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

/// Wait until the ERP has `target` orders (or the timeout passes).
async fn drain(erp: &MockErp, target: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while erp.orders() < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
