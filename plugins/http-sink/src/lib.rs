//! Sink plugin: send each message's body as JSON to an HTTP endpoint, as is or as a
//! CloudEvent.
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
//!   without it the idempotency key stands as the reference;
//! - `format` (default `json`): what the request carries:
//!   - `json`: the message's body, `Content-Type: application/json`;
//!   - `cloudevents`: a CloudEvent 1.0 in the HTTP binding's structured mode, `Content-Type:
//!     application/cloudevents+json; charset=utf-8`, the body one event in the JSON
//!     format (below);
//!   - `cloudevents-binary`: a CloudEvent 1.0 in binary mode: the message's body as
//!     the data, `Content-Type: application/json`, the other attributes as `ce-`
//!     headers, percent-encoded as the binding says (space, `"`, `%` and everything
//!     outside printable ASCII, as the `%XX` of its UTF-8 bytes);
//! - `ce_source` (default `urn:tenon`): the CloudEvents `source`, a URI-reference
//!   (e.g. `https://tenon.example.com/flows/orders`);
//! - `update_method` (`PUT`, `PATCH` or `POST`), `update_url` (a template, default
//!   `url`; `{ref}` is the reference the target gave the first time) and
//!   `identity_field` (default `id`): how the endpoint takes a change of something
//!   sent before. With `update_method` set, a message whose body's identity (an
//!   order's `id`) was sent before (a revised quote's order) goes as an update to
//!   `update_url`; without it, every message is a request of its own, and a revision
//!   reaches the endpoint as another request with the same `id` (and its `revision`),
//!   for an endpoint that upserts by `id`.
//!
//! - `compensate_url` (a template like `url`, `{ref}` the reference the delivery
//!   returned) and `compensate_method` (default `DELETE`; or `POST`, `PUT`, `PATCH`,
//!   which carry the delivered body): how the endpoint undoes a delivery, for flows
//!   with a saga. A `404` means nothing is left to undo. Without `compensate_url` a
//!   compensation is `invalid` (a dead letter naming the missing setting).
//!
//! - `records_url` (a template: `{kind}`, `{since}`, `{until}`): where the endpoint
//!   lists what it holds, for reconciliation and drift checks (`GET`, the same
//!   headers): a JSON array of objects, each with an `id`, a `reference` and its fields
//!   (an invoice's `amount`, an exact decimal as a string or a number, `currency`,
//!   `date`). Without it, reading records is `invalid`.
//!
//! | CloudEvents attribute | from |
//! |---|---|
//! | `specversion` | `1.0` |
//! | `id` | the message's id (stable across redeliveries) |
//! | `source` | config `ce_source` |
//! | `type` | the message's kind |
//! | `subject` | the message's key (left out when empty) |
//! | `datacontenttype` | `application/json` (structured mode; the `Content-Type` in binary mode) |
//! | `data` | the message's body as JSON |
//!
//! `time` is left out: the SDK offers no clock, and the time of a delivery attempt is
//! not the time of the occurrence. A message whose id, kind or key holds a character
//! a CloudEvents string cannot (a control character, a Unicode noncharacter) is
//! `invalid` in both CloudEvents formats.
//!
//! Every request carries `Idempotency-Key` (stable across redeliveries), `Tenon-Model`
//! (the canonical model's version, when the message names one), `Tenon-Kind`
//! and `Tenon-Key`. MessagePack bodies are transcoded to JSON. Status 408, 429 and 5xx
//! are `retryable`; any other non-2xx is `rejected` with the response body as reason.

use std::collections::BTreeMap;
use tenon_sdk::model::IDEMPOTENCY_HEADER;
use tenon_sdk::{Failure, Message, Receipt, config, http, kv, secrets};

#[cfg(test)]
mod tests;

/// Send the message to the configured URL, in the configured format.
#[tenon_sdk::sink(compensate = undo_message, records = read_records)]
fn send_message(message: Message, idempotency_key: &str) -> Result<Receipt, Failure> {
    let method_of = |key: &str, default: &str| -> Result<String, Failure> {
        let method = config::get(key).unwrap_or_else(|| default.into());
        if ["POST", "PUT", "PATCH"].contains(&method.to_ascii_uppercase().as_str()) {
            Ok(method)
        } else {
            Err(Failure::Invalid(format!(
                "config `{key}` is `{method}`; a sink sends with POST, PUT or PATCH"
            )))
        }
    };
    let mut url = url_for(&config::require("url")?, &message);
    let mut method = method_of("method", "POST")?;
    // A message about something sent before (another revision of the same order) is
    // an update, where the operator names how the endpoint takes one.
    let identity = match config::get("update_method") {
        Some(_) => identity(&message)?,
        None => None,
    };
    let mut updated = false;
    if let Some(identity) = &identity
        && let Some(reference) = kv::get(&sent_key(identity))?
    {
        updated = true;
        let reference = String::from_utf8_lossy(&reference).into_owned();
        method = method_of("update_method", "PUT")?;
        let template = config::get("update_url").unwrap_or(config::require("url")?);
        url = url_for(&template, &message).replace("{ref}", &tenon_sdk::url::escape(&reference));
    }
    let format = Format::from_config(config::get("format").as_deref())?;
    let source = config::get("ce_source").unwrap_or_else(|| DEFAULT_CE_SOURCE.into());
    let payload = payload(format, &message, &source)?;
    let configured = configured_headers()?;
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", payload.content_type.as_str()),
        ("accept", "application/json"),
        (IDEMPOTENCY_HEADER, idempotency_key),
        ("tenon-kind", message.kind.as_str()),
        ("tenon-key", message.key.as_str()),
    ];
    // The canonical model's version travels on, for the receiver to check.
    if let Some(version) = message.header(tenon_sdk::model::MODEL_HEADER) {
        headers.push((tenon_sdk::model::MODEL_HEADER, version));
    }
    headers.extend(
        payload
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    headers.extend(configured.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let response = http::send(&method, &url, &headers, &payload.body)?;
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
    if let Some(identity) = &identity {
        kv::set(&sent_key(identity), reference.as_bytes())?;
    }
    Ok(Receipt {
        reference,
        detail: Some(if updated {
            format!("HTTP {} (an update: {method})", response.status)
        } else {
            format!("HTTP {}", response.status)
        }),
    })
}

/// Undo a delivery: `compensate_method` to `compensate_url`, with the reference the
/// delivery returned as `{ref}`.
fn undo_message(
    message: Message,
    delivered: Receipt,
    idempotency_key: &str,
) -> Result<Receipt, Failure> {
    let Some(template) = config::get("compensate_url") else {
        return Err(Failure::Invalid(
            "config `compensate_url` is not set: this sink does not know how its endpoint undoes a delivery".into(),
        ));
    };
    let method = config::get("compensate_method").unwrap_or_else(|| "DELETE".into());
    if !["DELETE", "POST", "PUT", "PATCH"].contains(&method.to_ascii_uppercase().as_str()) {
        return Err(Failure::Invalid(format!(
            "config `compensate_method` is `{method}`; an undoing is DELETE, POST, PUT or PATCH"
        )));
    }
    let url = url_for(&template, &message)
        .replace("{ref}", &tenon_sdk::url::escape(&delivered.reference));
    let body = match method.eq_ignore_ascii_case("DELETE") {
        true => Vec::new(),
        false => json_body(&message)?,
    };
    let configured = configured_headers()?;
    let mut headers: Vec<(&str, &str)> = vec![
        ("accept", "application/json"),
        (IDEMPOTENCY_HEADER, idempotency_key),
        ("tenon-kind", message.kind.as_str()),
        ("tenon-key", message.key.as_str()),
    ];
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    headers.extend(configured.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let response = http::send(&method, &url, &headers, &body)?;
    if response.status == 404 {
        return Ok(Receipt {
            reference: delivered.reference,
            detail: Some("HTTP 404: nothing left to undo".into()),
        });
    }
    if !response.is_success() {
        return Err(response.failure());
    }
    // What it sent is no longer there: a later revision is a new request.
    if config::get("update_method").is_some()
        && let Some(identity) = identity(&message)?
    {
        kv::delete(&sent_key(&identity))?;
    }
    Ok(Receipt {
        reference: delivered.reference,
        detail: Some(format!("HTTP {} ({method} undone)", response.status)),
    })
}

/// The records the endpoint lists at `records_url`, for reconciliation.
fn read_records(
    query: tenon_sdk::records::Query,
) -> Result<Vec<tenon_sdk::records::Entry>, Failure> {
    let Some(template) = config::get("records_url") else {
        return Err(Failure::Invalid(
            "config `records_url` is not set: this sink does not know where its endpoint lists what it holds".into(),
        ));
    };
    let url = template
        .replace("{kind}", &tenon_sdk::url::escape(&query.kind))
        .replace("{since}", &tenon_sdk::url::escape(&query.since))
        .replace("{until}", &tenon_sdk::url::escape(&query.until));
    let configured = configured_headers()?;
    let mut headers: Vec<(&str, &str)> = vec![("accept", "application/json")];
    headers.extend(configured.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let response = http::send("GET", &url, &headers, &[])?;
    if !response.is_success() {
        return Err(response.failure());
    }
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&response.body).map_err(|e| {
        Failure::Invalid(format!(
            "the records at `{url}` are not a JSON array of objects: {e}"
        ))
    })?;
    let text = |record: &serde_json::Value, field: &str| match record.get(field) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    listed
        .iter()
        .map(|record| {
            let (Some(id), Some(object)) = (text(record, "id"), record.as_object()) else {
                return Err(Failure::Invalid(format!(
                    "a record at `{url}` is not an object with an `id`: {record}"
                )));
            };
            let mut entry =
                tenon_sdk::records::Entry::new(id, text(record, "reference").unwrap_or_default());
            for name in object.keys().filter(|k| *k != "id" && *k != "reference") {
                entry = entry.with(name, text(record, name));
            }
            Ok(entry)
        })
        .collect()
}

/// The headers every request carries from config: `headers`, then `secret_headers`
/// with their secrets' values.
fn configured_headers() -> Result<Vec<(String, String)>, Failure> {
    let mut headers: Vec<(String, String)> = json_map("headers", config::get("headers"))?
        .into_iter()
        .collect();
    for (name, template) in json_map("secret_headers", config::get("secret_headers"))? {
        headers.push((name, secret_header(&template, secrets::get)?));
    }
    Ok(headers)
}

/// What the message is about: the `identity_field` of its body (`id`, an order's id),
/// when it has one.
fn identity(message: &Message) -> Result<Option<String>, Failure> {
    let field = config::get("identity_field").unwrap_or_else(|| "id".into());
    let body: serde_json::Value = message.decode()?;
    Ok(match body.get(&field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

fn sent_key(identity: &str) -> String {
    format!("sent/{identity}")
}

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

/// What a request carries: config `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The message's body as JSON (`json`, the default).
    Json,
    /// A CloudEvent in structured mode (`cloudevents`).
    CloudEvents,
    /// A CloudEvent in binary mode (`cloudevents-binary`).
    CloudEventsBinary,
}

impl Format {
    /// The format config `format` names; unset is [`Format::Json`].
    pub fn from_config(value: Option<&str>) -> Result<Format, Failure> {
        match value.map(str::trim) {
            None | Some("json") => Ok(Format::Json),
            Some("cloudevents") => Ok(Format::CloudEvents),
            Some("cloudevents-binary") => Ok(Format::CloudEventsBinary),
            Some(other) => Err(Failure::Invalid(format!(
                "config `format` is `{other}`; a sink sends `json`, `cloudevents` or `cloudevents-binary`"
            ))),
        }
    }
}

/// The CloudEvents `source` unless config `ce_source` says otherwise.
pub const DEFAULT_CE_SOURCE: &str = "urn:tenon";
/// The `Content-Type` of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";

/// What a request carries: its `Content-Type`, the headers its format adds and its
/// body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The `Content-Type`.
    pub content_type: String,
    /// Headers of the format (the `ce-` headers of binary mode).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// The payload of a message in a format; `source` is the CloudEvents `source`.
pub fn payload(format: Format, message: &Message, source: &str) -> Result<Payload, Failure> {
    Ok(match format {
        Format::Json => Payload {
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: json_body(message)?,
        },
        Format::CloudEvents => Payload {
            content_type: CLOUDEVENTS_JSON.into(),
            headers: Vec::new(),
            body: serde_json::to_vec(&cloudevent(message, source)?)
                .map_err(|e| Failure::Invalid(format!("cannot write JSON: {e}")))?,
        },
        Format::CloudEventsBinary => Payload {
            content_type: "application/json".into(),
            headers: cloudevent_headers(message, source)?,
            body: json_body(message)?,
        },
    })
}

/// The message's body as JSON bytes: as is when it is JSON, else transcoded.
pub fn json_body(message: &Message) -> Result<Vec<u8>, Failure> {
    match message.content_type.split(';').next().map(str::trim) {
        Some("application/json") => Ok(message.body.clone()),
        _ => {
            let value: serde_json::Value = message.decode()?;
            serde_json::to_vec(&value)
                .map_err(|e| Failure::Invalid(format!("cannot write JSON: {e}")))
        }
    }
}

/// A message as a CloudEvent in the JSON format (structured mode): see the table
/// above.
pub fn cloudevent(message: &Message, source: &str) -> Result<serde_json::Value, Failure> {
    let data: serde_json::Value = message.decode()?;
    let mut event = serde_json::Map::new();
    for (name, value) in context(message, source)? {
        event.insert(name.into(), value.into());
    }
    event.insert("datacontenttype".into(), "application/json".into());
    event.insert("data".into(), data);
    Ok(serde_json::Value::Object(event))
}

/// A message's CloudEvents attributes as binary-mode headers (`ce-<name>`), their
/// values percent-encoded.
pub fn cloudevent_headers(
    message: &Message,
    source: &str,
) -> Result<Vec<(String, String)>, Failure> {
    Ok(context(message, source)?
        .into_iter()
        .map(|(name, value)| (format!("ce-{name}"), percent_encode(value)))
        .collect())
}

/// The context attributes of a message, checked: `specversion`, `id`, `source`,
/// `type` and, for a non-empty key, `subject`.
fn context<'a>(
    message: &'a Message,
    source: &'a str,
) -> Result<Vec<(&'static str, &'a str)>, Failure> {
    check_source(source)?;
    let mut attributes = vec![
        ("specversion", "1.0"),
        ("id", message.id.as_str()),
        ("source", source),
        ("type", message.kind.as_str()),
    ];
    if !message.key.is_empty() {
        attributes.push(("subject", message.key.as_str()));
    }
    for (attribute, what, value) in [
        ("id", "id", &message.id),
        ("type", "kind", &message.kind),
        ("subject", "key", &message.key),
    ] {
        if value.is_empty() && attribute != "subject" {
            return Err(Failure::Invalid(format!(
                "the message has no {what}: a CloudEvent's `{attribute}` is a non-empty string"
            )));
        }
        if let Some(c) = value.chars().find(|&c| !is_string_char(c)) {
            return Err(Failure::Invalid(format!(
                "the message's {what} holds U+{:04X}, which a CloudEvents string (`{attribute}`) cannot",
                u32::from(c)
            )));
        }
    }
    Ok(attributes)
}

/// A character of a CloudEvents `String`: not a control character, not a Unicode
/// noncharacter.
fn is_string_char(c: char) -> bool {
    let n = u32::from(c);
    !c.is_control() && !(0xFDD0..=0xFDEF).contains(&n) && (n & 0xFFFE) != 0xFFFE
}

/// Config `ce_source`: a non-empty URI-reference, as far as its characters go
/// (unreserved, reserved, and `%` followed by two hexadecimal digits).
fn check_source(source: &str) -> Result<(), Failure> {
    let refuse = |why: &str| {
        Failure::Invalid(format!(
            "config `ce_source` is `{source}`: a CloudEvents source is a URI-reference: {why}"
        ))
    };
    if source.is_empty() {
        return Err(refuse("it is empty"));
    }
    if let Some(c) = source
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)))
    {
        return Err(refuse(&format!("`{c}` must be percent-encoded")));
    }
    let bytes = source.as_bytes();
    for (at, _) in source.match_indices('%') {
        if !bytes
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        {
            return Err(refuse("a `%` that does not start a percent-encoding"));
        }
    }
    Ok(())
}

/// A header value percent-encoded as the CloudEvents HTTP binding says: space, `"`,
/// `%` and every character outside printable ASCII (U+0021-U+007E) become the `%XX`
/// (upper-case) of their UTF-8 bytes; the rest is kept.
pub fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}
