//! The sink through its entry point, in a test host: the orders of the example's plain
//! quote (`examples/quote-to-cash/expected/plain.orders.json`), SAP's answers recorded,
//! and every request checked: the lookup, the CSRF token fetch with Basic
//! authentication, the deep insert with the token and the session's cookies, its body
//! against SAP's published metadata (`tests/fixtures/public/sap_API_SALES_ORDER_SRV.edmx`).

use super::*;
use tenon_sdk::model::kinds;
use tenon_sdk::testing::{Exchange, Host, Sent};

const ORDERS: &str = include_str!("../../../examples/quote-to-cash/expected/plain.orders.json");
const EDMX: &str = include_str!("../../../tests/fixtures/public/sap_API_SALES_ORDER_SRV.edmx");

const ROOT: &str = "https://s4.example.com/sap/opu/odata/sap/API_SALES_ORDER_SRV";
/// `Basic base64("TENON:s3cret")`.
const BASIC: &str = "Basic VEVOT046czNjcmV0";

/// The physical order of the plain quote, as quote-to-order makes it.
fn order() -> Order {
    let orders: Value = serde_json::from_str(ORDERS).unwrap();
    serde_json::from_value(orders[0]["body"].clone()).unwrap()
}

fn message(order: &Order) -> Message {
    Message::encode(kinds::ORDER_ACCEPTED, &order.quote_number, order).unwrap()
}

/// The manifest's defaults, the service, its user and a CRM account mapped to SAP.
fn configured() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("service_url", ROOT)
        .config("sold_to", r#"{"0015g00000XyZ12AAB": "USCU_S12"}"#)
        .config("payment_terms", r#"{"Net30": "0001"}"#)
        .secret("sap_user", "TENON")
        .secret("sap_password", "s3cret")
}

fn deliver(host: &Host, order: &Order) -> Result<Receipt, Failure> {
    host.run(|| create_sales_order(message(order), "0190f6a4.1"))
}

/// The lookup of a sales order by the order id, answering `found` (sales order numbers).
fn lookup(order_id: &str, found: &[&str]) -> Exchange {
    let results: Vec<Value> = found.iter().map(|n| json!({"SalesOrder": n})).collect();
    Exchange::get(&format!(
        "{ROOT}/A_SalesOrder?$filter=AccountingDocExternalReference%20eq%20%27{order_id}%27&$select=SalesOrder&$format=json"
    ))
    .with_header("authorization", BASIC)
    .respond(200, json!({"d": {"results": results}}).to_string())
}

/// SAP handing out token `n` with the cookies of session `n`.
fn token(n: u32) -> Exchange {
    Exchange::get(&format!("{ROOT}/"))
        .with_header("x-csrf-token", "Fetch")
        .with_header("authorization", BASIC)
        .respond(200, r#"{"d": {"EntitySets": ["A_SalesOrder"]}}"#)
        .respond_header("x-csrf-token", &format!("token-{n}"))
        .respond_header("set-cookie", &format!("SAP_SESSIONID_S4H_100={n}; path=/"))
        .respond_header("set-cookie", "sap-usercontext=sap-client=100; path=/")
}

/// The deep insert with token `n` and its session's cookies, answered `status`.
fn insert(n: u32, status: u16, answer: Value) -> Exchange {
    Exchange::post(&format!("{ROOT}/A_SalesOrder"))
        .with_header("x-csrf-token", &format!("token-{n}"))
        .with_header(
            "cookie",
            &format!("SAP_SESSIONID_S4H_100={n}; sap-usercontext=sap-client=100"),
        )
        .with_header("authorization", BASIC)
        .respond(status, answer.to_string())
}

fn odata_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": {"lang": "en", "value": message},
        "innererror": {"errordetails": [{"code": code, "message": message, "severity": "error"}]}}})
}

/// The names of an entity type's properties and navigation properties in the metadata.
fn properties(entity_type: &str) -> Vec<&'static str> {
    let start = EDMX
        .find(&format!("<EntityType Name=\"{entity_type}\""))
        .unwrap_or_else(|| panic!("no {entity_type} in the metadata"));
    let body = &EDMX[start..];
    let body = &body[..body.find("</EntityType>").unwrap()];
    body.split("Property Name=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect()
}

/// Every property of `body` is one that SAP's metadata names for `entity_type`.
fn assert_known(entity_type: &str, body: &Value) {
    let known = properties(entity_type);
    for name in body.as_object().unwrap().keys() {
        assert!(
            known.contains(&name.as_str()),
            "{entity_type} has no property {name}"
        );
    }
}

fn posted(host: &Host) -> Sent {
    host.requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("no POST")
}

#[test]
fn an_order_becomes_one_sales_order_through_the_csrf_flow() {
    let order = order();
    let host = configured()
        .exchange(lookup("Q-00101-P", &[]))
        .exchange(token(1))
        .exchange(insert(
            1,
            201,
            json!({"d": {"SalesOrder": "0000001000", "AccountingDocExternalReference": "Q-00101-P"}}),
        ));
    assert_eq!(
        deliver(&host, &order),
        Ok(Receipt {
            reference: "0000001000".into(),
            detail: Some("SAP sales order created".into()),
        })
    );
    host.assert_all_exchanged();
    let sent = posted(&host);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let body = sent.json();
    assert_eq!(
        body,
        json!({
            "SalesOrderType": "OR",
            "SalesOrganization": "1710",
            "DistributionChannel": "10",
            "OrganizationDivision": "00",
            "SoldToParty": "USCU_S12",
            // The order id where SAP keeps another system's reference; the customer's
            // own PO number where SAP keeps it.
            "AccountingDocExternalReference": "Q-00101-P",
            "PurchaseOrderByCustomer": "4500012345",
            // The quote's start, 2026-12-01 00:00 UTC: 1796083200 s.
            "RequestedDeliveryDate": "/Date(1796083200000)/",
            "PricingDate": "/Date(1796083200000)/",
            "CustomerPaymentTerms": "0001",
            "TransactionCurrency": "EUR",
            // List price less the discount per unit is the net price: 1299 - 129.9 =
            // 1169.1 (10 % off), 259 - 12.8 = 246.2.
            "to_Item": {"results": [
                {"SalesOrderItem": "10", "Material": "HW-LAP-14",
                 "SalesOrderItemText": "Field Laptop 14",
                 "RequestedQuantity": "3", "RequestedQuantityUnit": "PC",
                 "to_PricingElement": {"results": [
                    {"ConditionType": "PR00", "ConditionRateValue": "1299", "ConditionCurrency": "EUR"},
                    {"ConditionType": "RB00", "ConditionRateValue": "-129.9", "ConditionCurrency": "EUR"}]}},
                {"SalesOrderItem": "20", "Material": "HW-DOCK-C",
                 "SalesOrderItemText": "USB-C Dock",
                 "RequestedQuantity": "3", "RequestedQuantityUnit": "PC",
                 "to_PricingElement": {"results": [
                    {"ConditionType": "PR00", "ConditionRateValue": "259", "ConditionCurrency": "EUR"},
                    {"ConditionType": "RB00", "ConditionRateValue": "-12.8", "ConditionCurrency": "EUR"}]}},
            ]},
        })
    );
    // Every property is one of SAP's published metadata.
    assert_known("A_SalesOrderType", &body);
    for item in body["to_Item"]["results"].as_array().unwrap() {
        assert_known("A_SalesOrderItemType", item);
        for condition in item["to_PricingElement"]["results"].as_array().unwrap() {
            assert_known("A_SalesOrderItemPrElementType", condition);
        }
    }
}

#[test]
fn payment_terms_sap_does_not_know_are_left_to_sap_and_a_net_price_stands_alone() {
    let mut order = order();
    order.payment_terms = Some("Net 45".into());
    let host = configured();
    let body = host
        .run(|| sales_order_body(&order, &Settings::from_config(config::get).unwrap()))
        .unwrap();
    assert_eq!(body.get("CustomerPaymentTerms"), None);
    // Delivering it says so (here to an order already there).
    let host = configured().exchange(lookup("Q-00101-P", &["0000001000"]));
    deliver(&host, &order).unwrap();
    assert!(host.logs().iter().any(|(level, m)| level == "warn"
        && m.starts_with(
            "payment terms `Net 45` have no SAP key: SAP takes the customer master's"
        )));
    // A key SAP could know passes as it is; without a list price, the net price is
    // the only condition.
    order.payment_terms = Some("NT45".into());
    order.lines[0].list_price = None;
    let body = sales_order_body(&order, &Settings::from_config(|_| None).unwrap()).unwrap_err();
    assert_eq!(
        body,
        [
            "customer `0015g00000XyZ12AAB` has no SAP customer number (customer master `external_ids.sap`, or config `sold_to`)"
        ]
    );
    let mut settings = Settings::from_config(|_| None).unwrap();
    settings
        .sold_to
        .insert("0015g00000XyZ12AAB".into(), "USCU_S12".into());
    let body = sales_order_body(&order, &settings).unwrap();
    assert_eq!(body["CustomerPaymentTerms"], "NT45");
    assert_eq!(
        body["to_Item"]["results"][0]["to_PricingElement"],
        json!({"results": [{"ConditionType": "PR00", "ConditionRateValue": "1169.1", "ConditionCurrency": "EUR"}]})
    );
}

#[test]
fn a_redelivered_order_finds_its_sales_order_and_creates_nothing() {
    let host = configured().exchange(lookup("Q-00101-P", &["0000001000"]));
    assert_eq!(
        deliver(&host, &order()),
        Ok(Receipt {
            reference: "0000001000".into(),
            detail: Some("SAP sales order already created".into()),
        })
    );
    assert_eq!(host.requests().len(), 1, "no token fetched, nothing posted");
}

#[test]
fn an_expired_token_is_fetched_again_once() {
    let host = configured()
        .exchange(lookup("Q-00101-P", &[]))
        .exchange(token(1))
        .exchange(
            insert(
                1,
                403,
                odata_error("/IWFND/CM_COS/011", "CSRF token validation failed"),
            )
            .respond_header("x-csrf-token", "Required"),
        )
        .exchange(token(2))
        .exchange(insert(2, 201, json!({"d": {"SalesOrder": "0000001001"}})));
    assert_eq!(deliver(&host, &order()).unwrap().reference, "0000001001");
    host.assert_all_exchanged();
    let methods: Vec<String> = host.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "GET", "POST", "GET", "POST"]);

    // Only once: a fresh token refused as well is SAP's answer, a 403.
    let host = configured()
        .exchange(lookup("Q-00101-P", &[]))
        .exchange(token(1))
        .exchange(insert(1, 403, json!({})).respond_header("x-csrf-token", "Required"))
        .exchange(token(2))
        .exchange(insert(2, 403, json!({})).respond_header("x-csrf-token", "Required"));
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Rejected(vec!["SAP HTTP 403: {}".into()]))
    );
    host.assert_all_exchanged();
}

#[test]
fn sap_refusing_the_order_is_rejected_with_its_messages() {
    let host = configured()
        .exchange(lookup("Q-00101-P", &[]))
        .exchange(token(1))
        .exchange(insert(
            1,
            400,
            odata_error("V1/320", "Sold-to party USCU_S12 is blocked for sales"),
        ));
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Rejected(vec![
            "SAP: Sold-to party USCU_S12 is blocked for sales (V1/320)".into()
        ]))
    );
}

#[test]
fn what_sap_cannot_hold_is_rejected_before_anything_is_sent() {
    let mut order = order();
    order.customer.id = "0015g00000UNMAPPED".into();
    order.lines[0].quantity = "1.2345".parse().unwrap();
    order.lines[1].quantity = (-1).into();
    let host = configured();
    assert_eq!(
        deliver(&host, &order),
        Err(Failure::Rejected(vec![
            "customer `0015g00000UNMAPPED` has no SAP customer number (customer master `external_ids.sap`, or config `sold_to`)".into(),
            "line 10 quantity 1.2345 does not fit SAP's Edm.Decimal(15, 3)".into(),
            "line 20: quantity -1: a sales order takes no negative quantity (an amendment's reduction is a return: book it as a returns order)".into(),
        ]))
    );
    assert!(host.requests().is_empty());
}

#[test]
fn sap_unavailable_is_retryable() {
    let host = configured().exchange(
        Exchange::get(&format!(
            "{ROOT}/A_SalesOrder?$filter=AccountingDocExternalReference%20eq%20%27Q-00101-P%27&$select=SalesOrder&$format=json"
        ))
        .respond(503, "Service Unavailable"),
    );
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Retryable(
            "SAP HTTP 503: Service Unavailable".into()
        ))
    );
    let host = configured()
        .exchange(lookup("Q-00101-P", &[]))
        .exchange(token(1))
        .exchange(insert(1, 504, json!({})));
    assert!(matches!(
        deliver(&host, &order()),
        Err(Failure::Retryable(_))
    ));
    // A 201 without the number: SAP's answer cannot be trusted, try again.
    let host = configured()
        .exchange(lookup("Q-00101-P", &[]))
        .exchange(token(1))
        .exchange(insert(1, 201, json!({"d": {}})));
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Retryable(
            "SAP answered 201 without a SalesOrder".into()
        ))
    );
}

#[test]
fn a_misconfigured_sink_or_a_bad_message_is_invalid() {
    // No service.
    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("sold_to", r#"{"0015g00000XyZ12AAB": "USCU_S12"}"#)
        .config("payment_terms", r#"{"Net30": "0001"}"#);
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Invalid(
            "configuration key `service_url` is not set".into()
        ))
    );
    // A mapping that is not JSON.
    let host = configured().config("sold_to", "USCU_S12");
    assert!(matches!(
        deliver(&host, &order()),
        Err(Failure::Invalid(why)) if why.starts_with("config `sold_to` is not a JSON object")
    ));
    // SAP refusing the user.
    let host = configured().exchange(
        Exchange::get(&format!(
            "{ROOT}/A_SalesOrder?$filter=AccountingDocExternalReference%20eq%20%27Q-00101-P%27&$select=SalesOrder&$format=json"
        ))
        .respond(401, "Logon failed"),
    );
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Invalid(
            "SAP HTTP 401: Logon failed (check the user and password secrets)".into()
        ))
    );
    // Not an order.
    let not_an_order = Message::encode(kinds::ORDER_ACCEPTED, "Q-1", &json!({"id": 1})).unwrap();
    assert!(matches!(
        configured().run(|| create_sales_order(not_an_order, "k")),
        Err(Failure::Invalid(_))
    ));
}

#[test]
fn without_the_secrets_no_authorization_is_sent() {
    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("service_url", &format!("{ROOT}/"))
        .config("sold_to", r#"{"0015g00000XyZ12AAB": "USCU_S12"}"#)
        .config("payment_terms", r#"{"Net30": "0001"}"#)
        .exchange(Exchange::get(&format!(
            "{ROOT}/A_SalesOrder?$filter=AccountingDocExternalReference%20eq%20%27Q-00101-P%27&$select=SalesOrder&$format=json"
        )).respond(200, r#"{"d": {"results": [{"SalesOrder": "7"}]}}"#));
    assert_eq!(deliver(&host, &order()).unwrap().reference, "7");
    assert_eq!(host.requests()[0].header("authorization"), None);
}

#[test]
fn the_same_revision_again_is_a_redelivery_and_changes_nothing() {
    let mut order = order();
    order.revision = Some("2026-11-27T11:00:00Z".into());
    let host = configured()
        .exchange(lookup("Q-00101-P", &["0000001000"]))
        .exchange(
            Exchange::get(&format!(
                "{ROOT}/A_SalesOrder('0000001000')/to_Text?$format=json"
            ))
            .respond(
                200,
                json!({"d": {"results": [{"SalesOrder": "0000001000", "Language": "EN",
                    "LongTextID": "0001", "LongText": "tenon revision 2026-11-27T11:00:00Z"}]}})
                .to_string(),
            ),
        );
    assert_eq!(
        deliver(&host, &order).unwrap().detail.as_deref(),
        Some("SAP sales order already created")
    );
    host.assert_all_exchanged();
    assert_eq!(host.requests().len(), 2, "nothing written");
    // A new order of a revision carries it in its header text.
    let body = sales_order_body(
        &order,
        &Settings::from_config(|_| None)
            .map(|mut s| {
                s.sold_to
                    .insert("0015g00000XyZ12AAB".into(), "USCU_S12".into());
                s
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        body["to_Text"],
        json!({"results": [{"Language": "EN", "LongTextID": "0001", "LongText": "tenon revision 2026-11-27T11:00:00Z"}]})
    );
}
