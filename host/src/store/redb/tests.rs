use super::*;
use crate::model::{OutcomeKind, StoredMessage};
use crate::store::Store;

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

fn open() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&NodeDb::open(dir.path()).unwrap()).unwrap();
    (dir, store)
}

fn reopen(dir: &std::path::Path) -> RedbStore {
    RedbStore::open(&NodeDb::open(dir).unwrap()).unwrap()
}

/// Lease without waiting, for a minute.
async fn take(store: &RedbStore, queue: &str) -> Option<Lease> {
    store
        .lease(queue, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap()
}

async fn put(store: &RedbStore, items: Vec<(String, Envelope)>) -> Result<Enqueued, StoreError> {
    store.enqueue(items, None).await
}

async fn claimed(
    store: &RedbStore,
    items: Vec<(String, Envelope)>,
    claim: IdempotencyClaim,
) -> Result<Enqueued, StoreError> {
    store.enqueue(items, Some(claim)).await
}

async fn finish(
    store: &RedbStore,
    lease: Lease,
    completion: Completion,
) -> Result<(), CompleteError> {
    store.complete(lease, completion, None).await
}

/// Every message in every queue.
fn all_pending(store: &RedbStore) -> Vec<Envelope> {
    let txn = store.read().unwrap();
    let table = txn.open_table(QUEUE).unwrap();
    table
        .iter()
        .unwrap()
        .map(|entry| decode(entry.unwrap().1.value()).unwrap())
        .collect()
}

async fn depth(store: &RedbStore, queue: &str) -> usize {
    store
        .depths()
        .await
        .unwrap()
        .get(queue)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_message_is_leased_once_and_forwarded_with_its_ack() {
    let (_dir, q) = open();
    put(&q, vec![("f/0".into(), envelope("m1", "k1"))])
        .await
        .unwrap();
    let lease = take(&q, "f/0").await.unwrap();
    assert!(
        take(&q, "f/0").await.is_none(),
        "a leased message is not leased twice"
    );
    let mut out = envelope("m1.0", "k1");
    out.stage = 1;
    finish(
        &q,
        lease,
        Completion::forward(vec![("f/1".into(), out.clone())]),
    )
    .await
    .unwrap();
    assert_eq!(depth(&q, "f/0").await, 0);
    assert_eq!(take(&q, "f/1").await.unwrap().envelope, out);
}

#[tokio::test]
async fn a_key_is_processed_in_order_and_other_keys_pass() {
    let (_dir, q) = open();
    put(
        &q,
        vec![
            ("f/0".into(), envelope("a1", "A")),
            ("f/0".into(), envelope("a2", "A")),
            ("f/0".into(), envelope("b1", "B")),
        ],
    )
    .await
    .unwrap();
    let a1 = take(&q, "f/0").await.unwrap();
    assert_eq!(a1.envelope.message.id, "a1");
    let next = take(&q, "f/0").await.unwrap();
    assert_eq!(
        next.envelope.message.id, "b1",
        "a2 waits behind a1, b1 does not"
    );
    assert!(take(&q, "f/0").await.is_none());
    // a1 fails and waits for a retry: a2 still waits behind it.
    let mut retry = a1.envelope.clone();
    retry.not_before_ms = now_ms() + 60_000;
    finish(&q, a1, Completion::Retry(Box::new(retry)))
        .await
        .unwrap();
    assert!(take(&q, "f/0").await.is_none());
}

#[tokio::test]
async fn a_lost_lease_is_ready_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = reopen(dir.path());
        put(&q, vec![("f/0".into(), envelope("m1", "k"))])
            .await
            .unwrap();
        let _lease = take(&q, "f/0").await.unwrap();
        // the worker dies here: no complete
    }
    let q = reopen(dir.path());
    assert_eq!(take(&q, "f/0").await.unwrap().envelope.message.id, "m1");
}

#[tokio::test]
async fn outcomes_are_found_by_lineage() {
    let (_dir, q) = open();
    put(
        &q,
        vec![
            ("f/0".into(), envelope("m1", "k")),
            ("f/0".into(), envelope("m10", "k2")),
        ],
    )
    .await
    .unwrap();
    for id in ["m1", "m10"] {
        let lease = take(&q, "f/0").await.unwrap();
        let outcome = Outcome {
            id: format!("{id}.0").into(),
            root: id.into(),
            flow: "f".into(),
            key: "k".into(),
            kind: "OrderAccepted".into(),
            plugin: "sink".into(),
            accepted_ms: 0,
            root_kind: String::new(),
            trace_id: String::new(),
            undo: None,
            trail: vec![],
            attempts: vec![],
            at_ms: 0,
            result: OutcomeKind::Consumed,
        };
        finish(&q, lease, Completion::finish(outcome))
            .await
            .unwrap();
    }
    let found = q.outcomes(&"m1".into()).await.unwrap();
    assert_eq!(found.len(), 1, "m10's outcome is not m1's");
    assert_eq!(found[0].id, "m1.0");
}

#[tokio::test]
async fn a_late_ack_after_the_lease_expired_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = reopen(dir.path());
    put(&q, vec![("f/0".into(), envelope("m1", "k"))])
        .await
        .unwrap();
    let brief = Duration::from_millis(50);
    let stalled = q
        .lease("f/0", Duration::ZERO, brief)
        .await
        .unwrap()
        .unwrap();
    assert!(take(&q, "f/0").await.is_none(), "held while the lease runs");
    tokio::time::sleep(Duration::from_millis(80)).await;
    let second = take(&q, "f/0")
        .await
        .expect("the expired lease goes to another worker");
    assert_eq!(second.envelope.message.id, "m1");

    let forward = |id: &str| Completion::forward(vec![("f/1".into(), envelope(id, "k"))]);
    let err = finish(&q, stalled, forward("from-stalled"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the lease on f/0 expired and the message went to another worker; late ack refused"
    );
    finish(&q, second, forward("from-second")).await.unwrap();
    let out: Vec<String> = all_pending(&q)
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
        let q = reopen(dir.path());
        let writes = (0..200).map(|i| {
            put(
                &q,
                vec![("f/0".into(), envelope(&format!("m{i}"), &format!("k{i}")))],
            )
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
    let q = reopen(dir.path());
    assert_eq!(
        depth(&q, "f/0").await,
        200,
        "every acknowledged write survives a reopen"
    );
}

#[tokio::test]
async fn the_database_stays_bounded_under_a_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let q = reopen(dir.path());
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
        put(&q, batch).await.unwrap();
        while let Some(lease) = take(&q, "f/0").await {
            let env = lease.envelope.clone();
            let outcome = Outcome {
                id: env.message.id.clone(),
                root: env.root.clone(),
                flow: "f".into(),
                key: env.message.key.clone(),
                kind: env.message.kind.clone(),
                plugin: "sink".into(),
                accepted_ms: 0,
                root_kind: String::new(),
                trace_id: String::new(),
                undo: None,
                trail: vec![],
                attempts: vec![],
                at_ms: now_ms(),
                result: OutcomeKind::Delivered {
                    reference: "ERP-1".into(),
                    detail: None,
                },
            };
            finish(&q, lease, Completion::finish(outcome))
                .await
                .unwrap();
        }
        // Retention zero: everything finished is past it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        q.sweep(Duration::ZERO).await.unwrap();
        sizes.push(std::fs::metadata(&file).unwrap().len());
    }
    assert_eq!(depth(&q, "f/0").await, 0);
    assert!(
        q.events(1, u64::MAX).await.unwrap().is_empty(),
        "old events swept"
    );
    assert!(
        q.outcome(&"r11-0000".into()).await.unwrap().is_none(),
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
    let first = claimed(
        &q,
        vec![("f/0".into(), envelope("m1", "k"))],
        claim("a", now_ms() + 60_000),
    );
    assert_eq!(first.await.unwrap(), Enqueued::Committed);
    let again = claimed(
        &q,
        vec![("f/0".into(), envelope("m2", "k"))],
        claim("a", now_ms() + 60_000),
    );
    assert_eq!(again.await.unwrap(), Enqueued::Duplicate(vec!["m1".into()]));
    let other = claimed(
        &q,
        vec![("f/0".into(), envelope("m3", "k"))],
        claim("b", now_ms() + 60_000),
    );
    assert_eq!(other.await.unwrap(), Enqueued::Conflict);

    // A key past its retention is forgotten: the same key is free again.
    let stale = IdempotencyClaim {
        key: "old".into(),
        ..claim("a", now_ms() - 1)
    };
    assert_eq!(
        claimed(
            &q,
            vec![("f/0".into(), envelope("m4", "k4"))],
            stale.clone()
        )
        .await
        .unwrap(),
        Enqueued::Committed
    );
    assert!(
        q.idempotency("cpq", "old").await.unwrap().is_none(),
        "expired records are not answered from"
    );
    q.sweep(Duration::from_secs(3600)).await.unwrap();
    let txn = q.node.db().begin_read().unwrap();
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
        claimed(&q, vec![("f/0".into(), envelope("m5", "k5"))], reuse)
            .await
            .unwrap(),
        Enqueued::Committed
    );
}

fn kv(store: &RedbStore, namespace: &str, quota: Option<u64>) -> crate::store::KvNamespace {
    crate::store::KvNamespace::new(Arc::new(store.clone()), namespace, quota)
}

#[tokio::test]
async fn kv_namespaces_do_not_see_each_other() {
    let (_dir, q) = open();
    let (a, b) = (kv(&q, "plugin-a", None), kv(&q, "plugin-b", None));
    a.set("customer/001", b"ACME").await.unwrap();
    assert_eq!(
        a.get("customer/001").await.unwrap().as_deref(),
        Some(&b"ACME"[..])
    );
    assert_eq!(b.get("customer/001").await.unwrap(), None);
    b.delete("customer/001").await.unwrap();
    assert!(a.get("customer/001").await.unwrap().is_some());
    a.delete("customer/001").await.unwrap();
    assert_eq!(a.get("customer/001").await.unwrap(), None);
}

#[tokio::test]
async fn writes_over_the_quota_are_refused_before_anything_is_written() {
    let (_dir, q) = open();
    let ns = kv(&q, "p", Some(20));
    // Three calls that each fitted when they wrote, 10 bytes each.
    let mut first = ns.writes();
    first.put("k1", Some(vec![0; 8]));
    let mut second = ns.writes();
    second.put("k2", Some(vec![0; 8]));
    let mut third = ns.writes();
    third.put("k3", Some(vec![0; 8]));
    q.kv_commit(&first).await.unwrap();
    q.kv_commit(&second).await.unwrap();
    let refused = q.kv_commit(&third).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "not committed: key-value quota of 20 bytes exceeded (30 bytes after this step's writes)"
    );
    assert_eq!(
        ns.get("k3").await.unwrap(),
        None,
        "nothing of it was written"
    );
    // Shrinking is always allowed, even over the quota.
    let mut shrink = ns.writes();
    shrink.put("k1", None);
    q.kv_commit(&shrink).await.unwrap();
}

#[tokio::test]
async fn a_step_over_the_kv_quota_commits_nothing_and_is_leased_again() {
    let (_dir, q) = open();
    let ns = kv(&q, "p", Some(10));
    ns.set("k1", &[0; 8]).await.unwrap(); // 10 bytes: full
    put(&q, vec![("f/0".into(), envelope("m1", "k"))])
        .await
        .unwrap();
    let lease = take(&q, "f/0").await.unwrap();
    let mut writes = ns.writes();
    writes.put("k2", Some(vec![0; 8]));
    let finished = Completion::forward(vec![("f/1".into(), envelope("m1.0", "k"))]);
    let refused = q.complete(lease, finished, Some(writes)).await.unwrap_err();
    assert!(matches!(refused, CompleteError::OverQuota(_)), "{refused}");
    assert_eq!(depth(&q, "f/1").await, 0, "no output committed");
    assert_eq!(ns.get("k2").await.unwrap(), None, "no write committed");
    assert!(take(&q, "f/0").await.is_some(), "the input is leased again");
}

#[tokio::test]
async fn usage_counts_keys_and_values_together() {
    let (_dir, q) = open();
    let ns = kv(&q, "p", Some(20));
    ns.set("k1", &[0; 8]).await.unwrap(); // 10 bytes
    assert_eq!(ns.usage().await.unwrap(), 10);
    ns.set("k1", &[0; 16]).await.unwrap(); // replaced: 18 bytes
    assert_eq!(ns.usage().await.unwrap(), 18);
    assert!(ns.set("k2", &[0; 2]).await.is_err(), "22 bytes: over");
    ns.delete("k1").await.unwrap();
    ns.set("k2", &[0; 2]).await.unwrap();
    assert_eq!(ns.usage().await.unwrap(), 4);
    assert_eq!(ns.quota(), Some(20));
}

#[tokio::test]
async fn a_waiting_lease_wakes_on_new_work_and_when_a_retry_comes_due() {
    let (_dir, q) = open();
    let (wait, hold) = (Duration::from_secs(20), Duration::from_secs(60));
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.lease("f/0", wait, hold).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    put(&q, vec![("f/0".into(), envelope("m1", "k"))])
        .await
        .unwrap();
    let lease = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("woken by the commit, long before the wait ends");
    let mut retry = lease.envelope.clone();
    retry.not_before_ms = now_ms() + 200;
    let started = Instant::now();
    finish(&q, lease, Completion::Retry(Box::new(retry)))
        .await
        .unwrap();
    let again = q.lease("f/0", wait, hold).await.unwrap();
    assert!(again.is_some(), "leased again once due");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < wait / 2,
        "waited {waited:?} for a retry due in 200 ms"
    );
}

/// End message `id` (alone in `f/s`) with an outcome at `at_ms`: a dead letter or
/// consumed.
async fn end(store: &RedbStore, id: &str, at_ms: u64, dead: bool) {
    put(store, vec![("f/s".into(), envelope(id, id))])
        .await
        .unwrap();
    let lease = take(store, "f/s").await.unwrap();
    assert_eq!(lease.envelope.message.id, id);
    let result = if dead {
        OutcomeKind::DeadLetter {
            error: "invalid: no".into(),
        }
    } else {
        OutcomeKind::Consumed
    };
    let outcome = Outcome {
        id: id.into(),
        root: id.into(),
        flow: "f".into(),
        key: id.into(),
        kind: "QuoteApproved".into(),
        plugin: "s".into(),
        accepted_ms: 0,
        root_kind: String::new(),
        trace_id: String::new(),
        undo: None,
        trail: vec![],
        attempts: vec![],
        at_ms,
        result,
    };
    finish(store, lease, Completion::finish(outcome))
        .await
        .unwrap();
}

fn claim(key: &str, expires_ms: u64) -> IdempotencyClaim {
    IdempotencyClaim {
        scope: "cpq".into(),
        key: key.into(),
        payload: format!("sha256:{key}"),
        expires_ms,
    }
}

/// The ids in a table of `&str` keys, sorted.
fn ids(store: &RedbStore, table: TableDefinition<&str, &[u8]>) -> Vec<String> {
    let txn = store.read().unwrap();
    let table = txn.open_table(table).unwrap();
    let mut ids: Vec<String> = table
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The idempotency keys kept, sorted.
fn keys(store: &RedbStore) -> Vec<String> {
    let txn = store.read().unwrap();
    let table = txn.open_table(IDEMPOTENCY).unwrap();
    let mut keys: Vec<String> = table
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value().1.to_owned())
        .collect();
    keys.sort();
    keys
}

/// Each time index holds exactly one entry per record of its table, with the record's
/// time.
fn assert_indexes_match(store: &RedbStore) {
    let txn = store.read().unwrap();
    let mut expected = Vec::new();
    for entry in txn.open_table(OUTCOMES).unwrap().iter().unwrap() {
        let outcome: Outcome = decode(entry.unwrap().1.value()).unwrap();
        expected.push((outcome.at_ms, outcome.id.to_string()));
    }
    let indexed: Vec<(u64, String)> = txn
        .open_table(by_time::OUTCOMES_BY_TIME)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| {
            let (k, _) = entry.unwrap();
            let (at_ms, id) = k.value();
            (at_ms, id.to_owned())
        })
        .collect();
    expected.sort();
    assert_eq!(indexed, expected, "outcomes by time");

    let mut expected = Vec::new();
    let mut per_flow = BTreeMap::<String, u64>::new();
    for entry in txn.open_table(DEAD).unwrap().iter().unwrap() {
        let letter: DeadLetter = decode(entry.unwrap().1.value()).unwrap();
        expected.push((letter.outcome.at_ms, letter.outcome.id.to_string()));
        *per_flow.entry(letter.outcome.flow).or_default() += 1;
    }
    assert_eq!(
        by_time::dead_per_flow(&txn).unwrap(),
        per_flow,
        "dead letters per flow"
    );
    let indexed: Vec<(u64, String)> = txn
        .open_table(by_time::DEAD_BY_TIME)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| {
            let (k, _) = entry.unwrap();
            let (at_ms, id) = k.value();
            (at_ms, id.to_owned())
        })
        .collect();
    expected.sort();
    assert_eq!(indexed, expected, "dead letters by time");

    let mut expected = Vec::new();
    for entry in txn.open_table(IDEMPOTENCY).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        let (scope, key) = k.value();
        let record: IdempotencyRecord = decode(v.value()).unwrap();
        expected.push((record.expires_ms, scope.to_owned(), key.to_owned()));
    }
    let indexed: Vec<(u64, String, String)> = txn
        .open_table(by_time::IDEMPOTENCY_BY_EXPIRY)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| {
            let (k, _) = entry.unwrap();
            let (expires_ms, scope, key) = k.value();
            (expires_ms, scope.to_owned(), key.to_owned())
        })
        .collect();
    expected.sort();
    assert_eq!(indexed, expected, "idempotency records by expiry");
}

fn letter_ids(letters: &[DeadLetter]) -> Vec<&str> {
    letters.iter().map(|d| d.outcome.id.as_str()).collect()
}

#[tokio::test]
async fn a_sweep_removes_exactly_the_old_outcomes_and_the_expired_records() {
    let (_dir, q) = open();
    let now = now_ms();
    let hour = 3_600_000;
    // Ids out of time order, so the id order is not the time order.
    for (id, at_ms) in [
        ("c-old", now - 3 * hour),
        ("a-recent", now - 1000),
        ("d-old", now - 2 * hour),
        ("b-edge", now - hour + 60_000),
    ] {
        end(&q, id, at_ms, false).await;
    }
    end(&q, "e-dead-old", now - 5 * hour, true).await;
    for (key, expires_ms) in [
        ("k-expired", now - 1),
        ("k-live", now + hour),
        ("a-expired", now - hour),
        ("z-live", now + 60_000),
    ] {
        claimed(
            &q,
            vec![("f/0".into(), envelope(key, key))],
            claim(key, expires_ms),
        )
        .await
        .unwrap();
    }
    assert_indexes_match(&q);

    q.sweep(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        ids(&q, OUTCOMES),
        ["a-recent", "b-edge"],
        "the outcomes older than the retention went, the rest stayed"
    );
    assert_eq!(
        keys(&q),
        ["k-live", "z-live"],
        "only the expired records went"
    );
    assert_eq!(
        letter_ids(&q.dead_letters().await.unwrap()),
        ["e-dead-old"],
        "dead letters stay until redriven or discarded"
    );
    assert_indexes_match(&q);

    // Nothing else is old: another pass removes nothing.
    q.sweep(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(ids(&q, OUTCOMES), ["a-recent", "b-edge"]);
    assert_eq!(keys(&q), ["k-live", "z-live"]);
}

#[tokio::test]
async fn a_sweep_pass_takes_at_most_its_bound_oldest_first() {
    let (_dir, q) = open();
    let now = now_ms();
    for (i, id) in ["e", "d", "c", "b", "a"].into_iter().enumerate() {
        end(&q, id, now - 10_000 + i as u64, false).await;
        claimed(
            &q,
            vec![("f/0".into(), envelope(&format!("m-{id}"), id))],
            claim(id, now - 10_000 + i as u64),
        )
        .await
        .unwrap();
    }
    let sweep = |most| {
        let txn = q.node.db().begin_write().unwrap();
        let swept = by_time::sweep(&txn, now, now, most).unwrap();
        txn.commit().unwrap();
        swept
    };
    let swept = sweep(2);
    assert_eq!((swept.outcomes, swept.idempotency), (2, 2));
    assert_eq!(
        ids(&q, OUTCOMES),
        ["a", "b", "c"],
        "the two oldest went first"
    );
    assert_eq!(keys(&q), ["a", "b", "c"]);
    assert_indexes_match(&q);
    let swept = sweep(10);
    assert_eq!((swept.outcomes, swept.idempotency), (3, 3));
    assert!(ids(&q, OUTCOMES).is_empty() && keys(&q).is_empty());
    assert_eq!(sweep(10), by_time::Swept::default());
    assert_indexes_match(&q);
}

#[tokio::test]
async fn the_indexes_follow_overwrites_discards_and_redrives() {
    let (_dir, q) = open();
    let now = now_ms();
    // An expired key claimed again: its record (and its index entry) is replaced.
    claimed(
        &q,
        vec![("f/0".into(), envelope("m1", "k"))],
        claim("K", now - 1),
    )
    .await
    .unwrap();
    assert_eq!(
        claimed(
            &q,
            vec![("f/0".into(), envelope("m2", "k"))],
            claim("K", now + 60_000)
        )
        .await
        .unwrap(),
        Enqueued::Committed
    );
    assert_indexes_match(&q);
    q.sweep(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        keys(&q),
        ["K"],
        "the live record is not swept by its old expiry"
    );

    // Dead letters in time order, whatever their ids.
    end(&q, "d3", now - 3000, true).await;
    end(&q, "d1", now - 1000, true).await;
    end(&q, "d2", now - 2000, true).await;
    end(&q, "c1", now - 2500, false).await;
    assert_indexes_match(&q);
    let all = q.dead_letters().await.unwrap();
    assert_eq!(letter_ids(&all), ["d3", "d2", "d1"], "oldest first");
    let first = q.dead_letters_page(None, 2).await.unwrap();
    assert_eq!(letter_ids(&first), ["d3", "d2"]);
    let last = &first[1].outcome;
    let next = q
        .dead_letters_page(Some((last.at_ms, &last.id)), 2)
        .await
        .unwrap();
    assert_eq!(letter_ids(&next), ["d1"], "the page after the cursor");

    // A discard forgets the letter (its outcome stays), a redrive the letter and
    // its outcome.
    assert!(q.discard(&"d2".into()).await.unwrap());
    assert!(q.redrive(&"d3".into()).await.unwrap());
    assert_indexes_match(&q);
    assert_eq!(letter_ids(&q.dead_letters().await.unwrap()), ["d1"]);
    assert_eq!(ids(&q, OUTCOMES), ["c1", "d1", "d2"]);

    // The redriven message dies again, later: a new entry, at its new time.
    let lease = take(&q, "f/s").await.unwrap();
    assert_eq!(lease.envelope.message.id, "d3");
    let again = Outcome {
        at_ms: now,
        ..q.dead_letter(&"d1".into()).await.unwrap().unwrap().outcome
    };
    let again = Outcome {
        id: "d3".into(),
        root: "d3".into(),
        ..again
    };
    finish(&q, lease, Completion::finish(again)).await.unwrap();
    assert_eq!(letter_ids(&q.dead_letters().await.unwrap()), ["d1", "d3"]);
    assert_indexes_match(&q);

    // An outcome written again for the same id (the later one wins) keeps one entry.
    end(&q, "c1", now - 100, false).await;
    assert_indexes_match(&q);
    q.sweep(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        ids(&q, OUTCOMES),
        ["c1", "d3"],
        "swept by their latest time: c1 is recent now"
    );
    assert_indexes_match(&q);
}

#[tokio::test]
async fn a_database_written_without_the_indexes_gets_them_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let hour = 3_600_000;
    {
        let q = reopen(dir.path());
        end(&q, "b-old", now - 2 * hour, false).await;
        end(&q, "a-new", now - 1000, false).await;
        end(&q, "z-dead", now - 3 * hour, true).await;
        end(&q, "y-dead", now - 1000, true).await;
        end(&q, "x-dead", now - 2 * hour, true).await;
        for (key, expires_ms) in [("old", now - 1), ("live", now + hour)] {
            claimed(
                &q,
                vec![("f/0".into(), envelope(key, key))],
                claim(key, expires_ms),
            )
            .await
            .unwrap();
        }
    }
    // As a database from before the indexes: the tables without them.
    {
        let node = NodeDb::open(dir.path()).unwrap();
        let txn = node.db().begin_write().unwrap();
        assert!(txn.delete_table(by_time::OUTCOMES_BY_TIME).unwrap());
        assert!(txn.delete_table(by_time::DEAD_BY_TIME).unwrap());
        assert!(txn.delete_table(by_time::IDEMPOTENCY_BY_EXPIRY).unwrap());
        assert!(txn.delete_table(by_time::DEAD_PER_FLOW).unwrap());
        txn.commit().unwrap();
    }
    let q = reopen(dir.path());
    assert_indexes_match(&q);
    assert_eq!(
        letter_ids(&q.dead_letters_page(None, 2).await.unwrap()),
        ["z-dead", "x-dead"]
    );
    q.sweep(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(ids(&q, OUTCOMES), ["a-new", "y-dead"]);
    assert_eq!(keys(&q), ["live"]);
    assert_indexes_match(&q);
    drop(q);

    // An index missing entries (written since by a binary that did not keep it) is
    // built again; intact ones are left as they are.
    {
        let node = NodeDb::open(dir.path()).unwrap();
        let txn = node.db().begin_write().unwrap();
        txn.open_table(by_time::DEAD_BY_TIME)
            .unwrap()
            .pop_first()
            .unwrap()
            .unwrap();
        txn.commit().unwrap();
    }
    let q = reopen(dir.path());
    assert_indexes_match(&q);
    assert_eq!(
        letter_ids(&q.dead_letters().await.unwrap()),
        ["z-dead", "x-dead", "y-dead"]
    );
    let txn = q.node.db().begin_write().unwrap();
    assert!(
        by_time::build(&txn).unwrap().is_empty(),
        "nothing to build once built"
    );
}
