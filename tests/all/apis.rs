//! Synchronous APIs through the binary: `[apis.*]` routes answered by an API plugin
//! (the `api-echo` fixture: parameters, keys and scopes, limits, a deadline that fires,
//! a trap, the answer cache, a hot swap under load) or by a source and transform steps
//! run at once (the same answer as the queued path), and a source that acknowledges
//! only once its steps have run (`ack = "validated"`).

use crate::support::{Tenon, Workspace, sample};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

const ECHO: &str = r#"
[plugins.echo]
path = "plugins/api-echo"

[apis.echo]
plugin = "echo"
path = "/items/{id}"
deadline_ms = 400

[apis.any]
plugin = "echo"
methods = ["GET"]
deadline_ms = 400

[apis.cached]
plugin = "echo"
cache_ttl_secs = 60

[apis.limited]
plugin = "echo"
rate_limit = { per_second = 1, burst = 2 }
"#;

async fn call(
    tenon: &Tenon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> client::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    client::request(
        method,
        &format!("{}{path}", tenon.base),
        &headers,
        body.map(|b| ("application/json", b.to_vec())),
    )
    .await
    .unwrap()
}

fn problem(reply: &client::Response) -> Value {
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/problem+json"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_plugin_answers_within_its_route_keys_limits_and_deadline() {
    let ws = Workspace::new();
    ws.write_config(ECHO);
    let tenon = Tenon::start(&ws);
    let admin = Some(tenon.token.as_str());

    // The plugin gets the method, the path below the route, its parameters, the
    // query, the body and the caller's trace context; never the caller's key.
    let reply = call(
        &tenon,
        "POST",
        "/v1/apis/echo/items/A%2D7?quantity=3&currency=EUR",
        admin,
        Some(br#"{"q": 1}"#),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("x-echo-label"), Some("v1"));
    let echo = reply.json().unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/items/A%2D7");
    assert_eq!(echo["params"], json!([["id", "A-7"]]));
    assert_eq!(
        echo["query"],
        json!([["quantity", "3"], ["currency", "EUR"]])
    );
    assert_eq!(echo["body"], r#"{"q": 1}"#);
    assert_eq!(echo["content_type"], "application/json");
    assert!(
        echo["traceparent"]
            .as_str()
            .unwrap()
            .contains("0af7651916cd43dd8448eb211c80319c")
    );
    assert_eq!(echo["authorization"], Value::Null);
    // The answer names its span, in the caller's trace.
    let traceparent = reply.header("traceparent").unwrap();
    assert!(
        traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{traceparent}"
    );

    // The route's methods and path; an unknown API.
    let reply = call(&tenon, "DELETE", "/v1/apis/echo/items/1", admin, None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, POST"));
    let reply = call(&tenon, "GET", "/v1/apis/echo/other/1", admin, None).await;
    assert_eq!(reply.status, 404);
    assert!(
        problem(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("/items/{id}")
    );
    let reply = call(&tenon, "GET", "/v1/apis/nope", admin, None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(problem(&reply)["type"], "urn:tenon:problem:unknown-api");

    // Keys and scopes: none, one for another API, one for this API.
    let reply = call(&tenon, "GET", "/v1/apis/any", None, None).await;
    assert_eq!(reply.status, 401);
    let key = |scopes: Value| {
        let tenon = &tenon;
        async move {
            let created = tenon
                .post(
                    "/v1/keys",
                    "application/json",
                    json!({"name": "caller", "scopes": scopes})
                        .to_string()
                        .as_bytes(),
                )
                .await;
            assert_eq!(created.status, 201);
            created.json().unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let echo_only = key(json!(["api:echo"])).await;
    let reply = call(&tenon, "GET", "/v1/apis/any", Some(&echo_only), None).await;
    assert_eq!(reply.status, 403);
    assert!(
        problem(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("api:any")
    );
    let reply = call(
        &tenon,
        "GET",
        "/v1/apis/echo/items/1",
        Some(&echo_only),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    let ingest_only = key(json!(["ingest:*"])).await;
    let reply = call(
        &tenon,
        "GET",
        "/v1/apis/echo/items/1",
        Some(&ingest_only),
        None,
    )
    .await;
    assert_eq!(reply.status, 403);

    // Failures answer at once, by class.
    let reply = call(&tenon, "GET", "/v1/apis/any/reject", admin, None).await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        problem(&reply)["reasons"],
        json!(["first reason", "second reason"])
    );
    let reply = call(&tenon, "GET", "/v1/apis/any/invalid", admin, None).await;
    assert_eq!(reply.status, 400);
    let reply = call(&tenon, "GET", "/v1/apis/any/trap", admin, None).await;
    assert_eq!(reply.status, 502);
    let trap = problem(&reply);
    assert_eq!(trap["type"], "urn:tenon:problem:plugin-trap");
    assert!(
        trap["detail"].as_str().unwrap().contains("asked to trap"),
        "{trap}"
    );

    // A plugin that never answers: 504 at the route's deadline, not the plugin's own
    // (5 s), and the server goes on answering.
    let started = Instant::now();
    let reply = call(&tenon, "GET", "/v1/apis/any/spin", admin, None).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(problem(&reply)["type"], "urn:tenon:problem:deadline");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let reply = call(&tenon, "GET", "/v1/apis/any/fine", admin, None).await;
    assert_eq!(reply.status, 200);

    // The cache: the same request is answered from it, another is not.
    let first = call(&tenon, "GET", "/v1/apis/cached/x?n=1", admin, None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("tenon-cache"), None);
    let again = call(&tenon, "GET", "/v1/apis/cached/x?n=1", admin, None).await;
    assert_eq!(again.header("tenon-cache"), Some("hit"));
    assert_eq!(again.body, first.body);
    let other = call(&tenon, "GET", "/v1/apis/cached/x?n=2", admin, None).await;
    assert_eq!(other.header("tenon-cache"), None);

    // The route's rate limit: a burst of two, then 429 with when to come back.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            call(&tenon, "GET", "/v1/apis/limited", admin, None)
                .await
                .status,
        );
    }
    assert_eq!(&statuses[..2], &[200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");

    // The routes are in the OpenAPI description, and the answers in the metrics.
    let doc = tenon.get("/v1/openapi.json").await.json().unwrap();
    let op = &doc["paths"]["/v1/apis/echo/items/{id}"]["post"];
    assert!(
        op["description"].as_str().unwrap().contains("api:echo"),
        "{op}"
    );
    assert_eq!(op["parameters"][0]["name"], "id");
    assert!(doc["paths"]["/v1/apis/any"]["get"].is_object());
    assert!(doc["paths"]["/v1/apis/any"]["post"].is_null());
    for outcome in ["ok", "deadline", "trap", "rejected"] {
        let series = format!(
            "tenon_api_request_duration_seconds_count{{api=\"any\",outcome=\"{outcome}\"}}"
        );
        assert!(tenon.metric(&series).await >= 1, "no {series}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_plugin_is_hot_swapped_under_load_without_a_failed_answer() {
    let ws = Workspace::new();
    ws.write_config(ECHO);
    let tenon = std::sync::Arc::new(Tenon::start(&ws));
    let manifest = ws.path().join("plugins/api-echo/plugin.toml");
    let v1 = std::fs::read_to_string(&manifest).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (tenon, stop) = (tenon.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut labels = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = call(&tenon, "GET", "/v1/apis/any/x", Some(&tenon.token), None).await;
                assert_eq!(
                    reply.status,
                    200,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                labels.push(reply.json().unwrap()["label"].as_str().unwrap().to_owned());
            }
            labels
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new version: the same component, another label (a new version digest); a
    // version dropped into a watched directory names its component.
    let component = std::fs::read(ws.path().join("plugins/api-echo/api_echo.wasm")).unwrap();
    let v2 = v1.replace("label = \"v1\"", "label = \"v2\"").replace(
        "component = \"api_echo.wasm\"",
        &format!(
            "component = \"api_echo.wasm\"\ncomponent_digest = \"{}\"",
            tenon::model::digest(&component)
        ),
    );
    std::fs::write(&manifest, v2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = call(&tenon, "GET", "/v1/apis/any/x", Some(&tenon.token), None).await;
        if reply.json().unwrap()["label"] == "v2" {
            break;
        }
        if Instant::now() > deadline {
            let plugins = tenon.get("/v1/plugins").await.json().unwrap();
            panic!("the new version never answered: {plugins:#}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        let labels = caller.await.unwrap();
        total += labels.len();
        // Each caller saw v1, then v2, and never v1 again once v2 answered.
        let first_v2 = labels
            .iter()
            .position(|l| l == "v2")
            .unwrap_or(labels.len());
        assert!(labels[first_v2..].iter().all(|l| l == "v2"), "{labels:?}");
        assert!(labels.last().is_some_and(|l| l == "v2"), "{labels:?}");
    }
    assert!(total > 20, "only {total} answers under load");
    let plugins = tenon.get("/v1/plugins").await.json().unwrap();
    let echo = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["kind"], "api");
    assert_eq!(echo["swaps"], 1, "{echo:#}");
}

/// The example's chain, plus the validation as an API and a source that answers
/// only once the steps have run.
fn chain_with_apis(erp: &str) -> String {
    format!(
        r#"{}
[apis.validate-quote]
source = "cpq-source"
steps = ["quote-to-order", "gateway", "router"]
deadline_ms = 10000

[plugins.cpq-validated]
path = "plugins/cpq-source"
ack = "validated"
ack_deadline_ms = 10000

[plugins.cpq-hurried]
path = "plugins/cpq-source"
ack = "validated"
ack_deadline_ms = 1

[flows.validated-orders]
source = "cpq-validated"
steps = ["quote-to-order", "gateway", "router"]

[flows.hurried-orders]
source = "cpq-hurried"
steps = ["quote-to-order", "gateway", "router"]
"#,
        crate::chain::config(erp)
    )
}

/// What the queued path made of a quote: every reason it was refused for, and the
/// (kind, key, entity) of every order it accepted.
async fn queued_answer(tenon: &Tenon, quote: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let ids = tenon.send_quote(quote).await;
    let status = tenon.settled(&ids[0]).await;
    let mut reasons = BTreeSet::new();
    let mut orders = BTreeSet::new();
    for outcome in status["outcomes"].as_array().unwrap() {
        if let Some(r) = outcome["result"]["Rejected"]["reasons"].as_array() {
            reasons.extend(r.iter().map(|r| r.as_str().unwrap().to_owned()));
        }
        if outcome["result"]["Delivered"].is_object() {
            let entity = outcome["flow"].as_str().unwrap().to_owned();
            orders.insert(format!("{}/{}/{entity}", outcome["kind"], outcome["key"]));
        }
    }
    (reasons, orders)
}

fn entity_flow(headers: &Value) -> String {
    let entity = headers
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "tenon-entity")
        .map(|h| h[1].as_str().unwrap().to_owned())
        .unwrap_or_default();
    match entity.as_str() {
        "DE01" => "erp-de".into(),
        "FR01" => "erp-fr".into(),
        other => other.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_now_gives_the_queued_answer_and_a_source_can_wait_for_it() {
    let erp = MockErp::start().await.unwrap();
    let base = erp.orders_url();
    let base = base.trim_end_matches("/sap/orders").to_owned();
    let ws = Workspace::new();
    ws.write_config(&chain_with_apis(&base));
    std::fs::write(ws.path().join("stripe-secret.txt"), "whsec_apis_test_1").unwrap();
    let tenon = Tenon::start(&ws);
    tenon.load_customers().await;
    let unknown = sample("plain.json")
        .replace("0015g00000XyZ12AAB", "0015g00000NEW001AAA")
        .replace("\"DE\"", "\"BR\"");
    let quotes = [
        ("plain", sample("plain.json").to_owned()),
        ("bundle", sample("bundle.json").to_owned()),
        ("invalid", sample("invalid.json").to_owned()),
        ("unknown customer", unknown.clone()),
    ];
    let token = tenon.token.clone();
    let mut plain_key = Value::Null;
    for (name, quote) in &quotes {
        let now = call(
            &tenon,
            "POST",
            "/v1/apis/validate-quote",
            Some(&token),
            Some(quote.as_bytes()),
        )
        .await;
        let (reasons, orders) = queued_answer(&tenon, quote).await;
        if reasons.is_empty() {
            assert_eq!(
                now.status,
                200,
                "{name}: {}",
                String::from_utf8_lossy(&now.body)
            );
            let answer = now.json().unwrap();
            let made: BTreeSet<String> = answer["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| format!("{}/{}/{}", o["kind"], o["key"], entity_flow(&o["headers"])))
                .collect();
            assert_eq!(made, orders, "{name}");
            if *name == "plain" {
                plain_key = answer["outputs"][0]["key"].clone();
            }
            let trail: Vec<&str> = answer["trail"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["plugin"].as_str().unwrap())
                .collect();
            assert_eq!(trail[0], "cpq-source", "{name}");
        } else {
            assert_eq!(
                now.status,
                422,
                "{name}: {}",
                String::from_utf8_lossy(&now.body)
            );
            let said: BTreeSet<String> = problem(&now)["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(said, reasons, "{name}");
        }
    }
    // The answers left nothing behind: the ERP saw only the queued path's orders.
    let delivered = erp.received().len();
    assert_eq!(delivered, 2, "plain (1) and bundle (1 of 2) were delivered");

    // ack = "validated": 201 with the orders once the steps ran, still durable...
    let reply = tenon
        .post(
            "/v1/sources/cpq-validated",
            "application/json",
            sample("plain.json").as_bytes(),
        )
        .await;
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let validated = reply.json().unwrap();
    let accepted = validated["accepted"][0].as_str().unwrap().to_owned();
    let outputs = validated["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{validated:#}");
    assert_eq!(outputs[0]["kind"], "OrderAccepted");
    assert_eq!(outputs[0]["key"], plain_key);
    assert!(!outputs[0]["id"].as_str().unwrap().contains('@'));
    tenon.settled(&accepted).await;
    // ...422 with every reason...
    let reply = tenon
        .post(
            "/v1/sources/cpq-validated",
            "application/json",
            unknown.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 422);
    let refused = problem(&reply);
    assert_eq!(
        refused["reasons"],
        json!([
            "sold-to customer `0015g00000NEW001AAA` is not in the customer master",
            "no tax nexus in BR: the company is not registered to collect tax there",
        ])
    );
    assert!(reply.header("tenon-accepted").is_some());
    // ...and 202 as before once its deadline passed.
    let reply = tenon
        .post(
            "/v1/sources/cpq-hurried",
            "application/json",
            sample("plain.json").as_bytes(),
        )
        .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json().unwrap()["accepted"][0]
        .as_str()
        .unwrap()
        .to_owned();
    tenon.settled(&id).await;
}
