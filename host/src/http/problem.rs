//! Answers: JSON bodies, and errors as `application/problem+json` (RFC 9457). Every
//! error of the layers below is mapped to its HTTP status here, in one place.

use crate::api;
use crate::auth::KeyError;
use crate::runtime::IngestError;
use crate::runtime::lifecycle::LifecycleError;
use crate::sandbox::plugin::{CallError, Failure};
use crate::store::StoreError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// An HTTP answer.
pub type Reply = Response<Full<Bytes>>;

/// `body` as JSON with `status`.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!(r#"{{"error": "cannot serialise the answer: {e}"}}"#).into_bytes()
    });
    let mut reply = Response::new(Full::new(Bytes::from(bytes)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

/// An error answer under construction (boxed: it travels in every `Err`).
#[derive(Debug, Clone)]
pub struct Problem(Box<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    body: api::Problem,
    retry_after: Option<u64>,
    allow: Option<&'static str>,
    /// More headers (e.g. `RateLimit-Policy`).
    headers: Vec<(&'static str, String)>,
    /// A `401` asks for a bearer token.
    challenge: bool,
}

impl Problem {
    /// A problem of type `urn:tenon:problem:<slug>`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem(Box::new(Inner {
            body: api::Problem {
                kind: format!("urn:tenon:problem:{slug}"),
                title: title.to_owned(),
                status: status.as_u16(),
                detail: detail.into(),
                reasons: None,
            },
            retry_after: None,
            allow: None,
            headers: Vec::new(),
            challenge: false,
        }))
    }

    /// `401`: no valid API key; asks for one.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        let mut problem = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        );
        problem.0.challenge = true;
        problem
    }

    /// `400`: the request cannot be understood.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// `404`: no such thing.
    pub fn not_found(slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, slug, title, detail)
    }

    /// With every reason of a rejection.
    pub fn with_reasons(mut self, reasons: Vec<String>) -> Problem {
        self.0.body.reasons = Some(reasons);
        self
    }

    /// With a `Retry-After` (seconds).
    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.0.retry_after = Some(seconds);
        self
    }

    /// With a header.
    pub fn header(mut self, name: &'static str, value: String) -> Problem {
        self.0.headers.push((name, value));
        self
    }

    /// With an `Allow` header (a `405`).
    pub fn allow(mut self, methods: &'static str) -> Problem {
        self.0.allow = Some(methods);
        self
    }

    /// Its HTTP status.
    pub fn status(&self) -> u16 {
        self.0.body.status
    }

    /// The answer.
    pub fn reply(self) -> Reply {
        let Inner {
            body,
            retry_after,
            allow,
            headers: more,
            challenge,
        } = *self.0;
        let status = StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut reply = json(status, &body);
        let headers = reply.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        for (name, value) in more {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        if let Some(methods) = allow {
            headers.insert("allow", HeaderValue::from_static(methods));
        }
        if challenge {
            headers.insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tenon\""),
            );
        }
        reply
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        let retry = matches!(error, StoreError::CommitFailed(_));
        let problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-unavailable",
            "Storage unavailable",
            error.to_string(),
        );
        if retry {
            problem.retry_after(1)
        } else {
            problem
        }
    }
}

impl From<LifecycleError> for Problem {
    fn from(error: LifecycleError) -> Problem {
        let detail = error.to_string();
        match error {
            LifecycleError::UnknownPlugin(_) => {
                Problem::not_found("unknown-plugin", "Unknown plugin", detail)
            }
            LifecycleError::UnknownFlow(_) => {
                Problem::not_found("unknown-flow", "Unknown flow", detail)
            }
            LifecycleError::Refused(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "version-refused",
                "Refused",
                format!("{detail}; the live version keeps running"),
            ),
            LifecycleError::Conflict(_) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            LifecycleError::OutsideRoots(_) => Problem::new(
                StatusCode::FORBIDDEN,
                "outside-plugin-roots",
                "Outside the plugin roots",
                detail,
            ),
            LifecycleError::Store(error) => error.into(),
        }
    }
}

impl From<KeyError> for Problem {
    fn from(error: KeyError) -> Problem {
        let detail = error.to_string();
        match error {
            KeyError::Unknown(_) => Problem::not_found("unknown-key", "Unknown key", detail),
            KeyError::Escalation { .. } | KeyError::Outranked { .. } => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
            }
            KeyError::NoScope => Problem::bad_request(detail),
            KeyError::Random(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "host-error",
                "Host error",
                detail,
            ),
            KeyError::Store(error) => error.into(),
        }
    }
}

impl From<IngestError> for Problem {
    fn from(error: IngestError) -> Problem {
        match error {
            IngestError::IdempotencyConflict { key } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
                format!("the Idempotency-Key `{key}` was already used for a different payload"),
            ),
            IngestError::UnknownSource(name) => Problem::not_found(
                "unknown-source",
                "Unknown source",
                format!("no flow has source `{name}`"),
            ),
            IngestError::Plugin { plugin, error } => source_problem(&plugin, error),
            IngestError::Store(error) => {
                tracing::error!(%error, "ingress commit failed; nothing accepted");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "Storage unavailable",
                    format!("the messages could not be committed, nothing was accepted: {error}"),
                )
                .retry_after(1)
            }
        }
    }
}

/// How a source plugin's failure answers the sender.
fn source_problem(plugin: &str, error: CallError) -> Problem {
    match error {
        CallError::Failure(Failure::Invalid(detail)) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-payload",
            "Invalid payload",
            format!("source `{plugin}`: {detail}"),
        ),
        CallError::Failure(Failure::Rejected(reasons)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
            "Rejected by business rules",
            format!("source `{plugin}` rejected the payload"),
        )
        .with_reasons(reasons),
        CallError::Failure(Failure::Retryable(detail)) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "source-unavailable",
            "Source temporarily unavailable",
            format!("source `{plugin}`: {detail}"),
        )
        .retry_after(5),
        CallError::Timeout(d) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin-timeout",
            "Source plugin timed out",
            format!(
                "source `{plugin}` did not answer within {} ms",
                d.as_millis()
            ),
        ),
        CallError::Limit(detail) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin-limit",
            "Source plugin hit a limit",
            format!("source `{plugin}`: {detail}"),
        ),
        CallError::Denied(detail) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin-denied",
            "Source plugin was denied a capability",
            format!("source `{plugin}`: {detail}"),
        ),
        CallError::Trap(detail) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin-trap",
            "Source plugin failed",
            format!("source `{plugin}` trapped: {detail}"),
        ),
        CallError::Host(detail) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host-error",
            "Host error",
            format!("source `{plugin}`: {detail}"),
        ),
    }
}

/// An answer or a problem, for handlers written with `?`.
pub type Answer = Result<Reply, Problem>;

/// The answer of a handler: its reply, or its problem's.
pub fn respond(answer: Answer) -> Reply {
    answer.unwrap_or_else(Problem::reply)
}
