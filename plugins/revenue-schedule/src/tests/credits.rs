//! Credit notes and refunds against a Stripe invoice, as the Stripe source reads them;
//! every figure by hand.

use super::*;

const INVOICE: &str = "in_1Q2fh8BrSjgsps2DUqQsGLDj";
const LINE: &str = "il_1Q2fh9BrSjgsps2DFNoGRrJn";

/// The public invoice event, finalized: one line of 120.00 USD for January to March
/// 2024 (Stripe's end exclusive: 2024-04-01), and `tax` on top.
fn invoice_posted(tax: i64) -> Message {
    let mut event: Value = serde_json::from_str(STRIPE_PAID).unwrap();
    event["type"] = "invoice.finalized".into();
    let line = &mut event["data"]["object"]["lines"]["data"][0];
    line["amount"] = 12000.into();
    line["period"] = json!({"start": 1704067200, "end": 1711929600});
    if tax > 0 {
        line["tax_amounts"] = json!([{"amount": tax, "inclusive": false, "tax_rate": "txr_19"}]);
    }
    event["data"]["object"]["total"] = (12000 + tax).into();
    only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap())
}

/// A credit note of `amount` on the invoice's line (or a line of its own).
fn credit_note(kind: &str, id: &str, amount: i64, on_line: bool) -> Message {
    let event = json!({
        "id": format!("evt_{id}_{kind}"), "object": "event", "type": kind, "created": 1709251200,
        "data": {"object": {
            "id": id, "object": "credit_note", "amount": amount, "currency": "usd",
            "customer": "cus_QsYn1aSStYv4tf", "invoice": INVOICE, "created": 1709251200,
            "number": "C9E0C52C-0036-CN-01", "reason": "product_unsatisfactory", "refund": null,
            "status": "issued", "total": amount, "type": "post_payment",
            "lines": {"object": "list", "has_more": false, "data": [{
                "id": format!("cnli_{id}"), "object": "credit_note_line_item", "amount": amount,
                "quantity": 1, "discount_amounts": [], "tax_amounts": [],
                "type": if on_line { "invoice_line_item" } else { "custom_line_item" },
                "invoice_line_item": if on_line { json!(LINE) } else { Value::Null },
            }]},
        }},
    });
    only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap())
}

/// The invoice's charge, `refunded` in all so far.
fn refund(refunded: i64) -> Message {
    let event = json!({
        "id": format!("evt_refund_{refunded}"), "object": "event", "type": "charge.refunded",
        "created": 1710460800,
        "data": {"object": {
            "id": "ch_1", "object": "charge", "amount": 14280, "amount_refunded": refunded,
            "currency": "usd", "customer": "cus_QsYn1aSStYv4tf", "invoice": INVOICE,
            "created": 1704067200, "refunded": true,
            "refunds": {"data": [{"id": "re_1", "amount": refunded, "created": 1710460800}]},
        }},
    });
    only(stripe_source::to_messages(event.to_string().as_bytes()).unwrap())
}

fn amounts(schedule: &RevenueSchedule) -> Vec<String> {
    schedule
        .periods
        .iter()
        .map(|p| p.amount.amount.to_string())
        .collect()
}

fn run(host: &Host, message: Message) -> Vec<RevenueSchedule> {
    schedules(&host.run(|| schedule_revenue(message)).unwrap())
}

#[test]
fn a_credit_note_takes_back_its_line_period_by_period_and_a_void_gives_it_again() {
    let host = plugin_host();
    // 120.00 over January, February and March 2024: 40.00 each.
    let posted = run(&host, invoice_posted(0));
    assert_eq!(amounts(&posted[0]), ["40.00", "40.00", "40.00"]);
    // 30.00 credited: a third of it from each month, 10.00.
    let note = credit_note("credit_note.created", "cn_1", 3000, true);
    assert_eq!(note.kind, kinds::CREDIT_ISSUED);
    assert_eq!(note.key, INVOICE, "it follows its invoice");
    let out = run(&host, note);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, format!("cn_1/{LINE}"));
    assert_eq!(amounts(&out[0]), ["-10.00", "-10.00", "-10.00"]);
    assert_eq!(out[0].total.amount.to_string(), "-30.00");
    // The same note again: the same schedule, nothing more.
    let again = run(
        &host,
        credit_note("credit_note.created", "cn_1", 3000, true),
    );
    assert_eq!(again, out);
    // 100.00 more would credit 130.00 of a 120.00 line.
    let too_much = credit_note("credit_note.created", "cn_2", 10000, true);
    assert!(matches!(
        host.run(|| schedule_revenue(too_much)),
        Err(Failure::Rejected(why)) if why[0].contains("which billed 120.00 USD and has 30.00 USD credited already")
    ));
    // Voided: the schedule again, empty, its next revision.
    let out = run(&host, credit_note("credit_note.voided", "cn_1", 3000, true));
    assert_eq!(out[0].id, format!("cn_1/{LINE}"));
    assert_eq!(amounts(&out[0]), ["0.00", "0.00", "0.00"]);
    assert_eq!(
        (out[0].revision, out[0].total.amount.to_string()),
        (2, "0.00".into())
    );
    assert_eq!(out[0].change.as_ref().unwrap().reason, "credit voided");
}

#[test]
fn a_refund_takes_back_what_credit_notes_did_not() {
    let host = plugin_host();
    run(&host, invoice_posted(0));
    // A 30.00 credit note, then 50.00 refunded: 20.00 beyond the note, taken from
    // the months by what they recognised: 20 x 40/120 = 6.666.. -> 6.66, 6.66, and
    // the rest 6.68.
    run(
        &host,
        credit_note("credit_note.created", "cn_1", 3000, true),
    );
    let r = refund(5000);
    assert_eq!(
        (r.kind.as_str(), r.key.as_str()),
        (kinds::PAYMENT_REFUNDED, INVOICE)
    );
    let out = run(&host, r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, format!("{INVOICE}/{LINE}/refund"));
    assert_eq!(amounts(&out[0]), ["-6.66", "-6.66", "-6.68"]);
    // The same refund again changes nothing.
    assert_eq!(run(&host, refund(5000)), []);
    // The note voided: the refund is all beyond notes now, 50.00: 16.66, 16.66, 16.68.
    let out = run(&host, credit_note("credit_note.voided", "cn_1", 3000, true));
    let refund_schedule = out.iter().find(|s| s.id.ends_with("/refund")).unwrap();
    assert_eq!(amounts(refund_schedule), ["-16.66", "-16.66", "-16.68"]);
    assert_eq!(refund_schedule.revision, 2);
}

#[test]
fn a_refund_takes_back_only_revenue_not_tax() {
    let host = plugin_host();
    // 120.00 and 22.80 of tax (19 %): 142.80 billed.
    run(&host, invoice_posted(2280));
    // All of it refunded: 142.80 x 120.00 / 142.80 = 120.00 of revenue.
    let out = run(&host, refund(14280));
    assert_eq!(amounts(&out[0]), ["-40.00", "-40.00", "-40.00"]);
    // Half: 71.40 x 120 / 142.80 = 60.00 (the refund amount is all refunded so far,
    // so a later, smaller figure is an older event and changes nothing).
    assert_eq!(run(&host, refund(7140)), []);
}

#[test]
fn a_credit_of_its_own_is_taken_back_the_day_it_is_issued() {
    let host = plugin_host();
    run(&host, invoice_posted(0));
    // Issued 2024-03-01 (1709251200).
    let out = run(
        &host,
        credit_note("credit_note.created", "cn_9", 500, false),
    );
    assert_eq!(out[0].periods.len(), 1);
    assert_eq!(
        (out[0].periods[0].period.start.to_string(), amounts(&out[0])),
        ("2024-03-01".into(), vec!["-5.00".to_owned()])
    );
    // A credit against an invoice never posted here says so.
    let stranger = plugin_host();
    assert!(matches!(
        stranger.run(|| schedule_revenue(credit_note("credit_note.created", "cn_3", 500, true))),
        Err(Failure::Rejected(why)) if why[0].contains("was never posted here")
    ));
}

/// A Zuora credit memo: its invoice is Zuora's (never posted here), so each item is
/// taken back over its own service dates.
#[test]
fn a_zuora_credit_memo_is_taken_back_over_its_service_dates() {
    let memo = json!({
        "id": "CM-1", "number": "CM00000001", "accountNumber": "A00000001", "amount": 60.00,
        "creditMemoDate": "2025-03-05", "currency": "USD", "referredInvoiceId": "INV-Z1",
        "status": "Posted",
        "items": [{"id": "cmi-1", "amountWithoutTax": 60.00, "serviceStartDate": "2025-03-01",
            "serviceEndDate": "2025-04-30", "sourceItemType": "SubscriptionComponent"}]
    });
    let message = only(zuora_source::to_messages(memo.to_string().as_bytes(), "USD").unwrap());
    // March and April, whole months: 30.00 each, taken back.
    let out = run(&plugin_host(), message);
    assert_eq!(out[0].id, "CM-1/cmi-1");
    assert_eq!(amounts(&out[0]), ["-30.00", "-30.00"]);
}

/// What a credit or a refund cannot apply to is refused by name, and nothing is kept.
#[test]
fn credits_that_do_not_fit_the_invoice_are_refused() {
    let host = plugin_host();
    run(&host, invoice_posted(0));
    // A line the invoice does not have.
    let mut note: Value = serde_json::to_value(
        Encoding::MsgPack
            .decode::<tenon_sdk::model::CreditNote>(
                &credit_note("credit_note.created", "cn_5", 500, true).body,
            )
            .unwrap(),
    )
    .unwrap();
    note["lines"][0]["invoice_line"] = "il_nope".into();
    let stray = Message::encode(kinds::CREDIT_ISSUED, INVOICE, &note).unwrap();
    assert_eq!(
        host.run(|| schedule_revenue(stray)),
        Err(Failure::Rejected(vec![format!(
            "credit note cn_5 line cnli_cn_5: invoice {INVOICE} has no line il_nope"
        )]))
    );
    // A void of a note never issued here.
    assert!(matches!(
        host.run(|| schedule_revenue(credit_note("credit_note.voided", "cn_6", 500, true))),
        Err(Failure::Rejected(why)) if why[0] == format!("credit note cn_6 of invoice {INVOICE} was never issued here, or is voided already")
    ));
    // A refund in another currency than the invoice's.
    let mut payment: tenon_sdk::model::Payment =
        Encoding::MsgPack.decode(&refund(1000).body).unwrap();
    payment.amount = tenon_sdk::model::Money::new(
        "10.00".parse().unwrap(),
        tenon_sdk::model::Currency::new("EUR").unwrap(),
    );
    let foreign = Message::encode(kinds::PAYMENT_REFUNDED, INVOICE, &payment).unwrap();
    assert_eq!(
        host.run(|| schedule_revenue(foreign)),
        Err(Failure::Rejected(vec![format!(
            "refund of invoice {INVOICE} in EUR, the invoice in USD"
        )]))
    );
    // None of it left a trace: the first real note still credits from nothing.
    let out = run(
        &host,
        credit_note("credit_note.created", "cn_7", 3000, true),
    );
    assert_eq!(amounts(&out[0]), ["-10.00", "-10.00", "-10.00"]);
}
