//! The admin API, on its own listener: every route behind a scope, `POST` bodies JSON
//! only (`415` otherwise), every action audited with the key's id. Requests and
//! answers are the types of [`crate::api`].

use super::State;
use super::access::{audit_api, authenticate, authorize, json_body};
use super::problem::{Answer, Problem, json};
use crate::api;
use crate::auth::{ApiKey, Scope};
use crate::model::{
    DeadLetter, Directive, Event, EventBody, MessageId, OutcomeKind, StoredMessage,
};
use crate::runtime::Reload;
use crate::store::audit::{AuditQuery, Decision};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// The scope a route of the admin API needs ([`super::routes::ROUTES`]); `None` for
/// no such route.
fn scope_of(method: &Method, segments: &[&str]) -> Option<Scope> {
    super::routes::route_of(super::Plane::Admin, method, segments)
        .and_then(|route| route.access.scope())
}

/// A request to the admin API: a key with the route's scope, a JSON body, an audit
/// record of every action.
pub(super) async fn admin(state: &Arc<State>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(scope) = scope_of(&method, &segments) else {
        // Unknown routes answer 404 only to a valid key: no map of the API for others.
        authenticate(state, &req)?;
        return Err(Problem::not_found(
            "not-found",
            "Not found",
            format!("no route for {method} {path}"),
        ));
    };
    let key = authorize(state, &req, &scope)?;
    let per_key = state.runtime.config().server.limits.per_key;
    state.limits.key(per_key, &key.id)?;
    if method == Method::POST && !json_body(&req) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the admin API takes application/json bodies",
        ));
    }
    let answer = route(state, req, &key).await;
    if method == Method::POST {
        let status = match &answer {
            Ok(reply) => reply.status().as_u16(),
            Err(problem) => problem.status(),
        };
        audit_api(
            state,
            Some(&key.id),
            &format!("{method} {path}"),
            Decision::Allow,
            Some(format!("HTTP {status}")),
        );
    }
    answer
}

/// The admin routes, for a key that holds the route's scope.
async fn route(state: &Arc<State>, req: Request<Incoming>, key: &ApiKey) -> Answer {
    let runtime = &state.runtime;
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["v1", "keys"]) => Ok(json(
            StatusCode::OK,
            &api::Keys {
                keys: state.keys.list(),
            },
        )),
        (&Method::POST, ["v1", "keys"]) => {
            let asked: api::NewKey = body(state, req).await?;
            let name = asked.name.unwrap_or_else(|| "unnamed".into());
            let (key, token) = state.keys.create(&name, asked.scopes, Some(key))?;
            tracing::info!(key = %key.id, "API key created");
            Ok(json(StatusCode::CREATED, &api::KeyCreated { key, token }))
        }
        (&Method::POST, ["v1", "keys", id, "revoke"]) => {
            let key = state.keys.revoke(id, Some(key))?;
            Ok(json(StatusCode::OK, &api::KeyRevoked { key }))
        }
        (&Method::GET, ["v1", "audit"]) => {
            let param = |name: &str| query_param(&req, name);
            let decision = match param("decision").as_deref() {
                None => None,
                Some("allow") => Some(Decision::Allow),
                Some("deny") => Some(Decision::Deny),
                Some(other) => {
                    return Err(Problem::bad_request(format!(
                        "decision must be `allow` or `deny`, not `{other}`"
                    )));
                }
            };
            let query = AuditQuery {
                plugin: param("plugin"),
                key: param("key"),
                decision,
                after: param("after").and_then(|v| v.parse().ok()).unwrap_or(0),
                limit: param("limit").and_then(|v| v.parse().ok()),
            };
            let node = runtime.node();
            let records = node.audit_records(&query)?;
            let dropped = node.audit().dropped();
            Ok(json(StatusCode::OK, &api::Audit { records, dropped }))
        }
        (&Method::GET, ["v1", "events"]) => {
            let param = |name: &str| query_param(&req, name);
            let from = param("from").and_then(|v| v.parse().ok()).unwrap_or(1);
            let to = param("to").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            let events = runtime.store().events(from, to).await?;
            Ok(json(
                StatusCode::OK,
                &api::Events {
                    events: events.iter().map(event_view).collect(),
                },
            ))
        }
        (&Method::POST, ["v1", "flows", flow, "replay"]) => {
            let flow = (*flow).to_owned();
            let asked: api::Replay = body(state, req).await?;
            replay(state, &flow, asked).await
        }
        (&Method::GET, ["v1", "plugins"]) => {
            let config = runtime.config();
            let nodes = runtime.nodes().await?;
            Ok(json(
                StatusCode::OK,
                &api::Plugins {
                    plugins: runtime.plugin_status(),
                    config: api::ConfigStatus {
                        path: config.path.clone(),
                        digest: config.digest(),
                        refused: runtime.config_refused(),
                        flows: runtime.flows().into_iter().map(|f| f.name).collect(),
                    },
                    nodes,
                },
            ))
        }
        (&Method::POST, ["v1", "plugins", name, action]) => {
            let (name, action) = ((*name).to_owned(), (*action).to_owned());
            let asked: api::PluginAction = body(state, req).await?;
            plugin_action(runtime.clone(), name, action, asked, key.id.clone()).await
        }
        (&Method::GET, ["v1", "dlq"]) => {
            // A page at a time, oldest first: the listing reads what it returns.
            let limit = match query_param(&req, "limit") {
                None => DLQ_PAGE,
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=DLQ_PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_request(format!(
                            "`limit` is a number from 1 to {DLQ_PAGE_MAX}, not `{v}`"
                        ))
                    })?,
            };
            let after = match query_param(&req, "after") {
                None => None,
                Some(cursor) => Some(
                    cursor
                        .split_once(':')
                        .and_then(|(at, id)| Some((at.parse::<u64>().ok()?, MessageId::from(id))))
                        .ok_or_else(|| {
                            Problem::bad_request(format!(
                                "`after` is the `next` of the previous page (`<at_ms>:<id>`), not `{cursor}`"
                            ))
                        })?,
                ),
            };
            let letters = runtime
                .store()
                .dead_letters_page(after.as_ref().map(|(at, id)| (*at, id)), limit)
                .await?;
            let next = (letters.len() == limit)
                .then(|| letters.last())
                .flatten()
                .map(|d| format!("{}:{}", d.outcome.at_ms, d.outcome.id));
            Ok(json(
                StatusCode::OK,
                &api::DeadLetters {
                    dead_letters: letters.iter().map(dead_letter_summary).collect(),
                    next,
                },
            ))
        }
        (&Method::GET, ["v1", "dlq", id]) => {
            let id = MessageId::from(*id);
            let letter = runtime
                .store()
                .dead_letter(&id)
                .await?
                .ok_or_else(|| no_dead_letter(&id))?;
            Ok(json(
                StatusCode::OK,
                &api::DeadLetterDetail {
                    summary: dead_letter_summary(&letter),
                    attempts: letter.outcome.attempts.clone(),
                    trail: letter.outcome.trail.clone(),
                    body: body_as_json(&letter.envelope.message),
                },
            ))
        }
        (&Method::POST, ["v1", "dlq", id, action @ ("redrive" | "discard")]) => {
            let id = MessageId::from(*id);
            let done = match *action {
                "redrive" => runtime.store().redrive(&id).await?,
                _ => runtime.store().discard(&id).await?,
            };
            if !done {
                return Err(no_dead_letter(&id));
            }
            tracing::info!(%id, action, "dead letter handled by operator");
            Ok(json(
                StatusCode::OK,
                &api::DeadLetterHandled {
                    id,
                    done: (*action).to_owned(),
                },
            ))
        }
        (&Method::GET, ["v1", "reconciliations"]) => {
            let last = runtime.reconciliations();
            let config = runtime.config();
            Ok(json(
                StatusCode::OK,
                &api::Reconciliations {
                    reconciliations: config
                        .reconciliations
                        .iter()
                        .map(|(name, entry)| api::ReconciliationStatus {
                            name: name.clone(),
                            erp: entry.erp.get_ref().clone(),
                            billing: entry.billing.iter().map(|k| k.get_ref().clone()).collect(),
                            every_secs: entry.every_secs,
                            window_days: entry.window_days,
                            last: last.get(name).cloned(),
                        })
                        .collect(),
                },
            ))
        }
        (&Method::POST, ["v1", "reconciliations", name, "run"]) => {
            let name = (*name).to_owned();
            let asked: api::Reconcile = body(state, req).await?;
            reconcile(state, &name, asked).await
        }
        (&Method::GET, ["v1", "drift"]) => {
            let last = runtime.drift_reports();
            let config = runtime.config();
            Ok(json(
                StatusCode::OK,
                &api::DriftChecks {
                    checks: config
                        .drift
                        .iter()
                        .map(|(name, entry)| api::DriftCheckStatus {
                            name: name.clone(),
                            target: entry.target.get_ref().clone(),
                            every_secs: entry.every_secs,
                            last: last.get(name).cloned(),
                        })
                        .collect(),
                },
            ))
        }
        (&Method::POST, ["v1", "drift", name, "run"]) => {
            use crate::runtime::drift::DriftError;
            match runtime.check_drift(name).await {
                Ok(report) => Ok(json(StatusCode::OK, &report)),
                Err(DriftError::Unknown(name)) => Err(Problem::not_found(
                    "unknown-drift-check",
                    "Unknown drift check",
                    format!("no drift check named `{name}` in the config"),
                )),
                Err(error @ DriftError::Target { .. }) => Err(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "target-unreadable",
                    "The target could not be read",
                    error.to_string(),
                )),
                Err(DriftError::Store(error)) => Err(error.into()),
            }
        }
        (&Method::GET, ["v1", "exceptions"]) => {
            let held = runtime.exceptions().await?;
            Ok(json(
                StatusCode::OK,
                &api::Exceptions {
                    exceptions: held.iter().map(exception_summary).collect(),
                },
            ))
        }
        (&Method::GET, ["v1", "exceptions", id]) => {
            let id = MessageId::from(*id);
            let held = runtime
                .exception(&id)
                .await?
                .ok_or_else(|| no_exception(&id))?;
            Ok(json(
                StatusCode::OK,
                &api::ExceptionDetail {
                    summary: exception_summary(&held),
                    attempts: held.outcome.attempts.clone(),
                    trail: held.outcome.trail.clone(),
                    body: body_as_json(&held.envelope.message),
                },
            ))
        }
        (&Method::POST, ["v1", "exceptions", id, decision @ ("approve" | "reject")]) => {
            let id = MessageId::from(*id);
            let decision = (*decision).to_owned();
            let asked: api::Decide = body(state, req).await?;
            let (by, note) = (key.id.clone(), asked.note);
            let held = runtime
                .exception(&id)
                .await?
                .ok_or_else(|| no_exception(&id))?;
            let waives = match held.outcome.result {
                OutcomeKind::Held { rule, .. } => rule,
                _ => String::new(),
            };
            let directive = match decision.as_str() {
                "approve" => Directive::Approve {
                    by: by.clone(),
                    note,
                    waives,
                },
                _ => Directive::Reject {
                    by: by.clone(),
                    note,
                },
            };
            if !runtime.decide(&id, directive).await? {
                return Err(no_exception(&id));
            }
            tracing::info!(%id, %decision, %by, "exception decided");
            Ok(json(StatusCode::OK, &api::Decided { id, decision, by }))
        }
        (&Method::GET, ["v1", "schemas"]) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "schemas": tenon_model::CANONICAL
                    .iter()
                    .map(|(kind, model)| serde_json::json!({
                        "kind": kind,
                        "model": model,
                        "version": tenon_model::MODEL_VERSION,
                        "url": format!("/v1/schemas/{kind}/{}", tenon_model::MODEL_VERSION),
                    }))
                    .collect::<Vec<_>>()
            }),
        )),
        (&Method::GET, ["v1", "schemas", kind, version]) => {
            match tenon_model::schema(kind, version) {
                Some(mut schema) => {
                    schema["$id"] = format!("urn:tenon:schema:{kind}:{version}").into();
                    let mut reply = json(StatusCode::OK, &schema);
                    reply.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/schema+json"),
                    );
                    Ok(reply)
                }
                None => Err(Problem::not_found(
                    "unknown-schema",
                    "Unknown schema",
                    format!(
                        "no canonical model `{kind}` at version `{version}`; there are: {}",
                        tenon_model::CANONICAL
                            .iter()
                            .map(|(k, _)| format!("{k}/{}", tenon_model::MODEL_VERSION))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        (&Method::GET, ["v1", "openapi.json"]) => Ok(json(
            StatusCode::OK,
            &super::routes::openapi(&state.runtime.config().apis),
        )),
        (&Method::GET, ["metrics"]) => {
            let text = runtime.metrics_text().await?;
            let mut reply =
                hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
            reply.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            Ok(reply)
        }
        (&Method::GET, ["v1", "kpis"]) => {
            let now = crate::model::now_ms();
            let bound = |name: &str, default: u64| -> Result<u64, Problem> {
                match query_param(&req, name) {
                    None => Ok(default),
                    Some(text) => time_bound(&text).ok_or_else(|| {
                        Problem::bad_request(format!(
                                "`{name}={text}`: give ms since the Unix epoch, an RFC 3339 time, or a span back from now (`15m`, `24h`, `7d`)"
                            ),
                        )
                    }),
                }
            };
            let from = bound("from", now.saturating_sub(24 * 3_600_000))?;
            let to = bound("to", now.saturating_add(1))?;
            if from >= to {
                return Err(Problem::bad_request(format!(
                    "the window is empty: from {from} is not before to {to}"
                )));
            }
            Ok(json(StatusCode::OK, &runtime.kpis(from, to).await?))
        }
        (&Method::GET, ["v1", "trace", key]) => {
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .into_owned();
            let trace = runtime.business_trace(&key).await?;
            if trace.timeline.is_empty() && trace.pending.is_empty() {
                return Err(Problem::not_found(
                    "unknown-key",
                    "Unknown business key",
                    format!("no message kept has key or reference `{key}`"),
                ));
            }
            Ok(json(StatusCode::OK, &trace))
        }
        (&Method::GET, ["v1", "messages", id]) => {
            let id = MessageId::from(*id);
            let status = runtime.status(&id).await?;
            if status.outcomes.is_empty() && status.pending.is_empty() {
                return Err(Problem::not_found(
                    "unknown-message",
                    "Unknown message",
                    format!("no message with id `{id}`"),
                ));
            }
            Ok(json(
                StatusCode::OK,
                &api::MessageStatus {
                    settled: status.is_settled(),
                    pending: status
                        .pending
                        .iter()
                        .map(|e| api::Pending {
                            id: e.message.id.clone(),
                            key: e.message.key.clone(),
                            kind: e.message.kind.clone(),
                            flow: e.flow.clone(),
                            stage: e.stage,
                            attempts: e.attempts.clone(),
                            body: body_as_json(&e.message),
                        })
                        .collect(),
                    outcomes: status.outcomes,
                    id,
                },
            ))
        }
        _ => Err(Problem::not_found(
            "not-found",
            "Not found",
            format!("no route for {} {path}", req.method()),
        )),
    }
}

/// The request's JSON body as `T` (an empty body reads as `{}`).
async fn body<T: DeserializeOwned>(state: &State, req: Request<Incoming>) -> Result<T, Problem> {
    let bytes = super::read_body(state, req.into_body(), MAX_ADMIN_BODY).await?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("the body: {e}")))
}

/// `POST /v1/reconciliations/{name}/run`.
async fn reconcile(state: &State, name: &str, asked: api::Reconcile) -> Answer {
    use crate::runtime::reconcile::ReconcileError;
    use tenon_model::chrono::NaiveDate;
    let runtime = &state.runtime;
    let window = runtime
        .config()
        .reconciliations
        .get(name)
        .map(|r| r.window_days)
        .ok_or_else(|| {
            Problem::not_found(
                "unknown-reconciliation",
                "Unknown reconciliation",
                format!("no reconciliation named `{name}` in the config"),
            )
        })?;
    let day = |field: &str, text: &str| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            Problem::bad_request(format!(
                "`{field}` is a day, e.g. `2026-11-01`, not `{text}`"
            ))
        })
    };
    let today = tenon_model::chrono::DateTime::from_timestamp_millis(crate::model::now_ms() as i64)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    let until = match &asked.until {
        Some(text) => day("until", text)?,
        None => today,
    };
    let since = match &asked.since {
        Some(text) => day("since", text)?,
        None => until
            .checked_sub_days(tenon_model::chrono::Days::new(u64::from(
                window.saturating_sub(1),
            )))
            .ok_or_else(|| {
                Problem::bad_request(format!("no window of {window} days ends on {until}"))
            })?,
    };
    match runtime.reconcile(name, since, until).await {
        Ok(report) => Ok(json(StatusCode::OK, &report)),
        Err(ReconcileError::Window(why)) => Err(Problem::bad_request(why)),
        Err(ReconcileError::Unknown(name)) => Err(Problem::not_found(
            "unknown-reconciliation",
            "Unknown reconciliation",
            format!("no reconciliation named `{name}` in the config"),
        )),
        Err(error @ ReconcileError::Erp { .. }) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "erp-unreadable",
            "The ERP could not be read",
            error.to_string(),
        )),
        Err(ReconcileError::Store(error)) => Err(error.into()),
    }
}

/// `POST /v1/flows/{flow}/replay`.
async fn replay(state: &State, flow: &str, asked: api::Replay) -> Answer {
    let runtime = &state.runtime;
    let route = runtime
        .flows()
        .into_iter()
        .find(|f| f.name == flow)
        .map(|f| f.stages)
        .ok_or_else(|| {
            Problem::not_found(
                "unknown-flow",
                "Unknown flow",
                format!("no flow named `{flow}`"),
            )
        })?;
    // A bound is an offset, or a time: `from` a time is the first event at or after
    // it, `to` a time the last before it.
    let bound = async |name: &str, value: Option<&api::Bound>, end: bool| -> Result<u64, Problem> {
        let text = match value {
            None => return Ok(if end { u64::MAX } else { 1 }),
            Some(api::Bound::Offset(offset)) => return Ok(*offset),
            Some(api::Bound::Text(text)) => text,
        };
        if let Ok(offset) = text.parse::<u64>() {
            return Ok(offset);
        }
        let time = tenon_model::chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
            Problem::bad_request(format!(
                "`{name}`: `{text}` is neither an offset nor an RFC 3339 time: {e}"
            ))
        })?;
        let ms = time.timestamp_millis().max(0) as u64;
        let at = if end { ms + 1 } else { ms };
        Ok(match (runtime.store().offset_at(at).await?, end) {
            (Some(offset), false) => offset,
            (Some(offset), true) => offset.saturating_sub(1),
            (None, _) => u64::MAX,
        })
    };
    let from = bound("from", asked.from.as_ref(), false).await?;
    let to = bound("to", asked.to.as_ref(), true).await?;
    let offsets = runtime.replay(flow, &route, from, to).await?;
    tracing::info!(flow, from, to, replayed = offsets.len(), "replay");
    Ok(json(
        StatusCode::OK,
        &api::Replayed {
            flow: flow.to_owned(),
            replayed: offsets.len(),
            offsets,
        },
    ))
}

/// `POST /v1/plugins/{name}/{action}`: reload, try, promote, roll back, approve.
async fn plugin_action(
    runtime: Arc<crate::runtime::Runtime>,
    name: String,
    action: String,
    asked: api::PluginAction,
    key: String,
) -> Answer {
    // Loading compiles: off the async workers.
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || -> Answer {
        let needs = |what: &str| Problem::bad_request(format!("`{action}` needs `{what}`"));
        let swapped = |reload: Reload| json(StatusCode::OK, &swap(&name, reload));
        match action.as_str() {
            "reload" => Ok(swapped(runtime.reload_plugin(&name)?)),
            "try" => {
                let (Some(candidate), Some(flow)) = (asked.candidate, asked.flow) else {
                    return Err(needs("candidate` (a plugin directory) and `flow"));
                };
                let limit = asked.limit.unwrap_or(20);
                let results =
                    handle.block_on(runtime.try_candidate(&name, &flow, &candidate, limit))?;
                let tried = api::Tried {
                    plugin: name,
                    flow,
                    results,
                };
                Ok(json(StatusCode::OK, &tried))
            }
            "promote" => {
                let candidate = asked
                    .candidate
                    .ok_or_else(|| needs("candidate` (a plugin directory"))?;
                Ok(swapped(runtime.promote(&name, &candidate)?))
            }
            "approve" => {
                let digest = asked.digest.ok_or_else(|| {
                    needs("digest`: the digest of the version waiting, as `tenon status` shows it;")
                })?;
                Ok(swapped(runtime.approve(&name, &digest, &key)?))
            }
            "rollback" => Ok(swapped(runtime.rollback(&name)?)),
            other => Err(Problem::not_found(
                "not-found",
                "Not found",
                format!("no plugin action `{other}`"),
            )),
        }
    });
    task.await.unwrap_or_else(|error| {
        Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host-error",
            "Host error",
            error.to_string(),
        ))
    })
}

/// What a swap came to, as the API answers it.
fn swap(name: &str, reload: Reload) -> api::Swap {
    let (swapped, from, to, pending) = match reload {
        Reload::Swapped { from, to } => (true, Some(from), Some(to), None),
        Reload::Unchanged => (false, None, None, None),
        Reload::Held { digest, widening } => {
            (false, None, None, Some(api::Held { digest, widening }))
        }
    };
    api::Swap {
        plugin: name.to_owned(),
        swapped,
        from,
        to,
        pending,
    }
}

/// The value of a query parameter (no percent-decoding: names and numbers only).
/// Dead letters a page of `GET /v1/dlq` holds, by default and at most.
const DLQ_PAGE: usize = 100;
const DLQ_PAGE_MAX: usize = 1000;

/// A query parameter, percent-decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

fn event_view(event: &Event) -> api::EventView {
    let mut view = api::EventView {
        offset: event.offset,
        at_ms: event.at_ms,
        flow: event.flow.clone(),
        event: event.body.name(),
        id: MessageId::default(),
        key: String::new(),
        body: None,
        plugin: None,
        reasons: None,
    };
    match &event.body {
        EventBody::Accepted { envelope } => {
            view.id = envelope.message.id.clone();
            view.key = envelope.message.key.clone();
            view.body = Some(body_as_json(&envelope.message));
        }
        EventBody::Rejected {
            id,
            key,
            plugin,
            reasons,
            ..
        } => {
            view.id = id.clone();
            view.key = key.clone();
            view.plugin = Some(plugin.clone());
            view.reasons = Some(reasons.clone());
        }
    }
    view
}

fn dead_letter_summary(letter: &DeadLetter) -> api::DeadLetterSummary {
    let outcome = &letter.outcome;
    let error = match &outcome.result {
        OutcomeKind::DeadLetter { error } => error.clone(),
        other => format!("{other:?}"),
    };
    api::DeadLetterSummary {
        id: outcome.id.clone(),
        root: outcome.root.clone(),
        flow: outcome.flow.clone(),
        stage: letter.envelope.stage,
        plugin: outcome.plugin.clone(),
        digest: outcome.attempts.last().map(|a| a.digest.clone()),
        key: outcome.key.clone(),
        kind: outcome.kind.clone(),
        at_ms: outcome.at_ms,
        attempt_count: outcome.attempts.len(),
        error,
    }
}

fn exception_summary(held: &DeadLetter) -> api::ExceptionSummary {
    let outcome = &held.outcome;
    let (rule, reasons, proposed) = match &outcome.result {
        OutcomeKind::Held {
            rule,
            reasons,
            proposed,
        } => (rule.clone(), reasons.clone(), proposed.clone()),
        other => (String::new(), vec![format!("{other:?}")], String::new()),
    };
    let envelope = &held.envelope;
    api::ExceptionSummary {
        id: outcome.id.clone(),
        root: outcome.root.clone(),
        flow: outcome.flow.clone(),
        stage: envelope
            .route
            .get(envelope.stage as usize)
            .cloned()
            .unwrap_or_default(),
        key: outcome.key.clone(),
        kind: outcome.kind.clone(),
        at_ms: outcome.at_ms,
        rule,
        reasons,
        proposed,
    }
}

fn no_exception(id: &MessageId) -> Problem {
    Problem::not_found(
        "unknown-exception",
        "Unknown exception",
        format!("no exception with id `{id}` (decided already, or never held)"),
    )
}

fn no_dead_letter(id: &MessageId) -> Problem {
    Problem::not_found(
        "unknown-dead-letter",
        "Unknown dead letter",
        format!("no dead letter with id `{id}`"),
    )
}

/// A message body as JSON for operators, whichever canonical encoding it travels in.
fn body_as_json(message: &StoredMessage) -> serde_json::Value {
    tenon_model::Encoding::from_content_type(&message.content_type)
        .ok()
        .and_then(|enc| enc.decode::<serde_json::Value>(&message.body).ok())
        .unwrap_or_else(|| {
            serde_json::json!({ "undecodable": message.content_type, "bytes": message.body.len() })
        })
}

/// A window bound: ms since the Unix epoch, an RFC 3339 time, or a span back from now
/// (`90s`, `15m`, `24h`, `7d`).
fn time_bound(text: &str) -> Option<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    if let Ok(at) = tenon_model::chrono::DateTime::parse_from_rfc3339(text) {
        return u64::try_from(at.timestamp_millis()).ok();
    }
    let unit = match text.chars().last()? {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    let n: u64 = text[..text.len() - 1].parse().ok()?;
    Some(crate::model::now_ms().saturating_sub(n.saturating_mul(unit)))
}

#[cfg(test)]
mod window_tests {
    use super::time_bound;

    #[test]
    fn bounds_are_epoch_ms_rfc3339_or_spans_back() {
        assert_eq!(time_bound("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(time_bound("2026-12-02T00:00:00Z"), Some(1_796_169_600_000));
        let back = time_bound("15m").unwrap();
        let now = crate::model::now_ms();
        assert!(now - back >= 900_000 && now - back < 960_000);
        assert_eq!(time_bound("soon"), None);
        assert_eq!(time_bound("m"), None);
    }
}
