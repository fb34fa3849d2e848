//! Master-data drift (`[drift.*]`): the customer master against each target's copy.
//!
//! The master is the latest `CustomerUpserted` of each customer that ingress accepted
//! (from the CRM's source, or posted as canonical), from the event log; the copy is what
//! the target's sink reads back (`records` of kind `account`: e.g. the Accounts of the
//! Salesforce org CPQ runs in). Field by field (`name`, `country`, `parent`), each
//! customer whose copy differs, or that the target lacks, is a `MasterDataDrift`
//! message with the differing fields, for the flows subscribing to it (to push the
//! master again, or to a data steward). A drift is published once while it stays the
//! same (remembered in the store's key-value data, shared by the nodes); one that
//! changes, or comes back after the copy was in step, is published again.
//!
//! Last-writer rules: the CRM owns these fields. A change in the target is drift, not
//! an update: the master is not changed by it, and the next push of the customer (its
//! next change in the CRM) overwrites it.

use super::Runtime;
use crate::config::{DriftEntry, MASTER_DATA_DRIFT};
use crate::model::{Envelope, EventBody, MessageId, StoredMessage, now_ms};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::PoisonError;

/// The fields compared: the master's name for each, as the target's records name it.
pub const FIELDS: [&str; 3] = ["name", "country", "parent"];

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldDrift {
    /// The field.
    pub field: String,
    /// The master's value (none: unset).
    pub master: Option<String>,
    /// The target's value.
    pub target: Option<String>,
}

/// A customer whose copy differs from the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Drift {
    /// The customer's id (the CRM's).
    pub customer: String,
    /// The target has no copy at all.
    pub missing: bool,
    /// The fields that differ (every field of the master when the copy is missing).
    pub fields: Vec<FieldDrift>,
}

/// What a drift check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriftReport {
    /// The check's name.
    pub check: String,
    /// The target plugin instance.
    pub target: String,
    /// When it ran (ms since the Unix epoch).
    pub at_ms: u64,
    /// Customers in the master.
    pub customers: usize,
    /// Records the target holds.
    pub records: usize,
    /// Customers whose copy is as the master has it.
    pub in_step: usize,
    /// Every customer that drifted.
    pub drifts: Vec<Drift>,
    /// `MasterDataDrift` messages published by this run (a drift unchanged since the
    /// previous run is not published again).
    pub published: usize,
}

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// No drift check of that name in the config.
    #[error("no drift check named `{0}` in the config")]
    Unknown(String),
    /// The target could not be read.
    #[error("the target's records could not be read through `{plugin}`: {error}")]
    Target {
        /// The sink instance.
        plugin: String,
        /// What went wrong.
        error: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The fields of a customer, by [`FIELDS`] name.
type Fields = BTreeMap<String, Option<String>>;

/// The master's fields of a `CustomerUpserted` body.
fn master_fields(message: &StoredMessage) -> Option<(String, Fields)> {
    let body: serde_json::Value = tenon_model::Encoding::from_content_type(&message.content_type)
        .ok()?
        .decode(&message.body)
        .ok()?;
    let id = body.get("id")?.as_str()?.to_owned();
    let fields = FIELDS
        .iter()
        .map(|f| {
            let value = body.get(*f).and_then(|v| v.as_str()).map(str::to_owned);
            ((*f).to_owned(), value)
        })
        .collect();
    Some((id, fields))
}

/// Compare the master with the target's copies.
fn compare(
    master: &BTreeMap<String, Fields>,
    copies: &BTreeMap<String, Fields>,
) -> (usize, Vec<Drift>) {
    let mut in_step = 0;
    let mut drifts = Vec::new();
    for (customer, fields) in master {
        let Some(copy) = copies.get(customer) else {
            drifts.push(Drift {
                customer: customer.clone(),
                missing: true,
                fields: fields
                    .iter()
                    .map(|(field, value)| FieldDrift {
                        field: field.clone(),
                        master: value.clone(),
                        target: None,
                    })
                    .collect(),
            });
            continue;
        };
        let differ: Vec<FieldDrift> = fields
            .iter()
            .filter(|(field, value)| copy.get(*field).cloned().flatten() != **value)
            .map(|(field, value)| FieldDrift {
                field: field.clone(),
                master: value.clone(),
                target: copy.get(field).cloned().flatten(),
            })
            .collect();
        if differ.is_empty() {
            in_step += 1;
        } else {
            drifts.push(Drift {
                customer: customer.clone(),
                missing: false,
                fields: differ,
            });
        }
    }
    (in_step, drifts)
}

impl Runtime {
    /// Run drift check `name`: compare, publish each new drift, keep the report.
    pub async fn check_drift(&self, name: &str) -> Result<DriftReport, DriftError> {
        let entry: DriftEntry = self
            .config()
            .drift
            .get(name)
            .cloned()
            .ok_or_else(|| DriftError::Unknown(name.to_owned()))?;
        // The master: each customer's latest upsert accepted at ingress.
        let mut master: BTreeMap<String, Fields> = BTreeMap::new();
        for event in self.store.events(1, u64::MAX).await? {
            let EventBody::Accepted { envelope } = &event.body else {
                continue;
            };
            let message = &envelope.message;
            if message.kind != tenon_model::kinds::CUSTOMER_UPSERTED || message.id.is_event_copy() {
                continue;
            }
            if let Some((id, fields)) = master_fields(message) {
                master.insert(id, fields);
            }
        }
        let target = entry.target.get_ref().clone();
        let plugin = self.plugin(&target).ok_or_else(|| DriftError::Target {
            plugin: target.clone(),
            error: "no such plugin instance is loaded".into(),
        })?;
        let records = plugin
            .records("account", "", "")
            .await
            .map_err(|e| DriftError::Target {
                plugin: target.clone(),
                error: e.to_string(),
            })?;
        let copies: BTreeMap<String, Fields> = records
            .iter()
            .map(|r| {
                let fields = FIELDS
                    .iter()
                    .map(|f| ((*f).to_owned(), r.field(f).map(str::to_owned)))
                    .collect();
                (r.reference.clone(), fields)
            })
            .collect();
        let (in_step, drifts) = compare(&master, &copies);
        let memory = super::process::memory(&self.store);
        let mut published = 0;
        let from = format!("drift:{name}");
        // Customers in step again: a later drift of theirs is news.
        for customer in master
            .keys()
            .filter(|c| !drifts.iter().any(|d| &d.customer == *c))
        {
            let key = format!("drift/{name}/{customer}");
            if memory.get(&key).await?.is_some() {
                memory
                    .delete(&key)
                    .await
                    .map_err(super::process::kv_failed)?;
            }
        }
        for drift in &drifts {
            let key = format!("drift/{name}/{}", drift.customer);
            let seen = serde_json::to_vec(drift).unwrap_or_default();
            if memory.get(&key).await?.as_deref() == Some(seen.as_slice()) {
                continue;
            }
            let body = serde_json::json!({
                "check": name,
                "target": target,
                "customer": drift.customer,
                "missing": drift.missing,
                "fields": drift.fields,
            });
            let message = StoredMessage {
                id: MessageId::root(),
                key: drift.customer.clone(),
                kind: MASTER_DATA_DRIFT.to_owned(),
                content_type: "application/json".to_owned(),
                headers: vec![("tenon-drift".to_owned(), name.to_owned())],
                body: serde_json::to_vec(&body).unwrap_or_default(),
            };
            let produced = Envelope::entering(&from, &[], message.clone(), now_ms());
            let items = self.published(&message, &from, true, &produced);
            if items.is_empty() {
                tracing::warn!(check = name, customer = %drift.customer, "no flow takes this drift (a `when` or `filter` left it out): reported only");
                continue;
            }
            self.store.enqueue(items, None).await?;
            memory
                .set(&key, &seen)
                .await
                .map_err(super::process::kv_failed)?;
            published += 1;
        }
        let report = DriftReport {
            check: name.to_owned(),
            target,
            at_ms: now_ms(),
            customers: master.len(),
            records: records.len(),
            in_step,
            drifts,
            published,
        };
        tracing::info!(
            check = name,
            customers = report.customers,
            drifted = report.drifts.len(),
            published,
            "drift checked"
        );
        self.drifted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), report.clone());
        Ok(report)
    }

    /// The last report of each drift check that ran on this node.
    pub fn drift_reports(&self) -> BTreeMap<String, DriftReport> {
        self.drifted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Run the drift checks that are due (each `every_secs` since its last start on
    /// this node, or since the node started).
    pub(crate) async fn check_drift_due(&self) {
        let config = self.config();
        for (name, entry) in &config.drift {
            let Some(every) = entry.every_secs else {
                continue;
            };
            if !self.due(&format!("drift:{name}"), every) {
                continue;
            }
            if let Err(error) = self.check_drift(name).await {
                tracing::error!(check = %name, %error, "scheduled drift check failed; its last report stands, the next attempt after another period");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: Option<&str>, country: Option<&str>, parent: Option<&str>) -> Fields {
        [("name", name), ("country", country), ("parent", parent)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn each_differing_field_and_each_missing_copy_is_drift() {
        let master = BTreeMap::from([
            ("A".to_owned(), fields(Some("Northwind"), Some("DE"), None)),
            (
                "B".to_owned(),
                fields(Some("Contoso"), Some("FR"), Some("A")),
            ),
            ("C".to_owned(), fields(Some("Fabrikam"), None, None)),
        ]);
        let copies = BTreeMap::from([
            ("A".to_owned(), fields(Some("Northwind"), Some("DE"), None)),
            (
                "B".to_owned(),
                fields(Some("Contoso Retail"), Some("FR"), None),
            ),
            (
                "Z".to_owned(),
                fields(Some("Only in the target"), None, None),
            ),
        ]);
        let (in_step, drifts) = compare(&master, &copies);
        assert_eq!(in_step, 1);
        assert_eq!(drifts.len(), 2);
        assert_eq!(drifts[0].customer, "B");
        assert_eq!(
            drifts[0].fields,
            vec![
                FieldDrift {
                    field: "name".into(),
                    master: Some("Contoso".into()),
                    target: Some("Contoso Retail".into()),
                },
                FieldDrift {
                    field: "parent".into(),
                    master: Some("A".into()),
                    target: None,
                },
            ]
        );
        assert!(drifts[1].missing);
        assert_eq!(drifts[1].customer, "C");
    }
}
