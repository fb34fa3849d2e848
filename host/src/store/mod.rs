//! The one redb database in the data directory, and the tables in it.
//!
//! Every durable fact of the runtime lives here: queued messages, outcomes, dead
//! letters, plugin key-value data, the compiled-component index. A multi-table write
//! commits atomically, which is what lets a step's outputs and its input's ack commit
//! together.

pub mod events;
mod index;
pub mod queue;

use crate::audit::{AuditLog, AuditQuery, AuditRecord};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Queued messages: (queue name, sequence) -> encoded [`crate::model::Envelope`].
pub(crate) const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// Counters such as the next queue sequence number.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Terminal outcome of each message: message id -> encoded [`crate::model::Outcome`].
pub(crate) const OUTCOMES: TableDefinition<&str, &[u8]> = TableDefinition::new("outcomes");
/// Plugin key-value data: (plugin instance name, key) -> value.
pub(crate) const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Bytes (keys and values) each plugin namespace holds in [`KV`], for its quota.
pub(crate) const KV_USAGE: TableDefinition<&str, u64> = TableDefinition::new("kv_usage");
/// Dead letters: message id -> encoded [`crate::model::DeadLetter`].
pub(crate) const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("dead");
/// Idempotency records of ingress: (source, idempotency key) -> encoded
/// [`crate::model::IdempotencyRecord`].
pub(crate) const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("idempotency");
/// Compiled components: component digest -> sha256 of the compiled artifact on disk.
pub(crate) const COMPILED: TableDefinition<&str, &str> = TableDefinition::new("compiled");
/// The approved version of each plugin instance: name -> encoded [`Approved`].
pub(crate) const APPROVED: TableDefinition<&str, &[u8]> = TableDefinition::new("approved");

/// The version of a plugin instance an operator approved (or that went live without
/// widening the grants), and its effective grants then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Approved {
    /// The version's digest.
    pub digest: String,
    /// Its effective grants.
    pub grants: tenon_registry::Grants,
}

/// A storage failure; the message says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be opened.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::DatabaseError>,
    },
    /// A read or a commit failed.
    #[error("storage: {0}")]
    Redb(#[from] Box<redb::Error>),
    /// A stored record does not decode: a bug or a damaged file.
    #[error("storage: damaged record: {0}")]
    Decode(String),
    /// A step's key-value writes would take its namespace over the quota: nothing of
    /// the step was committed.
    #[error("not committed: {0}")]
    OverQuota(String),
    /// The transaction holding this write failed to commit: nothing in it is durable.
    #[error("storage: commit failed, nothing written: {0}")]
    CommitFailed(String),
    /// The committer thread is gone (the runtime is shutting down).
    #[error("storage: the committer has stopped")]
    CommitterGone,
    /// The lease timed out and the message went to another worker: this ack is late.
    #[error("lease on {queue}#{seq} expired and was given to another worker; late ack refused")]
    StaleLease {
        /// The queue.
        queue: String,
        /// The message's slot in it.
        seq: u64,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The runtime's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    db: Arc<Database>,
    audit: AuditLog,
}

impl Storage {
    /// Open (or create) `data_dir/tenon.redb`, creating the directory and every table.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        let path = data_dir.join("tenon.redb");
        let open_err = |source: redb::DatabaseError| StorageError::Open {
            path: path.clone(),
            source: Box::new(source),
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_err(redb::StorageError::Io(e).into()))?;
        let db = Database::create(&path).map_err(open_err)?;
        Storage::with_db(db)
    }

    fn with_db(db: Database) -> Result<Storage, StorageError> {
        Storage::create_tables(&db)?;
        let db = Arc::new(db);
        let audit = AuditLog::start(db.clone())?;
        Ok(Storage { db, audit })
    }

    /// The sandbox's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Read audit records (after waiting for those appended so far to be written).
    pub fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.audit.flush();
        crate::audit::query(&self.db, query)
    }

    /// Open (or create) the database on another storage backend: an in-memory one, or
    /// a failing one in tests that inject I/O errors.
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<Storage, StorageError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|source| StorageError::Open {
                path: PathBuf::from("<backend>"),
                source: Box::new(source),
            })?;
        Storage::with_db(db)
    }

    fn create_tables(db: &Database) -> Result<(), StorageError> {
        let txn = db.begin_write()?;
        txn.open_table(QUEUE)?;
        txn.open_table(META)?;
        txn.open_table(OUTCOMES)?;
        txn.open_table(KV)?;
        txn.open_table(KV_USAGE)?;
        txn.open_table(COMPILED)?;
        txn.open_table(IDEMPOTENCY)?;
        txn.open_table(DEAD)?;
        txn.open_table(events::EVENTS)?;
        txn.open_table(crate::audit::AUDIT)?;
        txn.open_table(crate::auth::KEYS)?;
        txn.open_table(APPROVED)?;
        txn.commit()?;
        Ok(())
    }

    /// The database, for the modules that own a table.
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// A plugin's view of the key-value table, confined to its namespace.
    pub fn kv(&self, namespace: &str) -> KvNamespace {
        KvNamespace {
            storage: self.clone(),
            namespace: namespace.to_owned(),
            quota: None,
        }
    }

    /// A plugin's view of the key-value table, holding at most `quota` bytes.
    pub fn kv_with_quota(&self, namespace: &str, quota: u64) -> KvNamespace {
        KvNamespace {
            quota: Some(quota),
            ..self.kv(namespace)
        }
    }

    /// Record which compiled artifact belongs to a component digest.
    pub(crate) fn set_compiled(
        &self,
        digest: &str,
        artifact_sha: &str,
    ) -> Result<(), StorageError> {
        let txn = self.db.begin_write()?;
        txn.open_table(COMPILED)?.insert(digest, artifact_sha)?;
        txn.commit()?;
        Ok(())
    }

    /// The version of plugin instance `name` last approved, if any.
    pub fn approved(&self, name: &str) -> Result<Option<Approved>, StorageError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(APPROVED)?;
        table
            .get(name)?
            .map(|v| {
                rmp_serde::from_slice(v.value()).map_err(|e| StorageError::Decode(e.to_string()))
            })
            .transpose()
    }

    /// Record the approved version of plugin instance `name`.
    pub fn set_approved(&self, name: &str, approved: &Approved) -> Result<(), StorageError> {
        let bytes =
            rmp_serde::to_vec_named(approved).map_err(|e| StorageError::Decode(e.to_string()))?;
        let txn = self.db.begin_write()?;
        txn.open_table(APPROVED)?.insert(name, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The sha256 of the compiled artifact recorded for a component digest.
    pub(crate) fn compiled(&self, digest: &str) -> Result<Option<String>, StorageError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COMPILED)?;
        Ok(table.get(digest)?.map(|v| v.value().to_owned()))
    }
}

/// One plugin's keys. The namespace is part of every key, so a plugin cannot name
/// another plugin's keys whatever string it passes.
///
/// A plugin call reads through this view and buffers its writes in [`KvWrites`],
/// which commit with the step's result (in the queue's transaction):
/// a call that traps, times out or fails leaves nothing behind.
#[derive(Clone, Debug)]
pub struct KvNamespace {
    storage: Storage,
    namespace: String,
    quota: Option<u64>,
}

impl KvNamespace {
    /// The namespace (the plugin instance name).
    pub fn name(&self) -> &str {
        &self.namespace
    }

    /// The quota in bytes, if any.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// The committed value under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.storage.db.begin_read()?;
        let table = txn.open_table(KV)?;
        Ok(table
            .get((self.namespace.as_str(), key))?
            .map(|v| v.value().to_vec()))
    }

    /// Bytes (keys and values) the namespace holds, as committed.
    pub fn usage(&self) -> Result<u64, StorageError> {
        let txn = self.storage.db.begin_read()?;
        let table = txn.open_table(KV_USAGE)?;
        Ok(table.get(self.namespace.as_str())?.map_or(0, |v| v.value()))
    }

    /// A fresh buffer of writes to this namespace.
    pub fn writes(&self) -> KvWrites {
        KvWrites {
            namespace: self.namespace.clone(),
            quota: self.quota,
            writes: std::collections::BTreeMap::new(),
        }
    }

    /// Commit `writes` on their own (outside a step: tests, tools).
    pub fn commit(&self, writes: &KvWrites) -> Result<(), StorageError> {
        let txn = self.storage.db.begin_write()?;
        apply_kv(&txn, writes)?;
        txn.commit()?;
        Ok(())
    }

    /// Store `value` under `key` at once, within the quota (outside a step).
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut writes = self.writes();
        writes.put(key, Some(value.to_vec()));
        self.commit(&writes)
    }

    /// Remove `key` at once (outside a step).
    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        let mut writes = self.writes();
        writes.put(key, None);
        self.commit(&writes)
    }
}

/// Writes of one plugin call to its namespace, not yet committed: `None` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvWrites {
    namespace: String,
    quota: Option<u64>,
    writes: std::collections::BTreeMap<String, Option<Vec<u8>>>,
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
}

/// The bytes one entry takes against a quota.
pub(crate) fn kv_entry_size(key: &str, value: Option<&[u8]>) -> u64 {
    value.map_or(0, |v| (key.len() + v.len()) as u64)
}

/// Why a call's writes would take their namespace over its quota (concurrent calls
/// of one plugin each checked against what was committed when they wrote), or `None`.
pub(crate) fn kv_over_quota(
    txn: &redb::WriteTransaction,
    writes: &KvWrites,
) -> Result<Option<String>, StorageError> {
    let Some(quota) = writes.quota else {
        return Ok(None);
    };
    let ns = writes.namespace.as_str();
    let table = txn.open_table(KV)?;
    let used = txn.open_table(KV_USAGE)?.get(ns)?.map_or(0, |v| v.value());
    let mut after = used;
    for (key, value) in &writes.writes {
        let old = table
            .get((ns, key.as_str()))?
            .map_or(0, |v| kv_entry_size(key, Some(v.value())));
        after = after.saturating_sub(old) + kv_entry_size(key, value.as_deref());
    }
    Ok((after > quota && after > used).then(|| {
        format!(
            "key-value quota of {quota} bytes exceeded ({after} bytes after this step's writes)"
        )
    }))
}

/// Apply a call's writes in the caller's transaction, keeping the namespace's usage
/// count. The quota was checked as the plugin wrote and again just before
/// ([`kv_over_quota`]).
pub(crate) fn apply_kv(
    txn: &redb::WriteTransaction,
    writes: &KvWrites,
) -> Result<(), StorageError> {
    if writes.is_empty() {
        return Ok(());
    }
    let ns = writes.namespace.as_str();
    let mut table = txn.open_table(KV)?;
    let mut usage = txn.open_table(KV_USAGE)?;
    let mut used = usage.get(ns)?.map_or(0, |v| v.value());
    for (key, value) in &writes.writes {
        let old = table
            .get((ns, key.as_str()))?
            .map_or(0, |v| kv_entry_size(key, Some(v.value())));
        match value {
            Some(value) => table.insert((ns, key.as_str()), value.as_slice())?,
            None => table.remove((ns, key.as_str()))?,
        };
        used = used.saturating_sub(old) + kv_entry_size(key, value.as_deref());
    }
    usage.insert(ns, used)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_namespaces_do_not_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let a = storage.kv("plugin-a");
        let b = storage.kv("plugin-b");
        a.set("customer/001", b"ACME").unwrap();
        assert_eq!(
            a.get("customer/001").unwrap().as_deref(),
            Some(&b"ACME"[..])
        );
        assert_eq!(b.get("customer/001").unwrap(), None);
        b.delete("customer/001").unwrap();
        assert!(a.get("customer/001").unwrap().is_some());
        a.delete("customer/001").unwrap();
        assert_eq!(a.get("customer/001").unwrap(), None);
    }

    #[test]
    fn writes_over_the_quota_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let kv = storage.kv_with_quota("p", 20);
        // Two calls that each fitted when they wrote, 10 bytes each, then a third.
        let mut first = kv.writes();
        first.put("k1", Some(vec![0; 8]));
        let mut second = kv.writes();
        second.put("k2", Some(vec![0; 8]));
        let mut third = kv.writes();
        third.put("k3", Some(vec![0; 8]));
        kv.commit(&first).unwrap();
        kv.commit(&second).unwrap();
        let txn = storage.db().begin_write().unwrap();
        assert_eq!(
            kv_over_quota(&txn, &third).unwrap().as_deref(),
            Some("key-value quota of 20 bytes exceeded (30 bytes after this step's writes)")
        );
        // Shrinking is always allowed, even over the quota.
        let mut shrink = kv.writes();
        shrink.put("k1", None);
        assert_eq!(kv_over_quota(&txn, &shrink).unwrap(), None);
    }

    #[test]
    fn usage_counts_keys_and_values_together() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let kv = storage.kv_with_quota("p", 20);
        kv.set("k1", &[0; 8]).unwrap(); // 10 bytes
        assert_eq!(kv.usage().unwrap(), 10);
        kv.set("k1", &[0; 16]).unwrap(); // replaced: 18 bytes
        assert_eq!(kv.usage().unwrap(), 18);
        kv.set("k2", &[0; 2]).unwrap();
        assert_eq!(kv.usage().unwrap(), 22, "committed writes are counted");
        kv.delete("k1").unwrap();
        assert_eq!(kv.usage().unwrap(), 4);
        assert_eq!(kv.quota(), Some(20));
    }
}
