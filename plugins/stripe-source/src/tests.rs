//! The source through its entry point, in a test host: the example's webhook
//! (`examples/quote-to-cash/samples/stripe-invoice-finalized.json`) and Stripe's own
//! (`tests/fixtures/public/stripe_invoice_event_invoice_paid.json`), signed as Stripe
//! signs them with the endpoint's secret, and what is refused and why.

use super::*;
use hmac::Mac as _;
use tenon_sdk::model::{Encoding, Invoice, Payment};
use tenon_sdk::testing::Host;

const FINALIZED: &str =
    include_str!("../../../examples/quote-to-cash/samples/stripe-invoice-finalized.json");
const PAID: &str =
    include_str!("../../../tests/fixtures/public/stripe_invoice_event_invoice_paid.json");

const SECRET: &str = "whsec_test_secret";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `Stripe-Signature` of `body` signed with `secret` at `t`.
fn signature(body: &[u8], secret: &str, t: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn webhook(body: &[u8], signature: Option<String>) -> RawRequest {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    headers.extend(signature.map(|s| ("stripe-signature".to_owned(), s)));
    RawRequest {
        content_type: "application/json".into(),
        headers,
        body: body.to_vec(),
    }
}

/// A webhook signed now with the endpoint's secret.
fn signed(body: &[u8]) -> RawRequest {
    webhook(body, Some(signature(body, SECRET, now())))
}

fn source() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .secret("stripe_webhook_secret", SECRET)
}

fn invalid(result: Result<Vec<Message>, Failure>) -> String {
    match result {
        Err(Failure::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    }
}

#[test]
fn a_signed_invoice_finalized_is_posted_once_per_event() {
    let messages = source()
        .run(|| ingest_webhook(signed(FINALIZED.as_bytes())))
        .unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (m.kind.as_str(), m.key.as_str()),
        ("InvoicePosted", "in_1Q2fh8BrSjgsps2DUqQsGLDj")
    );
    assert_eq!(m.idempotency_key(), Some("evt_example_finalized"));
    let invoice: Invoice = Encoding::MsgPack.decode(&m.body).unwrap();
    assert_eq!(invoice.total.to_string(), "108.00 USD");
    assert_eq!(invoice.lines.len(), 1);
}

#[test]
fn stripe_s_invoice_paid_is_a_payment() {
    let messages = source()
        .run(|| ingest_webhook(signed(PAID.as_bytes())))
        .unwrap();
    assert_eq!(messages[0].kind, "PaymentReceived");
    assert_eq!(
        messages[0].idempotency_key(),
        Some("evt_1Q2fklBrSjgsps2Dx0mEXsXv")
    );
    let payment: Payment = Encoding::MsgPack.decode(&messages[0].body).unwrap();
    assert_eq!(payment.amount.to_string(), "108.00 USD");
}

#[test]
fn a_webhook_without_a_valid_signature_is_invalid() {
    let body = FINALIZED.as_bytes();
    assert_eq!(
        invalid(source().run(|| ingest_webhook(webhook(body, None)))),
        "Stripe-Signature refused: the header is missing"
    );
    let forged = webhook(body, Some(signature(body, "whsec_other", now())));
    assert_eq!(
        invalid(source().run(|| ingest_webhook(forged))),
        "Stripe-Signature refused: no signature matches the body and the secret"
    );
    // Another body under the same signature.
    let mut tampered = signed(body);
    tampered.body = PAID.as_bytes().to_vec();
    assert_eq!(
        invalid(source().run(|| ingest_webhook(tampered))),
        "Stripe-Signature refused: no signature matches the body and the secret"
    );
    // Without the secret, everything is refused.
    let host = Host::new().with_manifest(include_str!("../plugin.toml"));
    assert_eq!(
        invalid(host.run(|| ingest_webhook(signed(body)))),
        "no webhook signing secret: the operator must provide `stripe_webhook_secret`"
    );
}

#[test]
fn the_tolerance_of_a_signature_s_age_comes_from_config() {
    let body = FINALIZED.as_bytes();
    let old = || webhook(body, Some(signature(body, SECRET, now() - 400)));
    // The manifest's 300 s.
    assert!(invalid(source().run(|| ingest_webhook(old()))).contains("tolerance 300 s"));
    let host = source().config("signature_tolerance_secs", "600");
    assert_eq!(host.run(|| ingest_webhook(old())).unwrap().len(), 1);
}

#[test]
fn what_the_source_cannot_read_is_invalid_and_an_incomplete_invoice_retryable() {
    let draft = include_str!("../../../tests/fixtures/public/stripe_invoice_object.json");
    assert_eq!(
        invalid(source().run(|| ingest_webhook(signed(draft.as_bytes())))),
        "invoice in_1Pgc6tB7WZ01zgkWu9fdqL6I is a draft: only finalized invoices are posted"
    );
    // More lines than the webhook carries: fetched and sent again later.
    let mut event: serde_json::Value = serde_json::from_str(FINALIZED).unwrap();
    event["data"]["object"]["lines"]["has_more"] = true.into();
    let body = event.to_string();
    assert_eq!(
        source().run(|| ingest_webhook(signed(body.as_bytes()))),
        Err(Failure::Retryable(
            "invoice in_1Q2fh8BrSjgsps2DUqQsGLDj has more lines than the webhook carries; fetch them and resend".into()
        ))
    );
}
