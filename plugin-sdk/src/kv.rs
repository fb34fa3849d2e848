//! Key-value storage, private to this plugin (another plugin never sees these keys).
//! Storage errors are `retryable`: the host's database may recover.

use crate::{Failure, wit};

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Failure> {
    wit::kv::get(key).map_err(Failure::Retryable)
}

/// Store `value` under `key`, replacing what was there.
pub fn set(key: &str, value: &[u8]) -> Result<(), Failure> {
    wit::kv::set(key, value).map_err(Failure::Retryable)
}

/// Remove `key`; removing a missing key is not an error.
pub fn delete(key: &str) -> Result<(), Failure> {
    wit::kv::delete(key).map_err(Failure::Retryable)
}
