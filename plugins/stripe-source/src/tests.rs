//! The source through its entry point, in a test host: the example's webhook
//! (`examples/quote-to-cash/samples/stripe-invoice-finalized.json`) and Stripe's own
//! (`tests/fixtures/public/stripe_invoice_event_invoice_paid.json`), signed as Stripe
//! signs them with the endpoint's secret, and what is refused and why.

use super::*;
use hmac::Mac as _;
use tenon_sdk::model::{Encoding, Invoice, Payment};
use tenon_sdk::testing::Host;

const FINALIZED: &str =
    include_str!("../../../examples/quote-to-cash/samples/stripe-invoice-finalized.json");
const PAID: &str =
    include_str!("../../../tests/fixtures/public/stripe_invoice_event_invoice_paid.json");

const SECRET: &str = "whsec_test_secret";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `Stripe-Signature` of `body` signed with `secret` at `t`.
fn signature(body: &[u8], secret: &str, t: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn webhook(body: &[u8], signature: Option<String>) -> RawRequest {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    headers.extend(signature.map(|s| ("stripe-signature".to_owned(), s)));
    RawRequest {
        content_type: "application/json".into(),
        headers,
        body: body.to_vec(),
    }
}

/// A webhook signed now with the endpoint's secret.
fn signed(body: &[u8]) -> RawRequest {
    webhook(body, Some(signature(body, SECRET, now())))
}

fn source() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .secret("stripe_webhook_secret", SECRET)
}

fn invalid(result: Result<Vec<Message>, Failure>) -> String {
    match result {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    }
}

#[test]
fn a_signed_invoice_finalized_is_posted_once_per_event() {
    let messages = source()
        .run(|| ingest_webhook(signed(FINALIZED.as_bytes())))
        .unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (m.kind.as_str(), m.key.as_str()),
        ("InvoicePosted", "in_1Q2fh8BrSjgsps2DUqQsGLDj")
    );
    assert_eq!(m.idempotency_key(), Some("evt_example_finalized"));
    let invoice: Invoice = Encoding::MsgPack.decode(&m.body).unwrap();
    assert_eq!(invoice.total.to_string(), "108.00 USD");
    assert_eq!(invoice.lines.len(), 1);
}

#[test]
fn stripe_s_invoice_paid_is_a_payment() {
    let messages = source()
        .run(|| ingest_webhook(signed(PAID.as_bytes())))
        .unwrap();
    assert_eq!(messages[0].kind, "PaymentReceived");
    assert_eq!(
        messages[0].idempotency_key(),
        Some("evt_1Q2fklBrSjgsps2Dx0mEXsXv")
    );
    let payment: Payment = Encoding::MsgPack.decode(&messages[0].body).unwrap();
    assert_eq!(payment.amount.to_string(), "108.00 USD");
}

#[test]
fn a_webhook_without_a_valid_signature_is_invalid() {
    let body = FINALIZED.as_bytes();
    assert_eq!(
        invalid(source().run(|| ingest_webhook(webhook(body, None)))),
        "Stripe-Signature refused: the header is missing"
    );
    let forged = webhook(body, Some(signature(body, "whsec_other", now())));
    assert_eq!(
        invalid(source().run(|| ingest_webhook(forged))),
        "Stripe-Signature refused: no signature matches the body and the secret"
    );
    // Another body under the same signature.
    let mut tampered = signed(body);
    tampered.body = PAID.as_bytes().to_vec();
    assert_eq!(
        invalid(source().run(|| ingest_webhook(tampered))),
        "Stripe-Signature refused: no signature matches the body and the secret"
    );
    // Without the secret, everything is refused.
    let host = Host::new().with_manifest(include_str!("../plugin.toml"));
    assert_eq!(
        invalid(host.run(|| ingest_webhook(signed(body)))),
        "no webhook signing secret: the operator must provide `stripe_webhook_secret`"
    );
}

#[test]
fn the_tolerance_of_a_signature_s_age_comes_from_config() {
    let body = FINALIZED.as_bytes();
    let old = || webhook(body, Some(signature(body, SECRET, now() - 400)));
    // The manifest's 300 s.
    assert!(invalid(source().run(|| ingest_webhook(old()))).contains("tolerance 300 s"));
    let host = source().config("signature_tolerance_secs", "600");
    assert_eq!(host.run(|| ingest_webhook(old())).unwrap().len(), 1);
}

#[test]
fn what_the_source_cannot_read_or_complete_is_invalid() {
    let draft = include_str!("../../../tests/fixtures/public/stripe_invoice_object.json");
    assert_eq!(
        invalid(source().run(|| ingest_webhook(signed(draft.as_bytes())))),
        "invoice in_1Pgc6tB7WZ01zgkWu9fdqL6I is a draft: only finalized invoices are posted"
    );
    // More lines than the webhook carries: refused at once, since retrying the same
    // webhook can never complete it.
    let mut event: serde_json::Value = serde_json::from_str(FINALIZED).unwrap();
    event["data"]["object"]["lines"]["has_more"] = true.into();
    let body = event.to_string();
    assert_eq!(
        invalid(source().run(|| ingest_webhook(signed(body.as_bytes())))),
        "invoice in_1Q2fh8BrSjgsps2DUqQsGLDj has more lines than the webhook carries (`lines.has_more`): send it with every line (expand `lines`, or list them and post the invoice object)"
    );
}

/// The example's finalized invoice in `currency`, its one line and total of `amount`
/// Stripe units, its line's period `[start, end)`: what the source posts, read in
/// the host's config.
fn posted_with(host: Host, currency: &str, amount: i64, period: (i64, i64)) -> Invoice {
    let mut event: serde_json::Value = serde_json::from_str(FINALIZED).unwrap();
    let invoice = &mut event["data"]["object"];
    invoice["currency"] = currency.into();
    invoice["total"] = amount.into();
    let line = &mut invoice["lines"]["data"][0];
    line["currency"] = currency.into();
    line["amount"] = amount.into();
    line["period"] = serde_json::json!({"start": period.0, "end": period.1});
    let body = event.to_string();
    let out = host
        .run(|| ingest_webhook(signed(body.as_bytes())))
        .unwrap();
    Encoding::MsgPack.decode(&out[0].body).unwrap()
}

/// Unix seconds of a UTC date and time, built from the calendar (not from the code
/// under test, which goes the other way).
fn at(y: i32, m: u32, d: u32, hms: (u32, u32, u32)) -> i64 {
    NaiveDate::from_ymd_opt(y, m, d)
        .unwrap()
        .and_hms_opt(hms.0, hms.1, hms.2)
        .unwrap()
        .and_utc()
        .timestamp()
}

#[test]
fn amounts_follow_stripe_s_currency_table_not_iso_s() {
    let q4 = (at(2024, 10, 1, (0, 0, 0)), at(2025, 1, 1, (0, 0, 0)));
    // Stripe's integer 1999, by Stripe's table (docs.stripe.com/currencies):
    for (currency, expected) in [
        ("usd", "19.99 USD"), // two decimals, as ISO
        ("jpy", "1999 JPY"),  // zero-decimal, as ISO
        ("kwd", "1.999 KWD"), // three-decimal, as ISO
        // ISK: ISO 4217 has no minor unit, Stripe kept two: 1999 is 19.99 kronur (an
        // ISO reading would make it 1999 kronur, 100 times too much).
        ("isk", "19.99 ISK"),
        // MGA: ISO 4217 has two decimals, Stripe none: 1999 is 1999 ariary (an ISO
        // reading would make it 19.99, 100 times too little).
        ("mga", "1999 MGA"),
        // IQD: ISO has three decimals; Stripe lists three only for BHD, JOD, KWD, OMR
        // and TND: two.
        ("iqd", "19.99 IQD"),
    ] {
        let invoice = posted_with(source(), currency, 1999, q4);
        assert_eq!(invoice.total.to_string(), expected, "{currency}");
        assert_eq!(invoice.lines[0].amount.to_string(), expected, "{currency}");
    }
}

#[test]
fn service_periods_run_from_the_start_s_day_to_the_day_before_the_end_s() {
    let days = |p: &Period| (p.end - p.start).num_days() + 1;
    let period = |host: Host, start: i64, end: i64| {
        posted_with(host, "usd", 1000, (start, end)).lines[0]
            .service_period
            .unwrap()
    };
    // A monthly subscription anchored at 20:50:51: 5 January to 5 February is
    // 5 January..4 February, 31 days, the length of January (subtracting a second from
    // the end would give 5 February and 32 days, overlapping the next invoice).
    let p = period(
        source(),
        at(2025, 1, 5, (20, 50, 51)),
        at(2025, 2, 5, (20, 50, 51)),
    );
    assert_eq!(
        (p.start.to_string(), p.end.to_string()),
        ("2025-01-05".into(), "2025-02-04".into())
    );
    assert_eq!(days(&p), 31);
    // The next one starts where it ended: 5 February..4 March, 28 days.
    let next = period(
        source(),
        at(2025, 2, 5, (20, 50, 51)),
        at(2025, 3, 5, (20, 50, 51)),
    );
    assert_eq!(next.start, p.end.succ_opt().unwrap());
    assert_eq!(days(&next), 28);
    // Anchored at midnight in a leap year: February is 29 days.
    let p = period(
        source(),
        at(2024, 2, 1, (0, 0, 0)),
        at(2024, 3, 1, (0, 0, 0)),
    );
    assert_eq!((p.start.to_string(), days(&p)), ("2024-02-01".into(), 29));
    // A one-off item (start = end) is its one day.
    let t = at(2024, 6, 30, (12, 0, 0));
    let p = period(source(), t, t);
    assert_eq!(
        (p.start.to_string(), p.end.to_string()),
        ("2024-06-30".into(), "2024-06-30".into())
    );
    // Read in +01:00: 31 January 23:30 UTC is 1 February there, and the period to
    // 29 February 23:30 UTC (1 March 00:30 there) is February, 29 days.
    let p = period(
        source().config("time_zone", "+01:00"),
        at(2024, 1, 31, (23, 30, 0)),
        at(2024, 2, 29, (23, 30, 0)),
    );
    assert_eq!((p.start.to_string(), days(&p)), ("2024-02-01".into(), 29));
}

#[test]
fn a_time_zone_that_is_not_an_offset_or_a_period_that_ends_first_is_invalid() {
    let body = FINALIZED.as_bytes();
    assert_eq!(
        invalid(
            source()
                .config("time_zone", "Europe/Paris")
                .run(|| ingest_webhook(signed(body)))
        ),
        "config `time_zone` is `Europe/Paris`: it is an offset from UTC such as `+01:00`, `-05:30` or `Z`"
    );
    for (text, seconds) in [
        ("Z", 0),
        ("+00:00", 0),
        ("+05:30", 19_800),
        ("-03:00", -10_800),
    ] {
        assert_eq!(
            parse_offset(text).unwrap().local_minus_utc(),
            seconds,
            "{text}"
        );
    }
    for text in ["+5", "+15:00", "01:00", "+01:60", ""] {
        assert!(parse_offset(text).is_none(), "{text}");
    }
    let mut event: serde_json::Value = serde_json::from_str(FINALIZED).unwrap();
    event["data"]["object"]["lines"]["data"][0]["period"] =
        serde_json::json!({"start": 1_735_689_600, "end": 1_727_740_800});
    let body = event.to_string();
    assert_eq!(
        invalid(source().run(|| ingest_webhook(signed(body.as_bytes())))),
        "a period that ends (1727740800) before it starts (1735689600)"
    );
}

/// The example's finalized invoice with its one line replaced by `line` (amount 12000
/// or as given) and its total set to `total`.
fn invoice_with_line(line: serde_json::Value, total: i64) -> Invoice {
    let mut event: serde_json::Value = serde_json::from_str(FINALIZED).unwrap();
    let invoice = &mut event["data"]["object"];
    invoice["total"] = total.into();
    let first = &mut invoice["lines"]["data"][0];
    for (k, v) in line.as_object().unwrap() {
        first[k] = v.clone();
    }
    let body = event.to_string();
    let out = source()
        .run(|| ingest_webhook(signed(body.as_bytes())))
        .unwrap();
    Encoding::MsgPack.decode(&out[0].body).unwrap()
}

#[test]
fn a_line_earns_its_amount_less_discounts_and_without_tax_and_the_total_reconciles() {
    use tenon_sdk::model::TaxAmount;
    let usd = |s: &str| Money::new(s.parse().unwrap(), Currency::new("USD").unwrap());
    // The 2020-03-02 shape: a 120.00 line, 20.00 off, 19 % tax on top (exclusive) of
    // what is left: 100.00 * 0.19 = 19.00; Stripe's total is 120 - 20 + 19 = 119.00.
    let exclusive = invoice_with_line(
        serde_json::json!({
            "amount": 12000,
            "discount_amounts": [{"amount": 2000, "discount": "di_1"}],
            "tax_amounts": [{"amount": 1900, "inclusive": false,
                             "tax_rate": {"id": "txr_19", "object": "tax_rate", "percentage": 19.0}}],
        }),
        11900,
    );
    let line = &exclusive.lines[0];
    assert_eq!(line.amount, usd("100.00"));
    assert_eq!(line.discount, Some(usd("20.00")));
    assert_eq!(
        line.taxes,
        [TaxAmount {
            amount: usd("19.00"),
            rate_percent: Some("19".parse().unwrap()),
            rate: Some("txr_19".into()),
            inclusive: false,
        }]
    );
    assert_eq!(
        (exclusive.tax.clone(), exclusive.discount.clone()),
        (Some(usd("19.00")), Some(usd("20.00")))
    );
    assert_eq!(exclusive.total, usd("119.00"));

    // The current shape, a tax-inclusive price of 119.00 (19 % included: 119 / 1.19
    // = 100.00 earned, 19.00 tax), no discount; total 119.00.
    let inclusive = invoice_with_line(
        serde_json::json!({
            "amount": 11900,
            "discount_amounts": [],
            "tax_amounts": null,
            "taxes": [{"amount": 1900, "tax_behavior": "inclusive", "taxable_amount": 10000,
                       "type": "tax_rate_details",
                       "tax_rate_details": {"tax_rate": "txr_19_incl"}}],
        }),
        11900,
    );
    let line = &inclusive.lines[0];
    assert_eq!(
        (line.amount.clone(), line.discount.clone()),
        (usd("100.00"), None)
    );
    assert_eq!(line.taxes[0].amount, usd("19.00"));
    assert!(line.taxes[0].inclusive);
    assert_eq!(line.taxes[0].rate.as_deref(), Some("txr_19_incl"));
    // Whichever the shape, what the lines earn plus their taxes is the total.
    for invoice in [&exclusive, &inclusive] {
        let earned: Decimal = invoice.lines.iter().map(|l| l.amount.amount).sum();
        assert_eq!(
            earned + invoice.tax.as_ref().unwrap().amount,
            invoice.total.amount
        );
    }

    // No discount and no tax (the example): nothing added.
    let plain = posted_with(source(), "usd", 10800, (1_727_740_800, 1_735_689_600));
    assert_eq!(
        (plain.tax, plain.discount, plain.lines[0].taxes.len()),
        (None, None, 0)
    );
}

#[test]
fn an_invoice_names_the_quote_and_order_its_metadata_names() {
    // The example's invoice carries Stripe metadata {"task_id": "15", "order_id": "13"}.
    let invoice = posted_with(source(), "usd", 10800, (1_727_740_800, 1_735_689_600));
    assert_eq!(
        (invoice.order.as_deref(), invoice.quote.as_deref()),
        (Some("13"), None)
    );
    let host = source()
        .config("order_metadata_key", "task_id")
        .config("quote_metadata_key", "order_id");
    let invoice = posted_with(host, "usd", 10800, (1_727_740_800, 1_735_689_600));
    assert_eq!(
        (invoice.order.as_deref(), invoice.quote.as_deref()),
        (Some("15"), Some("13"))
    );
}

/// A credit note event, in the shape of Stripe's API reference: one line of 50.00 on
/// an invoice line, 10.00 of it a discount, 19 % tax inclusive in the rest (6.39).
fn credit_note_event(kind: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "evt_cn", "object": "event", "type": kind, "created": 1709251200,
        "data": {"object": {
            "id": "cn_1MxvRqLkdIwHu7ixY0xbUcxk", "object": "credit_note", "amount": 4000,
            "currency": "eur", "customer": "cus_NjLgPhUokHubJC",
            "invoice": "in_1MxvRkLkdIwHu7ixABNtI99m", "created": 1709251200,
            "number": "C9E0C52C-0036-CN-01", "reason": "order_change",
            "refund": "re_1", "status": "issued", "total": 4000, "type": "post_payment",
            "lines": {"object": "list", "has_more": false, "data": [{
                "id": "cnli_1", "object": "credit_note_line_item", "amount": 5000,
                "quantity": 1, "type": "invoice_line_item",
                "invoice_line_item": "il_1MxvRlLkdIwHu7ixnkbntxUV",
                "discount_amounts": [{"amount": 1000, "discount": "di_1"}],
                "tax_amounts": [{"amount": 639, "inclusive": true, "tax_rate": "txr_19"}]
            }]}
        }}
    })
}

#[test]
fn a_credit_note_credits_its_lines_net_of_discount_and_tax() {
    let body = credit_note_event("credit_note.created").to_string();
    let out = source()
        .run(|| ingest_webhook(signed(body.as_bytes())))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].kind.as_str(), out[0].key.as_str()),
        ("CreditIssued", "in_1MxvRkLkdIwHu7ixABNtI99m")
    );
    let note: tenon_sdk::model::CreditNote = Encoding::MsgPack.decode(&out[0].body).unwrap();
    // 50.00 less 10.00 of discount less 6.39 of inclusive tax: 33.61 of revenue.
    assert_eq!(note.lines[0].amount.to_string(), "33.61 EUR");
    assert_eq!(
        note.lines[0].invoice_line.as_deref(),
        Some("il_1MxvRlLkdIwHu7ixnkbntxUV")
    );
    assert_eq!(note.total.to_string(), "40.00 EUR");
    assert_eq!(note.refund.as_deref(), Some("re_1"));
    let body = credit_note_event("credit_note.voided").to_string();
    let out = source()
        .run(|| ingest_webhook(signed(body.as_bytes())))
        .unwrap();
    assert_eq!(out[0].kind, "CreditVoided");
}

#[test]
fn a_refund_is_all_refunded_on_the_invoice_and_one_without_an_invoice_is_nothing() {
    let charge = |invoice: serde_json::Value| {
        serde_json::json!({
            "id": "evt_ch", "object": "event", "type": "charge.refunded", "created": 1710460800,
            "data": {"object": {"id": "ch_1", "object": "charge", "amount": 10000,
                "amount_refunded": 2500, "currency": "usd", "customer": "cus_1",
                "invoice": invoice, "created": 1704067200,
                "refunds": {"data": [{"id": "re_1", "amount": 1000, "created": 1709251200},
                                     {"id": "re_2", "amount": 1500, "created": 1710460800}]}}}
        })
        .to_string()
    };
    let body = charge("in_1".into());
    let out = source()
        .run(|| ingest_webhook(signed(body.as_bytes())))
        .unwrap();
    assert_eq!(
        (out[0].kind.as_str(), out[0].key.as_str()),
        ("PaymentRefunded", "in_1")
    );
    let payment: Payment = Encoding::MsgPack.decode(&out[0].body).unwrap();
    // Both refunds, 10.00 and 15.00: 25.00, on the later one's day.
    assert_eq!(payment.amount.to_string(), "25.00 USD");
    assert_eq!(payment.on.unwrap().to_string(), "2024-03-15");
    let body = charge(serde_json::Value::Null);
    let host = source();
    assert_eq!(
        host.run(|| ingest_webhook(signed(body.as_bytes()))),
        Ok(Vec::new())
    );
    assert!(
        host.logs()
            .iter()
            .any(|(_, m)| m.contains("paid no invoice"))
    );
}

#[test]
fn a_credit_note_with_lines_left_out_or_no_customer_is_invalid() {
    let mut event = credit_note_event("credit_note.created");
    event["data"]["object"]["lines"]["has_more"] = true.into();
    let body = event.to_string();
    assert!(matches!(
        source().run(|| ingest_webhook(signed(body.as_bytes()))),
        Err(Failure::Invalid(why)) if why.starts_with("credit note cn_1MxvRqLkdIwHu7ixY0xbUcxk has more lines than the webhook carries")
    ));
    let mut event = credit_note_event("credit_note.created");
    event["data"]["object"]["customer"] = serde_json::Value::Null;
    let body = event.to_string();
    assert_eq!(
        source().run(|| ingest_webhook(signed(body.as_bytes()))),
        Err(Failure::Invalid(
            "credit note cn_1MxvRqLkdIwHu7ixY0xbUcxk has no customer".into()
        ))
    );
}
