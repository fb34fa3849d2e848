//! Sink plugin: each `OrderAccepted` becomes a draft sale in Tryton (`sale.sale` with
//! its `sale.line`s), over Tryton's JSON-RPC.
//!
//! Config: `url` (the server, e.g. `http://127.0.0.1:8000`), `database`, `user`
//! (default `admin`); secret `tryton_password`.
//!
//! - The customer is the party whose `code` is the order's customer id (the CRM
//!   account id), the products those whose `code` is the line's product code; every
//!   one that is missing is reported, as `rejected`.
//! - Exactly once: the sale's `reference` is the order id; a sale with that reference
//!   is looked up before one is created, so a redelivery finds the first one.
//! - The session is kept in key-value storage and reused; an expired one (HTTP 401 or
//!   403) is renewed once.
//! - Tryton's `UserError` / `ValidationError` (the data is refused) are `rejected`;
//!   network errors, 5xx and other server faults are `retryable`.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use tenon_sdk::Failure;
use tenon_sdk::model::{Order, OrderLine};

#[cfg(target_arch = "wasm32")]
mod client;

/// What a JSON-RPC call can come to.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcError {
    /// The session is not (or no longer) valid.
    Unauthorized,
    /// Tryton refused the data (`UserError`, `ValidationError`...): the message says why.
    Refused(String),
    /// Anything transient.
    Transient(String),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Failure {
        match e {
            RpcError::Unauthorized => {
                Failure::Retryable("Tryton refused the session twice; check the user".into())
            }
            RpcError::Refused(why) => Failure::Rejected(vec![format!("Tryton: {why}")]),
            RpcError::Transient(why) => Failure::Retryable(format!("Tryton: {why}")),
        }
    }
}

/// Read a JSON-RPC answer: its `result`, or its `error` classified.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Value, RpcError> {
    match status {
        401 | 403 => return Err(RpcError::Unauthorized),
        200..=299 => {}
        _ => {
            let text = format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim());
            return Err(if Failure::is_transient_status(status) {
                RpcError::Transient(text)
            } else {
                RpcError::Refused(text)
            });
        }
    }
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| RpcError::Transient(format!("the answer is not JSON: {e}")))?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        // `["UserError", ["message", "description"]]` or a plain string.
        let kind = error.get(0).and_then(Value::as_str).unwrap_or_default();
        let detail = match error.get(1) {
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            Some(other) => other.to_string(),
            None => error.to_string(),
        };
        return Err(match kind {
            "UserError"
            | "UserWarning"
            | "ValidationError"
            | "RequiredValidationError"
            | "DomainValidationError"
            | "SelectionValidationError"
            | "SizeValidationError"
            | "DigitsValidationError"
            | "ForbiddenCharValidationError" => RpcError::Refused(format!("{kind}: {detail}")),
            "AccessError" | "LoginException" | "RateLimitException" => RpcError::Unauthorized,
            _ => RpcError::Transient(format!("{kind}: {detail}")),
        });
    }
    Ok(answer.get("result").cloned().unwrap_or(Value::Null))
}

/// A Tryton `Decimal` as JSON-RPC carries it.
pub fn decimal(text: impl ToString) -> Value {
    json!({"__class__": "Decimal", "decimal": text.to_string()})
}

/// A product as the sale needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRef {
    /// `product.product` id.
    pub id: i64,
    /// Its sale unit (`product.uom` id).
    pub unit: i64,
}

/// The `sale.sale.create` values of an order, once its party, currency and products
/// are known. Every missing product is named.
pub fn sale_values(
    order: &Order,
    party: i64,
    currency: i64,
    products: &BTreeMap<String, ProductRef>,
) -> Result<Value, Vec<String>> {
    let missing: Vec<String> = order
        .lines
        .iter()
        .filter(|l| !products.contains_key(l.product.code_or_id()))
        .map(|l| {
            format!(
                "line {}: product `{}` is not a Tryton product",
                l.line_number,
                l.product.code_or_id()
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let lines: Vec<Value> = order
        .lines
        .iter()
        .filter_map(|l| Some(line_values(l, products.get(l.product.code_or_id())?)))
        .collect();
    Ok(json!({
        "party": party,
        "currency": currency,
        "reference": order.id,
        "description": format!("Quote {} ({:?})", order.quote_number, order.category),
        "lines": [["create", lines]],
    }))
}

fn line_values(line: &OrderLine, product: &ProductRef) -> Value {
    // Tryton's quantity is a float; the exact price is a Decimal.
    let quantity: f64 = line.quantity.to_string().parse().unwrap_or_default();
    let mut description = line
        .product
        .name
        .clone()
        .unwrap_or_else(|| line.product.code_or_id().to_owned());
    if let Some(parent) = line.parent_line_number {
        description = format!("{description} (in bundle line {parent})");
    }
    json!({
        "type": "line",
        "sequence": line.line_number,
        "product": product.id,
        "unit": product.unit,
        "quantity": quantity,
        "unit_price": decimal(line.unit_price.amount),
        "description": description,
    })
}
