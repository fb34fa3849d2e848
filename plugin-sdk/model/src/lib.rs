//! Tenon's canonical quote-to-cash models, version 1.
//!
//! Each model is defined here once and shared by the plugin SDK (plugins build and read
//! them) and by the host (its validation gateway and tooling). Money is always an exact
//! decimal with an ISO 4217 currency, never a float.
//!
//! Encodings: JSON for payloads that leave or enter Tenon ([`Encoding::Json`]),
//! MessagePack between steps ([`Encoding::MsgPack`]).

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod money;
pub mod revenue;

pub use chrono;
pub use money::{Currency, CurrencyError, Money, MoneyError, Rounding};
pub use rust_decimal;

/// Version of the canonical models in this crate (the major: additive changes keep
/// it, a removal or a change of meaning takes the next); carried in the
/// [`MODEL_HEADER`] of every message the SDK encodes.
pub const MODEL_VERSION: &str = "1";

/// The message header that names the version of the canonical model its body is in.
pub const MODEL_HEADER: &str = "tenon-model";

/// Each canonical kind with the model its body is, for [`schema`].
pub const CANONICAL: &[(&str, &str)] = &[
    (kinds::QUOTE_APPROVED, "Quote"),
    (kinds::ORDER_DRAFTED, "Order"),
    (kinds::ORDER_ACCEPTED, "Order"),
    (kinds::ORDER_BOOKED, "Booking"),
    (kinds::CONTRACT_ACTIVATED, "Contract"),
    (kinds::CONTRACT_AMENDED, "Contract"),
    (kinds::CONTRACT_CANCELLED, "Contract"),
    (kinds::PAYMENT_RECEIVED, "Payment"),
    (kinds::PAYMENT_FAILED, "Payment"),
    (kinds::INVOICE_POSTED, "Invoice"),
    (kinds::INVOICE_VOIDED, "Invoice"),
    (kinds::CREDIT_ISSUED, "CreditNote"),
    (kinds::CREDIT_VOIDED, "CreditNote"),
    (kinds::PAYMENT_REFUNDED, "Payment"),
    (kinds::REVENUE_SCHEDULE_UPDATED, "RevenueSchedule"),
    (kinds::CUSTOMER_UPSERTED, "Party"),
];

/// The JSON Schema (draft 2020-12) of the body of canonical `kind` at `version`, as
/// generated from these types; `None` for a kind or version this crate does not define.
#[cfg(feature = "schema")]
pub fn schema(kind: &str, version: &str) -> Option<serde_json::Value> {
    if version != MODEL_VERSION {
        return None;
    }
    let (_, model) = CANONICAL.iter().find(|(k, _)| *k == kind)?;
    let mut schema = match *model {
        "Quote" => schemars::schema_for!(Quote),
        "Order" => schemars::schema_for!(Order),
        "Contract" => schemars::schema_for!(Contract),
        "Payment" => schemars::schema_for!(Payment),
        "Invoice" => schemars::schema_for!(Invoice),
        "RevenueSchedule" => schemars::schema_for!(RevenueSchedule),
        "CreditNote" => schemars::schema_for!(CreditNote),
        "Booking" => schemars::schema_for!(Booking),
        "Party" => schemars::schema_for!(Party),
        _ => return None,
    };
    schema.insert("title".into(), format!("{kind} v{version}").into());
    Some(schema.to_value())
}

/// The header carrying an idempotency key (lower case; compare names ASCII
/// case-insensitively). On a request to ingress and on a source's messages, it is the
/// key under which ingress de-duplicates: a repeat with the same key and payload is
/// answered with the first request's ids. Sinks send the same header, with the key
/// the host hands them, to target systems, so a redelivery is not applied twice.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Event kinds that the canonical models travel under.
pub mod kinds {
    /// A quote approved in CPQ, body [`super::Quote`].
    pub const QUOTE_APPROVED: &str = "QuoteApproved";
    /// An order a mapping made of a quote, not yet validated, body [`super::Order`].
    pub const ORDER_DRAFTED: &str = "OrderDrafted";
    /// An order the validation gateway accepted for fulfilment, body [`super::Order`].
    pub const ORDER_ACCEPTED: &str = "OrderAccepted";
    /// An accepted order booked in a system (an ERP) that gave it its number, body
    /// [`super::Booking`]. The runtime makes it when a sink delivers an
    /// `OrderAccepted`, for the flows that subscribe to it.
    pub const ORDER_BOOKED: &str = "OrderBooked";
    /// A contract (subscription) activated, body [`super::Contract`].
    pub const CONTRACT_ACTIVATED: &str = "ContractActivated";
    /// A contract changed (products added or removed, renewed, suspended, resumed),
    /// body [`super::Contract`] as it stands after the change.
    pub const CONTRACT_AMENDED: &str = "ContractAmended";
    /// A contract cancelled, body [`super::Contract`].
    pub const CONTRACT_CANCELLED: &str = "ContractCancelled";
    /// An invoice paid, body [`super::Payment`].
    pub const PAYMENT_RECEIVED: &str = "PaymentReceived";
    /// A payment attempt on an invoice failed, body [`super::Payment`].
    pub const PAYMENT_FAILED: &str = "PaymentFailed";
    /// An invoice posted, body [`super::Invoice`].
    pub const INVOICE_POSTED: &str = "InvoicePosted";
    /// A posted invoice voided: everything it billed is undone, body
    /// [`super::Invoice`] (the invoice as it was).
    pub const INVOICE_VOIDED: &str = "InvoiceVoided";
    /// A credit note issued against an invoice (or on account), body
    /// [`super::CreditNote`].
    pub const CREDIT_ISSUED: &str = "CreditIssued";
    /// A credit note voided: its credit is undone, body [`super::CreditNote`] (as it
    /// was).
    pub const CREDIT_VOIDED: &str = "CreditVoided";
    /// Money paid on an invoice given back, body [`super::Payment`]: its `amount` is
    /// everything refunded on the invoice so far (so a repeat or a late event is
    /// harmless).
    pub const PAYMENT_REFUNDED: &str = "PaymentRefunded";
    /// A revenue schedule created or changed, body [`super::RevenueSchedule`].
    pub const REVENUE_SCHEDULE_UPDATED: &str = "RevenueScheduleUpdated";
    /// A customer created or changed in the CRM (master data), body [`super::Party`].
    pub const CUSTOMER_UPSERTED: &str = "CustomerUpserted";
}

/// A customer, supplier or legal entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Party {
    /// Identifier in the system of record (e.g. the CRM account id).
    pub id: String,
    /// Display name, when the source has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ISO 3166-1 alpha-2 country code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Its numbers in other systems, by system, e.g. `{"sap": "USCU_S12"}`: what the
    /// customer master knows, for sinks that address the party by their own number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    /// The account it belongs to in the customer hierarchy (its parent's id), when
    /// the customer master has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Blocked for sales in the customer master.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    /// On credit hold in the customer master: no new orders until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub credit_hold: bool,
}

impl Party {
    /// A party known only by its id: no name, country, numbers elsewhere or parent,
    /// neither blocked nor on credit hold.
    pub fn new(id: impl Into<String>) -> Party {
        Party {
            id: id.into(),
            name: None,
            country: None,
            external_ids: BTreeMap::new(),
            parent: None,
            blocked: false,
            credit_hold: false,
        }
    }
}

/// A sellable product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Product {
    /// Identifier in the product catalogue.
    pub id: String,
    /// Product code (SKU), the key most ERPs match on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Product {
    /// The code systems match the product on (its SKU), or its catalogue id when
    /// the source has no code.
    pub fn code_or_id(&self) -> &str {
        self.code.as_deref().unwrap_or(&self.id)
    }
}

/// How a line is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ChargeType {
    /// Charged once: goods, set-up fees.
    OneTime,
    /// Charged every billing period: subscriptions.
    Recurring,
    /// Charged on measured consumption.
    Usage,
}

impl ChargeType {
    /// True for lines that belong to a subscription rather than a delivery.
    pub fn is_subscription(self) -> bool {
        matches!(self, ChargeType::Recurring | ChargeType::Usage)
    }
}

/// A date range, both ends inclusive, as billing systems state service periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Period {
    /// First day of the period.
    pub start: NaiveDate,
    /// Last day of the period (inclusive).
    pub end: NaiveDate,
}

/// The subscription side of a line: term and billing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubscriptionTerm {
    /// Term length in months.
    pub months: u32,
    /// Start of service, when fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<NaiveDate>,
    /// End of service, when fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<NaiveDate>,
    /// Billing frequency as the source states it (e.g. "Monthly", "Annual").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_frequency: Option<String>,
}

/// A discount applied to a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Discount {
    /// Percentage off the list price (10 means 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Decimal>,
    /// Amount off per unit, in the currency of the document the line is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Decimal>,
}

impl Discount {
    /// No discount stated.
    pub fn is_empty(&self) -> bool {
        self.percent.is_none() && self.amount.is_none()
    }
}

/// A quote approved in CPQ (event `QuoteApproved`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Quote {
    /// Identifier in the CPQ system.
    pub id: String,
    /// Human quote number (e.g. `Q-00822`), the business key.
    pub number: String,
    /// Quote type as the source states it ("Quote", "Renewal", "Amendment").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_type: Option<String>,
    /// Approval status as the source states it (Salesforce CPQ's `SBQQ__Status__c`:
    /// "Draft", "In Review", "Approved", "Denied", "Presented", "Accepted"...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The sold-to customer; `None` when the source did not say (a validation error).
    pub customer: Option<Party>,
    /// Currency of every amount on the quote; `None` when the source did not say.
    pub currency: Option<Currency>,
    /// Start of the quoted service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<NaiveDate>,
    /// Subscription term in months at the header level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_term_months: Option<u32>,
    /// Payment terms (e.g. "Net30").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_terms: Option<String>,
    /// The contract an amendment applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_contract: Option<String>,
    /// The customer's own purchase order number, when the quote carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_po: Option<String>,
    /// The discount on the whole quote, as the source states it (CPQ's
    /// `SBQQ__CustomerDiscount__c`, a percentage); the lines' net prices already
    /// include it.
    #[serde(default, skip_serializing_if = "Discount::is_empty")]
    pub discount: Discount,
    /// Which revision of the quote this is, as the source stamps it (Salesforce's
    /// `LastModifiedDate`): a later revision of a quote already ordered changes its
    /// orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Quote lines in the source's order; bundles reference their parent by key.
    pub lines: Vec<QuoteLine>,
    /// Net total as the source computed it, in the quote's currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_total: Option<Decimal>,
}

/// One line of a [`Quote`]. Its amounts are in the quote's currency: single-currency
/// CPQ orgs do not state it per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QuoteLine {
    /// Key of the line within the quote.
    pub key: u32,
    /// Key of the bundle parent line; `None` at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_key: Option<u32>,
    /// The product; `None` when the source did not say (a validation error).
    pub product: Option<Product>,
    /// Quantity, exact.
    pub quantity: Decimal,
    /// On an amendment quote, the change in quantity against the contract (CPQ's
    /// `SBQQ__EffectiveQuantity__c`: 2 when 10 become 12, -3 when 10 become 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_quantity: Option<Decimal>,
    /// List price per unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_price: Option<Decimal>,
    /// Net price per unit after every discount.
    pub net_price: Decimal,
    /// Net total of the line.
    pub net_total: Decimal,
    /// Discounts on the line.
    #[serde(default)]
    pub discount: Discount,
    /// How the line is charged.
    pub charge: ChargeType,
    /// The subscription term, for recurring and usage lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<SubscriptionTerm>,
    /// Whether the line is taxable, when the source says (CPQ's `SBQQ__Taxable__c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taxable: Option<bool>,
    /// The line's tax code, when the source gives one (CPQ's `SBQQ__TaxCode__c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_code: Option<String>,
}

/// What an order is for: ERPs book goods and subscriptions differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OrderCategory {
    /// One-time goods and services, delivered.
    Physical,
    /// Recurring and usage lines, billed over a term.
    Subscription,
}

/// A sales order (events `OrderDrafted` as a mapping makes it, `OrderAccepted` once
/// the validation gateway has passed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Order {
    /// Order identifier, unique per quote and category (e.g. `Q-00822-P`).
    pub id: String,
    /// The quote this order came from.
    pub quote_id: String,
    /// The quote number this order came from.
    pub quote_number: String,
    /// Goods or subscription.
    pub category: OrderCategory,
    /// The sold-to customer.
    pub customer: Party,
    /// Currency of every amount on the order.
    pub currency: Currency,
    /// Payment terms (e.g. "Net30").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_terms: Option<String>,
    /// The customer's own purchase order number, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_po: Option<String>,
    /// When delivery or service is to start (the quote's start date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<NaiveDate>,
    /// The discount on the whole quote it came from (its lines' net prices include
    /// it).
    #[serde(default, skip_serializing_if = "Discount::is_empty")]
    pub discount: Discount,
    /// The quote revision it was made from: an order with the same id and another
    /// revision replaces the one an ERP booked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the order changes a contract already sold (an amendment or a renewal
    /// quote): which contract, and how. An amendment's lines are the changes (a
    /// negative quantity gives back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<OrderChange>,
    /// Order lines; bundle components reference their parent line.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines' net amounts.
    pub total: Money,
}

/// What an order changes: a contract already sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OrderChange {
    /// Amendment (the contract's lines changed from now) or renewal (another term).
    pub kind: ChangeKind,
    /// The contract changed (CPQ's `SBQQ__MasterContract__c`).
    pub contract: String,
}

/// How an order changes its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ChangeKind {
    /// Products added, removed or their quantities changed.
    Amendment,
    /// Another term.
    Renewal,
}

/// One line of an [`Order`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OrderLine {
    /// Line number, from 10 in steps of 10 as ERPs number them. The numbering is
    /// per quote, so the orders split from one quote never reuse a number.
    pub line_number: u32,
    /// Line number of the bundle parent, if any. It may stand on the sibling order
    /// of the same quote (a subscription option of a hardware bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_line_number: Option<u32>,
    /// The product.
    pub product: Product,
    /// Quantity, exact.
    pub quantity: Decimal,
    /// Net price per unit.
    pub unit_price: Money,
    /// List price per unit, before discounts, when the quote gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_price: Option<Money>,
    /// Net amount of the line.
    pub net_amount: Money,
    /// Discounts on the line.
    #[serde(default)]
    pub discount: Discount,
    /// The subscription term, on subscription orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<SubscriptionTerm>,
    /// Whether the line is taxable, when the quote says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taxable: Option<bool>,
    /// The line's tax code, when the quote gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_code: Option<String>,
}

/// An order booked in another system (event `OrderBooked`): the number that system
/// gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Booking {
    /// The order (e.g. `Q-00822-P`).
    pub order: String,
    /// The quote it came from: its id in CPQ (the record a write-back updates).
    pub quote_id: String,
    /// The quote number.
    pub quote_number: String,
    /// Goods or subscription.
    pub category: OrderCategory,
    /// The customer.
    pub customer: String,
    /// The plugin instance that booked it (e.g. `erp-de`).
    pub system: String,
    /// The number the system gave it (e.g. SAP's sales order number).
    pub reference: String,
    /// What the system said, when anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Lifecycle state of a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ContractStatus {
    /// In force.
    Active,
    /// Paused; no service, no billing.
    Suspended,
    /// Ended before or at term.
    Cancelled,
}

/// A contract or subscription (event `ContractActivated` and its amendments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Contract {
    /// Identifier in the billing system (e.g. the subscription number).
    pub id: String,
    /// The customer.
    pub customer: Party,
    /// Lifecycle state.
    pub status: ContractStatus,
    /// Currency of every amount on the contract.
    pub currency: Currency,
    /// When the contract takes legal effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_effective: Option<NaiveDate>,
    /// When service starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_activation: Option<NaiveDate>,
    /// When the customer accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_acceptance: Option<NaiveDate>,
    /// Term in months, when termed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_months: Option<u32>,
    /// Without an end (Zuora's `EVERGREEN` terms): it runs until cancelled, one billing
    /// period after another.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evergreen: bool,
    /// The length of each renewal term in months, when the billing system states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_term_months: Option<u32>,
    /// When the contract ends (a cancellation's effective date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<NaiveDate>,
    /// The billing system's actions that produced this state, in order (e.g.
    /// `["RemoveProduct", "AddProduct"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// The changes to the whole contract (suspend, resume, renew, cancel), each with
    /// its own effective date, in the order the billing system applied them. Changes
    /// to one charge are on its line ([`ContractLine::change`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<ContractEvent>,
    /// The quote it comes from, when the billing system names it (Zuora Quotes'
    /// `QuoteNumber__QT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
    /// The billing system's order that made or last changed it (Zuora's `orderNumber`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// The charges of the contract (on an amendment: the charges that changed).
    pub lines: Vec<ContractLine>,
}

/// A dated change to a whole [`Contract`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContractEvent {
    /// What changed.
    pub change: ContractChange,
    /// The day it takes effect: the first day suspended, the first day of service
    /// again, the first day no longer in service; for a renewal, the day the billing
    /// system renewed (the renewal term itself starts when the current one ends).
    pub effective: NaiveDate,
}

/// What a [`ContractEvent`] does to the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type")]
pub enum ContractChange {
    /// Service paused: nothing is delivered (or recognised) until resumed.
    Suspended,
    /// Service again.
    Resumed {
        /// The term's end moves by the days suspended (Zuora's `extendsTerm`).
        extends_term: bool,
    },
    /// Another term after the current one.
    Renewed {
        /// Its length in months; `None`: the contract's renewal term.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term_months: Option<u32>,
    },
    /// Ended: no service from the effective date.
    Cancelled {
        /// It runs to the end of its current term instead (Zuora's
        /// `EndOfCurrentTerm`): `effective` is the day it was ordered.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        at_term_end: bool,
    },
}

/// How an amendment changed a contract line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LineChange {
    /// The charge was added.
    Added,
    /// The charge was removed.
    Removed,
    /// The charge's price or quantity changed from its effective date.
    Updated,
}

/// One charge of a [`Contract`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContractLine {
    /// Identifier of the charge in the billing system.
    pub id: String,
    /// The product.
    pub product: Product,
    /// Quantity, exact.
    pub quantity: Decimal,
    /// Price of the charge over its period, when the source states it (an order
    /// that subscribes to a catalogue rate plan without overriding it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    /// Standalone selling price, for allocating a shared price across obligations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standalone_price: Option<Money>,
    /// How the charge is billed.
    pub charge: ChargeType,
    /// When the charge is in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_period: Option<Period>,
    /// On an amendment, what happened to this charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<LineChange>,
    /// On an amendment, the day the change takes effect for this charge (its own
    /// action's service date: each charge keeps its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<NaiveDate>,
    /// The price per billing period of a recurring charge, when the source states
    /// it: what renewals, price updates and evergreen terms are priced by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring: Option<RecurringPrice>,
}

/// A recurring charge's price for one billing period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RecurringPrice {
    /// The price of one billing period (quantity included).
    pub price: Money,
    /// The billing period in months (1 monthly, 3 quarterly, 12 annual); `None` on
    /// an update that restates only the price: the charge's billing period is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_months: Option<u32>,
}

/// A posted invoice (event `InvoicePosted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Invoice {
    /// Identifier in the billing system.
    pub id: String,
    /// Invoice number as printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The billed customer.
    pub customer: Party,
    /// Currency of every amount on the invoice.
    pub currency: Currency,
    /// Issue date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<NaiveDate>,
    /// Due date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<NaiveDate>,
    /// Invoice lines.
    pub lines: Vec<InvoiceLine>,
    /// Invoice total: what the customer owes, tax included, discounts taken off. It is
    /// the lines' amounts plus their taxes.
    pub total: Money,
    /// The quote it bills, when the billing system names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
    /// The order it bills, when the billing system names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// The tax on the whole invoice (the lines' taxes), when the billing system gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<Money>,
    /// The discounts taken off the whole invoice (the lines' discounts), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<Money>,
}

/// One line of an [`Invoice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InvoiceLine {
    /// Identifier of the line in the billing system.
    pub id: String,
    /// Line text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Quantity, exact.
    pub quantity: Decimal,
    /// What the line earns: its amount with its discounts taken off and without tax
    /// (a tax-inclusive price has its tax taken out). Revenue is recognised on this.
    pub amount: Money,
    /// The service period the line bills for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_period: Option<Period>,
    /// The discounts taken off the line, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<Money>,
    /// The taxes on the line, one per rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taxes: Vec<TaxAmount>,
}

/// A tax on a line, at one rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaxAmount {
    /// The tax.
    pub amount: Money,
    /// The rate in percent (`19` for 19 %), when the billing system gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_percent: Option<Decimal>,
    /// The billing system's id of the rate (Stripe's `txr_...`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Whether the billed price included it (tax-inclusive pricing).
    pub inclusive: bool,
}

/// A credit note: part or all of an invoice given back (events `CreditIssued`,
/// `CreditVoided`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreditNote {
    /// Identifier in the billing system.
    pub id: String,
    /// Its number as printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The invoice it credits, when it credits one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// The credited customer.
    pub customer: Party,
    /// Currency of every amount on it.
    pub currency: Currency,
    /// Issue date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<NaiveDate>,
    /// Why, as the billing system states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it credits, line by line.
    pub lines: Vec<CreditLine>,
    /// What it gives back, tax included: its lines' amounts plus their taxes
    /// (positive).
    pub total: Money,
    /// The refund paid out with it, when the billing system names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<String>,
}

/// One line of a [`CreditNote`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreditLine {
    /// Identifier of the line in the billing system.
    pub id: String,
    /// The invoice line it credits; `None` for a credit of its own (goodwill, a
    /// custom line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_line: Option<String>,
    /// Line text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Quantity credited, exact.
    pub quantity: Decimal,
    /// What the line takes back of revenue: its amount with its discounts taken off
    /// and without tax (positive).
    pub amount: Money,
    /// The service period it credits, when the billing system states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_period: Option<Period>,
    /// The taxes credited, one per rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taxes: Vec<TaxAmount>,
}

/// A payment on an invoice, received, failed or refunded (events `PaymentReceived`,
/// `PaymentFailed`, `PaymentRefunded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Payment {
    /// The invoice paid (or not).
    pub invoice_id: String,
    /// Its number as printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
    /// The paying customer.
    pub customer: Party,
    /// The amount paid, or due when the attempt failed.
    pub amount: Money,
    /// When, as the billing system dates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<NaiveDate>,
    /// Attempts made so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// Revenue recognised over time for one obligation (event `RevenueScheduleUpdated`).
/// A schedule is sent whole each time it changes, with the change that made it and a
/// revision: a consumer applies the revisions of a schedule in order and keeps the
/// latest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RevenueSchedule {
    /// Identifier of the schedule.
    pub id: String,
    /// The contract or invoice line it recognises.
    pub source_line: String,
    /// Total to recognise; the periods sum to it exactly, less what is `held`.
    pub total: Money,
    /// The periods, in date order.
    pub periods: Vec<RevenuePeriod>,
    /// 1 for a new schedule, one more at each change.
    #[serde(default = "first_revision")]
    pub revision: u32,
    /// What made this revision, from the second on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ScheduleChange>,
    /// Consideration not in any period yet: a suspended contract's remainder, placed
    /// again from the day it resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Money>,
}

fn first_revision() -> u32 {
    1
}

/// Why a [`RevenueSchedule`] changed, and by how much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ScheduleChange {
    /// What happened, e.g. `removed`, `price updated`, `suspended`, `resumed`,
    /// `renewed`, `cancelled`.
    pub reason: String,
    /// The first day the change affects: periods before it are as they were.
    pub effective: NaiveDate,
    /// The total before the change.
    pub previous_total: Money,
    /// A cumulative catch-up recognised in the period of `effective`, under the
    /// catch-up modification policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<Money>,
}

/// One period of a [`RevenueSchedule`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RevenuePeriod {
    /// The days recognised in this period.
    pub period: Period,
    /// Revenue recognised in this period.
    pub amount: Money,
}

/// A wire encoding of canonical models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/json`: payloads entering or leaving Tenon.
    Json,
    /// `application/msgpack`: messages between steps (smaller and faster).
    MsgPack,
}

/// A body that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The content type is not one Tenon encodes canonical models in.
    #[error("unsupported content type `{0}` (expected application/json or application/msgpack)")]
    UnsupportedContentType(String),
    /// The body is not valid JSON for the model.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The body is not valid MessagePack for the model.
    #[error("invalid MessagePack: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    /// The model could not be written as MessagePack.
    #[error("cannot encode MessagePack: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
}

impl Encoding {
    /// The content type this encoding travels under.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::MsgPack => "application/msgpack",
        }
    }

    /// The encoding of a content type (parameters such as `; charset=utf-8` ignored).
    pub fn from_content_type(content_type: &str) -> Result<Self, CodecError> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Ok(Encoding::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(Encoding::MsgPack)
            }
            _ => Err(CodecError::UnsupportedContentType(content_type.to_owned())),
        }
    }

    /// Encode a model. MessagePack uses named fields so that models can evolve.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(match self {
            Encoding::Json => serde_json::to_vec(value)?,
            Encoding::MsgPack => rmp_serde::to_vec_named(value)?,
        })
    }

    /// Decode a model.
    pub fn decode<T: for<'de> Deserialize<'de>>(self, bytes: &[u8]) -> Result<T, CodecError> {
        Ok(match self {
            Encoding::Json => serde_json::from_slice(bytes)?,
            Encoding::MsgPack => rmp_serde::from_slice(bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn money(amount: &str) -> Money {
        Money::new(
            Decimal::from_str(amount).unwrap(),
            Currency::new("EUR").unwrap(),
        )
    }

    #[test]
    fn order_round_trips_through_both_encodings() {
        let order = Order {
            id: "Q-1-P".into(),
            quote_id: "a0q1".into(),
            quote_number: "Q-1".into(),
            category: OrderCategory::Physical,
            customer: Party {
                id: "001".into(),
                name: None,
                country: Some("DE".into()),
                external_ids: Default::default(),
                parent: None,
                blocked: false,
                credit_hold: false,
            },
            currency: Currency::new("EUR").unwrap(),
            payment_terms: None,
            customer_po: None,
            start_date: None,
            revision: None,
            change: None,
            discount: Discount::default(),
            lines: vec![OrderLine {
                line_number: 10,
                parent_line_number: None,
                product: Product {
                    id: "01t".into(),
                    code: Some("HW-1".into()),
                    name: None,
                },
                quantity: Decimal::from(3),
                unit_price: money("19.99"),
                list_price: None,
                net_amount: money("59.97"),
                discount: Discount::default(),
                subscription: None,
                taxable: None,
                tax_code: None,
            }],
            total: money("59.97"),
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = enc.encode(&order).unwrap();
            let back: Order = enc.decode(&bytes).unwrap();
            assert_eq!(back, order, "{enc:?}");
        }
        let json = String::from_utf8(Encoding::Json.encode(&order.total).unwrap()).unwrap();
        assert_eq!(json, r#"{"amount":"59.97","currency":"EUR"}"#);
    }

    #[test]
    fn content_types_are_parsed_by_essence() {
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8").unwrap(),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type("application/msgpack").unwrap(),
            Encoding::MsgPack
        );
        let err = Encoding::from_content_type("text/csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported content type `text/csv` (expected application/json or application/msgpack)"
        );
    }
}

#[cfg(test)]
#[cfg(feature = "schema")]
mod schema_tests {
    use super::*;

    fn validator(kind: &str) -> jsonschema::Validator {
        let schema = schema(kind, MODEL_VERSION).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    fn expected(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/quote-to-cash/expected")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_examples_canonical_messages_fit_their_schemas() {
        for name in ["plain", "bundle", "invalid"] {
            let quote = expected(&format!("{name}.quote.json"));
            let errors: Vec<String> = validator(kinds::QUOTE_APPROVED)
                .iter_errors(&quote)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
        for name in ["plain", "bundle"] {
            let orders = expected(&format!("{name}.orders.json"));
            for order in orders.as_array().unwrap() {
                let errors: Vec<String> = validator(kinds::ORDER_ACCEPTED)
                    .iter_errors(&order["body"])
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{name}: {errors:?}");
            }
        }
    }

    #[test]
    fn a_schema_refuses_what_the_model_refuses() {
        let mut order = expected("plain.orders.json")[0]["body"].clone();
        let valid = validator(kinds::ORDER_ACCEPTED);
        assert!(valid.is_valid(&order));
        order["currency"] = "EURO".into();
        assert!(!valid.is_valid(&order), "a currency is three letters");
        let mut order = expected("plain.orders.json")[0]["body"].clone();
        order.as_object_mut().unwrap().remove("customer");
        assert!(!valid.is_valid(&order), "the customer is required");
    }

    #[test]
    fn every_canonical_kind_has_a_schema_and_nothing_else_does() {
        for (kind, _) in CANONICAL {
            let schema = schema(kind, MODEL_VERSION).unwrap();
            assert_eq!(schema["title"], format!("{kind} v1"));
        }
        assert!(schema(kinds::QUOTE_APPROVED, "2").is_none());
        assert!(schema("QuoteSent", MODEL_VERSION).is_none());
    }
}
