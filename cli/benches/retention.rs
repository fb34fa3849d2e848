//! The database under a steady load with retention: does the file plateau?
//!
//! The release `tenon` binary runs the quote-to-order flow with every retention cut
//! to [`RETENTION`] (outcomes, events, idempotency keys, audit records) and a sweep
//! every second, while this process posts [`RATE`] quotes a second for
//! [`PERIODS`] retention periods. Twelve periods are an hour of a deployment that
//! keeps five minutes, compressed: what a sweep removes per period is the same.
//!
//! Prints the size of the data directory's databases after one and two periods (the
//! first sweeps have run: the working set is in), at the end (`db_mb_after_1h_equivalent`),
//! and how much the second half of the run added over the first period's size
//! (`db_growth_second_half`, 1.0 is flat). Then, for contrast, the same load on a
//! node that keeps everything a day, for [`CONTRAST`] periods:
//! `db_mb_kept_a_day_after_4_periods`, beside `db_mb_after_4_periods` of the first run.

mod common;

use std::path::Path;
use std::time::Duration;
use tenon_testkit::mock_erp::MockErp;

const RETENTION: Duration = Duration::from_secs(5);
const PERIODS: u32 = 12;
const RATE: f64 = 400.0;
const CONTRAST: u32 = 4;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// MiB taken by the databases (not the compiled-component cache) under `data`.
fn db_mb(data: &Path) -> anyhow::Result<f64> {
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(data)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            bytes += meta.len();
        }
    }
    Ok(bytes as f64 / (1024.0 * 1024.0))
}

async fn run() -> anyhow::Result<()> {
    let swept = load(RETENTION, PERIODS).await?;
    let kept = load(Duration::from_secs(86_400), CONTRAST).await?;
    let half = PERIODS as usize / 2;
    let last = swept.len() - 1;
    tenon_testkit::bench::line("db_mb_after_1_period", swept[0], "MiB", 1);
    tenon_testkit::bench::line("db_mb_after_2_periods", swept[1], "MiB", 1);
    tenon_testkit::bench::line("db_mb_after_4_periods", swept[3], "MiB", 1);
    tenon_testkit::bench::line("db_mb_after_1h_equivalent", swept[last], "MiB", 1);
    tenon_testkit::bench::line(
        "db_growth_second_half",
        swept[last] / swept[half - 1],
        "x",
        3,
    );
    tenon_testkit::bench::line(
        "db_mb_kept_a_day_after_4_periods",
        kept[kept.len() - 1],
        "MiB",
        1,
    );
    Ok(())
}

/// Post [`RATE`] quotes a second for `periods` periods of [`RETENTION`] to a node that
/// keeps what it did for `retention`; the databases' size after each period.
async fn load(retention: Duration, periods: u32) -> anyhow::Result<Vec<f64>> {
    let erp = MockErp::start().await?;
    let secs = retention.as_secs();
    let config = format!(
        "[server]\nretention_secs = {secs}\nidempotency_retention_secs = {secs}\nsweep_interval_secs = 1\n{}",
        tenon_testkit::quote_to_cash_config(&erp.orders_url(), "concurrency = 8")
    );
    let dir = tempfile::tempdir()?;
    let node = common::start(dir.path(), &config)?;
    let data = dir.path().join("data");
    let mut sizes = Vec::new();
    let mut accepted = 0;
    for period in 0..periods {
        let tag = format!("R{secs}-{period:02}");
        let posted = common::post(&[&node], &tag, Some(RATE), RETENTION).await?;
        accepted += posted.accepted.len();
        sizes.push(db_mb(&data)?);
        eprintln!(
            "retention {secs} s, period {}/{periods}: {accepted} quotes accepted, {} delivered, databases {:.1} MiB",
            period + 1,
            erp.orders(),
            sizes[sizes.len() - 1]
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while erp.orders() < accepted && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(node);
    let delivered = erp.orders();
    anyhow::ensure!(
        delivered >= accepted,
        "{accepted} quotes accepted but {delivered} delivered"
    );
    Ok(sizes)
}
