//! This node's own database: what stays with the machine whichever store keeps the
//! messages (the compiled-component index, the audit log, API keys, approved plugin
//! versions). The redb store keeps its tables in the same file.

use super::StoreError;
use crate::store::audit::{AuditLog, AuditQuery, AuditRecord};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Counters: the audit log's sequence, and the redb store's.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Compiled components: cache key -> digest of the compiled artifact on disk (`blake3:<hex>`).
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

/// This node's own database (`tenon.redb` in the data directory). Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeDb {
    db: Arc<Database>,
    audit: AuditLog,
}

impl NodeDb {
    /// Open (or create) `data_dir/tenon.redb`, creating the directory and every table.
    pub fn open(data_dir: &Path) -> Result<NodeDb, StoreError> {
        let path = data_dir.join("tenon.redb");
        let open_err = |source: redb::DatabaseError| StoreError::Open {
            path: path.clone(),
            source: Box::new(source),
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_err(redb::StorageError::Io(e).into()))?;
        let db = Database::create(&path).map_err(open_err)?;
        NodeDb::with_db(db)
    }

    fn with_db(db: Database) -> Result<NodeDb, StoreError> {
        NodeDb::create_tables(&db)?;
        let db = Arc::new(db);
        let audit = AuditLog::start(db.clone())?;
        Ok(NodeDb { db, audit })
    }

    /// The sandbox's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Read audit records (after waiting for those appended so far to be written).
    pub fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit.flush();
        crate::store::audit::query(&self.db, query)
    }

    /// Forget audit records older than `keep`.
    pub fn sweep_audit(&self, keep: std::time::Duration) -> Result<usize, StoreError> {
        let before_ms = crate::model::now_ms().saturating_sub(keep.as_millis() as u64);
        crate::store::audit::sweep(&self.db, before_ms)
    }

    /// Open (or create) the database on another storage backend: an in-memory one, or
    /// a failing one in tests that inject I/O errors.
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<NodeDb, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|source| StoreError::Open {
                path: PathBuf::from("<backend>"),
                source: Box::new(source),
            })?;
        NodeDb::with_db(db)
    }

    fn create_tables(db: &Database) -> Result<(), StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(COMPILED)?;
        txn.open_table(crate::store::audit::AUDIT)?;
        txn.open_table(APPROVED)?;
        txn.commit()?;
        Ok(())
    }

    /// The database, for the modules that own a table.
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Record the digest of the compiled artifact of a cache key (the component's
    /// digest and the engine's compatibility hash).
    pub(crate) fn set_compiled(&self, key: &str, artifact: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(COMPILED)?.insert(key, artifact)?;
        txn.commit()?;
        Ok(())
    }

    /// The version of plugin instance `name` last approved, if any.
    pub fn approved(&self, name: &str) -> Result<Option<Approved>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(APPROVED)?;
        table
            .get(name)?
            .map(|v| rmp_serde::from_slice(v.value()).map_err(StoreError::damaged))
            .transpose()
    }

    /// Record the approved version of plugin instance `name`.
    pub fn set_approved(&self, name: &str, approved: &Approved) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(approved).map_err(StoreError::damaged)?;
        let txn = self.db.begin_write()?;
        txn.open_table(APPROVED)?.insert(name, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The digest of the compiled artifact recorded for a cache key.
    pub(crate) fn compiled(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COMPILED)?;
        Ok(table.get(key)?.map(|v| v.value().to_owned()))
    }
}
