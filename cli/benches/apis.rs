//! Synchronous API answers, the release binary in its own process: the quote
//! validation route (`[apis.validate-quote]`: the CPQ source, the quote-to-order
//! mapping and the validation gateway run at once, nothing queued) on ~2 KB quotes.
//!
//! 1. `api_rps`: answers a second at saturation (this process calling on 32
//!    keep-alive connections as fast as answered);
//! 2. `api_p50_ms`, `api_p99_ms`: latency at half that rate, each call timed from the
//!    moment it was scheduled (a stall delays the calls behind it, and counts).

mod common;

use std::time::{Duration, Instant};

const LANES: usize = 32;
const RUN: Duration = Duration::from_secs(8);

const CONFIG: &str = r#"
[plugins.master]
path = "plugins/canonical-source"
[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.gateway]
path = "plugins/order-gateway"
config = { tax_nexus = '["DE", "FR", "US"]' }

[flows.master-data]
source = "master"
steps = ["gateway"]

[apis.validate-quote]
source = "cpq-source"
steps = ["quote-to-order", "gateway"]
"#;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// Call the route on [`LANES`] connections for [`RUN`], as fast as answered or at
/// `rate` per second in all: the latency of each `200`, from its scheduled time.
async fn load(node: &common::Node, rate: Option<f64>) -> anyhow::Result<Vec<Duration>> {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let (addr, auth) = (node.addr.clone(), node.auth.clone());
        let quote = tenon_testkit::SAMPLES[0].1.to_owned();
        lanes.spawn(async move {
            let mut conn = common::Conn::open(&addr, &auth).await?;
            let gap = rate.map(|r| Duration::from_secs_f64(LANES as f64 / r));
            let started = Instant::now();
            let mut next =
                started + gap.map_or(Duration::ZERO, |g| g.mul_f64(lane as f64 / LANES as f64));
            let mut took = Vec::new();
            while started.elapsed() < RUN {
                let due = match gap {
                    Some(gap) => {
                        let due = next;
                        tokio::time::sleep_until(due.into()).await;
                        next += gap;
                        due
                    }
                    None => Instant::now(),
                };
                let (status, body) = conn
                    .post_json("/v1/apis/validate-quote", quote.clone())
                    .await?;
                anyhow::ensure!(
                    status == 200,
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                );
                took.push(due.elapsed());
            }
            Ok::<_, anyhow::Error>(took)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = lanes.join_next().await {
        all.extend(done??);
    }
    all.sort();
    Ok(all)
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = common::start(dir.path(), CONFIG)?;
    // The customer of the quotes, into the gateway's master data (queued, then read by
    // every validation).
    let customer = r#"[{"kind": "CustomerUpserted", "key": "0015g00000XyZ12AAB",
        "body": {"id": "0015g00000XyZ12AAB", "name": "Northwind Traders GmbH", "country": "DE"}}]"#;
    let url = format!("http://{}", node.addr);
    let reply = tenon_cli::client::request(
        "POST",
        &format!("{url}/v1/sources/master"),
        &[("authorization", &node.auth)],
        Some(("application/json", customer.as_bytes().to_vec())),
    )
    .await?;
    anyhow::ensure!(reply.status == 202, "master data: {}", reply.status);
    // Until the master data is in, the gateway refuses the quote (422).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = tenon_cli::client::request(
            "POST",
            &format!("{url}/v1/apis/validate-quote"),
            &[("authorization", &node.auth)],
            Some((
                "application/json",
                tenon_testkit::SAMPLES[0].1.as_bytes().to_vec(),
            )),
        )
        .await?;
        if reply.status == 200 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "never validated: {}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up, then saturate.
    load(&node, Some(200.0)).await?;
    let saturated = load(&node, None).await?;
    let rps = saturated.len() as f64 / RUN.as_secs_f64();
    tenon_testkit::bench::line("api_rps", rps, "1/s", 0);
    let rate = rps / 2.0;
    let fixed = load(&node, Some(rate)).await?;
    let at = |q: f64| fixed[((fixed.len() as f64 * q) as usize).min(fixed.len() - 1)];
    tenon_testkit::bench::line("api_fixed_rate", rate, "1/s", 0);
    tenon_testkit::bench::line("api_p50_ms", at(0.50).as_secs_f64() * 1000.0, "ms", 2);
    tenon_testkit::bench::line("api_p99_ms", at(0.99).as_secs_f64() * 1000.0, "ms", 2);
    Ok(())
}
