//! A stand-in OpenTelemetry collector for the tests: it receives traces over OTLP/HTTP
//! with protobuf bodies (the wire format a real collector and Tenon's exporter speak) on
//! 127.0.0.1, decodes every span into its hex ids, parent, service, attributes and
//! status, and records every trace body it cannot read, so a test can check that one
//! quote's spans form one tree and that nothing was lost on the way.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::status;
use prost::Message;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The media type of OTLP/HTTP protobuf bodies.
const PROTOBUF: &str = "application/x-protobuf";
/// The media type of its error answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// One span the receiver decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// The span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id, 16 lowercase hex digits; empty for a root (an all-zero id
    /// counts as none).
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// The `service.name` attribute of the span's resource (empty if it has none).
    pub service: String,
    /// The span's attributes, each value in its string form (strings as they are;
    /// ints, bools and doubles as Rust displays them).
    pub attributes: BTreeMap<String, String>,
    /// When it started, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// When it ended, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// True when its status code is `STATUS_CODE_ERROR`.
    pub status_error: bool,
}

#[derive(Debug, Default)]
struct State {
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    spans: Vec<ReceivedSpan>,
    errors: Vec<String>,
}

/// A running stand-in OpenTelemetry collector (OTLP/HTTP, protobuf); stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Start on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        let state = Arc::new(State::default());
        let (addr, task) = crate::local::serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            state.clone(),
            |state, req| async move { handle(&state, req).await },
        )
        .await?;
        Ok(OtlpReceiver { addr, state, task })
    }

    /// Its base URL, `http://127.0.0.1:PORT`: an OTLP/HTTP exporter posts traces to
    /// `{endpoint}/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in the order they arrived.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.log().spans.clone()
    }

    /// The spans received so far of one trace (its id in hex, either case).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.log()
            .spans
            .iter()
            .filter(|s| s.trace_id.eq_ignore_ascii_case(trace_id))
            .cloned()
            .collect()
    }

    /// Why each refused trace body was refused (one that did not decode, or came in a
    /// media type or encoding it cannot read), in order; tests assert there are none.
    pub fn errors(&self) -> Vec<String> {
        self.log().errors.clone()
    }

    /// The spans received, once `pred` holds for them (checked every 50 ms).
    ///
    /// # Panics
    ///
    /// When `timeout` passes first, with a summary of the spans received (name, trace,
    /// span, parent) and of any refused bodies.
    #[allow(
        clippy::panic,
        reason = "a test helper: failing the test with what arrived is its job"
    )]
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{}", self.summary(timeout, &spans));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn summary(&self, timeout: Duration, spans: &[ReceivedSpan]) -> String {
        let mut out = format!(
            "the OTLP receiver's spans did not meet the condition within {timeout:?}; \
             {} span(s) received:",
            spans.len()
        );
        for s in spans {
            let parent = if s.parent_span_id.is_empty() {
                "none (root)"
            } else {
                &s.parent_span_id
            };
            let _ = write!(
                out,
                "\n  {:?} trace={} span={} parent={parent}",
                s.name, s.trace_id, s.span_id
            );
        }
        for e in self.errors() {
            let _ = write!(out, "\n  refused body: {e}");
        }
        out
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn reply(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if let Some(content_type) = content_type {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r
}

/// Record why a trace body was refused, and answer with it as text.
fn refuse(state: &State, status: StatusCode, why: String) -> Response<Full<Bytes>> {
    state
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .errors
        .push(why.clone());
    reply(status, Some(TEXT), Bytes::from(why))
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let traces = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/traces") => true,
        (&Method::POST, "/v1/metrics" | "/v1/logs") => false,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                Some(TEXT),
                Bytes::from_static(b"not found"),
            );
        }
    };
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    };
    let content_type = header(CONTENT_TYPE);
    let encoding = header(CONTENT_ENCODING);
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    if !traces {
        // Metrics and logs are accepted and ignored.
        return reply(StatusCode::OK, None, Bytes::new());
    }
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            return refuse(
                state,
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    let media_type = content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case(PROTOBUF)) {
        return refuse(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {content_type:?} is not {PROTOBUF}"),
        );
    }
    if let Some(encoding) =
        encoding.filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
    {
        return refuse(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-encoding {encoding:?} is not supported (send it uncompressed)"),
        );
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => {
            return refuse(
                state,
                StatusCode::BAD_REQUEST,
                format!("not an OTLP ExportTraceServiceRequest: {e}"),
            );
        }
    };
    let spans = decode_spans(request);
    state
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .spans
        .extend(spans);
    reply(
        StatusCode::OK,
        Some(PROTOBUF),
        Bytes::from(ExportTraceServiceResponse::default().encode_to_vec()),
    )
}

fn decode_spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| value_string(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let parent_span_id = if span.parent_span_id.iter().all(|b| *b == 0) {
                String::new()
            } else {
                hex::encode(&span.parent_span_id)
            };
            out.push(ReceivedSpan {
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id,
                status_error: span
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code() == status::StatusCode::Error),
                name: span.name,
                service: service.clone(),
                attributes: attributes(&span.attributes),
                start_unix_nanos: span.start_time_unix_nano,
                end_unix_nanos: span.end_time_unix_nano,
            });
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_string(kv.value.as_ref())))
        .collect()
}

/// The string form of an attribute value (arrays as `[a, b]`, maps as `{k=v, ...}`,
/// bytes as hex; no value, and a profiling string-table reference, which OTLP says
/// other signals are to read as absent, as empty).
fn value_string(value: Option<&AnyValue>) -> String {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(Value::StringValueStrindex(_)) => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex::encode(b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| value_string(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(l)) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, value_string(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const PARENT: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
    const CHILD: [u8; 8] = [0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8];

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// One quote's two spans from the `tenon` service: a root and its child, which
    /// failed.
    fn export_request() -> ExportTraceServiceRequest {
        use any_value::Value;
        let parent = Span {
            trace_id: TRACE.to_vec(),
            span_id: PARENT.to_vec(),
            name: "quote".to_owned(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            attributes: vec![kv("quote.id", Value::StringValue("Q-1001".to_owned()))],
            ..Default::default()
        };
        let child = Span {
            trace_id: TRACE.to_vec(),
            span_id: CHILD.to_vec(),
            parent_span_id: PARENT.to_vec(),
            name: "step quote-to-order".to_owned(),
            start_time_unix_nano: 1_700_000_000_100_000_000,
            end_time_unix_nano: 1_700_000_000_400_000_000,
            attributes: vec![
                kv("flow", Value::StringValue("quote-to-order".to_owned())),
                kv("lines", Value::IntValue(3)),
                kv("retried", Value::BoolValue(false)),
                kv("ratio", Value::DoubleValue(0.25)),
            ],
            status: Some(Status {
                code: status::StatusCode::Error as i32,
                message: "rejected".to_owned(),
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("tenon".to_owned()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![parent, child],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Send `body` to `url`: (status, content-type, body).
    async fn post(
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Option<String>, Bytes) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body)
    }

    async fn post_traces(
        receiver: &OtlpReceiver,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Option<String>, Bytes) {
        let url = format!("{}/v1/traces", receiver.endpoint());
        post(Method::POST, &url, headers, body).await
    }

    #[tokio::test]
    async fn decodes_a_protobuf_export_into_a_tree() {
        let receiver = OtlpReceiver::start().await.unwrap();
        assert!(receiver.endpoint().starts_with("http://127.0.0.1:"));
        let (status, content_type, body) = post_traces(
            &receiver,
            &[("content-type", PROTOBUF)],
            export_request().encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(PROTOBUF));
        assert_eq!(
            ExportTraceServiceResponse::decode(body).unwrap(),
            ExportTraceServiceResponse::default()
        );
        assert_eq!(receiver.errors(), Vec::<String>::new());

        let spans = receiver.spans();
        assert_eq!(spans.len(), 2);
        let (parent, child) = (&spans[0], &spans[1]);
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(parent.trace_id, trace_id);
        assert_eq!(child.trace_id, trace_id);
        assert_eq!(parent.span_id, "00f067aa0ba902b7");
        assert_eq!(child.span_id, "53995c3f42cd8ad8");
        assert_eq!(parent.parent_span_id, "", "the root has no parent");
        assert_eq!(child.parent_span_id, parent.span_id);
        assert_eq!(parent.name, "quote");
        assert_eq!(child.name, "step quote-to-order");
        assert_eq!(parent.service, "tenon");
        assert_eq!(child.service, "tenon");
        assert_eq!(
            parent.attributes,
            BTreeMap::from([("quote.id".to_owned(), "Q-1001".to_owned())])
        );
        assert_eq!(
            child.attributes,
            BTreeMap::from([
                ("flow".to_owned(), "quote-to-order".to_owned()),
                ("lines".to_owned(), "3".to_owned()),
                ("ratio".to_owned(), "0.25".to_owned()),
                ("retried".to_owned(), "false".to_owned()),
            ])
        );
        assert_eq!(parent.start_unix_nanos, 1_700_000_000_000_000_000);
        assert_eq!(parent.end_unix_nanos, 1_700_000_000_500_000_000);
        assert_eq!(child.start_unix_nanos, 1_700_000_000_100_000_000);
        assert_eq!(child.end_unix_nanos, 1_700_000_000_400_000_000);
        assert!(!parent.status_error);
        assert!(child.status_error);

        assert_eq!(receiver.trace(trace_id), spans);
        assert_eq!(receiver.trace(&trace_id.to_uppercase()), spans);
        assert_eq!(receiver.trace("00000000000000000000000000000001"), vec![]);
        let waited = receiver
            .wait_for(Duration::from_secs(1), |s| {
                s.iter().any(|s| s.parent_span_id == "00f067aa0ba902b7")
            })
            .await;
        assert_eq!(waited, spans);
    }

    #[tokio::test]
    async fn an_all_zero_parent_is_a_root() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut request = export_request();
        request.resource_spans[0].scope_spans[0].spans[0].parent_span_id = vec![0; 8];
        let (status, _, _) = post_traces(
            &receiver,
            &[("content-type", PROTOBUF)],
            request.encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(receiver.spans()[0].parent_span_id, "");
    }

    #[tokio::test]
    async fn garbage_is_refused_and_recorded() {
        let receiver = OtlpReceiver::start().await.unwrap();
        // Field 1 with wire type 7, which protobuf does not have.
        let (status, content_type, body) = post_traces(
            &receiver,
            &[("content-type", PROTOBUF)],
            b"\x0fnot protobuf".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type.as_deref(), Some(TEXT));
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with("not an OTLP ExportTraceServiceRequest: "),
            "{body}"
        );
        assert_eq!(receiver.errors(), vec![body]);
        assert_eq!(receiver.spans(), vec![]);
    }

    #[tokio::test]
    async fn other_media_types_and_encodings_are_refused_and_recorded() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let body = export_request().encode_to_vec();
        let (status, _, _) = post_traces(
            &receiver,
            &[("content-type", "application/json")],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _, _) = post_traces(&receiver, &[], body.clone()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _, _) = post_traces(
            &receiver,
            &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let errors = receiver.errors();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("application/json"), "{errors:?}");
        assert!(errors[2].contains("gzip"), "{errors:?}");
        assert_eq!(receiver.spans(), vec![]);

        // Parameters on the media type and an explicit identity encoding are fine.
        let (status, _, _) = post_traces(
            &receiver,
            &[
                ("content-type", "application/x-protobuf; charset=binary"),
                ("content-encoding", "identity"),
            ],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(receiver.spans().len(), 2);
        assert_eq!(receiver.errors().len(), 3);
    }

    #[tokio::test]
    async fn metrics_and_logs_are_accepted_and_anything_else_is_not_found() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let base = receiver.endpoint();
        let protobuf = [("content-type", PROTOBUF)];
        for path in ["/v1/metrics", "/v1/logs"] {
            let (status, _, body) = post(
                Method::POST,
                &format!("{base}{path}"),
                &protobuf,
                b"anything".to_vec(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(body.is_empty(), "{path}");
        }
        for (method, path) in [
            (Method::GET, "/v1/traces"),
            (Method::POST, "/v1/trace"),
            (Method::POST, "/"),
        ] {
            let (status, _, _) = post(
                method.clone(),
                &format!("{base}{path}"),
                &protobuf,
                Vec::new(),
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
        assert_eq!(receiver.spans(), vec![]);
        assert_eq!(receiver.errors(), Vec::<String>::new());
    }

    #[tokio::test]
    #[should_panic(
        expected = "\"step quote-to-order\" trace=4bf92f3577b34da6a3ce929d0e0e4736 \
                               span=53995c3f42cd8ad8 parent=00f067aa0ba902b7"
    )]
    async fn wait_for_panics_with_what_arrived() {
        let receiver = OtlpReceiver::start().await.unwrap();
        post_traces(
            &receiver,
            &[("content-type", PROTOBUF)],
            export_request().encode_to_vec(),
        )
        .await;
        receiver
            .wait_for(Duration::from_millis(200), |s| s.len() > 2)
            .await;
    }

    #[tokio::test]
    async fn stops_when_dropped() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let addr = receiver.addr;
        drop(receiver);
        // The accept loop is aborted and the listener closed with it.
        let mut refused = false;
        for _ in 0..20 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "still listening on {addr}");
    }
}
