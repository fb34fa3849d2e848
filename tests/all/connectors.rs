//! The sources on the public fixtures (`tests/fixtures/public/`, verbatim), compiled
//! natively (the same code the components run), with our own cases beside them for
//! what the fixtures lack; each negative case with its exact outcome.

use crate::support::public_fixture as fixture;
use serde_json::{Value, json};
use tenon_sdk::model::{Encoding, Invoice, Payment};
use tenon_sdk::{Failure, Message};

/// A Stripe event of `kind` around an invoice object.
fn event(kind: &str, invoice: Value) -> Value {
    json!({"id": "evt_test_0001", "object": "event", "api_version": "2024-06-20",
           "created": 1727300000, "type": kind, "data": {"object": invoice}})
}

fn stripe(body: &Value) -> Result<Vec<Message>, Failure> {
    stripe_source::to_messages(body.to_string().as_bytes())
}

fn only(messages: Vec<Message>) -> Message {
    assert_eq!(messages.len(), 1);
    messages.into_iter().next().unwrap()
}

fn decode<T: for<'de> serde::Deserialize<'de>>(m: &Message) -> T {
    Encoding::MsgPack.decode(&m.body).unwrap()
}

#[test]
fn stripe_invoice_paid_in_the_2020_03_02_shape_is_a_payment() {
    let m = only(stripe(&fixture("stripe_invoice_event_invoice_paid.json")).unwrap());
    assert_eq!(m.kind, "PaymentReceived");
    assert_eq!(m.key, "in_1Q2fh8BrSjgsps2DUqQsGLDj");
    assert_eq!(
        m.header("idempotency-key"),
        Some("evt_1Q2fklBrSjgsps2Dx0mEXsXv")
    );
    let payment: Payment = decode(&m);
    assert_eq!(
        serde_json::to_value(&payment).unwrap(),
        json!({
            "invoice_id": "in_1Q2fh8BrSjgsps2DUqQsGLDj",
            "invoice_number": "54B03F60-0003",
            "customer": {"id": "cus_QsYn1aSStYv4tf"},
            "amount": {"amount": "108.00", "currency": "USD"},
            "on": "2024-09-24",
            "attempts": 1,
        })
    );
}

#[test]
fn stripe_invoices_of_both_shapes_post_with_their_lines_and_periods() {
    // The 2020-03-02 invoice, finalized.
    let old = fixture("stripe_invoice_event_invoice_paid.json")["data"]["object"].clone();
    let m = only(stripe(&event("invoice.finalized", old)).unwrap());
    assert_eq!(m.kind, "InvoicePosted");
    let invoice: Invoice = decode(&m);
    assert_eq!(invoice.total.to_string(), "108.00 USD");
    assert_eq!(invoice.number.as_deref(), Some("54B03F60-0003"));
    assert_eq!(invoice.issued.unwrap().to_string(), "2024-09-24");
    assert_eq!(invoice.lines.len(), 1);
    assert_eq!(invoice.lines[0].amount.to_string(), "108.00 USD");
    assert_eq!(invoice.lines[0].quantity.to_string(), "1");
    let period = invoice.lines[0].service_period.unwrap();
    assert_eq!(
        (period.start.to_string(), period.end.to_string()),
        ("2024-09-24".into(), "2024-09-24".into())
    );

    // The current invoice object, finalized (the fixture itself is a draft).
    let mut current = fixture("stripe_invoice_object.json");
    current["status"] = json!("open");
    let m = only(stripe(&event("invoice.finalized", current)).unwrap());
    let invoice: Invoice = decode(&m);
    assert_eq!(invoice.total.to_string(), "10.00 USD");
    assert_eq!(invoice.lines[0].id, "il_1Pgc6sB7WZ01zgkWFnxLrLCq");
    assert_eq!(
        invoice.lines[0].description.as_deref(),
        Some("My First Invoice Item (created for API docs)")
    );
    assert_eq!(
        invoice.lines[0].service_period.unwrap().start.to_string(),
        "2024-07-26"
    );
}

#[test]
fn stripe_amounts_follow_the_currency_minor_unit_and_periods_end_inclusive() {
    let mut invoice = fixture("stripe_invoice_event_invoice_paid.json")["data"]["object"].clone();
    invoice["currency"] = json!("jpy");
    invoice["total"] = json!(1999);
    let line = &mut invoice["lines"]["data"][0];
    line["currency"] = json!("jpy");
    line["amount"] = json!(1999);
    // A monthly subscription line: 2024-02-01 .. 2024-03-01 (exclusive), a leap February.
    line["period"] = json!({"start": 1706745600, "end": 1709251200});
    let invoice: Invoice = decode(&only(stripe(&event("invoice.finalized", invoice)).unwrap()));
    assert_eq!(invoice.total.to_string(), "1999 JPY");
    let period = invoice.lines[0].service_period.unwrap();
    assert_eq!(
        (period.start.to_string(), period.end.to_string()),
        ("2024-02-01".into(), "2024-02-29".into())
    );
}

#[test]
fn stripe_payment_failures_carry_the_amount_due_and_attempts() {
    let mut invoice = fixture("stripe_invoice_event_invoice_paid.json")["data"]["object"].clone();
    invoice["attempt_count"] = json!(3);
    invoice["amount_paid"] = json!(0);
    let m = only(stripe(&event("invoice.payment_failed", invoice)).unwrap());
    assert_eq!(m.kind, "PaymentFailed");
    let payment: Payment = decode(&m);
    assert_eq!(
        (payment.amount.to_string(), payment.attempts),
        ("108.00 USD".into(), Some(3))
    );
}

#[test]
fn stripe_bad_input_has_exact_outcomes() {
    let invalid = |r: Result<Vec<Message>, Failure>| match r {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    };
    assert_eq!(
        invalid(stripe(&fixture("stripe_invoice_object.json"))),
        "invoice in_1Pgc6tB7WZ01zgkWu9fdqL6I is a draft: only finalized invoices are posted"
    );
    assert_eq!(
        invalid(stripe(&fixture(
            "stripe_djstripe_invoice_in_fakefakefakefakefake0001.json"
        ))),
        "invoice in_fakefakefakefakefake0001 carries no `lines.data`: send it with its lines"
    );
    assert_eq!(
        invalid(stripe(&event("customer.created", json!({})))),
        "unsupported Stripe event type `customer.created`; this source handles invoice.finalized, invoice.paid, invoice.payment_failed, invoice.voided, credit_note.created, credit_note.voided, charge.refunded"
    );
    let mut wrong = fixture("stripe_invoice_event_invoice_paid.json");
    wrong["data"]["object"]["total"] = json!("108.00");
    assert_eq!(
        invalid(stripe(&wrong)),
        "not a Stripe invoice: invalid type: string \"108.00\", expected i64"
    );
    let mut missing = fixture("stripe_invoice_event_invoice_paid.json");
    missing["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("currency");
    assert_eq!(
        invalid(stripe(&missing)),
        "not a Stripe invoice: missing field `currency`"
    );
    assert_eq!(
        invalid(stripe_source::to_messages(b"<xml/>")),
        "the body is not JSON: expected value at line 1 column 1"
    );
    assert_eq!(
        invalid(stripe(&fixture("stripe_subscription_object.json"))),
        "a Stripe `subscription` object is not an event or an invoice"
    );
}

fn zuora(body: &Value) -> Result<Vec<Message>, Failure> {
    zuora_source::to_messages(body.to_string().as_bytes(), "USD")
}

fn contract_json(m: &Message) -> Value {
    let contract: tenon_sdk::model::Contract = decode(m);
    serde_json::to_value(contract).unwrap()
}

#[test]
fn zuora_create_subscription_activates_a_contract() {
    let m = only(zuora(&fixture("zuora_order_create_subscription.json")).unwrap());
    assert_eq!(
        (m.kind.as_str(), m.key.as_str()),
        ("ContractActivated", "SM-00001")
    );
    assert_eq!(m.header("idempotency-key"), Some("OM-00001/SM-00001"));
    assert_eq!(
        contract_json(&m),
        json!({
            "id": "SM-00001",
            "customer": {"id": "A00000001"},
            "status": "Active",
            "currency": "USD",
            "contract_effective": "2017-01-01",
            "term_months": 12,
            "renewal_term_months": 12,
            "actions": ["CreateSubscription"],
            "order": "OM-00001",
            "lines": [{
                "id": "efbff07e6290dfb8016291003bd00dda",
                "product": {"id": "efbff07e6290dfb8016291003bd00dda"},
                "quantity": "1",
                "charge": "Recurring",
                "service_period": {"start": "2017-01-01", "end": "2017-12-31"},
                "effective": "2017-01-01",
            }],
        })
    );
}

#[test]
fn zuora_remove_and_add_product_is_one_amendment_with_its_three_dates_apart() {
    let m = only(zuora(&fixture("zuora_order_amendment_remove_add_product.json")).unwrap());
    assert_eq!(
        (m.kind.as_str(), m.key.as_str()),
        ("ContractAmended", "A-S00000272")
    );
    let c = contract_json(&m);
    assert_eq!(c["actions"], json!(["RemoveProduct", "AddProduct"]));
    // The first action's dates win where stated: service activation 2023-03-01 and
    // acceptance 2023-04-01 (remove), contract effective 2023-04-01 (add).
    assert_eq!(
        (
            &c["contract_effective"],
            &c["service_activation"],
            &c["customer_acceptance"]
        ),
        (
            &json!("2023-04-01"),
            &json!("2023-03-01"),
            &json!("2023-04-01")
        )
    );
    // Each charge keeps its own action's service date.
    let changes: Vec<(&str, &str, &str)> = c["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap(),
                l["change"].as_str().unwrap(),
                l["effective"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("8a90a9b784ae5f180184c6c46a1a46b6", "Removed", "2023-03-01"),
            ("8a90a9b784ae5f180184c6c46a1a46b6", "Added", "2023-05-01"),
        ]
    );
}

#[test]
fn zuora_suspend_resume_renew_and_cancel() {
    let kinds_and_status = |name: &str| {
        let m = only(zuora(&fixture(name)).unwrap());
        let c = contract_json(&m);
        (
            m.kind,
            c["status"].as_str().unwrap().to_owned(),
            c["actions"].clone(),
        )
    };
    assert_eq!(
        kinds_and_status("zuora_order_renew_suspend_resume_0.json"),
        (
            "ContractAmended".into(),
            "Suspended".into(),
            json!(["Suspend"])
        )
    );
    assert_eq!(
        kinds_and_status("zuora_order_renew_suspend_resume_1.json"),
        ("ContractAmended".into(), "Active".into(), json!(["Resume"]))
    );
    assert_eq!(
        kinds_and_status("zuora_order_renew_suspend_resume_2.json"),
        (
            "ContractAmended".into(),
            "Active".into(),
            json!(["RenewSubscription"])
        )
    );
    let m = only(zuora(&fixture("zuora_order_cancel.json")).unwrap());
    assert_eq!(
        (m.kind.as_str(), m.key.as_str()),
        ("ContractCancelled", "A-S00020635")
    );
    let c = contract_json(&m);
    assert_eq!(
        (&c["status"], &c["ends"]),
        (&json!("Cancelled"), &json!("2022-04-30"))
    );
    assert_eq!(c["customer"]["id"], "A%00026428");
}

#[test]
fn zuora_prices_come_only_from_charge_overrides() {
    let mut order = fixture("zuora_order_create_subscription.json");
    order["subscriptions"][0]["orderActions"][0]["createSubscription"]["subscribeToRatePlans"][0]
        ["chargeOverrides"] = json!([{"productRatePlanChargeId": "c1", "billingPeriod": "Month",
            "pricing": {"recurringPerUnit": {"listPrice": 19.99, "quantity": 3}}}]);
    let c = contract_json(&only(zuora(&order).unwrap()));
    // 3 x 19.99 a month over the 12-month term.
    assert_eq!(
        c["lines"][0]["amount"],
        json!({"amount": "719.64", "currency": "USD"})
    );
    assert_eq!(c["lines"][0]["quantity"], "3");
    // Without its billing period, a recurring price says nothing about the term.
    order["subscriptions"][0]["orderActions"][0]["createSubscription"]["subscribeToRatePlans"][0]
        ["chargeOverrides"][0]
        .as_object_mut()
        .unwrap()
        .remove("billingPeriod");
    let c = contract_json(&only(zuora(&order).unwrap()));
    assert!(c["lines"][0].get("amount").is_none(), "{c}");
}

#[test]
fn zuora_bad_input_has_exact_outcomes() {
    let invalid = |r: Result<Vec<Message>, Failure>| match r {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    };
    let mut unknown = fixture("zuora_order_cancel.json");
    unknown["subscriptions"][0]["orderActions"][0]["type"] = json!("OwnerTransfer");
    assert!(
        invalid(zuora(&unknown))
            .starts_with("unsupported Zuora order action `OwnerTransfer` on A-S00020635; this source handles CreateSubscription, ")
    );
    let mut no_date = fixture("zuora_order_cancel.json");
    no_date.as_object_mut().unwrap().remove("orderDate");
    assert_eq!(
        invalid(zuora(&no_date)),
        "not a Zuora order: missing field `orderDate`"
    );
    let mut bad_date = fixture("zuora_order_cancel.json");
    bad_date["subscriptions"][0]["orderActions"][0]["triggerDates"][0]["triggerDate"] =
        json!("30/04/2022");
    assert_eq!(
        invalid(zuora(&bad_date)),
        "CustomerAcceptance `30/04/2022` is not a date (YYYY-MM-DD)"
    );
    let mut two = fixture("zuora_order_amendment_remove_add_product.json");
    two["subscriptions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"subscriptionNumber": "A-S00000999", "orderActions": []}));
    assert_eq!(
        invalid(zuora(&two)),
        "subscription entry 1 has no subscriptionNumber, and the order names 2 subscriptions"
    );
    assert_eq!(
        invalid(zuora_source::to_messages(b"{}", "USD")),
        "not a Zuora order: missing field `orderDate`"
    );
    assert_eq!(
        invalid(zuora_source::to_messages(
            fixture("zuora_order_cancel.json").to_string().as_bytes(),
            "dollars"
        )),
        "config `currency`: `dollars` is not an ISO 4217 currency code (three letters, e.g. EUR)"
    );
}

/// The schedules the revenue step makes of `m`, in a test host with its grants (each
/// call a fresh one: no contract seen before).
fn schedules(m: &Message) -> Result<Vec<Value>, Failure> {
    let host = tenon_sdk::testing::Host::new()
        .with_manifest(include_str!("../../plugins/revenue-schedule/plugin.toml"));
    Ok(host
        .run(|| revenue_schedule::schedules_of(m))?
        .into_iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect())
}

fn amounts(schedule: &Value) -> Vec<String> {
    schedule["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["amount"]["amount"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_zuora_contract_with_a_price_is_recognised_monthly() {
    let mut order = fixture("zuora_order_create_subscription.json");
    order["subscriptions"][0]["orderActions"][0]["createSubscription"]["subscribeToRatePlans"][0]
        ["chargeOverrides"] = json!([{"productRatePlanChargeId": "c1", "billingPeriod": "Month",
            "pricing": {"recurringFlatFee": {"listPrice": 100}}}]);
    let contract = only(zuora(&order).unwrap());
    let s = schedules(&contract).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["id"], "SM-00001/efbff07e6290dfb8016291003bd00dda");
    assert_eq!(
        s[0]["total"],
        json!({"amount": "1200.00", "currency": "USD"})
    );
    assert_eq!(amounts(&s[0]), vec!["100.00"; 12]);
    assert_eq!(
        s[0]["periods"][11]["period"],
        json!({"start": "2017-12-01", "end": "2017-12-31"})
    );

    // The fixture itself names no price: nothing can be recognised, and it says why.
    let unpriced = only(zuora(&fixture("zuora_order_create_subscription.json")).unwrap());
    assert_eq!(
        schedules(&unpriced).unwrap_err(),
        Failure::Rejected(vec![
            "line efbff07e6290dfb8016291003bd00dda: no price: the order does not override the catalogue price, so nothing can be recognised".into()
        ])
    );
    // A cancellation of a contract never activated has no schedule to stop.
    let cancelled = only(zuora(&fixture("zuora_order_cancel.json")).unwrap());
    assert!(matches!(schedules(&cancelled), Err(Failure::Rejected(_))));
}

#[test]
fn an_invoice_line_with_a_service_period_is_recognised_over_it() {
    let mut invoice = fixture("stripe_invoice_event_invoice_paid.json")["data"]["object"].clone();
    invoice["currency"] = json!("kwd");
    invoice["total"] = json!(10000);
    let line = &mut invoice["lines"]["data"][0];
    line["currency"] = json!("kwd");
    line["amount"] = json!(10000);
    // 2024-01-15 .. 2024-04-14 inclusive (Stripe's end is exclusive).
    line["period"] = json!({"start": 1705276800, "end": 1713139200});
    let posted = only(stripe(&event("invoice.finalized", invoice)).unwrap());
    let s = schedules(&posted).unwrap();
    // 17/31 of January, February (29 days, leap), March, 14/30 of April; 10.000 KWD.
    assert_eq!(amounts(&s[0]), ["1.818", "3.316", "3.316", "1.550"]);
    let sum: tenon_sdk::model::rust_decimal::Decimal = amounts(&s[0])
        .iter()
        .map(|a| {
            a.parse::<tenon_sdk::model::rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(sum.to_string(), "10.000");
}

#[test]
fn obligations_sharing_a_price_are_allocated_by_standalone_price() {
    use tenon_sdk::model::{
        ChargeType, Contract, ContractLine, ContractStatus, Currency, Money, Party, Period, Product,
    };
    let eur = Currency::new("EUR").unwrap();
    let money = |a: &str| Money::new(a.parse().unwrap(), eur.clone());
    let period = Period {
        start: "2025-01-01".parse().unwrap(),
        end: "2025-12-31".parse().unwrap(),
    };
    let line = |id: &str, amount: Option<Money>, ssp: &str| ContractLine {
        id: id.into(),
        product: Product {
            id: id.into(),
            code: None,
            name: None,
        },
        quantity: 1.into(),
        amount,
        standalone_price: Some(money(ssp)),
        charge: ChargeType::Recurring,
        service_period: Some(period),
        change: None,
        effective: None,
        recurring: None,
    };
    let contract = Contract {
        id: "C-1".into(),
        customer: Party {
            id: "A1".into(),
            name: None,
            country: None,
            external_ids: Default::default(),
            parent: None,
            blocked: false,
            credit_hold: false,
        },
        status: ContractStatus::Active,
        currency: eur.clone(),
        contract_effective: None,
        service_activation: None,
        customer_acceptance: None,
        term_months: Some(12),
        evergreen: false,
        renewal_term_months: None,
        ends: None,
        actions: vec![],
        events: vec![],
        quote: None,
        order: None,
        lines: vec![
            line("licence", Some(money("900.00")), "800.00"),
            line("support", None, "400.00"),
        ],
    };
    let s = revenue_schedule::contract_schedules(&contract).unwrap();
    let totals: Vec<String> = s.iter().map(|s| s.total.to_string()).collect();
    assert_eq!(totals, ["600.00 EUR", "300.00 EUR"]);
    assert_eq!(
        amounts(&serde_json::to_value(&s[1]).unwrap()),
        vec!["25.00"; 12]
    );
}

#[test]
fn revenue_schedules_refuse_messages_they_do_not_take() {
    let m = Message::encode("OrderAccepted", "Q-1", &json!({})).unwrap();
    assert_eq!(
        schedules(&m).unwrap_err(),
        Failure::Invalid("a `OrderAccepted` message has no revenue schedule; this step takes ContractActivated, ContractAmended, ContractCancelled, InvoicePosted, InvoiceVoided, CreditIssued, CreditVoided and PaymentRefunded".into())
    );
}

fn plain_order() -> tenon_sdk::model::Order {
    let model: cpq_source::QuoteModel =
        serde_json::from_str(crate::support::sample("plain.json")).unwrap();
    let quote = cpq_source::to_quote(model, None).unwrap();
    quote_to_order::map_quote(&quote).unwrap().remove(0)
}

#[test]
fn the_gateway_reports_every_failed_rule() {
    use order_gateway::{Rules, violations};
    use tenon_sdk::model::{Currency, Money, Party};
    let order = plain_order();
    let known = Party {
        id: order.customer.id.clone(),
        name: None,
        country: Some("DE".into()),
        external_ids: Default::default(),
        parent: None,
        blocked: false,
        credit_hold: false,
    };
    let rules = Rules {
        tax_nexus: vec!["DE".into()],
        product_restrictions: [("HW-DOCK-C".to_owned(), vec!["FR".to_owned()])].into(),
        revenue_rules: Default::default(),
    };
    assert_eq!(
        violations(&order, Some(&known), &rules, &|_| None),
        Vec::<String>::new()
    );

    let mut bad = order.clone();
    bad.lines[1].unit_price = Money::new("246.2".parse().unwrap(), Currency::new("USD").unwrap());
    let in_france = Party {
        country: Some("FR".into()),
        ..known.clone()
    };
    assert_eq!(
        violations(&bad, Some(&in_france), &rules, &|_| None),
        [
            "no tax nexus in FR: the company is not registered to collect tax there",
            "line 20: product `HW-DOCK-C` may not be sold in FR",
            "line 20: unit price is in USD, the order in EUR",
        ]
    );
    assert_eq!(
        violations(&order, None, &rules, &|_| None),
        ["sold-to customer `0015g00000XyZ12AAB` is not in the customer master"]
    );
    assert_eq!(
        Rules::from_config(|k| (k == "tax_nexus").then(|| "DE".to_owned())).unwrap_err(),
        Failure::Invalid("config `tax_nexus`: expected value at line 1 column 1".into())
    );
}

#[test]
fn legal_entities_come_from_config_rules() {
    use entity_router::entity_for;
    let rules: std::collections::BTreeMap<String, String> = [
        ("DE".to_owned(), "DE01".to_owned()),
        ("FR".to_owned(), "FR01".to_owned()),
    ]
    .into();
    assert_eq!(entity_for(Some("de"), &rules).unwrap(), "DE01");
    assert_eq!(
        entity_for(Some("BR"), &rules).unwrap_err(),
        "no legal entity for customer country BR: config `entities` has no rule for it and no `*`"
    );
    let mut with_default = rules.clone();
    with_default.insert("*".into(), "US01".into());
    assert_eq!(entity_for(None, &with_default).unwrap(), "US01");
}

#[test]
fn the_generic_sink_fills_url_templates_and_secret_headers() {
    let mut m = Message::encode("OrderAccepted", "Q 1/2", &json!({})).unwrap();
    m.id = "id-1".into();
    assert_eq!(
        http_sink::url_for("https://erp.example.com/{kind}/{key}?m={id}", &m),
        "https://erp.example.com/OrderAccepted/Q%201%2F2?m=id-1"
    );
    let secret = |name: &str| match name {
        "token" => Ok("s3cr3t".to_owned()),
        other => Err(Failure::Invalid(format!("secret `{other}` is not granted"))),
    };
    assert_eq!(
        http_sink::secret_header("Bearer {token}", secret).unwrap(),
        "Bearer s3cr3t"
    );
    assert_eq!(http_sink::secret_header("token", secret).unwrap(), "s3cr3t");
    assert_eq!(
        http_sink::secret_header("{nope}", secret).unwrap_err(),
        Failure::Invalid("secret `nope` is not granted".into())
    );
    assert!(http_sink::json_map("headers", Some("[1]".into())).is_err());
}

#[test]
fn stripe_signatures_are_checked_as_stripe_signs() {
    use stripe_source::verify;
    let body = br#"{"id":"evt_1","object":"event"}"#;
    let header = tenon_testkit::stripe_signature("whsec_test", body);
    let t: i64 = header[2..header.find(',').unwrap()].parse().unwrap();
    assert_eq!(verify(Some(&header), body, "whsec_test", t, 300), Ok(()));
    // A second, stale signature beside the right one (Stripe rolls secrets so).
    let rolled = format!("{header},v1=00ff");
    assert_eq!(
        verify(Some(&rolled), body, "whsec_test", t + 10, 300),
        Ok(())
    );
    let refused = |r: Result<(), Failure>| match r {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        refused(verify(Some(&header), b"{}", "whsec_test", t, 300)),
        "Stripe-Signature refused: no signature matches the body and the secret"
    );
    assert_eq!(
        refused(verify(Some(&header), body, "whsec_other", t, 300)),
        "Stripe-Signature refused: no signature matches the body and the secret"
    );
    assert_eq!(
        refused(verify(Some(&header), body, "whsec_test", t + 301, 300)),
        "Stripe-Signature refused: its timestamp is 301 s away from now (tolerance 300 s)"
    );
    assert_eq!(
        refused(verify(None, body, "whsec_test", t, 300)),
        "Stripe-Signature refused: the header is missing"
    );
    assert_eq!(
        refused(verify(Some("v1=abcd"), body, "whsec_test", t, 300)),
        "Stripe-Signature refused: no timestamp"
    );
    assert_eq!(
        refused(verify(Some(&format!("t={t}")), body, "whsec_test", t, 300)),
        "Stripe-Signature refused: no v1 signature"
    );
}

#[test]
fn the_gateway_completes_the_customer_from_the_master() {
    let mut order = plain_order();
    let master = tenon_sdk::model::Party {
        id: order.customer.id.clone(),
        name: Some("Northwind Traders GmbH (master)".into()),
        country: Some("DE".into()),
        external_ids: [("sap".to_owned(), "USCU_S12".to_owned())].into(),
        parent: None,
        blocked: false,
        credit_hold: false,
    };
    order_gateway::enrich(&mut order, &master);
    assert_eq!(
        order.customer.name.as_deref(),
        Some("Northwind Traders GmbH (master)")
    );
    assert_eq!(order.customer.external_ids["sap"], "USCU_S12");
    // And the SAP sink addresses the customer by that number, no config mapping.
    let settings = sap_sink::Settings::from_config(|_| None).unwrap();
    let body = sap_sink::sales_order_body(&order, &settings).unwrap();
    assert_eq!(body["SoldToParty"], "USCU_S12");
}

#[test]
fn canonical_messages_in_and_their_bad_input() {
    let one = canonical_source::to_messages(
        br#"{"kind": "CustomerUpserted", "key": "C1", "body": {"id": "C1", "country": "DE"}}"#,
    )
    .unwrap();
    assert_eq!(
        (one[0].kind.as_str(), one[0].key.as_str()),
        ("CustomerUpserted", "C1")
    );
    assert_eq!(one[0].content_type, "application/json");
    let invalid = |body: &[u8]| match canonical_source::to_messages(body) {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    };
    assert_eq!(
        invalid(br#"[{"kind": "Customer upserted", "key": "C1", "body": {}}]"#),
        "message 1: kind `Customer upserted` is not an event name like CustomerUpserted"
    );
    assert_eq!(
        invalid(br#"[{"kind": "A", "key": "k", "body": 1}, {"kind": "B", "body": 1}]"#),
        "message 2: missing field `key`"
    );
    assert_eq!(
        invalid(br#"{"kind": "A", "key": "", "body": 1}"#),
        "message 1: an empty key"
    );
    assert_eq!(
        invalid(br#"{"kind": "A", "key": "k", "body": 1, "extra": 2}"#),
        "message 1: unknown field `extra`, expected one of `kind`, `key`, `body`"
    );
    assert_eq!(
        invalid(b"nope"),
        "the body is not JSON: expected ident at line 1 column 2"
    );
}
