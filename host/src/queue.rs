//! The durable queue: every message between two steps lives here until the step that
//! consumes it commits its result.
//!
//! - [`Queue::enqueue`] commits new messages (ingress) before anyone acknowledges them.
//! - [`Queue::lease`] hands the oldest ready message of a queue to one worker. Leases
//!   are held in memory: after a crash every unfinished message is simply ready again.
//!   A message whose business key has an earlier message leased or waiting for a retry
//!   is held back, so each key is processed in arrival order.
//! - [`Queue::complete`] commits, in one transaction, the removal of the input and
//!   whatever the step produced: outputs for the next queue, a terminal outcome, or the
//!   input again with its failed attempt recorded and a time before which it must not
//!   be retried.

use crate::storage::{META, OUTCOMES, QUEUE, Storage, StorageError};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// A message as stored between steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Unique id, stable across retries; outputs of a step are `<input id>.<n>`.
    pub id: String,
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

/// One plugin that handled a message, for provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Index of the stage it waits for (the flow's steps, then its sink).
    pub stage: u32,
    /// Id of the message that entered at ingress (the root of this one's lineage).
    pub root: String,
    /// When it entered the runtime (ms since the Unix epoch).
    pub accepted_ms: u64,
    /// Plugins that handled it (and its ancestors) so far.
    pub trail: Vec<Hop>,
    /// Failed attempts at the current stage.
    pub attempts: Vec<Attempt>,
    /// Not to be retried before this time (ms since the Unix epoch).
    pub not_before_ms: u64,
}

/// What finally happened to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The message id.
    pub id: String,
    /// The ingress message it descends from.
    pub root: String,
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
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// What a step's work on a leased message came to.
#[derive(Debug)]
pub enum Completion {
    /// Outputs for another queue (possibly none).
    Forward {
        /// The queue the outputs go to.
        queue: String,
        /// The outputs.
        outputs: Vec<Envelope>,
    },
    /// The message ended here.
    Finish(Box<Outcome>),
    /// Try again later: the envelope with the attempt recorded and `not_before_ms` set.
    Retry(Box<Envelope>),
}

/// A message leased to one worker.
#[derive(Debug)]
pub struct Lease {
    queue: String,
    seq: u64,
    /// The message and its state.
    pub envelope: Envelope,
}

/// The queue; cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    storage: Storage,
    leased: Arc<Mutex<HashSet<(String, u64)>>>,
    notify: Arc<Notify>,
}

/// The name of the queue in front of a flow's stage.
pub fn queue_name(flow: &str, stage: u32) -> String {
    format!("{flow}/{stage}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    rmp_serde::to_vec_named(value).map_err(|e| StorageError::Decode(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError> {
    rmp_serde::from_slice(bytes).map_err(|e| StorageError::Decode(e.to_string()))
}

impl Queue {
    /// The queue over a database.
    pub fn new(storage: Storage) -> Queue {
        Queue {
            storage,
            leased: Arc::default(),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Notified whenever something was enqueued or completed; idle workers wait on it.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Commit messages durably; only then may they be acknowledged.
    pub fn enqueue(&self, items: &[(String, Envelope)]) -> Result<(), StorageError> {
        let txn = self.storage.db().begin_write()?;
        {
            let mut queue = txn.open_table(QUEUE)?;
            let mut meta = txn.open_table(META)?;
            let mut seq = meta.get("next_seq")?.map_or(1, |v| v.value());
            for (name, envelope) in items {
                queue.insert((name.as_str(), seq), encode(envelope)?.as_slice())?;
                seq += 1;
            }
            meta.insert("next_seq", seq)?;
        }
        txn.commit()?;
        self.notify.notify_waiters();
        Ok(())
    }

    /// Lease the oldest message of `queue` that is ready and whose key is not held by
    /// an earlier message.
    pub fn lease(&self, queue: &str) -> Result<Option<Lease>, StorageError> {
        let now = now_ms();
        let mut leased = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(QUEUE)?;
        let mut held_keys: HashSet<String> = HashSet::new();
        for entry in table.range((queue, 0)..=(queue, u64::MAX))? {
            let (k, v) = entry?;
            let seq = k.value().1;
            let envelope: Envelope = decode(v.value())?;
            if held_keys.contains(&envelope.message.key) {
                continue;
            }
            if leased.contains(&(queue.to_owned(), seq)) || envelope.not_before_ms > now {
                held_keys.insert(envelope.message.key);
                continue;
            }
            leased.insert((queue.to_owned(), seq));
            return Ok(Some(Lease {
                queue: queue.to_owned(),
                seq,
                envelope,
            }));
        }
        Ok(None)
    }

    /// Commit the result of a leased message, in one transaction with its ack.
    pub fn complete(&self, lease: Lease, completion: Completion) -> Result<(), StorageError> {
        let result = self.commit(&lease, completion);
        self.leased
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(lease.queue.clone(), lease.seq));
        self.notify.notify_waiters();
        result
    }

    fn commit(&self, lease: &Lease, completion: Completion) -> Result<(), StorageError> {
        let txn = self.storage.db().begin_write()?;
        {
            let mut queue = txn.open_table(QUEUE)?;
            let slot = (lease.queue.as_str(), lease.seq);
            match completion {
                Completion::Retry(envelope) => {
                    // Same slot: the message keeps its place in its key's order.
                    queue.insert(slot, encode(&envelope)?.as_slice())?;
                }
                Completion::Forward {
                    queue: next,
                    outputs,
                } => {
                    queue.remove(slot)?;
                    let mut meta = txn.open_table(META)?;
                    let mut seq = meta.get("next_seq")?.map_or(1, |v| v.value());
                    for envelope in &outputs {
                        queue.insert((next.as_str(), seq), encode(envelope)?.as_slice())?;
                        seq += 1;
                    }
                    meta.insert("next_seq", seq)?;
                }
                Completion::Finish(outcome) => {
                    queue.remove(slot)?;
                    txn.open_table(OUTCOMES)?
                        .insert(outcome.id.as_str(), encode(&outcome)?.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Number of messages waiting in (or leased from) a queue.
    pub fn depth(&self, queue: &str) -> Result<usize, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(QUEUE)?;
        Ok(table.range((queue, 0)..=(queue, u64::MAX))?.count())
    }

    /// Every message still in any queue, for status and tests.
    pub fn pending(&self) -> Result<Vec<Envelope>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(QUEUE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    /// The outcomes of a message and every message descended from it.
    pub fn outcomes(&self, root: &str) -> Result<Vec<Outcome>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(OUTCOMES)?;
        let mut out = Vec::new();
        for entry in table.range(root..)? {
            let (k, v) = entry?;
            let id = k.value();
            if id != root
                && !id
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('.'))
            {
                break;
            }
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str, key: &str) -> Envelope {
        Envelope {
            message: StoredMessage {
                id: id.into(),
                key: key.into(),
                kind: "QuoteApproved".into(),
                content_type: "application/json".into(),
                headers: vec![],
                body: b"{}".to_vec(),
            },
            flow: "f".into(),
            stage: 0,
            root: id.into(),
            accepted_ms: 0,
            trail: vec![],
            attempts: vec![],
            not_before_ms: 0,
        }
    }

    fn open() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(Storage::open(dir.path()).unwrap());
        (dir, queue)
    }

    #[test]
    fn a_message_is_leased_once_and_forwarded_with_its_ack() {
        let (_dir, q) = open();
        q.enqueue(&[("f/0".into(), envelope("m1", "k1"))]).unwrap();
        let lease = q.lease("f/0").unwrap().unwrap();
        assert!(
            q.lease("f/0").unwrap().is_none(),
            "a leased message is not leased twice"
        );
        let mut out = envelope("m1.0", "k1");
        out.stage = 1;
        q.complete(
            lease,
            Completion::Forward {
                queue: "f/1".into(),
                outputs: vec![out.clone()],
            },
        )
        .unwrap();
        assert_eq!(q.depth("f/0").unwrap(), 0);
        assert_eq!(q.lease("f/1").unwrap().unwrap().envelope, out);
    }

    #[test]
    fn a_key_is_processed_in_order_and_other_keys_pass() {
        let (_dir, q) = open();
        q.enqueue(&[
            ("f/0".into(), envelope("a1", "A")),
            ("f/0".into(), envelope("a2", "A")),
            ("f/0".into(), envelope("b1", "B")),
        ])
        .unwrap();
        let a1 = q.lease("f/0").unwrap().unwrap();
        assert_eq!(a1.envelope.message.id, "a1");
        let next = q.lease("f/0").unwrap().unwrap();
        assert_eq!(
            next.envelope.message.id, "b1",
            "a2 waits behind a1, b1 does not"
        );
        assert!(q.lease("f/0").unwrap().is_none());
        // a1 fails and waits for a retry: a2 still waits behind it.
        let mut retry = a1.envelope.clone();
        retry.not_before_ms = now_ms() + 60_000;
        q.complete(a1, Completion::Retry(Box::new(retry))).unwrap();
        assert!(q.lease("f/0").unwrap().is_none());
    }

    #[test]
    fn a_lost_lease_is_ready_again_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::new(Storage::open(dir.path()).unwrap());
            q.enqueue(&[("f/0".into(), envelope("m1", "k"))]).unwrap();
            let _lease = q.lease("f/0").unwrap().unwrap();
            // the worker dies here: no complete
        }
        let q = Queue::new(Storage::open(dir.path()).unwrap());
        assert_eq!(q.lease("f/0").unwrap().unwrap().envelope.message.id, "m1");
    }

    #[test]
    fn outcomes_are_found_by_lineage() {
        let (_dir, q) = open();
        q.enqueue(&[
            ("f/0".into(), envelope("m1", "k")),
            ("f/0".into(), envelope("m10", "k2")),
        ])
        .unwrap();
        for id in ["m1", "m10"] {
            let lease = q.lease("f/0").unwrap().unwrap();
            let outcome = Outcome {
                id: format!("{id}.0"),
                root: id.into(),
                flow: "f".into(),
                key: "k".into(),
                kind: "OrderAccepted".into(),
                plugin: "sink".into(),
                trail: vec![],
                attempts: vec![],
                at_ms: 0,
                result: OutcomeKind::Consumed,
            };
            q.complete(lease, Completion::Finish(Box::new(outcome)))
                .unwrap();
        }
        let found = q.outcomes("m1").unwrap();
        assert_eq!(found.len(), 1, "m10's outcome is not m1's");
        assert_eq!(found[0].id, "m1.0");
    }
}
