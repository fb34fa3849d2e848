//! Hot swap under load, in one run: the stamping transform (two versions, A and B)
//! between the CPQ source and the HTTP sink, fed by concurrent producers at full
//! speed.
//!
//! - `swap_throughput_ratio`: orders delivered per second during a window in which
//!   the transform is swapped every 250 ms, over the same in a steady window (target
//!   >= 0.9).
//! - `swap_live_ms`: from writing the new version's files to it being live, both
//!   for a version compiled before (the cache) and for the first swap of a version
//!   (a compile), median of the swaps.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tenon::config::Config;
use tenon::sandbox::plugin::RawRequest;
use tenon::server::Server;
use tenon_testkit::mock_erp::MockErp;

const WINDOW: Duration = Duration::from_secs(5);
const PRODUCERS: usize = 16;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

fn install(dir: &Path, wasm: &[u8], version: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join("stamp.wasm"), wasm)?;
    std::fs::write(
        dir.join("plugin.toml"),
        format!(
            "name = \"stamp\"\nversion = \"{version}\"\nkind = \"transform\"\nworld = \"tenon:plugin/transform@0.1.0\"\ncomponent = \"stamp.wasm\"\n"
        ),
    )?;
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let dir = tempfile::tempdir()?;
    tenon_cli::artifacts::extract_first_party(&dir.path().join("plugins"))?;
    let fixture = |name: &str| -> anyhow::Result<Vec<u8>> {
        let (_, _, wasm) = tenon_cli::artifacts::FIXTURES
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| anyhow::anyhow!("no fixture {name}"))?;
        Ok(std::fs::read(wasm)?)
    };
    let (a, b) = (fixture("stamp-a")?, fixture("stamp-b")?);
    let stamp_dir = dir.path().join("plugins/stamp");
    std::fs::create_dir_all(&stamp_dir)?;
    install(&stamp_dir, &a, "1.0.0")?;
    let config_text = format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.stamp]
path = "plugins/stamp"
[plugins.erp-sink]
path = "plugins/http-sink"
config = {{ url = "{}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[flows.stamped]
source = "cpq-source"
steps = ["stamp"]
sink = "erp-sink"
concurrency = 16
"#,
        erp.orders_url()
    );
    let config = Config::parse(&dir.path().join("tenon.toml"), &config_text)?;
    let local = "127.0.0.1:0".parse().ok();
    let listen = tenon::server::Listen {
        ingest: local,
        admin: local,
    };
    let server = Server::start(config, &dir.path().join("data"), listen).await?;
    let runtime = server.runtime.clone();

    // Producers at full speed, straight into ingress's code path.
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let (runtime, stop) = (runtime.clone(), stop.clone());
        producers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Keep the backlog bounded: the producers wait for the pipeline.
                let depth = async || {
                    let depths = runtime.store().depths().await.unwrap_or_default();
                    depths.get("stamped/0").copied().unwrap_or(0)
                };
                while depth().await > 200 && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let body = tenon_testkit::SAMPLES[0]
                    .1
                    .replace("Q-00101", &format!("Q-W{p:02}-{n:07}"));
                let request = RawRequest {
                    content_type: "application/json".into(),
                    headers: vec![],
                    body: body.into_bytes(),
                };
                let _ = runtime.ingest("cpq-source", request).await;
                n += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // warm up

    let window = |erp: &MockErp| {
        let before = erp.orders();
        let started = Instant::now();
        (before, started)
    };
    let rate = |erp: &MockErp, (before, started): (usize, Instant)| {
        (erp.orders() - before) as f64 / started.elapsed().as_secs_f64()
    };

    // Steady state.
    let w = window(&erp);
    tokio::time::sleep(WINDOW).await;
    let steady = rate(&erp, w);

    // Swap window: a new version every 250 ms, alternating A and B.
    let digest = |bytes: &[u8]| tenon::model::digest(bytes);
    let mut live_ms = Vec::new();
    let w = window(&erp);
    let end = Instant::now() + WINDOW;
    let mut next_is_b = true;
    while Instant::now() < end {
        let (wasm, version) = if next_is_b {
            (&b, "2.0.0")
        } else {
            (&a, "1.0.0")
        };
        let want = digest(wasm);
        let written = Instant::now();
        install(&stamp_dir, wasm, version)?;
        while runtime.plugin("stamp").map(|p| p.digest().to_owned()) != Some(want.clone()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        live_ms.push(written.elapsed().as_secs_f64() * 1000.0);
        next_is_b = !next_is_b;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let swapping = rate(&erp, w);
    stop.store(true, Ordering::Relaxed);
    while producers.join_next().await.is_some() {}
    server.stop().await;

    let first = live_ms.first().copied().unwrap_or(f64::NAN);
    let mut cached: Vec<f64> = live_ms.iter().skip(2).copied().collect();
    cached.sort_by(f64::total_cmp);
    let median = cached.get(cached.len() / 2).copied().unwrap_or(f64::NAN);
    tenon_testkit::bench::line("steady_orders_per_s", steady as f64, "1/s", 0);
    tenon_testkit::bench::line("swapping_orders_per_s", swapping as f64, "1/s", 0);
    tenon_testkit::bench::line("swaps_in_window", live_ms.len() as f64, "swaps", 0);
    tenon_testkit::bench::line("swap_throughput_ratio", (swapping / steady) as f64, "x", 3);
    tenon_testkit::bench::line("swap_live_ms", median, "ms", 0);
    tenon_testkit::bench::line("swap_live_first_compile_ms", first, "ms", 0);
    tenon_testkit::bench::line(
        "swap_debounce_ms",
        (tenon::runtime::watch::DEBOUNCE.as_millis()) as f64,
        "ms",
        0,
    );
    Ok(())
}
