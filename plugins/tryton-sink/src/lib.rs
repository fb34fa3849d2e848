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
use tenon_sdk::model::{Order, OrderLine};
/// Tryton's JSON-RPC (answers, decimals, the client), shared with the other Tryton
/// plugins.
pub use tryton_rpc::{RpcError, decimal, parse_answer};

#[cfg(target_arch = "wasm32")]
mod client;

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
