//! What the runtime tells its operators beyond one message: the metrics text (with the
//! store's figures), the business KPIs over a window, and one business key's timeline
//! across flows.

use super::Runtime;
use crate::model::{Hop, MessageId, Outcome, OutcomeKind};
use crate::store::StoreError;
use crate::telemetry::metrics::{self, Kpi, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use tenon_registry::Kind;

/// A latency KPI over a window, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Latency {
    /// How many were measured.
    pub count: u64,
    /// Median.
    pub p50_s: Option<f64>,
    /// 95th percentile.
    pub p95_s: Option<f64>,
    /// 99th percentile.
    pub p99_s: Option<f64>,
    /// Mean.
    pub mean_s: Option<f64>,
}

impl Latency {
    fn of(mut seconds: Vec<f64>) -> Latency {
        if seconds.is_empty() {
            return Latency::default();
        }
        seconds.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((seconds.len() as f64 * q).ceil() as usize).clamp(1, seconds.len()) - 1;
            Some(seconds[i])
        };
        Latency {
            count: seconds.len() as u64,
            p50_s: at(0.50),
            p95_s: at(0.95),
            p99_s: at(0.99),
            mean_s: Some(seconds.iter().sum::<f64>() / seconds.len() as f64),
        }
    }
}

/// A rate KPI over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rate {
    /// How many were counted.
    pub total: u64,
    /// How many of them the KPI is about (rejected orders, posted invoices).
    pub counted: u64,
    /// `counted / total`, when there were any.
    pub rate: Option<f64>,
    /// By rule, for rejections.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_rule: BTreeMap<String, u64>,
}

impl Rate {
    fn count(&mut self, hit: bool) {
        self.total += 1;
        self.counted += u64::from(hit);
        self.rate = Some(self.counted as f64 / self.total as f64);
    }
}

/// The billing-accuracy KPI: billing documents matched with the ERP, as of the last
/// run of each reconciliation on this node (their windows are by the documents' dates,
/// not by the report's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BillingAccuracy {
    /// Whether a reconciliation compared any document.
    pub measured: bool,
    /// `matched / documents`.
    pub rate: Option<f64>,
    /// Documents matched by reference, amount and currency.
    pub matched: usize,
    /// Billing documents compared.
    pub documents: usize,
    /// The runs it comes from: `<name> <since>..<until>`.
    pub runs: Vec<String>,
    /// Why it is not measured, when it is not.
    pub why: Option<String>,
}

/// `GET /v1/kpis`: the five business KPIs over the messages accepted in a window
/// (definitions: [`crate::telemetry::metrics`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KpiReport {
    /// Start of the window (ms since the Unix epoch).
    pub from_ms: u64,
    /// End of the window, exclusive.
    pub to_ms: u64,
    /// Quote accepted to the ERP's order receipt.
    pub quote_to_order: Latency,
    /// Quotes' orders refused by a rule, of those that ended.
    pub order_rejection: Rate,
    /// Invoices posted, of those that reached a sink.
    pub invoice_posting: Rate,
    /// Amendment accepted to its updated schedule delivered.
    pub amendment_propagation: Latency,
    /// Billing documents matched with the ERP (reconciliation).
    pub billing_accuracy: BillingAccuracy,
}

/// One outcome on a business key's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TimelineEntry {
    /// When it ended (ms since the Unix epoch).
    pub at_ms: u64,
    /// From the acceptance of the message it descends from, in ms.
    pub latency_ms: u64,
    /// The message.
    pub id: MessageId,
    /// The message accepted at ingress it descends from.
    pub root: MessageId,
    /// Its flow.
    pub flow: String,
    /// Its business key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// `delivered`, `rejected`, `consumed` or `dead_letter`.
    pub result: String,
    /// The target system's reference, the reasons, or the error.
    pub detail: String,
    /// Every plugin version that handled it, with its time.
    pub trail: Vec<Hop>,
    /// Failed attempts (retries) on the way.
    pub retries: usize,
    /// Its trace (32 hex digits), to look up in a trace viewer.
    pub trace_id: String,
}

/// `GET /v1/trace/{key}`: everything a business key led to, across flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BusinessTrace {
    /// The key asked about.
    pub key: String,
    /// Every key and target-system reference linked to it (order ids, ERP numbers...).
    pub linked: Vec<String>,
    /// What ended, in time order.
    pub timeline: Vec<TimelineEntry>,
    /// Messages of its lineage still queued: (id, flow, stage index, attempts so far).
    pub pending: Vec<(MessageId, String, u32, usize)>,
}

impl Runtime {
    /// The metrics in the Prometheus text format, with the store's current figures.
    pub async fn metrics_text(&self) -> Result<String, StoreError> {
        let mut snapshot = Snapshot::default();
        for (queue, depth) in self.store.depths().await? {
            let oldest = self.store.oldest(&queue).await?;
            snapshot.queues.insert(queue, (depth, oldest));
        }
        snapshot.dead_letters = self.store.dead_letters_per_flow().await?;
        Ok(metrics::render(&snapshot))
    }

    /// The business KPIs over the messages accepted in `[from_ms, to_ms)`.
    pub async fn kpis(&self, from_ms: u64, to_ms: u64) -> Result<KpiReport, StoreError> {
        let outcomes = self.store.outcomes_in(from_ms..to_ms).await?;
        let (mut quote_to_order, mut amendments) = (Vec::new(), Vec::new());
        let (mut orders, mut invoices) = (Rate::default(), Rate::default());
        for outcome in &outcomes {
            let at_sink = matches!(outcome.result, OutcomeKind::Delivered { .. })
                || self
                    .plugin(&outcome.plugin)
                    .is_some_and(|p| p.kind() == Kind::Sink);
            for kpi in metrics::kpis(outcome, at_sink) {
                match kpi {
                    Kpi::QuoteToOrder(s) => {
                        quote_to_order.push(s);
                        orders.count(false);
                    }
                    Kpi::OrderRejected(rules) => {
                        orders.count(true);
                        for rule in rules {
                            *orders.by_rule.entry(rule).or_default() += 1;
                        }
                    }
                    Kpi::Invoice(posted) => invoices.count(posted),
                    Kpi::Amendment(s) => amendments.push(s),
                }
            }
        }
        Ok(KpiReport {
            from_ms,
            to_ms,
            quote_to_order: Latency::of(quote_to_order),
            order_rejection: orders,
            invoice_posting: invoices,
            amendment_propagation: Latency::of(amendments),
            billing_accuracy: self.billing_accuracy(),
        })
    }

    /// The billing-accuracy KPI from the last run of each reconciliation.
    fn billing_accuracy(&self) -> BillingAccuracy {
        let runs = self.reconciliations();
        let matched: usize = runs.values().map(|r| r.matched).sum();
        let documents: usize = runs.values().map(|r| r.billing_documents).sum();
        BillingAccuracy {
            measured: documents > 0,
            rate: (documents > 0).then(|| matched as f64 / documents as f64),
            matched,
            documents,
            runs: runs
                .values()
                .map(|r| format!("{} {}..{}", r.reconciliation, r.since, r.until))
                .collect(),
            why: match (runs.is_empty(), documents) {
                (true, _) => Some(
                    "no reconciliation has run on this node: configure [reconciliations.*] or run `tenon reconcile`".into(),
                ),
                (false, 0) => Some("the reconciliations found no billing document in their windows".into()),
                _ => None,
            },
        }
    }

    /// Everything `key` led to: the messages with that key or a target-system
    /// reference equal to it, every message of their lineages (across flows: the
    /// orders a quote was split into, the events they published), and, in turn,
    /// whatever carries one of those messages' keys or references.
    pub async fn business_trace(&self, key: &str) -> Result<BusinessTrace, StoreError> {
        let outcomes = self.store.outcomes_in(0..u64::MAX).await?;
        let reference = |o: &Outcome| match &o.result {
            OutcomeKind::Delivered { reference, .. } => Some(reference.clone()),
            _ => None,
        };
        let mut keys = BTreeSet::from([key.to_owned()]);
        let mut roots = BTreeSet::new();
        loop {
            let mut grew = false;
            for o in &outcomes {
                let linked = keys.contains(&o.key)
                    || reference(o).is_some_and(|r| keys.contains(&r))
                    || roots.contains(&o.root);
                if !linked {
                    continue;
                }
                grew |= roots.insert(o.root.clone());
                grew |= keys.insert(o.key.clone());
                if let Some(r) = reference(o) {
                    grew |= keys.insert(r);
                }
            }
            if !grew {
                break;
            }
        }
        let mut timeline: Vec<TimelineEntry> = outcomes
            .into_iter()
            .filter(|o| roots.contains(&o.root))
            .map(|o| {
                let detail = match &o.result {
                    OutcomeKind::Delivered { reference, .. } => reference.clone(),
                    OutcomeKind::Rejected { reasons } => reasons.join("; "),
                    OutcomeKind::Consumed => String::new(),
                    OutcomeKind::DeadLetter { error } => error.clone(),
                    OutcomeKind::Held { reasons, .. } => format!("held: {}", reasons.join("; ")),
                    OutcomeKind::Compensated { reference, .. } => {
                        format!("compensated: {reference}")
                    }
                };
                TimelineEntry {
                    at_ms: o.at_ms,
                    latency_ms: o.at_ms.saturating_sub(o.accepted_ms),
                    result: metrics::result_name(&o.result).to_owned(),
                    detail,
                    retries: o.attempts.len(),
                    id: o.id,
                    root: o.root,
                    flow: o.flow,
                    key: o.key,
                    kind: o.kind,
                    trail: o.trail,
                    trace_id: o.trace_id,
                }
            })
            .collect();
        timeline.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
        let mut pending = Vec::new();
        for root in &roots {
            for e in self.store.pending(root).await? {
                pending.push((e.message.id, e.flow, e.stage, e.attempts.len()));
            }
        }
        keys.remove(key);
        Ok(BusinessTrace {
            key: key.to_owned(),
            linked: keys.into_iter().collect(),
            timeline,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_of_what_was_measured() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_s, Some(50.0));
        assert_eq!(l.p95_s, Some(95.0));
        assert_eq!(l.p99_s, Some(99.0));
        assert_eq!(l.mean_s, Some(50.5));
        assert_eq!(Latency::of(vec![]), Latency::default());
    }
}
