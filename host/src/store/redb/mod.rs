//! The default store: redb, in this node's database file.
//!
//! - Every queue is one table keyed by (queue name, sequence); an in-memory lease
//!   index (`index.rs`) knows which message of each queue may run next, so a lease
//!   costs O(log n) however long the queue. Leases are held in memory: after a crash
//!   every unfinished message is simply ready again; a lease that times out is given
//!   to another worker, and the late ack of the first is refused. A message whose
//!   business key has an earlier message leased or waiting for a retry is held back,
//!   so each key is processed in arrival order.
//! - Every write goes through one committer thread (`commit.rs`): group commit, one
//!   durable transaction for all the writes waiting, each answered only once durable.
//!   A step's completion removes its input and writes its outputs, outcome or retry,
//!   its key-value writes and its events in that one transaction.
//! - Outcomes, dead letters and idempotency records each have a time-ordered index
//!   (`by_time.rs`), kept in the same transaction as the record: the retention and
//!   idempotency sweeps read only the head they remove, and the dead-letter listing
//!   only the page it returns, however large the tables.

mod by_time;
mod commit;
mod events;
mod index;
mod kv;
#[cfg(test)]
mod tests;

use crate::model::{
    DeadLetter, Directive, Envelope, Event, IdempotencyClaim, IdempotencyRecord, MessageId,
    Outcome, now_ms,
};
use crate::store::{
    Claim, CompleteError, Completion, Enqueued, KvWrites, Lease, NodeDb, Store, StoreError, Ticket,
};
use commit::{Applied, Committer, Job, Notifiers, Write};
use events::EVENTS;
use index::Index;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Queued messages: (queue name, sequence) -> encoded [`Envelope`].
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// Terminal outcome of each message: message id -> encoded [`Outcome`].
const OUTCOMES: TableDefinition<&str, &[u8]> = TableDefinition::new("outcomes");
/// Dead letters: message id -> encoded [`DeadLetter`].
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("dead");
/// Exceptions: messages held for a person, by id (as few as people decide on).
const EXCEPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("exceptions");
/// Idempotency records of ingress: (source, idempotency key) -> encoded
/// [`IdempotencyRecord`].
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(StoreError::damaged)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(StoreError::damaged)
}

/// The redb store; cheap to clone.
#[derive(Clone, Debug)]
pub struct RedbStore {
    node: NodeDb,
    index: Arc<Mutex<Index>>,
    notify: Arc<Notifiers>,
    committer: Arc<Committer>,
    tokens: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
    failed_commits: Arc<AtomicU64>,
}

impl RedbStore {
    /// The store in this node's database (its tables created if new, the time indexes
    /// of a database from before them built).
    pub fn open(node: &NodeDb) -> Result<RedbStore, StoreError> {
        create_tables(node)?;
        let index = Arc::new(Mutex::new(load_index(node)?));
        let notify = Arc::new(Notifiers::default());
        let (inbox, jobs) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let failed_commits = Arc::new(AtomicU64::new(0));
        let (db, indexed, woken, count, failed) = (
            node.clone(),
            index.clone(),
            notify.clone(),
            commits.clone(),
            failed_commits.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("tenon-commit".into())
            .spawn(move || commit::commit_loop(&db, &indexed, &woken, [&count, &failed], &jobs))
            .map_err(|e| StoreError::CommitFailed(format!("cannot start the committer: {e}")))?;
        Ok(RedbStore {
            node: node.clone(),
            index,
            notify,
            committer: Arc::new(Committer {
                inbox: Some(inbox),
                thread: Some(thread),
            }),
            tokens: Arc::default(),
            commits,
            failed_commits,
        })
    }

    /// Durable transactions committed so far (each may hold many writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn write(&self, write: Write) -> Result<Applied, StoreError> {
        let (done, result) = oneshot::channel();
        let inbox = self.committer.inbox.as_ref().ok_or(StoreError::Stopped)?;
        inbox
            .send(Job { write, done })
            .map_err(|_| StoreError::Stopped)?;
        result.await.map_err(|_| StoreError::Stopped)?
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.node.db().begin_read()?)
    }

    /// Lease the oldest message of `queue` that may run now, without waiting.
    fn try_lease(&self, queue: &str, hold: Duration) -> Result<Option<Lease>, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        let seq = self
            .index()
            .lease(queue, token, hold, Instant::now(), now_ms());
        let Some(seq) = seq else {
            return Ok(None);
        };
        // Leased: no one else removes it before we complete it.
        let read = || -> Result<Option<Envelope>, StoreError> {
            let txn = self.read()?;
            let table = txn.open_table(QUEUE)?;
            table
                .get((queue, seq))?
                .map(|v| decode(v.value()))
                .transpose()
        };
        match read() {
            Ok(Some(envelope)) => Ok(Some(Lease {
                envelope,
                ticket: Ticket::Redb {
                    queue: queue.to_owned(),
                    seq,
                    token,
                },
            })),
            other => {
                self.index().release(queue, seq, now_ms());
                other.and(Ok(None))
            }
        }
    }

    fn table_get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(table)?;
        table.get(id)?.map(|v| decode(v.value())).transpose()
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn enqueue(
        &self,
        items: Vec<(String, Envelope)>,
        claim: Option<IdempotencyClaim>,
    ) -> Result<Enqueued, StoreError> {
        match self
            .write(Write::Enqueue {
                items,
                claim,
                log: true,
            })
            .await?
        {
            Applied::Claimed(earlier) => Ok(earlier),
            _ => Ok(Enqueued::Committed),
        }
    }

    async fn requeue(&self, items: Vec<(String, Envelope)>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        self.write(Write::Enqueue {
            items,
            claim: None,
            log: false,
        })
        .await
        .map(drop)
    }

    async fn idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let Some(value) = table.get((scope, key))? else {
            return Ok(None);
        };
        let record: IdempotencyRecord = decode(value.value())?;
        Ok((record.expires_ms > now_ms()).then_some(record))
    }

    async fn lease(
        &self,
        queue: &str,
        wait: Duration,
        hold: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.notify.get(queue);
        loop {
            // Registered before looking, so a commit in between is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.try_lease(queue, hold)? {
                return Ok(Some(lease));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Woken by a commit that may have made work, or when a retry comes due.
            let due = self
                .index()
                .next_due(queue)
                .map(|at_ms| now + Duration::from_millis(at_ms.saturating_sub(now_ms())));
            let until = due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn complete(
        &self,
        lease: Lease,
        completion: Completion,
        kv: Option<KvWrites>,
    ) -> Result<(), CompleteError> {
        let Ticket::Redb { queue, seq, token } = lease.ticket else {
            return Err(StoreError::Stopped.into());
        };
        if self
            .index()
            .begin_complete(&queue, seq, token, Instant::now())
            .is_err()
        {
            return Err(CompleteError::Stale { queue });
        }
        let result = match self
            .write(Write::Complete {
                slot: (queue.clone(), seq),
                completion,
                kv,
            })
            .await
        {
            Ok(Applied::OverQuota(reason)) => Err(CompleteError::OverQuota(reason)),
            Ok(_) => Ok(()),
            Err(error) => Err(error.into()),
        };
        if result.is_err() {
            // Not committed: the message stays, and is leased again.
            self.index().release(&queue, seq, now_ms());
            self.notify.get(&queue).notify_one();
        }
        result
    }

    async fn outcome(&self, id: &MessageId) -> Result<Option<Outcome>, StoreError> {
        self.table_get(OUTCOMES, id.as_str())
    }

    async fn outcomes(&self, root: &MessageId) -> Result<Vec<Outcome>, StoreError> {
        let txn = self.read()?;
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

    async fn pending(&self, root: &MessageId) -> Result<Vec<Envelope>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(QUEUE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let envelope: Envelope = decode(entry?.1.value())?;
            if &envelope.root == root {
                out.push(envelope);
            }
        }
        Ok(out)
    }

    async fn depths(&self) -> Result<BTreeMap<String, usize>, StoreError> {
        Ok(self.index().depths())
    }

    async fn claim(
        &self,
        queue: &str,
        key: &str,
        holder: &MessageId,
        _hold: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        // In memory, as leases are: a claim ends with its holder's process, so none
        // lapses; one a later lease of its holder took over keeps that lease's token.
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.index().claim(queue, key, holder.as_str(), token) {
            return Ok(None);
        }
        let (index, notify) = (self.index.clone(), self.notify.clone());
        let (queue, key) = (queue.to_owned(), key.to_owned());
        Ok(Some(Claim::new(move || {
            let waiting = index
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unclaim(&queue, &key, token, now_ms());
            if waiting {
                notify.get(&queue).notify_one();
            }
        })))
    }

    async fn oldest(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(QUEUE)?;
        let first = table.range((queue, 0)..=(queue, u64::MAX))?.next();
        first
            .map(|entry| Ok(decode::<Envelope>(entry?.1.value())?.accepted_ms))
            .transpose()
    }

    async fn outcomes_in(
        &self,
        accepted: std::ops::Range<u64>,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Root ids are UUIDv7, in time order as text: the range of ids made in the
        // window (with a minute's slack: an id is made just before its message is
        // accepted), then the exact acceptance time.
        let low = MessageId::earliest_at(accepted.start.saturating_sub(60_000));
        let high = MessageId::earliest_at(accepted.end);
        let txn = self.read()?;
        let table = txn.open_table(OUTCOMES)?;
        let mut out = Vec::new();
        for entry in table.range(low.as_str()..high.as_str())? {
            let outcome: Outcome = decode(entry?.1.value())?;
            if accepted.contains(&outcome.accepted_ms) {
                out.push(outcome);
            }
        }
        Ok(out)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        by_time::dead_page(&self.read()?, None, usize::MAX)
    }

    async fn dead_letters_page(
        &self,
        after: Option<(u64, &MessageId)>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        by_time::dead_page(&self.read()?, after, limit)
    }

    async fn dead_letters_per_flow(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        by_time::dead_per_flow(&self.read()?)
    }

    async fn dead_letter(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError> {
        self.table_get(DEAD, id.as_str())
    }

    async fn redrive(&self, id: &MessageId) -> Result<bool, StoreError> {
        let applied = self.write(Write::Redrive { id: id.to_string() }).await?;
        Ok(applied == Applied::Done)
    }

    async fn discard(&self, id: &MessageId) -> Result<bool, StoreError> {
        let applied = self.write(Write::Discard { id: id.to_string() }).await?;
        Ok(applied == Applied::Done)
    }

    async fn exceptions(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(EXCEPTIONS)?.iter()? {
            out.push(decode::<DeadLetter>(entry?.1.value())?);
        }
        out.sort_by(|a, b| {
            (a.outcome.at_ms, a.outcome.id.as_str()).cmp(&(b.outcome.at_ms, b.outcome.id.as_str()))
        });
        Ok(out)
    }

    async fn exception(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError> {
        self.table_get(EXCEPTIONS, id.as_str())
    }

    async fn decide(&self, id: &MessageId, directive: Directive) -> Result<bool, StoreError> {
        let id = id.to_string();
        let applied = self.write(Write::Decide { id, directive }).await?;
        Ok(applied == Applied::Done)
    }

    async fn events(&self, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        events::read(&txn.open_table(EVENTS)?, from, to)
    }

    async fn offset_at(&self, at_ms: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.read()?;
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

    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (store, namespace, key) = (self.clone(), namespace.to_owned(), key.to_owned());
        // A read of the database: off the async workers.
        tokio::task::spawn_blocking(move || kv::get(&store.read()?, &namespace, &key))
            .await
            .map_err(|e| StoreError::CommitFailed(format!("key-value read failed: {e}")))?
    }

    async fn kv_usage(&self, namespace: &str) -> Result<u64, StoreError> {
        let (store, namespace) = (self.clone(), namespace.to_owned());
        tokio::task::spawn_blocking(move || kv::usage(&store.read()?, &namespace))
            .await
            .map_err(|e| StoreError::CommitFailed(format!("key-value read failed: {e}")))?
    }

    async fn kv_commit(&self, writes: &KvWrites) -> Result<(), CompleteError> {
        match self.write(Write::Kv(writes.clone())).await? {
            Applied::OverQuota(reason) => Err(CompleteError::OverQuota(reason)),
            _ => Ok(()),
        }
    }

    async fn sweep(&self, keep: Duration) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(Write::Sweep {
            now_ms: now,
            before_ms: now.saturating_sub(keep.as_millis() as u64),
        })
        .await
        .map(drop)
    }

    fn healthy(&self) -> bool {
        self.failed_commits.load(Ordering::Relaxed) == 0
    }
}

fn create_tables(node: &NodeDb) -> Result<(), StoreError> {
    let txn = node.db().begin_write()?;
    txn.open_table(QUEUE)?;
    txn.open_table(OUTCOMES)?;
    txn.open_table(DEAD)?;
    txn.open_table(EXCEPTIONS)?;
    txn.open_table(IDEMPOTENCY)?;
    txn.open_table(EVENTS)?;
    txn.open_table(kv::KV)?;
    txn.open_table(kv::KV_USAGE)?;
    for (table, entries) in by_time::build(&txn)? {
        tracing::info!(
            table,
            entries,
            "built the time index of a table written without one"
        );
    }
    txn.commit()?;
    Ok(())
}

/// The lease index of the queue table as it is on disk (at open).
fn load_index(node: &NodeDb) -> Result<Index, StoreError> {
    let txn = node.db().begin_read()?;
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
