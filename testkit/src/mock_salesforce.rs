//! A mock of Salesforce's REST API as far as a CPQ write-back uses it: `PATCH
//! /services/data/vNN.N/sobjects/SBQQ__Quote__c/{Id}` on 127.0.0.1, checked the way
//! Salesforce checks it (a Bearer token, a JSON object body, fields the quote object
//! has, a record that exists) and answered as Salesforce answers (`204`, or a JSON list
//! of `{"message", "errorCode"}` with `400`, `401` or `404`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// One request the mock received, and what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The JSON body (`null` when it was not JSON).
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug)]
struct State {
    token: String,
    fields: Vec<String>,
    quotes: Mutex<BTreeMap<String, Map<String, Value>>>,
    calls: Mutex<Vec<Call>>,
}

/// A running mock; stops when dropped.
#[derive(Debug)]
pub struct MockSalesforce {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockSalesforce {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockSalesforce {
    /// Start on a free port of 127.0.0.1, accepting `token`, with the quotes `quotes`
    /// (record Ids) whose object has the custom `fields`.
    pub async fn start(token: &str, quotes: &[&str], fields: &[&str]) -> std::io::Result<Self> {
        let state = Arc::new(State {
            token: token.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            quotes: Mutex::new(
                quotes
                    .iter()
                    .map(|id| ((*id).to_owned(), Map::new()))
                    .collect(),
            ),
            calls: Mutex::new(Vec::new()),
        });
        let (addr, task) = crate::local::serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            state.clone(),
            |state, req| async move { handle(&state, req).await },
        )
        .await?;
        Ok(MockSalesforce { addr, state, task })
    }

    /// The instance URL to configure.
    pub fn instance_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fields set on quote `id` so far.
    pub fn quote(&self, id: &str) -> Option<Map<String, Value>> {
        self.state
            .quotes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Every request, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn errors(status: StatusCode, message: &str, code: &str) -> (StatusCode, Value) {
    (
        status,
        json!([{"message": message, "errorCode": code, "fields": []}]),
    )
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let authorized = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {}", state.token).as_str());
    let record = path
        .strip_prefix("/services/data/")
        .and_then(|rest| rest.split_once("/sobjects/SBQQ__Quote__c/"))
        .filter(|(version, _)| version.starts_with('v'))
        .map(|(_, id)| id.to_owned());
    let (status, answer) = if !authorized {
        errors(
            StatusCode::UNAUTHORIZED,
            "Session expired or invalid",
            "INVALID_SESSION_ID",
        )
    } else if parts.method != hyper::Method::PATCH || record.is_none() {
        errors(
            StatusCode::NOT_FOUND,
            "The requested resource does not exist",
            "NOT_FOUND",
        )
    } else if !parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        errors(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
            "UNSUPPORTED_MEDIA_TYPE",
        )
    } else {
        let id = record.unwrap_or_default();
        match json.as_object() {
            None => errors(
                StatusCode::BAD_REQUEST,
                "The body is not a JSON object",
                "JSON_PARSER_ERROR",
            ),
            Some(fields) => {
                let unknown = fields.keys().find(|f| !state.fields.contains(f));
                let mut quotes = state.quotes.lock().unwrap_or_else(PoisonError::into_inner);
                match (unknown, quotes.get_mut(&id)) {
                    (Some(field), _) => errors(
                        StatusCode::BAD_REQUEST,
                        &format!("No such column '{field}' on sobject of type SBQQ__Quote__c"),
                        "INVALID_FIELD",
                    ),
                    (None, None) => errors(
                        StatusCode::NOT_FOUND,
                        "Provided external ID field does not exist or is not accessible",
                        "NOT_FOUND",
                    ),
                    (None, Some(quote)) => {
                        quote.extend(fields.clone());
                        (StatusCode::NO_CONTENT, Value::Null)
                    }
                }
            }
        }
    };
    state
        .calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Call {
            method: parts.method.to_string(),
            path,
            body: json,
            status: status.as_u16(),
        });
    let body = if answer.is_null() {
        Bytes::new()
    } else {
        Bytes::from(answer.to_string())
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
