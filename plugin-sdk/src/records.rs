//! What a reconciling sink reads back from its system (`#[sink(compensate = ...,
//! records = ...)]`): reconciliation and drift checks compare these with what Tenon
//! knows.

/// What to read: records of `kind` (`invoice`: invoices and credit notes; `account`:
/// customer accounts), dated from `since` to `until`, both included (ISO 8601 dates;
/// empty: every one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// What kind of record.
    pub kind: String,
    /// The first day.
    pub since: String,
    /// The last day.
    pub until: String,
}

/// One record as the system holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The system's own id (e.g. `account.invoice/7`).
    pub id: String,
    /// The reference of what it stands for elsewhere (e.g. the Stripe invoice's id).
    pub reference: String,
    /// Its fields by name, as text: an `invoice`'s `amount` (with taxes, an exact
    /// decimal, negative for a credit note), `currency`, `date`; an `account`'s `name`,
    /// `country`, `parent`.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// A record with its system id and reference, no fields yet.
    pub fn new(id: impl Into<String>, reference: impl Into<String>) -> Entry {
        Entry {
            id: id.into(),
            reference: reference.into(),
            fields: Vec::new(),
        }
    }

    /// With field `name` set to `value` (left out when `None`).
    pub fn with(mut self, name: &str, value: Option<impl Into<String>>) -> Entry {
        if let Some(value) = value {
            self.fields.push((name.to_owned(), value.into()));
        }
        self
    }

    /// Field `name`, if it has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
