//! The quote-to-cash chain through the binary, with events between flows: master
//! data into the validation gateway; CPQ quote -> order -> gateway -> legal-entity
//! router -> the ERP flow of that entity; Zuora contract -> revenue schedule; Stripe
//! invoice -> invoice posted (and its revenue schedule).

use crate::support::public_fixture as fixture;
use crate::support::{GATEWAY_AND_MASTER, Tenon, Workspace, fused, sample};
use serde_json::{Value, json};
use tenon_testkit::mock_erp::MockErp;

pub(crate) fn config(erp: &str) -> String {
    format!(
        r#"
[secrets]
stripe_webhook_secret = {{ file = "stripe-secret.txt" }}

{gateway}
[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.router]
path = "plugins/entity-router"
config = {{ entities = '{{"DE": "DE01", "FR": "FR01"}}' }}
[plugins.erp-de]
path = "plugins/http-sink"
config = {{ url = "{erp}/de/orders" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.erp-fr]
path = "plugins/http-sink"
config = {{ url = "{erp}/fr/orders" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.zuora]
path = "plugins/zuora-source"
config = {{ currency = "USD" }}
[plugins.stripe]
path = "plugins/stripe-source"
secrets = ["stripe_webhook_secret"]
auth = "signature"
[plugins.revenue]
path = "plugins/revenue-schedule"
[plugins.finance]
path = "plugins/http-sink"
config = {{ url = "{erp}/finance/events" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.quote-to-order]
source = "cpq-source"
steps = ["quote-to-order", "gateway", "router"]
max_attempts = 2

[flows.erp-de]
subscribe = ["OrderAccepted"]
when = {{ tenon-entity = "DE01" }}
sink = "erp-de"

[flows.erp-fr]
subscribe = ["OrderAccepted"]
when = {{ tenon-entity = "FR01" }}
sink = "erp-fr"

[flows.contracts]
source = "zuora"
steps = ["revenue"]

[flows.invoices]
source = "stripe"
sink = "finance"
emit = ["InvoicePosted", "InvoiceVoided", "CreditIssued", "CreditVoided", "PaymentRefunded"]

[flows.invoice-revenue]
subscribe = ["InvoicePosted", "InvoiceVoided", "CreditIssued", "CreditVoided", "PaymentRefunded"]
steps = ["revenue"]

[flows.schedules]
subscribe = ["RevenueScheduleUpdated"]
sink = "finance"
"#,
        gateway = GATEWAY_AND_MASTER
    )
}

/// Every outcome of a message's lineage: (flow, plugin, result kind).
fn outcomes(status: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let result = o["result"]
                .as_object()
                .map(|r| r.keys().next().cloned().unwrap_or_default())
                .or_else(|| o["result"].as_str().map(str::to_owned))
                .unwrap_or_default();
            (
                o["flow"].as_str().unwrap().to_owned(),
                o["plugin"].as_str().unwrap().to_owned(),
                result,
            )
        })
        .collect();
    out.sort();
    out
}

/// Replay everything `flow` accepted (from its log's first offset): how many messages.
async fn replay_all(tenon: &Tenon, flow: &str) -> u64 {
    let path = format!("/v1/flows/{flow}/replay");
    let replay = tenon
        .post(&path, "application/json", br#"{"from": "1"}"#)
        .await;
    let body = String::from_utf8_lossy(&replay.body).into_owned();
    assert_eq!(replay.status, 200, "{body}");
    replay.json().unwrap()["replayed"].as_u64().unwrap()
}

/// Wait until a message's lineage has `n` outcomes and nothing pending.
pub(crate) async fn settled_with(tenon: &Tenon, id: &str, n: usize) -> Value {
    tenon
        .wait_for(id, |s| {
            s["outcomes"].as_array().is_some_and(|o| o.len() >= n)
                && s["pending"].as_array().is_some_and(Vec::is_empty)
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quote_to_cash_chain_runs_across_flows() {
    let erp = MockErp::start().await.unwrap();
    let base = erp.orders_url();
    let base = base.trim_end_matches("/sap/orders");
    let ws = Workspace::new();
    ws.write_config(&config(base));
    std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
    let tenon = Tenon::start(&ws);

    // Master data first: the two customers of the samples.
    tenon.load_customers().await;

    // A German quote: validated, routed to DE01, delivered by the DE ERP flow.
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = settled_with(&tenon, &ids[0], 1).await;
    assert_eq!(
        outcomes(&status),
        [("erp-de".into(), "erp-de".into(), "Delivered".into())]
    );
    let de: Vec<_> = erp
        .received()
        .into_iter()
        .filter(|r| r.path == "/de/orders")
        .collect();
    assert_eq!(de.len(), 1);
    assert_eq!(de[0].body["id"], "Q-00101-P");

    // A French bundle: the physical order goes to FR01; the subscription order sells
    // a product restricted in France and is rejected with that reason.
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let status = settled_with(&tenon, &ids[0], 2).await;
    let all = outcomes(&status);
    assert!(
        all.contains(&("erp-fr".into(), "erp-fr".into(), "Delivered".into())),
        "{all:?}"
    );
    let rejected: Vec<&Value> = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["result"]["Rejected"].is_object())
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["plugin"], "gateway");
    assert_eq!(
        rejected[0]["result"]["Rejected"]["reasons"],
        json!(["line 20: product `SW-ANL-LIC` may not be sold in FR"])
    );

    // A customer the master does not know: every failed rule.
    let unknown = sample("plain.json")
        .replace("0015g00000XyZ12AAB", "0015g00000NEW001AAA")
        .replace("\"DE\"", "\"BR\"");
    let ids = tenon.send_quote(&unknown).await;
    let status = settled_with(&tenon, &ids[0], 1).await;
    assert_eq!(
        status["outcomes"][0]["result"]["Rejected"]["reasons"],
        json!([
            "sold-to customer `0015g00000NEW001AAA` is not in the customer master",
            "no tax nexus in BR: the company is not registered to collect tax there",
        ])
    );

    // A Zuora subscription with its price: a revenue schedule reaches finance.
    let mut order = fixture("zuora_order_create_subscription.json");
    order["subscriptions"][0]["orderActions"][0]["createSubscription"]["subscribeToRatePlans"][0]
        ["chargeOverrides"] = json!([{"productRatePlanChargeId": "c1", "billingPeriod": "Month",
            "pricing": {"recurringFlatFee": {"listPrice": 100}}}]);
    let ids = tenon.send_quote_to("zuora", &order.to_string()).await;
    let status = settled_with(&tenon, &ids[0], 1).await;
    assert_eq!(
        outcomes(&status),
        [("schedules".into(), "finance".into(), "Delivered".into())]
    );
    let schedule = erp
        .received()
        .into_iter()
        .find(|r| r.path == "/finance/events" && r.body["source_line"].is_string())
        .unwrap();
    assert_eq!(
        schedule.body["total"],
        json!({"amount": "1200.00", "currency": "USD"})
    );
    assert_eq!(schedule.body["periods"].as_array().unwrap().len(), 12);

    // The Zuora fixture as published (no price): the revenue step says why.
    let ids = tenon
        .send_quote_to(
            "zuora",
            &fixture("zuora_order_amendment_remove_add_product.json").to_string(),
        )
        .await;
    let status = settled_with(&tenon, &ids[0], 1).await;
    assert_eq!(status["outcomes"][0]["plugin"], "revenue");
    assert!(
        status["outcomes"][0]["result"]["Rejected"].is_object(),
        "{status:#}"
    );

    // Stripe: a webhook without a valid signature is refused at the door.
    let paid = fixture("stripe_invoice_event_invoice_paid.json").to_string();
    let unsigned = tenon
        .post("/v1/sources/stripe", "application/json", paid.as_bytes())
        .await;
    assert_eq!(unsigned.status, 400);
    assert_eq!(
        unsigned.json().unwrap()["detail"],
        "source `stripe`: Stripe-Signature refused: the header is missing"
    );
    let forged = stripe_post(&tenon, &paid, "whsec_someone_else").await;
    assert_eq!(forged.status, 400);
    assert_eq!(
        forged.json().unwrap()["detail"],
        "source `stripe`: Stripe-Signature refused: no signature matches the body and the secret"
    );

    // Signed: the published invoice.paid event is delivered to finance as a payment.
    let reply = stripe_post(&tenon, &paid, STRIPE_SECRET).await;
    assert_eq!(reply.status, 202);
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    let status = settled_with(&tenon, &ids[0], 1).await;
    assert_eq!(
        outcomes(&status),
        [("invoices".into(), "finance".into(), "Delivered".into())]
    );
    // A finalized invoice: posted to finance, and its line's revenue scheduled.
    let (finalized, ids) = invoice_event(&tenon, "invoice.finalized", "evt_test_finalized").await;
    // Stripe's retry of the same event is accepted once.
    let again = stripe_post(&tenon, &finalized, STRIPE_SECRET).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json().unwrap()["accepted"], json!(ids));
    assert!(
        again
            .headers
            .contains(&("idempotent-replayed".into(), "true".into()))
    );

    // The schedules flow's log holds what entered it from other flows' steps: a
    // replay re-runs both schedules, and the finance sink returns the recorded
    // outcomes instead of sending again.
    let before = erp.received().len();
    assert_eq!(replay_all(&tenon, "schedules").await, 2);
    tenon.drained().await;
    assert_eq!(erp.received().len(), before, "nothing delivered twice");

    // A credit note of 8.00 on the invoice's line: finance gets it, and the revenue
    // flow takes the 8.00 back from the line's schedule.
    let note = json!({
        "id": "evt_test_credit", "object": "event", "type": "credit_note.created",
        "created": 1727211051,
        "data": {"object": {
            "id": "cn_chain", "object": "credit_note", "amount": 800, "currency": "usd",
            "customer": "cus_QsYn1aSStYv4tf", "invoice": "in_1Q2fh8BrSjgsps2DUqQsGLDj",
            "created": 1727211051, "refund": null, "status": "issued", "total": 800,
            "lines": {"has_more": false, "data": [{"id": "cnli_chain", "amount": 800,
                "quantity": 1, "type": "invoice_line_item",
                "invoice_line_item": "il_1Q2fh9BrSjgsps2DFNoGRrJn"}]}}}
    });
    let reply = stripe_post(&tenon, &note.to_string(), STRIPE_SECRET).await;
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    let status = settled_with(&tenon, &ids[0], 2).await;
    assert_eq!(
        outcomes(&status),
        [
            ("invoices".into(), "finance".into(), "Delivered".into()),
            ("schedules".into(), "finance".into(), "Delivered".into()),
        ]
    );
    let credited = erp
        .received()
        .into_iter()
        .find(|r| {
            r.path == "/finance/events" && r.body["id"] == "cn_chain/il_1Q2fh9BrSjgsps2DFNoGRrJn"
        })
        .expect("the credit's schedule reached finance");
    assert_eq!(credited.body["total"]["amount"], "-8.00");

    // The invoice voided: finance gets the InvoiceVoided, and what its line recognised
    // is reversed, period by period.
    invoice_event(&tenon, "invoice.voided", "evt_test_voided").await;
    let finance: Vec<Value> = erp
        .received()
        .into_iter()
        .filter(|r| r.path == "/finance/events")
        .map(|r| r.body)
        .collect();
    let schedule = |id: &str| {
        finance
            .iter()
            .find(|b| b["source_line"].is_string() && b["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no schedule {id}: {finance:#?}"))
    };
    let reversal_id = finance
        .iter()
        .filter_map(|b| b["id"].as_str())
        .find(|id| id.ends_with("/reversal"))
        .unwrap_or_else(|| panic!("no reversal: {finance:#?}"))
        .to_owned();
    let reversal = schedule(&reversal_id);
    let original = schedule(reversal_id.trim_end_matches("/reversal"));
    let amounts = |s: &Value| -> Vec<String> {
        s["periods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["amount"]["amount"].as_str().unwrap().to_owned())
            .collect()
    };
    let negated: Vec<String> = amounts(&original).iter().map(|a| format!("-{a}")).collect();
    assert_eq!(amounts(&reversal), negated);
    assert_eq!(reversal["total"]["amount"], "-108.00", "{reversal:#}");
}

/// The chain's config with the DE ERP flow emitting `OrderBooked` and a write-back flow
/// that takes each booking to the CPQ quote.
fn booking_config(erp: &str, salesforce: &str) -> String {
    let config = config(erp)
        .replace(
            r#"stripe_webhook_secret = { file = "stripe-secret.txt" }"#,
            "stripe_webhook_secret = { file = \"stripe-secret.txt\" }\nsalesforce_token = { file = \"salesforce-token.txt\" }",
        )
        .replace(
            "when = { tenon-entity = \"DE01\" }\nsink = \"erp-de\"",
            "when = { tenon-entity = \"DE01\" }\nsink = \"erp-de\"\nemit = [\"OrderBooked\"]",
        );
    assert!(config.contains("emit = [\"OrderBooked\"]"));
    format!(
        r#"{config}
[plugins.writeback]
path = "plugins/cpq-writeback"
config = {{ instance_url = "{salesforce}" }}
secrets = ["salesforce_token"]
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.cpq-writeback]
subscribe = ["OrderBooked"]
sink = "writeback"
"#
    )
}

/// A German quote booked by its ERP: the `OrderBooked` the delivery makes carries the
/// ERP's number, and the write-back flow patches it onto the CPQ quote as Salesforce's
/// REST API takes it (a mock that checks the token, the object, the record and the
/// fields).
#[tokio::test(flavor = "multi_thread")]
async fn an_order_booked_in_the_erp_is_written_back_to_its_quote() {
    let erp = MockErp::start().await.unwrap();
    let salesforce = tenon_testkit::mock_salesforce::MockSalesforce::start(
        "00Dxx0000001gPL!token",
        &["a0q5g000001AbCdAAK"],
        &["ERP_Order_Number__c", "ERP_Subscription_Order_Number__c"],
    )
    .await
    .unwrap();
    let base = erp.orders_url();
    let ws = Workspace::new();
    ws.write_config(&booking_config(
        base.trim_end_matches("/sap/orders"),
        &salesforce.instance_url(),
    ));
    std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
    std::fs::write(
        ws.path().join("salesforce-token.txt"),
        "00Dxx0000001gPL!token",
    )
    .unwrap();
    let tenon = Tenon::start(&ws);
    tenon.load_customers().await;

    let ids = tenon.send_quote(sample("plain.json")).await;
    // Delivered to the DE ERP, then written back.
    let status = settled_with(&tenon, &ids[0], 2).await;
    assert_eq!(
        outcomes(&status),
        [
            (
                "cpq-writeback".into(),
                "writeback".into(),
                "Delivered".into()
            ),
            ("erp-de".into(), "erp-de".into(), "Delivered".into()),
        ],
        "{status:#}"
    );
    let number = erp
        .received()
        .into_iter()
        .find(|r| r.path == "/de/orders")
        .unwrap()
        .order_number;
    let quote = salesforce.quote("a0q5g000001AbCdAAK").unwrap();
    assert_eq!(quote["ERP_Order_Number__c"], number.as_str());
    let calls = salesforce.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "PATCH");
    assert_eq!(
        calls[0].path,
        "/services/data/v60.0/sobjects/SBQQ__Quote__c/a0q5g000001AbCdAAK"
    );
    assert_eq!(calls[0].status, 204);

    // The write-back's outcome says what it wrote where.
    let written = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["flow"] == "cpq-writeback")
        .unwrap();
    assert_eq!(written["kind"], "OrderBooked");
    assert_eq!(
        written["result"]["Delivered"]["detail"],
        format!("quote Q-00101 (a0q5g000001AbCdAAK): ERP_Order_Number__c = {number}")
    );
}

/// A Zuora order of `actions` on subscription SUB-LIFE.
fn zuora_order(actions: Value) -> String {
    json!({"existingAccountNumber": "A00000001", "orderDate": "2025-01-01",
        "subscriptions": [{"subscriptionNumber": "SUB-LIFE", "orderActions": actions}]})
    .to_string()
}

fn dated(day: &str) -> Value {
    json!([{"name": "ContractEffective", "triggerDate": day},
           {"name": "ServiceActivation", "triggerDate": day}])
}

fn monthly(id: &str, price: u32) -> Value {
    json!({"productRatePlanId": id, "chargeOverrides": [{"billingPeriod": "Month",
        "pricing": {"recurringFlatFee": {"listPrice": price}}}]})
}

/// One contract through its whole life, each change a Zuora order posted at once
/// after the other: created, a plan added mid-month, suspended, resumed with its term
/// extended, renewed, cancelled. Finance receives every revision of each schedule in
/// order, and the last of each comes to what was billed.
#[tokio::test(flavor = "multi_thread")]
async fn a_contract_through_its_whole_life_reaches_finance_in_order() {
    let erp = MockErp::start().await.unwrap();
    let base = erp.orders_url();
    let ws = Workspace::new();
    ws.write_config(&config(base.trim_end_matches("/sap/orders")));
    std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
    let tenon = Tenon::start(&ws);

    let orders = [
        json!([{"type": "CreateSubscription", "triggerDates": dated("2025-01-01"),
            "createSubscription": {"subscriptionNumber": "SUB-LIFE",
                "terms": {"initialTerm": {"period": 12, "periodType": "Month", "termType": "TERMED"},
                          "renewalTerms": [{"period": 12, "periodType": "Month"}]},
                "subscribeToRatePlans": [monthly("A", 100)]}}]),
        json!([{"type": "AddProduct", "triggerDates": dated("2025-03-16"), "addProduct": monthly("B", 31)}]),
        json!([{"type": "Suspend", "triggerDates": dated("2025-06-01"), "suspend": {"suspendPolicy": "Today"}}]),
        json!([{"type": "Resume", "triggerDates": dated("2025-08-01"),
            "resume": {"resumePolicy": "Today", "extendsTerm": true}}]),
        json!([{"type": "RenewSubscription", "triggerDates": dated("2026-02-01")}]),
        json!([{"type": "CancelSubscription", "triggerDates": dated("2026-09-01"),
            "cancelSubscription": {"cancellationPolicy": "SpecificDate",
                "cancellationEffectiveDate": "2026-09-01"}}]),
    ];
    // Posted one after the other without waiting: the contract's messages run in
    // the order they arrived.
    let mut last = Vec::new();
    for actions in orders {
        last = tenon.send_quote_to("zuora", &zuora_order(actions)).await;
    }
    // The cancellation changes both schedules.
    let status = settled_with(&tenon, &last[0], 2).await;
    assert!(
        outcomes(&status)
            .iter()
            .all(|o| *o == ("schedules".into(), "finance".into(), "Delivered".into())),
        "{status:#}"
    );
    let received: Vec<Value> = erp
        .received()
        .into_iter()
        .filter(|r| r.path == "/finance/events" && r.body["source_line"].is_string())
        .map(|r| r.body)
        .collect();
    // A: made, suspended, resumed, renewed, cancelled; B: added and the same four.
    let revisions = |id: &str| -> Vec<u64> {
        received
            .iter()
            .filter(|s| s["id"] == id)
            .map(|s| s["revision"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(revisions("SUB-LIFE/A"), [1, 2, 3, 4, 5]);
    assert_eq!(revisions("SUB-LIFE/B"), [1, 2, 3, 4, 5]);
    let latest = |id: &str| received.iter().rev().find(|s| s["id"] == id).unwrap();
    // Billed for A: 12 x 100.00, renewed for 12 x 100.00, less the credit of what is
    // not served after 2026-09-01 (the term, extended by the 61 days suspended, ends
    // 2027-03-02): 6 months and 2/31 of March at 100.00 = 606.45. 2400.00 - 606.45.
    // For B: 295.00 from 2025-03-16 (16/31 of March at 31.00 = 16.00, and 9 months),
    // 372.00 renewed, less 6 x 31.00 + 2.00 = 188.00: 479.00.
    assert_eq!(latest("SUB-LIFE/A")["total"]["amount"], "1793.55");
    assert_eq!(latest("SUB-LIFE/B")["total"]["amount"], "479.00");
    for id in ["SUB-LIFE/A", "SUB-LIFE/B"] {
        let schedule = latest(id);
        let sum: tenon_sdk::model::rust_decimal::Decimal = schedule["periods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["amount"]["amount"]
                    .as_str()
                    .unwrap()
                    .parse::<tenon_sdk::model::rust_decimal::Decimal>()
                    .unwrap()
            })
            .sum();
        assert_eq!(
            sum.to_string(),
            schedule["total"]["amount"].as_str().unwrap()
        );
        assert_eq!(schedule["change"]["reason"], "cancelled");
        assert_eq!(
            schedule["periods"].as_array().unwrap().last().unwrap()["period"]["end"],
            "2026-08-31"
        );
    }
    // The suspension's revision held the rest: 700.00 of A.
    let suspended = received
        .iter()
        .find(|s| s["id"] == "SUB-LIFE/A" && s["revision"] == 2)
        .unwrap();
    assert_eq!(suspended["held"]["amount"], "700.00");
}

pub(crate) const STRIPE_SECRET: &str = "whsec_chain_test";

/// POST a Stripe webhook signed with `secret`.
/// Stripe's invoice fixture as event `kind` with id `id`, signed and posted; returns
/// its body and the ids accepted once the invoice reached finance and so did the
/// schedule the revenue flow made of it.
async fn invoice_event(tenon: &Tenon, kind: &str, id: &str) -> (String, Vec<String>) {
    let mut event = fixture("stripe_invoice_event_invoice_paid.json");
    event["type"] = json!(kind);
    event["id"] = json!(id);
    let body = event.to_string();
    let reply = stripe_post(tenon, &body, STRIPE_SECRET).await;
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    let status = settled_with(tenon, &ids[0], 2).await;
    assert_eq!(
        outcomes(&status),
        [
            ("invoices".into(), "finance".into(), "Delivered".into()),
            ("schedules".into(), "finance".into(), "Delivered".into()),
        ],
        "{kind}"
    );
    (body, ids)
}

pub(crate) async fn stripe_post(
    tenon: &Tenon,
    body: &str,
    secret: &str,
) -> tenon_cli::client::Response {
    let signature = tenon_testkit::stripe_signature(secret, body.as_bytes());
    tenon_cli::client::request(
        "POST",
        &format!("{}/v1/sources/stripe", tenon.base),
        &[("stripe-signature", &signature)],
        Some(("application/json", body.as_bytes().to_vec())),
    )
    .await
    .unwrap()
}

/// A server on 127.0.0.1 that keeps every request's head and body and answers
/// `{"id": "X-<n>"}`.
pub(crate) async fn recorder() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                // Read the head, then the body its content-length announces.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(String::from_utf8_lossy(&request).to_string());
                    log.len()
                };
                let body = format!("{{\"id\": \"X-{n}\"}}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generic_http_sink_takes_method_url_template_and_secret_headers() {
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    std::fs::write(ws.path().join("token.txt"), "tok-123-secret\n").unwrap();
    ws.write_config(&format!(
        r#"
[secrets]
erp_de_token = {{ file = "token.txt" }}

[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.erp]
path = "plugins/http-sink"
config = {{ url = "{url}/orders/{{key}}?kind={{kind}}", method = "PUT", headers = '{{"x-tenant": "acme"}}', secret_headers = '{{"authorization": "Bearer {{authorization}}"}}' }}
grants = {{ http = ["http://127.0.0.1:*"] }}
secrets = {{ authorization = "erp_de_token" }}

[flows.quote-to-order]
source = "cpq-source"
steps = ["quote-to-order"]
sink = "erp"
"#
    ));
    let tenon = Tenon::start(&ws);
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"],
        json!({"Delivered": {"reference": "X-1", "detail": "HTTP 200"}})
    );
    let request = seen.lock().unwrap()[0].clone();
    let head = request.to_ascii_lowercase();
    assert!(
        request.starts_with("PUT /orders/Q-00101?kind=OrderDrafted HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        head.contains("\r\nauthorization: bearer tok-123-secret\r\n"),
        "{request}"
    );
    assert!(head.contains("\r\nx-tenant: acme\r\n"), "{request}");
    assert!(head.contains("\r\nidempotency-key: "), "{request}");
    assert!(request.contains("\"id\":\"Q-00101-P\""), "{request}");
    // The token is nowhere in what the host recorded.
    let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap();
    let audit = tenon.get("/v1/audit?limit=1000").await;
    assert!(!log.contains("tok-123-secret"));
    assert!(!String::from_utf8_lossy(&audit.body).contains("tok-123-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entity_added_in_config_takes_the_orders_no_flow_took() {
    let erp = MockErp::start().await.unwrap();
    let base = erp.orders_url();
    let base = base.trim_end_matches("/sap/orders").to_owned();
    let ws = Workspace::new();
    // The French ERP flow is not there yet.
    let full = config(&base);
    let start = full.replace(
        "[flows.erp-fr]\nsubscribe = [\"OrderAccepted\"]\nwhen = { tenon-entity = \"FR01\" }\nsink = \"erp-fr\"\n",
        "",
    );
    assert_ne!(start, full);
    ws.write_config(&start);
    std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
    let tenon = Tenon::start(&ws);
    let customers = json!([{"kind": "CustomerUpserted", "key": "0015g00000XyZ34AAB",
        "body": {"id": "0015g00000XyZ34AAB", "name": "Contoso Retail SAS", "country": "FR"}}]);
    let ids = tenon.send_quote_to("master", &customers.to_string()).await;
    tenon.settled(&ids[0]).await;

    // A French order: routed to FR01, which no flow takes: a dead letter that says
    // so, not a silent drop.
    let quote = sample("bundle.json");
    let ids = tenon.send_quote(quote).await;
    let status = settled_with(&tenon, &ids[0], 1).await;
    let dead: Vec<&Value> = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["result"]["DeadLetter"].is_object())
        .collect();
    assert!(!dead.is_empty(), "{status:#}");
    assert_eq!(
        dead[0]["result"]["DeadLetter"]["error"],
        "no flow subscribes to `OrderAccepted` with tenon-entity = `FR01`"
    );

    // The entity's flow is added to the running config; the dead letters are redriven
    // through the router and reach the French ERP.
    ws.write_config(&full);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = tenon.get("/v1/plugins").await.json().unwrap();
        if status["config"]["flows"]
            .as_array()
            .unwrap()
            .contains(&json!("erp-fr"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the config was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for d in &dead {
        let id = d["id"].as_str().unwrap();
        let reply = tenon
            .post(&format!("/v1/dlq/{id}/redrive"), "application/json", b"{}")
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let fr = erp
            .received()
            .into_iter()
            .filter(|r| r.path == "/fr/orders")
            .count();
        if fr == dead.len() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let status = tenon.get(&format!("/v1/messages/{}", ids[0])).await;
            let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap();
            panic!(
                "the redriven orders did not arrive: {}\n{}",
                String::from_utf8_lossy(&status.body),
                log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One edit, one reload: the runtime reading its own files is not a change.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap();
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_without_a_filter_gets_what_flows_emit_not_what_they_make_on_the_way() {
    let erp = MockErp::start().await.unwrap();
    let base = erp.orders_url();
    let base = base.trim_end_matches("/sap/orders").to_owned();
    let ws = Workspace::new();
    // Every accepted order, whatever its entity: a flow with no `when`.
    let watch = format!(
        "\n[plugins.watcher]\npath = \"plugins/http-sink\"\nconfig = {{ url = \"{base}/watch/orders\" }}\ngrants = {{ http = [\"http://127.0.0.1:*\"] }}\n\n[flows.watch]\nsubscribe = [\"OrderAccepted\"]\nsink = \"watcher\"\n"
    );
    ws.write_config(&format!("{}{watch}", config(&base)));
    std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
    let tenon = Tenon::start(&ws);
    tenon.load_customers().await;

    // A German order (DE ERP and the watcher) and a French bundle whose subscription
    // order the gateway rejects (FR ERP and the watcher take the physical one only).
    let plain = tenon.send_quote(sample("plain.json")).await;
    let bundle = tenon.send_quote(sample("bundle.json")).await;
    settled_with(&tenon, &plain[0], 2).await;
    let status = settled_with(&tenon, &bundle[0], 3).await;
    assert!(
        status["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["plugin"] == "gateway" && o["result"]["Rejected"].is_object()),
        "{status:#}"
    );

    let received = |path: &str| -> Vec<String> {
        let mut ids: Vec<String> = erp
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.body["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut erps = [received("/de/orders"), received("/fr/orders")].concat();
    erps.sort();
    assert_eq!(erps.len(), 2, "{erps:?}");
    // Exactly the orders the gateway accepted and the router routed, once each: not
    // the orders the mapping made before the gateway (the rejected one among them),
    // which a flow publishing every step's outputs would have sent here too.
    assert_eq!(received("/watch/orders"), erps);
}

/// Each outcome of a message's lineage as (flow, the plugins of its trail, result).
fn trails(status: &Value) -> Vec<(String, Vec<String>, String)> {
    let mut out: Vec<(String, Vec<String>, String)> = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let trail = o["trail"]
                .as_array()
                .unwrap()
                .iter()
                .map(|hop| hop["plugin"].as_str().unwrap().to_owned())
                .collect();
            let result = o["result"]
                .as_object()
                .and_then(|r| r.keys().next().cloned())
                .unwrap_or_else(|| o["result"].to_string());
            (o["flow"].as_str().unwrap().to_owned(), trail, result)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_transform_steps_run_in_one_commit_unless_the_flow_says_otherwise() {
    // The same quotes through the same chain, fused (the default) and hop by hop:
    // the same outcomes, trails and orders; only the fused run counts fused steps.
    let mut seen = Vec::new();
    for fuse in [true, false] {
        let erp = MockErp::start().await.unwrap();
        let base = erp.orders_url();
        let base = base.trim_end_matches("/sap/orders").to_owned();
        let ws = Workspace::new();
        let mut text = config(&base);
        if !fuse {
            text = text.replace("max_attempts = 2\n", "max_attempts = 2\nfuse = false\n");
        }
        ws.write_config(&text);
        std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
        let tenon = Tenon::start(&ws);
        tenon.load_customers().await;

        let plain = tenon.send_quote(sample("plain.json")).await;
        let plain = trails(&settled_with(&tenon, &plain[0], 1).await);
        let bundle = tenon.send_quote(sample("bundle.json")).await;
        let bundle = trails(&settled_with(&tenon, &bundle[0], 2).await);
        let mut orders: Vec<(String, Value)> = erp
            .received()
            .into_iter()
            .map(|r| (r.path.clone(), r.body.clone()))
            .collect();
        orders.sort_by(|a, b| a.0.cmp(&b.0));

        // Counters move just after the commit a status already shows.
        let fused_at = async |stage: &str, expected: u64| {
            let series = fused("quote-to-order", stage);
            tenon.metric_reaching(&series, expected).await
        };
        let expected = |n: u64| if fuse { n } else { 0 };
        let counted = (
            fused_at("gateway", expected(2)).await,
            fused_at("router", expected(2)).await,
        );
        // Fused, the plain quote's order and the bundle's good order went through the
        // gateway and the router in the mapping's lease; the bundle's order the
        // gateway rejects was left queued for the gateway's own workers.
        assert_eq!(counted, (expected(2), expected(2)), "fuse = {fuse}");
        // And on into the ERP flow that subscribes to each routed order, its sink run
        // in the same lease (the ERP's 30 s time limit counted in the lease's length).
        for erp in ["erp-de", "erp-fr"] {
            let took = orders
                .iter()
                .filter(|(path, _)| path.starts_with(&format!("/{}/", &erp[4..])));
            let want = expected(took.count() as u64);
            let sinks = tenon.metric_reaching(&fused(erp, erp), want).await;
            assert_eq!(sinks, want, "fuse = {fuse}");
        }
        // Each ERP flow logged the order that entered it, fused or queued: its replay
        // re-runs it, and the sink returns the recorded outcome instead of sending it
        // again.
        for erp in ["de", "fr"] {
            let took = orders
                .iter()
                .filter(|(path, _)| path.starts_with(&format!("/{erp}/")));
            let want = took.count() as u64;
            let replayed = replay_all(&tenon, &format!("erp-{erp}")).await;
            assert_eq!(replayed, want, "erp-{erp}, fuse = {fuse}");
        }
        tenon.drained().await;
        assert_eq!(
            erp.received().len(),
            orders.len(),
            "nothing delivered twice"
        );
        seen.push((plain, bundle, orders));
    }
    assert_eq!(seen[0], seen[1], "fused and unfused runs differ");
    let (plain, bundle, orders) = &seen[0];
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(plain[0].0, "erp-de");
    assert_eq!(plain[0].2, "Delivered");
    let hops: Vec<&str> = plain[0].1.iter().map(String::as_str).collect();
    assert!(
        hops.ends_with(&["quote-to-order", "gateway", "router", "erp-de"]),
        "{hops:?}"
    );
    assert!(
        bundle
            .iter()
            .any(|(_, trail, result)| result == "Rejected" && trail.last().unwrap() == "gateway"),
        "{bundle:?}"
    );
    assert_eq!(orders.len(), 2, "{orders:?}");
}

/// When the message whose status is `s` was delivered (ms since the Unix epoch).
fn delivered_at(s: &Value) -> u64 {
    let outcomes = s["outcomes"].as_array();
    let delivered = outcomes.and_then(|o| o.iter().find(|o| o["result"]["Delivered"].is_object()));
    delivered.unwrap_or_else(|| panic!("not delivered: {s:#}"))["at_ms"]
        .as_u64()
        .unwrap()
}

/// Two runs of a step that spins `spin_ms` for one key did not overlap: their
/// deliveries, each right after its run, are at least that far apart.
fn never_overlapped(a: u64, b: u64, spin_ms: u64) {
    assert!(
        a.abs_diff(b) >= spin_ms,
        "two runs of one step for one key overlapped: delivered at {a} and {b}"
    );
}

/// A config of one flow from the CPQ source to a sink that records what it is sent
/// (`url`, from [`recorder`]): `plugins` the steps' sections, `flow` the flow's.
fn recorded(url: &str, plugins: &str, flow: &str) -> String {
    format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
config = {{ po_number_field = "Customer_PO__c" }}
[plugins.recorder]
path = "plugins/http-sink"
config = {{ url = "{url}/quotes" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
{plugins}
{flow}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fused_step_never_overtakes_a_message_of_its_key_waiting_at_the_step_it_skips() {
    // Two revisions of one quote (one key). The first fails at `flaky` and waits there
    // for its retry (5 s: room for a slow machine); the second, through `pass` a
    // moment later, would reach `flaky` in `pass`'s lease, ahead of it, if the fused
    // step did not see it waiting. It must wait behind it instead: delivered only
    // after the first is dead-lettered. A third, with nothing of its key waiting,
    // is fused: what held the second back was the first, nothing else.
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    let plugins = r#"
[plugins.pass]
path = "plugins/misbehave"
[plugins.flaky]
path = "plugins/misbehave"
config = { mode = "retryable-when", marker = "PO-RETRY" }"#;
    let flow = r#"
[flows.ordered]
source = "cpq-source"
steps = ["pass", "flaky"]
sink = "recorder"
max_attempts = 2
backoff_ms = 5000
"#;
    ws.write_config(&recorded(&url, plugins, flow));
    let tenon = Tenon::start(&ws);
    let first = sample("plain.json").replace("4500012345", "PO-RETRY");
    let first = tenon.send_quote(&first).await;
    // The first has failed at `flaky` once and waits there for its retry.
    tenon
        .wait_for(&first[0], |s| {
            s["pending"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["attempts"].as_array().is_some_and(|a| !a.is_empty()))
            })
        })
        .await;
    let second = tenon.send_quote(sample("plain.json")).await;

    let second = tenon.settled(&second[0]).await;
    let first = tenon.settled(&first[0]).await;
    let at = |s: &Value, kind: &str| -> u64 {
        let outcome = &s["outcomes"][0];
        assert!(outcome["result"][kind].is_object(), "{s:#}");
        outcome["at_ms"].as_u64().unwrap()
    };
    let (dead, delivered) = (at(&first, "DeadLetter"), at(&second, "Delivered"));
    assert!(
        delivered >= dead,
        "the second revision was delivered at {delivered}, before the first was dead-lettered at {dead}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let flaky = async || tenon.metric(&fused("ordered", "flaky")).await;
    assert_eq!(flaky().await, 0);

    let third = tenon
        .send_quote(&sample("plain.json").replace("4500012345", "4500012346"))
        .await;
    let third = tenon.settled(&third[0]).await;
    at(&third, "Delivered");
    assert_eq!(
        flaky().await,
        1,
        "nothing of its key waited: the third is fused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_put_in_a_skipped_queue_waits_for_the_fused_run_of_its_key() {
    // A quote dead-letters at `slow`; a reload makes `slow` spin 3 s and pass. A second
    // revision (one key) runs `slow` in `pass`'s lease; while it spins, the first is
    // redriven into `slow`'s queue. Hop by hop the two would wait there one after the
    // other: the redriven one waits for the fused run's claim on the key instead, so
    // the two runs of `slow` never overlap (their deliveries 3 s apart at least).
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    let config = |slow: &str| {
        let plugins = format!(
            r#"
[plugins.pass]
path = "plugins/misbehave"
[plugins.slow]
path = "plugins/misbehave"
config = {{ {slow} }}"#
        );
        let flow = r#"
[flows.claimed]
source = "cpq-source"
steps = ["pass", "slow"]
sink = "recorder"
max_attempts = 1
"#;
        recorded(&url, &plugins, flow)
    };
    ws.write_config(&config(r#"mode = "invalid""#));
    let tenon = Tenon::start(&ws);
    let first = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&first[0]).await;
    let dead = status["outcomes"][0].clone();
    assert!(dead["result"]["DeadLetter"].is_object(), "{status:#}");
    let spinning = config(r#"mode = "count", spin_ms = "3000""#);
    tenon.reconfigure(&ws, &spinning, "claimed").await;

    let second = tenon
        .send_quote(&sample("plain.json").replace("4500012345", "4500012346"))
        .await;
    // Well into its run of `slow` (which starts within milliseconds, a loaded
    // machine's scheduling included).
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let id = dead["id"].as_str().unwrap();
    let reply = tenon
        .post(&format!("/v1/dlq/{id}/redrive"), "application/json", b"{}")
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let second = tenon.settled(&second[0]).await;
    let first = tenon
        .wait_for(&first[0], |s| {
            s["outcomes"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["result"]["Delivered"].is_object()))
        })
        .await;
    never_overlapped(delivered_at(&first), delivered_at(&second), 3000);
    assert_eq!(
        tenon.metric(&fused("claimed", "slow")).await,
        1,
        "the second revision ran `slow` in `pass`'s lease"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_a_mapping_gives_one_key_run_the_next_step_one_at_a_time() {
    // `rekey` gives every quote one new key. Two quotes of other numbers, leased at
    // `rekey` side by side, both reach `slow` (2 s) under that key: hop by hop they
    // would wait in its queue one after the other. The first lease to claim the key
    // in `slow`'s queue runs `slow` (and the sink) in its lease; the other's output
    // waits there for the release. The two runs of `slow` never overlap.
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    let plugins = r#"
[plugins.rekey]
path = "plugins/misbehave"
config = { mode = "rekey", key = "customer-1" }
[plugins.slow]
path = "plugins/misbehave"
config = { mode = "count", spin_ms = "2000" }"#;
    let flow = r#"
[flows.rekeyed]
source = "cpq-source"
steps = ["rekey", "slow"]
sink = "recorder"
"#;
    ws.write_config(&recorded(&url, plugins, flow));
    let tenon = Tenon::start(&ws);
    let other = sample("plain.json")
        .replace("Q-00101", "Q-00102")
        .replace("a0q5g000001AbCdAAK", "a0q5g000001AbCdAAL");
    let (first, second) = tokio::join!(
        tenon.send_quote(sample("plain.json")),
        tenon.send_quote(&other)
    );
    let first = delivered_at(&tenon.settled(&first[0]).await);
    let second = delivered_at(&tenon.settled(&second[0]).await);
    never_overlapped(first, second, 2000);
    assert_eq!(seen.lock().unwrap().len(), 2);
    let slow = tenon.metric(&fused("rekeyed", "slow")).await;
    assert!(
        slow >= 1,
        "the first to claim the key ran `slow` in its lease"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_flows_feeding_one_subscriber_run_its_steps_for_a_key_one_at_a_time() {
    // `left` and `right` each take the quote from a source of their own and emit it
    // to `both`, which subscribes and runs `slow` (2 s) before its sink. The same
    // quote (one key) sent to both sources at once reaches `both` from two leases:
    // hop by hop its two copies would wait in `slow`'s queue one after the other.
    // Fused, the first to claim the key there runs `slow` and the sink in its lease;
    // the other copy waits for the release. The two runs never overlap.
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    let config = format!(
        r#"
[plugins.cpq-left]
path = "plugins/cpq-source"
[plugins.cpq-right]
path = "plugins/cpq-source"
[plugins.pass]
path = "plugins/misbehave"
[plugins.slow]
path = "plugins/misbehave"
config = {{ mode = "count", spin_ms = "2000" }}
[plugins.recorder]
path = "plugins/http-sink"
config = {{ url = "{url}/quotes" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.left]
source = "cpq-left"
steps = ["pass"]

[flows.right]
source = "cpq-right"
steps = ["pass"]

[flows.both]
subscribe = ["QuoteApproved"]
steps = ["slow"]
sink = "recorder"
"#
    );
    ws.write_config(&config);
    let tenon = Tenon::start(&ws);
    let quote = sample("plain.json");
    let (left, right) = tokio::join!(
        tenon.send_quote_to("cpq-left", quote),
        tenon.send_quote_to("cpq-right", quote)
    );
    let left = delivered_at(&tenon.settled(&left[0]).await);
    let right = delivered_at(&tenon.settled(&right[0]).await);
    never_overlapped(left, right, 2000);
    assert_eq!(seen.lock().unwrap().len(), 2);
    let slow = tenon.metric(&fused("both", "slow")).await;
    assert!(
        slow >= 1,
        "the first to claim the key ran `slow` in its lease"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_the_route_lists_twice_runs_once_in_a_lease() {
    // `b` comes after `a` and after `c`: one queue, fed by both. The lease at `a` runs
    // `b` under its claim on the key in that queue, then `c`; the second `b` finds the
    // key claimed (by this very run), so it waits in the queue for the commit and
    // runs in a lease of its own, the sink in that one.
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    let plugins = r#"
[plugins.a]
path = "plugins/misbehave"
[plugins.b]
path = "plugins/misbehave"
[plugins.c]
path = "plugins/misbehave""#;
    let flow = r#"
[flows.twice]
source = "cpq-source"
steps = ["a", "b", "c", "b"]
sink = "recorder"
"#;
    ws.write_config(&recorded(&url, plugins, flow));
    let tenon = Tenon::start(&ws);
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        tenon.metric_reaching(&fused("twice", "recorder"), 1).await,
        1
    );
    assert_eq!(tenon.metric(&fused("twice", "c")).await, 1);
    assert_eq!(tenon.metric(&fused("twice", "b")).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_on_a_route_from_before_a_reload_keeps_it_when_fused() {
    // A quote dead-letters at `gate`; a reload puts `x` between `gate` and `b` and lets
    // `gate` pass. The redriven quote keeps the route it entered with, where `b`
    // follows `gate` (`b`'s queue has two feeders then, `gate` for it and `x` for the
    // new route: the claim on the key there keeps them apart): it runs `b`, not `x`,
    // in `gate`'s lease. A new quote, on the new route, runs `x` and `b` there.
    let (url, seen) = recorder().await;
    let ws = Workspace::new();
    let config = |gate: &str, steps: &str| {
        let plugins = format!(
            r#"
[plugins.gate]
path = "plugins/misbehave"
config = {{ {gate} }}
[plugins.x]
path = "plugins/misbehave"
[plugins.b]
path = "plugins/misbehave""#
        );
        let flow = format!(
            r#"
[flows.rerouted]
source = "cpq-source"
steps = [{steps}]
sink = "recorder"
max_attempts = 1
"#
        );
        recorded(&url, &plugins, &flow)
    };
    ws.write_config(&config(r#"mode = "invalid""#, r#""gate", "b""#));
    let tenon = Tenon::start(&ws);
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let dead = &status["outcomes"][0];
    assert!(dead["result"]["DeadLetter"].is_object(), "{status:#}");

    let rerouted = config(r#"mode = "pass""#, r#""gate", "x", "b""#);
    tenon.reconfigure(&ws, &rerouted, "rerouted").await;
    let id = dead["id"].as_str().unwrap();
    let reply = tenon
        .post(&format!("/v1/dlq/{id}/redrive"), "application/json", b"{}")
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["outcomes"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["result"]["Delivered"].is_object()))
        })
        .await;
    let b = tenon.metric_reaching(&fused("rerouted", "b"), 1).await;
    assert_eq!(b, 1, "{status:#}");
    assert_eq!(tenon.metric(&fused("rerouted", "x")).await, 0);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let ids = tenon
        .send_quote(&sample("plain.json").replace("4500012345", "4500012346"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    assert_eq!(tenon.metric_reaching(&fused("rerouted", "b"), 2).await, 2);
    assert_eq!(tenon.metric(&fused("rerouted", "x")).await, 1);
}
