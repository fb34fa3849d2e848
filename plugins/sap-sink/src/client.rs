//! The OData client (in the component only: it needs `wasi:http`); the CSRF flow is
//! `sap_odata::client`, shared with the other SAP plugins.

use super::*;
use sap_odata::client::Service;
use tenon_sdk::{Message, Receipt, config};

#[tenon_sdk::sink]
fn deliver(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    let order: Order = message.decode()?;
    let settings = Settings::from_config(config::get)?;
    let body = sales_order_body(&order, &settings).map_err(Failure::Rejected)?;
    let service = Service::from_config("service_url")?;

    // Exactly once: a sales order carrying this order id already exists?
    let lookup = format!(
        "/A_SalesOrder?$filter=PurchaseOrderByCustomer%20eq%20%27{}%27&$select=SalesOrder&$format=json",
        tenon_sdk::url::escape(&order.id.replace('\'', "''"))
    );
    let found = service.get_json(&lookup)?;
    if !found.is_success() {
        return Err(failure(found.status, &found.body));
    }
    let found: Value = found.json()?;
    if let Some(number) = found["d"]["results"][0]["SalesOrder"].as_str() {
        return Ok(receipt(number, "already created"));
    }

    let response = service.post_json("A_SalesOrder", body.to_string().as_bytes())?;
    if !response.is_success() {
        return Err(failure(response.status, &response.body));
    }
    let created: Value = response.json()?;
    let number = created["d"]["SalesOrder"].as_str().ok_or_else(|| {
        Failure::Retryable(format!(
            "SAP answered {} without a SalesOrder",
            response.status
        ))
    })?;
    Ok(receipt(number, "created"))
}

fn receipt(number: &str, what: &str) -> Receipt {
    Receipt {
        reference: number.to_owned(),
        detail: Some(format!("SAP sales order {what}")),
    }
}
