//! The metrics on the admin listener's `GET /metrics` (OpenMetrics text, which
//! Prometheus scrapes), and the five business KPIs.
//!
//! Counters and histograms are process-wide and move as work happens; queue depths,
//! oldest ages and dead letters are read from the store at each scrape
//! ([`Snapshot`]). The KPIs, as counted when a message's outcome is committed:
//!
//! - **quote-to-order latency** (`tenon_kpi_quote_to_order_seconds`): from a quote's
//!   acceptance at ingress to the ERP's receipt of an order made from it (an
//!   `OrderAccepted` delivered by a sink, descending from a `QuoteApproved`);
//! - **order rejection rate** (`tenon_kpi_orders_total{result}`, and
//!   `tenon_kpi_order_rejections_total{rule}`): of the quotes' orders that ended,
//!   those a business rule refused (anywhere on the way), by rule;
//! - **invoice posting success** (`tenon_kpi_invoice_postings_total{result}`): of the
//!   `InvoicePosted` messages that reached a sink, those it posted;
//! - **amendment propagation delay** (`tenon_kpi_amendment_propagation_seconds`): from
//!   an amendment's acceptance (`ContractAmended`) to the delivery of the revenue
//!   schedule it updated (`RevenueScheduleUpdated`);
//! - **billing accuracy** (`tenon_kpi_billing_accuracy_ratio{reconciliation}`): of
//!   the billing documents a reconciliation compared with the ERP's records, those
//!   matched by reference, amount and currency, at its last run.

use crate::model::{Outcome, OutcomeKind};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Kinds the KPIs follow.
pub const QUOTE: &str = "QuoteApproved";
/// See [`QUOTE`]: an order a sink delivered, accepted by a gateway or, in a flow
/// without one, as the mapping drafted it.
pub const ORDER: &str = "OrderAccepted";
/// See [`ORDER`].
pub const ORDER_DRAFTED: &str = "OrderDrafted";
/// See [`QUOTE`].
pub const INVOICE: &str = "InvoicePosted";
/// See [`QUOTE`].
pub const AMENDMENT: &str = "ContractAmended";
/// See [`QUOTE`].
pub const SCHEDULE: &str = "RevenueScheduleUpdated";

fn fast() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

fn slow() -> Histogram {
    // 10 ms .. ~24 h
    Histogram::new(exponential_buckets(0.01, 2.5, 20))
}

fn batch() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

struct Metrics {
    registry: Registry,
    queue_depth: Family<Labels, Gauge>,
    queue_oldest: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    dead_letters: Family<Labels, Gauge>,
    messages: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    fused: Family<Labels, Counter>,
    plugin_calls: Histograms,
    api_calls: Histograms,
    outbound: Histograms,
    commit: Histogram,
    commit_batch: Histogram,
    swaps: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    denials: Family<Labels, Counter>,
    quote_to_order: Histogram,
    orders: Family<Labels, Counter>,
    rejections: Family<Labels, Counter>,
    invoices: Family<Labels, Counter>,
    amendments: Histogram,
    billing_accuracy: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    mismatches: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("tenon");
    let m = Metrics {
        registry: Registry::default(),
        queue_depth: Family::default(),
        queue_oldest: Family::default(),
        dead_letters: Family::default(),
        messages: Family::default(),
        retries: Family::default(),
        fused: Family::default(),
        plugin_calls: Family::new_with_constructor(fast),
        api_calls: Family::new_with_constructor(fast),
        outbound: Family::new_with_constructor(fast),
        commit: fast(),
        commit_batch: batch(),
        swaps: Family::default(),
        refusals: Family::default(),
        denials: Family::default(),
        quote_to_order: slow(),
        orders: Family::default(),
        rejections: Family::default(),
        invoices: Family::default(),
        amendments: slow(),
        billing_accuracy: Family::default(),
        mismatches: Family::default(),
    };
    registry.register(
        "queue_depth",
        "Messages in each queue (waiting, leased or due for a retry)",
        m.queue_depth.clone(),
    );
    registry.register(
        "queue_oldest_age_seconds",
        "Time since the message at the head of each queue entered Tenon",
        m.queue_oldest.clone(),
    );
    registry.register(
        "dead_letters",
        "Dead letters waiting for an operator, by flow",
        m.dead_letters.clone(),
    );
    registry.register(
        "messages",
        "Messages that ended, by flow and how (delivered, rejected, consumed, dead_letter)",
        m.messages.clone(),
    );
    registry.register(
        "retries",
        "Failed attempts that will be retried, by flow, stage and error class",
        m.retries.clone(),
    );
    registry.register(
        "steps_fused",
        "Steps run in the lease and commit of the step before them (no hop through a queue), by flow and stage",
        m.fused.clone(),
    );
    registry.register(
        "plugin_call_duration_seconds",
        "Plugin calls at a stage, by plugin, version digest and outcome",
        m.plugin_calls.clone(),
    );
    registry.register(
        "api_request_duration_seconds",
        "Synchronous API answers ([apis.*]), by route and outcome (ok, deadline, or the failure's class)",
        m.api_calls.clone(),
    );
    registry.register(
        "outbound_request_duration_seconds",
        "Plugins' outbound HTTP requests, by plugin, origin and status",
        m.outbound.clone(),
    );
    registry.register(
        "commit_duration_seconds",
        "Time to commit a step's result durably",
        m.commit.clone(),
    );
    registry.register(
        "commit_batch_size",
        "Results committed together",
        m.commit_batch.clone(),
    );
    registry.register(
        "plugin_swaps",
        "New plugin versions made live, by plugin",
        m.swaps.clone(),
    );
    registry.register(
        "plugin_refusals",
        "New plugin versions refused (they did not load or fit), by plugin",
        m.refusals.clone(),
    );
    registry.register(
        "sandbox_denials",
        "Sandbox refusals, by capability",
        m.denials.clone(),
    );
    registry.register(
        "kpi_quote_to_order_seconds",
        "KPI: from a quote's acceptance to the ERP's receipt of an order made from it",
        m.quote_to_order.clone(),
    );
    registry.register(
        "kpi_orders",
        "KPI: quotes' orders that ended, accepted by the ERP or rejected by a rule",
        m.orders.clone(),
    );
    registry.register(
        "kpi_order_rejections",
        "KPI: rejection reasons of quotes' orders, by rule",
        m.rejections.clone(),
    );
    registry.register(
        "kpi_invoice_postings",
        "KPI: invoices that reached a sink, posted or failed",
        m.invoices.clone(),
    );
    registry.register(
        "kpi_amendment_propagation_seconds",
        "KPI: from an amendment's acceptance to the delivery of the schedule it updated",
        m.amendments.clone(),
    );
    registry.register(
        "kpi_billing_accuracy_ratio",
        "KPI: billing documents matched with the ERP (reference, amount, currency), of those reconciled, at the last run of each reconciliation",
        m.billing_accuracy.clone(),
    );
    registry.register(
        "reconciliation_mismatches",
        "Mismatches reconciliations found, by reconciliation and kind",
        m.mismatches.clone(),
    );
    Metrics { registry, ..m }
});

/// A reconciliation's run: its match rate (when it had documents) and mismatches.
pub fn reconciled(name: &str, accuracy: Option<f64>, mismatches: &[&str]) {
    let m = &*METRICS;
    if let Some(rate) = accuracy {
        m.billing_accuracy
            .get_or_create(&vec![("reconciliation", name.to_owned())])
            .set(rate);
    }
    for kind in mismatches {
        m.mismatches
            .get_or_create(&vec![
                ("reconciliation", name.to_owned()),
                ("kind", (*kind).to_owned()),
            ])
            .inc();
    }
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// How an outcome ended, as the `result` label says it.
pub fn result_name(result: &OutcomeKind) -> &'static str {
    match result {
        OutcomeKind::Delivered { .. } => "delivered",
        OutcomeKind::Rejected { .. } => "rejected",
        OutcomeKind::Consumed => "consumed",
        OutcomeKind::DeadLetter { .. } => "dead_letter",
        OutcomeKind::Held { .. } => "held",
        OutcomeKind::Compensated { .. } => "compensated",
    }
}

/// A plugin call at a stage took `took` and ended with `outcome` (`ok` or an error class).
pub fn plugin_call(plugin: &str, digest: &str, outcome: &str, took: Duration) {
    METRICS
        .plugin_calls
        .get_or_create(&labels([
            ("plugin", plugin),
            ("digest", digest),
            ("outcome", outcome),
        ]))
        .observe(took.as_secs_f64());
}

/// A synchronous API (`[apis.<name>]`) answered, or failed with `outcome`.
pub fn api_call(api: &str, outcome: &str, took: Duration) {
    METRICS
        .api_calls
        .get_or_create(&labels([("api", api), ("outcome", outcome)]))
        .observe(took.as_secs_f64());
}

/// An attempt failed with an error of `class` and will be retried.
pub fn retry(flow: &str, stage: &str, class: &str) {
    METRICS
        .retries
        .get_or_create(&labels([
            ("flow", flow),
            ("stage", stage),
            ("class", class),
        ]))
        .inc();
}

/// A message went through `stage` of `flow` in the lease of the step before it.
pub fn fused(flow: &str, stage: &str) {
    METRICS
        .fused
        .get_or_create(&labels([("flow", flow), ("stage", stage)]))
        .inc();
}

/// `n` results were committed in `took`.
pub fn commit(took: Duration, n: usize) {
    METRICS.commit.observe(took.as_secs_f64());
    METRICS.commit_batch.observe(n as f64);
}

/// A plugin's outbound request to `origin` ended with `status` (a code, or `error`).
pub fn outbound(plugin: &str, origin: &str, status: &str, took: Duration) {
    METRICS
        .outbound
        .get_or_create(&labels([
            ("plugin", plugin),
            ("origin", origin),
            ("status", status),
        ]))
        .observe(took.as_secs_f64());
}

/// A new version of `plugin` went live.
pub fn swapped(plugin: &str) {
    METRICS
        .swaps
        .get_or_create(&labels([("plugin", plugin)]))
        .inc();
}

/// A new version of `plugin` was refused.
pub fn refused(plugin: &str) {
    METRICS
        .refusals
        .get_or_create(&labels([("plugin", plugin)]))
        .inc();
}

/// The sandbox refused a plugin the use of `capability`.
pub fn denied(capability: &str) {
    METRICS
        .denials
        .get_or_create(&labels([("capability", capability)]))
        .inc();
}

/// A message's outcome was committed (`at_sink`: by a sink): the message counts and
/// the KPIs it bears on.
pub fn finished(outcome: &Outcome, at_sink: bool) {
    let m = &*METRICS;
    m.messages
        .get_or_create(&labels([
            ("flow", &outcome.flow),
            ("result", result_name(&outcome.result)),
        ]))
        .inc();
    for kpi in kpis(outcome, at_sink) {
        match kpi {
            Kpi::QuoteToOrder(s) => {
                m.quote_to_order.observe(s);
                m.orders
                    .get_or_create(&labels([("result", "accepted")]))
                    .inc();
            }
            Kpi::OrderRejected(rules) => {
                m.orders
                    .get_or_create(&labels([("result", "rejected")]))
                    .inc();
                for rule in rules {
                    m.rejections.get_or_create(&vec![("rule", rule)]).inc();
                }
            }
            Kpi::Invoice(posted) => {
                let result = if posted { "posted" } else { "failed" };
                m.invoices
                    .get_or_create(&labels([("result", result)]))
                    .inc();
            }
            Kpi::Amendment(s) => m.amendments.observe(s),
        }
    }
}

/// What an outcome tells of the KPIs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kpi {
    /// An order made from a quote reached the ERP, this many seconds after the quote.
    QuoteToOrder(f64),
    /// A quote's order was refused by these rules.
    OrderRejected(Vec<String>),
    /// An invoice reached a sink: posted or not.
    Invoice(bool),
    /// A schedule updated by an amendment was delivered, this many seconds after it.
    Amendment(f64),
}

/// The KPIs an outcome bears on (see the module documentation).
pub fn kpis(outcome: &Outcome, at_sink: bool) -> Vec<Kpi> {
    let since = || outcome.at_ms.saturating_sub(outcome.accepted_ms) as f64 / 1000.0;
    let delivered = matches!(outcome.result, OutcomeKind::Delivered { .. });
    let mut out = Vec::new();
    if outcome.root_kind == QUOTE {
        match &outcome.result {
            OutcomeKind::Delivered { .. }
                if outcome.kind == ORDER || outcome.kind == ORDER_DRAFTED =>
            {
                out.push(Kpi::QuoteToOrder(since()))
            }
            OutcomeKind::Rejected { reasons } => out.push(Kpi::OrderRejected(
                reasons
                    .iter()
                    .map(|r| format!("{}: {}", outcome.plugin, rule_of(r)))
                    .collect(),
            )),
            _ => {}
        }
    }
    if outcome.kind == INVOICE && at_sink {
        out.push(Kpi::Invoice(delivered));
    }
    if outcome.root_kind == AMENDMENT && outcome.kind == SCHEDULE && delivered {
        out.push(Kpi::Amendment(since()));
    }
    out
}

/// A rejection reason as a rule: what varies from message to message (quoted
/// values, anything with a digit) left out, so the rules stay few.
pub fn rule_of(reason: &str) -> String {
    let mut out = Vec::new();
    let mut quoted = false;
    for word in reason.split_whitespace() {
        let opens = word.starts_with('`');
        let closes = word.len() > 1 && word.trim_end_matches([',', ':', '.', ';']).ends_with('`');
        if opens && !quoted {
            out.push("…".to_owned());
            quoted = !closes;
            continue;
        }
        if quoted {
            quoted = !closes;
            continue;
        }
        if word.chars().any(|c| c.is_ascii_digit()) {
            let tail: String = word
                .chars()
                .rev()
                .take_while(|c| ":,;.".contains(*c))
                .collect();
            out.push(format!("…{tail}"));
        } else {
            out.push(word.to_owned());
        }
    }
    out.join(" ")
}

/// What the store holds at a scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Each queue: its depth and when its oldest message entered (ms since the epoch).
    pub queues: BTreeMap<String, (usize, Option<u64>)>,
    /// Dead letters by flow.
    pub dead_letters: BTreeMap<String, u64>,
}

/// The metrics as Prometheus scrapes them, with the store's figures of `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let m = &*METRICS;
    let now = crate::model::now_ms();
    m.queue_depth.clear();
    m.queue_oldest.clear();
    for (queue, (depth, oldest)) in &snapshot.queues {
        let l = labels([("queue", queue)]);
        m.queue_depth.get_or_create(&l).set(*depth as i64);
        if let Some(oldest) = oldest {
            m.queue_oldest
                .get_or_create(&l)
                .set(now.saturating_sub(*oldest) as f64 / 1000.0);
        }
    }
    m.dead_letters.clear();
    for (flow, n) in &snapshot.dead_letters {
        m.dead_letters
            .get_or_create(&labels([("flow", flow)]))
            .set(*n as i64);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &m.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageId;

    fn outcome(kind: &str, root_kind: &str, result: OutcomeKind) -> Outcome {
        Outcome {
            id: MessageId::root(),
            root: MessageId::root(),
            flow: "f".into(),
            key: "k".into(),
            kind: kind.into(),
            plugin: "gateway".into(),
            trail: vec![],
            attempts: vec![],
            at_ms: 3_500,
            result,
            accepted_ms: 1_000,
            root_kind: root_kind.into(),
            trace_id: String::new(),
            undo: None,
        }
    }

    #[test]
    fn outcomes_bear_on_the_kpis_they_define() {
        let delivered = || OutcomeKind::Delivered {
            reference: "SO-1".into(),
            detail: None,
        };
        assert_eq!(
            kpis(&outcome(ORDER, QUOTE, delivered()), true),
            vec![Kpi::QuoteToOrder(2.5)]
        );
        assert_eq!(
            kpis(&outcome(ORDER_DRAFTED, QUOTE, delivered()), true),
            vec![Kpi::QuoteToOrder(2.5)],
            "an order delivered by a flow without a gateway"
        );
        assert_eq!(
            kpis(
                &outcome(
                    QUOTE,
                    QUOTE,
                    OutcomeKind::Rejected {
                        reasons: vec![
                            "sold-to customer `C-9` is not in the customer master".into()
                        ]
                    }
                ),
                false
            ),
            vec![Kpi::OrderRejected(vec![
                "gateway: sold-to customer … is not in the customer master".into()
            ])]
        );
        assert_eq!(
            kpis(&outcome(INVOICE, INVOICE, delivered()), true),
            vec![Kpi::Invoice(true)]
        );
        assert_eq!(
            kpis(
                &outcome(
                    INVOICE,
                    INVOICE,
                    OutcomeKind::DeadLetter { error: "x".into() }
                ),
                true
            ),
            vec![Kpi::Invoice(false)]
        );
        assert_eq!(
            kpis(&outcome(SCHEDULE, AMENDMENT, delivered()), true),
            vec![Kpi::Amendment(2.5)]
        );
        assert!(kpis(&outcome(SCHEDULE, "ContractActivated", delivered()), true).is_empty());
    }

    #[test]
    fn rules_leave_out_what_varies() {
        assert_eq!(
            rule_of("quote Q-00101 line 2 has quantity -1, which is not positive"),
            "quote … line … has quantity …, which is not positive"
        );
        assert_eq!(
            rule_of("line 10: product `HW-GW-02` may not be sold in BR"),
            "line …: product … may not be sold in BR"
        );
        assert_eq!(
            rule_of("no tax nexus in BR: the company is not registered to collect tax there"),
            "no tax nexus in BR: the company is not registered to collect tax there"
        );
    }

    #[test]
    fn the_text_names_every_family_with_the_store_figures() {
        let mut snapshot = Snapshot::default();
        snapshot
            .queues
            .insert("quote-to-order/gateway".into(), (3, Some(0)));
        snapshot.dead_letters.insert("erp-de".into(), 2);
        let text = render(&snapshot);
        assert!(
            text.contains("tenon_queue_depth{queue=\"quote-to-order/gateway\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tenon_dead_letters{flow=\"erp-de\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tenon_kpi_quote_to_order_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
