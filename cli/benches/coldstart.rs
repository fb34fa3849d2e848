//! Cold start with a warm compile cache: the example's config (11 plugins in 8 flows)
//! on a data directory whose compiled components are cached (a restart), from the
//! process's spawn to the first message delivered: a Zuora subscription through the
//! revenue schedule to the finance endpoint, two flows and three plugins. Prints `cold_start_cached_ms` and per plugin (the goal is at most 5 ms a
//! plugin), and the first start's, which compiles every component, for scale.

mod common;

use common::{Node, prepare, spawn};
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

const PLUGINS: f64 = 11.0;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let mock = erp.orders_url();
    let mock = mock.trim_end_matches("/sap/orders");
    let dir = tempfile::tempdir()?;
    let config = tenon_cli::demo::EXAMPLE_CONFIG.replace("http://127.0.0.1:9400", mock);
    prepare(dir.path(), &config)?;
    std::fs::write(dir.path().join("stripe-webhook-secret.txt"), "whsec_bench")?;

    let first = first_delivery(&erp, dir.path(), "SM-00901").await?;
    let cached = first_delivery(&erp, dir.path(), "SM-00902").await?;
    tenon_testkit::bench::line("cold_start_first_ms", first.as_secs_f64() * 1000.0, "ms", 0);
    tenon_testkit::bench::line(
        "cold_start_cached_ms",
        cached.as_secs_f64() * 1000.0,
        "ms",
        0,
    );
    tenon_testkit::bench::line(
        "cold_start_cached_ms_per_plugin",
        cached.as_secs_f64() * 1000.0 / PLUGINS,
        "ms",
        1,
    );
    Ok(())
}

/// Spawn the node, post a subscription as soon as it listens, and wait for its
/// revenue schedule at the finance endpoint: how long from the spawn.
async fn first_delivery(
    erp: &MockErp,
    dir: &std::path::Path,
    number: &str,
) -> anyhow::Result<Duration> {
    let before = erp.received().len();
    let started = Instant::now();
    let node: Node = spawn(dir)?;
    // A new order each time (the key is the order and subscription numbers).
    let order = SUBSCRIPTION
        .replace("OM-00001", &format!("OM-{number}"))
        .replace("SM-00001", number);
    post(&node, "zuora", &order).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while erp.received().len() == before {
        anyhow::ensure!(Instant::now() < deadline, "{number} never reached finance");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

const SUBSCRIPTION: &str =
    include_str!("../../examples/quote-to-cash/samples/zuora-subscription.json");

async fn post(node: &Node, source: &str, body: &str) -> anyhow::Result<()> {
    let reply = tenon_cli::client::request(
        "POST",
        &format!("http://{}/v1/sources/{source}", node.addr),
        &[("authorization", node.auth.as_str())],
        Some(("application/json", body.as_bytes().to_vec())),
    )
    .await?;
    anyhow::ensure!(reply.status == 202, "{source}: {}", reply.status);
    Ok(())
}
