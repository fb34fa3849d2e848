//! Master data through the binary: the CRM's accounts (Salesforce's Account shape, and
//! canonical `CustomerUpserted`) into the customer master and upserted to CPQ (a mock
//! of Salesforce's REST API that checks each request); a drift check finds a copy
//! edited in CPQ and publishes it, once, field by field.

use crate::support::{Tenon, Workspace};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::mock_salesforce::MockSalesforce;

const TOKEN: &str = "00Dxx0000001gPL!master-data";

fn config(salesforce: &MockSalesforce, stewards: &MockErp) -> String {
    format!(
        r#"
[secrets]
salesforce_token = {{ file = "salesforce-token.txt" }}

[plugins.crm]
path = "plugins/crm-source"
config = {{ credit_hold_field = "Credit_Hold__c" }}
[plugins.master]
path = "plugins/canonical-source"
[plugins.gateway]
path = "plugins/order-gateway"
config = {{ tax_nexus = '["DE", "FR"]' }}
[plugins.cpq]
path = "plugins/cpq-writeback"
secrets = ["salesforce_token"]
config = {{ instance_url = "{instance}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.stewards]
path = "plugins/http-sink"
config = {{ url = "http://{stewards}/stewards/drift" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

# The CRM's accounts (and canonical customers) into the gateway's master, and on to CPQ.
[flows.crm]
source = "crm"
steps = ["gateway"]
emit = ["CustomerUpserted"]
[flows.master]
source = "master"
steps = ["gateway"]
emit = ["CustomerUpserted"]
[flows.cpq-accounts]
subscribe = ["CustomerUpserted"]
sink = "cpq"

[drift.cpq-accounts]
target = "cpq"
[flows.drift]
subscribe = ["MasterDataDrift"]
sink = "stewards"
"#,
        instance = salesforce.instance_url(),
        stewards = stewards.addr,
    )
}

/// Every message of a request settled, each delivered to CPQ.
async fn pushed(tenon: &Tenon, ids: &[String]) {
    for id in ids {
        let status = tenon.settled(id).await;
        let outcomes = status["outcomes"].as_array().unwrap();
        assert!(
            outcomes
                .iter()
                .any(|o| o["flow"] == "cpq-accounts" && o["result"]["Delivered"].is_object()),
            "{status:#}"
        );
        assert!(
            outcomes.iter().any(|o| o["result"] == "Consumed"),
            "the gateway keeps it: {status:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crm_accounts_reach_cpq_and_drift_is_found_once() {
    let salesforce = MockSalesforce::start(TOKEN, &[], &[]).await.unwrap();
    let stewards = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&config(&salesforce, &stewards));
    std::fs::write(ws.path().join("salesforce-token.txt"), TOKEN).unwrap();
    let tenon = Tenon::start(&ws);

    // The parent account first (Salesforce refuses a parent it does not have), then
    // its child, as the CRM's REST API returns them; then a canonical customer.
    let northwind = json!({"attributes": {"type": "Account"}, "Id": "0015g00000XyZ12AAB",
        "Name": "Northwind Traders GmbH", "BillingCountryCode": "DE", "ParentId": null});
    let contoso = json!({"totalSize": 1, "done": true, "records": [{"attributes": {"type": "Account"},
        "Id": "0015g00000XyZ34AAB", "Name": "Contoso Retail SAS", "BillingCountryCode": "FR",
        "ParentId": "0015g00000XyZ12AAB", "Credit_Hold__c": true}]});
    let ids = tenon.send_quote_to("crm", &northwind.to_string()).await;
    pushed(&tenon, &ids).await;
    let ids = tenon.send_quote_to("crm", &contoso.to_string()).await;
    pushed(&tenon, &ids).await;
    let fabrikam = json!([{"kind": "CustomerUpserted", "key": "0015g00000XyZ56AAB",
        "body": {"id": "0015g00000XyZ56AAB", "name": "Fabrikam SARL", "country": "FR"}}]);
    let ids = tenon.send_quote_to("master", &fabrikam.to_string()).await;
    pushed(&tenon, &ids).await;
    assert_eq!(
        Value::Object(salesforce.account("0015g00000XyZ34AAB").unwrap()),
        json!({"Name": "Contoso Retail SAS", "BillingCountryCode": "FR", "Parent": "0015g00000XyZ12AAB"})
    );
    assert_eq!(
        salesforce.account("0015g00000XyZ56AAB").unwrap()["Name"],
        "Fabrikam SARL"
    );
    let upserts: Vec<u16> = salesforce
        .calls()
        .iter()
        .filter(|c| c.method == "PATCH")
        .map(|c| c.status)
        .collect();
    assert_eq!(upserts, [201, 201, 201], "{:#?}", salesforce.calls());

    // In step: nothing drifted.
    let (ok, out, err) = tenon.cli(&["drift"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 customers in the master, 3 records there, 3 in step"),
        "{out}"
    );
    assert!(out.contains("0 drifted; 0 published"), "{out}");

    // Someone renames Contoso in CPQ and detaches it from its parent: drift, each field.
    salesforce.edit_account("0015g00000XyZ34AAB", "Name", json!("Contoso Retail"));
    salesforce.edit_account("0015g00000XyZ34AAB", "Parent", Value::Null);
    let (ok, out, err) = tenon.cli(&["drift", "cpq-accounts"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(r#"0015g00000XyZ34AAB  name: master "Contoso Retail SAS", cpq "Contoso Retail"; parent: master "0015g00000XyZ12AAB", cpq """#),
        "{out}"
    );
    assert!(
        out.contains("1 drifted; 1 published as MasterDataDrift"),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while stewards.received().is_empty() {
        assert!(Instant::now() < deadline, "the stewards got nothing");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let drift = &stewards.received()[0];
    assert_eq!(
        drift.headers.get("tenon-kind").map(String::as_str),
        Some("MasterDataDrift")
    );
    assert_eq!(
        drift.body,
        json!({"check": "cpq-accounts", "target": "cpq", "customer": "0015g00000XyZ34AAB", "missing": false,
        "fields": [
            {"field": "name", "master": "Contoso Retail SAS", "target": "Contoso Retail"},
            {"field": "parent", "master": "0015g00000XyZ12AAB", "target": null},
        ]})
    );

    // Found again unchanged: not published twice.
    let again = tenon
        .post("/v1/drift/cpq-accounts/run", "application/json", b"{}")
        .await;
    assert_eq!(again.status, 200);
    let again = again.json().unwrap();
    assert_eq!(again["drifts"].as_array().unwrap().len(), 1);
    assert_eq!(again["published"], 0);

    // The CRM's next change is pushed and wins (the CRM owns these fields): in step.
    let ids = tenon.send_quote_to("crm", &contoso.to_string()).await;
    pushed(&tenon, &ids).await;
    let report = tenon
        .post("/v1/drift/cpq-accounts/run", "application/json", b"{}")
        .await
        .json()
        .unwrap();
    assert_eq!(report["in_step"], 3, "{report:#}");
    assert_eq!(stewards.received().len(), 1);
    let unknown = tenon
        .post("/v1/drift/nope/run", "application/json", b"{}")
        .await;
    assert_eq!(unknown.status, 404);
}

/// Drift checks and reconciliations run on their own, each after its period.
#[tokio::test(flavor = "multi_thread")]
async fn drift_checks_and_reconciliations_run_on_schedule() {
    let salesforce = MockSalesforce::start(TOKEN, &[], &[]).await.unwrap();
    let stewards = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let finance = format!(
        r#"
[plugins.finance]
path = "plugins/http-sink"
config = {{ url = "http://{erp}/finance/events", records_url = "http://{erp}/finance/invoices?since={{since}}&until={{until}}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[reconciliations.billing]
erp = "finance"
every_secs = 1
[flows.mismatches]
subscribe = ["ReconciliationException"]
sink = "stewards"
"#,
        erp = stewards.addr
    );
    let text = config(&salesforce, &stewards).replace(
        "[drift.cpq-accounts]\ntarget = \"cpq\"",
        "[drift.cpq-accounts]\ntarget = \"cpq\"\nevery_secs = 1",
    ) + &finance;
    ws.write_config(&text);
    std::fs::write(ws.path().join("salesforce-token.txt"), TOKEN).unwrap();
    let tenon = Tenon::start(&ws);

    // A customer CPQ never got (its push is refused by Salesforce: no Name) drifts as
    // missing, found by the scheduled check on its own.
    let nameless = json!([{"kind": "CustomerUpserted", "key": "0015g00000XyZ78AAB",
        "body": {"id": "0015g00000XyZ78AAB", "country": "DE"}}]);
    let ids = tenon.send_quote_to("master", &nameless.to_string()).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status.to_string().contains("REQUIRED_FIELD_MISSING"),
        "{status:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let drift =
        loop {
            if let Some(drift) = stewards.received().into_iter().find(|r| {
                r.headers.get("tenon-kind").map(String::as_str) == Some("MasterDataDrift")
            }) {
                break drift;
            }
            assert!(
                Instant::now() < deadline,
                "no scheduled drift check found it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
    assert_eq!(drift.body["customer"], "0015g00000XyZ78AAB");
    assert_eq!(drift.body["missing"], true);
    // The check's report is recorded once its run ends, which may be after the sink
    // already delivered what it published.
    let checks = loop {
        let checks = tenon.get("/v1/drift").await.json().unwrap();
        if checks["checks"][0]["last"]["at_ms"].is_u64() {
            break checks;
        }
        assert!(Instant::now() < deadline, "no report recorded: {checks:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(checks["checks"][0]["every_secs"], 1);
    // Found again on the next run, unchanged: published once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let published = stewards
        .received()
        .iter()
        .filter(|r| r.headers.get("tenon-kind").map(String::as_str) == Some("MasterDataDrift"))
        .count();
    assert_eq!(published, 1);
    // The reconciliation ran on its own too (nothing billed: not measured).
    let runs = tenon.get("/v1/reconciliations").await.json().unwrap();
    let last = &runs["reconciliations"][0]["last"];
    assert_eq!(last["reconciliation"], "billing", "{runs:#}");
    assert_eq!(last["billing_documents"], 0);
    // On demand: a window that is not one, a reconciliation that does not exist.
    for (body, status) in [
        (r#"{"since": "2026-13-01"}"#, 400),
        (r#"{"since": "2026-11-30", "until": "2026-11-01"}"#, 400),
        (r#"{"until": "-262144-01-01"}"#, 400),
    ] {
        let reply = tenon
            .post(
                "/v1/reconciliations/billing/run",
                "application/json",
                body.as_bytes(),
            )
            .await;
        assert_eq!(
            reply.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let reply = tenon
        .post("/v1/reconciliations/nope/run", "application/json", b"{}")
        .await;
    assert_eq!(reply.status, 404);
    // A window longer than the event log keeps is refused at load, named.
    let path = ws.write_config(&text.replace(
        "every_secs = 1\n[flows.mismatches]",
        "every_secs = 1\nwindow_days = 30\n[flows.mismatches]",
    ));
    let (ok, _, err) = crate::support::tenon_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("`window_days = 30` looks further back than the event log keeps"),
        "{err}"
    );
    let kpis = tenon.get("/v1/kpis").await.json().unwrap();
    assert_eq!(kpis["billing_accuracy"]["measured"], false);
    assert!(
        kpis["billing_accuracy"]["why"]
            .as_str()
            .unwrap()
            .contains("no billing document"),
        "{kpis:#}"
    );
}
