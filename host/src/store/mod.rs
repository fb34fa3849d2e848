//! Where state lives: the message store behind one interface, and this node's own
//! database.
//!
//! - [`Store`] is the seam between the runtime and whatever keeps its messages: the
//!   queues in front of every stage, leases, outcomes, dead letters, the event log,
//!   ingress idempotency records and the plugins' key-value data. The runtime and the
//!   admin API reach that state through this trait and nothing else.
//!   [`redb::RedbStore`] is the default backend: one file, group commit, one machine.
//!   [`nats::NatsStore`] keeps the same state in a NATS JetStream cluster, shared by
//!   several Tenon nodes.
//! - [`NodeDb`] is this node's own database: the compiled-component index, the audit
//!   log, API keys and approved plugin versions. It is one redb file in the data
//!   directory, which the redb store shares (so a single node has one file).
//!
//! Every backend keeps the same promises: a write is acknowledged only once it is
//! durable; a step's outputs, its key-value writes and the ack of its input commit
//! together or not at all; a message is leased to one worker at a time, and each
//! business key is processed in arrival order.

pub mod audit;
pub mod nats;
pub(crate) mod node;
pub mod redb;

pub use node::{Approved, NodeDb};

use crate::model::{
    DeadLetter, Directive, Envelope, Event, IdempotencyClaim, IdempotencyRecord, MessageId,
    NodeStatus, Outcome, VersionFiles,
};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The message store: everything the runtime keeps about messages, on one backend.
///
/// Queues are named `<flow>/<stage>` ([`crate::model::queue_name`]). Methods that
/// write wait until the write is durable.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Commit messages entering their flows, each with the queue it goes to, and log
    /// them as accepted. With a claim, the idempotency check and the commit are one
    /// step: of two requests racing with one key, one gets through.
    async fn enqueue(
        &self,
        items: Vec<(String, Envelope)>,
        claim: Option<IdempotencyClaim>,
    ) -> Result<Enqueued, StoreError>;

    /// Commit messages again (a replay): not logged, no idempotency check.
    async fn requeue(&self, items: Vec<(String, Envelope)>) -> Result<(), StoreError>;

    /// The live idempotency record of a key in a scope, if any.
    async fn idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Lease the oldest message of `queue` that may run now (the first of its business
    /// key, due), waiting up to `wait` for one; `None` when none came. The lease lasts
    /// `hold`: past it (a worker that died, a call stuck), the message goes to
    /// another worker and the first one's completion is refused.
    async fn lease(
        &self,
        queue: &str,
        wait: Duration,
        hold: Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Commit what became of a leased message, with the step's key-value writes (and
    /// those of the calls that ended messages in its lease: [`Ended::kv`]), in one
    /// atomic write with its ack. Refused when the lease expired (another worker owns
    /// the message now) or any of the key-value writes are over quota, and then
    /// nothing is written; the message is leased again. (On NATS, "atomic" is "in
    /// order, de-duplicated on a re-run": see its module.)
    async fn complete(
        &self,
        lease: Lease,
        completion: Completion,
        kv: Option<KvWrites>,
    ) -> Result<(), CompleteError>;

    /// The outcome recorded for a message, if it has one.
    async fn outcome(&self, id: &MessageId) -> Result<Option<Outcome>, StoreError>;

    /// The outcomes of a message and every message descended from it.
    async fn outcomes(&self, root: &MessageId) -> Result<Vec<Outcome>, StoreError>;

    /// The messages descended from `root` (itself included) still in a queue.
    async fn pending(&self, root: &MessageId) -> Result<Vec<Envelope>, StoreError>;

    /// How many messages each queue holds (waiting, leased or due for a retry).
    async fn depths(&self) -> Result<BTreeMap<String, usize>, StoreError>;

    /// Claim business key `key` in `queue` for a step run ahead of that queue (a
    /// fused step): granted when the queue holds no message of the key (waiting,
    /// leased or due for a retry) and no other claim on it; `None` otherwise. Until
    /// the claim is dropped, the key's messages committed to the queue wait behind it
    /// (per-key order, as behind an earlier message of the key), so no worker runs
    /// that step for the key beside the claimant. Its holder drops it once its
    /// lease's commit is done. `holder` is the message whose lease takes the claim: a
    /// claim left by an earlier lease of it, whose node died, is taken over (the
    /// re-run after a crash); any other whose holder died lapses after `hold`.
    async fn claim(
        &self,
        queue: &str,
        key: &str,
        holder: &MessageId,
        hold: Duration,
    ) -> Result<Option<Claim>, StoreError>;

    /// When the message at the head of `queue` (the oldest committed there) entered
    /// Tenon, if the queue holds any.
    async fn oldest(&self, queue: &str) -> Result<Option<u64>, StoreError>;

    /// The outcomes of the messages accepted at ingress within `accepted` (ms since
    /// the Unix epoch), as long as they are kept.
    async fn outcomes_in(&self, accepted: std::ops::Range<u64>)
    -> Result<Vec<Outcome>, StoreError>;

    /// Every dead letter, oldest first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Up to `limit` dead letters, oldest first (by their outcome's `at_ms`, then
    /// their id): from the oldest, or after the letter `after` names by that `at_ms`
    /// and its id (the last one of the previous page). The default reads them all; a
    /// store with a time index (redb) reads only the page.
    async fn dead_letters_page(
        &self,
        after: Option<(u64, &MessageId)>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut all = self.dead_letters().await?;
        all.sort_by(|a, b| {
            (a.outcome.at_ms, a.outcome.id.as_str()).cmp(&(b.outcome.at_ms, b.outcome.id.as_str()))
        });
        let start = after.map_or(0, |(at_ms, id)| {
            all.partition_point(|d| {
                (d.outcome.at_ms, d.outcome.id.as_str()) <= (at_ms, id.as_str())
            })
        });
        Ok(all.into_iter().skip(start).take(limit).collect())
    }

    /// How many dead letters each flow has (flows with none are absent). The default
    /// reads them all; a store that keeps the counts (redb) reads only those.
    async fn dead_letters_per_flow(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        for letter in self.dead_letters().await? {
            *counts.entry(letter.outcome.flow).or_default() += 1;
        }
        Ok(counts)
    }

    /// One dead letter.
    async fn dead_letter(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError>;

    /// Put a dead letter back in front of the stage that failed it, with a fresh count
    /// of attempts and no outcome; `false` when there is no such dead letter.
    async fn redrive(&self, id: &MessageId) -> Result<bool, StoreError>;

    /// Forget a dead letter (its outcome stays); `false` when there is none.
    async fn discard(&self, id: &MessageId) -> Result<bool, StoreError>;

    /// Every exception (a message held for a person: its outcome is
    /// [`OutcomeKind::Held`](crate::model::OutcomeKind::Held)), oldest first. A
    /// completion whose outcome is `Held` keeps its message here.
    async fn exceptions(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// One exception.
    async fn exception(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError>;

    /// Put a held message back in front of its stage with a person's `directive`
    /// (approve or reject), with a fresh count of attempts and no outcome, in one
    /// write; `false` when no exception has that id (decided already, or never held).
    async fn decide(&self, id: &MessageId, directive: Directive) -> Result<bool, StoreError>;

    /// The events with offsets in `from..=to`, in order.
    async fn events(&self, from: u64, to: u64) -> Result<Vec<Event>, StoreError>;

    /// The offset of the first event appended at or after `at_ms`, if any.
    async fn offset_at(&self, at_ms: u64) -> Result<Option<u64>, StoreError>;

    /// The committed value of `key` in a plugin's namespace.
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The bytes (keys and values) a plugin's namespace holds, as committed.
    async fn kv_usage(&self, namespace: &str) -> Result<u64, StoreError>;

    /// Commit key-value writes on their own, outside a step (tools and tests).
    async fn kv_commit(&self, writes: &KvWrites) -> Result<(), CompleteError>;

    /// Forget expired idempotency records, and outcomes and events older than `keep`.
    /// Dead letters stay until an operator redrives or discards them.
    async fn sweep(&self, keep: Duration) -> Result<(), StoreError>;

    /// False once the store has failed in a way only a restart repairs (everything
    /// acknowledged is durable, so a restart loses nothing).
    fn healthy(&self) -> bool;

    /// What the nodes of a deployment share beside messages, when the store is shared
    /// by several nodes (the NATS store); `None` for a store of one node.
    fn shared(&self) -> Option<&dyn Shared> {
        None
    }
}

/// What the nodes sharing one store share beside messages: who is up, which version
/// of each plugin instance is live, which config runs. What goes live on one node
/// goes live on all, each at its own message boundary.
#[async_trait::async_trait]
pub trait Shared: Send + Sync {
    /// Announce this node; an announcement not renewed within [`NODE_TTL`] lapses.
    async fn announce(&self, node: &NodeStatus) -> Result<(), StoreError>;

    /// The nodes that announced themselves within [`NODE_TTL`].
    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError>;

    /// Make `digest` the deployment's live version of plugin instance `name`, its
    /// files kept under its digest for the other nodes to load.
    async fn publish_version(
        &self,
        name: &str,
        digest: &str,
        files: &VersionFiles,
    ) -> Result<(), StoreError>;

    /// The deployment's live version of each plugin instance, by name.
    async fn live_versions(&self) -> Result<BTreeMap<String, String>, StoreError>;

    /// The files of a published version.
    async fn version_files(&self, digest: &str) -> Result<Option<VersionFiles>, StoreError>;

    /// Make `text` the deployment's config.
    async fn publish_config(&self, text: &str) -> Result<(), StoreError>;

    /// The deployment's config, if one was published.
    async fn config(&self) -> Result<Option<String>, StoreError>;

    /// Whether a plugin version or a config with this digest was ever published: a
    /// node that starts with one the deployment never saw brings a change made while
    /// it was down; one it saw and moved past is out of date.
    async fn known(&self, digest: &str) -> Result<bool, StoreError>;
}

/// How long a node's announcement lasts unless renewed.
pub const NODE_TTL: Duration = Duration::from_secs(15);

/// What an [`Store::enqueue`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The messages were committed.
    Committed,
    /// The idempotency key was used before for the same payload: nothing new was
    /// committed; these are the ids accepted then.
    Duplicate(Vec<MessageId>),
    /// The key was used before for another payload: nothing was committed.
    Conflict,
}

/// What a step's work on a leased message came to: what the store commits with its ack.
#[derive(Debug)]
pub enum Completion {
    /// Outputs for other queues (possibly none).
    Forward {
        /// The outputs, each with the queue it goes to (the next stage, or the first
        /// stage of a flow that subscribes to it).
        outputs: Vec<(String, Envelope)>,
        /// Messages that ended within this lease without ever being queued: the flow's
        /// sink ran on an output at once (fused). Recorded as a [`Completion::Finish`]
        /// records its message, the envelope given here instead of read from a queue.
        ended: Vec<Ended>,
        /// Copies that entered a subscribing flow and ran there within this lease
        /// without ever being queued (fused), each as it entered: that flow accepted
        /// them all the same, so they are logged as an output entering it is, and its
        /// replay covers them.
        entered: Vec<Envelope>,
    },
    /// The message ended here, with what its end publishes (a sink's delivery of an
    /// order is an `OrderBooked` for the flows that subscribe to it; usually nothing).
    Finish {
        /// How it ended.
        outcome: Box<Outcome>,
        /// Messages for other flows' queues, written with the outcome.
        published: Vec<(String, Envelope)>,
    },
    /// Try again later: the envelope with the attempt recorded and `not_before_ms` set.
    Retry(Box<Envelope>),
}

/// A message that ended within another message's lease (see [`Completion::Forward`]).
#[derive(Debug)]
pub struct Ended {
    /// The message as it would have waited in its queue (kept for a dead letter or
    /// an exception).
    pub envelope: Envelope,
    /// How it ended.
    pub outcome: Outcome,
    /// The key-value writes of the call that ended it (a sink's), committed with it.
    pub kv: Option<KvWrites>,
    /// What its end publishes, as [`Completion::Finish`]'s `published`.
    pub published: Vec<(String, Envelope)>,
}

impl Completion {
    /// The outputs forwarded, nothing ended on the way.
    pub fn forward(outputs: Vec<(String, Envelope)>) -> Completion {
        Completion::Forward {
            outputs,
            ended: Vec::new(),
            entered: Vec::new(),
        }
    }

    /// The message ended here with `outcome`, publishing nothing.
    pub fn finish(outcome: Outcome) -> Completion {
        Completion::Finish {
            outcome: Box::new(outcome),
            published: Vec::new(),
        }
    }
}

/// A claim on a business key in a queue ([`Store::claim`]): released when dropped.
#[must_use = "a claim is released when dropped"]
pub struct Claim {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Claim {
    /// A claim that `release` gives up.
    pub(crate) fn new(release: impl FnOnce() + Send + Sync + 'static) -> Claim {
        Claim {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").finish_non_exhaustive()
    }
}

/// A message leased to one worker.
#[derive(Debug)]
pub struct Lease {
    /// The message and its state.
    pub envelope: Envelope,
    /// What the backend needs to complete it.
    pub(crate) ticket: Ticket,
}

/// A backend's handle on a leased message.
#[derive(Debug)]
pub(crate) enum Ticket {
    /// [`redb::RedbStore`]: the message's slot, and the lease's token.
    Redb { queue: String, seq: u64, token: u64 },
    /// [`nats::NatsStore`]: the delivered message.
    Nats(nats::NatsTicket),
}

/// The store failed: the message says what was being done. Nothing of a write that
/// failed was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<::redb::DatabaseError>,
    },
    /// A read or a write of the database failed.
    #[error("storage: {0}")]
    Redb(#[from] Box<::redb::Error>),
    /// A stored record does not decode (or a value does not encode): a bug or a
    /// damaged file.
    #[error("storage: damaged record: {0}")]
    Damaged(String),
    /// The transaction holding this write failed to commit: nothing in it is durable.
    #[error("storage: commit failed, nothing written: {0}")]
    CommitFailed(String),
    /// The store is shutting down.
    #[error("storage: the store has stopped")]
    Stopped,
    /// NATS failed or refused (the message says what was being done).
    #[error("storage (NATS): {0}")]
    Nats(String),
}

impl StoreError {
    /// A record that does not encode or decode.
    pub(crate) fn damaged(error: impl fmt::Display) -> StoreError {
        StoreError::Damaged(error.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    ::redb::Error,
    ::redb::TransactionError,
    ::redb::TableError,
    ::redb::StorageError,
    ::redb::CommitError
);

/// Why a completion was not committed; the message stays and is leased again.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The lease timed out and the message went to another worker: this ack is late.
    #[error(
        "the lease on {queue} expired and the message went to another worker; late ack refused"
    )]
    Stale {
        /// The queue.
        queue: String,
    },
    /// The step's key-value writes would take its namespace over the quota (by
    /// concurrent calls that each fitted): nothing of the step was committed.
    #[error("not committed: {0}")]
    OverQuota(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A plugin's view of the key-value data, confined to its namespace: the namespace is
/// part of every key, so a plugin cannot name another plugin's keys whatever string it
/// passes.
///
/// A plugin call reads through this view and buffers its writes in [`KvWrites`],
/// which commit with the step's result ([`Store::complete`]): a call that traps,
/// times out or fails leaves nothing behind.
#[derive(Clone, Debug)]
pub struct KvNamespace {
    store: Arc<dyn Store>,
    namespace: String,
    quota: Option<u64>,
}

impl KvNamespace {
    /// A plugin's namespace in `store`, holding at most `quota` bytes if given.
    pub fn new(store: Arc<dyn Store>, namespace: &str, quota: Option<u64>) -> KvNamespace {
        KvNamespace {
            store,
            namespace: namespace.to_owned(),
            quota,
        }
    }

    /// The namespace (the plugin instance name).
    pub fn name(&self) -> &str {
        &self.namespace
    }

    /// The quota in bytes, if any.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// The committed value under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.kv_get(&self.namespace, key).await
    }

    /// Bytes (keys and values) the namespace holds, as committed.
    pub async fn usage(&self) -> Result<u64, StoreError> {
        self.store.kv_usage(&self.namespace).await
    }

    /// A fresh buffer of writes to this namespace.
    pub fn writes(&self) -> KvWrites {
        KvWrites {
            namespace: self.namespace.clone(),
            quota: self.quota,
            writes: BTreeMap::new(),
        }
    }

    /// Store `value` under `key` at once, within the quota (outside a step).
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), CompleteError> {
        let mut writes = self.writes();
        writes.put(key, Some(value.to_vec()));
        self.store.kv_commit(&writes).await
    }

    /// Remove `key` at once (outside a step).
    pub async fn delete(&self, key: &str) -> Result<(), CompleteError> {
        let mut writes = self.writes();
        writes.put(key, None);
        self.store.kv_commit(&writes).await
    }
}

/// Writes of one plugin call to its namespace, not yet committed: `None` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvWrites {
    namespace: String,
    quota: Option<u64>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl KvWrites {
    /// Buffer a write (or, with `None`, a delete).
    pub fn put(&mut self, key: &str, value: Option<Vec<u8>>) {
        self.writes.insert(key.to_owned(), value);
    }

    /// What this call wrote under `key`: `Some(None)` when it deleted it, `None`
    /// when it did not touch it.
    pub fn get(&self, key: &str) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(Option::as_deref)
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The namespace written to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The namespace's quota, if any.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// Each key written, with its new value (`None`: deleted).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.writes.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

/// The bytes one entry takes against a quota.
pub fn kv_entry_size(key: &str, value: Option<&[u8]>) -> u64 {
    value.map_or(0, |v| (key.len() + v.len()) as u64)
}

/// Why a namespace holding `used` bytes would hold too much after writes that leave
/// it at `after` bytes, or `None`. Shrinking is always allowed, even over the quota.
pub fn over_quota(quota: Option<u64>, used: u64, after: u64) -> Option<String> {
    let quota = quota?;
    (after > quota && after > used).then(|| {
        format!(
            "key-value quota of {quota} bytes exceeded ({after} bytes after this step's writes)"
        )
    })
}
