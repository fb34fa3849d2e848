//! Plugin loading and calling, in process: the compile cache, refusals at load time,
//! and limits.

use crate::support::Workspace;
use std::path::Path;
use std::sync::Arc;
use tenon::model::StoredMessage;
use tenon::sandbox::engine::Engine;
use tenon::sandbox::plugin::{CallError, Plugin, PluginSettings};
use tenon::store::redb::RedbStore;
use tenon::store::{NodeDb, Store};

fn message() -> StoredMessage {
    StoredMessage {
        id: "m1".into(),
        key: "Q-1".into(),
        kind: "QuoteApproved".into(),
        content_type: "application/json".into(),
        headers: vec![],
        body: b"{}".to_vec(),
    }
}

fn settings(pairs: &[(&str, &str)]) -> PluginSettings {
    PluginSettings {
        config: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..PluginSettings::default()
    }
}

/// An engine over the data directory's database, and the store its plugins' key-value
/// data goes to.
fn engine_at(data: &Path) -> (Engine, Arc<dyn Store>) {
    let node = NodeDb::open(data).unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&node).unwrap());
    (Engine::new(node, store.clone(), data).unwrap(), store)
}

/// The quote mapping's component and its digest.
fn mapping_component(ws: &Workspace) -> (Vec<u8>, String) {
    let wasm = std::fs::read(ws.path().join("plugins/quote-to-order/quote_to_order.wasm")).unwrap();
    let digest = tenon::model::digest(&wasm);
    (wasm, digest)
}

#[test]
fn instances_of_one_component_share_its_compiled_code_while_held() {
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let (wasm, digest) = mapping_component(&ws);
    let first = engine.component(&wasm, &digest).unwrap();
    let second = engine.component(&wasm, &digest).unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "two copies of one component's code"
    );
    // The engine keeps nothing alive itself: once no plugin holds it, it goes.
    let weak = Arc::downgrade(&first);
    drop((first, second));
    assert!(
        weak.upgrade().is_none(),
        "the engine kept a component no one holds"
    );
    // And the next load finds it again (from the on-disk cache).
    engine.component(&wasm, &digest).unwrap();
}

#[test]
fn loads_of_one_component_at_once_share_one_copy() {
    // Plugins load side by side at start; two instances of one plugin (the example's
    // two ERP sinks) then ask for one component at the same moment, here uncompiled.
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let (wasm, digest) = mapping_component(&ws);
    let start = std::sync::Barrier::new(2);
    let (a, b) = std::thread::scope(|s| {
        let load = || {
            start.wait();
            engine.component(&wasm, &digest).unwrap()
        };
        let a = s.spawn(load);
        let b = s.spawn(load);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(Arc::ptr_eq(&a, &b), "two copies of one component's code");
    assert_eq!(
        engine.compiled(),
        1,
        "the second load waited for the first's"
    );
    let cached = std::fs::read_dir(ws.data_dir().join("cache"))
        .unwrap()
        .count();
    assert_eq!(cached, 1, "one artifact, and no temporary file left behind");
}

#[test]
fn compiled_components_are_cached_and_verified() {
    let ws = Workspace::new();
    let data = ws.data_dir();
    let dir = ws.path().join("plugins/quote-to-order");
    let digest = {
        let (engine, _store) = engine_at(&data);
        let plugin = Plugin::load(&engine, "q2o", &dir, &PluginSettings::default()).unwrap();
        plugin.component_digest().to_owned()
    };
    let hex = digest.trim_start_matches("sha256:");
    let cached: Vec<_> = std::fs::read_dir(data.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(hex))
        .collect();
    assert_eq!(cached.len(), 1, "one artifact for the component");

    // A tampered artifact is never loaded: the digest check sends it back to the
    // compiler, and the plugin still loads and works.
    std::fs::write(&cached[0], b"not a compiled component").unwrap();
    let (engine, _store) = engine_at(&data);
    let plugin = Plugin::load(&engine, "q2o", &dir, &PluginSettings::default()).unwrap();
    assert_eq!(plugin.component_digest(), digest);
    assert_ne!(
        std::fs::read(&cached[0]).unwrap(),
        b"not a compiled component"
    );
}

#[test]
fn a_component_that_imports_more_than_its_kind_allows_is_refused_at_load() {
    let ws = Workspace::new();
    // The HTTP sink's component, dressed up as a transform: transforms get no network.
    let dir = ws.path().join("plugins/http-sink");
    let manifest = r#"
name = "sneaky"
version = "0.1.0"
kind = "transform"
world = "tenon:plugin/transform@0.1.0"
component = "http_sink.wasm"
"#;
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    let (engine, _store) = engine_at(&ws.data_dir());
    let err = Plugin::load(&engine, "sneaky", &dir, &PluginSettings::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("plugin `sneaky` ("), "{text}");
    assert!(
        text.contains(
            "the component imports `wasi:http/outgoing-handler@0.2.12`, which a transform plugin cannot have: only sink and API plugins reach the network"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_grant_below_what_the_component_starts_with_is_refused_before_compiling() {
    use tenon::store::audit::{AuditQuery, Decision};
    let ws = Workspace::new();
    let node = NodeDb::open(&ws.data_dir()).unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&node).unwrap());
    let engine = Engine::new(node.clone(), store, &ws.data_dir()).unwrap();
    let dir = ws.path().join("plugins/quote-to-order");
    // The SDK's allocator arena (1 MiB) is part of the mapping's initial memory.
    let wasm = std::fs::read(dir.join("quote_to_order.wasm")).unwrap();
    let initial = tenon::sandbox::inspect::initial_memory(&wasm);
    assert!(
        initial > 1 << 20 && initial <= 2 << 20,
        "initial memory {initial}"
    );

    let mut narrow = PluginSettings::default();
    narrow.grants.memory_mib = Some(1);
    let err = Plugin::load(&engine, "q2o", &dir, &narrow)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the component starts with {} KiB of linear memory, more than its memory grant of 1 MiB, so no instance of it could start: grant `memory_mib = 2` or more",
            initial >> 10
        )),
        "{err}"
    );
    assert_eq!(engine.compiled(), 0, "compiled before the refusal");
    let denied = node
        .audit_records(&AuditQuery {
            plugin: Some("q2o".into()),
            decision: Some(Decision::Deny),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(
        denied
            .iter()
            .any(|r| r.capability == "memory" && r.target == "1 MiB"),
        "{denied:?}"
    );

    // What the check lets through does start: 2 MiB maps a quote.
    narrow.grants.memory_mib = Some(2);
    let plugin = Plugin::load(&engine, "q2o", &dir, &narrow).unwrap();
    maps_as_natively(&plugin, &quote_with_lines(1)).await;

    // `tenon plugin audit` says the same of a manifest that grants too little.
    let manifest = std::fs::read_to_string(dir.join("plugin.toml"))
        .unwrap()
        .replace("memory_mib = 64", "memory_mib = 1");
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    let report = tenon::sandbox::inspect::AuditReport::of_path(&dir).unwrap();
    assert!(!report.loadable);
    assert_eq!(report.initial_memory, initial);
    let text = report.render();
    assert!(
        text.contains("REFUSED  the component starts with")
            && text.contains("(an instance starts with"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_never_returns_is_stopped_at_its_deadline() {
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let mut looping = settings(&[("mode", "loop")]);
    looping.grants.timeout_ms = Some(200);
    let dir = ws.path().join("plugins/misbehave");
    let looping = Plugin::load(&engine, "loop", &dir, &looping).unwrap();
    let started = std::time::Instant::now();
    let err = looping.transform(&message()).await.unwrap_err();
    assert_eq!(
        err,
        CallError::Timeout(std::time::Duration::from_millis(200))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // The same component with another config passes messages through.
    let echo = Plugin::load(&engine, "echo", &dir, &settings(&[("mode", "echo")])).unwrap();
    let out = echo.transform(&message()).await.unwrap();
    assert_eq!(out, vec![message()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_and_traps_are_classified() {
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let dir = ws.path().join("plugins/misbehave");
    let retry = Plugin::load(&engine, "r", &dir, &settings(&[("mode", "retryable")])).unwrap();
    assert_eq!(
        retry.transform(&message()).await.unwrap_err().to_string(),
        "retryable: misbehave: try again"
    );
    let trap = Plugin::load(&engine, "t", &dir, &settings(&[("mode", "trap")])).unwrap();
    let err = trap.transform(&message()).await.unwrap_err();
    assert!(matches!(err, CallError::Trap(_)), "{err:?}");
    // A source call on a transform is refused by the host, not attempted.
    let wrong = trap
        .ingest(tenon::sandbox::plugin::RawRequest {
            content_type: "application/json".into(),
            headers: vec![],
            body: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        wrong,
        CallError::Host("t is a transform plugin; it cannot ingest".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_never_sees_another_plugins_keys() {
    let ws = Workspace::new();
    let (engine, store) = engine_at(&ws.data_dir());
    let dir = ws.path().join("plugins/misbehave");
    let load = |name: &str, mode: &str| {
        Plugin::load(&engine, name, &dir, &settings(&[("mode", mode)])).unwrap()
    };
    let mut secret = message();
    secret.body = b"customer master of plugin a".to_vec();
    // A step's writes are committed with its result.
    let written = load("a", "kv-put").transform_step(&secret).await.unwrap();
    store.kv_commit(&written.kv.unwrap()).await.unwrap();

    // Another plugin asking for the very same key gets nothing...
    let out = load("b", "kv-get").transform(&message()).await.unwrap();
    assert_eq!(out[0].body, b"");
    // ...while the owner (the same instance name) reads its value back.
    let out = load("a", "kv-get").transform(&message()).await.unwrap();
    assert_eq!(out[0].body, b"customer master of plugin a");
    assert_eq!(
        store.kv_get("a", "Q-1").await.unwrap().as_deref(),
        Some(&b"customer master of plugin a"[..])
    );
    assert_eq!(store.kv_get("b", "Q-1").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_are_fresh_per_message_unless_the_operator_opts_in_to_reuse() {
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let dir = ws.path().join("plugins/misbehave");
    let calls = |out: Vec<StoredMessage>| -> u64 {
        let body: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
        body["calls"].as_u64().unwrap()
    };

    // The default: every message meets a new instance, whatever it kept before.
    let fresh = Plugin::load(&engine, "fresh", &dir, &settings(&[("mode", "count")])).unwrap();
    assert!(!fresh.reuses_instances());
    for _ in 0..3 {
        assert_eq!(calls(fresh.transform(&message()).await.unwrap()), 1);
    }

    // Opted in: one instance carries on from message to message, until it traps;
    // the next message then meets a new one (counting from 1 again).
    let mut kept = settings(&[("mode", "count"), ("trap_after", "3")]);
    kept.reuse_instances = true;
    let kept = Plugin::load(&engine, "kept", &dir, &kept).unwrap();
    assert!(kept.reuses_instances());
    for n in 1..=3 {
        assert_eq!(calls(kept.transform(&message()).await.unwrap()), n);
    }
    let err = kept.transform(&message()).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Trap(text) if text.contains("trapping after 3 calls")),
        "{err}"
    );
    assert_eq!(calls(kept.transform(&message()).await.unwrap()), 1);
    assert_eq!(calls(kept.transform(&message()).await.unwrap()), 2);

    // Its per-call state starts anew with each message: the deadline among it. Each
    // call spins 40 ms (past several epoch ticks, where deadlines are checked) and
    // the third starts after the first call's deadline has passed.
    let mut slow = settings(&[("mode", "count"), ("spin_ms", "40")]);
    slow.reuse_instances = true;
    slow.grants.timeout_ms = Some(300);
    let slow = Plugin::load(&engine, "slow", &dir, &slow).unwrap();
    for n in 1..=3 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        assert_eq!(calls(slow.transform(&message()).await.unwrap()), n);
    }

    // What an earlier message wrote to stderr is never reported with a later one: a
    // trap without a panic message shows the stderr of its own call only.
    let mut noisy = settings(&[
        ("mode", "count"),
        ("stderr", "yes"),
        ("trap_after", "2"),
        ("trap", "unreachable"),
    ]);
    noisy.reuse_instances = true;
    let noisy = Plugin::load(&engine, "noisy", &dir, &noisy).unwrap();
    for (n, key) in [(1, "Q-FIRST"), (2, "Q-SECOND")] {
        let input = StoredMessage {
            key: key.into(),
            ..message()
        };
        assert_eq!(calls(noisy.transform(&input).await.unwrap()), n);
    }
    let err = noisy
        .transform(&StoredMessage {
            key: "Q-THIRD".into(),
            ..message()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("stderr of call 3 (Q-THIRD)"), "{err}");
    assert!(
        !err.contains("Q-FIRST") && !err.contains("Q-SECOND"),
        "{err}"
    );

    // Only a transform may keep its instances: a sink's delivery meets a fresh one.
    let sink = PluginSettings {
        reuse_instances: true,
        ..PluginSettings::default()
    };
    let err = Plugin::load(&engine, "erp", &ws.path().join("plugins/http-sink"), &sink)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`reuse_instances = true` applies to transforms only; this is a sink plugin"),
        "{err}"
    );
}

/// `plugin` (the quote mapping) maps `body`, a MessagePack quote, into exactly the
/// orders the same code makes natively.
async fn maps_as_natively(plugin: &Plugin, body: &[u8]) {
    use tenon_sdk::model::Encoding;
    let native = quote_to_order::map_encoded(Encoding::MsgPack, body).unwrap();
    let input = StoredMessage {
        content_type: "application/msgpack".into(),
        body: body.to_vec(),
        ..message()
    };
    let out: Vec<Vec<u8>> = plugin
        .transform(&input)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(out, native, "{} bytes", body.len());
}

/// A quote of at least `lines` lines, MessagePack-encoded as between steps: the bundle
/// sample's lines repeated under new keys.
fn quote_with_lines(lines: usize) -> Vec<u8> {
    use tenon_sdk::model::{Encoding, Quote};
    let model: cpq_source::QuoteModel =
        serde_json::from_str(crate::support::sample("bundle.json")).unwrap();
    let mut quote: Quote = cpq_source::to_quote(model, None).unwrap();
    let template = quote.lines.clone();
    let mut key = 1000;
    while quote.lines.len() < lines {
        for line in &template {
            let mut line = line.clone();
            line.key = key;
            line.parent_key = None;
            key += 1;
            quote.lines.push(line);
        }
    }
    Encoding::MsgPack.encode(&quote).unwrap()
}

/// The SDK's allocator serves an instance from a bump arena of 1 MiB and goes on with
/// Talc past it: a message too big for the arena maps exactly as natively, in a fresh
/// instance and in a kept one, with small messages between the big ones.
#[tokio::test]
async fn messages_past_the_plugin_allocators_arena_map_as_natively() {
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let dir = ws.path().join("plugins/quote-to-order");
    let fresh = Plugin::load(&engine, "fresh", &dir, &PluginSettings::default()).unwrap();
    let kept_settings = PluginSettings {
        reuse_instances: true,
        ..PluginSettings::default()
    };
    let kept = Plugin::load(&engine, "kept", &dir, &kept_settings).unwrap();
    let (small, big) = (quote_with_lines(4), quote_with_lines(1000));
    assert!(big.len() > 150_000, "{} bytes", big.len());
    for body in [&small, &big, &small, &big, &big, &small] {
        for plugin in [&fresh, &kept] {
            maps_as_natively(plugin, body).await;
        }
    }
}

/// The SDK's allocator, seen from inside: a kept instance that holds nothing between
/// messages starts each on an empty arena (what it allocates first lands at the same
/// address every time), and an allocation too big for the 1 MiB arena comes from
/// memory above it (Talc), after which the arena still starts over.
#[tokio::test]
async fn a_kept_instance_starts_each_message_on_an_empty_arena_and_big_allocations_go_past_it() {
    let ws = Workspace::new();
    let (engine, _store) = engine_at(&ws.data_dir());
    let dir = ws.path().join("plugins/misbehave");
    let load = |name: &str, size: usize| {
        let mut settings = settings(&[("mode", "heap"), ("size", &size.to_string())]);
        settings.reuse_instances = true;
        Plugin::load(&engine, name, &dir, &settings).unwrap()
    };
    let addresses = async |plugin: &Plugin| -> (u64, u64) {
        let out = plugin.transform(&message()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
        (
            body["probe"].as_u64().unwrap(),
            body["big"].as_u64().unwrap(),
        )
    };

    let small = load("small", 64 << 10);
    let (probe, big) = addresses(&small).await;
    assert!(big > probe && big - probe < 1 << 20, "{probe} {big}");
    for _ in 0..5 {
        assert_eq!(addresses(&small).await, (probe, big));
    }

    let large = load("large", 3 << 19);
    let (first_probe, _) = addresses(&large).await;
    for _ in 0..3 {
        let (probe, big) = addresses(&large).await;
        assert_eq!(probe, first_probe);
        assert!(
            big >= probe + (1000 << 10),
            "{probe} {big}: not past the arena"
        );
    }
}
