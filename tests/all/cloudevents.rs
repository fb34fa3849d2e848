//! CloudEvents 1.0 through the binary: the three HTTP modes in (structured, batch,
//! binary), invalid events refused naming the attribute, a type outside the
//! source's list rejected, a redelivery accepted once; and Tenon's events out as
//! CloudEvents, structured and binary.

use crate::chain::recorder;
use crate::support::{Tenon, Workspace};
use serde_json::{Value, json};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

fn config(erp: &str, binary_to: &str) -> String {
    format!(
        r#"
[plugins.events]
path = "plugins/cloudevents-source"
config = {{ kinds = '["com.example.order.created", "com.example.order.cancelled"]' }}

[plugins.ce-out]
path = "plugins/http-sink"
config = {{ url = "{erp}/events", format = "cloudevents", ce_source = "https://tenon.example.com/flows/events" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[plugins.ce-binary]
path = "plugins/http-sink"
config = {{ url = "{binary_to}/events", format = "cloudevents-binary", ce_source = "urn:tenon:events" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.events]
source = "events"
sink = "ce-out"

[flows.events-binary]
source = "events"
sink = "ce-binary"
"#
    )
}

async fn post(
    tenon: &Tenon,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> client::Response {
    let auth = format!("Bearer {}", tenon.token);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    client::request(
        "POST",
        &format!("{}/v1/sources/events", tenon.base),
        &all,
        Some((content_type, body.as_bytes().to_vec())),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudevents_in_every_mode_and_out_structured_and_binary() {
    let erp = MockErp::start().await.unwrap();
    let base = erp.orders_url();
    let base = base.trim_end_matches("/sap/orders").to_owned();
    let (binary_to, seen) = recorder().await;
    let ws = Workspace::new();
    ws.write_config(&config(&base, &binary_to));
    let tenon = Tenon::start(&ws);

    // Structured mode: one event, delivered as a CloudEvent, and as binary.
    let event = json!({"specversion": "1.0", "id": "e-1", "source": "/crm", "type": "com.example.order.created",
        "subject": "O-1", "time": "2026-12-02T10:00:00Z", "data": {"n": 1}})
    .to_string();
    let reply = post(
        &tenon,
        "application/cloudevents+json; charset=utf-8",
        &[],
        &event,
    )
    .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    assert_eq!(ids.len(), 2, "one per flow");
    for id in &ids {
        tenon.settled(id).await;
    }
    let out = erp
        .received()
        .into_iter()
        .find(|r| r.path == "/events")
        .expect("delivered");
    let ce = &out.body;
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], "com.example.order.created");
    assert_eq!(ce["subject"], "O-1");
    assert_eq!(ce["source"], "https://tenon.example.com/flows/events");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["data"], json!({"n": 1}));
    assert!(
        ids.contains(&ce["id"].as_str().unwrap().to_owned()),
        "{ce:#}"
    );
    let head = seen.lock().unwrap()[0].to_ascii_lowercase();
    for header in [
        "ce-specversion: 1.0",
        "ce-type: com.example.order.created",
        "ce-subject: o-1",
        "ce-source: urn:tenon:events",
        "content-type: application/json",
    ] {
        assert!(head.contains(header), "{header} in {head}");
    }

    // The same event again (a redelivery) is accepted once.
    let again = post(&tenon, "application/cloudevents+json", &[], &event).await;
    assert_eq!(again.status, 202);
    assert!(
        again
            .headers
            .contains(&("idempotent-replayed".into(), "true".into()))
    );

    // Batch mode: two events, four messages (two flows).
    let batch = json!([
        {"specversion": "1.0", "id": "e-2", "source": "/crm", "type": "com.example.order.created", "data": {"n": 2}},
        {"specversion": "1.0", "id": "e-3", "source": "/crm", "type": "com.example.order.cancelled", "subject": "O-2", "data": {"n": 3}},
    ])
    .to_string();
    let reply = post(&tenon, "application/cloudevents-batch+json", &[], &batch).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json().unwrap()["accepted"].as_array().unwrap().len(),
        4
    );

    // Binary mode: the context in ce- headers, percent-decoded.
    let reply = post(
        &tenon,
        "application/json",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "e-4"),
            ("ce-source", "/crm"),
            ("ce-type", "com.example.order.created"),
            ("ce-subject", "O-%C3%A9"),
        ],
        r#"{"n": 4}"#,
    )
    .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(status["outcomes"][0]["key"], "O-é");

    // Invalid events are refused, naming the attribute and the rule.
    let old = event.replace("\"1.0\"", "\"0.3\"");
    let refused = post(&tenon, "application/cloudevents+json", &[], &old).await;
    assert_eq!(refused.status, 400);
    let detail = refused.json().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("attribute `specversion`: must be \"1.0\", got \"0.3\""),
        "{detail}"
    );
    let bad_batch = json!([
        {"specversion": "1.0", "id": "e-5", "source": "/crm", "type": "com.example.order.created"},
        {"specversion": "1.0", "source": "/crm", "type": "com.example.order.created"},
    ])
    .to_string();
    let refused = post(
        &tenon,
        "application/cloudevents-batch+json",
        &[],
        &bad_batch,
    )
    .await;
    assert_eq!(refused.status, 400);
    let detail: Value = refused.json().unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("event 2: attribute `id`"),
        "{detail:#}"
    );

    // A type this source does not take is a business refusal.
    let other = event.replace("com.example.order.created", "com.example.invoice.paid");
    let rejected = post(&tenon, "application/cloudevents+json", &[], &other).await;
    assert_eq!(
        rejected.status,
        422,
        "{}",
        String::from_utf8_lossy(&rejected.body)
    );
}
