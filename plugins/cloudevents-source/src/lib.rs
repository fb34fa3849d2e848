//! Source plugin: CloudEvents 1.0 (core specification 1.0.2) over the HTTP protocol
//! binding, in the JSON event format. Every event becomes one Tenon message.
//!
//! The request's `Content-Type` chooses the mode, as the binding says:
//!
//! | `Content-Type` | mode | body |
//! |---|---|---|
//! | `application/cloudevents+json` | structured | one event in the JSON format |
//! | `application/cloudevents-batch+json` | batched | a JSON array of events; `[]` is a valid batch and yields no message |
//! | anything else | binary | the event's data; its attributes are `ce-<name>` headers, its `datacontenttype` the `Content-Type` |
//!
//! A `charset` parameter, if any, must be `utf-8` in the two JSON modes. Other event
//! formats (`application/cloudevents+avro`, ...) are refused. In binary mode each
//! `ce-` header value is unquoted (older senders) and percent-decoded (one round, the
//! bytes must be UTF-8); a `ce-datacontenttype` header is refused (the `Content-Type`
//! is the `datacontenttype`), and a request with no `ce-` header at all is not a
//! CloudEvent.
//!
//! Every rule of the specification is checked, and an event that breaks one is
//! `invalid` with the attribute and the rule, e.g. ``attribute `specversion`: must be
//! "1.0", got "0.3"``; in a batch the reason starts with the event's position from 1
//! (``event 2: ...``) and **one invalid event refuses the whole batch** (nothing of it
//! is accepted, so a corrected batch can be sent again as a whole):
//!
//! - `specversion` (required): the string `"1.0"`;
//! - `id` (required): a non-empty string;
//! - `source` (required): a non-empty URI-reference (RFC 3986 section 4.1);
//! - `type` (required): a non-empty string;
//! - `datacontenttype`: a media type (RFC 2046: `type/subtype` and `; name=value`);
//! - `dataschema`: a non-empty absolute URI (RFC 3986 section 4.3: a scheme, no fragment);
//! - `subject`: a non-empty string;
//! - `time`: an RFC 3339 timestamp (a date that exists; a leap second at 23:59 UTC only);
//! - extension attributes: named with lower-case letters and digits (longer than the
//!   recommended 20 characters is accepted; `data` is reserved), valued with a string,
//!   a boolean or an integer from -2147483648 to 2147483647 (in binary mode every
//!   header is a string);
//! - every string: no control characters (U+0000-U+001F, U+007F-U+009F) and no Unicode
//!   noncharacters (unpaired surrogates make the JSON itself invalid);
//! - each attribute at most once (duplicate JSON members or `ce-` headers are refused);
//! - JSON `null` stands for an absent attribute (a `null` required attribute is
//!   missing);
//! - `data` and `data_base64` never both (a `null` `data_base64` is absent);
//!   `data_base64` is RFC 4648 base64 (standard alphabet, padded).
//!
//! Messages between Tenon steps are JSON (or MessagePack), so an event's data must be
//! JSON: its `datacontenttype` is absent (JSON by the JSON format's rule) or declares
//! JSON (`*/json` or `*/*+json`, e.g. `application/json; charset=utf-8` or
//! `application/vnd.acme+json`). Data of any other type (`text/xml`,
//! `application/octet-stream`, ...) is refused, whether it comes as `data`,
//! `data_base64` or a binary-mode body; so is JSON-declared data that does not parse.
//! An event without data (no `data` member, or an empty body or `data_base64`) is
//! carried as the JSON `null`.
//!
//! | CloudEvents | Tenon message |
//! |---|---|
//! | `type` | `kind` |
//! | `subject`, else `id` | `key` (the scope of ordering) |
//! | `data` / `data_base64` / binary-mode body | `body`, `application/json` (the data's JSON as sent) |
//! | `source` + `id` | header `idempotency-key` = `<source>\|<id>`: a redelivered event is accepted once |
//! | `specversion`, `id`, `source`, `type` | headers `ce-specversion`, `ce-id`, `ce-source`, `ce-type` |
//! | `datacontenttype`, `dataschema`, `subject`, `time` (when present) | headers `ce-datacontenttype`, `ce-dataschema`, `ce-subject`, `ce-time` |
//! | extension `<name>` | header `ce-<name>` (the canonical string: `5`, `true`) |
//!
//! Header values are the attributes' values, decoded (not percent-encoded). As for any
//! source, a request's own `Idempotency-Key` header, if sent, takes precedence; the
//! key of a batch is the keys of all its events.
//!
//! Config: `kinds` (optional), a JSON array of the event types this source accepts,
//! e.g. `["com.example.order.created"]`; an event of another type is `rejected` (with
//! one reason per such event, and nothing of the request accepted). Unset, every type
//! is accepted.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use tenon_sdk::{Failure, Message, RawRequest, config};

pub mod rules;
#[cfg(test)]
mod tests;

/// Each CloudEvent of the request as a message, of the types config `kinds` accepts.
#[tenon_sdk::source]
fn ingest_events(request: RawRequest) -> Result<Vec<Message>, Failure> {
    let kinds = kinds_from_config(config::get("kinds").as_deref())?;
    accept(&request, kinds.as_deref())
}

/// The only `specversion` this source reads.
pub const SPEC_VERSION: &str = "1.0";
/// Media type of the structured mode's JSON event format.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of the batched mode's JSON batch format.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// How a request carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One event in the JSON format.
    Structured,
    /// A JSON array of events.
    Batch,
    /// The data as the body, the attributes as `ce-` headers.
    Binary,
}

/// One validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `specversion` (always `1.0`).
    pub specversion: String,
    /// `type`.
    pub kind: String,
    /// `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// `dataschema`.
    pub dataschema: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `time`.
    pub time: Option<String>,
    /// Extension attributes, in the order received.
    pub extensions: Vec<(String, Extension)>,
    /// The data.
    pub data: Data,
}

/// An extension attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// A string (every binary-mode value is one).
    String(String),
    /// An integer within the signed 32-bit range.
    Integer(i32),
    /// A boolean.
    Boolean(bool),
}

impl Extension {
    /// The canonical string encoding: the string, `5`, `true`.
    pub fn canonical(&self) -> String {
        match self {
            Extension::String(s) => s.clone(),
            Extension::Integer(n) => n.to_string(),
            Extension::Boolean(b) => b.to_string(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Extension::String(s) => Value::from(s.as_str()),
            Extension::Integer(n) => Value::from(*n),
            Extension::Boolean(b) => Value::from(*b),
        }
    }
}

/// An event's data, as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// No data.
    Absent,
    /// The JSON format's `data` member (`null` included).
    Value(Value),
    /// Bytes: `data_base64` decoded, or a binary-mode body.
    Bytes(Vec<u8>),
}

impl Event {
    /// The idempotency key: `<source>|<id>`, which identify an event.
    pub fn idempotency_key(&self) -> String {
        format!("{}|{}", self.source, self.id)
    }

    /// The message's key: the `subject` if any, else the `id`.
    pub fn key(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.id)
    }

    /// The event in the JSON format (structured mode), e.g. to forward it as is.
    pub fn to_json(&self) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("specversion".into(), self.specversion.clone().into());
        object.insert("id".into(), self.id.clone().into());
        object.insert("source".into(), self.source.clone().into());
        object.insert("type".into(), self.kind.clone().into());
        for (name, value) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(value) = value {
                object.insert(name.into(), value.clone().into());
            }
        }
        for (name, value) in &self.extensions {
            object.insert(name.clone(), value.to_json());
        }
        match &self.data {
            Data::Absent => {}
            Data::Value(value) => {
                object.insert("data".into(), value.clone());
            }
            Data::Bytes(bytes) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                object.insert("data_base64".into(), encoded.into());
            }
        }
        Value::Object(object)
    }

    /// The Tenon message of this event (see the mapping table above); the reason when
    /// its data cannot be carried.
    pub fn to_message(&self) -> Result<Message, String> {
        let media_type = self
            .datacontenttype
            .as_deref()
            .unwrap_or("application/json");
        let json = rules::is_json(media_type);
        let refuse = || {
            format!(
                "data of type `{media_type}` cannot be carried: Tenon messages carry JSON \
                 (a datacontenttype of application/json or */*+json)"
            )
        };
        let body = match &self.data {
            Data::Absent => b"null".to_vec(),
            Data::Bytes(bytes) if bytes.is_empty() => b"null".to_vec(),
            Data::Value(value) if json => serde_json::to_vec(value)
                .map_err(|e| format!("data: cannot write it as JSON: {e}"))?,
            Data::Bytes(bytes) if json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| {
                    format!("data: not the JSON its datacontenttype `{media_type}` declares: {e}")
                })?;
                bytes.clone()
            }
            _ => return Err(refuse()),
        };
        let mut headers = vec![
            ("ce-specversion".to_owned(), self.specversion.clone()),
            ("ce-id".to_owned(), self.id.clone()),
            ("ce-source".to_owned(), self.source.clone()),
            ("ce-type".to_owned(), self.kind.clone()),
        ];
        for (name, value) in [
            ("ce-datacontenttype", &self.datacontenttype),
            ("ce-dataschema", &self.dataschema),
            ("ce-subject", &self.subject),
            ("ce-time", &self.time),
        ] {
            if let Some(value) = value {
                headers.push((name.to_owned(), value.clone()));
            }
        }
        for (name, value) in &self.extensions {
            headers.push((format!("ce-{name}"), value.canonical()));
        }
        let message = Message {
            id: String::new(),
            key: self.key().to_owned(),
            kind: self.kind.clone(),
            content_type: "application/json".to_owned(),
            headers,
            body,
        };
        Ok(message.with_idempotency_key(self.idempotency_key()))
    }
}

/// The mode a `Content-Type` chooses; the reason when it names a CloudEvents format
/// this source does not read.
pub fn mode(content_type: &str) -> Result<Mode, String> {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mode = if essence.starts_with("application/cloudevents-batch") {
        Mode::Batch
    } else if essence.starts_with("application/cloudevents") {
        Mode::Structured
    } else {
        return Ok(Mode::Binary);
    };
    if essence != STRUCTURED && essence != BATCH {
        return Err(format!(
            "the event format `{essence}` is not supported: send {STRUCTURED} (one event), \
             {BATCH} (a batch) or binary mode"
        ));
    }
    for parameter in parts {
        if let Some((name, value)) = parameter.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
        {
            let value = value.trim().trim_matches('"');
            if !value.eq_ignore_ascii_case("utf-8") {
                return Err(format!(
                    "charset `{value}` is not supported: the JSON event format is UTF-8"
                ));
            }
        }
    }
    Ok(mode)
}

/// The events of a request, every rule checked; `invalid` with the first broken rule.
pub fn events(request: &RawRequest) -> Result<Vec<Event>, Failure> {
    let invalid = Failure::Invalid;
    match mode(&request.content_type).map_err(invalid)? {
        Mode::Structured => {
            let item: Item = serde_json::from_slice(&request.body)
                .map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
            Ok(vec![item.event().map_err(invalid)?])
        }
        Mode::Batch => {
            let batch: Batch = serde_json::from_slice(&request.body)
                .map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
            let Batch::Events(items) = batch else {
                return Err(invalid(
                    "the body is not a JSON array of events (the JSON batch format)".into(),
                ));
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    item.event()
                        .map_err(|why| invalid(format!("event {}: {why}", i + 1)))
                })
                .collect()
        }
        Mode::Binary => Ok(vec![binary(request).map_err(invalid)?]),
    }
}

/// The messages of a request, one per event, every event of any type.
pub fn to_messages(request: &RawRequest) -> Result<Vec<Message>, Failure> {
    accept(request, None)
}

/// The messages of a request, one per event; with `kinds`, an event of another type
/// is `rejected` (every such event named) and nothing is accepted.
pub fn accept(request: &RawRequest, kinds: Option<&[String]>) -> Result<Vec<Message>, Failure> {
    let events = events(request)?;
    let batch = mode(&request.content_type) == Ok(Mode::Batch);
    let label = |i: usize, text: String| {
        if batch {
            format!("event {}: {text}", i + 1)
        } else {
            text
        }
    };
    if let Some(kinds) = kinds {
        let refused: Vec<String> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| !kinds.contains(&e.kind))
            .map(|(i, e)| {
                label(
                    i,
                    format!(
                        "type `{}` is not one this source accepts ({})",
                        e.kind,
                        kinds.join(", ")
                    ),
                )
            })
            .collect();
        if !refused.is_empty() {
            return Err(Failure::Rejected(refused));
        }
    }
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.to_message()
                .map_err(|why| Failure::Invalid(label(i, why)))
        })
        .collect()
}

/// The `kinds` config: unset (every type accepted) or a JSON array of strings.
pub fn kinds_from_config(text: Option<&str>) -> Result<Option<Vec<String>>, Failure> {
    text.map(|text| {
        serde_json::from_str(text).map_err(|e| {
            Failure::Invalid(format!(
                "config `kinds` is not a JSON array of event types: {e}"
            ))
        })
    })
    .transpose()
}

/// A JSON object's members in order, duplicates kept (serde_json's `Value` would keep
/// only the last).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// One element of a body: an event object, or anything else (refused).
#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Object(Members),
    Other(#[allow(dead_code)] serde::de::IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Batch {
    Events(Vec<Item>),
    Other(#[allow(dead_code)] serde::de::IgnoredAny),
}

impl Item {
    fn event(self) -> Result<Event, String> {
        let Item::Object(Members(members)) = self else {
            return Err("not a JSON object (an event in the JSON format)".into());
        };
        let mut attributes = Vec::with_capacity(members.len());
        let (mut data, mut data_base64) = (None, None);
        for (name, value) in members {
            match name.as_str() {
                "data" if data.is_some() => {
                    return Err("member `data` appears more than once".into());
                }
                "data" => data = Some(value),
                "data_base64" if data_base64.is_some() => {
                    return Err("member `data_base64` appears more than once".into());
                }
                "data_base64" => data_base64 = Some(value),
                _ => attributes.push((name, value)),
            }
        }
        let data = match (data, data_base64.filter(|v| !v.is_null())) {
            (Some(_), Some(_)) => {
                return Err(
                    "`data` and `data_base64` are both present: an event has at most one of them"
                        .into(),
                );
            }
            (Some(value), None) => Data::Value(value),
            (None, Some(Value::String(text))) => Data::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .map_err(|e| format!("`data_base64`: not base64 (RFC 4648): {e}"))?,
            ),
            (None, Some(other)) => {
                return Err(format!(
                    "`data_base64`: must be a base64 string, got {other}"
                ));
            }
            (None, None) => Data::Absent,
        };
        build(attributes, data, false)
    }
}

/// A binary-mode request's event: `ce-` headers, the `Content-Type` and the body.
fn binary(request: &RawRequest) -> Result<Event, String> {
    let mut attributes = Vec::new();
    for (header, raw) in &request.headers {
        let header = header.to_ascii_lowercase();
        let Some(name) = header.strip_prefix("ce-") else {
            continue;
        };
        if name == "datacontenttype" {
            return Err(
                "header `ce-datacontenttype` is not allowed in binary mode: the \
                 Content-Type header is the datacontenttype"
                    .into(),
            );
        }
        let value = rules::header_value(raw)
            .map_err(|why| format!("attribute `{name}` (header `{header}`): {why}"))?;
        attributes.push((name.to_owned(), Value::String(value)));
    }
    if attributes.is_empty() {
        return Err(format!(
            "not a CloudEvent: send Content-Type {STRUCTURED} (one event), {BATCH} (a batch), \
             or binary mode (the data with ce-specversion, ce-id, ce-source and ce-type headers)"
        ));
    }
    if !request.content_type.is_empty() {
        let content_type = Value::String(request.content_type.clone());
        attributes.push(("datacontenttype".into(), content_type));
    }
    let data = if request.body.is_empty() {
        Data::Absent
    } else {
        Data::Bytes(request.body.clone())
    };
    build(attributes, data, true)
}

const CORE: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// An event from its attributes (JSON values; strings in binary mode) and data.
fn build(attributes: Vec<(String, Value)>, data: Data, binary: bool) -> Result<Event, String> {
    let mut seen = BTreeSet::new();
    let mut core: [Option<Value>; 8] = Default::default();
    let mut extensions = Vec::new();
    for (name, value) in attributes {
        if !seen.insert(name.clone()) {
            return Err(format!("attribute `{name}`: appears more than once"));
        }
        if let Some(i) = CORE.iter().position(|c| *c == name) {
            core[i] = Some(value).filter(|v| !v.is_null());
            continue;
        }
        if name == "data" {
            return Err("attribute `data`: the name is reserved for the event's data".into());
        }
        rules::attribute_name(&name).map_err(|why| format!("attribute `{name}`: {why}"))?;
        if !value.is_null() {
            extensions.push((name, value));
        }
    }
    let [
        specversion,
        id,
        source,
        kind,
        datacontenttype,
        dataschema,
        subject,
        time,
    ] = core;
    let missing = |name: &str| {
        if binary {
            format!("attribute `{name}`: required, missing (binary mode: a `ce-{name}` header)")
        } else {
            format!("attribute `{name}`: required, missing")
        }
    };
    let specversion = string(
        "specversion",
        specversion.ok_or_else(|| missing("specversion"))?,
    )?;
    if specversion != SPEC_VERSION {
        return Err(format!(
            "attribute `specversion`: must be \"{SPEC_VERSION}\", got {specversion:?}"
        ));
    }
    let id = non_empty("id", id.ok_or_else(|| missing("id"))?)?;
    let source = string("source", source.ok_or_else(|| missing("source"))?)?;
    if source.is_empty() {
        return Err("attribute `source`: must be a non-empty URI-reference".into());
    }
    rules::uri_reference(&source).map_err(|why| {
        format!("attribute `source`: must be a URI-reference (RFC 3986), got {source:?}: {why}")
    })?;
    let kind = non_empty("type", kind.ok_or_else(|| missing("type"))?)?;
    let datacontenttype = datacontenttype
        .map(|v| {
            let text = string("datacontenttype", v)?;
            rules::media_type(&text).map_err(|why| {
                format!(
                    "attribute `datacontenttype`: must be a media type (RFC 2046), got {text:?}: {why}"
                )
            })?;
            Ok::<_, String>(text)
        })
        .transpose()?;
    let dataschema = dataschema
        .map(|v| {
            let text = string("dataschema", v)?;
            if text.is_empty() {
                return Err("attribute `dataschema`: must be a non-empty URI".to_owned());
            }
            rules::absolute_uri(&text).map_err(|why| {
                format!(
                    "attribute `dataschema`: must be an absolute URI (RFC 3986 section 4.3), got {text:?}: {why}"
                )
            })?;
            Ok(text)
        })
        .transpose()?;
    let subject = subject.map(|v| non_empty("subject", v)).transpose()?;
    let time = time
        .map(|v| {
            let text = string("time", v)?;
            rules::timestamp(&text).map_err(|why| {
                format!("attribute `time`: must be an RFC 3339 timestamp, got {text:?}: {why}")
            })?;
            Ok::<_, String>(text)
        })
        .transpose()?;
    let extensions = extensions
        .into_iter()
        .map(|(name, value)| {
            let value = extension(&name, value)?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Event {
        id,
        source,
        specversion,
        kind,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data,
    })
}

/// A `String` attribute: a JSON string of allowed characters.
fn string(name: &str, value: Value) -> Result<String, String> {
    let Value::String(text) = value else {
        return Err(format!("attribute `{name}`: must be a string, got {value}"));
    };
    rules::string(&text).map_err(|why| format!("attribute `{name}`: {why}"))?;
    Ok(text)
}

fn non_empty(name: &str, value: Value) -> Result<String, String> {
    let text = string(name, value)?;
    if text.is_empty() {
        return Err(format!("attribute `{name}`: must be a non-empty string"));
    }
    Ok(text)
}

/// An extension's value: a string, a boolean or a 32-bit integer.
fn extension(name: &str, value: Value) -> Result<Extension, String> {
    match value {
        Value::String(_) => string(name, value).map(Extension::String),
        Value::Bool(b) => Ok(Extension::Boolean(b)),
        Value::Number(ref n) if n.is_i64() || n.is_u64() => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Extension::Integer)
            .ok_or_else(|| {
                format!(
                    "attribute `{name}`: integer {n} is out of range (-2147483648 to 2147483647)"
                )
            }),
        other => Err(format!(
            "attribute `{name}`: must be a string, an integer or a boolean, got {other}"
        )),
    }
}
