//! Does a spinning guest stall the host? The release `tenon` binary runs four looping
//! transforms per core (each retried as soon as its deadline stops it, so they spin
//! for the whole run); this process asks `/healthz` every 10 ms meanwhile and reports
//! the latency percentiles, beside the same figures with no guest running.
//!
//! Lines: `healthz_p99_ms_idle`, `healthz_p99_ms_under_loops` (and p50, max).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROBES: usize = 300;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    tenon_cli::artifacts::extract_first_party(&plugins)?;
    for (name, manifest, component) in tenon_cli::artifacts::FIXTURES {
        if *name == "misbehave" {
            let target = plugins.join(name);
            std::fs::create_dir_all(&target)?;
            std::fs::copy(manifest, target.join("plugin.toml"))?;
            std::fs::copy(component, target.join("misbehave.wasm"))?;
        }
    }
    let loops = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = String::new();
    for n in 0..loops {
        config.push_str(&format!(
            "[plugins.loop-{n}]\npath = \"plugins/misbehave\"\nconfig = {{ mode = \"loop\" }}\ngrants = {{ timeout_ms = 1000 }}\n[plugins.src-{n}]\npath = \"plugins/canonical-source\"\n[flows.loop-{n}]\nsource = \"src-{n}\"\nsteps = [\"loop-{n}\"]\nmax_attempts = 1000\nbackoff_ms = 1\nmax_backoff_ms = 1\n"
        ));
    }
    std::fs::write(dir.path().join("tenon.toml"), config)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenon"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log", "error", "--config"])
        .arg(dir.path().join("tenon.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut base = String::new();
    for line in BufReader::new(stdout).lines() {
        if let Some(addr) = line?.strip_prefix("tenon listening on ") {
            base = addr.to_owned();
            break;
        }
    }
    let result = async {
        anyhow::ensure!(!base.is_empty(), "tenon did not start");
        let token = std::fs::read_to_string(dir.path().join("data/admin.key"))?;
        let auth = format!("Bearer {}", token.trim());
        report("idle", &probe(&base).await?);
        for n in 0..loops {
            let body = format!(r#"{{"kind": "CustomerUpserted", "key": "c{n}", "body": {{}}}}"#);
            let reply = tenon_cli::client::request(
                "POST",
                &format!("{base}/v1/sources/src-{n}"),
                &[("authorization", &auth)],
                Some(("application/json", body.into_bytes())),
            )
            .await?;
            anyhow::ensure!(reply.status == 202, "ingest: HTTP {}", reply.status);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        tenon_testkit::bench::line("stalls_looping_guests", loops as f64, "guests", 0);
        report("under_loops", &probe(&base).await?);
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `/healthz` latencies in ms, one request every 10 ms on a fresh connection.
async fn probe(base: &str) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let asked = Instant::now();
        let reply = tenon_cli::client::get(&format!("{base}/healthz")).await?;
        anyhow::ensure!(reply.status == 200, "healthz: HTTP {}", reply.status);
        out.push(asked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn report(phase: &str, sorted: &[f64]) {
    let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    tenon_testkit::bench::line(&format!("healthz_p50_ms_{phase}"), pct(0.50), "ms", 2);
    tenon_testkit::bench::line(&format!("healthz_p99_ms_{phase}"), pct(0.99), "ms", 2);
    tenon_testkit::bench::line(
        &format!("healthz_max_ms_{phase}"),
        sorted.last().copied().unwrap_or(f64::NAN),
        "ms",
        2,
    );
}
