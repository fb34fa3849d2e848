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
use tenon_sdk::{Failure, Message, Receipt, kv};
use tryton_rpc::{Client, Session};
/// Tryton's JSON-RPC (answers, decimals, the client), shared with the other Tryton
/// plugins.
pub use tryton_rpc::{RpcError, decimal, parse_answer};

#[cfg(test)]
mod tests;

/// Create the order as a draft Tryton sale, unless one already carries its id.
#[tenon_sdk::sink]
fn create_sale(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    let order: Order = message.decode()?;
    let mut rpc = connect()?;
    deliver_order(&mut rpc, &order)
}

const SESSION_KEY: &str = "session";

/// The JSON-RPC client, with the session kept in kv between deliveries.
fn connect() -> Result<Client, Failure> {
    let session: Option<Session> =
        kv::get(SESSION_KEY)?.and_then(|v| serde_json::from_slice(&v).ok());
    Ok(Client::from_config()?
        .with_session(session)
        .on_login(|session| {
            let stored = serde_json::to_vec(session)
                .map_err(|e| Failure::Invalid(format!("cannot keep the session: {e}")))?;
            kv::set(SESSION_KEY, &stored)
        }))
}

fn deliver_order(rpc: &mut Client, order: &Order) -> Result<Receipt, Failure> {
    if let Some(id) = rpc.search_one("sale.sale", json!([["reference", "=", order.id]]))? {
        return Ok(receipt(id, "already created"));
    }
    let mut reasons = Vec::new();
    // The customer master's Tryton code, else the CRM id (the parties' code).
    let party_code = order
        .customer
        .external_ids
        .get("tryton")
        .unwrap_or(&order.customer.id);
    let party = rpc.search_one("party.party", json!([["code", "=", party_code]]))?;
    if party.is_none() {
        reasons.push(format!(
            "customer `{}` ({}) is not a Tryton party",
            order.customer.id,
            order.customer.name.as_deref().unwrap_or("no name")
        ));
    }
    let currency = rpc.search_one(
        "currency.currency",
        json!([["code", "=", order.currency.code()]]),
    )?;
    if currency.is_none() {
        reasons.push(format!("currency {} is not in Tryton", order.currency));
    }
    let codes: Vec<&str> = order.lines.iter().map(|l| l.product.code_or_id()).collect();
    let found = rpc.search_read(
        "product.product",
        json!([["code", "in", codes]]),
        None,
        &["code", "sale_uom", "default_uom"],
        &Default::default(),
    )?;
    let products: BTreeMap<String, ProductRef> = found
        .iter()
        .filter_map(|p| {
            let unit = p
                .get("sale_uom")
                .and_then(Value::as_i64)
                .or_else(|| p.get("default_uom").and_then(Value::as_i64))?;
            Some((
                p.get("code")?.as_str()?.to_owned(),
                ProductRef {
                    id: p.get("id")?.as_i64()?,
                    unit,
                },
            ))
        })
        .collect();
    let values = match (party, currency) {
        (Some(party), Some(currency)) => sale_values(order, party, currency, &products),
        _ => sale_values(order, 0, 0, &products).map(|_| Value::Null),
    };
    match values {
        Err(missing) => reasons.extend(missing),
        Ok(_) if !reasons.is_empty() => {}
        Ok(values) => {
            let ids = rpc.call("model.sale.sale.create", vec![json!([values])])?;
            let id = ids
                .get(0)
                .and_then(Value::as_i64)
                .ok_or_else(|| Failure::Retryable(format!("unexpected create answer: {ids}")))?;
            return Ok(receipt(id, "created"));
        }
    }
    Err(Failure::Rejected(reasons))
}

fn receipt(id: i64, what: &str) -> Receipt {
    Receipt {
        reference: format!("sale.sale/{id}"),
        detail: Some(format!("draft sale {what}")),
    }
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
