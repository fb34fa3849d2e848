//! The SAP sink: every body it emits is checked against SAP's published metadata
//! (`tests/fixtures/public/sap_API_SALES_ORDER_SRV.edmx`), and the whole delivery
//! (CSRF token and cookies, a token that expires, OData errors, exactly once) runs
//! against a mock of the service that checks each body against the same metadata.

use crate::support::{Tenon, Workspace, sample};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tenon_sdk::model::Order;

const EDMX: &str = include_str!("../fixtures/public/sap_API_SALES_ORDER_SRV.edmx");
const SAMPLE_BODY: &str = include_str!("../fixtures/public/sap_salesorder_create.json");

/// One property of an entity type, as the metadata states it.
#[derive(Debug, Clone)]
struct Property {
    edm: String,
    max_length: Option<usize>,
    precision: Option<u32>,
    scale: Option<u32>,
    creatable: bool,
}

/// An entity type: its properties, and its navigation properties' target types.
type EntityType = (BTreeMap<String, Property>, BTreeMap<String, String>);

/// The entity types of an OData V2 service.
struct Metadata {
    types: BTreeMap<String, EntityType>,
}

impl Metadata {
    fn parse(edmx: &str) -> Metadata {
        let doc = roxmltree::Document::parse(edmx).unwrap();
        let sap = "http://www.sap.com/Protocols/SAPData";
        // Association name -> (role -> entity type).
        let mut roles: BTreeMap<(String, String), String> = BTreeMap::new();
        for assoc in doc.descendants().filter(|n| n.has_tag_name("Association")) {
            let name = assoc.attribute("Name").unwrap();
            for end in assoc.children().filter(|n| n.has_tag_name("End")) {
                let ty = end.attribute("Type").unwrap().rsplit('.').next().unwrap();
                roles.insert(
                    (name.to_owned(), end.attribute("Role").unwrap().to_owned()),
                    ty.to_owned(),
                );
            }
        }
        let mut types = BTreeMap::new();
        for ty in doc.descendants().filter(|n| n.has_tag_name("EntityType")) {
            let mut props = BTreeMap::new();
            let mut navs = BTreeMap::new();
            for p in ty.children().filter(|n| n.has_tag_name("Property")) {
                let num = |a: &str| p.attribute(a).and_then(|v| v.parse().ok());
                props.insert(
                    p.attribute("Name").unwrap().to_owned(),
                    Property {
                        edm: p.attribute("Type").unwrap().to_owned(),
                        max_length: num("MaxLength").map(|v: u32| v as usize),
                        precision: num("Precision"),
                        scale: num("Scale"),
                        creatable: p.attribute((sap, "creatable")) != Some("false"),
                    },
                );
            }
            for n in ty
                .children()
                .filter(|n| n.has_tag_name("NavigationProperty"))
            {
                let assoc = n
                    .attribute("Relationship")
                    .unwrap()
                    .rsplit('.')
                    .next()
                    .unwrap();
                let target = &roles[&(assoc.to_owned(), n.attribute("ToRole").unwrap().to_owned())];
                navs.insert(n.attribute("Name").unwrap().to_owned(), target.clone());
            }
            types.insert(ty.attribute("Name").unwrap().to_owned(), (props, navs));
        }
        Metadata { types }
    }

    /// Every way `body` is not a valid create (deep insert) of `entity_type`.
    fn check(&self, entity_type: &str, body: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check_at(entity_type, body, entity_type, &mut errors);
        errors
    }

    fn check_at(&self, ty: &str, body: &Value, path: &str, errors: &mut Vec<String>) {
        let (props, navs) = &self.types[ty];
        let Some(object) = body.as_object() else {
            errors.push(format!("{path}: not an object"));
            return;
        };
        for (name, value) in object {
            let at = format!("{path}.{name}");
            if let Some(target) = navs.get(name) {
                match value["results"].as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.check_at(target, item, &format!("{at}[{i}]"), errors);
                        }
                    }
                    None => self.check_at(target, value, &at, errors),
                }
                continue;
            }
            let Some(p) = props.get(name) else {
                errors.push(format!("{at}: no such property in {ty}"));
                continue;
            };
            if !p.creatable {
                errors.push(format!("{at}: not creatable"));
            }
            match (p.edm.as_str(), value) {
                (_, Value::Null) => {}
                ("Edm.String", Value::String(s)) => {
                    if let Some(max) = p.max_length.filter(|max| s.chars().count() > *max) {
                        errors.push(format!("{at}: `{s}` is longer than MaxLength {max}"));
                    }
                }
                ("Edm.Decimal", Value::String(s)) => {
                    let (int, frac) = s
                        .trim_start_matches('-')
                        .split_once('.')
                        .unwrap_or((s.trim_start_matches('-'), ""));
                    let digits_ok = !int.is_empty()
                        && int.bytes().all(|b| b.is_ascii_digit())
                        && frac.bytes().all(|b| b.is_ascii_digit());
                    let scale = p.scale.unwrap_or(0) as usize;
                    let precision = p.precision.unwrap_or(29) as usize;
                    let int_digits = int.trim_start_matches('0').len();
                    if !digits_ok || frac.len() > scale || int_digits > precision - scale {
                        errors.push(format!(
                            "{at}: `{s}` is not an Edm.Decimal({precision}, {scale})"
                        ));
                    }
                }
                ("Edm.Boolean", Value::Bool(_)) => {}
                ("Edm.DateTime" | "Edm.DateTimeOffset", Value::String(s))
                    if s.starts_with("/Date(") && s.ends_with(")/") => {}
                (edm, other) => errors.push(format!("{at}: {other} is not an {edm}")),
            }
        }
    }
}

fn settings() -> sap_sink::Settings {
    sap_sink::Settings {
        sales_order_type: "OR".into(),
        sales_organization: "1710".into(),
        distribution_channel: "10".into(),
        organization_division: "00".into(),
        quantity_unit: "PC".into(),
        price_condition_type: "PR00".into(),
        discount_condition_type: "RB00".into(),
        revision_text_id: "0001".into(),
        payment_terms: [
            ("Net30".to_owned(), "0001".to_owned()),
            ("Net45".to_owned(), "0002".to_owned()),
        ]
        .into(),
        sold_to: [
            ("0015g00000XyZ12AAB".to_owned(), "USCU_S12".to_owned()),
            ("0015g00000XyZ34AAB".to_owned(), "17100001".to_owned()),
        ]
        .into(),
    }
}

/// The orders quote-to-order makes of a sample quote (native code, as the component).
fn orders_of(sample_name: &str) -> Vec<Order> {
    let model: cpq_source::QuoteModel = serde_json::from_str(sample(sample_name)).unwrap();
    let quote = cpq_source::to_quote(model, None).unwrap();
    quote_to_order::map_quote(&quote).unwrap()
}

#[test]
fn the_validator_knows_the_published_sample_and_catches_what_is_wrong() {
    let meta = Metadata::parse(EDMX);
    let published: Value = serde_json::from_str(SAMPLE_BODY).unwrap();
    assert_eq!(
        meta.check("A_SalesOrderType", &published),
        Vec::<String>::new()
    );
    let wrong = json!({
        "SalesOrderType": "ZCM-TOO-LONG",
        "SalesOrder": "1",
        "TotalNetAmount": "1.0",
        "Colour": "red",
        "to_Item": {"results": [{"SalesOrderItem": "10", "RequestedQuantity": "1.2345", "Material": 7}]},
    });
    assert_eq!(
        meta.check("A_SalesOrderType", &wrong),
        [
            "A_SalesOrderType.Colour: no such property in A_SalesOrderType",
            "A_SalesOrderType.SalesOrderType: `ZCM-TOO-LONG` is longer than MaxLength 4",
            "A_SalesOrderType.TotalNetAmount: not creatable",
            "A_SalesOrderType.to_Item[0].Material: 7 is not an Edm.String",
            "A_SalesOrderType.to_Item[0].RequestedQuantity: `1.2345` is not an Edm.Decimal(15, 3)",
        ]
    );
}

#[test]
fn every_body_the_sap_sink_emits_is_valid_against_the_metadata() {
    let meta = Metadata::parse(EDMX);
    let mut orders: Vec<Order> = ["plain.json", "bundle.json"]
        .iter()
        .flat_map(|s| orders_of(s))
        .collect();
    // Beyond the samples: a long product name, a fractional quantity, JPY and KWD.
    let mut long = orders[0].clone();
    long.id = "Q-00900-P".into();
    long.lines[0].product.name =
        Some("A product name that is much longer than forty characters".into());
    long.lines[0].quantity = "2.5".parse().unwrap();
    orders.push(long);
    let mut kwd = orders[0].clone();
    kwd.id = "Q-00901-P".into();
    // A revision is recorded in a header text, which the metadata must allow too.
    kwd.revision = Some("2026-11-27T11:00:00Z".into());
    kwd.currency = tenon_sdk::model::Currency::new("KWD").unwrap();
    for line in &mut kwd.lines {
        line.unit_price =
            tenon_sdk::model::Money::new("12.345".parse().unwrap(), kwd.currency.clone());
        line.list_price = None;
    }
    orders.push(kwd);
    assert!(orders.len() >= 5);
    for order in &orders {
        let body = sap_sink::sales_order_body(order, &settings()).unwrap();
        assert_eq!(
            meta.check("A_SalesOrderType", &body),
            Vec::<String>::new(),
            "{}: {body:#}",
            order.id
        );
    }
    // The bundle keeps its structure: components point at their parent item.
    let bundle = sap_sink::sales_order_body(&orders_of("bundle.json")[0], &settings()).unwrap();
    let items = bundle["to_Item"]["results"].as_array().unwrap();
    assert_eq!(items[0]["SalesOrderItem"], "10");
    assert!(items[0].get("HigherLevelItem").is_none());
    assert_eq!(items[1]["HigherLevelItem"], "10");
    assert_eq!(
        items[1]["to_PricingElement"]["results"][0]["ConditionRateValue"],
        "450"
    );
}

#[test]
fn what_sap_cannot_hold_is_rejected_with_every_reason() {
    let mut order = orders_of("plain.json").remove(0);
    order.customer.id = "0015g00000UNMAPPED".into();
    order.lines[0].quantity = "1.2345".parse().unwrap();
    order.lines[1].product.code = Some("X".repeat(41));
    assert_eq!(
        sap_sink::sales_order_body(&order, &settings()).unwrap_err(),
        [
            "customer `0015g00000UNMAPPED` has no SAP customer number (customer master `external_ids.sap`, or config `sold_to`)",
            "line 10 quantity 1.2345 does not fit SAP's Edm.Decimal(15, 3)",
            format!(
                "line 20 material `{}` is longer than SAP's 40 characters",
                "X".repeat(41)
            )
            .as_str(),
        ]
    );
}

#[test]
fn odata_errors_are_classified_with_every_message() {
    use tenon_sdk::Failure;
    let body = br#"{"error":{"code":"V1/320","message":{"lang":"en","value":"Sold-to party USCU_S99 does not exist"},
        "innererror":{"errordetails":[
          {"code":"V1/320","message":"Sold-to party USCU_S99 does not exist","severity":"error"},
          {"code":"V4/219","message":"Material MZ-X is not defined for sales org. 1710","severity":"error"}]}}}"#;
    assert_eq!(
        sap_sink::failure(400, body),
        Failure::Rejected(vec![
            "SAP: Sold-to party USCU_S99 does not exist (V1/320)".into(),
            "SAP: Material MZ-X is not defined for sales org. 1710 (V4/219)".into(),
        ])
    );
    assert!(matches!(
        sap_sink::failure(503, b"busy"),
        Failure::Retryable(_)
    ));
    assert!(matches!(sap_sink::failure(401, b""), Failure::Invalid(_)));
}

/// A mock of API_SALES_ORDER_SRV: CSRF tokens bound to a session cookie, bodies
/// checked against the metadata, lookup by AccountingDocExternalReference.
#[derive(Default)]
struct MockSap {
    token: String,
    expire_next_post: bool,
    fetches: usize,
    created: Vec<Value>,
    refused: Vec<String>,
    /// Every change to an order after its creation: `METHOD path`.
    changes: Vec<String>,
}

const SERVICE: &str = "/sap/opu/odata/sap/API_SALES_ORDER_SRV";

async fn serve_sap(state: Arc<Mutex<MockSap>>, meta: Arc<Metadata>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (state, meta) = (state.clone(), meta.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (state, meta) = (state.clone(), meta.clone());
                    async move { Ok::<_, hyper::Error>(sap_answer(req, &state, &meta).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}{SERVICE}")
}

fn reply(status: StatusCode, headers: &[(&str, &str)], body: Value) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn odata_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": {"lang": "en", "value": message},
        "innererror": {"errordetails": [{"code": code, "message": message, "severity": "error"}]}}})
}

async fn sap_answer(
    req: Request<hyper::body::Incoming>,
    state: &Mutex<MockSap>,
    meta: &Metadata,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut s = state.lock().unwrap();
    if parts.method == hyper::Method::GET
        && path == format!("{SERVICE}/")
        && header("x-csrf-token") == "Fetch"
    {
        s.fetches += 1;
        s.token = format!("token-{}", s.fetches);
        let cookie = format!("SAP_SESSIONID_S4H_100={}; path=/", s.fetches);
        return reply(
            StatusCode::OK,
            &[
                ("x-csrf-token", s.token.as_str()),
                ("set-cookie", cookie.as_str()),
                ("set-cookie", "sap-usercontext=sap-client=100; path=/"),
            ],
            json!({"d": {"EntitySets": ["A_SalesOrder"]}}),
        );
    }
    // A sales order's items and texts, and changes to them (SAP's deep paths).
    let path = path.replace("%27", "'");
    let order_of =
        |s: &MockSap, number: &str| s.created.iter().position(|o| o["SalesOrder"] == number);
    let between = |text: &str, from: &str, to: &str| {
        text.split_once(from)
            .and_then(|(_, rest)| rest.split_once(to))
            .map(|(v, _)| v.to_owned())
    };
    if parts.method == hyper::Method::GET
        && let Some(rest) = path.strip_prefix(&format!("{SERVICE}/A_SalesOrder('"))
        && let Some((number, nav)) = rest.split_once("')/")
    {
        let Some(at) = order_of(&s, number) else {
            return reply(
                StatusCode::NOT_FOUND,
                &[],
                odata_error("SO/404", "no such order"),
            );
        };
        let results = s.created[at][nav]["results"].clone();
        return reply(StatusCode::OK, &[], json!({"d": {"results": results}}));
    }
    let writes = [
        hyper::Method::POST,
        hyper::Method::PATCH,
        hyper::Method::DELETE,
    ];
    if writes.contains(&parts.method) && path != format!("{SERVICE}/A_SalesOrder") {
        let session = format!("SAP_SESSIONID_S4H_100={}", s.fetches);
        if header("x-csrf-token") != s.token || !header("cookie").contains(&session) {
            return reply(
                StatusCode::FORBIDDEN,
                &[("x-csrf-token", "Required")],
                odata_error("/IWFND/CM_COS/011", "CSRF token validation failed"),
            );
        }
        let change: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        s.changes.push(format!(
            "{} {}",
            parts.method,
            path.trim_start_matches(SERVICE)
        ));
        let number = between(&path, "SalesOrder='", "'")
            .or_else(|| between(&path, "A_SalesOrder('", "'"))
            .unwrap_or_default();
        let Some(at) = order_of(&s, &number) else {
            return reply(
                StatusCode::NOT_FOUND,
                &[],
                odata_error("SO/404", "no such order"),
            );
        };
        let order = &mut s.created[at];
        if path.contains("/A_SalesOrderItem(") {
            let item = between(&path, "SalesOrderItem='", "'").unwrap_or_default();
            let items = order["to_Item"]["results"].as_array_mut().unwrap();
            let Some(i) = items
                .iter()
                .position(|it| it["SalesOrderItem"] == item.as_str())
            else {
                return reply(
                    StatusCode::NOT_FOUND,
                    &[],
                    odata_error("SO/404", "no such item"),
                );
            };
            if parts.method == hyper::Method::DELETE {
                items.remove(i);
            } else {
                let errors = meta.check("A_SalesOrderItemType", &change);
                if !errors.is_empty() {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        &[],
                        odata_error("/IWBEP/CM_MGW_RT/020", &errors.join("; ")),
                    );
                }
                for (k, v) in change.as_object().unwrap() {
                    items[i][k] = v.clone();
                }
            }
            return reply(StatusCode::NO_CONTENT, &[], Value::Null);
        }
        if path.ends_with("/to_Item") {
            let errors = meta.check("A_SalesOrderItemType", &change);
            if !errors.is_empty() {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &[],
                    odata_error("/IWBEP/CM_MGW_RT/020", &errors.join("; ")),
                );
            }
            order["to_Item"]["results"]
                .as_array_mut()
                .unwrap()
                .push(change.clone());
            return reply(StatusCode::CREATED, &[], json!({"d": change}));
        }
        if path.contains("/A_SalesOrderText(") {
            let id = between(&path, "LongTextID='", "'").unwrap_or_default();
            let texts = order["to_Text"]["results"].as_array_mut();
            let Some(text) =
                texts.and_then(|t| t.iter_mut().find(|t| t["LongTextID"] == id.as_str()))
            else {
                return reply(
                    StatusCode::NOT_FOUND,
                    &[],
                    odata_error("SO/404", "no such text"),
                );
            };
            text["LongText"] = change["LongText"].clone();
            return reply(StatusCode::NO_CONTENT, &[], Value::Null);
        }
        if path.ends_with("/to_Text") {
            order["to_Text"] = json!({"results": [change.clone()]});
            return reply(StatusCode::CREATED, &[], json!({"d": change}));
        }
    }
    if parts.method == hyper::Method::GET && path == format!("{SERVICE}/A_SalesOrder") {
        let wanted = query.split("%27").nth(1).unwrap_or_default().to_owned();
        let results: Vec<Value> = s
            .created
            .iter()
            .filter(|o| o["AccountingDocExternalReference"] == wanted.as_str())
            .map(|o| json!({"SalesOrder": o["SalesOrder"]}))
            .collect();
        return reply(StatusCode::OK, &[], json!({"d": {"results": results}}));
    }
    if parts.method == hyper::Method::POST && path == format!("{SERVICE}/A_SalesOrder") {
        let session = format!("SAP_SESSIONID_S4H_100={}", s.fetches);
        let token_ok = header("x-csrf-token") == s.token && header("cookie").contains(&session);
        if !token_ok || s.expire_next_post {
            s.expire_next_post = false;
            return reply(
                StatusCode::FORBIDDEN,
                &[("x-csrf-token", "Required")],
                odata_error("/IWFND/CM_COS/011", "CSRF token validation failed"),
            );
        }
        let order: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &[],
                    odata_error("/IWBEP/CM_MGW_RT/176", &e.to_string()),
                );
            }
        };
        let errors = meta.check("A_SalesOrderType", &order);
        if !errors.is_empty() {
            s.refused.extend(errors.clone());
            return reply(
                StatusCode::BAD_REQUEST,
                &[],
                odata_error("/IWBEP/CM_MGW_RT/020", &errors.join("; ")),
            );
        }
        if order["SoldToParty"] == "BLOCKED1" {
            return reply(
                StatusCode::BAD_REQUEST,
                &[],
                odata_error("V1/320", "Sold-to party BLOCKED1 is blocked for sales"),
            );
        }
        let number = format!("{:010}", 1000 + s.created.len());
        let mut stored = order.clone();
        stored["SalesOrder"] = json!(number);
        s.created.push(stored);
        return reply(
            StatusCode::CREATED,
            &[],
            json!({"d": {"SalesOrder": number, "AccountingDocExternalReference": order["AccountingDocExternalReference"]}}),
        );
    }
    reply(
        StatusCode::NOT_FOUND,
        &[],
        odata_error("/IWFND/MED/170", &format!("no {path}")),
    )
}

fn config(service_url: &str) -> String {
    format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
config = {{ po_number_field = "Customer_PO__c" }}
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.sap]
path = "plugins/sap-sink"
config = {{ service_url = "{service_url}", sold_to = '{{"0015g00000XyZ12AAB": "USCU_S12", "0015g00000XyZ34AAB": "BLOCKED1"}}', payment_terms = '{{"Net30": "0001", "Net45": "0002"}}' }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.quote-to-sap]
source = "cpq-source"
steps = ["quote-to-order"]
sink = "sap"
max_attempts = 3
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_reach_sap_through_its_csrf_flow_once() {
    let meta = Arc::new(Metadata::parse(EDMX));
    let state = Arc::new(Mutex::new(MockSap::default()));
    let service = serve_sap(state.clone(), meta).await;
    let ws = Workspace::new();
    ws.write_config(&config(&service));
    let tenon = Tenon::start(&ws);

    // The plain quote: token fetched, then the POST carries it with the cookies.
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"],
        json!({"Delivered": {"reference": "0000001000", "detail": "SAP sales order created"}})
    );
    {
        let s = state.lock().unwrap();
        assert_eq!(s.created.len(), 1);
        assert!(s.refused.is_empty(), "{:?}", s.refused);
        assert_eq!(s.created[0]["SoldToParty"], "USCU_S12");
        // The order id as SAP's reference, the customer's PO number as theirs, the
        // quote's start as the requested date (2026-12-01), Net30 as key 0001.
        assert_eq!(s.created[0]["AccountingDocExternalReference"], "Q-00101-P");
        assert_eq!(s.created[0]["PurchaseOrderByCustomer"], "4500012345");
        assert_eq!(
            s.created[0]["RequestedDeliveryDate"],
            "/Date(1796083200000)/"
        );
        assert_eq!(s.created[0]["CustomerPaymentTerms"], "0001");
    }

    // The token expires: one 403 `Required`, a fresh token, the POST again.
    state.lock().unwrap().expire_next_post = true;
    let again = sample("plain.json")
        .replace("\"Q-00101\"", "\"Q-00111\"")
        .replace("a0q5g000001AbCdAAK", "a0q5g000001AbZzAAK");
    let ids = tenon.send_quote(&again).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["Delivered"]["reference"],
        "0000001001"
    );
    let fetches = state.lock().unwrap().fetches;
    assert_eq!(
        fetches, 3,
        "one fetch, then one more after the expiry: {status:#}"
    );

    // A revision of the quote (4 laptops instead of 3): the order is changed, not
    // created again: the laptops' quantity patched, the docks left, the revision text
    // added; nothing else.
    let revised = sample("plain.json")
        .replace(
            "\"Q-00101\"",
            "\"Q-00101\", \"LastModifiedDate\": \"2026-11-27T11:00:00Z\"",
        )
        .replacen("\"SBQQ__Quantity__c\": 3,", "\"SBQQ__Quantity__c\": 4,", 1)
        .replace(
            "\"SBQQ__NetTotal__c\": 3507.3",
            "\"SBQQ__NetTotal__c\": 4676.4",
        );
    let ids = tenon.send_quote(&revised).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"],
        json!({"Delivered": {"reference": "0000001000", "detail": "SAP sales order changed to the quote's revision"}})
    );
    {
        let s = state.lock().unwrap();
        assert_eq!(s.created.len(), 2, "nothing created again");
        assert_eq!(
            s.changes,
            [
                "PATCH /A_SalesOrderItem(SalesOrder='0000001000',SalesOrderItem='10')",
                "PATCH /A_SalesOrderText(SalesOrder='0000001000',Language='EN',LongTextID='0001')",
                "POST /A_SalesOrder('0000001000')/to_Text",
            ]
        );
        let items = &s.created[0]["to_Item"]["results"];
        assert_eq!(items[0]["RequestedQuantity"], "4");
        assert_eq!(items[1]["RequestedQuantity"], "3");
        assert_eq!(
            s.created[0]["to_Text"]["results"][0]["LongText"],
            "tenon revision 2026-11-27T11:00:00Z"
        );
    }

    // SAP refuses the customer of the bundle: its OData message, as a rejection.
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let results: Vec<Value> = status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].clone())
        .collect();
    assert_eq!(
        results,
        [
            json!({"Rejected": {"reasons": ["SAP: Sold-to party BLOCKED1 is blocked for sales (V1/320)"]}}),
            json!({"Rejected": {"reasons": ["SAP: Sold-to party BLOCKED1 is blocked for sales (V1/320)"]}}),
        ]
    );
    assert!(
        state.lock().unwrap().refused.is_empty(),
        "every body fit the metadata"
    );
}
