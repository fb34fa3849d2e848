//! The durable log of business events, with offsets.
//!
//! Ingress appends every accepted message (`Accepted`), and a business rejection
//! appends a `Rejected` event, each in the same transaction as the queue write it
//! belongs to, so the log and the queue never disagree. `tenon replay` re-runs a range
//! of accepted messages through the flow's current plugin versions; the messages keep
//! their ids, so every id derived downstream is the same again and a sink returns the
//! recorded outcome of what it already delivered instead of calling the target twice.

use crate::model::{Event, EventBody};
use crate::store::StoreError;
use crate::store::node::META;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// The log: offset -> encoded [`Event`].
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Append events in the caller's transaction.
pub(super) fn append(
    txn: &WriteTransaction,
    at_ms: u64,
    events: impl IntoIterator<Item = (String, EventBody)>,
) -> Result<(), StoreError> {
    let mut log = txn.open_table(EVENTS)?;
    let mut meta = txn.open_table(META)?;
    let mut offset = meta.get("next_offset")?.map_or(1, |v| v.value());
    for (flow, body) in events {
        let event = Event {
            offset,
            at_ms,
            flow,
            body,
        };
        let bytes = rmp_serde::to_vec_named(&event).map_err(StoreError::damaged)?;
        log.insert(offset, bytes.as_slice())?;
        offset += 1;
    }
    meta.insert("next_offset", offset)?;
    Ok(())
}

/// The events with offsets in `from..=to`, in order.
pub(super) fn read(
    table: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    to: u64,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    for entry in table.range(from..=to)? {
        let (_, v) = entry?;
        out.push(rmp_serde::from_slice(v.value()).map_err(StoreError::damaged)?);
    }
    Ok(out)
}
