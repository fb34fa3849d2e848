//! The message model: what travels between steps and what is recorded about it. The
//! store keeps these; the runtime makes them; the admin API shows them.
//!
//! **Architecture invariant:** plain data, no I/O: this module knows no store, no
//! plugin and no HTTP.

mod id;

pub use id::MessageId;

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of the queue in front of a flow's stage (a plugin instance).
pub fn queue_name(flow: &str, stage: &str) -> String {
    format!("{flow}/{stage}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sha256 digest of some bytes, as `sha256:<hex>`: how components, versions,
/// configs and payloads are identified.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A secret's value: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A message as stored between steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Unique id, stable across retries; see [`MessageId`].
    pub id: MessageId,
    /// Business key: ordering and idempotency scope.
    pub key: String,
    /// Event type.
    pub kind: String,
    /// Encoding of `body`.
    pub content_type: String,
    /// Headers carried along the flow.
    pub headers: Vec<(String, String)>,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl StoredMessage {
    /// This message as it enters Tenon: a new root id, and that id as its key when
    /// the source gave it none.
    pub fn entered(mut self) -> StoredMessage {
        self.id = MessageId::root();
        if self.key.is_empty() {
            self.key = self.id.to_string();
        }
        self
    }

    /// This message as the `n`th output of a step handling `input`: its id derived
    /// (a re-run after a crash or a replay makes the same one), and `input`'s key
    /// when the step set none.
    pub fn made_from(mut self, input: &StoredMessage, n: usize) -> StoredMessage {
        self.id = input.id.child(n);
        if self.key.is_empty() {
            self.key.clone_from(&input.key);
        }
        self
    }
}

/// One plugin that handled a message, for provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Hop {
    /// The plugin instance name in the flow config.
    pub plugin: String,
    /// The plugin's version, from its manifest.
    pub version: String,
    /// The component's content digest (`sha256:...`).
    pub digest: String,
    /// How long the call took, in microseconds.
    pub micros: u64,
}

/// One failed attempt at a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Attempt {
    /// When it failed (ms since the Unix epoch).
    pub at_ms: u64,
    /// The plugin instance that failed.
    pub plugin: String,
    /// The digest of the plugin version that failed.
    pub digest: String,
    /// What went wrong.
    pub error: String,
}

/// A queued message with what the runtime knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message.
    pub message: StoredMessage,
    /// The flow it travels through.
    pub flow: String,
    /// Its route: the flow's stages (steps, then sink) as they were when it entered.
    /// A message finishes on the route it started on, whatever the config says later.
    pub route: Vec<String>,
    /// Index in `route` of the stage it waits for.
    pub stage: u32,
    /// Id of the message that entered at ingress (the root of this one's lineage).
    pub root: MessageId,
    /// When it entered the runtime (ms since the Unix epoch).
    pub accepted_ms: u64,
    /// Plugins that handled it (and its ancestors) so far.
    pub trail: Vec<Hop>,
    /// Failed attempts at the current stage.
    pub attempts: Vec<Attempt>,
    /// Not to be retried before this time (ms since the Unix epoch).
    pub not_before_ms: u64,
    /// The kind of the message that entered at ingress (e.g. `ContractAmended` for a
    /// schedule derived from an amendment).
    #[serde(default)]
    pub root_kind: String,
    /// The trace it belongs to: the span that produced it.
    #[serde(default)]
    pub trace: Trace,
    /// What the process layer asks of it at this stage (a person's decision, or the
    /// undoing of a delivery); `None` for ordinary work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directive: Option<Directive>,
}

/// What the process layer asks of a message at its stage, instead of the ordinary
/// call: set when a person decides an exception, or when a transaction is undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "directive")]
pub enum Directive {
    /// A person approved the held message: what held it is waived, and the stage
    /// runs it (a failed one is tried again).
    Approve {
        /// The id of the API key that decided.
        by: String,
        /// Their note.
        note: String,
        /// What held it, which this approval waives (`rule 2`, `saga`): the stage's
        /// other rules still apply.
        #[serde(default)]
        waives: String,
    },
    /// A person rejected the held message: it ends rejected without running, and its
    /// transaction is compensated where its flows say so.
    Reject {
        /// The id of the API key that decided.
        by: String,
        /// Their note.
        note: String,
    },
    /// Hold it for a person before its stage runs (what the process layer found,
    /// e.g. a reconciliation's mismatch): it becomes an exception at once.
    Hold {
        /// What held it.
        rule: String,
        /// Why.
        reasons: Vec<String>,
        /// What approval does, and what rejection does.
        proposed: String,
    },
    /// Undo the delivery this message made (the sink's `compensate`), because another
    /// part of its transaction failed for good.
    Compensate {
        /// The id of the delivered message.
        delivered: MessageId,
        /// What the delivery returned: the target's reference.
        reference: String,
        /// What it reported besides.
        detail: Option<String>,
        /// Which sibling failed, and why.
        because: String,
    },
}

/// W3C trace context (`traceparent`, `tracestate`) carried with a message; empty
/// when it has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// `00-<trace id>-<parent span id>-<flags>`.
    pub traceparent: String,
    /// Vendor trace state, passed on as received.
    pub tracestate: String,
}

impl Trace {
    /// The trace id (32 hex digits), if there is one.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .split('-')
            .nth(1)
            .filter(|id| id.len() == 32)
    }
}

impl Envelope {
    /// A copy entering a subscribing flow (id `<id>@<flow>`, at the flow's first
    /// stage): that flow accepts it, and logs it as ingress does.
    pub fn is_entering(&self) -> bool {
        self.stage == 0 && self.message.id.entered() == Some(self.flow.as_str())
    }

    /// A message entering `flow` at the first stage of `route`: its own root, nothing
    /// tried yet.
    pub fn entering(
        flow: &str,
        route: &[String],
        message: StoredMessage,
        accepted_ms: u64,
    ) -> Envelope {
        Envelope {
            root: message.id.clone(),
            root_kind: message.kind.clone(),
            message,
            flow: flow.to_owned(),
            route: route.to_vec(),
            stage: 0,
            accepted_ms,
            trail: Vec::new(),
            attempts: Vec::new(),
            not_before_ms: 0,
            trace: Trace::default(),
            directive: None,
        }
    }
}

/// What finally happened to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outcome {
    /// The message id.
    pub id: MessageId,
    /// The ingress message it descends from.
    pub root: MessageId,
    /// Its flow.
    pub flow: String,
    /// Its business key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// The plugin instance at which it ended.
    pub plugin: String,
    /// Every plugin that handled it, in order.
    pub trail: Vec<Hop>,
    /// Failed attempts before the end.
    pub attempts: Vec<Attempt>,
    /// When it ended (ms since the Unix epoch).
    pub at_ms: u64,
    /// How it ended.
    pub result: OutcomeKind,
    /// When the message it descends from entered (ms since the Unix epoch).
    #[serde(default)]
    pub accepted_ms: u64,
    /// The kind of that message (see [`Envelope::root_kind`]).
    #[serde(default)]
    pub root_kind: String,
    /// The trace it belongs to (32 hex digits; empty when it had none).
    #[serde(default)]
    pub trace_id: String,
    /// What a delivery in a flow with a saga did, kept so that it can be undone if
    /// another part of its transaction fails for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Undo>,
}

/// A delivered message, kept with its outcome where its flow takes part in sagas:
/// what a compensation hands back to the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Undo {
    /// The delivered message's kind.
    pub kind: String,
    /// Its encoding.
    pub content_type: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub body: Vec<u8>,
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OutcomeKind {
    /// The sink delivered it; the target system's reference.
    Delivered {
        /// E.g. the ERP order number.
        reference: String,
        /// Anything else the sink reported.
        detail: Option<String>,
    },
    /// A business rule refused it, for these reasons.
    Rejected {
        /// Every reason given.
        reasons: Vec<String>,
    },
    /// A step consumed it without producing anything.
    Consumed,
    /// It can never succeed (invalid, or retries exhausted): a dead letter.
    DeadLetter {
        /// The last error.
        error: String,
    },
    /// Held for a person (an exception): a rule of its flow stopped it, or its
    /// transaction failed where its flow wants a person to decide. Approval runs it
    /// at its stage; rejection ends it rejected and compensates its transaction.
    Held {
        /// What held it: `rule <n>` of the flow, or `saga`.
        rule: String,
        /// Why.
        reasons: Vec<String>,
        /// What approval does, and what rejection does, in words.
        proposed: String,
    },
    /// A delivery undone (the sink's `compensate`) because its transaction failed.
    Compensated {
        /// The target system's reference of the undoing (e.g. the cancelled order).
        reference: String,
        /// Anything else the sink reported.
        detail: Option<String>,
    },
}

impl OutcomeKind {
    /// Whether the message's business transaction failed for good here: a rejection
    /// or a dead letter (what sagas compensate).
    pub fn fails_transaction(&self) -> bool {
        matches!(
            self,
            OutcomeKind::Rejected { .. } | OutcomeKind::DeadLetter { .. }
        )
    }
}

/// A message that can never succeed as things stand, kept whole with every attempt
/// so that an operator can inspect it, redrive it (after a fix) or discard it. An
/// exception (a message [`OutcomeKind::Held`] for a person) is kept in the same shape,
/// in its own place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message as it waited for the stage that failed it, with every attempt.
    pub envelope: Envelope,
    /// The outcome recorded for it.
    pub outcome: Outcome,
}

/// An ingress request's claim on an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The scope of the key: the source it was sent to.
    pub scope: String,
    /// The key (the `Idempotency-Key` header).
    pub key: String,
    /// sha256 of the payload, to tell a retry from a different request.
    pub payload: String,
    /// When the record may be forgotten (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// What an idempotency key was first used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// sha256 of the payload.
    pub payload: String,
    /// The ids accepted the first time.
    pub ids: Vec<MessageId>,
    /// When the record may be forgotten (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// One business event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the log, from 1.
    pub offset: u64,
    /// When it was appended (ms since the Unix epoch).
    pub at_ms: u64,
    /// The flow it belongs to.
    pub flow: String,
    /// What happened.
    pub body: EventBody,
}

/// What an event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// A message entered the flow (e.g. `QuoteApproved`); replay re-runs these.
    Accepted {
        /// The message as it entered.
        envelope: Box<Envelope>,
    },
    /// A business rule refused a message, for these reasons.
    Rejected {
        /// The refused message.
        id: MessageId,
        /// Its business key.
        key: String,
        /// Its kind.
        kind: String,
        /// The plugin that refused it.
        plugin: String,
        /// Every reason given.
        reasons: Vec<String>,
    },
}

impl EventBody {
    /// The event `envelope` entering its flow logs (ingress, or a copy entering a
    /// subscribing flow), with that flow's name: what replay re-runs.
    pub fn accepted(envelope: &Envelope) -> (String, EventBody) {
        let body = EventBody::Accepted {
            envelope: Box::new(envelope.clone()),
        };
        (envelope.flow.clone(), body)
    }

    /// The event a rejection logs (`None` for any other end): what a store writes
    /// with the outcome.
    pub fn rejection(outcome: &Outcome) -> Option<EventBody> {
        let OutcomeKind::Rejected { reasons } = &outcome.result else {
            return None;
        };
        Some(EventBody::Rejected {
            id: outcome.id.clone(),
            key: outcome.key.clone(),
            kind: outcome.kind.clone(),
            plugin: outcome.plugin.clone(),
            reasons: reasons.clone(),
        })
    }

    /// The event's name, as other flows would subscribe to it.
    pub fn name(&self) -> String {
        match self {
            EventBody::Accepted { envelope } => envelope.message.kind.clone(),
            EventBody::Rejected { .. } => "Rejected".into(),
        }
    }
}

/// A Tenon node of a deployment, as it last announced itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeStatus {
    /// Its name (`[server] node`, by default host name and process id).
    pub name: String,
    /// Where it takes partner traffic.
    pub ingest: String,
    /// Where its admin API listens.
    pub admin: String,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it last announced itself.
    pub seen_ms: u64,
    /// The digest of the config it runs.
    pub config: String,
    /// The live version of each plugin instance it runs, by name.
    pub plugins: std::collections::BTreeMap<String, String>,
}

/// What one version of a plugin instance is made of: the files to load it from
/// anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFiles {
    /// `plugin.toml`, as loaded.
    pub manifest: String,
    /// The component.
    #[serde(with = "serde_bytes")]
    pub component: Vec<u8>,
    /// Its signature (`plugin.sig`), if it is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}
