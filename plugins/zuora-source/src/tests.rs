//! The source through its entry point, in a test host: the example's order
//! (`examples/quote-to-cash/samples/zuora-subscription.json`) and Zuora's own
//! (`tests/fixtures/public/zuora_order_cancel.json`), the currency from config.

use super::*;
use tenon_sdk::model::Encoding;
use tenon_sdk::model::chrono::NaiveDate;
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
            "not a Zuora order: missing field `orderDate`".into()
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

const REMOVE_ADD: &str =
    include_str!("../../../tests/fixtures/public/zuora_order_amendment_remove_add_product.json");
const SUSPEND: &str =
    include_str!("../../../tests/fixtures/public/zuora_order_renew_suspend_resume_0.json");
const RESUME: &str =
    include_str!("../../../tests/fixtures/public/zuora_order_renew_suspend_resume_1.json");
const RENEW: &str =
    include_str!("../../../tests/fixtures/public/zuora_order_renew_suspend_resume_2.json");

fn day(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

#[test]
fn each_charge_keeps_its_own_actions_dates() {
    // Zuora's example: the removal's service activation is 2023-03-01, the addition's
    // 2023-05-01 (its contract effective 2023-04-01).
    let out = source().run(|| ingest_order(post(REMOVE_ADD))).unwrap();
    let amended = contract(&only_one(out));
    let dates: Vec<_> = amended
        .lines
        .iter()
        .map(|l| (l.change, l.effective.unwrap().to_string()))
        .collect();
    assert_eq!(
        dates,
        [
            (Some(LineChange::Removed), "2023-03-01".to_owned()),
            (Some(LineChange::Added), "2023-05-01".to_owned())
        ]
    );
    // The contract's own dates are its first action's.
    assert_eq!(amended.service_activation, Some(day("2023-03-01")));
}

fn only_one(mut out: Vec<Message>) -> Message {
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn suspend_resume_and_renew_are_dated_contract_events() {
    let suspend = contract(&only_one(
        source().run(|| ingest_order(post(SUSPEND))).unwrap(),
    ));
    // "Today": the order action's own date.
    assert_eq!(
        suspend.events,
        [ContractEvent {
            change: ContractChange::Suspended,
            effective: day("2018-01-01")
        }]
    );
    assert_eq!(suspend.status, ContractStatus::Suspended);
    let resume = contract(&only_one(
        source().run(|| ingest_order(post(RESUME))).unwrap(),
    ));
    assert_eq!(
        resume.events,
        [ContractEvent {
            change: ContractChange::Resumed { extends_term: true },
            effective: day("2018-10-01")
        }]
    );
    let renew = only_one(source().run(|| ingest_order(post(RENEW))).unwrap());
    assert_eq!(renew.kind, "ContractAmended");
    assert_eq!(
        contract(&renew).events[0].change,
        ContractChange::Renewed { term_months: None }
    );
    // A fixed number of periods from the action's date.
    let later = SUSPEND.replace(
        "\"suspendPolicy\": \"Today\"",
        "\"suspendPolicy\": \"FixedPeriodsFromToday\", \"suspendPeriods\": 2, \"suspendPeriodsType\": \"Week\"",
    );
    let suspend = contract(&only_one(
        source().run(|| ingest_order(post(&later))).unwrap(),
    ));
    assert_eq!(suspend.events[0].effective, day("2018-01-15"));
    // A policy that needs the subscription's history is refused by name.
    let history = SUSPEND.replace("\"Today\"", "\"EndOfLastInvoicePeriod\"");
    assert!(matches!(
        source().run(|| ingest_order(post(&history))),
        Err(Failure::Invalid(why)) if why.contains("suspendPolicy `EndOfLastInvoicePeriod`")
    ));
}

#[test]
fn a_cancellation_at_term_end_and_evergreen_terms() {
    let at_end = CANCEL.replace("\"SpecificDate\"", "\"EndOfCurrentTerm\"");
    let cancelled = contract(&only_one(
        source().run(|| ingest_order(post(&at_end))).unwrap(),
    ));
    assert_eq!(
        cancelled.events[0].change,
        ContractChange::Cancelled { at_term_end: true }
    );
    assert_eq!(cancelled.ends, None);
    let evergreen = SUBSCRIPTION.replace("\"TERMED\"", "\"EVERGREEN\"");
    let c = contract(&only_one(
        source().run(|| ingest_order(post(&evergreen))).unwrap(),
    ));
    assert!(c.evergreen);
    // No term: no period or price over it, but its price per month.
    let line = &c.lines[0];
    assert_eq!((line.service_period, &line.amount), (None, &None));
    let recurring = line.recurring.as_ref().unwrap();
    assert_eq!(
        (recurring.price.to_string(), recurring.every_months),
        ("100 USD".to_owned(), Some(1))
    );
    let termed = contract(&only_one(
        source().run(|| ingest_order(post(SUBSCRIPTION))).unwrap(),
    ));
    assert_eq!(termed.renewal_term_months, Some(12));
    assert_eq!(
        termed.lines[0].amount.as_ref().unwrap().to_string(),
        "1200 USD"
    );
}

#[test]
fn a_price_update_and_a_plan_change() {
    let order = serde_json::json!({
        "existingAccountNumber": "A1", "orderDate": "2025-04-01",
        "subscriptions": [{"subscriptionNumber": "S-1", "orderActions": [
            {"type": "UpdateProduct",
             "triggerDates": [{"name": "ServiceActivation", "triggerDate": "2025-04-01"}],
             "updateProduct": {"ratePlanId": "RP-1", "chargeUpdates": [{"chargeNumber": "C-1",
                 "pricing": {"recurringFlatFee": {"listPrice": 130}}}]}},
            {"type": "ChangePlan",
             "triggerDates": [{"name": "ServiceActivation", "triggerDate": "2025-05-01"}],
             "changePlan": {"ratePlanId": "RP-2", "newProductRatePlan": {"productRatePlanId": "PRP-3",
                 "chargeOverrides": [{"billingPeriod": "Quarter",
                     "pricing": {"recurringFlatFee": {"listPrice": 300}}}]}}}]}]
    })
    .to_string();
    let c = contract(&only_one(
        source().run(|| ingest_order(post(&order))).unwrap(),
    ));
    let lines: Vec<_> = c
        .lines
        .iter()
        .map(|l| {
            (
                l.id.as_str(),
                l.change,
                l.effective.unwrap().to_string(),
                l.recurring
                    .as_ref()
                    .map(|r| (r.price.to_string(), r.every_months)),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                "RP-1",
                Some(LineChange::Updated),
                "2025-04-01".into(),
                Some(("130 USD".into(), None))
            ),
            ("RP-2", Some(LineChange::Removed), "2025-05-01".into(), None),
            (
                "PRP-3",
                Some(LineChange::Added),
                "2025-05-01".into(),
                Some(("300 USD".into(), Some(3)))
            ),
        ]
    );
    let no_price = order.replace(":130}", ":null}");
    assert_ne!(no_price, order);
    assert!(matches!(
        source().run(|| ingest_order(post(&no_price))),
        Err(Failure::Invalid(why)) if why.contains("the update of RP-1 states no recurring price")
    ));
}

/// A posted credit memo, in the shape of Zuora's "Retrieve a credit memo" with its
/// items: 60.00 for two months of service and 11.40 of tax.
fn memo(status: &str) -> String {
    serde_json::json!({
        "id": "402890555b7e8a4e015b7f1cba7a0053", "number": "CM00000003",
        "accountNumber": "A00000001", "amount": 71.40, "taxAmount": 11.40,
        "creditMemoDate": "2025-03-05", "currency": "USD", "reasonCode": "Correcting invoice error",
        "referredInvoiceId": "2c93808457d787030157e031d86c4c57", "status": status,
        "items": [{"id": "cmi-1", "amountWithoutTax": 60.00, "amount": 71.40,
            "serviceStartDate": "2025-03-01", "serviceEndDate": "2025-04-30",
            "sourceItemId": "2c93808457d787030157e031d8a74c5b", "sourceItemType": "InvoiceDetail",
            "skuName": "SKU-00000001",
            "taxationItems": {"data": [{"taxAmount": 11.40, "taxRate": 19, "taxCode": "VAT", "taxMode": "TaxExclusive"}]}}]
    })
    .to_string()
}

#[test]
fn a_credit_memo_is_a_credit_note_of_its_items_net_of_tax() {
    let out = source()
        .run(|| ingest_order(post(&memo("Posted"))))
        .unwrap();
    let m = only_one(out);
    assert_eq!(
        (m.kind.as_str(), m.key.as_str()),
        ("CreditIssued", "2c93808457d787030157e031d86c4c57")
    );
    let note: CreditNote = Encoding::MsgPack.decode(&m.body).unwrap();
    assert_eq!(note.total.to_string(), "71.4 USD");
    let line = &note.lines[0];
    assert_eq!(line.amount.to_string(), "60 USD");
    assert_eq!(
        line.invoice_line.as_deref(),
        Some("2c93808457d787030157e031d8a74c5b")
    );
    assert_eq!(
        line.service_period,
        Some(Period {
            start: day("2025-03-01"),
            end: day("2025-04-30")
        })
    );
    assert_eq!(line.taxes[0].amount.to_string(), "11.4 USD");
    let voided = only_one(
        source()
            .run(|| ingest_order(post(&memo("Canceled"))))
            .unwrap(),
    );
    assert_eq!(voided.kind, "CreditVoided");
    assert!(matches!(
        source().run(|| ingest_order(post(&memo("Draft")))),
        Err(Failure::Invalid(why)) if why.contains("is Draft: only Posted")
    ));
}
