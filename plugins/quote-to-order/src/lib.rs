//! Transform plugin: validate an approved quote and turn it into orders.
//!
//! Validation reports every failed rule, not only the first: a quote that is not
//! approved (its status is not one of the `approved_statuses` config, "Approved" by
//! default), an amendment or renewal quote that names no contract, a quote without a
//! customer, without a currency, with a line without a product (or with a bundle
//! parent that is not on the quote) is `rejected` with all its reasons.
//!
//! An amendment or renewal quote (`SBQQ__Type__c`) makes orders that change the
//! contract it names (`change`): a renewal's lines as they are (another term), an
//! amendment's lines as the changes they make (each line's `SBQQ__EffectiveQuantity__c`:
//! 2 when 10 become 12, -3 when 10 become 7; a line it leaves as it was is left out,
//! and an amendment that changes nothing is refused). The ERP sinks book them as such
//! (Tryton: a sale described as the change of that contract, returns for reductions).
//!
//! A valid quote becomes up to two `OrderDrafted` messages (the validation gateway
//! makes them `OrderAccepted`): one for its one-time
//! (physical) lines, `<quote>-P`, and one for its recurring and usage (subscription)
//! lines, `<quote>-S`. Line numbers run per quote (10, 20, ...) so that bundle
//! parents stay addressable across the two orders.
//!
//! Each line's net amount is rounded to the currency's minor unit (CPQ computes net
//! totals with more digits than the ERP books) by the rule the `rounding` config names:
//! `half-even` (the default, as Tryton rounds) or `half-up` (half away from zero, as
//! SAP rounds); an order's total is the sum of its rounded lines, so it reconciles to
//! the cent with what the ERP adds up. Amounts past what a decimal holds refuse the
//! quote with the reason, never a trap.

use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{
    ChangeKind, Encoding, Money, Order, OrderCategory, OrderChange, OrderLine, Quote, Rounding,
    kinds,
};
use tenon_sdk::{Failure, Message, config};

#[cfg(test)]
mod tests;

/// Validate an approved quote and split it into orders.
#[tenon_sdk::transform]
fn quote_to_order(input: Message) -> Result<Vec<Message>, Failure> {
    if input.kind != kinds::QUOTE_APPROVED {
        return Err(Failure::Invalid(format!(
            "quote-to-order takes {} messages, not {}",
            kinds::QUOTE_APPROVED,
            input.kind
        )));
    }
    let mut settings = Settings::default();
    if let Some(name) = config::get("rounding") {
        settings.rounding = Rounding::parse(&name).ok_or_else(|| {
            Failure::Invalid(format!(
                "config `rounding` is `{name}`: it is `half-even` or `half-up`"
            ))
        })?;
    }
    if let Some(list) = config::get("approved_statuses") {
        settings.approved_statuses = list
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
    }
    let quote: Quote = input.decode()?;
    let orders = map_quote_with(&quote, &settings).map_err(Failure::Rejected)?;
    orders
        .iter()
        .map(|order| Message::encode(kinds::ORDER_DRAFTED, &input.key, order))
        .collect()
}

/// The whole mapping on encoded bodies, as the plugin runs it: decode the quote, map,
/// encode the orders. The benchmark runs this natively against the WASM component.
pub fn map_encoded(encoding: Encoding, quote: &[u8]) -> Result<Vec<Vec<u8>>, Failure> {
    let quote: Quote = encoding
        .decode(quote)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let orders = map_quote(&quote).map_err(Failure::Rejected)?;
    orders
        .iter()
        .map(|o| {
            Encoding::MsgPack
                .encode(o)
                .map_err(|e| Failure::Invalid(e.to_string()))
        })
        .collect()
}

/// What the mapping is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How line amounts are rounded to the currency's unit.
    pub rounding: Rounding,
    /// The quote statuses that mean approved.
    pub approved_statuses: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rounding: Rounding::default(),
            approved_statuses: vec!["Approved".into()],
        }
    }
}

/// Validate a quote and split it into orders (the default [`Settings`]); on failure,
/// every reason.
pub fn map_quote(quote: &Quote) -> Result<Vec<Order>, Vec<String>> {
    map_quote_with(quote, &Settings::default())
}

/// [`map_quote`] with `settings`.
pub fn map_quote_with(quote: &Quote, settings: &Settings) -> Result<Vec<Order>, Vec<String>> {
    let rounding = settings.rounding;
    let mut reasons = Vec::new();
    let q = &quote.number;
    let approved = settings.approved_statuses.join(", ");
    match quote.status.as_deref() {
        None => reasons.push(format!(
            "quote {q} has no approval status: only approved quotes ({approved}) become orders"
        )),
        Some(status) if !settings.approved_statuses.iter().any(|a| a == status) => reasons.push(
            format!("quote {q} is `{status}`: only approved quotes ({approved}) become orders"),
        ),
        Some(_) => {}
    }
    // An amendment or a renewal changes a contract already sold: it names it.
    let change_kind = match quote.quote_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("amendment") => Some(ChangeKind::Amendment),
        Some(t) if t.eq_ignore_ascii_case("renewal") => Some(ChangeKind::Renewal),
        _ => None,
    };
    let change = match (change_kind, quote.master_contract.as_deref()) {
        (Some(kind), Some(contract)) if !contract.is_empty() => Some(OrderChange {
            kind,
            contract: contract.to_owned(),
        }),
        (Some(kind), _) => {
            reasons.push(format!(
                "quote {q} is {} {kind:?} quote that names no contract (SBQQ__MasterContract__c): there is nothing to change",
                if kind == ChangeKind::Amendment { "an" } else { "a" }
            ));
            None
        }
        (None, _) => None,
    };
    let amendment = change_kind == Some(ChangeKind::Amendment);
    // An amendment's order is its changes: each line's change in quantity, the lines
    // it leaves as they were left out.
    let quantity = |line: &tenon_sdk::model::QuoteLine| {
        if amendment {
            line.effective_quantity.unwrap_or(line.quantity)
        } else {
            line.quantity
        }
    };
    if quote.customer.is_none() {
        reasons.push(format!("quote {q} has no customer (sold-to account)"));
    }
    if quote.currency.is_none() {
        reasons.push(format!("quote {q} has no currency"));
    }
    if quote.lines.is_empty() {
        reasons.push(format!("quote {q} has no lines"));
    }
    for line in &quote.lines {
        if line.product.is_none() {
            reasons.push(format!("quote {q} line {} has no product", line.key));
        }
        if !amendment && line.quantity <= Decimal::ZERO {
            reasons.push(format!(
                "quote {q} line {} has quantity {}, which is not positive",
                line.key, line.quantity
            ));
        }
        if let Some(parent) = line.parent_key
            && !quote.lines.iter().any(|l| l.key == parent)
        {
            reasons.push(format!(
                "quote {q} line {} names bundle parent {parent}, which is not on the quote",
                line.key
            ));
        }
    }
    let (Some(customer), Some(currency), true) =
        (&quote.customer, &quote.currency, reasons.is_empty())
    else {
        return Err(reasons);
    };

    let line_number = |key: u32| {
        quote
            .lines
            .iter()
            .position(|l| l.key == key)
            .map(|i| (i as u32 + 1) * 10)
    };
    let mut orders: Vec<Order> = Vec::with_capacity(2);
    for (i, line) in quote.lines.iter().enumerate() {
        let category = if line.charge.is_subscription() {
            OrderCategory::Subscription
        } else {
            OrderCategory::Physical
        };
        let Some(product) = line.product.clone() else {
            continue;
        };
        let quantity = quantity(line);
        if amendment && quantity.is_zero() {
            continue;
        }
        let order_line = OrderLine {
            line_number: (i as u32 + 1) * 10,
            parent_line_number: line.parent_key.and_then(line_number),
            product,
            quantity,
            unit_price: Money::new(line.net_price, currency.clone()),
            list_price: line.list_price.map(|p| Money::new(p, currency.clone())),
            net_amount: Money::new(line.net_total, currency.clone()).rounded_by(rounding),
            discount: line.discount.clone(),
            subscription: line.subscription.clone(),
            taxable: line.taxable,
            tax_code: line.tax_code.clone(),
        };
        let order = match orders.iter_mut().find(|o| o.category == category) {
            Some(order) => order,
            None => {
                let suffix = match category {
                    OrderCategory::Physical => "P",
                    OrderCategory::Subscription => "S",
                };
                orders.push(Order {
                    id: format!("{q}-{suffix}"),
                    quote_id: quote.id.clone(),
                    quote_number: q.clone(),
                    category,
                    customer: customer.clone(),
                    currency: currency.clone(),
                    payment_terms: quote.payment_terms.clone(),
                    customer_po: quote.customer_po.clone(),
                    start_date: quote.start_date,
                    revision: quote.revision.clone(),
                    change: change.clone(),
                    discount: quote.discount.clone(),
                    lines: Vec::new(),
                    total: Money::zero(currency.clone()),
                });
                let last = orders.len() - 1;
                &mut orders[last]
            }
        };
        order.total = order
            .total
            .checked_add(&order_line.net_amount)
            .map_err(|e| vec![format!("quote {q}: the {category:?} order's total: {e}")])?;
        order.lines.push(order_line);
    }
    if amendment && orders.is_empty() {
        return Err(vec![format!(
            "quote {q} amends contract {} but changes no quantity: there is nothing to order",
            quote.master_contract.as_deref().unwrap_or_default()
        )]);
    }
    for order in &mut orders {
        order.total = order.total.clone().with_currency_scale();
    }
    orders.sort_by_key(|o| o.category == OrderCategory::Subscription);
    Ok(orders)
}
