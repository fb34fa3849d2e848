//! The ingest listener's source route: `POST /v1/sources/{source}`. The body goes to
//! the source plugin (without Tenon's credentials); `202` once its messages are
//! durable, or, for a source with `ack = "validated"`, `201`/`422` once its flows'
//! steps took them (`202` past the source's `ack_deadline_ms`).

use super::State;
use super::access::{CREDENTIAL_HEADERS, authorize};
use super::problem::{Answer, Problem, json};
use crate::api;
use crate::auth::Scope;
use crate::config::Ack;
use crate::runtime::Validation;
use crate::sandbox::plugin::RawRequest;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, StatusCode};
use std::time::Duration;

/// `POST /v1/sources/{source}`: with a key holding `ingest:{source}` (or `ingest:*`),
/// unless the source checks its senders' signatures itself.
pub(super) async fn ingest(state: &State, source: &str, req: Request<Incoming>) -> Answer {
    let runtime = &state.runtime;
    let config = runtime.config();
    if !runtime.source_signs(source) {
        let key = authorize(state, &req, &Scope::Ingest(source.to_owned()))?;
        state.limits.key(config.server.limits.per_key, &key.id)?;
    }
    let rate = config.plugins.get(source).and_then(|p| p.rate_limit);
    state.limits.source(rate, source)?;
    // Source calls at once are bounded: past the bound, come back in a second.
    let Ok(_slot) = state.ingest_slots.try_acquire() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "Busy",
            format!(
                "{} source calls are under way, the most this server takes at once: retry in a second",
                config.server.limits.max_concurrent_ingest
            ),
        )
        .retry_after(1));
    };
    let max_body = config.server.max_body_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the body is larger than the limit of {max_body} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(too_large());
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    // Credentials are Tenon's, not the plugin's: an untrusted source never sees them.
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| !CREDENTIAL_HEADERS.contains(k))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = super::read_body(state, req.into_body(), max_body)
        .await?
        .to_vec();
    let request = RawRequest {
        content_type,
        headers,
        body,
    };
    let ingested = runtime.ingest(source, request).await?;
    let entry = config.plugins.get(source);
    let validated = match entry {
        Some(e) if e.ack == Ack::Validated => {
            let deadline = Duration::from_millis(e.ack_deadline_ms);
            runtime.validation(&ingested.ids, deadline).await
        }
        _ => None,
    };
    let mut reply = match validated {
        None => json(
            StatusCode::ACCEPTED,
            &api::Accepted {
                accepted: ingested.ids,
            },
        ),
        Some(Validation::Passed(outputs)) => json(
            StatusCode::CREATED,
            &api::Validated {
                accepted: ingested.ids,
                outputs: outputs.iter().map(api::Output::of).collect(),
            },
        ),
        Some(Validation::Refused(reasons)) => {
            let ids: Vec<&str> = ingested.ids.iter().map(|id| id.as_str()).collect();
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                "Rejected by business rules",
                format!(
                    "accepted as {} and refused by the steps, for every reason listed (see /v1/messages/{{id}})",
                    ids.join(", ")
                ),
            )
            .with_reasons(reasons)
            .header("tenon-accepted", ids.join(", "))
            .reply()
        }
    };
    if !ingested.traceparent.is_empty()
        && let Ok(traceparent) = HeaderValue::from_str(&ingested.traceparent)
    {
        reply.headers_mut().insert("traceparent", traceparent);
    }
    if ingested.replayed {
        reply
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(reply)
}
