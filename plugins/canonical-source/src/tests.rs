//! The source through its entry point, in a test host: the example's customers
//! (`examples/quote-to-cash/samples/customers.json`) and what is refused.

use super::*;
use serde_json::json;
use tenon_sdk::testing::Host;

const CUSTOMERS: &str = include_str!("../../../examples/quote-to-cash/samples/customers.json");

fn post(body: &[u8]) -> RawRequest {
    RawRequest {
        content_type: "application/json".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
    }
}

fn invalid(body: &[u8]) -> String {
    match Host::new().run(|| ingest_canonical(post(body))) {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    }
}

#[test]
fn each_posted_message_becomes_a_json_message_of_its_kind() {
    let host = Host::new().with_manifest(include_str!("../plugin.toml"));
    let out = host
        .run(|| ingest_canonical(post(CUSTOMERS.as_bytes())))
        .unwrap();
    let summary: Vec<(&str, &str, &str)> = out
        .iter()
        .map(|m| (m.kind.as_str(), m.key.as_str(), m.content_type.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("CustomerUpserted", "0015g00000XyZ12AAB", "application/json"),
            ("CustomerUpserted", "0015g00000XyZ34AAB", "application/json"),
        ]
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out[1].body).unwrap(),
        json!({"id": "0015g00000XyZ34AAB", "name": "Contoso Retail SAS", "country": "FR"})
    );
    // One message, not in a list.
    let one = br#"{"kind": "CustomerUpserted", "key": "C1", "body": {"id": "C1"}}"#;
    assert_eq!(
        Host::new()
            .run(|| ingest_canonical(post(one)))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn what_is_not_a_canonical_message_is_invalid() {
    assert_eq!(
        invalid(b"nope"),
        "the body is not JSON: expected ident at line 1 column 2"
    );
    assert_eq!(
        invalid(br#"[{"kind": "customer-upserted", "key": "C1", "body": {}}]"#),
        "message 1: kind `customer-upserted` is not an event name like CustomerUpserted"
    );
    assert_eq!(
        invalid(br#"[{"kind": "A", "key": "k", "body": 1}, {"kind": "B", "key": "", "body": 1}]"#),
        "message 2: an empty key"
    );
}
