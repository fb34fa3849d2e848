//! Several nodes on one NATS JetStream cluster: a real 3-server cluster on loopback
//! (its own ports), two `tenon run` processes sharing it with every stream and bucket
//! in three replicas. Under load, one Tenon node is killed with SIGKILL and one NATS
//! server too; every quote that got a 202 reaches the ERP exactly once (one created
//! order per quote: a redelivery is recognised by its idempotency key), none is lost.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::nats::NatsCluster;

/// Send quotes to `node` until `stop`, recording which got a 202.
fn load(
    node: &Tenon,
    lane: usize,
    answered: Arc<Mutex<BTreeMap<String, bool>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let url = format!("{}/v1/sources/cpq-source", node.base);
    let auth = format!("Bearer {}", node.token);
    let template = sample("plain.json");
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let number = format!("Q-L{lane}-{n:05}");
            n += 1;
            let body = template.replace("Q-00101", &number);
            answered.lock().unwrap().insert(number.clone(), false);
            let reply = client::request(
                "POST",
                &url,
                &[("authorization", &auth)],
                Some(("application/json", body.into_bytes())),
            )
            .await;
            match reply {
                Ok(reply) if reply.status == 202 => {
                    answered.lock().unwrap().insert(number, true);
                }
                // A node killed under its load: the lane stops.
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_the_work_and_lose_nothing_when_a_node_and_a_server_die() {
    let mut cluster = NatsCluster::start(3).expect("start a 3-node nats-server cluster");
    let erp = MockErp::start().await.unwrap();
    let config = format!(
        "{}{}",
        quote_to_cash_config(&erp.orders_url(), "backoff_ms = 50\nmax_backoff_ms = 500"),
        cluster.store_section("cluster", 3)
    );
    let (ws_a, ws_b) = (Workspace::new(), Workspace::new());
    ws_a.write_config(&config);
    ws_b.write_config(&config);
    let a = Tenon::start(&ws_a);
    let b = Tenon::start(&ws_b);

    let answered: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let lanes = vec![
        load(&a, 0, answered.clone(), stop.clone()),
        load(&a, 1, answered.clone(), stop.clone()),
        load(&b, 2, answered.clone(), stop.clone()),
        load(&b, 3, answered.clone(), stop.clone()),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered_before = erp.orders();
    // Both nodes took work from the shared queues.
    for ws in [&ws_a, &ws_b] {
        let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap();
        assert!(
            log.contains("message delivered"),
            "a node delivered nothing; its log:\n{log}"
        );
    }
    b.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for lane in lanes {
        let _ = lane.await;
    }

    let acknowledged: Vec<String> = answered
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        acknowledged.len() >= 40,
        "too little load to mean anything: {} acknowledged",
        acknowledged.len()
    );
    assert!(
        delivered_before > 0,
        "nothing was delivered before the kills"
    );

    // The survivor takes over what the dead node held (after the ack wait) and
    // finishes everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    let created = loop {
        let mut created: BTreeMap<String, usize> = BTreeMap::new();
        for r in erp.received().iter().filter(|r| !r.duplicate) {
            let quote = r.body["quote_number"].as_str().unwrap_or_default();
            *created.entry(quote.to_owned()).or_default() += 1;
        }
        if acknowledged.iter().all(|n| created.contains_key(n)) || Instant::now() > deadline {
            break created;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !created.contains_key(*n))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    let doubled: Vec<(&String, &usize)> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    drop(a);
}

/// The status document of a node.
async fn status(node: &Tenon) -> serde_json::Value {
    node.get("/v1/plugins").await.json().unwrap()
}

/// Wait until `done` holds for a node's status.
async fn until(node: &Tenon, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = status(node).await;
        if done(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stamp_digest(status: &serde_json::Value) -> String {
    status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "stamp")
        .map(|p| p["digest"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_goes_live_on_one_node_goes_live_on_every_node() {
    use crate::swap::{Version, bound_manifest, stamping};
    let cluster = NatsCluster::start(1).expect("start nats-server");
    let erp = MockErp::start().await.unwrap();
    let (ws_a, ws_b) = (Workspace::new(), Workspace::new());
    let dir_a = stamping(&ws_a, &erp.orders_url());
    let dir_b = stamping(&ws_b, &erp.orders_url());
    for ws in [&ws_a, &ws_b] {
        let path = ws.path().join("tenon.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = match text.find("\n[store]") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        std::fs::write(&path, text + &cluster.store_section("deploy", 1)).unwrap();
    }
    let a = Tenon::start(&ws_a);
    let b = Tenon::start(&ws_b);

    // Both nodes announce themselves; each sees the other.
    for node in [&a, &b] {
        until(node, "both nodes listed", |s| {
            s["nodes"].as_array().is_some_and(|n| n.len() == 2)
        })
        .await;
    }
    let (ok, out, _) = a.cli(&["status"]);
    assert!(ok);
    assert_eq!(
        out.matches("\nnode ").count() + usize::from(out.starts_with("node ")),
        2,
        "{out}"
    );

    // A version deployed on node A goes live on node B...
    let v2 = Version::of(&ws_a, "B");
    v2.install(&dir_a);
    until(&a, "live on A", |s| stamp_digest(s) == v2.digest()).await;
    until(&b, "live on B", |s| stamp_digest(s) == v2.digest()).await;
    // ...and a quote that node B takes runs on it.
    let id = b
        .send_quote(&sample("plain.json").replace("Q-00101", "Q-D1"))
        .await
        .remove(0);
    b.settled(&id).await;
    let order = erp
        .received()
        .into_iter()
        .find(|r| r.body["number"] == "Q-D1")
        .expect("delivered");
    assert_eq!(order.body["stamp"], "B", "{:#}", order.body);

    // A config edited on node A becomes node B's.
    let path = ws_a.path().join("tenon.toml");
    let edited = std::fs::read_to_string(&path).unwrap().replace(
        "[flows.stamped]",
        "[plugins.cpq-2]\npath = \"plugins/cpq-source\"\n[flows.direct]\nsource = \"cpq-2\"\nsink = \"erp-sink\"\n[flows.stamped]",
    );
    std::fs::write(&path, &edited).unwrap();
    let digest = tenon::model::digest(edited.as_bytes());
    until(&a, "config live on A", |s| {
        s["config"]["digest"] == digest.as_str()
    })
    .await;
    until(&b, "config live on B", |s| {
        s["config"]["digest"] == digest.as_str()
            && s["config"]["flows"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "direct")
    })
    .await;

    // A node that was down while the deployment moved on takes the deployment's
    // version, not the older one its files hold...
    b.kill();
    Version::of(&ws_b, "A").install(&dir_b);
    let b = Tenon::start(&ws_b);
    until(&b, "B back on the deployment's version", |s| {
        stamp_digest(s) == v2.digest()
    })
    .await;
    // ...and a version deployed on a node while it was down (never seen by the
    // deployment) is the deployment's once the node is back.
    a.kill();
    let v3 = bound_manifest("3.0.0", &v2.wasm);
    std::fs::write(dir_a.join("plugin.toml"), &v3).unwrap();
    let v3 = tenon::sandbox::plugin::version_digest(v3.as_bytes(), &v2.wasm);
    let a = Tenon::start(&ws_a);
    until(&a, "3.0.0 live on A", |s| stamp_digest(s) == v3).await;
    until(&b, "3.0.0 live on B", |s| stamp_digest(s) == v3).await;
}
