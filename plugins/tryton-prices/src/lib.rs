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

use serde_json::{Value, json};
use tenon_sdk::Failure;
use tenon_sdk::api::Request;
use tryton_rpc::decimal_text;

#[cfg(target_arch = "wasm32")]
mod client;

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

#[cfg(test)]
mod tests {
    use super::*;
    use tryton_rpc::decimal;

    fn request(code: &str, query: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: format!("/products/{code}"),
            params: vec![("code".into(), code.into())],
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Request::default()
        }
    }

    fn invalid(result: Result<Query, Failure>) -> String {
        match result {
            Err(Failure::Invalid(why)) => why,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn queries_are_read_strictly() {
        assert_eq!(
            Query::from_request(&request(" P-100 ", &[])).unwrap(),
            Query {
                code: "P-100".into(),
                quantity: 1.0,
                customer: None
            }
        );
        let q = Query::from_request(&request("P", &[("quantity", "2.5"), ("customer", "C1")]));
        assert_eq!(q.unwrap().quantity, 2.5);
        for bad in [
            "0",
            "-1",
            "1e3",
            "abc",
            "",
            ".5",
            "5.",
            "1.2.3",
            "NaN",
            "inf",
            "+3",
            "1234567890123456",
        ] {
            let why = invalid(Query::from_request(&request("P", &[("quantity", bad)])));
            assert!(why.contains("`quantity`"), "{bad}: {why}");
        }
        assert_eq!(
            invalid(Query::from_request(&request("  ", &[]))),
            "`code` is empty"
        );
        assert_eq!(
            invalid(Query::from_request(&request("P", &[("qty", "3")]))),
            "unknown query parameter `qty`; use `code`, `quantity`, `customer`"
        );
        assert!(
            invalid(Query::from_request(&request(
                "P",
                &[("quantity", "1"), ("quantity", "2")]
            )))
            .contains("more than once")
        );
        assert_eq!(
            invalid(Query::from_request(&request("P", &[("customer", "")]))),
            "`customer` is empty"
        );
        let no_code = Request::default();
        assert_eq!(invalid(Query::from_request(&no_code)), "`code` is required");
    }

    fn product(salable: bool, price: Option<&str>) -> Value {
        json!({
            "id": 4, "code": "HW-LAP-14", "name": "Laptop 14", "salable": salable,
            "list_price_used": decimal("1299"),
            "sale_price_uom": price.map(decimal),
            "default_uom": 1, "default_uom.": {"id": 1, "symbol": "u"},
            "sale_uom": 1, "sale_uom.": {"id": 1, "symbol": "u"},
        })
    }

    #[test]
    fn answers_carry_exact_decimals() {
        let query = Query {
            code: "HW-LAP-14".into(),
            quantity: 3.0,
            customer: Some("C1".into()),
        };
        let list = PriceList::of(
            &json!({"sale_price_list": 2, "sale_price_list.": {"id": 2, "name": "Retail"}}),
            "sale_price_list",
        );
        assert_eq!(
            price_answer(&query, &product(true, Some("1234.0500")), "EUR", &list).unwrap(),
            json!({
                "code": "HW-LAP-14", "name": "Laptop 14", "currency": "EUR",
                "list_price": "1299", "list_price_unit": "u",
                "quantity": "3", "unit": "u", "unit_price": "1234.0500",
                "customer": "C1", "price_list": "Retail",
            })
        );
        assert_eq!(
            price_answer(&query, &product(false, Some("1")), "EUR", &list),
            Err(Failure::Rejected(vec![
                "product `HW-LAP-14` is not for sale".into()
            ]))
        );
        assert_eq!(
            price_answer(&query, &product(true, None), "EUR", &list),
            Err(Failure::Rejected(vec![
                "Tryton has no sale price for product `HW-LAP-14` for customer `C1` at quantity 3"
                    .into()
            ]))
        );
        let mut float = product(true, None);
        float["sale_price_uom"] = json!(12.5);
        assert!(matches!(
            price_answer(&query, &float, "EUR", &list),
            Err(Failure::Retryable(_))
        ));
    }
}
