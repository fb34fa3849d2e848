//! The `tenon` command, over the `tenon` library: parse the command line, serve, talk
//! to a running server's admin API, run the demo. The first-party plugins are built
//! by `build.rs` and embedded here, in the binary that ships them.

pub mod admin;
pub mod artifacts;
pub mod cli;
pub mod client;
pub mod demo;
pub mod develop;
pub mod packages;

pub use cli::main;
