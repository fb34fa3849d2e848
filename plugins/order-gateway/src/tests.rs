//! The gateway through its entry point, in a test host: the example's customers
//! (`examples/quote-to-cash/samples/customers.json`) kept in key-value storage, then
//! the plain quote's order (`expected/plain.orders.json`) checked against them.

use super::*;
use serde_json::{Value, json};
use tenon_sdk::testing::Host;

const CUSTOMERS: &str = include_str!("../../../examples/quote-to-cash/samples/customers.json");
const ORDERS: &str = include_str!("../../../examples/quote-to-cash/expected/plain.orders.json");

const NORTHWIND: &str = "0015g00000XyZ12AAB";

/// The example's customers as the canonical source makes them: JSON messages.
fn customers() -> Vec<Message> {
    let posted: Vec<Value> = serde_json::from_str(CUSTOMERS).unwrap();
    posted
        .iter()
        .map(|c| {
            Message::encode_as(
                Encoding::Json,
                c["kind"].as_str().unwrap(),
                c["key"].as_str().unwrap(),
                &c["body"],
            )
            .unwrap()
        })
        .collect()
}

fn order() -> Order {
    let orders: Value = serde_json::from_str(ORDERS).unwrap();
    serde_json::from_value(orders[0]["body"].clone()).unwrap()
}

/// The order as quote-to-order sends it on, with a header that must travel on.
fn order_message(order: &Order) -> Message {
    let mut message = Message::encode(kinds::ORDER_DRAFTED, "Q-00101", order).unwrap();
    message.headers.push((
        "traceparent".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    ));
    message
}

fn gateway() -> Host {
    Host::new().with_manifest(include_str!("../plugin.toml"))
}

fn rejected(result: Result<Vec<Message>, Failure>) -> Vec<String> {
    match result {
        Err(Failure::Rejected(reasons)) => reasons,
        other => panic!("not rejected: {other:?}"),
    }
}

#[test]
fn customers_are_kept_and_complete_the_orders_that_pass() {
    let host = gateway();
    for customer in customers() {
        assert_eq!(host.run(|| validate_order(customer)), Ok(Vec::new()));
    }
    let kept: Value =
        serde_json::from_slice(&host.kv_value(&format!("customer/{NORTHWIND}")).unwrap()).unwrap();
    assert_eq!(
        kept,
        json!({"id": NORTHWIND, "name": "Northwind Traders GmbH", "country": "DE"})
    );
    assert!(host.kv_value("customer/0015g00000XyZ34AAB").is_some());

    let input = order_message(&order());
    let out = host.run(|| validate_order(input.clone())).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].kind.as_str(),
            out[0].key.as_str(),
            out[0].content_type.as_str()
        ),
        (
            kinds::ORDER_ACCEPTED,
            input.key.as_str(),
            input.content_type.as_str()
        ),
        "a drafted order that passes is accepted"
    );
    assert_eq!(out[0].headers, input.headers, "the headers travel on");
    assert_eq!(out[0].decode::<Order>().unwrap(), order());

    // The master's record wins, and its numbers in other systems come along.
    let master = json!({"id": NORTHWIND, "name": "Northwind Traders GmbH (master)",
                        "country": "DE", "external_ids": {"sap": "USCU_S12"}});
    let host = gateway().kv(
        &format!("customer/{NORTHWIND}"),
        master.to_string().as_bytes(),
    );
    let out = host
        .run(|| validate_order(order_message(&order())))
        .unwrap();
    let passed: Order = out[0].decode().unwrap();
    assert_eq!(
        passed.customer.name.as_deref(),
        Some("Northwind Traders GmbH (master)")
    );
    assert_eq!(passed.customer.external_ids["sap"], "USCU_S12");
}

#[test]
fn an_order_breaking_rules_is_rejected_with_every_reason() {
    // No customer master yet, and the dock may not be sold in Germany.
    let host = gateway().config("product_restrictions", r#"{"HW-DOCK-C": ["DE"]}"#);
    assert_eq!(
        rejected(host.run(|| validate_order(order_message(&order())))),
        [
            format!("sold-to customer `{NORTHWIND}` is not in the customer master"),
            "line 20: product `HW-DOCK-C` may not be sold in DE".to_owned(),
        ]
    );

    // A customer the master knows in a country without tax nexus.
    let host = gateway().config("tax_nexus", r#"["US"]"#);
    for customer in customers() {
        host.run(|| validate_order(customer)).unwrap();
    }
    assert_eq!(
        rejected(host.run(|| validate_order(order_message(&order())))),
        ["no tax nexus in DE: the company is not registered to collect tax there"]
    );
}

#[test]
fn other_kinds_bad_bodies_and_bad_config_are_invalid() {
    let host = gateway();
    let other = Message::encode_as(Encoding::Json, "QuoteApproved", "Q-1", &json!({})).unwrap();
    assert_eq!(
        host.run(|| validate_order(other)),
        Err(Failure::Invalid(
            "the gateway takes CustomerUpserted and OrderDrafted, not `QuoteApproved`".into()
        ))
    );
    let no_id = Message::encode_as(
        Encoding::Json,
        CUSTOMER_UPSERTED,
        "C",
        &json!({"name": "x"}),
    )
    .unwrap();
    assert!(matches!(
        host.run(|| validate_order(no_id)),
        Err(Failure::Invalid(_))
    ));
    let host = gateway().config("tax_nexus", "DE");
    assert_eq!(
        host.run(|| validate_order(order_message(&order()))),
        Err(Failure::Invalid(
            "config `tax_nexus`: expected value at line 1 column 1".into()
        ))
    );
}
