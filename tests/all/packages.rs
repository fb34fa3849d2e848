//! Packages, signatures, the trust policy and a real OCI registry, through the real
//! `tenon` binary, run from a directory outside the repository as a partner and an
//! operator would: keys made, plugins packed, signed, verified, published to a real
//! registry (Debian's `docker-registry`), installed by tag and by digest into the plugin
//! directory of a running Tenon whose trust policy requires signatures, where hot swap
//! takes them; unsigned, tampered, untrusted, out-of-prefix and revoked versions are
//! refused before anything of them is compiled, with their reasons, and the live
//! version keeps running.

use crate::support::{Tenon, Workspace, sample};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::registry::RegistryServer;

/// Run `tenon args...` in `dir`: (succeeded, stdout, stderr).
fn tenon_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tenon"))
        .args(args)
        .current_dir(dir)
        .env_remove("TENON_TOKEN")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Run `tenon args...` in `dir`, which must succeed; its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = tenon_in(dir, args);
    assert!(ok, "tenon {args:?} failed:\n{out}\n{err}");
    out
}

/// Run `tenon args...` in `dir`, which must fail; stdout and stderr together.
fn refused(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = tenon_in(dir, args);
    assert!(!ok, "tenon {args:?} should have failed:\n{out}\n{err}");
    format!("{out}{err}")
}

/// A key pair made by `tenon plugin keygen --out <name>.key`: (public key, key id).
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let out = ok(dir, &["plugin", "keygen", "--out", &format!("{name}.key")]);
    let field = |label: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no `{label}` in {out}"))
            .trim()
            .to_owned()
    };
    (field("public key"), field("key id"))
}

/// The value after `label` on the first line starting with it.
fn line_value(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` in {out}"))
        .trim()
        .to_owned()
}

/// The version digest a `packed`/`published`/`installed` line names.
fn digest_in(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("sha256:") && w.len() == 71)
        .unwrap_or_else(|| panic!("no digest in {out}"))
        .trim_end_matches(':')
        .to_owned()
}

#[test]
fn a_partner_makes_keys_then_packs_signs_and_verifies_offline() {
    let ws = Workspace::new();
    let dir = ws.path();
    let (acme, acme_id) = keygen(dir, "acme");
    assert!(acme.starts_with("ed25519:"), "{acme}");
    assert_eq!(acme_id.len(), 16);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("acme.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is the owner's only");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("acme.key.pub"))
            .unwrap()
            .trim(),
        acme
    );
    assert!(refused(dir, &["plugin", "keygen", "--out", "acme.key"]).contains("exists"));
    let (_, mallory_id) = keygen(dir, "mallory");

    // A package of the fixture's directory; its manifest now names its component.
    let (ok_pack, out, err) = tenon_in(
        dir,
        &["plugin", "pack", "plugins/stamp-a", "-o", "stamp.tar"],
    );
    assert!(ok_pack, "{out}{err}");
    assert!(err.contains("does not name its component"), "{err}");
    assert!(out.contains("packed stamp 1.0.0 sha256:"), "{out}");
    let digest = digest_in(&out);
    let listing = Command::new("tar")
        .arg("tf")
        .arg(dir.join("stamp.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("oci-layout") && listing.contains("index.json"),
        "{listing}"
    );

    // Unsigned: verify says so.
    let out = refused(dir, &["plugin", "verify", "stamp.tar"]);
    assert!(out.contains("is not signed"), "{out}");

    ok(
        dir,
        &[
            "plugin",
            "sign",
            "stamp.tar",
            "--key",
            "acme.key",
            "--publisher",
            "acme",
        ],
    );
    let out = ok(
        dir,
        &["plugin", "verify", "stamp.tar", "--key", "acme.key.pub"],
    );
    assert!(
        out.contains(&format!(
            "verified stamp 1.0.0 {digest}: signed by acme (key {acme_id})"
        )),
        "{out}"
    );
    let out = refused(
        dir,
        &["plugin", "verify", "stamp.tar", "--key", "mallory.key.pub"],
    );
    assert!(
        out.contains(&format!("key {acme_id}")) && out.contains("not the key of any publisher"),
        "{out}"
    );
    // Without a policy the signature is checked for itself.
    let out = ok(dir, &["plugin", "verify", "stamp.tar"]);
    assert!(out.contains("not checked against a trust policy"), "{out}");

    // Against a config's trust policy, which trusts acme for `stamp*` only.
    std::fs::write(
        dir.join("trust.toml"),
        format!(
            "[trust]\nrequire_signatures = true\n[[trust.publishers]]\nname = \"acme\"\nkey = \"{acme}\"\nprefixes = [\"stamp\"]\n"
        ),
    )
    .unwrap();
    let out = ok(
        dir,
        &["plugin", "verify", "stamp.tar", "--config", "trust.toml"],
    );
    assert!(
        out.contains(&format!("signed by acme (key {acme_id})")),
        "{out}"
    );
    std::fs::write(
        dir.join("narrow.toml"),
        format!(
            "[[trust.publishers]]\nname = \"acme\"\nkey = \"{acme}\"\nprefixes = [\"acme-\"]\n"
        ),
    )
    .unwrap();
    let out = refused(
        dir,
        &["plugin", "verify", "stamp.tar", "--config", "narrow.toml"],
    );
    assert!(
        out.contains("trusted only for plugin names starting with `acme-`"),
        "{out}"
    );

    // The audit shows the signer, checked against the policy when given one.
    let out = ok(dir, &["plugin", "audit", "stamp.tar"]);
    assert!(
        out.contains(&format!(
            "signer   \"acme\" (key {acme_id}; the signature verifies"
        )),
        "{out}"
    );
    let out = ok(
        dir,
        &["plugin", "audit", "stamp.tar", "--config", "trust.toml"],
    );
    assert!(
        out.contains(&format!("signer   acme (key {acme_id})")),
        "{out}"
    );
    let json: Value =
        serde_json::from_str(&ok(dir, &["plugin", "audit", "stamp.tar", "--json"])).unwrap();
    assert_eq!(json["digest"], digest.as_str());
    assert!(
        json["signer"].as_str().unwrap().contains(&acme_id),
        "{json:#}"
    );

    // A signed directory whose component changes afterwards: refused, with why.
    let signed = dir.join("signed-b");
    std::fs::create_dir_all(&signed).unwrap();
    for file in ["plugin.toml", "stamp_b.wasm"] {
        std::fs::copy(dir.join("plugins/stamp-b").join(file), signed.join(file)).unwrap();
    }
    let out = ok(
        dir,
        &[
            "plugin",
            "sign",
            "signed-b",
            "--key",
            "mallory.key",
            "--publisher",
            "mallory",
        ],
    );
    assert!(out.contains(&format!("(key {mallory_id})")), "{out}");
    assert!(signed.join("plugin.sig").is_file());
    ok(
        dir,
        &["plugin", "verify", "signed-b", "--key", "mallory.key.pub"],
    );
    let mut wasm = std::fs::read(signed.join("stamp_b.wasm")).unwrap();
    let last = wasm.len() - 1;
    wasm[last] ^= 1;
    std::fs::write(signed.join("stamp_b.wasm"), &wasm).unwrap();
    let out = refused(
        dir,
        &["plugin", "verify", "signed-b", "--key", "mallory.key.pub"],
    );
    assert!(out.contains("changed after signing"), "{out}");
    let out = refused(dir, &["plugin", "audit", "signed-b"]);
    assert!(
        out.contains("REFUSED") && out.contains("changed after signing"),
        "{out}"
    );
}

/// The `stamp` instance's status in `GET /v1/plugins`.
async fn stamp_status(tenon: &Tenon) -> Value {
    let plugins = tenon.get("/v1/plugins").await.json().unwrap();
    plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "stamp")
        .unwrap()
        .clone()
}

async fn wait_status(tenon: &Tenon, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = stamp_status(tenon).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Post a quote through `cpq-source -> stamp -> erp-sink`; the letter the live stamp
/// version put on the order the ERP received.
async fn stamped(tenon: &Tenon, erp: &MockErp, number: &str) -> String {
    let body = sample("plain.json").replace("Q-00101", number);
    let ids = tenon.send_quote(&body).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    let id = status["outcomes"][0]["id"].as_str().unwrap().to_owned();
    let order = erp
        .received()
        .into_iter()
        .find(|r| r.idempotency_key.as_deref() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("{number} not delivered"));
    order.body["stamp"].as_str().unwrap().to_owned()
}

/// Lay a version's files into the live directory `live` as a deploy (or an attacker
/// with write access) would: the component, the signature or none, the manifest last.
fn drop_files(from: &Path, live: &Path, signature: bool) {
    let manifest = std::fs::read_to_string(from.join("plugin.toml")).unwrap();
    let parsed = tenon_registry::Manifest::parse(&from.join("plugin.toml"), &manifest).unwrap();
    std::fs::copy(from.join(&parsed.component), live.join(&parsed.component)).unwrap();
    match signature {
        true => {
            std::fs::copy(from.join("plugin.sig"), live.join("plugin.sig")).unwrap();
        }
        false => {
            let _ = std::fs::remove_file(live.join("plugin.sig"));
        }
    }
    std::fs::write(live.join("plugin.toml"), manifest).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_packages_go_through_a_real_registry_into_a_running_tenon() {
    let registry = tokio::task::spawn_blocking(RegistryServer::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a real registry is needed (scripts/registry/install.sh): {e}"));
    let host = registry.host();
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = ws.path();

    // Keys: acme publishes stamp; tenon signs the first-party plugins; other is trusted
    // for other names; old is revoked; mallory is nobody.
    let (acme, acme_id) = keygen(dir, "acme");
    let (first_party, _) = keygen(dir, "tenon");
    let (other, _) = keygen(dir, "other");
    let (old, old_id) = keygen(dir, "old");
    keygen(dir, "mallory");
    for plugin in ["cpq-source", "http-sink"] {
        ok(
            dir,
            &[
                "plugin",
                "sign",
                &format!("plugins/{plugin}"),
                "--key",
                "tenon.key",
                "--publisher",
                "tenon",
            ],
        );
    }

    // The partner packs, signs and publishes two versions.
    let mut pins = Vec::new();
    let mut digests = Vec::new();
    for (fixture, version) in [("stamp-a", "1.0.0"), ("stamp-b", "2.0.0")] {
        let file = format!("stamp-{version}.tar");
        ok(
            dir,
            &["plugin", "pack", &format!("plugins/{fixture}"), "-o", &file],
        );
        ok(
            dir,
            &[
                "plugin",
                "sign",
                &file,
                "--key",
                "acme.key",
                "--publisher",
                "acme",
            ],
        );
        let out = ok(
            dir,
            &[
                "plugin",
                "publish",
                &file,
                &format!("oci://{host}/acme/stamp:{version}"),
            ],
        );
        assert!(
            out.contains(&format!("published stamp {version} sha256:")),
            "{out}"
        );
        digests.push(digest_in(&out));
        pins.push(line_value(&out, "pinned"));
    }
    let (a, b) = (digests[0].clone(), digests[1].clone());
    assert!(
        pins[0].starts_with(&format!("oci://{host}/acme/stamp@sha256:")),
        "{}",
        pins[0]
    );

    // The operator trusts acme for `stamp`, tenon for the first-party names.
    ws.write_config(&format!(
        r#"
[trust]
require_signatures = true
revoked_keys = ["{old_id}"]

[[trust.publishers]]
name = "acme"
key = "{acme}"
prefixes = ["stamp"]

[[trust.publishers]]
name = "tenon"
key = "{first_party}"
prefixes = ["cpq-", "http-"]

[[trust.publishers]]
name = "other"
key = "{other}"
prefixes = ["other-"]

[[trust.publishers]]
name = "old"
key = "{old}"
prefixes = ["stamp"]

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
"#,
        erp.orders_url()
    ));

    // Installed by exact tag before the start, checked against the config's policy.
    let out = ok(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:1.0.0"),
            "--dir",
            "plugins/stamp",
            "--config",
            "tenon.toml",
        ],
    );
    assert!(out.contains(&format!("installed stamp 1.0.0 {a}")), "{out}");
    assert!(
        out.contains(&format!("signer   acme (key {acme_id})")),
        "{out}"
    );
    assert!(ws.path().join("plugins/stamp/plugin.sig").is_file());
    let tenon = Tenon::start(&ws);
    let live = stamp_status(&tenon).await;
    assert_eq!(live["digest"], a.as_str());
    assert_eq!(
        live["signer"],
        format!("acme (key {acme_id})").as_str(),
        "{live:#}"
    );
    assert_eq!(stamped(&tenon, &erp, "Q-P0001").await, "A");
    let (_, status, _) = tenon.cli(&["status"]);
    assert!(
        status.contains(&format!("signed by acme (key {acme_id})")),
        "{status}"
    );

    // `:2` is the highest 2.x release: B goes live by hot swap.
    let out = ok(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:2"),
            "--dir",
            "plugins/stamp",
            "--config",
            "tenon.toml",
        ],
    );
    assert!(out.contains("(tag 2.0.0)"), "{out}");
    let live = wait_status(&tenon, "B live", |s| s["digest"] == b.as_str()).await;
    assert!(live["refused"].is_null(), "{live:#}");
    assert_eq!(live["signer"], format!("acme (key {acme_id})").as_str());
    assert_eq!(stamped(&tenon, &erp, "Q-P0002").await, "B");

    // A digest pin: exactly A again, a lower version than B: only on purpose.
    let out = refused(
        dir,
        &[
            "plugin",
            "install",
            &pins[0],
            "--dir",
            "plugins/stamp",
            "--key",
            "acme.key.pub",
        ],
    );
    assert!(
        out.contains("nothing installed")
            && out.contains("holds version 2.0.0, a higher one: --allow-downgrade"),
        "{out}"
    );
    assert_eq!(stamp_status(&tenon).await["digest"], b.as_str());
    let out = ok(
        dir,
        &[
            "plugin",
            "install",
            &pins[0],
            "--dir",
            "plugins/stamp",
            "--key",
            "acme.key.pub",
            "--allow-downgrade",
        ],
    );
    assert!(out.contains(&format!("installed stamp 1.0.0 {a}")), "{out}");
    wait_status(&tenon, "A live again", |s| s["digest"] == a.as_str()).await;
    assert_eq!(stamped(&tenon, &erp, "Q-P0003").await, "A");

    // What `install` itself refuses (nothing is written): an unsigned package, one
    // signed by a key nobody trusts, a pin the registry does not hold.
    ok(
        dir,
        &["plugin", "pack", "plugins/stamp-b", "-o", "unsigned.tar"],
    );
    ok(
        dir,
        &[
            "plugin",
            "publish",
            "unsigned.tar",
            &format!("oci://{host}/acme/stamp:unsigned"),
        ],
    );
    let out = refused(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:unsigned"),
            "--dir",
            "plugins/stamp",
            "--config",
            "tenon.toml",
        ],
    );
    assert!(
        out.contains("nothing installed") && out.contains("is not signed"),
        "{out}"
    );
    ok(
        dir,
        &["plugin", "pack", "plugins/stamp-b", "-o", "mallory.tar"],
    );
    ok(
        dir,
        &[
            "plugin",
            "sign",
            "mallory.tar",
            "--key",
            "mallory.key",
            "--publisher",
            "acme",
        ],
    );
    ok(
        dir,
        &[
            "plugin",
            "publish",
            "mallory.tar",
            &format!("oci://{host}/acme/stamp:mallory"),
        ],
    );
    let out = refused(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:mallory"),
            "--dir",
            "plugins/stamp",
            "--config",
            "tenon.toml",
        ],
    );
    assert!(out.contains("not the key of any publisher"), "{out}");
    let missing = format!("oci://{host}/acme/stamp@sha256:{}", "0".repeat(64));
    refused(
        dir,
        &[
            "plugin",
            "install",
            &missing,
            "--dir",
            "plugins/stamp",
            "--config",
            "tenon.toml",
        ],
    );
    assert_eq!(stamp_status(&tenon).await["digest"], a.as_str());

    // What the running Tenon refuses when files land in its plugin directory without
    // `install` (a copy by hand, or someone with write access to it): B's files from
    // the registry, then each way of getting its signature wrong.
    let stage = dir.join("stage");
    ok(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:2.0.0"),
            "--dir",
            "stage",
            "--config",
            "tenon.toml",
        ],
    );
    let live_dir = dir.join("plugins/stamp");
    // Tampered: acme's signature, then a byte of the component changed, and the
    // manifest's component digest updated to match (so only the signature can tell).
    let tampered = dir.join("tampered");
    ok(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:2.0.0"),
            "--dir",
            "tampered",
            "--config",
            "tenon.toml",
        ],
    );
    let wasm_path = tampered.join("stamp_b.wasm");
    let mut wasm = std::fs::read(&wasm_path).unwrap();
    let before = tenon::model::digest(&wasm);
    let at = wasm
        .windows(5)
        .position(|w| w == b"rustc")
        .unwrap_or(wasm.len() - 1);
    wasm[at] ^= 0x20;
    std::fs::write(&wasm_path, &wasm).unwrap();
    let manifest = std::fs::read_to_string(tampered.join("plugin.toml")).unwrap();
    std::fs::write(
        tampered.join("plugin.toml"),
        manifest.replace(&before, &tenon::model::digest(&wasm)),
    )
    .unwrap();

    enum Sig {
        None,
        By(&'static str),
        Kept,
    }
    let cases = [
        ("is not signed", Sig::None, &stage),
        (
            "which is not the key of any publisher",
            Sig::By("mallory.key"),
            &stage,
        ),
        (
            "who is trusted only for plugin names starting with `other-`; this plugin is `stamp`",
            Sig::By("other.key"),
            &stage,
        ),
        ("which is revoked", Sig::By("old.key"), &stage),
        ("changed after signing", Sig::Kept, &tampered),
    ];
    let mut first_denial = None;
    for (i, (reason, sig, from)) in cases.iter().enumerate() {
        if let Sig::By(key) = sig {
            ok(
                dir,
                &[
                    "plugin",
                    "sign",
                    "stage",
                    "--key",
                    key,
                    "--publisher",
                    "acme",
                ],
            );
        }
        drop_files(from, &live_dir, !matches!(sig, Sig::None));
        let status = wait_status(&tenon, reason, |s| {
            s["refused"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason))
        })
        .await;
        let why = status["refused"]["reason"].as_str().unwrap();
        assert!(
            why.contains("refused by the trust policy before compiling"),
            "{why}"
        );
        assert_eq!(
            status["digest"],
            a.as_str(),
            "the live version stays: {status:#}"
        );
        // The live version keeps working.
        assert_eq!(stamped(&tenon, &erp, &format!("Q-R000{i}")).await, "A");

        // The refusal is in the audit log.
        let (ok_audit, out, err) =
            tenon.cli(&["audit", "--plugin", "stamp", "--limit", "1000", "--json"]);
        assert!(ok_audit, "{err}");
        let records: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let denial = records
            .iter()
            .find(|r| {
                r["capability"] == "signature"
                    && r["decision"] == "deny"
                    && r["reason"].as_str().is_some_and(|r| r.contains(reason))
            })
            .unwrap_or_else(|| panic!("no audited denial for {reason}: {out}"));
        first_denial.get_or_insert(denial["seq"].as_u64().unwrap());
    }

    // Nothing of the refused versions was linked (so nothing was compiled): no link
    // record since the first refusal.
    let (_, out, _) = tenon.cli(&["audit", "--plugin", "stamp", "--limit", "1000", "--json"]);
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = first_denial.unwrap();
    let linked: Vec<&Value> = records
        .iter()
        .filter(|r| r["capability"] == "link" && r["seq"].as_u64().unwrap() > first)
        .collect();
    assert!(
        linked.is_empty(),
        "a refused version was linked: {linked:?}"
    );
    let allowed = records.iter().any(|r| {
        r["capability"] == "signature"
            && r["decision"] == "allow"
            && r["digest"] == b.as_str()
            && r["target"] == format!("acme (key {acme_id})").as_str()
    });
    assert!(allowed, "B's accepted signature is audited: {out}");

    // A good version after all that still goes live.
    let out = ok(
        dir,
        &[
            "plugin",
            "install",
            &format!("oci://{host}/acme/stamp:2.0.0"),
            "--dir",
            "plugins/stamp",
            "--config",
            "tenon.toml",
        ],
    );
    assert!(out.contains(&format!("installed stamp 2.0.0 {b}")), "{out}");
    let live = wait_status(&tenon, "B live again", |s| s["digest"] == b.as_str()).await;
    assert_eq!(live["signer"], format!("acme (key {acme_id})").as_str());

    // Revoking the live version in the config checks every plugin again: a config under
    // which the live version would be refused is refused whole, and it stays.
    let config = std::fs::read_to_string(dir.join("tenon.toml")).unwrap();
    std::fs::write(
        dir.join("tenon.toml"),
        config.replace(
            "require_signatures = true",
            &format!("require_signatures = true\nrevoked_digests = [\"{b}\"]"),
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let plugins = tenon.get("/v1/plugins").await.json().unwrap();
        let reason = plugins["config"]["refused"]["reason"]
            .as_str()
            .unwrap_or_default();
        if reason.contains(&format!("version {b} is revoked")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revocation not applied: {plugins:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stamp_status(&tenon).await["digest"], b.as_str());
    drop(registry);
}

#[tokio::test(flavor = "multi_thread")]
async fn install_checks_which_plugin_and_which_version_it_writes() {
    let registry = tokio::task::spawn_blocking(RegistryServer::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a real registry is needed (scripts/registry/install.sh): {e}"));
    let host = registry.host();
    let ws = Workspace::new();
    let dir = ws.path();
    let (acme, _) = keygen(dir, "acme");
    let publish = |fixture: &str, file: &str, sign: bool, target: &str| {
        ok(
            dir,
            &["plugin", "pack", &format!("plugins/{fixture}"), "-o", file],
        );
        if sign {
            ok(
                dir,
                &[
                    "plugin",
                    "sign",
                    file,
                    "--key",
                    "acme.key",
                    "--publisher",
                    "acme",
                ],
            );
        }
        ok(
            dir,
            &["plugin", "publish", file, &format!("oci://{host}/{target}")],
        );
    };
    publish("stamp-a", "a.tar", true, "acme/stamp:1.0.0");
    publish("stamp-b", "b.tar", true, "acme/stamp:2.0.0");
    publish("stamp-a", "a.tar", true, "acme/stamp:3.0.0");
    publish("stamp-a", "a.tar", true, "acme/crm:1.0.0");
    publish("stamp-b", "unsigned.tar", false, "acme/stamp:unsigned");
    // A policy that does not require signatures.
    std::fs::write(
        dir.join("lax.toml"),
        format!(
            "[[trust.publishers]]\nname = \"acme\"\nkey = \"{acme}\"\nprefixes = [\"stamp\"]\n"
        ),
    )
    .unwrap();
    let install = |reference: &str, into: &str, extra: &[&str]| {
        let reference = format!("oci://{host}/{reference}");
        let mut args = vec![
            "plugin",
            "install",
            reference.as_str(),
            "--dir",
            into,
            "--config",
            "lax.toml",
        ];
        args.extend_from_slice(extra);
        tenon_in(dir, &args)
    };
    let refused_with = |(ok, out, err): (bool, String, String), why: &str| {
        assert!(!ok, "installed, but should not have: {out}{err}");
        assert!(
            err.contains("nothing installed") && err.contains(why),
            "{why}: {out}{err}"
        );
    };
    let manifest = |into: &str| {
        tenon_registry::Manifest::load(&dir.join(into).join("plugin.toml"))
            .map(|m| (m.name, m.version))
            .ok()
    };

    // An exact version tag that is not the version in it.
    refused_with(
        install("acme/stamp:3.0.0", "crm", &[]),
        "it is tagged 3.0.0 but its plugin.toml says version 1.0.0",
    );
    assert_eq!(manifest("crm"), None, "nothing written");

    // A repository holds the plugin it is named for, unless --name says which.
    refused_with(
        install("acme/crm:1.0.0", "crm", &[]),
        "it is plugin `stamp`, but the repository is `acme/crm`",
    );
    refused_with(
        install("acme/crm:1.0.0", "crm", &["--name", "crm"]),
        "it is plugin `stamp`, not `crm` (--name)",
    );
    let (installed, out, err) = install("acme/crm:1.0.0", "crm", &["--name", "stamp"]);
    assert!(installed, "{out}{err}");
    assert_eq!(manifest("crm"), Some(("stamp".into(), "1.0.0".into())));

    // A plugin directory keeps its plugin.
    refused_with(
        install("acme/stamp:2.0.0", "plugins/misbehave", &[]),
        "plugins/misbehave holds plugin `misbehave`",
    );
    assert_eq!(
        manifest("plugins/misbehave"),
        Some(("misbehave".into(), "0.1.0".into()))
    );

    // Up is fine; down only on purpose.
    let (installed, out, err) = install("acme/stamp:2", "crm", &[]);
    assert!(installed && out.contains("(tag 2.0.0)"), "{out}{err}");
    refused_with(
        install("acme/stamp:1.0.0", "crm", &[]),
        "holds version 2.0.0, a higher one: --allow-downgrade",
    );
    assert_eq!(manifest("crm"), Some(("stamp".into(), "2.0.0".into())));
    let (installed, out, err) = install("acme/stamp:1.0.0", "crm", &["--allow-downgrade"]);
    assert!(installed, "{out}{err}");
    assert_eq!(manifest("crm"), Some(("stamp".into(), "1.0.0".into())));

    // From a registry, a signature is required even where the policy does not require
    // one, unless the operator says otherwise.
    refused_with(install("acme/stamp:unsigned", "lax", &[]), "is not signed");
    assert_eq!(manifest("lax"), None);
    let (installed, out, err) = install("acme/stamp:unsigned", "lax", &["--allow-unsigned"]);
    assert!(installed && out.contains("signer   unsigned"), "{out}{err}");
    assert!(!dir.join("lax/plugin.sig").exists());
    drop(registry);
}

/// Sign the plugin directory `dir` in place with `key` as `publisher`.
fn sign_dir(dir: &Path, key: &tenon_registry::SecretKey, publisher: &str) {
    let mut package = tenon_registry::Package::from_dir(dir).unwrap();
    package.sign(key, publisher);
    std::fs::write(dir.join("plugin.sig"), package.signature().unwrap()).unwrap();
}

/// `fixture`'s version as `name`, bound to its component and signed: installed into
/// `into`. Its version digest.
fn signed_version(
    ws: &Workspace,
    fixture: &str,
    name: &str,
    key: &tenon_registry::SecretKey,
    publisher: &str,
    into: &Path,
) -> String {
    let original =
        tenon_registry::Package::from_dir(&ws.path().join("plugins").join(fixture)).unwrap();
    let text = original
        .manifest_text()
        .replace("name = \"stamp\"", &format!("name = \"{name}\""));
    let mut package =
        tenon_registry::Package::new(text, original.component().to_vec(), None).unwrap();
    package.bind_component().unwrap();
    package.sign(key, publisher);
    package.install(into).unwrap();
    package.digest()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_of_another_plugin_never_takes_an_instance_however_well_signed() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = ws.path();
    let key = || tenon_registry::SecretKey::generate().unwrap();
    let (acme, globex, first_party) = (key(), key(), key());
    for plugin in ["cpq-source", "http-sink"] {
        sign_dir(&dir.join("plugins").join(plugin), &first_party, "tenon");
    }
    let live_dir = dir.join("plugins/stamp");
    let a = signed_version(&ws, "stamp-a", "stamp", &acme, "acme", &live_dir);
    // Globex is trusted for `globex-*`, and signs a plugin of that name: B's code.
    let evil_dir = dir.join("evil");
    let evil = signed_version(&ws, "stamp-b", "globex-evil", &globex, "globex", &evil_dir);
    let config = |binding: &str| {
        format!(
            r#"
[trust]
require_signatures = true

[[trust.publishers]]
name = "acme"
key = "{}"
prefixes = ["stamp"]

[[trust.publishers]]
name = "globex"
key = "{}"
prefixes = ["globex-"]

[[trust.publishers]]
name = "tenon"
key = "{}"
prefixes = ["cpq-", "http-"]

[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.stamp]
path = "plugins/stamp"
{binding}
[plugins.erp-sink]
path = "plugins/http-sink"
config = {{ url = "{}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[flows.stamped]
source = "cpq-source"
steps = ["stamp"]
sink = "erp-sink"
"#,
            acme.public(),
            globex.public(),
            first_party.public(),
            erp.orders_url()
        )
    };
    ws.write_config(&config(""));
    let tenon = Tenon::start(&ws);
    assert_eq!(stamp_status(&tenon).await["digest"], a.as_str());
    assert_eq!(stamped(&tenon, &erp, "Q-I0001").await, "A");

    // Globex's plugin dropped into the stamp instance's directory: validly signed by a
    // key trusted for its name, and refused, before compiling, for being another plugin.
    drop_files(&evil_dir, &live_dir, true);
    let why = "its manifest names plugin `globex-evil`, but instance `stamp` runs plugin `stamp`";
    let status = wait_status(&tenon, "another plugin refused", |s| {
        s["refused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(why))
    })
    .await;
    let reason = status["refused"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused before compiling")
            && reason.contains("an instance keeps the plugin of the version live in it"),
        "{reason}"
    );
    assert_eq!(status["digest"], a.as_str(), "the live version stays");
    assert_eq!(stamped(&tenon, &erp, "Q-I0002").await, "A");
    let (ok_audit, out, err) =
        tenon.cli(&["audit", "--plugin", "stamp", "--limit", "1000", "--json"]);
    assert!(ok_audit, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.iter().any(|r| r["capability"] == "identity"
            && r["decision"] == "deny"
            && r["digest"] == evil.as_str()
            && r["target"] == "globex-evil"),
        "no audited refusal: {out}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["digest"] == evil.as_str() && r["capability"] == "link"),
        "nothing of it is linked: {out}"
    );
    drop(tenon);

    // A restart does not take it either: the instance keeps the plugin approved in it.
    let check = |binding: &str| {
        ws.write_config(&config(binding));
        let data = ws.data_dir();
        tenon_in(
            dir,
            &[
                "check",
                "--config",
                "tenon.toml",
                "--data-dir",
                data.to_str().unwrap(),
            ],
        )
    };
    let (started, out, err) = check("");
    assert!(!started, "{out}");
    assert!(
        err.contains(why) && err.contains("approved in it before this start"),
        "{err}"
    );
    // The config binds an instance to its plugin from the first load on ...
    let (started, out, err) = check("plugin = \"stamp\"");
    assert!(!started, "{out}");
    assert!(
        err.contains(why) && err.contains("`plugin = \"stamp\"` in [plugins.stamp]"),
        "{err}"
    );
    // ... and is how an operator says that another plugin runs there.
    let (started, out, err) = check("plugin = \"globex-evil\"");
    assert!(started, "{out}{err}");
    assert!(
        out.contains(&format!("plugin stamp: transform 2.0.0 {evil}")),
        "{out}"
    );
}

#[test]
fn check_warns_of_revoked_keys_that_a_deleted_signature_gets_past() {
    let ws = Workspace::new();
    let dir = ws.path();
    ws.write_config(
        "[trust]\nrevoked_keys = [\"0123456789abcdef\"]\n[plugins.stamp]\npath = \"plugins/stamp-a\"\n",
    );
    let data = ws.data_dir();
    let args = [
        "check",
        "--config",
        "tenon.toml",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let (checked, out, err) = tenon_in(dir, &args);
    assert!(checked, "{out}{err}");
    assert!(
        err.contains("revoked_keys without require_signatures = true"),
        "{err}"
    );
    ws.write_config(
        "[trust]\nrequire_signatures = false\n[plugins.stamp]\npath = \"plugins/stamp-a\"\n",
    );
    let (checked, out, err) = tenon_in(dir, &args);
    assert!(checked, "{out}{err}");
    assert!(!err.contains("revoked_keys"), "{err}");
}
