//! Builds the first-party plugins and test fixtures (`plugins/`, their own workspace)
//! as `wasm32-wasip2` components, so that `cargo run -- demo` and `cargo test` need no
//! manual step, and writes `$OUT_DIR/plugins.rs`, which embeds the first-party ones.

use std::env;
use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// First-party plugins, embedded in the binary (directory under `plugins/`).
const FIRST_PARTY: &[&str] = &[
    "cpq-source",
    "cpq-writeback",
    "crm-source",
    "quote-to-order",
    "http-sink",
    "tryton-sink",
    "tryton-prices",
    "sap-sink",
    "stripe-source",
    "zuora-source",
    "revenue-schedule",
    "order-gateway",
    "entity-router",
    "canonical-source",
    "cloudevents-source",
    "sap-simulation",
];
/// Test fixtures: built, not embedded (directory under `plugins/fixtures/`).
const FIXTURES: &[&str] = &[
    "misbehave",
    "hostile-sink",
    "leaky-source",
    "stamp-a",
    "stamp-b",
    "api-echo",
];

fn main() -> Result<(), Box<dyn Error>> {
    let host = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = host
        .parent()
        .ok_or("host/ has no parent directory")?
        .to_owned();
    let plugins = root.join("plugins");
    for watched in ["plugins", "plugin-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    ensure_wasm_target()?;

    // A target directory of its own: the outer cargo holds the lock on ours.
    let target_dir = root.join("target").join("plugins");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(plugins.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&plugins);
    // Flags meant for the host build (clippy's wrapper, coverage, the host target) must
    // not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output()?;
    if !output.status.success() {
        return Err(format!(
            "building the plugins (plugins/Cargo.toml, target wasm32-wasip2) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let artifacts = target_dir.join("wasm32-wasip2").join("release");

    let mut code = String::new();
    writeln!(code, "/// Directory holding every built plugin component.")?;
    writeln!(
        code,
        "pub const ARTIFACT_DIR: &str = {:?};",
        artifacts.display().to_string()
    )?;
    writeln!(
        code,
        "/// The first-party plugins, embedded: (manifest text, component bytes)."
    )?;
    writeln!(code, "pub const FIRST_PARTY: &[EmbeddedPlugin] = &[")?;
    let stamped = PathBuf::from(env::var("OUT_DIR")?).join("manifests");
    fs::create_dir_all(&stamped)?;
    for name in FIRST_PARTY {
        let dir = plugins.join(name);
        let wasm = component_path(&dir, &artifacts)?;
        // The shipped manifest names its component's digest: a deploy can never
        // pair it with another component.
        let manifest = stamped.join(format!("{name}.toml"));
        fs::write(&manifest, stamp(&dir.join("plugin.toml"), &wasm)?)?;
        writeln!(
            code,
            "    EmbeddedPlugin {{ dir: {name:?}, manifest: include_str!({:?}), component: include_bytes!({:?}) }},",
            manifest.display().to_string(),
            wasm.display().to_string()
        )?;
    }
    writeln!(code, "];")?;
    writeln!(
        code,
        "/// Test fixtures: (name, manifest path, component path)."
    )?;
    writeln!(code, "pub const FIXTURES: &[(&str, &str, &str)] = &[")?;
    for name in FIXTURES {
        let dir = plugins.join("fixtures").join(name);
        let wasm = component_path(&dir, &artifacts)?;
        writeln!(
            code,
            "    ({name:?}, {:?}, {:?}),",
            dir.join("plugin.toml").display().to_string(),
            wasm.display().to_string()
        )?;
    }
    writeln!(code, "];")?;
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("plugins.rs"), code)?;
    Ok(())
}

/// Add the `wasm32-wasip2` target to the toolchain if it lacks it: rustup installs the
/// targets of `rust-toolchain.toml` only with the toolchain itself, so a machine that
/// already had 1.95.0 would otherwise fail here.
fn ensure_wasm_target() -> Result<(), Box<dyn Error>> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    if sysroot.join("lib/rustlib/wasm32-wasip2").exists() {
        return Ok(());
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup (once)");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; \
                  install it by hand and build again"
                .into(),
        ),
    }
}

/// A manifest's text with `component_digest = "sha256:..."` of `wasm` after its
/// `component = ...` line.
fn stamp(manifest: &Path, wasm: &Path) -> Result<String, Box<dyn Error>> {
    use sha2::Digest as _;
    let text = fs::read_to_string(manifest)?;
    let digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(fs::read(wasm)?))
    );
    let mut out = String::with_capacity(text.len() + 90);
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("component ")
            || line.trim_start().starts_with("component=")
        {
            out.push_str(&format!("component_digest = \"{digest}\"\n"));
        }
    }
    Ok(out)
}

/// The built component a plugin directory's manifest names (`component = "x.wasm"`).
fn component_path(dir: &Path, artifacts: &Path) -> Result<PathBuf, Box<dyn Error>> {
    let manifest = fs::read_to_string(dir.join("plugin.toml"))?;
    let file = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("component").map(str::trim))
        .and_then(|rest| rest.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| format!("{}: no `component = \"...\"` line", dir.display()))?;
    let path = artifacts.join(&file);
    if !path.exists() {
        return Err(format!(
            "{} names {file}, which the build did not produce",
            dir.display()
        )
        .into());
    }
    Ok(path)
}
