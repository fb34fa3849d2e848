//! I/O errors at commit, injected by a storage backend that fails on command: a write
//! whose commit fails is refused (never acknowledged), and every acknowledged write is
//! still there when the database is opened again.

use redb::StorageBackend;
use redb::backends::FileBackend;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tenon::model::{Envelope, StoredMessage};
use tenon::store::redb::RedbStore;
use tenon::store::{NodeDb, Store};

/// The real file backend, failing every write or sync while `fail` is set.
#[derive(Debug)]
struct Faulty {
    inner: FileBackend,
    fail: Arc<AtomicBool>,
}

impl Faulty {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected I/O error"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
}

fn envelope(id: &str) -> (String, Envelope) {
    let message = StoredMessage {
        id: id.into(),
        key: id.into(),
        kind: "QuoteApproved".into(),
        content_type: "application/json".into(),
        headers: vec![],
        body: vec![b'x'; 4096],
    };
    let envelope = Envelope::entering("f", &["s".to_owned()], message, 0);
    ("f/0".into(), envelope)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_acknowledged_write_is_lost_when_commits_fail() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let mut acknowledged = Vec::new();
    {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("tenon.redb"))
            .unwrap();
        let backend = Faulty {
            inner: FileBackend::new(file).unwrap(),
            fail: fail.clone(),
        };
        let queue = RedbStore::open(&NodeDb::open_with_backend(backend).unwrap()).unwrap();
        for i in 0..20 {
            let id = format!("ok-{i}");
            queue.enqueue(vec![envelope(&id)], None).await.unwrap();
            acknowledged.push(id);
        }
        fail.store(true, Ordering::SeqCst);
        // Concurrent writes sharing failing commits: every one of them is refused.
        let writes = (0..10).map(|i| queue.enqueue(vec![envelope(&format!("refused-{i}"))], None));
        for result in futures::future::join_all(writes).await {
            let error = result.unwrap_err().to_string();
            assert!(
                error.starts_with("storage: commit failed, nothing written: "),
                "{error}"
            );
        }
        // The disk is back, but this database saw an I/O error: it refuses writes
        // until it is reopened rather than risk a half-written state.
        fail.store(false, Ordering::SeqCst);
        assert!(queue.enqueue(vec![envelope("after")], None).await.is_err());
        assert!(
            !queue.healthy(),
            "a failed commit makes the queue report itself unhealthy"
        );
    }
    let queue = RedbStore::open(&NodeDb::open(dir.path()).unwrap()).unwrap();
    for id in &acknowledged {
        let pending = queue.pending(&id.as_str().into()).await.unwrap();
        assert_eq!(pending.len(), 1, "acknowledged {id} is there");
    }
    assert_eq!(
        queue.depths().await.unwrap()["f/0"],
        acknowledged.len(),
        "every acknowledged write, and nothing refused"
    );
    queue
        .enqueue(vec![envelope("after-reopen")], None)
        .await
        .unwrap();
    assert!(queue.healthy());
}
