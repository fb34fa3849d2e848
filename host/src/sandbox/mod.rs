//! The sandbox: everything between the host and a plugin. A plugin version is loaded
//! ([`plugin`]) on the one wasmtime [`engine`], linked with exactly the capabilities its
//! grants allow ([`caps`], checked against its real imports by [`inspect`]), reaches
//! the network only through [`egress`], and has its secrets kept out of every record
//! ([`redact`]). [`bindings`] is where WIT becomes Rust.
//!
//! **Architecture invariant:** nothing here knows flows, queues or HTTP serving; a
//! plugin call takes a message and returns what the plugin made of it.

pub mod bindings;
pub mod caps;
pub mod egress;
pub mod engine;
pub mod inspect;
pub mod plugin;
pub mod redact;
pub mod throttle;
