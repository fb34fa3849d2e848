//! Durability across a crash: a message acknowledged with 202 survives `kill -9` of
//! the runtime before delivery and is delivered exactly once after a restart.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample};
use tenon_testkit::mock_erp::MockErp;

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_quote_is_delivered_once_after_a_crash() {
    let erp = MockErp::start().await.unwrap();
    erp.set_unavailable(true);
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));

    let tenon = Tenon::start(&ws);
    // One quote reaches the sink and fails there (the ERP answers 503)...
    let first = tenon.send_quote(sample("plain.json")).await.remove(0);
    let status = tenon
        .wait_for(&first, |s| {
            s["pending"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|e| !e["attempts"].as_array().unwrap().is_empty())
            })
        })
        .await;
    let attempt = &status["pending"][0]["attempts"][0];
    assert_eq!(attempt["plugin"], "erp-sink");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .starts_with("retryable: HTTP 503: "),
        "{attempt}"
    );
    // ...and one is acknowledged just before the crash.
    let second = tenon.send_quote(sample("bundle.json")).await.remove(0);
    tenon.kill();
    assert!(erp.received().is_empty());

    erp.set_unavailable(false);
    let tenon = Tenon::start(&ws);
    let first_status = tenon.settled(&first).await;
    let second_status = tenon.settled(&second).await;
    assert_eq!(first_status["outcomes"].as_array().unwrap().len(), 1);
    assert_eq!(second_status["outcomes"].as_array().unwrap().len(), 2);

    let received = erp.received();
    assert_eq!(
        received.len(),
        3,
        "one order for the plain quote, two for the bundle: {received:#?}"
    );
    assert!(
        received.iter().all(|r| !r.duplicate),
        "nothing delivered twice: {received:#?}"
    );
    let mut keys: Vec<String> = received
        .iter()
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{first}.0"),
            format!("{second}.0"),
            format!("{second}.1")
        ]
    );
}
