//! `tenon demo`: the quote-to-cash example, end to end, on the embedded defaults.
//!
//! It extracts the embedded plugins and the example config into `<data-dir>/demo`,
//! starts a mock ERP and the runtime on free ports of 127.0.0.1, posts the sample
//! quotes, waits until each has settled, and prints what happened to each one.

pub mod mock_erp;

use crate::config::Config;
use crate::queue::OutcomeKind;
use crate::server::Server;
use anyhow::Context as _;
use mock_erp::MockErp;
use std::path::Path;
use std::time::{Duration, Instant};
use tenon_registry::ConfigValue;

/// The example's flow config.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../examples/quote-to-cash/tenon.toml");

/// The quote-to-cash flow over the first-party plugins extracted under `plugins/`
/// (see [`crate::artifacts::extract_first_party`]), its sink posting to `erp_url`;
/// `flow_settings` are appended to the flow's table (e.g. `concurrency = 32`).
/// Tests and benchmarks build their configs with it.
pub fn quote_to_cash_config(erp_url: &str, flow_settings: &str) -> String {
    format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"

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
}

/// The example's sample quotes: (file name, body, expected end).
pub const SAMPLES: &[(&str, &str, Expect)] = &[
    (
        "plain.json",
        include_str!("../../../examples/quote-to-cash/samples/plain.json"),
        Expect::Delivered(1),
    ),
    (
        "bundle.json",
        include_str!("../../../examples/quote-to-cash/samples/bundle.json"),
        Expect::Delivered(2),
    ),
    (
        "invalid.json",
        include_str!("../../../examples/quote-to-cash/samples/invalid.json"),
        Expect::Rejected(3),
    ),
];

/// How long the demo waits for every quote to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the demo; `Ok(true)` when every quote ended as expected.
pub async fn run(data_dir: &Path) -> anyhow::Result<bool> {
    let dir = data_dir.join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::artifacts::extract_first_party(&dir.join("plugins"))?;
    let config_path = dir.join("tenon.toml");
    std::fs::write(&config_path, EXAMPLE_CONFIG)?;

    let erp = MockErp::start()
        .await
        .context("cannot start the mock ERP")?;
    let mut config = Config::parse(&config_path, EXAMPLE_CONFIG)?;
    if let Some(sink) = config.plugins.get_mut("erp-sink") {
        sink.config
            .insert("url".into(), ConfigValue::Text(erp.orders_url()));
    }

    println!("Tenon quote-to-cash demo");
    println!("  work dir   {}", dir.display());
    println!("  mock ERP   {}", erp.orders_url());
    let started = Instant::now();
    let listen = "127.0.0.1:0".parse().ok();
    let server = Server::start(config, &dir.join("data"), listen).await?;
    let plugins = server.runtime.config().plugins.len();
    println!(
        "  runtime    http://{} ({plugins} plugins compiled and loaded in {} ms)",
        server.addr,
        started.elapsed().as_millis()
    );
    println!();

    let mut sent = Vec::new();
    for (file, body, expect) in SAMPLES {
        let url = format!("http://{}/v1/sources/cpq-source", server.addr);
        let reply = crate::client::post(&url, "application/json", body.as_bytes().to_vec()).await?;
        let status = reply.status;
        let ids: Vec<String> = reply
            .json()
            .ok()
            .and_then(|v| serde_json::from_value(v.get("accepted")?.clone()).ok())
            .unwrap_or_default();
        println!(
            "POST /v1/sources/cpq-source  {file:<13} -> {status} {}",
            ids.join(", ")
        );
        sent.push((*file, ids, *expect));
    }

    println!();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut all_ok = true;
    for (file, ids, expect) in &sent {
        let mut ok = !ids.is_empty();
        for id in ids {
            let status = loop {
                let status = server.runtime.status(id)?;
                if status.is_settled() || Instant::now() > deadline {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let key = status.outcomes.first().map_or("?", |o| o.key.as_str());
            println!("{key} ({file})");
            if let Some(first) = status.outcomes.first() {
                let path: Vec<String> = first
                    .trail
                    .iter()
                    .map(|h| format!("{}@{}", h.plugin, h.version))
                    .collect();
                println!("  path       {}", path.join(" -> "));
            }
            let mut delivered = 0;
            let mut rejected = 0;
            for outcome in &status.outcomes {
                match &outcome.result {
                    OutcomeKind::Delivered { reference, .. } => {
                        delivered += 1;
                        let order = erp
                            .received()
                            .into_iter()
                            .find(|r| r.idempotency_key.as_deref() == Some(outcome.id.as_str()));
                        let summary = order.map_or(String::new(), |o| {
                            let lines = match o.body["lines"].as_array().map_or(0, Vec::len) {
                                1 => "1 line".to_owned(),
                                n => format!("{n} lines"),
                            };
                            let total = &o.body["total"];
                            format!(
                                "  ({lines}, {} {}, {})",
                                total["amount"].as_str().unwrap_or("?"),
                                total["currency"].as_str().unwrap_or("?"),
                                o.body["category"].as_str().unwrap_or("?")
                            )
                        });
                        let order_id = order_id_of(&erp, &outcome.id).unwrap_or_default();
                        println!("  order      {order_id:<12} delivered as {reference}{summary}");
                    }
                    OutcomeKind::Rejected { reasons } => {
                        rejected = reasons.len();
                        println!("  rejected   at {}:", outcome.plugin);
                        for reason in reasons {
                            println!("             - {reason}");
                        }
                    }
                    OutcomeKind::Consumed => println!("  consumed   at {}", outcome.plugin),
                    OutcomeKind::DeadLetter { error } => {
                        println!("  dead letter at {}: {error}", outcome.plugin)
                    }
                }
            }
            if !status.pending.is_empty() {
                println!("  still in flight after {} s", SETTLE_TIMEOUT.as_secs());
            }
            ok &= match expect {
                Expect::Delivered(n) => delivered == *n && status.is_settled(),
                Expect::Rejected(n) => rejected == *n && delivered == 0,
            };
        }
        let verdict = if ok { "as expected" } else { "NOT as expected" };
        println!("  => {verdict} ({expect:?})");
        println!();
        all_ok &= ok;
    }
    server.stop().await;

    let received = erp.received();
    let duplicates = received.iter().filter(|r| r.duplicate).count();
    println!(
        "The mock ERP received {} orders ({} duplicates).",
        received.len(),
        duplicates
    );
    all_ok &= duplicates == 0;
    if all_ok {
        println!("All {} quotes ended as expected.", SAMPLES.len());
    } else {
        println!("Some quotes did not end as expected; see above.");
    }
    println!();
    println!(
        "The config and plugins are in {}; to serve them yourself:",
        dir.display()
    );
    println!(
        "  tenon run --config {}   (its sink posts to 127.0.0.1:9400)",
        config_path.display()
    );
    Ok(all_ok)
}

fn order_id_of(erp: &MockErp, message_id: &str) -> Option<String> {
    erp.received()
        .into_iter()
        .find(|r| r.idempotency_key.as_deref() == Some(message_id))
        .and_then(|r| r.body["id"].as_str().map(str::to_owned))
}
