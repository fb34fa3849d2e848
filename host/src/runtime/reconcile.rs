//! Reconciliation of billing with the ERP (`[reconciliations.*]`).
//!
//! A run compares, for the documents dated in a window:
//! - **billing**: what billing systems sent, from the event log (the messages ingress
//!   accepted of the configured kinds: an `InvoicePosted` under its id, a
//!   `CreditIssued` under its id with its total negative, an `InvoiceVoided` as
//!   `<id>/void`, negative), as long as the log keeps them;
//! - **the ERP**: what the ERP holds, read through the `records` export of the
//!   configured sink instance (e.g. Tryton's customer invoices and credit notes).
//!
//! By reference: one on each side with the same amount (exact decimals) and currency
//! is a match; otherwise a mismatch: `missing_in_erp`, `missing_in_billing`, `amount`,
//! `currency`, `duplicate` (one side holds the reference more than once, differently
//! on the billing side). Each mismatch is a `ReconciliationException` message that
//! enters the flows subscribing to it, held for a person (an exception; the event log
//! records it as accepted); one still waiting for a decision is not raised twice. The
//! match rate is the billing-accuracy KPI.

use super::Runtime;
use crate::config::{RECONCILIATION_EXCEPTION, ReconciliationEntry};
use crate::model::{Directive, Envelope, EventBody, MessageId, StoredMessage, now_ms};
use crate::store::StoreError;
use crate::telemetry::metrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::PoisonError;
use tenon_model::chrono::{self, NaiveDate};
use tenon_model::rust_decimal::Decimal;

/// What a mismatch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// Billed, but the ERP holds no record of it.
    MissingInErp,
    /// The ERP holds a record no billing document explains.
    MissingInBilling,
    /// Both hold it, for different amounts.
    Amount,
    /// Both hold it, in different currencies.
    Currency,
    /// One side holds the reference more than once.
    Duplicate,
}

impl MismatchKind {
    fn name(self) -> &'static str {
        match self {
            MismatchKind::MissingInErp => "missing_in_erp",
            MismatchKind::MissingInBilling => "missing_in_billing",
            MismatchKind::Amount => "amount",
            MismatchKind::Currency => "currency",
            MismatchKind::Duplicate => "duplicate",
        }
    }
}

/// One side's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Document {
    /// Its id on that side (a message id; the ERP's record id).
    pub id: String,
    /// Its amount with taxes, an exact decimal.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Its date, when it has one.
    pub date: Option<String>,
}

/// A reference the two sides disagree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Mismatch {
    /// What kind.
    pub kind: MismatchKind,
    /// The document's reference (the billing document's id).
    pub reference: String,
    /// What billing sent under it.
    pub billing: Vec<Document>,
    /// What the ERP holds under it.
    pub erp: Vec<Document>,
    /// In words.
    pub detail: String,
}

/// What a run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reconciled {
    /// The reconciliation's name.
    pub reconciliation: String,
    /// First day of the window (documents' dates).
    pub since: String,
    /// Last day of the window, included.
    pub until: String,
    /// When it ran (ms since the Unix epoch).
    pub at_ms: u64,
    /// Billing documents (distinct references) compared.
    pub billing_documents: usize,
    /// ERP records read.
    pub erp_records: usize,
    /// References matched by amount and currency.
    pub matched: usize,
    /// `matched / billing_documents`: the billing-accuracy KPI (none without documents).
    pub accuracy: Option<f64>,
    /// Every mismatch.
    pub mismatches: Vec<Mismatch>,
    /// Exceptions raised by this run (a mismatch waiting for a decision already is
    /// not raised again).
    pub raised: usize,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// No reconciliation of that name in the config.
    #[error("no reconciliation named `{0}` in the config")]
    Unknown(String),
    /// The window is not one.
    #[error("{0}")]
    Window(String),
    /// The ERP could not be read.
    #[error("the ERP's records could not be read through `{plugin}`: {error}")]
    Erp {
        /// The sink instance.
        plugin: String,
        /// What went wrong.
        error: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A billing document as the event log has it.
struct Billed {
    reference: String,
    document: Document,
}

/// The billing document a message accepted at ingress is, when it is one of `kinds`.
fn billed(message: &StoredMessage, kinds: &[String]) -> Option<Billed> {
    if !kinds.contains(&message.kind) || message.id.is_event_copy() {
        return None;
    }
    let body: serde_json::Value = tenon_model::Encoding::from_content_type(&message.content_type)
        .ok()?
        .decode(&message.body)
        .ok()?;
    let id = body.get("id")?.as_str()?;
    let total = body.get("total")?;
    let amount = Decimal::from_str(total.get("amount")?.as_str()?).ok()?;
    let currency = total.get("currency")?.as_str()?.to_owned();
    let (reference, amount) = match message.kind.as_str() {
        "InvoicePosted" => (id.to_owned(), amount),
        "CreditIssued" => (id.to_owned(), -amount),
        _ => (format!("{id}/void"), -amount),
    };
    Some(Billed {
        reference,
        document: Document {
            id: message.id.to_string(),
            amount: amount.to_string(),
            currency,
            date: body
                .get("issued")
                .and_then(|d| d.as_str())
                .map(str::to_owned),
        },
    })
}

fn decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str(text).ok().map(|d| d.normalize())
}

fn dated_in(date: Option<&str>, since: NaiveDate, until: NaiveDate) -> bool {
    // An undated document cannot be windowed: it is compared, not left out.
    date.and_then(|d| NaiveDate::parse_from_str(d.get(..10)?, "%Y-%m-%d").ok())
        .is_none_or(|d| since <= d && d <= until)
}

/// Compare billing with the ERP, reference by reference.
fn compare(
    billing: &BTreeMap<String, Vec<Document>>,
    erp: &BTreeMap<String, Vec<Document>>,
) -> (usize, Vec<Mismatch>) {
    let mut matched = 0;
    let mut mismatches = Vec::new();
    let mut mismatch = |kind, reference: &str, b: &[Document], e: &[Document], detail: String| {
        mismatches.push(Mismatch {
            kind,
            reference: reference.to_owned(),
            billing: b.to_vec(),
            erp: e.to_vec(),
            detail,
        });
    };
    for (reference, billed) in billing {
        let booked = erp.get(reference).map_or(&[][..], Vec::as_slice);
        let first = &billed[0];
        let distinct = billed
            .iter()
            .any(|d| decimal(&d.amount) != decimal(&first.amount) || d.currency != first.currency);
        if distinct {
            let amounts: Vec<String> = billed
                .iter()
                .map(|d| format!("{} {}", d.amount, d.currency))
                .collect();
            let detail = format!(
                "billing sent {} different documents as {reference}: {}",
                billed.len(),
                amounts.join(", ")
            );
            mismatch(MismatchKind::Duplicate, reference, billed, booked, detail);
            continue;
        }
        match booked {
            [] => mismatch(
                MismatchKind::MissingInErp,
                reference,
                billed,
                booked,
                format!(
                    "{reference} ({} {}) was billed; the ERP holds no record of it",
                    first.amount, first.currency
                ),
            ),
            [record] if record.currency != first.currency => mismatch(
                MismatchKind::Currency,
                reference,
                billed,
                booked,
                format!(
                    "{reference} was billed in {} and booked in {} ({})",
                    first.currency, record.currency, record.id
                ),
            ),
            [record] if decimal(&record.amount) != decimal(&first.amount) => mismatch(
                MismatchKind::Amount,
                reference,
                billed,
                booked,
                format!(
                    "{reference} was billed for {} {} and booked for {} {} ({})",
                    first.amount, first.currency, record.amount, record.currency, record.id
                ),
            ),
            [_] => matched += 1,
            records => {
                let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
                mismatch(
                    MismatchKind::Duplicate,
                    reference,
                    billed,
                    booked,
                    format!(
                        "the ERP books {reference} {} times: {}",
                        records.len(),
                        ids.join(", ")
                    ),
                );
            }
        }
    }
    for (reference, records) in erp {
        if billing.contains_key(reference) {
            continue;
        }
        for record in records {
            mismatch(
                MismatchKind::MissingInBilling,
                if reference.is_empty() {
                    &record.id
                } else {
                    reference
                },
                &[],
                std::slice::from_ref(record),
                format!(
                    "the ERP's {} ({} {}, reference `{reference}`) matches no billing document",
                    record.id, record.amount, record.currency
                ),
            );
        }
    }
    (matched, mismatches)
}

impl Runtime {
    /// Run reconciliation `name` over the documents dated `since` to `until`
    /// (included): compare, raise an exception per new mismatch, keep the report.
    pub async fn reconcile(
        &self,
        name: &str,
        since: NaiveDate,
        until: NaiveDate,
    ) -> Result<Reconciled, ReconcileError> {
        let entry: ReconciliationEntry = self
            .config()
            .reconciliations
            .get(name)
            .cloned()
            .ok_or_else(|| ReconcileError::Unknown(name.to_owned()))?;
        if since > until {
            return Err(ReconcileError::Window(format!(
                "the window ends ({until}) before it starts ({since})"
            )));
        }
        let kinds: Vec<String> = entry.billing.iter().map(|k| k.get_ref().clone()).collect();
        // Billing: what ingress accepted of those kinds, dated in the window.
        let mut billing: BTreeMap<String, Vec<Document>> = BTreeMap::new();
        for event in self.store.events(1, u64::MAX).await? {
            let EventBody::Accepted { envelope } = &event.body else {
                continue;
            };
            if let Some(doc) = billed(&envelope.message, &kinds)
                && dated_in(doc.document.date.as_deref(), since, until)
            {
                let same = billing.entry(doc.reference).or_default();
                // The same document sent twice (a webhook resent) is one document.
                if !same.iter().any(|d| {
                    decimal(&d.amount) == decimal(&doc.document.amount)
                        && d.currency == doc.document.currency
                }) {
                    same.push(doc.document);
                }
            }
        }
        // The ERP: what its sink reads back.
        let erp_name = entry.erp.get_ref().clone();
        let plugin = self.plugin(&erp_name).ok_or_else(|| ReconcileError::Erp {
            plugin: erp_name.clone(),
            error: "no such plugin instance is loaded".into(),
        })?;
        let records = plugin
            .records("invoice", &since.to_string(), &until.to_string())
            .await
            .map_err(|e| ReconcileError::Erp {
                plugin: erp_name.clone(),
                error: e.to_string(),
            })?;
        let erp_records = records.len();
        let mut erp: BTreeMap<String, Vec<Document>> = BTreeMap::new();
        for record in records {
            let field = |name: &str| record.field(name).unwrap_or_default().to_owned();
            let document = Document {
                id: record.id.clone(),
                amount: field("amount"),
                currency: field("currency"),
                date: record.field("date").map(str::to_owned),
            };
            erp.entry(record.reference).or_default().push(document);
        }
        let (matched, mismatches) = compare(&billing, &erp);
        let raised = self.raise(name, &mismatches).await?;
        let billing_documents = billing.len();
        let report = Reconciled {
            reconciliation: name.to_owned(),
            since: since.to_string(),
            until: until.to_string(),
            at_ms: now_ms(),
            billing_documents,
            erp_records,
            matched,
            accuracy: (billing_documents > 0).then(|| matched as f64 / billing_documents as f64),
            mismatches,
            raised,
        };
        let kinds: Vec<&str> = report.mismatches.iter().map(|m| m.kind.name()).collect();
        metrics::reconciled(name, report.accuracy, &kinds);
        tracing::info!(
            reconciliation = name,
            documents = billing_documents,
            matched,
            mismatches = report.mismatches.len(),
            raised,
            "reconciled"
        );
        self.reconciled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), report.clone());
        Ok(report)
    }

    /// The last report of each reconciliation that ran on this node.
    pub fn reconciliations(&self) -> BTreeMap<String, Reconciled> {
        self.reconciled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Each mismatch not raised before (by any node; decided or not: while it stays
    /// the same it is the same exception) enters the flows subscribing to
    /// `ReconciliationException`, held; how many were raised.
    async fn raise(&self, name: &str, mismatches: &[Mismatch]) -> Result<usize, StoreError> {
        let memory = super::process::memory(&self.store);
        let mut raised = 0;
        let from = format!("reconciliation:{name}");
        for mismatch in mismatches {
            let seen = format!(
                "reconciliation/{name}/{}",
                crate::model::digest(
                    format!("{}\0{}", mismatch.reference, mismatch.detail).as_bytes()
                )
            );
            if memory.get(&seen).await?.is_some() {
                continue;
            }
            let body = serde_json::json!({
                "reconciliation": name,
                "kind": mismatch.kind,
                "reference": mismatch.reference,
                "billing": mismatch.billing,
                "erp": mismatch.erp,
                "detail": mismatch.detail,
            });
            let message = StoredMessage {
                id: MessageId::root(),
                key: mismatch.reference.clone(),
                kind: RECONCILIATION_EXCEPTION.to_owned(),
                content_type: "application/json".to_owned(),
                headers: vec![("tenon-reconciliation".to_owned(), name.to_owned())],
                body: serde_json::to_vec(&body).unwrap_or_default(),
            };
            let produced = Envelope::entering(&from, &[], message.clone(), now_ms());
            let mut items = self.published(&message, &from, true, &produced);
            for (_, envelope) in &mut items {
                let stage = envelope.route.first().cloned().unwrap_or_default();
                envelope.directive = Some(Directive::Hold {
                    rule: format!("reconciliation {name}"),
                    reasons: vec![mismatch.detail.clone()],
                    proposed: format!(
                        "approve: `{stage}` of flow `{}` takes it; reject: dismissed",
                        envelope.flow
                    ),
                });
            }
            if items.is_empty() {
                tracing::warn!(reconciliation = name, reference = %mismatch.reference, "no flow takes this mismatch (a `when` or `filter` left it out): reported only");
                continue;
            }
            self.store.enqueue(items, None).await?;
            memory
                .set(&seen, &now_ms().to_be_bytes())
                .await
                .map_err(super::process::kv_failed)?;
            raised += 1;
        }
        Ok(raised)
    }

    /// Run the reconciliations that are due (each `every_secs` since its last start on
    /// this node, or since the node started), over their last `window_days`.
    pub(crate) async fn reconcile_due(&self) {
        let config = self.config();
        for (name, entry) in &config.reconciliations {
            let Some(every) = entry.every_secs else {
                continue;
            };
            if !self.due(&format!("reconciliation:{name}"), every) {
                continue;
            }
            let Some(today) =
                chrono::DateTime::from_timestamp_millis(now_ms() as i64).map(|t| t.date_naive())
            else {
                continue;
            };
            let Some(since) = today.checked_sub_days(chrono::Days::new(u64::from(
                entry.window_days.saturating_sub(1),
            ))) else {
                continue;
            };
            if let Err(error) = self.reconcile(name, since, today).await {
                tracing::error!(reconciliation = %name, %error, "scheduled reconciliation failed; its last report stands, the next attempt after another period");
            }
        }
    }

    /// Whether the scheduled check `what` is due (`every` seconds since it last started
    /// here, or since the node started); if so, it starts now.
    pub(crate) fn due(&self, what: &str, every: u64) -> bool {
        let mut scheduled = self
            .scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let last = scheduled.get(what).copied().unwrap_or(self.started_ms);
        let now = now_ms();
        if now.saturating_sub(last) < every.saturating_mul(1000) {
            return false;
        }
        scheduled.insert(what.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, amount: &str, currency: &str) -> Document {
        Document {
            id: id.into(),
            amount: amount.into(),
            currency: currency.into(),
            date: None,
        }
    }

    #[test]
    fn every_kind_of_mismatch_is_named_and_exact_amounts_match() {
        let billing = BTreeMap::from([
            ("in_ok".to_owned(), vec![doc("m1", "119", "EUR")]),
            ("cn_ok".to_owned(), vec![doc("m2", "-23.80", "EUR")]),
            ("in_amount".to_owned(), vec![doc("m3", "119.00", "EUR")]),
            ("in_currency".to_owned(), vec![doc("m4", "10", "EUR")]),
            ("in_missing".to_owned(), vec![doc("m5", "10", "EUR")]),
            ("in_dup".to_owned(), vec![doc("m6", "10", "EUR")]),
            (
                "in_twice".to_owned(),
                vec![doc("m7", "10", "EUR"), doc("m8", "12", "EUR")],
            ),
        ]);
        let erp = BTreeMap::from([
            (
                "in_ok".to_owned(),
                vec![doc("account.invoice/1", "119.00", "EUR")],
            ),
            (
                "cn_ok".to_owned(),
                vec![doc("account.invoice/2", "-23.8", "EUR")],
            ),
            (
                "in_amount".to_owned(),
                vec![doc("account.invoice/3", "118.99", "EUR")],
            ),
            (
                "in_currency".to_owned(),
                vec![doc("account.invoice/4", "10", "USD")],
            ),
            (
                "in_dup".to_owned(),
                vec![
                    doc("account.invoice/5", "10", "EUR"),
                    doc("account.invoice/6", "10", "EUR"),
                ],
            ),
            (
                "in_twice".to_owned(),
                vec![doc("account.invoice/7", "10", "EUR")],
            ),
            (
                "in_erp_only".to_owned(),
                vec![doc("account.invoice/8", "5", "EUR")],
            ),
        ]);
        let (matched, mismatches) = compare(&billing, &erp);
        assert_eq!(matched, 2);
        let found: Vec<(&str, MismatchKind)> = mismatches
            .iter()
            .map(|m| (m.reference.as_str(), m.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("in_amount", MismatchKind::Amount),
                ("in_currency", MismatchKind::Currency),
                ("in_dup", MismatchKind::Duplicate),
                ("in_missing", MismatchKind::MissingInErp),
                ("in_twice", MismatchKind::Duplicate),
                ("in_erp_only", MismatchKind::MissingInBilling),
            ]
        );
        assert_eq!(
            mismatches[0].detail,
            "in_amount was billed for 119.00 EUR and booked for 118.99 EUR (account.invoice/3)"
        );
    }
}
