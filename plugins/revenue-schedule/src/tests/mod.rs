//! The step through its entry point, in a test host, on what the sources make of the
//! public fixtures (`tests/fixtures/public/`): a Zuora subscription and a Stripe
//! invoice, each line recognised over its service period; and one contract through its
//! life (`lifecycle.rs`).

use super::*;
use serde_json::{Value, json};
use tenon_sdk::model::Encoding;
use tenon_sdk::testing::Host;

mod credits;
mod lifecycle;

/// A test host that checks, as the sandbox does, what the manifest allows.
fn plugin_host() -> Host {
    Host::new().with_manifest(include_str!("../../plugin.toml"))
}

const ZUORA_CREATE: &str =
    include_str!("../../../../tests/fixtures/public/zuora_order_create_subscription.json");
const ZUORA_CANCEL: &str =
    include_str!("../../../../tests/fixtures/public/zuora_order_cancel.json");
const STRIPE_PAID: &str =
    include_str!("../../../../tests/fixtures/public/stripe_invoice_event_invoice_paid.json");

fn only(mut messages: Vec<Message>) -> Message {
    assert_eq!(messages.len(), 1);
    messages.remove(0)
}

/// The Zuora order with a monthly price of 100 on its rate plan.
fn priced_subscription() -> Message {
    let mut order: Value = serde_json::from_str(ZUORA_CREATE).unwrap();
    order["subscriptions"][0]["orderActions"][0]["createSubscription"]["subscribeToRatePlans"][0]
        ["chargeOverrides"] = json!([{"productRatePlanChargeId": "c1", "billingPeriod": "Month",
            "pricing": {"recurringFlatFee": {"listPrice": 100}}}]);
    only(zuora_source::to_messages(order.to_string().as_bytes(), "USD").unwrap())
}

fn schedules(out: &[Message]) -> Vec<RevenueSchedule> {
    out.iter()
        .map(|m| {
            assert_eq!(m.kind, kinds::REVENUE_SCHEDULE_UPDATED);
            Encoding::MsgPack.decode(&m.body).unwrap()
        })
        .collect()
}

#[test]
fn a_contract_line_is_recognised_monthly_over_its_term() {
    let contract = priced_subscription();
    let out = plugin_host()
        .run(|| schedule_revenue(contract.clone()))
        .unwrap();
    assert!(out.iter().all(|m| m.key == contract.key));
    let s = schedules(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].id, "SM-00001/efbff07e6290dfb8016291003bd00dda");
    assert_eq!(s[0].total.to_string(), "1200.00 USD");
    assert_eq!(s[0].periods.len(), 12);
    assert!(
        s[0].periods
            .iter()
            .all(|p| p.amount.to_string() == "100.00 USD")
    );
}

#[test]
fn an_invoice_line_is_recognised_over_its_service_period() {
    let mut event: Value = serde_json::from_str(STRIPE_PAID).unwrap();
    event["type"] = "invoice.finalized".into();
    // 2024-01-15 .. 2024-04-14 inclusive (Stripe's end is exclusive).
    event["data"]["object"]["lines"]["data"][0]["period"] =
        json!({"start": 1705276800, "end": 1713139200});
    let invoice = only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap());
    let s = schedules(&plugin_host().run(|| schedule_revenue(invoice)).unwrap());
    let amounts: Vec<String> = s[0].periods.iter().map(|p| p.amount.to_string()).collect();
    // By days: 17/31 of January, February (29 days), March, 14/30 of April; the cents
    // left over in the last period, 108.00 USD in all.
    assert_eq!(
        amounts,
        ["19.64 USD", "35.82 USD", "35.82 USD", "16.72 USD"]
    );
    assert_eq!(s[0].total.to_string(), "108.00 USD");
}

#[test]
fn an_amendment_of_a_contract_never_activated_is_rejected() {
    let cancelled = only(zuora_source::to_messages(ZUORA_CANCEL.as_bytes(), "USD").unwrap());
    assert_eq!(
        plugin_host().run(|| schedule_revenue(cancelled)),
        Err(Failure::Rejected(vec![
            "contract A-S00020635: no activation seen, so there is no schedule to change (send its ContractActivated first)".into()
        ]))
    );
}

#[test]
fn a_line_without_a_price_is_rejected_by_name() {
    let unpriced = only(zuora_source::to_messages(ZUORA_CREATE.as_bytes(), "USD").unwrap());
    assert_eq!(
        plugin_host().run(|| schedule_revenue(unpriced)),
        Err(Failure::Rejected(vec![
            "line efbff07e6290dfb8016291003bd00dda: no price: the order does not override the catalogue price, so nothing can be recognised".into()
        ]))
    );
}

#[test]
fn other_kinds_and_bodies_that_do_not_decode_are_invalid() {
    let order = Message::encode(kinds::ORDER_ACCEPTED, "Q-1", &json!({})).unwrap();
    assert_eq!(
        plugin_host().run(|| schedule_revenue(order)),
        Err(Failure::Invalid("a `OrderAccepted` message has no revenue schedule; this step takes ContractActivated, ContractAmended, ContractCancelled, InvoicePosted, InvoiceVoided, CreditIssued, CreditVoided and PaymentRefunded".into()))
    );
    let broken = Message::encode(kinds::CONTRACT_ACTIVATED, "C-1", &json!({"id": 1})).unwrap();
    assert!(matches!(
        plugin_host().run(|| schedule_revenue(broken)),
        Err(Failure::Invalid(_))
    ));
}

#[test]
fn an_invoice_line_is_recognised_net_of_its_discount_and_without_its_tax() {
    let mut event: Value = serde_json::from_str(STRIPE_PAID).unwrap();
    event["type"] = "invoice.finalized".into();
    let line = &mut event["data"]["object"]["lines"]["data"][0];
    // January 2024; 120.00 with 20.00 off and 19.00 tax on top: 100.00 earned.
    line["period"] = json!({"start": 1704067200, "end": 1706745600});
    line["amount"] = 12000.into();
    line["discount_amounts"] = json!([{"amount": 2000, "discount": "di_1"}]);
    line["tax_amounts"] = json!([{"amount": 1900, "inclusive": false, "tax_rate": "txr_19"}]);
    event["data"]["object"]["total"] = 11900.into();
    let invoice = only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap());
    let s = schedules(&plugin_host().run(|| schedule_revenue(invoice)).unwrap());
    let amounts: Vec<String> = s[0].periods.iter().map(|p| p.amount.to_string()).collect();
    assert_eq!(amounts, ["100.00 USD"], "the whole of January");
}

#[test]
fn a_voided_invoice_reverses_exactly_what_it_recognised() {
    let mut event: Value = serde_json::from_str(STRIPE_PAID).unwrap();
    // 2024-01-15 .. 2024-04-14, 108.00 USD (the periods of the test above).
    event["data"]["object"]["lines"]["data"][0]["period"] =
        json!({"start": 1705276800, "end": 1713139200});
    event["type"] = "invoice.finalized".into();
    let posted = only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap());
    event["type"] = "invoice.voided".into();
    event["id"] = "evt_voided".into();
    let voided = only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap());
    assert_eq!(voided.kind, kinds::INVOICE_VOIDED);

    let posted = schedules(&plugin_host().run(|| schedule_revenue(posted)).unwrap());
    let reversed = schedules(&plugin_host().run(|| schedule_revenue(voided)).unwrap());
    assert_eq!(reversed.len(), posted.len());
    assert_eq!(reversed[0].id, format!("{}/reversal", posted[0].id));
    let amounts: Vec<String> = reversed[0]
        .periods
        .iter()
        .map(|p| p.amount.to_string())
        .collect();
    // The posted schedule's amounts (19.64, 35.82, 35.82, 16.72 USD), negated.
    assert_eq!(
        amounts,
        ["-19.64 USD", "-35.82 USD", "-35.82 USD", "-16.72 USD"]
    );
    assert_eq!(reversed[0].total.to_string(), "-108.00 USD");
    // Period by period, what was recognised and its reversal come to nothing.
    for (p, r) in posted[0].periods.iter().zip(&reversed[0].periods) {
        assert_eq!(p.period, r.period);
        assert!((p.amount.amount + r.amount.amount).is_zero());
    }
}
