//! Sink plugin: each `OrderAccepted` becomes a sales order in SAP S/4HANA, through the
//! OData service `API_SALES_ORDER_SRV`: one deep insert of `A_SalesOrder` with its
//! `to_Item` lines (and each line's price as a `to_PricingElement` condition).
//!
//! Config: `service_url` (the service root), the organisational data
//! (`sales_order_type`, `sales_organization`, `distribution_channel`,
//! `organization_division`), `quantity_unit`, `price_condition_type`, and `sold_to`,
//! a JSON object from CRM account id to SAP customer number, for customers whose
//! master record (from the validation gateway) carries no `external_ids.sap`. Secrets `sap_user` and
//! `sap_password` (basic authentication), when granted and provided.
//!
//! - The body follows SAP's published metadata (property names, `Edm` types,
//!   `MaxLength`, decimal precision and scale); what the order cannot fit is
//!   `rejected` with every reason, before anything is sent.
//! - SAP's CSRF protection: a `GET` of the service root with `x-csrf-token: Fetch`
//!   gives the token and the session cookies that the `POST` must carry; a `403` with
//!   `x-csrf-token: Required` (an expired token) fetches a new one and retries once.
//! - Exactly once: the order id is the `PurchaseOrderByCustomer`; a sales order with
//!   it is looked up first, so a redelivery finds the first one.
//! - SAP's OData error body is mapped: `400` and other `4xx` are `rejected` with every
//!   message SAP gave, `5xx`, `408` and `429` are `retryable`.

use sap_odata::client::Service;
use sap_odata::{decimal, fits};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use tenon_sdk::model::Order;
use tenon_sdk::{Failure, Message, Receipt, config};

/// How SAP's answers are classified, shared with the other SAP plugins.
pub use sap_odata::{failure, odata_messages};

#[cfg(test)]
mod tests;

/// Create the order as an SAP sales order, unless one already carries its id.
#[tenon_sdk::sink]
fn create_sales_order(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
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

/// The organisational data and mappings a body needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `SalesOrderType`, e.g. `OR`.
    pub sales_order_type: String,
    /// `SalesOrganization`, e.g. `1710`.
    pub sales_organization: String,
    /// `DistributionChannel`, e.g. `10`.
    pub distribution_channel: String,
    /// `OrganizationDivision`, e.g. `00`.
    pub organization_division: String,
    /// `RequestedQuantityUnit`, e.g. `PC`.
    pub quantity_unit: String,
    /// The price condition, e.g. `PR00`.
    pub price_condition_type: String,
    /// CRM account id -> SAP customer number.
    pub sold_to: BTreeMap<String, String>,
}

impl Settings {
    /// Read the settings from the plugin's config (`get` is `config::get`).
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Result<Settings, Failure> {
        let text = |key: &str, default: &str| get(key).unwrap_or_else(|| default.to_owned());
        let sold_to = match get("sold_to") {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                Failure::Invalid(format!(
                    "config `sold_to` is not a JSON object of customer numbers: {e}"
                ))
            })?,
            None => BTreeMap::new(),
        };
        Ok(Settings {
            sales_order_type: text("sales_order_type", "OR"),
            sales_organization: text("sales_organization", "1710"),
            distribution_channel: text("distribution_channel", "10"),
            organization_division: text("organization_division", "00"),
            quantity_unit: text("quantity_unit", "PC"),
            price_condition_type: text("price_condition_type", "PR00"),
            sold_to,
        })
    }
}

/// The `A_SalesOrder` deep-insert body of an order, or every reason it cannot be one.
pub fn sales_order_body(order: &Order, settings: &Settings) -> Result<Value, Vec<String>> {
    let mut reasons = Vec::new();
    let known = order
        .customer
        .external_ids
        .get("sap")
        .or_else(|| settings.sold_to.get(&order.customer.id));
    let sold_to = match known {
        Some(number) => number.clone(),
        None if order.customer.id.len() <= 10 => order.customer.id.to_uppercase(),
        None => {
            reasons.push(format!(
                "customer `{}` has no SAP customer number (customer master `external_ids.sap`, or config `sold_to`)",
                order.customer.id
            ));
            String::new()
        }
    };
    let lines_here: Vec<u32> = order.lines.iter().map(|l| l.line_number).collect();
    let mut items = Vec::new();
    for line in &order.lines {
        let at = format!("line {}", line.line_number);
        let mut item = Map::new();
        item.insert(
            "SalesOrderItem".into(),
            json!(fits(
                &format!("{at} number"),
                &line.line_number.to_string(),
                6,
                &mut reasons
            )),
        );
        if let Some(parent) = line.parent_line_number.filter(|p| lines_here.contains(p)) {
            item.insert("HigherLevelItem".into(), json!(parent.to_string()));
        }
        item.insert(
            "Material".into(),
            json!(fits(
                &format!("{at} material"),
                &line.product.code_or_id().to_uppercase(),
                40,
                &mut reasons
            )),
        );
        if let Some(name) = &line.product.name {
            // A description is informative: cut to SAP's 40 characters.
            item.insert(
                "SalesOrderItemText".into(),
                json!(name.chars().take(40).collect::<String>()),
            );
        }
        item.insert(
            "RequestedQuantity".into(),
            json!(decimal(
                &format!("{at} quantity"),
                line.quantity,
                15,
                3,
                &mut reasons
            )),
        );
        item.insert(
            "RequestedQuantityUnit".into(),
            json!(fits(
                "quantity unit",
                &settings.quantity_unit,
                3,
                &mut reasons
            )),
        );
        item.insert(
            "to_PricingElement".into(),
            json!({"results": [{
                "ConditionType": fits("condition type", &settings.price_condition_type, 4, &mut reasons),
                "ConditionRateValue": decimal(&format!("{at} price"), line.unit_price.amount, 24, 9, &mut reasons),
                "ConditionCurrency": line.unit_price.currency.code(),
            }]}),
        );
        items.push(Value::Object(item));
    }
    let body = json!({
        "SalesOrderType": fits("sales order type", &settings.sales_order_type, 4, &mut reasons),
        "SalesOrganization": fits("sales organization", &settings.sales_organization, 4, &mut reasons),
        "DistributionChannel": fits("distribution channel", &settings.distribution_channel, 2, &mut reasons),
        "OrganizationDivision": fits("division", &settings.organization_division, 2, &mut reasons),
        "SoldToParty": fits("sold-to party", &sold_to, 10, &mut reasons),
        "PurchaseOrderByCustomer": fits("order id", &order.id, 35, &mut reasons),
        "TransactionCurrency": order.currency.code(),
        "to_Item": {"results": items},
    });
    if reasons.is_empty() {
        Ok(body)
    } else {
        Err(reasons)
    }
}
