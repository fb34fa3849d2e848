//! The transform through its entry point, in a test host: the example's canonical
//! quotes (`examples/quote-to-cash/expected/<sample>.quote.json`) become the orders the
//! example expects the ERP to receive (`expected/<sample>.orders.json`), and the
//! invalid sample is rejected with every reason.

use super::*;
use tenon_sdk::testing::Host;

const EXPECTED: &str = "../../../examples/quote-to-cash/expected";
const PLAIN_QUOTE: &str = include_str!("../../../examples/quote-to-cash/expected/plain.quote.json");
const PLAIN_ORDERS: &str =
    include_str!("../../../examples/quote-to-cash/expected/plain.orders.json");
const BUNDLE_QUOTE: &str =
    include_str!("../../../examples/quote-to-cash/expected/bundle.quote.json");
const BUNDLE_ORDERS: &str =
    include_str!("../../../examples/quote-to-cash/expected/bundle.orders.json");
const INVALID_QUOTE: &str =
    include_str!("../../../examples/quote-to-cash/expected/invalid.quote.json");

/// A quote as the CPQ source sends it on (MessagePack).
fn quote_message(json: &str) -> Message {
    let quote: Quote = serde_json::from_str(json).unwrap();
    Message::encode(kinds::QUOTE_APPROVED, &quote.number, &quote).unwrap()
}

fn orders_json(out: &[Message]) -> Vec<serde_json::Value> {
    out.iter()
        .map(|m| {
            assert_eq!(m.kind, kinds::ORDER_ACCEPTED);
            let order: Order = m.decode().unwrap();
            serde_json::to_value(order).unwrap()
        })
        .collect()
}

#[test]
fn the_samples_become_the_expected_orders() {
    for (name, quote, orders) in [
        ("plain", PLAIN_QUOTE, PLAIN_ORDERS),
        ("bundle", BUNDLE_QUOTE, BUNDLE_ORDERS),
    ] {
        let input = quote_message(quote);
        let out = Host::new().run(|| quote_to_order(input.clone())).unwrap();
        assert!(out.iter().all(|m| m.key == input.key));
        let expected: Vec<serde_json::Value> =
            serde_json::from_str::<Vec<serde_json::Value>>(orders)
                .unwrap()
                .into_iter()
                .map(|o| o["body"].clone())
                .collect();
        assert_eq!(orders_json(&out), expected, "{EXPECTED}/{name}.orders.json");
    }
}

#[test]
fn a_quote_is_also_read_as_json() {
    let json = Message::encode_as(
        Encoding::Json,
        kinds::QUOTE_APPROVED,
        "Q-00101",
        &serde_json::from_str::<serde_json::Value>(PLAIN_QUOTE).unwrap(),
    )
    .unwrap();
    let out = Host::new().run(|| quote_to_order(json)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].content_type, Encoding::MsgPack.content_type());
}

#[test]
fn the_invalid_sample_is_rejected_with_every_reason() {
    match Host::new().run(|| quote_to_order(quote_message(INVALID_QUOTE))) {
        Err(Failure::Rejected(reasons)) => assert_eq!(
            reasons,
            [
                "quote Q-00103 has no customer (sold-to account)",
                "quote Q-00103 has no currency",
                "quote Q-00103 line 2 has no product",
            ]
        ),
        other => panic!("not rejected: {other:?}"),
    }
}

#[test]
fn other_kinds_and_bodies_that_do_not_decode_are_invalid() {
    let mut order = quote_message(PLAIN_QUOTE);
    order.kind = kinds::ORDER_ACCEPTED.into();
    assert_eq!(
        Host::new().run(|| quote_to_order(order)),
        Err(Failure::Invalid(
            "quote-to-order takes QuoteApproved messages, not OrderAccepted".into()
        ))
    );
    let mut broken = quote_message(PLAIN_QUOTE);
    broken.body.truncate(10);
    assert!(matches!(
        Host::new().run(|| quote_to_order(broken)),
        Err(Failure::Invalid(_))
    ));
}
