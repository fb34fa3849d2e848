//! What exporting every span costs: the quote-to-order flow at saturation (as in
//! `stores`), one node on the redb store, without `[telemetry]` and with every span
//! exported over OTLP/HTTP to a collector (the testkit's, decoding the protobuf, in
//! this process). Runs go off, on, on, off, so that drift on the shared machine
//! falls on both.
//!
//! Prints `bench: tracing_overhead <ratio> x`: throughput without export over
//! throughput with it (the goal is at most 1.10), and the rates and span count
//! behind it.

mod common;

use common::{saturate, start};
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::otlp::OtlpReceiver;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let collector = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let plain = tenon_testkit::quote_to_cash_config(&erp.orders_url(), "concurrency = 32");
    let traced = format!(
        "{plain}\n[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    // A B B A: drift over the run (the mock ERP's log grows) falls on both.
    for round in 0..2 {
        let order = if round == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for exported in order {
            let (config, rates) = if exported {
                (&traced, &mut on)
            } else {
                (&plain, &mut off)
            };
            let node = start(&dir.path().join(format!("{round}-{exported}")), config)?;
            let tag = format!("{}{round}", if exported { "T" } else { "P" });
            let rate = saturate(&erp, &[&node], &tag).await?;
            tenon_testkit::bench::line(
                &format!(
                    "tracing_round_{round}_{}",
                    if exported { "exported" } else { "off" }
                ),
                rate,
                "1/s",
                0,
            );
            rates.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (off, on) = (mean(&off), mean(&on));
    tenon_testkit::bench::line("tracing_off_quotes_per_s", off, "1/s", 0);
    tenon_testkit::bench::line("tracing_exported_quotes_per_s", on, "1/s", 0);
    tenon_testkit::bench::line(
        "tracing_spans_received",
        collector.spans().len() as f64,
        "spans",
        0,
    );
    anyhow::ensure!(
        collector.errors().is_empty(),
        "the collector refused: {:?}",
        collector.errors()
    );
    tenon_testkit::bench::line("tracing_overhead", off / on, "x", 3);
    Ok(())
}
