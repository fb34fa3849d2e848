//! The friendly face of the WIT `types` interface.

use crate::wit::types as raw;
use serde::{Deserialize, Serialize};
use tenon_model::{Encoding, IDEMPOTENCY_HEADER};

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
        // A canonical model's message says which version of the model it is in.
        let headers = match tenon_model::CANONICAL.iter().any(|(k, _)| *k == kind) {
            true => vec![(
                tenon_model::MODEL_HEADER.to_owned(),
                tenon_model::MODEL_VERSION.to_owned(),
            )],
            false => Vec::new(),
        };
        Ok(Message {
            id: String::new(),
            key: key.to_owned(),
            kind: kind.to_owned(),
            content_type: encoding.content_type().to_owned(),
            headers,
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

    /// The message with its idempotency key set: the
    /// [`IDEMPOTENCY_HEADER`](tenon_model::IDEMPOTENCY_HEADER) header, under which
    /// ingress accepts a source's message once however often it is sent (e.g. a
    /// webhook retry). Any header of that name already there (in any case) is
    /// replaced.
    ///
    /// ```
    /// # fn main() -> Result<(), tenon_sdk::Failure> {
    /// use tenon_sdk::{Message, model::kinds};
    /// // The same revision of a quote, sent twice, is accepted once.
    /// let message = Message::encode(kinds::QUOTE_APPROVED, "Q-1", &"the quote")?
    ///     .with_idempotency_key("a0Q5@2024-05-01T10:00:00Z");
    /// assert_eq!(message.idempotency_key(), Some("a0Q5@2024-05-01T10:00:00Z"));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER));
        self.headers
            .push((IDEMPOTENCY_HEADER.to_owned(), key.into()));
        self
    }

    /// The message's idempotency key: its first
    /// [`IDEMPOTENCY_HEADER`](tenon_model::IDEMPOTENCY_HEADER) header, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.header(IDEMPOTENCY_HEADER)
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

impl Failure {
    /// True when an HTTP status stands for a transient condition that a later attempt
    /// may get past: 408 (request timeout), 429 (too many requests) and every 5xx.
    /// Any other status outside 2xx (another 4xx, say) is the target refusing the content.
    pub fn is_transient_status(status: u16) -> bool {
        matches!(status, 408 | 429 | 500..=599)
    }

    /// The failure a non-2xx HTTP status stands for, with `text` as the reason:
    /// `retryable` when [`Failure::is_transient_status`], otherwise `rejected`.
    pub fn from_status(status: u16, text: impl Into<String>) -> Failure {
        if Self::is_transient_status(status) {
            Failure::Retryable(text.into())
        } else {
            Failure::Rejected(vec![text.into()])
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)]) -> Message {
        Message {
            id: String::new(),
            key: "Q-1".into(),
            kind: "QuoteApproved".into(),
            content_type: Encoding::Json.content_type().to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_canonical_message_names_its_model_version() {
        let quote = Message::encode("QuoteApproved", "Q-1", &serde_json::json!({})).unwrap();
        assert_eq!(quote.header("tenon-model"), Some("1"));
        let own = Message::encode("PartnerPinged", "P-1", &serde_json::json!({})).unwrap();
        assert!(own.headers.is_empty());
    }

    #[test]
    fn idempotency_key_is_set_under_the_shared_header() {
        let m = message(&[("tenon-model", "1")]).with_idempotency_key("a@1");
        assert_eq!(m.idempotency_key(), Some("a@1"));
        assert_eq!(
            m.headers,
            vec![
                ("tenon-model".to_owned(), "1".to_owned()),
                (IDEMPOTENCY_HEADER.to_owned(), "a@1".to_owned()),
            ]
        );
    }

    #[test]
    fn idempotency_key_replaces_any_earlier_one_whatever_its_case() {
        let m = message(&[
            ("Idempotency-Key", "old"),
            ("x", "y"),
            ("IDEMPOTENCY-KEY", "older"),
        ])
        .with_idempotency_key(String::from("new"));
        assert_eq!(m.idempotency_key(), Some("new"));
        assert_eq!(
            m.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER))
                .count(),
            1
        );
        assert_eq!(m.header("x"), Some("y"));
    }

    #[test]
    fn idempotency_key_is_read_in_any_case_and_may_be_absent() {
        assert_eq!(message(&[]).idempotency_key(), None);
        assert_eq!(
            message(&[("Idempotency-Key", "k")]).idempotency_key(),
            Some("k")
        );
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_transient() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(Failure::is_transient_status(status), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 422, 499, 600] {
            assert!(!Failure::is_transient_status(status), "{status}");
        }
    }

    #[test]
    fn a_status_becomes_retryable_or_rejected_with_its_text() {
        assert_eq!(
            Failure::from_status(503, "HTTP 503: down"),
            Failure::Retryable("HTTP 503: down".into())
        );
        assert_eq!(
            Failure::from_status(422, String::from("HTTP 422: bad")),
            Failure::Rejected(vec!["HTTP 422: bad".into()])
        );
    }
}
