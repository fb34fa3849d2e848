//! Tenon's host runtime.
//!
//! A small host supplies durable queues, storage, HTTP and tracing; every connector
//! and mapping is a sandboxed WebAssembly component loaded through the WIT worlds in
//! `wit/`. See `ARCHITECTURE.md` at the repository root for the map. The layers, each
//! naming only those below it:
//!
//! | layer | modules |
//! |---|---|
//! | serving | [`server`], [`http`] (ingestion, the admin API) |
//! | running flows | [`runtime`] (flows, ingestion, workers, plugin lifecycle, hot swap) |
//! | the sandbox | [`sandbox`] (engine, plugins, capabilities, egress, inspection, redaction) |
//! | keeping state | [`store`] (queue, events, key-value), [`audit`], [`auth`] |
//! | foundations | [`model`] (messages and outcomes), [`config`] |

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod http;
pub mod model;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
