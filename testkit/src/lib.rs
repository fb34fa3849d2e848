//! Stand-ins for the systems Tenon talks to, and the example's data: a mock ERP, a
//! Stripe webhook signer, the sample quotes and the quote-to-cash config. Used by
//! `tenon demo`, the end-to-end tests and the benchmarks.
//! [`otlp::OtlpReceiver`] stands in for an OpenTelemetry collector, so tests can check
//! the spans Tenon exports.
//! [`prometheus::PrometheusServer`] is a real Prometheus scraping Tenon's `/metrics`.
//! [`registry::RegistryServer`] is a real OCI registry (the CNCF distribution registry)
//! for publishing and installing plugin packages.
//! [`sap_simulation::SapSimulation`] plays SAP S/4HANA's sales order simulation, checking
//! each request against SAP's published definition of the service.
//!
//! **Architecture invariant:** knows nothing of the host: it plays the other side of
//! the wire.

pub mod bench;
mod local;
pub mod mock_erp;
pub mod mock_salesforce;
pub mod nats;
pub mod otlp;
pub mod prometheus;
pub mod registry;
pub mod sap_simulation;

/// The quote-to-cash flow over the first-party plugins extracted under `plugins/`
/// (as `tenon demo` and the tests extract them), its sink posting to `erp_url`;
/// `flow_settings` are appended to the flow's table (e.g. `concurrency = 32`).
/// Tests and benchmarks build their configs with it.
pub fn quote_to_cash_config(erp_url: &str, flow_settings: &str) -> String {
    format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
config = {{ po_number_field = "Customer_PO__c" }}

[plugins.quote-to-order]
path = "plugins/quote-to-order"

[plugins.erp-sink]
path = "plugins/http-sink"
config = {{ url = "{erp_url}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.quote-to-order]
source = "cpq-source"
steps = ["quote-to-order"]
sink = "erp-sink"
{flow_settings}
"#
    )
}

/// What a sample quote should come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// This many orders delivered to the ERP.
    Delivered(usize),
    /// Rejected with this many reasons.
    Rejected(usize),
    /// Held for a person, rejected, and this many deliveries of its transaction undone.
    Undone(usize),
    /// Kept by a step (master data) this many times.
    Consumed(usize),
}

/// The example's sample quotes: (file name, body, expected end).
pub const SAMPLES: &[(&str, &str, Expect)] = &[
    (
        "plain.json",
        include_str!("../../examples/quote-to-cash/samples/plain.json"),
        Expect::Delivered(1),
    ),
    (
        "bundle.json",
        include_str!("../../examples/quote-to-cash/samples/bundle.json"),
        Expect::Delivered(2),
    ),
    (
        "invalid.json",
        include_str!("../../examples/quote-to-cash/samples/invalid.json"),
        Expect::Rejected(3),
    ),
];

/// A `Stripe-Signature` header for `body`, signed now with `secret`, as Stripe signs
/// its webhooks (HMAC-SHA256 of `<t>.<body>`).
pub fn stripe_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(format!("{t}.").as_bytes());
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        })
        .unwrap_or_default();
    format!("t={t},v1={signature}")
}
