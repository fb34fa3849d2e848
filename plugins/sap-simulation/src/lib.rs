//! API plugin: what would SAP S/4HANA charge a customer for some items, and when could
//! it deliver them? One call of SAP's sales order simulation, "Sales Order - Simulate
//! (A2X)" (`API_SALES_ORDER_SIMULATION_SRV`): a deep insert of `A_SalesOrderSimulation`
//! with its `to_Item` lines, asking for the pricing (`to_Pricing`, each item's
//! `to_PricingElement`) and the availability check (each item's `to_ScheduleLine`).
//! SAP saves nothing.
//!
//! The shapes follow SAP's published definition of the service: the OpenAPI document
//! of the SAP Business Accelerator Hub (<https://api.sap.com/api/API_SALES_ORDER_SIMULATION_SRV>,
//! kept in `tests/fixtures/public/sap_API_SALES_ORDER_SIMULATION_SRV.json`) for
//! property names, `MaxLength`, decimal precision and scale, the `201` answer
//! `{"d": A_SalesOrderSimulation}` and the OData error body; and SAP's documentation
//! of the service (<https://help.sap.com/docs/SAP_S4HANA_CLOUD/03c04db2a7434731b7fe21dca77440da/b64937ce2692427594ee794ad033b8b3.html>)
//! for what the associations in the request ask for: `to_Pricing` for the price,
//! `to_ScheduleLine` for the availability check.
//!
//! ## The request: `POST /v1/apis/<route>`, `application/json`
//!
//! ```json
//! {
//!   "sold_to": "10100001",
//!   "currency": "EUR",
//!   "requested_date": "2026-12-01",
//!   "items": [
//!     {"material": "TG11", "quantity": "2", "unit": "PC", "plant": "1010"},
//!     {"material": "TG12", "quantity": "5"}
//!   ]
//! }
//! ```
//!
//! - `sold_to` (required): the SAP customer number, at most 10 characters.
//! - `currency`: the ISO 4217 document currency; SAP's default for the customer when
//!   absent.
//! - `requested_date`: the requested delivery date, `YYYY-MM-DD`; SAP's default when
//!   absent.
//! - `items` (1 to 250): `material` (at most 40 characters), `quantity` (a positive
//!   decimal with at most 3 decimals, as a string such as `"2.5"`, or a whole JSON
//!   number; never a JSON float), optional `unit` (at most 3) and `plant` (at most 4).
//!
//! Unknown fields, and anything SAP could not hold, are `invalid` (400), with every
//! reason; SAP is not called.
//!
//! ## The answer: 200
//!
//! ```json
//! {
//!   "sold_to": "10100001",
//!   "currency": "EUR",
//!   "net_amount": "64.95",
//!   "tax_amount": "12.34",
//!   "gross_amount": "77.29",
//!   "available_on": "2026-12-15",
//!   "items": [
//!     {
//!       "item": "10", "material": "TG11", "plant": "1010",
//!       "quantity": "2", "unit": "PC",
//!       "net_amount": "25.00", "tax_amount": "4.75",
//!       "price": {"condition_type": "PPR0", "amount": "12.50", "per": "1", "unit": "PC"},
//!       "confirmed_quantity": "2",
//!       "available_on": "2026-12-01",
//!       "schedule": [{"date": "2026-12-01", "quantity": "2"}]
//!     }
//!   ]
//! }
//! ```
//!
//! Amounts and quantities are exact decimal strings, amounts with at least the
//! currency's minor digits, never floats. Per item: SAP's net value and tax of the
//! line, the rate of the price condition (config `price_condition_type`) per its
//! pricing unit (`null` without one), the quantity SAP's availability check confirms
//! and on which dates (`schedule`), and `available_on`, the date by which the whole
//! quantity is confirmed (`null` when it is not). In all: SAP's total net value, the
//! items' tax, their sum, and `available_on` when every item is wholly confirmed.
//!
//! ## Failures
//!
//! SAP refusing the simulation (HTTP 400 and other 4xx with an OData error body: an
//! unknown material, a blocked customer) is `rejected` (422) with every message SAP
//! gave; SAP unavailable (5xx, 408, 429, no answer) is `retryable` (503), and so is
//! anything else on the server's side: SAP refusing Tenon's credentials (401, 403), a
//! token SAP would not hand out, the plugin's config: nothing the caller can change. SAP's
//! CSRF flow (a token fetched with the session cookies before the `POST`, fetched
//! again once when it has expired) is `sap_odata::client`, shared with `sap-sink`.
//!
//! Config: `service_url` (the service root), `sales_order_type`,
//! `sales_organization`, `distribution_channel`, `organization_division`,
//! `price_condition_type`. Secrets `sap_user` and `sap_password` (Basic
//! authentication), when granted and provided.

use sap_odata::client::Service;
use sap_odata::{decimal, fits, odata_date, parse_odata_date};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tenon_sdk::api::{Request, Response};
use tenon_sdk::model::chrono::NaiveDate;
use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{Currency, Money};
use tenon_sdk::{Failure, config, log};

#[cfg(test)]
mod tests;

/// Answer the price and availability SAP's simulation gives the requested items.
#[tenon_sdk::api]
fn simulate_sales_order(request: Request) -> Result<Response, Failure> {
    // The caller's part: a bad request is `invalid` (400) before anything else.
    let simulation = parse(&request.body)?;
    // The server's part: whatever fails from here on is not the caller's doing.
    let settings = Settings::from_config(config::get).map_err(exchange_failure)?;
    let body = simulation_body(&simulation, &settings).to_string();
    let service = Service::from_config("service_url").map_err(exchange_failure)?;
    let sap = service
        .post_json("A_SalesOrderSimulation", body.as_bytes())
        .map_err(exchange_failure)?;
    if !sap.is_success() {
        let failure = sap_failure(sap.status, &sap.body);
        log::warn(&format!(
            "SAP refused the simulation for {}: {failure}",
            simulation.sold_to
        ));
        return Err(failure);
    }
    let sap: Value = serde_json::from_slice(&sap.body)
        .map_err(|e| Failure::Retryable(format!("SAP's simulation answer is not JSON: {e}")))?;
    Response::json(200, &answer(&simulation, &settings, &sap)?)
}

/// Most items one simulation takes.
pub const MAX_ITEMS: usize = 250;

/// The organisational data of every simulation, from the config.
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
    /// The item condition answered as the price, e.g. `PPR0`.
    pub price_condition_type: String,
}

impl Settings {
    /// Read the settings from the plugin's config (`get` is `config::get`); a value
    /// longer than SAP holds is `invalid`, naming the key.
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Result<Settings, Failure> {
        let mut reasons = Vec::new();
        let mut text = |key: &str, default: &str, max: usize| {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            fits(&format!("config `{key}`"), value.trim(), max, &mut reasons)
        };
        let settings = Settings {
            sales_order_type: text("sales_order_type", "OR", 4),
            sales_organization: text("sales_organization", "1710", 4),
            distribution_channel: text("distribution_channel", "10", 2),
            organization_division: text("organization_division", "00", 2),
            price_condition_type: text("price_condition_type", "PPR0", 4),
        };
        match reasons.is_empty() {
            true => Ok(settings),
            false => Err(Failure::Invalid(reasons.join("; "))),
        }
    }
}

/// The request as it arrives (see the crate's documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    sold_to: String,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    requested_date: Option<String>,
    items: Vec<AskItem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AskItem {
    material: String,
    quantity: Value,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    plant: Option<String>,
}

/// A checked request: what SAP is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulation {
    /// The SAP customer number.
    pub sold_to: String,
    /// The document currency, when the caller chose one.
    pub currency: Option<Currency>,
    /// The requested delivery date, when the caller gave one.
    pub requested_date: Option<NaiveDate>,
    /// The items, numbered `10`, `20`, ... as SAP numbers sales order items.
    pub items: Vec<Item>,
}

/// One item of a [`Simulation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `SalesOrderItem`: `10`, `20`, ...
    pub number: String,
    /// The material number.
    pub material: String,
    /// The quantity, positive, at most 3 decimals.
    pub quantity: Decimal,
    /// The unit of the quantity, when given.
    pub unit: Option<String>,
    /// The plant, when given.
    pub plant: Option<String>,
}

/// The request body checked: a [`Simulation`], or `invalid` with every reason.
pub fn parse(body: &[u8]) -> Result<Simulation, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::Invalid(
            "POST a JSON body: {\"sold_to\": \"<customer>\", \"items\": [{\"material\": \"<material>\", \"quantity\": \"1\"}]}".into(),
        ));
    }
    let ask: Ask = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("the request body is not the expected JSON: {e}")))?;
    let mut reasons = Vec::new();
    let sold_to = ask.sold_to.trim().to_owned();
    if sold_to.is_empty() {
        reasons.push("`sold_to` is empty".to_owned());
    }
    fits("`sold_to`", &sold_to, 10, &mut reasons);
    let currency = match ask.currency.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(code) => Currency::new(code)
            .map_err(|e| reasons.push(format!("`currency`: {e}")))
            .ok(),
    };
    let requested_date = match ask.requested_date.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| {
                reasons.push(format!(
                    "`requested_date` `{text}` is not a date YYYY-MM-DD"
                ))
            })
            .ok(),
    };
    if ask.items.is_empty() {
        reasons.push("`items` is empty: ask for at least one item".to_owned());
    }
    if ask.items.len() > MAX_ITEMS {
        reasons.push(format!(
            "{} items: at most {MAX_ITEMS} in one simulation",
            ask.items.len()
        ));
    }
    let mut items = Vec::new();
    for (i, item) in ask.items.iter().enumerate() {
        let at = format!("item {}", i + 1);
        let material = item.material.trim().to_owned();
        if material.is_empty() {
            reasons.push(format!("{at}: `material` is empty"));
        }
        fits(&format!("{at}: material"), &material, 40, &mut reasons);
        let quantity = quantity(&at, &item.quantity, &mut reasons);
        let optional = |text: &Option<String>| {
            text.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        let unit = optional(&item.unit);
        if let Some(unit) = &unit {
            fits(&format!("{at}: unit"), unit, 3, &mut reasons);
        }
        let plant = optional(&item.plant);
        if let Some(plant) = &plant {
            fits(&format!("{at}: plant"), plant, 4, &mut reasons);
        }
        items.push(Item {
            number: ((i + 1) * 10).to_string(),
            material,
            quantity: quantity.unwrap_or_default(),
            unit,
            plant,
        });
    }
    match reasons.is_empty() {
        true => Ok(Simulation {
            sold_to,
            currency,
            requested_date,
            items,
        }),
        false => Err(Failure::Invalid(reasons.join("; "))),
    }
}

/// An item's quantity: a decimal string or a whole JSON number, positive, that fits
/// SAP's `RequestedQuantity` (`Edm.Decimal(15, 3)`).
fn quantity(at: &str, value: &Value, reasons: &mut Vec<String>) -> Option<Decimal> {
    let parsed = match value {
        Value::String(text) => text.trim().parse::<Decimal>().ok(),
        Value::Number(n) if n.is_u64() => n.as_u64().map(Decimal::from),
        _ => None,
    };
    let Some(quantity) = parsed else {
        reasons.push(format!(
            "{at}: quantity {value} is not a decimal: give it as a string such as \"2.5\""
        ));
        return None;
    };
    if quantity <= Decimal::ZERO {
        reasons.push(format!("{at}: quantity {quantity} is not positive"));
        return None;
    }
    let before = reasons.len();
    decimal(&format!("{at}: quantity"), quantity, 15, 3, reasons);
    (reasons.len() == before).then_some(quantity)
}

/// The `A_SalesOrderSimulation` deep-insert body of a simulation: the organisational
/// data and customer, each item with empty `to_PricingElement` and `to_ScheduleLine`
/// (SAP fills them in its answer), and an empty `to_Pricing` (the totals).
pub fn simulation_body(simulation: &Simulation, settings: &Settings) -> Value {
    let items: Vec<Value> = simulation
        .items
        .iter()
        .map(|item| {
            let mut fields = Map::new();
            fields.insert("SalesOrderItem".into(), json!(item.number));
            fields.insert("Material".into(), json!(item.material));
            fields.insert(
                "RequestedQuantity".into(),
                json!(item.quantity.normalize().to_string()),
            );
            if let Some(unit) = &item.unit {
                fields.insert("RequestedQuantityUnit".into(), json!(unit));
            }
            if let Some(plant) = &item.plant {
                fields.insert("Plant".into(), json!(plant));
            }
            fields.insert("to_PricingElement".into(), json!({"results": []}));
            fields.insert("to_ScheduleLine".into(), json!({"results": []}));
            Value::Object(fields)
        })
        .collect();
    let mut body = Map::new();
    for (name, value) in [
        ("SalesOrderType", &settings.sales_order_type),
        ("SalesOrganization", &settings.sales_organization),
        ("DistributionChannel", &settings.distribution_channel),
        ("OrganizationDivision", &settings.organization_division),
        ("SoldToParty", &simulation.sold_to),
    ] {
        body.insert(name.into(), json!(value));
    }
    if let Some(currency) = &simulation.currency {
        body.insert("TransactionCurrency".into(), json!(currency.code()));
    }
    if let Some(date) = simulation.requested_date {
        body.insert("RequestedDeliveryDate".into(), json!(odata_date(date)));
    }
    body.insert("to_Pricing".into(), json!({}));
    body.insert("to_Item".into(), json!({"results": items}));
    Value::Object(body)
}

/// The failure SAP's answer to the simulation stands for: as for every SAP plugin
/// (`sap_odata::failure`), except that SAP refusing Tenon's credentials is
/// `retryable`: the caller can do nothing about it.
pub fn sap_failure(status: u16, body: &[u8]) -> Failure {
    match (status, sap_odata::failure(status, body)) {
        (401 | 403, Failure::Invalid(text)) => Failure::Retryable(text),
        (401 | 403, Failure::Rejected(reasons)) => Failure::Retryable(format!(
            "SAP refused Tenon's credentials (check the sap_user and sap_password secrets): {}",
            reasons.join("; ")
        )),
        (_, failure) => failure,
    }
}

/// A failure on the way to SAP's answer (the configuration, the token fetch, the
/// network): never the caller's doing, so `retryable` whatever its class.
pub fn exchange_failure(failure: Failure) -> Failure {
    match failure {
        Failure::Retryable(text) | Failure::Invalid(text) => Failure::Retryable(text),
        Failure::Rejected(reasons) => Failure::Retryable(reasons.join("; ")),
    }
}

/// A malformed answer from SAP: the simulation cannot be read, so it is `retryable`.
fn malformed(what: impl std::fmt::Display) -> Failure {
    Failure::Retryable(format!("SAP's simulation answer {what}"))
}

/// An `Edm.Decimal` of SAP's answer (a string in OData V2 JSON); `None` when absent.
/// `a + b`, or SAP's answer refused as malformed when the sum is past a decimal.
fn sum(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, Failure> {
    a.checked_add(b)
        .ok_or_else(|| malformed(format!("has {what} that add up past what a decimal holds")))
}

fn sap_decimal(value: &Value, what: &str) -> Result<Option<Decimal>, Failure> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) => text
            .trim()
            .parse::<Decimal>()
            .map(Some)
            .map_err(|_| malformed(format!("has `{text}` as {what}, not a decimal"))),
        other => Err(malformed(format!("has {other} as {what}, not a decimal"))),
    }
}

/// A collection of OData V2 JSON (`{"results": [...]}`, or a bare array).
fn results(value: &Value) -> &[Value] {
    value["results"]
        .as_array()
        .or_else(|| value.as_array())
        .map_or(&[], Vec::as_slice)
}

/// SAP's item numbers are NUMC: `10` and `000010` are the same item.
fn same_item(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// An amount written with at least the currency's minor digits (never rounded).
fn amount(value: Decimal, currency: Option<&Currency>) -> String {
    match currency {
        Some(currency) => Money::new(value.normalize(), currency.clone())
            .with_currency_scale()
            .amount
            .to_string(),
        None => value.normalize().to_string(),
    }
}

fn text<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value[name]
        .as_str()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The answer to the caller (see the crate's documentation) from SAP's answer to the
/// simulation (`{"d": A_SalesOrderSimulation}`).
pub fn answer(simulation: &Simulation, settings: &Settings, sap: &Value) -> Result<Value, Failure> {
    let d = &sap["d"];
    if !d.is_object() {
        return Err(malformed("has no `d` object"));
    }
    let pricing = &d["to_Pricing"];
    let currency = [
        text(pricing, "TransactionCurrency"),
        text(d, "TransactionCurrency"),
    ]
    .into_iter()
    .flatten()
    .find_map(|code| Currency::new(code).ok())
    .or_else(|| simulation.currency.clone());
    let currency = currency.as_ref();
    let sap_items = results(&d["to_Item"]);

    let mut items = Vec::new();
    let mut all_confirmed_on = Some(NaiveDate::MIN);
    for asked in &simulation.items {
        let item = sap_items
            .iter()
            .find(|i| text(i, "SalesOrderItem").is_some_and(|n| same_item(n, &asked.number)))
            .ok_or_else(|| {
                Failure::Rejected(vec![format!(
                    "SAP's simulation has no item {} (material {})",
                    asked.number, asked.material
                )])
            })?;
        let at = |what: &str| format!("{what} of item {}", asked.number);
        let net = sap_decimal(&item["NetAmount"], &at("NetAmount"))?.unwrap_or_default();
        let tax = sap_decimal(&item["TaxAmount"], &at("TaxAmount"))?.unwrap_or_default();
        let price = match results(&item["to_PricingElement"])
            .iter()
            .find(|c| text(c, "ConditionType") == Some(settings.price_condition_type.as_str()))
        {
            None => Value::Null,
            Some(condition) => {
                let rate = sap_decimal(&condition["ConditionRateValue"], &at("the price"))?
                    .unwrap_or_default();
                let per = sap_decimal(&condition["ConditionQuantity"], &at("the pricing unit"))?
                    .filter(|p| !p.is_zero())
                    .unwrap_or(Decimal::ONE);
                json!({
                    "condition_type": settings.price_condition_type,
                    "amount": amount(rate, currency),
                    "per": per.normalize().to_string(),
                    "unit": text(condition, "ConditionQuantityUnit"),
                })
            }
        };

        // The confirmed schedule lines by date; the whole quantity is available on
        // the date the confirmed quantities add up to it.
        let mut schedule: Vec<(NaiveDate, Decimal)> = Vec::new();
        for line in results(&item["to_ScheduleLine"]) {
            let confirmed = sap_decimal(
                &line["ConfdOrderQtyByMatlAvailCheck"],
                &at("a confirmed quantity"),
            )?
            .unwrap_or_default();
            if confirmed <= Decimal::ZERO {
                continue;
            }
            let date = text(line, "ConfirmedDeliveryDate")
                .and_then(parse_odata_date)
                .ok_or_else(|| {
                    malformed(format!(
                        "confirms {confirmed} of item {} without a ConfirmedDeliveryDate",
                        asked.number
                    ))
                })?;
            schedule.push((date, confirmed));
        }
        schedule.sort_by_key(|(date, _)| *date);
        let mut confirmed = Decimal::ZERO;
        let mut available_on = None;
        for (date, quantity) in &schedule {
            confirmed = sum(confirmed, *quantity, "confirmed quantities")?;
            if available_on.is_none() && confirmed >= asked.quantity {
                available_on = Some(*date);
            }
        }
        all_confirmed_on = match (all_confirmed_on, available_on) {
            (Some(all), Some(this)) => Some(all.max(this)),
            _ => None,
        };
        items.push(json!({
            "item": asked.number,
            "material": text(item, "Material").unwrap_or(&asked.material),
            "plant": text(item, "Plant").or(asked.plant.as_deref()),
            "quantity": asked.quantity.normalize().to_string(),
            "unit": text(item, "RequestedQuantityUnit").or(asked.unit.as_deref()),
            "net_amount": amount(net, currency),
            "tax_amount": amount(tax, currency),
            "price": price,
            "confirmed_quantity": confirmed.normalize().to_string(),
            "available_on": available_on.map(|d| d.to_string()),
            "schedule": schedule
                .iter()
                .map(|(date, quantity)| json!({
                    "date": date.to_string(),
                    "quantity": quantity.normalize().to_string(),
                }))
                .collect::<Vec<_>>(),
        }));
    }

    // Totals over every item of SAP's answer (it may add some, e.g. free goods).
    let mut net_sum = Decimal::ZERO;
    let mut tax_sum = Decimal::ZERO;
    for item in sap_items {
        let net = sap_decimal(&item["NetAmount"], "an item's NetAmount")?;
        net_sum = sum(net_sum, net.unwrap_or_default(), "NetAmounts")?;
        let tax = sap_decimal(&item["TaxAmount"], "an item's TaxAmount")?;
        tax_sum = sum(tax_sum, tax.unwrap_or_default(), "TaxAmounts")?;
    }
    let net = sap_decimal(&pricing["TotalNetAmount"], "TotalNetAmount")?.unwrap_or(net_sum);
    Ok(json!({
        "sold_to": text(d, "SoldToParty").unwrap_or(&simulation.sold_to),
        "currency": currency.map(Currency::code),
        "net_amount": amount(net, currency),
        "tax_amount": amount(tax_sum, currency),
        "gross_amount": amount(sum(net, tax_sum, "net and tax amounts")?, currency),
        "available_on": all_confirmed_on.map(|d| d.to_string()),
        "items": items,
    }))
}
