//! The admin API's requests and answers, as types: the HTTP layer serialises them and
//! the `tenon` command line reads them, so the two agree on every field by
//! construction. Errors are [`Problem`]s (RFC 9457).
//!
//! **Architecture invariant:** plain data: no I/O, no HTTP.

use crate::auth::{ApiKey, Scope};
use crate::model::{Attempt, Hop, MessageId, Outcome};
use crate::runtime::canary::CanaryResult;
pub use crate::runtime::observe::{
    BillingAccuracy, BusinessTrace, KpiReport, Latency, Rate, TimelineEntry,
};
use crate::runtime::{LiveStatus, Refusal};
use crate::store::audit::AuditRecord;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// An error answer, `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Problem {
    /// `urn:tenon:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short title.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// Every reason, for a business rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

/// `POST /v1/sources/{source}`: what was accepted (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Accepted {
    /// The ids of the accepted messages, one per flow the source feeds.
    pub accepted: Vec<MessageId>,
}

/// `POST /v1/sources/{source}` of a source with `ack = "validated"`: accepted (durable)
/// and through its flows' steps (`201`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Validated {
    /// The ids of the accepted messages, one per flow the source feeds.
    pub accepted: Vec<MessageId>,
    /// What the steps made of them: e.g. the orders, each with its id, kind and key.
    pub outputs: Vec<Output>,
}

/// `/v1/apis/{name}` of a chain: the last step's outputs (`200`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiOutputs {
    /// Every output of the last step, every branch in order.
    pub outputs: Vec<Output>,
    /// The plugin versions that ran, in order.
    pub trail: Vec<Hop>,
}

/// One message a chain of steps produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Output {
    /// Its id (for an answer of `/v1/apis`, valid only within it: nothing was stored).
    pub id: MessageId,
    /// Its kind, e.g. `OrderAccepted`.
    pub kind: String,
    /// Its business key.
    pub key: String,
    /// Its headers (e.g. `tenon-entity`, set by a routing step).
    pub headers: Vec<(String, String)>,
    /// Its body, as JSON.
    pub body: serde_json::Value,
}

impl Output {
    /// The message as an answer shows it: its body decoded (JSON or MessagePack;
    /// `null` for a message that ended before the answer, whose body is not kept).
    pub fn of(message: &crate::model::StoredMessage) -> Output {
        let body = if message.body.is_empty() {
            serde_json::Value::Null
        } else {
            tenon_model::Encoding::from_content_type(&message.content_type)
                .ok()
                .and_then(|e| e.decode::<serde_json::Value>(&message.body).ok())
                .unwrap_or_else(|| {
                    serde_json::Value::String(String::from_utf8_lossy(&message.body).into_owned())
                })
        };
        Output {
            id: message.id.clone(),
            kind: message.kind.clone(),
            key: message.key.clone(),
            headers: message.headers.clone(),
            body,
        }
    }
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plugins {
    /// Every plugin instance: its live version, what was refused, what waits.
    pub plugins: Vec<LiveStatus>,
    /// The live config.
    pub config: ConfigStatus,
    /// The nodes of the deployment (this one alone on a store of one node), with what
    /// each runs.
    #[serde(default)]
    pub nodes: Vec<crate::model::NodeStatus>,
}

/// The live config, in [`Plugins`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigStatus {
    /// The config file.
    pub path: PathBuf,
    /// The sha256 of its text.
    pub digest: String,
    /// The last config refused since this one went live.
    pub refused: Option<Refusal>,
    /// The flows.
    pub flows: Vec<String>,
}

/// `POST /v1/plugins/{name}/try|promote|rollback|approve`: what to act on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginAction {
    /// A candidate plugin directory (`try`, `promote`), under the plugin roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<PathBuf>,
    /// The flow whose recorded messages to try the candidate on (`try`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// How many recent messages (`try`, default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The digest of the version waiting for approval, as reviewed (`approve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What a reload, promotion, rollback or approval came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Swap {
    /// The plugin instance.
    pub plugin: String,
    /// Whether another version is live now.
    pub swapped: bool,
    /// The digest that was live, when swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The digest live now, when swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The version now waiting for approval, when held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Held>,
}

/// A version held for approval, in [`Swap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Held {
    /// Its digest.
    pub digest: String,
    /// How its grants go beyond the live version's.
    pub widening: Vec<String>,
}

/// `POST /v1/plugins/{name}/try`: the candidate beside the live version.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tried {
    /// The plugin instance.
    pub plugin: String,
    /// The flow whose messages were used.
    pub flow: String,
    /// One comparison per recorded input.
    pub results: Vec<CanaryResult>,
}

/// `GET /v1/dlq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetters {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetterSummary>,
    /// The cursor of the next page (`?after=`), when this one is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One dead letter, in [`DeadLetters`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterSummary {
    /// The message id.
    pub id: MessageId,
    /// The ingress message it descends from.
    pub root: MessageId,
    /// Its flow.
    pub flow: String,
    /// The index of the stage that failed it in its route.
    pub stage: u32,
    /// The plugin instance that failed it.
    pub plugin: String,
    /// The digest of the version of the last attempt.
    pub digest: Option<String>,
    /// Its business key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// When it became a dead letter (ms since the Unix epoch).
    pub at_ms: u64,
    /// How many attempts it had.
    pub attempt_count: usize,
    /// The last error.
    pub error: String,
}

/// `GET /v1/dlq/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// Every attempt: time, plugin, digest, error.
    pub attempts: Vec<Attempt>,
    /// Every plugin that handled it.
    pub trail: Vec<Hop>,
    /// The message itself, as JSON.
    pub body: serde_json::Value,
}

pub use crate::runtime::drift::{Drift, DriftReport, FieldDrift};
pub use crate::runtime::reconcile::{Document, Mismatch, MismatchKind, Reconciled};

/// `GET /v1/drift`: each configured drift check and its last run here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriftChecks {
    /// By name.
    pub checks: Vec<DriftCheckStatus>,
}

/// One drift check as configured, and its last run on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriftCheckStatus {
    /// Its name.
    pub name: String,
    /// The sink instance that reads the target's accounts.
    pub target: String,
    /// Its period, when scheduled.
    pub every_secs: Option<u64>,
    /// Its last run on this node.
    pub last: Option<DriftReport>,
}

/// `GET /v1/reconciliations`: each configured reconciliation and its last run here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reconciliations {
    /// By name.
    pub reconciliations: Vec<ReconciliationStatus>,
}

/// One reconciliation as configured, and its last run on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReconciliationStatus {
    /// Its name.
    pub name: String,
    /// The sink instance that reads the ERP's records.
    pub erp: String,
    /// The billing kinds compared.
    pub billing: Vec<String>,
    /// Its period, when scheduled.
    pub every_secs: Option<u64>,
    /// How many days back a scheduled run looks.
    pub window_days: u32,
    /// Its last run on this node.
    pub last: Option<Reconciled>,
}

/// `POST /v1/reconciliations/{name}/run`: the window, by the documents' dates
/// (ISO 8601 days, both included); by default the configured `window_days` to today.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// The first day, e.g. `2026-11-01`.
    #[serde(default)]
    pub since: Option<String>,
    /// The last day.
    #[serde(default)]
    pub until: Option<String>,
}

/// `GET /v1/exceptions`: messages held for a person, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Exceptions {
    /// Every exception.
    pub exceptions: Vec<ExceptionSummary>,
}

/// One exception: what is held, why, its business key and what a decision does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExceptionSummary {
    /// The message id.
    pub id: MessageId,
    /// The ingress message it descends from (its transaction).
    pub root: MessageId,
    /// Its flow.
    pub flow: String,
    /// The stage it waits before (a plugin instance).
    pub stage: String,
    /// Its business key (e.g. the quote number).
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// When it was held (ms since the Unix epoch).
    pub at_ms: u64,
    /// What held it: `rule <n>` of its flow, or `saga` (part of its transaction was
    /// delivered and this part failed).
    pub rule: String,
    /// Why.
    pub reasons: Vec<String>,
    /// What approval does, and what rejection does.
    pub proposed: String,
}

/// `GET /v1/exceptions/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExceptionDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: ExceptionSummary,
    /// Failed attempts before it was held (for a failure held by a saga).
    pub attempts: Vec<Attempt>,
    /// Every plugin that handled it.
    pub trail: Vec<Hop>,
    /// The message itself, as JSON.
    pub body: serde_json::Value,
}

/// `POST /v1/exceptions/{id}/approve|reject`: the decision's note.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// Why, in words; recorded with the decision (and in a rejection's reason).
    #[serde(default)]
    pub note: String,
}

/// The answer to a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Decided {
    /// The message id.
    pub id: MessageId,
    /// `approve` or `reject`.
    pub decision: String,
    /// The id of the API key that decided.
    pub by: String,
}

/// `POST /v1/dlq/{id}/redrive|discard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterHandled {
    /// The message id.
    pub id: MessageId,
    /// `redrive` or `discard`.
    pub done: String,
}

/// `GET /v1/messages/{id}`: what happened to an accepted message.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageStatus {
    /// The id asked about.
    pub id: MessageId,
    /// Whether nothing of it is in flight any more.
    pub settled: bool,
    /// The outcomes reached so far, by it and its descendants.
    pub outcomes: Vec<Outcome>,
    /// Its descendants still queued.
    pub pending: Vec<Pending>,
}

/// A message still queued, in [`MessageStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pending {
    /// Its id.
    pub id: MessageId,
    /// Its business key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// Its flow.
    pub flow: String,
    /// The index of the stage it waits for.
    pub stage: u32,
    /// Its failed attempts at that stage.
    pub attempts: Vec<Attempt>,
    /// The message itself, as JSON.
    pub body: serde_json::Value,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Events {
    /// In log order.
    pub events: Vec<EventView>,
}

/// One event of the log, in [`Events`].
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventView {
    /// Its offset.
    pub offset: u64,
    /// When it was appended (ms since the Unix epoch).
    pub at_ms: u64,
    /// The flow it belongs to.
    pub flow: String,
    /// Its name: the message kind, or `Rejected`.
    pub event: String,
    /// The message id.
    pub id: MessageId,
    /// Its business key.
    pub key: String,
    /// The message, as JSON (accepted messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The plugin that rejected it (rejections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Every reason (rejections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

/// `POST /v1/flows/{flow}/replay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// The first event: an offset or an RFC 3339 time (default: the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Bound>,
    /// The last event, inclusive: an offset or an RFC 3339 time (default: the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Bound>,
}

/// A bound of a replay: an offset or an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Bound {
    /// An offset in the event log.
    Offset(u64),
    /// An offset or a time, as text.
    Text(String),
}

/// What a replay re-ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Replayed {
    /// The flow.
    pub flow: String,
    /// How many messages.
    pub replayed: usize,
    /// Their offsets.
    pub offsets: Vec<u64>,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Audit {
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Records dropped since start because the log could not keep up.
    pub dropped: u64,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Keys {
    /// Every key, revoked ones included (never a token).
    pub keys: Vec<ApiKey>,
}

/// `POST /v1/keys`: the key to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it may do: only scopes the creating key holds.
    pub scopes: Vec<Scope>,
}

/// `POST /v1/keys`: the key and its token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyCreated {
    /// The key.
    pub key: ApiKey,
    /// Its token.
    pub token: String,
}

/// `POST /v1/keys/{id}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyRevoked {
    /// The key, revoked.
    pub key: ApiKey,
}
