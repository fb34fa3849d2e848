//! The sink through its entry point, in a test host: the order of the example's plain
//! quote (`examples/quote-to-cash/expected/plain.orders.json`) delivered over recorded
//! JSON-RPC exchanges, each request matched on its exact JSON body and its
//! `Authorization`; the session kept in key-value storage, reused and renewed.

use super::*;
use tenon_sdk::model::kinds;
use tenon_sdk::testing::{Exchange, Host};

const ORDERS: &str = include_str!("../../../examples/quote-to-cash/expected/plain.orders.json");

const ENDPOINT: &str = "https://erp.example.com/prod/rpc/";

fn order() -> Order {
    let orders: Value = serde_json::from_str(ORDERS).unwrap();
    serde_json::from_value(orders[0]["body"].clone()).unwrap()
}

fn deliver(host: &Host, order: &Order) -> Result<Receipt, Failure> {
    let message = Message::encode(kinds::ORDER_ACCEPTED, &order.quote_number, order).unwrap();
    host.run(|| create_sale(message, "0190f6a4.1"))
}

/// The manifest's defaults, the server and the password.
fn configured() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com/")
        .config("database", "prod")
        .secret("tryton_password", "tryton-pw")
}

/// The `Authorization` of session `n` (Tryton's uid 1).
fn auth(n: u32) -> String {
    tryton_rpc::authorization("admin", &json!(1), &format!("sess-{n}"))
}

/// The user's context, as the preferences give it.
fn context() -> Value {
    json!({"company": 1, "companies": [1], "language": "en"})
}

/// The session `n` as the sink keeps it.
fn session(n: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({"authorization": auth(n), "context": context()})).unwrap()
}

/// The login that opens session `n`, then the preferences read with it.
fn login(host: Host, n: u32) -> Host {
    host.exchange(
        Exchange::post(ENDPOINT)
            .with_json(json!({"id": 0, "method": "common.db.login",
                "params": ["admin", {"password": "tryton-pw"}, "en"]}))
            .respond(
                200,
                json!({"id": 0, "result": [1, format!("sess-{n}")]}).to_string(),
            ),
    )
    .exchange(
        Exchange::post(ENDPOINT)
            .with_json(
                json!({"id": 0, "method": "model.res.user.get_preferences", "params": [true, {}]}),
            )
            .with_header("authorization", &auth(n))
            .respond(
                200,
                json!({"id": 0, "result": {"company": 1, "companies": [1], "language": "en",
                    "language_direction": "ltr"}})
                .to_string(),
            ),
    )
}

/// A call in session `n` (the context last among the parameters), answering `answer`.
fn call(n: u32, method: &str, mut params: Vec<Value>, answer: Value) -> Exchange {
    params.push(context());
    Exchange::post(ENDPOINT)
        .with_json(json!({"id": 1, "method": method, "params": params}))
        .with_header("authorization", &auth(n))
        .respond(200, answer.to_string())
}

fn result(value: Value) -> Value {
    json!({"id": 1, "result": value})
}

fn search(n: u32, model: &str, domain: Value, found: Value) -> Exchange {
    call(
        n,
        &format!("model.{model}.search"),
        vec![domain, json!(0), json!(1), Value::Null],
        result(found),
    )
}

/// The lookup of a sale by the order id, answering `found` (`[{"id", "state",
/// "description", "lines"}]`).
fn sale_lookup(n: u32, found: Value) -> Exchange {
    call(
        n,
        "model.sale.sale.search_read",
        vec![
            json!([["reference", "=", "Q-00101-P"]]),
            json!(0),
            json!(1),
            Value::Null,
            json!(["state", "description", "lines"]),
        ],
        result(found),
    )
}

/// The party's address (70) and the payment term Net30 (3).
fn address_and_terms(n: u32) -> [Exchange; 2] {
    [
        search(n, "party.address", json!([["party", "=", 7]]), json!([70])),
        search(
            n,
            "account.invoice.payment_term",
            json!([["name", "=", "Net30"]]),
            json!([3]),
        ),
    ]
}

fn products(n: u32, found: Value) -> Exchange {
    call(
        n,
        "model.product.product.search_read",
        vec![
            json!([["code", "in", ["HW-LAP-14", "HW-DOCK-C"]]]),
            json!(0),
            Value::Null,
            Value::Null,
            json!([
                "code",
                "sale_uom",
                "default_uom",
                "template.account_category.customer_taxes_used"
            ]),
        ],
        result(found),
    )
}

/// The two products: the laptop with customer tax 5, the dock with none.
fn both_products() -> Value {
    json!([{"id": 11, "code": "HW-LAP-14", "sale_uom": 1, "default_uom": 1,
            "template.": {"id": 21, "account_category.": {"id": 31, "customer_taxes_used": [5]}}},
           {"id": 12, "code": "HW-DOCK-C", "sale_uom": null, "default_uom": 3,
            "template.": {"id": 22, "account_category.": null}}])
}

/// The sale Tryton is asked to create for the plain order (party 7 at address 70,
/// currency 2, payment term 3; the laptop with its tax).
fn sale() -> Value {
    json!({
        "party": 7,
        "invoice_address": 70,
        "shipment_address": 70,
        "currency": 2,
        "payment_term": 3,
        "reference": "Q-00101-P",
        "description": "Quote Q-00101 (Physical), PO 4500012345",
        "lines": [["create", [
            {"type": "line", "sequence": 10, "product": 11, "unit": 1, "quantity": 3.0,
             "unit_price": {"__class__": "Decimal", "decimal": "1169.1"},
             "description": "Field Laptop 14", "taxes": [["add", [5]]]},
            {"type": "line", "sequence": 20, "product": 12, "unit": 3, "quantity": 3.0,
             "unit_price": {"__class__": "Decimal", "decimal": "246.2"},
             "description": "USB-C Dock"},
        ]]],
    })
}

#[test]
fn an_order_becomes_a_draft_sale_and_the_session_is_kept() {
    let host = login(configured(), 1)
        .exchange(sale_lookup(1, json!([])))
        .exchange(search(
            1,
            "party.party",
            json!([["code", "=", "0015g00000XyZ12AAB"]]),
            json!([7]),
        ))
        .exchange(search(
            1,
            "currency.currency",
            json!([["code", "=", "EUR"]]),
            json!([2]),
        ))
        .exchange(address_and_terms(1)[0].clone())
        .exchange(address_and_terms(1)[1].clone())
        .exchange(products(1, both_products()))
        .exchange(call(
            1,
            "model.sale.sale.create",
            vec![json!([sale()])],
            result(json!([42])),
        ));
    assert_eq!(
        deliver(&host, &order()),
        Ok(Receipt {
            reference: "sale.sale/42".into(),
            detail: Some("draft sale created".into()),
        })
    );
    host.assert_all_exchanged();
    let requests = host.requests();
    assert_eq!(requests.len(), 9);
    assert_eq!(
        requests[0].header("authorization"),
        None,
        "the login carries none"
    );
    assert_eq!(requests[8].json()["params"][0][0], sale());
    // The session is kept for the next delivery.
    let kept: Value = serde_json::from_slice(&host.kv_value("session").unwrap()).unwrap();
    assert_eq!(
        kept,
        json!({"authorization": auth(1), "context": context()})
    );
}

#[test]
fn a_kept_session_is_reused_and_renewed_once_when_refused() {
    // Reused: no login, and a sale already there is the receipt.
    let host = configured()
        .kv("session", &session(1))
        .exchange(sale_lookup(1, json!([{"id": 5, "state": "draft", "description": "Quote Q-00101 (Physical), PO 4500012345", "lines": [101, 102]}])));
    assert_eq!(
        deliver(&host, &order()),
        Ok(Receipt {
            reference: "sale.sale/5".into(),
            detail: Some("draft sale already created".into()),
        })
    );
    assert_eq!(host.requests().len(), 1);

    // Expired: Tryton answers 401, the sink logs in again and keeps the new session.
    let expired = Exchange::post(ENDPOINT)
        .with_header("authorization", &auth(1))
        .respond(401, "");
    let host = login(configured().kv("session", &session(1)).exchange(expired), 2)
        .exchange(sale_lookup(2, json!([{"id": 5, "state": "draft", "description": "Quote Q-00101 (Physical), PO 4500012345", "lines": [101, 102]}])));
    assert_eq!(deliver(&host, &order()).unwrap().reference, "sale.sale/5");
    host.assert_all_exchanged();
    let kept: Value = serde_json::from_slice(&host.kv_value("session").unwrap()).unwrap();
    assert_eq!(kept["authorization"], auth(2));
}

#[test]
fn missing_parties_and_products_are_rejected_by_name() {
    let mut order = order();
    // The customer master's Tryton code is the party's code.
    order
        .customer
        .external_ids
        .insert("tryton".into(), "C-0001".into());
    let host = configured()
        .kv("session", &session(1))
        .exchange(sale_lookup(1, json!([])))
        .exchange(search(
            1,
            "party.party",
            json!([["code", "=", "C-0001"]]),
            json!([]),
        ))
        .exchange(search(
            1,
            "currency.currency",
            json!([["code", "=", "EUR"]]),
            json!([2]),
        ))
        .exchange(address_and_terms(1)[1].clone())
        .exchange(products(1, json!([both_products()[0].clone()])));
    assert_eq!(
        deliver(&host, &order),
        Err(Failure::Rejected(vec![
            "customer `0015g00000XyZ12AAB` (Northwind Traders GmbH) is not a Tryton party".into(),
            "line 20: product `HW-DOCK-C` is not a Tryton product".into(),
        ]))
    );
    host.assert_all_exchanged();
    assert_eq!(host.requests().len(), 5, "nothing created");
}

#[test]
fn tryton_refusing_the_sale_is_rejected_with_its_message() {
    let host = configured()
        .kv("session", &session(1))
        .exchange(sale_lookup(1, json!([])))
        .exchange(search(
            1,
            "party.party",
            json!([["code", "=", "0015g00000XyZ12AAB"]]),
            json!([7]),
        ))
        .exchange(search(
            1,
            "currency.currency",
            json!([["code", "=", "EUR"]]),
            json!([2]),
        ))
        .exchange(address_and_terms(1)[0].clone())
        .exchange(address_and_terms(1)[1].clone())
        .exchange(products(1, both_products()))
        .exchange(call(
            1,
            "model.sale.sale.create",
            vec![json!([sale()])],
            json!({"id": 1, "error": ["UserError", ["The party has no invoice address.", ""]]}),
        ));
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Rejected(vec![
            "Tryton: UserError: The party has no invoice address.".into()
        ]))
    );
}

#[test]
fn tryton_unavailable_is_retryable() {
    let host = configured().kv("session", &session(1)).exchange(
        Exchange::post(ENDPOINT)
            .with_header("authorization", &auth(1))
            .respond(503, "Service Unavailable"),
    );
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Retryable(
            "Tryton: HTTP 503: Service Unavailable".into()
        ))
    );
    // A server fault Tryton reports in its answer.
    let host = configured()
        .kv("session", &session(1))
        .exchange(Exchange::post(ENDPOINT).respond(
            200,
            r#"{"id": 1, "error": ["DatabaseOperationalError", []]}"#,
        ));
    assert!(matches!(
        deliver(&host, &order()),
        Err(Failure::Retryable(_))
    ));
}

#[test]
fn a_refused_login_or_a_missing_setting_is_invalid() {
    let host = configured().exchange(Exchange::post(ENDPOINT).respond(
        200,
        r#"{"id": 0, "error": ["LoginException", ["password", "Password", "password"]]}"#,
    ));
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Invalid(
            "Tryton refused the login of `admin`: check the user and the secret".into()
        ))
    );
    assert!(host.kv_value("session").is_none());

    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com");
    assert_eq!(
        deliver(&host, &order()),
        Err(Failure::Invalid(
            "configuration key `database` is not set".into()
        ))
    );
    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com")
        .config("database", "prod");
    assert!(matches!(
        deliver(&host, &order()),
        Err(Failure::Invalid(why)) if why.contains("tryton_password")
    ));
    assert!(host.requests().is_empty());
}

#[test]
fn another_revision_of_a_draft_sale_replaces_its_lines() {
    let mut order = order();
    order.revision = Some("2026-11-27T10:00:00Z".into());
    order.lines[0].quantity = 5.into();
    let mut changes = sale();
    changes.as_object_mut().unwrap().remove("reference");
    changes["description"] =
        json!("Quote Q-00101 (Physical), PO 4500012345, revision 2026-11-27T10:00:00Z");
    changes["lines"][0][1][0]["quantity"] = json!(5.0);
    changes["lines"] = json!([["delete", [101, 102]], changes["lines"][0].clone()]);
    let host = configured()
        .kv("session", &session(1))
        .exchange(sale_lookup(
            1,
            json!([{"id": 5, "state": "draft", "description": "Quote Q-00101 (Physical), PO 4500012345", "lines": [101, 102]}]),
        ))
        .exchange(search(
            1,
            "party.party",
            json!([["code", "=", "0015g00000XyZ12AAB"]]),
            json!([7]),
        ))
        .exchange(search(
            1,
            "currency.currency",
            json!([["code", "=", "EUR"]]),
            json!([2]),
        ))
        .exchange(address_and_terms(1)[0].clone())
        .exchange(address_and_terms(1)[1].clone())
        .exchange(products(1, both_products()))
        .exchange(call(
            1,
            "model.sale.sale.write",
            vec![json!([5]), changes],
            result(Value::Null),
        ));
    assert_eq!(
        deliver(&host, &order),
        Ok(Receipt {
            reference: "sale.sale/5".into(),
            detail: Some("draft sale revised".into()),
        })
    );
    host.assert_all_exchanged();
}
