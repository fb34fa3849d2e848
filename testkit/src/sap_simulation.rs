//! A stand-in for SAP S/4HANA's sales order simulation, "Sales Order - Simulate (A2X)"
//! (`API_SALES_ORDER_SIMULATION_SRV`), that checks each request the way SAP does and
//! answers from a price table.
//!
//! - Basic authentication on every request: anything else is `401`.
//! - SAP's CSRF protection: `GET <service>/` with `x-csrf-token: Fetch` hands out a
//!   token and the session cookie it is bound to; a `POST` without that token and
//!   cookie (or after [`SapSimulation::expire_next_token`]) is `403` with
//!   `x-csrf-token: Required`.
//! - The deep insert is checked against SAP's published OpenAPI definition of the
//!   service (`tests/fixtures/public/sap_API_SALES_ORDER_SIMULATION_SRV.json`, the
//!   `-create` schemas): every property known, strings within `maxLength`, decimals
//!   within their precision and scale, dates as `/Date(ms)/`, navigation properties
//!   as objects, `{"results": [...]}` or arrays. Each violation is kept
//!   ([`SapSimulation::violations`]) and answered `400`.
//! - What a simulation needs (document type, sales area, sold-to party, items with a
//!   material and a positive quantity), then the business checks of the price table:
//!   unknown or blocked customer, unknown material, plant or unit, another currency.
//!   Each is `400` with an OData V2 error body, every message in
//!   `innererror.errordetails` (the message codes are SAP's format, `<class>/<number>`,
//!   for this stand-in's messages).
//! - The answer is `201` with `{"d": A_SalesOrderSimulation}`, checked against the
//!   definition's answer schemas too: the associations the request named are filled
//!   (`to_Pricing` with the total, each item's `to_PricingElement` with its price and
//!   tax conditions, each item's `to_ScheduleLine` with what the availability check
//!   confirms and when), the others deferred, as SAP does.
//! - [`SapSimulation::set_unavailable`]: `503` for everything.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tenon_model::chrono::{DateTime, NaiveDate};
use tenon_model::rust_decimal::{Decimal, RoundingStrategy};

/// Where the service lives below the host, as on S/4HANA.
pub const SERVICE_PATH: &str = "/sap/opu/odata/sap/API_SALES_ORDER_SIMULATION_SRV";

/// SAP's published OpenAPI definition of the service (SAP Business Accelerator Hub).
pub const OPENAPI: &str =
    include_str!("../../tests/fixtures/public/sap_API_SALES_ORDER_SIMULATION_SRV.json");

const NAMESPACE: &str = "API_SALES_ORDER_SIMULATION_SRV.";
const SESSION_COOKIE: &str = "SAP_SESSIONID_S4H_100";

/// A customer of the sales area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The customer number (sold-to party).
    pub number: String,
    /// Blocked for sales: every simulation for it is refused.
    pub blocked: bool,
}

/// A material of the price table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The material number.
    pub number: String,
    /// Its sales unit, e.g. `PC`.
    pub unit: String,
    /// Its delivering plant.
    pub plant: String,
    /// The price (condition `PPR0`) per `per` units, in the sales area's currency.
    pub price: Decimal,
    /// The pricing unit: the price is for this many units.
    pub per: Decimal,
    /// What the availability check confirms on the requested date.
    pub stock: Decimal,
    /// What it confirms later: (date, quantity), when the material is restocked.
    pub restock: Option<(NaiveDate, Decimal)>,
}

/// The system the stand-in plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// The communication user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The one sales area: sales organization, distribution channel, division.
    pub sales_area: (String, String, String),
    /// The sales area's currency: every price is in it.
    pub currency: String,
    /// Output tax (condition `TTX1`), percent of the net value.
    pub tax_percent: Decimal,
    /// Today: the requested delivery date when the request names none, and the
    /// pricing date.
    pub today: NaiveDate,
    /// The customers.
    pub customers: Vec<Customer>,
    /// The price table.
    pub materials: Vec<Material>,
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap_or_default()
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap_or_default()
}

impl Default for Setup {
    /// Sales area 1010/10/00 in EUR with 19% output tax, today 2026-12-01; customer
    /// `10100001`, and `10100009` blocked; materials (unit `PC`, plant `1010`):
    /// `TG11` 12.50 with 100 in stock, `TG12` 7.99 with 3 in stock and 50 more on
    /// 2026-12-15, `TG13` 45.00 per 10 with 1000 in stock, `TG14` 99.00 and none.
    fn default() -> Setup {
        let material = |number: &str, price: &str, per: &str, stock: &str| Material {
            number: number.into(),
            unit: "PC".into(),
            plant: "1010".into(),
            price: dec(price),
            per: dec(per),
            stock: dec(stock),
            restock: None,
        };
        let mut tg12 = material("TG12", "7.99", "1", "3");
        tg12.restock = Some((day("2026-12-15"), dec("50")));
        Setup {
            user: "TENON_SIM".into(),
            password: "Welcome1!".into(),
            sales_area: ("1010".into(), "10".into(), "00".into()),
            currency: "EUR".into(),
            tax_percent: dec("19"),
            today: day("2026-12-01"),
            customers: vec![
                Customer {
                    number: "10100001".into(),
                    blocked: false,
                },
                Customer {
                    number: "10100009".into(),
                    blocked: true,
                },
            ],
            materials: vec![
                material("TG11", "12.50", "1", "100"),
                tg12,
                material("TG13", "45.00", "10", "1000"),
                material("TG14", "99.00", "1", "0"),
            ],
        }
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Every header, by lower-case name (the last of repeated ones).
    pub headers: BTreeMap<String, String>,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    /// The status it was answered with.
    pub status: u16,
}

impl Seen {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Log {
    seen: Vec<Seen>,
    violations: Vec<String>,
    /// Session number -> its CSRF token.
    sessions: BTreeMap<u32, String>,
    next_session: u32,
    expire_next: bool,
}

#[derive(Debug)]
struct State {
    setup: Setup,
    schemas: Map<String, Value>,
    log: Mutex<Log>,
    unavailable: AtomicBool,
}

impl State {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running stand-in; stops when dropped.
#[derive(Debug)]
pub struct SapSimulation {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SapSimulation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SapSimulation {
    /// Start with [`Setup::default`] on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<SapSimulation> {
        SapSimulation::start_with(Setup::default()).await
    }

    /// Start with this setup on a free port of 127.0.0.1.
    pub async fn start_with(setup: Setup) -> std::io::Result<SapSimulation> {
        let spec: Value = serde_json::from_str(OPENAPI).map_err(std::io::Error::other)?;
        let schemas = spec["components"]["schemas"]
            .as_object()
            .cloned()
            .ok_or_else(|| std::io::Error::other("the OpenAPI document has no schemas"))?;
        let state = Arc::new(State {
            setup,
            schemas,
            log: Mutex::default(),
            unavailable: AtomicBool::new(false),
        });
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let (addr, task) = crate::local::serve(bind, state.clone(), |state, req| async move {
            handle(&state, req).await
        })
        .await?;
        Ok(SapSimulation { addr, state, task })
    }

    /// The service root, as the plugin's `service_url`.
    pub fn service_url(&self) -> String {
        format!("http://{}{SERVICE_PATH}", self.addr)
    }

    /// The system it plays.
    pub fn setup(&self) -> &Setup {
        &self.state.setup
    }

    /// The `authorization` header its user sends.
    pub fn authorization(&self) -> String {
        use base64::Engine as _;
        let setup = &self.state.setup;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", setup.user, setup.password));
        format!("Basic {token}")
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.log().seen.clone()
    }

    /// Forget the requests so far.
    pub fn clear_requests(&self) {
        self.state.log().seen.clear();
    }

    /// Every way a request body, or one of its own answers, strayed from SAP's
    /// published definition of the service.
    pub fn violations(&self) -> Vec<String> {
        self.state.log().violations.clone()
    }

    /// While true, answer everything with `503`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Refuse the next `POST` as if its token had expired: `403`, `x-csrf-token:
    /// Required`.
    pub fn expire_next_token(&self) {
        self.state.log().expire_next = true;
    }
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("dataserviceversion", HeaderValue::from_static("2.0"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(name, value);
        }
    }
    response
}

fn text_reply(status: StatusCode, headers: &[(&str, String)], text: &str) -> Response<Full<Bytes>> {
    let mut response = reply(status, headers, Value::Null);
    *response.body_mut() = Full::new(Bytes::from(text.to_owned()));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An OData V2 error body: the first message as the main one, all of them as
/// `innererror.errordetails`.
fn odata_error(messages: &[(&str, String)]) -> Value {
    let (code, first) = messages.first().map_or(("", ""), |(c, m)| (*c, m.as_str()));
    let details: Vec<Value> = messages
        .iter()
        .map(|(code, message)| {
            json!({"code": code, "message": message, "propertyref": "", "severity": "error", "target": ""})
        })
        .collect();
    json!({"error": {
        "code": code,
        "message": {"lang": "en", "value": first},
        "innererror": {
            "application": {
                "component_id": "SD-SLS-API",
                "service_namespace": "/SAP/",
                "service_id": "API_SALES_ORDER_SIMULATION_SRV",
                "service_version": "0001",
            },
            "errordetails": details,
        },
    }})
}

fn bad_request(messages: &[(&str, String)]) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, &[], odata_error(messages))
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let mut seen = Seen {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: serde_json::from_slice(&body).ok(),
        status: 0,
    };
    let response = answer(state, &seen, &body);
    seen.status = response.status().as_u16();
    state.log().seen.push(seen);
    response
}

fn answer(state: &State, seen: &Seen, body: &[u8]) -> Response<Full<Bytes>> {
    let setup = &state.setup;
    if state.unavailable.load(Ordering::SeqCst) {
        return text_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &[],
            "Service cannot be reached: the system is down for maintenance",
        );
    }
    let expected = {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", setup.user, setup.password));
        format!("Basic {token}")
    };
    if seen.header("authorization") != Some(expected.as_str()) {
        return text_reply(
            StatusCode::UNAUTHORIZED,
            &[(
                "www-authenticate",
                "Basic realm=\"SAP NetWeaver Application Server [S4H/100]\"".into(),
            )],
            "Logon failed",
        );
    }
    let root = seen.path == SERVICE_PATH || seen.path == format!("{SERVICE_PATH}/");
    match (seen.method.as_str(), root) {
        ("GET", true) => {
            let mut headers = Vec::new();
            if seen
                .header("x-csrf-token")
                .is_some_and(|v| v.eq_ignore_ascii_case("fetch"))
            {
                let mut log = state.log();
                log.next_session += 1;
                let session = log.next_session;
                let token = format!("csrf-{session}-{:08x}", session.wrapping_mul(2_654_435_761));
                log.sessions.insert(session, token.clone());
                headers.push(("x-csrf-token", token));
                headers.push((
                    "set-cookie",
                    format!("{SESSION_COOKIE}={session}; path=/; HttpOnly"),
                ));
                headers.push((
                    "set-cookie",
                    "sap-usercontext=sap-client=100; path=/".into(),
                ));
            }
            reply(
                StatusCode::OK,
                &headers,
                json!({"d": {"EntitySets": [
                    "A_SalesOrderCreditSimulation", "A_SalesOrderItemPartnerSimln",
                    "A_SalesOrderItemSimulation", "A_SalesOrderItmPrcgElmntSimln",
                    "A_SalesOrderPartnerSimulation", "A_SalesOrderPrcgElmntSimln",
                    "A_SalesOrderPricingSimulation", "A_SalesOrderScheduleLineSimln",
                    "A_SalesOrderSimulation", "A_SlsOrdSimlnValAddedSrvc",
                ]}}),
            )
        }
        ("POST", false) if seen.path == format!("{SERVICE_PATH}/A_SalesOrderSimulation") => {
            simulate(state, seen, body)
        }
        (_, _) if seen.path.starts_with(SERVICE_PATH) => reply(
            StatusCode::NOT_FOUND,
            &[],
            odata_error(&[(
                "/IWBEP/CM_MGW_RT/021",
                format!(
                    "Resource not found for segment '{} {}'",
                    seen.method, seen.path
                ),
            )]),
        ),
        _ => text_reply(StatusCode::NOT_FOUND, &[], "Not found"),
    }
}

fn simulate(state: &State, seen: &Seen, body: &[u8]) -> Response<Full<Bytes>> {
    let setup = &state.setup;
    // The CSRF token must be the one fetched with the session cookie it came with.
    {
        let mut log = state.log();
        let cookies = seen.header("cookie").unwrap_or_default();
        let token = seen.header("x-csrf-token").unwrap_or_default();
        let valid = log.sessions.iter().any(|(session, issued)| {
            issued == token
                && cookies
                    .split(';')
                    .any(|c| c.trim() == format!("{SESSION_COOKIE}={session}"))
        });
        let expire = std::mem::take(&mut log.expire_next);
        if !valid || expire {
            return text_reply(
                StatusCode::FORBIDDEN,
                &[("x-csrf-token", "Required".into())],
                "CSRF token validation failed",
            );
        }
    }
    if !seen
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &[],
            odata_error(&[(
                "/IWFND/CM_BEC/026",
                "Content type of the request is not supported: send application/json".into(),
            )]),
        );
    }
    let order: Value = match serde_json::from_slice(body) {
        Ok(order) => order,
        Err(e) => {
            return bad_request(&[(
                "/IWBEP/CM_MGW_RT/176",
                format!("Malformed request body: {e}"),
            )]);
        }
    };
    let violations = conforms(&state.schemas, "A_SalesOrderSimulationType-create", &order);
    if !violations.is_empty() {
        state.log().violations.extend(violations.iter().cloned());
        let messages: Vec<(&str, String)> = violations
            .into_iter()
            .map(|v| ("/IWBEP/CM_MGW_RT/020", v))
            .collect();
        return bad_request(&messages);
    }
    match simulation(setup, &order) {
        Err(messages) => {
            let messages: Vec<(&str, String)> =
                messages.iter().map(|(c, m)| (*c, m.clone())).collect();
            bad_request(&messages)
        }
        Ok(d) => {
            let mut problems = conforms(&state.schemas, "A_SalesOrderSimulationType", &d);
            if !problems.is_empty() {
                for p in &mut problems {
                    *p = format!("the stand-in's own answer: {p}");
                }
                state.log().violations.extend(problems);
            }
            reply(StatusCode::CREATED, &[], json!({ "d": d }))
        }
    }
}

/// Every way `value` is not an instance of the definition's schema `name` (without
/// its namespace, e.g. `A_SalesOrderSimulationType-create`). OData V2 JSON's own
/// members (`__metadata`, `__deferred`) are allowed; the key of the simulated
/// document (`SalesOrder`), which SAP's examples leave out and SAP assigns, is not
/// required.
fn conforms(schemas: &Map<String, Value>, name: &str, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schemas, name, value, name, &mut errors);
    errors
}

fn check(
    schemas: &Map<String, Value>,
    name: &str,
    value: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    let Some(schema) = schemas.get(&format!("{NAMESPACE}{name}")) else {
        errors.push(format!("{path}: no schema {name}"));
        return;
    };
    let Some(object) = value.as_object() else {
        errors.push(format!("{path}: {value} is not an object"));
        return;
    };
    if object.contains_key("__deferred") {
        return;
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        if required != "SalesOrder" && !object.contains_key(required) {
            errors.push(format!("{path}: {required} is required"));
        }
    }
    for (key, value) in object {
        if key.starts_with("__") {
            continue;
        }
        let at = format!("{path}.{key}");
        let Some(property) = schema["properties"].get(key) else {
            errors.push(format!("{at}: no such property in {name}"));
            continue;
        };
        let target = |reference: &Value| {
            reference
                .as_str()
                .and_then(|r| r.rsplit('/').next())
                .and_then(|r| r.strip_prefix(NAMESPACE))
                .map(str::to_owned)
        };
        if let Some(single) = target(&property["$ref"]) {
            check(schemas, &single, value, &at, errors);
            continue;
        }
        if let Some(many) = target(&property["properties"]["results"]["items"]["$ref"]) {
            let entries = value["results"].as_array().or_else(|| value.as_array());
            match entries {
                Some(entries) => {
                    for (i, entry) in entries.iter().enumerate() {
                        check(schemas, &many, entry, &format!("{at}[{i}]"), errors);
                    }
                }
                None if value.get("__deferred").is_some() => {}
                None => errors.push(format!(
                    "{at}: {value} is neither {{\"results\": [...]}} nor an array"
                )),
            }
            continue;
        }
        check_value(property, value, &at, errors);
    }
}

fn check_value(property: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    match (property["type"].as_str(), value) {
        (_, Value::Null) if property["nullable"] == true => {}
        (Some("boolean"), Value::Bool(_)) => {}
        (Some("string"), Value::String(text)) => {
            if let Some(max) = property["maxLength"].as_u64()
                && text.chars().count() as u64 > max
            {
                errors.push(format!("{at}: `{text}` is longer than maxLength {max}"));
            }
            if property["format"] == "decimal" {
                let precision = property["x-sap-precision"].as_u64().unwrap_or(29) as usize;
                let scale = property["x-sap-scale"].as_u64().unwrap_or(0) as usize;
                let digits = text.strip_prefix('-').unwrap_or(text);
                let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
                let all_digits = !int.is_empty()
                    && int.bytes().all(|b| b.is_ascii_digit())
                    && frac.bytes().all(|b| b.is_ascii_digit());
                if !all_digits
                    || frac.len() > scale
                    || int.trim_start_matches('0').len() > precision - scale
                {
                    errors.push(format!(
                        "{at}: `{text}` is not a decimal({precision}, {scale})"
                    ));
                }
            }
            let is_date = property["example"]
                .as_str()
                .is_some_and(|e| e.starts_with("/Date("));
            if is_date && parse_date(text).is_none() {
                errors.push(format!("{at}: `{text}` is not an OData date /Date(ms)/"));
            }
        }
        (Some(ty), other) => errors.push(format!("{at}: {other} is not a {ty}")),
        (None, _) => {}
    }
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    let ms: i64 = text
        .strip_prefix("/Date(")?
        .strip_suffix(")/")?
        .parse()
        .ok()?;
    DateTime::from_timestamp_millis(ms).map(|t| t.date_naive())
}

fn date(day: NaiveDate) -> String {
    let ms = day
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_millis());
    format!("/Date({ms})/")
}

/// `value` with exactly `scale` decimals, as SAP writes an `Edm.Decimal`.
fn fixed(value: Decimal, scale: u32) -> String {
    let mut value = value.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
    value.rescale(scale);
    value.to_string()
}

fn deferred(path: &str) -> Value {
    json!({"__deferred": {"uri": format!("{SERVICE_PATH}/{path}")}})
}

type Messages = Vec<(&'static str, String)>;

/// The simulated document (`d`), or every message refusing it.
fn simulation(setup: &Setup, order: &Value) -> Result<Value, Messages> {
    let mut messages: Messages = Vec::new();
    let field = |name: &str| order[name].as_str().map(str::trim).unwrap_or_default();
    for (name, what) in [
        ("SalesOrderType", "sales document type"),
        ("SalesOrganization", "sales organization"),
        ("DistributionChannel", "distribution channel"),
        ("OrganizationDivision", "division"),
        ("SoldToParty", "sold-to party"),
    ] {
        if field(name).is_empty() {
            messages.push(("V1/384", format!("Enter the {what} ({name})")));
        }
    }
    if !field("SalesOrderType").is_empty() && field("SalesOrderType") != "OR" {
        messages.push((
            "V1/801",
            format!(
                "Sales document type {} is not allowed in sales area {}/{}/{}",
                field("SalesOrderType"),
                field("SalesOrganization"),
                field("DistributionChannel"),
                field("OrganizationDivision"),
            ),
        ));
    }
    let (org, channel, division) = &setup.sales_area;
    let area = (
        field("SalesOrganization"),
        field("DistributionChannel"),
        field("OrganizationDivision"),
    );
    if area != (org.as_str(), channel.as_str(), division.as_str()) {
        messages.push((
            "V1/312",
            format!("Sales area {}/{}/{} is not defined", area.0, area.1, area.2),
        ));
    }
    let sold_to = field("SoldToParty");
    match setup.customers.iter().find(|c| c.number == sold_to) {
        _ if sold_to.is_empty() => {}
        None => messages.push((
            "V1/331",
            format!(
                "Sold-to party {sold_to} not maintained for sales area {org}/{channel}/{division}"
            ),
        )),
        Some(c) if c.blocked => messages.push((
            "VP/203",
            format!("Sold-to party {sold_to} is blocked for sales"),
        )),
        Some(_) => {}
    }
    let currency = match field("TransactionCurrency") {
        "" => setup.currency.as_str(),
        code => code,
    };
    if currency != setup.currency {
        messages.push((
            "SG/105",
            format!(
                "Enter rate {} / {currency} rate type M for {} in the system settings",
                setup.currency,
                setup.today.format("%d.%m.%Y")
            ),
        ));
    }
    let requested = match field("RequestedDeliveryDate") {
        "" => setup.today,
        text => parse_date(text).unwrap_or(setup.today),
    };

    let items = order["to_Item"]["results"]
        .as_array()
        .or_else(|| order["to_Item"].as_array())
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        messages.push(("V1/555", "The sales document contains no items".into()));
    }
    let mut answered = Vec::new();
    let mut total = Decimal::ZERO;
    for item in &items {
        let number = item["SalesOrderItem"].as_str().unwrap_or_default();
        let material_number = item["Material"].as_str().unwrap_or_default().trim();
        let quantity = item["RequestedQuantity"]
            .as_str()
            .and_then(|q| q.parse::<Decimal>().ok())
            .unwrap_or_default();
        if material_number.is_empty() {
            messages.push(("V1/361", format!("Item {number}: enter a material")));
            continue;
        }
        if quantity <= Decimal::ZERO {
            messages.push((
                "V1/326",
                format!("Item {number}: enter a positive order quantity"),
            ));
        }
        let Some(material) = setup.materials.iter().find(|m| m.number == material_number) else {
            messages.push((
                "V1/392",
                format!(
                    "Material {material_number} is not defined for sales org.{org}, distr.chan.{channel}, language EN"
                ),
            ));
            continue;
        };
        let unit = match item["RequestedQuantityUnit"].as_str().map(str::trim) {
            None | Some("") => material.unit.as_str(),
            Some(unit) => unit,
        };
        if unit != material.unit {
            messages.push((
                "M3/351",
                format!("Unit {unit} is not defined for material {material_number}"),
            ));
        }
        let plant = match item["Plant"].as_str().map(str::trim) {
            None | Some("") => material.plant.as_str(),
            Some(plant) => plant,
        };
        if plant != material.plant {
            messages.push((
                "M3/305",
                format!("Material {material_number} is not maintained in plant {plant}"),
            ));
        }

        let net = (material.price * quantity / material.per)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        let tax = (net * setup.tax_percent / Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        total += net;
        let key = format!("SalesOrder='',SalesOrderItem='{number}'");
        let pricing = if item.get("to_PricingElement").is_some() {
            let condition = |step: &str,
                             ty: &str,
                             calc: &str,
                             base: Decimal,
                             rate: Decimal,
                             amount: Decimal,
                             per: Option<Decimal>| {
                json!({
                    "SalesOrder": "",
                    "SalesOrderItem": number,
                    "PricingProcedureStep": step,
                    "PricingProcedureCounter": "1",
                    "ConditionType": ty,
                    "PriceConditionDeterminationDte": date(setup.today),
                    "ConditionCalculationType": calc,
                    "ConditionBaseValue": fixed(base, 9),
                    "ConditionRateValue": fixed(rate, 9),
                    "ConditionCurrency": if per.is_some() { setup.currency.as_str() } else { "" },
                    "ConditionQuantity": per.map_or_else(|| "0".to_owned(), |p| fixed(p, 0)),
                    "ConditionQuantityUnit": if per.is_some() { material.unit.as_str() } else { "" },
                    "ConditionIsForStatistics": false,
                    "ConditionOrigin": "A",
                    "IsGroupCondition": "",
                    "ConditionAmount": fixed(amount, 2),
                    "TransactionCurrency": setup.currency,
                    "ConditionInactiveReason": "",
                    "ConditionClass": if per.is_some() { "B" } else { "D" },
                })
            };
            json!({"results": [
                condition("10", "PPR0", "C", quantity, material.price, net, Some(material.per)),
                condition("900", "TTX1", "A", net, setup.tax_percent, tax, None),
            ]})
        } else {
            deferred(&format!(
                "A_SalesOrderItemSimulation({key})/to_PricingElement"
            ))
        };

        // The availability check: the stock on the requested date, then the restock.
        let confirmed_now = quantity.min(material.stock).max(Decimal::ZERO);
        let mut lines = vec![(requested, quantity, confirmed_now)];
        let rest = quantity - confirmed_now;
        if let Some((on, restocked)) = material.restock
            && rest > Decimal::ZERO
        {
            lines.push((on.max(requested), Decimal::ZERO, rest.min(restocked)));
        }
        let confirmed: Decimal = lines.iter().map(|(_, _, c)| *c).sum();
        let schedule = if item.get("to_ScheduleLine").is_some() {
            let lines: Vec<Value> = lines
                .iter()
                .enumerate()
                .map(|(i, (on, ordered, confirmed))| {
                    json!({
                        "SalesOrder": "",
                        "SalesOrderItem": number,
                        "ScheduleLine": (i + 1).to_string(),
                        "RequestedDeliveryDate": date(requested),
                        "ConfirmedDeliveryDate": date(*on),
                        "OrderQuantityUnit": material.unit,
                        "OrderQuantitySAPUnit": material.unit,
                        "OrderQuantityISOUnit": "PCE",
                        "ScheduleLineOrderQuantity": fixed(*ordered, 3),
                        "ConfdOrderQtyByMatlAvailCheck": fixed(*confirmed, 3),
                        "OpenConfdDelivQtyInOrdQtyUnit": fixed(*confirmed, 3),
                        "CorrectedQtyInOrderQtyUnit": fixed(*ordered, 3),
                    })
                })
                .collect();
            json!({ "results": lines })
        } else {
            deferred(&format!(
                "A_SalesOrderItemSimulation({key})/to_ScheduleLine"
            ))
        };
        answered.push(json!({
            "SalesOrder": "",
            "SalesOrderItem": number,
            "HigherLevelItem": "",
            "SalesOrderItemCategory": "TAN",
            "Material": material.number,
            "PricingDate": date(setup.today),
            "RequestedQuantity": fixed(quantity, 3),
            "RequestedQuantityUnit": material.unit,
            "OrderQuantityUnit": material.unit,
            "ConfdDelivQtyInOrderQtyUnit": fixed(confirmed, 3),
            "TransactionCurrency": setup.currency,
            "NetAmount": fixed(net, 2),
            "TaxAmount": fixed(tax, 2),
            "Plant": material.plant,
            "to_Partner": deferred(&format!("A_SalesOrderItemSimulation({key})/to_Partner")),
            "to_PricingElement": pricing,
            "to_ScheduleLine": schedule,
        }));
    }
    if !messages.is_empty() {
        return Err(messages);
    }

    let pricing = if order.get("to_Pricing").is_some() {
        json!({"SalesOrder": "", "TotalNetAmount": fixed(total, 2), "TransactionCurrency": setup.currency})
    } else {
        deferred("A_SalesOrderSimulation('')/to_Pricing")
    };
    Ok(json!({
        "__metadata": {
            "id": format!("{SERVICE_PATH}/A_SalesOrderSimulation('')"),
            "uri": format!("{SERVICE_PATH}/A_SalesOrderSimulation('')"),
            "type": "API_SALES_ORDER_SIMULATION_SRV.A_SalesOrderSimulationType",
        },
        "SalesOrder": "",
        "SalesOrderType": field("SalesOrderType"),
        "SalesOrganization": org,
        "DistributionChannel": channel,
        "OrganizationDivision": division,
        "SoldToParty": sold_to,
        "PurchaseOrderByCustomer": field("PurchaseOrderByCustomer"),
        "SalesOrderDate": date(setup.today),
        "TransactionCurrency": setup.currency,
        "PricingDate": date(setup.today),
        "RequestedDeliveryDate": date(requested),
        "to_Credit": deferred("A_SalesOrderSimulation('')/to_Credit"),
        "to_Item": {"results": answered},
        "to_Partner": deferred("A_SalesOrderSimulation('')/to_Partner"),
        "to_Pricing": pricing,
        "to_PricingElement": deferred("A_SalesOrderSimulation('')/to_PricingElement"),
    }))
}
