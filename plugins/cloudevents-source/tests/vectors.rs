//! CloudEvents vectors, valid and invalid, in the three HTTP modes; every event the
//! source accepts is checked against the official CloudEvents JSON Schema too, and
//! every invalid vector the schema can judge is refused by it as well.

use cloudevents_source::{
    BATCH, Data, Event, Extension, STRUCTURED, accept, events, kinds_from_config, to_messages,
};
use serde_json::{Value, json};
use std::sync::OnceLock;
use tenon_sdk::model::IDEMPOTENCY_HEADER;
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

fn schema_accepts(event: &Value) -> bool {
    schema().is_valid(event)
}

fn request(content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> RawRequest {
    let mut all = vec![("content-type".to_owned(), content_type.to_owned())];
    all.extend(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    RawRequest {
        content_type: content_type.to_owned(),
        headers: all,
        body: body.to_vec(),
    }
}

fn structured(event: &Value) -> RawRequest {
    request(STRUCTURED, &[], &serde_json::to_vec(event).unwrap())
}

fn batch(events: &Value) -> RawRequest {
    request(BATCH, &[], &serde_json::to_vec(events).unwrap())
}

/// A request the source accepts: its messages, after checking every one of its
/// events against the schema.
fn accepted(request: &RawRequest) -> Vec<Message> {
    let messages = to_messages(request).unwrap_or_else(|e| panic!("refused: {e}"));
    for event in events(request).unwrap() {
        let json = event.to_json();
        assert!(schema_accepts(&json), "the schema refuses {json:#}");
    }
    messages
}

fn invalid(request: &RawRequest) -> String {
    match to_messages(request) {
        Err(Failure::Invalid(why)) => why,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message.header(name)
}

fn body(message: &Message) -> Value {
    assert_eq!(message.content_type, "application/json");
    serde_json::from_slice(&message.body).unwrap()
}

fn minimal() -> Value {
    json!({
        "specversion": "1.0",
        "id": "A234-1234-1234",
        "source": "https://github.com/cloudevents/spec/pull",
        "type": "com.github.pull_request.opened"
    })
}

/// The minimal event with members replaced (`null` included) or, for `"-"`, removed.
fn with(changes: Value) -> Value {
    let mut event = minimal();
    for (name, value) in changes.as_object().unwrap() {
        if value == "-" {
            event.as_object_mut().unwrap().remove(name);
        } else {
            event[name] = value.clone();
        }
    }
    event
}

// --- structured mode -------------------------------------------------------------

#[test]
fn a_minimal_event_becomes_a_message_of_its_type_keyed_by_its_id() {
    let messages = accepted(&structured(&minimal()));
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.id, "");
    assert_eq!(m.kind, "com.github.pull_request.opened");
    assert_eq!(m.key, "A234-1234-1234");
    assert_eq!(body(m), Value::Null);
    assert_eq!(
        m.headers,
        [
            ("ce-specversion", "1.0"),
            ("ce-id", "A234-1234-1234"),
            ("ce-source", "https://github.com/cloudevents/spec/pull"),
            ("ce-type", "com.github.pull_request.opened"),
            (
                IDEMPOTENCY_HEADER,
                "https://github.com/cloudevents/spec/pull|A234-1234-1234"
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

#[test]
fn the_json_format_example_maps_every_attribute() {
    // JSON format 1.0.2, section 3.2: JSON object data, a null subject, extensions.
    let event = json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "subject": null,
        "id" : "C234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/json",
        "data" : {
            "appinfoA" : "abc",
            "appinfoB" : 123,
            "appinfoC" : true
        }
    });
    assert!(schema_accepts(&event));
    let m = &accepted(&structured(&event))[0];
    assert_eq!(m.kind, "com.example.someevent");
    // A null subject is no subject: the id is the key.
    assert_eq!(m.key, "C234-1234-1234");
    assert_eq!(body(m), event["data"]);
    assert_eq!(header(m, "ce-subject"), None);
    assert_eq!(header(m, "ce-time"), Some("2018-04-05T17:31:00Z"));
    assert_eq!(header(m, "ce-datacontenttype"), Some("application/json"));
    assert_eq!(header(m, "ce-comexampleextension1"), Some("value"));
    assert_eq!(header(m, "ce-comexampleothervalue"), Some("5"));
    assert_eq!(m.idempotency_key(), Some("/mycontext|C234-1234-1234"));
}

#[test]
fn every_optional_attribute_and_extension_type_is_carried() {
    let event = json!({
        "specversion": "1.0",
        "id": "evt-1",
        "source": "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "type": "com.example.order.created",
        "datacontenttype": "application/vnd.acme.order+json; charset=utf-8",
        "dataschema": "https://example.com/schemas/order.json",
        "subject": "order/42",
        "time": "2024-02-29T23:59:59.123456+01:00",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "sampled": true,
        "priority": -2147483648,
        "weight": 2147483647,
        "averyveryverylongextensionname": "longer than 20 is only a SHOULD NOT",
        "unsetextension": null,
        "data": {"id": 42, "lines": [1, 2]}
    });
    assert!(schema_accepts(&event));
    let m = &accepted(&structured(&event))[0];
    assert_eq!(m.key, "order/42");
    assert_eq!(body(m), json!({"id": 42, "lines": [1, 2]}));
    for (name, value) in [
        (
            "ce-datacontenttype",
            "application/vnd.acme.order+json; charset=utf-8",
        ),
        ("ce-dataschema", "https://example.com/schemas/order.json"),
        ("ce-subject", "order/42"),
        ("ce-time", "2024-02-29T23:59:59.123456+01:00"),
        (
            "ce-traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("ce-sampled", "true"),
        ("ce-priority", "-2147483648"),
        ("ce-weight", "2147483647"),
        (
            "ce-averyveryverylongextensionname",
            "longer than 20 is only a SHOULD NOT",
        ),
    ] {
        assert_eq!(header(m, name), Some(value), "{name}");
    }
    // A null attribute is an absent one.
    assert_eq!(header(m, "ce-unsetextension"), None);
    // Trace context travels as the extension, never as Tenon's own header.
    assert_eq!(header(m, "traceparent"), None);
    let parsed = &events(&structured(&event)).unwrap()[0];
    // In the order received (`json!` writes members sorted by name).
    assert_eq!(
        parsed.extensions,
        vec![
            (
                "averyveryverylongextensionname".to_owned(),
                Extension::String("longer than 20 is only a SHOULD NOT".into())
            ),
            ("priority".to_owned(), Extension::Integer(i32::MIN)),
            ("sampled".to_owned(), Extension::Boolean(true)),
            (
                "traceparent".to_owned(),
                Extension::String("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into())
            ),
            ("weight".to_owned(), Extension::Integer(i32::MAX)),
        ]
    );
}

#[test]
fn data_is_carried_as_the_json_value_it_is() {
    // No datacontenttype: JSON, a string stays a JSON string.
    let event = with(json!({"data": "I'm just a string"}));
    assert_eq!(
        body(&accepted(&structured(&event))[0]),
        json!("I'm just a string")
    );
    // An explicit null payload, and a data_base64 of null beside data.
    let event = with(json!({"data": null, "data_base64": null}));
    assert_eq!(body(&accepted(&structured(&event))[0]), Value::Null);
    // Any JSON value.
    for data in [
        json!(0),
        json!(false),
        json!([1, "a"]),
        json!({"nested": {"x": [null]}}),
    ] {
        let event = with(json!({"data": data.clone()}));
        assert_eq!(body(&accepted(&structured(&event))[0]), data);
    }
}

#[test]
fn data_base64_is_decoded_when_it_is_json() {
    let event = with(json!({
        "datacontenttype": "application/json",
        "data_base64": "eyJhIjogWzEsIDJdfQ==" // {"a": [1, 2]}
    }));
    assert!(schema_accepts(&event));
    let m = &accepted(&structured(&event))[0];
    assert_eq!(body(m), json!({"a": [1, 2]}));
    let parsed = &events(&structured(&event)).unwrap()[0];
    assert_eq!(parsed.data, Data::Bytes(br#"{"a": [1, 2]}"#.to_vec()));
    // Without a datacontenttype the data is JSON too.
    let event = with(json!({"data_base64": "WzEsMiwzXQ=="})); // [1,2,3]
    assert_eq!(body(&accepted(&structured(&event))[0]), json!([1, 2, 3]));
    // Empty data is no data.
    let event = with(json!({"data_base64": ""}));
    assert_eq!(body(&accepted(&structured(&event))[0]), Value::Null);
}

#[test]
fn sources_of_every_shape_the_spec_shows_are_accepted() {
    for source in [
        "https://github.com/cloudevents",
        "mailto:cncf-wg-serverless@lists.cncf.io",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "cloudevents/spec/pull/123",
        "/sensors/tn-1234567/alerts",
        "1-555-123-4567",
        "http://[2001:db8::7]:8080/a?b=c#d",
        "//example.com/path",
        "a%20b",
    ] {
        let m = &accepted(&structured(&with(json!({"source": source}))))[0];
        assert_eq!(
            m.idempotency_key(),
            Some(format!("{source}|A234-1234-1234").as_str())
        );
    }
}

#[test]
fn timestamps_of_every_rfc_3339_shape_are_accepted() {
    for time in [
        "2018-04-05T17:31:00Z",
        "2018-04-05t17:31:00z",
        "2018-04-05T17:31:00.5-07:30",
        "2020-02-29T00:00:00+00:00",
        "1998-12-31T23:59:60Z",
        "1998-12-31T15:59:60.123-08:00",
    ] {
        accepted(&structured(&with(json!({"time": time}))));
    }
}

#[test]
fn the_charset_may_be_named_when_it_is_utf_8() {
    let body = serde_json::to_vec(&minimal()).unwrap();
    for content_type in [
        "application/cloudevents+json; charset=utf-8",
        "Application/CloudEvents+JSON;charset=\"UTF-8\"",
    ] {
        accepted(&request(content_type, &[], &body));
    }
    assert_eq!(
        invalid(&request(
            "application/cloudevents+json; charset=iso-8859-1",
            &[],
            &body
        )),
        "charset `iso-8859-1` is not supported: the JSON event format is UTF-8"
    );
}

/// One invalid vector: the changes to the minimal event, the exact reason, and
/// whether the official schema refuses it too (some rules are beyond its reach).
struct Vector {
    changes: Value,
    reason: &'static str,
    schema_refuses: bool,
}

fn vector(changes: Value, reason: &'static str, schema_refuses: bool) -> Vector {
    Vector {
        changes,
        reason,
        schema_refuses,
    }
}

#[test]
fn every_attribute_rule_refuses_with_the_attribute_and_the_rule() {
    let vectors = [
        // id
        vector(
            json!({"id": "-"}),
            "attribute `id`: required, missing",
            true,
        ),
        vector(
            json!({"id": null}),
            "attribute `id`: required, missing",
            true,
        ),
        vector(
            json!({"id": ""}),
            "attribute `id`: must be a non-empty string",
            true,
        ),
        vector(
            json!({"id": 42}),
            "attribute `id`: must be a string, got 42",
            true,
        ),
        // source
        vector(
            json!({"source": "-"}),
            "attribute `source`: required, missing",
            true,
        ),
        vector(
            json!({"source": ""}),
            "attribute `source`: must be a non-empty URI-reference",
            true,
        ),
        vector(
            json!({"source": "my source"}),
            "attribute `source`: must be a URI-reference (RFC 3986), got \"my source\": a space is not allowed in a URI (percent-encode it)",
            true,
        ),
        vector(
            json!({"source": "1:2"}),
            "attribute `source`: must be a URI-reference (RFC 3986), got \"1:2\": a malformed scheme, or a relative reference whose first segment holds `:`",
            true,
        ),
        vector(
            json!({"source": "http://[::1/x"}),
            "attribute `source`: must be a URI-reference (RFC 3986), got \"http://[::1/x\": an IP literal opened with `[` is not closed",
            true,
        ),
        vector(
            json!({"source": "http://h/%zz"}),
            "attribute `source`: must be a URI-reference (RFC 3986), got \"http://h/%zz\": `%` at byte 9 does not start a percent-encoding (`%` and two hexadecimal digits)",
            true,
        ),
        vector(
            json!({"source": ["/a"]}),
            "attribute `source`: must be a string, got [\"/a\"]",
            true,
        ),
        // specversion
        vector(
            json!({"specversion": "-"}),
            "attribute `specversion`: required, missing",
            true,
        ),
        vector(
            json!({"specversion": "0.3"}),
            "attribute `specversion`: must be \"1.0\", got \"0.3\"",
            false,
        ),
        vector(
            json!({"specversion": ""}),
            "attribute `specversion`: must be \"1.0\", got \"\"",
            true,
        ),
        vector(
            json!({"specversion": 1.0}),
            "attribute `specversion`: must be a string, got 1.0",
            true,
        ),
        // type
        vector(
            json!({"type": "-"}),
            "attribute `type`: required, missing",
            true,
        ),
        vector(
            json!({"type": ""}),
            "attribute `type`: must be a non-empty string",
            true,
        ),
        vector(
            json!({"type": true}),
            "attribute `type`: must be a string, got true",
            true,
        ),
        // datacontenttype
        vector(
            json!({"datacontenttype": "json"}),
            "attribute `datacontenttype`: must be a media type (RFC 2046), got \"json\": no `/` between a type and a subtype",
            false,
        ),
        vector(
            json!({"datacontenttype": "application/json; charset"}),
            "attribute `datacontenttype`: must be a media type (RFC 2046), got \"application/json; charset\": the parameter `charset` is not `name=value`",
            false,
        ),
        vector(
            json!({"datacontenttype": ""}),
            "attribute `datacontenttype`: must be a media type (RFC 2046), got \"\": no `/` between a type and a subtype",
            true,
        ),
        vector(
            json!({"datacontenttype": 5}),
            "attribute `datacontenttype`: must be a string, got 5",
            true,
        ),
        // dataschema
        vector(
            json!({"dataschema": ""}),
            "attribute `dataschema`: must be a non-empty URI",
            true,
        ),
        vector(
            json!({"dataschema": "/schemas/order.json"}),
            "attribute `dataschema`: must be an absolute URI (RFC 3986 section 4.3), got \"/schemas/order.json\": no scheme (an absolute URI starts with one, like `https:`)",
            true,
        ),
        vector(
            json!({"dataschema": "https://example.com/schema.json#/definitions/order"}),
            "attribute `dataschema`: must be an absolute URI (RFC 3986 section 4.3), got \"https://example.com/schema.json#/definitions/order\": a fragment (`#...`) is not part of an absolute URI",
            false,
        ),
        vector(
            json!({"dataschema": "https://example.com/my schema"}),
            "attribute `dataschema`: must be an absolute URI (RFC 3986 section 4.3), got \"https://example.com/my schema\": a space is not allowed in a URI (percent-encode it)",
            true,
        ),
        vector(
            json!({"dataschema": {"$ref": "x"}}),
            "attribute `dataschema`: must be a string, got {\"$ref\":\"x\"}",
            true,
        ),
        // subject
        vector(
            json!({"subject": ""}),
            "attribute `subject`: must be a non-empty string",
            true,
        ),
        vector(
            json!({"subject": 5}),
            "attribute `subject`: must be a string, got 5",
            true,
        ),
        // time
        vector(
            json!({"time": "2018-04-05 17:31:00Z"}),
            "attribute `time`: must be an RFC 3339 timestamp, got \"2018-04-05 17:31:00Z\": not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`",
            true,
        ),
        vector(
            json!({"time": "2018-04-05T17:31:00"}),
            "attribute `time`: must be an RFC 3339 timestamp, got \"2018-04-05T17:31:00\": no time zone offset (`Z` or `±HH:MM`)",
            true,
        ),
        vector(
            json!({"time": "2019-02-29T17:31:00Z"}),
            "attribute `time`: must be an RFC 3339 timestamp, got \"2019-02-29T17:31:00Z\": day 29 does not exist in 2019-02",
            true,
        ),
        vector(
            json!({"time": "2018-04-05T24:00:00Z"}),
            "attribute `time`: must be an RFC 3339 timestamp, got \"2018-04-05T24:00:00Z\": 24:00:00 is not a time of day",
            true,
        ),
        vector(
            json!({"time": "1998-12-31T23:58:60Z"}),
            "attribute `time`: must be an RFC 3339 timestamp, got \"1998-12-31T23:58:60Z\": a leap second (second 60) happens only at 23:59 UTC",
            true,
        ),
        vector(
            json!({"time": ""}),
            "attribute `time`: must be an RFC 3339 timestamp, got \"\": not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`",
            true,
        ),
        vector(
            json!({"time": 1522949460}),
            "attribute `time`: must be a string, got 1522949460",
            true,
        ),
        // extension names
        vector(
            json!({"comExample": "x"}),
            "attribute `comExample`: an attribute name is lower-case letters (a-z) and digits (0-9) only",
            false,
        ),
        vector(
            json!({"com-example": "x"}),
            "attribute `com-example`: an attribute name is lower-case letters (a-z) and digits (0-9) only",
            false,
        ),
        vector(
            json!({"com_example": null}),
            "attribute `com_example`: an attribute name is lower-case letters (a-z) and digits (0-9) only",
            false,
        ),
        vector(
            json!({"": "x"}),
            "attribute ``: an attribute name is lower-case letters (a-z) and digits (0-9) only",
            false,
        ),
        // extension values: the type system
        vector(
            json!({"ext": 1.5}),
            "attribute `ext`: must be a string, an integer or a boolean, got 1.5",
            false,
        ),
        vector(
            json!({"ext": 5.0}),
            "attribute `ext`: must be a string, an integer or a boolean, got 5.0",
            false,
        ),
        vector(
            json!({"ext": {"a": 1}}),
            "attribute `ext`: must be a string, an integer or a boolean, got {\"a\":1}",
            false,
        ),
        vector(
            json!({"ext": [1]}),
            "attribute `ext`: must be a string, an integer or a boolean, got [1]",
            false,
        ),
        vector(
            json!({"ext": 2147483648_i64}),
            "attribute `ext`: integer 2147483648 is out of range (-2147483648 to 2147483647)",
            false,
        ),
        vector(
            json!({"ext": -2147483649_i64}),
            "attribute `ext`: integer -2147483649 is out of range (-2147483648 to 2147483647)",
            false,
        ),
        // the String type's characters
        vector(
            json!({"subject": "a\u{7}b"}),
            "attribute `subject`: the control character U+0007 is not allowed in a CloudEvents string",
            false,
        ),
        vector(
            json!({"id": "x\u{85}"}),
            "attribute `id`: the control character U+0085 is not allowed in a CloudEvents string",
            false,
        ),
        vector(
            json!({"type": "com.example\u{FDD0}"}),
            "attribute `type`: the noncharacter U+FDD0 is not allowed in a CloudEvents string",
            false,
        ),
        vector(
            json!({"ext": "line\nbreak"}),
            "attribute `ext`: the control character U+000A is not allowed in a CloudEvents string",
            false,
        ),
        // data and data_base64
        vector(
            json!({"data": {"a": 1}, "data_base64": "e30="}),
            "`data` and `data_base64` are both present: an event has at most one of them",
            false,
        ),
        vector(
            json!({"data": null, "data_base64": "e30="}),
            "`data` and `data_base64` are both present: an event has at most one of them",
            false,
        ),
        vector(
            json!({"data_base64": "not base64!"}),
            "`data_base64`: not base64 (RFC 4648): Invalid symbol 32, offset 3.",
            true,
        ),
        vector(
            json!({"data_base64": "e30"}),
            "`data_base64`: not base64 (RFC 4648): Invalid padding",
            true,
        ),
        vector(
            json!({"data_base64": 5}),
            "`data_base64`: must be a base64 string, got 5",
            true,
        ),
    ];
    let mut checked_by_schema = 0;
    for Vector {
        changes,
        reason,
        schema_refuses,
    } in vectors
    {
        let event = with(changes.clone());
        assert_eq!(invalid(&structured(&event)), reason, "{changes}");
        // The same event in a batch, second: the same reason, with its position.
        let pair = json!([minimal(), event]);
        assert_eq!(
            invalid(&batch(&pair)),
            format!("event 2: {reason}"),
            "{changes}"
        );
        assert_eq!(
            !schema_accepts(&event),
            schema_refuses,
            "the schema's verdict on {changes}"
        );
        checked_by_schema += usize::from(schema_refuses);
    }
    assert!(checked_by_schema >= 30, "{checked_by_schema}");
}

#[test]
fn data_that_is_not_json_is_refused_as_tenon_cannot_carry_it() {
    // Valid CloudEvents (the schema agrees), but Tenon messages carry JSON.
    let xml = with(json!({"datacontenttype": "text/xml", "data": "<much wow=\"xml\"/>"}));
    assert!(schema_accepts(&xml));
    assert_eq!(
        invalid(&structured(&xml)),
        "data of type `text/xml` cannot be carried: Tenon messages carry JSON (a datacontenttype of application/json or */*+json)"
    );
    let png = with(json!({"datacontenttype": "image/png", "data_base64": "iVBORw0KGgo="}));
    assert!(schema_accepts(&png));
    assert_eq!(
        invalid(&structured(&png)),
        "data of type `image/png` cannot be carried: Tenon messages carry JSON (a datacontenttype of application/json or */*+json)"
    );
    // Declared JSON that is not.
    let fake = with(json!({"datacontenttype": "application/json", "data_base64": "Zm9vYg=="}));
    assert!(schema_accepts(&fake));
    assert_eq!(
        invalid(&structured(&fake)),
        "data: not the JSON its datacontenttype `application/json` declares: expected ident at line 1 column 2"
    );
    // Without data, any datacontenttype will do.
    let none = with(json!({"datacontenttype": "text/xml"}));
    let m = &accepted(&structured(&none))[0];
    assert_eq!(body(m), Value::Null);
    assert_eq!(header(m, "ce-datacontenttype"), Some("text/xml"));
}

#[test]
fn a_body_that_is_not_one_json_event_is_refused() {
    assert_eq!(
        invalid(&request(STRUCTURED, &[], b"{\"id\": ")),
        "the body is not JSON: EOF while parsing a value at line 1 column 7"
    );
    assert_eq!(
        invalid(&request(STRUCTURED, &[], b"[{}]")),
        "not a JSON object (an event in the JSON format)"
    );
    assert!(!schema_accepts(&json!([{}])));
    // An unpaired surrogate is not even JSON text serde accepts.
    let lone = br#"{"specversion":"1.0","id":"\uDEAD","source":"/s","type":"t"}"#;
    assert!(invalid(&request(STRUCTURED, &[], lone)).starts_with("the body is not JSON: "));
    // Each attribute once: a duplicate member is refused, not silently overwritten.
    let twice = br#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t"}"#;
    assert_eq!(
        invalid(&request(STRUCTURED, &[], twice)),
        "attribute `id`: appears more than once"
    );
    let twice = br#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":1,"data":2}"#;
    assert_eq!(
        invalid(&request(STRUCTURED, &[], twice)),
        "member `data` appears more than once"
    );
}

#[test]
fn other_event_formats_are_refused() {
    let body = serde_json::to_vec(&minimal()).unwrap();
    for content_type in ["application/cloudevents+avro", "application/cloudevents"] {
        let essence = content_type;
        assert_eq!(
            invalid(&request(content_type, &[], &body)),
            format!(
                "the event format `{essence}` is not supported: send application/cloudevents+json (one event), application/cloudevents-batch+json (a batch) or binary mode"
            )
        );
    }
    assert_eq!(
        invalid(&request("application/cloudevents-batch+protobuf", &[], b"")),
        "the event format `application/cloudevents-batch+protobuf` is not supported: send application/cloudevents+json (one event), application/cloudevents-batch+json (a batch) or binary mode"
    );
}

// --- batched mode ----------------------------------------------------------------

#[test]
fn a_batch_becomes_one_message_per_event_in_order() {
    let events = json!([
        {
            "specversion": "1.0",
            "type": "com.example.someevent",
            "source": "/mycontext/4",
            "id": "B234-1234-1234",
            "subject": "order/1",
            "data": {"n": 1}
        },
        {
            "specversion": "1.0",
            "type": "com.example.someotherevent",
            "source": "/mycontext/9",
            "id": "C234-1234-1234",
            "time": "2018-04-05T17:31:05Z",
            "comexampleothervalue": 5,
            "datacontenttype": "application/json",
            "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}
        }
    ]);
    for event in events.as_array().unwrap() {
        assert!(schema_accepts(event));
    }
    let messages = accepted(&batch(&events));
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages
            .iter()
            .map(|m| (
                m.kind.as_str(),
                m.key.as_str(),
                m.idempotency_key().unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            (
                "com.example.someevent",
                "order/1",
                "/mycontext/4|B234-1234-1234"
            ),
            (
                "com.example.someotherevent",
                "C234-1234-1234",
                "/mycontext/9|C234-1234-1234"
            ),
        ]
    );
    assert_eq!(body(&messages[1]), events[1]["data"]);
}

#[test]
fn an_empty_batch_is_valid_and_yields_no_message() {
    assert_eq!(accepted(&batch(&json!([]))), Vec::<Message>::new());
    accepted(&request(
        "application/cloudevents-batch+json; charset=UTF-8",
        &[],
        b" [ ] ",
    ));
}

#[test]
fn one_invalid_event_refuses_the_whole_batch_naming_its_position() {
    let events = json!([minimal(), with(json!({"specversion": "0.3"})), minimal()]);
    assert_eq!(
        invalid(&batch(&events)),
        "event 2: attribute `specversion`: must be \"1.0\", got \"0.3\""
    );
    // Data the mapping refuses, too.
    let events = json!([
        minimal(),
        minimal(),
        with(json!({"datacontenttype": "text/plain", "data": "hi"}))
    ]);
    assert_eq!(
        invalid(&batch(&events)),
        "event 3: data of type `text/plain` cannot be carried: Tenon messages carry JSON (a datacontenttype of application/json or */*+json)"
    );
    assert_eq!(
        invalid(&batch(&json!([minimal(), "not an event"]))),
        "event 2: not a JSON object (an event in the JSON format)"
    );
    assert_eq!(
        invalid(&batch(&minimal())),
        "the body is not a JSON array of events (the JSON batch format)"
    );
}

// --- binary mode -----------------------------------------------------------------

#[test]
fn a_binary_mode_event_takes_its_attributes_from_ce_headers() {
    let request = request(
        "application/json; charset=utf-8",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.someevent"),
            ("ce-time", "2018-04-05T03:56:24Z"),
            ("ce-id", "1234-1234-1234"),
            ("ce-source", "/mycontext/subcontext"),
            ("ce-subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
            // A URI's own percent-encoding is encoded again in a header.
            ("ce-dataschema", "https://example.com/schema%25201.json"),
            ("ce-comexampleothervalue", "5"),
            ("x-other", "not CloudEvents"),
        ],
        br#"{"appinfoA": "abc"}"#,
    );
    let m = &accepted(&request)[0];
    assert_eq!(m.kind, "com.example.someevent");
    // Percent-decoded.
    assert_eq!(m.key, "Euro € 😀");
    assert_eq!(header(m, "ce-subject"), Some("Euro € 😀"));
    assert_eq!(
        header(m, "ce-dataschema"),
        Some("https://example.com/schema%201.json")
    );
    assert_eq!(
        header(m, "ce-datacontenttype"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(header(m, "ce-comexampleothervalue"), Some("5"));
    assert_eq!(header(m, "x-other"), None);
    assert_eq!(
        m.idempotency_key(),
        Some("/mycontext/subcontext|1234-1234-1234")
    );
    assert_eq!(body(m), json!({"appinfoA": "abc"}));
}

#[test]
fn binary_header_names_are_case_insensitive_and_values_may_be_quoted() {
    let request = request(
        "application/json",
        &[
            ("CE-SpecVersion", "1.0"),
            ("Ce-Type", "\"com.example.quoted\""),
            ("ce-ID", "\"a \\\"quoted\\\" id\""),
            ("ce-source", "/s"),
            ("ce-note", "100%25%20sure"),
        ],
        b"[]",
    );
    let m = &accepted(&request)[0];
    assert_eq!(m.kind, "com.example.quoted");
    assert_eq!(m.key, "a \"quoted\" id");
    assert_eq!(header(m, "ce-note"), Some("100% sure"));
}

#[test]
fn a_binary_mode_event_without_a_body_has_no_data() {
    let request = request(
        "application/octet-stream",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.ping"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
        ],
        b"",
    );
    let m = &accepted(&request)[0];
    assert_eq!(body(m), Value::Null);
    assert_eq!(
        header(m, "ce-datacontenttype"),
        Some("application/octet-stream")
    );
}

#[test]
fn binary_mode_rules_refuse_with_the_attribute_and_the_rule() {
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.someevent"),
        ("ce-id", "1234"),
        ("ce-source", "/mycontext"),
    ];
    let refuse = |extra: &[(&str, &str)], drop: &str, content_type: &str, body: &[u8]| {
        let mut headers: Vec<(&str, &str)> =
            base.iter().copied().filter(|(k, _)| *k != drop).collect();
        headers.extend_from_slice(extra);
        invalid(&request(content_type, &headers, body))
    };
    let json = "application/json";
    for (extra, drop, content_type, body, reason) in [
        (
            &[][..],
            "ce-id",
            json,
            &b"{}"[..],
            "attribute `id`: required, missing (binary mode: a `ce-id` header)",
        ),
        (
            &[],
            "ce-specversion",
            json,
            b"{}",
            "attribute `specversion`: required, missing (binary mode: a `ce-specversion` header)",
        ),
        (
            &[("ce-specversion", "0.3")],
            "ce-specversion",
            json,
            b"{}",
            "attribute `specversion`: must be \"1.0\", got \"0.3\"",
        ),
        (
            &[("ce-id", "other")],
            "",
            json,
            b"{}",
            "attribute `id`: appears more than once",
        ),
        (
            &[("ce-datacontenttype", "application/json")],
            "",
            json,
            b"{}",
            "header `ce-datacontenttype` is not allowed in binary mode: the Content-Type header is the datacontenttype",
        ),
        (
            &[("ce-subject", "100%")],
            "",
            json,
            b"{}",
            "attribute `subject` (header `ce-subject`): `%` at byte 3 does not start a percent-encoding (`%` and two hexadecimal digits)",
        ),
        (
            &[("ce-subject", "%C0%A0")],
            "",
            json,
            b"{}",
            "attribute `subject` (header `ce-subject`): its percent-decoded bytes are not UTF-8",
        ),
        (
            &[("ce-subject", "a%0Ab")],
            "",
            json,
            b"{}",
            "attribute `subject`: the control character U+000A is not allowed in a CloudEvents string",
        ),
        (
            &[("ce-subject", "")],
            "",
            json,
            b"{}",
            "attribute `subject`: must be a non-empty string",
        ),
        (
            &[("ce-time", "yesterday")],
            "",
            json,
            b"{}",
            "attribute `time`: must be an RFC 3339 timestamp, got \"yesterday\": not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`",
        ),
        (
            &[("ce-source", "a%20b c")],
            "ce-source",
            json,
            b"{}",
            // Decoded first: the space is then not allowed in a URI-reference.
            "attribute `source`: must be a URI-reference (RFC 3986), got \"a b c\": a space is not allowed in a URI (percent-encode it)",
        ),
        (
            &[("ce-dataschema", "schema.json")],
            "",
            json,
            b"{}",
            "attribute `dataschema`: must be an absolute URI (RFC 3986 section 4.3), got \"schema.json\": no scheme (an absolute URI starts with one, like `https:`)",
        ),
        (
            &[("ce-my-ext", "x")],
            "",
            json,
            b"{}",
            "attribute `my-ext`: an attribute name is lower-case letters (a-z) and digits (0-9) only",
        ),
        (
            &[("ce-data", "x")],
            "",
            json,
            b"{}",
            "attribute `data`: the name is reserved for the event's data",
        ),
        (
            &[],
            "",
            "json",
            b"{}",
            "attribute `datacontenttype`: must be a media type (RFC 2046), got \"json\": no `/` between a type and a subtype",
        ),
        (
            &[],
            "",
            json,
            b"{not json",
            "data: not the JSON its datacontenttype `application/json` declares: key must be a string at line 1 column 2",
        ),
        (
            &[],
            "",
            "application/xml",
            b"<much wow=\"xml\"/>",
            "data of type `application/xml` cannot be carried: Tenon messages carry JSON (a datacontenttype of application/json or */*+json)",
        ),
    ] {
        assert_eq!(
            refuse(extra, drop, content_type, body),
            reason,
            "{extra:?} {drop}"
        );
    }
}

#[test]
fn a_request_with_no_ce_header_is_not_a_cloudevent() {
    assert_eq!(
        invalid(&request("application/json", &[("x-id", "1")], b"{}")),
        "not a CloudEvent: send Content-Type application/cloudevents+json (one event), application/cloudevents-batch+json (a batch), or binary mode (the data with ce-specversion, ce-id, ce-source and ce-type headers)"
    );
}

#[test]
fn an_event_renders_back_to_the_json_format() {
    let event = Event {
        id: "1".into(),
        source: "/s".into(),
        specversion: "1.0".into(),
        kind: "t".into(),
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        subject: None,
        time: None,
        extensions: vec![("n".into(), Extension::Integer(5))],
        data: Data::Bytes(b"{}".to_vec()),
    };
    let json = event.to_json();
    assert_eq!(
        json,
        json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "datacontenttype": "application/json", "n": 5, "data_base64": "e30="
        })
    );
    assert!(schema_accepts(&json));
    assert_eq!(events(&structured(&json)).unwrap(), vec![event]);
}

// --- kinds -----------------------------------------------------------------------

#[test]
fn kinds_limits_the_types_accepted_and_rejects_the_others() {
    assert_eq!(kinds_from_config(None).unwrap(), None);
    let kinds = kinds_from_config(Some(r#"["com.example.a", "com.example.b"]"#))
        .unwrap()
        .unwrap();
    let a = with(json!({"type": "com.example.a"}));
    assert_eq!(accept(&structured(&a), Some(&kinds)).unwrap().len(), 1);
    let c = with(json!({"type": "com.example.c", "id": "2"}));
    let events = json!([a, c, with(json!({"type": "com.example.d"}))]);
    assert_eq!(
        accept(&batch(&events), Some(&kinds)),
        Err(Failure::Rejected(vec![
            "event 2: type `com.example.c` is not one this source accepts (com.example.a, com.example.b)".into(),
            "event 3: type `com.example.d` is not one this source accepts (com.example.a, com.example.b)".into(),
        ]))
    );
    assert_eq!(
        accept(&structured(&c), Some(&kinds)),
        Err(Failure::Rejected(vec![
            "type `com.example.c` is not one this source accepts (com.example.a, com.example.b)"
                .into(),
        ]))
    );
    // Invalid events are invalid whatever their type.
    assert!(matches!(
        accept(&structured(&with(json!({"id": ""}))), Some(&kinds)),
        Err(Failure::Invalid(_))
    ));
    assert_eq!(
        kinds_from_config(Some("com.example.a")),
        Err(Failure::Invalid(
            "config `kinds` is not a JSON array of event types: expected value at line 1 column 1"
                .into()
        ))
    );
}
