//! The source through its entry point, in a test host: the example's order
//! (`examples/quote-to-cash/samples/zuora-subscription.json`) and Zuora's own
//! (`tests/fixtures/public/zuora_order_cancel.json`), the currency from config.

use super::*;
use tenon_sdk::model::Encoding;
use tenon_sdk::testing::Host;

const SUBSCRIPTION: &str =
    include_str!("../../../examples/quote-to-cash/samples/zuora-subscription.json");
const CANCEL: &str = include_str!("../../../tests/fixtures/public/zuora_order_cancel.json");

fn post(body: &str) -> RawRequest {
    RawRequest {
        content_type: "application/json".into(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

/// The source as the example configures it (its billing account in USD).
fn source() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("currency", "USD")
}

fn contract(message: &Message) -> Contract {
    Encoding::MsgPack.decode(&message.body).unwrap()
}

#[test]
fn a_new_subscription_activates_a_contract_in_the_configured_currency() {
    let out = source().run(|| ingest_order(post(SUBSCRIPTION))).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, "ContractActivated");
    assert_eq!(
        out[0].idempotency_key(),
        Some(format!("OM-00001/{}", out[0].key).as_str())
    );
    assert_eq!(contract(&out[0]).currency.code(), "USD");
    let host = source().config("currency", "EUR");
    let out = host.run(|| ingest_order(post(SUBSCRIPTION))).unwrap();
    assert_eq!(contract(&out[0]).currency.code(), "EUR");
}

#[test]
fn a_cancellation_cancels_the_contract() {
    let out = source().run(|| ingest_order(post(CANCEL))).unwrap();
    assert_eq!(
        (out[0].kind.as_str(), out[0].key.as_str()),
        ("ContractCancelled", "A-S00020635")
    );
    let cancelled = contract(&out[0]);
    assert_eq!(cancelled.status, ContractStatus::Cancelled);
    assert_eq!(cancelled.ends.unwrap().to_string(), "2022-04-30");
}

#[test]
fn an_order_the_source_cannot_read_or_a_bad_currency_is_invalid() {
    assert_eq!(
        source().run(|| ingest_order(post("{}"))),
        Err(Failure::Invalid(
            "not a Zuora order: missing field `orderDate` at line 1 column 2".into()
        ))
    );
    let host = source().config("currency", "dollars");
    assert_eq!(
        host.run(|| ingest_order(post(CANCEL))),
        Err(Failure::Invalid(
            "config `currency`: `dollars` is not an ISO 4217 currency code (three letters, e.g. EUR)"
                .into()
        ))
    );
    let unknown = CANCEL.replace("\"CancelSubscription\"", "\"OwnerTransfer\"");
    assert!(matches!(
        source().run(|| ingest_order(post(&unknown))),
        Err(Failure::Invalid(why)) if why.starts_with("unsupported Zuora order action `OwnerTransfer`")
    ));
}

#[test]
fn a_price_past_what_a_decimal_holds_is_invalid_not_a_trap() {
    // A monthly fee of 5e28 over a 12-month term: 6e29, past the largest decimal
    // (about 7.9e28).
    let huge = SUBSCRIPTION.replace("\"listPrice\": 100", "\"listPrice\": 5e28");
    assert_ne!(huge, SUBSCRIPTION, "the sample's price");
    match source().run(|| ingest_order(post(&huge))) {
        Err(Failure::Invalid(why)) => {
            assert!(why.ends_with("is past what a decimal holds"), "{why}")
        }
        other => panic!("not invalid: {other:?}"),
    }
}

#[test]
fn a_contract_names_the_order_that_made_it_and_the_quote_zuora_quotes_wrote() {
    let out = source().run(|| ingest_order(post(SUBSCRIPTION))).unwrap();
    let plain = contract(&out[0]);
    let order: serde_json::Value = serde_json::from_str(SUBSCRIPTION).unwrap();
    assert_eq!(plain.order.as_deref(), order["orderNumber"].as_str());
    assert_eq!(plain.quote, None);
    // Zuora Quotes writes the quote number on the subscription it creates.
    let mut quoted = order.clone();
    quoted["subscriptions"][0]["orderActions"][0]["createSubscription"]["customFields"] =
        serde_json::json!({"QuoteNumber__QT": "Q-00822"});
    let body = quoted.to_string();
    let out = source().run(|| ingest_order(post(&body))).unwrap();
    assert_eq!(contract(&out[0]).quote.as_deref(), Some("Q-00822"));
    // Or on the order.
    let mut quoted = order;
    quoted["customFields"] = serde_json::json!({"QuoteNumber__QT": "Q-00823"});
    let body = quoted.to_string();
    let out = source().run(|| ingest_order(post(&body))).unwrap();
    assert_eq!(contract(&out[0]).quote.as_deref(), Some("Q-00823"));
}

#[test]
fn without_a_configured_currency_an_order_is_refused_not_guessed() {
    let host = Host::new().with_manifest(include_str!("../plugin.toml"));
    assert_eq!(
        host.run(|| ingest_order(post(SUBSCRIPTION))),
        Err(Failure::Invalid(
            "config `currency` is not set: Zuora orders carry no currency, so the operator names the billing account's (e.g. `config = { currency = \"EUR\" }`)".into()
        ))
    );
}
