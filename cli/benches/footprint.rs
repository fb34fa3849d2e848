//! What a node holds in memory, the release binary in its own process: 100 plugin
//! instances loaded (the quote-to-order flow, and 97 more instances of the mapping,
//! each with its own pre-linked component), 1000 quotes in flight (accepted while the
//! ERP answers 503, so they wait at the sink for their retry), then the resident set size of
//! the process: `rss_mb_100_plugins_1000_inflight` (goal <= 256), beside the same
//! node idle with 3 instances, `rss_mb_3_plugins_idle`.

mod common;

use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

const INSTANCES: usize = 100;
const IN_FLIGHT: usize = 1000;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// The process's resident set, in MiB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let base = tenon_testkit::quote_to_cash_config(
        &erp.orders_url(),
        "max_attempts = 1000\nbackoff_ms = 60000\nmax_backoff_ms = 60000",
    );
    let dir = tempfile::tempdir()?;

    let idle = common::start(&dir.path().join("idle"), &base)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tenon_testkit::bench::line("rss_mb_3_plugins_idle", rss_mb(idle.pid())?, "MiB", 1);
    drop(idle);

    let mut config = base.clone();
    for i in 0..INSTANCES - 3 {
        config.push_str(&format!(
            "\n[plugins.mapping-{i:03}]\npath = \"plugins/quote-to-order\"\n"
        ));
    }
    let node = common::start(&dir.path().join("loaded"), &config)?;
    erp.set_unavailable(true);
    let url = format!("http://{}/v1/sources/cpq-source", node.addr);
    let template = tenon_testkit::SAMPLES[0].1;
    let started = Instant::now();
    for n in 0..IN_FLIGHT {
        let body = template.replace("Q-00101", &format!("Q-F{n:06}"));
        let reply = tenon_cli::client::request(
            "POST",
            &url,
            &[("authorization", &node.auth)],
            Some(("application/json", body.into_bytes())),
        )
        .await?;
        anyhow::ensure!(reply.status == 202, "quote {n}: {}", reply.status);
    }
    // The quotes are mapped and wait at the sink (the ERP answers 503, the retry comes
    // in a minute): nothing leaves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    anyhow::ensure!(
        erp.orders() == 0,
        "an order left while the ERP was unavailable"
    );
    tenon_testkit::bench::line(
        "in_flight_posted_in_s",
        started.elapsed().as_secs_f64(),
        "s",
        1,
    );
    tenon_testkit::bench::line(
        "rss_mb_100_plugins_1000_inflight",
        rss_mb(node.pid())?,
        "MiB",
        1,
    );
    Ok(())
}
