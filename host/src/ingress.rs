//! HTTP ingress and the admin API (hyper).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/sources/{source}` | hand the body to the source plugin; `202 {"accepted": [ids]}` once durable |
//! | `GET /v1/messages/{id}` | what happened to an accepted message: outcomes and what is still queued |
//! | `GET /v1/dlq` | the dead letters, oldest first |
//! | `GET /v1/dlq/{id}` | one dead letter: the message, its stage, every attempt |
//! | `POST /v1/dlq/{id}/redrive` | back in front of its stage, on that stage's current plugin |
//! | `POST /v1/dlq/{id}/discard` | forget it (its outcome stays) |
//! | `GET /v1/events?from=N&to=M` | the event log between two offsets |
//! | `POST /v1/flows/{flow}/replay` | `{"from": offset or RFC 3339 time, "to": ...}`: re-run accepted messages on the current plugins |
//! | `GET /v1/plugins` | the live version of every plugin, since when, the last refused version |
//! | `POST /v1/plugins/{name}/reload` | load the version now in the plugin's directory (the watcher does this on its own) |
//! | `POST /v1/plugins/{name}/try` | `{"candidate": dir, "flow": f, "limit": n}`: a candidate beside the live version on recorded messages, the differences |
//! | `POST /v1/plugins/{name}/promote` | `{"candidate": dir}`: make it live (and write it into the plugin's directory) |
//! | `POST /v1/plugins/{name}/rollback` | the previous version, from the archive, live again |
//! | `GET /healthz` | `200 {"status": "ok"}` |
//!
//! Errors are `application/problem+json` (RFC 9457) naming the problem.
//!
//! **Architecture invariant:** a 2xx is sent only after the messages are committed;
//! any failure before that is a 4xx/5xx and nothing was accepted.

use crate::audit::{AuditQuery, Decision};
use crate::plugin::{CallError, Failure, RawRequest};
use crate::runtime::{IngestError, Runtime};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Reply = Response<Full<Bytes>>;

/// Serve ingress and the admin API on `listener` until `shutdown` turns true.
pub async fn serve(
    runtime: Arc<Runtime>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_body = runtime.config().server.max_body_bytes;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(route(&runtime, req, max_body).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = conn {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

async fn route(runtime: &Arc<Runtime>, req: Request<Incoming>, max_body: usize) -> Reply {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) if runtime.queue().healthy() => {
            json_reply(StatusCode::OK, &json!({"status": "ok"}))
        }
        (&Method::GET, ["healthz"]) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-failed",
            "Storage failed",
            "a commit failed; the database refuses writes until the process restarts \
             (nothing acknowledged is lost)"
                .into(),
        ),
        (&Method::POST, ["v1", "sources", source]) => {
            let source = (*source).to_owned();
            ingest(runtime, &source, req, max_body).await
        }
        (_, ["v1", "sources", _]) => {
            let mut reply = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("{} is not allowed on {path}; use POST", req.method()),
            );
            reply
                .headers_mut()
                .insert("allow", HeaderValue::from_static("POST"));
            reply
        }
        (&Method::GET, ["v1", "audit"]) => {
            let param = |name: &str| query_param(&req, name);
            let decision = match param("decision").as_deref() {
                None => None,
                Some("allow") => Some(Decision::Allow),
                Some("deny") => Some(Decision::Deny),
                Some(other) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "bad-query",
                        "Bad query",
                        format!("decision must be `allow` or `deny`, not `{other}`"),
                    );
                }
            };
            let query = AuditQuery {
                plugin: param("plugin"),
                decision,
                after: param("after").and_then(|v| v.parse().ok()).unwrap_or(0),
                limit: param("limit").and_then(|v| v.parse().ok()),
            };
            match runtime.storage().audit_records(&query) {
                Ok(records) => json_reply(StatusCode::OK, &json!({ "records": records })),
                Err(error) => storage_problem(error),
            }
        }
        (&Method::GET, ["v1", "events"]) => {
            let param = |name: &str| query_param(&req, name);
            let from = param("from").and_then(|v| v.parse().ok()).unwrap_or(1);
            let to = param("to").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            match runtime.queue().events(from, to) {
                Ok(events) => json_reply(
                    StatusCode::OK,
                    &json!({ "events": events.iter().map(event_json).collect::<Vec<_>>() }),
                ),
                Err(error) => storage_problem(error),
            }
        }
        (&Method::POST, ["v1", "flows", flow, "replay"]) => {
            let flow = (*flow).to_owned();
            replay(runtime, &flow, req).await
        }
        (&Method::GET, ["v1", "plugins"]) => {
            let config = json!({
                "path": runtime.config().path,
                "refused": runtime.config_refused(),
                "flows": runtime.flows().into_iter().map(|f| f.name).collect::<Vec<_>>(),
            });
            json_reply(
                StatusCode::OK,
                &json!({ "plugins": runtime.plugin_status(), "config": config }),
            )
        }
        (
            &Method::POST,
            [
                "v1",
                "plugins",
                name,
                action @ ("try" | "promote" | "rollback"),
            ],
        ) => {
            let action = match *action {
                "try" => "try",
                "promote" => "promote",
                _ => "rollback",
            };
            let name = (*name).to_owned();
            plugin_action(runtime.clone(), name, action, req).await
        }
        (&Method::POST, ["v1", "plugins", name, "reload"]) => {
            let name = (*name).to_owned();
            let (rt, work) = (runtime.clone(), name.clone());
            let result = tokio::task::spawn_blocking(move || rt.reload_plugin(&work))
                .await
                .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
            match result {
                Ok(crate::swap::Reload::Swapped { from, to }) => json_reply(
                    StatusCode::OK,
                    &json!({ "plugin": name, "swapped": true, "from": from, "to": to }),
                ),
                Ok(crate::swap::Reload::Unchanged) => {
                    json_reply(StatusCode::OK, &json!({ "plugin": name, "swapped": false }))
                }
                Err(reason) => problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "version-refused",
                    "New version refused",
                    format!("plugin `{name}`: {reason}; the live version keeps running"),
                ),
            }
        }
        (&Method::GET, ["v1", "dlq"]) => match runtime.queue().dead_letters() {
            Ok(letters) => json_reply(
                StatusCode::OK,
                &json!({ "dead_letters": letters.iter().map(dead_letter_summary).collect::<Vec<_>>() }),
            ),
            Err(error) => storage_problem(error),
        },
        (&Method::GET, ["v1", "dlq", id]) => match runtime.queue().dead_letter(id) {
            Ok(Some(letter)) => {
                let mut body = dead_letter_summary(&letter);
                body["attempts"] = json!(letter.outcome.attempts);
                body["trail"] = json!(letter.outcome.trail);
                body["body"] = body_as_json(&letter.envelope.message);
                json_reply(StatusCode::OK, &body)
            }
            Ok(None) => no_dead_letter(id),
            Err(error) => storage_problem(error),
        },
        (&Method::POST, ["v1", "dlq", id, action @ ("redrive" | "discard")]) => {
            let done = match *action {
                "redrive" => runtime.queue().redrive(id).await,
                _ => runtime.queue().discard(id).await,
            };
            match done {
                Ok(true) => {
                    tracing::info!(id, action, "dead letter handled by operator");
                    json_reply(StatusCode::OK, &json!({ "id": id, "done": action }))
                }
                Ok(false) => no_dead_letter(id),
                Err(error) => storage_problem(error),
            }
        }
        (&Method::GET, ["v1", "messages", id]) => match runtime.status(id) {
            Ok(status) if status.outcomes.is_empty() && status.pending.is_empty() => problem(
                StatusCode::NOT_FOUND,
                "unknown-message",
                "Unknown message",
                format!("no message with id `{id}`"),
            ),
            Ok(status) => json_reply(
                StatusCode::OK,
                &json!({
                    "id": id,
                    "settled": status.is_settled(),
                    "outcomes": status.outcomes,
                    "pending": status.pending.iter().map(|e| json!({
                        "id": e.message.id,
                        "key": e.message.key,
                        "kind": e.message.kind,
                        "flow": e.flow,
                        "stage": e.stage,
                        "attempts": e.attempts,
                        "body": body_as_json(&e.message),
                    })).collect::<Vec<_>>(),
                }),
            ),
            Err(error) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Storage unavailable",
                error.to_string(),
            ),
        },
        _ => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no route for {} {path}", req.method()),
        ),
    }
}

async fn ingest(runtime: &Runtime, source: &str, req: Request<Incoming>, max_body: usize) -> Reply {
    let too_large = || {
        problem(
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
        return too_large();
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable body",
                format!("cannot read the request body: {error}"),
            );
        }
    };
    let request = RawRequest {
        content_type,
        headers,
        body,
    };
    match runtime.ingest(source, request).await {
        Ok(ingested) => {
            let mut reply = json_reply(StatusCode::ACCEPTED, &json!({ "accepted": ingested.ids }));
            if ingested.replayed {
                reply
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            reply
        }
        Err(IngestError::IdempotencyConflict { key }) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            format!("the Idempotency-Key `{key}` was already used for a different payload"),
        ),
        Err(IngestError::UnknownSource(name)) => problem(
            StatusCode::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            format!("no flow has source `{name}`"),
        ),
        Err(IngestError::Plugin { plugin, error }) => plugin_problem(&plugin, error),
        Err(IngestError::Storage(error)) => {
            tracing::error!(%error, "ingress commit failed; nothing accepted");
            let mut reply = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Storage unavailable",
                format!("the messages could not be committed, nothing was accepted: {error}"),
            );
            reply
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            reply
        }
    }
}

/// The value of a query parameter (no percent-decoding: names and numbers only).
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
}

fn plugin_problem(plugin: &str, error: CallError) -> Reply {
    match error {
        CallError::Failure(Failure::Invalid(detail)) => problem(
            StatusCode::BAD_REQUEST,
            "invalid-payload",
            "Invalid payload",
            format!("source `{plugin}`: {detail}"),
        ),
        CallError::Failure(Failure::Rejected(reasons)) => {
            let mut body = problem_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                "Rejected by business rules",
                format!("source `{plugin}` rejected the payload"),
            );
            body["reasons"] = json!(reasons);
            json_problem(StatusCode::UNPROCESSABLE_ENTITY, &body)
        }
        CallError::Failure(Failure::Retryable(detail)) => {
            let mut reply = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "source-unavailable",
                "Source temporarily unavailable",
                format!("source `{plugin}`: {detail}"),
            );
            reply
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            reply
        }
        CallError::Timeout(d) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin-timeout",
            "Source plugin timed out",
            format!(
                "source `{plugin}` did not answer within {} ms",
                d.as_millis()
            ),
        ),
        CallError::Limit(detail) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin-limit",
            "Source plugin hit a limit",
            format!("source `{plugin}`: {detail}"),
        ),
        CallError::Denied(detail) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin-denied",
            "Source plugin was denied a capability",
            format!("source `{plugin}`: {detail}"),
        ),
        CallError::Trap(detail) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin-trap",
            "Source plugin failed",
            format!("source `{plugin}` trapped: {detail}"),
        ),
        CallError::Host(detail) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host-error",
            "Host error",
            format!("source `{plugin}`: {detail}"),
        ),
    }
}

async fn replay(runtime: &Runtime, flow: &str, req: Request<Incoming>) -> Reply {
    let bad = |detail: String| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad-replay",
            "Bad replay request",
            detail,
        )
    };
    if !runtime.flows().iter().any(|f| f.name == flow) {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown-flow",
            "Unknown flow",
            format!("no flow named `{flow}`"),
        );
    }
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return bad(format!("cannot read the request: {error}")),
    };
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(error) => return bad(format!("the body is not JSON: {error}")),
    };
    let bound = |name: &str, default: u64, end: bool| -> Result<u64, String> {
        let Some(value) = request.get(name) else {
            return Ok(default);
        };
        let text = value
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        if let Ok(offset) = text.parse::<u64>() {
            return Ok(offset);
        }
        let time = tenon_model::chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| {
            format!("`{name}`: `{text}` is neither an offset nor an RFC 3339 time: {e}")
        })?;
        let ms = time.timestamp_millis().max(0) as u64;
        // `from` a time: the first event at or after it; `to` a time: the last before it.
        let at = if end { ms + 1 } else { ms };
        let first = runtime.queue().offset_at(at).map_err(|e| e.to_string())?;
        Ok(match (first, end) {
            (Some(offset), false) => offset,
            (Some(offset), true) => offset.saturating_sub(1),
            (None, _) => u64::MAX,
        })
    };
    let (from, to) = match (bound("from", 1, false), bound("to", u64::MAX, true)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let route = runtime
        .flows()
        .into_iter()
        .find(|f| f.name == flow)
        .map(|f| f.stages)
        .unwrap_or_default();
    match runtime.queue().replay(flow, &route, from, to).await {
        Ok(offsets) => {
            tracing::info!(flow, from, to, replayed = offsets.len(), "replay");
            json_reply(
                StatusCode::OK,
                &json!({ "flow": flow, "replayed": offsets.len(), "offsets": offsets }),
            )
        }
        Err(error) => storage_problem(error),
    }
}

fn event_json(event: &crate::events::Event) -> serde_json::Value {
    let mut out = json!({
        "offset": event.offset,
        "at_ms": event.at_ms,
        "flow": event.flow,
        "event": event.body.name(),
    });
    match &event.body {
        crate::events::EventBody::Accepted { envelope } => {
            out["id"] = json!(envelope.message.id);
            out["key"] = json!(envelope.message.key);
            out["body"] = body_as_json(&envelope.message);
        }
        crate::events::EventBody::Rejected {
            id,
            key,
            plugin,
            reasons,
            ..
        } => {
            out["id"] = json!(id);
            out["key"] = json!(key);
            out["plugin"] = json!(plugin);
            out["reasons"] = json!(reasons);
        }
    }
    out
}

async fn plugin_action(
    runtime: Arc<Runtime>,
    name: String,
    action: &'static str,
    req: Request<Incoming>,
) -> Reply {
    let bad = |detail: String| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    };
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return bad(format!("cannot read the request: {error}")),
    };
    let args: serde_json::Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(error) => return bad(format!("the body is not JSON: {error}")),
        }
    };
    let candidate = args["candidate"].as_str().map(std::path::PathBuf::from);
    let flow = args["flow"].as_str().map(str::to_owned);
    let limit = args["limit"].as_u64().unwrap_or(20) as usize;
    // Loading compiles: off the async workers.
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || match (action, candidate, flow) {
        ("try", Some(candidate), Some(flow)) => handle
            .block_on(runtime.try_candidate(&name, &flow, &candidate, limit))
            .map(|results| json!({ "plugin": name, "flow": flow, "results": results })),
        ("try", _, _) => Err("`try` needs `candidate` (a plugin directory) and `flow`".to_owned()),
        ("promote", Some(candidate), _) => runtime
            .promote(&name, &candidate)
            .map(|r| reload_json(&name, r)),
        ("promote", None, _) => Err("`promote` needs `candidate` (a plugin directory)".to_owned()),
        (_, _, _) => runtime.rollback(&name).map(|r| reload_json(&name, r)),
    });
    match task.await {
        Ok(Ok(body)) => json_reply(StatusCode::OK, &body),
        Ok(Err(reason)) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin-action-refused",
            "Refused",
            reason,
        ),
        Err(error) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host-error",
            "Host error",
            error.to_string(),
        ),
    }
}

fn reload_json(name: &str, reload: crate::swap::Reload) -> serde_json::Value {
    match reload {
        crate::swap::Reload::Swapped { from, to } => {
            json!({ "plugin": name, "swapped": true, "from": from, "to": to })
        }
        crate::swap::Reload::Unchanged => json!({ "plugin": name, "swapped": false }),
    }
}

fn dead_letter_summary(letter: &crate::queue::DeadLetter) -> serde_json::Value {
    let error = match &letter.outcome.result {
        crate::queue::OutcomeKind::DeadLetter { error } => error.clone(),
        other => format!("{other:?}"),
    };
    json!({
        "id": letter.outcome.id,
        "root": letter.outcome.root,
        "flow": letter.outcome.flow,
        "stage": letter.envelope.stage,
        "plugin": letter.outcome.plugin,
        "digest": letter.outcome.attempts.last().map(|a| a.digest.clone()),
        "key": letter.outcome.key,
        "kind": letter.outcome.kind,
        "at_ms": letter.outcome.at_ms,
        "attempt_count": letter.outcome.attempts.len(),
        "error": error,
    })
}

fn no_dead_letter(id: &str) -> Reply {
    problem(
        StatusCode::NOT_FOUND,
        "unknown-dead-letter",
        "Unknown dead letter",
        format!("no dead letter with id `{id}`"),
    )
}

fn storage_problem(error: crate::storage::StorageError) -> Reply {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        "Storage unavailable",
        error.to_string(),
    )
}

/// A message body as JSON for operators, whichever canonical encoding it travels in.
fn body_as_json(message: &crate::queue::StoredMessage) -> serde_json::Value {
    tenon_model::Encoding::from_content_type(&message.content_type)
        .ok()
        .and_then(|enc| enc.decode::<serde_json::Value>(&message.body).ok())
        .unwrap_or_else(
            || json!({ "undecodable": message.content_type, "bytes": message.body.len() }),
        )
}

fn problem_body(status: StatusCode, slug: &str, title: &str, detail: String) -> serde_json::Value {
    json!({
        "type": format!("urn:tenon:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    })
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: String) -> Reply {
    json_problem(status, &problem_body(status, slug, title, detail))
}

fn json_problem(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut reply = json_reply(status, body);
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    reply
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}
