//! Sink plugin: send each message's body as JSON to an HTTP endpoint.
//!
//! Config:
//! - `url` (required): where to send, a template: `{key}`, `{kind}` and `{id}` are
//!   replaced by the message's (percent-encoded), e.g.
//!   `https://erp.example.com/orders/{key}`;
//! - `method` (default `POST`): `POST`, `PUT` or `PATCH`;
//! - `headers`: extra headers, a JSON object, e.g. `{"x-tenant": "acme"}`;
//! - `secret_headers`: headers whose value comes from a secret, a JSON object from
//!   header to secret name or to a template naming it in braces, e.g.
//!   `{"authorization": "Bearer {authorization}"}` (the secrets this plugin may ask
//!   for are `authorization` and `api_key`; map them to the operator's with
//!   `secrets = { authorization = "erp_token" }`);
//! - `reference_field` (default `id`): the field of the JSON response that holds the
//!   target system's reference (e.g. the ERP order number), recorded as the receipt;
//!   without it the idempotency key stands as the reference.
//!
//! Every request carries `Idempotency-Key` (stable across redeliveries), `Tenon-Kind`
//! and `Tenon-Key`. MessagePack bodies are transcoded to JSON. Status 408, 429 and 5xx
//! are `retryable`; any other non-2xx is `rejected` with the response body as reason.

use std::collections::BTreeMap;
use tenon_sdk::{Failure, Message};

/// The URL of a message: the template with its placeholders filled in.
pub fn url_for(template: &str, message: &Message) -> String {
    template
        .replace("{key}", &tenon_sdk::url::escape(&message.key))
        .replace("{kind}", &tenon_sdk::url::escape(&message.kind))
        .replace("{id}", &tenon_sdk::url::escape(&message.id))
}

/// The value of a secret header: `template` is a secret name, or text with the name
/// in braces; `secret` reads a secret by name.
pub fn secret_header(
    template: &str,
    secret: impl Fn(&str) -> Result<String, Failure>,
) -> Result<String, Failure> {
    match (template.find('{'), template.find('}')) {
        (Some(open), Some(close)) if open < close => {
            let name = &template[open + 1..close];
            Ok(format!(
                "{}{}{}",
                &template[..open],
                secret(name)?,
                &template[close + 1..]
            ))
        }
        _ => secret(template),
    }
}

/// A JSON object of strings from config.
pub fn json_map(key: &str, text: Option<String>) -> Result<BTreeMap<String, String>, Failure> {
    match text {
        None => Ok(BTreeMap::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            Failure::Invalid(format!(
                "config `{key}` is not a JSON object of strings: {e}"
            ))
        }),
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::*;
    use tenon_sdk::model::IDEMPOTENCY_HEADER;
    use tenon_sdk::{Receipt, config, http, secrets};

    #[tenon_sdk::sink]
    fn deliver(message: Message, idempotency_key: &str) -> Result<Receipt, Failure> {
        let url = url_for(&config::require("url")?, &message);
        let method = config::get("method").unwrap_or_else(|| "POST".into());
        if !["POST", "PUT", "PATCH"].contains(&method.to_ascii_uppercase().as_str()) {
            return Err(Failure::Invalid(format!(
                "config `method` is `{method}`; a sink sends with POST, PUT or PATCH"
            )));
        }
        let body = match message.content_type.split(';').next().map(str::trim) {
            Some("application/json") => message.body.clone(),
            _ => {
                let value: serde_json::Value = message.decode()?;
                serde_json::to_vec(&value)
                    .map_err(|e| Failure::Invalid(format!("cannot write JSON: {e}")))?
            }
        };
        let extra = json_map("headers", config::get("headers"))?;
        let mut from_secrets = Vec::new();
        for (name, template) in json_map("secret_headers", config::get("secret_headers"))? {
            from_secrets.push((name, secret_header(&template, secrets::get)?));
        }
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("accept", "application/json"),
            (IDEMPOTENCY_HEADER, idempotency_key),
            ("tenon-kind", message.kind.as_str()),
            ("tenon-key", message.key.as_str()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        headers.extend(from_secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let response = http::send(&method, &url, &headers, &body)?;
        if !response.is_success() {
            return Err(response.failure());
        }
        let field = config::get("reference_field").unwrap_or_else(|| "id".into());
        // A 2xx without the reference still created the record: keep the idempotency
        // key as the reference rather than retry a delivery that succeeded.
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
}
