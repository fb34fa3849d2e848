//! Ingestion: a raw request handed to a source plugin, its messages committed to
//! every flow that starts there (and to the flows subscribing to their kinds) before
//! anyone is told they are accepted; idempotency keys answered from their records.

use super::Runtime;
use super::flows::Flow;
use crate::model::{
    Envelope, Hop, IdempotencyClaim, MessageId, OutcomeKind, StoredMessage, now_ms, queue_name,
};
use crate::sandbox::plugin::{CallError, RawRequest};
use crate::store::Enqueued;
use crate::store::StoreError;
use crate::telemetry;
use opentelemetry::trace::SpanKind;
use std::time::{Duration, Instant};

/// How often a sender waiting for validation looks again without being woken.
const RECHECK: Duration = Duration::from_millis(25);
use tenon_model::Encoding;
use tracing::Instrument as _;

pub use tenon_model::IDEMPOTENCY_HEADER;

/// Why ingress could not accept a request.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No flow starts at this source.
    #[error("no flow has source `{0}`")]
    UnknownSource(String),
    /// The source plugin failed on the payload.
    #[error("source `{plugin}`: {error}")]
    Plugin {
        /// The source plugin instance.
        plugin: String,
        /// How it failed.
        error: CallError,
    },
    /// The `Idempotency-Key` was used before with another payload.
    #[error("idempotency key `{key}` was already used for a different payload")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The messages could not be committed: nothing was accepted.
    #[error("cannot commit the messages: {0}")]
    Store(#[from] StoreError),
}

/// What ingress accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The accepted message ids.
    pub ids: Vec<MessageId>,
    /// True when these are the ids of an earlier request with the same idempotency key.
    pub replayed: bool,
    /// The trace the messages travel in (W3C `traceparent` of the ingest span).
    pub traceparent: String,
}

/// How the steps of a source's flows took its messages (`ack = "validated"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    /// Every step passed: what they made (the messages now at a sink, or published to
    /// the flows subscribing to them), each once.
    Passed(Vec<StoredMessage>),
    /// A step refused (every reason), or a message became a dead letter (its error).
    Refused(Vec<String>),
}

impl Runtime {
    /// Wait, up to `deadline`, until every message of `ids` (as ingress accepted them)
    /// is through the transform steps of its flow; `None` past the deadline.
    pub async fn validation(&self, ids: &[MessageId], deadline: Duration) -> Option<Validation> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Registered before reading, so that no commit in between goes unheard.
            let progressed = self.progressed.notified();
            match self.validated(ids).await {
                Ok(Some(validation)) => return Some(validation),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the messages' status");
                    return None;
                }
            }
            // Another node's workers do not wake this one: look again now and then.
            let wake = (tokio::time::Instant::now() + RECHECK).min(until);
            tokio::select! {
                () = progressed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= until {
                return None;
            }
        }
    }

    /// Where the messages are: `None` while one is still before or at a transform step.
    async fn validated(&self, ids: &[MessageId]) -> Result<Option<Validation>, StoreError> {
        let sink_stage = |e: &Envelope| {
            e.route
                .get(e.stage as usize)
                .and_then(|stage| self.plugin(stage))
                .is_some_and(|p| p.kind() == tenon_registry::Kind::Sink)
        };
        let mut passed: Vec<StoredMessage> = Vec::new();
        let mut reasons = Vec::new();
        let mut add = |mut message: StoredMessage| {
            // A copy into a subscribing flow stands for the message its step made.
            if let Some((made, _)) = message.id.as_str().split_once('@') {
                message.id = made.into();
            }
            if !passed.iter().any(|m| m.id == message.id) {
                passed.push(message);
            }
        };
        for id in ids {
            let status = self.status(id).await?;
            for envelope in status.pending {
                let own = !envelope.message.id.is_event_copy();
                if own && !sink_stage(&envelope) {
                    return Ok(None);
                }
                add(envelope.message);
            }
            for outcome in status.outcomes {
                let own = !outcome.id.is_event_copy();
                match outcome.result {
                    OutcomeKind::Rejected { reasons: r } if own => reasons.extend(r),
                    OutcomeKind::DeadLetter { error } if own => {
                        reasons.push(format!("{} failed: {error}", outcome.plugin));
                    }
                    // Held for a person: accepted, waiting for a decision.
                    OutcomeKind::Delivered { .. } | OutcomeKind::Held { .. } if own => {
                        add(StoredMessage {
                            id: outcome.id,
                            key: outcome.key,
                            kind: outcome.kind,
                            content_type: String::new(),
                            headers: Vec::new(),
                            body: Vec::new(),
                        })
                    }
                    _ if !own => add(StoredMessage {
                        id: outcome.id,
                        key: outcome.key,
                        kind: outcome.kind,
                        content_type: String::new(),
                        headers: Vec::new(),
                        body: Vec::new(),
                    }),
                    _ => {}
                }
            }
        }
        Ok(Some(match reasons.is_empty() {
            true => Validation::Passed(passed),
            false => Validation::Refused(reasons),
        }))
    }

    /// Hand a raw request to a source and commit its messages to every flow that
    /// starts there. Returns the accepted message ids once they are durable.
    ///
    /// With an `Idempotency-Key` header, a repeat of the same payload returns the ids
    /// accepted the first time (and commits nothing); the same key with another
    /// payload is refused. Keys are remembered for `server.idempotency_retention_secs`.
    pub async fn ingest(&self, source: &str, request: RawRequest) -> Result<Ingested, IngestError> {
        let flows: Vec<Flow> = self
            .flows()
            .into_iter()
            .filter(|f| f.source.as_deref() == Some(source))
            .collect();
        let plugin = match (flows.is_empty(), self.plugin(source)) {
            (false, Some(plugin)) => plugin,
            _ => return Err(IngestError::UnknownSource(source.to_owned())),
        };
        let payload = crate::model::digest(&request.body);
        let expires_ms = now_ms() + self.config().server.idempotency_retention_secs * 1000;
        let claim_for = |key: String| IdempotencyClaim {
            scope: source.to_owned(),
            key,
            payload: payload.clone(),
            expires_ms,
        };
        let claim = request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER))
            .map(|(_, key)| claim_for(key.clone()));
        if let Some(claim) = &claim {
            // The common retry: answer from the record without running the source.
            if let Some(record) = self.store.idempotency(&claim.scope, &claim.key).await? {
                return if record.payload == claim.payload {
                    Ok(Ingested {
                        ids: record
                            .ids
                            .into_iter()
                            .filter(|id| !id.is_event_copy())
                            .collect(),
                        replayed: true,
                        traceparent: String::new(),
                    })
                } else {
                    Err(IngestError::IdempotencyConflict {
                        key: claim.key.clone(),
                    })
                };
            }
        }
        let trace = telemetry::start_kind(
            "ingest",
            SpanKind::Server,
            &telemetry::from_headers(
                request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            vec![
                telemetry::attr("tenon.source", source.to_owned()),
                telemetry::attr("tenon.plugin.digest", plugin.digest().to_owned()),
            ],
        );
        let carried = telemetry::carried(&trace);
        let (trace_id, span_id) = telemetry::ids(&trace);
        let span = tracing::info_span!("ingest", source, plugin = %plugin.name(), digest = %plugin.digest(), trace_id, span_id);
        let ingested = async {
            let started = Instant::now();
            // Guest code runs on the plugin threads, never on the ones serving HTTP.
            let call = {
                let plugin = plugin.clone();
                self.guests
                    .spawn(async move { plugin.ingest(request).await })
            };
            let messages = call
                .await
                .unwrap_or_else(|e| Err(CallError::Host(format!("the plugin call failed: {e}"))))
                .map_err(|error| IngestError::Plugin {
                    plugin: source.to_owned(),
                    error,
                })?;
            if let Some(bad) = messages
                .iter()
                .find(|m| Encoding::from_content_type(&m.content_type).is_err())
            {
                let error = CallError::Host(format!(
                    "the source produced a `{}` body; messages are application/json or \
                     application/msgpack",
                    bad.content_type
                ));
                return Err(IngestError::Plugin {
                    plugin: source.to_owned(),
                    error,
                });
            }
            let hop = Hop {
                plugin: plugin.name().to_owned(),
                version: plugin.version().to_owned(),
                digest: plugin.digest().to_owned(),
                micros: started.elapsed().as_micros() as u64,
            };
            let accepted_ms = now_ms();
            let mut items = Vec::with_capacity(messages.len() * flows.len());
            let mut events = Vec::new();
            for message in messages {
                let first = items.len();
                for flow in &flows {
                    let message = message.clone().entered();
                    let mut envelope =
                        Envelope::entering(&flow.name, &flow.stages, message, accepted_ms);
                    envelope.trail.push(hop.clone());
                    envelope.trace = carried.clone();
                    items.push((queue_name(&flow.name, &flow.stages[0]), envelope));
                }
                // The message is an event too where one of its flows emits its kind:
                // the flows subscribing to it get it, once. (A flow always has a stage
                // after its source: a source's message is never at a flow's end.)
                let emitter = items[first..].iter().map(|(_, e)| e).find(|e| {
                    flows
                        .iter()
                        .any(|f| f.name == e.flow && f.emit.contains(&e.message.kind))
                });
                if let Some(e) = emitter {
                    events.extend(self.published(&e.message, &e.flow, false, e));
                }
            }
            let ids: Vec<MessageId> = items.iter().map(|(_, e)| e.message.id.clone()).collect();
            items.extend(events);
            // Without a key from the caller, the source may derive one from the payload
            // (e.g. quote id + last modification) by setting it on its messages.
            let claim = claim.or_else(|| {
                let mut keys: Vec<&str> = Vec::new();
                for (_, e) in &items {
                    let key = e
                        .message
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER))?;
                    keys.push(key.1.as_str());
                }
                keys.sort_unstable();
                keys.dedup();
                (!keys.is_empty()).then(|| claim_for(keys.join("|")))
            });
            // Racing with a request that claimed the same key: the store decides.
            let key = claim.as_ref().map(|c| c.key.clone());
            let accepted = match self.store.enqueue(items, claim).await? {
                Enqueued::Committed => Ingested {
                    ids,
                    replayed: false,
                    traceparent: carried.traceparent.clone(),
                },
                // The answer names the messages the source's flows accepted, not
                // their copies as events (`<id>@<flow>`), as the first answer did.
                Enqueued::Duplicate(ids) => Ingested {
                    ids: ids.into_iter().filter(|id| !id.is_event_copy()).collect(),
                    replayed: true,
                    traceparent: carried.traceparent.clone(),
                },
                Enqueued::Conflict => {
                    return Err(IngestError::IdempotencyConflict {
                        key: key.unwrap_or_default(),
                    });
                }
            };
            tracing::info!(
                accepted = accepted.ids.len(),
                replayed = accepted.replayed,
                "messages accepted"
            );
            Ok(accepted)
        }
        .instrument(span)
        .await;
        match &ingested {
            Ok(accepted) => telemetry::end(
                &trace,
                vec![
                    telemetry::attr("tenon.accepted", accepted.ids.len() as i64),
                    telemetry::attr("tenon.replayed", accepted.replayed),
                ],
                None,
            ),
            Err(error) => telemetry::end(&trace, vec![], Some(error.to_string())),
        }
        ingested
    }
}
