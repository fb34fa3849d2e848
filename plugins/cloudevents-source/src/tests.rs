//! The source through its entry point, in a test host: config `kinds` and the three
//! modes (the rules themselves are `tests/vectors.rs`).

use super::*;
use serde_json::json;
use tenon_sdk::testing::Host;

fn structured(event: &Value) -> RawRequest {
    RawRequest {
        content_type: STRUCTURED.into(),
        headers: vec![("content-type".into(), STRUCTURED.into())],
        body: event.to_string().into_bytes(),
    }
}

fn order_created(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "https://shop.example.com/orders",
           "type": "com.example.order.created", "subject": "O-1", "data": {"total": 12}})
}

#[test]
fn events_become_messages_of_their_type() {
    let host = Host::new().with_manifest(include_str!("../plugin.toml"));
    let out = host
        .run(|| ingest_events(structured(&order_created("e-1"))))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].kind.as_str(), out[0].key.as_str()),
        ("com.example.order.created", "O-1")
    );
    assert_eq!(
        out[0].idempotency_key(),
        Some("https://shop.example.com/orders|e-1")
    );
    assert_eq!(out[0].body, br#"{"total":12}"#);

    // Binary mode: the data as the body, the attributes as headers.
    let binary = RawRequest {
        content_type: "application/json".into(),
        headers: vec![
            ("ce-specversion".into(), "1.0".into()),
            ("ce-id".into(), "e-2".into()),
            ("ce-source".into(), "urn:shop".into()),
            ("ce-type".into(), "com.example.order.created".into()),
        ],
        body: br#"{"total": 3}"#.to_vec(),
    };
    let out = host.run(|| ingest_events(binary)).unwrap();
    assert_eq!(out[0].key, "e-2");
}

#[test]
fn config_kinds_rejects_the_other_types_and_accepts_nothing_of_the_batch() {
    let host = Host::new().config("kinds", r#"["com.example.order.created"]"#);
    let mut other = order_created("e-2");
    other["type"] = "com.example.order.deleted".into();
    let batch = RawRequest {
        content_type: BATCH.into(),
        headers: Vec::new(),
        body: json!([order_created("e-1"), other])
            .to_string()
            .into_bytes(),
    };
    assert_eq!(
        host.run(|| ingest_events(batch)),
        Err(Failure::Rejected(vec![
            "event 2: type `com.example.order.deleted` is not one this source accepts (com.example.order.created)".into()
        ]))
    );
    assert_eq!(
        host.run(|| ingest_events(structured(&order_created("e-1"))))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_broken_event_or_bad_config_is_invalid() {
    let host = Host::new();
    let mut old = order_created("e-1");
    old["specversion"] = "0.3".into();
    assert_eq!(
        host.run(|| ingest_events(structured(&old))),
        Err(Failure::Invalid(
            "attribute `specversion`: must be \"1.0\", got \"0.3\"".into()
        ))
    );
    let host = Host::new().config("kinds", "com.example.order.created");
    assert!(matches!(
        host.run(|| ingest_events(structured(&order_created("e-1")))),
        Err(Failure::Invalid(why)) if why.starts_with("config `kinds` is not a JSON array")
    ));
}
