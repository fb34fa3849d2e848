//! What a reconciling sink reads back from its system (`#[sink(compensate = ...,
//! records = ...)]`): reconciliation compares these with the billing documents.

/// What to read: records of `kind` (`invoice`: invoices and credit notes) dated from
/// `since` to `until`, both included (ISO 8601 dates).
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The system's own id (e.g. `account.invoice/7`).
    pub id: String,
    /// The reference of the document it books (e.g. the Stripe invoice's id).
    pub reference: String,
    /// Its amount with taxes, an exact decimal (`-119.00` for a credit note).
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Its date (ISO 8601), when it has one.
    pub date: Option<String>,
}
