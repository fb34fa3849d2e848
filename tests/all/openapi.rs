//! The OpenAPI 3.1 description, through the binary: a valid document (checked
//! against the OpenAPI Initiative's own schema for 3.1), every operation it names
//! served by the router, and the answers of the running server valid against the
//! schemas it gives for them.

use crate::support::{Tenon, Workspace, public_fixture, quote_to_cash_config, sample};
use serde_json::{Value, json};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

/// A validator for a schema of the document (its `$ref`s into `components`).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    if let Some(object) = root.as_object_mut() {
        object.insert("components".into(), doc["components"].clone());
        object.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
    }
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{schema}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_description_is_valid_complete_and_true() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let tenon = Tenon::start(&ws);
    let ids = tenon.send_quote(sample("plain.json")).await;
    tenon.settled(&ids[0]).await;

    let reply = tenon.get("/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    let doc: Value = reply.json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Valid OpenAPI 3.1, by the specification's own JSON Schema.
    let oas = public_fixture("openapi_3_1_schema.json");
    let oas = jsonschema::validator_for(&oas).unwrap();
    let errors: Vec<String> = oas
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Anonymous callers get no map of the admin API.
    let anonymous = client::request(
        "GET",
        &format!("{}/v1/openapi.json", tenon.admin),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(anonymous.status, 401);

    // Every operation is routed: whatever it answers to a made-up id, it is not the
    // router's "no route".
    let auth = format!("Bearer {}", tenon.token);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let concrete = path
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let base = match operation["tags"][0].as_str() {
                Some("ingest") => &tenon.base,
                _ => &tenon.admin,
            };
            let body = (method == "post").then(|| ("application/json", b"{}".to_vec()));
            let reply = client::request(
                &method.to_uppercase(),
                &format!("{base}{concrete}"),
                &[("authorization", &auth)],
                body,
            )
            .await
            .unwrap();
            let text = String::from_utf8_lossy(&reply.body);
            assert!(
                !(reply.status == 404 && text.contains("no route for")),
                "{method} {path}: {text}"
            );
        }
    }
    assert!(operations >= 25, "{operations} operations");

    // What the server answers fits what the description says of it.
    let answer_schema = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            .clone()
    };
    for (path, concrete) in [
        ("/v1/plugins", "/v1/plugins".to_owned()),
        ("/v1/dlq", "/v1/dlq".to_owned()),
        ("/v1/events", "/v1/events".to_owned()),
        ("/v1/audit", "/v1/audit?limit=50".to_owned()),
        ("/v1/keys", "/v1/keys".to_owned()),
        ("/v1/kpis", "/v1/kpis".to_owned()),
        ("/v1/messages/{id}", format!("/v1/messages/{}", ids[0])),
        ("/v1/trace/{key}", "/v1/trace/Q-00101".to_owned()),
    ] {
        let schema = answer_schema(path);
        assert!(!schema.is_null(), "{path} has no answer schema");
        let answer: Value = tenon.get(&concrete).await.json().unwrap();
        let errors: Vec<String> = validator(&doc, &schema)
            .iter_errors(&answer)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{path}: {errors:#?}\n{answer:#}");
    }
    // (The schemas say something: a wrong answer does not fit.)
    assert!(!validator(&doc, &answer_schema("/v1/plugins")).is_valid(&json!({"plugins": 5})));
    // And a problem fits the problem schema.
    let problem = tenon.get("/v1/messages/nope").await;
    assert_eq!(problem.status, 404);
    let schema = doc["paths"]["/v1/messages/{id}"]["get"]["responses"]["default"]["content"]
        ["application/problem+json"]["schema"]
        .clone();
    assert!(validator(&doc, &schema).is_valid(&problem.json().unwrap()));
}
