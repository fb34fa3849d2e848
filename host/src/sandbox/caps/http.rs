//! `wasi:http/outgoing-handler`, for sinks granted `http`: only to the origins the
//! grants name, sent by the host through the plugin's egress client (address policy,
//! the host's own listeners out of reach, body caps, the call's deadline); every
//! request allowed or refused goes through the call's record.

use super::{PluginContext, PluginState, Violation, Violations};
use crate::sandbox::egress::SendError;
use crate::sandbox::throttle;
use crate::store::audit::Decision;
use crate::telemetry::{self, metrics};
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Outbound HTTP policy: only the origins the grants name, through the plugin's
/// [`Egress`](crate::sandbox::egress::Egress).
struct HttpGrants {
    ctx: Arc<PluginContext>,
    violations: Violations,
}

/// A call's outbound HTTP: wasmtime's context, and the policy hooks.
pub struct HttpCall {
    wasi: WasiHttpCtx,
    hooks: HttpGrants,
}

impl std::fmt::Debug for HttpCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCall")
            .field("plugin", &self.hooks.ctx.name)
            .finish_non_exhaustive()
    }
}

impl HttpCall {
    /// The HTTP of a call of a plugin version.
    pub(crate) fn new(ctx: Arc<PluginContext>, violations: Violations) -> HttpCall {
        HttpCall {
            wasi: WasiHttpCtx::new(),
            hooks: HttpGrants { ctx, violations },
        }
    }
}

/// Link `wasi:http/outgoing-handler` (and the types it needs), through the hooks.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> anyhow::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    Ok(())
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.wasi,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// `scheme://host:port` of a URI, the port always stated.
fn origin(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{host}:{port}")
}

type HttpResponse = (
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
);

impl WasiHttpHooks for HttpGrants {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<HttpResponse, wasmtime_wasi_http::Error>> + Send> {
        use wasmtime_wasi_http::Error as E;
        let (ctx, violations) = (self.ctx.clone(), self.violations.clone());
        let origin = origin(request.uri());
        // Every decision about this request, through the call's capped record.
        let refuse = {
            let (ctx, violations) = (ctx.clone(), violations.clone());
            move |target: &str, reason: String, limit: bool| {
                let text = format!("http `{target}`: {reason}");
                let violation = if limit {
                    Violation::Limit(text)
                } else {
                    Violation::Denied(text)
                };
                violations.refuse(&ctx, "http", target, reason, violation);
            }
        };
        if !ctx.grants.allows_http(&origin) {
            refuse(&origin, "origin not granted".into(), false);
            return Box::new(async { Err(E::HttpRequestDenied) });
        }
        let Some(egress) = ctx.egress.clone() else {
            refuse(&origin, "the plugin has no outbound HTTP".into(), false);
            return Box::new(async { Err(E::HttpRequestDenied) });
        };
        let on_too_large = {
            let (refuse, origin) = (refuse.clone(), origin.clone());
            move |cap: u64| {
                refuse(
                    &origin,
                    format!("response body over the {cap}-byte cap"),
                    true,
                )
            }
        };
        // A span of the plugin call's trace; the target system continues it.
        let span = telemetry::start_kind(
            "http.request",
            opentelemetry::trace::SpanKind::Client,
            &opentelemetry::Context::current(),
            vec![
                telemetry::attr("http.request.method", request.method().to_string()),
                telemetry::attr("server.origin", origin.clone()),
                telemetry::attr("tenon.plugin", ctx.name.clone()),
            ],
        );
        let mut request = request;
        let carried = telemetry::carried(&span);
        for (name, value) in [
            ("traceparent", &carried.traceparent),
            ("tracestate", &carried.tracestate),
        ] {
            request.headers_mut().remove(name);
            if let Ok(value) = http::HeaderValue::from_str(value)
                && !value.is_empty()
            {
                request.headers_mut().insert(name, value);
            }
        }
        Box::new(async move {
            let allowed = || violations.decide(&ctx, "http", &origin, Decision::Allow, None);
            let started = std::time::Instant::now();
            // The instance's rate, concurrency and pause, before anything leaves.
            let admitted = match ctx.throttle.admit().await {
                Ok(admitted) => admitted,
                Err(pause) => {
                    metrics::outbound(&ctx.name, &origin, "paused", started.elapsed());
                    telemetry::end(&span, vec![], Some(format!("paused: {}", pause.reason)));
                    tracing::debug!(plugin = %ctx.name, %origin, reason = %pause.reason, "request held: the instance is paused");
                    return Err(E::ConnectionRefused);
                }
            };
            let sent =
                tokio::time::timeout(ctx.timeout(), egress.send(request, on_too_large)).await;
            drop(admitted);
            // A limited API's answer pauses the whole instance, not just this message.
            if let Ok(Ok(response)) = &sent
                && matches!(response.status().as_u16(), 429 | 503)
                && let Some(wait) = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(throttle::retry_after)
            {
                ctx.throttle.pause(
                    wait,
                    format!("HTTP {} from {origin}", response.status().as_u16()),
                );
            }
            let status = match &sent {
                Ok(Ok(response)) => response.status().as_u16().to_string(),
                Ok(Err(SendError::Network(_))) | Err(_) => "error".to_owned(),
                Ok(Err(_)) => "refused".to_owned(),
            };
            metrics::outbound(&ctx.name, &origin, &status, started.elapsed());
            let failed =
                (!status.starts_with(|c: char| c.is_ascii_digit())).then(|| status.clone());
            telemetry::end(
                &span,
                vec![telemetry::attr("http.response.status", status)],
                failed,
            );
            match sent {
                Err(_) => Err(E::ConnectionReadTimeout),
                Ok(Ok(response)) => {
                    allowed();
                    let io: Box<dyn Future<Output = _> + Send> = Box::new(async { Ok(()) });
                    Ok((response, io))
                }
                Ok(Err(SendError::Prohibited(p))) => {
                    refuse(&format!("{origin} ({})", p.ip), p.to_string(), false);
                    Err(E::DestinationIpProhibited)
                }
                Ok(Err(SendError::TooLarge(cap))) => {
                    refuse(
                        &origin,
                        format!("response body over the {cap}-byte cap"),
                        true,
                    );
                    Err(E::HttpResponseBodySize(Some(cap)))
                }
                Ok(Err(SendError::RequestTooLarge(cap))) => {
                    refuse(
                        &origin,
                        format!("request body over the {cap}-byte cap"),
                        true,
                    );
                    Err(E::HttpRequestBodySize(Some(cap)))
                }
                Ok(Err(SendError::Network(e))) => {
                    allowed();
                    Err(e)
                }
            }
        })
    }
}
