//! The router through its entry point, in a test host: the plain quote's order
//! (`examples/quote-to-cash/expected/plain.orders.json`, a German customer) under the
//! manifest's default rule and the example's rules.

use super::*;
use serde_json::{Value, json};
use tenon_sdk::model::kinds;
use tenon_sdk::testing::Host;

/// A test host that checks, as the sandbox does, what the manifest allows.
fn plugin_host() -> Host {
    Host::new().with_manifest(include_str!("../plugin.toml"))
}

const ORDERS: &str = include_str!("../../../examples/quote-to-cash/expected/plain.orders.json");

/// The example's rules (`examples/quote-to-cash/tenon.toml`).
const RULES: &str = r#"{"DE": "DE01", "FR": "FR01", "*": "US01"}"#;

fn order() -> Order {
    let orders: Value = serde_json::from_str(ORDERS).unwrap();
    serde_json::from_value(orders[0]["body"].clone()).unwrap()
}

fn message(order: &Order) -> Message {
    Message::encode(kinds::ORDER_ACCEPTED, "Q-00101", order).unwrap()
}

fn routed(host: &Host, input: Message) -> Message {
    let mut out = host.run(|| route_to_entity(input)).unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn each_order_is_tagged_with_its_entity_and_passes_unchanged() {
    let input = message(&order());
    let out = routed(&plugin_host().config("entities", RULES), input.clone());
    assert_eq!(out.header(ENTITY_HEADER), Some("DE01"));
    assert_eq!(out.body, input.body);
    assert_eq!((out.kind, out.key), (input.kind, input.key));

    // The manifest's default: one entity for every country.
    let host = plugin_host().with_manifest(include_str!("../plugin.toml"));
    assert_eq!(
        routed(&host, message(&order())).header(ENTITY_HEADER),
        Some("US01")
    );

    // A tag already there (in any case) is replaced, not doubled.
    let mut tagged = message(&order());
    tagged.headers.push(("Tenon-Entity".into(), "XX99".into()));
    let out = routed(&plugin_host().config("entities", RULES), tagged);
    let tags: Vec<&str> = out
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(ENTITY_HEADER))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["DE01"]);
}

#[test]
fn a_country_without_a_rule_is_rejected() {
    let mut order = order();
    order.customer.country = Some("BR".into());
    let host = plugin_host().config("entities", r#"{"DE": "DE01"}"#);
    assert_eq!(
        host.run(|| route_to_entity(message(&order))),
        Err(Failure::Rejected(vec![
            "no legal entity for customer country BR: config `entities` has no rule for it and no `*`".into()
        ]))
    );
    // No rules at all (no manifest, so not even its default `*`).
    assert!(matches!(
        Host::new().run(|| route_to_entity(message(&order))),
        Err(Failure::Rejected(_))
    ));
}

#[test]
fn bad_rules_or_a_body_that_is_not_an_order_are_invalid() {
    let host = plugin_host().config("entities", "DE=DE01");
    assert!(matches!(
        host.run(|| route_to_entity(message(&order()))),
        Err(Failure::Invalid(why)) if why.starts_with("config `entities`")
    ));
    let not_an_order = Message::encode(kinds::ORDER_ACCEPTED, "Q", &json!({"id": 1})).unwrap();
    assert!(matches!(
        plugin_host()
            .config("entities", RULES)
            .run(|| route_to_entity(not_an_order)),
        Err(Failure::Invalid(_))
    ));
}
