//! What Tenon tells its operators about itself: traces (W3C trace context carried by
//! every message, spans exported over OTLP when `[telemetry]` names a collector) and
//! metrics ([`metrics`]: the Prometheus text on the admin listener, and the business
//! KPIs).
//!
//! A message's trace starts at ingress (from the caller's `traceparent`, or a new
//! trace) and travels in its envelope ([`crate::model::Trace`]) through every queue
//! hop, event fan-out, retry, redrive and replay: each hop's span is a child of the
//! span that produced the message, so one quote is one tree from ingest to the ERP's
//! receipt, across flows. Spans: `ingest`, `step` (one per stage a message passes),
//! `plugin.call` under it, `http.request` for each outbound request a plugin makes
//! (the host injects `traceparent` into the request), `store.commit`.
//!
//! Trace ids are made whether or not spans are exported: logs and outbound requests
//! carry them either way. The exporter is set once per process (a config reload does
//! not change it).

pub mod metrics;

use crate::config::TelemetryConfig;
use crate::model::Trace;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::OnceLock;

pub use opentelemetry::trace::Status;

/// The tracer every span of this process is made with.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

fn tracer() -> &'static SdkTracer {
    TRACER.get_or_init(|| SdkTracerProvider::builder().build().tracer("tenon"))
}

/// The process's exporter, kept to flush what is buffered at exit.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Set up this process's spans: exported to `config.otlp_endpoint` when it is set,
    /// made (for their ids) and dropped otherwise. Call once, before any span.
    pub fn start(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
        let Some(endpoint) = &config.otlp_endpoint else {
            tracer();
            return Ok(Telemetry { provider: None });
        };
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        // The exporter's HTTP client (reqwest with rustls, built without a provider of its
        // own) takes the process's: ring, as every TLS connection of Tenon does. Already
        // installed (by another server of this process) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_headers(HashMap::new())
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry: cannot export to {url}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        if TRACER.set(provider.tracer("tenon")).is_err() {
            // Another server of this process set it up first (tests run several).
            tracing::warn!(%url, "spans are already going elsewhere in this process; [telemetry] not applied");
            return Ok(Telemetry { provider: None });
        }
        tracing::info!(%url, "spans exported over OTLP/HTTP");
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// Send what is buffered (at exit).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// The context a carried trace names (no span when it names none).
pub fn parent(trace: &Trace) -> Context {
    if trace.traceparent.is_empty() {
        return Context::new();
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), trace.traceparent.clone());
    if !trace.tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), trace.tracestate.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The context of W3C `traceparent`/`tracestate` headers (a new trace when there are
/// none, or they do not parse).
pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let mut trace = Trace::default();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("traceparent") {
            trace.traceparent = value.to_owned();
        } else if name.eq_ignore_ascii_case("tracestate") {
            trace.tracestate = value.to_owned();
        }
    }
    parent(&trace)
}

/// The trace context to carry on (or send with) what a span produces.
pub fn carried(cx: &Context) -> Trace {
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    Trace {
        traceparent: carrier.remove("traceparent").unwrap_or_default(),
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
    }
}

/// A started span, a child of `parent`, and the context that names it.
pub fn start(name: &'static str, parent: &Context, attributes: Vec<KeyValue>) -> Context {
    start_kind(name, SpanKind::Internal, parent, attributes)
}

/// [`start`], with a span kind (server at ingress, client for outbound requests).
pub fn start_kind(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
) -> Context {
    let span = tracer()
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer(), parent);
    parent.with_span(span)
}

/// End the span of `cx`, with these attributes and, for a failure, its error.
pub fn end(cx: &Context, attributes: Vec<KeyValue>, error: Option<String>) {
    let span = cx.span();
    span.set_attributes(attributes);
    if let Some(error) = error {
        span.set_status(Status::error(error));
    }
    span.end();
}

/// The trace and span ids of `cx`, in hex (empty when it has no span).
pub fn ids(cx: &Context) -> (String, String) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return (String::new(), String::new());
    }
    (sc.trace_id().to_string(), sc.span_id().to_string())
}

/// An attribute.
pub fn attr(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_trace_makes_children_of_the_same_trace() {
        let root = start("ingest", &Context::new(), vec![]);
        let (trace_id, span_id) = ids(&root);
        assert_eq!(trace_id.len(), 32);
        let carried_on = carried(&root);
        assert_eq!(
            carried_on.traceparent,
            format!("00-{trace_id}-{span_id}-01")
        );
        let child = start("step", &parent(&carried_on), vec![]);
        let (child_trace, child_span) = ids(&child);
        assert_eq!(child_trace, trace_id);
        assert_ne!(child_span, span_id);
        end(&child, vec![], None);
        end(&root, vec![], None);
    }

    #[test]
    fn a_callers_traceparent_is_continued_and_a_bad_one_starts_a_trace() {
        let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = start(
            "ingest",
            &from_headers([("TraceParent", theirs), ("tracestate", "k=v")]),
            vec![],
        );
        assert_eq!(ids(&cx).0, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(carried(&cx).tracestate, "k=v");
        let fresh = start("ingest", &from_headers([("traceparent", "junk")]), vec![]);
        let (fresh_trace, _) = ids(&fresh);
        assert_eq!(fresh_trace.len(), 32);
        assert_ne!(fresh_trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
