//! Time-ordered indexes of the tables that are swept or listed oldest first, so that
//! a sweep or a listing reads only what it removes or returns, however large the
//! table:
//!
//! - outcomes by `(at_ms, id)`: the retention sweep takes the head older than the
//!   retention;
//! - idempotency records by `(expires_ms, scope, key)`: the sweep takes the expired
//!   head;
//! - dead letters by `(at_ms, id)`: the listing, oldest first, reads a page from the
//!   head (or from a cursor); beside it, a count per flow, so that a metrics scrape
//!   reads one row per flow instead of every letter.
//!
//! Every write of a main table goes through the functions here, in the same
//! transaction as its index entry: an insert over an existing record removes the old
//! entry, every removal (sweep, redrive, discard) removes its entry, so each index
//! holds exactly one entry per record. A database written before the indexes existed
//! (or one whose index does not count as many entries as its table) gets the index
//! built from the table at open ([`build`]).

use super::{DEAD, IDEMPOTENCY, OUTCOMES, decode, encode};
use crate::model::{DeadLetter, IdempotencyRecord, MessageId, Outcome};
use crate::store::StoreError;
use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Outcomes in the order they ended: (at_ms, message id).
pub(super) const OUTCOMES_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("outcomes_by_time");
/// Dead letters in the order they died: (at_ms of their outcome, message id).
pub(super) const DEAD_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("dead_by_time");
/// How many dead letters each flow has.
pub(super) const DEAD_PER_FLOW: TableDefinition<&str, u64> = TableDefinition::new("dead_per_flow");
/// Idempotency records in the order they expire: (expires_ms, scope, key).
pub(super) const IDEMPOTENCY_BY_EXPIRY: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("idempotency_by_expiry");

/// The time of an encoded outcome, read without decoding the rest of it.
#[derive(Deserialize)]
struct Ended {
    at_ms: u64,
}

/// The time and flow of an encoded dead letter (its outcome's).
#[derive(Deserialize)]
struct Died {
    outcome: DiedIn,
}

#[derive(Deserialize)]
struct DiedIn {
    at_ms: u64,
    flow: String,
}

/// The expiry of an encoded idempotency record.
#[derive(Deserialize)]
struct Expiry {
    expires_ms: u64,
}

/// Store `outcome` (replacing any earlier outcome of the same message) with its index
/// entry.
pub(super) fn put_outcome(txn: &WriteTransaction, outcome: &Outcome) -> Result<(), StoreError> {
    let id = outcome.id.as_str();
    let mut table = txn.open_table(OUTCOMES)?;
    let mut index = txn.open_table(OUTCOMES_BY_TIME)?;
    if let Some(earlier) = table.insert(id, encode(outcome)?.as_slice())? {
        index.remove((decode::<Ended>(earlier.value())?.at_ms, id))?;
    }
    index.insert((outcome.at_ms, id), ())?;
    Ok(())
}

/// Forget the outcome of `id` and its index entry; whether there was one.
pub(super) fn remove_outcome(txn: &WriteTransaction, id: &str) -> Result<bool, StoreError> {
    let mut table = txn.open_table(OUTCOMES)?;
    let Some(removed) = table.remove(id)? else {
        return Ok(false);
    };
    let at_ms = decode::<Ended>(removed.value())?.at_ms;
    txn.open_table(OUTCOMES_BY_TIME)?.remove((at_ms, id))?;
    Ok(true)
}

/// Store a dead letter (replacing any earlier one of the same message) with its index
/// entry.
pub(super) fn put_dead(txn: &WriteTransaction, letter: &DeadLetter) -> Result<(), StoreError> {
    let id = letter.outcome.id.as_str();
    let mut table = txn.open_table(DEAD)?;
    let mut index = txn.open_table(DEAD_BY_TIME)?;
    if let Some(earlier) = table.insert(id, encode(letter)?.as_slice())? {
        let earlier = decode::<Died>(earlier.value())?.outcome;
        index.remove((earlier.at_ms, id))?;
        count_dead(txn, &earlier.flow, -1)?;
    }
    index.insert((letter.outcome.at_ms, id), ())?;
    count_dead(txn, &letter.outcome.flow, 1)
}

/// Add `by` to the count of `flow`'s dead letters (a count of zero is removed).
fn count_dead(txn: &WriteTransaction, flow: &str, by: i64) -> Result<(), StoreError> {
    let mut counts = txn.open_table(DEAD_PER_FLOW)?;
    let now = counts.get(flow)?.map_or(0, |c| c.value());
    match now.saturating_add_signed(by) {
        0 => counts.remove(flow)?.map(drop),
        n => counts.insert(flow, n)?.map(drop),
    };
    Ok(())
}

/// How many dead letters each flow has.
pub(super) fn dead_per_flow(txn: &ReadTransaction) -> Result<BTreeMap<String, u64>, StoreError> {
    counts(&txn.open_table(DEAD_PER_FLOW)?)
}

fn counts(
    table: &impl ReadableTable<&'static str, u64>,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for entry in table.iter()? {
        let (flow, count) = entry?;
        out.insert(flow.value().to_owned(), count.value());
    }
    Ok(out)
}

/// Take the dead letter of `id` out, with its index entry.
pub(super) fn take_dead(
    txn: &WriteTransaction,
    id: &str,
) -> Result<Option<DeadLetter>, StoreError> {
    let mut table = txn.open_table(DEAD)?;
    let Some(removed) = table.remove(id)? else {
        return Ok(None);
    };
    let letter: DeadLetter = decode(removed.value())?;
    txn.open_table(DEAD_BY_TIME)?
        .remove((letter.outcome.at_ms, id))?;
    count_dead(txn, &letter.outcome.flow, -1)?;
    Ok(Some(letter))
}

/// Store the idempotency record of `(scope, key)`, replacing `earlier` (the record
/// there, expired) and its index entry.
pub(super) fn put_idempotency(
    txn: &WriteTransaction,
    (scope, key): (&str, &str),
    record: &IdempotencyRecord,
    earlier: Option<&IdempotencyRecord>,
) -> Result<(), StoreError> {
    let mut index = txn.open_table(IDEMPOTENCY_BY_EXPIRY)?;
    if let Some(earlier) = earlier {
        index.remove((earlier.expires_ms, scope, key))?;
    }
    txn.open_table(IDEMPOTENCY)?
        .insert((scope, key), encode(record)?.as_slice())?;
    index.insert((record.expires_ms, scope, key), ())?;
    Ok(())
}

/// What one sweep pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    pub(super) outcomes: usize,
    pub(super) idempotency: usize,
}

/// Remove up to `most` outcomes that ended before `before_ms`, and up to `most`
/// idempotency records that expired at or before `now_ms`, oldest first: only the
/// head of each index is read.
pub(super) fn sweep(
    txn: &WriteTransaction,
    now_ms: u64,
    before_ms: u64,
    most: usize,
) -> Result<Swept, StoreError> {
    let mut index = txn.open_table(OUTCOMES_BY_TIME)?;
    let mut old = Vec::new();
    for entry in index.range(..(before_ms, ""))?.take(most) {
        let (k, _) = entry?;
        let (at_ms, id) = k.value();
        old.push((at_ms, id.to_owned()));
    }
    let mut table = txn.open_table(OUTCOMES)?;
    for (at_ms, id) in &old {
        table.remove(id.as_str())?;
        index.remove((*at_ms, id.as_str()))?;
    }

    let mut index = txn.open_table(IDEMPOTENCY_BY_EXPIRY)?;
    let mut expired = Vec::new();
    for entry in index
        .range(..(now_ms.saturating_add(1), "", ""))?
        .take(most)
    {
        let (k, _) = entry?;
        let (expires_ms, scope, key) = k.value();
        expired.push((expires_ms, scope.to_owned(), key.to_owned()));
    }
    let mut table = txn.open_table(IDEMPOTENCY)?;
    for (expires_ms, scope, key) in &expired {
        table.remove((scope.as_str(), key.as_str()))?;
        index.remove((*expires_ms, scope.as_str(), key.as_str()))?;
    }
    Ok(Swept {
        outcomes: old.len(),
        idempotency: expired.len(),
    })
}

/// Up to `limit` dead letters oldest first (by `(at_ms, id)`), from the oldest or
/// after the letter `after` names.
pub(super) fn dead_page(
    txn: &ReadTransaction,
    after: Option<(u64, &MessageId)>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let index = txn.open_table(DEAD_BY_TIME)?;
    let table = txn.open_table(DEAD)?;
    let range = match after {
        None => index.range::<(u64, &str)>(..)?,
        Some((at_ms, id)) => {
            let from = (at_ms, id.as_str());
            index.range::<(u64, &str)>((
                std::ops::Bound::Excluded(from),
                std::ops::Bound::Unbounded,
            ))?
        }
    };
    let mut out = Vec::new();
    for entry in range {
        if out.len() >= limit {
            break;
        }
        let (k, _) = entry?;
        let (_, id) = k.value();
        if let Some(letter) = table.get(id)? {
            out.push(decode(letter.value())?);
        }
    }
    Ok(out)
}

/// At open: build each index whose entry count differs from its table's (never built:
/// a database from before the indexes, or written by a binary that did not keep
/// them) from the table, in `txn`. Returns the indexes built and their entries.
pub(super) fn build(txn: &WriteTransaction) -> Result<Vec<(&'static str, u64)>, StoreError> {
    let mut built = Vec::new();

    let records = txn.open_table(OUTCOMES)?;
    if txn.open_table(OUTCOMES_BY_TIME)?.len()? != records.len()? {
        txn.delete_table(OUTCOMES_BY_TIME)?;
        let mut index = txn.open_table(OUTCOMES_BY_TIME)?;
        for entry in records.iter()? {
            let (id, value) = entry?;
            index.insert((decode::<Ended>(value.value())?.at_ms, id.value()), ())?;
        }
        built.push(("outcomes", index.len()?));
    }
    drop(records);

    let records = txn.open_table(DEAD)?;
    if txn.open_table(DEAD_BY_TIME)?.len()? != records.len()? {
        txn.delete_table(DEAD_BY_TIME)?;
        let mut index = txn.open_table(DEAD_BY_TIME)?;
        for entry in records.iter()? {
            let (id, value) = entry?;
            let at_ms = decode::<Died>(value.value())?.outcome.at_ms;
            index.insert((at_ms, id.value()), ())?;
        }
        built.push(("dead letters", index.len()?));
    }
    let counted: u64 = counts(&txn.open_table(DEAD_PER_FLOW)?)?.values().sum();
    if counted != records.len()? {
        txn.delete_table(DEAD_PER_FLOW)?;
        let mut per_flow = BTreeMap::<String, u64>::new();
        for entry in records.iter()? {
            let (_, value) = entry?;
            *per_flow
                .entry(decode::<Died>(value.value())?.outcome.flow)
                .or_default() += 1;
        }
        let mut table = txn.open_table(DEAD_PER_FLOW)?;
        for (flow, count) in &per_flow {
            table.insert(flow.as_str(), count)?;
        }
        built.push(("dead letters per flow", records.len()?));
    }
    drop(records);

    let records = txn.open_table(IDEMPOTENCY)?;
    if txn.open_table(IDEMPOTENCY_BY_EXPIRY)?.len()? != records.len()? {
        txn.delete_table(IDEMPOTENCY_BY_EXPIRY)?;
        let mut index = txn.open_table(IDEMPOTENCY_BY_EXPIRY)?;
        for entry in records.iter()? {
            let (k, value) = entry?;
            let (scope, key) = k.value();
            let expires_ms = decode::<Expiry>(value.value())?.expires_ms;
            index.insert((expires_ms, scope, key), ())?;
        }
        built.push(("idempotency records", index.len()?));
    }
    Ok(built)
}
