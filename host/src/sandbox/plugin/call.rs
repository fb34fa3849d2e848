//! The four calls (ingest, transform, deliver, respond), each in a fresh sandboxed instance
//! under the plugin's limits, and how whatever goes wrong becomes a [`CallError`].

use super::{Plugin, Pre};
use crate::model::StoredMessage;
use crate::sandbox::bindings::{self, types};
use crate::sandbox::caps::{self, PluginContext, PluginState, Violation};
use crate::sandbox::engine::EPOCH_TICK;
use crate::store::audit::Decision;
use crate::store::{KvNamespace, KvWrites};
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use wasmtime::Store;

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The plugin returned a failure.
    #[error(transparent)]
    Failure(#[from] Failure),
    /// The guest trapped (a panic, an out-of-bounds access, memory exhausted...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past its time limit.
    #[error("plugin timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The plugin ran into one of its limits (memory, stack, output size, quota).
    #[error("plugin limit: {0}")]
    Limit(String),
    /// The plugin tried something its grants do not allow.
    #[error("sandbox denied: {0}")]
    Denied(String),
    /// The host could not set up the call.
    #[error("host error: {0}")]
    Host(String),
}

impl CallError {
    /// The class of the error, as metrics label it.
    pub fn class(&self) -> &'static str {
        match self {
            CallError::Failure(Failure::Invalid(_)) => "invalid",
            CallError::Failure(Failure::Rejected(_)) => "rejected",
            CallError::Failure(Failure::Retryable(_)) => "retryable",
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
            CallError::Limit(_) => "limit",
            CallError::Denied(_) => "denied",
            CallError::Host(_) => "host",
        }
    }
}

/// A failure the plugin itself reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Can never succeed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Refused by business rules.
    #[error("rejected: {}", .0.join("; "))]
    Rejected(Vec<String>),
    /// Transient.
    #[error("retryable: {0}")]
    Retryable(String),
}

impl From<types::Failure> for Failure {
    fn from(f: types::Failure) -> Self {
        match f {
            types::Failure::Invalid(s) => Failure::Invalid(s),
            types::Failure::Rejected(r) => Failure::Rejected(r),
            types::Failure::Retryable(s) => Failure::Retryable(s),
        }
    }
}

/// What a call produced, with the key-value writes to commit with it.
#[derive(Debug)]
pub struct Called<T> {
    /// The call's result.
    pub value: T,
    /// Its key-value writes (none for sources or plugins without `kv`).
    pub kv: Option<KvWrites>,
}

/// The raw request a source receives.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Its content type.
    pub content_type: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// A synchronous request to an API plugin.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path below the route's prefix.
    pub path: String,
    /// The route's path parameters.
    pub params: Vec<(String, String)>,
    /// The query parameters, decoded.
    pub query: Vec<(String, String)>,
    /// Its headers, without Tenon's credentials.
    pub headers: Vec<(String, String)>,
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: Vec<u8>,
}

/// An API plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// The status it chose.
    pub status: u16,
    /// The body's content type.
    pub content_type: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// A record a reconciling sink read back from its system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The system's own id.
    pub id: String,
    /// The reference of what it stands for elsewhere (empty when none).
    pub reference: String,
    /// Its fields by name, as text (see the WIT `records` interface).
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// Field `name`, if it has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a sink reports after a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The target system's reference.
    pub reference: String,
    /// Anything else it reported.
    pub detail: Option<String>,
}

impl Plugin {
    fn store(&self) -> Store<PluginState> {
        let kv = self.ctx.grants.kv.then(|| {
            KvNamespace::new(
                self.engine.store().clone(),
                &self.ctx.name,
                Some(self.ctx.grants.kv_quota_bytes),
            )
        });
        let mut store = Store::new(
            self.engine.wasmtime(),
            PluginState::new(self.ctx.clone(), kv),
        );
        if self.engine.limits() {
            store.limiter(|s| s.limiter());
        }
        // Guest code gives the thread back to the async runtime at every epoch tick
        // (so a looping plugin never holds a worker thread) and is stopped once the
        // call's deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        store
    }

    /// Run a call in a fresh store, under the time limit; classify what went wrong.
    async fn run<T, F>(&self, call: &'static str, f: F) -> Result<Called<T>, CallError>
    where
        F: AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<Result<T, types::Failure>>,
    {
        let mut store = self.store();
        self.run_in(&mut store, call, f).await
    }

    /// Run a call in `store`, under the time limit; classify what went wrong.
    async fn run_in<T, F>(
        &self,
        store: &mut Store<PluginState>,
        call: &'static str,
        f: F,
    ) -> Result<Called<T>, CallError>
    where
        F: AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<Result<T, types::Failure>>,
    {
        let span = tracing::debug_span!("plugin_call", call, plugin = %self.ctx.name, digest = %self.ctx.digest);
        let timeout = self.ctx.timeout();
        // The epoch deadline stops guest code; this stops a call stuck in host I/O.
        let outcome = tokio::time::timeout(timeout + EPOCH_TICK * 10, f(store))
            .instrument(span)
            .await;
        let result = match outcome {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(failure))) => Err(CallError::Failure(failure.into())),
            Ok(Err(error)) => Err(classify_trap(error, store.data().stderr(), timeout)),
        };
        store.data().finish();
        let value = self.settle(result, store.data())?;
        Ok(Called {
            value,
            kv: store.data_mut().take_kv_writes(),
        })
    }

    /// The call's outcome as the host sees it: a failure that follows a sandbox
    /// refusal is that refusal (the plugin's own message about it is not trusted);
    /// limits are audited; every error text is redacted of secrets.
    fn settle<T>(&self, result: Result<T, CallError>, state: &PluginState) -> Result<T, CallError> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let error = match (state.violations().first(), error) {
            (Some(Violation::Denied(what)), _) => CallError::Denied(what),
            (Some(Violation::Limit(what)), _) => CallError::Limit(what),
            (None, CallError::Timeout(d)) => {
                self.ctx.decide(
                    "time",
                    &format!("{} ms", d.as_millis()),
                    Decision::Deny,
                    Some("the call ran past its time limit and was stopped".into()),
                );
                CallError::Timeout(d)
            }
            (None, CallError::Trap(t)) if t.starts_with(STACK_OVERFLOW) => {
                self.ctx
                    .decide("stack", "call stack", Decision::Deny, Some(t.clone()));
                CallError::Limit(t)
            }
            (None, other) => other,
        };
        Err(self.redact(error))
    }

    /// The error as the host records it: redacted, then cut (a plugin's text is kept
    /// to [`caps::MAX_TEXT_CHARS`]; at most [`MAX_REASONS`] reasons).
    fn redact(&self, error: CallError) -> CallError {
        let r = |s: String| self.text(&s);
        match error {
            CallError::Failure(Failure::Invalid(s)) => CallError::Failure(Failure::Invalid(r(s))),
            CallError::Failure(Failure::Rejected(v)) => {
                let total = v.len();
                let mut reasons: Vec<String> = v.into_iter().take(MAX_REASONS).map(r).collect();
                if total > MAX_REASONS {
                    reasons.push(format!("... and {} more reasons", total - MAX_REASONS));
                }
                CallError::Failure(Failure::Rejected(reasons))
            }
            CallError::Failure(Failure::Retryable(s)) => {
                CallError::Failure(Failure::Retryable(r(s)))
            }
            CallError::Trap(s) => CallError::Trap(r(s)),
            CallError::Limit(s) => CallError::Limit(r(s)),
            CallError::Denied(s) => CallError::Denied(r(s)),
            CallError::Host(s) => CallError::Host(r(s)),
            CallError::Timeout(d) => CallError::Timeout(d),
        }
    }

    /// Text from the plugin as the host records it: redacted whole, then cut.
    fn text(&self, text: &str) -> String {
        caps::bounded(&self.ctx.redact(text), caps::MAX_TEXT_CHARS)
    }

    /// Refuse output messages that carry a secret's value, in any form: the host
    /// never records one, and editing the message would pass a damaged one on.
    fn check_secrets(&self, messages: &[types::Message]) -> Result<(), CallError> {
        check_secrets(&self.ctx, messages)
    }

    /// Refuse an output larger than the plugin's cap.
    fn check_output(&self, bytes: usize) -> Result<(), CallError> {
        let cap = self.ctx.grants.max_output_bytes;
        if bytes as u64 <= cap {
            return Ok(());
        }
        let reason = format!("output of {bytes} bytes is over the {cap}-byte cap");
        self.ctx.decide(
            "output",
            &format!("{cap} bytes"),
            Decision::Deny,
            Some(reason.clone()),
        );
        Err(CallError::Limit(reason))
    }

    /// Source: turn a raw request into messages.
    pub async fn ingest(&self, request: RawRequest) -> Result<Vec<StoredMessage>, CallError> {
        let Pre::Source(pre) = &self.pre else {
            return Err(self.wrong_kind("ingest"));
        };
        let request = types::RawRequest {
            content_type: request.content_type,
            headers: request.headers,
            body: request.body,
        };
        let out = self
            .run("ingest", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_ingester()
                    .call_ingest(&mut *store, &request)
                    .await
            })
            .await?
            .value;
        self.check_output(out.iter().map(message_size).sum())?;
        self.check_secrets(&out)?;
        Ok(out.into_iter().map(StoredMessage::from).collect())
    }

    /// Transform: map one message to zero or more. Its key-value writes are
    /// discarded: for runs that must leave nothing behind (a canary, a test).
    pub async fn transform(&self, input: &StoredMessage) -> Result<Vec<StoredMessage>, CallError> {
        self.transform_step(input).await.map(|called| called.value)
    }

    /// Transform as a step: the outputs, with the key-value writes to commit with them.
    /// A fresh instance per call, unless the operator opted in to reuse.
    pub async fn transform_step(
        &self,
        input: &StoredMessage,
    ) -> Result<Called<Vec<StoredMessage>>, CallError> {
        let Pre::Transform(pre) = &self.pre else {
            return Err(self.wrong_kind("transform"));
        };
        let input = types::Message::from(input.clone());
        let out = match &self.kept {
            None => {
                let out = self
                    .run("transform", async |store| {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        instance
                            .tenon_plugin_transformer()
                            .call_transform(&mut *store, &input)
                            .await
                    })
                    .await?;
                self.check_transformed(out)?
            }
            Some(kept) => self.transform_kept(kept, pre, &input).await?,
        };
        Ok(Called {
            value: out.value.into_iter().map(StoredMessage::from).collect(),
            kv: out.kv,
        })
    }

    /// A transform's outputs within the output cap and free of secrets.
    fn check_transformed(
        &self,
        out: Called<Vec<types::Message>>,
    ) -> Result<Called<Vec<types::Message>>, CallError> {
        self.check_output(out.value.iter().map(message_size).sum())?;
        self.check_secrets(&out.value)?;
        Ok(out)
    }

    /// A transform on a kept instance (a new one when none waits). The instance goes
    /// back for the next message only after a call that returned normally (outputs
    /// within its limits, or a failure of its own) with nothing refused and room left
    /// in its stderr pipe: after a trap, a timeout, a limit or a refusal it is dropped.
    /// (Transforms reach no network: no request of theirs outlives a call.)
    async fn transform_kept(
        &self,
        kept: &Kept,
        pre: &bindings::transform::TransformPre<PluginState>,
        input: &types::Message,
    ) -> Result<Called<Vec<types::Message>>, CallError> {
        let (mut store, mut instance) = match kept.take() {
            Some(KeptTransform {
                mut store,
                instance,
            }) => {
                store.data_mut().renew();
                store.set_epoch_deadline(1);
                (store, Some(instance))
            }
            None => (self.store(), None),
        };
        let result = self
            .run_in(&mut store, "transform", async |store| {
                let kept = match instance.take() {
                    Some(kept) => kept,
                    None => pre.instantiate_async(&mut *store).await?,
                };
                let out = kept
                    .tenon_plugin_transformer()
                    .call_transform(&mut *store, input)
                    .await;
                instance = Some(kept);
                out
            })
            .await
            .and_then(|out| self.check_transformed(out));
        let clean = matches!(&result, Ok(_) | Err(CallError::Failure(_)))
            && store.data().violations().count() == 0
            && store.data().stderr_len() < caps::STDERR_CAPACITY / 2;
        if let (true, Some(instance)) = (clean, instance) {
            kept.put(KeptTransform { store, instance });
        }
        result
    }

    /// Sink: deliver one message with its idempotency key; the receipt, with the
    /// key-value writes to commit with it.
    pub async fn deliver(
        &self,
        message: &StoredMessage,
        idempotency_key: &str,
    ) -> Result<Called<Receipt>, CallError> {
        let Pre::Sink(pre, ..) = &self.pre else {
            return Err(self.wrong_kind("deliver"));
        };
        let message = types::Message::from(message.clone());
        let receipt = self
            .run("deliver", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_deliverer()
                    .call_deliver(&mut *store, &message, idempotency_key)
                    .await
            })
            .await?;
        self.receipt(receipt)
    }

    /// A sink's receipt as the host keeps it: within the output limit, its text
    /// redacted of secrets.
    fn receipt(&self, called: Called<types::Receipt>) -> Result<Called<Receipt>, CallError> {
        let Called { value: receipt, kv } = called;
        self.check_output(
            receipt.reference.len() + receipt.detail.as_ref().map_or(0, String::len),
        )?;
        Ok(Called {
            value: Receipt {
                reference: self.text(&receipt.reference),
                detail: receipt.detail.map(|d| self.text(&d)),
            },
            kv,
        })
    }

    /// Whether this is a sink that can undo its deliveries (it exports `compensator`).
    pub fn compensates(&self) -> bool {
        matches!(&self.pre, Pre::Sink(_, Some(_), _))
    }

    /// Whether this is a sink that can read back what its system holds (`records`).
    pub fn reads_records(&self) -> bool {
        matches!(&self.pre, Pre::Sink(_, _, Some(_)))
    }

    /// Compensating sink: undo the delivery of `message`, which returned `delivered`;
    /// the receipt of the undoing, with the key-value writes to commit with it.
    pub async fn compensate(
        &self,
        message: &StoredMessage,
        delivered: &Receipt,
        idempotency_key: &str,
    ) -> Result<Called<Receipt>, CallError> {
        let Pre::Sink(_, Some(pre), _) = &self.pre else {
            return Err(CallError::Failure(Failure::Invalid(format!(
                "`{}` cannot undo a delivery: its component does not export `tenon:plugin/compensator`",
                self.name()
            ))));
        };
        let message = types::Message::from(message.clone());
        let delivered = types::Receipt {
            reference: delivered.reference.clone(),
            detail: delivered.detail.clone(),
        };
        let receipt = self
            .run("compensate", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_compensator()
                    .call_compensate(&mut *store, &message, &delivered, idempotency_key)
                    .await
            })
            .await?;
        self.receipt(receipt)
    }

    /// Reconciling sink: the records of `kind` dated `from` to `to` (ISO dates) that
    /// its system holds, read in a fresh instance under the plugin's limits.
    pub async fn records(&self, kind: &str, from: &str, to: &str) -> Result<Vec<Entry>, CallError> {
        use bindings::reconciling_sink::exports::tenon::plugin::records;
        let Pre::Sink(_, _, Some(pre)) = &self.pre else {
            return Err(CallError::Failure(Failure::Invalid(format!(
                "`{}` cannot read back records: its component does not export `tenon:plugin/records`",
                self.name()
            ))));
        };
        let query = records::Query {
            kind: kind.to_owned(),
            since: from.to_owned(),
            until: to.to_owned(),
        };
        let entries = self
            .run("records", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_records()
                    .call_read(&mut *store, &query)
                    .await
            })
            .await?
            .value;
        self.check_output(
            entries
                .iter()
                .map(|e| {
                    e.id.len()
                        + e.reference.len()
                        + e.fields
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                })
                .sum(),
        )?;
        Ok(entries
            .into_iter()
            .map(|e| Entry {
                id: self.text(&e.id),
                reference: self.text(&e.reference),
                fields: e
                    .fields
                    .into_iter()
                    .map(|(k, v)| (k, self.text(&v)))
                    .collect(),
            })
            .collect())
    }

    /// API: answer one request, in a fresh instance under the plugin's limits. The
    /// answer's size counts against `max_output_bytes`; a status outside 200-499 is
    /// not the plugin's to give (the host answers for failures) and is refused.
    pub async fn respond(&self, request: ApiRequest) -> Result<ApiResponse, CallError> {
        use bindings::api::exports::tenon::plugin::responder;
        let Pre::Api(pre) = &self.pre else {
            return Err(self.wrong_kind("respond"));
        };
        let request = responder::Request {
            method: request.method,
            path: request.path,
            params: request.params,
            query: request.query,
            headers: request.headers,
            content_type: request.content_type,
            body: request.body,
        };
        let answer = self
            .run("respond", async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .tenon_plugin_responder()
                    .call_respond(&mut *store, &request)
                    .await
            })
            .await?
            .value;
        self.check_output(
            answer.body.len()
                + answer.content_type.len()
                + answer
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
        )?;
        if !(200..500).contains(&answer.status) {
            return Err(CallError::Host(format!(
                "the plugin answered status {}; an API plugin answers 200-499 and reports failures as failures",
                answer.status
            )));
        }
        if !self.ctx.redactor.is_empty()
            && let Some(secret) = std::iter::once(answer.body.as_slice())
                .chain(answer.headers.iter().map(|(_, v)| v.as_bytes()))
                .find_map(|bytes| self.ctx.redactor.find(bytes))
        {
            let reason = format!("the answer carries the value of secret `{secret}`");
            self.ctx
                .decide("output", secret, Decision::Deny, Some(reason.clone()));
            return Err(CallError::Denied(reason));
        }
        Ok(ApiResponse {
            status: answer.status,
            content_type: answer.content_type,
            headers: answer.headers,
            body: answer.body,
        })
    }

    fn wrong_kind(&self, call: &str) -> CallError {
        CallError::Host(format!(
            "{} is a {} plugin; it cannot {call}",
            self.ctx.name, self.manifest.kind
        ))
    }
}

/// The transform instances an operator lets a plugin keep between messages
/// (`reuse_instances = true`): each call takes one (or instantiates one), runs on it
/// with its per-call state renewed, and gives it back unless the call left it in
/// doubt. At most [`MAX_KEPT`] wait; one per concurrent call is in use.
#[derive(Default)]
pub(super) struct Kept(std::sync::Mutex<Vec<KeptTransform>>);

/// Most idle instances one plugin keeps: each holds a slot of the engine's pool (512
/// memories for every plugin's calls) until the plugin version is dropped.
const MAX_KEPT: usize = 8;

struct KeptTransform {
    store: Store<PluginState>,
    instance: bindings::transform::Transform,
}

impl Kept {
    fn take(&self) -> Option<KeptTransform> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put(&self, kept: KeptTransform) {
        let mut idle = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_KEPT {
            idle.push(kept);
        }
    }
}

/// Refuse output messages that carry one of the plugin's secrets, in any form.
fn check_secrets(ctx: &PluginContext, messages: &[types::Message]) -> Result<(), CallError> {
    if ctx.redactor.is_empty() {
        return Ok(());
    }
    let found = messages.iter().find_map(|m| {
        let fields = [&m.id, &m.key, &m.kind, &m.content_type];
        fields
            .iter()
            .map(|f| f.as_bytes())
            .chain(
                m.headers
                    .iter()
                    .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]),
            )
            .chain(std::iter::once(m.body.as_slice()))
            .find_map(|bytes| ctx.redactor.find(bytes))
    });
    let Some(secret) = found else {
        return Ok(());
    };
    let reason = format!("an output message carries the value of secret `{secret}`");
    ctx.decide("output", secret, Decision::Deny, Some(reason.clone()));
    Err(CallError::Denied(reason))
}

/// Most reasons of one rejection the host records.
pub const MAX_REASONS: usize = 100;

/// Most characters of a guest's stderr quoted in an error.
const MAX_STDERR_IN_ERROR: usize = 1_000;

/// How a stack-overflow trap's message starts.
const STACK_OVERFLOW: &str = "stack overflow";

/// The bytes a message takes: what the output cap counts.
fn message_size(m: &types::Message) -> usize {
    m.id.len()
        + m.key.len()
        + m.kind.len()
        + m.content_type.len()
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + m.body.len()
}

fn classify_trap(error: wasmtime::Error, stderr: String, timeout: Duration) -> CallError {
    let trap = error.downcast_ref::<wasmtime::Trap>().copied();
    if trap == Some(wasmtime::Trap::Interrupt) {
        return CallError::Timeout(timeout);
    }
    if trap == Some(wasmtime::Trap::StackOverflow) {
        return CallError::Trap(format!(
            "{STACK_OVERFLOW}: the call recursed deeper than the host's stack limit"
        ));
    }
    let mut message = trap.map_or_else(|| format!("{error}"), |t| t.to_string());
    // A Rust guest's panic prints `panicked at <location>:` and then its message.
    let lines: Vec<&str> = stderr.lines().collect();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        if let Some(panic) = lines.get(at + 1) {
            message = format!("{message}: panicked: {}", panic.trim());
        }
    } else if !stderr.is_empty() {
        let tail: String = stderr.chars().take(MAX_STDERR_IN_ERROR).collect();
        message = format!("{message}: {tail}");
    }
    CallError::Trap(message)
}

impl From<types::Message> for StoredMessage {
    fn from(m: types::Message) -> Self {
        StoredMessage {
            id: m.id.into(),
            key: m.key,
            kind: m.kind,
            content_type: m.content_type,
            headers: m.headers,
            body: m.body,
        }
    }
}

impl From<StoredMessage> for types::Message {
    fn from(m: StoredMessage) -> Self {
        types::Message {
            id: m.id.into(),
            key: m.key,
            kind: m.kind,
            content_type: m.content_type,
            headers: m.headers,
            body: m.body,
        }
    }
}
