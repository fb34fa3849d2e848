//! Transform plugin: the validation gateway in front of the ERPs.
//!
//! - `CustomerUpserted` (a [`Party`] from the CRM, through a master-data flow) is
//!   kept in the plugin's key-value storage as the customer master; nothing goes on.
//! - `OrderDrafted` (an order a mapping made) becomes `OrderAccepted` only when every
//!   rule holds; otherwise it is `rejected` with every failed rule, not only the
//!   first:
//!   - the sold-to customer exists in the customer master, is not blocked nor on
//!     credit hold, and so is every account above it in the customer hierarchy
//!     (`parent`), each in the master (a loop in the hierarchy is reported);
//!   - the company has tax nexus in the customer's country (config `tax_nexus`);
//!   - each product may be sold in that country (config `product_restrictions`);
//!   - every amount is in the order's one currency;
//!   - when config `revenue_rules` names any (product code -> `ratable`,
//!     `point-in-time` or `usage`), every product on the order has a rule the revenue
//!     step knows.
//!
//! A valid order goes on with its customer as the master knows it (name, country,
//! and the customer's numbers in other systems, `external_ids`, which ERP sinks
//! address it by). The same plugin instance serves both flows, so both see one
//! namespace.

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use tenon_sdk::model::{Encoding, Order, Party, kinds};
use tenon_sdk::{Failure, Message, config, kv};

#[cfg(test)]
mod tests;

/// Keep a customer in the master, or pass an order only when every rule holds.
#[tenon_sdk::transform]
fn validate_order(input: Message) -> Result<Vec<Message>, Failure> {
    match input.kind.as_str() {
        CUSTOMER_UPSERTED => {
            let party: Party = input.decode()?;
            let record = serde_json::to_vec(&party)
                .map_err(|e| Failure::Invalid(format!("cannot store the customer: {e}")))?;
            kv::set(&key(&party.id), &record)?;
            Ok(Vec::new())
        }
        kinds::ORDER_DRAFTED => {
            let order: Order = input.decode()?;
            let customer: Option<Party> = kv::get(&key(&order.customer.id))?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let rules = Rules::from_config(config::get)?;
            let lookup = |id: &str| -> Option<Party> {
                kv::get(&key(id))
                    .ok()
                    .flatten()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            };
            let reasons = violations(&order, customer.as_ref(), &rules, &lookup);
            match customer {
                Some(master) if reasons.is_empty() => {
                    let mut order = order;
                    enrich(&mut order, &master);
                    let encoding = Encoding::from_content_type(&input.content_type)
                        .map_err(|e| Failure::Invalid(e.to_string()))?;
                    let mut output =
                        Message::encode_as(encoding, kinds::ORDER_ACCEPTED, &input.key, &order)?;
                    output.headers = input.headers;
                    Ok(vec![output])
                }
                _ => Err(Failure::Rejected(reasons)),
            }
        }
        other => Err(Failure::Invalid(format!(
            "the gateway takes {CUSTOMER_UPSERTED} and {}, not `{other}`",
            kinds::ORDER_DRAFTED
        ))),
    }
}

/// The key-value key of a customer in the master.
fn key(customer: &str) -> String {
    format!("customer/{customer}")
}

/// The master-data event kind.
pub const CUSTOMER_UPSERTED: &str = "CustomerUpserted";

/// The rules' settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// ISO country codes with tax nexus.
    pub tax_nexus: Vec<String>,
    /// Product code -> countries where it may not be sold.
    pub product_restrictions: BTreeMap<String, Vec<String>>,
    /// Product code -> its revenue recognition rule; empty: not checked.
    pub revenue_rules: BTreeMap<String, String>,
}

/// The recognition rules the revenue step knows.
pub const REVENUE_RULES: [&str; 3] = ["ratable", "point-in-time", "usage"];

/// How far up a customer hierarchy the gateway looks.
const HIERARCHY_DEPTH: usize = 16;

impl Rules {
    /// Read the rules from the plugin's config (`get` is `config::get`).
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Result<Rules, Failure> {
        fn parse<T: DeserializeOwned + Default>(
            get: &impl Fn(&str) -> Option<String>,
            key: &str,
        ) -> Result<T, Failure> {
            match get(key) {
                None => Ok(T::default()),
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| Failure::Invalid(format!("config `{key}`: {e}"))),
            }
        }
        Ok(Rules {
            tax_nexus: parse(&get, "tax_nexus")?,
            product_restrictions: parse(&get, "product_restrictions")?,
            revenue_rules: parse(&get, "revenue_rules")?,
        })
    }
}

/// The order's customer completed from the customer master: the master's name and
/// country where it has them, and its numbers in other systems.
pub fn enrich(order: &mut Order, master: &Party) {
    let customer = &mut order.customer;
    if master.name.is_some() {
        customer.name.clone_from(&master.name);
    }
    if master.country.is_some() {
        customer.country.clone_from(&master.country);
    }
    customer.external_ids.extend(
        master
            .external_ids
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
}

/// Every rule an order breaks, given the customer master's record of its customer
/// and `master`, which looks any account up in the customer master.
pub fn violations(
    order: &Order,
    customer: Option<&Party>,
    rules: &Rules,
    master: &dyn Fn(&str) -> Option<Party>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(customer) = customer {
        hierarchy(customer, master, &mut reasons);
    }
    let country = customer
        .and_then(|c| c.country.clone())
        .or_else(|| order.customer.country.clone());
    if customer.is_none() {
        reasons.push(format!(
            "sold-to customer `{}` is not in the customer master",
            order.customer.id
        ));
    }
    match &country {
        None => reasons.push(format!(
            "customer `{}` has no country: tax cannot be determined",
            order.customer.id
        )),
        Some(c) if !rules.tax_nexus.iter().any(|n| n.eq_ignore_ascii_case(c)) => reasons.push(
            format!("no tax nexus in {c}: the company is not registered to collect tax there"),
        ),
        Some(_) => {}
    }
    for line in &order.lines {
        let code = line.product.code_or_id();
        if let (Some(c), Some(banned)) = (&country, rules.product_restrictions.get(code))
            && banned.iter().any(|b| b.eq_ignore_ascii_case(c))
        {
            reasons.push(format!(
                "line {}: product `{code}` may not be sold in {c}",
                line.line_number
            ));
        }
        for (what, money) in [
            ("unit price", &line.unit_price),
            ("net amount", &line.net_amount),
        ] {
            if money.currency != order.currency {
                reasons.push(format!(
                    "line {}: {what} is in {}, the order in {}",
                    line.line_number, money.currency, order.currency
                ));
            }
        }
    }
    if !rules.revenue_rules.is_empty() {
        for line in &order.lines {
            let code = line.product.code_or_id();
            match rules.revenue_rules.get(code).map(String::as_str) {
                None => reasons.push(format!(
                    "line {}: product `{code}` has no revenue recognition rule (config `revenue_rules`: {})",
                    line.line_number,
                    REVENUE_RULES.join(", ")
                )),
                Some(rule) if !REVENUE_RULES.contains(&rule) => reasons.push(format!(
                    "line {}: product `{code}` has the revenue rule `{rule}`, which the revenue step does not know ({})",
                    line.line_number,
                    REVENUE_RULES.join(", ")
                )),
                Some(_) => {}
            }
        }
    }
    if order.total.currency != order.currency {
        reasons.push(format!(
            "the total is in {}, the order in {}",
            order.total.currency, order.currency
        ));
    }
    reasons
}

/// The customer's standing and every account above it: blocked, on credit hold, not
/// in the master, or a loop.
fn hierarchy(customer: &Party, master: &dyn Fn(&str) -> Option<Party>, reasons: &mut Vec<String>) {
    let standing = |account: &Party, what: &str, reasons: &mut Vec<String>| {
        if account.blocked {
            reasons.push(format!("{what} is blocked in the customer master"));
        }
        if account.credit_hold {
            reasons.push(format!("{what} is on credit hold"));
        }
    };
    let id = &customer.id;
    standing(customer, &format!("customer `{id}`"), reasons);
    let mut seen = vec![id.clone()];
    let mut above = customer.parent.clone();
    while let Some(parent) = above {
        if seen.contains(&parent) {
            reasons.push(format!(
                "the customer hierarchy of `{id}` loops back to `{parent}`"
            ));
            return;
        }
        if seen.len() > HIERARCHY_DEPTH {
            reasons.push(format!(
                "the customer hierarchy of `{id}` is deeper than {HIERARCHY_DEPTH} accounts"
            ));
            return;
        }
        let Some(account) = master(&parent) else {
            reasons.push(format!(
                "parent account `{parent}` of customer `{id}` is not in the customer master"
            ));
            return;
        };
        standing(
            &account,
            &format!("parent account `{parent}` of customer `{id}`"),
            reasons,
        );
        seen.push(parent);
        above = account.parent;
    }
}
