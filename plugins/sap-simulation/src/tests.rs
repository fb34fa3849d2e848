//! The request, SAP's answer, and the API through its entry point in a test host (SAP's
//! CSRF flow and answers recorded; the deep insert checked against SAP's published
//! definition of the service, `tests/fixtures/public/sap_API_SALES_ORDER_SIMULATION_SRV.json`).

use super::*;
use tenon_sdk::testing::{Exchange, Host};

fn settings() -> Settings {
    Settings::from_config(|key| (key == "sales_organization").then(|| "1010".to_owned())).unwrap()
}

#[test]
fn a_request_becomes_the_documented_deep_insert() {
    let simulation = parse(
        br#"{"sold_to": "10100001", "currency": "eur", "requested_date": "2026-12-01",
             "items": [{"material": "TG11", "quantity": "2.500", "unit": "PC", "plant": "1010"},
                       {"material": "TG12", "quantity": 5}]}"#,
    )
    .unwrap();
    assert_eq!(
        simulation_body(&simulation, &settings()),
        json!({
            "SalesOrderType": "OR",
            "SalesOrganization": "1010",
            "DistributionChannel": "10",
            "OrganizationDivision": "00",
            "SoldToParty": "10100001",
            "TransactionCurrency": "EUR",
            "RequestedDeliveryDate": "/Date(1796083200000)/",
            "to_Pricing": {},
            "to_Item": {"results": [
                {"SalesOrderItem": "10", "Material": "TG11", "RequestedQuantity": "2.5",
                 "RequestedQuantityUnit": "PC", "Plant": "1010",
                 "to_PricingElement": {"results": []}, "to_ScheduleLine": {"results": []}},
                {"SalesOrderItem": "20", "Material": "TG12", "RequestedQuantity": "5",
                 "to_PricingElement": {"results": []}, "to_ScheduleLine": {"results": []}},
            ]},
        })
    );
}

#[test]
fn bad_requests_are_invalid_with_every_reason() {
    let Err(Failure::Invalid(why)) = parse(
        br#"{"sold_to": "12345678901", "currency": "EURO", "requested_date": "1.12.2026",
             "items": [{"material": "", "quantity": 2.5}, {"material": "TG11", "quantity": "-1"},
                       {"material": "TG11", "quantity": "1.0001", "plant": "10100"}]}"#,
    ) else {
        panic!("not invalid")
    };
    assert_eq!(
        why,
        "`sold_to` `12345678901` is longer than SAP's 10 characters; \
         `currency`: `EURO` is not an ISO 4217 currency code (three letters, e.g. EUR); \
         `requested_date` `1.12.2026` is not a date YYYY-MM-DD; \
         item 1: `material` is empty; \
         item 1: quantity 2.5 is not a decimal: give it as a string such as \"2.5\"; \
         item 2: quantity -1 is not positive; \
         item 3: quantity 1.0001 does not fit SAP's Edm.Decimal(15, 3); \
         item 3: plant `10100` is longer than SAP's 4 characters"
    );
    for (body, expected) in [
        (&b""[..], "POST a JSON body"),
        (br#"{"sold_to": "1", "items": []}"#, "`items` is empty"),
        (
            br#"{"sold_to": "1", "items": [], "colour": 1}"#,
            "unknown field `colour`",
        ),
        (br#"{"items": []}"#, "missing field `sold_to`"),
    ] {
        let Err(Failure::Invalid(why)) = parse(body) else {
            panic!("not invalid")
        };
        assert!(why.contains(expected), "{why}");
    }
}

#[test]
fn the_answer_is_read_from_sap_s_with_exact_amounts_and_dates() {
    let simulation = parse(
        br#"{"sold_to": "10100001", "items": [{"material": "TG12", "quantity": "5"},
                                             {"material": "TG14", "quantity": "1"}]}"#,
    )
    .unwrap();
    let sap = json!({"d": {
        "SalesOrder": "", "SoldToParty": "10100001", "TransactionCurrency": "EUR",
        "to_Pricing": {"TotalNetAmount": "44.950", "TransactionCurrency": "EUR"},
        "to_Item": {"results": [
            {"SalesOrderItem": "000010", "Material": "TG12", "Plant": "1010",
             "RequestedQuantityUnit": "PC", "NetAmount": "39.950", "TaxAmount": "7.590",
             "to_PricingElement": {"results": [
                {"ConditionType": "PPR0", "ConditionRateValue": "7.990000000",
                 "ConditionQuantity": "1", "ConditionQuantityUnit": "PC"},
                {"ConditionType": "TTX1", "ConditionRateValue": "19.000000000"}]},
             "to_ScheduleLine": {"results": [
                {"ScheduleLine": "2", "ConfirmedDeliveryDate": "/Date(1797292800000)/",
                 "ConfdOrderQtyByMatlAvailCheck": "2.000"},
                {"ScheduleLine": "1", "ConfirmedDeliveryDate": "/Date(1796083200000)/",
                 "ConfdOrderQtyByMatlAvailCheck": "3.000"}]}},
            {"SalesOrderItem": "20", "Material": "TG14", "NetAmount": "5", "TaxAmount": "0.95",
             "to_ScheduleLine": {"results": [
                {"ScheduleLine": "1", "ConfirmedDeliveryDate": "/Date(1796083200000)/",
                 "ConfdOrderQtyByMatlAvailCheck": "0"}]}},
        ]},
    }});
    let answer = answer(&simulation, &settings(), &sap).unwrap();
    assert_eq!(answer["net_amount"], "44.95");
    assert_eq!(answer["tax_amount"], "8.54");
    assert_eq!(answer["gross_amount"], "53.49");
    assert_eq!(answer["available_on"], Value::Null);
    assert_eq!(
        answer["items"][0],
        json!({"item": "10", "material": "TG12", "plant": "1010", "quantity": "5",
               "unit": "PC", "net_amount": "39.95", "tax_amount": "7.59",
               "price": {"condition_type": "PPR0", "amount": "7.99", "per": "1", "unit": "PC"},
               "confirmed_quantity": "5", "available_on": "2026-12-15",
               "schedule": [{"date": "2026-12-01", "quantity": "3"},
                            {"date": "2026-12-15", "quantity": "2"}]})
    );
    assert_eq!(answer["items"][1]["confirmed_quantity"], "0");
    assert_eq!(answer["items"][1]["available_on"], Value::Null);
    assert_eq!(answer["items"][1]["price"], Value::Null);
    assert_eq!(answer["items"][1]["net_amount"], "5.00");
}

#[test]
fn sap_failures_are_classified() {
    let body = br#"{"error":{"code":"V1/392","message":{"lang":"en","value":"Material TG99 is not defined"}}}"#;
    assert_eq!(
        sap_failure(400, body),
        Failure::Rejected(vec!["SAP: Material TG99 is not defined (V1/392)".into()])
    );
    assert!(matches!(sap_failure(503, b"down"), Failure::Retryable(_)));
    assert!(matches!(sap_failure(429, b""), Failure::Retryable(_)));
    assert!(matches!(sap_failure(401, b""), Failure::Retryable(_)));
    assert!(matches!(sap_failure(403, b""), Failure::Retryable(_)));
    assert_eq!(
        exchange_failure(sap_odata::failure(401, b"Logon failed")),
        Failure::Retryable(
            "SAP HTTP 401: Logon failed (check the user and password secrets)".into()
        )
    );
}

const OPENAPI: &str =
    include_str!("../../../tests/fixtures/public/sap_API_SALES_ORDER_SIMULATION_SRV.json");
const ROOT: &str = "https://s4.example.com/sap/opu/odata/sap/API_SALES_ORDER_SIMULATION_SRV";
/// `Basic base64("TENON:s3cret")`.
const BASIC: &str = "Basic VEVOT046czNjcmV0";

fn configured() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("service_url", ROOT)
        .config("sales_organization", "1010")
        .secret("sap_user", "TENON")
        .secret("sap_password", "s3cret")
}

/// SAP handing out token `n` with the cookies of session `n`.
fn token(n: u32) -> Exchange {
    Exchange::get(&format!("{ROOT}/"))
        .with_header("x-csrf-token", "Fetch")
        .with_header("authorization", BASIC)
        .respond(200, "{}")
        .respond_header("x-csrf-token", &format!("csrf-{n}"))
        .respond_header("set-cookie", &format!("SAP_SESSIONID_S4H_100={n}; path=/"))
        .respond_header("set-cookie", "sap-usercontext=sap-client=100; path=/")
}

/// The simulation with token `n` and its session's cookies, answered `status`.
fn simulation(n: u32, status: u16, answer: &Value) -> Exchange {
    Exchange::post(&format!("{ROOT}/A_SalesOrderSimulation"))
        .with_header("x-csrf-token", &format!("csrf-{n}"))
        .with_header(
            "cookie",
            &format!("SAP_SESSIONID_S4H_100={n}; sap-usercontext=sap-client=100"),
        )
        .with_header("authorization", BASIC)
        .respond(status, answer.to_string())
}

fn ask(body: &Value) -> Request {
    Request {
        method: "POST".into(),
        path: "/".into(),
        content_type: "application/json".into(),
        body: body.to_string().into_bytes(),
        ..Request::default()
    }
}

fn simulate(host: &Host, body: &Value) -> Result<Value, Failure> {
    let response = host.run(|| simulate_sales_order(ask(body)))?;
    assert_eq!(
        (response.status, response.content_type.as_str()),
        (200, "application/json")
    );
    Ok(serde_json::from_slice(&response.body).unwrap())
}

/// Two items, one partly in stock until a restock.
fn two_items() -> Value {
    json!({"sold_to": "10100001", "currency": "EUR", "requested_date": "2026-12-01",
           "items": [{"material": "TG12", "quantity": "5", "unit": "PC"},
                     {"material": "TG14", "quantity": 1, "plant": "1010"}]})
}

/// SAP's answer to [`two_items`].
fn sap_answer() -> Value {
    json!({"d": {
        "SalesOrder": "", "SoldToParty": "10100001", "TransactionCurrency": "EUR",
        "to_Pricing": {"TotalNetAmount": "44.950", "TransactionCurrency": "EUR"},
        "to_Item": {"results": [
            {"SalesOrderItem": "000010", "Material": "TG12", "Plant": "1010",
             "RequestedQuantityUnit": "PC", "NetAmount": "39.950", "TaxAmount": "7.590",
             "to_PricingElement": {"results": [
                {"ConditionType": "PPR0", "ConditionRateValue": "7.990000000",
                 "ConditionQuantity": "1", "ConditionQuantityUnit": "PC"}]},
             "to_ScheduleLine": {"results": [
                {"ScheduleLine": "1", "ConfirmedDeliveryDate": "/Date(1796083200000)/",
                 "ConfdOrderQtyByMatlAvailCheck": "3.000"},
                {"ScheduleLine": "2", "ConfirmedDeliveryDate": "/Date(1797292800000)/",
                 "ConfdOrderQtyByMatlAvailCheck": "2.000"}]}},
            {"SalesOrderItem": "000020", "Material": "TG14", "Plant": "1010",
             "RequestedQuantityUnit": "PC", "NetAmount": "5", "TaxAmount": "0.95",
             "to_ScheduleLine": {"results": [
                {"ScheduleLine": "1", "ConfirmedDeliveryDate": "/Date(1796083200000)/",
                 "ConfdOrderQtyByMatlAvailCheck": "1"}]}},
        ]},
    }})
}

/// Every property of `body` is one of the `-create` schema of `entity_type`, and each
/// navigation property's items are checked against their own.
fn assert_creatable(entity_type: &str, body: &Value) {
    let openapi: Value = serde_json::from_str(OPENAPI).unwrap();
    let schemas = &openapi["components"]["schemas"];
    let schema = &schemas[format!("API_SALES_ORDER_SIMULATION_SRV.{entity_type}-create")];
    let properties = schema["properties"].as_object().unwrap();
    for (name, value) in body.as_object().unwrap() {
        assert!(
            properties.contains_key(name),
            "{entity_type}-create has no {name}"
        );
        if let Some(max) = properties[name]["maxLength"].as_u64() {
            let text = value.as_str().unwrap();
            assert!(text.chars().count() as u64 <= max, "{name} `{text}`");
        }
    }
}

#[test]
fn prices_and_availability_come_from_one_simulation_through_the_csrf_flow() {
    let host = configured()
        .exchange(token(1))
        .exchange(simulation(1, 201, &sap_answer()));
    let answer = simulate(&host, &two_items()).unwrap();
    assert_eq!(
        answer,
        json!({
            "sold_to": "10100001", "currency": "EUR",
            "net_amount": "44.95", "tax_amount": "8.54", "gross_amount": "53.49",
            "available_on": "2026-12-15",
            "items": [
                {"item": "10", "material": "TG12", "plant": "1010", "quantity": "5",
                 "unit": "PC", "net_amount": "39.95", "tax_amount": "7.59",
                 "price": {"condition_type": "PPR0", "amount": "7.99", "per": "1", "unit": "PC"},
                 "confirmed_quantity": "5", "available_on": "2026-12-15",
                 "schedule": [{"date": "2026-12-01", "quantity": "3"},
                              {"date": "2026-12-15", "quantity": "2"}]},
                {"item": "20", "material": "TG14", "plant": "1010", "quantity": "1",
                 "unit": "PC", "net_amount": "5.00", "tax_amount": "0.95", "price": null,
                 "confirmed_quantity": "1", "available_on": "2026-12-01",
                 "schedule": [{"date": "2026-12-01", "quantity": "1"}]},
            ],
        })
    );
    host.assert_all_exchanged();
    // What SAP was asked: the documented deep insert, every property SAP's.
    let sent = host.requests().pop().unwrap();
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let body = sent.json();
    assert_eq!(
        body,
        json!({
            "SalesOrderType": "OR", "SalesOrganization": "1010",
            "DistributionChannel": "10", "OrganizationDivision": "00",
            "SoldToParty": "10100001", "TransactionCurrency": "EUR",
            "RequestedDeliveryDate": "/Date(1796083200000)/",
            "to_Pricing": {},
            "to_Item": {"results": [
                {"SalesOrderItem": "10", "Material": "TG12", "RequestedQuantity": "5",
                 "RequestedQuantityUnit": "PC",
                 "to_PricingElement": {"results": []}, "to_ScheduleLine": {"results": []}},
                {"SalesOrderItem": "20", "Material": "TG14", "RequestedQuantity": "1",
                 "Plant": "1010",
                 "to_PricingElement": {"results": []}, "to_ScheduleLine": {"results": []}},
            ]},
        })
    );
    let mut header = body.clone();
    for navigation in ["to_Item", "to_Pricing"] {
        header.as_object_mut().unwrap().remove(navigation);
    }
    assert_creatable("A_SalesOrderSimulationType", &header);
    for item in body["to_Item"]["results"].as_array().unwrap() {
        let mut item = item.clone();
        for navigation in ["to_PricingElement", "to_ScheduleLine"] {
            item.as_object_mut().unwrap().remove(navigation);
        }
        assert_creatable("A_SalesOrderItemSimulationType", &item);
    }
}

#[test]
fn an_expired_token_is_fetched_again_once() {
    let required = json!({"error": {"code": "/IWFND/CM_COS/011",
        "message": {"lang": "en", "value": "CSRF token validation failed"}}});
    let host = configured()
        .exchange(token(1))
        .exchange(simulation(1, 403, &required).respond_header("x-csrf-token", "Required"))
        .exchange(token(2))
        .exchange(simulation(2, 201, &sap_answer()));
    assert_eq!(
        simulate(&host, &two_items()).unwrap()["net_amount"],
        "44.95"
    );
    host.assert_all_exchanged();
}

#[test]
fn sap_refusing_the_simulation_is_rejected_with_every_message() {
    let refusal = json!({"error": {"code": "V1/392",
        "message": {"lang": "en", "value": "Material TG99 is not defined"},
        "innererror": {"errordetails": [
            {"code": "V1/392", "message": "Material TG99 is not defined", "severity": "error"},
            {"code": "V1/320", "message": "Sold-to party 10100001 is blocked", "severity": "error"}]}}});
    let host = configured()
        .exchange(token(1))
        .exchange(simulation(1, 400, &refusal));
    let refused = Failure::Rejected(vec![
        "SAP: Material TG99 is not defined (V1/392)".into(),
        "SAP: Sold-to party 10100001 is blocked (V1/320)".into(),
    ]);
    assert_eq!(simulate(&host, &two_items()), Err(refused.clone()));
    assert_eq!(
        host.logs(),
        [(
            "warn".to_owned(),
            format!("SAP refused the simulation for 10100001: {refused}")
        )]
    );
}

#[test]
fn a_bad_request_is_invalid_and_sap_is_not_called() {
    let host = configured();
    assert!(matches!(
        simulate(&host, &json!({"sold_to": "10100001", "items": []})),
        Err(Failure::Invalid(why)) if why.contains("`items` is empty")
    ));
    assert!(matches!(
        simulate(&host, &json!({"sold_to": "10100001", "items": [{"material": "TG11", "quantity": 2.5}]})),
        Err(Failure::Invalid(why)) if why.contains("give it as a string")
    ));
    assert!(host.requests().is_empty());
}

#[test]
fn whatever_fails_on_the_server_s_side_is_retryable() {
    // SAP down.
    let host = configured()
        .exchange(token(1))
        .exchange(simulation(1, 503, &json!("down")));
    assert!(matches!(
        simulate(&host, &two_items()),
        Err(Failure::Retryable(why)) if why.starts_with("SAP HTTP 503")
    ));
    // SAP refusing Tenon's credentials at the token fetch.
    let host =
        configured().exchange(Exchange::get(&format!("{ROOT}/")).respond(401, "Logon failed"));
    assert_eq!(
        simulate(&host, &two_items()),
        Err(Failure::Retryable(
            "SAP HTTP 401: Logon failed (check the user and password secrets)".into()
        ))
    );
    // An answer that is not JSON.
    let host = configured()
        .exchange(token(1))
        .exchange(simulation(1, 201, &json!(null)).respond(201, "<html/>"));
    assert!(matches!(
        simulate(&host, &two_items()),
        Err(Failure::Retryable(why)) if why.starts_with("SAP's simulation answer is not JSON")
    ));
    // The plugin's config: no service, a sales organization SAP cannot hold.
    let host = Host::new().with_manifest(include_str!("../plugin.toml"));
    assert_eq!(
        simulate(&host, &two_items()),
        Err(Failure::Retryable(
            "configuration key `service_url` is not set".into()
        ))
    );
    let host = configured().config("sales_organization", "10100");
    assert_eq!(
        simulate(&host, &two_items()),
        Err(Failure::Retryable(
            "config `sales_organization` `10100` is longer than SAP's 4 characters".into()
        ))
    );
    assert!(host.requests().is_empty());
}
