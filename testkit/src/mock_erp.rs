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
    /// The request path.
    pub path: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` header.
    pub traceparent: Option<String>,
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
    let path = req.uri().path().to_owned();
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
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "body is not JSON"}),
        );
    };
    let mut log = state.log.lock().unwrap_or_else(PoisonError::into_inner);
    let earlier = key.as_ref().and_then(|k| log.orders.get(k)).cloned();
    let duplicate = earlier.is_some();
    let order_number = earlier.unwrap_or_else(|| format!("ERP-{:06}", log.orders.len() + 1));
    if let (Some(key), false) = (&key, duplicate) {
        log.orders.insert(key.clone(), order_number.clone());
    }
    log.received.push(Received {
        path,
        idempotency_key: key,
        traceparent,
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
