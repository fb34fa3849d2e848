//! What an API plugin receives and answers (`#[tenon_sdk::api]`): one synchronous
//! request on `/v1/apis/<name>/...`, one response. Nothing is queued; a failure is
//! answered at once (`invalid` 400, `rejected` 422 with every reason, `retryable` 503).

use crate::Failure;
use serde::{Deserialize, Serialize};

/// A request routed to the plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path below the route's prefix, e.g. `/products/P-100` (`/` for the prefix itself).
    pub path: String,
    /// The route's path parameters by name.
    pub params: Vec<(String, String)>,
    /// The query string's parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The headers (lower-case names), without Tenon's credentials.
    pub headers: Vec<(String, String)>,
    /// The request's `content-type` (empty without a body).
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A path parameter (`{name}` in the route's path).
    pub fn param(&self, name: &str) -> Option<&str> {
        first(&self.params, name, false)
    }

    /// The first query parameter of that name.
    pub fn query(&self, name: &str) -> Option<&str> {
        first(&self.query, name, false)
    }

    /// The first header of that name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name, true)
    }

    /// A path parameter, or else a query parameter, that must be there: `invalid`
    /// (400) naming it when missing or empty.
    pub fn required(&self, name: &str) -> Result<&str, Failure> {
        self.param(name)
            .or_else(|| self.query(name))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Failure::Invalid(format!("`{name}` is required")))
    }

    /// The body parsed as JSON into `T`; a body that does not parse is `invalid` (400).
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::Invalid(format!("the request body is not the expected JSON: {e}"))
        })
    }
}

fn first<'a>(pairs: &'a [(String, String)], name: &str, any_case: bool) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| match any_case {
            true => k.eq_ignore_ascii_case(name),
            false => k == name,
        })
        .map(|(_, v)| v.as_str())
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status (2xx-4xx; the host answers 502 for a status it does not pass on).
    pub status: u16,
    /// Its `content-type`.
    pub content_type: String,
    /// Extra headers (the host drops hop-by-hop and credential headers).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// `status` with `value` as a JSON body.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Result<Response, Failure> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Failure::Invalid(format!("cannot encode the answer as JSON: {e}")))?;
        Ok(Response {
            status,
            content_type: "application/json".into(),
            headers: Vec::new(),
            body,
        })
    }

    /// The response with one more header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}
