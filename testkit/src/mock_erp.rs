//! A small mock ERP for the example and the tests: it accepts JSON orders over HTTP on
//! 127.0.0.1, numbers them like an ERP, records everything it receives, and honours
//! `Idempotency-Key` the way a real idempotent API does (the same key gets the same
//! order number back, and is counted as a duplicate).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tenon_model::IDEMPOTENCY_HEADER;

/// One order the mock ERP received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The request method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` header.
    pub traceparent: Option<String>,
    /// Every header, by lower-case name (the last of repeated ones).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The order number it answered with.
    pub order_number: String,
    /// The JSON body.
    pub body: Value,
    /// True when the key had been seen before (a redelivery).
    pub duplicate: bool,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    log: Mutex<Log>,
    unavailable: AtomicBool,
    /// Path prefixes answered `422` with a reason (a system refusing what it is sent).
    refusing: Mutex<Vec<(String, String)>>,
    limit: Mutex<Option<ApiLimit>>,
}

/// An API limit as cloud ERPs enforce them: `max` requests per `window`, then `429`
/// with `Retry-After` until the window ends.
#[derive(Debug)]
struct ApiLimit {
    max: usize,
    window: std::time::Duration,
    started: std::time::Instant,
    used: usize,
    /// Every request that reached the limit check: when, and whether it was refused.
    seen: Vec<(std::time::Instant, bool)>,
}

#[derive(Debug, Default)]
struct Log {
    received: Vec<Received>,
    /// Idempotency key -> order number.
    orders: std::collections::HashMap<String, String>,
}

/// A running mock ERP; stops when dropped.
#[derive(Debug)]
pub struct MockErp {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockErp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockErp {
    /// Answer `422 {"error": reason}` to every request whose path starts with
    /// `prefix` (recorded, as every request is).
    pub fn refuse(&self, prefix: &str, reason: &str) {
        self.state
            .refusing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((prefix.to_owned(), reason.to_owned()));
    }

    /// Stop refusing: every prefix given to [`MockErp::refuse`] is accepted again.
    pub fn accept_all(&self) {
        self.state
            .refusing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The order numbers cancelled: `DELETE <anything>/<number>` of a number it gave.
    pub fn cancelled(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.method == "DELETE" && r.order_number.starts_with("ERP-"))
            .map(|r| r.order_number)
            .collect()
    }

    /// Start on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<MockErp> {
        MockErp::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Start on a given address (port 0 for a free one).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<MockErp> {
        let state = Arc::new(State::default());
        let (addr, task) = crate::local::serve(addr, state.clone(), |state, req| async move {
            handle(&state, req).await
        })
        .await?;
        Ok(MockErp { addr, state, task })
    }

    /// The URL of its order endpoint.
    pub fn orders_url(&self) -> String {
        format!("http://{}/sap/orders", self.addr)
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .received
            .clone()
    }

    /// Orders created so far (redeliveries of a known key not counted).
    pub fn orders(&self) -> usize {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .orders
            .len()
    }

    /// While true, answer every order with 503 (and record nothing).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Enforce an API limit: `max` requests per `window` (the first window starts with
    /// the next request); past it, `429` with `Retry-After` (whole seconds to the
    /// window's end) and nothing recorded as received.
    pub fn limit(&self, max: usize, window: std::time::Duration) {
        *self
            .state
            .limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(ApiLimit {
            max,
            window,
            started: std::time::Instant::now(),
            used: 0,
            seen: Vec::new(),
        });
    }

    /// Under a limit: every request that came, when, and whether it was refused (`429`).
    pub fn limit_log(&self) -> Vec<(std::time::Instant, bool)> {
        self.state
            .limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| l.seen.clone())
            .unwrap_or_default()
    }
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if state.unavailable.load(Ordering::SeqCst) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "ERP maintenance window"}),
        );
    }
    if let Some(limit) = state
        .limit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        let now = std::time::Instant::now();
        if limit.seen.is_empty() || now >= limit.started + limit.window {
            limit.started = now;
            limit.used = 0;
        }
        let over = limit.used >= limit.max;
        limit.seen.push((now, over));
        if over {
            let left = (limit.started + limit.window).saturating_duration_since(now);
            let seconds = left.as_millis().div_ceil(1000).max(1);
            let mut refused = reply(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "API limit exceeded"}),
            );
            refused.headers_mut().insert(
                "retry-after",
                hyper::header::HeaderValue::from(seconds as u64),
            );
            return refused;
        }
        limit.used += 1;
    }
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    // A finance system's list of the documents it booked (reconciliation reads it).
    if method == "GET" && path.ends_with("/invoices") {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let log = state.log.lock().unwrap_or_else(PoisonError::into_inner);
        return reply(
            StatusCode::OK,
            Value::Array(booked_documents(&log.received, &path, &query)),
        );
    }
    let key = req
        .headers()
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    let body = match (method.as_str(), body.is_empty()) {
        ("DELETE", true) => Value::Null,
        _ => match serde_json::from_slice::<Value>(&body) {
            Ok(body) => body,
            Err(_) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "body is not JSON"}),
                );
            }
        },
    };
    let mut log = state.log.lock().unwrap_or_else(PoisonError::into_inner);
    let refused = state
        .refusing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, reason)| reason.clone());
    // A cancellation names the number it gave: `DELETE .../<number>`.
    if method == "DELETE" || refused.is_some() {
        let number = match &refused {
            Some(_) => String::new(),
            None => path.rsplit('/').next().unwrap_or_default().to_owned(),
        };
        let known = log.orders.values().any(|n| *n == number);
        log.received.push(Received {
            method,
            path,
            idempotency_key: key,
            traceparent,
            headers,
            order_number: number.clone(),
            body,
            duplicate: false,
            at: std::time::Instant::now(),
        });
        drop(log);
        return match (refused, known) {
            (Some(reason), _) => reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": reason})),
            (None, true) => reply(StatusCode::OK, json!({"id": number, "status": "cancelled"})),
            (None, false) => reply(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no order {number}")}),
            ),
        };
    }
    let earlier = key.as_ref().and_then(|k| log.orders.get(k)).cloned();
    let duplicate = earlier.is_some();
    let order_number = earlier.unwrap_or_else(|| format!("ERP-{:06}", log.orders.len() + 1));
    if let (Some(key), false) = (&key, duplicate) {
        log.orders.insert(key.clone(), order_number.clone());
    }
    log.received.push(Received {
        method,
        path,
        idempotency_key: key,
        traceparent,
        headers,
        order_number: order_number.clone(),
        body,
        duplicate,
        at: std::time::Instant::now(),
    });
    drop(log);
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    reply(
        status,
        json!({"id": order_number, "status": if duplicate { "existing" } else { "created" }}),
    )
}

/// The billing documents POSTed under the directory of `path` (`/finance/invoices`
/// lists what reached `/finance/...`): each invoice, credit note or voided invoice as
/// `{"id", "reference", "amount", "currency", "date"}`, credits negative, dated as
/// issued and kept to `since`..`until` of `query` when given.
fn booked_documents(received: &[Received], path: &str, query: &str) -> Vec<Value> {
    let directory = path.rsplit_once('/').map_or("", |(d, _)| d).to_owned() + "/";
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let (since, until) = (param("since"), param("until"));
    received
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with(&directory) && !r.duplicate)
        .filter_map(|r| {
            let kind = r.headers.get("tenon-kind")?;
            let body = &r.body;
            let id = body.get("id")?.as_str()?;
            let amount = body.pointer("/total/amount")?.as_str()?;
            let (reference, amount) = match kind.as_str() {
                "InvoicePosted" => (id.to_owned(), amount.to_owned()),
                "CreditIssued" => (id.to_owned(), format!("-{amount}")),
                "InvoiceVoided" => (format!("{id}/void"), format!("-{amount}")),
                _ => return None,
            };
            let date = body
                .get("issued")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let inside = |d: &str| {
                since.as_deref().is_none_or(|s| d >= s) && until.as_deref().is_none_or(|u| d <= u)
            };
            if !date.as_deref().is_none_or(inside) {
                return None;
            }
            Some(json!({
                "id": r.order_number,
                "reference": reference,
                "amount": amount,
                "currency": body.pointer("/total/currency"),
                "date": date,
            }))
        })
        .collect()
}
