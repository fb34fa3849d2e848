//! A partner's path from nothing to a plugin directory: `tenon plugin new` (a crate
//! that builds outside this repository), `tenon plugin build` (the component for
//! `wasm32-wasip2`, laid out as a plugin directory with its component digest), and
//! `tenon plugin test` (the component in the real sandbox on recorded cases, compared
//! with the expected outputs).

use anyhow::{Context as _, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use tenon::sandbox::plugin::{ApiRequest, Plugin, PluginSettings, RawRequest};
use tenon_registry::{Kind, Manifest};

/// The SDK version a new plugin depends on.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `tenon plugin build` lays out, under the crate's directory.
pub const DIST: &str = "dist";

/// `tenon plugin new <name> --kind <kind> [--dir <dir>] [--sdk-path <path>]`.
pub fn new_plugin(
    name: &str,
    kind: Kind,
    dir: Option<&Path>,
    sdk_path: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.as_bytes()[0].is_ascii_lowercase(),
        "`{name}` is not a plugin name: lower-case letters, digits and dashes, starting with a letter"
    );
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("src"))?;
    let crate_name = name.replace('-', "_");
    let patch = match sdk_path {
        None => String::new(),
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("--sdk-path {}", path.display()))?;
            ensure!(
                path.join("Cargo.toml").is_file() && path.join("macros").is_dir(),
                "--sdk-path {}: not the plugin SDK's directory (plugin-sdk/ of the Tenon repository)",
                path.display()
            );
            let p = path.display();
            format!(
                "\n# The SDK from a checkout of Tenon instead of crates.io.\n[patch.crates-io]\ntenon-sdk = {{ path = \"{p}\" }}\ntenon-sdk-macros = {{ path = \"{p}/macros\" }}\ntenon-model = {{ path = \"{p}/model\" }}\n"
            )
        }
    };
    let files = [
        ("Cargo.toml", cargo_toml(name, &patch)),
        ("plugin.toml", manifest(name, kind, &crate_name)),
        ("src/lib.rs", source(kind).to_owned()),
        ("README.md", readme(name, kind)),
        (".gitignore", "/target\n/dist\n".to_owned()),
    ];
    for (file, text) in &files {
        std::fs::write(dir.join(file), text).with_context(|| format!("writing {file}"))?;
    }
    if let Some((input, expected)) = case(kind) {
        let case = dir.join("cases").join("example");
        std::fs::create_dir_all(&case)?;
        std::fs::write(case.join("input.json"), input)?;
        std::fs::write(case.join("expected.json"), expected)?;
    }
    Ok(dir)
}

fn cargo_toml(name: &str, patch: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A component (cdylib) for wasm32-wasip2; natively, the tests link the same code.
crate-type = ["cdylib", "rlib"]

[dependencies]
tenon-sdk = "{SDK_VERSION}"
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
# Small, fast components: the host compiles them, and compile time grows with size.
opt-level = 3
lto = true
codegen-units = 1
strip = true

# A plugin is its own workspace, wherever it sits.
[workspace]
{patch}"#
    )
}

fn manifest(name: &str, kind: Kind, crate_name: &str) -> String {
    let grants = match kind {
        Kind::Source => {
            "# A source reads what is posted to /v1/sources/<instance>; it reaches nothing.\n"
        }
        Kind::Transform => {
            "# Key-value storage, in this plugin's own namespace, committed with each message:\n# kv = true\n# kv_quota_bytes = 1048576\n"
        }
        Kind::Sink => {
            "# The hosts it may call, `scheme://host[:port]` with `*` wildcards; the operator narrows\n# them (loopback and private addresses need a grant naming them).\nhttp = [\"https://*.example.com\"]\n# Secrets by name; the operator maps each to one of theirs. Never put one in a message.\n# secrets = [\"api_token\"]\n"
        }
        Kind::Api => {
            "# An API plugin may call the hosts it is granted, and keeps nothing between requests.\n# http = [\"https://erp.example.com\"]\n"
        }
    };
    let config = match kind {
        Kind::Sink => "url = \"https://erp.example.com/orders\"\n",
        _ => "greeting = \"hello\"\n",
    };
    let config_grant = match kind {
        Kind::Sink => "[\"url\"]",
        _ => "[\"greeting\"]",
    };
    format!(
        r#"name = "{name}"
version = "0.1.0"
kind = "{kind}"
world = "{world}"
# `tenon plugin build` copies the component next to this file and adds its digest
# (`component_digest`), which a hot deploy needs.
component = "{crate_name}.wasm"
description = "What {name} does, in one line"

# Defaults the operator may override in tenon.toml (`config = {{ ... }}`).
[config]
{config}
[grants]
# The config keys it may read.
config = {config_grant}
{grants}# Limits: memory, time per call, bytes of output.
memory_mib = 32
timeout_ms = 2000
max_output_bytes = 1048576
"#,
        world = kind.world(),
    )
}

fn source(kind: Kind) -> &'static str {
    match kind {
        Kind::Source => SOURCE,
        Kind::Transform => TRANSFORM,
        Kind::Sink => SINK,
        Kind::Api => API,
    }
}

const SOURCE: &str = r##"//! A source: what is posted to `/v1/sources/<instance>` becomes messages.

use tenon_sdk::{Failure, Message, RawRequest};

/// One `Greeting` message per posted `{"name": ...}`.
#[tenon_sdk::source]
fn ingest(request: RawRequest) -> Result<Vec<Message>, Failure> {
    #[derive(serde::Deserialize)]
    struct Posted {
        name: String,
    }
    let posted: Posted = request.json()?;
    if posted.name.is_empty() {
        return Err(Failure::Rejected(vec!["`name` is empty".into()]));
    }
    let greeting = tenon_sdk::config::get("greeting").unwrap_or_else(|| "hello".into());
    let body = serde_json::json!({ "text": format!("{greeting}, {}", posted.name) });
    Ok(vec![Message::encode_as(tenon_sdk::model::Encoding::Json, "Greeting", &posted.name, &body)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenon_sdk::testing::Host;

    fn post(body: &str) -> RawRequest {
        RawRequest {
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_name_becomes_a_greeting() {
        let host = Host::new().with_manifest(include_str!("../plugin.toml"));
        let out = host.run(|| ingest(post(r#"{"name": "Ada"}"#))).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, "Ada");
        let body: serde_json::Value = out[0].decode().unwrap();
        assert_eq!(body["text"], "hello, Ada");
    }

    #[test]
    fn bad_input_is_refused_by_class() {
        let host = Host::new();
        assert!(matches!(host.run(|| ingest(post("not json"))), Err(Failure::Invalid(_))));
        assert!(matches!(host.run(|| ingest(post(r#"{"name": ""}"#))), Err(Failure::Rejected(_))));
    }
}
"##;

const TRANSFORM: &str = r##"//! A transform: one message in, zero or more out.

use tenon_sdk::{Failure, Message};

/// Greets the `name` of each message's JSON body.
#[tenon_sdk::transform]
fn greet(input: Message) -> Result<Vec<Message>, Failure> {
    let body: serde_json::Value = input.decode()?;
    let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
        return Err(Failure::Rejected(vec!["the message has no `name`".into()]));
    };
    let greeting = tenon_sdk::config::get("greeting").unwrap_or_else(|| "hello".into());
    let out = serde_json::json!({ "text": format!("{greeting}, {name}") });
    Ok(vec![Message::encode("Greeting", &input.key, &out)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenon_sdk::model::Encoding;
    use tenon_sdk::testing::Host;

    #[test]
    fn a_name_is_greeted() {
        let host = Host::new().with_manifest(include_str!("../plugin.toml")).config("greeting", "hi");
        let input = Message::encode_as(Encoding::Json, "Person", "p1", &serde_json::json!({"name": "Ada"})).unwrap();
        let out = host.run(|| greet(input)).unwrap();
        let body: serde_json::Value = out[0].decode().unwrap();
        assert_eq!(body["text"], "hi, Ada");
    }

    #[test]
    fn no_name_is_rejected() {
        let input = Message::encode_as(Encoding::Json, "Person", "p1", &serde_json::json!({})).unwrap();
        assert!(matches!(Host::new().run(|| greet(input)), Err(Failure::Rejected(_))));
    }
}
"##;

const SINK: &str = r##"//! A sink: delivers each message to a target system, once.

use tenon_sdk::{Failure, Message, Receipt, config, http};

/// POSTs the message's JSON to `url`, with the idempotency key, and returns the
/// target's `id` as the receipt.
#[tenon_sdk::sink]
fn deliver(message: Message, idempotency_key: &str) -> Result<Receipt, Failure> {
    let url = config::require("url")?;
    let body: serde_json::Value = message.decode()?;
    let body = serde_json::to_vec(&body).map_err(|e| Failure::Invalid(e.to_string()))?;
    let response = http::post_json(&url, &[("idempotency-key", idempotency_key)], &body)?;
    if !response.is_success() {
        return Err(response.failure());
    }
    let created: serde_json::Value = response.json()?;
    Ok(Receipt {
        reference: created["id"].as_str().unwrap_or_default().to_owned(),
        detail: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenon_sdk::model::Encoding;
    use tenon_sdk::testing::{Exchange, Host};

    fn order() -> Message {
        Message::encode_as(Encoding::Json, "OrderAccepted", "Q-1", &serde_json::json!({"id": "Q-1"})).unwrap()
    }

    #[test]
    fn an_order_is_posted_once_with_its_key() {
        let host = Host::new().with_manifest(include_str!("../plugin.toml")).exchange(
            Exchange::post("https://erp.example.com/orders")
                .with_header("idempotency-key", "m-1")
                .with_json(serde_json::json!({"id": "Q-1"}))
                .respond(201, r#"{"id": "SO-7"}"#),
        );
        let receipt = host.run(|| deliver(order(), "m-1")).unwrap();
        assert_eq!(receipt.reference, "SO-7");
        host.assert_all_exchanged();
    }

    #[test]
    fn a_busy_target_is_retried_a_refusal_is_not() {
        let busy = Host::new().with_manifest(include_str!("../plugin.toml"))
            .exchange(Exchange::post("https://erp.example.com/orders").respond(503, "busy"));
        assert!(matches!(busy.run(|| deliver(order(), "m-1")), Err(Failure::Retryable(_))));
        let refused = Host::new().with_manifest(include_str!("../plugin.toml"))
            .exchange(Exchange::post("https://erp.example.com/orders").respond(422, "no"));
        assert!(matches!(refused.run(|| deliver(order(), "m-1")), Err(Failure::Rejected(_))));
    }
}
"##;

const API: &str = r##"//! An API plugin: answers `/v1/apis/<route>` while the caller waits.

use tenon_sdk::Failure;
use tenon_sdk::api::{Request, Response};

/// Greets `{name}` (a path parameter of the route, or `?name=`).
#[tenon_sdk::api]
fn answer(request: Request) -> Result<Response, Failure> {
    let name = request.required("name")?;
    let greeting = tenon_sdk::config::get("greeting").unwrap_or_else(|| "hello".into());
    Response::json(200, &serde_json::json!({ "text": format!("{greeting}, {name}") }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenon_sdk::testing::Host;

    #[test]
    fn a_name_is_greeted() {
        let host = Host::new().with_manifest(include_str!("../plugin.toml"));
        let request = Request { params: vec![("name".into(), "Ada".into())], ..Request::default() };
        let response = host.run(|| answer(request)).unwrap();
        assert_eq!(response.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["text"], "hello, Ada");
    }

    #[test]
    fn no_name_is_a_bad_request() {
        assert!(matches!(Host::new().run(|| answer(Request::default())), Err(Failure::Invalid(_))));
    }
}
"##;

/// An example case for `tenon plugin test`: (input, expected).
fn case(kind: Kind) -> Option<(&'static str, &'static str)> {
    match kind {
        Kind::Source => Some((
            "{\n  \"content_type\": \"application/json\",\n  \"body\": {\"name\": \"Ada\"}\n}\n",
            "{\n  \"messages\": [\n    {\n      \"body\": {\n        \"text\": \"hello, Ada\"\n      },\n      \"headers\": [],\n      \"key\": \"Ada\",\n      \"kind\": \"Greeting\"\n    }\n  ]\n}\n",
        )),
        Kind::Transform => Some((
            "{\n  \"kind\": \"Person\",\n  \"key\": \"p1\",\n  \"body\": {\"name\": \"Ada\"}\n}\n",
            "{\n  \"messages\": [\n    {\n      \"body\": {\n        \"text\": \"hello, Ada\"\n      },\n      \"headers\": [],\n      \"key\": \"p1\",\n      \"kind\": \"Greeting\"\n    }\n  ]\n}\n",
        )),
        Kind::Api => Some((
            "{\n  \"method\": \"GET\",\n  \"path\": \"/\",\n  \"query\": [[\"name\", \"Ada\"]]\n}\n",
            "{\n  \"response\": {\n    \"body\": {\n      \"text\": \"hello, Ada\"\n    },\n    \"content_type\": \"application/json\",\n    \"headers\": [],\n    \"status\": 200\n  }\n}\n",
        )),
        Kind::Sink => None,
    }
}

fn readme(name: &str, kind: Kind) -> String {
    let cases = match kind {
        Kind::Sink => {
            "A sink's deliveries are tested natively, with recorded HTTP exchanges (`cargo test`)."
        }
        _ => {
            "`cases/<case>/input.json` is a recorded input, `expected.json` what the component must make of it (`--bless` writes it)."
        }
    };
    format!(
        r#"# {name}

A Tenon {kind} plugin. The function is in `src/lib.rs`; what it may do (its grants) is in
`plugin.toml`.

```sh
cargo test                               # the function natively, with a fake host (tenon_sdk::testing)
tenon plugin build                       # the component for wasm32-wasip2, laid out in dist/{name}/
tenon plugin test --cases cases          # the component in Tenon's sandbox, on recorded cases
tenon plugin audit dist/{name}           # what it imports against what it asks for
```

{cases}

Point a Tenon at `dist/{name}` (`[plugins.{name}] path = ".../dist/{name}"`); a new build
dropped there is hot-swapped in.
"#
    )
}

/// The crate's package name and the directory its build artifacts go to (as the
/// build below runs: without the caller's `CARGO_TARGET_DIR`).
fn metadata(dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .context("cannot run cargo")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let name = meta["packages"][0]["name"]
        .as_str()
        .context("no package in Cargo.toml")?
        .to_owned();
    let target = meta["target_directory"]
        .as_str()
        .context("no target directory")?;
    Ok((name, PathBuf::from(target)))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The `wasm32-wasip2` target, added with rustup when missing.
fn ensure_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(installed) = installed else {
        // No rustup: cargo says clearly enough if the target is missing.
        return Ok(());
    };
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!("adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()?;
    ensure!(status.success(), "rustup target add wasm32-wasip2 failed");
    Ok(())
}

/// `tenon plugin build [dir]`: the component, then `dist/<name>/` with the manifest
/// (its `component` and `component_digest` set) and the component; checked as the
/// host would load it.
pub fn build_plugin(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest_path = dir.join(tenon_registry::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&manifest_path, &text)?;
    ensure_target()?;
    let (package, target) = metadata(dir)?;
    eprintln!("building {package} for wasm32-wasip2 (release)");
    let status = Command::new(cargo())
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("cannot run cargo")?;
    ensure!(status.success(), "the build failed");
    let built = target
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    let component =
        std::fs::read(&built).with_context(|| format!("no component at {}", built.display()))?;
    let file = format!("{}.wasm", manifest.name.replace('-', "_"));
    let digest = tenon::model::digest(&component);
    let out = dir.join(DIST).join(&manifest.name);
    std::fs::create_dir_all(&out)?;
    // A new build is a new version: a signature of the previous one does not carry over.
    match std::fs::remove_file(out.join(tenon_registry::SIGNATURE_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let stamped = stamp(&text, &file, &digest)?;
    std::fs::write(out.join(&file), &component)?;
    std::fs::write(out.join(tenon_registry::MANIFEST_FILE), stamped)?;
    let report = tenon::sandbox::inspect::AuditReport::of_path(&out)?;
    if !report.loadable {
        print!("{}", report.render());
        bail!("{} would be refused by the host: see above", out.display());
    }
    println!(
        "{} {} ({} KiB): {}\n  component {digest}\n  version   {}",
        manifest.name,
        manifest.version,
        component.len() / 1024,
        out.display(),
        report.digest
    );
    Ok(out)
}

/// The manifest's text with `component` and `component_digest` set, in place (or
/// before the first table), comments kept.
fn stamp(text: &str, file: &str, digest: &str) -> anyhow::Result<String> {
    let set = [
        format!("component = \"{file}\""),
        format!("component_digest = \"{digest}\""),
    ];
    let mut out: Vec<String> = Vec::new();
    let mut done = false;
    let mut in_table = false;
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        in_table |= line.trim_start().starts_with('[');
        if in_table && !done {
            out.extend(set.iter().cloned());
            done = true;
        }
        match key {
            "component" if !in_table && !done => {
                out.extend(set.iter().cloned());
                done = true;
            }
            "component" | "component_digest" if !in_table => {}
            _ => out.push(line.to_owned()),
        }
    }
    if !done {
        out.extend(set.iter().cloned());
    }
    let stamped = out.join("\n") + "\n";
    ensure!(
        stamped.parse::<toml::Table>().is_ok(),
        "cannot set the component's digest in plugin.toml"
    );
    Ok(stamped)
}

/// `tenon plugin test [dir] --cases <dir> [--bless]`: each case's input through the
/// built component (`dist/<name>/`, or `dir` itself when it is a plugin directory)
/// in the real sandbox; its outputs against `expected.json`.
pub async fn test_plugin(dir: &Path, cases: &Path, bless: bool) -> anyhow::Result<ExitCode> {
    let plugin_dir =
        if dir.join(tenon_registry::MANIFEST_FILE).is_file() && !dir.join("Cargo.toml").is_file() {
            dir.to_owned()
        } else {
            let text = std::fs::read_to_string(dir.join(tenon_registry::MANIFEST_FILE))
                .with_context(|| format!("no plugin.toml in {}", dir.display()))?;
            let manifest = Manifest::parse(&dir.join(tenon_registry::MANIFEST_FILE), &text)?;
            let built = dir.join(DIST).join(&manifest.name);
            ensure!(
                built.join(tenon_registry::MANIFEST_FILE).is_file(),
                "{} is not built: run `tenon plugin build` first",
                built.display()
            );
            built
        };
    let mut names: Vec<PathBuf> = std::fs::read_dir(cases)
        .with_context(|| format!("cannot read the cases in {}", cases.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("input.json").is_file())
        .collect();
    names.sort();
    ensure!(
        !names.is_empty(),
        "no cases in {}: each case is a directory holding input.json (and expected.json)",
        cases.display()
    );
    let scratch = tempfile::tempdir()?;
    let node = tenon::store::NodeDb::open(scratch.path())?;
    let store = std::sync::Arc::new(tenon::store::redb::RedbStore::open(&node)?);
    let engine = tenon::sandbox::engine::Engine::new(node, store, scratch.path())?;
    let (mut passed, mut failed) = (0, 0);
    for case in &names {
        let label = case.file_name().unwrap_or_default().to_string_lossy();
        let input: serde_json::Value = read_json(&case.join("input.json"))?;
        let mut settings = PluginSettings::default();
        if let Some(config) = input["config"].as_object() {
            for (k, v) in config {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                settings.config.insert(k.clone(), v);
            }
        }
        let plugin = Plugin::load(&engine, "under-test", &plugin_dir, &settings)?;
        let actual = run_case(&plugin, &input).await?;
        let actual_text = serde_json::to_string_pretty(&actual)? + "\n";
        let expected_path = case.join("expected.json");
        if bless {
            std::fs::write(&expected_path, &actual_text)?;
            println!("{label}: blessed");
            passed += 1;
            continue;
        }
        let expected = match std::fs::read_to_string(&expected_path) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not JSON", expected_path.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        if expected == actual {
            println!("{label}: ok");
            passed += 1;
        } else {
            failed += 1;
            let expected_text = serde_json::to_string_pretty(&expected)? + "\n";
            println!("{label}: FAILED (- expected, + actual)");
            let diff = similar::TextDiff::from_lines(&expected_text, &actual_text);
            print!(
                "{}",
                diff.unified_diff()
                    .context_radius(3)
                    .header("expected.json", "actual")
            );
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// A body given in a case: a JSON string as its text, anything else as JSON.
fn body_of(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn pairs(value: &serde_json::Value) -> Vec<(String, String)> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// What a case's outputs look like: messages (kind, key, headers, body as JSON), or
/// the API's response; a failure by class.
async fn run_case(plugin: &Plugin, input: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let outcome = match plugin.kind() {
        Kind::Source => {
            let request = RawRequest {
                content_type: input["content_type"]
                    .as_str()
                    .unwrap_or("application/json")
                    .to_owned(),
                headers: pairs(&input["headers"]),
                body: body_of(&input["body"]),
            };
            plugin
                .ingest(request)
                .await
                .map(|m| serde_json::json!({ "messages": messages(&m) }))
        }
        Kind::Transform => {
            let message = tenon::model::StoredMessage {
                id: tenon::model::MessageId::root(),
                key: input["key"].as_str().unwrap_or_default().to_owned(),
                kind: input["kind"].as_str().unwrap_or_default().to_owned(),
                content_type: "application/json".into(),
                headers: pairs(&input["headers"]),
                body: body_of(&input["body"]),
            };
            plugin
                .transform(&message)
                .await
                .map(|m| serde_json::json!({ "messages": messages(&m) }))
        }
        Kind::Api => {
            let request = ApiRequest {
                method: input["method"].as_str().unwrap_or("GET").to_owned(),
                path: input["path"].as_str().unwrap_or("/").to_owned(),
                params: pairs(&input["params"]),
                query: pairs(&input["query"]),
                headers: pairs(&input["headers"]),
                content_type: input["content_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                body: body_of(&input["body"]),
            };
            plugin.respond(request).await.map(|r| {
                let body =
                    serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&r.body).into_owned())
                    });
                serde_json::json!({ "response": {
                    "status": r.status,
                    "content_type": r.content_type,
                    "headers": r.headers,
                    "body": body,
                }})
            })
        }
        Kind::Sink => bail!(
            "a sink's deliveries need its target system: test them natively with \
             tenon_sdk::testing (recorded HTTP exchanges), `cargo test`"
        ),
    };
    Ok(outcome.unwrap_or_else(|error| {
        serde_json::json!({ "failure": { "class": error.class(), "error": error.to_string() } })
    }))
}

fn messages(messages: &[tenon::model::StoredMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|m| {
            let output = tenon::api::Output::of(m);
            serde_json::json!({
                "kind": output.kind,
                "key": output.key,
                "headers": output.headers,
                "body": output.body,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_is_stamped_into_the_manifest_before_any_table() {
        let text = "name = \"x\"\n# the file\ncomponent = \"old.wasm\"\n# more\ncomponent_digest = \"sha256:00\"\n[config]\ncomponent = \"kept\"\n";
        let stamped = stamp(text, "x.wasm", "sha256:ab").unwrap();
        assert_eq!(
            stamped,
            "name = \"x\"\n# the file\ncomponent = \"x.wasm\"\ncomponent_digest = \"sha256:ab\"\n# more\n[config]\ncomponent = \"kept\"\n"
        );
        let bare = stamp("name = \"x\"\n[config]\n", "x.wasm", "sha256:ab").unwrap();
        assert_eq!(
            bare,
            "name = \"x\"\ncomponent = \"x.wasm\"\ncomponent_digest = \"sha256:ab\"\n[config]\n"
        );
    }

    #[test]
    fn a_new_plugin_names_itself_well() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1st", "with space"] {
            assert!(new_plugin(bad, Kind::Source, Some(&dir.path().join("x")), None).is_err());
        }
        for kind in [Kind::Source, Kind::Transform, Kind::Sink, Kind::Api] {
            let out = dir.path().join(kind.to_string());
            new_plugin("acme-thing", kind, Some(&out), None).unwrap();
            let text = std::fs::read_to_string(out.join("plugin.toml")).unwrap();
            let manifest = Manifest::parse(&out.join("plugin.toml"), &text).unwrap();
            assert_eq!(manifest.kind, kind);
            assert!(
                std::fs::read_to_string(out.join("Cargo.toml"))
                    .unwrap()
                    .contains("tenon-sdk = \"")
            );
        }
        // Not over what is there.
        assert!(new_plugin("acme-thing", Kind::Api, Some(&dir.path().join("api")), None).is_err());
    }
}
