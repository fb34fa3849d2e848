//! The delivery over JSON-RPC (in the component only: it needs `wasi:http`).

use super::*;
use tenon_sdk::{Failure, Message, Receipt, kv};
use tryton_rpc::{Client, Session};

#[tenon_sdk::sink]
fn deliver(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
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
