//! The client of an SAP OData V2 service, over the SDK's `http` (`wasi:http` in the
//! component; a test's recorded exchanges natively).
//!
//! SAP's CSRF protection: every modifying request carries a token that a `GET` of the
//! service root with `x-csrf-token: Fetch` hands out, together with the session
//! cookies it is bound to; a token that has expired is answered `403` with
//! `x-csrf-token: Required`, and a fresh one is fetched once.

use crate::failure;
use base64::Engine as _;
use tenon_sdk::{Failure, config, http, secrets};

/// An OData service of SAP S/4HANA: its root (e.g.
/// `https://my-s4.example.com/sap/opu/odata/sap/API_SALES_ORDER_SRV`) and the
/// authorization every request carries.
#[derive(Debug, Clone)]
pub struct Service {
    root: String,
    authorization: Option<String>,
}

impl Service {
    /// The service whose root is the config key `key`, with Basic authentication
    /// from the secrets `sap_user` and `sap_password` when both are provided.
    pub fn from_config(key: &str) -> Result<Service, Failure> {
        let root = config::require(key)?;
        Ok(Service::new(&root, basic_auth()))
    }

    /// The service at `root`, each request with `authorization` when given.
    pub fn new(root: &str, authorization: Option<String>) -> Service {
        Service {
            root: root.trim_end_matches('/').to_owned(),
            authorization,
        }
    }

    /// The service root, without a trailing `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        match &self.authorization {
            Some(auth) => vec![("authorization", auth.as_str())],
            None => Vec::new(),
        }
    }

    /// `GET` `path` below the root (e.g. `/A_SalesOrder?$top=1`), asking for JSON.
    pub fn get_json(&self, path: &str) -> Result<http::Response, Failure> {
        http::get_json(&format!("{}{path}", self.root), &self.headers())
    }

    /// `POST` a JSON body to an entity set (e.g. `A_SalesOrder`) through the CSRF
    /// flow: a fresh token and its cookies, the `POST` with them, and once more with
    /// a new token when SAP says the first has expired. SAP's answer to the `POST`,
    /// whatever its status; a token refused twice is `retryable`.
    pub fn post_json(&self, entity_set: &str, body: &[u8]) -> Result<http::Response, Failure> {
        self.write("POST", entity_set, body)
    }

    /// A change through the same CSRF flow: `method` (`POST`, `PATCH`, `DELETE`) on
    /// `path` below the root (e.g. `A_SalesOrderItem(SalesOrder='1',SalesOrderItem='10')`),
    /// with a JSON body unless it is empty. SAP's answer, whatever its status.
    pub fn write(&self, method: &str, path: &str, body: &[u8]) -> Result<http::Response, Failure> {
        let url = format!("{}/{path}", self.root);
        for attempt in 0..2 {
            let (token, cookie) = self.fetch_token()?;
            let mut headers = self.headers();
            headers.push(("x-csrf-token", &token));
            if !cookie.is_empty() {
                headers.push(("cookie", &cookie));
            }
            headers.push(("accept", "application/json"));
            if !body.is_empty() {
                headers.push(("content-type", "application/json"));
            }
            let response = http::send(method, &url, &headers, body)?;
            let token_expired = response.status == 403
                && response
                    .header("x-csrf-token")
                    .is_some_and(|v| v.eq_ignore_ascii_case("required"));
            if token_expired && attempt == 0 {
                continue;
            }
            return Ok(response);
        }
        Err(Failure::Retryable(
            "SAP refused a fresh CSRF token twice".into(),
        ))
    }

    /// A CSRF token and the session cookies it belongs to (`name=value; ...`).
    pub fn fetch_token(&self) -> Result<(String, String), Failure> {
        let mut fetch = self.headers();
        fetch.push(("x-csrf-token", "Fetch"));
        let response = http::get_json(&format!("{}/", self.root), &fetch)?;
        if !response.is_success() {
            return Err(failure(response.status, &response.body));
        }
        let token = response
            .header("x-csrf-token")
            .ok_or_else(|| Failure::Retryable("SAP gave no x-csrf-token on fetch".into()))?;
        let cookies: Vec<String> = response
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| {
                let v = String::from_utf8_lossy(v);
                v.split(';').next().map(|pair| pair.trim().to_owned())
            })
            .collect();
        Ok((token, cookies.join("; ")))
    }
}

/// `Basic` authentication from the secrets `sap_user` and `sap_password`, when both
/// are provided.
pub fn basic_auth() -> Option<String> {
    let user = secrets::get("sap_user").ok()?;
    let password = secrets::get("sap_password").ok()?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Some(format!("Basic {token}"))
}
