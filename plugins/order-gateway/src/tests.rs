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

/// A CustomerUpserted for `party` (JSON).
fn upsert(party: Value) -> Message {
    let id = party["id"].as_str().unwrap().to_owned();
    Message::encode_as(Encoding::Json, CUSTOMER_UPSERTED, &id, &party).unwrap()
}

#[test]
fn the_customer_and_every_account_above_it_must_be_in_good_standing() {
    let de = |extra: Value| {
        let mut party = json!({"id": NORTHWIND, "name": "Northwind Traders GmbH", "country": "DE"});
        party
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        party
    };
    let verdict = |accounts: Vec<Value>| {
        let host = gateway();
        for account in accounts {
            host.run(|| validate_order(upsert(account))).unwrap();
        }
        host.run(|| validate_order(order_message(&order())))
    };
    // A customer under a parent under an ultimate parent, all in good standing.
    let holding = json!({"id": "HOLD-1", "country": "DE"});
    let group = json!({"id": "GRP-1", "country": "DE", "parent": "HOLD-1"});
    assert!(
        verdict(vec![
            holding.clone(),
            group.clone(),
            de(json!({"parent": "GRP-1"}))
        ])
        .is_ok()
    );
    // Blocked, on credit hold: the customer itself.
    assert_eq!(
        rejected(verdict(vec![de(
            json!({"blocked": true, "credit_hold": true})
        )])),
        [
            format!("customer `{NORTHWIND}` is blocked in the customer master"),
            format!("customer `{NORTHWIND}` is on credit hold"),
        ]
    );
    // The ultimate parent on credit hold holds the order too.
    let held = json!({"id": "HOLD-1", "country": "DE", "credit_hold": true});
    assert_eq!(
        rejected(verdict(vec![
            held,
            group.clone(),
            de(json!({"parent": "GRP-1"}))
        ])),
        [format!(
            "parent account `HOLD-1` of customer `{NORTHWIND}` is on credit hold"
        )]
    );
    // A parent the master does not know.
    assert_eq!(
        rejected(verdict(vec![group, de(json!({"parent": "GRP-1"}))])),
        [format!(
            "parent account `HOLD-1` of customer `{NORTHWIND}` is not in the customer master"
        )]
    );
    // A hierarchy that loops.
    let a = json!({"id": "GRP-A", "parent": "GRP-B"});
    let b = json!({"id": "GRP-B", "parent": "GRP-A"});
    assert_eq!(
        rejected(verdict(vec![a, b, de(json!({"parent": "GRP-A"}))])),
        [format!(
            "the customer hierarchy of `{NORTHWIND}` loops back to `GRP-A`"
        )]
    );
}

#[test]
fn with_revenue_rules_every_product_needs_one_the_revenue_step_knows() {
    let order = order();
    let codes: Vec<String> = order
        .lines
        .iter()
        .map(|l| l.product.code_or_id().to_owned())
        .collect();
    let rules = |map: Value| {
        let host = gateway().config("revenue_rules", &map.to_string());
        for customer in customers() {
            host.run(|| validate_order(customer)).unwrap();
        }
        host.run(|| validate_order(order_message(&order)))
    };
    // Every product ruled: it passes.
    let all: serde_json::Map<String, Value> = codes
        .iter()
        .map(|c| (c.clone(), json!("ratable")))
        .collect();
    assert!(rules(Value::Object(all.clone())).is_ok());
    // One missing, one unknown to the revenue step.
    let mut some = all;
    some.remove(&codes[0]);
    some.insert(codes[1].clone(), json!("straight-line"));
    assert_eq!(
        rejected(rules(Value::Object(some))),
        [
            format!(
                "line {}: product `{}` has no revenue recognition rule (config `revenue_rules`: ratable, point-in-time, usage)",
                order.lines[0].line_number, codes[0]
            ),
            format!(
                "line {}: product `{}` has the revenue rule `straight-line`, which the revenue step does not know (ratable, point-in-time, usage)",
                order.lines[1].line_number, codes[1]
            ),
        ]
    );
}
