//! A mock of Salesforce's REST API as far as the CPQ sink uses it, on 127.0.0.1:
//! `PATCH /services/data/vNN.N/sobjects/SBQQ__Quote__c/{Id}` (a write-back), `PATCH
//! .../sobjects/Account/CRM_Account_Id__c/{crm id}` (an upsert by external id, the
//! parent by its external id too) and `GET .../query?q=...FROM Account...` (every
//! Account with a CRM id), checked the way Salesforce checks them (a Bearer token, a
//! JSON object body, fields the object has, a record or a parent that exists) and
//! answered as Salesforce answers (`201`/`204`, a query result, or a JSON list of
//! `{"message", "errorCode"}` with `400`, `401` or `404`).

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
    /// Accounts by CRM id: their Salesforce Id and fields.
    accounts: Mutex<BTreeMap<String, Account>>,
    calls: Mutex<Vec<Call>>,
}

/// An Account of the mock's org: its Salesforce Id and fields.
type Account = (String, Map<String, Value>);

/// The Account external-id field the mock's org has.
pub const ACCOUNT_KEY: &str = "CRM_Account_Id__c";

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
            accounts: Mutex::new(BTreeMap::new()),
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

    /// Account `crm_id`'s fields (`Name`, `BillingCountryCode`, `Parent` as the CRM id
    /// of the parent or null), if the org has it.
    pub fn account(&self, crm_id: &str) -> Option<Map<String, Value>> {
        self.state
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(crm_id)
            .map(|(_, fields)| fields.clone())
    }

    /// Someone edits account `crm_id` in the org (what a drift check finds).
    pub fn edit_account(&self, crm_id: &str, field: &str, value: Value) {
        if let Some((_, fields)) = self
            .state
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(crm_id)
        {
            fields.insert(field.to_owned(), value);
        }
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
    let api = path
        .strip_prefix("/services/data/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(version, _)| version.starts_with('v'))
        .map(|(_, rest)| rest.to_owned());
    let account = api
        .as_deref()
        .and_then(|rest| rest.strip_prefix("sobjects/Account/"))
        .and_then(|rest| rest.split_once('/'))
        .map(|(key, id)| (key.to_owned(), id.to_owned()));
    let (status, answer) = if !authorized {
        errors(
            StatusCode::UNAUTHORIZED,
            "Session expired or invalid",
            "INVALID_SESSION_ID",
        )
    } else if parts.method == hyper::Method::GET && api.as_deref() == Some("query") {
        let soql = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("q="))
            .map(|q| {
                percent_encoding::percent_decode_str(&q.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        if soql.contains("FROM Account") {
            (StatusCode::OK, accounts_query(state))
        } else {
            errors(
                StatusCode::BAD_REQUEST,
                &format!("this mock answers queries of Account only, not `{soql}`"),
                "MALFORMED_QUERY",
            )
        }
    } else if let (true, Some((key, crm_id))) = (parts.method == hyper::Method::PATCH, account) {
        upsert_account(state, &key, &crm_id, &json)
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

/// Every Account with a CRM id, as a query result.
fn accounts_query(state: &State) -> Value {
    let accounts = state
        .accounts
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let records: Vec<Value> = accounts
        .iter()
        .map(|(crm_id, (id, fields))| {
            let parent = match fields.get("Parent") {
                Some(Value::String(parent)) => json!({"attributes": {"type": "Account"}, ACCOUNT_KEY: parent}),
                _ => Value::Null,
            };
            json!({
                "attributes": {"type": "Account", "url": format!("/services/data/v60.0/sobjects/Account/{id}")},
                "Id": id,
                ACCOUNT_KEY: crm_id,
                "Name": fields.get("Name").cloned().unwrap_or(Value::Null),
                "BillingCountryCode": fields.get("BillingCountryCode").cloned().unwrap_or(Value::Null),
                "Parent": parent,
            })
        })
        .collect();
    json!({"totalSize": records.len(), "done": true, "records": records})
}

/// An upsert of Account by external id, as Salesforce checks and answers it.
fn upsert_account(state: &State, key: &str, crm_id: &str, body: &Value) -> (StatusCode, Value) {
    if key != ACCOUNT_KEY {
        return errors(
            StatusCode::NOT_FOUND,
            &format!("Provided external ID field does not exist or is not accessible: {key}"),
            "NOT_FOUND",
        );
    }
    let Some(fields) = body.as_object() else {
        return errors(
            StatusCode::BAD_REQUEST,
            "The body is not a JSON object",
            "JSON_PARSER_ERROR",
        );
    };
    let mut accounts = state
        .accounts
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut set = Map::new();
    for (field, value) in fields {
        match field.as_str() {
            "Name" | "BillingCountryCode" => {
                set.insert(field.clone(), value.clone());
            }
            "ParentId" if value.is_null() => {
                set.insert("Parent".into(), Value::Null);
            }
            "Parent" => {
                let Some(parent) = value.get(ACCOUNT_KEY).and_then(Value::as_str) else {
                    return errors(
                        StatusCode::BAD_REQUEST,
                        &format!("Parent is referenced by {ACCOUNT_KEY}"),
                        "INVALID_FIELD",
                    );
                };
                if !accounts.contains_key(parent) {
                    return errors(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Foreign key external ID: {parent} not found for field {ACCOUNT_KEY} in entity Account"
                        ),
                        "INVALID_FIELD",
                    );
                }
                set.insert("Parent".into(), Value::String(parent.to_owned()));
            }
            other => {
                return errors(
                    StatusCode::BAD_REQUEST,
                    &format!("No such column '{other}' on sobject of type Account"),
                    "INVALID_FIELD",
                );
            }
        }
    }
    if set.get("Name").is_none_or(Value::is_null) && !accounts.contains_key(crm_id) {
        return errors(
            StatusCode::BAD_REQUEST,
            "Required fields are missing: [Name]",
            "REQUIRED_FIELD_MISSING",
        );
    }
    let next = accounts.len() + 1;
    match accounts.get_mut(crm_id) {
        Some((_, fields)) => {
            fields.extend(set);
            (StatusCode::NO_CONTENT, Value::Null)
        }
        None => {
            let id = format!("0015g{next:013}");
            accounts.insert(crm_id.to_owned(), (id.clone(), set));
            (
                StatusCode::CREATED,
                json!({"id": id, "success": true, "errors": [], "created": true}),
            )
        }
    }
}
