//! The distributed store: NATS JetStream, shared by every Tenon node of a deployment.
//!
//! | what | where in NATS |
//! |---|---|
//! | queues | one work-queue stream (`<P>_WORK`); a message's subject is `<p>.w.<queue>.<key>.<root>`; one durable pull consumer per queue, shared by every node |
//! | events | a stream (`<P>_EVENTS`), subject per flow; offsets are its sequences |
//! | outcomes, dead letters, retry state, idempotency records, plugin key-value data | key-value buckets (`<P>_outcomes`, `_dead`, `_retry`, `_idem`, `_kv`, `_kvusage`) |
//!
//! **Per-key order.** A message is processed only while it is the first message of
//! its business key still in its queue: on lease, the stream is asked for the first
//! message on the key's subjects (one lookup at the stream leader); a message behind
//! an earlier one (leased elsewhere, or waiting for its retry) is given back with a
//! short delay. A retry is a negative acknowledgement with the retry policy's delay,
//! so the message keeps its place, and its attempts are kept under its id.
//!
//! **Claims.** A step run ahead of its queue (fused) claims its key there with a
//! marker among the key's messages (one token longer, so the queue's consumer never
//! delivers it), published with the expectation that the key's subjects hold nothing
//! (`Nats-Expected-Last-Subject-Sequence` 0 on them: nats-server 2.11 on, checked at
//! start with a scratch key), so the stream grants it in its own order of writes, in
//! one request (on a replicated stream the leader checks against what is stored, not
//! what is in flight, so a granted claim is read once more); it then holds whatever
//! comes after it back as an earlier message would. Its holder removes it after its
//! commit (removed, not erased: there is nothing to overwrite). One whose holder died
//! is taken over by the next lease of the same message (the re-run after the crash:
//! the marker names its holder), or else removed by the first lease that meets it past
//! its hold (the holder's lease and a margin for its commit). A consumer made by an earlier version, which took its queue's every
//! subject, is narrowed to the messages' at start. Nodes of an earlier version do not
//! honour claims: upgrade a deployment's nodes together.
//!
//! **Leases.** The consumer's acknowledgement wait is short ([`ACK_WAIT`]); while a
//! lease is held, a keeper tells the server the work is in progress, up to the
//! lease's hold. A node that dies stops its keepers: its messages go to the other
//! nodes after [`ACK_WAIT`].
//!
//! **Completion.** A step's effects are written in order (key-value writes, outputs
//! published with their id as `Nats-Msg-Id`, outcome, dead letter, events), then the
//! input is acknowledged (and the server confirms it). A crash in between runs the
//! step again: its outputs have the same ids, so the stream drops the copies within
//! its duplicate window, and the recorded outcome of a delivery stops a second one.
//!
//! **Ingress.** With an idempotency key, the record is created first (`create`: of
//! two racing requests one wins), holding the ids; the messages are published with
//! those ids; the record is then marked committed. A request that finds a record not
//! yet committed (its first request may have died before publishing) publishes its
//! messages under the recorded ids, which the stream de-duplicates, so an accepted
//! message is never lost and never doubled.

mod names;
#[cfg(test)]
mod tests;

use crate::model::{
    DeadLetter, Directive, Envelope, Event, EventBody, IdempotencyClaim, IdempotencyRecord,
    MessageId, NodeStatus, Outcome, OutcomeKind, VersionFiles, now_ms, queue_name,
};
use crate::store::{
    Claim, CompleteError, Completion, Ended, Enqueued, KvWrites, Lease, NODE_TTL, Shared, Store,
    StoreError, Ticket, kv_entry_size, over_quota,
};
use async_nats::jetstream::{self, AckKind, consumer, kv, object_store, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use names::{Names, escape, kv_key, unescape};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long the server waits for a sign of life from a worker before it gives a
/// leased message to another one.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// How often a held lease tells the server it is alive.
const KEEPALIVE: Duration = Duration::from_secs(3);

/// How long a message held back behind an earlier one of its key waits before it is
/// offered again.
const HELD_BACK: Duration = Duration::from_millis(100);

/// How long the stream remembers a message id to drop its copies.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How long JetStream requests may take before they fail.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the cluster to answer at start (it may be electing a leader).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach the cluster and what to keep there.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URLs, e.g. `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    /// Replicas of every stream and bucket (1, or 3 on a 3-node cluster).
    pub replicas: usize,
    /// The deployment's name prefix (`[A-Za-z0-9_-]+`): several deployments or tests
    /// may share a cluster.
    pub prefix: String,
    /// How long outcomes and events are kept.
    pub retention: Duration,
    /// How long idempotency records are kept.
    pub idempotency_retention: Duration,
}

/// The JetStream store; cheap to clone.
#[derive(Clone)]
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    work: stream::Stream,
    events: stream::Stream,
    buckets: Arc<Buckets>,
    consumers: Arc<Mutex<HashMap<String, consumer::PullConsumer>>>,
    /// Streams kept on several servers: the leader checks a claim's expectation
    /// against what is stored, not against writes still in flight, so a granted claim
    /// is looked at once more.
    replicated: bool,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

struct Buckets {
    idem: kv::Store,
    outcomes: kv::Store,
    dead: kv::Store,
    /// Exceptions: messages held for a person.
    held: kv::Store,
    retry: kv::Store,
    kv: kv::Store,
    kv_usage: kv::Store,
    /// The nodes' announcements, each lapsing after [`NODE_TTL`].
    nodes: kv::Store,
    /// The deployment's live version of each plugin instance (`live.<name>`), its
    /// config (`config`), and a mark for every digest ever published (`known.<digest>`).
    deploy: kv::Store,
    /// The files of every published version, by digest.
    versions: object_store::ObjectStore,
}

/// What the store keeps about an ingress idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdemEntry {
    record: IdempotencyRecord,
    /// Whether the messages were published (else a retry publishes them again under
    /// the recorded ids).
    committed: bool,
}

/// An event as appended: its offset is the stream sequence.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent {
    at_ms: u64,
    flow: String,
    body: EventBody,
}

/// A message leased from JetStream.
pub(crate) struct NatsTicket {
    message: Arc<jetstream::Message>,
    queue: String,
    /// Past this, the lease is the server's to give again: a completion is refused.
    expires: Instant,
    /// Whether the message was delivered before (it may have retry state).
    redelivered: bool,
    /// What identifies this delivery's effects (see [`Incarnation`]).
    incarnation: Incarnation,
    /// Keeps the lease alive; stops when the ticket goes.
    _keeper: AbortOnDrop,
}

impl std::fmt::Debug for NatsTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTicket")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// Which run of a lineage a message belongs to: every effect of a step is
/// de-duplicated under it. A message published afresh (ingress, a replay, a redrive
/// or a decision) starts one, named by its `Nats-Msg-Id`; what a step publishes
/// carries its input's on (the [`INCARNATION`] header). A re-run after a crash (the
/// same run) writes nothing twice, whichever of its steps ran fused into another's
/// lease this time or the last; a replay (a new run) writes again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incarnation(String);

/// The header that carries a message's [`Incarnation`] when a step published it.
const INCARNATION: &str = "Tenon-Incarnation";

/// The header of a claim's marker: when it lapses (ms since the Unix epoch).
const CLAIM_UNTIL: &str = "Tenon-Claim-Until";

/// The header of a claim's marker: whose claim it is (a hash of the id of the
/// message whose lease took it), so that a later lease of that message takes over a
/// claim its node died holding.
const CLAIM_BY: &str = "Tenon-Claim-By";

/// The subjects `Nats-Expected-Last-Subject-Sequence` looks at (nats-server 2.11 on).
const EXPECTED_ON_SUBJECTS: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// Whether a publication was refused for its expected last sequence: 10071, or 10164
/// (a clustered stream's leader, for an expectation another write in flight breaks).
fn wrong_last_sequence(error: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        || error
            .source()
            .and_then(|e| e.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| {
                e.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            })
}

/// When the claim whose marker has these headers lapses (at once, if it says not).
fn claim_until(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(CLAIM_UNTIL))
        .and_then(|value| value.as_str().parse().ok())
        .unwrap_or(0)
}

impl Incarnation {
    /// The incarnation of a leased message: the one it carries, else the one its
    /// `Nats-Msg-Id` starts (every publication here sets one), else its sequence.
    fn of(message: &jetstream::Message, sequence: u64) -> Incarnation {
        let header = |name: &str| {
            let value = message.headers.as_ref()?.get(name)?;
            Some(value.as_str().to_owned())
        };
        if let Some(carried) = header(INCARNATION) {
            return Incarnation(carried);
        }
        let id = header(async_nats::header::NATS_MESSAGE_ID.as_ref());
        Incarnation::named(&id.unwrap_or_else(|| format!("seq|{sequence}")))
    }

    /// The incarnation a message published as `msg_id` starts (hashed: it names
    /// every id made from it).
    fn named(msg_id: &str) -> Incarnation {
        let hash = blake3::hash(msg_id.as_bytes()).to_hex();
        Incarnation(hash[..32].to_owned())
    }

    /// The `Nats-Msg-Id` of `id`, published to `queue` in this incarnation.
    fn output_id(&self, queue: &str, id: &MessageId) -> String {
        format!("{queue}|{id}|{}", self.0)
    }
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(StoreError::damaged)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(StoreError::damaged)
}

/// A NATS failure, with what was being done.
fn failed(doing: &str) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |error| StoreError::Nats(format!("{doing}: {error}"))
}

fn nats<E: std::fmt::Display>(doing: &str) -> impl FnOnce(E) -> StoreError + '_ {
    move |error| failed(doing)(&error)
}

/// The lineage a message id belongs to: its root (the id up to the first `.` or `@`).
fn root_of(id: &MessageId) -> &str {
    let text = id.as_str();
    &text[..text.find(['.', '@']).unwrap_or(text.len())]
}

impl NatsStore {
    /// Put a parked message (a dead letter, or an exception with a person's
    /// `directive`) back in front of its stage, with a fresh count of attempts and no
    /// outcome; `false` when `bucket` has none of that id.
    async fn requeue_parked(
        &self,
        bucket: &kv::Store,
        id: &MessageId,
        directive: Option<Directive>,
    ) -> Result<bool, StoreError> {
        let key = escape(id.as_str());
        let entry = bucket
            .entry(key.clone())
            .await
            .map_err(nats("cannot read a parked message"))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(false);
        };
        let letter: DeadLetter = decode(&entry.value)?;
        let mut envelope = letter.envelope;
        let what = if directive.is_some() {
            "decide"
        } else {
            "redrive"
        };
        // A redrive keeps what the message was asked to do (an undoing stays one).
        if directive.is_some() {
            envelope.directive = directive;
        }
        envelope.attempts.clear();
        envelope.not_before_ms = 0;
        let Some(stage) = envelope.route.get(envelope.stage as usize) else {
            return Ok(false);
        };
        let queue = queue_name(&envelope.flow, stage);
        // Claimed first, by its revision: of two decisions at once, one wins and the
        // other finds nothing to decide.
        let revision = match bucket
            .update(&key, entry.value.clone(), entry.revision)
            .await
        {
            Ok(revision) => revision,
            Err(error) if matches!(error.kind(), kv::UpdateErrorKind::WrongLastRevision) => {
                return Ok(false);
            }
            Err(error) => return Err(failed("cannot claim a parked message")(&error)),
        };
        let _ = self
            .buckets
            .retry
            .delete(escape(envelope.message.id.as_str()))
            .await;
        // Its outcome goes before it runs again: the new one is never the one removed.
        self.buckets
            .outcomes
            .delete(Self::outcome_key(id))
            .await
            .map_err(nats("cannot forget an outcome"))?;
        let dedup =
            |queue: &str, e: &Envelope| format!("{what}|{revision}|{queue}|{}", e.message.id);
        self.publish(&[(queue, envelope)], dedup, None).await?;
        bucket
            .delete(&key)
            .await
            .map_err(nats("cannot remove a parked message"))?;
        Ok(true)
    }

    /// Connect to the cluster, wait until JetStream answers, and create (or find) the
    /// streams and buckets.
    pub async fn connect(options: &NatsOptions) -> Result<NatsStore, StoreError> {
        if options.prefix.is_empty()
            || !options
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(StoreError::Nats(format!(
                "store prefix `{}`: use letters, digits, `_` and `-`",
                options.prefix
            )));
        }
        let client = async_nats::ConnectOptions::new()
            .name("tenon")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(options.servers.clone())
            .await
            .map_err(nats("cannot connect to NATS"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        // A cluster that just started (or restarted) answers once it has elected a
        // leader; until then requests time out.
        let started = Instant::now();
        loop {
            match js.query_account().await {
                Ok(_) => break,
                Err(error) if started.elapsed() < READY_TIMEOUT => {
                    tracing::info!(%error, "waiting for JetStream");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => {
                    return Err(StoreError::Nats(format!(
                        "JetStream did not answer within {} s at {}: {error}",
                        READY_TIMEOUT.as_secs(),
                        options.servers.join(", ")
                    )));
                }
            }
        }
        let names = Names::new(&options.prefix);
        let work = js
            .get_or_create_stream(stream::Config {
                name: names.work_stream(),
                subjects: vec![names.work_subjects()],
                retention: stream::RetentionPolicy::WorkQueue,
                num_replicas: options.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(nats("cannot create the work stream"))?;
        let events = js
            .get_or_create_stream(stream::Config {
                name: names.event_stream(),
                subjects: vec![names.event_subjects()],
                retention: stream::RetentionPolicy::Limits,
                num_replicas: options.replicas,
                duplicate_window: DUPLICATE_WINDOW.min(options.retention),
                max_age: options.retention,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(nats("cannot create the event stream"))?;
        let bucket = async |what: &str, max_age: Duration| {
            js.create_key_value(kv::Config {
                bucket: names.bucket(what),
                history: 1,
                max_age,
                num_replicas: options.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(nats(&format!("cannot create the {what} bucket")))
        };
        let buckets = Buckets {
            idem: bucket("idem", options.idempotency_retention).await?,
            outcomes: bucket("outcomes", options.retention).await?,
            dead: bucket("dead", Duration::ZERO).await?,
            held: bucket("held", Duration::ZERO).await?,
            retry: bucket("retry", options.retention).await?,
            kv: bucket("kv", Duration::ZERO).await?,
            kv_usage: bucket("kvusage", Duration::ZERO).await?,
            nodes: bucket("nodes", NODE_TTL).await?,
            deploy: bucket("deploy", Duration::ZERO).await?,
            versions: js
                .create_object_store(object_store::Config {
                    bucket: names.bucket("versions"),
                    num_replicas: options.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(nats("cannot create the versions store"))?,
        };
        let store = NatsStore {
            client,
            js,
            names,
            work,
            events,
            buckets: Arc::new(buckets),
            consumers: Arc::default(),
            replicated: options.replicas > 1,
        };
        store.check_claims(&options.servers).await?;
        Ok(store)
    }

    /// Make sure the work stream stores a claim only while its key has nothing
    /// queued (`Nats-Expected-Last-Subject-Sequence` over a subject filter: nats-server
    /// 2.11 on, on the stream's leader, whichever server this node reached): a claim
    /// on a scratch key behind a message of it must be refused, or this says why not.
    async fn check_claims(&self, servers: &[String]) -> Result<(), StoreError> {
        let scratch = self.names.scratch_subjects(&now_ms().to_string());
        let message = jetstream::message::PublishMessage::build().payload(Bytes::new());
        let message = self
            .js
            .send_publish(format!("{scratch}.m.x"), message)
            .await
            .map_err(nats("cannot write to the work stream"))?
            .await
            .map_err(nats("cannot write to the work stream"))?
            .sequence;
        let claim = jetstream::message::PublishMessage::build()
            .payload(Bytes::new())
            .expected_last_subject_sequence(0)
            .header(EXPECTED_ON_SUBJECTS, format!("{scratch}.>").as_str());
        let claimed = self
            .js
            .send_publish(format!("{scratch}.c.x"), claim)
            .await
            .map_err(nats("cannot write to the work stream"))?
            .await;
        self.remove_claim(message).await?;
        match claimed {
            Err(error) if wrong_last_sequence(&error) => Ok(()),
            claimed => {
                if let Ok(ack) = claimed {
                    self.remove_claim(ack.sequence).await?;
                }
                Err(StoreError::Nats(format!(
                    "the JetStream at {} stored a claim behind a message of its key: Tenon \
                     needs nats-server 2.11 or later (the stream's leader too), which \
                     checks a publication's expected last sequence over a subject filter",
                    servers.join(", ")
                )))
            }
        }
    }

    /// The durable consumer of `queue`, created the first time.
    async fn consumer(&self, queue: &str) -> Result<consumer::PullConsumer, StoreError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(consumer) = consumers.get(queue) {
            return Ok(consumer.clone());
        }
        let name = self.names.consumer(queue);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.names.queue_subjects(queue),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        let mut consumer = self
            .work
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(nats(&format!("cannot create the consumer of {queue}")))?;
        // One made before claims had subjects of their own takes every subject of its
        // queue: narrowed to its messages' (the server takes a new filter in place).
        if consumer.cached_info().config.filter_subject != config.filter_subject {
            consumer = self
                .work
                .update_consumer(config)
                .await
                .map_err(nats(&format!("cannot update the consumer of {queue}")))?;
        }
        consumers.insert(queue.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// Publish messages into their queues, each under `Nats-Msg-Id` = `dedup(id)`,
    /// in the incarnation of the step that made them (`made_in`) or each starting its
    /// own, and wait until the stream holds them all.
    async fn publish(
        &self,
        items: &[(String, Envelope)],
        dedup: impl Fn(&str, &Envelope) -> String,
        made_in: Option<&Incarnation>,
    ) -> Result<(), StoreError> {
        let mut acks = Vec::with_capacity(items.len());
        for (queue, envelope) in items {
            // A queue gets its consumer before its first message: listing the
            // consumers lists every queue that may hold messages.
            self.consumer(queue).await?;
            let subject =
                self.names
                    .message_subject(queue, &envelope.message.key, envelope.root.as_str());
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(encode(envelope)?)
                .message_id(dedup(queue, envelope));
            if let Some(incarnation) = made_in {
                publish = publish.header(INCARNATION, incarnation.0.as_str());
            }
            acks.push(
                self.js
                    .send_publish(subject, publish)
                    .await
                    .map_err(nats("cannot publish a message"))?,
            );
        }
        for ack in acks {
            ack.await.map_err(nats("a message was not stored"))?;
        }
        Ok(())
    }

    /// Append events, each under a de-duplication id.
    async fn append_events(
        &self,
        at_ms: u64,
        events: Vec<(String, EventBody, String)>,
    ) -> Result<(), StoreError> {
        let mut acks = Vec::with_capacity(events.len());
        for (flow, body, dedup) in events {
            let subject = self.names.event_subject(&flow);
            let event = StoredEvent { at_ms, flow, body };
            let publish = jetstream::message::PublishMessage::build()
                .payload(encode(&event)?)
                .message_id(dedup);
            acks.push(
                self.js
                    .send_publish(subject, publish)
                    .await
                    .map_err(nats("cannot append an event"))?,
            );
        }
        for ack in acks {
            ack.await.map_err(nats("an event was not stored"))?;
        }
        Ok(())
    }

    /// Log messages entering their flows as accepted, then publish them.
    async fn admit(&self, items: &[(String, Envelope)]) -> Result<(), StoreError> {
        // Logged before the work is published: a worker cannot log what became of a
        // message (a rejection) ahead of its acceptance.
        let accepted = items
            .iter()
            .map(|(_, e)| {
                let (flow, body) = EventBody::accepted(e);
                (flow, body, format!("accepted|{}", e.message.id))
            })
            .collect();
        self.append_events(now_ms(), accepted).await?;
        self.publish(items, |queue, e| format!("{queue}|{}", e.message.id), None)
            .await
    }

    /// The first message still queued on `subject` (a wildcard) at or after `from`.
    async fn first_on(
        &self,
        stream: &stream::Stream,
        subject: &str,
        from: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
        match stream.get_first_raw_message_by_subject(subject, from).await {
            Ok(message) => Ok(Some(message)),
            Err(error) if matches!(error.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(error) => Err(failed("cannot read the stream")(&error)),
        }
    }

    /// Mark a version or config digest as published (see [`Shared::known`]).
    async fn mark_known(&self, digest: &str) -> Result<(), StoreError> {
        self.buckets
            .deploy
            .put(known_key(digest), Bytes::new())
            .await
            .map(drop)
            .map_err(nats("cannot publish to the deployment"))
    }

    /// Every live entry of a bucket whose key starts with `prefix.` (or every entry),
    /// with its key.
    async fn entries(
        &self,
        bucket: &kv::Store,
        prefix: Option<&str>,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        let stream = &bucket.stream;
        let subject = match prefix {
            Some(prefix) => format!("$KV.{}.{prefix}.>", bucket.name),
            None => format!("$KV.{}.>", bucket.name),
        };
        let mut out = Vec::new();
        let mut from = 1;
        while let Some(message) = self.first_on(stream, &subject, from).await? {
            from = message.sequence + 1;
            let deleted = message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| op.as_str() != "PUT");
            if !deleted {
                let key = message
                    .subject
                    .strip_prefix(&format!("$KV.{}.", bucket.name))
                    .unwrap_or_default()
                    .to_owned();
                out.push((key, message.payload));
            }
        }
        Ok(out)
    }

    /// Add `delta` bytes to a namespace's usage (compare-and-set, retried on a race).
    async fn add_usage(&self, namespace: &str, delta: i64) -> Result<(), StoreError> {
        let key = kv_key(&[namespace]);
        let usage = &self.buckets.kv_usage;
        loop {
            let entry = usage
                .entry(key.clone())
                .await
                .map_err(nats("cannot read a key-value usage"))?;
            let (used, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (decode::<u64>(&e.value)?, e.revision)
                }
                Some(e) => (0, e.revision),
                None => (0, 0),
            };
            let after = (used as i64 + delta).max(0) as u64;
            match usage.update(&key, encode(&after)?, revision).await {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(failed("cannot write a key-value usage")(&error)),
            }
        }
    }

    /// Apply a step's key-value writes, after checking its namespace's quota.
    async fn apply_kv(&self, writes: &KvWrites) -> Result<(), CompleteError> {
        if writes.is_empty() {
            return Ok(());
        }
        let usage = self.kv_checked(writes).await?;
        self.write_kv(writes, usage).await
    }

    /// The usage of the namespace `writes` go to, before and after them; refused
    /// over its quota. Nothing is written.
    async fn kv_checked(&self, writes: &KvWrites) -> Result<(u64, u64), CompleteError> {
        let ns = writes.namespace();
        let used = self.kv_usage(ns).await?;
        let mut after = used;
        for (key, value) in writes.iter() {
            let old = self.kv_get(ns, key).await?;
            after = after.saturating_sub(kv_entry_size(key, old.as_deref()))
                + kv_entry_size(key, value);
        }
        if let Some(reason) = over_quota(writes.quota(), used, after) {
            return Err(CompleteError::OverQuota(reason));
        }
        Ok((used, after))
    }

    /// Write what [`NatsStore::kv_checked`] passed, and the namespace's new usage.
    async fn write_kv(
        &self,
        writes: &KvWrites,
        (used, after): (u64, u64),
    ) -> Result<(), CompleteError> {
        let ns = writes.namespace();
        let bucket = &self.buckets.kv;
        for (key, value) in writes.iter() {
            let k = kv_key(&[ns, key]);
            match value {
                Some(value) => bucket
                    .put(&k, Bytes::copy_from_slice(value))
                    .await
                    .map(drop)
                    .map_err(nats("cannot write a key-value entry"))?,
                None => bucket
                    .delete(&k)
                    .await
                    .map_err(nats("cannot delete a key-value entry"))?,
            }
        }
        self.add_usage(ns, after as i64 - used as i64).await?;
        Ok(())
    }

    /// The idempotency record of a key, live or not, with its revision.
    async fn idem_entry(&self, key: &str) -> Result<Option<(IdemEntry, u64)>, StoreError> {
        match self
            .buckets
            .idem
            .entry(key)
            .await
            .map_err(nats("cannot read an idempotency record"))?
        {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some((decode(&entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Enqueue under an idempotency claim (see the module documentation).
    async fn enqueue_claimed(
        &self,
        mut items: Vec<(String, Envelope)>,
        claim: IdempotencyClaim,
    ) -> Result<Enqueued, StoreError> {
        let key = kv_key(&[&claim.scope, &claim.key]);
        let ours = IdemEntry {
            record: IdempotencyRecord {
                payload: claim.payload.clone(),
                ids: items.iter().map(|(_, e)| e.message.id.clone()).collect(),
                expires_ms: claim.expires_ms,
            },
            committed: false,
        };
        let bucket = &self.buckets.idem;
        let revision = match bucket.create(&key, encode(&ours)?).await {
            Ok(revision) => revision,
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                let Some((earlier, revision)) = self.idem_entry(&key).await? else {
                    // Deleted in between: the key is free again.
                    return Box::pin(self.enqueue_claimed(items, claim)).await;
                };
                if earlier.record.expires_ms <= now_ms() {
                    // Expired: this request takes the key over.
                    match bucket.update(&key, encode(&ours)?, revision).await {
                        Ok(_) => return Box::pin(self.finish_claim(items, ours, &key)).await,
                        Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            return Box::pin(self.enqueue_claimed(items, claim)).await;
                        }
                        Err(error) => return Err(failed("cannot claim a key")(&error)),
                    }
                }
                if earlier.record.payload != claim.payload {
                    return Ok(Enqueued::Conflict);
                }
                if !earlier.committed {
                    // Its first request may have died before publishing: publish
                    // under the recorded ids (copies are dropped by the stream).
                    if earlier.record.ids.len() != items.len() {
                        return Ok(Enqueued::Conflict);
                    }
                    let renamed: HashMap<MessageId, MessageId> = items
                        .iter()
                        .map(|(_, e)| e.message.id.clone())
                        .zip(earlier.record.ids.iter().cloned())
                        .collect();
                    for (_, envelope) in &mut items {
                        envelope.message.id = renamed[&envelope.message.id].clone();
                        if let Some(root) = renamed.get(&envelope.root) {
                            envelope.root = root.clone();
                        }
                    }
                    self.finish_claim(items, earlier.clone(), &key).await?;
                }
                return Ok(Enqueued::Duplicate(earlier.record.ids));
            }
            Err(error) => return Err(failed("cannot claim an idempotency key")(&error)),
        };
        let _ = revision;
        self.finish_claim(items, ours, &key).await
    }

    /// Publish the claimed messages and mark the claim committed.
    async fn finish_claim(
        &self,
        items: Vec<(String, Envelope)>,
        mut entry: IdemEntry,
        key: &str,
    ) -> Result<Enqueued, StoreError> {
        self.admit(&items).await?;
        entry.committed = true;
        self.buckets
            .idem
            .put(key, encode(&entry)?)
            .await
            .map_err(nats("cannot commit an idempotency record"))?;
        Ok(Enqueued::Committed)
    }

    /// A queued message as its last attempt left it (attempts, next try).
    async fn with_retry_state(&self, envelope: Envelope) -> Result<Envelope, StoreError> {
        match self
            .buckets
            .retry
            .get(escape(envelope.message.id.as_str()))
            .await
            .map_err(nats("cannot read a retry state"))?
        {
            Some(state) => decode(&state),
            None => Ok(envelope),
        }
    }

    /// The key of an outcome: its lineage, then its id.
    fn outcome_key(id: &MessageId) -> String {
        kv_key(&[root_of(id), id.as_str()])
    }

    /// A message leased just now, with its retry state if it has one; `None` when
    /// it must wait (behind an earlier message of its key, or until its retry is due).
    async fn take(
        &self,
        queue: &str,
        message: jetstream::Message,
        hold: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let (sequence, delivered) = {
            let info = message.info().map_err(nats("a message without its info"))?;
            (info.stream_sequence, info.delivered)
        };
        let subject = message.subject.to_string();
        if Names::is_claim(&subject) {
            // Only a queue's consumer made before claims had subjects of their own
            // takes them: offered again when it lapses, then removed.
            let left = claim_until(message.headers.as_ref()).saturating_sub(now_ms());
            let answer = match left {
                0 => AckKind::Ack,
                left => AckKind::Nak(Some(Duration::from_millis(left))),
            };
            message
                .ack_with(answer)
                .await
                .map_err(nats("cannot give a claim back"))?;
            return Ok(None);
        }
        // Per-key order: only the first message of its key still queued may run, and
        // none while the key is claimed there.
        if let Some(same_key) = Names::same_key(&subject) {
            let mut removed = None;
            while let Some(first) = self.first_on(&self.work, &same_key, 0).await?
                && first.sequence != sequence
            {
                if Names::is_claim(&first.subject)
                    && claim_until(Some(&first.headers)) <= now_ms()
                    && removed != Some(first.sequence)
                {
                    // Lapsed: its holder died before releasing it. If it cannot be
                    // removed now, the message waits and a later lease tries again.
                    removed = Some(first.sequence);
                    match self.remove_claim(first.sequence).await {
                        Ok(()) => continue,
                        Err(error) => tracing::warn!(%error, "a lapsed claim stays for now"),
                    }
                }
                message
                    .ack_with(AckKind::Nak(Some(HELD_BACK)))
                    .await
                    .map_err(nats("cannot give a message back"))?;
                return Ok(None);
            }
        }
        let mut envelope: Envelope = match decode(&message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                // Nothing can run it: say so loudly, and do not loop on it.
                tracing::error!(%subject, sequence, %error, "a queued message does not decode; removed");
                let _ = message.ack_with(AckKind::Term).await;
                return Err(error);
            }
        };
        let redelivered = delivered > 1;
        if redelivered {
            envelope = self.with_retry_state(envelope).await?;
        }
        let wait = envelope.not_before_ms.saturating_sub(now_ms());
        if wait > 0 {
            message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(wait))))
                .await
                .map_err(nats("cannot give a message back"))?;
            return Ok(None);
        }
        let incarnation = Incarnation::of(&message, sequence);
        let message = Arc::new(message);
        let expires = Instant::now() + hold;
        let alive = message.clone();
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEEPALIVE).await;
                if Instant::now() >= expires {
                    break;
                }
                if let Err(error) = alive.ack_with(AckKind::Progress).await {
                    tracing::warn!(%error, "cannot keep a lease alive");
                }
            }
        });
        Ok(Some(Lease {
            envelope,
            ticket: Ticket::Nats(NatsTicket {
                message,
                queue: queue.to_owned(),
                expires,
                redelivered,
                incarnation,
                _keeper: AbortOnDrop(keeper),
            }),
        }))
    }

    /// Remove a claim (released, or lapsed).
    async fn remove_claim(&self, sequence: u64) -> Result<(), StoreError> {
        /// The server's answer to a message's removal.
        #[derive(Deserialize)]
        struct Removed {
            #[allow(dead_code)]
            success: bool,
        }
        // Removed, not erased: a marker holds nothing to overwrite, and an erasure
        // rewrites the message on disk.
        let request = serde_json::json!({ "seq": sequence, "no_erase": true });
        let subject = format!("STREAM.MSG.DELETE.{}", self.names.work_stream());
        let answer: jetstream::response::Response<Removed> = self
            .js
            .request(subject, &request)
            .await
            .map_err(nats("cannot remove a claim"))?;
        match answer {
            jetstream::response::Response::Ok(_) => Ok(()),
            // Removed already (by its holder, or by another node that met it lapsed):
            // the server says "no message found" when it was before the stream's first
            // message, "sequence not found" when it was among others still stored.
            jetstream::response::Response::Err { error }
                if error.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND
                    || (error.error_code()
                        == jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                        && error.to_string().contains("no message found")) =>
            {
                Ok(())
            }
            jetstream::response::Response::Err { error } => {
                Err(failed("cannot remove a claim")(&error))
            }
        }
    }

    /// Write what a completion says, before the input's ack. Whatever it writes is
    /// de-duplicated by the output's id and the input's [`Incarnation`]: a re-run of
    /// the same delivery writes nothing twice, a replay (a new input) writes again.
    async fn write_completion(
        &self,
        envelope: &Envelope,
        input: &Incarnation,
        completion: Completion,
    ) -> Result<(), StoreError> {
        match completion {
            Completion::Retry(_) => unreachable!("a retry is not written here"),
            Completion::Forward {
                outputs,
                ended,
                entered,
            } => {
                // What entered a subscribing flow and ran there in this lease, logged
                // as that flow accepted it, before anything of how it ended.
                self.log_accepted(entered.iter(), input).await?;
                // The ends first: an output published is leased at once, and what
                // decides a delivery (a saga's look at the transaction) must see how
                // the messages fused into this lease ended. (Written in one transaction
                // on redb; a crash in between here re-runs the input, de-duplicated.)
                // Each end, and what it publishes, in this incarnation: a re-run that
                // leaves its message queued (its key waiting, its time short) ends it
                // in a lease of its own, in the same incarnation, under the same ids.
                // What it publishes goes first, as for a `Finish`: a saga on another
                // node sees the end only once its compensations are queued.
                for Ended {
                    envelope,
                    outcome,
                    published,
                    ..
                } in ended
                {
                    self.write_outputs(&published, input).await?;
                    self.write_end(&envelope, &outcome, input).await?;
                }
                self.write_outputs(&outputs, input).await?;
            }
            Completion::Finish { outcome, published } => {
                self.write_outputs(&published, input).await?;
                self.write_end(envelope, &outcome, input).await?;
            }
        }
        Ok(())
    }

    /// Record how a message ended: its outcome, a rejection's event, and, for a dead
    /// letter or an exception, the message as it waited (`envelope`).
    async fn write_end(
        &self,
        envelope: &Envelope,
        outcome: &Outcome,
        input: &Incarnation,
    ) -> Result<(), StoreError> {
        let parked = match &outcome.result {
            OutcomeKind::DeadLetter { .. } => {
                Some((&self.buckets.dead, "cannot write a dead letter"))
            }
            OutcomeKind::Held { .. } => Some((&self.buckets.held, "cannot write an exception")),
            _ => None,
        };
        if let Some((bucket, failure)) = parked {
            let mut waiting = envelope.clone();
            waiting.attempts = outcome.attempts.clone();
            let letter = DeadLetter {
                envelope: waiting,
                outcome: outcome.clone(),
            };
            bucket
                .put(escape(outcome.id.as_str()), encode(&letter)?)
                .await
                .map_err(nats(failure))?;
        }
        if let Some(rejected) = EventBody::rejection(outcome) {
            self.append_events(
                outcome.at_ms,
                vec![(
                    outcome.flow.clone(),
                    rejected,
                    format!("rejected|{}|{input}", outcome.id),
                )],
            )
            .await?;
        }
        self.buckets
            .outcomes
            .put(Self::outcome_key(&outcome.id), encode(outcome)?)
            .await
            .map_err(nats("cannot write an outcome"))?;
        Ok(())
    }

    /// A step's outputs, or what a message's end publishes, each written once per
    /// incarnation (and carrying it on). A copy entering a subscribing flow is
    /// accepted by that flow: logged like ingress, so the flow's replay covers it.
    async fn write_outputs(
        &self,
        outputs: &[(String, Envelope)],
        input: &Incarnation,
    ) -> Result<(), StoreError> {
        if outputs.is_empty() {
            return Ok(());
        }
        let dedup = |queue: &str, e: &Envelope| input.output_id(queue, &e.message.id);
        self.publish(outputs, dedup, Some(input)).await?;
        let entering = outputs.iter().map(|(_, e)| e).filter(|e| e.is_entering());
        self.log_accepted(entering, input).await
    }

    /// Log copies entering subscribing flows as those flows accepted them, once per
    /// incarnation.
    async fn log_accepted(
        &self,
        entering: impl Iterator<Item = &Envelope>,
        input: &Incarnation,
    ) -> Result<(), StoreError> {
        let accepted = entering
            .map(|e| {
                let (flow, body) = EventBody::accepted(e);
                (flow, body, format!("accepted|{}|{input}", e.message.id))
            })
            .collect::<Vec<_>>();
        if !accepted.is_empty() {
            self.append_events(now_ms(), accepted).await?;
        }
        Ok(())
    }

    /// The offset of the last event, or 0 when the log is empty.
    async fn last_offset(&self) -> Result<u64, StoreError> {
        let mut events = self.events.clone();
        let info = events
            .info()
            .await
            .map_err(nats("cannot read the event log"))?;
        Ok(info.state.last_sequence)
    }

    /// The event at `offset` or the first after it, if any.
    async fn event_from(&self, offset: u64) -> Result<Option<Event>, StoreError> {
        let subject = self.names.event_subjects();
        let Some(message) = self.first_on(&self.events, &subject, offset).await? else {
            return Ok(None);
        };
        let stored: StoredEvent = decode(&message.payload)?;
        Ok(Some(Event {
            offset: message.sequence,
            at_ms: stored.at_ms,
            flow: stored.flow,
            body: stored.body,
        }))
    }
}

#[async_trait::async_trait]
impl Store for NatsStore {
    async fn enqueue(
        &self,
        items: Vec<(String, Envelope)>,
        claim: Option<IdempotencyClaim>,
    ) -> Result<Enqueued, StoreError> {
        match claim {
            Some(claim) => self.enqueue_claimed(items, claim).await,
            None => {
                self.admit(&items).await?;
                Ok(Enqueued::Committed)
            }
        }
    }

    async fn requeue(&self, items: Vec<(String, Envelope)>) -> Result<(), StoreError> {
        // A replay may run the same message twice on purpose: no de-duplication.
        let at = now_ms();
        let dedup = |queue: &str, e: &Envelope| format!("replay|{at}|{queue}|{}", e.message.id);
        self.publish(&items, dedup, None).await
    }

    async fn idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self
            .idem_entry(&kv_key(&[scope, key]))
            .await?
            .filter(|(entry, _)| entry.committed && entry.record.expires_ms > now_ms())
            .map(|(entry, _)| entry.record))
    }

    async fn lease(
        &self,
        queue: &str,
        wait: Duration,
        hold: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let consumer = self.consumer(queue).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let fetch = consumer.fetch().max_messages(1);
            let fetch = if left >= Duration::from_millis(10) {
                fetch.expires(left)
            } else {
                fetch
            };
            let mut batch = fetch
                .messages()
                .await
                .map_err(nats(&format!("cannot fetch from {queue}")))?;
            if let Some(message) = batch.next().await {
                let message = message.map_err(nats(&format!("cannot fetch from {queue}")))?;
                if let Some(lease) = self.take(queue, message, hold).await? {
                    return Ok(Some(lease));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    async fn complete(
        &self,
        lease: Lease,
        completion: Completion,
        kv: Option<KvWrites>,
    ) -> Result<(), CompleteError> {
        let Ticket::Nats(ticket) = lease.ticket else {
            return Err(StoreError::Nats("a lease of another store".into()).into());
        };
        if Instant::now() >= ticket.expires {
            return Err(CompleteError::Stale {
                queue: ticket.queue,
            });
        }
        let give_back = async |error: CompleteError| {
            let _ = ticket.message.ack_with(AckKind::Nak(None)).await;
            Err(error)
        };
        if let Completion::Retry(envelope) = completion {
            let state = self
                .buckets
                .retry
                .put(
                    escape(envelope.message.id.as_str()),
                    encode(envelope.as_ref())?,
                )
                .await;
            if let Err(error) = state {
                return give_back(failed("cannot write a retry state")(&error).into()).await;
            }
            let delay = envelope.not_before_ms.saturating_sub(now_ms());
            ticket
                .message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(delay))))
                .await
                .map_err(nats("cannot delay a retry"))?;
            return Ok(());
        }
        // The step's writes, and those of the calls that ended messages in its lease
        // (a fused sink's).
        let ended = match &completion {
            Completion::Forward { ended, .. } => ended.as_slice(),
            _ => &[],
        };
        let writes: Vec<&KvWrites> = kv
            .iter()
            .chain(ended.iter().filter_map(|e| e.kv.as_ref()))
            .filter(|w| !w.is_empty())
            .collect();
        // Every set checked before any is written: one over its quota writes nothing.
        let mut usages = Vec::with_capacity(writes.len());
        for kv in &writes {
            match self.kv_checked(kv).await {
                Ok(usage) => usages.push(usage),
                Err(error) => return give_back(error).await,
            }
        }
        for (kv, usage) in writes.into_iter().zip(usages) {
            if let Err(error) = self.write_kv(kv, usage).await {
                return give_back(error).await;
            }
        }
        if let Err(error) = self
            .write_completion(&lease.envelope, &ticket.incarnation, completion)
            .await
        {
            return give_back(error.into()).await;
        }
        if ticket.redelivered {
            let _ = self
                .buckets
                .retry
                .delete(escape(lease.envelope.message.id.as_str()))
                .await;
        }
        ticket
            .message
            .double_ack()
            .await
            .map_err(nats("the input's acknowledgement was not confirmed"))?;
        Ok(())
    }

    async fn outcome(&self, id: &MessageId) -> Result<Option<Outcome>, StoreError> {
        self.buckets
            .outcomes
            .get(Self::outcome_key(id))
            .await
            .map_err(nats("cannot read an outcome"))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    async fn outcomes(&self, root: &MessageId) -> Result<Vec<Outcome>, StoreError> {
        let prefix = escape(root_of(root));
        let mut out = Vec::new();
        for (_, bytes) in self.entries(&self.buckets.outcomes, Some(&prefix)).await? {
            let outcome: Outcome = decode(&bytes)?;
            if outcome.id.descends_from(root) {
                out.push(outcome);
            }
        }
        Ok(out)
    }

    async fn pending(&self, root: &MessageId) -> Result<Vec<Envelope>, StoreError> {
        let subject = self.names.lineage_subjects(root_of(root));
        let mut out = Vec::new();
        let mut from = 1;
        while let Some(message) = self.first_on(&self.work, &subject, from).await? {
            from = message.sequence + 1;
            let envelope: Envelope = decode(&message.payload)?;
            if envelope.message.id.descends_from(root) {
                out.push(self.with_retry_state(envelope).await?);
            }
        }
        Ok(out)
    }

    async fn claim(
        &self,
        queue: &str,
        key: &str,
        holder: &MessageId,
        hold: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        // One write, decided by the stream: the marker is stored only while nothing
        // of the key is there (no message, no other claim: no last sequence on the
        // key's subjects), in the stream's order of writes, so of two claims, or a
        // claim and a message, the first stored wins. Whatever comes after it waits
        // behind it, on every node, as behind an earlier message of its key.
        let until = now_ms() + hold.as_millis() as u64;
        let by = Incarnation::named(holder.as_str()).0;
        let subjects = self.names.key_subjects(queue, key);
        let mut taken_over = false;
        let marker = loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::new())
                .header(CLAIM_UNTIL, until.to_string().as_str())
                .header(CLAIM_BY, by.as_str())
                .expected_last_subject_sequence(0)
                .header(EXPECTED_ON_SUBJECTS, subjects.as_str());
            let stored = self
                .js
                .send_publish(self.names.claim_subject(queue, key), publish)
                .await
                .map_err(nats("cannot claim a key"))?
                .await;
            match stored {
                Ok(ack) => break ack.sequence,
                Err(error) if wrong_last_sequence(&error) && !taken_over => {
                    // The key's first may be a claim an earlier lease of this very
                    // message left (its node died before releasing it): it goes, and
                    // this run claims afresh.
                    let Some(first) = self.first_on(&self.work, &subjects, 0).await? else {
                        return Ok(None);
                    };
                    let by_holder = first.headers.get(CLAIM_BY).map(|v| v.as_str());
                    if !Names::is_claim(&first.subject) || by_holder != Some(by.as_str()) {
                        return Ok(None);
                    }
                    self.remove_claim(first.sequence).await?;
                    taken_over = true;
                }
                Err(error) if wrong_last_sequence(&error) => return Ok(None),
                Err(error) => return Err(failed("a claim was not stored")(&error)),
            }
        };
        // A message of the key in flight when the leader checked may be stored
        // before the marker: then the marker goes, and the claim is refused.
        if self.replicated {
            let first = self.first_on(&self.work, &subjects, 0).await;
            if !matches!(&first, Ok(Some(first)) if first.sequence == marker) {
                if let Err(error) = self.remove_claim(marker).await {
                    tracing::warn!(%error, "a refused claim was not removed; it lapses");
                }
                return first.map(|_| None);
            }
        }
        let store = self.clone();
        let runtime = tokio::runtime::Handle::current();
        Ok(Some(Claim::new(move || {
            runtime.spawn(async move {
                // Else it lapses, removed by whoever meets it then.
                if let Err(error) = store.remove_claim(marker).await {
                    tracing::warn!(%error, "a claim was not released; it lapses");
                }
            });
        })))
    }

    async fn depths(&self) -> Result<BTreeMap<String, usize>, StoreError> {
        let mut names = self.work.consumer_names();
        let mut out = BTreeMap::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(nats("cannot list the queues"))?;
            let Some(queue) = name.strip_prefix("q_").and_then(unescape) else {
                continue;
            };
            let mut consumer: consumer::PullConsumer = self
                .work
                .get_consumer(&name)
                .await
                .map_err(nats("cannot read a queue"))?;
            let info = consumer.info().await.map_err(nats("cannot read a queue"))?;
            let depth = info.num_pending as usize + info.num_ack_pending;
            if depth > 0 {
                out.insert(queue, depth);
            }
        }
        Ok(out)
    }

    async fn oldest(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        let subject = self.names.queue_subjects(queue);
        match self.first_on(&self.work, &subject, 1).await? {
            Some(message) => Ok(Some(decode::<Envelope>(&message.payload)?.accepted_ms)),
            None => Ok(None),
        }
    }

    async fn outcomes_in(
        &self,
        accepted: std::ops::Range<u64>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut out = Vec::new();
        for (_, bytes) in self.entries(&self.buckets.outcomes, None).await? {
            let outcome: Outcome = decode(&bytes)?;
            if accepted.contains(&outcome.accepted_ms) {
                out.push(outcome);
            }
        }
        Ok(out)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for (_, bytes) in self.entries(&self.buckets.dead, None).await? {
            out.push(decode::<DeadLetter>(&bytes)?);
        }
        out.sort_by_key(|d| d.outcome.at_ms);
        Ok(out)
    }

    async fn dead_letter(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError> {
        self.buckets
            .dead
            .get(escape(id.as_str()))
            .await
            .map_err(nats("cannot read a dead letter"))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    async fn redrive(&self, id: &MessageId) -> Result<bool, StoreError> {
        self.requeue_parked(&self.buckets.dead, id, None).await
    }

    async fn exceptions(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for (_, bytes) in self.entries(&self.buckets.held, None).await? {
            out.push(decode::<DeadLetter>(&bytes)?);
        }
        out.sort_by(|a, b| {
            (a.outcome.at_ms, a.outcome.id.as_str()).cmp(&(b.outcome.at_ms, b.outcome.id.as_str()))
        });
        Ok(out)
    }

    async fn exception(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError> {
        let entry = self
            .buckets
            .held
            .entry(escape(id.as_str()))
            .await
            .map_err(nats("cannot read an exception"))?;
        entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| decode(&e.value))
            .transpose()
    }

    async fn decide(&self, id: &MessageId, directive: Directive) -> Result<bool, StoreError> {
        self.requeue_parked(&self.buckets.held, id, Some(directive))
            .await
    }

    async fn discard(&self, id: &MessageId) -> Result<bool, StoreError> {
        if self.dead_letter(id).await?.is_none() {
            return Ok(false);
        }
        self.buckets
            .dead
            .delete(escape(id.as_str()))
            .await
            .map_err(nats("cannot remove a dead letter"))?;
        Ok(true)
    }

    async fn events(&self, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let last = self.last_offset().await?;
        let mut out = Vec::new();
        let mut offset = from.max(1);
        while offset <= to.min(last) {
            let Some(event) = self.event_from(offset).await? else {
                break;
            };
            if event.offset > to {
                break;
            }
            offset = event.offset + 1;
            out.push(event);
        }
        Ok(out)
    }

    async fn offset_at(&self, at_ms: u64) -> Result<Option<u64>, StoreError> {
        // Events are appended in time order: the first at or after `at_ms` by halving.
        let (mut low, mut high) = (1, self.last_offset().await? + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.event_from(middle).await? {
                Some(event) if event.at_ms >= at_ms => high = middle,
                Some(event) => low = event.offset + 1,
                None => high = middle,
            }
        }
        Ok(self.event_from(low).await?.map(|e| e.offset))
    }

    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .buckets
            .kv
            .get(kv_key(&[namespace, key]))
            .await
            .map_err(nats("cannot read a key-value entry"))?
            .map(|bytes| bytes.to_vec()))
    }

    async fn kv_usage(&self, namespace: &str) -> Result<u64, StoreError> {
        match self
            .buckets
            .kv_usage
            .get(kv_key(&[namespace]))
            .await
            .map_err(nats("cannot read a key-value usage"))?
        {
            Some(bytes) => decode(&bytes),
            None => Ok(0),
        }
    }

    async fn kv_commit(&self, writes: &KvWrites) -> Result<(), CompleteError> {
        self.apply_kv(writes).await
    }

    async fn sweep(&self, _keep: Duration) -> Result<(), StoreError> {
        // Outcomes, events, retry states and idempotency records expire with their
        // bucket's or stream's maximum age.
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn shared(&self) -> Option<&dyn Shared> {
        Some(self)
    }
}

/// The key of a plugin instance's live version in the deploy bucket.
fn live_key(name: &str) -> String {
    format!("live.{}", escape(name))
}

/// The key that marks a version or config digest as published once.
fn known_key(digest: &str) -> String {
    format!("known.{}", escape(digest))
}

#[async_trait::async_trait]
impl Shared for NatsStore {
    async fn announce(&self, node: &NodeStatus) -> Result<(), StoreError> {
        self.buckets
            .nodes
            .put(escape(&node.name), encode(node)?)
            .await
            .map(drop)
            .map_err(nats("cannot announce this node"))
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        let mut nodes = Vec::new();
        for (_, bytes) in self.entries(&self.buckets.nodes, None).await? {
            nodes.push(decode::<NodeStatus>(&bytes)?);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    async fn publish_version(
        &self,
        name: &str,
        digest: &str,
        files: &VersionFiles,
    ) -> Result<(), StoreError> {
        let object = escape(digest);
        let stored = match self.buckets.versions.info(&object).await {
            Ok(info) => !info.deleted,
            Err(_) => false,
        };
        if !stored {
            let bytes = encode(files)?;
            self.buckets
                .versions
                .put(object.as_str(), &mut bytes.as_ref())
                .await
                .map_err(nats("cannot store a plugin version"))?;
        }
        self.mark_known(digest).await?;
        self.buckets
            .deploy
            .put(live_key(name), Bytes::from(digest.to_owned()))
            .await
            .map(drop)
            .map_err(nats("cannot publish a live version"))
    }

    async fn live_versions(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let mut live = BTreeMap::new();
        for (key, bytes) in self.entries(&self.buckets.deploy, Some("live")).await? {
            if let Some(name) = key.strip_prefix("live.").and_then(unescape) {
                live.insert(name, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        Ok(live)
    }

    async fn version_files(&self, digest: &str) -> Result<Option<VersionFiles>, StoreError> {
        use tokio::io::AsyncReadExt as _;
        let mut object = match self.buckets.versions.get(escape(digest)).await {
            Ok(object) => object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(failed("cannot read a plugin version")(&error)),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(nats("cannot read a plugin version"))?;
        decode(&bytes).map(Some)
    }

    async fn publish_config(&self, text: &str) -> Result<(), StoreError> {
        self.mark_known(&crate::model::digest(text.as_bytes()))
            .await?;
        self.buckets
            .deploy
            .put("config", Bytes::from(text.to_owned()))
            .await
            .map(drop)
            .map_err(nats("cannot publish the config"))
    }

    async fn config(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .buckets
            .deploy
            .get("config")
            .await
            .map_err(nats("cannot read the config"))?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn known(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .buckets
            .deploy
            .get(known_key(digest))
            .await
            .map_err(nats("cannot read the deployment"))?
            .is_some())
    }
}
