//! The plugin's configuration: manifest defaults, narrowed or set by the operator.

use crate::Failure;

/// The value of a configuration key, if set.
pub fn get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return crate::wit::config::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::config(key);
}

/// The value of a configuration key that the plugin cannot work without. A missing key
/// is `invalid`: retrying will not make it appear.
pub fn require(key: &str) -> Result<String, Failure> {
    get(key).ok_or_else(|| Failure::Invalid(format!("configuration key `{key}` is not set")))
}
