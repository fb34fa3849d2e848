//! Sink plugin: POST each message's body as JSON to an HTTP endpoint.
//!
//! Config:
//! - `url` (required): where to POST, e.g. `http://127.0.0.1:8080/orders`;
//! - `reference_field` (default `id`): the field of the JSON response that holds the
//!   target system's reference (e.g. the ERP order number), recorded as the receipt;
//!   without it the idempotency key stands as the reference.
//!
//! Every request carries `Idempotency-Key` (stable across redeliveries), `Tenon-Kind`
//! and `Tenon-Key`. MessagePack bodies are transcoded to JSON. Status 408, 429 and 5xx
//! are `retryable`; any other non-2xx is `rejected` with the response body as reason.

use tenon_sdk::{Failure, Message, Receipt, config, http};

#[tenon_sdk::sink]
fn deliver(message: Message, idempotency_key: &str) -> Result<Receipt, Failure> {
    let url = config::require("url")?;
    let body = match message.content_type.split(';').next().map(str::trim) {
        Some("application/json") => message.body.clone(),
        _ => {
            let value: serde_json::Value = message.decode()?;
            serde_json::to_vec(&value)
                .map_err(|e| Failure::Invalid(format!("cannot write JSON: {e}")))?
        }
    };
    let headers = [
        ("idempotency-key", idempotency_key),
        ("tenon-kind", message.kind.as_str()),
        ("tenon-key", message.key.as_str()),
    ];
    let response = http::post_json(&url, &headers, &body)?;
    if !response.is_success() {
        return Err(response.failure());
    }
    let field = config::get("reference_field").unwrap_or_else(|| "id".into());
    // A 2xx without the reference still created the record: keep the idempotency key
    // as the reference rather than retry a delivery that succeeded.
    let reference = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| match v.get(&field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
        .unwrap_or_else(|| idempotency_key.to_owned());
    Ok(Receipt {
        reference,
        detail: Some(format!("HTTP {}", response.status)),
    })
}
