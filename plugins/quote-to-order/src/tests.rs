//! The transform through its entry point, in a test host: the example's canonical
//! quotes (`examples/quote-to-cash/expected/<sample>.quote.json`) become the orders the
//! example expects the ERP to receive (`expected/<sample>.orders.json`), and the
//! invalid sample is rejected with every reason.

use super::*;
use tenon_sdk::testing::Host;

/// A test host that checks, as the sandbox does, what the manifest allows.
fn plugin_host() -> Host {
    Host::new().with_manifest(include_str!("../plugin.toml"))
}

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
            assert_eq!(m.kind, kinds::ORDER_DRAFTED);
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
        let out = plugin_host().run(|| quote_to_order(input.clone())).unwrap();
        assert!(out.iter().all(|m| m.key == input.key));
        let expected: Vec<serde_json::Value> =
            serde_json::from_str::<Vec<serde_json::Value>>(orders)
                .unwrap()
                .into_iter()
                .map(|o| {
                    // Those orders came through a source configured to read the
                    // customer's PO number (po_number_field); this quote did not.
                    let mut body = o["body"].clone();
                    body.as_object_mut().unwrap().remove("customer_po");
                    body
                })
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
    let out = plugin_host().run(|| quote_to_order(json)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].content_type, Encoding::MsgPack.content_type());
}

#[test]
fn the_invalid_sample_is_rejected_with_every_reason() {
    match plugin_host().run(|| quote_to_order(quote_message(INVALID_QUOTE))) {
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
        plugin_host().run(|| quote_to_order(order)),
        Err(Failure::Invalid(
            "quote-to-order takes QuoteApproved messages, not OrderAccepted".into()
        ))
    );
    let mut broken = quote_message(PLAIN_QUOTE);
    broken.body.truncate(10);
    assert!(matches!(
        plugin_host().run(|| quote_to_order(broken)),
        Err(Failure::Invalid(_))
    ));
}

/// The plain sample with its two lines' net totals set to `totals`.
fn with_net_totals(totals: &[&str]) -> Quote {
    let mut quote: Quote = serde_json::from_str(PLAIN_QUOTE).unwrap();
    let first = quote.lines[0].clone();
    quote.lines = totals
        .iter()
        .enumerate()
        .map(|(i, total)| {
            let mut line = first.clone();
            line.key = i as u32 + 1;
            line.net_total = total.parse().unwrap();
            line
        })
        .collect();
    quote
}

#[test]
fn line_amounts_are_rounded_by_the_configured_rule_and_totals_add_the_rounded_lines() {
    // Two lines of 10.125 and 0.015 (CPQ's unrounded net totals). By hand:
    // half-even: 10.12 + 0.02 = 10.14; half-up: 10.13 + 0.02 = 10.15. Summing first and
    // rounding after would give 10.14 under both, so the ERP's own sum of the lines
    // would differ from the order's total by a cent under half-up.
    let quote = with_net_totals(&["10.125", "0.015"]);
    let input = Message::encode(kinds::QUOTE_APPROVED, &quote.number, &quote).unwrap();
    for (host, lines, total) in [
        (plugin_host(), ["10.12", "0.02"], "10.14"),
        (
            plugin_host().config("rounding", "half-even"),
            ["10.12", "0.02"],
            "10.14",
        ),
        (
            plugin_host().config("rounding", "half-up"),
            ["10.13", "0.02"],
            "10.15",
        ),
    ] {
        let out = host.run(|| quote_to_order(input.clone())).unwrap();
        let order: Order = out[0].decode().unwrap();
        let amounts: Vec<String> = order
            .lines
            .iter()
            .map(|l| l.net_amount.amount.to_string())
            .collect();
        assert_eq!(amounts, lines);
        assert_eq!(order.total.amount.to_string(), total);
    }
    assert_eq!(
        plugin_host()
            .config("rounding", "nearest")
            .run(|| quote_to_order(input.clone())),
        Err(Failure::Invalid(
            "config `rounding` is `nearest`: it is `half-even` or `half-up`".into()
        ))
    );
}

#[test]
fn a_total_past_what_a_decimal_holds_refuses_the_quote_instead_of_trapping() {
    // Two lines of 5e28 each: each fits a decimal (max ~7.9e28), their sum does not.
    let quote = with_net_totals(&[
        "50000000000000000000000000000",
        "50000000000000000000000000000",
    ]);
    let input = Message::encode(kinds::QUOTE_APPROVED, &quote.number, &quote).unwrap();
    match plugin_host().run(|| quote_to_order(input)) {
        Err(Failure::Rejected(reasons)) => {
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(
                reasons[0].starts_with(&format!("quote {}: the ", quote.number))
                    && reasons[0].ends_with("is too large to compute with"),
                "{reasons:?}"
            );
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn only_approved_new_business_quotes_become_orders() {
    let quote = |status: Option<&str>, kind: &str| {
        let mut quote: Quote = serde_json::from_str(PLAIN_QUOTE).unwrap();
        quote.status = status.map(str::to_owned);
        quote.quote_type = Some(kind.into());
        quote.master_contract = (kind != "Quote").then(|| "800xx000001".into());
        Message::encode(kinds::QUOTE_APPROVED, &quote.number, &quote).unwrap()
    };
    let reasons = |host: Host, input: Message| match host.run(|| quote_to_order(input)) {
        Err(Failure::Rejected(reasons)) => reasons,
        other => panic!("not rejected: {other:?}"),
    };
    assert_eq!(
        reasons(plugin_host(), quote(Some("Draft"), "Quote")),
        ["quote Q-00101 is `Draft`: only approved quotes (Approved) become orders"]
    );
    assert_eq!(
        reasons(plugin_host(), quote(None, "Quote")),
        ["quote Q-00101 has no approval status: only approved quotes (Approved) become orders"]
    );
    // An amendment must be approved too, and name its contract.
    assert_eq!(
        reasons(plugin_host(), quote(Some("In Review"), "Amendment")),
        ["quote Q-00101 is `In Review`: only approved quotes (Approved) become orders"]
    );
    let mut orphan: Quote = serde_json::from_str(PLAIN_QUOTE).unwrap();
    orphan.quote_type = Some("Renewal".into());
    let orphan = Message::encode(kinds::QUOTE_APPROVED, "Q-00101", &orphan).unwrap();
    assert_eq!(
        reasons(plugin_host(), orphan),
        [
            "quote Q-00101 is a Renewal quote that names no contract (SBQQ__MasterContract__c): there is nothing to change"
        ]
    );
    // An org whose approval ends in "Accepted" says so in config.
    let host = plugin_host().config("approved_statuses", "Approved, Accepted");
    assert_eq!(
        host.run(|| quote_to_order(quote(Some("Accepted"), "Quote")))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        reasons(plugin_host(), quote(Some("Accepted"), "Quote")),
        ["quote Q-00101 is `Accepted`: only approved quotes (Approved) become orders"]
    );
}

/// An amendment's order is its changes against the contract; a renewal's is the next
/// term, as quoted.
#[test]
fn amendment_and_renewal_quotes_become_changes_of_their_contract() {
    let mut amendment: Quote = serde_json::from_str(PLAIN_QUOTE).unwrap();
    amendment.quote_type = Some("Amendment".into());
    amendment.master_contract = Some("800xx000001".into());
    // The laptops go from 3 to 5 (+2, net 2 x 1169.1 = 2338.20); the docks stay (0).
    amendment.lines[0].quantity = 5.into();
    amendment.lines[0].effective_quantity = Some(2.into());
    amendment.lines[0].net_total = "2338.2".parse().unwrap();
    amendment.lines[1].effective_quantity = Some(0.into());
    let input = Message::encode(kinds::QUOTE_APPROVED, "Q-00101", &amendment).unwrap();
    let out = plugin_host().run(|| quote_to_order(input)).unwrap();
    let orders = orders_json(&out);
    assert_eq!(orders.len(), 1);
    assert_eq!(
        orders[0]["change"],
        serde_json::json!({"kind": "Amendment", "contract": "800xx000001"})
    );
    let lines = orders[0]["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "the unchanged docks are left out");
    assert_eq!(
        (
            lines[0]["quantity"].as_str(),
            lines[0]["net_amount"]["amount"].as_str()
        ),
        (Some("2"), Some("2338.20"))
    );
    // A reduction gives back: -1 laptop.
    amendment.lines[0].effective_quantity = Some((-1).into());
    amendment.lines[0].net_total = "-1169.1".parse().unwrap();
    let input = Message::encode(kinds::QUOTE_APPROVED, "Q-00101", &amendment).unwrap();
    let out = plugin_host().run(|| quote_to_order(input)).unwrap();
    assert_eq!(orders_json(&out)[0]["total"]["amount"], "-1169.10");
    // Nothing changed: nothing to order.
    amendment.lines[0].effective_quantity = Some(0.into());
    let input = Message::encode(kinds::QUOTE_APPROVED, "Q-00101", &amendment).unwrap();
    assert_eq!(
        plugin_host().run(|| quote_to_order(input)),
        Err(Failure::Rejected(vec![
            "quote Q-00101 amends contract 800xx000001 but changes no quantity: there is nothing to order".into()
        ]))
    );
    // A renewal: the next term, every line as quoted.
    let mut renewal: Quote = serde_json::from_str(PLAIN_QUOTE).unwrap();
    renewal.quote_type = Some("Renewal".into());
    renewal.master_contract = Some("800xx000001".into());
    let input = Message::encode(kinds::QUOTE_APPROVED, "Q-00101", &renewal).unwrap();
    let orders = orders_json(&plugin_host().run(|| quote_to_order(input)).unwrap());
    assert_eq!(orders[0]["change"]["kind"], "Renewal");
    assert_eq!(orders[0]["lines"].as_array().unwrap().len(), 2);
}
