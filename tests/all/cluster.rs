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
