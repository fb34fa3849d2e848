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
//! Prints `bench: queue_vs_raw_redb <ratio> x` (target >= 0.5),
//! `bench: lease_100k_vs_100 <ratio> x` (target close to 1) and the figures behind them.

use redb::{Database, TableDefinition};
use std::time::Duration;
use std::time::Instant;
use tenon::model::{Envelope, StoredMessage};
use tenon::store::redb::RedbStore;
use tenon::store::{NodeDb, Store};

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
