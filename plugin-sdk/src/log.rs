//! Logging into the host's tracing pipeline, tagged with the flow, step and message.

#[cfg(not(target_arch = "wasm32"))]
use crate::testing as raw;
#[cfg(target_arch = "wasm32")]
use crate::wit::log as raw;
use crate::wit::log::Level;

/// Log at error level.
pub fn error(message: &str) {
    raw::log(Level::Error, message)
}
/// Log at warn level.
pub fn warn(message: &str) {
    raw::log(Level::Warn, message)
}
/// Log at info level.
pub fn info(message: &str) {
    raw::log(Level::Info, message)
}
/// Log at debug level.
pub fn debug(message: &str) {
    raw::log(Level::Debug, message)
}
