//! Source plugin: canonical messages posted as JSON, one (`{"kind": "CustomerUpserted",
//! "key": "0015...", "body": {...}}`) or a list of them. For master data (customers
//! from the CRM) and events other systems already emit in Tenon's models. The kind
//! must be a PascalCase event name; the body is carried as JSON.

use serde::Deserialize;
use serde_json::Value;
use tenon_sdk::{Failure, Message, RawRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    kind: String,
    key: String,
    body: Value,
}

#[cfg(test)]
mod tests;

/// The canonical messages posted.
#[tenon_sdk::source]
fn ingest_canonical(request: RawRequest) -> Result<Vec<Message>, Failure> {
    to_messages(&request.body)
}

/// The messages of a posted body.
pub fn to_messages(body: &[u8]) -> Result<Vec<Message>, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("the body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let posted: Posted = serde_json::from_value(item)
                .map_err(|e| Failure::Invalid(format!("message {}: {e}", i + 1)))?;
            let pascal = posted
                .kind
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
                && posted.kind.chars().all(|c| c.is_ascii_alphanumeric());
            if !pascal {
                return Err(Failure::Invalid(format!(
                    "message {}: kind `{}` is not an event name like CustomerUpserted",
                    i + 1,
                    posted.kind
                )));
            }
            if posted.key.is_empty() {
                return Err(Failure::Invalid(format!("message {}: an empty key", i + 1)));
            }
            Message::encode_as(
                tenon_sdk::model::Encoding::Json,
                &posted.kind,
                &posted.key,
                &posted.body,
            )
        })
        .collect()
}
