//! Plugins' key-value data in the redb store: one table keyed by (namespace, key),
//! and the bytes each namespace holds, for its quota.

use crate::store::{KvWrites, StoreError, kv_entry_size, over_quota};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

/// Plugin key-value data: (plugin instance name, key) -> value.
pub(super) const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Bytes (keys and values) each plugin namespace holds in [`KV`], for its quota.
pub(super) const KV_USAGE: TableDefinition<&str, u64> = TableDefinition::new("kv_usage");

/// The committed value of `key` in `namespace`.
pub(super) fn get(
    txn: &ReadTransaction,
    namespace: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let table = txn.open_table(KV)?;
    Ok(table.get((namespace, key))?.map(|v| v.value().to_vec()))
}

/// The bytes `namespace` holds, as committed.
pub(super) fn usage(txn: &ReadTransaction, namespace: &str) -> Result<u64, StoreError> {
    let table = txn.open_table(KV_USAGE)?;
    Ok(table.get(namespace)?.map_or(0, |v| v.value()))
}

/// Why a call's writes would take their namespace over its quota (concurrent calls
/// of one plugin each checked against what was committed when they wrote), or `None`.
pub(super) fn kv_over_quota(
    txn: &WriteTransaction,
    writes: &KvWrites,
) -> Result<Option<String>, StoreError> {
    if writes.quota().is_none() {
        return Ok(None);
    }
    let ns = writes.namespace();
    let table = txn.open_table(KV)?;
    let used = txn.open_table(KV_USAGE)?.get(ns)?.map_or(0, |v| v.value());
    let mut after = used;
    for (key, value) in writes.iter() {
        let old = table
            .get((ns, key))?
            .map_or(0, |v| kv_entry_size(key, Some(v.value())));
        after = after.saturating_sub(old) + kv_entry_size(key, value);
    }
    Ok(over_quota(writes.quota(), used, after))
}

/// Apply a call's writes in the caller's transaction, keeping the namespace's usage
/// count. The quota was checked as the plugin wrote and again just before
/// ([`kv_over_quota`]).
pub(super) fn apply_kv(txn: &WriteTransaction, writes: &KvWrites) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let ns = writes.namespace();
    let mut table = txn.open_table(KV)?;
    let mut usage = txn.open_table(KV_USAGE)?;
    let mut used = usage.get(ns)?.map_or(0, |v| v.value());
    for (key, value) in writes.iter() {
        let old = table
            .get((ns, key))?
            .map_or(0, |v| kv_entry_size(key, Some(v.value())));
        match value {
            Some(value) => table.insert((ns, key), value)?,
            None => table.remove((ns, key))?,
        };
        used = used.saturating_sub(old) + kv_entry_size(key, value);
    }
    usage.insert(ns, used)?;
    Ok(())
}
