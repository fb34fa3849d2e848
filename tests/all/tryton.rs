//! The Tryton sink against a real Tryton server (trytond 8.2 with the sale module),
//! installed by `scripts/tryton/setup.sh` and started on 127.0.0.1 for this test:
//! orders are created as sales and read back over JSON-RPC.

use crate::support::{Tenon, Workspace, sample};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tenon_cli::client;

/// A `trytond` on a copy of the set-up database; killed when dropped.
pub(crate) struct Tryton {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Tryton {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) const DATABASE: &str = "tenon";
/// The admin password the set-up gives Tryton (secrets shorter than 8 bytes are refused).
pub(crate) const PASSWORD: &str = "tenon-tryton-admin";

impl Tryton {
    pub(crate) async fn start() -> Tryton {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/tryton/setup.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/tryton/setup.sh");
        assert!(out.status.success(), "the Tryton set-up failed");
        let home = PathBuf::from(
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .lines()
                .last()
                .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::copy(home.join("db/tenon.sqlite"), db.join("tenon.sqlite")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("trytond.conf");
        std::fs::write(
            &conf,
            format!(
                "[database]\nuri = sqlite://\npath = {}\n[web]\nlisten = 127.0.0.1:{port}\n",
                db.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("trytond.log")).unwrap();
        let child = Command::new(home.join("venv/bin/trytond"))
            .args(["-c"])
            .arg(&conf)
            .args(["-d", DATABASE])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start trytond");
        let tryton = Tryton {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if tryton.login().await.is_ok() {
                return tryton;
            }
            assert!(Instant::now() < deadline, "trytond did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn endpoint(&self) -> String {
        format!("{}/{DATABASE}/rpc/", self.url)
    }

    async fn login(&self) -> Result<String, String> {
        let body = json!({"id": 1, "method": "common.db.login", "params": ["admin", {"password": PASSWORD}, "en"]});
        let reply = client::post(
            &self.endpoint(),
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let answer = reply.json().map_err(|e| e.to_string())?;
        let result = &answer["result"];
        let token = base64_encode(&format!(
            "admin:{}:{}",
            result[0],
            result[1].as_str().ok_or("no session")?
        ));
        Ok(format!("Session {token}"))
    }

    /// Call a method as admin, in the company's context.
    async fn call(&self, method: &str, mut params: Vec<Value>) -> Value {
        let auth = self.login().await.unwrap();
        params.push(json!({"company": 1, "companies": [1]}));
        let body = json!({"id": 2, "method": method, "params": params});
        let reply = client::request(
            "POST",
            &self.endpoint(),
            &[("authorization", &auth)],
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
        let answer = reply.json().unwrap();
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The sales with this reference, with their party code and lines.
    async fn sales(&self, reference: &str) -> Vec<Value> {
        let sales = self
            .call(
                "model.sale.sale.search_read",
                vec![
                    json!([["reference", "=", reference]]),
                    json!(0),
                    Value::Null,
                    Value::Null,
                    json!([
                        "reference",
                        "state",
                        "party.code",
                        "currency.code",
                        "lines",
                        "untaxed_amount",
                        "tax_amount",
                        "total_amount",
                        "payment_term.name",
                        "description",
                        "invoices"
                    ]),
                ],
            )
            .await;
        let mut out = Vec::new();
        for sale in sales.as_array().unwrap() {
            let lines = self
                .call(
                    "model.sale.line.read",
                    vec![
                        sale["lines"].clone(),
                        json!([
                            "sequence",
                            "product.code",
                            "quantity",
                            "unit_price",
                            "description",
                            "taxes"
                        ]),
                    ],
                )
                .await;
            let lines: Vec<Value> = lines
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    json!({
                        "sequence": l["sequence"],
                        "product": l["product."]["code"],
                        "quantity": l["quantity"],
                        "unit_price": l["unit_price"]["decimal"],
                        "description": l["description"],
                        "taxed": l["taxes"].as_array().is_some_and(|t| !t.is_empty()),
                    })
                })
                .collect();
            out.push(json!({
                "reference": sale["reference"],
                "state": sale["state"],
                "party": sale["party."]["code"],
                "currency": sale["currency."]["code"],
                "untaxed_amount": sale["untaxed_amount"]["decimal"],
                "tax_amount": sale["tax_amount"]["decimal"],
                "total_amount": sale["total_amount"]["decimal"],
                "payment_term": sale["payment_term."]["name"],
                "description": sale["description"],
                "invoices": sale["invoices"].as_array().map_or(0, Vec::len),
                "lines": lines,
            }));
        }
        out
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn config(tryton_url: &str, workflow: &str) -> String {
    format!(
        r#"
[secrets]
tryton_password = {{ file = "tryton-password.txt" }}

[plugins.cpq-source]
path = "plugins/cpq-source"
config = {{ po_number_field = "Customer_PO__c" }}
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.tryton]
path = "plugins/tryton-sink"
secrets = ["tryton_password"]
config = {{ url = "{tryton_url}", database = "{DATABASE}", workflow = "{workflow}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.quote-to-tryton]
source = "cpq-source"
steps = ["quote-to-order"]
sink = "tryton"
max_attempts = 3
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_become_tryton_sales_once_and_read_back() {
    let tryton = Tryton::start().await;
    let ws = Workspace::new();
    ws.write_config(&config(&tryton.url, "confirmed"));
    std::fs::write(
        ws.path().join("tryton-password.txt"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    let tenon = Tenon::start(&ws);

    // The plain quote: one physical order, a sale with its two lines.
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let delivered = &status["outcomes"][0]["result"]["Delivered"];
    assert!(
        delivered["reference"]
            .as_str()
            .unwrap_or_else(|| panic!("{status:#}"))
            .starts_with("sale.sale/"),
        "{status:#}"
    );
    assert_eq!(delivered["detail"], "confirmed sale created");
    // Confirmed, so Tryton processed it: its invoice is made. Each line taxed by its
    // product's 19 % VAT: 19 % of 3507.30 is 666.387 and of 738.60 is 140.334, 806.721
    // in all, 806.72 rounded; 4245.90 + 806.72 = 5052.62.
    let sales = tryton.sales("Q-00101-P").await;
    assert_eq!(sales.len(), 1);
    let mut sale = sales[0].clone();
    let state = sale["state"].take();
    assert!(
        state == "processing" || state == "confirmed",
        "{state}: {sale:#}"
    );
    assert_eq!(
        sale,
        json!({
            "reference": "Q-00101-P",
            "state": null,
            "party": "0015g00000XyZ12AAB",
            "currency": "EUR",
            "untaxed_amount": "4245.90",
            "tax_amount": "806.72",
            "total_amount": "5052.62",
            "payment_term": "Net30",
            "description": "Quote Q-00101 (Physical), PO 4500012345",
            "invoices": 1,
            "lines": [
                {"sequence": 10, "product": "HW-LAP-14", "quantity": 3.0, "unit_price": "1169.1", "description": "Field Laptop 14", "taxed": true},
                {"sequence": 20, "product": "HW-DOCK-C", "quantity": 3.0, "unit_price": "246.2", "description": "USB-C Dock", "taxed": true},
            ],
        })
    );

    // The bundle: a physical and a subscription order, two sales; the bundle
    // structure stays visible on the lines.
    let ids = tenon.send_quote(sample("bundle.json")).await;
    tenon.settled(&ids[0]).await;
    let physical = tryton.sales("Q-00102-P").await;
    assert_eq!(physical.len(), 1);
    assert_eq!(
        physical[0]["lines"][1]["description"],
        "In-Store Sensor Gateway (in bundle line 10)"
    );
    let subscription = tryton.sales("Q-00102-S").await;
    assert_eq!(subscription.len(), 1);
    assert_eq!(subscription[0]["lines"][0]["product"], "SW-ANL-LIC");

    // The quote revised (4 laptops instead of 3) after its sale was confirmed: a
    // change order returns what was sold and sells the revision. Returned: 3 x 1169.1
    // and 3 x 246.2; sold: 4 x 1169.1 and 3 x 246.2; 1169.10 in all. Taxes: 19 % of
    // -3507.30, -738.60, 4676.40 and 738.60 is 222.129, 222.13 rounded: 1391.23.
    let revised = sample("plain.json")
        .replace(
            "\"Q-00101\"",
            "\"Q-00101\", \"LastModifiedDate\": \"2026-11-27T10:00:00Z\"",
        )
        .replacen("\"SBQQ__Quantity__c\": 3,", "\"SBQQ__Quantity__c\": 4,", 1)
        .replace(
            "\"SBQQ__NetTotal__c\": 3507.3",
            "\"SBQQ__NetTotal__c\": 4676.4",
        );
    let ids = tenon.send_quote(&revised).await;
    let status = tenon.settled(&ids[0]).await;
    let detail = status["outcomes"][0]["result"]["Delivered"]["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("{status:#}"))
        .to_owned();
    assert!(
        detail.ends_with("sale created as a change order"),
        "{detail}"
    );
    let change = tryton.sales("Q-00101-P@2026-11-27T10:00:00Z").await;
    assert_eq!(change.len(), 1, "one change order");
    assert_eq!(change[0]["untaxed_amount"], "1169.10");
    assert_eq!(change[0]["tax_amount"], "222.13");
    assert_eq!(change[0]["total_amount"], "1391.23");
    let mut quantities: Vec<(String, i64)> = change[0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["product"].as_str().unwrap().to_owned(),
                l["quantity"].as_f64().unwrap() as i64,
            )
        })
        .collect();
    quantities.sort();
    assert_eq!(
        quantities,
        [
            ("HW-DOCK-C".to_owned(), -3),
            ("HW-DOCK-C".to_owned(), 3),
            ("HW-LAP-14".to_owned(), -3),
            ("HW-LAP-14".to_owned(), 4),
        ]
    );
    assert_eq!(tryton.sales("Q-00101-P").await.len(), 1);

    // An amendment quote of the contract: one more laptop, one dock less. Its order is
    // the changes: +1 x 1169.1 and -1 x 246.2, 922.90 untaxed; the sale says which
    // contract it changes.
    let amendment = sample("plain.json")
        .replace("\"Q-00101\"", "\"Q-00150\"")
        .replace("a0q5g000001AbCdAAK", "a0q5g000001AmNdAAK")
        .replace(
            "\"SBQQ__Type__c\": \"Quote\"",
            "\"SBQQ__Type__c\": \"Amendment\", \"SBQQ__MasterContract__c\": \"8005g000001ABCDAA4\"",
        )
        .replacen(
            "\"SBQQ__Quantity__c\": 3,",
            "\"SBQQ__Quantity__c\": 4, \"SBQQ__EffectiveQuantity__c\": 1,",
            1,
        )
        .replace(
            "\"SBQQ__NetTotal__c\": 3507.3",
            "\"SBQQ__NetTotal__c\": 1169.1",
        )
        .replacen(
            "\"SBQQ__Quantity__c\": 3,",
            "\"SBQQ__Quantity__c\": 2, \"SBQQ__EffectiveQuantity__c\": -1,",
            1,
        )
        .replace(
            "\"SBQQ__NetTotal__c\": 738.6",
            "\"SBQQ__NetTotal__c\": -246.2",
        );
    let ids = tenon.send_quote(&amendment).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    let changed = tryton.sales("Q-00150-P").await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["untaxed_amount"], "922.90");
    assert!(
        changed[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Amendment of contract 8005g000001ABCDAA4: Quote Q-00150 (Physical)"),
        "{:#}",
        changed[0]
    );

    // A customer and products Tryton does not know: rejected with every reason.
    let unknown = sample("plain.json")
        .replace("0015g00000XyZ12AAB", "0015g00000NOPE00AAA")
        .replace("HW-DOCK-C", "HW-NOPE")
        .replace("\"Q-00101\"", "\"Q-00199\"");
    let ids = tenon.send_quote(&unknown).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"],
        json!({"Rejected": {"reasons": [
            "customer `0015g00000NOPE00AAA` (Northwind Traders GmbH) is not a Tryton party",
            "line 20: product `HW-NOPE` is not a Tryton product",
        ]}})
    );
    assert!(tryton.sales("Q-00199-P").await.is_empty());
}

#[test]
fn json_rpc_answers_are_classified() {
    use tryton_sink::{RpcError, parse_answer};
    assert_eq!(
        parse_answer(200, br#"{"id":1,"result":[7]}"#).unwrap(),
        json!([7])
    );
    assert_eq!(
        parse_answer(
            200,
            br#"{"id":1,"error":["UserError",["The sale has no party.",""]]}"#
        ),
        Err(RpcError::Refused(
            "UserError: The sale has no party.".into()
        ))
    );
    assert_eq!(parse_answer(403, b"Forbidden"), Err(RpcError::Unauthorized));
    assert!(matches!(
        parse_answer(503, b"busy"),
        Err(RpcError::Transient(_))
    ));
    assert!(matches!(
        parse_answer(200, br#"{"id":1,"error":["ConcurrencyException",["x"]]}"#),
        Err(RpcError::Transient(_))
    ));
    assert!(matches!(
        parse_answer(200, b"<html>"),
        Err(RpcError::Transient(_))
    ));
}

/// A credit note reaches Tryton as a customer credit note: 100.00 given back with the
/// 19 % tax it was charged, 119.00 in all, left a draft; sent again, it is found.
#[tokio::test(flavor = "multi_thread")]
async fn a_credit_note_becomes_a_tryton_credit_note_once() {
    let tryton = Tryton::start().await;
    let ws = Workspace::new();
    ws.write_config(&format!(
        r#"
[secrets]
tryton_password = {{ file = "tryton-password.txt" }}

[plugins.billing]
path = "plugins/canonical-source"
[plugins.tryton]
path = "plugins/tryton-sink"
secrets = ["tryton_password"]
config = {{ url = "{}", database = "{DATABASE}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.credits]
source = "billing"
sink = "tryton"
"#,
        tryton.url
    ));
    std::fs::write(
        ws.path().join("tryton-password.txt"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    let tenon = Tenon::start(&ws);
    let note = json!({"kind": "CreditIssued", "key": "in_1Q2fh8BrSjgsps2DUqQsGLDj", "body": {
        "id": "cn_T1", "number": "CN-0001", "invoice": "in_1Q2fh8BrSjgsps2DUqQsGLDj",
        "customer": {"id": "cus_QsYn1aSStYv4tf"}, "currency": "EUR", "issued": "2026-12-02",
        "lines": [{"id": "cnli_1", "invoice_line": "il_1", "description": "Dock returned",
            "quantity": "1", "amount": {"amount": "100.00", "currency": "EUR"},
            "taxes": [{"amount": {"amount": "19.00", "currency": "EUR"}, "rate_percent": "19", "inclusive": false}]}],
        "total": {"amount": "119.00", "currency": "EUR"}}});
    for attempt in ["created", "already created"] {
        let ids = tenon.send_quote_to("billing", &note.to_string()).await;
        let status = tenon.settled(&ids[0]).await;
        assert_eq!(
            status["outcomes"][0]["result"]["Delivered"]["detail"],
            format!("credit note {attempt}"),
            "{status:#}"
        );
    }
    let invoices = tryton
        .call(
            "model.account.invoice.search_read",
            vec![
                json!([["reference", "=", "cn_T1"]]),
                json!(0),
                Value::Null,
                Value::Null,
                json!([
                    "type",
                    "state",
                    "party.code",
                    "untaxed_amount",
                    "tax_amount",
                    "total_amount",
                    "description"
                ]),
            ],
        )
        .await;
    let invoices = invoices.as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{invoices:#?}");
    let invoice = &invoices[0];
    assert_eq!(invoice["type"], "out");
    assert_eq!(invoice["state"], "draft");
    assert_eq!(invoice["party."]["code"], "cus_QsYn1aSStYv4tf");
    assert_eq!(invoice["untaxed_amount"]["decimal"], "-100.00");
    assert_eq!(invoice["tax_amount"]["decimal"], "-19.00");
    assert_eq!(invoice["total_amount"]["decimal"], "-119.00");
    assert_eq!(
        invoice["description"],
        "Credit note CN-0001 of invoice in_1Q2fh8BrSjgsps2DUqQsGLDj"
    );

    // A voided invoice is the credit of all it billed: 50.00 and 9.50 of tax back.
    let voided = json!({"kind": "InvoiceVoided", "key": "in_V1", "body": {
        "id": "in_V1", "number": "INV-0042", "customer": {"id": "cus_QsYn1aSStYv4tf"},
        "currency": "EUR", "issued": "2026-12-01",
        "lines": [{"id": "il_V1", "quantity": "1", "amount": {"amount": "50.00", "currency": "EUR"},
            "taxes": [{"amount": {"amount": "9.50", "currency": "EUR"}, "rate_percent": "19", "inclusive": false}]}],
        "total": {"amount": "59.50", "currency": "EUR"}}});
    let ids = tenon.send_quote_to("billing", &voided.to_string()).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["Delivered"]["detail"], "credit note created",
        "{status:#}"
    );
    let credit = tryton
        .call(
            "model.account.invoice.search_read",
            vec![
                json!([["reference", "=", "in_V1/void"]]),
                json!(0),
                Value::Null,
                Value::Null,
                json!(["total_amount", "description"]),
            ],
        )
        .await;
    assert_eq!(credit[0]["total_amount"]["decimal"], "-59.50");
    assert_eq!(
        credit[0]["description"],
        "Credit note void of INV-0042 of invoice in_V1"
    );
}

/// A saga through the real Tryton: a bundle quote's physical order becomes a quoted
/// sale, its subscription is refused by billing, and the sale is cancelled in Tryton.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_subscription_cancels_its_physical_sale_in_tryton() {
    let tryton = Tryton::start().await;
    let billing = tenon_testkit::mock_erp::MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&format!(
        r#"
[secrets]
tryton_password = {{ file = "tryton-password.txt" }}

[plugins.cpq-source]
path = "plugins/cpq-source"
config = {{ po_number_field = "Customer_PO__c" }}
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.tryton]
path = "plugins/tryton-sink"
secrets = ["tryton_password"]
config = {{ url = "{url}", database = "{DATABASE}", workflow = "quoted" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.billing]
path = "plugins/http-sink"
config = {{ url = "http://{billing}/billing/subscriptions" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.quotes]
source = "cpq-source"
steps = ["quote-to-order"]

[flows.erp]
subscribe = ["OrderDrafted"]
filter = 'order.category == "Physical"'
sink = "tryton"
saga = "compensate"

[flows.billing]
subscribe = ["OrderDrafted"]
filter = 'order.category == "Subscription"'
sink = "billing"
saga = "compensate"
backoff_ms = 50
max_backoff_ms = 200
max_attempts = 200
"#,
        url = tryton.url,
        billing = billing.addr,
    ));
    std::fs::write(
        ws.path().join("tryton-password.txt"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    let tenon = Tenon::start(&ws);

    // Billing is down until the sale exists, then refuses the subscription.
    billing.set_unavailable(true);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sales = tryton.sales("Q-00102-P").await;
        if sales.first().is_some_and(|s| s["state"] == "quotation") {
            break;
        }
        assert!(Instant::now() < deadline, "no quoted sale: {sales:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    billing.refuse("/billing", "no billing account for Contoso Retail SAS");
    billing.set_unavailable(false);
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && s.to_string().contains("Compensated")
        })
        .await;
    let undone = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"].as_str().unwrap().ends_with("@erp.undo"))
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(
        undone["result"]["Compensated"]["detail"],
        "cancelled sale cancelled"
    );
    let sales = tryton.sales("Q-00102-P").await;
    assert_eq!(sales.len(), 1, "{sales:#?}");
    assert_eq!(sales[0]["state"], "cancelled", "{sales:#?}");
    assert!(tryton.sales("Q-00102-P/undo").await.is_empty());
}

/// Reconciliation against the real Tryton: billing documents (canonical invoices and
/// a credit note) booked as Tryton customer invoices, seeded with a mismatch of each
/// kind, found by `tenon reconcile`, each an exception a person decides once.
#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_finds_each_kind_of_mismatch_in_tryton() {
    use tenon_model::chrono::{DateTime, Days};
    let tryton = Tryton::start().await;
    let finance = tenon_testkit::mock_erp::MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&format!(
        r#"
[secrets]
tryton_password = {{ file = "tryton-password.txt" }}

[plugins.billing]
path = "plugins/canonical-source"
[plugins.tryton]
path = "plugins/tryton-sink"
secrets = ["tryton_password"]
config = {{ url = "{url}", database = "{DATABASE}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
[plugins.finance]
path = "plugins/http-sink"
config = {{ url = "http://{finance}/finance/reconciliation" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.billing]
source = "billing"
sink = "tryton"

# Seeded gaps: these invoices are billed but never reach the ERP.
[[flows.billing.rules]]
when = 'kind == "InvoicePosted" && invoice.id.startsWith("in_skip")'
then = "reject"
reason = "kept from the ERP by the test"

[reconciliations.billing-vs-tryton]
erp = "tryton"

[flows.mismatches]
subscribe = ["ReconciliationException"]
sink = "finance"
"#,
        url = tryton.url,
        finance = finance.addr,
    ));
    std::fs::write(
        ws.path().join("tryton-password.txt"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    let tenon = Tenon::start(&ws);

    let today = DateTime::from_timestamp_millis(tenon::model::now_ms() as i64)
        .unwrap()
        .date_naive();
    let day = (today - Days::new(2)).to_string();
    let customer = json!({"id": "cus_QsYn1aSStYv4tf", "name": "Stripe test customer"});
    let invoice_in = |id: &str, currency: &str| {
        json!({"kind": "InvoicePosted", "key": id, "body": {
            "id": id, "number": id.to_uppercase(), "customer": customer, "currency": currency,
            "issued": day,
            "lines": [{"id": format!("{id}-l1"), "description": "Analytics licence", "quantity": "1",
                       "amount": {"amount": "100.00", "currency": currency},
                       "taxes": [{"amount": {"amount": "19.00", "currency": currency}, "rate_percent": "19", "inclusive": false}]}],
            "total": {"amount": "119.00", "currency": currency},
        }})
    };
    let invoice = |id: &str| invoice_in(id, "EUR");
    let credit = json!({"kind": "CreditIssued", "key": "cn_ok", "body": {
        "id": "cn_ok", "number": "CN-OK", "invoice": "in_ok", "customer": customer, "currency": "EUR",
        "issued": day,
        "lines": [{"id": "cn_ok-l1", "description": "Goodwill", "quantity": "1",
                   "amount": {"amount": "50.00", "currency": "EUR"},
                   "taxes": [{"amount": {"amount": "9.50", "currency": "EUR"}, "rate_percent": "19", "inclusive": false}]}],
        "total": {"amount": "59.50", "currency": "EUR"},
    }});
    let documents = json!([
        invoice("in_ok"),
        credit,
        invoice("in_amount"),
        invoice("in_dup"),
        invoice("in_skip_missing"),
        invoice_in("in_skip_currency", "USD"),
    ]);
    let ids = tenon.send_quote_to("billing", &documents.to_string()).await;
    assert_eq!(ids.len(), 6);
    for id in &ids {
        let status = tenon.settled(id).await;
        let result = &status["outcomes"][0]["result"];
        let key = status["outcomes"][0]["key"].as_str().unwrap_or_default();
        match key.starts_with("in_skip") {
            true => assert_eq!(
                result["Rejected"]["reasons"],
                json!(["rule 1: kept from the ERP by the test"]),
                "{status:#}"
            ),
            false => assert!(result["Delivered"].is_object(), "{status:#}"),
        }
    }

    // Seeding the ERP: an amount changed (the line's price only: Tryton keeps the tax
    // it computed, 90.00 + 19.00), a document booked twice, one billed in USD
    // booked in EUR, one no billing document explains.
    let booked = |reference: &str| {
        let reference = reference.to_owned();
        let tryton = &tryton;
        async move {
            let found = tryton
                .call(
                    "model.account.invoice.search",
                    vec![json!([["reference", "=", reference]])],
                )
                .await;
            found[0]
                .as_i64()
                .unwrap_or_else(|| panic!("{reference} is not booked: {found}"))
        }
    };
    let date = |d: &str| {
        let (y, rest) = d.split_once('-').unwrap();
        let (m, d) = rest.split_once('-').unwrap();
        json!({"__class__": "date", "year": y.parse::<i64>().unwrap(), "month": m.parse::<i64>().unwrap(), "day": d.parse::<i64>().unwrap()})
    };
    let amount = booked("in_amount").await;
    let lines = tryton
        .call(
            "model.account.invoice.read",
            vec![json!([amount]), json!(["lines"])],
        )
        .await;
    tryton
        .call(
            "model.account.invoice.line.write",
            vec![
                lines[0]["lines"].clone(),
                json!({"unit_price": {"__class__": "Decimal", "decimal": "90.00"}}),
            ],
        )
        .await;
    let ok = booked("in_ok").await;
    for defaults in [
        json!({"reference": "in_dup", "invoice_date": date(&day)}),
        json!({"reference": "in_skip_currency", "invoice_date": date(&day)}),
        json!({"reference": "in_erp_only", "invoice_date": date(&day)}),
    ] {
        let source = if defaults["reference"] == "in_dup" {
            booked("in_dup").await
        } else {
            ok
        };
        tryton
            .call(
                "model.account.invoice.copy",
                vec![json!([source]), defaults],
            )
            .await;
    }

    // Reconciled through the CLI: two of six documents match.
    let from = (today - Days::new(7)).to_string();
    let to = today.to_string();
    let (ok, out, err) = tenon.cli(&["reconcile", "--from", &from, "--to", &to]);
    assert!(ok, "{err}");
    assert!(out.contains("6 billing documents, 7 ERP records"), "{out}");
    assert!(
        out.contains("billing accuracy 33.3% (2 matched of 6)"),
        "{out}"
    );
    for expected in [
        "amount               in_amount was billed for 119.00 EUR and booked for 109.00 EUR",
        "currency             in_skip_currency was billed in USD and booked in EUR",
        "duplicate            the ERP books in_dup 2 times",
        "missing_in_erp       in_skip_missing (119.00 EUR) was billed; the ERP holds no record of it",
        "missing_in_billing   the ERP's account.invoice/",
        "5 mismatches; 5 new exceptions",
    ] {
        assert!(out.contains(expected), "`{expected}` in:\n{out}");
    }

    // Each mismatch is an exception (as soon as the flow's worker has held it), once;
    // the event log has them; the KPI is measured.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let held = tenon.get("/v1/exceptions").await.json().unwrap();
        let held = held["exceptions"].as_array().unwrap().clone();
        if held.len() >= 5 || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(held.len(), 5, "{held:#?}");
    let mut keys: Vec<&str> = held.iter().map(|h| h["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "in_amount",
            "in_dup",
            "in_erp_only",
            "in_skip_currency",
            "in_skip_missing"
        ]
    );
    assert!(
        held.iter()
            .all(|h| h["rule"] == "reconciliation billing-vs-tryton" && h["flow"] == "mismatches")
    );
    let again = tenon
        .post(
            "/v1/reconciliations/billing-vs-tryton/run",
            "application/json",
            format!(r#"{{"since": "{from}", "until": "{to}"}}"#).as_bytes(),
        )
        .await
        .json()
        .unwrap();
    assert_eq!(again["raised"], 0, "{again:#}");
    assert_eq!(again["mismatches"].as_array().unwrap().len(), 5);
    let events = tenon.get("/v1/events").await.json().unwrap();
    let logged = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "ReconciliationException")
        .count();
    assert_eq!(logged, 5, "{events:#}");
    let kpis = tenon.get("/v1/kpis").await.json().unwrap();
    let accuracy = &kpis["billing_accuracy"];
    assert_eq!(accuracy["measured"], true, "{kpis:#}");
    assert_eq!(accuracy["matched"], 2);
    assert_eq!(accuracy["documents"], 6);
    let metrics = String::from_utf8_lossy(&tenon.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains(
            "tenon_kpi_billing_accuracy_ratio{reconciliation=\"billing-vs-tryton\"} 0.333"
        ),
        "{metrics}"
    );

    // Approved, a mismatch goes to finance; rejected, it is dismissed.
    let id_of = |key: &str| {
        held.iter().find(|h| h["key"] == key).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (ok, _, err) = tenon.cli(&[
        "exceptions",
        "approve",
        &id_of("in_skip_missing"),
        "--note",
        "book it",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = tenon.cli(&[
        "exceptions",
        "reject",
        &id_of("in_erp_only"),
        "--note",
        "test data",
    ]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while finance.received().is_empty() {
        assert!(Instant::now() < deadline, "finance got nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = &finance.received()[0];
    assert_eq!(sent.body["kind"], "missing_in_erp");
    assert_eq!(sent.body["reference"], "in_skip_missing");
    assert_eq!(sent.body["billing"][0]["amount"], "119.00");
    let left = tenon.get("/v1/exceptions").await.json().unwrap();
    assert_eq!(left["exceptions"].as_array().unwrap().len(), 3, "{left:#}");
}
