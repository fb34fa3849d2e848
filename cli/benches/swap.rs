//! Hot swap under load, in one run: the real quote-to-order mapping between the CPQ
//! source and the HTTP sink, fed by concurrent producers at full speed, swapped between
//! two versions: A (the shipped one) and B (the same code as another component: a
//! custom section appended, so its first swap compiles it; its manifest names it).
//!
//! - `swap_throughput_ratio`: orders delivered per second during a window in which
//!   the mapping is swapped every 250 ms, over the same in a steady window (target
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

/// A version of the mapping: its manifest (naming its component, as a hot deploy
/// must) and its component.
struct Version {
    manifest: String,
    wasm: Vec<u8>,
}

impl Version {
    fn new(shipped_manifest: &str, wasm: Vec<u8>, version: &str) -> Version {
        let mut manifest: Vec<String> = Vec::new();
        for line in shipped_manifest.lines() {
            let key = line.split('=').next().unwrap_or_default().trim();
            match key {
                "version" => manifest.push(format!("version = \"{version}\"")),
                "component_digest" => {}
                "component" => {
                    manifest.push(line.to_owned());
                    manifest.push(format!(
                        "component_digest = \"{}\"",
                        tenon::model::digest(&wasm)
                    ));
                }
                _ => manifest.push(line.to_owned()),
            }
        }
        Version {
            manifest: manifest.join("\n") + "\n",
            wasm,
        }
    }

    fn digest(&self) -> String {
        tenon::sandbox::plugin::version_digest(self.manifest.as_bytes(), &self.wasm)
    }

    /// The component first, then the manifest that names it: the watcher sees the
    /// version whole.
    fn install(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("quote_to_order.wasm"), &self.wasm)?;
        std::fs::write(dir.join("plugin.toml"), &self.manifest)?;
        Ok(())
    }
}

/// The same component with a custom section appended: another digest, the same code.
fn with_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    let leb = |mut n: usize| {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    };
    let mut payload = leb(name.len());
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(b"swap bench");
    let mut out = wasm.to_vec();
    out.push(0);
    out.extend(leb(payload.len()));
    out.extend(payload);
    out
}

async fn run() -> anyhow::Result<()> {
    let erp = MockErp::start().await?;
    let dir = tempfile::tempdir()?;
    tenon_cli::artifacts::extract_first_party(&dir.path().join("plugins"))?;
    let mapping_dir = dir.path().join("plugins/quote-to-order");
    let shipped = std::fs::read_to_string(mapping_dir.join("plugin.toml"))?;
    let component = std::fs::read(mapping_dir.join("quote_to_order.wasm"))?;
    let a = Version::new(&shipped, component.clone(), "0.1.0");
    let b = Version::new(
        &shipped,
        with_custom_section(&component, "tenon-swap-bench"),
        "0.1.1",
    );
    a.install(&mapping_dir)?;
    let config_text = format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.erp-sink]
path = "plugins/http-sink"
config = {{ url = "{}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[flows.quote-to-order]
source = "cpq-source"
steps = ["quote-to-order"]
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
                    depths
                        .get("quote-to-order/quote-to-order")
                        .copied()
                        .unwrap_or(0)
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

    // Swap window: a new version every 250 ms, alternating B and A.
    let mut live_ms = Vec::new();
    let w = window(&erp);
    let end = Instant::now() + WINDOW;
    let mut next_is_b = true;
    while Instant::now() < end {
        let version = if next_is_b { &b } else { &a };
        let want = version.digest();
        let written = Instant::now();
        version.install(&mapping_dir)?;
        while runtime
            .plugin("quote-to-order")
            .map(|p| p.digest().to_owned())
            != Some(want.clone())
        {
            anyhow::ensure!(
                written.elapsed() < Duration::from_secs(30),
                "version {want} not live after 30 s: {:?}",
                runtime
                    .plugin_status()
                    .into_iter()
                    .find(|s| s.name == "quote-to-order")
            );
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
