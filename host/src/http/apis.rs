//! `/v1/apis/{name}/...` on the ingest listener: synchronous answers
//! ([`crate::runtime::apis`]), behind a key with `api:<name>` (or `api:*`), the
//! per-key and per-route rate limits, the route's methods and path, its deadline,
//! and its answer cache.

use super::State;
use super::access::{CREDENTIAL_HEADERS, authorize};
use super::problem::{Answer, Problem};
use crate::api;
use crate::auth::Scope;
use crate::config::ApiEntry;
use crate::runtime::apis::{Answered, ApiError};
use crate::sandbox::plugin::{ApiRequest, CallError, Failure};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of answers kept in the cache, all routes together.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Answers kept for their route's `cache_ttl_secs`, by request and live versions.
pub(super) struct AnswerCache(moka::sync::Cache<String, Arc<Kept>>);

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("entries", &self.0.entry_count())
            .finish()
    }
}

/// One kept answer.
#[derive(Debug)]
pub(super) struct Kept {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    ttl: Duration,
}

struct KeptFor;

impl moka::Expiry<String, Arc<Kept>> for KeptFor {
    fn expire_after_create(&self, _: &String, kept: &Arc<Kept>, _: Instant) -> Option<Duration> {
        Some(kept.ttl)
    }
}

impl Default for AnswerCache {
    fn default() -> Self {
        AnswerCache(
            moka::sync::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|key: &String, kept: &Arc<Kept>| {
                    let bytes = key.len() + kept.body.len() + kept.content_type.len();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(KeptFor)
                .build(),
        )
    }
}

/// `/v1/apis/{name}` and below.
pub(super) async fn api(state: &State, name: &str, rest: &str, req: Request<Incoming>) -> Answer {
    let runtime = &state.runtime;
    let Some(route) = runtime.api(name) else {
        return Err(Problem::not_found(
            "unknown-api",
            "Unknown API",
            format!("no API named `{name}` (the config's [apis.*] name them)"),
        ));
    };
    let key = authorize(state, &req, &Scope::Api(name.to_owned()))?;
    let config = runtime.config();
    state.limits.key(config.server.limits.per_key, &key.id)?;
    state.limits.api(route.rate_limit, name)?;
    let methods = route.methods();
    if !methods.iter().any(|m| m == req.method().as_str()) {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!(
                "{} is not allowed on API `{name}`; use {}",
                req.method(),
                methods.join(" or ")
            ),
        )
        .header("allow", methods.join(", ")));
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let params = match &route.path {
        Some(template) => match_path(template, path).ok_or_else(|| {
            Problem::not_found(
                "no-route",
                "No such path",
                format!("API `{name}` serves /v1/apis/{name}{template}, not /v1/apis/{name}{path}"),
            )
        })?,
        None => Vec::new(),
    };
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| !CREDENTIAL_HEADERS.contains(k))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let method = req.method().to_string();
    // Guest calls at once are bounded together with the sources'.
    let Ok(_slot) = state.ingest_slots.try_acquire() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "Busy",
            format!(
                "{} plugin calls are under way, the most this server takes at once: retry in a second",
                config.server.limits.max_concurrent_ingest
            ),
        )
        .retry_after(1));
    };
    let body = super::read_body(state, req.into_body(), config.server.max_body_bytes)
        .await?
        .to_vec();
    let request = ApiRequest {
        method,
        path: path.to_owned(),
        params,
        query,
        headers,
        content_type,
        body,
    };
    let cache_key = (route.cache_ttl_secs > 0)
        .then(|| cache_key(state, name, &route, &request, req_query(&request)))
        .flatten();
    if let Some(kept) = cache_key.as_ref().and_then(|k| state.answers.0.get(k)) {
        let mut reply = kept_reply(&kept);
        reply
            .headers_mut()
            .insert("tenon-cache", HeaderValue::from_static("hit"));
        return Ok(reply);
    }
    let (answered, traceparent) = runtime.answer(name, request).await;
    let traceparent = HeaderValue::from_str(&traceparent).ok();
    let answered = answered.map_err(|error| {
        let problem = api_problem(name, error);
        match &traceparent {
            Some(t) => problem.header("traceparent", t.to_str().unwrap_or_default().to_owned()),
            None => problem,
        }
    })?;
    let kept = match answered {
        Answered::Plugin(response) => Kept {
            status: response.status,
            content_type: response.content_type,
            headers: response.headers,
            body: Bytes::from(response.body),
            ttl: Duration::from_secs(route.cache_ttl_secs),
        },
        Answered::Chain(chain) => {
            let outputs = api::ApiOutputs {
                outputs: chain.outputs.iter().map(api::Output::of).collect(),
                trail: chain.trail,
            };
            let body = serde_json::to_vec(&outputs).map_err(|e| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "host-error",
                    "Host error",
                    format!("cannot encode the answer: {e}"),
                )
            })?;
            Kept {
                status: 200,
                content_type: "application/json".into(),
                headers: Vec::new(),
                body: Bytes::from(body),
                ttl: Duration::from_secs(route.cache_ttl_secs),
            }
        }
    };
    let mut reply = kept_reply(&kept);
    if let Some(traceparent) = traceparent {
        reply.headers_mut().insert("traceparent", traceparent);
    }
    if let Some(key) = cache_key
        && (200..300).contains(&kept.status)
    {
        state.answers.0.insert(key, Arc::new(kept));
    }
    Ok(reply)
}

/// The raw query, as the cache key names it (decoded pairs, in order).
fn req_query(request: &ApiRequest) -> String {
    request
        .query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// What a cached answer is keyed by: the route, the request, and the digests of the
/// live versions that would answer it (`None` when one is not loaded).
fn cache_key(
    state: &State,
    name: &str,
    route: &ApiEntry,
    request: &ApiRequest,
    query: String,
) -> Option<String> {
    use sha2::{Digest, Sha256};
    let plugins = state.runtime.api_plugins(route)?;
    let mut hasher = Sha256::new();
    for part in [
        name.as_bytes(),
        request.method.as_bytes(),
        request.path.as_bytes(),
        query.as_bytes(),
        request.content_type.as_bytes(),
        &request.body,
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    for plugin in plugins {
        hasher.update(plugin.digest().as_bytes());
    }
    Some(hex::encode(hasher.finalize()))
}

/// Headers a plugin's answer may not set: framing, connection and credentials are
/// the host's.
const HOST_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "set-cookie",
    "www-authenticate",
    "content-type",
];

fn kept_reply(kept: &Kept) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
    let mut reply = Response::new(Full::new(kept.body.clone()));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(&kept.content_type) {
        headers.insert(CONTENT_TYPE, ct);
    }
    for (name, value) in &kept.headers {
        if HOST_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    reply
}

/// The parameters of `path` under `template` (`/products/{code}`), if it matches.
fn match_path(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let want: Vec<&str> = template.trim_matches('/').split('/').collect();
    let have: Vec<&str> = path.trim_matches('/').split('/').collect();
    if want.len() != have.len() {
        return None;
    }
    let mut params = Vec::new();
    for (w, h) in want.iter().zip(&have) {
        match w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(name) if !h.is_empty() => {
                let value = percent_encoding::percent_decode_str(h)
                    .decode_utf8()
                    .ok()?
                    .into_owned();
                params.push((name.to_owned(), value));
            }
            Some(_) => return None,
            None if w == h => {}
            None => return None,
        }
    }
    Some(params)
}

/// How an API's failure answers the caller.
fn api_problem(name: &str, error: ApiError) -> Problem {
    let (plugin, error) = match error {
        ApiError::Unknown(_) => {
            return Problem::not_found(
                "unknown-api",
                "Unknown API",
                format!("no API named `{name}`"),
            );
        }
        ApiError::Deadline(d) => {
            return Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline",
                "Deadline passed",
                format!(
                    "API `{name}` did not answer within its deadline of {} ms; what was under way was stopped",
                    d.as_millis()
                ),
            );
        }
        ApiError::Plugin { plugin, error } => (plugin, error),
    };
    match error {
        CallError::Failure(Failure::Invalid(detail)) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            format!("`{plugin}`: {detail}"),
        ),
        CallError::Failure(Failure::Rejected(reasons)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
            "Rejected by business rules",
            format!("`{plugin}` refused it, for every reason listed"),
        )
        .with_reasons(reasons),
        CallError::Failure(Failure::Retryable(detail)) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Temporarily unavailable",
            format!("`{plugin}`: {detail}"),
        )
        .retry_after(1),
        CallError::Timeout(d) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "plugin-timeout",
            "Plugin timed out",
            format!("`{plugin}` ran past its own limit of {} ms", d.as_millis()),
        ),
        CallError::Trap(detail) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "plugin-trap",
            "Plugin failed",
            format!("`{plugin}` trapped: {detail}"),
        ),
        CallError::Limit(detail) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "plugin-limit",
            "Plugin hit a limit",
            format!("`{plugin}`: {detail}"),
        ),
        CallError::Denied(detail) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "plugin-denied",
            "Plugin was denied a capability",
            format!("`{plugin}`: {detail}"),
        ),
        CallError::Host(detail) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host-error",
            "Host error",
            format!("`{plugin}`: {detail}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::match_path;

    #[test]
    fn paths_match_their_template_and_name_its_parameters() {
        assert_eq!(
            match_path("/products/{code}", "/products/P%2D100"),
            Some(vec![("code".into(), "P-100".into())])
        );
        assert_eq!(match_path("/products/{code}", "/products"), None);
        assert_eq!(match_path("/products/{code}", "/product/P-1"), None);
        assert_eq!(match_path("/products/{code}", "/products/"), None);
        assert_eq!(
            match_path("/a/{x}/b/{y}", "/a/1/b/2").map(|p| p.len()),
            Some(2)
        );
    }
}
