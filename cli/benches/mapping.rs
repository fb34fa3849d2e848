//! The quote-to-order mapping as a WASM component against the same code compiled
//! natively, on ~2 KB and ~10 KB quotes (MessagePack, as between steps):
//!
//! - `native`: `quote_to_order::map_encoded` (decode, validate, split, encode);
//! - `wasm_reused`: the component, its instance kept across messages (what
//!   `reuse_instances = true` gives a transform);
//! - `wasm_fresh`: the component, a fresh instance per message (the runtime's default);
//! - `fresh_<variant>_2kb`: the fresh path on engines with other pooling settings
//!   (how much of a slot stays resident, `memset` instead of `PAGEMAP_SCAN`), and each over the default
//!   (`fresh_<variant>_vs_default`, above 1 is faster);
//! - `wasm_*_unlimited`: the same on an engine without the limits (no epoch deadline,
//!   no memory limiter), for `limits_overhead`: time per message with the limits over
//!   time without them (1.15 would be 15% overhead).
//!
//! Each figure is the best of several interleaved rounds, so that a noisy neighbour
//! on a shared machine costs all three alike. Prints `bench: <name> <value> <unit>`.
//!
//! For trying a change to the guest (another allocator, other compiler flags):
//! `TENON_BENCH_CANDIDATE=<quote_to_order.wasm>` measures that build against the
//! shipped one instead, as `candidate_vs_shipped_{reused,fresh}_<size>` (above 1,
//! the candidate is faster).
//!
//! For profiling one path alone (e.g. under `perf record`): `TENON_BENCH_FRESH_ONLY=1`
//! or `TENON_BENCH_REUSED_ONLY=1` (of the candidate, when one is given), and
//! `TENON_BENCH_SIZE=2kb` or `10kb` for one size; `TENON_BENCH_NO_EPOCH=1`,
//! `TENON_BENCH_KEEP_RESIDENT=<bytes>` and `TENON_BENCH_NO_PAGEMAP_SCAN=1` change the
//! engine's settings; `TENON_PERFMAP=1` lets `perf report` name the guest's functions
//! (build the plugin with `--config profile.release.strip=false` and pass it as a
//! candidate to see Rust names).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tenon::model::StoredMessage;
use tenon::sandbox::engine::{Engine, EngineOptions};
use tenon::sandbox::plugin::{Plugin, PluginSettings};
use tenon::store::redb::RedbStore;
use tenon::store::{NodeDb, Store};
use tenon_sdk::model::{Encoding, Quote, QuoteLine};

const ROUND: Duration = Duration::from_millis(700);
const ROUNDS: usize = 4;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    tenon_cli::artifacts::extract_first_party(&dir.path().join("plugins"))?;
    let data = dir.path().join("data");
    let node = NodeDb::open(&data)?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&node)?);
    let mut options = EngineOptions::default();
    if let Ok(v) = std::env::var("TENON_BENCH_KEEP_RESIDENT") {
        options.keep_resident = v.parse()?;
    }
    if std::env::var_os("TENON_BENCH_NO_EPOCH").is_some() {
        options.epoch_interruption = false;
    }
    if std::env::var_os("TENON_BENCH_NO_PAGEMAP_SCAN").is_some() {
        options.pagemap_scan = false;
    }
    options.perfmap = std::env::var_os("TENON_PERFMAP").is_some();
    eprintln!("engine options: {options:?}");
    let engine = Engine::with_options(node.clone(), store.clone(), &data, &options)?;
    let mapping = dir.path().join("plugins/quote-to-order");
    let plugin = Plugin::load(
        &engine,
        "quote-to-order",
        &mapping,
        &PluginSettings::default(),
    )?;
    let reuse = PluginSettings {
        reuse_instances: true,
        ..PluginSettings::default()
    };
    let kept = Plugin::load(&engine, "quote-to-order", &mapping, &reuse)?;

    let unlimited_data = dir.path().join("data-unlimited");
    let unlimited_engine = Engine::with_options(
        node.clone(),
        store.clone(),
        &unlimited_data,
        &EngineOptions {
            epoch_interruption: false,
            memory_limiter: false,
            ..options.clone()
        },
    )?;
    let unlimited = Plugin::load(
        &unlimited_engine,
        "quote-to-order",
        &mapping,
        &PluginSettings::default(),
    )?;
    let kept_unlimited = Plugin::load(&unlimited_engine, "quote-to-order", &mapping, &reuse)?;

    let one_path = ["TENON_BENCH_FRESH_ONLY", "TENON_BENCH_REUSED_ONLY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let only_size = std::env::var("TENON_BENCH_SIZE").ok();
    if let Some(size) = only_size.as_deref() {
        anyhow::ensure!(
            ["2kb", "10kb"].contains(&size),
            "TENON_BENCH_SIZE is `{size}`: 2kb or 10kb"
        );
    }
    let mut headline = Vec::new();
    for (label, size) in [("2kb", 2 * 1024), ("10kb", 10 * 1024)] {
        if only_size.as_deref().is_some_and(|only| only != label) {
            continue;
        }
        let body = quote_of_size(size)?;
        let message = quote_message(body.clone());
        // Same code, same answer: the component's output equals the native one.
        let native_out = quote_to_order::map_encoded(Encoding::MsgPack, &body)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let wasm_out: Vec<Vec<u8>> = plugin
            .transform(&message)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .map(|m| m.body)
            .collect();
        anyhow::ensure!(native_out == wasm_out, "WASM and native outputs differ");

        if one_path {
            // The candidate alone, when there is one (to profile it by name).
            let reused_only = std::env::var_os("TENON_BENCH_REUSED_ONLY").is_some();
            let (path, settings) = match reused_only {
                true => ("reused", &reuse),
                false => ("fresh", &PluginSettings::default()),
            };
            let loaded = match std::env::var_os("TENON_BENCH_CANDIDATE") {
                Some(wasm) => {
                    let candidate = candidate_plugin(&mapping, std::path::Path::new(&wasm))?;
                    Some(Plugin::load(
                        &engine,
                        "quote-to-order",
                        &candidate,
                        settings,
                    )?)
                }
                None => None,
            };
            let instance = match (&loaded, reused_only) {
                (Some(candidate), _) => candidate,
                (None, true) => &kept,
                (None, false) => &plugin,
            };
            let per_sec = rate(async || {
                let _ = std::hint::black_box(instance.transform(&message).await);
            })
            .await;
            tenon_testkit::bench::line(&format!("wasm_{path}_{label}"), per_sec as f64, "msg/s", 0);
            continue;
        }
        if let Some(wasm) = std::env::var_os("TENON_BENCH_CANDIDATE") {
            let candidate = candidate_plugin(&mapping, std::path::Path::new(&wasm))?;
            let fresh = Plugin::load(
                &engine,
                "quote-to-order",
                &candidate,
                &PluginSettings::default(),
            )?;
            let kept_candidate = Plugin::load(&engine, "quote-to-order", &candidate, &reuse)?;
            let reused = paired(&kept, &kept_candidate, &message).await;
            let fresh = paired(&plugin, &fresh, &message).await;
            tenon_testkit::bench::line(
                &format!("candidate_vs_shipped_reused_{label}"),
                reused,
                "x",
                3,
            );
            tenon_testkit::bench::line(
                &format!("candidate_vs_shipped_fresh_{label}"),
                fresh,
                "x",
                3,
            );
            continue;
        }
        let (mut native, mut wasm_reused, mut wasm_fresh) = (0f64, 0f64, 0f64);
        let (mut fresh_unlimited, mut reused_free) = (0f64, 0f64);
        for _ in 0..ROUNDS {
            native = native.max(
                rate(async || {
                    let _ =
                        std::hint::black_box(quote_to_order::map_encoded(Encoding::MsgPack, &body));
                })
                .await,
            );
            wasm_reused = wasm_reused.max(
                rate(async || {
                    let _ = std::hint::black_box(kept.transform(&message).await);
                })
                .await,
            );
            wasm_fresh = wasm_fresh.max(
                rate(async || {
                    let _ = std::hint::black_box(plugin.transform(&message).await);
                })
                .await,
            );
            fresh_unlimited = fresh_unlimited.max(
                rate(async || {
                    let _ = std::hint::black_box(unlimited.transform(&message).await);
                })
                .await,
            );
            reused_free = reused_free.max(
                rate(async || {
                    let _ = std::hint::black_box(kept_unlimited.transform(&message).await);
                })
                .await,
            );
        }
        tenon_testkit::bench::line(
            &format!("wasm_fresh_unlimited_{label}"),
            fresh_unlimited,
            "msg/s",
            0,
        );
        tenon_testkit::bench::line(
            &format!("wasm_reused_unlimited_{label}"),
            reused_free,
            "msg/s",
            0,
        );
        tenon_testkit::bench::line(
            &format!("limits_overhead_fresh_{label}"),
            fresh_unlimited / wasm_fresh,
            "x",
            3,
        );
        tenon_testkit::bench::line(
            &format!("limits_overhead_reused_{label}"),
            reused_free / wasm_reused,
            "x",
            3,
        );
        tenon_testkit::bench::line(
            &format!("quote_bytes_{label}"),
            body.len() as f64,
            "bytes",
            0,
        );
        tenon_testkit::bench::line(&format!("native_{label}"), native, "msg/s", 0);
        tenon_testkit::bench::line(&format!("wasm_reused_{label}"), wasm_reused, "msg/s", 0);
        tenon_testkit::bench::line(&format!("wasm_fresh_{label}"), wasm_fresh, "msg/s", 0);
        tenon_testkit::bench::line(
            &format!("wasm_vs_native_reused_{label}"),
            wasm_reused / native,
            "x",
            3,
        );
        tenon_testkit::bench::line(
            &format!("wasm_vs_native_fresh_{label}"),
            wasm_fresh / native,
            "x",
            3,
        );
        headline.push((
            wasm_reused / native,
            wasm_fresh / native,
            fresh_unlimited / wasm_fresh,
        ));
    }
    if one_path {
        return Ok(());
    }
    fresh_variants(dir.path(), &node, &store, &mapping).await?;
    // The headline ratios: the ~2 KB quote (when it ran).
    if let (Some((reused, fresh, limits)), None | Some("2kb")) =
        (headline.first(), only_size.as_deref())
    {
        tenon_testkit::bench::line("wasm_vs_native_reused", *reused, "x", 3);
        tenon_testkit::bench::line("wasm_vs_native_fresh", *fresh, "x", 3);
        // On the runtime's own path (a fresh instance per message).
        tenon_testkit::bench::line("limits_overhead", *limits, "x", 3);
    }
    Ok(())
}

/// The fresh path (2 KB) on engines with other pooling settings, rounds interleaved.
async fn fresh_variants(
    dir: &std::path::Path,
    node: &NodeDb,
    store: &Arc<dyn Store>,
    mapping: &std::path::Path,
) -> anyhow::Result<()> {
    let base = EngineOptions::default();
    let variants = [
        ("default", base.clone()),
        (
            // What a kernel without PAGEMAP_SCAN gets: memset the resident part.
            "memset_2mb",
            EngineOptions {
                pagemap_scan: false,
                keep_resident: 2 << 20,
                ..base.clone()
            },
        ),
        (
            "keep_resident_0",
            EngineOptions {
                keep_resident: 0,
                ..base.clone()
            },
        ),
        (
            // The default before it was 16 MiB with PAGEMAP_SCAN.
            "keep_resident_2mb",
            EngineOptions {
                keep_resident: 2 << 20,
                ..base.clone()
            },
        ),
    ];
    let message = quote_message(quote_of_size(2 * 1024)?);
    let mut plugins = Vec::new();
    for (name, options) in &variants {
        // One cache for all: the component compiles once.
        let engine = Engine::with_options(node.clone(), store.clone(), &dir.join("data"), options)?;
        let plugin = Plugin::load(
            &engine,
            "quote-to-order",
            mapping,
            &PluginSettings::default(),
        )?;
        plugins.push((*name, plugin, 0f64));
    }
    for _ in 0..ROUNDS {
        for (_, plugin, best) in &mut plugins {
            let per_sec = rate(async || {
                let _ = std::hint::black_box(plugin.transform(&message).await);
            })
            .await;
            *best = best.max(per_sec);
        }
    }
    let default = plugins[0].2;
    for (name, _, best) in &plugins {
        tenon_testkit::bench::line(&format!("fresh_{name}_2kb"), *best, "msg/s", 0);
        if *name != "default" {
            tenon_testkit::bench::line(&format!("fresh_{name}_vs_default"), best / default, "x", 3);
        }
    }
    Ok(())
}

/// The quote `body` as the mapping receives it between steps.
fn quote_message(body: Vec<u8>) -> StoredMessage {
    StoredMessage {
        id: "bench".into(),
        key: "Q-BENCH".into(),
        kind: "QuoteApproved".into(),
        content_type: "application/msgpack".into(),
        headers: vec![],
        body,
    }
}

/// The median, over 20 rounds of 250 ms each taken in pairs, of `candidate`'s rate
/// over `shipped`'s on `message`: pairs of short rounds, so that a noisy neighbour
/// costs both sides of a pair alike (above 1, the candidate is faster).
async fn paired(shipped: &Plugin, candidate: &Plugin, message: &StoredMessage) -> f64 {
    let mut ratios = Vec::new();
    for _ in 0..20 {
        let a = rate_for(Duration::from_millis(250), async || {
            let _ = std::hint::black_box(shipped.transform(message).await);
        })
        .await;
        let b = rate_for(Duration::from_millis(250), async || {
            let _ = std::hint::black_box(candidate.transform(message).await);
        })
        .await;
        ratios.push(b / a);
    }
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// A copy of the shipped mapping's plugin directory with `wasm` as its component
/// (and the manifest's digest to match), beside it.
fn candidate_plugin(
    shipped: &std::path::Path,
    wasm: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let dir = shipped.with_file_name("quote-to-order-candidate");
    std::fs::create_dir_all(&dir)?;
    let bytes = std::fs::read(wasm).map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    let old = tenon::model::digest(&std::fs::read(shipped.join("quote_to_order.wasm"))?);
    let manifest = std::fs::read_to_string(shipped.join("plugin.toml"))?;
    std::fs::write(
        dir.join("plugin.toml"),
        manifest.replace(&old, &tenon::model::digest(&bytes)),
    )?;
    std::fs::write(dir.join("quote_to_order.wasm"), bytes)?;
    Ok(dir)
}

/// Messages per second of `f` over one round (after a short warm-up).
async fn rate(f: impl AsyncFnMut()) -> f64 {
    rate_for(ROUND, f).await
}

/// Messages per second of `f` over `round` (after a short warm-up).
async fn rate_for(round: Duration, mut f: impl AsyncFnMut()) -> f64 {
    for _ in 0..50 {
        f().await;
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < round {
        for _ in 0..16 {
            f().await;
        }
        n += 16;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The example's bundle quote, its lines repeated until the MessagePack body reaches
/// `size` bytes.
fn quote_of_size(size: usize) -> anyhow::Result<Vec<u8>> {
    let model: cpq_source::QuoteModel = serde_json::from_str(tenon_testkit::SAMPLES[1].1)?;
    let base = cpq_source::to_quote(model, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let template: Vec<QuoteLine> = base.lines.clone();
    let mut quote: Quote = base;
    let mut next_key = 100;
    loop {
        let body = Encoding::MsgPack.encode(&quote)?;
        if body.len() >= size {
            return Ok(body);
        }
        for line in &template {
            let mut line = line.clone();
            line.key = next_key;
            line.parent_key = None;
            next_key += 1;
            quote.lines.push(line);
        }
    }
}
