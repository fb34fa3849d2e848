//! `tenon demo`: the quote-to-cash example, end to end, on the embedded defaults.
//!
//! It extracts the embedded plugins and the example config into `<data-dir>/demo`,
//! starts a mock ERP and the runtime on free ports of 127.0.0.1, posts the samples
//! (customers, CPQ quotes, a Zuora subscription and its amendment, Stripe invoice and
//! credit note events), waits until each
//! has settled, and prints each business key's path through the flows. Each quote is
//! first asked of the synchronous validation API, whose answer must be the one the
//! flows come to.

use anyhow::Context as _;
use std::path::Path;
use std::time::{Duration, Instant};
use tenon::config::Config;
use tenon::model::OutcomeKind;
use tenon::server::Server;
use tenon_registry::ConfigValue;
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::{Expect, SAMPLES, stripe_signature};

/// The example's flow config.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../examples/quote-to-cash/tenon.toml");

/// What the demo sends: (source, sample file, body, expected end).
pub const INPUTS: &[(&str, &str, &str, Expect)] = &[
    (
        "master-data",
        "customers.json",
        include_str!("../../../examples/quote-to-cash/samples/customers.json"),
        Expect::Consumed(2),
    ),
    ("cpq-source", SAMPLES[0].0, SAMPLES[0].1, SAMPLES[0].2),
    ("cpq-source", SAMPLES[1].0, SAMPLES[1].1, SAMPLES[1].2),
    ("cpq-source", SAMPLES[2].0, SAMPLES[2].1, SAMPLES[2].2),
    // Over 50,000: the rule holds its physical order for finance, who reject it; the
    // subscription order the ERP booked meanwhile is cancelled (the quote's saga).
    (
        "cpq-source",
        "bundle-large.json",
        include_str!("../../../examples/quote-to-cash/samples/bundle-large.json"),
        Expect::Undone(1),
    ),
    (
        "zuora",
        "zuora-subscription.json",
        include_str!("../../../examples/quote-to-cash/samples/zuora-subscription.json"),
        Expect::Delivered(1),
    ),
    (
        "zuora",
        "zuora-amendment.json",
        include_str!("../../../examples/quote-to-cash/samples/zuora-amendment.json"),
        Expect::Delivered(1),
    ),
    (
        "stripe",
        "stripe-invoice-finalized.json",
        include_str!("../../../examples/quote-to-cash/samples/stripe-invoice-finalized.json"),
        Expect::Delivered(2),
    ),
    (
        "stripe",
        "stripe-credit-note.json",
        include_str!("../../../examples/quote-to-cash/samples/stripe-credit-note.json"),
        Expect::Delivered(2),
    ),
    (
        "stripe",
        "stripe_invoice_event_invoice_paid.json",
        include_str!("../../../tests/fixtures/public/stripe_invoice_event_invoice_paid.json"),
        Expect::Delivered(1),
    ),
];

/// The throwaway Stripe signing secret the demo writes and signs with.
const DEMO_STRIPE_SECRET: &str = "whsec_tenon_demo_not_a_real_secret";

/// The address the example config's HTTP sinks use; the demo points it at its mock.
const EXAMPLE_TARGET: &str = "http://127.0.0.1:9400";

/// How long the demo waits for every input to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Create an `ingest:*` and `api:*` key through the admin API, with the admin key the server's
/// first start wrote; its token.
async fn demo_client_key(server: &Server) -> anyhow::Result<String> {
    let file = server
        .admin_key_file
        .as_ref()
        .context("the demo's fresh data directory should have got an admin key")?;
    let admin = std::fs::read_to_string(file)?;
    let reply = crate::client::request(
        "POST",
        &format!("http://{}/v1/keys", server.admin_addr),
        &[("authorization", &format!("Bearer {}", admin.trim()))],
        Some((
            "application/json",
            serde_json::json!({ "name": "demo-senders", "scopes": ["ingest:*", "api:*"] })
                .to_string()
                .into_bytes(),
        )),
    )
    .await?;
    anyhow::ensure!(
        reply.status == 201,
        "cannot create the demo's ingest key: HTTP {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()?["token"]
        .as_str()
        .map(str::to_owned)
        .context("the key's token is missing from the reply")
}

/// Wait until a message of `ids` is held for a person, show the exception, and
/// reject it as finance would (`tenon exceptions reject <id>`).
async fn decide_as_finance(server: &Server, ids: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let held = loop {
        let held = server.runtime.exceptions().await?;
        if let Some(held) = held
            .into_iter()
            .find(|h| ids.iter().any(|id| h.outcome.root.as_str() == id))
        {
            break held;
        }
        anyhow::ensure!(Instant::now() < deadline, "no exception came of {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // What else the quote made goes on meanwhile: the ERP books the other order.
    while !server
        .runtime
        .status(&held.outcome.root)
        .await?
        .pending
        .is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let OutcomeKind::Held { rule, reasons, .. } = &held.outcome.result {
        println!(
            "  exception {} ({}, {rule}): {}",
            held.outcome.id,
            held.outcome.key,
            reasons.join("; ")
        );
    }
    println!(
        "  finance rejects it: tenon exceptions reject {} --note \"over the credit limit\"",
        held.outcome.id
    );
    let rejected = tenon::model::Directive::Reject {
        by: "finance (the demo)".to_owned(),
        note: "over the credit limit".to_owned(),
    };
    server.runtime.decide(&held.outcome.id, rejected).await?;
    Ok(())
}

/// Run the demo; `Ok(true)` when every input ended as expected.
pub async fn run(data_dir: &Path) -> anyhow::Result<bool> {
    let dir = data_dir.join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::artifacts::extract_first_party(&dir.join("plugins"))?;
    let config_path = dir.join("tenon.toml");
    std::fs::write(&config_path, EXAMPLE_CONFIG)?;
    std::fs::write(dir.join("stripe-webhook-secret.txt"), DEMO_STRIPE_SECRET)?;

    let erp = MockErp::start()
        .await
        .context("cannot start the mock ERP")?;
    let mock = erp.orders_url();
    let mock = mock.trim_end_matches("/sap/orders").to_owned();
    let mut config = Config::parse(&config_path, EXAMPLE_CONFIG)?;
    for plugin in config.plugins.values_mut() {
        for (key, value) in plugin.config.iter_mut() {
            if let (true, ConfigValue::Text(url)) = (key.ends_with("url"), value) {
                *url = url.replace(EXAMPLE_TARGET, &mock);
            }
        }
    }

    println!("Tenon quote-to-cash demo");
    println!("  work dir   {}", dir.display());
    println!("  mock ERP   {mock} (/de/orders, /fr/orders, /finance/events)");
    let started = Instant::now();
    let local = "127.0.0.1:0".parse().ok();
    let listen = tenon::server::Listen {
        ingest: local,
        admin: local,
    };
    let server = Server::start(config, &dir.join("data"), listen).await?;
    let plugins = server.runtime.config().plugins.len();
    let flows = server.runtime.flows().len();
    println!(
        "  runtime    http://{} ({plugins} plugins in {flows} flows, compiled and loaded in {} ms)",
        server.addr,
        started.elapsed().as_millis()
    );
    // As a real deployment would: the operator's admin key (written by the first
    // start) creates a key for the partner systems, scoped to ingestion only.
    let ingest_token = demo_client_key(&server).await?;
    println!(
        "  admin API  http://{} (a key to post and ask, no admin scope, was created for the senders)",
        server.admin_addr
    );
    println!();

    let mut sent = Vec::new();
    let mut all_ok = true;
    for (source, file, body, expect) in INPUTS {
        // Asked first, answered at once: the flows must come to the same.
        if *source == "cpq-source" {
            let reply = crate::client::request(
                "POST",
                &format!("http://{}/v1/apis/validate-quote", server.addr),
                &[("authorization", &format!("Bearer {ingest_token}"))],
                Some(("application/json", body.as_bytes().to_vec())),
            )
            .await?;
            let answer = reply.json().unwrap_or_default();
            let said = match reply.status {
                200 => format!(
                    "valid, order(s): {}",
                    answer["outputs"].as_array().map_or(0, Vec::len)
                ),
                422 => format!(
                    "refused, reason(s): {}",
                    answer["reasons"].as_array().map_or(0, Vec::len)
                ),
                _ => answer["detail"].as_str().unwrap_or_default().to_owned(),
            };
            println!(
                "POST /v1/apis/validate-quote  {file:<40} -> {} ({said})",
                reply.status
            );
            all_ok &= match expect {
                Expect::Rejected(n) => {
                    reply.status == 422
                        && answer["reasons"].as_array().is_some_and(|r| r.len() == *n)
                }
                Expect::Delivered(n) => {
                    reply.status == 200
                        && answer["outputs"].as_array().is_some_and(|o| o.len() == *n)
                }
                // Valid: the hold is a rule of the flow, for a person, not a refusal.
                Expect::Undone(_) => reply.status == 200,
                Expect::Consumed(_) => true,
            };
        }
        let url = format!("http://{}/v1/sources/{source}", server.addr);
        let signature = stripe_signature(DEMO_STRIPE_SECRET, body.as_bytes());
        let bearer = format!("Bearer {ingest_token}");
        // Stripe signs its webhooks (the source is declared `auth = "signature"`):
        // it sends no key; the others send theirs.
        let headers: Vec<(&str, &str)> = match *source {
            "stripe" => vec![("stripe-signature", signature.as_str())],
            _ => vec![("authorization", bearer.as_str())],
        };
        let reply = crate::client::request(
            "POST",
            &url,
            &headers,
            Some(("application/json", body.as_bytes().to_vec())),
        )
        .await?;
        let status = reply.status;
        let ids: Vec<String> = reply
            .json()
            .ok()
            .and_then(|v| serde_json::from_value(v.get("accepted")?.clone()).ok())
            .unwrap_or_default();
        println!("POST /v1/sources/{source:<12} {file:<40} -> {status}");
        // Master data goes first, and is in place before the quotes that need it
        // (the gateway checks their customers): flows run side by side.
        if *source == "master-data" {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            for id in &ids {
                while !server
                    .runtime
                    .status(&id.as_str().into())
                    .await?
                    .is_settled()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        // A held order waits for a person: the demo plays finance and rejects it.
        if let Expect::Undone(_) = expect {
            decide_as_finance(&server, &ids).await?;
        }
        sent.push((*file, ids, *expect));
    }

    println!();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for (file, ids, expect) in &sent {
        let (mut delivered, mut rejected, mut consumed, mut compensated) = (0, 0, 0, 0);
        let mut ok = !ids.is_empty();
        for id in ids {
            let status = loop {
                let status = server.runtime.status(&id.as_str().into()).await?;
                if status.is_settled() || Instant::now() > deadline {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let key = status.outcomes.first().map_or("?", |o| o.key.as_str());
            println!("{key} ({file})");
            for outcome in &status.outcomes {
                let path: Vec<&str> = outcome.trail.iter().map(|h| h.plugin.as_str()).collect();
                println!("  {:<16} {}", outcome.flow, path.join(" -> "));
                match &outcome.result {
                    OutcomeKind::Delivered { reference, .. } => {
                        delivered += 1;
                        let target = erp
                            .received()
                            .into_iter()
                            .find(|r| r.idempotency_key.as_deref() == Some(outcome.id.as_str()))
                            .map(|r| r.path)
                            .unwrap_or_default();
                        println!(
                            "  {:<16} => {} delivered to {target} as {reference}",
                            "", outcome.kind
                        );
                    }
                    OutcomeKind::Rejected { reasons } => {
                        rejected += reasons.len();
                        println!("  {:<16} => rejected at {}:", "", outcome.plugin);
                        for reason in reasons {
                            println!("  {:<16}    - {reason}", "");
                        }
                    }
                    OutcomeKind::Consumed => {
                        consumed += 1;
                        println!("  {:<16} => kept by {}", "", outcome.plugin);
                    }
                    OutcomeKind::DeadLetter { error } => {
                        println!("  {:<16} => dead letter at {}: {error}", "", outcome.plugin)
                    }
                    OutcomeKind::Held {
                        rule,
                        reasons,
                        proposed,
                    } => {
                        println!(
                            "  {:<16} => held for a person before {} ({rule}): {}",
                            "",
                            outcome.plugin,
                            reasons.join("; ")
                        );
                        println!("  {:<16}    {proposed}", "");
                    }
                    OutcomeKind::Compensated { reference, .. } => {
                        compensated += 1;
                        println!("  {:<16} => undone by {}: {reference}", "", outcome.plugin);
                    }
                }
            }
            if !status.pending.is_empty() {
                println!("  still in flight after {} s", SETTLE_TIMEOUT.as_secs());
                ok = false;
            }
        }
        ok &= match expect {
            Expect::Delivered(n) => delivered == *n,
            Expect::Rejected(n) => rejected == *n && delivered == 0,
            Expect::Consumed(n) => consumed == *n,
            Expect::Undone(n) => compensated == *n && delivered == *n && rejected > 0,
        };
        let verdict = if ok { "as expected" } else { "NOT as expected" };
        println!("  => {verdict} ({expect:?})");
        println!();
        all_ok &= ok;
    }
    // What Stripe billed against what finance booked: every document matched.
    let today = tenon_model::chrono::DateTime::from_timestamp_millis(tenon::model::now_ms() as i64)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    let since = tenon_model::chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap_or_default();
    let report = server
        .runtime
        .reconcile("billing-vs-finance", since, today)
        .await?;
    println!(
        "Reconciliation billing-vs-finance (documents dated {since} to {today}): {} billed, {} booked by finance, {} matched",
        report.billing_documents, report.erp_records, report.matched
    );
    for mismatch in &report.mismatches {
        println!("  mismatch: {}", mismatch.detail);
    }
    match report.accuracy {
        Some(rate) => println!("  billing accuracy {:.1}%", rate * 100.0),
        None => println!("  billing accuracy not measured: nothing billed"),
    }
    all_ok &= report.mismatches.is_empty() && report.billing_documents > 0;
    println!();
    server.stop().await;

    let received = erp.received();
    let duplicates = received.iter().filter(|r| r.duplicate).count();
    println!(
        "The mock systems received {} documents ({} duplicates).",
        received.len(),
        duplicates
    );
    all_ok &= duplicates == 0;
    if all_ok {
        println!("All {} inputs ended as expected.", INPUTS.len());
    } else {
        println!("Some inputs did not end as expected; see above.");
    }
    println!();
    println!(
        "The config and plugins are in {}; to serve them yourself:",
        dir.display()
    );
    println!(
        "  tenon run --config {}   (its sinks post to {EXAMPLE_TARGET})",
        config_path.display()
    );
    Ok(all_ok)
}
