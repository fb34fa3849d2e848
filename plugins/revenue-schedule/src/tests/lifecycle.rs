//! Contracts through their life, each change a Zuora order as the source reads it, every
//! figure worked by hand in the comments (whole months at the monthly price, partial
//! months by days, shares truncated to the cent and the remainder last).

use super::*;

const SUSPEND: &str =
    include_str!("../../../../tests/fixtures/public/zuora_order_renew_suspend_resume_0.json");
const RESUME: &str =
    include_str!("../../../../tests/fixtures/public/zuora_order_renew_suspend_resume_1.json");
const RENEW: &str =
    include_str!("../../../../tests/fixtures/public/zuora_order_renew_suspend_resume_2.json");
const REMOVE_ADD: &str =
    include_str!("../../../../tests/fixtures/public/zuora_order_amendment_remove_add_product.json");

/// A Zuora order of `actions` on subscription `number`.
fn order(number: &str, actions: Value) -> Message {
    let body = json!({
        "existingAccountNumber": "A00000001",
        "orderDate": "2025-01-01",
        "subscriptions": [{"subscriptionNumber": number, "orderActions": actions}],
    });
    only(zuora_source::to_messages(body.to_string().as_bytes(), "USD").unwrap())
}

fn on(day: &str) -> Value {
    json!([{"name": "ContractEffective", "triggerDate": day},
           {"name": "ServiceActivation", "triggerDate": day}])
}

/// A rate plan at `price` a month.
fn plan(id: &str, price: f64) -> Value {
    json!({"productRatePlanId": id, "chargeOverrides": [{"productRatePlanChargeId": format!("{id}-c"),
        "billingPeriod": "Month", "pricing": {"recurringFlatFee": {"listPrice": price}}}]})
}

/// Subscription `number` created on `start` for `months` (`EVERGREEN` when `None`),
/// renewing for 12 months, with `plans`.
fn create(number: &str, start: &str, months: Option<u32>, plans: Value) -> Message {
    let terms = match months {
        Some(m) => {
            json!({"initialTerm": {"period": m, "periodType": "Month", "termType": "TERMED"},
            "renewalTerms": [{"period": 12, "periodType": "Month"}]})
        }
        None => json!({"initialTerm": {"termType": "EVERGREEN"}}),
    };
    order(
        number,
        json!([{"type": "CreateSubscription", "triggerDates": on(start),
            "createSubscription": {"subscriptionNumber": number, "terms": terms,
                "subscribeToRatePlans": plans}}]),
    )
}

fn cancel(number: &str, day: &str) -> Message {
    order(
        number,
        json!([{"type": "CancelSubscription", "triggerDates": on(day),
            "cancelSubscription": {"cancellationPolicy": "SpecificDate",
                "cancellationEffectiveDate": day}}]),
    )
}

/// Each period as `start..end amount`.
fn table(schedule: &RevenueSchedule) -> Vec<String> {
    schedule
        .periods
        .iter()
        .map(|p| format!("{}..{} {}", p.period.start, p.period.end, p.amount.amount))
        .collect()
}

fn run(host: &Host, message: Message) -> Vec<RevenueSchedule> {
    schedules(&host.run(|| schedule_revenue(message)).unwrap())
}

/// The schedule of `line` among `out`.
fn of<'a>(out: &'a [RevenueSchedule], line: &str) -> &'a RevenueSchedule {
    out.iter()
        .find(|s| s.source_line == line)
        .unwrap_or_else(|| panic!("no schedule of {line} in {out:?}"))
}

fn total(schedule: &RevenueSchedule) -> String {
    let periods: Decimal = schedule.periods.iter().map(|p| p.amount.amount).sum();
    let held = schedule.held.as_ref().map_or(Decimal::ZERO, |h| h.amount);
    assert_eq!(
        periods + held,
        schedule.total.amount,
        "the periods and what is held make the total"
    );
    schedule.total.amount.to_string()
}

fn months(from: u32, to: u32, year: i32, amount: &str) -> Vec<String> {
    (from..=to)
        .map(|m| {
            let start = tenon_sdk::model::chrono::NaiveDate::from_ymd_opt(year, m, 1).unwrap();
            let end = if m == 12 {
                tenon_sdk::model::chrono::NaiveDate::from_ymd_opt(year, 12, 31).unwrap()
            } else {
                tenon_sdk::model::chrono::NaiveDate::from_ymd_opt(year, m + 1, 1)
                    .unwrap()
                    .pred_opt()
                    .unwrap()
            };
            format!("{start}..{end} {amount}")
        })
        .collect()
}

/// One contract created, amended mid-month, suspended, resumed with its term
/// extended, renewed and cancelled: after each change its schedules by hand, and at
/// the end each equal to what the billing system bills for it.
#[test]
fn one_contract_through_its_whole_life() {
    let host = plugin_host();
    // Created 2025-01-01 for 12 months: plan A at 100.00 a month, 1200.00.
    let out = run(
        &host,
        create("SUB-1", "2025-01-01", Some(12), json!([plan("A", 100.0)])),
    );
    assert_eq!(table(of(&out, "A")), months(1, 12, 2025, "100.00"));
    assert_eq!(of(&out, "A").revision, 1);

    // Plan B added from 2025-03-16 at 31.00 a month to the term's end: 16/31 of March
    // is 16.00 and April..December 9 x 31.00 = 279.00: 295.00.
    let add = order(
        "SUB-1",
        json!([{"type": "AddProduct", "triggerDates": on("2025-03-16"), "addProduct": plan("B", 31.0)}]),
    );
    let out = run(&host, add);
    assert_eq!(out.len(), 1, "A is unchanged");
    let b = of(&out, "B");
    assert_eq!(b.id, "SUB-1/B");
    let mut expected = vec!["2025-03-16..2025-03-31 16.00".to_owned()];
    expected.extend(months(4, 12, 2025, "31.00"));
    assert_eq!(table(b), expected);
    assert_eq!(total(b), "295.00");

    // Suspended from 2025-06-01: A keeps January..May (500.00) and holds 700.00; B
    // keeps 16.00 + April and May (62.00) = 78.00 and holds 217.00.
    let suspend = order(
        "SUB-1",
        json!([{"type": "Suspend", "triggerDates": on("2025-06-01"),
            "suspend": {"suspendPolicy": "SpecificDate", "suspendSpecificDate": "2025-06-01"}}]),
    );
    let out = run(&host, suspend);
    let (a, b) = (of(&out, "A"), of(&out, "B"));
    assert_eq!(table(a), months(1, 5, 2025, "100.00"));
    assert_eq!(a.held.as_ref().unwrap().amount.to_string(), "700.00");
    assert_eq!(total(a), "1200.00");
    assert_eq!(b.held.as_ref().unwrap().amount.to_string(), "217.00");
    assert_eq!((a.revision, b.revision), (2, 2));
    let change = a.change.as_ref().unwrap();
    assert_eq!(
        (
            change.reason.as_str(),
            change.effective.to_string().as_str()
        ),
        ("suspended", "2025-06-01")
    );

    // Resumed 2025-08-01, the term extended by the 61 days suspended: it now ends
    // 2026-03-02. A's 700.00 over August..February (7 months) and 2/31 of March: a
    // month is 700 x 31 / 219 = 99.0867..., 99.08 truncated; March takes the rest,
    // 700 - 7 x 99.08 = 6.44. B's 217.00 alike: 30.71 a month, March 2.03.
    let resume = order(
        "SUB-1",
        json!([{"type": "Resume", "triggerDates": on("2025-08-01"),
            "resume": {"resumePolicy": "SpecificDate", "resumeSpecificDate": "2025-08-01", "extendsTerm": true}}]),
    );
    let out = run(&host, resume);
    let a = of(&out, "A");
    let mut expected = months(1, 5, 2025, "100.00");
    expected.extend(months(8, 12, 2025, "99.08"));
    expected.extend(months(1, 2, 2026, "99.08"));
    expected.push("2026-03-01..2026-03-02 6.44".into());
    assert_eq!(table(a), expected);
    assert_eq!((total(a).as_str(), a.held.as_ref()), ("1200.00", None));
    let b = of(&out, "B");
    assert_eq!(b.periods.last().unwrap().amount.amount.to_string(), "2.03");
    assert_eq!(total(b), "295.00");

    // Renewed for 12 months: 2026-03-03 .. 2027-03-02, 29/31 + 11 + 2/31 = 12 months,
    // 1200.00 for A (March 2026 1200 x 29/31 / 12 = 93.548... -> 93.54, the rest
    // 6.46 in March 2027) and 372.00 for B (29.00, 11 x 31.00, 2.00).
    let out = run(
        &host,
        order(
            "SUB-1",
            serde_json::from_str::<Value>(RENEW).unwrap()["subscriptions"][0]["orderActions"]
                .clone(),
        ),
    );
    let a = of(&out, "A");
    assert_eq!(total(a), "2400.00");
    let renewal: Vec<String> = table(a).into_iter().skip(13).collect();
    let mut expected = vec!["2026-03-03..2026-03-31 93.54".to_owned()];
    expected.extend(months(4, 12, 2026, "100.00"));
    expected.extend(months(1, 2, 2027, "100.00"));
    expected.push("2027-03-01..2027-03-02 6.46".into());
    assert_eq!(renewal, expected);
    assert_eq!(total(of(&out, "B")), "667.00");
    assert_eq!(of(&out, "A").change.as_ref().unwrap().reason, "renewed");

    // Cancelled from 2026-09-01. Billed for A: 1200.00 + 1200.00 less the credit of
    // what is not served, 2026-09-01 .. 2027-03-02 at 100.00 a month: September ..
    // February (600.00) and 2/31 of March (6.45): 2400.00 - 606.45 = 1793.55. The
    // periods kept sum to 1793.54 (93.54 was truncated): the cent goes to August.
    // B: 295.00 + 372.00 - (6 x 31.00 + 2.00) = 479.00.
    let out = run(&host, cancel("SUB-1", "2026-09-01"));
    let a = of(&out, "A");
    assert_eq!(total(a), "1793.55");
    assert_eq!(
        a.periods.last().unwrap().to_owned().period.end.to_string(),
        "2026-08-31"
    );
    assert_eq!(
        a.periods.last().unwrap().amount.amount.to_string(),
        "100.01"
    );
    let b = of(&out, "B");
    assert_eq!(total(b), "479.00");
    // A: made, suspended, resumed, renewed, cancelled; B: added, then the same four.
    assert_eq!((a.revision, b.revision), (5, 5));
    assert_eq!(
        a.change.as_ref().unwrap().previous_total.amount.to_string(),
        "2400.00"
    );

    // Nothing renews a cancelled contract.
    let again = order(
        "SUB-1",
        serde_json::from_str::<Value>(RENEW).unwrap()["subscriptions"][0]["orderActions"].clone(),
    );
    assert!(matches!(
        host.run(|| schedule_revenue(again)),
        Err(Failure::Rejected(_))
    ));
}

/// Zuora's own suspend, resume and renew orders, on a subscription it created.
#[test]
fn zuoras_suspend_resume_and_renew_orders() {
    let host = plugin_host();
    // A-S00000272 from 2018-01-01 for a year at 100.00 a month.
    run(
        &host,
        create(
            "A-S00000272",
            "2018-01-01",
            Some(12),
            json!([plan("P", 100.0)]),
        ),
    );
    // Suspended "Today", the order action's own date (2018-01-01): all 1200.00 held.
    let out = run(
        &host,
        only(zuora_source::to_messages(SUSPEND.as_bytes(), "USD").unwrap()),
    );
    assert_eq!(of(&out, "P").periods, []);
    assert_eq!(
        of(&out, "P").held.as_ref().unwrap().amount.to_string(),
        "1200.00"
    );
    // Resumed 2018-10-01 extending the term by the 273 days suspended: 2018-10-01 ..
    // 2019-09-30, twelve whole months of 100.00.
    let out = run(
        &host,
        only(zuora_source::to_messages(RESUME.as_bytes(), "USD").unwrap()),
    );
    let mut expected = months(10, 12, 2018, "100.00");
    expected.extend(months(1, 9, 2019, "100.00"));
    assert_eq!(table(of(&out, "P")), expected);
    // Renewed for the 12-month renewal term from 2019-10-01: 1200.00 more.
    let out = run(
        &host,
        only(zuora_source::to_messages(RENEW.as_bytes(), "USD").unwrap()),
    );
    let p = of(&out, "P");
    assert_eq!(total(p), "2400.00");
    assert_eq!(
        p.periods.last().unwrap().period.end.to_string(),
        "2020-09-30"
    );
}

/// Zuora's remove-and-add example: the removed plan stops the day before its own
/// service date (2023-03-01), the added one starts on its own (2023-05-01), not the
/// first action's.
#[test]
fn removed_and_added_plans_keep_their_own_dates() {
    let host = plugin_host();
    let plan_id = "8a90a9b784ae5f180184c6c46a1a46b6";
    // 2023-01-01 for a year at 100.00 a month.
    run(
        &host,
        create(
            "A-S00000272",
            "2023-01-01",
            Some(12),
            json!([plan(plan_id, 100.0)]),
        ),
    );
    let mut body: Value = serde_json::from_str(REMOVE_ADD).unwrap();
    body["subscriptions"][1]["orderActions"][0]["addProduct"] = plan(plan_id, 120.0);
    let out = run(
        &host,
        only(zuora_source::to_messages(body.to_string().as_bytes(), "USD").unwrap()),
    );
    // Removed: January and February, 200.00 (billed 1200.00, credited 10 x 100.00).
    let removed = out
        .iter()
        .find(|s| s.id == format!("A-S00000272/{plan_id}"))
        .unwrap();
    assert_eq!(table(removed), months(1, 2, 2023, "100.00"));
    assert_eq!(total(removed), "200.00");
    // Added again from 2023-05-01 to the term's end at 120.00: 8 x 120.00 = 960.00,
    // under its own schedule id.
    let added = out
        .iter()
        .find(|s| s.id == format!("A-S00000272/{plan_id}/2023-05-01"))
        .unwrap();
    assert_eq!(table(added), months(5, 12, 2023, "120.00"));
    assert_eq!(added.revision, 1);
}

/// A cancellation after two periods keeps those two.
#[test]
fn a_cancellation_after_two_periods() {
    let host = plugin_host();
    run(
        &host,
        create("SUB-2", "2025-01-01", Some(12), json!([plan("A", 100.0)])),
    );
    let out = run(&host, cancel("SUB-2", "2025-03-01"));
    // 1200.00 billed, 10 months (1000.00) credited: January and February.
    assert_eq!(table(of(&out, "A")), months(1, 2, 2025, "100.00"));
    assert_eq!(total(of(&out, "A")), "200.00");
    assert_eq!(of(&out, "A").change.as_ref().unwrap().reason, "cancelled");
}

fn update(number: &str, day: &str, line: &str, price: f64) -> Message {
    order(
        number,
        json!([{"type": "UpdateProduct", "triggerDates": on(day),
            "updateProduct": {"ratePlanId": line, "chargeUpdates": [{"chargeNumber": "C-1",
                "pricing": {"recurringFlatFee": {"listPrice": price}}}]}}]),
    )
}

/// A price rise from 100.00 to 130.00 a month on 2025-04-01, by each policy.
#[test]
fn a_price_update_prospectively_and_by_cumulative_catch_up() {
    // Prospective: January..March stay at 100.00 (300.00); April..December are 9 x
    // 130.00 = 1170.00; 1470.00 in all.
    let host = plugin_host();
    run(
        &host,
        create("SUB-3", "2025-01-01", Some(12), json!([plan("A", 100.0)])),
    );
    let out = run(&host, update("SUB-3", "2025-04-01", "A", 130.0));
    let mut expected = months(1, 3, 2025, "100.00");
    expected.extend(months(4, 12, 2025, "130.00"));
    assert_eq!(table(of(&out, "A")), expected);
    assert_eq!(of(&out, "A").change.as_ref().unwrap().catch_up, None);

    // Catch-up: the same 1470.00 over the year is 122.50 a month; by April 367.50
    // would have been recognised against 300.00: April takes 122.50 + 67.50 = 190.00.
    let host = plugin_host().config("modification", "catch-up");
    run(
        &host,
        create("SUB-3", "2025-01-01", Some(12), json!([plan("A", 100.0)])),
    );
    let out = run(&host, update("SUB-3", "2025-04-01", "A", 130.0));
    let a = of(&out, "A");
    let mut expected = months(1, 3, 2025, "100.00");
    expected.extend(months(4, 4, 2025, "190.00"));
    expected.extend(months(5, 12, 2025, "122.50"));
    assert_eq!(table(a), expected);
    assert_eq!(total(a), "1470.00");
    assert_eq!(
        a.change
            .as_ref()
            .unwrap()
            .catch_up
            .as_ref()
            .unwrap()
            .amount
            .to_string(),
        "67.50"
    );

    let host = plugin_host().config("modification", "retroactive");
    assert_eq!(
        host.run(|| schedule_revenue(create(
            "SUB-3",
            "2025-01-01",
            Some(12),
            json!([plan("A", 100.0)])
        )))
        .map(|_| ()),
        Ok(()),
        "activation needs no policy"
    );
    assert_eq!(
        host.run(|| schedule_revenue(update("SUB-3", "2025-04-01", "A", 130.0))),
        Err(Failure::Invalid(
            "config `modification` = `retroactive`: it is `prospective` (the default) or `catch-up`".into()
        ))
    );
}

/// An evergreen contract is scheduled a billing period at a time, rolled forward to
/// each later change.
#[test]
fn an_evergreen_contract_rolls_by_billing_period() {
    let host = plugin_host();
    // 50.00 a month from 2025-01-15: the first period 2025-01-15 .. 2025-02-14 is 17/31
    // of January and 14/28 of February: 50 x (17/31) / (17/31 + 1/2) = 26.1538...
    // -> 26.15, February the rest, 23.85.
    let out = run(
        &host,
        create("SUB-4", "2025-01-15", None, json!([plan("E", 50.0)])),
    );
    assert_eq!(
        table(of(&out, "E")),
        [
            "2025-01-15..2025-01-31 26.15",
            "2025-02-01..2025-02-14 23.85"
        ]
    );
    // Cancelled from 2025-04-20: rolled through the period holding it (to 2025-05-14:
    // four periods billed, 200.00), less the credit of 2025-04-20 .. 2025-05-14 at
    // 50.00 a month: 11/30 + 14/31 of a month = 0.818279... -> 40.91. 159.09.
    let out = run(&host, cancel("SUB-4", "2025-04-20"));
    let e = of(&out, "E");
    assert_eq!(total(e), "159.09");
    assert_eq!(
        e.periods.last().unwrap().period.end.to_string(),
        "2025-04-19"
    );
    // Without a price per period an evergreen charge cannot be scheduled.
    let unpriced = create(
        "SUB-5",
        "2025-01-15",
        None,
        json!([{"productRatePlanId": "X"}]),
    );
    assert!(matches!(
        plugin_host().run(|| schedule_revenue(unpriced)),
        Err(Failure::Rejected(why)) if why[0].contains("price per billing period")
    ));
}

/// The book is the contract's: a second activation and a resume of what is not
/// suspended are refused by name.
#[test]
fn changes_that_do_not_fit_the_contract_are_refused() {
    let host = plugin_host();
    let created = create("SUB-6", "2025-01-01", Some(12), json!([plan("A", 100.0)]));
    run(&host, created.clone());
    assert_eq!(
        host.run(|| schedule_revenue(created)),
        Err(Failure::Rejected(vec![
            "contract SUB-6 is already active: its changes come as ContractAmended".into()
        ]))
    );
    let resume = order(
        "SUB-6",
        json!([{"type": "Resume", "triggerDates": on("2025-02-01"), "resume": {"resumePolicy": "Today"}}]),
    );
    assert_eq!(
        host.run(|| schedule_revenue(resume)),
        Err(Failure::Rejected(vec![
            "contract SUB-6 is not suspended: nothing to resume".into()
        ]))
    );
    let remove = order(
        "SUB-6",
        json!([{"type": "RemoveProduct", "triggerDates": on("2025-02-01"), "removeProduct": {"ratePlanId": "Z"}}]),
    );
    assert_eq!(
        host.run(|| schedule_revenue(remove)),
        Err(Failure::Rejected(vec![
            "line Z is not in service on contract SUB-6".into()
        ]))
    );
}

/// A book the step cannot read is invalid input, named, not a trap or a guess.
#[test]
fn an_unreadable_book_is_invalid() {
    let host = plugin_host().kv("contract/SUB-9", b"not a book");
    assert!(matches!(
        host.run(|| schedule_revenue(cancel("SUB-9", "2025-03-01"))),
        Err(Failure::Invalid(why)) if why.starts_with("the stored book of contract SUB-9 is unreadable")
    ));
}
