//! HTTP ingress and the admin API (hyper), on two listeners.
//!
//! The **ingest listener** (`server.listen`, default `127.0.0.1:8080`) serves partner
//! systems: `POST /v1/sources/{source}` (with an API key holding `ingest:<source>` or
//! `ingest:*`, unless the source is declared `auth = "signature"`) and `/healthz`.
//! The **admin listener** (`server.admin_listen`, default `127.0.0.1:8081`) serves
//! operators: everything else, each route behind a scope ([`crate::auth`]); its POST
//! bodies are JSON (`415` otherwise), keys travel in headers, never cookies, so a web
//! page in an operator's browser cannot act on it. Every admin action and every
//! refused request is in the audit log with the key's id.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `POST /v1/sources/{source}` | `ingest:{source}` | hand the body to the source plugin; `202 {"accepted": [ids]}` once durable |
//! | `GET /healthz` | none | `200 {"status": "ok"}` (both listeners) |
//! | `GET /v1/messages/{id}` | `admin:read` | what happened to an accepted message: outcomes and what is still queued |
//! | `GET /v1/dlq` | `admin:read` | the dead letters, oldest first |
//! | `GET /v1/dlq/{id}` | `admin:read` | one dead letter: the message, its stage, every attempt |
//! | `POST /v1/dlq/{id}/redrive` | `admin:write` | back in front of its stage, on that stage's current plugin |
//! | `POST /v1/dlq/{id}/discard` | `admin:write` | forget it (its outcome stays) |
//! | `GET /v1/events?from=N&to=M` | `admin:read` | the event log between two offsets |
//! | `POST /v1/flows/{flow}/replay` | `admin:write` | `{"from": offset or RFC 3339 time, "to": ...}`: re-run accepted messages on the current plugins |
//! | `GET /v1/plugins` | `admin:read` | the live version of every plugin, since when, the last refused one, the one waiting for approval |
//! | `POST /v1/plugins/{name}/reload` | `admin:write` | load the version now in the plugin's directory (the watcher does this on its own) |
//! | `POST /v1/plugins/{name}/try` | `plugins:promote` | `{"candidate": dir, "flow": f, "limit": n}`: a candidate beside the live version on recorded messages, the differences |
//! | `POST /v1/plugins/{name}/promote` | `plugins:promote` | `{"candidate": dir}`: make it live (and write it into the plugin's directory) |
//! | `POST /v1/plugins/{name}/rollback` | `plugins:promote` | the previous version, from the archive, live again |
//! | `POST /v1/plugins/{name}/approve` | `plugins:promote` | `{"digest": d}`: the version waiting for approval (wider grants) goes live, if it is `d` |
//! | `GET /v1/audit?plugin=&key=&decision=&after=&limit=` | `admin:read` | the audit log |
//! | `GET /v1/keys` | `admin:read` | the API keys (never their tokens) |
//! | `POST /v1/keys` | `admin:write` | `{"name": n, "scopes": [...]}`: a new key (only scopes the caller holds); its token, once |
//! | `POST /v1/keys/{id}/revoke` | `admin:write` | the key stops working |
//!
//! Errors are `application/problem+json` (RFC 9457) naming the problem: `401` without
//! a valid key, `403` when the key lacks the route's scope.
//!
//! **Architecture invariant:** a 2xx is sent only after the messages are committed;
//! any failure before that is a 4xx/5xx and nothing was accepted.

use crate::audit::{AuditQuery, AuditRecord, Decision};
use crate::auth::{ApiKey, Scope};
use crate::model::MessageId;
use crate::runtime::{IngestError, Runtime};
use crate::sandbox::plugin::{CallError, Failure, RawRequest};
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
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Reply = Response<Full<Bytes>>;

/// Which of the two listeners a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Partner systems: `/v1/sources/*` and `/healthz`.
    Ingest,
    /// Operators: the admin API and `/healthz`.
    Admin,
}

/// Serve one plane on `listener` until `shutdown` turns true.
pub async fn serve(
    runtime: Arc<Runtime>,
    listener: TcpListener,
    plane: Plane,
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
                async move { Ok::<_, Infallible>(route(&runtime, req, plane, max_body).await) }
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

async fn route(
    runtime: &Arc<Runtime>,
    req: Request<Incoming>,
    plane: Plane,
    max_body: usize,
) -> Reply {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (plane, req.method(), segments.as_slice()) {
        (_, &Method::GET, ["healthz"]) if runtime.queue().healthy() => {
            json_reply(StatusCode::OK, &json!({"status": "ok"}))
        }
        (_, &Method::GET, ["healthz"]) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-failed",
            "Storage failed",
            "a commit failed; the database refuses writes until the process restarts \
             (nothing acknowledged is lost)"
                .into(),
        ),
        (Plane::Ingest, &Method::POST, ["v1", "sources", source]) => {
            let source = (*source).to_owned();
            if !runtime.source_signs(&source) {
                let wanted = Scope::Ingest(source.clone());
                if let Err(refused) = authorize(runtime, &req, &wanted) {
                    return refused.reply();
                }
            }
            ingest(runtime, &source, req, max_body).await
        }
        (Plane::Ingest, _, ["v1", "sources", _]) => {
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
        (Plane::Ingest, _, _) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!(
                "no route for {} {path} on the ingest listener (it serves /v1/sources/{{source}} and /healthz; the admin API has its own listener)",
                req.method()
            ),
        ),
        (Plane::Admin, _, _) => admin(runtime, req, max_body).await,
    }
}

/// The scope a route of the admin API needs; `None` for no such route.
fn admin_scope(method: &Method, segments: &[&str]) -> Option<Scope> {
    let read = matches!(
        segments,
        ["v1", "messages", _]
            | ["v1", "dlq"]
            | ["v1", "dlq", _]
            | ["v1", "events"]
            | ["v1", "plugins"]
            | ["v1", "audit"]
            | ["v1", "keys"]
    );
    match (method, segments) {
        (&Method::GET, _) if read => Some(Scope::AdminRead),
        (
            &Method::POST,
            ["v1", "dlq", _, "redrive" | "discard"]
            | ["v1", "flows", _, "replay"]
            | ["v1", "plugins", _, "reload"]
            | ["v1", "keys"]
            | ["v1", "keys", _, "revoke"],
        ) => Some(Scope::AdminWrite),
        (
            &Method::POST,
            [
                "v1",
                "plugins",
                _,
                "try" | "promote" | "rollback" | "approve",
            ],
        ) => Some(Scope::PluginsPromote),
        _ => None,
    }
}

/// The admin API: a key with the route's scope, JSON bodies, every action audited.
async fn admin(runtime: &Arc<Runtime>, req: Request<Incoming>, max_body: usize) -> Reply {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(scope) = admin_scope(&method, &segments) else {
        // Unknown routes answer 404 only to a valid key: no map of the API for others.
        if let Err(refused) = authenticate(runtime, &req) {
            return refused.reply();
        }
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no route for {method} {path}"),
        );
    };
    let key = match authorize(runtime, &req, &scope) {
        Ok(key) => key,
        Err(refused) => return refused.reply(),
    };
    if method == Method::POST && !json_body(&req) {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the admin API takes application/json bodies".into(),
        );
    }
    let reply = admin_route(runtime, req, &key, max_body).await;
    if method == Method::POST {
        audit_api(
            runtime,
            Some(&key.id),
            &format!("{method} {path}"),
            Decision::Allow,
            Some(format!("HTTP {}", reply.status().as_u16())),
        );
    }
    reply
}

/// Whether a request's body is JSON, or there is none.
fn json_body(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    let declared_empty = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    let no_body = declared_empty
        || (!headers.contains_key(CONTENT_LENGTH)
            && !headers.contains_key(hyper::header::TRANSFER_ENCODING));
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        }
        None => no_body,
    }
}

/// Why a request was refused before it reached its route.
#[derive(Debug)]
enum Refused {
    /// No `Authorization: Bearer` header.
    NoKey,
    /// A token that is not a live key's.
    UnknownKey,
    /// A live key without the route's scope.
    Scope {
        key: String,
        name: String,
        wanted: Scope,
    },
}

impl Refused {
    /// The 401 or 403 to answer.
    fn reply(self) -> Reply {
        match self {
            Refused::NoKey => {
                unauthorized("this endpoint needs an API key: `Authorization: Bearer <token>`")
            }
            Refused::UnknownKey => unauthorized("the API key is unknown or revoked"),
            Refused::Scope { key, name, wanted } => problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("key `{key}` ({name}) does not hold scope `{wanted}`"),
            ),
        }
    }
}

/// The live key a request's bearer token belongs to; a refusal is audited.
fn authenticate(runtime: &Runtime, req: &Request<Incoming>) -> Result<ApiKey, Refused> {
    let target = format!("{} {}", req.method(), req.uri().path());
    let Some(token) = crate::auth::bearer(req.headers()) else {
        audit_api(
            runtime,
            None,
            &target,
            Decision::Deny,
            Some("no API key".into()),
        );
        return Err(Refused::NoKey);
    };
    runtime.keys().verify(token).ok_or_else(|| {
        let reason = "unknown or revoked API key".to_owned();
        audit_api(runtime, None, &target, Decision::Deny, Some(reason));
        Refused::UnknownKey
    })
}

/// The request's key, if it holds `wanted`; a refusal is audited.
fn authorize(
    runtime: &Runtime,
    req: &Request<Incoming>,
    wanted: &Scope,
) -> Result<ApiKey, Refused> {
    let key = authenticate(runtime, req)?;
    if key.allows(wanted) {
        return Ok(key);
    }
    let target = format!("{} {}", req.method(), req.uri().path());
    let reason = format!("the key lacks scope `{wanted}`");
    audit_api(
        runtime,
        Some(&key.id),
        &target,
        Decision::Deny,
        Some(reason),
    );
    Err(Refused::Scope {
        key: key.id,
        name: key.name,
        wanted: wanted.clone(),
    })
}

fn unauthorized(detail: &str) -> Reply {
    let mut reply = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail.to_owned(),
    );
    reply.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tenon\""),
    );
    reply
}

/// Headers that carry credentials for Tenon itself, never passed to a source plugin.
const CREDENTIAL_HEADERS: [hyper::header::HeaderName; 3] = [
    hyper::header::AUTHORIZATION,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::COOKIE,
];

/// Requests refused without a valid key, recorded one by one up to
/// [`ANONYMOUS_PER_MINUTE`] a minute; the rest are counted in one record: anyone who
/// reaches a port must not be able to fill the audit log.
static ANONYMOUS: RefusalGate = RefusalGate {
    minute: AtomicU64::new(0),
    count: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

/// Anonymous refusals recorded one by one each minute.
const ANONYMOUS_PER_MINUTE: u64 = 60;

struct RefusalGate {
    minute: AtomicU64,
    count: AtomicU64,
    dropped: AtomicU64,
}

impl RefusalGate {
    /// Whether to record this refusal; with, when a minute ended with refusals left
    /// unrecorded, how many.
    fn admit(&self) -> (bool, u64) {
        let minute = crate::model::now_ms() / 60_000;
        let mut dropped_before = 0;
        if self.minute.swap(minute, Relaxed) != minute {
            self.count.store(0, Relaxed);
            dropped_before = self.dropped.swap(0, Relaxed);
        }
        if self.count.fetch_add(1, Relaxed) < ANONYMOUS_PER_MINUTE {
            (true, dropped_before)
        } else {
            self.dropped.fetch_add(1, Relaxed);
            (false, dropped_before)
        }
    }
}

/// Record an API action or refusal in the audit log.
fn audit_api(
    runtime: &Runtime,
    key: Option<&str>,
    target: &str,
    decision: Decision,
    reason: Option<String>,
) {
    let capability = match decision {
        Decision::Allow => "admin",
        Decision::Deny => "auth",
    };
    if key.is_none() && decision == Decision::Deny {
        let (admit, dropped) = ANONYMOUS.admit();
        if dropped > 0 {
            runtime.storage().audit().record(AuditRecord {
                seq: 0,
                at_ms: crate::model::now_ms(),
                plugin: String::new(),
                digest: String::new(),
                key: None,
                capability: "auth".into(),
                target: "requests without a valid key".into(),
                decision,
                reason: Some(format!(
                    "{dropped} more refused in the last minute, not recorded one by one"
                )),
            });
        }
        if !admit {
            tracing::debug!(target, "request without a valid key refused");
            return;
        }
    }
    runtime.storage().audit().record(AuditRecord {
        seq: 0,
        at_ms: crate::model::now_ms(),
        plugin: String::new(),
        digest: String::new(),
        key: key.map(str::to_owned),
        capability: capability.into(),
        target: target.chars().take(512).collect(),
        decision,
        reason,
    });
}

/// The admin API's routes, for a key that holds the route's scope.
async fn admin_route(
    runtime: &Arc<Runtime>,
    req: Request<Incoming>,
    key: &ApiKey,
    _max_body: usize,
) -> Reply {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["v1", "keys"]) => {
            json_reply(StatusCode::OK, &json!({ "keys": runtime.keys().list() }))
        }
        (&Method::POST, ["v1", "keys"]) => create_key(runtime, req, key).await,
        (&Method::POST, ["v1", "keys", id, "revoke"]) => match runtime.keys().revoke(id, Some(key))
        {
            Ok(revoked) => json_reply(StatusCode::OK, &json!({ "key": revoked })),
            Err(crate::auth::KeyError::Unknown(id)) => problem(
                StatusCode::NOT_FOUND,
                "unknown-key",
                "Unknown key",
                format!("no key with id `{id}`"),
            ),
            Err(error @ crate::auth::KeyError::Outranked { .. }) => problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                error.to_string(),
            ),
            Err(error) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Storage unavailable",
                error.to_string(),
            ),
        },
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
                key: param("key"),
                decision,
                after: param("after").and_then(|v| v.parse().ok()).unwrap_or(0),
                limit: param("limit").and_then(|v| v.parse().ok()),
            };
            match runtime.storage().audit_records(&query) {
                Ok(records) => json_reply(
                    StatusCode::OK,
                    &json!({
                        "records": records,
                        "dropped": runtime.storage().audit().dropped(),
                    }),
                ),
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
                "digest": runtime.config().digest(),
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
                action @ ("try" | "promote" | "rollback" | "approve"),
            ],
        ) => {
            let action = match *action {
                "try" => "try",
                "promote" => "promote",
                "approve" => "approve",
                _ => "rollback",
            };
            let name = (*name).to_owned();
            plugin_action(runtime.clone(), name, action, req, key.id.clone()).await
        }
        (&Method::POST, ["v1", "plugins", name, "reload"]) => {
            let name = (*name).to_owned();
            let (rt, work) = (runtime.clone(), name.clone());
            let result = tokio::task::spawn_blocking(move || rt.reload_plugin(&work))
                .await
                .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
            match result {
                Ok(reload) => json_reply(StatusCode::OK, &reload_json(&name, reload)),
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
        (&Method::GET, ["v1", "messages", id]) => match runtime.status(&MessageId::from(*id)) {
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

/// `POST /v1/keys`: a new key with scopes the caller holds; its token, once.
async fn create_key(runtime: &Runtime, req: Request<Incoming>, by: &ApiKey) -> Reply {
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
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewKey {
        #[serde(default)]
        name: Option<String>,
        scopes: Vec<Scope>,
    }
    let asked: NewKey = match serde_json::from_slice(&body) {
        Ok(asked) => asked,
        Err(error) => {
            return bad(format!(
                "expected {{\"name\": ..., \"scopes\": [...]}}: {error}"
            ));
        }
    };
    let name = asked.name.unwrap_or_else(|| "unnamed".into());
    match runtime.keys().create(&name, asked.scopes, Some(by)) {
        Ok((key, token)) => {
            tracing::info!(key = %key.id, by = %by.id, "API key created");
            json_reply(StatusCode::CREATED, &json!({ "key": key, "token": token }))
        }
        Err(error @ crate::auth::KeyError::Escalation { .. }) => problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            error.to_string(),
        ),
        Err(error @ crate::auth::KeyError::NoScope) => bad(error.to_string()),
        Err(error) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-unavailable",
            "Storage unavailable",
            error.to_string(),
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
    // Credentials are Tenon's, not the plugin's: an untrusted source never sees them.
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| !CREDENTIAL_HEADERS.contains(k))
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

fn event_json(event: &crate::model::Event) -> serde_json::Value {
    let mut out = json!({
        "offset": event.offset,
        "at_ms": event.at_ms,
        "flow": event.flow,
        "event": event.body.name(),
    });
    match &event.body {
        crate::model::EventBody::Accepted { envelope } => {
            out["id"] = json!(envelope.message.id);
            out["key"] = json!(envelope.message.key);
            out["body"] = body_as_json(&envelope.message);
        }
        crate::model::EventBody::Rejected {
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
    key: String,
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
    let task = tokio::task::spawn_blocking(move || {
        match (action, candidate, flow) {
        ("try", Some(candidate), Some(flow)) => handle
            .block_on(runtime.try_candidate(&name, &flow, &candidate, limit))
            .map(|results| json!({ "plugin": name, "flow": flow, "results": results })),
        ("try", _, _) => Err("`try` needs `candidate` (a plugin directory) and `flow`".to_owned()),
        ("promote", Some(candidate), _) => runtime
            .promote(&name, &candidate)
            .map(|r| reload_json(&name, r)),
        ("promote", None, _) => Err("`promote` needs `candidate` (a plugin directory)".to_owned()),
        ("approve", _, _) => match args["digest"].as_str() {
            Some(digest) => runtime
                .approve(&name, digest, &key)
                .map(|r| reload_json(&name, r)),
            None => Err(
                "`approve` needs `digest`: the digest of the version waiting, as `tenon status` shows it"
                    .to_owned(),
            ),
        },
        (_, _, _) => runtime.rollback(&name).map(|r| reload_json(&name, r)),
    }
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

fn reload_json(name: &str, reload: crate::runtime::slots::Reload) -> serde_json::Value {
    match reload {
        crate::runtime::slots::Reload::Swapped { from, to } => {
            json!({ "plugin": name, "swapped": true, "from": from, "to": to })
        }
        crate::runtime::slots::Reload::Unchanged => json!({ "plugin": name, "swapped": false }),
        crate::runtime::slots::Reload::Held { digest, widening } => json!({
            "plugin": name,
            "swapped": false,
            "pending": { "digest": digest, "widening": widening },
        }),
    }
}

fn dead_letter_summary(letter: &crate::model::DeadLetter) -> serde_json::Value {
    let error = match &letter.outcome.result {
        crate::model::OutcomeKind::DeadLetter { error } => error.clone(),
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

fn storage_problem(error: crate::store::StorageError) -> Reply {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        "Storage unavailable",
        error.to_string(),
    )
}

/// A message body as JSON for operators, whichever canonical encoding it travels in.
fn body_as_json(message: &crate::model::StoredMessage) -> serde_json::Value {
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
