//! The sink's formats: `json` as before, and CloudEvents in structured and binary
//! mode. Every structured event is checked against the official CloudEvents JSON
//! Schema, and every event (both modes) is read back by the CloudEvents source.

use http_sink::{
    CLOUDEVENTS_JSON, DEFAULT_CE_SOURCE, Format, Payload, cloudevent, cloudevent_headers, payload,
    percent_encode,
};
use serde_json::{Value, json};
use std::sync::OnceLock;
use tenon_sdk::model::Encoding;
use tenon_sdk::{Failure, Message, RawRequest};

/// The official CloudEvents JSON Schema (draft-07), formats checked.
fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/public/cloudevents_v1_jsonschema.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).unwrap();
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    })
}

const ID: &str = "0190f6a4-5b2c-7d3e-8f00-1234567890ab.1";

fn message(encoding: Encoding, key: &str, body: &Value) -> Message {
    let mut m = Message::encode_as(encoding, "OrderAccepted", key, body).unwrap();
    m.id = ID.into();
    m
}

/// A structured-mode payload: checked against the schema and read back by the
/// CloudEvents source, which must find the same event.
fn structured(message: &Message, source: &str) -> Value {
    let Payload {
        content_type,
        headers,
        body,
    } = payload(Format::CloudEvents, message, source).unwrap();
    assert_eq!(content_type, CLOUDEVENTS_JSON);
    assert!(headers.is_empty());
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event, cloudevent(message, source).unwrap());
    if let Err(e) = schema().validate(&event) {
        panic!("the schema refuses {event:#}: {e}");
    }
    let request = RawRequest {
        content_type,
        headers: Vec::new(),
        body,
    };
    let read = cloudevents_source::to_messages(&request).unwrap();
    assert_eq!(read.len(), 1);
    assert_read_back(&read[0], message, source);
    event
}

/// What the CloudEvents source makes of an event sent for `message`.
fn assert_read_back(read: &Message, message: &Message, source: &str) {
    assert_eq!(read.kind, message.kind);
    let key = if message.key.is_empty() {
        &message.id
    } else {
        &message.key
    };
    assert_eq!(&read.key, key);
    let data: Value = message.decode().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&read.body).unwrap(), data);
    assert_eq!(
        read.idempotency_key(),
        Some(format!("{source}|{}", message.id).as_str())
    );
}

#[test]
fn the_format_is_json_unless_configured() {
    assert_eq!(Format::from_config(None), Ok(Format::Json));
    assert_eq!(Format::from_config(Some("json")), Ok(Format::Json));
    assert_eq!(
        Format::from_config(Some("cloudevents")),
        Ok(Format::CloudEvents)
    );
    assert_eq!(
        Format::from_config(Some("cloudevents-binary")),
        Ok(Format::CloudEventsBinary)
    );
    assert_eq!(
        Format::from_config(Some("xml")),
        Err(Failure::Invalid(
            "config `format` is `xml`; a sink sends `json`, `cloudevents` or `cloudevents-binary`"
                .into()
        ))
    );
}

#[test]
fn json_sends_the_body_as_before() {
    let body = json!({"id": "O-1", "total": "19.99"});
    let m = message(Encoding::Json, "O-1", &body);
    assert_eq!(
        payload(Format::Json, &m, DEFAULT_CE_SOURCE).unwrap(),
        Payload {
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: m.body.clone(),
        }
    );
    // MessagePack is transcoded.
    let m = message(Encoding::MsgPack, "O-1", &body);
    let sent = payload(Format::Json, &m, DEFAULT_CE_SOURCE).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&sent.body).unwrap(), body);
}

#[test]
fn structured_mode_sends_one_event_in_the_json_format() {
    let body = json!({"id": "O-1", "lines": [{"sku": "A", "qty": 2}]});
    let m = message(Encoding::Json, "O-1", &body);
    assert_eq!(
        structured(&m, DEFAULT_CE_SOURCE),
        json!({
            "specversion": "1.0",
            "id": ID,
            "source": "urn:tenon",
            "type": "OrderAccepted",
            "subject": "O-1",
            "datacontenttype": "application/json",
            "data": body,
        })
    );
}

#[test]
fn structured_mode_transcodes_messagepack_and_takes_the_configured_source() {
    let body = json!({"total": {"amount": "19.99", "currency": "EUR"}, "n": [1, 2.5, null]});
    let m = message(Encoding::MsgPack, "O-2", &body);
    let event = structured(&m, "https://tenon.example.com/flows/orders");
    assert_eq!(event["data"], body);
    assert_eq!(event["source"], "https://tenon.example.com/flows/orders");
    // Every source shape the spec shows.
    for source in [
        "/flows/orders",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "tenon",
    ] {
        assert_eq!(structured(&m, source)["source"], source);
    }
}

#[test]
fn any_json_data_and_any_key_make_a_valid_event() {
    for data in [json!(null), json!("text"), json!(0), json!([]), json!(true)] {
        structured(&message(Encoding::Json, "k", &data), DEFAULT_CE_SOURCE);
    }
    // An empty key: no subject (it would have to be non-empty).
    let event = structured(&message(Encoding::Json, "", &json!({})), DEFAULT_CE_SOURCE);
    assert!(event.get("subject").is_none());
    // Keys with anything a string may hold.
    let event = structured(
        &message(Encoding::Json, "Euro € 😀 \"100%\"", &json!({})),
        DEFAULT_CE_SOURCE,
    );
    assert_eq!(event["subject"], "Euro € 😀 \"100%\"");
}

#[test]
fn binary_mode_sends_the_data_with_percent_encoded_ce_headers() {
    let body = json!({"id": "O-1"});
    let key = "Euro € 😀 \"100%\"";
    let m = message(Encoding::MsgPack, key, &body);
    let sent = payload(Format::CloudEventsBinary, &m, DEFAULT_CE_SOURCE).unwrap();
    assert_eq!(sent.content_type, "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&sent.body).unwrap(), body);
    assert_eq!(
        sent.headers,
        [
            ("ce-specversion", "1.0"),
            ("ce-id", ID),
            ("ce-source", "urn:tenon"),
            ("ce-type", "OrderAccepted"),
            (
                "ce-subject",
                "Euro%20%E2%82%AC%20%F0%9F%98%80%20%22100%25%22"
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(
        sent.headers,
        cloudevent_headers(&m, DEFAULT_CE_SOURCE).unwrap()
    );
    // The CloudEvents source reads it back: the same event, decoded.
    let mut headers = vec![("content-type".to_owned(), sent.content_type.clone())];
    headers.extend(sent.headers.iter().cloned());
    let request = RawRequest {
        content_type: sent.content_type.clone(),
        headers,
        body: sent.body.clone(),
    };
    let read = cloudevents_source::to_messages(&request).unwrap();
    assert_read_back(&read[0], &m, DEFAULT_CE_SOURCE);
    // Its JSON-format rendering is what structured mode would have sent.
    let event = cloudevents_source::events(&request).unwrap().remove(0);
    let mut json = event.to_json();
    json["data"] = serde_json::from_slice(&sent.body).unwrap();
    json.as_object_mut().unwrap().remove("data_base64");
    assert_eq!(json, cloudevent(&m, DEFAULT_CE_SOURCE).unwrap());
    assert!(schema().is_valid(&json));
}

#[test]
fn percent_encoding_follows_the_http_binding() {
    // The binding's own example.
    assert_eq!(
        percent_encode("Euro € 😀"),
        "Euro%20%E2%82%AC%20%F0%9F%98%80"
    );
    assert_eq!(percent_encode("a\"b%c d"), "a%22b%25c%20d");
    assert_eq!(percent_encode("\t\u{7F}"), "%09%7F");
    // Printable ASCII but space, `"` and `%` is kept.
    let kept = "!#$&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~";
    assert_eq!(percent_encode(kept), kept);
    // What the CloudEvents source decodes is what was encoded.
    for text in ["Euro € 😀", "a\"b%c d", "%25", "plain"] {
        assert_eq!(
            cloudevents_source::rules::header_value(&percent_encode(text)).unwrap(),
            text
        );
    }
}

#[test]
fn messages_that_cannot_be_cloudevents_are_invalid() {
    let body = json!({});
    for format in [Format::CloudEvents, Format::CloudEventsBinary] {
        let mut no_id = message(Encoding::Json, "k", &body);
        no_id.id.clear();
        assert_eq!(
            payload(format, &no_id, DEFAULT_CE_SOURCE),
            Err(Failure::Invalid(
                "the message has no id: a CloudEvent's `id` is a non-empty string".into()
            ))
        );
        let mut kind = message(Encoding::Json, "k", &body);
        kind.kind = "Order\nAccepted".into();
        assert_eq!(
            payload(format, &kind, DEFAULT_CE_SOURCE),
            Err(Failure::Invalid(
                "the message's kind holds U+000A, which a CloudEvents string (`type`) cannot"
                    .into()
            ))
        );
        let key = message(Encoding::Json, "k\u{FFFF}", &body);
        assert_eq!(
            payload(format, &key, DEFAULT_CE_SOURCE),
            Err(Failure::Invalid(
                "the message's key holds U+FFFF, which a CloudEvents string (`subject`) cannot"
                    .into()
            ))
        );
        let m = message(Encoding::Json, "k", &body);
        for (source, why) in [
            ("", "it is empty"),
            ("my flows", "` ` must be percent-encoded"),
            ("urn:é", "`é` must be percent-encoded"),
            ("urn:100%", "a `%` that does not start a percent-encoding"),
        ] {
            assert_eq!(
                payload(format, &m, source),
                Err(Failure::Invalid(format!(
                    "config `ce_source` is `{source}`: a CloudEvents source is a URI-reference: {why}"
                ))),
                "{source}"
            );
        }
    }
    // Structured mode needs the data as JSON.
    let mut broken = message(Encoding::Json, "k", &body);
    broken.body = b"{not json".to_vec();
    assert!(matches!(
        payload(Format::CloudEvents, &broken, DEFAULT_CE_SOURCE),
        Err(Failure::Invalid(_))
    ));
}
