//! The source through its entry point, in a test host: the example's quotes
//! (`examples/quote-to-cash/samples/`) become the canonical quotes the example
//! expects (`expected/<sample>.quote.json`), once per revision.

use super::*;
use serde_json::Value;
use tenon_sdk::model::Encoding;
use tenon_sdk::testing::Host;

const PLAIN: &str = include_str!("../../../examples/quote-to-cash/samples/plain.json");
const BUNDLE: &str = include_str!("../../../examples/quote-to-cash/samples/bundle.json");
const PLAIN_QUOTE: &str = include_str!("../../../examples/quote-to-cash/expected/plain.quote.json");
const BUNDLE_QUOTE: &str =
    include_str!("../../../examples/quote-to-cash/expected/bundle.quote.json");

fn post(body: &str) -> RawRequest {
    RawRequest {
        content_type: "application/json".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
    }
}

fn source() -> Host {
    Host::new().with_manifest(include_str!("../plugin.toml"))
}

fn ingested(host: &Host, body: &str) -> Message {
    let mut out = host.run(|| ingest_quote(post(body))).unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn quote_json(message: &Message) -> Value {
    let quote: Quote = Encoding::MsgPack.decode(&message.body).unwrap();
    serde_json::to_value(quote).unwrap()
}

#[test]
fn the_samples_become_the_expected_quotes() {
    for (sample, expected) in [(PLAIN, PLAIN_QUOTE), (BUNDLE, BUNDLE_QUOTE)] {
        let m = ingested(&source(), sample);
        assert_eq!(m.kind, kinds::QUOTE_APPROVED);
        assert_eq!(m.header("tenon-model"), Some("1"));
        assert_eq!(
            quote_json(&m),
            serde_json::from_str::<Value>(expected).unwrap()
        );
    }
    assert_eq!(ingested(&source(), PLAIN).key, "Q-00101");
}

#[test]
fn a_revision_of_a_quote_is_accepted_once() {
    // The sample names no LastModifiedDate: no idempotency key.
    assert_eq!(ingested(&source(), PLAIN).idempotency_key(), None);
    let revised = PLAIN.replacen(
        "\"Id\": \"a0q5g000001AbCdAAK\",",
        "\"Id\": \"a0q5g000001AbCdAAK\", \"LastModifiedDate\": \"2026-11-27T10:00:00.000+0000\",",
        1,
    );
    assert_eq!(
        ingested(&source(), &revised).idempotency_key(),
        Some("a0q5g000001AbCdAAK@2026-11-27T10:00:00.000+0000")
    );
}

#[test]
fn a_single_currency_org_takes_the_configured_currency() {
    let without = PLAIN.replacen(
        "\"CurrencyIsoCode\": \"EUR\"",
        "\"CurrencyIsoCode\": null",
        1,
    );
    assert_eq!(
        quote_json(&ingested(&source(), &without))["currency"],
        Value::Null
    );
    let host = source().config("default_currency", "CHF");
    assert_eq!(quote_json(&ingested(&host, &without))["currency"], "CHF");
    // The quote's own currency wins.
    assert_eq!(quote_json(&ingested(&host, PLAIN))["currency"], "EUR");
}

#[test]
fn what_is_not_a_quote_model_is_invalid() {
    let invalid = |host: &Host, body: &str| match host.run(|| ingest_quote(post(body))) {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    };
    assert!(invalid(&source(), "<xml/>").starts_with("request body is not the expected JSON"));
    assert_eq!(
        invalid(&source(), r#"{"record": {}}"#),
        "quote record has neither `Name` (quote number) nor `Id`"
    );
    let without = PLAIN.replacen(
        "\"CurrencyIsoCode\": \"EUR\"",
        "\"CurrencyIsoCode\": null",
        1,
    );
    assert_eq!(
        invalid(&source().config("default_currency", "EURO"), &without),
        "`EURO` is not an ISO 4217 currency code (three letters, e.g. EUR)"
    );
}

#[test]
fn a_net_total_past_what_a_decimal_holds_is_invalid_not_a_trap() {
    // No net total on the line, so the source computes price x quantity:
    // 5e28 x 3 = 1.5e29, past the largest decimal (about 7.9e28).
    let mut quote: Value = serde_json::from_str(PLAIN).unwrap();
    let line = quote
        .pointer_mut("/lineItems/0/record")
        .and_then(Value::as_object_mut)
        .unwrap();
    line.remove("SBQQ__NetTotal__c");
    line.insert(
        "SBQQ__NetPrice__c".into(),
        "50000000000000000000000000000".into(),
    );
    line.insert("SBQQ__Quantity__c".into(), 3.into());
    let body = quote.to_string();
    match source().run(|| ingest_quote(post(&body))) {
        Err(Failure::Invalid(why)) => assert!(
            why.ends_with("50000000000000000000000000000 x 3 is past what a decimal holds"),
            "{why}"
        ),
        other => panic!("not invalid: {other:?}"),
    }
}

#[test]
fn the_header_discount_tax_flags_po_number_and_revision_are_kept() {
    let quote = PLAIN
        .replace(
            "\"SBQQ__PaymentTerms__c\": \"Net30\",",
            "\"SBQQ__PaymentTerms__c\": \"Net30\", \"SBQQ__CustomerDiscount__c\": 5.0, \"LastModifiedDate\": \"2026-11-27T10:00:00Z\",",
        )
        .replacen("\"SBQQ__Taxable__c\": true", "\"SBQQ__Taxable__c\": true, \"SBQQ__TaxCode__c\": \"VAT19\"", 1);
    let host = source().config("po_number_field", "Customer_PO__c");
    let q = quote_json(&ingested(&host, &quote));
    assert_eq!(q["discount"], serde_json::json!({"percent": "5"}));
    assert_eq!(q["customer_po"], "4500012345");
    assert_eq!(q["revision"], "2026-11-27T10:00:00Z");
    assert_eq!(
        (&q["lines"][0]["taxable"], &q["lines"][0]["tax_code"]),
        (&serde_json::json!(true), &serde_json::json!("VAT19"))
    );
    // Without the config the PO number is not guessed.
    assert_eq!(
        quote_json(&ingested(&source(), &quote)).get("customer_po"),
        None
    );
}
