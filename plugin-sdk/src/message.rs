//! The friendly face of the WIT `types` interface.

use crate::wit::types as raw;
use serde::{Deserialize, Serialize};
use tenon_model::Encoding;

/// One business message: what steps receive and produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id, stable across retries. The host assigns it: leave it empty on output.
    pub id: String,
    /// Business key (e.g. the quote number): the scope of ordering and idempotency.
    pub key: String,
    /// Event type, e.g. `QuoteApproved`.
    pub kind: String,
    /// Encoding of `body`.
    pub content_type: String,
    /// Headers carried along the flow.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Vec<u8>,
}

impl Message {
    /// A message carrying `value` as MessagePack, the encoding between steps.
    pub fn encode<T: Serialize>(kind: &str, key: &str, value: &T) -> Result<Self, Failure> {
        Self::encode_as(Encoding::MsgPack, kind, key, value)
    }

    /// A message carrying `value` in the given encoding.
    pub fn encode_as<T: Serialize>(
        encoding: Encoding,
        kind: &str,
        key: &str,
        value: &T,
    ) -> Result<Self, Failure> {
        let body = encoding
            .encode(value)
            .map_err(|e| Failure::Invalid(format!("cannot encode {kind}: {e}")))?;
        Ok(Message {
            id: String::new(),
            key: key.to_owned(),
            kind: kind.to_owned(),
            content_type: encoding.content_type().to_owned(),
            headers: Vec::new(),
            body,
        })
    }

    /// Decode the body by its content type (JSON or MessagePack). A body that does not
    /// decode is `invalid`: no retry can fix it.
    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Failure> {
        let encoding = Encoding::from_content_type(&self.content_type)
            .map_err(|e| Failure::Invalid(e.to_string()))?;
        encoding
            .decode(&self.body)
            .map_err(|e| Failure::Invalid(format!("{} body does not decode: {e}", self.kind)))
    }

    /// The first header of that name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw inbound request, as a source plugin receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// The request's `content-type`.
    pub content_type: String,
    /// The request's headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The request body, as received.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Parse the body as JSON into `T`; a body that does not parse is `invalid`.
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::Invalid(format!("request body is not the expected JSON: {e}")))
    }
}

/// What a sink reports after a successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The target system's reference (e.g. the ERP order number).
    pub reference: String,
    /// Anything else worth recording with the outcome.
    pub detail: Option<String>,
}

/// Why a message could not be handled; the class decides what the host does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The input can never succeed: it goes to the dead-letter queue at once.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A business rule refused it, for every reason listed: recorded, not retried.
    #[error("rejected: {}", .0.join("; "))]
    Rejected(Vec<String>),
    /// Transient: retried with backoff.
    #[error("retryable: {0}")]
    Retryable(String),
}

impl From<raw::Message> for Message {
    fn from(m: raw::Message) -> Self {
        Message {
            id: m.id,
            key: m.key,
            kind: m.kind,
            content_type: m.content_type,
            headers: m.headers,
            body: m.body,
        }
    }
}

impl From<Message> for raw::Message {
    fn from(m: Message) -> Self {
        raw::Message {
            id: m.id,
            key: m.key,
            kind: m.kind,
            content_type: m.content_type,
            headers: m.headers,
            body: m.body,
        }
    }
}

impl From<raw::RawRequest> for RawRequest {
    fn from(r: raw::RawRequest) -> Self {
        RawRequest {
            content_type: r.content_type,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<Receipt> for raw::Receipt {
    fn from(r: Receipt) -> Self {
        raw::Receipt {
            reference: r.reference,
            detail: r.detail,
        }
    }
}

impl From<Failure> for raw::Failure {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Invalid(s) => raw::Failure::Invalid(s),
            Failure::Rejected(v) => raw::Failure::Rejected(v),
            Failure::Retryable(s) => raw::Failure::Retryable(s),
        }
    }
}
