//! Synchronous APIs (`[apis.<name>]`): a request answered while the caller waits, by
//! an API plugin or by a source and transform steps run at once. Nothing is queued or
//! committed: the answer is the response. Guest code runs on the plugin threads, and
//! everything under way stops at the route's deadline.
//!
//! A chain runs exactly what the flows run (the same plugin instances, their live
//! versions, the same ids and keys derived the same way), so "would this quote pass?"
//! gets the answer the asynchronous path gives.

use super::Runtime;
use crate::config::{ApiEntry, Config, ConfigError};
use crate::model::{Hop, StoredMessage};
use crate::sandbox::plugin::{ApiRequest, ApiResponse, CallError, Plugin, RawRequest};
use crate::telemetry::{self, metrics};
use opentelemetry::trace::FutureExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenon_model::Encoding;
use tenon_registry::Kind;

/// Why an API could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `[apis.<name>]`.
    #[error("no API named `{0}`")]
    Unknown(String),
    /// The deadline passed first; what was under way was stopped.
    #[error("no answer within the route's deadline of {} ms", .0.as_millis())]
    Deadline(Duration),
    /// A plugin failed (its failure, trap, limit, timeout...).
    #[error("`{plugin}`: {error}")]
    Plugin {
        /// The plugin instance.
        plugin: String,
        /// How it failed.
        error: CallError,
    },
}

/// A chain's answer: what its last step produced, and who handled it.
#[derive(Debug, Clone)]
pub struct ChainAnswer {
    /// The last step's outputs, every branch in order.
    pub outputs: Vec<StoredMessage>,
    /// The plugin versions that ran, in order (each step once per message).
    pub trail: Vec<Hop>,
}

/// What answered.
#[derive(Debug, Clone)]
pub enum Answered {
    /// An API plugin's response.
    Plugin(ApiResponse),
    /// A chain's outputs.
    Chain(ChainAnswer),
}

/// The `[apis.*]` of a config checked against the kinds of their plugins.
pub(crate) fn check_apis(
    config: &Config,
    kind_of: impl Fn(&str) -> Option<Kind>,
) -> Result<(), ConfigError> {
    for (name, api) in &config.apis {
        let fields = api
            .plugin
            .iter()
            .map(|p| (p, "plugin", Kind::Api))
            .chain(api.source.iter().map(|s| (s, "source", Kind::Source)))
            .chain(api.steps.iter().map(|s| (s, "steps", Kind::Transform)));
        for (at, field, kind) in fields {
            let actual = kind_of(at.get_ref());
            if actual != Some(kind) {
                let what = actual.map_or("an unknown".to_owned(), |k| format!("a {k}"));
                return Err(config.error(
                    at,
                    format!(
                        "API `{name}`: field `{field}`: `{}` is {what} plugin; {field} must be {kind} plugins",
                        at.get_ref()
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Runtime {
    /// The route `[apis.<name>]` of the live config.
    pub fn api(&self, name: &str) -> Option<ApiEntry> {
        self.config().apis.get(name).cloned()
    }

    /// The live versions an API's answer depends on, in order (what a cached answer
    /// is keyed by): none missing, or `None`.
    pub fn api_plugins(&self, api: &ApiEntry) -> Option<Vec<Arc<Plugin>>> {
        api.plugins().map(|p| self.plugin(p.get_ref())).collect()
    }

    /// Answer one request on `[apis.<name>]` within its deadline; its headers carry
    /// the caller's trace context. With the answer, the W3C `traceparent` of its span.
    pub async fn answer(
        &self,
        name: &str,
        request: ApiRequest,
    ) -> (Result<Answered, ApiError>, String) {
        let Some(api) = self.api(name) else {
            return (Err(ApiError::Unknown(name.to_owned())), String::new());
        };
        let deadline = Duration::from_millis(api.deadline_ms);
        let trace = telemetry::start_kind(
            "api",
            opentelemetry::trace::SpanKind::Server,
            &telemetry::from_headers(
                request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            vec![
                telemetry::attr("tenon.api", name.to_owned()),
                telemetry::attr("http.request.method", request.method.clone()),
            ],
        );
        let started = Instant::now();
        let work = self.run_api(&api, request, &trace);
        let answered = match tokio::time::timeout(deadline, work.with_context(trace.clone())).await
        {
            Ok(answered) => answered,
            Err(_) => Err(ApiError::Deadline(deadline)),
        };
        let outcome = match &answered {
            Ok(_) => "ok",
            Err(ApiError::Deadline(_)) => "deadline",
            Err(ApiError::Plugin { error, .. }) => error.class(),
            Err(ApiError::Unknown(_)) => "unknown",
        };
        metrics::api_call(name, outcome, started.elapsed());
        telemetry::end(
            &trace,
            vec![telemetry::attr("tenon.outcome", outcome)],
            answered.as_ref().err().map(ToString::to_string),
        );
        (answered, telemetry::carried(&trace).traceparent)
    }

    async fn run_api(
        &self,
        api: &ApiEntry,
        request: ApiRequest,
        trace: &opentelemetry::Context,
    ) -> Result<Answered, ApiError> {
        if let Some(plugin) = &api.plugin {
            let plugin = self.live(plugin.get_ref())?;
            let response = self
                .guest_call(&plugin, trace, |p: Arc<Plugin>| async move {
                    p.respond(request).await
                })
                .await?;
            return Ok(Answered::Plugin(response));
        }
        let Some(source) = &api.source else {
            return Err(ApiError::Plugin {
                plugin: String::new(),
                error: CallError::Host("the API has neither a plugin nor a source".into()),
            });
        };
        let steps: Vec<String> = api.steps.iter().map(|s| s.get_ref().clone()).collect();
        let raw = RawRequest {
            content_type: request.content_type,
            headers: request.headers,
            body: request.body,
        };
        self.run_chain(source.get_ref(), &steps, raw, trace)
            .await
            .map(Answered::Chain)
    }

    /// A source, then transform steps on every message, synchronously: the last
    /// step's outputs, or the first failure. A rejection gathers the reasons of every
    /// branch (a quote split in two orders is refused for all that is wrong with either).
    pub async fn run_chain(
        &self,
        source: &str,
        steps: &[String],
        request: RawRequest,
        trace: &opentelemetry::Context,
    ) -> Result<ChainAnswer, ApiError> {
        let source = self.live(source)?;
        let mut trail = Vec::new();
        let started = Instant::now();
        let entered = self
            .guest_call(&source, trace, |p: Arc<Plugin>| async move {
                p.ingest(request).await
            })
            .await?;
        trail.push(hop(&source, started));
        for message in &entered {
            if let Err(error) = Encoding::from_content_type(&message.content_type) {
                return Err(ApiError::Plugin {
                    plugin: source.name().to_owned(),
                    error: CallError::Host(error.to_string()),
                });
            }
        }
        let mut messages: Vec<_> = entered.into_iter().map(StoredMessage::entered).collect();
        for step in steps {
            let plugin = self.live(step)?;
            let mut next = Vec::new();
            let mut reasons = Vec::new();
            for input in messages {
                let started = Instant::now();
                let called = {
                    let input = input.clone();
                    self.guest_call(&plugin, trace, |p: Arc<Plugin>| async move {
                        p.transform(&input).await
                    })
                    .await
                };
                trail.push(hop(&plugin, started));
                match called {
                    Ok(outputs) => {
                        next.extend(
                            outputs
                                .into_iter()
                                .enumerate()
                                .map(|(i, m)| m.made_from(&input, i)),
                        );
                    }
                    Err(ApiError::Plugin {
                        error: CallError::Failure(crate::sandbox::plugin::Failure::Rejected(r)),
                        ..
                    }) => reasons.extend(r),
                    Err(other) => return Err(other),
                }
            }
            if !reasons.is_empty() {
                return Err(ApiError::Plugin {
                    plugin: step.clone(),
                    error: CallError::Failure(crate::sandbox::plugin::Failure::Rejected(reasons)),
                });
            }
            messages = next;
        }
        Ok(ChainAnswer {
            outputs: messages,
            trail,
        })
    }

    fn live(&self, name: &str) -> Result<Arc<Plugin>, ApiError> {
        self.plugin(name).ok_or_else(|| ApiError::Plugin {
            plugin: name.to_owned(),
            error: CallError::Host(format!("plugin `{name}` is not loaded")),
        })
    }

    /// One plugin call on the plugin threads, in a `plugin.call` span. Dropped (the
    /// deadline passed), the call is aborted: its instance stops at the next epoch tick.
    async fn guest_call<T, F, Fut>(
        &self,
        plugin: &Arc<Plugin>,
        trace: &opentelemetry::Context,
        call: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Plugin>) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let span = telemetry::start(
            "plugin.call",
            trace,
            vec![
                telemetry::attr("tenon.plugin", plugin.name().to_owned()),
                telemetry::attr("tenon.plugin.digest", plugin.digest().to_owned()),
                telemetry::attr("tenon.plugin.kind", plugin.kind().to_string()),
            ],
        );
        let started = Instant::now();
        let task = {
            let plugin = plugin.clone();
            let span = span.clone();
            let call = call(plugin);
            self.guests.spawn(call.with_context(span))
        };
        let abort = AbortOnDrop(task.abort_handle());
        let result = task
            .await
            .unwrap_or_else(|e| Err(CallError::Host(format!("the plugin call failed: {e}"))));
        drop(abort);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.class(),
        };
        metrics::plugin_call(plugin.name(), plugin.digest(), outcome, started.elapsed());
        telemetry::end(
            &span,
            vec![telemetry::attr("tenon.outcome", outcome)],
            result.as_ref().err().map(ToString::to_string),
        );
        result.map_err(|error| ApiError::Plugin {
            plugin: plugin.name().to_owned(),
            error,
        })
    }
}

/// Aborts a spawned call when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn hop(plugin: &Plugin, started: Instant) -> Hop {
    Hop {
        plugin: plugin.name().to_owned(),
        version: plugin.version().to_owned(),
        digest: plugin.digest().to_owned(),
        micros: started.elapsed().as_micros() as u64,
    }
}
