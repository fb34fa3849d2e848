//! The hostile-plugin suite: each hostile plugin is contained with its exact,
//! classified error, its worker is freed, the other flows keep serving, every
//! decision is in the audit log, and a secret's value is never recorded.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample, tenon_cli};
use serde_json::{Value, json};
use tenon_testkit::mock_erp::MockErp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cr3t-erp-token-4f9a";

/// A server on 127.0.0.1 that answers every request with `response`; its URL.
async fn canned(response: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A flow `name`: its own source instance, then `steps`, then `sink`, one attempt.
fn flow(name: &str, steps: &[&str], sink: &str, extra: &str) -> String {
    let steps: Vec<String> = steps.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[plugins.src-{name}]
path = "plugins/cpq-source"
[flows.{name}]
source = "src-{name}"
steps = [{}]
sink = "{sink}"
max_attempts = 1
{extra}
"#,
        steps.join(", ")
    )
}

fn config(erp_url: &str, redirect_url: &str, big_url: &str) -> String {
    let mut extra = format!(
        r#"
[secrets]
erp_token = {{ file = "erp-token.txt" }}

[plugins.looping]
path = "plugins/misbehave"
config = {{ mode = "loop" }}
grants = {{ timeout_ms = 300 }}
[plugins.grow]
path = "plugins/misbehave"
config = {{ mode = "grow" }}
grants = {{ memory_mib = 16 }}
[plugins.recurse]
path = "plugins/misbehave"
config = {{ mode = "recurse" }}
[plugins.big-output]
path = "plugins/misbehave"
config = {{ mode = "big-output", size = "2097152" }}
grants = {{ max_output_bytes = 1048576 }}
[plugins.steal-secret]
path = "plugins/misbehave"
config = {{ mode = "secret", secret = "root_password" }}
grants = {{ secrets = ["erp_token"] }}
secrets = ["erp_token"]
[plugins.leak]
path = "plugins/misbehave"
config = {{ mode = "leak", secret = "erp_token" }}
secrets = ["erp_token"]
[plugins.victim]
path = "plugins/misbehave"
config = {{ mode = "kv-put" }}
[plugins.probe]
path = "plugins/misbehave"
config = {{ mode = "kv-probe", victim = "victim" }}
[plugins.wasi-probe]
path = "plugins/misbehave"
config = {{ mode = "wasi-probe" }}
[plugins.to-unknown-host]
path = "plugins/hostile-sink"
config = {{ url = "http://example.invalid/orders" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.to-metadata]
path = "plugins/hostile-sink"
config = {{ url = "http://169.254.169.254/latest/meta-data/iam/" }}
[plugins.to-localhost]
path = "plugins/hostile-sink"
config = {{ url = "{erp_url}" }}
[plugins.redirected]
path = "plugins/hostile-sink"
config = {{ url = "{redirect_url}/start" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.big-response]
path = "plugins/hostile-sink"
config = {{ url = "{big_url}/big" }}
grants = {{ http = ["http://127.0.0.1:*"], max_response_bytes = 1024 }}
"#
    );
    let to_localhost = erp_url.replace("127.0.0.1", "localhost");
    extra = extra.replace(
        &format!("url = \"{erp_url}\" }}\n[plugins.redirected]"),
        &format!("url = \"{to_localhost}\" }}\n[plugins.redirected]"),
    );
    for (name, steps, sink, settings) in [
        ("loop", &["looping"][..], "erp-sink", "concurrency = 1"),
        ("grow", &["grow"][..], "erp-sink", ""),
        ("recurse", &["recurse"][..], "erp-sink", ""),
        ("big-output", &["big-output"][..], "erp-sink", ""),
        ("steal-secret", &["steal-secret"][..], "erp-sink", ""),
        ("leak", &["leak"][..], "erp-sink", ""),
        ("kv", &["victim", "probe"][..], "erp-sink", ""),
        ("wasi", &["wasi-probe"][..], "erp-sink", ""),
        ("unknown-host", &[][..], "to-unknown-host", ""),
        ("metadata", &[][..], "to-metadata", ""),
        ("localhost", &[][..], "to-localhost", ""),
        ("redirect", &[][..], "redirected", ""),
        ("big-response", &[][..], "big-response", ""),
    ] {
        extra.push_str(&flow(name, steps, sink, settings));
    }
    quote_to_cash_config(erp_url, &extra)
}

/// Send the plain sample quote into flow `name` and return its settled outcome.
async fn outcome_of(tenon: &Tenon, name: &str) -> Value {
    let ids = tenon
        .send_quote_to(&format!("src-{name}"), sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    status["outcomes"][0].clone()
}

fn dead_letter(outcome: &Value) -> String {
    outcome["result"]["DeadLetter"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a dead letter: {outcome:#}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_are_contained_with_exact_errors() {
    let erp = MockErp::start().await.unwrap();
    let redirect = canned(
        "HTTP/1.1 302 Found\r\nlocation: http://attacker.example/steal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    )
    .await;
    let big = canned(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{}",
        "x".repeat(64 << 10)
    ))
    .await;
    let ws = Workspace::new();
    ws.write_config(&config(&erp.orders_url(), &redirect, &big));
    std::fs::write(ws.path().join("erp-token.txt"), format!("{TOKEN}\n")).unwrap();
    let tenon = Tenon::start(&ws);

    // An infinite loop: stopped at its 300 ms deadline; with one worker on the stage,
    // the second message is only handled because the first freed it.
    let first = outcome_of(&tenon, "loop").await;
    let second = outcome_of(&tenon, "loop").await;
    for outcome in [&first, &second] {
        assert_eq!(dead_letter(outcome), "plugin timed out after 300 ms");
    }

    // Memory growth past its 16 MiB.
    let error = dead_letter(&outcome_of(&tenon, "grow").await);
    assert!(
        error.starts_with("plugin limit: memory limit of 16 MiB reached (growth to "),
        "{error}"
    );

    // Recursion without end.
    assert_eq!(
        dead_letter(&outcome_of(&tenon, "recurse").await),
        "plugin limit: stack overflow: the call recursed deeper than the host's stack limit"
    );

    // An output over its cap.
    let error = dead_letter(&outcome_of(&tenon, "big-output").await);
    assert!(
        error.starts_with("plugin limit: output of 2097")
            && error.ends_with(" bytes is over the 1048576-byte cap"),
        "{error}"
    );

    // A secret the manifest grants but the operator narrowed away.
    assert_eq!(
        dead_letter(&outcome_of(&tenon, "steal-secret").await),
        "sandbox denied: secret `root_password`: not granted to this plugin"
    );

    // A granted secret the plugin tries to leak: its value is redacted everywhere the
    // host records it.
    assert_eq!(
        dead_letter(&outcome_of(&tenon, "leak").await),
        "invalid: leaking erp_token: [redacted secret `erp_token`]"
    );

    // Another plugin's keys: every trick reads nothing.
    let kv = outcome_of(&tenon, "kv").await;
    assert!(kv["result"]["Delivered"].is_object(), "{kv:#}");
    let delivered = erp.received();
    let last = delivered.last().unwrap();
    assert_eq!(last.body, json!({"found": []}));

    // WASI's basics work, and reach nothing of the host: no environment, no
    // arguments, no file to list or write. Each fresh instance seeds its random
    // keys anew, so two messages' hashes differ.
    let mut seeds = Vec::new();
    for _ in 0..2 {
        let probe = outcome_of(&tenon, "wasi").await;
        assert!(probe["result"]["Delivered"].is_object(), "{probe:#}");
        let mut seen = erp.received().last().unwrap().body.clone();
        seeds.push(seen["seed"].take());
        assert_eq!(
            seen,
            json!({"env": 0, "args": 0, "list_root": false, "list_cwd": false,
                   "write_file": false, "clock_after_2020": true, "seed": null})
        );
    }
    assert!(seeds[0].is_string() && seeds[0] != seeds[1], "{seeds:?}");

    // A host no grant names.
    assert_eq!(
        dead_letter(&outcome_of(&tenon, "unknown-host").await),
        "sandbox denied: http `http://example.invalid:80`: origin not granted"
    );

    // The cloud metadata address, under a wildcard grant.
    assert_eq!(
        dead_letter(&outcome_of(&tenon, "metadata").await),
        "sandbox denied: http `http://169.254.169.254:80 (169.254.169.254)`: `169.254.169.254` resolves to 169.254.169.254, a cloud metadata address, which no grant names on http port 80"
    );

    // A name that resolves to loopback, under a wildcard grant.
    let error = dead_letter(&outcome_of(&tenon, "localhost").await);
    assert!(
        error.starts_with("sandbox denied: http `http://localhost:")
            && error.contains("a loopback address, which no grant names on http port "),
        "{error}"
    );

    // A redirect to a host no grant names: the first request is allowed, the one the
    // redirect leads to is not.
    assert_eq!(
        dead_letter(&outcome_of(&tenon, "redirect").await),
        "sandbox denied: http `http://attacker.example:80`: origin not granted"
    );

    // A response over the cap.
    let error = dead_letter(&outcome_of(&tenon, "big-response").await);
    assert_eq!(
        error,
        format!("plugin limit: http `{big}`: response body over the 1024-byte cap")
    );

    // Meanwhile the quote-to-cash flow serves as ever.
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );

    // The audit log holds each denial, by plugin and capability.
    let denials = tenon.get("/v1/audit?decision=deny&limit=1000").await;
    assert_eq!(denials.status, 200);
    let records = denials.json().unwrap()["records"].clone();
    let denied: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["plugin"].as_str().unwrap().to_owned(),
                r["capability"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("looping", "time"),
        ("grow", "memory"),
        ("recurse", "stack"),
        ("big-output", "output"),
        ("steal-secret", "secret"),
        ("to-unknown-host", "http"),
        ("to-metadata", "http"),
        ("to-localhost", "http"),
        ("redirected", "http"),
        ("big-response", "http"),
    ] {
        assert!(
            denied.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "no {expected:?} denial in {records:#}"
        );
    }
    let metadata = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["plugin"] == "to-metadata")
        .unwrap();
    assert_eq!(
        metadata["target"],
        "http://169.254.169.254:80 (169.254.169.254)"
    );
    assert!(metadata["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(metadata["at_ms"].as_u64().unwrap() > 0);
    // Allowed decisions are there too: the links of each plugin, the secret read.
    let allowed = tenon.get("/v1/audit?plugin=leak&decision=allow").await;
    let allowed = allowed.json().unwrap()["records"].clone();
    assert!(
        allowed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["capability"] == "secret" && r["target"] == "erp_token"),
        "{allowed:#}"
    );

    // The CLI reads the same log.
    let (ok, stdout, stderr) =
        tenon.cli(&["audit", "--plugin", "to-metadata", "--decision", "deny"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("deny  to-metadata      http     http://169.254.169.254:80 (169.254.169.254): `169.254.169.254` resolves to 169.254.169.254, a cloud metadata address, which no grant names on http port 80"),
        "{stdout}"
    );

    // The secret's value is nowhere the host wrote: not in the log (where the plugin
    // logged it and printed it to stderr), the audit log or the dead letters.
    let dead = tenon.get("/v1/dlq").await;
    let everything = format!(
        "{}{}{}",
        std::fs::read_to_string(ws.path().join("tenon.log")).unwrap(),
        String::from_utf8_lossy(&dead.body),
        tenon.get("/v1/audit?limit=100000").await.json().unwrap()
    );
    assert!(
        everything.contains("the token is [redacted secret `erp_token`]"),
        "the plugin's log line is kept, redacted"
    );
    assert!(!everything.contains(TOKEN), "the secret leaked");
}

#[test]
fn an_import_its_grants_do_not_allow_refuses_the_plugin_at_load() {
    let ws = Workspace::new();
    // misbehave imports tenon:plugin/kv; the operator withdraws the grant.
    let path = ws.write_config(&quote_to_cash_config(
        "http://127.0.0.1:1/",
        r#"
[plugins.no-kv]
path = "plugins/misbehave"
grants = { kv = false }
[plugins.src-2]
path = "plugins/cpq-source"
[flows.other]
source = "src-2"
steps = ["no-kv"]
sink = "erp-sink"
"#,
    ));
    let data = ws.data_dir();
    let (ok, _, stderr) = tenon_cli(&[
        "check",
        "--config",
        &path.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "the component imports `tenon:plugin/kv@0.1.0`, which needs grant `kv`; its manifest does not grant it"
        ),
        "{stderr}"
    );
}

#[test]
fn operators_cannot_widen_a_grant() {
    let ws = Workspace::new();
    let path = ws.write_config(&quote_to_cash_config("http://127.0.0.1:1/", "").replace(
        "grants = { http = [\"http://127.0.0.1:*\"] }",
        "grants = { http = [\"http://127.0.0.1:*\"], timeout_ms = 60000 }",
    ));
    let data = ws.data_dir();
    let (ok, _, stderr) = tenon_cli(&[
        "check",
        "--config",
        &path.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("grant `timeout_ms` = `60000` is wider than the plugin's manifest allows"),
        "{stderr}"
    );
}

#[test]
fn the_audit_of_each_first_party_plugin() {
    let ws = Workspace::new();
    for (name, loads) in [
        ("cpq-source", true),
        ("cpq-writeback", true),
        ("crm-source", true),
        ("quote-to-order", true),
        ("http-sink", true),
        ("tryton-sink", true),
        ("tryton-prices", true),
        ("sap-sink", true),
        ("stripe-source", true),
        ("zuora-source", true),
        ("revenue-schedule", true),
        ("order-gateway", true),
        ("entity-router", true),
        ("canonical-source", true),
        ("cloudevents-source", true),
        ("sap-simulation", true),
    ] {
        let dir = ws.path().join("plugins").join(name);
        let (ok, stdout, stderr) =
            tenon_cli(&["plugin", "audit", &dir.to_string_lossy(), "--json"]);
        assert_eq!(ok, loads, "{stderr}");
        let mut report: Value = serde_json::from_str(&stdout).unwrap();
        // The digest changes with every build; it must be the component's.
        let wasm = std::fs::read(component_of(&dir)).unwrap();
        let manifest = std::fs::read(dir.join("plugin.toml")).unwrap();
        assert_eq!(
            report["digest"],
            tenon::sandbox::plugin::version_digest(&manifest, &wasm)
        );
        assert_eq!(report["component_digest"], tenon::model::digest(&wasm));
        assert_eq!(
            report["component_bound"], true,
            "first-party manifests name their component"
        );
        report["digest"] = json!("<digest>");
        report["component_digest"] = json!("<digest>");
        // The initial memory follows the build too; it must fit the grant (the plugin
        // loads), and hold the SDK's 1 MiB arena.
        let initial = report["initial_memory"].as_u64().unwrap();
        let grant = report["grants"]["memory_mib"].as_u64().unwrap() << 20;
        assert!(initial > 1 << 20 && initial <= grant, "{name}: {initial}");
        assert_eq!(initial, tenon::sandbox::inspect::initial_memory(&wasm));
        report["initial_memory"] = json!("<bytes>");
        // wasi interface versions follow the toolchain; compare the interface names.
        for import in report["imports"].as_array_mut().unwrap() {
            let name = import["name"].as_str().unwrap();
            import["name"] = json!(name.split('@').next().unwrap());
        }
        crate::support::check_json(&format!("tests/audit/{name}.json"), &report);
    }

    // The human report says the same, with the differences spelled out.
    let dir = ws.path().join("plugins/misbehave");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml"))
        .unwrap()
        .replace("kv = true\n", "");
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    let (ok, stdout, _) = tenon_cli(&[
        "plugin",
        "audit",
        &dir.join("misbehave.wasm").to_string_lossy(),
    ]);
    assert!(!ok, "refused: exit 1");
    assert!(
        stdout.contains("  REFUSED  the component imports `tenon:plugin/kv@0.1.0`, which needs grant `kv`; its manifest does not grant it"),
        "{stdout}"
    );
    assert!(stdout.contains("signer   unsigned"), "{stdout}");
}

/// The component file a plugin directory's manifest names.
fn component_of(dir: &std::path::Path) -> std::path::PathBuf {
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("component"))
        .unwrap();
    let file = line.split('"').nth(1).unwrap();
    dir.join(file)
}
