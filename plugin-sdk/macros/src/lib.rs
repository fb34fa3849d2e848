//! Attribute macros of `tenon-sdk`: `#[source]`, `#[transform]`, `#[sink]`, `#[api]`.
//!
//! Each generates the WIT bindings of its world in the plugin's crate (so that the
//! component exports exactly that world), maps the shared host interfaces onto the
//! SDK's own bindings, and forwards the export to the annotated plain function.
//! Use them through `tenon_sdk`, not directly.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;

/// The WIT package, inside this crate (`wit/` links to the repository's `wit/`, and
/// `cargo package` copies it in): the SDK and the host use the same files, and the
/// published crate carries them.
const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/wit/plugin@0.1.0");

/// Export a function `fn(tenon_sdk::RawRequest) -> Result<Vec<tenon_sdk::Message>,
/// tenon_sdk::Failure>` as a source plugin (world `tenon:plugin/source`).
#[proc_macro_attribute]
pub fn source(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Role::Source, attr, item)
}

/// Export a function `fn(tenon_sdk::Message) -> Result<Vec<tenon_sdk::Message>,
/// tenon_sdk::Failure>` as a transform plugin (world `tenon:plugin/transform`).
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Role::Transform, attr, item)
}

/// Export a function `fn(tenon_sdk::Message, &str) -> Result<tenon_sdk::Receipt,
/// tenon_sdk::Failure>` as a sink plugin (world `tenon:plugin/sink`).
///
/// `#[sink(compensate = undo)]` also exports `undo`, a function
/// `fn(tenon_sdk::Message, tenon_sdk::Receipt, &str) -> Result<tenon_sdk::Receipt,
/// tenon_sdk::Failure>` that undoes a delivery (the message, what its delivery
/// returned, an idempotency key): world `tenon:plugin/compensating-sink`, for flows
/// with a saga.
#[proc_macro_attribute]
pub fn sink(attr: TokenStream, item: TokenStream) -> TokenStream {
    if attr.is_empty() {
        return expand(Role::Sink, attr, item);
    }
    let (mut undo, mut records): (Option<syn::Path>, Option<syn::Path>) = (None, None);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("compensate") {
            undo = Some(meta.value()?.parse()?);
            return Ok(());
        }
        if meta.path.is_ident("records") {
            records = Some(meta.value()?.parse()?);
            return Ok(());
        }
        Err(meta.error("the arguments are `compensate = <function>` and `records = <function>`"))
    });
    if let Err(e) = syn::parse::Parser::parse(parser, attr) {
        return e.to_compile_error().into();
    }
    match (undo, records) {
        (Some(undo), None) => expand(Role::CompensatingSink(undo, None), TokenStream::new(), item),
        (Some(undo), Some(read)) => expand(
            Role::CompensatingSink(undo, Some(read)),
            TokenStream::new(),
            item,
        ),
        (None, Some(read)) => syn::Error::new_spanned(
            read,
            "a sink that reads back records (`records = ...`) also undoes deliveries: add `compensate = <function>` (world `reconciling-sink` includes `compensating-sink`)",
        )
        .to_compile_error()
        .into(),
        (None, None) => expand(Role::Sink, TokenStream::new(), item),
    }
}

/// Export a function `fn(tenon_sdk::api::Request) -> Result<tenon_sdk::api::Response,
/// tenon_sdk::Failure>` as an API plugin (world `tenon:plugin/api`): it answers
/// synchronous requests on `/v1/apis/<name>`.
#[proc_macro_attribute]
pub fn api(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Role::Api, attr, item)
}

#[derive(Clone)]
enum Role {
    Source,
    Transform,
    Sink,
    /// A sink that also undoes deliveries with this function (and, with the second,
    /// reads back records).
    CompensatingSink(syn::Path, Option<syn::Path>),
    Api,
}

fn expand(role: Role, attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = TokenStream2::from(attr);
        return syn::Error::new_spanned(attr, "this attribute takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = match syn::parse::<syn::ItemFn>(item) {
        Ok(func) => func,
        Err(e) => return e.to_compile_error().into(),
    };
    let name = &func.sig.ident;
    // The signature each role takes, checked on every target (natively too, where the
    // export is not generated): a wrong one fails where the plugin is written.
    let signature = match &role {
        Role::Source => quote!(
            fn(
                ::tenon_sdk::RawRequest,
            ) -> ::core::result::Result<
                ::std::vec::Vec<::tenon_sdk::Message>,
                ::tenon_sdk::Failure,
            >
        ),
        Role::Transform => quote!(
            fn(
                ::tenon_sdk::Message,
            ) -> ::core::result::Result<
                ::std::vec::Vec<::tenon_sdk::Message>,
                ::tenon_sdk::Failure,
            >
        ),
        Role::Sink | Role::CompensatingSink(..) => quote!(
            fn(
                ::tenon_sdk::Message,
                &str,
            ) -> ::core::result::Result<::tenon_sdk::Receipt, ::tenon_sdk::Failure>
        ),
        Role::Api => quote!(
            fn(
                ::tenon_sdk::api::Request,
            )
                -> ::core::result::Result<::tenon_sdk::api::Response, ::tenon_sdk::Failure>
        ),
    };
    let raw = quote!(::tenon_sdk::wit::types);
    let (world, guest, export, with) = match &role {
        Role::Source => (
            "tenon:plugin/source@0.1.0",
            quote!(exports::tenon::plugin::ingester::Guest),
            quote! {
                fn ingest(request: #raw::RawRequest)
                    -> ::core::result::Result<::std::vec::Vec<#raw::Message>, #raw::Failure> {
                    ::tenon_sdk::__private::ingest(request, super::#name)
                }
            },
            quote! {
                "tenon:plugin/types@0.1.0": ::tenon_sdk::wit::types,
                "tenon:plugin/log@0.1.0": ::tenon_sdk::wit::log,
                "tenon:plugin/config@0.1.0": ::tenon_sdk::wit::config,
                "tenon:plugin/secrets@0.1.0": ::tenon_sdk::wit::secrets,
            },
        ),
        Role::Transform => (
            "tenon:plugin/transform@0.1.0",
            quote!(exports::tenon::plugin::transformer::Guest),
            quote! {
                fn transform(input: #raw::Message)
                    -> ::core::result::Result<::std::vec::Vec<#raw::Message>, #raw::Failure> {
                    ::tenon_sdk::__private::transform(input, super::#name)
                }
            },
            full_imports(),
        ),
        Role::Sink => (
            "tenon:plugin/sink@0.1.0",
            quote!(exports::tenon::plugin::deliverer::Guest),
            quote! {
                fn deliver(message: #raw::Message, idempotency_key: ::std::string::String)
                    -> ::core::result::Result<#raw::Receipt, #raw::Failure> {
                    ::tenon_sdk::__private::deliver(message, idempotency_key, super::#name)
                }
            },
            full_imports(),
        ),
        Role::CompensatingSink(_, read) => (
            match read {
                Some(_) => "tenon:plugin/reconciling-sink@0.1.0",
                None => "tenon:plugin/compensating-sink@0.1.0",
            },
            quote!(exports::tenon::plugin::deliverer::Guest),
            quote! {
                fn deliver(message: #raw::Message, idempotency_key: ::std::string::String)
                    -> ::core::result::Result<#raw::Receipt, #raw::Failure> {
                    ::tenon_sdk::__private::deliver(message, idempotency_key, super::#name)
                }
            },
            full_imports(),
        ),
        Role::Api => (
            "tenon:plugin/api@0.1.0",
            quote!(exports::tenon::plugin::responder::Guest),
            quote! {
                fn respond(request: exports::tenon::plugin::responder::Request)
                    -> ::core::result::Result<exports::tenon::plugin::responder::Response, #raw::Failure> {
                    let exports::tenon::plugin::responder::Request {
                        method, path, params, query, headers, content_type, body,
                    } = request;
                    ::tenon_sdk::__private::respond(
                        method, path, params, query, headers, content_type, body, super::#name,
                    )
                    .map(|r| exports::tenon::plugin::responder::Response {
                        status: r.status,
                        content_type: r.content_type,
                        headers: r.headers,
                        body: r.body,
                    })
                }
            },
            quote! {
                "tenon:plugin/types@0.1.0": ::tenon_sdk::wit::types,
                "tenon:plugin/log@0.1.0": ::tenon_sdk::wit::log,
                "tenon:plugin/config@0.1.0": ::tenon_sdk::wit::config,
                "tenon:plugin/secrets@0.1.0": ::tenon_sdk::wit::secrets,
            },
        ),
    };
    // A compensating sink's second export, with its own signature check.
    let reads = match &role {
        Role::CompensatingSink(_, Some(read)) => quote! {
            impl exports::tenon::plugin::records::Guest for Plugin {
                fn read(query: exports::tenon::plugin::records::Query)
                    -> ::core::result::Result<::std::vec::Vec<exports::tenon::plugin::records::Entry>, #raw::Failure> {
                    let query = ::tenon_sdk::records::Query {
                        kind: query.kind,
                        since: query.since,
                        until: query.until,
                    };
                    let read: fn(::tenon_sdk::records::Query)
                        -> ::core::result::Result<::std::vec::Vec<::tenon_sdk::records::Entry>, ::tenon_sdk::Failure> = super::#read;
                    read(query)
                        .map(|entries| entries.into_iter().map(|e| exports::tenon::plugin::records::Entry {
                            id: e.id,
                            reference: e.reference,
                            fields: e.fields,
                        }).collect())
                        .map_err(::core::convert::Into::into)
                }
            }
        },
        _ => quote!(),
    };
    let extra = match &role {
        Role::CompensatingSink(undo, _) => quote! {
            impl exports::tenon::plugin::compensator::Guest for Plugin {
                fn compensate(
                    message: #raw::Message,
                    delivered: #raw::Receipt,
                    idempotency_key: ::std::string::String,
                ) -> ::core::result::Result<#raw::Receipt, #raw::Failure> {
                    ::tenon_sdk::__private::compensate(message, delivered, idempotency_key, super::#undo)
                }
            }
        },
        _ => quote!(),
    };
    let extra = quote!(#extra #reads);
    let extra_check = match &role {
        Role::CompensatingSink(undo, _) => quote! {
            #[doc = "a compensating sink's `compensate` function is `fn(tenon_sdk::Message, tenon_sdk::Receipt, &str) -> Result<tenon_sdk::Receipt, tenon_sdk::Failure>`"]
            #[allow(dead_code, non_upper_case_globals)]
            const _: fn(
                ::tenon_sdk::Message,
                ::tenon_sdk::Receipt,
                &str,
            ) -> ::core::result::Result<::tenon_sdk::Receipt, ::tenon_sdk::Failure> = #undo;
        },
        _ => quote!(),
    };
    let extra_check = match &role {
        Role::CompensatingSink(_, Some(read)) => quote! {
            #extra_check

            #[doc = "a reconciling sink's `records` function is `fn(tenon_sdk::records::Query) -> Result<Vec<tenon_sdk::records::Entry>, tenon_sdk::Failure>`"]
            #[allow(dead_code, non_upper_case_globals)]
            const _: fn(
                ::tenon_sdk::records::Query,
            ) -> ::core::result::Result<::std::vec::Vec<::tenon_sdk::records::Entry>, ::tenon_sdk::Failure> = #read;
        },
        _ => extra_check,
    };
    // The export exists only in the component. Built natively (to test or benchmark
    // the plugin's code), the crate exports nothing and the function is plain code.
    let role_name = match &role {
        Role::Source => "source",
        Role::Transform => "transform",
        Role::Sink | Role::CompensatingSink(..) => "sink",
        Role::Api => "api",
    };
    let check = syn::Ident::new(
        &format!("__TENON_{}_SIGNATURE", name.to_string().to_uppercase()),
        name.span(),
    );
    let wanted = format!("a {role_name} plugin's function is `{signature}`").replace(" :: ", "::");
    quote! {
        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        #func

        #[doc = #wanted]
        #[allow(dead_code, non_upper_case_globals)]
        const #check: #signature = #name;

        #extra_check

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(missing_docs, unused_qualifications, clippy::all)]
        mod __tenon_plugin {
            ::tenon_sdk::__private::wit_bindgen::generate!({
                path: #WIT_DIR,
                world: #world,
                runtime_path: "::tenon_sdk::__private::wit_bindgen::rt",
                with: { #with },
            });

            struct Plugin;

            impl #guest for Plugin {
                #export
            }

            #extra

            export!(Plugin);
        }
    }
    .into()
}

fn full_imports() -> TokenStream2 {
    quote! {
        "tenon:plugin/types@0.1.0": ::tenon_sdk::wit::types,
        "tenon:plugin/log@0.1.0": ::tenon_sdk::wit::log,
        "tenon:plugin/kv@0.1.0": ::tenon_sdk::wit::kv,
        "tenon:plugin/config@0.1.0": ::tenon_sdk::wit::config,
        "tenon:plugin/secrets@0.1.0": ::tenon_sdk::wit::secrets,
    }
}
