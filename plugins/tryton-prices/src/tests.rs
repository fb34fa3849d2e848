//! The query, the answer, and the API through its entry point in a test host.

use super::*;
use tenon_sdk::testing::{Exchange, Host};
use tryton_rpc::decimal;

fn request(code: &str, query: &[(&str, &str)]) -> Request {
    Request {
        method: "GET".into(),
        path: format!("/products/{code}"),
        params: vec![("code".into(), code.into())],
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Request::default()
    }
}

fn invalid(result: Result<Query, Failure>) -> String {
    match result {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    }
}

#[test]
fn queries_are_read_strictly() {
    assert_eq!(
        Query::from_request(&request(" P-100 ", &[])).unwrap(),
        Query {
            code: "P-100".into(),
            quantity: 1.0,
            customer: None
        }
    );
    let q = Query::from_request(&request("P", &[("quantity", "2.5"), ("customer", "C1")]));
    assert_eq!(q.unwrap().quantity, 2.5);
    for bad in [
        "0",
        "-1",
        "1e3",
        "abc",
        "",
        ".5",
        "5.",
        "1.2.3",
        "NaN",
        "inf",
        "+3",
        "1234567890123456",
    ] {
        let why = invalid(Query::from_request(&request("P", &[("quantity", bad)])));
        assert!(why.contains("`quantity`"), "{bad}: {why}");
    }
    assert_eq!(
        invalid(Query::from_request(&request("  ", &[]))),
        "`code` is empty"
    );
    assert_eq!(
        invalid(Query::from_request(&request("P", &[("qty", "3")]))),
        "unknown query parameter `qty`; use `code`, `quantity`, `customer`"
    );
    assert!(
        invalid(Query::from_request(&request(
            "P",
            &[("quantity", "1"), ("quantity", "2")]
        )))
        .contains("more than once")
    );
    assert_eq!(
        invalid(Query::from_request(&request("P", &[("customer", "")]))),
        "`customer` is empty"
    );
    let no_code = Request::default();
    assert_eq!(invalid(Query::from_request(&no_code)), "`code` is required");
}

fn product(salable: bool, price: Option<&str>) -> Value {
    json!({
        "id": 4, "code": "HW-LAP-14", "name": "Laptop 14", "salable": salable,
        "list_price_used": decimal("1299"),
        "sale_price_uom": price.map(decimal),
        "default_uom": 1, "default_uom.": {"id": 1, "symbol": "u"},
        "sale_uom": 1, "sale_uom.": {"id": 1, "symbol": "u"},
    })
}

#[test]
fn answers_carry_exact_decimals() {
    let query = Query {
        code: "HW-LAP-14".into(),
        quantity: 3.0,
        customer: Some("C1".into()),
    };
    let list = PriceList::of(
        &json!({"sale_price_list": 2, "sale_price_list.": {"id": 2, "name": "Retail"}}),
        "sale_price_list",
    );
    assert_eq!(
        price_answer(&query, &product(true, Some("1234.0500")), "EUR", &list).unwrap(),
        json!({
            "code": "HW-LAP-14", "name": "Laptop 14", "currency": "EUR",
            "list_price": "1299", "list_price_unit": "u",
            "quantity": "3", "unit": "u", "unit_price": "1234.0500",
            "customer": "C1", "price_list": "Retail",
        })
    );
    assert_eq!(
        price_answer(&query, &product(false, Some("1")), "EUR", &list),
        Err(Failure::Rejected(vec![
            "product `HW-LAP-14` is not for sale".into()
        ]))
    );
    assert_eq!(
        price_answer(&query, &product(true, None), "EUR", &list),
        Err(Failure::Rejected(vec![
            "Tryton has no sale price for product `HW-LAP-14` for customer `C1` at quantity 3"
                .into()
        ]))
    );
    let mut float = product(true, None);
    float["sale_price_uom"] = json!(12.5);
    assert!(matches!(
        price_answer(&query, &float, "EUR", &list),
        Err(Failure::Retryable(_))
    ));
}

// The API through its entry point, in a test host: Tryton's JSON-RPC answers
// recorded, each request matched on its exact JSON body and its `Authorization`.

const ENDPOINT: &str = "https://erp.example.com/prod/rpc/";

fn configured() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com")
        .config("database", "prod")
        .secret("tryton_password", "tryton-pw")
}

fn auth() -> String {
    tryton_rpc::authorization("admin", &json!(1), "sess-1")
}

fn context() -> Map<String, Value> {
    let Value::Object(context) = json!({"company": 1, "companies": [1], "language": "en"}) else {
        unreachable!()
    };
    context
}

/// The login of a request (an API plugin keeps no session) and the preferences.
fn login(host: Host) -> Host {
    host.exchange(
        Exchange::post(ENDPOINT)
            .with_json(json!({"id": 0, "method": "common.db.login",
                "params": ["admin", {"password": "tryton-pw"}, "en"]}))
            .respond(200, r#"{"id": 0, "result": [1, "sess-1"]}"#),
    )
    .exchange(
        Exchange::post(ENDPOINT)
            .with_json(
                json!({"id": 0, "method": "model.res.user.get_preferences", "params": [true, {}]}),
            )
            .with_header("authorization", &auth())
            .respond(
                200,
                r#"{"id": 0, "result": {"company": 1, "companies": [1], "language": "en"}}"#,
            ),
    )
}

/// A call with the session's context plus `extra`, answering `result`.
fn call(method: &str, mut params: Vec<Value>, extra: Value, result: Value) -> Exchange {
    let mut context = context();
    if let Value::Object(extra) = extra {
        context.extend(extra);
    }
    params.push(Value::Object(context));
    Exchange::post(ENDPOINT)
        .with_json(json!({"id": 1, "method": method, "params": params}))
        .with_header("authorization", &auth())
        .respond(200, json!({"id": 1, "result": result}).to_string())
}

/// The company's currency, and whether the price list module is there.
fn company(host: Host, price_lists: bool) -> Host {
    let fields = match price_lists {
        true => json!({"sale_price_list": {"type": "many2one", "relation": "product.price_list"}}),
        false => json!({}),
    };
    host.exchange(call(
        "model.company.company.read",
        vec![json!([1]), json!(["currency.code"])],
        json!({}),
        json!([{"id": 1, "currency.": {"id": 1, "code": "EUR"}}]),
    ))
    .exchange(call(
        "model.party.party.fields_get",
        vec![json!(["sale_price_list"])],
        json!({}),
        fields,
    ))
}

fn product_read(code: &str, extra: Value, found: Value) -> Exchange {
    call(
        "model.product.product.search_read",
        vec![
            json!([["code", "=", code]]),
            json!(0),
            json!(1),
            Value::Null,
            json!(PRODUCT_FIELDS),
        ],
        extra,
        found,
    )
}

fn party_read(code: &str, found: Value) -> Exchange {
    call(
        "model.party.party.search_read",
        vec![
            json!([["code", "=", code]]),
            json!(0),
            json!(1),
            Value::Null,
            json!(["code", "name", "sale_price_list", "sale_price_list.name"]),
        ],
        json!({}),
        found,
    )
}

fn price(host: &Host, code: &str, query: &[(&str, &str)]) -> Result<Value, Failure> {
    let response = host.run(|| product_price(request(code, query)))?;
    assert_eq!(response.status, 200);
    assert_eq!(response.content_type, "application/json");
    Ok(serde_json::from_slice(&response.body).unwrap())
}

#[test]
fn a_customer_s_price_comes_from_its_price_list_for_the_quantity() {
    let host = company(login(configured()), true)
        .exchange(party_read(
            "C-CONTOSO",
            json!([{"id": 9, "code": "C-CONTOSO", "name": "Contoso Retail SAS",
                    "sale_price_list": 2, "sale_price_list.": {"id": 2, "name": "Contoso Retail"}}]),
        ))
        .exchange(product_read(
            "HW-LAP-14",
            json!({"quantity": 3.0, "customer": 9, "price_list": 2}),
            json!([product(true, Some("1169.1000"))]),
        ));
    assert_eq!(
        price(
            &host,
            "HW-LAP-14",
            &[("quantity", "3"), ("customer", "C-CONTOSO")]
        ),
        Ok(json!({
            "code": "HW-LAP-14", "name": "Laptop 14", "currency": "EUR",
            "list_price": "1299", "list_price_unit": "u",
            "quantity": "3", "unit": "u", "unit_price": "1169.1000",
            "customer": "C-CONTOSO", "price_list": "Contoso Retail",
        }))
    );
    host.assert_all_exchanged();
    let requests = host.requests();
    assert_eq!(requests[0].header("authorization"), None);
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.header("authorization") == Some(auth().as_str()))
    );
}

#[test]
fn without_a_customer_the_default_price_list_or_the_list_price_applies() {
    // The sale configuration names no default price list.
    let host = company(login(configured()), true)
        .exchange(call(
            "model.sale.configuration.read",
            vec![
                json!([1]),
                json!(["sale_price_list", "sale_price_list.name"]),
            ],
            json!({}),
            json!([{"id": 1, "sale_price_list": null}]),
        ))
        .exchange(product_read(
            "HW-LAP-14",
            json!({"quantity": 1.0}),
            json!([product(true, Some("1299.0000"))]),
        ));
    let answer = price(&host, "HW-LAP-14", &[]).unwrap();
    assert_eq!(
        (
            &answer["unit_price"],
            &answer["price_list"],
            &answer["customer"]
        ),
        (&json!("1299.0000"), &Value::Null, &Value::Null)
    );
    host.assert_all_exchanged();

    // Without the price list module, nothing is asked about price lists.
    let host = company(login(configured()), false).exchange(product_read(
        "HW-LAP-14",
        json!({"quantity": 2.5}),
        json!([product(true, Some("1299.0000"))]),
    ));
    assert_eq!(
        price(&host, "HW-LAP-14", &[("quantity", "2.5")]).unwrap()["quantity"],
        "2.5"
    );
    host.assert_all_exchanged();
}

#[test]
fn unknown_products_and_customers_are_rejected_by_name() {
    let host = company(login(configured()), true)
        .exchange(party_read("C-NOBODY", json!([])))
        .exchange(product_read("HW-NONE", json!({"quantity": 1.0}), json!([])));
    assert_eq!(
        price(&host, "HW-NONE", &[("customer", "C-NOBODY")]),
        Err(Failure::Rejected(vec![
            "product `HW-NONE` is not a Tryton product".into(),
            "customer `C-NOBODY` is not a Tryton party".into(),
        ]))
    );
    host.assert_all_exchanged();
    // Known, but not for sale.
    let host = company(login(configured()), false).exchange(product_read(
        "HW-LAP-14",
        json!({"quantity": 1.0}),
        json!([product(false, Some("1299"))]),
    ));
    assert_eq!(
        price(&host, "HW-LAP-14", &[]),
        Err(Failure::Rejected(vec![
            "product `HW-LAP-14` is not for sale".into()
        ]))
    );
}

#[test]
fn a_bad_query_is_invalid_before_tryton_is_asked() {
    let host = configured();
    assert_eq!(
        price(&host, "HW-LAP-14", &[("qty", "3")]),
        Err(Failure::Invalid(
            "unknown query parameter `qty`; use `code`, `quantity`, `customer`".into()
        ))
    );
    assert!(matches!(
        price(&host, "HW-LAP-14", &[("quantity", "-1")]),
        Err(Failure::Invalid(_))
    ));
    assert!(host.requests().is_empty());
}

#[test]
fn a_misconfigured_connection_or_tryton_down_is_retryable() {
    // A refused login: the operator's to fix, logged for them; the caller can only wait.
    let host = configured().exchange(Exchange::post(ENDPOINT).respond(
        200,
        r#"{"id": 0, "error": ["LoginException", ["password", "Password", "password"]]}"#,
    ));
    let why = "Tryton is not usable as configured: Tryton refused the login of `admin`: check the user and the secret";
    assert_eq!(
        price(&host, "HW-LAP-14", &[]),
        Err(Failure::Retryable(why.into()))
    );
    assert_eq!(host.logs(), [("error".to_owned(), why.to_owned())]);

    // No database configured.
    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com")
        .secret("tryton_password", "tryton-pw");
    assert_eq!(
        price(&host, "HW-LAP-14", &[]),
        Err(Failure::Retryable(
            "Tryton is not usable as configured: configuration key `database` is not set".into()
        ))
    );

    // Tryton down.
    let host = configured().exchange(Exchange::post(ENDPOINT).respond(502, "Bad Gateway"));
    assert_eq!(
        price(&host, "HW-LAP-14", &[]),
        Err(Failure::Retryable("Tryton: HTTP 502: Bad Gateway".into()))
    );
    assert!(host.logs().is_empty());
}
