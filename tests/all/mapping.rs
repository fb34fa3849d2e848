//! The first-party mappings, run natively on the example's samples: CPQ QuoteModel to
//! canonical quote (compared with `expected/<sample>.quote.json`), and the validation
//! and split of quote-to-order, including their negative cases.

use crate::support::{check_json, sample};
use tenon_sdk::Failure;
use tenon_sdk::model::Quote;

fn quote(name: &str) -> Result<Quote, Failure> {
    let model: cpq_source::QuoteModel = serde_json::from_str(sample(name)).unwrap();
    cpq_source::to_quote(model, None)
}

fn quote_from(json: serde_json::Value) -> Result<Quote, Failure> {
    cpq_source::to_quote(serde_json::from_value(json).unwrap(), None)
}

#[test]
fn samples_map_to_the_expected_canonical_quotes() {
    for name in ["plain", "bundle", "invalid"] {
        let quote = quote(&format!("{name}.json")).unwrap();
        check_json(
            &format!("examples/quote-to-cash/expected/{name}.quote.json"),
            &serde_json::to_value(&quote).unwrap(),
        );
    }
}

#[test]
fn salesforce_floats_become_exact_decimals() {
    let q = quote("plain.json").unwrap();
    assert_eq!(q.lines[0].net_price.to_string(), "1169.1");
    assert_eq!(q.lines[1].discount.amount.unwrap().to_string(), "12.8");
    assert_eq!(q.net_total.unwrap().to_string(), "4245.9");
}

#[test]
fn a_bundle_keeps_its_structure_across_the_split() {
    let orders = quote_to_order::map_quote(&quote("bundle.json").unwrap()).unwrap();
    type Numbering = Vec<(u32, Option<u32>)>;
    let summary: Vec<(String, Numbering)> = orders
        .iter()
        .map(|o| {
            (
                o.id.clone(),
                o.lines
                    .iter()
                    .map(|l| (l.line_number, l.parent_line_number))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "Q-00102-P".to_owned(),
                vec![(10, None), (30, Some(10)), (40, Some(10))]
            ),
            ("Q-00102-S".to_owned(), vec![(20, Some(10))]),
        ]
    );
    assert_eq!(orders[0].total.to_string(), "6600.00 EUR");
    assert_eq!(orders[1].total.to_string(), "15300.00 EUR");
    assert_eq!(orders[1].lines[0].subscription.as_ref().unwrap().months, 12);
}

#[test]
fn every_failed_rule_is_reported() {
    let mut quote = quote("bundle.json").unwrap();
    quote.customer = None;
    quote.lines[1].quantity = (-1).into();
    quote.lines[2].parent_key = Some(99);
    quote.lines[3].product = None;
    let reasons = quote_to_order::map_quote(&quote).unwrap_err();
    assert_eq!(
        reasons,
        [
            "quote Q-00102 has no customer (sold-to account)",
            "quote Q-00102 line 2 has quantity -1, which is not positive",
            "quote Q-00102 line 3 names bundle parent 99, which is not on the quote",
            "quote Q-00102 line 4 has no product",
        ]
    );
}

#[test]
fn malformed_quote_models_are_invalid_with_the_field_named() {
    let base = serde_json::json!({
        "record": { "Name": "Q-9", "SBQQ__Account__c": "001", "CurrencyIsoCode": "EUR" },
        "lineItems": [{ "record": { "SBQQ__Product__c": "01t", "SBQQ__Quantity__c": 1, "SBQQ__NetPrice__c": 5 }, "key": 1 }]
    });
    assert!(quote_from(base.clone()).is_ok());

    let mut no_qty = base.clone();
    no_qty["lineItems"][0]["record"]
        .as_object_mut()
        .unwrap()
        .remove("SBQQ__Quantity__c");
    assert_eq!(
        quote_from(no_qty).unwrap_err(),
        Failure::Invalid("quote line 1 has no `SBQQ__Quantity__c`".into())
    );

    let mut bad_charge = base.clone();
    bad_charge["lineItems"][0]["record"]["SBQQ__ChargeType__c"] = "Sometimes".into();
    assert_eq!(
        quote_from(bad_charge).unwrap_err(),
        Failure::Invalid("quote line 1: unknown SBQQ__ChargeType__c `Sometimes`".into())
    );

    let mut bad_currency = base.clone();
    bad_currency["record"]["CurrencyIsoCode"] = "EURO".into();
    assert_eq!(
        quote_from(bad_currency).unwrap_err(),
        Failure::Invalid(
            "`EURO` is not an ISO 4217 currency code (three letters, e.g. EUR)".into()
        )
    );

    let mut no_term = base.clone();
    no_term["lineItems"][0]["record"]["SBQQ__ChargeType__c"] = "Recurring".into();
    assert_eq!(
        quote_from(no_term).unwrap_err(),
        Failure::Invalid("subscription line 1 has no subscription term".into())
    );

    let mut half_month = base;
    half_month["record"]["SBQQ__SubscriptionTerm__c"] = 12.5.into();
    assert_eq!(
        quote_from(half_month).unwrap_err(),
        Failure::Invalid("subscription term `12.5` is not whole months".into())
    );
}
