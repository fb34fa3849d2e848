//! Crash safety with real processes: under a steady stream of quotes, the runtime is
//! killed with SIGKILL at random moments, many times, and restarted on the same data
//! directory. Afterwards every quote that got a 2xx is delivered to the ERP exactly
//! once (by idempotency key: one created order; a redelivery after a crash between
//! the ERP's answer and our commit is recognised by its key), and a quote that got no
//! 2xx is never delivered twice.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

/// Kills in one run (the issue asks for at least 50).
const KILLS: usize = 50;

/// A small deterministic generator, seeded from the clock (printed on failure).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_quote_is_delivered_exactly_once_across_kill_9() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(
        &erp.orders_url(),
        "backoff_ms = 20\nmax_backoff_ms = 200",
    ));
    let template = sample("plain.json");

    // Quote number -> did ingress answer 2xx (and with which id)?
    let answered: Arc<Mutex<BTreeMap<String, Option<String>>>> = Arc::default();
    let mut sent = 0usize;
    for round in 0..KILLS {
        let tenon = Tenon::start(&ws);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for lane in 0..4 {
            let (base, answered, stop) = (tenon.base.clone(), answered.clone(), stop.clone());
            let auth = format!("Bearer {}", tenon.token);
            let first = sent + lane * 10_000;
            load.spawn(async move {
                let mut n = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let number = format!("Q-R{round:02}-{n:05}");
                    let body = template.replace("Q-00101", &number);
                    answered.lock().unwrap().insert(number.clone(), None);
                    let url = format!("{base}/v1/sources/cpq-source");
                    let reply = client::request(
                        "POST",
                        &url,
                        &[("authorization", &auth)],
                        Some(("application/json", body.into_bytes())),
                    )
                    .await;
                    if let Ok(reply) = reply
                        && reply.status == 202
                    {
                        let id = reply.json().unwrap()["accepted"][0]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        answered.lock().unwrap().insert(number, Some(id));
                    }
                    n += 1;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(30 + rng.next(300))).await;
        tenon.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        while load.join_next().await.is_some() {}
        sent += 40_000;
    }

    // A last start lets everything finish.
    let tenon = Tenon::start(&ws);
    let answered = answered.lock().unwrap().clone();
    let acknowledged: Vec<(&String, &String)> = answered
        .iter()
        .filter_map(|(n, id)| id.as_ref().map(|id| (n, id)))
        .collect();
    assert!(
        acknowledged.len() >= KILLS,
        "too little load to mean anything: {}",
        acknowledged.len()
    );
    for (_, id) in &acknowledged {
        tenon.settled(id).await;
    }

    let received = erp.received();
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for r in received.iter().filter(|r| !r.duplicate) {
        let quote = r.body["quote_number"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *created.entry(quote).or_default() += 1;
    }
    let failures: Vec<String> = acknowledged
        .iter()
        .filter(|(number, _)| created.get(number.as_str()) != Some(&1))
        .map(|(number, id)| {
            format!(
                "{number} ({id}): {} orders",
                created.get(number.as_str()).unwrap_or(&0)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "seed {seed}: acknowledged quotes not delivered exactly once: {failures:?}"
    );
    let doubled: BTreeSet<&String> = created
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(q, _)| q)
        .collect();
    assert!(
        doubled.is_empty(),
        "seed {seed}: quotes delivered twice: {doubled:?}"
    );
    let unknown: Vec<&String> = created
        .keys()
        .filter(|q| !answered.contains_key(q.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "seed {seed}: orders nobody sent: {unknown:?}"
    );
    eprintln!(
        "crash test: seed {seed}, {KILLS} kills, {} quotes sent, {} acknowledged, {} orders created, {} redeliveries recognised by key",
        answered.len(),
        acknowledged.len(),
        created.len(),
        received.iter().filter(|r| r.duplicate).count()
    );
}
