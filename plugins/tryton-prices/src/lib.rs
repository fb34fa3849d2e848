//! API plugin: a product's price from Tryton, over its JSON-RPC.
//!
//! `GET .../products/{code}?quantity=3&customer=<party code>` answers
//!
//! ```json
//! {"code": "HW-LAP-14", "name": "Laptop 14", "currency": "EUR",
//!  "list_price": "1299", "list_price_unit": "u",
//!  "quantity": "3", "unit": "u", "unit_price": "1234.0500",
//!  "customer": "0015g00000XyZ34AAB", "price_list": "Contoso Retail"}
//! ```
//!
//! - The product is the `product.product` whose `code` is `{code}` (a route parameter,
//!   or else the `code` query parameter).
//! - `unit_price` is Tryton's own sale price (`product.product`'s `sale_price_uom`,
//!   what its `sale` module computes with `get_sale_price`) for `quantity` (default 1)
//!   in the sale unit `unit`, with the price list a sale for `customer` (a party code)
//!   would get: the party's `sale_price_list`, else the sale configuration's default
//!   (when the `sale_price_list` module is activated), else the list price.
//!   `list_price` is the product's list price, per `list_price_unit`. Amounts are
//!   Tryton's exact decimals, as text; the currency is the company's.
//! - An unknown product or customer is `rejected` (422) naming each, as is a product
//!   that is not for sale or that Tryton has no price for; a missing code, a bad
//!   quantity or an unknown query parameter is `invalid` (400); Tryton unreachable or
//!   failing, `retryable` (503), and so is a connection that is misconfigured (a
//!   refused login, a host not granted): the caller cannot fix those.
//!
//! Config: `url`, `database`, `user` (default `admin`); secret `tryton_password`.
//! An API plugin keeps no session: each request logs in.

use serde_json::{Map, Value, json};
use tenon_sdk::Failure;
use tenon_sdk::api::{Request, Response};
use tryton_rpc::{Client, decimal_text};

#[cfg(test)]
mod tests;

/// Answer a product's price (for a quantity, for a customer) from Tryton.
#[tenon_sdk::api]
fn product_price(request: Request) -> Result<Response, Failure> {
    let query = Query::from_request(&request)?;
    let body = Client::from_config()
        .and_then(|mut rpc| lookup(&mut rpc, &query))
        .map_err(misconfigured)?;
    Response::json(200, &body)
}

/// Past the caller's input, an `invalid` is the connection's (a refused login, a host
/// not granted, a missing config key): the caller can do nothing about it, so it is
/// answered as Tryton being unavailable, and logged for the operator.
fn misconfigured(failure: Failure) -> Failure {
    match failure {
        Failure::Invalid(why) => {
            tenon_sdk::log::error(&format!("Tryton is not usable as configured: {why}"));
            Failure::Retryable(format!("Tryton is not usable as configured: {why}"))
        }
        other => other,
    }
}

fn lookup(rpc: &mut Client, query: &Query) -> Result<Value, Failure> {
    let session = rpc.session()?;
    let company = session
        .context
        .get("company")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            Failure::Invalid("the Tryton user has no company in its preferences".into())
        })?;
    let currency = company_currency(rpc, company)?;
    let price_lists = has_price_lists(rpc)?;

    let mut reasons = Vec::new();
    let mut context = Map::new();
    context.insert("quantity".into(), json!(query.quantity));
    let mut price_list = PriceList::default();
    if let Some(customer) = &query.customer {
        let mut fields = vec!["code", "name"];
        if price_lists {
            fields.extend(["sale_price_list", "sale_price_list.name"]);
        }
        let parties = rpc.search_read(
            "party.party",
            json!([["code", "=", customer]]),
            Some(1),
            &fields,
            &Map::new(),
        )?;
        match parties.first() {
            None => reasons.push(format!("customer `{customer}` is not a Tryton party")),
            Some(party) => {
                context.insert(
                    "customer".into(),
                    party.get("id").cloned().unwrap_or_default(),
                );
                price_list = PriceList::of(party, "sale_price_list");
            }
        }
    }
    if price_lists && price_list.id.is_none() && reasons.is_empty() {
        // No price list of the customer's: the sale configuration's default, as a
        // new sale would get.
        let config = rpc.call(
            "model.sale.configuration.read",
            vec![
                json!([1]),
                json!(["sale_price_list", "sale_price_list.name"]),
            ],
        )?;
        if let Some(config) = config.get(0) {
            price_list = PriceList::of(config, "sale_price_list");
        }
    }
    if let Some(id) = price_list.id {
        context.insert("price_list".into(), json!(id));
    }
    let products = rpc.search_read(
        "product.product",
        json!([["code", "=", query.code]]),
        Some(1),
        &PRODUCT_FIELDS,
        &context,
    )?;
    match products.first() {
        None => reasons.insert(
            0,
            format!("product `{}` is not a Tryton product", query.code),
        ),
        Some(product) if reasons.is_empty() => {
            return price_answer(query, product, &currency, &price_list);
        }
        Some(_) => {}
    }
    Err(Failure::Rejected(reasons))
}

/// The code of the company's currency: prices are in it.
fn company_currency(rpc: &mut Client, company: i64) -> Result<String, Failure> {
    let companies = rpc.call(
        "model.company.company.read",
        vec![json!([company]), json!(["currency.code"])],
    )?;
    companies
        .get(0)
        .and_then(|c| c.get("currency."))
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            Failure::Retryable(format!(
                "unexpected answer for the company's currency: {companies}"
            ))
        })
}

/// Whether Tryton's `sale_price_list` module is activated: then parties and the sale
/// configuration name a price list.
fn has_price_lists(rpc: &mut Client) -> Result<bool, Failure> {
    let fields = rpc.call(
        "model.party.party.fields_get",
        vec![json!(["sale_price_list"])],
    )?;
    Ok(fields.get("sale_price_list").is_some())
}

/// The query parameters understood.
pub const PARAMETERS: [&str; 3] = ["code", "quantity", "customer"];

/// Longest product or customer code taken.
const MAX_CODE: usize = 200;

/// What the caller asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The product's code.
    pub code: String,
    /// How many, in the product's sale unit (Tryton's quantities are floats).
    pub quantity: f64,
    /// The customer's party code, if the price is for one.
    pub customer: Option<String>,
}

impl Query {
    /// The query of a request; `invalid` naming what is wrong.
    pub fn from_request(request: &Request) -> Result<Query, Failure> {
        for (name, _) in &request.query {
            if !PARAMETERS.contains(&name.as_str()) {
                return Err(Failure::Invalid(format!(
                    "unknown query parameter `{name}`; use {}",
                    PARAMETERS.map(|p| format!("`{p}`")).join(", ")
                )));
            }
            if request.query.iter().filter(|(n, _)| n == name).count() > 1 {
                return Err(Failure::Invalid(format!(
                    "query parameter `{name}` is given more than once"
                )));
            }
        }
        let code = code_of("code", request.required("code")?)?;
        let quantity = match request.query("quantity") {
            None => 1.0,
            Some(text) => parse_quantity(text)?,
        };
        let customer = request
            .query("customer")
            .map(|c| code_of("customer", c))
            .transpose()?;
        Ok(Query {
            code,
            quantity,
            customer,
        })
    }
}

fn code_of(name: &str, text: &str) -> Result<String, Failure> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Failure::Invalid(format!("`{name}` is empty")));
    }
    if text.chars().count() > MAX_CODE || text.chars().any(char::is_control) {
        return Err(Failure::Invalid(format!(
            "`{name}` is not a code: at most {MAX_CODE} characters, none of them control characters"
        )));
    }
    Ok(text.to_owned())
}

/// A quantity: a positive decimal number (`3`, `2.5`), at most 15 digits.
pub fn parse_quantity(text: &str) -> Result<f64, Failure> {
    let bad = || {
        Failure::Invalid(format!(
            "`quantity` must be a positive decimal number such as 3 or 2.5, not `{text}`"
        ))
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = || whole.bytes().chain(fraction.bytes());
    if whole.is_empty() || !digits().all(|b| b.is_ascii_digit()) || digits().count() > 15 {
        return Err(bad());
    }
    if text.ends_with('.') {
        return Err(bad());
    }
    let quantity: f64 = text.parse().map_err(|_| bad())?;
    if !(quantity > 0.0 && quantity.is_finite()) {
        return Err(bad());
    }
    Ok(quantity)
}

/// The fields of `product.product` the answer is made of (`sale_price_uom` is
/// computed for the context's `quantity` and `price_list`).
pub const PRODUCT_FIELDS: [&str; 7] = [
    "code",
    "name",
    "salable",
    "list_price_used",
    "sale_price_uom",
    "default_uom.symbol",
    "sale_uom.symbol",
];

/// The price list a sale gets (its name), if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriceList {
    /// `product.price_list` id.
    pub id: Option<i64>,
    /// Its name.
    pub name: Option<String>,
}

impl PriceList {
    /// The price list a `Many2One` read with its `.name` names (`sale_price_list`
    /// and `sale_price_list.` of a record).
    pub fn of(record: &Value, field: &str) -> PriceList {
        PriceList {
            id: record.get(field).and_then(Value::as_i64),
            name: record
                .get(format!("{field}."))
                .and_then(|l| l.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// The answer for `query` from the product Tryton found (read with
/// [`PRODUCT_FIELDS`]), the company's currency code and the price list used.
pub fn price_answer(
    query: &Query,
    product: &Value,
    currency: &str,
    price_list: &PriceList,
) -> Result<Value, Failure> {
    let code = &query.code;
    if product.get("salable").and_then(Value::as_bool) != Some(true) {
        return Err(Failure::Rejected(vec![format!(
            "product `{code}` is not for sale"
        )]));
    }
    let amount = |field: &str| -> Result<Option<String>, Failure> {
        match product.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => decimal_text(value).map(Some).ok_or_else(|| {
                Failure::Retryable(format!(
                    "Tryton answered `{field}` of `{code}` as {value}, not a Decimal"
                ))
            }),
        }
    };
    let unit_price = amount("sale_price_uom")?.ok_or_else(|| {
        let whom = match &query.customer {
            Some(customer) => format!(" for customer `{customer}`"),
            None => String::new(),
        };
        Failure::Rejected(vec![format!(
            "Tryton has no sale price for product `{code}`{whom} at quantity {}",
            query.quantity
        )])
    })?;
    let symbol = |field: &str| {
        product
            .get(format!("{field}."))
            .and_then(|u| u.get("symbol"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    Ok(json!({
        "code": product.get("code").and_then(Value::as_str).unwrap_or(code),
        "name": product.get("name").cloned().unwrap_or(Value::Null),
        "currency": currency,
        "list_price": amount("list_price_used")?,
        "list_price_unit": symbol("default_uom"),
        "quantity": query.quantity.to_string(),
        "unit": symbol("sale_uom"),
        "unit_price": unit_price,
        "customer": query.customer,
        "price_list": price_list.name,
    }))
}
