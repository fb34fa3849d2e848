//! The one place where WIT becomes Rust on the host side.
//!
//! `sdk` generates the host interfaces (log, kv, config, secrets) and the shared types; each
//! world then reuses them through `with`, so a type such as `Message` exists once.

#![allow(missing_debug_implementations, unused_qualifications)]

mod sdk {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/sdk",
        // Key-value reads touch the database: off the async workers.
        imports: { "tenon:plugin/kv": async },
    });
}

pub use sdk::tenon::plugin::{config, kv, log, secrets, types};

/// `tenon:plugin/source`: exports `ingester`.
pub mod source {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/source",
        exports: { default: async },
        with: {
            "tenon:plugin/types": super::types,
            "tenon:plugin/log": super::log,
            "tenon:plugin/config": super::config,
            "tenon:plugin/secrets": super::secrets,
        },
    });
}

/// `tenon:plugin/transform`: exports `transformer`.
pub mod transform {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/transform",
        exports: { default: async },
        with: {
            "tenon:plugin/types": super::types,
            "tenon:plugin/log": super::log,
            "tenon:plugin/kv": super::kv,
            "tenon:plugin/config": super::config,
            "tenon:plugin/secrets": super::secrets,
        },
    });
}

/// `tenon:plugin/api`: exports `responder`.
pub mod api {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/api",
        exports: { default: async },
        with: {
            "tenon:plugin/types": super::types,
            "tenon:plugin/log": super::log,
            "tenon:plugin/config": super::config,
            "tenon:plugin/secrets": super::secrets,
        },
    });
}

/// `tenon:plugin/sink`: exports `deliverer`.
pub mod sink {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/sink",
        exports: { default: async },
        with: {
            "tenon:plugin/types": super::types,
            "tenon:plugin/log": super::log,
            "tenon:plugin/kv": super::kv,
            "tenon:plugin/config": super::config,
            "tenon:plugin/secrets": super::secrets,
        },
    });
}

/// `tenon:plugin/compensating-sink`: a sink that also exports `compensator`.
pub mod compensating_sink {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/compensating-sink",
        exports: { default: async },
        with: {
            "tenon:plugin/types": super::types,
            "tenon:plugin/log": super::log,
            "tenon:plugin/kv": super::kv,
            "tenon:plugin/config": super::config,
            "tenon:plugin/secrets": super::secrets,
        },
    });
}

/// `tenon:plugin/reconciling-sink`: a compensating sink that also exports `records`.
pub mod reconciling_sink {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "tenon:plugin/reconciling-sink",
        exports: { default: async },
        with: {
            "tenon:plugin/types": super::types,
            "tenon:plugin/log": super::log,
            "tenon:plugin/kv": super::kv,
            "tenon:plugin/config": super::config,
            "tenon:plugin/secrets": super::secrets,
        },
    });
}
