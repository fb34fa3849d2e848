//! Sink plugin: each `OrderBooked` (an order an ERP gave its number) is written back to
//! the Salesforce CPQ quote it came from, through Salesforce's REST API:
//! `PATCH {instance_url}/services/data/{api_version}/sobjects/SBQQ__Quote__c/{quote Id}`
//! with `{"<field>": "<number>"}`, the field chosen by the order's category
//! (`physical_field`, `subscription_field`: custom fields the org adds to the quote).
//!
//! Config: `instance_url` (required), `api_version` (`v60.0`), the two fields; secret
//! `salesforce_token`, an OAuth 2.0 access token sent as `Authorization: Bearer`.
//!
//! - A PATCH sets the same value again on a redelivery: writing back is idempotent.
//! - Salesforce answers `204 No Content`; its errors are a JSON list of
//!   `{"message", "errorCode", "fields"}`: `400` and `404` (a field or a quote it does not
//!   have) are `rejected` with each message and code, `401` (`INVALID_SESSION_ID`) is
//!   `invalid` (the token must be replaced), `5xx`, `408`, `429` are `retryable`.

use serde_json::{Value, json};
use tenon_sdk::model::{Booking, OrderCategory};
use tenon_sdk::{Failure, Message, Receipt, config, http, secrets};

/// Write the booking's number to its quote.
#[tenon_sdk::sink]
fn write_back(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    let booking: Booking = message.decode()?;
    let instance = config::get("instance_url").ok_or_else(|| {
        Failure::Invalid(
            "config `instance_url` is not set (e.g. https://acme.my.salesforce.com)".into(),
        )
    })?;
    let version = config::get("api_version").unwrap_or_else(|| "v60.0".into());
    let field = field_for(&booking, config::get)?;
    let token = secrets::get("salesforce_token")?;
    let url = quote_url(&instance, &version, &booking.quote_id)?;
    let body = json!({ field.as_str(): booking.reference }).to_string();
    let bearer = format!("Bearer {token}");
    let response = http::send(
        "PATCH",
        &url,
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        body.as_bytes(),
    )?;
    if response.is_success() {
        return Ok(Receipt {
            reference: format!("{}.{field}", booking.quote_id),
            detail: Some(format!(
                "quote {} ({}): {field} = {}",
                booking.quote_number, booking.quote_id, booking.reference
            )),
        });
    }
    Err(failure(response.status, &response.body))
}

/// The quote field that takes an order of this booking's category.
pub fn field_for(
    booking: &Booking,
    get: impl Fn(&str) -> Option<String>,
) -> Result<String, Failure> {
    let (key, default) = match booking.category {
        OrderCategory::Physical => ("physical_field", "ERP_Order_Number__c"),
        OrderCategory::Subscription => ("subscription_field", "ERP_Subscription_Order_Number__c"),
    };
    let field = get(key).unwrap_or_else(|| default.to_owned());
    // A Salesforce API name: letters, digits and underscores.
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Failure::Invalid(format!(
            "config `{key}` = `{field}` is not a Salesforce field API name"
        )));
    }
    Ok(field)
}

/// The quote record's REST URL; the Id must be a Salesforce Id (15 or 18 letters and
/// digits), so it cannot change the path.
pub fn quote_url(instance: &str, version: &str, quote_id: &str) -> Result<String, Failure> {
    let is_id =
        matches!(quote_id.len(), 15 | 18) && quote_id.chars().all(|c| c.is_ascii_alphanumeric());
    if !is_id {
        return Err(Failure::Rejected(vec![format!(
            "quote id `{quote_id}` is not a Salesforce record Id: nothing to write back to"
        )]));
    }
    if !version.starts_with('v') || !version[1..].chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(Failure::Invalid(format!(
            "config `api_version` = `{version}` is not a REST API version such as v60.0"
        )));
    }
    Ok(format!(
        "{}/services/data/{version}/sobjects/SBQQ__Quote__c/{quote_id}",
        instance.trim_end_matches('/')
    ))
}

/// Salesforce's answer as a failure: its errors (`[{"message", "errorCode"}]`) named.
pub fn failure(status: u16, body: &[u8]) -> Failure {
    let errors: Vec<String> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let message = e["message"].as_str()?;
            Some(match e["errorCode"].as_str() {
                Some(code) => format!("Salesforce: {message} ({code})"),
                None => format!("Salesforce: {message}"),
            })
        })
        .collect();
    let text = if errors.is_empty() {
        format!(
            "Salesforce HTTP {status}: {}",
            String::from_utf8_lossy(body).trim()
        )
    } else {
        errors.join("; ")
    };
    match status {
        401 => Failure::Invalid(format!("{text} (replace the `salesforce_token` secret)")),
        _ if Failure::is_transient_status(status) => Failure::Retryable(text),
        _ => Failure::Rejected(if errors.is_empty() {
            vec![text]
        } else {
            errors
        }),
    }
}

#[cfg(test)]
mod tests;
