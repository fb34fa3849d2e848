//! The two stores end to end, in one run: the quote-to-order flow (CPQ source,
//! quote-to-order, HTTP sink) at saturation, ~2 KB quotes, this process being the
//! load generator and the mock ERP, each runtime the release `tenon` binary in its
//! own process:
//!
//! 1. one node on the redb store;
//! 2. one node on the NATS store (a local nats-server, one replica);
//! 3. two nodes on that NATS store, the load split between them.
//!
//! Prints `bench: nats_vs_redb_single_node <ratio> x` and
//! `bench: nats_two_nodes_vs_one <ratio> x` (everything shares this 2-core machine:
//! the generator, the ERP, nats-server and the nodes), and the rates behind them.

mod common;

use common::{saturate, start};
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::nats::NatsCluster;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let dir = tempfile::tempdir()?;
    let config = tenon_testkit::quote_to_cash_config(&erp.orders_url(), "concurrency = 32");

    let redb = {
        let node = start(&dir.path().join("redb"), &config)?;
        saturate(&erp, &[&node], "R").await?
    };
    tenon_testkit::bench::line("stores_redb_quotes_per_s", redb as f64, "1/s", 0);

    let nats = NatsCluster::start(1).map_err(anyhow::Error::msg)?;
    let one = {
        let config = format!("{config}{}", nats.store_section("one", 1));
        let node = start(&dir.path().join("nats-one"), &config)?;
        saturate(&erp, &[&node], "N").await?
    };
    tenon_testkit::bench::line("stores_nats_quotes_per_s", one as f64, "1/s", 0);
    tenon_testkit::bench::line("nats_vs_redb_single_node", (one / redb) as f64, "x", 3);

    let two = {
        let config = format!("{config}{}", nats.store_section("two", 1));
        let a = start(&dir.path().join("nats-a"), &config)?;
        let b = start(&dir.path().join("nats-b"), &config)?;
        saturate(&erp, &[&a, &b], "T").await?
    };
    tenon_testkit::bench::line("stores_nats_two_nodes_quotes_per_s", two as f64, "1/s", 0);
    tenon_testkit::bench::line("nats_two_nodes_vs_one", (two / one) as f64, "x", 3);
    Ok(())
}
