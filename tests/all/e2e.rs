//! End to end through the `tenon` binary: HTTP in, the three first-party plugins, the
//! mock ERP. Each sample's orders, as the ERP received them, are compared field by
//! field with `examples/quote-to-cash/expected/<sample>.orders.json`.

use crate::support::{Tenon, Workspace, check_json, quote_to_cash_config, sample};
use serde_json::{Value, json};
use tenon_testkit::mock_erp::MockErp;

#[tokio::test(flavor = "multi_thread")]
async fn quotes_become_exactly_the_expected_orders() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let tenon = Tenon::start(&ws);

    for (name, expected_orders) in [("plain", 1), ("bundle", 2)] {
        let ids = tenon.send_quote(sample(&format!("{name}.json"))).await;
        assert_eq!(ids.len(), 1);
        let status = tenon.settled(&ids[0]).await;
        let outcomes = status["outcomes"].as_array().unwrap();
        assert_eq!(outcomes.len(), expected_orders, "{status:#}");
        for outcome in outcomes {
            assert!(
                outcome["result"]["Delivered"]["reference"]
                    .as_str()
                    .unwrap()
                    .starts_with("ERP-")
            );
            let trail: Vec<&str> = outcome["trail"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["plugin"].as_str().unwrap())
                .collect();
            assert_eq!(trail, ["cpq-source", "quote-to-order", "erp-sink"]);
            for hop in outcome["trail"].as_array().unwrap() {
                assert!(
                    hop["digest"].as_str().unwrap().starts_with("sha256:"),
                    "{hop}"
                );
            }
        }
        // What the ERP got, keyed by the idempotency key each delivery carried.
        let received: Vec<Value> = erp
            .received()
            .into_iter()
            .filter(|r| r.idempotency_key.as_deref().is_some_and(|k| k.starts_with(&ids[0])))
            .map(|r| json!({ "idempotency_key_suffix": r.idempotency_key.unwrap()[ids[0].len()..], "path": r.path, "body": r.body }))
            .collect();
        check_json(
            &format!("examples/quote-to-cash/expected/{name}.orders.json"),
            &Value::Array(received),
        );
    }

    // The invalid quote: rejected at the mapping with every reason, nothing sent.
    let before = erp.received().len();
    let ids = tenon.send_quote(sample("invalid.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"],
        json!({"Rejected": {"reasons": [
            "quote Q-00103 has no customer (sold-to account)",
            "quote Q-00103 has no currency",
            "quote Q-00103 line 2 has no product",
        ]}})
    );
    assert_eq!(status["outcomes"][0]["plugin"], "quote-to-order");
    assert_eq!(erp.received().len(), before);
    assert!(erp.received().iter().all(|r| !r.duplicate));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_command_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tenon"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("All 10 inputs ended as expected."),
        "{stdout}"
    );
    assert!(
        stdout.contains("The mock systems received 12 documents (0 duplicates)."),
        "{stdout}"
    );
}
