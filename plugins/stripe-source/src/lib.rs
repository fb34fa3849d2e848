//! Source plugin: Stripe invoice webhooks become canonical messages.
//!
//! | Stripe event | canonical message |
//! |---|---|
//! | `invoice.finalized` | `InvoicePosted` ([`Invoice`]) |
//! | `invoice.paid` | `PaymentReceived` ([`Payment`], the amount paid) |
//! | `invoice.payment_failed` | `PaymentFailed` ([`Payment`], the amount due, the attempts) |
//! | `invoice.voided` | `InvoiceVoided` ([`Invoice`], as it was: what it billed is undone) |
//! | `credit_note.created` | `CreditIssued` ([`CreditNote`], its lines net of discounts and tax) |
//! | `credit_note.voided` | `CreditVoided` ([`CreditNote`], as it was) |
//! | `charge.refunded` | `PaymentRefunded` ([`Payment`], all refunded so far on the invoice it paid) |
//!
//! Credit notes and refunds are keyed by the invoice they touch, so each runs after
//! that invoice and after what came before it. A refunded charge that paid no invoice
//! touches nothing Tenon tracks: it is logged and accepts nothing.
//!
//! Both invoice shapes are read: the 2020-03-02 API's (lines with `price`, `plan`,
//! `type`) and the current one (lines with `pricing`, `parent`, `quantity_decimal`).
//! Amounts are integer minor units in Stripe and exact decimals here, scaled by
//! **Stripe's** currency table ([`stripe_minor_digits`]), which is not ISO 4217's:
//! `1999` is 19.99 USD, 1999 JPY, 1.999 KWD, but also 19.99 ISK (ISO: zero decimals;
//! Stripe kept two) and 1999 MGA (ISO: two decimals; Stripe has none).
//!
//! A line's service period (`period.start` .. `period.end`, Unix seconds, end
//! exclusive: the next period starts there) becomes dates, end inclusive, by one
//! rule: the first day is the start's date and the last day is the day *before* the
//! end's date, both in the `time_zone` config (UTC by default, or a fixed offset
//! such as `+01:00`). A period anchored at 20:50:51 from 5 January to 5 February is
//! 5 January to 4 February (31 days), like one anchored at midnight; a period with no
//! length (a one-off item: start = end) is its one day.
//!
//! A line's amount is what it earns: Stripe's `amount` with its `discount_amounts`
//! taken off and, for a tax-inclusive price, its inclusive tax taken out; its taxes
//! (`tax_amounts` in the 2020-03-02 shape, `taxes` in the current one) are kept per
//! rate, and the invoice carries the sum of its lines' taxes and discounts. The lines'
//! amounts plus their taxes make the invoice's `total`, to the unit.
//!
//! The quote and order an invoice bills come from its `metadata`, under the keys the
//! `quote_metadata_key` and `order_metadata_key` config name (`quote_id` and
//! `order_id` by default).
//!
//! A bare invoice object (not an event) is read as its status says: posted once
//! finalized, refused while a draft. An invoice whose `lines.has_more` is true is
//! refused as invalid: a source cannot call Stripe to fetch the rest, and retrying
//! the same webhook never completes it (send the invoice with its lines expanded).
//!
//! The event id is the message's idempotency key: Stripe retries a webhook until it
//! is acknowledged, and each retry is accepted once.
//!
//! Every webhook must carry a valid `Stripe-Signature` (HMAC-SHA256 of
//! `<timestamp>.<body>` with the endpoint's secret, `stripe_webhook_secret`, and a
//! timestamp within `signature_tolerance_secs`, 300 by default); anything else is
//! `invalid`, and a source without the secret refuses everything.

use serde::Deserialize;
use serde_json::Value;
use tenon_sdk::model::chrono::{DateTime, FixedOffset, NaiveDate, Offset as _, Utc};
use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{
    CreditLine, CreditNote, Currency, Invoice, InvoiceLine, Money, Party, Payment, Period,
    TaxAmount, kinds,
};
use tenon_sdk::{Failure, Message, RawRequest, config, secrets};

#[cfg(test)]
mod tests;

/// Check a webhook's signature, then map its event to canonical messages.
#[tenon_sdk::source]
fn ingest_webhook(request: RawRequest) -> Result<Vec<Message>, Failure> {
    let secret = secrets::get("stripe_webhook_secret").map_err(|_| {
        Failure::Invalid(
            "no webhook signing secret: the operator must provide `stripe_webhook_secret`".into(),
        )
    })?;
    let tolerance = config::get("signature_tolerance_secs")
        .and_then(|t| t.parse().ok())
        .unwrap_or(DEFAULT_TOLERANCE_SECS);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = request
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("stripe-signature"))
        .map(|(_, v)| v.as_str());
    verify(signature, &request.body, &secret, now, tolerance)?;
    let settings = Settings {
        zone: time_zone()?,
        quote_key: config::get("quote_metadata_key").unwrap_or_else(|| "quote_id".into()),
        order_key: config::get("order_metadata_key").unwrap_or_else(|| "order_id".into()),
    };
    to_messages_with(&request.body, &settings)
}

/// Seconds a signature stays valid unless configured otherwise.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Check a `Stripe-Signature` header against the body: one of its `v1` signatures must
/// be the HMAC-SHA256 of `<t>.<body>` under `secret`, and `t` within `tolerance`
/// seconds of `now`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now: i64,
    tolerance: i64,
) -> Result<(), Failure> {
    use hmac::Mac as _;
    let refuse = |why: &str| Failure::Invalid(format!("Stripe-Signature refused: {why}"));
    let header = header.ok_or_else(|| refuse("the header is missing"))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| refuse("no timestamp"))?;
    if signatures.is_empty() {
        return Err(refuse("no v1 signature"));
    }
    if (now - timestamp).abs() > tolerance {
        return Err(refuse(&format!(
            "its timestamp is {} s away from now (tolerance {tolerance} s)",
            (now - timestamp).abs()
        )));
    }
    let valid = signatures.iter().any(|signature| {
        let Ok(expected) = hex::decode(signature) else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(&expected).is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(refuse("no signature matches the body and the secret"))
    }
}

/// The events this source understands.
pub const EVENT_TYPES: [&str; 7] = [
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "credit_note.created",
    "credit_note.voided",
    "charge.refunded",
];

/// A webhook body (an event, or a bare invoice) as canonical messages, dates in UTC.
pub fn to_messages(body: &[u8]) -> Result<Vec<Message>, Failure> {
    to_messages_with(body, &Settings::default())
}

/// How the source reads what Stripe leaves to the integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The offset dates and service periods are read in.
    pub zone: FixedOffset,
    /// The invoice `metadata` key naming the quote it bills.
    pub quote_key: String,
    /// The invoice `metadata` key naming the order it bills.
    pub order_key: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            zone: Utc.fix(),
            quote_key: "quote_id".into(),
            order_key: "order_id".into(),
        }
    }
}

/// A webhook body as canonical messages, read with `settings`.
pub fn to_messages_with(body: &[u8], settings: &Settings) -> Result<Vec<Message>, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("the body is not JSON: {e}")))?;
    match value["object"].as_str() {
        Some("event") => {
            let event: Event = serde_json::from_value(value)
                .map_err(|e| Failure::Invalid(format!("not a Stripe event: {e}")))?;
            from_event(event, settings)
        }
        Some("invoice") => {
            let invoice = parse_invoice(value)?;
            if invoice.status.as_deref() == Some("draft") {
                return Err(Failure::Invalid(format!(
                    "invoice {} is a draft: only finalized invoices are posted",
                    invoice.id
                )));
            }
            let key = format!(
                "{}@{}",
                invoice.id,
                invoice.status.as_deref().unwrap_or("?")
            );
            let kind = match invoice.status.as_deref() {
                Some("void") => kinds::INVOICE_VOIDED,
                _ => kinds::INVOICE_POSTED,
            };
            with_key(invoice_message(kind, &invoice, settings)?, &key)
        }
        Some(other) => Err(Failure::Invalid(format!(
            "a Stripe `{other}` object is not an event or an invoice"
        ))),
        None => Err(Failure::Invalid(
            "not a Stripe object: no `object` field".into(),
        )),
    }
}

fn from_event(event: Event, settings: &Settings) -> Result<Vec<Message>, Failure> {
    let zone = settings.zone;
    if !EVENT_TYPES.contains(&event.kind.as_str()) {
        return Err(Failure::Invalid(format!(
            "unsupported Stripe event type `{}`; this source handles {}",
            event.kind,
            EVENT_TYPES.join(", ")
        )));
    }
    match event.kind.as_str() {
        "credit_note.created" | "credit_note.voided" => {
            let kind = if event.kind == "credit_note.created" {
                kinds::CREDIT_ISSUED
            } else {
                kinds::CREDIT_VOIDED
            };
            return with_key(
                credit_message(kind, event.data.object, settings)?,
                &event.id,
            );
        }
        "charge.refunded" => {
            return match refund_message(event.data.object, zone)? {
                Some(message) => with_key(message, &event.id),
                None => Ok(Vec::new()),
            };
        }
        _ => {}
    }
    let invoice = parse_invoice(event.data.object)?;
    let message = match event.kind.as_str() {
        "invoice.finalized" => invoice_message(kinds::INVOICE_POSTED, &invoice, settings)?,
        "invoice.voided" => invoice_message(kinds::INVOICE_VOIDED, &invoice, settings)?,
        "invoice.paid" => {
            let on = invoice.status_transitions.paid_at.unwrap_or(event.created);
            let on = date(on, zone)?;
            payment(kinds::PAYMENT_RECEIVED, &invoice, invoice.amount_paid, on)?
        }
        _ => payment(
            kinds::PAYMENT_FAILED,
            &invoice,
            invoice.amount_due,
            date(event.created, zone)?,
        )?,
    };
    with_key(message, &event.id)
}

fn with_key(message: Message, key: &str) -> Result<Vec<Message>, Failure> {
    Ok(vec![message.with_idempotency_key(key)])
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

/// The fields of a Stripe invoice this source reads, in either API shape.
#[derive(Deserialize)]
struct StripeInvoice {
    id: String,
    #[serde(default)]
    number: Option<String>,
    /// An id, or the customer object when expanded.
    customer: Value,
    #[serde(default)]
    customer_name: Option<String>,
    #[serde(default)]
    customer_address: Option<Address>,
    currency: String,
    #[serde(default)]
    status: Option<String>,
    created: i64,
    #[serde(default)]
    due_date: Option<i64>,
    #[serde(default)]
    status_transitions: Transitions,
    total: i64,
    amount_due: i64,
    amount_paid: i64,
    #[serde(default)]
    attempt_count: Option<u32>,
    /// The integration's own keys and values (e.g. the order the invoice bills).
    #[serde(default)]
    metadata: Value,
    lines: Lines,
}

#[derive(Deserialize, Default)]
struct Transitions {
    #[serde(default)]
    finalized_at: Option<i64>,
    #[serde(default)]
    paid_at: Option<i64>,
}

#[derive(Deserialize)]
struct Address {
    #[serde(default)]
    country: Option<String>,
}

#[derive(Deserialize)]
struct Lines {
    #[serde(default)]
    data: Option<Vec<StripeLine>>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Deserialize)]
struct StripeLine {
    id: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    quantity: Option<u64>,
    /// The current API's exact quantity, as a decimal string.
    #[serde(default)]
    quantity_decimal: Option<String>,
    #[serde(default)]
    period: Option<StripePeriod>,
    #[serde(default)]
    discount_amounts: Option<Vec<StripeDiscount>>,
    /// The 2020-03-02 shape's taxes.
    #[serde(default)]
    tax_amounts: Option<Vec<StripeTaxAmount>>,
    /// The current shape's taxes.
    #[serde(default)]
    taxes: Option<Vec<StripeTax>>,
}

#[derive(Deserialize)]
struct StripeDiscount {
    amount: i64,
}

#[derive(Deserialize)]
struct StripeTaxAmount {
    amount: i64,
    #[serde(default)]
    inclusive: bool,
    /// An id, or the tax rate object when expanded.
    #[serde(default)]
    tax_rate: Value,
}

#[derive(Deserialize)]
struct StripeTax {
    amount: i64,
    #[serde(default)]
    tax_behavior: Option<String>,
    #[serde(default)]
    tax_rate_details: Option<Value>,
}

#[derive(Deserialize)]
struct StripePeriod {
    start: i64,
    end: i64,
}

fn parse_invoice(value: Value) -> Result<StripeInvoice, Failure> {
    serde_json::from_value(value)
        .map_err(|e| Failure::Invalid(format!("not a Stripe invoice: {e}")))
}

fn currency(code: &str) -> Result<Currency, Failure> {
    Currency::new(code).map_err(|e| Failure::Invalid(e.to_string()))
}

/// How many decimals Stripe's integer amounts have in `currency`, from Stripe's
/// "Supported currencies" page (docs.stripe.com/currencies): zero-decimal currencies,
/// three-decimal currencies, and two for every other, ISK included (a special case:
/// ISO 4217 gives it none, Stripe kept two for backwards compatibility, with amounts
/// in multiples of 100). Where Stripe and ISO differ (ISK, MGA, IQD, LYD), Stripe's
/// integers follow Stripe's table.
pub fn stripe_minor_digits(currency: &Currency) -> u32 {
    match currency.code() {
        "BIF" | "CLP" | "DJF" | "GNF" | "JPY" | "KMF" | "KRW" | "MGA" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "JOD" | "KWD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// A Stripe integer amount in `currency`, exact.
fn money(units: i64, currency: &Currency) -> Money {
    Money::new(
        Decimal::new(units, stripe_minor_digits(currency)),
        currency.clone(),
    )
}

/// The time zone service periods and dates are read in: UTC, or the `time_zone`
/// config as a fixed offset (`+01:00`, `-05:30`, `Z`).
fn time_zone() -> Result<FixedOffset, Failure> {
    let Some(text) = config::get("time_zone") else {
        return Ok(Utc.fix());
    };
    parse_offset(&text).ok_or_else(|| {
        Failure::Invalid(format!(
            "config `time_zone` is `{text}`: it is an offset from UTC such as `+01:00`, `-05:30` or `Z`"
        ))
    })
}

/// `+hh:mm`, `-hh:mm` or `Z` (or `UTC`) as an offset.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("z") || text.eq_ignore_ascii_case("utc") {
        return Some(Utc.fix());
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
    if hours > 14 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// The date of a Unix time in `zone`.
fn date(secs: i64, zone: FixedOffset) -> Result<NaiveDate, Failure> {
    DateTime::from_timestamp(secs, 0)
        .map(|t| t.with_timezone(&zone).date_naive())
        .ok_or_else(|| Failure::Invalid(format!("{secs} is not a time")))
}

/// The days a Stripe period `[start, end)` serves, end inclusive (see the module's
/// rule): the start's date to the day before the end's date.
pub fn service_days(start: i64, end: i64, zone: FixedOffset) -> Result<Period, Failure> {
    if end < start {
        return Err(Failure::Invalid(format!(
            "a period that ends ({end}) before it starts ({start})"
        )));
    }
    let first = date(start, zone)?;
    let last = date(end, zone)?
        .pred_opt()
        .filter(|last| *last >= first)
        .unwrap_or(first);
    Ok(Period {
        start: first,
        end: last,
    })
}

fn customer(invoice: &StripeInvoice) -> Result<Party, Failure> {
    let id = id_of(&invoice.customer)
        .ok_or_else(|| Failure::Invalid(format!("invoice {} has no customer", invoice.id)))?;
    Ok(Party {
        name: invoice.customer_name.clone(),
        country: invoice
            .customer_address
            .as_ref()
            .and_then(|a| a.country.clone()),
        ..Party::new(id)
    })
}

/// The canonical invoice of a Stripe invoice, read with `settings`.
fn invoice(stripe: &StripeInvoice, settings: &Settings) -> Result<Invoice, Failure> {
    let zone = settings.zone;
    if stripe.lines.has_more {
        return Err(Failure::Invalid(format!(
            "invoice {} has more lines than the webhook carries (`lines.has_more`): send it with every line (expand `lines`, or list them and post the invoice object)",
            stripe.id
        )));
    }
    let currency = currency(&stripe.currency)?;
    let Some(lines) = &stripe.lines.data else {
        return Err(Failure::Invalid(format!(
            "invoice {} carries no `lines.data`: send it with its lines",
            stripe.id
        )));
    };
    let lines = lines
        .iter()
        .map(|line| {
            if !line.currency.eq_ignore_ascii_case(&stripe.currency) {
                return Err(Failure::Invalid(format!(
                    "line {} is in {}, the invoice in {}",
                    line.id, line.currency, stripe.currency
                )));
            }
            let quantity = match (&line.quantity_decimal, line.quantity) {
                (Some(text), _) => text.parse::<Decimal>().map_err(|e| {
                    Failure::Invalid(format!("line {}: quantity `{text}`: {e}", line.id))
                })?,
                (None, Some(q)) => Decimal::from(q),
                (None, None) => Decimal::ONE,
            };
            let service_period = line
                .period
                .as_ref()
                .map(|p| service_days(p.start, p.end, zone))
                .transpose()?;
            let earned = earned(line.into(), &currency)?;
            Ok(InvoiceLine {
                id: line.id.clone(),
                description: line.description.clone().filter(|d| !d.is_empty()),
                quantity,
                amount: money(earned.amount, &currency),
                service_period,
                discount: (earned.discount != 0).then(|| money(earned.discount, &currency)),
                taxes: earned.taxes,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    // The invoice's tax and discount: its lines'.
    let (mut tax, mut discount) = (None, None);
    for line in &lines {
        for t in &line.taxes {
            add_to(&mut tax, &t.amount, &stripe.id)?;
        }
        if let Some(d) = &line.discount {
            add_to(&mut discount, d, &stripe.id)?;
        }
    }
    Ok(Invoice {
        id: stripe.id.clone(),
        number: stripe.number.clone(),
        customer: customer(stripe)?,
        currency: currency.clone(),
        issued: Some(date(
            stripe
                .status_transitions
                .finalized_at
                .unwrap_or(stripe.created),
            zone,
        )?),
        due: stripe.due_date.map(|d| date(d, zone)).transpose()?,
        lines,
        total: money(stripe.total, &currency),
        tax,
        discount,
        quote: metadata(&stripe.metadata, &settings.quote_key),
        order: metadata(&stripe.metadata, &settings.order_key),
    })
}

/// A non-empty string value of Stripe `metadata`.
fn metadata(metadata: &Value, key: &str) -> Option<String> {
    metadata[key]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Add `amount` to `sum` (none yet: zero).
fn add_to(sum: &mut Option<Money>, amount: &Money, invoice: &str) -> Result<(), Failure> {
    let so_far = sum
        .take()
        .unwrap_or_else(|| Money::zero(amount.currency.clone()));
    *sum = Some(so_far.checked_add(amount).map_err(|_| too_large(invoice))?);
    Ok(())
}

fn too_large(what: &str) -> Failure {
    Failure::Invalid(format!(
        "{what}: amounts that add up past what can be computed"
    ))
}

/// What a line earns, in Stripe units, with its discount and taxes.
struct Earned {
    amount: i64,
    discount: i64,
    taxes: Vec<TaxAmount>,
}

/// The parts of a Stripe line (an invoice's or a credit note's) its earnings are
/// made of.
struct LineParts<'a> {
    id: &'a str,
    amount: i64,
    discounts: Option<&'a [StripeDiscount]>,
    tax_amounts: Option<&'a [StripeTaxAmount]>,
    taxes: Option<&'a [StripeTax]>,
}

impl<'a> From<&'a StripeLine> for LineParts<'a> {
    fn from(line: &'a StripeLine) -> Self {
        LineParts {
            id: &line.id,
            amount: line.amount,
            discounts: line.discount_amounts.as_deref(),
            tax_amounts: line.tax_amounts.as_deref(),
            taxes: line.taxes.as_deref(),
        }
    }
}

/// A line's amount less its discounts and its inclusive taxes, with its taxes.
fn earned(line: LineParts<'_>, currency: &Currency) -> Result<Earned, Failure> {
    let overflow = || too_large(&format!("line {}", line.id));
    let discount = line
        .discounts
        .iter()
        .copied()
        .flatten()
        .try_fold(0i64, |sum, d| sum.checked_add(d.amount))
        .ok_or_else(overflow)?;
    // Each tax: (Stripe units, inclusive, rate id, rate in percent).
    let mut taxes: Vec<(i64, bool, Option<String>, Option<Decimal>)> = Vec::new();
    for t in line.tax_amounts.iter().copied().flatten() {
        let (id, percent) = tax_rate(&t.tax_rate);
        taxes.push((t.amount, t.inclusive, id, percent));
    }
    for t in line.taxes.iter().copied().flatten() {
        let details = t
            .tax_rate_details
            .as_ref()
            .map_or(&Value::Null, |d| &d["tax_rate"]);
        let (id, percent) = tax_rate(details);
        let inclusive = t.tax_behavior.as_deref() == Some("inclusive");
        taxes.push((t.amount, inclusive, id, percent));
    }
    let inclusive = taxes
        .iter()
        .filter(|t| t.1)
        .try_fold(0i64, |sum, t| sum.checked_add(t.0))
        .ok_or_else(overflow)?;
    let amount = line
        .amount
        .checked_sub(discount)
        .and_then(|a| a.checked_sub(inclusive))
        .ok_or_else(overflow)?;
    Ok(Earned {
        amount,
        discount,
        taxes: taxes
            .into_iter()
            .map(|(units, inclusive, rate, rate_percent)| TaxAmount {
                amount: money(units, currency),
                rate_percent,
                rate,
                inclusive,
            })
            .collect(),
    })
}

/// A tax rate's id and percentage: an id, or the expanded object (`id`,
/// `percentage`).
fn tax_rate(value: &Value) -> (Option<String>, Option<Decimal>) {
    match value {
        Value::String(id) => (Some(id.clone()), None),
        Value::Object(rate) => (
            rate.get("id").and_then(Value::as_str).map(str::to_owned),
            rate.get("percentage")
                .and_then(|p| p.as_f64())
                .and_then(|p| p.to_string().parse().ok()),
        ),
        _ => (None, None),
    }
}

/// The canonical invoice as a message of `kind` (posted or voided).
fn invoice_message(
    kind: &str,
    stripe: &StripeInvoice,
    settings: &Settings,
) -> Result<Message, Failure> {
    let invoice = invoice(stripe, settings)?;
    Message::encode(kind, &invoice.id, &invoice)
}

fn payment(
    kind: &str,
    stripe: &StripeInvoice,
    minor: i64,
    on: NaiveDate,
) -> Result<Message, Failure> {
    let payment = Payment {
        invoice_id: stripe.id.clone(),
        invoice_number: stripe.number.clone(),
        customer: customer(stripe)?,
        amount: money(minor, &currency(&stripe.currency)?),
        on: Some(on),
        attempts: stripe.attempt_count,
    };
    Message::encode(kind, &stripe.id, &payment)
}

/// The fields of a Stripe credit note this source reads.
#[derive(Deserialize)]
struct StripeCreditNote {
    id: String,
    #[serde(default)]
    number: Option<String>,
    /// An id, or the invoice object when expanded.
    #[serde(default)]
    invoice: Value,
    customer: Value,
    currency: String,
    created: i64,
    #[serde(default)]
    reason: Option<String>,
    total: i64,
    /// An id, or the refund object when expanded.
    #[serde(default)]
    refund: Value,
    lines: CreditLines,
}

#[derive(Deserialize)]
struct CreditLines {
    #[serde(default)]
    data: Option<Vec<StripeCreditLine>>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Deserialize)]
struct StripeCreditLine {
    id: String,
    amount: i64,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(default)]
    invoice_line_item: Option<String>,
    #[serde(default)]
    discount_amounts: Option<Vec<StripeDiscount>>,
    #[serde(default)]
    tax_amounts: Option<Vec<StripeTaxAmount>>,
    #[serde(default)]
    taxes: Option<Vec<StripeTax>>,
}

/// An id, or an expanded object's `id`.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// A credit note as a message of `kind` (issued or voided), keyed by the invoice it
/// credits so that it follows that invoice.
fn credit_message(kind: &str, object: Value, settings: &Settings) -> Result<Message, Failure> {
    let note: StripeCreditNote = serde_json::from_value(object)
        .map_err(|e| Failure::Invalid(format!("not a Stripe credit note: {e}")))?;
    if note.lines.has_more {
        return Err(Failure::Invalid(format!(
            "credit note {} has more lines than the webhook carries (`lines.has_more`): send it with every line",
            note.id
        )));
    }
    let currency = currency(&note.currency)?;
    let lines = note
        .lines
        .data
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|line| {
            let earned = earned(
                LineParts {
                    id: &line.id,
                    amount: line.amount,
                    discounts: line.discount_amounts.as_deref(),
                    tax_amounts: line.tax_amounts.as_deref(),
                    taxes: line.taxes.as_deref(),
                },
                &currency,
            )?;
            Ok(CreditLine {
                id: line.id.clone(),
                invoice_line: line.invoice_line_item.clone(),
                description: line.description.clone().filter(|d| !d.is_empty()),
                quantity: Decimal::from(line.quantity.unwrap_or(1)),
                amount: money(earned.amount, &currency),
                service_period: None,
                taxes: earned.taxes,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let customer = id_of(&note.customer)
        .ok_or_else(|| Failure::Invalid(format!("credit note {} has no customer", note.id)))?;
    let credit = CreditNote {
        id: note.id.clone(),
        number: note.number.clone(),
        invoice: id_of(&note.invoice),
        customer: Party::new(customer),
        currency: currency.clone(),
        issued: Some(date(note.created, settings.zone)?),
        reason: note.reason.clone(),
        lines,
        total: money(note.total, &currency),
        refund: id_of(&note.refund),
    };
    let key = credit.invoice.clone().unwrap_or_else(|| credit.id.clone());
    Message::encode(kind, &key, &credit)
}

/// The fields of a refunded Stripe charge this source reads.
#[derive(Deserialize)]
struct StripeCharge {
    id: String,
    amount_refunded: i64,
    currency: String,
    #[serde(default)]
    customer: Value,
    /// The invoice it paid (API versions before 2025-03-31; later ones leave it out).
    #[serde(default)]
    invoice: Value,
    created: i64,
    #[serde(default)]
    refunds: Option<Refunds>,
}

#[derive(Deserialize)]
struct Refunds {
    #[serde(default)]
    data: Vec<StripeRefund>,
}

#[derive(Deserialize)]
struct StripeRefund {
    created: i64,
}

/// A refunded charge as `PaymentRefunded` of the invoice it paid, its amount all that
/// is refunded so far; `None` for a charge that paid no invoice (nothing Tenon
/// tracks is touched: it is logged, not posted).
fn refund_message(object: Value, zone: FixedOffset) -> Result<Option<Message>, Failure> {
    let charge: StripeCharge = serde_json::from_value(object)
        .map_err(|e| Failure::Invalid(format!("not a Stripe charge: {e}")))?;
    let Some(invoice) = id_of(&charge.invoice) else {
        tenon_sdk::log::info(&format!(
            "charge {} was refunded but paid no invoice: no revenue to reverse",
            charge.id
        ));
        return Ok(None);
    };
    let customer = id_of(&charge.customer)
        .ok_or_else(|| Failure::Invalid(format!("charge {} has no customer", charge.id)))?;
    let latest = charge
        .refunds
        .iter()
        .flat_map(|r| r.data.iter().map(|r| r.created))
        .max()
        .unwrap_or(charge.created);
    let payment = Payment {
        invoice_id: invoice.clone(),
        invoice_number: None,
        customer: Party::new(customer),
        amount: money(charge.amount_refunded, &currency(&charge.currency)?),
        on: Some(date(latest, zone)?),
        attempts: None,
    };
    Message::encode(kinds::PAYMENT_REFUNDED, &invoice, &payment).map(Some)
}
