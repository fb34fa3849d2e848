//! Source plugin: a Zuora order (the body of `POST /v1/orders`) becomes one canonical
//! message per subscription it touches, with what the order's actions did to it.
//!
//! | Zuora order actions on a subscription | canonical message |
//! |---|---|
//! | `CreateSubscription` | `ContractActivated` |
//! | `CancelSubscription` | `ContractCancelled` |
//! | `AddProduct`, `RemoveProduct`, `UpdateProduct`, `ChangePlan`, `RenewSubscription`, `Suspend`, `Resume`, `TermsAndConditions` | `ContractAmended` |
//!
//! What each action becomes:
//! - a rate plan subscribed, added, removed or updated is a line (`Added`, `Removed`,
//!   `Updated`; `ChangePlan` is the old plan removed and the new one added), its
//!   `effective` date its **own** action's (`ServiceActivation`, else
//!   `ContractEffective`, else the order date): two actions of one order keep their own
//!   dates; the contract's three trigger dates are the first its actions state;
//! - prices only when the order states them (`chargeOverrides`, `chargeUpdates`: a
//!   catalogue price is not in the order): one-time fees as the line's amount, a
//!   recurring fee as its price per billing period (`recurring`); a termed new
//!   subscription's lines also carry their service period and price over the term;
//! - `Suspend`, `Resume`, `RenewSubscription` and `CancelSubscription` are dated
//!   contract events (suspend and resume by their policy: `Today`, `SpecificDate`,
//!   `FixedPeriodsFromToday`; resume with `extendsTerm`; cancel on its
//!   `cancellationEffectiveDate` or at the end of the current term); policies that
//!   depend on the subscription's history (its invoices, its suspend date) are refused
//!   as invalid, naming the ones taken;
//! - `EVERGREEN` terms make an evergreen contract; `renewalTerms` its renewal term.
//!
//! A **credit memo** (Zuora's object, with its `items`) becomes `CreditIssued` when
//! posted and `CreditVoided` when cancelled: each item credits its invoice item over
//! its service dates, net of tax. Zuora pays refunds out of credit memos (or of
//! payments no longer applied to an invoice), so the memo is what takes revenue back;
//! a refund itself changes no schedule and is not read here.
//!
//! Config: `currency`, the billing account's currency (orders carry none): required,
//! an order is refused while it is not set, never read in a currency guessed.
//!
//! An order's actions on a subscription entry without a `subscriptionNumber` belong to
//! the order's only named subscription (as in Zuora's own remove-and-add example);
//! with several named, such an entry is refused. The `orderNumber`, when given, is the
//! idempotency key and the contract's `order`; the quote it comes from is the
//! `QuoteNumber__QT` custom field Zuora Quotes writes (on the subscription, or on the
//! order).

use serde::Deserialize;
use serde_json::Value;
use tenon_sdk::model::chrono::{Days, Months, NaiveDate};
use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{
    ChargeType, Contract, ContractChange, ContractEvent, ContractLine, ContractStatus, CreditLine,
    CreditNote, Currency, LineChange, Money, Party, Period, Product, RecurringPrice, TaxAmount,
    kinds,
};
use tenon_sdk::{Failure, Message, RawRequest, config};

#[cfg(test)]
mod tests;

/// A Zuora order as one contract message per subscription it touches.
#[tenon_sdk::source]
fn ingest_order(request: RawRequest) -> Result<Vec<Message>, Failure> {
    let currency = config::get("currency").ok_or_else(|| {
        Failure::Invalid(
            "config `currency` is not set: Zuora orders carry no currency, so the operator names the billing account's (e.g. `config = { currency = \"EUR\" }`)".into(),
        )
    })?;
    to_messages(&request.body, &currency)
}

/// The order actions this source understands.
pub const ACTIONS: [&str; 10] = [
    "CreateSubscription",
    "AddProduct",
    "RemoveProduct",
    "UpdateProduct",
    "RenewSubscription",
    "Suspend",
    "Resume",
    "TermsAndConditions",
    "CancelSubscription",
    "ChangePlan",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    #[serde(default)]
    order_number: Option<String>,
    #[serde(default)]
    custom_fields: Option<Value>,
    #[serde(default)]
    existing_account_number: Option<String>,
    #[serde(default)]
    new_account: Option<Value>,
    order_date: String,
    subscriptions: Vec<SubscriptionEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionEntry {
    #[serde(default)]
    subscription_number: Option<String>,
    order_actions: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TriggerDate {
    name: String,
    trigger_date: String,
}

/// A Zuora order or credit memo as canonical messages, `currency` being the
/// account's.
pub fn to_messages(body: &[u8], currency: &str) -> Result<Vec<Message>, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("not a Zuora order: {e}")))?;
    if value.get("creditMemoDate").is_some() {
        return credit_memo(&value, currency);
    }
    let order: Order = serde_json::from_value(value)
        .map_err(|e| Failure::Invalid(format!("not a Zuora order: {e}")))?;
    let currency =
        Currency::new(currency).map_err(|e| Failure::Invalid(format!("config `currency`: {e}")))?;
    let account = order
        .existing_account_number
        .clone()
        .or_else(|| {
            order.new_account.as_ref()?["accountNumber"]
                .as_str()
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            Failure::Invalid("the order names no account (existingAccountNumber)".into())
        })?;
    let order_date = date(&order.order_date, "orderDate")?;
    if order.subscriptions.is_empty() {
        return Err(Failure::Invalid("the order touches no subscription".into()));
    }
    let named: Vec<&str> = {
        let mut n: Vec<&str> = order
            .subscriptions
            .iter()
            .filter_map(|s| s.subscription_number.as_deref())
            .collect();
        n.dedup();
        n
    };
    // Group the actions by subscription, in order.
    let mut groups: Vec<(String, Vec<&Value>)> = Vec::new();
    for (i, entry) in order.subscriptions.iter().enumerate() {
        let number = match (&entry.subscription_number, named.as_slice()) {
            (Some(n), _) => n.clone(),
            (None, _) if creates(entry) => create_number(entry).unwrap_or_else(|| {
                format!(
                    "{}-new-{}",
                    order.order_number.as_deref().unwrap_or("order"),
                    i + 1
                )
            }),
            (None, [only]) => (*only).to_owned(),
            (None, _) => {
                return Err(Failure::Invalid(format!(
                    "subscription entry {} has no subscriptionNumber, and the order names {} subscriptions",
                    i + 1,
                    named.len()
                )));
            }
        };
        match groups.iter_mut().find(|(n, _)| *n == number) {
            Some((_, actions)) => actions.extend(entry.order_actions.iter()),
            None => groups.push((number, entry.order_actions.iter().collect())),
        }
    }
    let mut messages = Vec::new();
    for (number, actions) in groups {
        let mut contract = contract(&number, &account, &currency, order_date, &actions)?;
        contract.order = order.order_number.clone();
        contract.quote = actions
            .iter()
            .find_map(|a| quote_number(&a["createSubscription"]["customFields"]))
            .or_else(|| order.custom_fields.as_ref().and_then(quote_number));
        let kind = if contract.actions.iter().any(|a| a == "CancelSubscription") {
            kinds::CONTRACT_CANCELLED
        } else if contract.actions.iter().any(|a| a == "CreateSubscription") {
            kinds::CONTRACT_ACTIVATED
        } else {
            kinds::CONTRACT_AMENDED
        };
        let mut message = Message::encode(kind, &number, &contract)?;
        if let Some(order_number) = &order.order_number {
            message = message.with_idempotency_key(format!("{order_number}/{number}"));
        }
        messages.push(message);
    }
    Ok(messages)
}

/// The quote number Zuora Quotes writes in custom fields (`QuoteNumber__QT`).
fn quote_number(fields: &Value) -> Option<String> {
    fields["QuoteNumber__QT"]
        .as_str()
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
}

fn creates(entry: &SubscriptionEntry) -> bool {
    entry
        .order_actions
        .iter()
        .any(|a| a["type"] == "CreateSubscription")
}

fn create_number(entry: &SubscriptionEntry) -> Option<String> {
    entry.order_actions.iter().find_map(|a| {
        a["createSubscription"]["subscriptionNumber"]
            .as_str()
            .map(str::to_owned)
    })
}

fn date(text: &str, what: &str) -> Result<NaiveDate, Failure> {
    text.parse()
        .map_err(|_| Failure::Invalid(format!("{what} `{text}` is not a date (YYYY-MM-DD)")))
}

/// One order action's own trigger dates.
#[derive(Default, Clone, Copy)]
struct Triggers {
    contract_effective: Option<NaiveDate>,
    service_activation: Option<NaiveDate>,
    customer_acceptance: Option<NaiveDate>,
}

impl Triggers {
    fn of(number: &str, action: &Value) -> Result<Triggers, Failure> {
        let listed: Vec<TriggerDate> = serde_json::from_value(
            action
                .get("triggerDates")
                .cloned()
                .unwrap_or(Value::Array(vec![])),
        )
        .map_err(|e| Failure::Invalid(format!("{number}: triggerDates: {e}")))?;
        let mut dates = Triggers::default();
        for trigger in listed {
            let day = date(&trigger.trigger_date, &trigger.name)?;
            let slot = match trigger.name.as_str() {
                "ContractEffective" => &mut dates.contract_effective,
                "ServiceActivation" => &mut dates.service_activation,
                "CustomerAcceptance" => &mut dates.customer_acceptance,
                other => {
                    return Err(Failure::Invalid(format!(
                        "{number}: unknown trigger date `{other}`"
                    )));
                }
            };
            *slot = Some(day);
        }
        Ok(dates)
    }

    /// The day service changes: service activation, else the contract's effect.
    fn service(&self) -> Option<NaiveDate> {
        self.service_activation.or(self.contract_effective)
    }
}

fn contract(
    number: &str,
    account: &str,
    currency: &Currency,
    order_date: NaiveDate,
    actions: &[&Value],
) -> Result<Contract, Failure> {
    let mut contract = Contract {
        id: number.to_owned(),
        customer: Party::new(account.to_owned()),
        status: ContractStatus::Active,
        currency: currency.clone(),
        contract_effective: None,
        service_activation: None,
        customer_acceptance: None,
        term_months: None,
        evergreen: false,
        renewal_term_months: None,
        ends: None,
        actions: Vec::new(),
        events: Vec::new(),
        quote: None,
        order: None,
        lines: Vec::new(),
    };
    for action in actions {
        let kind = action["type"].as_str().ok_or_else(|| {
            Failure::Invalid(format!("an order action on {number} has no `type`"))
        })?;
        if !ACTIONS.contains(&kind) {
            return Err(Failure::Invalid(format!(
                "unsupported Zuora order action `{kind}` on {number}; this source handles {}",
                ACTIONS.join(", ")
            )));
        }
        let triggers = Triggers::of(number, action)?;
        // The contract's own dates are the first its actions state; each charge and
        // each change keeps its own action's.
        if let Some(day) = triggers.contract_effective {
            contract.contract_effective.get_or_insert(day);
        }
        if let Some(day) = triggers.service_activation {
            contract.service_activation.get_or_insert(day);
        }
        if let Some(day) = triggers.customer_acceptance {
            contract.customer_acceptance.get_or_insert(day);
        }
        // When this action changes service: its service date, else the order's.
        let day = triggers.service().unwrap_or(order_date);
        let at = |change: ContractChange, effective: NaiveDate| ContractEvent { change, effective };
        match kind {
            "CreateSubscription" => {
                let create = &action["createSubscription"];
                let terms = &create["terms"];
                contract.evergreen = terms["initialTerm"]["termType"] == "EVERGREEN";
                contract.term_months = term_months(&terms["initialTerm"]);
                contract.renewal_term_months = terms["renewalTerms"]
                    .as_array()
                    .and_then(|t| t.first())
                    .and_then(term_months);
                let start = match terms["initialTerm"]["startDate"].as_str() {
                    Some(text) if triggers.service().is_none() => date(text, "startDate")?,
                    _ => day,
                };
                for plan in create["subscribeToRatePlans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let mut line = line(number, plan, "productRatePlanId", currency, None, start)?;
                    if !contract.evergreen {
                        termed(number, &mut line, start, contract.term_months)?;
                    }
                    contract.lines.push(line);
                }
            }
            "AddProduct" => contract.lines.push(line(
                number,
                &action["addProduct"],
                "productRatePlanId",
                currency,
                Some(LineChange::Added),
                day,
            )?),
            "RemoveProduct" => contract.lines.push(line(
                number,
                &action["removeProduct"],
                "ratePlanId",
                currency,
                Some(LineChange::Removed),
                day,
            )?),
            "UpdateProduct" => {
                contract
                    .lines
                    .push(update(number, &action["updateProduct"], currency, day)?)
            }
            // The old plan stops and the new one starts, on the same day.
            "ChangePlan" => {
                let change = &action["changePlan"];
                let old = if change["ratePlanId"].is_string() {
                    "ratePlanId"
                } else {
                    "productRatePlanId"
                };
                let removed = line(
                    number,
                    change,
                    old,
                    currency,
                    Some(LineChange::Removed),
                    day,
                )?;
                let added = line(
                    number,
                    &change["newProductRatePlan"],
                    "productRatePlanId",
                    currency,
                    Some(LineChange::Added),
                    day,
                )?;
                contract.lines.extend([removed, added]);
            }
            // New terms (`termsAndConditions.lastTerm`): the term of what follows.
            "TermsAndConditions" => {
                let terms = &action["termsAndConditions"];
                if let Some(months) = term_months(&terms["lastTerm"]) {
                    contract.term_months = Some(months);
                }
                if let Some(months) = terms["renewalTerms"]
                    .as_array()
                    .and_then(|t| t.first())
                    .and_then(term_months)
                {
                    contract.renewal_term_months = Some(months);
                }
            }
            "RenewSubscription" => contract
                .events
                .push(at(ContractChange::Renewed { term_months: None }, day)),
            "Suspend" => {
                contract.status = ContractStatus::Suspended;
                let suspend = &action["suspend"];
                let on = policy_date(
                    number,
                    suspend,
                    ("suspendPolicy", "suspendSpecificDate"),
                    ("suspendPeriods", "suspendPeriodsType"),
                    day,
                )?;
                contract.events.push(at(ContractChange::Suspended, on));
            }
            "Resume" => {
                contract.status = ContractStatus::Active;
                let resume = &action["resume"];
                let on = policy_date(
                    number,
                    resume,
                    ("resumePolicy", "resumeSpecificDate"),
                    ("resumePeriods", "resumePeriodsType"),
                    day,
                )?;
                let extends_term = resume["extendsTerm"].as_bool().unwrap_or(false);
                contract
                    .events
                    .push(at(ContractChange::Resumed { extends_term }, on));
            }
            "CancelSubscription" => {
                contract.status = ContractStatus::Cancelled;
                let cancel = &action["cancelSubscription"];
                let event = match cancel["cancellationPolicy"].as_str() {
                    Some("EndOfCurrentTerm") => {
                        at(ContractChange::Cancelled { at_term_end: true }, day)
                    }
                    Some("SpecificDate") | None => {
                        let on = match cancel["cancellationEffectiveDate"].as_str() {
                            Some(text) => date(text, "cancellationEffectiveDate")?,
                            None => day,
                        };
                        contract.ends = Some(on);
                        at(ContractChange::Cancelled { at_term_end: false }, on)
                    }
                    Some(other) => {
                        return Err(Failure::Invalid(format!(
                            "{number}: cancellationPolicy `{other}` needs the subscription's invoice history; this source takes SpecificDate and EndOfCurrentTerm"
                        )));
                    }
                };
                contract.events.push(event);
            }
            _ => {}
        }
        contract.actions.push(kind.to_owned());
    }
    Ok(contract)
}

/// A termed charge is in service for the term from `start`; its price over that
/// service is its one-time fees and its price per billing period times the periods in
/// the term (unknown when the term is not a whole number of billing periods).
fn termed(
    number: &str,
    line: &mut ContractLine,
    start: NaiveDate,
    term: Option<u32>,
) -> Result<(), Failure> {
    let Some(months) = term else { return Ok(()) };
    let end = start
        .checked_add_months(Months::new(months))
        .and_then(|d| d.pred_opt());
    line.service_period = end.map(|end| Period { start, end });
    let Some(RecurringPrice {
        price,
        every_months: Some(every),
    }) = &line.recurring
    else {
        return Ok(());
    };
    if months % every != 0 {
        line.amount = None;
        return Ok(());
    }
    let one_time = line.amount.as_ref().map_or(Decimal::ZERO, |m| m.amount);
    let amount = price
        .amount
        .checked_mul(Decimal::from(months / every))
        .and_then(|over_term| over_term.checked_add(one_time))
        .ok_or_else(|| {
            Failure::Invalid(format!(
                "{number}: the price of {} over its {months}-month term is past what a decimal holds",
                line.id
            ))
        })?;
    line.amount = Some(Money::new(amount, price.currency.clone()));
    Ok(())
}

/// The day a suspend or resume takes effect, by its policy.
fn policy_date(
    number: &str,
    body: &Value,
    (policy, specific): (&str, &str),
    (periods, periods_type): (&str, &str),
    today: NaiveDate,
) -> Result<NaiveDate, Failure> {
    match body[policy].as_str() {
        Some("Today") | None => Ok(today),
        Some("SpecificDate") => {
            let text = body[specific].as_str().ok_or_else(|| {
                Failure::Invalid(format!(
                    "{number}: {policy} SpecificDate without `{specific}`"
                ))
            })?;
            date(text, specific)
        }
        Some("FixedPeriodsFromToday") => {
            let n = body[periods].as_u64().and_then(|n| u32::try_from(n).ok());
            let later = match (n, body[periods_type].as_str()) {
                (Some(n), Some("Day")) => today.checked_add_days(Days::new(n.into())),
                (Some(n), Some("Week")) => n
                    .checked_mul(7)
                    .and_then(|d| today.checked_add_days(Days::new(d.into()))),
                (Some(n), Some("Month")) => today.checked_add_months(Months::new(n)),
                (Some(n), Some("Year")) => n
                    .checked_mul(12)
                    .and_then(|m| today.checked_add_months(Months::new(m))),
                _ => None,
            };
            later.ok_or_else(|| {
                Failure::Invalid(format!(
                    "{number}: {policy} FixedPeriodsFromToday needs `{periods}` and `{periods_type}` (Day, Week, Month or Year)"
                ))
            })
        }
        Some(other) => Err(Failure::Invalid(format!(
            "{number}: {policy} `{other}` depends on the subscription's history; this source takes Today, SpecificDate and FixedPeriodsFromToday"
        ))),
    }
}

fn term_months(term: &Value) -> Option<u32> {
    let period = u32::try_from(term["period"].as_u64()?).ok()?;
    match term["periodType"].as_str()? {
        "Month" => Some(period),
        "Year" => period.checked_mul(12),
        _ => None,
    }
}

fn billing_months(period: &Value) -> Option<u32> {
    match period.as_str()? {
        "Month" => Some(1),
        "Quarter" => Some(3),
        "Semi_Annual" => Some(6),
        "Annual" => Some(12),
        _ => None,
    }
}

/// The prices a rate plan's charges state (`chargeOverrides` of a new plan,
/// `chargeUpdates` of an update): one-time fees summed into `amount`, recurring fees
/// into a price per billing period. A catalogue price is not in the order: a plan
/// without them carries neither.
struct Prices {
    quantity: Decimal,
    one_time: Option<Decimal>,
    recurring: Option<Decimal>,
    every_months: Option<u32>,
}

fn prices(number: &str, id: &str, charges: &[Value]) -> Result<Prices, Failure> {
    let mut out = Prices {
        quantity: Decimal::ONE,
        one_time: None,
        recurring: None,
        every_months: None,
    };
    for charge in charges {
        let pricing = &charge["pricing"];
        for kind in [
            "recurringFlatFee",
            "recurringPerUnit",
            "oneTimeFlatFee",
            "oneTimePerUnit",
        ] {
            let Some(price) = pricing[kind]["listPrice"].as_f64() else {
                continue;
            };
            let price = decimal(price)?;
            if let Some(q) = pricing[kind]["quantity"].as_f64() {
                out.quantity = decimal(q)?;
            }
            let too_large = || {
                Failure::Invalid(format!(
                    "{number}: the {kind} charge of {id} is past what a decimal holds"
                ))
            };
            let add = if kind.ends_with("PerUnit") {
                price.checked_mul(out.quantity).ok_or_else(too_large)?
            } else {
                price
            };
            let slot = if kind.starts_with("recurring") {
                let every = billing_months(&charge["billingPeriod"])
                    .or_else(|| billing_months(&charge["billing"]["billingPeriod"]));
                match (out.every_months, every) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(Failure::Invalid(format!(
                            "{number}: the recurring charges of {id} bill every {a} and every {b} months; this source takes one billing period per rate plan"
                        )));
                    }
                    (None, every) => out.every_months = every,
                    _ => {}
                }
                &mut out.recurring
            } else {
                &mut out.one_time
            };
            *slot = Some(
                slot.unwrap_or_default()
                    .checked_add(add)
                    .ok_or_else(too_large)?,
            );
        }
    }
    Ok(out)
}

fn line(
    number: &str,
    plan: &Value,
    id_field: &str,
    currency: &Currency,
    change: Option<LineChange>,
    effective: NaiveDate,
) -> Result<ContractLine, Failure> {
    let id = plan[id_field]
        .as_str()
        .ok_or_else(|| Failure::Invalid(format!("{number}: a rate plan without `{id_field}`")))?;
    let charges = plan["chargeOverrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let prices = prices(number, id, &charges)?;
    // A recurring fee without its billing period cannot be priced over a term.
    let recurring = match (prices.recurring, prices.every_months) {
        (Some(price), Some(every)) => Some(RecurringPrice {
            price: Money::new(price, currency.clone()),
            every_months: Some(every),
        }),
        _ => None,
    };
    let priced_whole = prices.recurring.is_none() || recurring.is_some();
    Ok(ContractLine {
        id: id.to_owned(),
        product: Product {
            id: id.to_owned(),
            code: None,
            name: None,
        },
        quantity: prices.quantity,
        // One-time fees are the amount; a termed charge adds its recurring fees over
        // its term (`termed`).
        amount: prices
            .one_time
            .filter(|_| priced_whole)
            .map(|a| Money::new(a, currency.clone())),
        standalone_price: None,
        charge: ChargeType::Recurring,
        service_period: None,
        change,
        effective: Some(effective),
        recurring,
    })
}

/// An `UpdateProduct`: the rate plan's new price per billing period from the
/// action's date (`chargeUpdates[].pricing`, the billing period kept unless the update
/// names one).
fn update(
    number: &str,
    body: &Value,
    currency: &Currency,
    effective: NaiveDate,
) -> Result<ContractLine, Failure> {
    let id = body["ratePlanId"].as_str().ok_or_else(|| {
        Failure::Invalid(format!("{number}: an updateProduct without `ratePlanId`"))
    })?;
    let charges = body["chargeUpdates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let prices = prices(number, id, &charges)?;
    let price = prices.recurring.ok_or_else(|| {
        Failure::Invalid(format!(
            "{number}: the update of {id} states no recurring price (chargeUpdates[].pricing.recurringFlatFee or recurringPerUnit)"
        ))
    })?;
    Ok(ContractLine {
        id: id.to_owned(),
        product: Product {
            id: id.to_owned(),
            code: None,
            name: None,
        },
        quantity: prices.quantity,
        amount: None,
        standalone_price: None,
        charge: ChargeType::Recurring,
        service_period: None,
        change: Some(LineChange::Updated),
        effective: Some(effective),
        recurring: Some(RecurringPrice {
            price: Money::new(price, currency.clone()),
            every_months: prices.every_months,
        }),
    })
}

/// A JSON number read through its shortest decimal text (never a float's noise).
fn decimal(value: f64) -> Result<Decimal, Failure> {
    value
        .to_string()
        .parse()
        .map_err(|_| Failure::Invalid(format!("{value} is not a price")))
}

/// A credit memo (Zuora's credit memo object, with its `items` as "List credit memo
/// items" gives them) as `CreditIssued` (posted) or `CreditVoided` (cancelled). Each
/// item credits the invoice item it names (`sourceItemId` of an `InvoiceDetail`) over
/// its service dates, net of tax (`amountWithoutTax`), its taxes kept.
fn credit_memo(memo: &Value, account_currency: &str) -> Result<Vec<Message>, Failure> {
    let text = |field: &str| memo[field].as_str().filter(|t| !t.is_empty());
    let id = text("id")
        .or_else(|| text("number"))
        .ok_or_else(|| Failure::Invalid("a credit memo without `id` or `number`".into()))?;
    let kind = match text("status") {
        Some("Posted") => kinds::CREDIT_ISSUED,
        Some("Canceled") | Some("Cancelled") => kinds::CREDIT_VOIDED,
        other => {
            return Err(Failure::Invalid(format!(
                "credit memo {id} is {}: only Posted (issued) and Canceled (voided) memos are taken",
                other.unwrap_or("without a status")
            )));
        }
    };
    let currency = Currency::new(text("currency").unwrap_or(account_currency))
        .map_err(|e| Failure::Invalid(format!("credit memo {id}: {e}")))?;
    let amount = |value: &Value, what: &str| -> Result<Money, Failure> {
        let number = value.as_f64().ok_or_else(|| {
            Failure::Invalid(format!("credit memo {id}: `{what}` is not a number"))
        })?;
        Ok(Money::new(decimal(number)?, currency.clone()))
    };
    let account = text("accountNumber")
        .or_else(|| text("accountId"))
        .ok_or_else(|| Failure::Invalid(format!("credit memo {id} names no account")))?;
    let items = memo["items"].as_array().ok_or_else(|| {
        Failure::Invalid(format!(
            "credit memo {id} carries no `items`: send it with its items (List credit memo items)"
        ))
    })?;
    let mut lines = Vec::new();
    for item in items {
        let item_id = item["id"]
            .as_str()
            .ok_or_else(|| Failure::Invalid(format!("credit memo {id}: an item without `id`")))?;
        let net = match item.get("amountWithoutTax") {
            Some(v) => amount(v, "amountWithoutTax")?,
            None => amount(&item["amount"], "amount")?,
        };
        let service_period = match (
            item["serviceStartDate"].as_str(),
            item["serviceEndDate"].as_str(),
        ) {
            (Some(start), Some(end)) => Some(Period {
                start: date(start, "serviceStartDate")?,
                end: date(end, "serviceEndDate")?,
            }),
            _ => None,
        };
        let mut taxes = Vec::new();
        for tax in item["taxationItems"]["data"]
            .as_array()
            .into_iter()
            .flatten()
        {
            taxes.push(TaxAmount {
                amount: amount(&tax["taxAmount"], "taxAmount")?,
                rate_percent: tax["taxRate"].as_f64().map(decimal).transpose()?,
                rate: tax["taxCode"].as_str().map(str::to_owned),
                inclusive: tax["taxMode"] == "TaxInclusive",
            });
        }
        lines.push(CreditLine {
            id: item_id.to_owned(),
            invoice_line: (item["sourceItemType"] == "InvoiceDetail")
                .then(|| item["sourceItemId"].as_str().map(str::to_owned))
                .flatten(),
            description: item["skuName"].as_str().map(str::to_owned),
            quantity: match item["quantity"].as_f64() {
                Some(q) => decimal(q)?,
                None => Decimal::ONE,
            },
            amount: net,
            service_period,
            taxes,
        });
    }
    let note = CreditNote {
        id: id.to_owned(),
        number: text("number").map(str::to_owned),
        invoice: text("referredInvoiceId").map(str::to_owned),
        customer: Party::new(account.to_owned()),
        currency: currency.clone(),
        issued: text("creditMemoDate")
            .map(|d| date(d, "creditMemoDate"))
            .transpose()?,
        reason: text("reasonCode").map(str::to_owned),
        lines,
        total: amount(&memo["amount"], "amount")?,
        refund: None,
    };
    let key = note.invoice.clone().unwrap_or_else(|| note.id.clone());
    let message = Message::encode(kind, &key, &note)?.with_idempotency_key(format!(
        "{}@{}",
        note.id,
        if kind == kinds::CREDIT_ISSUED {
            "posted"
        } else {
            "canceled"
        }
    ));
    Ok(vec![message])
}
