//! Write Tenon plugins as plain Rust functions.
//!
//! A plugin is a WebAssembly component with one of three roles. Write one function
//! and put the matching attribute on it:
//!
//! ```ignore
//! use tenon_sdk::{Failure, Message, model::{Quote, Order}};
//!
//! #[tenon_sdk::transform]
//! fn quote_to_order(input: Message) -> Result<Vec<Message>, Failure> {
//!     let quote: Quote = input.decode()?;
//!     let order: Order = todo_map(quote)?;
//!     Ok(vec![Message::encode("OrderAccepted", &order.id, &order)?])
//! }
//! ```
//!
//! - [`source`]: `fn(RawRequest) -> Result<Vec<Message>, Failure>`, turns an inbound
//!   payload (a CPQ webhook, a file) into canonical messages;
//! - [`transform`]: `fn(Message) -> Result<Vec<Message>, Failure>`, maps, validates or
//!   routes one message;
//! - [`sink`]: `fn(Message, &str) -> Result<Receipt, Failure>`, delivers one message to a
//!   target system; the `&str` is the idempotency key to send along;
//! - [`api`](macro@api): `fn(api::Request) -> Result<api::Response, Failure>`, answers one
//!   synchronous request (a price, an availability date) on `/v1/apis/<name>`.
//!
//! The host calls through [`config`], [`kv`], [`log`], [`secrets`] and (sinks and API
//! plugins) [`http`] are the only
//! ways out of the sandbox, each allowed only as far as the plugin's manifest grants.
//! Build with `cargo build --target wasm32-wasip2` (or `tenon plugin build`). Built
//! natively, the same function runs in a plugin's own tests against a fake host:
//! [`testing::Host`] (config, secrets, key-value data, recorded HTTP exchanges).
#![deny(missing_docs)]

#[cfg(any(
    test,
    all(
        feature = "allocator",
        target_arch = "wasm32",
        not(target_feature = "atomics")
    )
))]
mod arena;
mod message;

pub mod api;
pub mod config;
pub mod http;
pub mod kv;
pub mod log;
pub mod records;
pub mod secrets;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod url;

pub use message::{Failure, Message, RawRequest, Receipt};

/// Every allocation a plugin makes goes through this allocator on wasm (a component
/// is single-threaded): a bump arena in the module's data, then Talc (`heap.rs` says
/// why). Talc over wasi-libc's dlmalloc: the `mapping` bench maps a quote 2-6%
/// faster with it, fresh or kept (medians of paired rounds).
/// The feature `allocator` (on by default) installs it; a plugin with its own
/// `#[global_allocator]` turns default features off.
#[cfg(all(
    feature = "allocator",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: heap::Allocator = heap::allocator();
#[cfg(all(
    feature = "allocator",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
mod heap;
pub use tenon_model as model;
pub use tenon_sdk_macros::{api, sink, source, transform};

/// Raw bindings generated from the WIT files in `wit/`: not part of the API.
#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        // `wit/` links to the repository's `wit/`; `cargo package` copies it in.
        path: "wit/plugin@0.1.0",
        world: "tenon:plugin/sdk",
        generate_unused_types: true,
    });
    pub use self::tenon::plugin::*;
}

/// What the attribute macros expand to: not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::wit::types as raw;
    use crate::{Failure, Message, RawRequest, Receipt};

    pub fn ingest(
        request: raw::RawRequest,
        f: fn(RawRequest) -> Result<Vec<Message>, Failure>,
    ) -> Result<Vec<raw::Message>, raw::Failure> {
        f(request.into())
            .map(|out| out.into_iter().map(Into::into).collect())
            .map_err(Into::into)
    }

    pub fn transform(
        input: raw::Message,
        f: fn(Message) -> Result<Vec<Message>, Failure>,
    ) -> Result<Vec<raw::Message>, raw::Failure> {
        f(input.into())
            .map(|out| out.into_iter().map(Into::into).collect())
            .map_err(Into::into)
    }

    /// The `api` export's request, field by field (its record is generated in the
    /// plugin's crate, with its world).
    #[allow(clippy::too_many_arguments)]
    pub fn respond(
        method: String,
        path: String,
        params: Vec<(String, String)>,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        content_type: String,
        body: Vec<u8>,
        f: fn(crate::api::Request) -> Result<crate::api::Response, Failure>,
    ) -> Result<crate::api::Response, raw::Failure> {
        let request = crate::api::Request {
            method,
            path,
            params,
            query,
            headers,
            content_type,
            body,
        };
        f(request).map_err(Into::into)
    }

    pub fn deliver(
        message: raw::Message,
        idempotency_key: String,
        f: fn(Message, &str) -> Result<Receipt, Failure>,
    ) -> Result<raw::Receipt, raw::Failure> {
        f(message.into(), &idempotency_key)
            .map(Into::into)
            .map_err(Into::into)
    }

    pub fn compensate(
        message: raw::Message,
        delivered: raw::Receipt,
        idempotency_key: String,
        f: fn(Message, Receipt, &str) -> Result<Receipt, Failure>,
    ) -> Result<raw::Receipt, raw::Failure> {
        let delivered = Receipt {
            reference: delivered.reference,
            detail: delivered.detail,
        };
        f(message.into(), delivered, &idempotency_key)
            .map(Into::into)
            .map_err(Into::into)
    }
}
