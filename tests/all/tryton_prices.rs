//! The `tryton-prices` API plugin against a real Tryton (trytond 8.2 with the sale
//! and sale price list modules, set up by `scripts/tryton/setup.sh`), through the
//! `tenon` binary: list prices and a customer's price-list prices for a quantity,
//! exact, in the company's currency; unknown codes refused by name; bad input; a
//! misconfigured connection; Tryton stopped.

use crate::support::{Tenon, Workspace};
use crate::tryton::{DATABASE, PASSWORD, Tryton};
use serde_json::{Value, json};
use tenon_cli::client;

/// Northwind has no price list (it pays the list price); Contoso's price list takes
/// 5% off the list price, 10% from 10 units (scripts/tryton/setup_data.py).
const NORTHWIND: &str = "0015g00000XyZ12AAB";
const CONTOSO: &str = "0015g00000XyZ34AAB";

fn config(tryton_url: &str) -> String {
    format!(
        r#"
[secrets]
tryton_password = {{ file = "tryton-password.txt" }}
wrong_password = {{ file = "wrong-password.txt" }}

[plugins.tryton-prices]
path = "plugins/tryton-prices"
secrets = ["tryton_password"]
config = {{ url = "{tryton_url}", database = "{DATABASE}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[plugins.tryton-prices-misconfigured]
path = "plugins/tryton-prices"
secrets = {{ tryton_password = "wrong_password" }}
config = {{ url = "{tryton_url}", database = "{DATABASE}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[apis.prices]
plugin = "tryton-prices"
methods = ["GET"]
path = "/products/{{code}}"
deadline_ms = 5000
cache_ttl_secs = 0

[apis.prices-misconfigured]
plugin = "tryton-prices-misconfigured"
methods = ["GET"]
path = "/products/{{code}}"
deadline_ms = 5000
"#
    )
}

/// `GET /v1/apis/prices/products/<path>` with the admin key.
async fn price(tenon: &Tenon, path: &str) -> client::Response {
    tenon
        .request("GET", &format!("/v1/apis/prices/products/{path}"), None)
        .await
}

/// A 200 answer's JSON.
fn answer(reply: &client::Response) -> Value {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 200, "{body}");
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/json"),
        "{body}"
    );
    reply.json().unwrap()
}

/// A failure's problem document, checking its status.
fn problem(reply: &client::Response, status: u16) -> Value {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/problem+json"),
        "{body}"
    );
    reply.json().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prices_come_from_tryton_exactly_and_failures_answer_by_class() {
    let tryton = Tryton::start().await;
    let ws = Workspace::new();
    ws.write_config(&config(&tryton.url));
    std::fs::write(
        ws.path().join("tryton-password.txt"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    std::fs::write(ws.path().join("wrong-password.txt"), "not-the-password\n").unwrap();
    let tenon = Tenon::start(&ws);

    // A known product: its list price as seeded (1299 EUR the unit), and the sale
    // price of one unit without a customer, which is the list price (Tryton's
    // `round_price`: 4 decimals).
    let laptop = |quantity: &str, unit_price: &str, customer: Value, price_list: Value| {
        json!({
            "code": "HW-LAP-14",
            "name": "Laptop 14",
            "currency": "EUR",
            "list_price": "1299",
            "list_price_unit": "u",
            "quantity": quantity,
            "unit": "u",
            "unit_price": unit_price,
            "customer": customer,
            "price_list": price_list,
        })
    };
    assert_eq!(
        answer(&price(&tenon, "HW-LAP-14").await),
        laptop("1", "1299.0000", Value::Null, Value::Null)
    );
    let dock = answer(&price(&tenon, "HW-DOCK-C?quantity=2").await);
    assert_eq!(
        (&dock["name"], &dock["list_price"], &dock["unit_price"]),
        (&json!("USB-C Dock"), &json!("259"), &json!("259.0000"))
    );

    // A customer without a price list pays the list price; Contoso's price list
    // gives 5% off, and 10% from 10 units (computed by Tryton).
    let contoso = Some("Contoso Retail");
    for (quantity, customer, unit_price, price_list) in [
        ("3", NORTHWIND, "1299.0000", None),
        ("3", CONTOSO, "1234.0500", contoso),
        ("10", CONTOSO, "1169.1000", contoso),
    ] {
        let query = format!("HW-LAP-14?customer={customer}&quantity={quantity}");
        assert_eq!(
            answer(&price(&tenon, &query).await),
            laptop(quantity, unit_price, json!(customer), json!(price_list)),
            "{query}"
        );
    }
    let fractional = format!("HW-LAP-14?quantity=12.5&customer={CONTOSO}");
    let fractional = answer(&price(&tenon, &fractional).await);
    assert_eq!(
        (&fractional["quantity"], &fractional["unit_price"]),
        (&json!("12.5"), &json!("1169.1000"))
    );

    // Unknown codes: 422, every one named.
    let refused = problem(&price(&tenon, "HW-NOPE").await, 422);
    assert_eq!(refused["type"], "urn:tenon:problem:rejected");
    assert_eq!(
        refused["reasons"],
        json!(["product `HW-NOPE` is not a Tryton product"])
    );
    let both = price(&tenon, "HW-NOPE?customer=0015g00000NOPE00AAA").await;
    let refused = problem(&both, 422);
    assert_eq!(
        refused["reasons"],
        json!([
            "product `HW-NOPE` is not a Tryton product",
            "customer `0015g00000NOPE00AAA` is not a Tryton party",
        ])
    );
    // A product that is bought, never sold.
    let refused = problem(&price(&tenon, "HW-FAN-SP").await, 422);
    assert_eq!(
        refused["reasons"],
        json!(["product `HW-FAN-SP` is not for sale"])
    );

    // Bad input: 400, saying what is wrong.
    const QUANTITY: &str = "`quantity` must be a positive decimal number";
    for (path, says) in [
        ("HW-LAP-14?quantity=abc", QUANTITY),
        ("HW-LAP-14?quantity=0", QUANTITY),
        ("HW-LAP-14?quantity=-3", QUANTITY),
        ("HW-LAP-14?quantity=1e3", QUANTITY),
        ("HW-LAP-14?qty=3", "unknown query parameter `qty`"),
        ("HW-LAP-14?customer=", "`customer` is empty"),
        ("%20", "`code` is empty"),
    ] {
        let invalid = problem(&price(&tenon, path).await, 400);
        assert_eq!(
            invalid["type"], "urn:tenon:problem:invalid-request",
            "{path}"
        );
        assert!(
            invalid["detail"].as_str().unwrap().contains(says),
            "{path}: {invalid}"
        );
    }

    // A connection the caller cannot fix (a refused login): unavailable, not the
    // caller's fault.
    let reply = tenon
        .request(
            "GET",
            "/v1/apis/prices-misconfigured/products/HW-LAP-14",
            None,
        )
        .await;
    let unavailable = problem(&reply, 503);
    assert!(
        unavailable["detail"]
            .as_str()
            .unwrap()
            .contains("Tryton is not usable as configured: Tryton refused the login of `admin`"),
        "{unavailable}"
    );
    assert!(
        !String::from_utf8_lossy(&reply.body).contains("not-the-password"),
        "the secret never shows"
    );

    // Tryton stopped: 503, to be retried.
    drop(tryton);
    let reply = price(&tenon, "HW-LAP-14").await;
    let unavailable = problem(&reply, 503);
    assert_eq!(unavailable["type"], "urn:tenon:problem:unavailable");
    assert!(reply.header("retry-after").is_some(), "{unavailable}");
}
