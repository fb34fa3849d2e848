//! Source plugin: a Salesforce CPQ `QuoteModel` (as the Calculate Quote API and
//! QuoteReader return it) becomes one canonical `QuoteApproved` message.
//!
//! The source maps shape only. Business checks (a customer, a currency, a product on
//! every line) belong to the quote-to-order step, which reports every failed rule at
//! once; here a missing value is carried as `None`. A body that is not a QuoteModel
//! at all is `invalid`.
//!
//! Salesforce sends numbers as JSON floats: each is read back through its shortest
//! decimal text, so `19.99` becomes exactly 19.99, never 19.989999...
//!
//! Config: `default_currency`, the currency of single-currency orgs (which send no
//! `CurrencyIsoCode`); `po_number_field`, the API name of the quote's custom field
//! holding the customer's purchase order number (CPQ has no standard one), e.g.
//! `Customer_PO__c`. Lines carry `SBQQ__Taxable__c` and `SBQQ__TaxCode__c`.
//!
//! When the record carries `Id` and `LastModifiedDate` (standard fields of every
//! Salesforce record), the message gets the idempotency key `<Id>@<LastModifiedDate>`,
//! so a webhook retry of the same quote revision is accepted once.

use serde::{Deserialize, Deserializer};
use std::str::FromStr;
use tenon_sdk::model::rust_decimal::Decimal;
use tenon_sdk::model::{
    ChargeType, Currency, Discount, Party, Product, Quote, QuoteLine, SubscriptionTerm, kinds,
};
use tenon_sdk::{Failure, Message, RawRequest, config};

#[cfg(test)]
mod tests;

/// A CPQ quote as one `QuoteApproved`, once per revision.
#[tenon_sdk::source]
fn ingest_quote(request: RawRequest) -> Result<Vec<Message>, Failure> {
    let model: QuoteModel = request.json()?;
    let revision = model.revision_key();
    // CPQ has no standard field for the customer's PO number: orgs add one.
    let customer_po = config::get("po_number_field").and_then(|f| model.text_field(&f));
    let mut quote = to_quote(model, config::get("default_currency").as_deref())?;
    quote.customer_po = customer_po;
    let mut message = Message::encode(kinds::QUOTE_APPROVED, &quote.number, &quote)?;
    if let Some(key) = revision {
        // The same revision of a quote, sent twice (a webhook retry), is accepted once.
        message = message.with_idempotency_key(key);
    }
    Ok(vec![message])
}

/// Map a parsed QuoteModel to the canonical quote.
pub fn to_quote(model: QuoteModel, default_currency: Option<&str>) -> Result<Quote, Failure> {
    let r = model.record;
    let number = r.name.or_else(|| r.id.clone()).ok_or_else(|| {
        Failure::Invalid("quote record has neither `Name` (quote number) nor `Id`".into())
    })?;
    let currency = match r.currency.as_deref().or(default_currency) {
        Some(code) => Some(Currency::new(code).map_err(|e| Failure::Invalid(e.to_string()))?),
        None => None,
    };
    let header_term = r.subscription_term.map(months).transpose()?;
    let customer = r.account.map(|id| {
        let (name, country) = match r.account_r {
            Some(a) => (a.name, a.billing_country_code),
            None => (None, None),
        };
        Party {
            name,
            country,
            ..Party::new(id)
        }
    });
    let lines = model
        .line_items
        .into_iter()
        .enumerate()
        .map(|(i, line)| to_line(i, line, header_term, r.start_date.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Quote {
        id: r.id.unwrap_or_else(|| number.clone()),
        number,
        quote_type: r.quote_type,
        status: r.status,
        customer,
        currency,
        start_date: r.start_date.as_deref().map(date).transpose()?,
        subscription_term_months: header_term,
        payment_terms: r.payment_terms,
        master_contract: r.master_contract,
        customer_po: None,
        revision: r.last_modified.clone(),
        discount: Discount {
            percent: r.customer_discount,
            amount: None,
        },
        lines,
        net_total: r.net_amount,
    })
}

fn to_line(
    index: usize,
    line: LineModel,
    header_term: Option<u32>,
    header_start: Option<&str>,
) -> Result<QuoteLine, Failure> {
    let r = line.record;
    let key = line.key.unwrap_or(index as u32 + 1);
    let what = |field: &str| Failure::Invalid(format!("quote line {key} has no `{field}`"));
    let product_id = r
        .product
        .clone()
        .or_else(|| r.product_r.as_ref().and_then(|p| p.id.clone()));
    let product = product_id.map(|id| Product {
        id,
        code: r
            .product_code
            .clone()
            .or_else(|| r.product_r.as_ref().and_then(|p| p.code.clone())),
        name: r
            .product_name
            .clone()
            .or_else(|| r.product_r.as_ref().and_then(|p| p.name.clone())),
    });
    let quantity = r.quantity.ok_or_else(|| what("SBQQ__Quantity__c"))?;
    let net_price = r.net_price.ok_or_else(|| what("SBQQ__NetPrice__c"))?;
    let charge = match r.charge_type.as_deref() {
        Some("One-Time") => ChargeType::OneTime,
        Some("Recurring") => ChargeType::Recurring,
        Some("Usage") => ChargeType::Usage,
        Some(other) => {
            return Err(Failure::Invalid(format!(
                "quote line {key}: unknown SBQQ__ChargeType__c `{other}`"
            )));
        }
        None if r.subscription_pricing.is_some() => ChargeType::Recurring,
        None => ChargeType::OneTime,
    };
    let subscription = if charge.is_subscription() {
        let term = r
            .subscription_term
            .or(r.default_subscription_term)
            .map(months)
            .transpose()?;
        let months = term.or(header_term).ok_or_else(|| {
            Failure::Invalid(format!("subscription line {key} has no subscription term"))
        })?;
        Some(SubscriptionTerm {
            months,
            start: r
                .start_date
                .as_deref()
                .or(header_start)
                .map(date)
                .transpose()?,
            end: r.end_date.as_deref().map(date).transpose()?,
            billing_frequency: r.billing_frequency.clone(),
        })
    } else {
        None
    };
    Ok(QuoteLine {
        key,
        parent_key: line.parent_item_key,
        product,
        quantity,
        effective_quantity: r.effective_quantity,
        list_price: r.list_price,
        net_price,
        net_total: match r.net_total {
            Some(total) => total,
            None => net_price.checked_mul(quantity).ok_or_else(|| {
                Failure::Invalid(format!(
                    "quote line {key}: {net_price} x {quantity} is past what a decimal holds"
                ))
            })?,
        },
        discount: Discount {
            percent: r.discount,
            amount: r.additional_discount_amount,
        },
        charge,
        subscription,
        taxable: r.taxable,
        tax_code: r.tax_code.filter(|c| !c.is_empty()),
    })
}

fn months(value: Decimal) -> Result<u32, Failure> {
    use tenon_sdk::model::rust_decimal::prelude::ToPrimitive;
    value
        .fract()
        .is_zero()
        .then(|| value.to_u32())
        .flatten()
        .ok_or_else(|| Failure::Invalid(format!("subscription term `{value}` is not whole months")))
}

fn date(text: &str) -> Result<tenon_sdk::model::chrono::NaiveDate, Failure> {
    tenon_sdk::model::chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| Failure::Invalid(format!("`{text}` is not a YYYY-MM-DD date: {e}")))
}

impl QuoteModel {
    /// `<quote Id>@<LastModifiedDate>` when the record carries both: one revision of
    /// one quote, whatever transport delivered it how many times.
    pub fn revision_key(&self) -> Option<String> {
        Some(format!(
            "{}@{}",
            self.record.id.as_ref()?,
            self.record.last_modified.as_ref()?
        ))
    }
}

impl QuoteModel {
    /// A text field of the quote record by its API name (a custom field, say), when
    /// set.
    pub fn text_field(&self, name: &str) -> Option<String> {
        self.record
            .other
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_owned())
    }
}

/// The Salesforce CPQ `QuoteModel`, as far as the quote-to-cash chain reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuoteModel {
    record: QuoteRecord,
    #[serde(default)]
    line_items: Vec<LineModel>,
}

#[derive(Debug, Deserialize)]
struct QuoteRecord {
    #[serde(rename = "Id")]
    id: Option<String>,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "SBQQ__Account__c")]
    account: Option<String>,
    #[serde(rename = "SBQQ__Account__r")]
    account_r: Option<AccountRef>,
    #[serde(rename = "SBQQ__Type__c")]
    quote_type: Option<String>,
    #[serde(rename = "SBQQ__Status__c")]
    status: Option<String>,
    #[serde(rename = "SBQQ__StartDate__c")]
    start_date: Option<String>,
    #[serde(
        rename = "SBQQ__SubscriptionTerm__c",
        default,
        deserialize_with = "decimal"
    )]
    subscription_term: Option<Decimal>,
    #[serde(rename = "SBQQ__PaymentTerms__c")]
    payment_terms: Option<String>,
    #[serde(rename = "SBQQ__MasterContract__c")]
    master_contract: Option<String>,
    #[serde(rename = "SBQQ__NetAmount__c", default, deserialize_with = "decimal")]
    net_amount: Option<Decimal>,
    #[serde(
        rename = "SBQQ__CustomerDiscount__c",
        default,
        deserialize_with = "decimal"
    )]
    customer_discount: Option<Decimal>,
    #[serde(rename = "CurrencyIsoCode")]
    currency: Option<String>,
    #[serde(rename = "LastModifiedDate")]
    last_modified: Option<String>,
    /// The record's other fields (custom ones among them).
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct AccountRef {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "BillingCountryCode")]
    billing_country_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineModel {
    record: LineRecord,
    key: Option<u32>,
    parent_item_key: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct LineRecord {
    #[serde(rename = "SBQQ__Product__c")]
    product: Option<String>,
    #[serde(rename = "SBQQ__Product__r")]
    product_r: Option<ProductRef>,
    #[serde(rename = "SBQQ__ProductCode__c")]
    product_code: Option<String>,
    #[serde(rename = "SBQQ__ProductName__c")]
    product_name: Option<String>,
    #[serde(rename = "SBQQ__Quantity__c", default, deserialize_with = "decimal")]
    quantity: Option<Decimal>,
    #[serde(
        rename = "SBQQ__EffectiveQuantity__c",
        default,
        deserialize_with = "decimal"
    )]
    effective_quantity: Option<Decimal>,
    #[serde(rename = "SBQQ__ListPrice__c", default, deserialize_with = "decimal")]
    list_price: Option<Decimal>,
    #[serde(rename = "SBQQ__NetPrice__c", default, deserialize_with = "decimal")]
    net_price: Option<Decimal>,
    #[serde(rename = "SBQQ__NetTotal__c", default, deserialize_with = "decimal")]
    net_total: Option<Decimal>,
    #[serde(rename = "SBQQ__Discount__c", default, deserialize_with = "decimal")]
    discount: Option<Decimal>,
    #[serde(
        rename = "SBQQ__AdditionalDiscountAmount__c",
        default,
        deserialize_with = "decimal"
    )]
    additional_discount_amount: Option<Decimal>,
    #[serde(rename = "SBQQ__SubscriptionPricing__c")]
    subscription_pricing: Option<String>,
    #[serde(
        rename = "SBQQ__SubscriptionTerm__c",
        default,
        deserialize_with = "decimal"
    )]
    subscription_term: Option<Decimal>,
    #[serde(
        rename = "SBQQ__DefaultSubscriptionTerm__c",
        default,
        deserialize_with = "decimal"
    )]
    default_subscription_term: Option<Decimal>,
    #[serde(rename = "SBQQ__StartDate__c")]
    start_date: Option<String>,
    #[serde(rename = "SBQQ__EndDate__c")]
    end_date: Option<String>,
    #[serde(rename = "SBQQ__ChargeType__c")]
    charge_type: Option<String>,
    #[serde(rename = "SBQQ__BillingFrequency__c")]
    billing_frequency: Option<String>,
    #[serde(rename = "SBQQ__Taxable__c")]
    taxable: Option<bool>,
    #[serde(rename = "SBQQ__TaxCode__c")]
    tax_code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ProductRef {
    #[serde(rename = "Id")]
    id: Option<String>,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "ProductCode")]
    code: Option<String>,
}

/// A JSON number (or numeric string) read as an exact decimal through its shortest text.
fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let text = match Option::<Num>::deserialize(d)? {
        None => return Ok(None),
        Some(Num::Int(i)) => return Ok(Some(Decimal::from(i))),
        Some(Num::Float(f)) if f.is_finite() => f.to_string(),
        Some(Num::Float(f)) => {
            return Err(serde::de::Error::custom(format!("{f} is not a number")));
        }
        Some(Num::Text(s)) => s,
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a decimal: {e}")))
}
