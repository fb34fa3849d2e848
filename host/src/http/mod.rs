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
//! | `GET /v1/dlq?limit=&after=` | `admin:read` | the dead letters, oldest first, a page at a time (`next`: the cursor) |
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
//! | `GET /v1/openapi.json` | `admin:read` | the OpenAPI 3.1 description of both listeners ([`routes`]) |
//! | `GET /v1/schemas` | `admin:read` | the canonical models and their versions |
//! | `GET /v1/schemas/{kind}/{version}` | `admin:read` | the JSON Schema of a canonical model (generated from its types) |
//! | `GET /metrics` | `admin:read` | the metrics and KPIs, OpenMetrics text for Prometheus |
//! | `GET /v1/kpis?from=&to=` | `admin:read` | the business KPIs over the messages accepted in a window |
//! | `GET /v1/trace/{key}` | `admin:read` | a business key's timeline across flows |
//!
//! Errors are `application/problem+json` (RFC 9457) naming the problem: `401` without
//! a valid key, `403` when the key lacks the route's scope, `429` over a rate limit
//! (per key and per source), `408` for a body that does not arrive in time.
//!
//! **Architecture invariant:** a 2xx is sent only after the messages are committed;
//! any failure before that is a 4xx/5xx and nothing was accepted.

mod access;
mod admin;
mod apis;
mod ingest;
mod limits;
pub mod problem;
pub mod routes;

use crate::auth::Keys;
use crate::runtime::Runtime;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use problem::{Problem, Reply, json, respond};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// What both listeners serve from: the runtime, the API keys that guard it, and the
/// limits every caller is held to.
#[derive(Debug)]
pub struct State {
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// The API keys.
    pub keys: Keys,
    /// The rate limits' buckets.
    limits: limits::RateLimits,
    /// Source and API calls under way (`[server.limits] max_concurrent_ingest`).
    ingest_slots: Semaphore,
    /// The synchronous APIs' kept answers.
    answers: apis::AnswerCache,
}

impl State {
    /// The state of a server: its runtime and keys, with the limits of its config
    /// (the connection and concurrency bounds are the ones at start).
    pub fn new(runtime: Arc<Runtime>, keys: Keys) -> State {
        let slots = runtime.config().server.limits.max_concurrent_ingest;
        State {
            runtime,
            keys,
            limits: limits::RateLimits::default(),
            ingest_slots: Semaphore::new(slots),
            answers: apis::AnswerCache::default(),
        }
    }
}

/// A request body, whole: `413` over `max` bytes, `408` when it does not arrive
/// within `[server.limits] body_timeout_ms`.
async fn read_body(state: &State, body: Incoming, max: usize) -> Result<Bytes, Problem> {
    let timeout = Duration::from_millis(state.runtime.config().server.limits.body_timeout_ms);
    let read = tokio::time::timeout(timeout, Limited::new(body, max).collect()).await;
    match read {
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        )),
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the body is larger than the limit of {max} bytes"),
        )),
        Ok(Err(error)) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Unreadable body",
            format!("cannot read the request body: {error}"),
        )),
    }
}

/// Which of the two listeners a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Partner systems: `/v1/sources/*` and `/healthz`.
    Ingest,
    /// Operators: the admin API and `/healthz`.
    Admin,
}

/// Serve one plane on `listener` until `shutdown` turns true: at most
/// `max_connections` connections at once (more wait to be accepted), each closed when
/// its request headers take longer than `header_timeout_ms` to arrive, or when it
/// stays idle that long between requests.
pub async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    plane: Plane,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = state.runtime.config().server.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, say: wait, rather than spin.
                    tracing::warn!(%error, wait_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        backoff = ACCEPT_BACKOFF;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(route(&state, req, plane).await)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = conn {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// The first wait after a failed accept (doubling to a second while they fail).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

async fn route(state: &Arc<State>, req: Request<Incoming>, plane: Plane) -> Result<Reply, Problem> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (plane, req.method(), segments.as_slice()) {
        (_, &Method::GET, ["healthz"]) if state.runtime.store().healthy() => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (_, &Method::GET, ["healthz"]) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-failed",
            "Storage failed",
            "a commit failed; the database refuses writes until the process restarts \
             (nothing acknowledged is lost)",
        )),
        (Plane::Ingest, &Method::POST, ["v1", "sources", source]) => {
            let source = (*source).to_owned();
            ingest::ingest(state, &source, req).await
        }
        (Plane::Ingest, _, ["v1", "apis", name, ..]) => {
            let name = (*name).to_owned();
            let prefix = format!("/v1/apis/{name}");
            let rest = path.strip_prefix(&prefix).unwrap_or_default().to_owned();
            apis::api(state, &name, &rest, req).await
        }
        (Plane::Ingest, _, ["v1", "sources", _]) => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{} is not allowed on {path}; use POST", req.method()),
        )
        .allow("POST")),
        (Plane::Ingest, _, _) => Err(Problem::not_found(
            "not-found",
            "Not found",
            format!(
                "no route for {} {path} on the ingest listener (it serves /v1/sources/{{source}}, /v1/apis/{{name}} and /healthz; the admin API has its own listener)",
                req.method()
            ),
        )),
        (Plane::Admin, _, _) => admin::admin(state, req).await,
    }
}
