//! Source plugin: Stripe invoice webhooks become canonical messages.
//!
//! | Stripe event | canonical message |
//! |---|---|
//! | `invoice.finalized` | `InvoicePosted` ([`Invoice`]) |
//! | `invoice.paid` | `PaymentReceived` ([`Payment`], the amount paid) |
//! | `invoice.payment_failed` | `PaymentFailed` ([`Payment`], the amount due, the attempts) |
//!
//! Both invoice shapes are read: the 2020-03-02 API's (lines with `price`, `plan`,
//! `type`) and the current one (lines with `pricing`, `parent`, `quantity_decimal`).
//! Amounts are integer minor units in Stripe and exact decimals here, in the
//! currency's own minor unit (`1999` is 19.99 USD but 1999 JPY). A line's service
//! period (`period.start` .. `period.end`, Unix seconds, end exclusive) is kept as
//! dates, end inclusive. A bare invoice object (not an event) is read as its status
//! says: posted once finalized, refused while a draft.
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
use tenon_sdk::model::chrono::{DateTime, NaiveDate};
use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{Currency, Invoice, InvoiceLine, Money, Party, Payment, Period, kinds};
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
    to_messages(&request.body)
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
pub const EVENT_TYPES: [&str; 3] = [
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
];

/// A webhook body (an event, or a bare invoice) as canonical messages.
pub fn to_messages(body: &[u8]) -> Result<Vec<Message>, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("the body is not JSON: {e}")))?;
    match value["object"].as_str() {
        Some("event") => {
            let event: Event = serde_json::from_value(value)
                .map_err(|e| Failure::Invalid(format!("not a Stripe event: {e}")))?;
            from_event(event)
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
            with_key(posted(&invoice)?, &key)
        }
        Some(other) => Err(Failure::Invalid(format!(
            "a Stripe `{other}` object is not an event or an invoice"
        ))),
        None => Err(Failure::Invalid(
            "not a Stripe object: no `object` field".into(),
        )),
    }
}

fn from_event(event: Event) -> Result<Vec<Message>, Failure> {
    if !EVENT_TYPES.contains(&event.kind.as_str()) {
        return Err(Failure::Invalid(format!(
            "unsupported Stripe event type `{}`; this source handles {}",
            event.kind,
            EVENT_TYPES.join(", ")
        )));
    }
    let invoice = parse_invoice(event.data.object)?;
    let message = match event.kind.as_str() {
        "invoice.finalized" => posted(&invoice)?,
        "invoice.paid" => {
            let on = invoice.status_transitions.paid_at.unwrap_or(event.created);
            payment(kinds::PAYMENT_RECEIVED, &invoice, invoice.amount_paid, on)?
        }
        _ => payment(
            kinds::PAYMENT_FAILED,
            &invoice,
            invoice.amount_due,
            event.created,
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

/// The UTC date of a Unix time.
fn date(secs: i64) -> Result<NaiveDate, Failure> {
    DateTime::from_timestamp(secs, 0)
        .map(|t| t.date_naive())
        .ok_or_else(|| Failure::Invalid(format!("{secs} is not a time")))
}

fn customer(invoice: &StripeInvoice) -> Result<Party, Failure> {
    let id = match &invoice.customer {
        Value::String(id) => id.clone(),
        Value::Object(c) => c
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    if id.is_empty() {
        return Err(Failure::Invalid(format!(
            "invoice {} has no customer",
            invoice.id
        )));
    }
    Ok(Party {
        id,
        name: invoice.customer_name.clone(),
        country: invoice
            .customer_address
            .as_ref()
            .and_then(|a| a.country.clone()),
        external_ids: Default::default(),
    })
}

/// The canonical invoice of a Stripe invoice.
fn invoice(stripe: &StripeInvoice) -> Result<Invoice, Failure> {
    if stripe.lines.has_more {
        return Err(Failure::Retryable(format!(
            "invoice {} has more lines than the webhook carries; fetch them and resend",
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
                .map(|p| -> Result<Period, Failure> {
                    // Stripe's end is exclusive (the next period's start).
                    let end = if p.end > p.start { p.end - 1 } else { p.start };
                    Ok(Period {
                        start: date(p.start)?,
                        end: date(end)?,
                    })
                })
                .transpose()?;
            Ok(InvoiceLine {
                id: line.id.clone(),
                description: line.description.clone().filter(|d| !d.is_empty()),
                quantity,
                amount: Money::from_minor_units(line.amount, currency.clone()),
                service_period,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
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
        )?),
        due: stripe.due_date.map(date).transpose()?,
        lines,
        total: Money::from_minor_units(stripe.total, currency),
    })
}

fn posted(stripe: &StripeInvoice) -> Result<Message, Failure> {
    let invoice = invoice(stripe)?;
    Message::encode(kinds::INVOICE_POSTED, &invoice.id, &invoice)
}

fn payment(kind: &str, stripe: &StripeInvoice, minor: i64, on: i64) -> Result<Message, Failure> {
    let payment = Payment {
        invoice_id: stripe.id.clone(),
        invoice_number: stripe.number.clone(),
        customer: customer(stripe)?,
        amount: Money::from_minor_units(minor, currency(&stripe.currency)?),
        on: Some(date(on)?),
        attempts: stripe.attempt_count,
    };
    Message::encode(kind, &stripe.id, &payment)
}
