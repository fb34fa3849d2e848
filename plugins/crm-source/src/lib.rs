//! Source plugin: the CRM's customers, as Salesforce holds them (the `Account` sObject,
//! as the REST API returns it, an outbound message or a Change Data Capture payload
//! carries it), into the customer master: one `CustomerUpserted` per account, keyed by
//! its Id.
//!
//! The body is one Account record, a list of them, or a query result (`{"totalSize",
//! "done", "records": [...]}`). Fields read:
//!
//! | Account field | `Party` field |
//! |---|---|
//! | `Id` (15 or 18 characters, required) | `id` |
//! | `Name` (required) | `name` |
//! | `BillingCountryCode` (the State and Country picklists: ISO 3166-1 alpha-2) | `country` |
//! | `ParentId` | `parent` (the account hierarchy) |
//! | config `blocked_field`, `credit_hold_field` (custom checkboxes) | `blocked`, `credit_hold` |
//!
//! A record whose `attributes.type` is not `Account`, or that lacks its `Id` or `Name`,
//! makes the request `invalid`, every such record named; nothing of it is accepted.

use serde_json::Value;
use tenon_sdk::model::{Party, kinds};
use tenon_sdk::{Failure, Message, RawRequest, config};

#[cfg(test)]
mod tests;

/// The accounts posted, as customers.
#[tenon_sdk::source]
fn ingest_accounts(request: RawRequest) -> Result<Vec<Message>, Failure> {
    let flags = Flags {
        blocked: config::get("blocked_field"),
        credit_hold: config::get("credit_hold_field"),
    };
    let parties = accounts(&request.body, &flags)?;
    parties
        .iter()
        .map(|party| Message::encode(kinds::CUSTOMER_UPSERTED, &party.id, party))
        .collect()
}

/// The custom checkbox fields that block a customer or put it on credit hold.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// Blocks the customer for sales.
    pub blocked: Option<String>,
    /// Puts it on credit hold.
    pub credit_hold: Option<String>,
}

/// The customers of a posted body: every record, or every reason it cannot be read.
pub fn accounts(body: &[u8], flags: &Flags) -> Result<Vec<Party>, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("the body is not JSON: {e}")))?;
    let records = match value {
        Value::Array(records) => records,
        Value::Object(ref object) if object.get("records").is_some_and(Value::is_array) => {
            object["records"].as_array().cloned().unwrap_or_default()
        }
        one @ Value::Object(_) => vec![one],
        other => {
            return Err(Failure::Invalid(format!(
                "the body is an Account record, a list of them or a query result, not {other}"
            )));
        }
    };
    if records.is_empty() {
        return Err(Failure::Invalid("no Account record in the body".into()));
    }
    let mut parties = Vec::with_capacity(records.len());
    let mut reasons = Vec::new();
    for (i, record) in records.iter().enumerate() {
        match account(record, flags) {
            Ok(party) => parties.push(party),
            Err(why) => reasons.push(format!("record {}: {why}", i + 1)),
        }
    }
    if !reasons.is_empty() {
        return Err(Failure::Invalid(reasons.join("; ")));
    }
    Ok(parties)
}

/// One Account record as a customer.
fn account(record: &Value, flags: &Flags) -> Result<Party, String> {
    let text = |field: &str| {
        record
            .get(field)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(kind) = record.pointer("/attributes/type").and_then(Value::as_str)
        && kind != "Account"
    {
        return Err(format!("a `{kind}` record, not an `Account`"));
    }
    let id = text("Id").ok_or("no `Id`")?;
    let valid_id =
        (id.len() == 15 || id.len() == 18) && id.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid_id {
        return Err(format!(
            "`Id` `{id}` is not a Salesforce record Id (15 or 18 letters and digits)"
        ));
    }
    let name = text("Name").ok_or_else(|| format!("account {id} has no `Name`"))?;
    let country = match text("BillingCountryCode") {
        Some(code) if code.len() == 2 && code.chars().all(|c| c.is_ascii_alphabetic()) => {
            Some(code.to_ascii_uppercase())
        }
        Some(code) => {
            return Err(format!(
                "account {id}: `BillingCountryCode` `{code}` is not an ISO 3166-1 alpha-2 code"
            ));
        }
        None => None,
    };
    let checked = |field: &Option<String>| {
        field
            .as_deref()
            .is_some_and(|f| record.get(f).and_then(Value::as_bool) == Some(true))
    };
    let mut party = Party::new(id);
    party.name = Some(name);
    party.country = country;
    party.parent = text("ParentId");
    party.blocked = checked(&flags.blocked);
    party.credit_hold = checked(&flags.credit_hold);
    Ok(party)
}
