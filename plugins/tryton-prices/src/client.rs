//! The lookup over JSON-RPC (in the component only: it needs `wasi:http`).

use super::*;
use serde_json::Map;
use tenon_sdk::api::Response;
use tryton_rpc::Client;

#[tenon_sdk::api]
fn answer(request: Request) -> Result<Response, Failure> {
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
