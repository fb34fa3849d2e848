//! Sink plugin: each `OrderAccepted` becomes a sales order in SAP S/4HANA, through the
//! OData service `API_SALES_ORDER_SRV`: one deep insert of `A_SalesOrder` with its
//! `to_Item` lines (and each line's price as `to_PricingElement` conditions).
//!
//! Config: `service_url` (the service root), the organisational data
//! (`sales_order_type`, `sales_organization`, `distribution_channel`,
//! `organization_division`), `quantity_unit`, `price_condition_type` (the list price,
//! `PR00`), `discount_condition_type` (the discount per unit, `RB00`),
//! `sender_system` (`SenderBusinessSystemName`, `TENON`), `payment_terms` (a JSON
//! object from the quote's payment terms to SAP's keys, e.g. `{"Net30": "0001"}`), and
//! `sold_to`, a JSON object from CRM account id to SAP customer number, for customers
//! whose master record (from the validation gateway) carries no `external_ids.sap`.
//! Secrets `sap_user` and `sap_password` (basic authentication), when granted and
//! provided.
//!
//! What the order becomes:
//! - the customer's own PO number is `PurchaseOrderByCustomer` (SAP's "Customer
//!   Reference"), the quote's start date the `RequestedDeliveryDate` and
//!   `PricingDate` (OData `/Date(ms)/`), its payment terms `CustomerPaymentTerms`
//!   (mapped by config; terms of four characters or fewer pass as they are; others are
//!   left out, so SAP takes the customer master's, and a warning names the config);
//! - each line's list price is its `PR00` condition and the difference to its net
//!   price its discount condition (negative, per unit), so that SAP's net value is
//!   the quote's to the cent; a line without a list price is priced at its net price.
//! - The body follows SAP's published metadata (property names, `Edm` types,
//!   `MaxLength`, decimal precision and scale); what the order cannot fit is
//!   `rejected` with every reason, before anything is sent.
//! - SAP's CSRF protection: a `GET` of the service root with `x-csrf-token: Fetch`
//!   gives the token and the session cookies that the `POST` must carry; a `403` with
//!   `x-csrf-token: Required` (an expired token) fetches a new one and retries once.
//! - Revisions: an order made of a quote revision records it in a header text
//!   (`revision_text_id`, `0001`). Another revision of a quote already ordered changes
//!   the SAP order: items whose quantity alone changed are patched, items of another
//!   material or price replaced (SAP prices a new item itself), items no longer
//!   ordered deleted, new ones created, then the text updated; the same revision again
//!   is a redelivery.
//! - Exactly once: the order id is the `AccountingDocExternalReference` (SAP's
//!   "Reference", the document's number in another system, searchable; 16
//!   characters), and a sales order with it is looked up first, so a redelivery finds
//!   the first one. (`ExternalDocumentID`, made for this, is not creatable through this
//!   API: its metadata says `sap:creatable="false"`.)
//! - SAP's OData error body is mapped: `400` and other `4xx` are `rejected` with every
//!   message SAP gave, `5xx`, `408` and `429` are `retryable`.

use sap_odata::client::Service;
use sap_odata::{decimal, fits, odata_date};
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
    if let (Some(terms), None) = (&order.payment_terms, body.get("CustomerPaymentTerms")) {
        tenon_sdk::log::warn(&format!(
            "payment terms `{terms}` have no SAP key: SAP takes the customer master's (map them in config `payment_terms`, e.g. {{\"{terms}\": \"0001\"}})"
        ));
    }
    let service = Service::from_config("service_url")?;

    // Exactly once: a sales order carrying this order id already exists?
    let lookup = format!(
        "/A_SalesOrder?$filter=AccountingDocExternalReference%20eq%20%27{}%27&$select=SalesOrder&$format=json",
        tenon_sdk::url::escape(&order.id.replace('\'', "''"))
    );
    let found = service.get_json(&lookup)?;
    if !found.is_success() {
        return Err(failure(found.status, &found.body));
    }
    let found: Value = found.json()?;
    if let Some(number) = found["d"]["results"][0]["SalesOrder"].as_str() {
        // Another revision of the quote changes the order; the same one is a
        // redelivery.
        if let Some(revision) = &order.revision
            && recorded_revision(&service, number, &settings)? != Some(revision_text(revision))
        {
            change(&service, number, &body, revision, &settings)?;
            return Ok(receipt(number, "changed to the quote's revision"));
        }
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

/// The header text that records which quote revision an order is.
fn revision_text(revision: &str) -> String {
    format!("tenon revision {revision}")
}

fn ok_json(response: tenon_sdk::http::Response) -> Result<Value, Failure> {
    if !response.is_success() {
        return Err(failure(response.status, &response.body));
    }
    response.json()
}

/// The order's path in the service, its number quoted as OData wants.
fn key(number: &str) -> String {
    format!("SalesOrder='{}'", number.replace('\'', "''"))
}

/// The revision text sales order `number` carries, if any.
fn recorded_revision(
    service: &Service,
    number: &str,
    settings: &Settings,
) -> Result<Option<String>, Failure> {
    let texts = ok_json(service.get_json(&format!(
        "/A_SalesOrder('{}')/to_Text?$format=json",
        tenon_sdk::url::escape(number)
    ))?)?;
    Ok(texts["d"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["LongTextID"] == settings.revision_text_id.as_str())
        .and_then(|t| t["LongText"].as_str())
        .map(str::to_owned))
}

/// Change sales order `number` into `body` (the revised order's deep insert): items
/// whose quantity alone changed are patched; items of another material or price are
/// replaced (deleted, then created again with their conditions: SAP reprices a new
/// item, never a patched condition); items no longer ordered are deleted, new ones
/// created; then the revision text says which revision the order now is.
fn change(
    service: &Service,
    number: &str,
    body: &Value,
    revision: &str,
    settings: &Settings,
) -> Result<(), Failure> {
    let booked = ok_json(service.get_json(&format!(
        "/A_SalesOrder('{}')/to_Item?$expand=to_PricingElement&$format=json",
        tenon_sdk::url::escape(number)
    ))?)?;
    let booked: Vec<Value> = booked["d"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let wanted: Vec<Value> = body["to_Item"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let item_path = |item: &str| {
        format!(
            "A_SalesOrderItem({},SalesOrderItem='{}')",
            key(number),
            item.replace('\'', "''")
        )
    };
    let write = |method: &str, path: &str, body: &Value| -> Result<(), Failure> {
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let response = service.write(method, path, text.as_bytes())?;
        if response.is_success() {
            Ok(())
        } else {
            Err(failure(response.status, &response.body))
        }
    };
    // The conditions of an item, as (type, rate) pairs, to compare prices.
    let prices = |item: &Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = item["to_PricingElement"]["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let rate = c["ConditionRateValue"].as_str().unwrap_or_default();
                let rate = rate
                    .parse::<tenon_sdk::model::rust_decimal::Decimal>()
                    .map(|d| d.normalize().to_string())
                    .unwrap_or_else(|_| rate.to_owned());
                (
                    c["ConditionType"].as_str().unwrap_or_default().to_owned(),
                    rate,
                )
            })
            .collect();
        out.sort();
        out
    };
    let same_decimal = |a: &Value, b: &Value| {
        let parse = |v: &Value| {
            v.as_str()
                .and_then(|t| t.parse::<tenon_sdk::model::rust_decimal::Decimal>().ok())
        };
        parse(a).is_some() && parse(a) == parse(b)
    };
    for item in &wanted {
        let id = item["SalesOrderItem"].as_str().unwrap_or_default();
        match booked.iter().find(|b| b["SalesOrderItem"] == id) {
            Some(old) if old["Material"] == item["Material"] && prices(old) == prices(item) => {
                if !same_decimal(&old["RequestedQuantity"], &item["RequestedQuantity"]) {
                    write(
                        "PATCH",
                        &item_path(id),
                        &json!({"RequestedQuantity": item["RequestedQuantity"]}),
                    )?;
                }
            }
            Some(_) => {
                write("DELETE", &item_path(id), &Value::Null)?;
                write("POST", &format!("A_SalesOrder('{number}')/to_Item"), item)?;
            }
            None => write("POST", &format!("A_SalesOrder('{number}')/to_Item"), item)?,
        }
    }
    for old in &booked {
        let id = old["SalesOrderItem"].as_str().unwrap_or_default();
        if !wanted.iter().any(|w| w["SalesOrderItem"] == id) {
            write("DELETE", &item_path(id), &Value::Null)?;
        }
    }
    let text = json!({"LongText": revision_text(revision)});
    let path = format!(
        "A_SalesOrderText({},Language='EN',LongTextID='{}')",
        key(number),
        settings.revision_text_id
    );
    let response = service.write("PATCH", &path, text.to_string().as_bytes())?;
    if response.status == 404 {
        let mut created = text;
        created["Language"] = json!("EN");
        created["LongTextID"] = json!(settings.revision_text_id);
        write(
            "POST",
            &format!("A_SalesOrder('{number}')/to_Text"),
            &created,
        )?;
    } else if !response.is_success() {
        return Err(failure(response.status, &response.body));
    }
    Ok(())
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
    /// The discount condition (an amount per unit), e.g. `RB00`.
    pub discount_condition_type: String,
    /// The quote's payment terms -> SAP's payment terms key.
    pub payment_terms: BTreeMap<String, String>,
    /// The header text ID that records the quote revision an order is (`LongTextID`).
    pub revision_text_id: String,
    /// CRM account id -> SAP customer number.
    pub sold_to: BTreeMap<String, String>,
}

impl Settings {
    /// Read the settings from the plugin's config (`get` is `config::get`).
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Result<Settings, Failure> {
        let text = |key: &str, default: &str| get(key).unwrap_or_else(|| default.to_owned());
        let map = |key: &str, of: &str| -> Result<BTreeMap<String, String>, Failure> {
            match get(key) {
                Some(json) => serde_json::from_str(&json).map_err(|e| {
                    Failure::Invalid(format!("config `{key}` is not a JSON object of {of}: {e}"))
                }),
                None => Ok(BTreeMap::new()),
            }
        };
        let sold_to = map("sold_to", "customer numbers")?;
        let payment_terms = map("payment_terms", "payment terms keys")?;
        Ok(Settings {
            sales_order_type: text("sales_order_type", "OR"),
            sales_organization: text("sales_organization", "1710"),
            distribution_channel: text("distribution_channel", "10"),
            organization_division: text("organization_division", "00"),
            quantity_unit: text("quantity_unit", "PC"),
            price_condition_type: text("price_condition_type", "PR00"),
            discount_condition_type: text("discount_condition_type", "RB00"),
            revision_text_id: text("revision_text_id", "0001"),
            payment_terms,
            sold_to,
        })
    }
}

/// SAP's payment terms key for the quote's terms: mapped by config, or the terms
/// themselves when they can be a key (four characters at most). Others are left to SAP,
/// which then takes the customer master's terms (the sink logs it, naming the config).
fn payment_terms_key(terms: &str, settings: &Settings) -> Option<String> {
    match settings.payment_terms.get(terms) {
        Some(key) => Some(key.clone()),
        None if terms.len() <= 4 => Some(terms.to_owned()),
        None => None,
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
        if line.quantity.is_sign_negative() {
            reasons.push(format!(
                "{at}: quantity {}: a sales order takes no negative quantity (an amendment's reduction is a return: book it as a returns order)",
                line.quantity
            ));
        }
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
        // The list price, and what comes off it per unit to make the net price.
        let list = line
            .list_price
            .as_ref()
            .filter(|list| list.amount != line.unit_price.amount)
            .map(|list| list.amount);
        let mut conditions = vec![json!({
            "ConditionType": fits("condition type", &settings.price_condition_type, 4, &mut reasons),
            "ConditionRateValue": decimal(&format!("{at} price"), list.unwrap_or(line.unit_price.amount), 24, 9, &mut reasons),
            "ConditionCurrency": line.unit_price.currency.code(),
        })];
        if let Some(list) = list {
            let Some(off) = line.unit_price.amount.checked_sub(list) else {
                reasons.push(format!(
                    "{at}: its list and net prices are past what can be computed"
                ));
                continue;
            };
            conditions.push(json!({
                "ConditionType": fits("discount condition type", &settings.discount_condition_type, 4, &mut reasons),
                "ConditionRateValue": decimal(&format!("{at} discount"), off, 24, 9, &mut reasons),
                "ConditionCurrency": line.unit_price.currency.code(),
            }));
        }
        item.insert("to_PricingElement".into(), json!({ "results": conditions }));
        items.push(Value::Object(item));
    }
    let mut body = json!({
        "SalesOrderType": fits("sales order type", &settings.sales_order_type, 4, &mut reasons),
        "SalesOrganization": fits("sales organization", &settings.sales_organization, 4, &mut reasons),
        "DistributionChannel": fits("distribution channel", &settings.distribution_channel, 2, &mut reasons),
        "OrganizationDivision": fits("division", &settings.organization_division, 2, &mut reasons),
        "SoldToParty": fits("sold-to party", &sold_to, 10, &mut reasons),
        "AccountingDocExternalReference": fits("order id", &order.id, 16, &mut reasons),
        "TransactionCurrency": order.currency.code(),
        "to_Item": {"results": items},
    });
    if let Some(po) = &order.customer_po {
        body["PurchaseOrderByCustomer"] = json!(fits("customer PO number", po, 35, &mut reasons));
    }
    if let Some(revision) = &order.revision {
        body["to_Text"] = json!({"results": [{
            "Language": "EN",
            "LongTextID": fits("revision text ID", &settings.revision_text_id, 4, &mut reasons),
            "LongText": revision_text(revision),
        }]});
    }
    if let Some(start) = order.start_date {
        body["RequestedDeliveryDate"] = json!(odata_date(start));
        body["PricingDate"] = json!(odata_date(start));
    }
    if let Some(key) = order
        .payment_terms
        .as_ref()
        .and_then(|terms| payment_terms_key(terms, settings))
    {
        body["CustomerPaymentTerms"] = json!(fits("payment terms key", &key, 4, &mut reasons));
    }
    if reasons.is_empty() {
        Ok(body)
    } else {
        Err(reasons)
    }
}
