//! Tenon's host runtime.
//!
//! A small host supplies durable queues, storage, HTTP and tracing; every connector
//! and mapping is a sandboxed WebAssembly component loaded through the WIT worlds in
//! `wit/`. See `ARCHITECTURE.md` at the repository root for the map.

pub mod audit;
pub mod auth;
pub mod bindings;
pub mod caps;
pub mod config;
pub mod egress;
pub mod engine;
pub mod events;
pub mod ingress;
pub mod inspect;
pub mod plugin;
pub mod queue;
pub mod redact;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod swap;
