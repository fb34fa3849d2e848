//! Key-value storage, private to this plugin (another plugin never sees these keys).
//! Storage errors are `retryable`: the host's database may recover.

use crate::Failure;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing as store;
#[cfg(target_arch = "wasm32")]
use crate::wit::kv as store;

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Failure> {
    store::get(key).map_err(Failure::Retryable)
}

/// Store `value` under `key`, replacing what was there.
pub fn set(key: &str, value: &[u8]) -> Result<(), Failure> {
    store::set(key, value).map_err(Failure::Retryable)
}

/// Remove `key`; removing a missing key is not an error.
pub fn delete(key: &str) -> Result<(), Failure> {
    store::delete(key).map_err(Failure::Retryable)
}
