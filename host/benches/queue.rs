//! The durable queue against raw redb, in one run:
//!
//! - `queue`: many concurrent producers each enqueue one ~2 KB message at a time and
//!   wait until it is durable (what ingress does); group commit batches them;
//! - `raw`: the same bytes, inserted straight into a redb table in transactions of the
//!   same average batch size the queue reached, each committed durably.
//!
//! Prints `bench: queue_vs_raw_redb <ratio> x` (target >= 0.5) and the figures behind it.

use redb::{Database, TableDefinition};
use std::time::Instant;
use tenon::model::{Envelope, StoredMessage};
use tenon::store::Storage;
use tenon::store::queue::Queue;

const MESSAGES: usize = 20_000;
const PRODUCERS: usize = 256;
const BODY: usize = 2 * 1024;

fn envelope(i: usize) -> Envelope {
    let message = StoredMessage {
        id: format!("01J{i:020}").into(),
        key: format!("Q-{i:06}"),
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
        let queue = Queue::new(Storage::open(&dir.path().join("queue"))?);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..PRODUCERS {
            let queue = queue.clone();
            tasks.spawn(async move {
                for i in (p..MESSAGES).step_by(PRODUCERS) {
                    queue
                        .enqueue(vec![("quote-to-order/0".into(), envelope(i))])
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

    println!("bench: queue_enqueue_durable {queue_rate:.0} msg/s");
    println!("bench: queue_commits {commits} commits");
    println!("bench: queue_avg_batch {batch} msg");
    println!("bench: raw_redb_same_batch {raw_rate:.0} msg/s");
    println!("bench: queue_vs_raw_redb {:.3} x", queue_rate / raw_rate);
    Ok(())
}
