//! The OData client (in the component only: it needs `wasi:http`).

use super::*;
use base64::Engine as _;
use tenon_sdk::{Message, Receipt, config, http, secrets};

#[tenon_sdk::sink]
fn deliver(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    let order: Order = message.decode()?;
    let settings = Settings::from_config(config::get)?;
    let body = sales_order_body(&order, &settings).map_err(Failure::Rejected)?;
    let service = config::require("service_url")?;
    let service = service.trim_end_matches('/');
    let auth = basic_auth();
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }

    // Exactly once: a sales order carrying this order id already exists?
    let lookup = format!(
        "{service}/A_SalesOrder?$filter=PurchaseOrderByCustomer%20eq%20%27{}%27&$select=SalesOrder&$format=json",
        tenon_sdk::url::escape(&order.id.replace('\'', "''"))
    );
    let found = http::get_json(&lookup, &headers)?;
    if !found.is_success() {
        return Err(failure(found.status, &found.body));
    }
    let found: Value = found.json()?;
    if let Some(number) = found["d"]["results"][0]["SalesOrder"].as_str() {
        return Ok(receipt(number, "already created"));
    }

    let body = body.to_string();
    for attempt in 0..2 {
        let (token, cookie) = fetch_token(service, &headers)?;
        let mut post_headers = headers.clone();
        post_headers.push(("x-csrf-token", &token));
        if !cookie.is_empty() {
            post_headers.push(("cookie", &cookie));
        }
        let response = http::post_json(
            &format!("{service}/A_SalesOrder"),
            &post_headers,
            body.as_bytes(),
        )?;
        let token_expired = response.status == 403
            && response
                .header("x-csrf-token")
                .is_some_and(|v| v.eq_ignore_ascii_case("required"));
        if token_expired && attempt == 0 {
            continue;
        }
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
        return Ok(receipt(number, "created"));
    }
    Err(Failure::Retryable(
        "SAP refused a fresh CSRF token twice".into(),
    ))
}

fn receipt(number: &str, what: &str) -> Receipt {
    Receipt {
        reference: number.to_owned(),
        detail: Some(format!("SAP sales order {what}")),
    }
}

/// `Basic` authentication from the secrets, when both are provided.
fn basic_auth() -> Option<String> {
    let user = secrets::get("sap_user").ok()?;
    let password = secrets::get("sap_password").ok()?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Some(format!("Basic {token}"))
}

/// Fetch a CSRF token and the session cookies it belongs to.
fn fetch_token(service: &str, headers: &[(&str, &str)]) -> Result<(String, String), Failure> {
    let mut fetch = headers.to_vec();
    fetch.push(("x-csrf-token", "Fetch"));
    let response = http::get_json(&format!("{service}/"), &fetch)?;
    if !response.is_success() {
        return Err(failure(response.status, &response.body));
    }
    let token = response
        .header("x-csrf-token")
        .ok_or_else(|| Failure::Retryable("SAP gave no x-csrf-token on fetch".into()))?;
    let cookies: Vec<String> = response
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| {
            let v = String::from_utf8_lossy(v);
            v.split(';').next().map(|pair| pair.trim().to_owned())
        })
        .collect();
    Ok((token, cookies.join("; ")))
}
