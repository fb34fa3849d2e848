//! The durable queue against raw redb, in one run:
//!
//! - `queue`: many concurrent producers each enqueue one ~2 KB message at a time and
//!   wait until it is durable (what ingress does); group commit batches them;
//! - `raw`: the same bytes, inserted straight into a redb table in transactions of the
//!   same average batch size the queue reached, each committed durably.
//!
//! - `lease`: the time a lease takes with 100 and with 100,000 messages queued, half of
//!   them waiting behind one hot business key (a lease must not grow with the queue).
//!
//! - `sweep` and `dlq_list`: one retention and idempotency sweep pass with nothing to
//!   remove, and listing the 50 oldest dead letters, with 100 and with 100,000 records
//!   in each table the sweep and the listing touch (outcomes, idempotency records,
//!   dead letters): neither may grow with the tables. On redb's in-memory backend:
//!   the sweep's durable commit costs the same at any size, and its fsync, on a
//!   shared disk, varies more than the whole of the sweep's own work. Beside them,
//!   `commit_us`: a write with nothing in it through the same committer, the floor
//!   of a sweep pass (what the sweep adds is the difference).
//!
//! Prints `bench: queue_vs_raw_redb <ratio> x` (target >= 0.5),
//! `bench: lease_100k_vs_100 <ratio> x`, `bench: sweep_100k_vs_100 <ratio> x` and
//! `bench: dlq_list_100k_vs_100 <ratio> x` (targets close to 1) and the figures behind
//! them.

use redb::{Database, TableDefinition};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;
use tenon::model::{Envelope, IdempotencyClaim, Outcome, OutcomeKind, StoredMessage, now_ms};
use tenon::store::redb::RedbStore;
use tenon::store::{Completion, KvNamespace, NodeDb, Store};

const MESSAGES: usize = 20_000;
const PRODUCERS: usize = 256;
const BODY: usize = 2 * 1024;

fn envelope(i: usize) -> Envelope {
    keyed(i, format!("Q-{i:06}"))
}

fn keyed(i: usize, key: String) -> Envelope {
    let message = StoredMessage {
        id: format!("01J{i:020}").into(),
        key,
        kind: "QuoteApproved".into(),
        content_type: "application/msgpack".into(),
        headers: vec![],
        body: vec![0x5a; BODY],
    };
    Envelope::entering("quote-to-order", &["quote-to-order".to_owned()], message, 0)
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;

    // The queue: concurrent producers, one message each per await.
    let (queue_rate, commits, bytes_per_message) = rt.block_on(async {
        let queue = RedbStore::open(&NodeDb::open(&dir.path().join("queue"))?)?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..PRODUCERS {
            let queue = queue.clone();
            tasks.spawn(async move {
                for i in (p..MESSAGES).step_by(PRODUCERS) {
                    queue
                        .enqueue(vec![("quote-to-order/0".into(), envelope(i))], None)
                        .await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
        let bytes = rmp_serde::to_vec_named(&envelope(0))?.len();
        Ok::<_, anyhow::Error>((rate, queue.commits(), bytes))
    })?;
    let batch = (MESSAGES as f64 / commits as f64).round().max(1.0) as usize;

    // Raw redb: the same bytes per message, the same batch size, durable commits.
    const RAW: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("raw");
    let db = Database::create(dir.path().join("raw.redb"))?;
    let record = vec![0x5a_u8; bytes_per_message];
    let started = Instant::now();
    let mut seq = 0u64;
    while (seq as usize) < MESSAGES {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(RAW)?;
            for _ in 0..batch.min(MESSAGES - seq as usize) {
                table.insert(("quote-to-order/0", seq), record.as_slice())?;
                seq += 1;
            }
        }
        txn.commit()?;
    }
    let raw_rate = MESSAGES as f64 / started.elapsed().as_secs_f64();

    tenon_testkit::bench::line("queue_enqueue_durable", queue_rate, "msg/s", 0);
    tenon_testkit::bench::line("queue_commits", commits as f64, "commits", 0);
    tenon_testkit::bench::line("queue_avg_batch", batch as f64, "msg", 0);
    tenon_testkit::bench::line("raw_redb_same_batch", raw_rate, "msg/s", 0);
    tenon_testkit::bench::line("queue_vs_raw_redb", queue_rate / raw_rate, "x", 3);

    let small = rt.block_on(lease_micros(&dir.path().join("lease-100"), 100))?;
    let large = rt.block_on(lease_micros(&dir.path().join("lease-100k"), 100_000))?;
    tenon_testkit::bench::line("lease_us_at_100_queued", small as f64, "us", 1);
    tenon_testkit::bench::line("lease_us_at_100k_queued", large as f64, "us", 1);
    tenon_testkit::bench::line("lease_100k_vs_100", (large / small) as f64, "x", 2);

    let [small, large] = rt.block_on(tables_micros([100, 100_000]))?;
    tenon_testkit::bench::line("sweep_us_100", small.sweep, "us", 1);
    tenon_testkit::bench::line("sweep_us_100k", large.sweep, "us", 1);
    tenon_testkit::bench::line("sweep_100k_vs_100", large.sweep / small.sweep, "x", 2);
    tenon_testkit::bench::line("commit_us_100", small.commit, "us", 1);
    tenon_testkit::bench::line("commit_us_100k", large.commit, "us", 1);
    tenon_testkit::bench::line("dlq_list_us_100", small.list, "us", 1);
    tenon_testkit::bench::line("dlq_list_us_100k", large.list, "us", 1);
    tenon_testkit::bench::line("dlq_list_100k_vs_100", large.list / small.list, "x", 2);
    Ok(())
}

/// Queue `depth` messages (every other one behind the same hot key), then time the
/// leases of 100 of them; the mean in microseconds.
async fn lease_micros(path: &std::path::Path, depth: usize) -> anyhow::Result<f64> {
    const LEASES: usize = 100;
    let queue = RedbStore::open(&NodeDb::open(path)?)?;
    for chunk in (0..depth).collect::<Vec<_>>().chunks(5_000) {
        let items = chunk
            .iter()
            .map(|&i| {
                let key = if i % 2 == 0 {
                    "HOT".to_owned()
                } else {
                    format!("Q-{i:06}")
                };
                ("quote-to-order/0".to_owned(), keyed(i, key))
            })
            .collect();
        queue.enqueue(items, None).await?;
    }
    let started = Instant::now();
    for _ in 0..LEASES.min(depth / 2) {
        let lease = queue
            .lease("quote-to-order/0", Duration::ZERO, Duration::from_secs(60))
            .await?;
        anyhow::ensure!(lease.is_some(), "a ready message was not leased");
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / LEASES.min(depth / 2) as f64)
}

/// The median time of one sweep pass, of an empty write and of one listing, in
/// microseconds.
struct Tables {
    sweep: f64,
    commit: f64,
    list: f64,
}

/// For each size, a store whose tables hold that many idempotency records, outcomes
/// and dead letters; then, passes of the stores in turn (so that what else the
/// machine does weighs on both alike): the time of a sweep that removes nothing
/// (everything is recent and unexpired), of a write with nothing in it, and of listing
/// the 50 oldest dead letters.
async fn tables_micros<const N: usize>(sizes: [usize; N]) -> anyhow::Result<[Tables; N]> {
    const PASSES: usize = 51;
    const PAGE: usize = 50;
    let mut stores = Vec::with_capacity(N);
    for records in sizes {
        stores.push(filled(records).await?);
    }
    let empty: Vec<_> = stores
        .iter()
        .map(|store| KvNamespace::new(Arc::new(store.clone()), "bench", None).writes())
        .collect();
    let mut times = vec![[const { Vec::new() }; 3]; N];
    for _ in 0..PASSES {
        for (((store, records), empty), [sweeps, commits, lists]) in
            stores.iter().zip(sizes).zip(&empty).zip(&mut times)
        {
            let started = Instant::now();
            store.sweep(Duration::from_secs(3600)).await?;
            sweeps.push(started.elapsed().as_secs_f64() * 1e6);
            let started = Instant::now();
            store.kv_commit(empty).await?;
            commits.push(started.elapsed().as_secs_f64() * 1e6);
            let started = Instant::now();
            let page = first_dead_letters(store, PAGE).await?;
            lists.push(started.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(page.len() == PAGE.min(records), "a short page");
            anyhow::ensure!(
                page.windows(2)
                    .all(|w| w[0].outcome.at_ms <= w[1].outcome.at_ms),
                "oldest first"
            );
        }
    }
    for (store, records) in stores.iter().zip(sizes) {
        anyhow::ensure!(
            first_dead_letters(store, records).await?.len() == records,
            "the sweep removed nothing"
        );
    }
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let mut times = times.into_iter();
    Ok(std::array::from_fn(|_| {
        let [sweeps, commits, lists] = times.next().unwrap_or_default();
        Tables {
            sweep: median(sweeps),
            commit: median(commits),
            list: median(lists),
        }
    }))
}

/// A store (on redb's in-memory backend) with `records` idempotency records, outcomes
/// and dead letters: each message enqueued with its own claim, then dead-lettered, by
/// concurrent writers as ingress and workers would.
async fn filled(records: usize) -> anyhow::Result<RedbStore> {
    const WRITERS: usize = 64;
    let memory = redb::backends::InMemoryBackend::new();
    let store = RedbStore::open(&NodeDb::open_with_backend(memory)?)?;
    let queue = "quote-to-order/0";
    let letter = |i: usize| {
        let mut e = keyed(i, format!("Q-{i:06}"));
        e.message.body.truncate(512);
        e
    };
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (w..records).step_by(WRITERS) {
                let claim = IdempotencyClaim {
                    scope: "cpq-source".into(),
                    key: format!("K-{i:06}"),
                    payload: format!("sha256:{i:064}"),
                    expires_ms: now_ms() + 3_600_000,
                };
                store
                    .enqueue(vec![(queue.into(), letter(i))], Some(claim))
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let taken = Arc::new(AtomicUsize::new(0));
    for _ in 0..WRITERS {
        let (store, taken) = (store.clone(), taken.clone());
        tasks.spawn(async move {
            while taken.fetch_add(1, Ordering::Relaxed) < records {
                let lease = store
                    .lease(queue, Duration::from_secs(5), Duration::from_secs(60))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("a queued message was not leased"))?;
                let e = &lease.envelope;
                let dead = Outcome {
                    id: e.message.id.clone(),
                    root: e.root.clone(),
                    flow: e.flow.clone(),
                    key: e.message.key.clone(),
                    kind: e.message.kind.clone(),
                    plugin: "quote-to-order".into(),
                    trail: vec![],
                    attempts: vec![],
                    at_ms: now_ms(),
                    result: OutcomeKind::DeadLetter {
                        error: "invalid: no price list for the customer".into(),
                    },
                    accepted_ms: e.accepted_ms,
                    root_kind: e.root_kind.clone(),
                    trace_id: String::new(),
                    undo: None,
                };
                store
                    .complete(lease, Completion::finish(dead), None)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    anyhow::ensure!(
        store.depths().await?.get(queue).copied().unwrap_or(0) == 0,
        "every message was dead-lettered"
    );
    Ok(store)
}

/// The `limit` oldest dead letters (the first page of the listing).
async fn first_dead_letters(
    store: &RedbStore,
    limit: usize,
) -> anyhow::Result<Vec<tenon::model::DeadLetter>> {
    Ok(store.dead_letters_page(None, limit).await?)
}
