//! Source plugin: a Zuora order (the body of `POST /v1/orders`) becomes one canonical
//! message per subscription it touches, with the subscription as it stands after the
//! order's actions on it.
//!
//! | Zuora order actions on a subscription | canonical message |
//! |---|---|
//! | `CreateSubscription` | `ContractActivated` |
//! | `CancelSubscription` | `ContractCancelled` (with the effective date) |
//! | `AddProduct`, `RemoveProduct`, `UpdateProduct`, `RenewSubscription`, `Suspend`, `Resume`, `TermsAndConditions` | `ContractAmended` |
//!
//! Zuora's three trigger dates stay apart (`ContractEffective`,
//! `ServiceActivation`, `CustomerAcceptance`): each lands in its own field, none
//! stands in for another. Rate plans added or removed are the contract's lines,
//! marked `Added` or `Removed`; a price is carried only when the order overrides it
//! (`chargeOverrides`), since a catalogue price is not in the order.
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
use tenon_sdk::model::chrono::{Months, NaiveDate};
use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{
    ChargeType, Contract, ContractLine, ContractStatus, Currency, LineChange, Money, Party, Period,
    Product, kinds,
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

/// A Zuora order as canonical messages, `currency` being the account's.
pub fn to_messages(body: &[u8], currency: &str) -> Result<Vec<Message>, Failure> {
    let order: Order = serde_json::from_slice(body)
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
    date(&order.order_date, "orderDate")?;
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
        let mut contract = contract(&number, &account, &currency, &actions)?;
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

fn contract(
    number: &str,
    account: &str,
    currency: &Currency,
    actions: &[&Value],
) -> Result<Contract, Failure> {
    let mut contract = Contract {
        id: number.to_owned(),
        customer: Party {
            id: account.to_owned(),
            name: None,
            country: None,
            external_ids: Default::default(),
            parent: None,
            blocked: false,
            credit_hold: false,
        },
        status: ContractStatus::Active,
        currency: currency.clone(),
        contract_effective: None,
        service_activation: None,
        customer_acceptance: None,
        term_months: None,
        ends: None,
        actions: Vec::new(),
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
        let triggers: Vec<TriggerDate> = serde_json::from_value(
            action
                .get("triggerDates")
                .cloned()
                .unwrap_or(Value::Array(vec![])),
        )
        .map_err(|e| Failure::Invalid(format!("{number}: triggerDates: {e}")))?;
        for trigger in triggers {
            let day = date(&trigger.trigger_date, &trigger.name)?;
            let slot = match trigger.name.as_str() {
                "ContractEffective" => &mut contract.contract_effective,
                "ServiceActivation" => &mut contract.service_activation,
                "CustomerAcceptance" => &mut contract.customer_acceptance,
                other => {
                    return Err(Failure::Invalid(format!(
                        "{number}: unknown trigger date `{other}`"
                    )));
                }
            };
            slot.get_or_insert(day);
        }
        match kind {
            "CreateSubscription" => {
                let create = &action["createSubscription"];
                contract.term_months = term_months(&create["terms"]["initialTerm"]);
                for plan in create["subscribeToRatePlans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    contract.lines.push(line(
                        number,
                        plan,
                        "productRatePlanId",
                        currency,
                        None,
                        contract.term_months,
                    )?);
                }
            }
            "AddProduct" => {
                let plan = &action["addProduct"];
                contract.lines.push(line(
                    number,
                    plan,
                    "productRatePlanId",
                    currency,
                    Some(LineChange::Added),
                    contract.term_months,
                )?);
            }
            "RemoveProduct" => {
                let plan = &action["removeProduct"];
                contract.lines.push(line(
                    number,
                    plan,
                    "ratePlanId",
                    currency,
                    Some(LineChange::Removed),
                    None,
                )?);
            }
            // New terms (`termsAndConditions.lastTerm`): the term of what follows.
            "TermsAndConditions" => {
                if let Some(months) = term_months(&action["termsAndConditions"]["lastTerm"]) {
                    contract.term_months = Some(months);
                }
            }
            "Suspend" => contract.status = ContractStatus::Suspended,
            "Resume" => contract.status = ContractStatus::Active,
            "CancelSubscription" => {
                contract.status = ContractStatus::Cancelled;
                let cancel = &action["cancelSubscription"];
                if let Some(day) = cancel["cancellationEffectiveDate"].as_str() {
                    contract.ends = Some(date(day, "cancellationEffectiveDate")?);
                }
            }
            _ => {}
        }
        contract.actions.push(kind.to_owned());
    }
    // New charges are in service for the term, from service activation.
    let start = contract.service_activation.or(contract.contract_effective);
    if let (Some(start), Some(months)) = (start, contract.term_months) {
        let end = start
            .checked_add_months(Months::new(months))
            .and_then(|d| d.pred_opt());
        for line in &mut contract.lines {
            if line.change != Some(LineChange::Removed) {
                line.service_period = end.map(|end| Period { start, end });
            }
        }
    }
    Ok(contract)
}

fn term_months(term: &Value) -> Option<u32> {
    let period = u32::try_from(term["period"].as_u64()?).ok()?;
    match term["periodType"].as_str()? {
        "Month" => Some(period),
        "Year" => period.checked_mul(12),
        _ => None,
    }
}

fn line(
    number: &str,
    plan: &Value,
    id_field: &str,
    currency: &Currency,
    change: Option<LineChange>,
    term_months: Option<u32>,
) -> Result<ContractLine, Failure> {
    let id = plan[id_field]
        .as_str()
        .ok_or_else(|| Failure::Invalid(format!("{number}: a rate plan without `{id_field}`")))?;
    // A price only when the order overrides the catalogue's; a recurring price is per
    // billing period, so it needs the charge's `billingPeriod` and the term to become
    // the charge's price over its service period.
    let overrides = plan["chargeOverrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut quantity = Decimal::ONE;
    let mut amount: Option<Decimal> = None;
    let mut unknown = false;
    for charge in &overrides {
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
                quantity = decimal(q)?;
            }
            let too_large = || {
                Failure::Invalid(format!(
                    "{number}: the {kind} charge of {id} is past what a decimal holds"
                ))
            };
            let mut add = if kind.ends_with("PerUnit") {
                price.checked_mul(quantity).ok_or_else(too_large)?
            } else {
                price
            };
            if kind.starts_with("recurring") {
                let per = match charge["billingPeriod"].as_str() {
                    Some("Month") => Some(1),
                    Some("Quarter") => Some(3),
                    Some("Semi_Annual") => Some(6),
                    Some("Annual") => Some(12),
                    _ => None,
                };
                match (per, term_months) {
                    (Some(per), Some(term)) if term % per == 0 => {
                        add = add
                            .checked_mul(Decimal::from(term / per))
                            .ok_or_else(too_large)?;
                    }
                    _ => unknown = true,
                }
            }
            amount = Some(
                amount
                    .unwrap_or_default()
                    .checked_add(add)
                    .ok_or_else(too_large)?,
            );
        }
    }
    if unknown {
        amount = None;
    }
    Ok(ContractLine {
        id: id.to_owned(),
        product: Product {
            id: id.to_owned(),
            code: None,
            name: None,
        },
        quantity,
        amount: amount.map(|a| Money::new(a, currency.clone())),
        standalone_price: None,
        charge: ChargeType::Recurring,
        service_period: None,
        change,
    })
}

/// A JSON number read through its shortest decimal text (never a float's noise).
fn decimal(value: f64) -> Result<Decimal, Failure> {
    value
        .to_string()
        .parse()
        .map_err(|_| Failure::Invalid(format!("{value} is not a price")))
}
