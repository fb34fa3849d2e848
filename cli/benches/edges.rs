//! What the edges' defences cost and do, the release binary in its own process:
//!
//! 1. ingress throughput (quotes accepted per second at saturation, this process
//!    posting on 64 keep-alive connections) with per-key and per-source token
//!    buckets configured (generous: nothing is refused, so the figure is what the
//!    checks cost) over without, runs in A B B A order: `ingress_rps_with_limits_vs_without`;
//! 2. 200 slow-header clients (half a request line, then a byte a second) against
//!    a 2 s header timeout: the time until the last one is closed,
//!    `slow_clients_closed_within_s`.

mod common;

use common::{post_for, start};
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INGRESS: Duration = Duration::from_secs(6);
const SLOW_CLIENTS: usize = 200;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let dir = tempfile::tempdir()?;
    let plain = tenon_testkit::quote_to_cash_config(&erp.orders_url(), "concurrency = 32");
    let limited = format!(
        "[server.limits]\nper_key = {{ per_second = 1000000, burst = 1000000 }}\n{}",
        plain.replace(
            "path = \"plugins/cpq-source\"",
            "path = \"plugins/cpq-source\"\nrate_limit = { per_second = 1000000, burst = 1000000 }"
        )
    );
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // A B B A: drift over the run (the mock ERP's log grows) falls on both.
    for round in 0..2 {
        let order = if round == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for limits in order {
            let config = if limits { &limited } else { &plain };
            let node = start(&dir.path().join(format!("{round}-{limits}")), config)?;
            let (accepted, refused) =
                post_for(&[&node], &format!("{}{round}", u8::from(limits)), INGRESS).await?;
            anyhow::ensure!(
                refused == 0,
                "{refused} refused: the limits are not generous"
            );
            let rate = accepted as f64 / INGRESS.as_secs_f64();
            tenon_testkit::bench::line(
                &format!(
                    "ingress_round_{round}_{}",
                    if limits { "limits" } else { "none" }
                ),
                rate,
                "1/s",
                0,
            );
            if limits { &mut with } else { &mut without }.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    tenon_testkit::bench::line("ingress_rps_without_limits", mean(&without), "1/s", 0);
    tenon_testkit::bench::line("ingress_rps_with_limits", mean(&with), "1/s", 0);
    tenon_testkit::bench::line(
        "ingress_rps_with_limits_vs_without",
        mean(&with) / mean(&without),
        "x",
        3,
    );

    // Slow clients.
    let config = format!("[server.limits]\nheader_timeout_ms = 2000\n{plain}");
    let node = start(&dir.path().join("slow"), &config)?;
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..SLOW_CLIENTS {
        let addr = node.addr.clone();
        clients.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.write_all(b"POST /v1/sources/cpq-so").await?;
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return Ok::<_, anyhow::Error>(started.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stream.write_all(b"u").await.is_err() {
                            return Ok(started.elapsed());
                        }
                    }
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "still open after 60 s"
                );
            }
        });
    }
    let mut last = Duration::ZERO;
    while let Some(closed) = clients.join_next().await {
        last = last.max(closed??);
    }
    tenon_testkit::bench::line("slow_clients", SLOW_CLIENTS as f64, "connections", 0);
    tenon_testkit::bench::line("slow_clients_closed_within_s", last.as_secs_f64(), "s", 2);
    Ok(())
}
