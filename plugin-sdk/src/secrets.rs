//! Secrets the operator provides, by name: only those the plugin's manifest grants
//! (`[grants] secrets = ["erp_token"]`).
//!
//! The host redacts a secret's value from its logs, errors and dead letters; still,
//! never put one in a message body.

use crate::Failure;

/// The secret's value. A name that is not granted or not provided is `invalid`:
/// retrying will not change the grants.
pub fn get(name: &str) -> Result<String, Failure> {
    #[cfg(target_arch = "wasm32")]
    return crate::wit::secrets::get(name).map_err(Failure::Invalid);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::secret(name).map_err(Failure::Invalid);
}
