//! Hot swap without a redeploy, through the real binary and its file watcher.

use crate::support::{Tenon, Workspace, sample};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

/// A version of the stamping fixture: its manifest version and component bytes.
pub(crate) struct Version {
    number: &'static str,
    pub(crate) wasm: Vec<u8>,
}

impl Version {
    pub(crate) fn of(ws: &Workspace, letter: &'static str) -> Version {
        let lower = letter.to_ascii_lowercase();
        let wasm = std::fs::read(
            ws.path()
                .join(format!("plugins/stamp-{lower}/stamp_{lower}.wasm")),
        )
        .unwrap();
        let number = if letter == "A" { "1.0.0" } else { "2.0.0" };
        Version { number, wasm }
    }

    /// Its manifest, naming its component (as a hot deploy's must).
    fn manifest(&self) -> String {
        bound_manifest(self.number, &self.wasm)
    }

    pub(crate) fn digest(&self) -> String {
        tenon::sandbox::plugin::version_digest(self.manifest().as_bytes(), &self.wasm)
    }

    /// Install this version as the live files of `dir`: the component, then the manifest.
    pub(crate) fn install(&self, dir: &Path) {
        std::fs::write(dir.join("stamp.wasm"), &self.wasm).unwrap();
        std::fs::write(dir.join("plugin.toml"), self.manifest()).unwrap();
    }
}

fn manifest(version: &str) -> String {
    format!(
        "name = \"stamp\"\nversion = \"{version}\"\nkind = \"transform\"\nworld = \"tenon:plugin/transform@0.1.0\"\ncomponent = \"stamp.wasm\"\n"
    )
}

/// A flow `cpq-source -> stamp -> erp-sink`, with the stamp plugin's live directory.
pub(crate) fn stamping(ws: &Workspace, erp_url: &str) -> PathBuf {
    let dir = ws.path().join("plugins/stamp");
    std::fs::create_dir_all(&dir).unwrap();
    Version::of(ws, "A").install(&dir);
    ws.write_config(&format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.stamp]
path = "plugins/stamp"
[plugins.erp-sink]
path = "plugins/http-sink"
config = {{ url = "{erp_url}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[flows.stamped]
source = "cpq-source"
steps = ["stamp"]
sink = "erp-sink"
"#
    ));
    dir
}

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

#[tokio::test(flavor = "multi_thread")]
async fn twenty_swaps_under_load_lose_and_duplicate_nothing() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let (a, b) = (Version::of(&ws, "A"), Version::of(&ws, "B"));
    let tenon = Tenon::start(&ws);

    // Two lanes post quotes with unique numbers until told to stop.
    let answered: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for lane in 0..2 {
        let (base, answered, stop) = (tenon.base.clone(), answered.clone(), stop.clone());
        let auth = format!("Bearer {}", tenon.token);
        load.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let number = format!("Q-S{lane}-{n:05}");
                let body = sample("plain.json").replace("Q-00101", &number);
                let reply = client::request(
                    "POST",
                    &format!("{base}/v1/sources/cpq-source"),
                    &[("authorization", &auth)],
                    Some(("application/json", body.into_bytes())),
                )
                .await
                .unwrap();
                assert_eq!(reply.status, 202);
                let id = reply.json().unwrap()["accepted"][0]
                    .as_str()
                    .unwrap()
                    .to_owned();
                answered.lock().unwrap().insert(number, id);
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    for swap in 0..20 {
        let next = if swap % 2 == 0 { &b } else { &a };
        next.install(&dir);
        wait_status(&tenon, "swap", |s| s["digest"] == next.digest().as_str()).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let status = stamp_status(&tenon).await;
    assert_eq!(status["swaps"], 20);
    assert_eq!(status["version"], "1.0.0");

    // A broken version dropped in under load is refused; the live one keeps serving.
    std::fs::write(dir.join("stamp.wasm"), b"\0asm\x0d\0\x01\0 broken").unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        bound_manifest("3.0.0", b"\0asm\x0d\0\x01\0 broken"),
    )
    .unwrap();
    let refused = wait_status(&tenon, "refusal", |s| !s["refused"].is_null()).await;
    assert_eq!(
        refused["digest"],
        a.digest().as_str(),
        "the old version stays live"
    );
    assert!(
        refused["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("component does not compile"),
        "{refused:#}"
    );
    let before = erp.orders();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        erp.orders() > before,
        "throughput continues after the refusal"
    );

    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let answered = answered.lock().unwrap().clone();
    let mut statuses = BTreeMap::new();
    for (number, id) in &answered {
        statuses.insert(number.clone(), tenon.settled(id).await);
    }
    // No crash here: nothing may reach the ERP twice, not even as a redelivery it
    // would recognise.
    let received = erp.received();
    let again: Vec<&str> = received
        .iter()
        .filter(|r| r.duplicate)
        .filter_map(|r| r.idempotency_key.as_deref())
        .collect();
    assert!(again.is_empty(), "delivered twice: {again:?}");
    let erp_orders: BTreeMap<String, Value> = received
        .into_iter()
        .map(|r| (r.idempotency_key.clone().unwrap(), r.body))
        .collect();
    let letters = BTreeMap::from([(a.digest(), "A"), (b.digest(), "B")]);
    let mut seen = BTreeMap::new();
    for (number, status) in &statuses {
        let outcome = &status["outcomes"][0];
        let stamp_digest = outcome["trail"][1]["digest"].as_str().unwrap().to_owned();
        let order = erp_orders
            .get(outcome["id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{number} not delivered"));
        assert_eq!(
            order["number"],
            number.as_str(),
            "the order is this quote's"
        );
        assert_eq!(
            order["stamp"], letters[&stamp_digest],
            "{number}: the output matches the version recorded"
        );
        *seen.entry(letters[&stamp_digest]).or_insert(0) += 1;
    }
    assert_eq!(
        erp_orders.len(),
        answered.len(),
        "every quote once, none twice"
    );
    assert!(seen.len() == 2, "both versions handled traffic: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_written_plugin_never_goes_live() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let (a, b) = (Version::of(&ws, "A"), Version::of(&ws, "B"));
    let tenon = Tenon::start(&ws);

    // An editor writing in two quick steps (within the debounce): one reload, whole file.
    let half = b.wasm.len() / 2;
    std::fs::write(dir.join("stamp.wasm"), &b.wasm[..half]).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.install(&dir);
    let live = wait_status(&tenon, "B live", |s| s["digest"] == b.digest().as_str()).await;
    assert_eq!(live["swaps"], 1);
    assert!(live["refused"].is_null(), "{live:#}");

    // A slow writer (a pause longer than the debounce): the half file is refused, the
    // live version stays, and the finished file then goes live.
    std::fs::write(dir.join("stamp.wasm"), &a.wasm[..a.wasm.len() / 2]).unwrap();
    let refused = wait_status(&tenon, "half refused", |s| !s["refused"].is_null()).await;
    assert_eq!(refused["digest"], b.digest().as_str());
    a.install(&dir);
    let live = wait_status(&tenon, "A live", |s| s["digest"] == a.digest().as_str()).await;
    assert!(live["refused"].is_null());
    assert_eq!(live["previous"], b.digest().as_str());

    // The status command shows it too.
    let (ok, out, _) = tenon.cli(&["status"]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with("stamp ")).unwrap();
    assert!(
        line.contains(&a.digest()) && line.contains("swaps=2"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_is_tried_on_recorded_traffic_then_promoted_and_rolled_back() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let (a, b) = (Version::of(&ws, "A"), Version::of(&ws, "B"));
    let tenon = Tenon::start(&ws);
    for n in 1..=3 {
        let body = sample("plain.json").replace("Q-00101", &format!("Q-T{n}"));
        let id = tenon.send_quote(&body).await.remove(0);
        tenon.settled(&id).await;
    }
    assert_eq!(erp.orders(), 3);
    let cli = |args: &[&str]| {
        let mut all = vec!["plugin"];
        all.extend_from_slice(args);
        tenon.cli(&all)
    };
    let candidate_b = ws.path().join("plugins/stamp-b");
    let candidate_b = candidate_b.to_str().unwrap();

    // B beside A on the three recorded quotes: each output differs in its stamp.
    let (ok, out, err) = cli(&[
        "try",
        "stamp",
        "--against",
        "stamped",
        "--candidate",
        candidate_b,
    ]);
    assert!(ok, "{err}");
    let expected = "#3 Q-T3: 1 difference(s)\n    replace /outputs/0/stamp = \"B\"\n\
                    #2 Q-T2: 1 difference(s)\n    replace /outputs/0/stamp = \"B\"\n\
                    #1 Q-T1: 1 difference(s)\n    replace /outputs/0/stamp = \"B\"\n\
                    3 of 3 recorded inputs differ";
    assert_eq!(out.trim(), expected);
    // The live version against itself: no difference.
    let candidate_a = ws.path().join("plugins/stamp-a");
    let (ok, out, _) = cli(&[
        "try",
        "stamp",
        "--against",
        "stamped",
        "--candidate",
        candidate_a.to_str().unwrap(),
    ]);
    assert!(ok);
    assert!(
        out.trim().ends_with("0 of 3 recorded inputs differ"),
        "{out}"
    );
    assert_eq!(erp.orders(), 3, "trying delivers nothing");
    assert_eq!(
        stamp_status(&tenon).await["digest"],
        a.digest().as_str(),
        "trying swaps nothing"
    );
    let (ok, _, err) = cli(&[
        "try",
        "erp-sink",
        "--against",
        "stamped",
        "--candidate",
        candidate_b,
    ]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "error: `erp-sink` is not a transform step of flow `stamped`"
    );

    // Promote B: live, and written into the plugin's directory for the next start.
    let (ok, out, err) = cli(&["promote", "stamp", "--candidate", candidate_b]);
    assert!(ok, "{err}");
    // The candidate's version is its own manifest with B's component.
    let b_digest = tenon::sandbox::plugin::version_digest(
        &std::fs::read(Path::new(candidate_b).join("plugin.toml")).unwrap(),
        &b.wasm,
    );
    assert_eq!(
        out.trim(),
        format!("stamp: {} -> {b_digest} live", a.digest())
    );
    assert_eq!(std::fs::read(dir.join("stamp_b.wasm")).unwrap(), b.wasm);
    let (ok, out, _) = cli(&["rollback", "stamp"]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("stamp: {b_digest} -> {} live", a.digest())
    );
    let status = wait_status(&tenon, "A back", |s| s["digest"] == a.digest().as_str()).await;
    assert_eq!(status["version"], "1.0.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn flows_are_added_rerouted_and_bad_configs_refused_without_a_restart() {
    let erp = MockErp::start().await.unwrap();
    erp.set_unavailable(true);
    let ws = Workspace::new();
    stamping(&ws, &erp.orders_url());
    let tenon = Tenon::start(&ws);
    let quote = |n: &str| sample("plain.json").replace("Q-00101", n);

    // A quote on the route cpq-source -> stamp -> erp-sink waits at the sink.
    let waiting = tenon.send_quote(&quote("Q-R1")).await.remove(0);
    tenon
        .wait_for(&waiting, |s| {
            s["pending"][0]["attempts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;

    // Re-route `stamped` (no stamp step any more) and add a flow, in one config edit.
    let config = std::fs::read_to_string(ws.path().join("tenon.toml")).unwrap();
    let rerouted = config.replace("steps = [\"stamp\"]\n", "").replacen(
        "sink = \"erp-sink\"\n",
        "sink = \"erp-sink\"\n[plugins.cpq-2]\npath = \"plugins/cpq-source\"\n[flows.direct]\nsource = \"cpq-2\"\nsink = \"erp-sink\"\n",
        1,
    );
    ws.write_config(&rerouted);
    let deadline = Instant::now() + Duration::from_secs(30);
    let added = loop {
        let reply = tenon
            .post(
                "/v1/sources/cpq-2",
                "application/json",
                quote("Q-R9").as_bytes(),
            )
            .await;
        if reply.status == 202 {
            break reply.json().unwrap()["accepted"][0]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert_eq!(reply.status, 404, "before the reload the source is unknown");
        assert!(Instant::now() < deadline, "the new flow never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rerouted_quote = tenon.send_quote(&quote("Q-R2")).await.remove(0);

    erp.set_unavailable(false);
    for id in [&waiting, &rerouted_quote, &added] {
        tenon.settled(id).await;
    }
    let orders: BTreeMap<String, Value> = erp
        .received()
        .into_iter()
        .filter(|r| !r.duplicate)
        .map(|r| {
            (
                r.body["number"].as_str().unwrap_or_default().to_owned(),
                r.body,
            )
        })
        .collect();
    assert_eq!(
        orders["Q-R1"]["stamp"], "A",
        "the waiting quote finished on the route it entered with"
    );
    assert!(
        orders["Q-R2"].get("stamp").is_none(),
        "a new quote takes the new route"
    );
    assert!(orders.contains_key("Q-R9"), "the added flow delivers");
    assert_eq!(orders.len(), 3);

    // A config naming an unknown plugin is refused whole; the running one stays.
    ws.write_config(&rerouted.replace(
        "sink = \"erp-sink\"\n[plugins.cpq-2]",
        "sink = \"nope\"\n[plugins.cpq-2]",
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let status = tenon.get("/v1/plugins").await.json().unwrap();
        if !status["config"]["refused"].is_null() {
            break status["config"]["refused"]["reason"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(Instant::now() < deadline, "the bad config was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused.contains("flow `stamped`: field `sink`: no plugin named `nope`"),
        "{refused}"
    );
    let still = tenon.send_quote(&quote("Q-R3")).await.remove(0);
    let status = tenon.settled(&still).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
}

/// A manifest that names its component's digest.
pub(crate) fn bound_manifest(version: &str, wasm: &[u8]) -> String {
    format!(
        "{}component_digest = \"{}\"\n",
        manifest(version),
        tenon::model::digest(wasm)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_in_two_steps_never_pairs_a_component_with_another_manifest() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let (a, b) = (Version::of(&ws, "A"), Version::of(&ws, "B"));
    let bound = |v: &Version| v.manifest();
    std::fs::write(dir.join("plugin.toml"), bound(&a)).unwrap();
    let digest_of = |v: &Version| v.digest();
    let tenon = Tenon::start(&ws);
    assert_eq!(stamp_status(&tenon).await["digest"], digest_of(&a));

    // Quotes keep coming while the files change.
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let lane = {
        let (base, stop, sent) = (tenon.base.clone(), stop.clone(), sent.clone());
        let auth = format!("Bearer {}", tenon.token);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = sample("plain.json").replace("Q-00101", &format!("Q-D{n:05}"));
                let reply = client::request(
                    "POST",
                    &format!("{base}/v1/sources/cpq-source"),
                    &[("authorization", &auth)],
                    Some(("application/json", body.into_bytes())),
                )
                .await
                .unwrap();
                assert_eq!(reply.status, 202);
                let id = reply.json().unwrap()["accepted"][0]
                    .as_str()
                    .unwrap()
                    .to_owned();
                sent.lock().unwrap().push(id);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Component first, the manifest 0.4 s later; then the other way round.
    for (round, next) in [&b, &a, &b, &a].into_iter().enumerate() {
        let component_first = round % 2 == 0;
        let live_before = stamp_status(&tenon).await["digest"].clone();
        if component_first {
            std::fs::write(dir.join("stamp.wasm"), &next.wasm).unwrap();
        } else {
            std::fs::write(dir.join("plugin.toml"), bound(next)).unwrap();
        }
        // Half deployed: refused, the live version stays.
        let half = wait_status(&tenon, "half deployed", |s| !s["refused"].is_null()).await;
        assert_eq!(
            half["digest"], live_before,
            "round {round}: nothing new live"
        );
        assert!(
            half["refused"]["reason"]
                .as_str()
                .unwrap()
                .contains("a deploy is under way, or the two files do not belong together"),
            "{half:#}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(stamp_status(&tenon).await["digest"], live_before);
        if component_first {
            std::fs::write(dir.join("plugin.toml"), bound(next)).unwrap();
        } else {
            std::fs::write(dir.join("stamp.wasm"), &next.wasm).unwrap();
        }
        let live = wait_status(&tenon, "deployed", |s| s["digest"] == digest_of(next)).await;
        assert!(live["refused"].is_null());
    }
    stop.store(true, Ordering::Relaxed);
    lane.await.unwrap();

    // Every quote was stamped by a whole version: A's files or B's, never a mix.
    let letters = BTreeMap::from([(digest_of(&a), "A"), (digest_of(&b), "B")]);
    let orders: BTreeMap<String, Value> = erp
        .received()
        .into_iter()
        .map(|r| (r.idempotency_key.clone().unwrap(), r.body))
        .collect();
    let ids = sent.lock().unwrap().clone();
    assert!(ids.len() > 50, "only {} quotes sent", ids.len());
    for id in &ids {
        let status = tenon.settled(id).await;
        let outcome = &status["outcomes"][0];
        let digest = outcome["trail"][1]["digest"].as_str().unwrap();
        let letter = letters
            .get(digest)
            .unwrap_or_else(|| panic!("{id} ran on a version that is neither A nor B: {digest}"));
        let order = &orders[outcome["id"].as_str().unwrap()];
        assert_eq!(order["stamp"], *letter, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_change_is_a_version_and_wider_grants_wait_for_approval() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let a = Version::of(&ws, "A");
    let mut tenon = Tenon::start(&ws);

    // A manifest that does not name its component is not taken from a watched
    // directory (a deploy under way looks the same); an explicit reload takes it.
    std::fs::write(dir.join("plugin.toml"), manifest("1.0.9")).unwrap();
    let refused = wait_status(&tenon, "unbound refused", |s| !s["refused"].is_null()).await;
    assert!(
        refused["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("a version dropped into a watched directory must name its component"),
        "{refused:#}"
    );
    assert_eq!(refused["digest"], a.digest().as_str());
    let reply = tenon
        .post("/v1/plugins/stamp/reload", "application/json", b"{}")
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let unbound = tenon::sandbox::plugin::version_digest(manifest("1.0.9").as_bytes(), &a.wasm);
    assert_eq!(stamp_status(&tenon).await["digest"], unbound.as_str());

    // Only the manifest changes: a new version, live.
    let patched_manifest = bound_manifest("1.0.1", &a.wasm);
    std::fs::write(dir.join("plugin.toml"), &patched_manifest).unwrap();
    let patched = tenon::sandbox::plugin::version_digest(patched_manifest.as_bytes(), &a.wasm);
    let live = wait_status(&tenon, "1.0.1 live", |s| s["digest"] == patched.as_str()).await;
    assert_eq!(live["version"], "1.0.1");

    // Wider grants: held, shown, not live.
    let wide = format!(
        "{}[grants]\nmemory_mib = 128\n",
        bound_manifest("1.1.0", &a.wasm)
    );
    std::fs::write(dir.join("plugin.toml"), &wide).unwrap();
    let wide_digest = tenon::sandbox::plugin::version_digest(wide.as_bytes(), &a.wasm);
    let held = wait_status(&tenon, "held", |s| !s["pending"].is_null()).await;
    assert_eq!(
        held["digest"],
        patched.as_str(),
        "the approved version stays live"
    );
    assert_eq!(held["pending"]["digest"], wide_digest.as_str());
    assert_eq!(
        held["pending"]["widening"],
        serde_json::json!(["memory_mib: 64 -> 128"])
    );
    let (ok, out, _) = tenon.cli(&["status"]);
    assert!(ok);
    assert!(
        out.contains("waiting for approval: 1.1.0")
            && out.contains(&format!(
                "(wider grants: memory_mib: 64 -> 128); `tenon plugin approve stamp --digest {wide_digest}`"
            )),
        "{out}"
    );
    let id = tenon.send_quote(sample("plain.json")).await.remove(0);
    let status = tenon.settled(&id).await;
    assert_eq!(
        status["outcomes"][0]["trail"][1]["digest"],
        patched.as_str()
    );

    // A restart does not approve it.
    tenon.kill();
    tenon = Tenon::start(&ws);
    let after = stamp_status(&tenon).await;
    assert_eq!(after["digest"], patched.as_str(), "{after:#}");
    assert_eq!(after["pending"]["digest"], wide_digest.as_str());

    // An operator with plugins:promote approves it; the audit log says who.
    let (reader_ok, reader_out, _) = tenon.cli(&["keys", "create", "--scope", "admin:read"]);
    assert!(reader_ok);
    let reader = reader_out.lines().last().unwrap().trim().to_owned();
    let refused = client::request(
        "POST",
        &format!("{}/v1/plugins/stamp/approve", tenon.admin),
        &[("authorization", &format!("Bearer {reader}"))],
        Some((
            "application/json",
            format!(r#"{{"digest": "{wide_digest}"}}"#).into_bytes(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403, "approving needs plugins:promote");
    // Approving names the version reviewed: another one is refused.
    let (ok, _, err) = tenon.cli(&["plugin", "approve", "stamp", "--digest", &patched]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "waiting for approval is {wide_digest}, not {patched}"
        )),
        "{err}"
    );
    let (ok, out, err) = tenon.cli(&["plugin", "approve", "stamp", "--digest", &wide_digest]);
    assert!(
        ok,
        "{err} LOG {}",
        std::fs::read_to_string(ws.path().join("tenon.log")).unwrap()
    );
    assert_eq!(
        out.trim(),
        format!("stamp: {patched} -> {wide_digest} live")
    );
    let approved = stamp_status(&tenon).await;
    assert!(approved["pending"].is_null());
    let audit = tenon
        .get("/v1/audit?plugin=stamp&limit=1000")
        .await
        .json()
        .unwrap();
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["capability"] == "version"
            && r["decision"] == "deny"
            && r["reason"]
                .as_str()
                .unwrap()
                .starts_with("held for approval")),
        "{audit:#}"
    );
    assert!(
        records.iter().any(|r| r["capability"] == "version"
            && r["decision"] == "allow"
            && r["key"].as_str().is_some_and(|k| k.starts_with("k_"))),
        "{audit:#}"
    );
    let (ok, out, _) = tenon.cli(&["plugin", "approve", "stamp", "--digest", &wide_digest]);
    assert!(!ok, "{out}");

    // Narrower again: swapped without anyone approving.
    let narrow = format!(
        "{}[grants]\nmemory_mib = 32\n",
        bound_manifest("1.2.0", &a.wasm)
    );
    std::fs::write(dir.join("plugin.toml"), &narrow).unwrap();
    let narrow_digest = tenon::sandbox::plugin::version_digest(narrow.as_bytes(), &a.wasm);
    wait_status(&tenon, "narrower live", |s| {
        s["digest"] == narrow_digest.as_str()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_files_stay_in_their_directory_and_versions_can_be_pinned() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let (a, b) = (Version::of(&ws, "A"), Version::of(&ws, "B"));
    let tenon = Tenon::start(&ws);
    let reason = |s: &Value| {
        s["refused"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // A component named outside the directory.
    std::fs::write(
        dir.join("plugin.toml"),
        manifest("1.0.1").replace("\"stamp.wasm\"", "\"../misbehave/misbehave.wasm\""),
    )
    .unwrap();
    let refused = wait_status(&tenon, "outside", |s| !s["refused"].is_null()).await;
    assert!(
        reason(&refused).contains("field `component`: `../misbehave/misbehave.wasm` must be a file name in the plugin's directory"),
        "{refused:#}"
    );
    // A symlink that leaves it.
    std::fs::write(
        dir.join("plugin.toml"),
        manifest("1.0.2").replace("\"stamp.wasm\"", "\"link.wasm\""),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        ws.path().join("plugins/misbehave/misbehave.wasm"),
        dir.join("link.wasm"),
    )
    .unwrap();
    let refused = wait_status(&tenon, "symlink", |s| reason(s).contains("link.wasm")).await;
    assert_eq!(refused["digest"], a.digest().as_str(), "{refused:#}");
    assert!(reason(&refused).starts_with("cannot read "), "{refused:#}");
    a.install(&dir);

    // A candidate from outside the plugin roots.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("stamp.wasm"), elsewhere.path().join("stamp.wasm")).unwrap();
    std::fs::write(elsewhere.path().join("plugin.toml"), manifest("9.0.0")).unwrap();
    let (ok, _, err) = tenon.cli(&[
        "plugin",
        "promote",
        "stamp",
        "--candidate",
        &elsewhere.path().to_string_lossy(),
    ]);
    assert!(!ok);
    assert!(err.contains("is outside the plugin roots"), "{err}");

    // A pinned version: any other is refused.
    let config = std::fs::read_to_string(ws.path().join("tenon.toml")).unwrap();
    let pinned = config.replace(
        "[plugins.stamp]\npath = \"plugins/stamp\"",
        &format!(
            "[plugins.stamp]\npath = \"plugins/stamp\"\ndigest = \"{}\"",
            a.digest()
        ),
    );
    assert_ne!(pinned, config);
    tenon.reconfigure(&ws, &pinned, "stamped").await;
    b.install(&dir);
    let refused = wait_status(&tenon, "pinned", |s| reason(s).contains("pins")).await;
    assert_eq!(refused["digest"], a.digest().as_str());
    assert!(
        reason(&refused).contains(&format!("the config pins version {}", a.digest())),
        "{refused:#}"
    );
}
