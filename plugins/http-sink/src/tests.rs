//! The sink through its entry point, in a test host: the order of the example's plain
//! quote (`examples/quote-to-cash/expected/plain.orders.json`) sent as JSON and as
//! CloudEvents, every request checked (method, URL, the headers from the message,
//! config and secrets, the body), and each answer's class.

use super::*;
use serde_json::{Value, json};
use tenon_sdk::model::{Order, kinds};
use tenon_sdk::testing::{Exchange, Host, Sent};

const ORDERS: &str = include_str!("../../../examples/quote-to-cash/expected/plain.orders.json");

const ID: &str = "0190f6a4-5b2c-7d3e-8f00-1234567890ab.1";
const KEY: &str = "0190f6a4-5b2c-7d3e-8f00-1234567890ab.1@erp";

/// The order as JSON, as the ERP should receive it.
fn order_json() -> Value {
    let orders: Value = serde_json::from_str(ORDERS).unwrap();
    orders[0]["body"].clone()
}

/// The order as quote-to-order sends it on: MessagePack, with the model's version.
fn message() -> Message {
    let order: Order = serde_json::from_value(order_json()).unwrap();
    let mut message = Message::encode(kinds::ORDER_ACCEPTED, "Q-00101", &order).unwrap();
    message.id = ID.into();
    message
}

fn configured() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com/orders/{key}?m={id}")
}

fn send(host: &Host) -> Result<Receipt, Failure> {
    host.run(|| send_message(message(), KEY))
}

fn only_request(host: &Host) -> Sent {
    let mut requests = host.requests();
    assert_eq!(requests.len(), 1);
    requests.remove(0)
}

const URL: &str = "https://erp.example.com/orders/Q-00101?m=0190f6a4-5b2c-7d3e-8f00-1234567890ab.1";

#[test]
fn a_message_is_posted_as_json_with_its_headers_and_the_reference_kept() {
    let host = configured()
        .config("headers", r#"{"x-tenant": "acme"}"#)
        .config(
            "secret_headers",
            r#"{"authorization": "Bearer {authorization}", "x-api-key": "api_key"}"#,
        )
        .secret("authorization", "erp-token")
        .secret("api_key", "k-123")
        .exchange(
            Exchange::post(URL)
                .with_json(order_json())
                .respond(201, r#"{"id": "SO-4711", "status": "created"}"#),
        );
    assert_eq!(
        send(&host),
        Ok(Receipt {
            reference: "SO-4711".into(),
            detail: Some("HTTP 201".into()),
        })
    );
    host.assert_all_exchanged();
    let sent = only_request(&host);
    assert_eq!(sent.method, "POST");
    for (name, value) in [
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("idempotency-key", KEY),
        ("tenon-kind", "OrderAccepted"),
        ("tenon-key", "Q-00101"),
        ("tenon-model", "1"),
        ("x-tenant", "acme"),
        ("authorization", "Bearer erp-token"),
        ("x-api-key", "k-123"),
    ] {
        assert_eq!(sent.header(name), Some(value), "{name}");
    }
    // MessagePack in, JSON out: the order as the example expects it.
    assert_eq!(sent.json(), order_json());
}

#[test]
fn the_method_and_reference_field_come_from_config_and_the_key_stands_in() {
    let host = configured()
        .config("method", "put")
        .config("reference_field", "number")
        .exchange(Exchange::new("PUT", URL).respond(200, r#"{"number": 4711}"#));
    assert_eq!(send(&host).unwrap().reference, "4711");
    assert_eq!(only_request(&host).method, "PUT");

    // A 2xx without the reference still created the record.
    let host = configured().exchange(Exchange::post(URL).respond(204, ""));
    assert_eq!(
        send(&host),
        Ok(Receipt {
            reference: KEY.into(),
            detail: Some("HTTP 204".into()),
        })
    );
}

#[test]
fn a_refusal_is_rejected_and_a_transient_status_retryable() {
    let host =
        configured().exchange(Exchange::post(URL).respond(422, r#"{"error": "unknown customer"}"#));
    assert_eq!(
        send(&host),
        Err(Failure::Rejected(vec![
            r#"HTTP 422: {"error": "unknown customer"}"#.into()
        ]))
    );
    for status in [408, 429, 500, 503] {
        let host = configured().exchange(Exchange::post(URL).respond(status, "busy"));
        assert_eq!(
            send(&host),
            Err(Failure::Retryable(format!("HTTP {status}: busy")))
        );
    }
}

#[test]
fn a_misconfigured_sink_is_invalid_and_sends_nothing() {
    let invalid = |host: Host| {
        let result = send(&host);
        assert!(host.requests().is_empty());
        match result {
            Err(Failure::Invalid(why)) => why,
            other => panic!("not invalid: {other:?}"),
        }
    };
    assert_eq!(
        invalid(Host::new().with_manifest(include_str!("../plugin.toml"))),
        "configuration key `url` is not set"
    );
    assert_eq!(
        invalid(configured().config("method", "DELETE")),
        "config `method` is `DELETE`; a sink sends with POST, PUT or PATCH"
    );
    assert!(invalid(configured().config("format", "xml")).starts_with("config `format` is `xml`"));
    assert!(
        invalid(configured().config("headers", "x-tenant: acme"))
            .starts_with("config `headers` is not a JSON object of strings")
    );
    // A secret header whose secret the operator did not provide.
    assert!(
        invalid(configured().config("secret_headers", r#"{"authorization": "authorization"}"#))
            .contains("authorization")
    );
}

#[test]
fn a_cloudevent_in_structured_mode() {
    let host = configured()
        .config("format", "cloudevents")
        .config("ce_source", "https://tenon.example.com/flows/orders")
        .exchange(Exchange::post(URL).respond(202, ""));
    send(&host).unwrap();
    let sent = only_request(&host);
    assert_eq!(sent.header("content-type"), Some(CLOUDEVENTS_JSON));
    assert_eq!(sent.header("idempotency-key"), Some(KEY));
    assert_eq!(
        sent.json(),
        json!({
            "specversion": "1.0",
            "id": ID,
            "source": "https://tenon.example.com/flows/orders",
            "type": "OrderAccepted",
            "subject": "Q-00101",
            "datacontenttype": "application/json",
            "data": order_json(),
        })
    );
}

#[test]
fn a_cloudevent_in_binary_mode() {
    let host = configured()
        .config("format", "cloudevents-binary")
        .exchange(Exchange::post(URL).with_json(order_json()).respond(202, ""));
    send(&host).unwrap();
    let sent = only_request(&host);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", ID),
        ("ce-source", DEFAULT_CE_SOURCE),
        ("ce-type", "OrderAccepted"),
        ("ce-subject", "Q-00101"),
    ] {
        assert_eq!(sent.header(name), Some(value), "{name}");
    }
    // A source that is not a URI-reference is the operator's mistake.
    let host = configured()
        .config("format", "cloudevents")
        .config("ce_source", "not a uri");
    assert!(matches!(send(&host), Err(Failure::Invalid(_))));
    assert!(host.requests().is_empty());
}

/// With `update_method`, the first order is created and a revision of it (the same
/// order id) goes as an update to the reference the endpoint gave.
#[test]
fn a_revision_of_an_order_sent_before_goes_as_an_update_where_configured() {
    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("url", "https://erp.example.com/orders")
        .config("update_method", "PUT")
        .config("update_url", "https://erp.example.com/orders/{ref}")
        .exchange(
            Exchange::post("https://erp.example.com/orders")
                .respond(201, json!({"id": "ERP-7"}).to_string()),
        )
        .exchange(
            Exchange::new("PUT", "https://erp.example.com/orders/ERP-7")
                .respond(200, json!({"id": "ERP-7"}).to_string()),
        );
    let first = host.run(|| send_message(message(), "k1")).unwrap();
    assert_eq!(
        (first.reference.as_str(), first.detail.as_deref()),
        ("ERP-7", Some("HTTP 201"))
    );
    let mut revised: Order = serde_json::from_value(order_json()).unwrap();
    revised.revision = Some("2026-11-27T10:00:00Z".into());
    revised.lines[0].quantity = 4.into();
    let revision = Message::encode(kinds::ORDER_ACCEPTED, "Q-00101", &revised).unwrap();
    let second = host.run(|| send_message(revision, "k2")).unwrap();
    assert_eq!(second.detail.as_deref(), Some("HTTP 200 (an update: PUT)"));
    host.assert_all_exchanged();
    let put = &host.requests()[1];
    assert_eq!(put.json()["lines"][0]["quantity"], "4");
    assert_eq!(put.json()["revision"], "2026-11-27T10:00:00Z");
}

fn undo(host: &Host, reference: &str) -> Result<Receipt, Failure> {
    let delivered = Receipt {
        reference: reference.into(),
        detail: Some("HTTP 201".into()),
    };
    host.run(|| undo_message(message(), delivered, "the-undo-key"))
}

#[test]
fn a_delivery_is_undone_at_the_compensate_url_with_its_reference() {
    let host = configured()
        .config("compensate_url", "https://erp.example.com/orders/{ref}")
        .config("headers", r#"{"x-tenant": "acme"}"#)
        .exchange(
            Exchange::new("DELETE", "https://erp.example.com/orders/SO%204711").respond(204, ""),
        );
    assert_eq!(
        undo(&host, "SO 4711"),
        Ok(Receipt {
            reference: "SO 4711".into(),
            detail: Some("HTTP 204 (DELETE undone)".into()),
        })
    );
    host.assert_all_exchanged();
    let sent = only_request(&host);
    assert_eq!(sent.header("idempotency-key"), Some("the-undo-key"));
    assert_eq!(sent.header("x-tenant"), Some("acme"));
    assert!(sent.body.is_empty());

    // POST carries the delivered order; a 404 is nothing left to undo.
    let host = configured()
        .config(
            "compensate_url",
            "https://erp.example.com/orders/{ref}/cancel",
        )
        .config("compensate_method", "POST")
        .exchange(
            Exchange::post("https://erp.example.com/orders/SO-1/cancel")
                .with_json(order_json())
                .respond(404, "gone"),
        );
    assert_eq!(
        undo(&host, "SO-1").unwrap().detail.as_deref(),
        Some("HTTP 404: nothing left to undo")
    );
}

#[test]
fn an_undo_without_its_settings_or_refused_is_classified() {
    let host = configured();
    let Err(Failure::Invalid(why)) = undo(&host, "SO-1") else {
        panic!("an undo without compensate_url is invalid");
    };
    assert!(why.contains("compensate_url"), "{why}");
    let host = configured()
        .config("compensate_url", "https://erp.example.com/orders/{ref}")
        .config("compensate_method", "GET");
    assert!(matches!(undo(&host, "SO-1"), Err(Failure::Invalid(_))));
    let host = configured()
        .config("compensate_url", "https://erp.example.com/orders/{ref}")
        .exchange(
            Exchange::new("DELETE", "https://erp.example.com/orders/SO-1").respond(409, "shipped"),
        );
    assert!(matches!(undo(&host, "SO-1"), Err(Failure::Rejected(_))));
    let host = configured()
        .config("compensate_url", "https://erp.example.com/orders/{ref}")
        .exchange(
            Exchange::new("DELETE", "https://erp.example.com/orders/SO-1").respond(503, "busy"),
        );
    assert!(matches!(undo(&host, "SO-1"), Err(Failure::Retryable(_))));
}

#[test]
fn records_are_read_from_the_records_url() {
    let host = configured()
        .config(
            "records_url",
            "https://erp.example.com/invoices?kind={kind}&since={since}&until={until}",
        )
        .exchange(
            Exchange::get("https://erp.example.com/invoices?kind=invoice&since=2026-11-01&until=2026-11-30")
                .respond(200, r#"[{"id": "INV-1", "reference": "in_1", "amount": "119.00", "currency": "EUR", "date": "2026-11-03"},
                                  {"id": 7, "amount": -59.5, "currency": "EUR"}]"#),
        );
    let query = tenon_sdk::records::Query {
        kind: "invoice".into(),
        since: "2026-11-01".into(),
        until: "2026-11-30".into(),
    };
    let entries = host.run(|| read_records(query.clone())).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].reference, "in_1");
    assert_eq!(entries[0].field("amount"), Some("119.00"));
    assert_eq!(entries[0].field("date"), Some("2026-11-03"));
    assert_eq!(
        (
            entries[1].id.as_str(),
            entries[1].field("amount"),
            entries[1].reference.as_str()
        ),
        ("7", Some("-59.5"), "")
    );

    let host = configured()
        .config("records_url", "https://erp.example.com/invoices")
        .exchange(
            Exchange::get("https://erp.example.com/invoices").respond(200, r#"[{"amount": "1"}]"#),
        );
    assert!(matches!(
        host.run(|| read_records(query.clone())),
        Err(Failure::Invalid(_))
    ));
    let host = configured();
    assert!(matches!(
        host.run(|| read_records(query.clone())),
        Err(Failure::Invalid(_))
    ));
}
