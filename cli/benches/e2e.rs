//! End to end, accepted -> delivered: this process is the load generator (and the
//! mock ERP); the runtime is the release `tenon` binary in its own process, with the
//! quote-to-order flow (CPQ source, quote-to-order transform, HTTP sink), ~2 KB quotes.
//!
//! 1. Saturation: lanes post as fast as they are answered for a few seconds; the
//!    figure is orders delivered at the ERP per second (`e2e_quotes_per_s`), and the
//!    node's CPU time per quote delivered (`e2e_node_cpu_us_per_quote`: all its
//!    threads, from `/proc`; it moves less than the rate when the machine is shared).
//! 2. Latency at 50% and at 80% of that rate, a fixed offered load: p50 / p99 / p99.9
//!    from the moment each quote was *scheduled* to be posted (so a stall delays the
//!    sends behind it and is counted, not hidden) to the moment its order reaches the
//!    ERP (`e2e_p50_ms`, `e2e_p99_ms`, `e2e_p999_ms`, and `_80` for 80%). Quotes accepted
//!    but not delivered within a minute are counted and printed (`e2e_undelivered`).
//! 3. The example's chain (the mapping, the gateway, the router, then the ERP's own
//!    flow) at saturation with its three transform steps fused (the default) and hop
//!    by hop (`fuse = false`), runs in the order fused, unfused, unfused, fused:
//!    `e2e_chain_quotes_per_s`, `e2e_chain_unfused_quotes_per_s` and their ratio
//!    `e2e_chain_fused_vs_unfused`, and the node's CPU time per quote delivered in
//!    each (`e2e_chain_node_cpu_us_per_quote`, `e2e_chain_unfused_node_cpu_us_per_quote`).
//!
//! `TENON_BENCH_SATURATION_ONLY=1` runs only part 1, `TENON_BENCH_CHAIN_ONLY=1` only
//! part 3; `TENON_BENCH_BIN=<path>` runs another build of the `tenon` binary (two
//! builds compare in alternating runs).

mod common;

use common::{post, start};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

const SATURATION: Duration = Duration::from_secs(6);
const STEADY: Duration = Duration::from_secs(6);

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    if !flag("TENON_BENCH_CHAIN_ONLY") {
        single_flow().await?;
    }
    if !flag("TENON_BENCH_SATURATION_ONLY") {
        chain().await?;
    }
    Ok(())
}

/// Parts 1 and 2: the quote-to-order flow, at saturation then at a fixed load.
async fn single_flow() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let dir = tempfile::tempdir()?;
    let config = tenon_testkit::quote_to_cash_config(&erp.orders_url(), "concurrency = 32");
    // The load posts as a partner system does: with an API key (the admin key the
    // first start wrote holds `ingest:*`).
    let node = start(dir.path(), &config)?;
    let result = async {
        // 1. Saturation.
        let before = erp.orders();
        let started = Instant::now();
        let cpu = node.cpu()?;
        let sent = post(&[&node], "S", None, SATURATION).await?.accepted;
        drain(&erp, before + sent.len(), Duration::from_secs(60)).await;
        let delivered = erp.orders() - before;
        let rate = delivered as f64 / started.elapsed().as_secs_f64();
        // What the node spends on a quote, whatever else the machine runs: steadier
        // than the rate on a shared machine, so two builds compare by it.
        let cpu = node.cpu()?.saturating_sub(cpu);
        tenon_testkit::bench::line("e2e_offered_saturation", sent.len() as f64, "quotes", 0);
        tenon_testkit::bench::line("e2e_quotes_per_s", rate as f64, "1/s", 0);
        tenon_testkit::bench::line(
            "e2e_node_cpu_us_per_quote",
            cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
            "us",
            0,
        );

        if flag("TENON_BENCH_SATURATION_ONLY") {
            return Ok(());
        }
        // 2. Latency at 50% and 80% of that rate.
        for (share, suffix, tag) in [(0.5, "", "L"), (0.8, "_80", "M")] {
            let offered = (rate * share).max(10.0);
            let before = erp.orders();
            let sent = post(&[&node], tag, Some(offered), STEADY).await?.accepted;
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
    drop(node);
    result
}

/// Part 3: the example's chain, fused and hop by hop.
async fn chain() -> anyhow::Result<()> {
    // (quotes a second, node CPU µs a quote), averaged over each side's two runs.
    let (mut fused, mut unfused) = ((0f64, 0f64), (0f64, 0f64));
    for (round, fuse) in [true, false, false, true].into_iter().enumerate() {
        let erp = MockErp::start().await?;
        let dir = tempfile::tempdir()?;
        let node = start(dir.path(), &chain_config(&erp.orders_url(), fuse))?;
        let master = post_customers(&node).await;
        let measured = async {
            master?;
            // The customers are in the gateway's master once a quote of one passes.
            let probe = post(
                &[&node],
                &format!("P{round}"),
                Some(10.0),
                Duration::from_millis(100),
            )
            .await?;
            drain(&erp, probe.accepted.len(), Duration::from_secs(30)).await;
            anyhow::ensure!(
                erp.orders() == probe.accepted.len(),
                "the probe quotes were not delivered"
            );
            let (cpu, before) = (node.cpu()?, erp.orders());
            let rate = common::saturate(&erp, &[&node], &format!("C{round}")).await?;
            let cpu = node.cpu()?.saturating_sub(cpu);
            let per_quote = cpu.as_secs_f64() * 1e6 / (erp.orders() - before).max(1) as f64;
            Ok::<_, anyhow::Error>((rate, per_quote))
        }
        .await;
        let (rate, per_quote) = measured?;
        eprintln!(
            "chain, fuse = {fuse}: {rate:.0} quotes/s, {per_quote:.0} us of node CPU a quote"
        );
        let side = if fuse { &mut fused } else { &mut unfused };
        side.0 += rate / 2.0;
        side.1 += per_quote / 2.0;
    }
    tenon_testkit::bench::line("e2e_chain_quotes_per_s", fused.0, "1/s", 0);
    tenon_testkit::bench::line("e2e_chain_unfused_quotes_per_s", unfused.0, "1/s", 0);
    tenon_testkit::bench::line("e2e_chain_fused_vs_unfused", fused.0 / unfused.0, "x", 3);
    tenon_testkit::bench::line("e2e_chain_node_cpu_us_per_quote", fused.1, "us", 0);
    tenon_testkit::bench::line(
        "e2e_chain_unfused_node_cpu_us_per_quote",
        unfused.1,
        "us",
        0,
    );
    Ok(())
}

/// Whether the environment variable `name` is set (to anything but `0`): the bench's
/// switches, to run one part alone (two builds of the host, given by
/// `TENON_BENCH_BIN`, compare in alternating runs).
fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The example's quote chain: mapping, gateway (with its customer master) and router
/// in the quote flow, every order to one ERP flow.
fn chain_config(erp: &str, fuse: bool) -> String {
    format!(
        r#"
[plugins.master]
path = "plugins/canonical-source"
[plugins.cpq-source]
path = "plugins/cpq-source"
config = {{ po_number_field = "Customer_PO__c" }}
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.gateway]
path = "plugins/order-gateway"
config = {{ tax_nexus = '["DE", "FR", "US"]' }}
[plugins.router]
path = "plugins/entity-router"
config = {{ entities = '{{"*": "DE01"}}' }}
[plugins.erp-sink]
path = "plugins/http-sink"
config = {{ url = "{erp}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.master-data]
source = "master"
steps = ["gateway"]

[flows.quote-to-order]
source = "cpq-source"
steps = ["quote-to-order", "gateway", "router"]
concurrency = 32
fuse = {fuse}

[flows.erp]
subscribe = ["OrderAccepted"]
sink = "erp-sink"
concurrency = 32
"#
    )
}

/// Post the samples' customers to the master source.
async fn post_customers(node: &common::Node) -> anyhow::Result<()> {
    let customers = include_str!("../../examples/quote-to-cash/samples/customers.json");
    let (status, body) = common::Conn::open(&node.addr, &node.auth)
        .await?
        .post_json("/v1/sources/master", customers)
        .await?;
    anyhow::ensure!(
        status == 202,
        "customers refused: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// Wait until the ERP has `target` orders (or the timeout passes).
async fn drain(erp: &MockErp, target: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while erp.orders() < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
