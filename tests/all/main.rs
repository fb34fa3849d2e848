//! Tenon's integration tests: one binary, a module per topic.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod apis;
mod bad_input;
mod chain;
mod cloudevents;
mod cluster;
mod connectors;
mod crash;
mod delivery;
mod e2e;
mod edges;
mod mapping;
mod master_data;
mod observability;
mod openapi;
mod packages;
mod plugins;
mod process;
mod restart;
mod sandbox;
mod sap;
mod sap_simulation;
mod schemas;
mod storage_faults;
mod store;
mod support;
mod swap;
mod trust;
mod tryton;
mod tryton_prices;
