//! The audit log: every allow/deny decision the sandbox takes about a plugin, and
//! every action and refusal of the API's keys.
//!
//! What is recorded about plugins: each capability linked or refused when a version
//! loads, each outbound HTTP request (allowed or refused, with its origin and the
//! address it resolved to), each secret read, each config key refused, each limit hit
//! (time, memory, stack, output size, key-value quota, log volume), each version held
//! for approval or approved. Reads of what is the plugin's own (its key-value
//! namespace, the config keys it was granted) were decided when it was linked and are
//! not recorded one by one. About the API: each admin action (with the key's id) and
//! each refused request (no key, a bad key, a missing scope).
//!
//! Records are appended by a background writer that commits whatever is waiting in
//! one transaction, at most one every 10 ms (sooner when a flush waits), so
//! recording never blocks a plugin call; a crash can lose the records of the last
//! few milliseconds. The channel to the writer is bounded: when it is full a record
//! is dropped and counted, and the writer appends one record saying how many were
//! dropped (never silent). Records are kept as long as outcomes (`retention_secs`)
//! and swept with them.
//!
//! **Invariant:** a record holds names (plugin, capability, secret name, origin),
//! never a secret's value.

use crate::store::StoreError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

/// Audit records: sequence -> encoded [`AuditRecord`].
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The META counter of the last sequence number given (kept apart from the table so
/// that a sweep emptying the table does not reuse numbers).
const SEQ: &str = "audit_seq";

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The plugin was allowed.
    Allow,
    /// The plugin was refused.
    Deny,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        })
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// Its place in the log, from 1.
    #[serde(default)]
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The plugin instance; empty for a record about the API.
    pub plugin: String,
    /// The plugin version's digest; empty for a record about the API.
    pub digest: String,
    /// The id of the API key that acted or was refused, for a record about the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What was asked for: `link`, `http`, `secret`, `config`, `kv`, `memory`,
    /// `time`, `stack`, `output`, `log`, `denials`, `version` (about plugins); `admin`,
    /// `auth` (about the API); `audit` (records dropped).
    pub capability: String,
    /// What it was asked for: an interface, an origin and address, a secret name...
    pub target: String,
    /// The decision.
    pub decision: Decision,
    /// Why, when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this plugin instance's.
    pub plugin: Option<String>,
    /// Only this API key's.
    pub key: Option<String>,
    /// Only this decision.
    pub decision: Option<Decision>,
    /// Only records after this sequence number.
    pub after: u64,
    /// At most this many, the most recent (default 100).
    pub limit: Option<usize>,
}

/// Where decisions are appended. Cheap to clone; the writer stops with the last clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Writer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// How long the writer waits after a record for more to commit with it.
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
/// Records waiting for the writer, at most; more are dropped and counted.
pub const AUDIT_CHANNEL_CAPACITY: usize = 65_536;

struct Writer {
    tx: Mutex<Option<mpsc::Sender<AuditRecord>>>,
    /// Records sent and not yet in a batch of the writer, and how many may be: the channel
    /// is bounded by this count rather than by a preallocated array (65,536 records'
    /// slots, ~13 MB touched at every start).
    queued: Arc<std::sync::atomic::AtomicUsize>,
    capacity: usize,
    /// Records dropped since the writer last reported it.
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Records dropped since start.
    dropped_total: std::sync::atomic::AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Flush requests: the writer answers once everything sent before is committed.
    flush: Mutex<Option<mpsc::Sender<mpsc::Sender<()>>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channels ends the writer after it commits what is waiting.
        lock(&self.tx).take();
        lock(&self.flush).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AuditLog {
    /// Start the writer for `db`.
    pub(crate) fn start(db: Arc<Database>) -> Result<AuditLog, StoreError> {
        AuditLog::with_capacity(db, AUDIT_CHANNEL_CAPACITY)
    }

    fn with_capacity(db: Arc<Database>, capacity: usize) -> Result<AuditLog, StoreError> {
        let (tx, rx) = mpsc::channel::<AuditRecord>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken = queued.clone();
        let (flush_tx, flush_rx) = mpsc::channel::<mpsc::Sender<()>>();
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("tenon-audit".into())
            .spawn(move || write_loop(&db, &rx, &taken, &flush_rx, &counter))
            .map_err(|e| StoreError::CommitFailed(format!("cannot start the audit writer: {e}")))?;
        Ok(AuditLog {
            inner: Arc::new(Writer {
                tx: Mutex::new(Some(tx)),
                queued,
                capacity,
                dropped,
                dropped_total: std::sync::atomic::AtomicU64::new(0),
                thread: Mutex::new(Some(thread)),
                flush: Mutex::new(Some(flush_tx)),
            }),
        })
    }

    /// Append a decision (without waiting for it to be written).
    pub fn record(&self, record: AuditRecord) {
        use std::sync::atomic::Ordering::Relaxed;
        if record.decision == Decision::Deny {
            crate::telemetry::metrics::denied(&record.capability);
            tracing::warn!(plugin = %record.plugin, capability = %record.capability, target = %record.target, reason = record.reason.as_deref().unwrap_or(""), "sandbox denied");
        } else {
            tracing::debug!(plugin = %record.plugin, capability = %record.capability, target = %record.target, "sandbox allowed");
        }
        let tx = lock(&self.inner.tx);
        let Some(tx) = tx.as_ref() else {
            return;
        };
        if self.inner.queued.fetch_add(1, Relaxed) < self.inner.capacity {
            if tx.send(record).is_err() {
                self.inner.queued.fetch_sub(1, Relaxed);
            }
        } else {
            self.inner.queued.fetch_sub(1, Relaxed);
            self.inner.dropped.fetch_add(1, Relaxed);
            if self.inner.dropped_total.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(
                    "the audit log cannot keep up; records are being dropped and counted"
                );
            }
        }
    }

    /// Records dropped since start because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner
            .dropped_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait until every record appended before this call is committed.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        let sent = lock(&self.inner.flush)
            .as_ref()
            .is_some_and(|tx| tx.send(done_tx).is_ok());
        if sent {
            let _ = done_rx.recv_timeout(std::time::Duration::from_secs(10));
        }
    }
}

fn write_loop(
    db: &Database,
    rx: &mpsc::Receiver<AuditRecord>,
    queued: &std::sync::atomic::AtomicUsize,
    flush: &mpsc::Receiver<mpsc::Sender<()>>,
    dropped: &std::sync::atomic::AtomicU64,
) {
    let tick = std::time::Duration::from_millis(20);
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(record) => Some(record),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut waiting: Vec<_> = flush.try_iter().collect();
        if first.is_some() && waiting.is_empty() {
            // Group commit: the records of the next few milliseconds share the first's
            // transaction (a load links ~20 capabilities, and a commit waits for the
            // disk while holding the database's write lock that loads and approvals
            // need too). At most one commit per `LINGER`, however many records; none
            // when someone waits for a flush.
            std::thread::sleep(LINGER);
        }
        // Flush requests seen now cover every record sent before them.
        waiting.extend(flush.try_iter());
        let mut batch: Vec<AuditRecord> = first.into_iter().chain(rx.try_iter()).collect();
        queued.fetch_sub(batch.len(), std::sync::atomic::Ordering::Relaxed);
        let lost = dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if lost > 0 {
            batch.push(AuditRecord {
                seq: 0,
                at_ms: crate::model::now_ms(),
                plugin: String::new(),
                digest: String::new(),
                key: None,
                capability: "audit".into(),
                target: "audit log".into(),
                decision: Decision::Deny,
                reason: Some(format!(
                    "{lost} records dropped: the audit log could not keep up"
                )),
            });
        }
        if !batch.is_empty()
            && let Err(error) = append(db, batch)
        {
            tracing::error!(%error, "cannot write audit records");
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

fn append(db: &Database, batch: Vec<AuditRecord>) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(AUDIT)?;
        let mut meta = txn.open_table(crate::store::node::META)?;
        let mut seq = meta.get(SEQ)?.map_or(0, |v| v.value());
        for mut record in batch {
            seq += 1;
            record.seq = seq;
            let bytes = rmp_serde::to_vec_named(&record).map_err(StoreError::damaged)?;
            table.insert(seq, bytes.as_slice())?;
        }
        meta.insert(SEQ, seq)?;
    }
    txn.commit()?;
    Ok(())
}

/// Read records, most recent last.
pub(crate) fn query(db: &Database, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(AUDIT)?;
    let limit = query.limit.unwrap_or(100);
    let mut out = Vec::new();
    for entry in table.range(query.after.saturating_add(1)..)?.rev() {
        let (_, value) = entry?;
        let record: AuditRecord =
            rmp_serde::from_slice(value.value()).map_err(StoreError::damaged)?;
        let wanted = query.plugin.as_ref().is_none_or(|p| *p == record.plugin)
            && query
                .key
                .as_ref()
                .is_none_or(|k| Some(k) == record.key.as_ref())
            && query.decision.is_none_or(|d| d == record.decision);
        if wanted {
            out.push(record);
            if out.len() >= limit {
                break;
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// Remove records older than `before_ms`.
pub(crate) fn sweep(db: &Database, before_ms: u64) -> Result<usize, StoreError> {
    let txn = db.begin_write()?;
    let mut removed = 0;
    {
        let mut table = txn.open_table(AUDIT)?;
        let mut old = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let record: AuditRecord =
                rmp_serde::from_slice(value.value()).map_err(StoreError::damaged)?;
            if record.at_ms >= before_ms {
                break;
            }
            old.push(key.value());
        }
        for key in old {
            table.remove(key)?;
            removed += 1;
        }
    }
    txn.commit()?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at_ms: n,
            plugin: "p".into(),
            digest: String::new(),
            key: None,
            capability: "http".into(),
            target: format!("t{n}"),
            decision: Decision::Deny,
            reason: None,
        }
    }

    #[test]
    fn a_full_channel_drops_counts_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("a.redb")).unwrap());
        {
            let txn = db.begin_write().unwrap();
            txn.open_table(AUDIT).unwrap();
            txn.open_table(crate::store::node::META).unwrap();
            txn.commit().unwrap();
        }
        let log = AuditLog::with_capacity(db.clone(), 4).unwrap();
        // Hold the database's write lock: the writer takes one record and waits.
        let blocker = db.begin_write().unwrap();
        for n in 0..20 {
            log.record(record(n));
        }
        // How many the writer took before it blocked depends on the scheduler; that
        // some were dropped and every one is kept or counted does not.
        assert!(log.dropped() > 0, "{} dropped", log.dropped());
        drop(blocker);
        log.flush();
        log.flush();
        let all = query(
            &db,
            &AuditQuery {
                limit: Some(100),
                ..AuditQuery::default()
            },
        )
        .unwrap();
        let kept = all.iter().filter(|r| r.plugin == "p").count() as u64;
        assert_eq!(kept + log.dropped(), 20, "every record is kept or counted");
        // The writer says how many were dropped since it last said so: one note, or
        // several when records were dropped while it wrote; together, every one.
        let said: Vec<u64> = all
            .iter()
            .filter(|r| r.capability == "audit")
            .map(|r| {
                let reason = r.reason.as_deref().unwrap_or_default();
                let count = reason
                    .strip_suffix(" records dropped: the audit log could not keep up")
                    .unwrap_or_else(|| panic!("not a note of drops: {reason:?}"));
                count.parse().unwrap()
            })
            .collect();
        assert!(!said.is_empty(), "a record says how many were dropped");
        assert_eq!(said.iter().sum::<u64>(), log.dropped(), "notes: {said:?}");
    }
}
