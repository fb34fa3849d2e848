//! Sink plugin: Salesforce CPQ kept in step, through Salesforce's REST API.
//!
//! Config: `instance_url` (required), `api_version` (`v60.0`), the quote fields, the
//! Account key field; secret `salesforce_token`, an OAuth 2.0 access token sent as
//! `Authorization: Bearer`.
//!
//! - Each `OrderBooked` (an order an ERP gave its number) is written back to the CPQ
//!   quote it came from: `PATCH
//!   {instance_url}/services/data/{api_version}/sobjects/SBQQ__Quote__c/{quote Id}` with
//!   `{"<field>": "<number>"}`, the field chosen by the order's category
//!   (`physical_field`, `subscription_field`: custom fields the org adds to the quote).
//! - Each `CustomerUpserted` (the customer master's account, from the CRM) is upserted
//!   as an Account by its CRM id, an external-id field of Account (`account_key_field`,
//!   default `CRM_Account_Id__c`): `PATCH .../sobjects/Account/CRM_Account_Id__c/{id}`
//!   (Salesforce creates it, `201`, or updates it, `204`) with `Name`,
//!   `BillingCountryCode` and the parent by its CRM id (`"Parent":
//!   {"CRM_Account_Id__c": ...}`, or `"ParentId": null`). The CRM owns these fields:
//!   the master's values win (see the README's last-writer rules).
//! - Records (for the master-data drift check): kind `account` reads every Account
//!   with a CRM id (`SELECT Id, CRM_Account_Id__c, Name, BillingCountryCode,
//!   Parent.CRM_Account_Id__c FROM Account WHERE CRM_Account_Id__c != null`, following
//!   `nextRecordsUrl`), as fields `name`, `country`, `parent` of the CRM id.
//! - Undoing (sagas): a written-back number is cleared (the field set to null); an
//!   account push is not undone (the CRM owns it): `invalid`.
//! - A PATCH sets the same value again on a redelivery: writing back is idempotent.
//! - Salesforce answers `204 No Content`; its errors are a JSON list of
//!   `{"message", "errorCode", "fields"}`: `400` and `404` (a field or a quote it does not
//!   have) are `rejected` with each message and code, `401` (`INVALID_SESSION_ID`) is
//!   `invalid` (the token must be replaced), `5xx`, `408`, `429` are `retryable`.

use serde_json::{Value, json};
use tenon_sdk::model::{Booking, OrderCategory, Party, kinds};
use tenon_sdk::{Failure, Message, Receipt, config, http, secrets};

/// Write the booking's number to its quote, or push the customer to its Account.
#[tenon_sdk::sink(compensate = undo, records = read_records)]
fn write_back(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    let org = Org::configured()?;
    if message.kind == kinds::CUSTOMER_UPSERTED {
        let party: Party = message.decode()?;
        let key = org.account_key()?;
        let url = account_url(&org.instance, &org.version, &key, &party.id)?;
        let body = account_fields(&party, &key).to_string();
        org.send("PATCH", &url, body.as_bytes())?;
        return Ok(Receipt {
            reference: format!("Account/{}", party.id),
            detail: Some(format!(
                "account {} pushed: {}",
                party.id,
                party.name.as_deref().unwrap_or("no name")
            )),
        });
    }
    let booking: Booking = message.decode()?;
    let field = field_for(&booking, config::get)?;
    let url = record_url(
        &org.instance,
        &org.version,
        "SBQQ__Quote__c",
        &booking.quote_id,
    )?;
    let body = json!({ field.as_str(): booking.reference }).to_string();
    org.send("PATCH", &url, body.as_bytes())?;
    Ok(Receipt {
        reference: format!("{}.{field}", booking.quote_id),
        detail: Some(format!(
            "quote {} ({}): {field} = {}",
            booking.quote_number, booking.quote_id, booking.reference
        )),
    })
}

/// Undo a write-back: the quote's field cleared. An account push is the CRM's.
fn undo(message: Message, delivered: Receipt, _idempotency_key: &str) -> Result<Receipt, Failure> {
    if message.kind == kinds::CUSTOMER_UPSERTED {
        return Err(Failure::Invalid(format!(
            "{} is the CRM's account: a push to Salesforce is not undone, the CRM's next change is pushed",
            delivered.reference
        )));
    }
    let org = Org::configured()?;
    let booking: Booking = message.decode()?;
    let field = field_for(&booking, config::get)?;
    let url = record_url(
        &org.instance,
        &org.version,
        "SBQQ__Quote__c",
        &booking.quote_id,
    )?;
    let body = json!({ field.as_str(): Value::Null }).to_string();
    org.send("PATCH", &url, body.as_bytes())?;
    Ok(Receipt {
        reference: delivered.reference,
        detail: Some(format!("quote {}: {field} cleared", booking.quote_number)),
    })
}

/// Every Account of the org, as the drift check compares them with the master.
fn read_records(
    query: tenon_sdk::records::Query,
) -> Result<Vec<tenon_sdk::records::Entry>, Failure> {
    if query.kind != "account" {
        return Err(Failure::Invalid(format!(
            "records of kind `{}`: this sink reads `account`",
            query.kind
        )));
    }
    let org = Org::configured()?;
    let key = org.account_key()?;
    let soql = format!(
        "SELECT Id, {key}, Name, BillingCountryCode, Parent.{key} FROM Account WHERE {key} != null ORDER BY Id"
    );
    let mut url = format!(
        "{}/services/data/{}/query?q={}",
        org.instance,
        org.version,
        tenon_sdk::url::escape(&soql)
    );
    let mut entries = Vec::new();
    // A query answers up to 2,000 records a page; the rest follow `nextRecordsUrl`.
    for _ in 0..1000 {
        let page: Value = serde_json::from_slice(&org.send("GET", &url, &[])?).map_err(|e| {
            Failure::Retryable(format!("Salesforce's query answer is not JSON: {e}"))
        })?;
        for record in page["records"].as_array().into_iter().flatten() {
            let text = |field: &str| record[field].as_str().map(str::to_owned);
            let (Some(id), Some(crm)) = (text("Id"), text(&key)) else {
                continue;
            };
            let parent = record["Parent"][key.as_str()].as_str().map(str::to_owned);
            entries.push(
                tenon_sdk::records::Entry::new(format!("Account/{id}"), crm)
                    .with("name", text("Name"))
                    .with("country", text("BillingCountryCode"))
                    .with("parent", parent),
            );
        }
        match (page["done"].as_bool(), page["nextRecordsUrl"].as_str()) {
            (Some(false), Some(next)) if next.starts_with("/services/data/") => {
                url = format!("{}{next}", org.instance);
            }
            _ => return Ok(entries),
        }
    }
    Err(Failure::Retryable(
        "the Account query did not end after 1000 pages".into(),
    ))
}

/// The Account fields the CRM owns, as the master has them (null clears one); the
/// parent by its CRM id in external-id field `key`.
pub fn account_fields(party: &Party, key: &str) -> Value {
    let mut fields = json!({
        "Name": party.name,
        "BillingCountryCode": party.country,
    });
    match &party.parent {
        Some(parent) => fields["Parent"] = json!({ key: parent }),
        None => fields["ParentId"] = Value::Null,
    }
    fields
}

/// The URL that upserts the Account whose external-id field `key` is `crm_id`.
pub fn account_url(
    instance: &str,
    version: &str,
    key: &str,
    crm_id: &str,
) -> Result<String, Failure> {
    if crm_id.is_empty()
        || !crm_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Failure::Rejected(vec![format!(
            "customer id `{crm_id}` cannot be an Account external id (letters, digits, `-`, `_`)"
        )]));
    }
    Ok(format!(
        "{}/services/data/{version}/sobjects/Account/{key}/{crm_id}",
        instance.trim_end_matches('/')
    ))
}

/// The org this sink writes to.
struct Org {
    instance: String,
    version: String,
    bearer: String,
}

impl Org {
    fn configured() -> Result<Org, Failure> {
        let instance = config::get("instance_url").ok_or_else(|| {
            Failure::Invalid(
                "config `instance_url` is not set (e.g. https://acme.my.salesforce.com)".into(),
            )
        })?;
        let version = config::get("api_version").unwrap_or_else(|| "v60.0".into());
        if !version.starts_with('v')
            || !version[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
        {
            return Err(Failure::Invalid(format!(
                "config `api_version` = `{version}` is not a REST API version such as v60.0"
            )));
        }
        let token = secrets::get("salesforce_token")?;
        Ok(Org {
            instance: instance.trim_end_matches('/').to_owned(),
            version,
            bearer: format!("Bearer {token}"),
        })
    }

    /// The Account's external-id field holding the CRM's id (`account_key_field`).
    fn account_key(&self) -> Result<String, Failure> {
        let key = config::get("account_key_field").unwrap_or_else(|| "CRM_Account_Id__c".into());
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Failure::Invalid(format!(
                "config `account_key_field` = `{key}` is not a Salesforce field API name"
            )));
        }
        Ok(key)
    }

    /// A request to the org; its body on success, else Salesforce's errors classified.
    fn send(&self, method: &str, url: &str, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut headers = vec![
            ("authorization", self.bearer.as_str()),
            ("accept", "application/json"),
        ];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let response = http::send(method, url, &headers, body)?;
        if response.is_success() {
            return Ok(response.body);
        }
        Err(failure(response.status, &response.body))
    }
}

/// The quote field that takes an order of this booking's category.
pub fn field_for(
    booking: &Booking,
    get: impl Fn(&str) -> Option<String>,
) -> Result<String, Failure> {
    let (key, default) = match booking.category {
        OrderCategory::Physical => ("physical_field", "ERP_Order_Number__c"),
        OrderCategory::Subscription => ("subscription_field", "ERP_Subscription_Order_Number__c"),
    };
    let field = get(key).unwrap_or_else(|| default.to_owned());
    // A Salesforce API name: letters, digits and underscores.
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Failure::Invalid(format!(
            "config `{key}` = `{field}` is not a Salesforce field API name"
        )));
    }
    Ok(field)
}

/// A record's REST URL; the Id must be a Salesforce Id (15 or 18 letters and digits),
/// so it cannot change the path.
pub fn record_url(
    instance: &str,
    version: &str,
    object: &str,
    id: &str,
) -> Result<String, Failure> {
    let is_id = matches!(id.len(), 15 | 18) && id.chars().all(|c| c.is_ascii_alphanumeric());
    if !is_id {
        return Err(Failure::Rejected(vec![format!(
            "`{id}` is not a Salesforce record Id: no {object} to write to"
        )]));
    }
    Ok(format!(
        "{}/services/data/{version}/sobjects/{object}/{id}",
        instance.trim_end_matches('/')
    ))
}

/// Salesforce's answer as a failure: its errors (`[{"message", "errorCode"}]`) named.
pub fn failure(status: u16, body: &[u8]) -> Failure {
    let errors: Vec<String> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let message = e["message"].as_str()?;
            Some(match e["errorCode"].as_str() {
                Some(code) => format!("Salesforce: {message} ({code})"),
                None => format!("Salesforce: {message}"),
            })
        })
        .collect();
    let text = if errors.is_empty() {
        format!(
            "Salesforce HTTP {status}: {}",
            String::from_utf8_lossy(body).trim()
        )
    } else {
        errors.join("; ")
    };
    match status {
        401 => Failure::Invalid(format!("{text} (replace the `salesforce_token` secret)")),
        _ if Failure::is_transient_status(status) => Failure::Retryable(text),
        _ => Failure::Rejected(if errors.is_empty() {
            vec![text]
        } else {
            errors
        }),
    }
}

#[cfg(test)]
mod tests;
