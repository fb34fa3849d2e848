//! Versioned canonical schemas, through the binary: every model's JSON Schema served
//! and what Tenon sends an ERP valid against it, each message naming its model's
//! version, and a producer and consumer that disagree on a version refused, at start,
//! on a config reload and on a hot deploy, with both named.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample};
use crate::swap::{Version, bound_manifest, stamping};
use serde_json::Value;
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

#[tokio::test(flavor = "multi_thread")]
async fn every_model_has_its_schema_and_what_leaves_fits_it() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let tenon = Tenon::start(&ws);

    let index: Value = tenon.get("/v1/schemas").await.json().unwrap();
    let schemas = index["schemas"].as_array().unwrap();
    // Every kind of tenon_model::CANONICAL.
    assert_eq!(schemas.len(), 16, "{index:#}");
    for entry in schemas {
        let reply = tenon.get(entry["url"].as_str().unwrap()).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .headers
                .contains(&("content-type".into(), "application/schema+json".into()))
        );
        let schema: Value = reply.json().unwrap();
        assert_eq!(
            schema["$id"],
            format!("urn:tenon:schema:{}:1", entry["kind"].as_str().unwrap())
        );
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{entry}: {e}"));
    }
    let missing = tenon.get("/v1/schemas/OrderAccepted/2").await;
    assert_eq!(missing.status, 404);
    let detail = missing.json().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("there are: QuoteApproved/1, OrderDrafted/1, OrderAccepted/1"),
        "{detail}"
    );

    // What reaches the ERP (here straight from the mapping, no gateway: an
    // OrderDrafted) is an order as its schema says, and names its version.
    let ids = tenon.send_quote(sample("bundle.json")).await;
    tenon.settled(&ids[0]).await;
    let schema: Value = tenon
        .get("/v1/schemas/OrderDrafted/1")
        .await
        .json()
        .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let received = erp.received();
    assert_eq!(received.len(), 2, "the bundle's two orders");
    for order in &received {
        let errors: Vec<String> = validator
            .iter_errors(&order.body)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            order.headers.get("tenon-model").map(String::as_str),
            Some("1")
        );
    }
}

/// The stamp plugin's manifest at `version`, reading quotes at `major`.
fn reading_quotes_at(version: &str, wasm: &[u8], major: u32) -> String {
    format!(
        "{}[models]\nreads = [\"QuoteApproved@{major}\"]\n",
        bound_manifest(version, wasm)
    )
}

const MISMATCH: &str =
    "flow `stamped`: `cpq-source` writes QuoteApproved@1, but `stamp` reads QuoteApproved@2";

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_and_a_consumer_on_different_versions_are_refused() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let dir = stamping(&ws, &erp.orders_url());
    let a = Version::of(&ws, "A");

    // At start: the config is refused with both named.
    std::fs::write(
        dir.join("plugin.toml"),
        reading_quotes_at("1.0.0", &a.wasm, 2),
    )
    .unwrap();
    let (ok, _, err) = crate::support::tenon_cli(&[
        "check",
        "--config",
        &ws.path().join("tenon.toml").to_string_lossy(),
        "--data-dir",
        &ws.data_dir().to_string_lossy(),
    ]);
    assert!(!ok);
    assert!(err.contains(MISMATCH), "{err}");

    // A version that agrees starts; a hot deploy of one that does not is refused,
    // and the live one keeps running.
    std::fs::write(
        dir.join("plugin.toml"),
        reading_quotes_at("1.0.0", &a.wasm, 1),
    )
    .unwrap();
    let tenon = Tenon::start(&ws);
    std::fs::write(
        dir.join("plugin.toml"),
        reading_quotes_at("1.1.0", &a.wasm, 2),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stamp = loop {
        let plugins: Value = tenon.get("/v1/plugins").await.json().unwrap();
        let stamp = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "stamp")
            .unwrap()
            .clone();
        if !stamp["refused"].is_null() {
            break stamp;
        }
        assert!(Instant::now() < deadline, "never refused: {stamp:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stamp["version"], "1.0.0");
    assert!(
        stamp["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains(MISMATCH),
        "{stamp:#}"
    );
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(status["outcomes"][0]["result"]["Delivered"].is_object());
}
