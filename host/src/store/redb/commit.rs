//! The committer: every write of the redb store goes through one thread, which takes
//! all the writes waiting, applies them in one transaction, commits it durably
//! (fsync), and only then answers each writer. Under load many messages share one
//! fsync; no writer is answered before its data is durable, and a failed commit
//! fails every write in it (nothing in it was acknowledged).

use super::by_time;
use super::events::{self, EVENTS};
use super::index::Index;
use super::kv::{apply_kv, kv_over_quota};
use super::{DEAD, EXCEPTIONS, IDEMPOTENCY, QUEUE, decode, encode};
use crate::model::{
    DeadLetter, Directive, Envelope, Event, EventBody, IdempotencyClaim, IdempotencyRecord,
    Outcome, OutcomeKind, now_ms, queue_name,
};
use crate::store::node::META;
use crate::store::{Completion, Ended, Enqueued, KvWrites, NodeDb, StoreError};
use redb::{ReadableTable, WriteTransaction};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use tokio::sync::{Notify, oneshot};

/// Most outcomes, events or idempotency records one sweep removes (the next sweep
/// takes the rest).
pub(super) const MAX_SWEEP: usize = 50_000;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;

/// What a write came to, once its transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    /// Written.
    Done,
    /// An enqueue's idempotency claim met an earlier request.
    Claimed(Enqueued),
    /// What the write was about (a dead letter) does not exist: nothing written.
    Missing,
    /// A step's key-value writes would take the namespace over its quota: nothing of
    /// the step was written.
    OverQuota(String),
}

type Slot = (String, u64);

/// How the lease index changes once a write is committed.
#[derive(Debug)]
pub(super) enum IndexOp {
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
pub(super) struct Job {
    pub(super) write: Write,
    pub(super) done: oneshot::Sender<Result<Applied, StoreError>>,
}

pub(super) enum Write {
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
    /// Key-value writes outside a step.
    Kv(KvWrites),
    /// Forget idempotency records that expired at or before this time.
    Sweep {
        now_ms: u64,
        /// Outcomes and events from before this time go.
        before_ms: u64,
    },
    /// Put a dead letter back in front of the stage that failed it.
    Redrive { id: String },
    /// Forget a dead letter (its outcome stays).
    Discard { id: String },
    /// Put an exception back in front of its stage with a person's decision.
    Decide { id: String, directive: Directive },
}

/// The committer thread's inbox; dropping the last handle stops and joins it, so the
/// database is closed when the store is.
#[derive(Debug)]
pub(super) struct Committer {
    pub(super) inbox: Option<mpsc::Sender<Job>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.inbox.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The committer: take every write waiting, apply them in one transaction, commit
/// durably, then answer each writer. Runs until the store is dropped.
pub(super) fn commit_loop(
    storage: &NodeDb,
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
            // failed or refused completion releases its own lease in `RedbStore::complete`.)
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
                        .send(Err(StoreError::CommitFailed(error.to_string())));
                }
            }
        }
    }
}

/// One [`Notify`] per queue, created on first use.
#[derive(Debug, Default)]
pub(super) struct Notifiers(Mutex<HashMap<String, Arc<Notify>>>);

impl Notifiers {
    pub(super) fn get(&self, queue: &str) -> Arc<Notify> {
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
                if let Completion::Forward { outputs, .. }
                | Completion::Finish {
                    published: outputs, ..
                } = completion
                {
                    for (queue, _) in outputs {
                        self.get(queue).notify_one();
                    }
                }
                self.get(&slot.0).notify_one();
            }
            Write::Kv(_) => {}
            Write::Redrive { .. }
            | Write::Discard { .. }
            | Write::Decide { .. }
            | Write::Sweep { .. } => {
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
fn apply(storage: &NodeDb, batch: &[Job]) -> Result<Vec<(Applied, Vec<IndexOp>)>, StoreError> {
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

fn apply_one(
    txn: &WriteTransaction,
    write: &Write,
    ops: &mut Vec<IndexOp>,
) -> Result<Applied, StoreError> {
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
        Ok::<(), StoreError>(())
    };
    // A step's outputs, or what a message's end publishes. A copy entering a
    // subscribing flow (id `<id>@<flow>`) is accepted by that flow: logged like
    // ingress, so the flow's replay covers it; so is one that ran there in the lease
    // (`entered`), never queued.
    let write_outputs = |queue: &mut redb::Table<(&str, u64), &[u8]>,
                         outputs: &[(String, Envelope)],
                         entered: &[Envelope],
                         ops: &mut Vec<IndexOp>| {
        let accepted: Vec<(String, EventBody)> = outputs
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.is_entering())
            .chain(entered)
            .map(EventBody::accepted)
            .collect();
        if !accepted.is_empty() {
            events::append(txn, now_ms(), accepted)?;
        }
        append(
            queue,
            &mut outputs.iter().map(|(q, e)| (q.as_str(), e)),
            ops,
        )
    };
    match write {
        Write::Enqueue { items, claim, log } => {
            if let Some(claim) = claim {
                let slot = (claim.scope.as_str(), claim.key.as_str());
                let earlier = txn
                    .open_table(IDEMPOTENCY)?
                    .get(slot)?
                    .map(|v| decode::<IdempotencyRecord>(v.value()))
                    .transpose()?;
                match earlier {
                    Some(earlier) if earlier.expires_ms > now_ms() => {
                        return Ok(if earlier.payload == claim.payload {
                            Applied::Claimed(Enqueued::Duplicate(earlier.ids))
                        } else {
                            Applied::Claimed(Enqueued::Conflict)
                        });
                    }
                    // Expired (not swept yet): the key is free, its record replaced.
                    earlier => {
                        let record = IdempotencyRecord {
                            payload: claim.payload.clone(),
                            ids: items.iter().map(|(_, e)| e.message.id.clone()).collect(),
                            expires_ms: claim.expires_ms,
                        };
                        by_time::put_idempotency(txn, slot, &record, earlier.as_ref())?;
                    }
                }
            }
            if *log {
                let accepted = items.iter().map(|(_, e)| EventBody::accepted(e));
                events::append(txn, now_ms(), accepted)?;
            }
            append(
                &mut queue,
                &mut items.iter().map(|(n, e)| (n.as_str(), e)),
                ops,
            )?
        }
        Write::Redrive { id } | Write::Decide { id, .. } => {
            // Read first: nothing is removed unless the message can go back.
            let parked = match write {
                Write::Redrive { .. } => txn
                    .open_table(DEAD)?
                    .get(id.as_str())?
                    .map(|v| v.value().to_vec()),
                _ => txn
                    .open_table(EXCEPTIONS)?
                    .get(id.as_str())?
                    .map(|v| v.value().to_vec()),
            };
            let Some(letter) = parked.map(|v| decode::<DeadLetter>(&v)).transpose()? else {
                return Ok(Applied::Missing);
            };
            let mut envelope = letter.envelope;
            let Some(stage) = envelope.route.get(envelope.stage as usize).cloned() else {
                return Ok(Applied::Missing);
            };
            match write {
                Write::Redrive { .. } => {
                    by_time::take_dead(txn, id)?;
                }
                _ => {
                    txn.open_table(EXCEPTIONS)?.remove(id.as_str())?;
                }
            }
            if let Write::Decide { directive, .. } = write {
                envelope.directive = Some(directive.clone());
            }
            envelope.attempts.clear();
            envelope.not_before_ms = 0;
            by_time::remove_outcome(txn, id)?;
            let stage = &stage;
            let name = queue_name(&envelope.flow, stage);
            append(
                &mut queue,
                &mut std::iter::once((name.as_str(), &envelope)),
                ops,
            )?;
        }
        Write::Discard { id } => {
            if by_time::take_dead(txn, id)?.is_none() {
                return Ok(Applied::Missing);
            }
        }
        Write::Kv(writes) => {
            if let Some(reason) = kv_over_quota(txn, writes)? {
                return Ok(Applied::OverQuota(reason));
            }
            apply_kv(txn, writes)?;
        }
        Write::Sweep { now_ms, before_ms } => {
            // Outcomes and idempotency records: the head of their time indexes.
            let swept = by_time::sweep(txn, *now_ms, *before_ms, MAX_SWEEP)?;
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
            for offset in &head {
                log.remove(*offset)?;
            }
            tracing::debug!(
                outcomes = swept.outcomes,
                idempotency = swept.idempotency,
                events = head.len(),
                "swept"
            );
        }
        Write::Complete {
            slot,
            completion,
            kv,
        } => {
            // The step's writes, and those of the calls that ended messages in its
            // lease (a fused sink's).
            let ended = match completion {
                Completion::Forward { ended, .. } => ended.as_slice(),
                _ => &[],
            };
            let writes: Vec<&KvWrites> = kv
                .iter()
                .chain(ended.iter().filter_map(|e| e.kv.as_ref()))
                .collect();
            // Checked before anything of the step is written: over the quota (by
            // concurrent calls that each fitted), the whole step waits for a retry.
            for kv in &writes {
                if let Some(reason) = kv_over_quota(txn, kv)? {
                    return Ok(Applied::OverQuota(reason));
                }
            }
            for kv in writes {
                apply_kv(txn, kv)?;
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
                Completion::Forward {
                    outputs,
                    ended,
                    entered,
                } => {
                    queue.remove(slot)?;
                    ops.push(IndexOp::Remove {
                        queue: slot.0.to_owned(),
                        seq: slot.1,
                    });
                    write_outputs(&mut queue, outputs, entered, ops)?;
                    for Ended {
                        envelope,
                        outcome,
                        published,
                        ..
                    } in ended
                    {
                        write_outputs(&mut queue, published, &[], ops)?;
                        let waiting = parked(&outcome.result).then(|| envelope.clone());
                        record_end(txn, outcome, waiting)?;
                    }
                }
                Completion::Finish { outcome, published } => {
                    let removed = queue.remove(slot)?;
                    let waiting = match (parked(&outcome.result), removed) {
                        (true, Some(v)) => Some(decode::<Envelope>(v.value())?),
                        _ => None,
                    };
                    ops.push(IndexOp::Remove {
                        queue: slot.0.to_owned(),
                        seq: slot.1,
                    });
                    write_outputs(&mut queue, published, &[], ops)?;
                    record_end(txn, outcome, waiting)?;
                }
            }
        }
    }
    Ok(Applied::Done)
}

/// Whether an end keeps the message as it waited: a dead letter or an exception.
fn parked(result: &OutcomeKind) -> bool {
    matches!(
        result,
        OutcomeKind::DeadLetter { .. } | OutcomeKind::Held { .. }
    )
}

/// Record how a message ended: its outcome, a rejection's event, and, for a dead
/// letter or an exception, the message as it waited (`waiting`, given when
/// [`parked`]).
fn record_end(
    txn: &WriteTransaction,
    outcome: &Outcome,
    waiting: Option<Envelope>,
) -> Result<(), StoreError> {
    if let Some(mut envelope) = waiting {
        let held = matches!(outcome.result, OutcomeKind::Held { .. });
        envelope.attempts = outcome.attempts.clone();
        let letter = DeadLetter {
            envelope,
            outcome: outcome.clone(),
        };
        match held {
            true => {
                txn.open_table(EXCEPTIONS)?
                    .insert(outcome.id.as_str(), encode(&letter)?.as_slice())?;
            }
            false => by_time::put_dead(txn, &letter)?,
        }
    }
    if let Some(rejected) = EventBody::rejection(outcome) {
        events::append(txn, outcome.at_ms, [(outcome.flow.clone(), rejected)])?;
    }
    by_time::put_outcome(txn, outcome)
}
