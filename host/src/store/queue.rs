//! The durable queue: every message between two steps lives here until the step that
//! consumes it commits its result.
//!
//! - [`Queue::enqueue`] commits new messages (ingress) before anyone acknowledges them.
//! - [`Queue::lease`] hands the oldest ready message of a queue to one worker for a
//!   visibility timeout. Leases are held in memory: after a crash every unfinished
//!   message is simply ready again; a lease that times out is given to another worker,
//!   and the late ack of the first is refused ([`StorageError::StaleLease`]). A message
//!   whose business key has an earlier message leased or waiting for a retry is held
//!   back, so each key is processed in arrival order.
//! - [`Queue::complete`] commits, in one transaction, the removal of the input and
//!   whatever the step produced: outputs for the next queue, a terminal outcome, or the
//!   input again with its failed attempt recorded and a time before which it must not
//!   be retried.
//!
//! **Group commit.** Every write goes through one committer thread, which takes all
//! the writes waiting, applies them in one redb transaction, commits it durably
//! (fsync), and only then answers each caller. Under load many messages share one
//! fsync; no caller is answered before its data is durable, and a failed commit
//! fails every write in it (nothing in it was acknowledged).

use crate::model::{
    DeadLetter, Envelope, Event, EventBody, IdempotencyClaim, IdempotencyRecord, MessageId,
    Outcome, OutcomeKind, now_ms, queue_name,
};
use crate::store::events::{self, EVENTS};
use crate::store::index::Index;
use crate::store::{DEAD, IDEMPOTENCY, KvWrites, META, OUTCOMES, QUEUE, Storage, StorageError};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// Most outcomes or events one sweep removes (the next sweep takes the rest).
const MAX_SWEEP: usize = 50_000;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;

/// How long a lease lasts unless the queue is told otherwise.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(60);

/// What became of an enqueue that carried an idempotency claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The messages were committed.
    Committed,
    /// The key was used before for the same payload: nothing new was committed;
    /// these are the ids accepted then.
    Duplicate(Vec<MessageId>),
    /// The key was used before for another payload: nothing was committed.
    Conflict,
    /// What the write was about (e.g. a dead letter to redrive) does not exist.
    Missing,
    /// A step's result was not committed: its key-value writes would take the
    /// namespace over its quota (nothing of the step was written).
    OverQuota(String),
}

/// What a step's work on a leased message came to.
#[derive(Debug)]
pub enum Completion {
    /// Outputs for another queue (possibly none).
    Forward {
        /// The outputs, each with the queue it goes to (the next stage, or the first
        /// stage of a flow that subscribes to it).
        outputs: Vec<(String, Envelope)>,
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
    token: u64,
    /// The message and its state.
    pub envelope: Envelope,
}

type Slot = (String, u64);

/// How the lease index changes once a write is committed.
#[derive(Debug)]
enum IndexOp {
    /// A message committed into a queue.
    Insert {
        queue: String,
        seq: u64,
        key: String,
        not_before_ms: u64,
    },
    /// A message that left its queue.
    Remove { queue: String, seq: u64 },
    /// A message kept for a retry.
    Retry {
        queue: String,
        seq: u64,
        not_before_ms: u64,
    },
}

/// One write for the committer, and where to send its result.
struct Job {
    write: Write,
    done: oneshot::Sender<Result<Accepted, StorageError>>,
}

enum Write {
    Enqueue {
        items: Vec<(String, Envelope)>,
        claim: Option<IdempotencyClaim>,
        /// Append them to the event log (ingress does; a replay does not).
        log: bool,
    },
    Complete {
        slot: Slot,
        completion: Completion,
        /// The step's key-value writes, committed with its result.
        kv: Option<KvWrites>,
    },
    /// Forget idempotency records that expired before this time.
    Sweep {
        now_ms: u64,
        /// Outcomes and events from before this time go.
        before_ms: u64,
    },
    /// Put a dead letter back in front of the stage that failed it.
    Redrive { id: String },
    /// Forget a dead letter (its outcome stays).
    Discard { id: String },
}

/// The committer thread's inbox; dropping the last handle stops and joins it, so the
/// database is closed when the queue is.
#[derive(Debug)]
struct Committer {
    inbox: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.inbox.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The queue; cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    storage: Storage,
    index: Arc<Mutex<Index>>,
    notify: Arc<Notifiers>,
    committer: Arc<Committer>,
    tokens: Arc<AtomicU64>,
    visibility: Duration,
    commits: Arc<AtomicU64>,
    failed_commits: Arc<AtomicU64>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    rmp_serde::to_vec_named(value).map_err(|e| StorageError::Decode(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError> {
    rmp_serde::from_slice(bytes).map_err(|e| StorageError::Decode(e.to_string()))
}

impl Queue {
    /// The queue over a database, with leases of [`DEFAULT_VISIBILITY`].
    pub fn new(storage: Storage) -> Queue {
        Queue::with_visibility(storage, DEFAULT_VISIBILITY)
    }

    /// The queue over a database; a lease not completed within `visibility` is given
    /// to the next worker that asks.
    pub fn with_visibility(storage: Storage, visibility: Duration) -> Queue {
        let index = match load_index(&storage) {
            Ok(index) => index,
            Err(error) => {
                // Leasing then finds nothing: the failure shows in every lease's error.
                tracing::error!(%error, "cannot read the queue to index it");
                Index::default()
            }
        };
        let index = Arc::new(Mutex::new(index));
        let notify = Arc::new(Notifiers::default());
        let (inbox, jobs) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let failed_commits = Arc::new(AtomicU64::new(0));
        let failed = failed_commits.clone();
        let (db, indexed, woken, count) = (
            storage.clone(),
            index.clone(),
            notify.clone(),
            commits.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("tenon-commit".into())
            .spawn(move || commit_loop(&db, &indexed, &woken, [&count, &failed], &jobs));
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(error) => {
                tracing::error!(%error, "cannot start the committer thread; every write will fail");
                None
            }
        };
        Queue {
            storage,
            index,
            notify,
            committer: Arc::new(Committer {
                inbox: Some(inbox),
                thread,
            }),
            tokens: Arc::default(),
            visibility,
            commits,
            failed_commits,
        }
    }

    /// False once a commit has failed: the database then refuses writes until it is
    /// reopened, so the process should be restarted (everything acknowledged is
    /// durable, so a restart loses nothing).
    pub fn healthy(&self) -> bool {
        self.failed_commits.load(Ordering::Relaxed) == 0
    }

    /// Durable transactions committed so far (each may hold many writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Notified when a message may have become ready in `queue`: one waiting worker
    /// wakes per new message, not every worker of every queue.
    pub fn notifier(&self, queue: &str) -> Arc<Notify> {
        self.notify.get(queue)
    }

    async fn write(&self, write: Write) -> Result<Accepted, StorageError> {
        let (done, result) = oneshot::channel();
        let inbox = self
            .committer
            .inbox
            .as_ref()
            .ok_or(StorageError::CommitterGone)?;
        inbox
            .send(Job { write, done })
            .map_err(|_| StorageError::CommitterGone)?;
        result.await.map_err(|_| StorageError::CommitterGone)?
    }

    /// Commit messages durably; only then may they be acknowledged.
    pub async fn enqueue(&self, items: Vec<(String, Envelope)>) -> Result<(), StorageError> {
        self.write(Write::Enqueue {
            items,
            claim: None,
            log: true,
        })
        .await
        .map(drop)
    }

    /// Commit messages durably unless their idempotency key was used before; the
    /// check and the commit are one transaction, so two racing requests with one key
    /// cannot both get through.
    pub async fn enqueue_claimed(
        &self,
        items: Vec<(String, Envelope)>,
        claim: IdempotencyClaim,
    ) -> Result<Accepted, StorageError> {
        self.write(Write::Enqueue {
            items,
            claim: Some(claim),
            log: true,
        })
        .await
    }

    /// The live idempotency record of a key, if any.
    pub fn idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let Some(value) = table.get((scope, key))? else {
            return Ok(None);
        };
        let record: IdempotencyRecord = decode(value.value())?;
        Ok((record.expires_ms > now_ms()).then_some(record))
    }

    /// Forget expired idempotency records, and outcomes and events older than `keep`.
    /// Dead letters stay until an operator redrives or discards them.
    pub async fn sweep(&self, keep: Duration) -> Result<(), StorageError> {
        let now = now_ms();
        let before_ms = now.saturating_sub(keep.as_millis() as u64);
        self.write(Write::Sweep {
            now_ms: now,
            before_ms,
        })
        .await?;
        crate::audit::sweep(self.storage.db(), before_ms).map(drop)
    }

    /// The events with offsets in `from..=to`.
    pub fn events(&self, from: u64, to: u64) -> Result<Vec<Event>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        events::read(&txn.open_table(EVENTS)?, from, to)
    }

    /// The offset of the first event appended at or after `at_ms`, if any.
    pub fn offset_at(&self, at_ms: u64) -> Result<Option<u64>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(EVENTS)?;
        for entry in table.iter()? {
            let (k, v) = entry?;
            let event: Event = decode(v.value())?;
            if event.at_ms >= at_ms {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }

    /// Re-run the messages a flow accepted at offsets `from..=to` from its first
    /// stage, on the current plugin versions. They keep their ids, so downstream
    /// effects stay single. Returns the offsets replayed.
    pub async fn replay(
        &self,
        flow: &str,
        route: &[String],
        from: u64,
        to: u64,
    ) -> Result<Vec<u64>, StorageError> {
        let Some(first) = route.first() else {
            return Ok(Vec::new());
        };
        let mut offsets = Vec::new();
        let mut items = Vec::new();
        for event in self.events(from, to)? {
            if let (true, EventBody::Accepted { mut envelope }) = (event.flow == flow, event.body) {
                envelope.stage = 0;
                envelope.route = route.to_vec();
                envelope.attempts.clear();
                envelope.not_before_ms = 0;
                envelope.trail.truncate(1);
                offsets.push(event.offset);
                items.push((queue_name(flow, first), envelope));
            }
        }
        if !items.is_empty() {
            self.write(Write::Enqueue {
                items,
                claim: None,
                log: false,
            })
            .await?;
        }
        Ok(offsets)
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(DEAD)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(decode::<DeadLetter>(entry?.1.value())?);
        }
        out.sort_by_key(|d| d.outcome.at_ms);
        Ok(out)
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(DEAD)?;
        table.get(id)?.map(|v| decode(v.value())).transpose()
    }

    /// Put a dead letter back in front of the stage that failed it, with a fresh
    /// count of attempts; it then runs on that stage's current plugin version.
    /// `false` when there is no such dead letter.
    pub async fn redrive(&self, id: &str) -> Result<bool, StorageError> {
        let applied = self.write(Write::Redrive { id: id.to_owned() }).await?;
        Ok(applied == Accepted::Committed)
    }

    /// Forget a dead letter; `false` when there is no such dead letter.
    pub async fn discard(&self, id: &str) -> Result<bool, StorageError> {
        let applied = self.write(Write::Discard { id: id.to_owned() }).await?;
        Ok(applied == Accepted::Committed)
    }

    /// The outcome recorded for a message, if it has one.
    pub fn outcome(&self, id: &str) -> Result<Option<Outcome>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(OUTCOMES)?;
        table.get(id)?.map(|v| decode(v.value())).transpose()
    }

    /// Lease the oldest message of `queue` that is ready and whose key is not held by
    /// an earlier message (the lease index: O(log n) however long the queue is).
    pub fn lease(&self, queue: &str) -> Result<Option<Lease>, StorageError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        let seq = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lease(queue, token, self.visibility, Instant::now(), now_ms());
        let Some(seq) = seq else {
            return Ok(None);
        };
        // Leased: no one else removes it before we complete it.
        let read = || -> Result<Option<Envelope>, StorageError> {
            let txn = self.storage.db().begin_read()?;
            let table = txn.open_table(QUEUE)?;
            table
                .get((queue, seq))?
                .map(|v| decode(v.value()))
                .transpose()
        };
        match read() {
            Ok(Some(envelope)) => Ok(Some(Lease {
                queue: queue.to_owned(),
                seq,
                token,
                envelope,
            })),
            other => {
                self.index
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .release(queue, seq, now_ms());
                other.and(Ok(None))
            }
        }
    }

    /// Commit the result of a leased message, in one transaction with its ack. A lease
    /// that timed out and went to another worker is refused: that worker owns it now.
    pub async fn complete(&self, lease: Lease, completion: Completion) -> Result<(), StorageError> {
        self.complete_with_kv(lease, completion, None).await
    }

    /// [`Queue::complete`], with the step's key-value writes in the same transaction:
    /// they are durable exactly when its result is.
    pub async fn complete_with_kv(
        &self,
        lease: Lease,
        completion: Completion,
        kv: Option<KvWrites>,
    ) -> Result<(), StorageError> {
        let slot = (lease.queue, lease.seq);
        let begun = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .begin_complete(&slot.0, slot.1, lease.token);
        if begun.is_err() {
            return Err(StorageError::StaleLease {
                queue: slot.0,
                seq: slot.1,
            });
        }
        let result = match self
            .write(Write::Complete {
                slot: slot.clone(),
                completion,
                kv,
            })
            .await
        {
            Ok(Accepted::OverQuota(reason)) => Err(StorageError::OverQuota(reason)),
            other => other.map(drop),
        };
        if result.is_err() {
            // Not committed: the message stays, and is leased again.
            self.index
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release(&slot.0, slot.1, now_ms());
            self.notify.get(&slot.0).notify_one();
        }
        result
    }

    /// The queues that hold messages.
    pub fn queue_names(&self) -> Result<std::collections::BTreeSet<String>, StorageError> {
        Ok(self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue_names())
    }

    /// Number of messages waiting in (or leased from) a queue.
    pub fn depth(&self, queue: &str) -> Result<usize, StorageError> {
        Ok(self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .depth(queue))
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
    pub fn outcomes(&self, root: &MessageId) -> Result<Vec<Outcome>, StorageError> {
        let txn = self.storage.db().begin_read()?;
        let table = txn.open_table(OUTCOMES)?;
        let mut out = Vec::new();
        for entry in table.range(root.as_str()..)? {
            let (k, v) = entry?;
            let id = MessageId::from(k.value());
            // Ids sort by their root's text: past the lineage, stop.
            if !id.as_str().starts_with(root.as_str()) {
                break;
            }
            if id.descends_from(root) {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }
}

/// The committer: take every write waiting, apply them in one transaction, commit
/// durably, then answer each writer. Runs until every `Queue` is dropped.
fn commit_loop(
    storage: &Storage,
    index: &Mutex<Index>,
    notify: &Notifiers,
    [commits, failed]: [&AtomicU64; 2],
    jobs: &mpsc::Receiver<Job>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = apply(storage, &batch);
        if result.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else if let Err(error) = &result {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, writes = batch.len(), "commit failed; none of its writes is acknowledged");
        }
        if let Ok(applied) = &result {
            // Committed: the lease index follows what the queue table now holds. (A
            // failed or refused completion releases its own lease in `Queue::complete`.)
            let now = now_ms();
            let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
            for op in applied.iter().flat_map(|(_, ops)| ops) {
                match op {
                    IndexOp::Insert {
                        queue,
                        seq,
                        key,
                        not_before_ms,
                    } => index.insert(queue, *seq, key, *not_before_ms, now),
                    IndexOp::Remove { queue, seq } => index.remove(queue, *seq, now),
                    IndexOp::Retry {
                        queue,
                        seq,
                        not_before_ms,
                    } => index.retry(queue, *seq, *not_before_ms, now),
                }
            }
            drop(index);
            for job in &batch {
                notify.wake_for(&job.write);
            }
        }
        match result {
            Ok(applied) => {
                for (job, (accepted, _)) in batch.into_iter().zip(applied) {
                    let _ = job.done.send(Ok(accepted));
                }
            }
            Err(error) => {
                for job in batch {
                    let _ = job
                        .done
                        .send(Err(StorageError::CommitFailed(error.to_string())));
                }
            }
        }
    }
}

/// One [`Notify`] per queue, created on first use.
#[derive(Debug, Default)]
struct Notifiers(Mutex<HashMap<String, Arc<Notify>>>);

impl Notifiers {
    fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Wake the workers that a committed write may have given work: one per new
    /// message in its queue, and one in a queue whose message finished (the next
    /// message of that key may be ready now). Rare writes wake everyone.
    fn wake_for(&self, write: &Write) {
        match write {
            Write::Enqueue { items, .. } => {
                for (queue, _) in items {
                    self.get(queue).notify_one();
                }
            }
            Write::Complete {
                slot, completion, ..
            } => {
                if let Completion::Forward { outputs } = completion {
                    for (queue, _) in outputs {
                        self.get(queue).notify_one();
                    }
                }
                self.get(&slot.0).notify_one();
            }
            Write::Redrive { .. } | Write::Discard { .. } | Write::Sweep { .. } => {
                let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                for notify in map.values() {
                    notify.notify_waiters();
                }
            }
        }
    }
}

/// Apply a batch in one transaction and commit it: what each write came to, and how
/// the lease index changes.
fn apply(storage: &Storage, batch: &[Job]) -> Result<Vec<(Accepted, Vec<IndexOp>)>, StorageError> {
    let txn = storage.db().begin_write()?;
    let mut applied = Vec::with_capacity(batch.len());
    for job in batch {
        let mut ops = Vec::new();
        let accepted = apply_one(&txn, &job.write, &mut ops)?;
        applied.push((accepted, ops));
    }
    txn.commit()?;
    Ok(applied)
}

/// The lease index of the queue table as it is on disk (at open).
fn load_index(storage: &Storage) -> Result<Index, StorageError> {
    let txn = storage.db().begin_read()?;
    let table = txn.open_table(QUEUE)?;
    let mut index = Index::default();
    let now = now_ms();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let (queue, seq) = k.value();
        let envelope: Envelope = decode(v.value())?;
        index.insert(
            queue,
            seq,
            &envelope.message.key,
            envelope.not_before_ms,
            now,
        );
    }
    Ok(index)
}

fn apply_one(
    txn: &WriteTransaction,
    write: &Write,
    ops: &mut Vec<IndexOp>,
) -> Result<Accepted, StorageError> {
    let mut queue = txn.open_table(QUEUE)?;
    let append = |queue: &mut redb::Table<(&str, u64), &[u8]>,
                  items: &mut dyn Iterator<Item = (&str, &Envelope)>,
                  ops: &mut Vec<IndexOp>| {
        let mut meta = txn.open_table(META)?;
        let mut seq = meta.get("next_seq")?.map_or(1, |v| v.value());
        for (name, envelope) in items {
            queue.insert((name, seq), encode(envelope)?.as_slice())?;
            ops.push(IndexOp::Insert {
                queue: name.to_owned(),
                seq,
                key: envelope.message.key.clone(),
                not_before_ms: envelope.not_before_ms,
            });
            seq += 1;
        }
        meta.insert("next_seq", seq)?;
        Ok::<(), StorageError>(())
    };
    match write {
        Write::Enqueue { items, claim, log } => {
            if let Some(claim) = claim {
                let mut records = txn.open_table(IDEMPOTENCY)?;
                let earlier = records
                    .get((claim.scope.as_str(), claim.key.as_str()))?
                    .map(|v| decode::<IdempotencyRecord>(v.value()))
                    .transpose()?
                    .filter(|r| r.expires_ms > now_ms());
                if let Some(earlier) = earlier {
                    return Ok(if earlier.payload == claim.payload {
                        Accepted::Duplicate(earlier.ids)
                    } else {
                        Accepted::Conflict
                    });
                }
                let record = IdempotencyRecord {
                    payload: claim.payload.clone(),
                    ids: items.iter().map(|(_, e)| e.message.id.clone()).collect(),
                    expires_ms: claim.expires_ms,
                };
                records.insert(
                    (claim.scope.as_str(), claim.key.as_str()),
                    encode(&record)?.as_slice(),
                )?;
            }
            if *log {
                let accepted = items.iter().map(|(_, e)| {
                    (
                        e.flow.clone(),
                        EventBody::Accepted {
                            envelope: e.clone(),
                        },
                    )
                });
                events::append(txn, now_ms(), accepted)?;
            }
            append(
                &mut queue,
                &mut items.iter().map(|(n, e)| (n.as_str(), e)),
                ops,
            )?
        }
        Write::Redrive { id } => {
            let mut dead = txn.open_table(DEAD)?;
            let Some(letter) = dead
                .remove(id.as_str())?
                .map(|v| decode::<DeadLetter>(v.value()))
            else {
                return Ok(Accepted::Missing);
            };
            let mut envelope = letter?.envelope;
            envelope.attempts.clear();
            envelope.not_before_ms = 0;
            txn.open_table(OUTCOMES)?.remove(id.as_str())?;
            let Some(stage) = envelope.route.get(envelope.stage as usize) else {
                return Ok(Accepted::Missing);
            };
            let name = queue_name(&envelope.flow, stage);
            append(
                &mut queue,
                &mut std::iter::once((name.as_str(), &envelope)),
                ops,
            )?;
        }
        Write::Discard { id } => {
            if txn.open_table(DEAD)?.remove(id.as_str())?.is_none() {
                return Ok(Accepted::Missing);
            }
        }
        Write::Sweep { now_ms, before_ms } => {
            let mut outcomes = txn.open_table(OUTCOMES)?;
            let mut old = Vec::new();
            for entry in outcomes.iter()? {
                let (k, v) = entry?;
                if decode::<Outcome>(v.value())?.at_ms < *before_ms {
                    old.push(k.value().to_owned());
                }
                if old.len() >= MAX_SWEEP {
                    break;
                }
            }
            for id in &old {
                outcomes.remove(id.as_str())?;
            }
            // The log is in time order: drop its head up to the first recent event.
            let mut log = txn.open_table(EVENTS)?;
            let mut head = Vec::new();
            for entry in log.iter()? {
                let (k, v) = entry?;
                if decode::<Event>(v.value())?.at_ms >= *before_ms || head.len() >= MAX_SWEEP {
                    break;
                }
                head.push(k.value());
            }
            for offset in head {
                log.remove(offset)?;
            }
            let mut records = txn.open_table(IDEMPOTENCY)?;
            let mut expired = Vec::new();
            for entry in records.iter()? {
                let (k, v) = entry?;
                if decode::<IdempotencyRecord>(v.value())?.expires_ms <= *now_ms {
                    let (scope, key) = k.value();
                    expired.push((scope.to_owned(), key.to_owned()));
                }
            }
            for (scope, key) in &expired {
                records.remove((scope.as_str(), key.as_str()))?;
            }
        }
        Write::Complete {
            slot,
            completion,
            kv,
        } => {
            if let Some(kv) = kv {
                // Checked before anything of the step is written: over the quota (by
                // concurrent calls that each fitted), the whole step waits for a retry.
                if let Some(reason) = crate::store::kv_over_quota(txn, kv)? {
                    return Ok(Accepted::OverQuota(reason));
                }
                crate::store::apply_kv(txn, kv)?;
            }
            let slot = (slot.0.as_str(), slot.1);
            match completion {
                Completion::Retry(envelope) => {
                    // Same slot: the message keeps its place in its key's order.
                    queue.insert(slot, encode(envelope.as_ref())?.as_slice())?;
                    ops.push(IndexOp::Retry {
                        queue: slot.0.to_owned(),
                        seq: slot.1,
                        not_before_ms: envelope.not_before_ms,
                    });
                }
                Completion::Forward { outputs } => {
                    queue.remove(slot)?;
                    ops.push(IndexOp::Remove {
                        queue: slot.0.to_owned(),
                        seq: slot.1,
                    });
                    // A copy entering a subscribing flow (id `<id>@<flow>`) is accepted
                    // by that flow: logged like ingress, so the flow's replay covers it.
                    let entering: Vec<(String, EventBody)> = outputs
                        .iter()
                        .filter(|(_, e)| {
                            e.stage == 0 && e.message.id.entered() == Some(e.flow.as_str())
                        })
                        .map(|(_, e)| {
                            (
                                e.flow.clone(),
                                EventBody::Accepted {
                                    envelope: e.clone(),
                                },
                            )
                        })
                        .collect();
                    if !entering.is_empty() {
                        events::append(txn, now_ms(), entering)?;
                    }
                    append(
                        &mut queue,
                        &mut outputs.iter().map(|(q, e)| (q.as_str(), e)),
                        ops,
                    )?;
                }
                Completion::Finish(outcome) => {
                    let waiting = queue.remove(slot)?.map(|v| decode::<Envelope>(v.value()));
                    ops.push(IndexOp::Remove {
                        queue: slot.0.to_owned(),
                        seq: slot.1,
                    });
                    if let (OutcomeKind::DeadLetter { .. }, Some(waiting)) =
                        (&outcome.result, waiting)
                    {
                        let mut envelope = waiting?;
                        envelope.attempts = outcome.attempts.clone();
                        let dead = DeadLetter {
                            envelope,
                            outcome: outcome.as_ref().clone(),
                        };
                        txn.open_table(DEAD)?
                            .insert(outcome.id.as_str(), encode(&dead)?.as_slice())?;
                    }
                    if let OutcomeKind::Rejected { reasons } = &outcome.result {
                        let rejected = EventBody::Rejected {
                            id: outcome.id.clone(),
                            key: outcome.key.clone(),
                            kind: outcome.kind.clone(),
                            plugin: outcome.plugin.clone(),
                            reasons: reasons.clone(),
                        };
                        events::append(txn, outcome.at_ms, [(outcome.flow.clone(), rejected)])?;
                    }
                    txn.open_table(OUTCOMES)?
                        .insert(outcome.id.as_str(), encode(outcome.as_ref())?.as_slice())?;
                }
            }
        }
    }
    Ok(Accepted::Committed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StoredMessage;

    fn envelope(id: &str, key: &str) -> Envelope {
        let message = StoredMessage {
            id: id.into(),
            key: key.into(),
            kind: "QuoteApproved".into(),
            content_type: "application/json".into(),
            headers: vec![],
            body: b"{}".to_vec(),
        };
        Envelope::entering("f", &["s".to_owned()], message, 0)
    }

    fn open() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(Storage::open(dir.path()).unwrap());
        (dir, queue)
    }

    #[tokio::test]
    async fn a_message_is_leased_once_and_forwarded_with_its_ack() {
        let (_dir, q) = open();
        q.enqueue(vec![("f/0".into(), envelope("m1", "k1"))])
            .await
            .unwrap();
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
                outputs: vec![("f/1".into(), out.clone())],
            },
        )
        .await
        .unwrap();
        assert_eq!(q.depth("f/0").unwrap(), 0);
        assert_eq!(q.lease("f/1").unwrap().unwrap().envelope, out);
    }

    #[tokio::test]
    async fn a_key_is_processed_in_order_and_other_keys_pass() {
        let (_dir, q) = open();
        q.enqueue(vec![
            ("f/0".into(), envelope("a1", "A")),
            ("f/0".into(), envelope("a2", "A")),
            ("f/0".into(), envelope("b1", "B")),
        ])
        .await
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
        q.complete(a1, Completion::Retry(Box::new(retry)))
            .await
            .unwrap();
        assert!(q.lease("f/0").unwrap().is_none());
    }

    #[tokio::test]
    async fn a_lost_lease_is_ready_again_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::new(Storage::open(dir.path()).unwrap());
            q.enqueue(vec![("f/0".into(), envelope("m1", "k"))])
                .await
                .unwrap();
            let _lease = q.lease("f/0").unwrap().unwrap();
            // the worker dies here: no complete
        }
        let q = Queue::new(Storage::open(dir.path()).unwrap());
        assert_eq!(q.lease("f/0").unwrap().unwrap().envelope.message.id, "m1");
    }

    #[tokio::test]
    async fn outcomes_are_found_by_lineage() {
        let (_dir, q) = open();
        q.enqueue(vec![
            ("f/0".into(), envelope("m1", "k")),
            ("f/0".into(), envelope("m10", "k2")),
        ])
        .await
        .unwrap();
        for id in ["m1", "m10"] {
            let lease = q.lease("f/0").unwrap().unwrap();
            let outcome = Outcome {
                id: format!("{id}.0").into(),
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
                .await
                .unwrap();
        }
        let found = q.outcomes(&"m1".into()).unwrap();
        assert_eq!(found.len(), 1, "m10's outcome is not m1's");
        assert_eq!(found[0].id, "m1.0");
    }

    #[tokio::test]
    async fn a_late_ack_after_the_lease_expired_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::with_visibility(
            Storage::open(dir.path()).unwrap(),
            Duration::from_millis(50),
        );
        q.enqueue(vec![("f/0".into(), envelope("m1", "k"))])
            .await
            .unwrap();
        let stalled = q.lease("f/0").unwrap().unwrap();
        assert!(
            q.lease("f/0").unwrap().is_none(),
            "held while the lease runs"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let second = q
            .lease("f/0")
            .unwrap()
            .expect("the expired lease goes to another worker");
        assert_eq!(second.envelope.message.id, "m1");

        let forward = |id: &str| Completion::Forward {
            outputs: vec![("f/1".into(), envelope(id, "k"))],
        };
        let err = q
            .complete(stalled, forward("from-stalled"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "lease on f/0#1 expired and was given to another worker; late ack refused"
        );
        q.complete(second, forward("from-second")).await.unwrap();
        let out: Vec<String> = q
            .pending()
            .unwrap()
            .into_iter()
            .map(|e| e.message.id.to_string())
            .collect();
        assert_eq!(
            out,
            ["from-second"],
            "the message went forward exactly once"
        );
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_all_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::new(Storage::open(dir.path()).unwrap());
            let writes = (0..200).map(|i| {
                q.enqueue(vec![(
                    "f/0".into(),
                    envelope(&format!("m{i}"), &format!("k{i}")),
                )])
            });
            for result in futures::future::join_all(writes).await {
                result.unwrap();
            }
            assert!(
                q.commits() < 200,
                "{} commits for 200 writes: no grouping",
                q.commits()
            );
        }
        let q = Queue::new(Storage::open(dir.path()).unwrap());
        assert_eq!(
            q.depth("f/0").unwrap(),
            200,
            "every acknowledged write survives a reopen"
        );
    }

    #[tokio::test]
    async fn the_database_stays_bounded_under_a_steady_load() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(Storage::open(dir.path()).unwrap());
        let file = dir.path().join("tenon.redb");
        let mut sizes = Vec::new();
        for round in 0..12 {
            let batch: Vec<(String, Envelope)> = (0..300)
                .map(|i| {
                    let mut e = envelope(&format!("r{round:02}-{i:04}"), &format!("k{i}"));
                    e.message.body = vec![7; 2048];
                    ("f/0".to_owned(), e)
                })
                .collect();
            q.enqueue(batch).await.unwrap();
            while let Some(lease) = q.lease("f/0").unwrap() {
                let env = lease.envelope.clone();
                let outcome = Outcome {
                    id: env.message.id.clone(),
                    root: env.root.clone(),
                    flow: "f".into(),
                    key: env.message.key.clone(),
                    kind: env.message.kind.clone(),
                    plugin: "sink".into(),
                    trail: vec![],
                    attempts: vec![],
                    at_ms: now_ms(),
                    result: OutcomeKind::Delivered {
                        reference: "ERP-1".into(),
                        detail: None,
                    },
                };
                q.complete(lease, Completion::Finish(Box::new(outcome)))
                    .await
                    .unwrap();
            }
            // Retention zero: everything finished is past it.
            tokio::time::sleep(Duration::from_millis(2)).await;
            q.sweep(Duration::ZERO).await.unwrap();
            sizes.push(std::fs::metadata(&file).unwrap().len());
        }
        assert_eq!(q.depth("f/0").unwrap(), 0);
        assert!(
            q.events(1, u64::MAX).unwrap().is_empty(),
            "old events swept"
        );
        assert!(
            q.outcome("r11-0000").unwrap().is_none(),
            "old outcomes swept"
        );
        // redb reuses freed pages at its own pace: compare with the largest of the
        // first rounds, not with one that happened to be small.
        let settled = sizes[..4].iter().copied().max().unwrap();
        let last = *sizes.last().unwrap();
        assert!(
            last <= settled + settled / 4,
            "the file keeps growing: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn idempotency_keys_expire_and_are_swept() {
        let (_dir, q) = open();
        let claim = |payload: &str, expires_ms: u64| IdempotencyClaim {
            scope: "cpq".into(),
            key: "K".into(),
            payload: payload.into(),
            expires_ms,
        };
        let first = q.enqueue_claimed(
            vec![("f/0".into(), envelope("m1", "k"))],
            claim("a", now_ms() + 60_000),
        );
        assert_eq!(first.await.unwrap(), Accepted::Committed);
        let again = q.enqueue_claimed(
            vec![("f/0".into(), envelope("m2", "k"))],
            claim("a", now_ms() + 60_000),
        );
        assert_eq!(again.await.unwrap(), Accepted::Duplicate(vec!["m1".into()]));
        let other = q.enqueue_claimed(
            vec![("f/0".into(), envelope("m3", "k"))],
            claim("b", now_ms() + 60_000),
        );
        assert_eq!(other.await.unwrap(), Accepted::Conflict);

        // A key past its retention is forgotten: the same key is free again.
        let stale = IdempotencyClaim {
            key: "old".into(),
            ..claim("a", now_ms() - 1)
        };
        assert_eq!(
            q.enqueue_claimed(vec![("f/0".into(), envelope("m4", "k4"))], stale.clone())
                .await
                .unwrap(),
            Accepted::Committed
        );
        assert!(
            q.idempotency("cpq", "old").unwrap().is_none(),
            "expired records are not answered from"
        );
        q.sweep(Duration::from_secs(3600)).await.unwrap();
        let txn = q.storage.db().begin_read().unwrap();
        let table = txn.open_table(IDEMPOTENCY).unwrap();
        assert!(table.get(("cpq", "old")).unwrap().is_none(), "swept");
        assert!(
            table.get(("cpq", "K")).unwrap().is_some(),
            "live records stay"
        );
        drop(table);
        drop(txn);
        let reuse = IdempotencyClaim {
            payload: "other".into(),
            ..stale
        };
        assert_eq!(
            q.enqueue_claimed(vec![("f/0".into(), envelope("m5", "k5"))], reuse)
                .await
                .unwrap(),
            Accepted::Committed
        );
    }
}
