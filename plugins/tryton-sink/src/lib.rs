//! Sink plugin: each `OrderAccepted` becomes a Tryton sale (`sale.sale` with its
//! `sale.line`s), over Tryton's JSON-RPC, left a draft, quoted or confirmed as the
//! config says.
//!
//! Config: `url` (the server, e.g. `http://127.0.0.1:8000`), `database`, `user`
//! (default `admin`), `workflow` (`draft`, the default; `quoted`; `confirmed`: Tryton
//! then processes the sale, its invoice and shipment following its own rules); secret
//! `tryton_password`.
//!
//! - The customer is the party whose `code` is the order's customer id (the CRM
//!   account id), invoiced and shipped to its first address; the products those whose
//!   `code` is the line's product code; the payment term the one named as the order's
//!   (e.g. `Net30`). Every one that is missing is reported, as `rejected`.
//! - Taxes: each line takes its product's customer taxes (its account category's), unless
//!   the quote says the line is not taxable.
//! - The customer's PO number and the quote go in the sale's description; an order
//!   that changes a contract (an amendment or renewal quote's) says so there, and an
//!   amendment's reductions are lines of negative quantity (returns).
//! - Exactly once: the sale's `reference` is the order id; a sale with that reference
//!   is looked up before one is created, so a redelivery finds the first one (and
//!   takes it as far as the workflow says, if a crash stopped it on the way).
//! - Revisions: the sale's description names the quote revision it was made from. An
//!   order of another revision changes a draft or quoted sale in place (its lines
//!   replaced, then taken through the workflow again); a confirmed sale can no longer
//!   change, so the revision becomes a change order: a sale of its own (reference
//!   `<order>@<revision>`) that returns the lines sold and sells the revised ones.
//! - A `CreditIssued` (and an `InvoiceVoided`, as the credit of all it billed, reference
//!   `<invoice>/void`) becomes a customer credit note (`account.invoice` of type `out`
//!   whose lines give the credited amounts back, quantity -1, on the revenue account,
//!   taxed at the rate the billing system charged), its `reference` the credit note's
//!   id, left a draft for accounting to post.
//! - An `InvoicePosted` (a billing system's invoice: Stripe's, Zuora's) becomes a
//!   customer invoice the same way (reference: the invoice's id; each line its amount,
//!   quantity 1, taxed at the billing system's rate; dated as issued), left a draft.
//! - Records (the `records` export, for reconciliation): kind `invoice` reads the
//!   customer invoices and credit notes dated in the window, with their reference,
//!   total (credit notes negative) and currency.
//! - Undoing (sagas: the `compensate` export): a sale still a draft or quoted is
//!   cancelled in Tryton; a confirmed one can no longer be, so a return sale (reference
//!   `<order>/undo`, every line of the sale returned at its price and taxes) is made
//!   and taken through the configured workflow. Both are found again on a redelivery.
//! - The session is kept in key-value storage and reused; an expired one (HTTP 401 or
//!   403) is renewed once.
//! - Tryton's `UserError` / `ValidationError` (the data is refused) are `rejected`;
//!   network errors, 5xx and other server faults are `retryable`.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use tenon_sdk::model::{CreditLine, CreditNote, Invoice, Order, OrderLine, kinds};
use tenon_sdk::{Failure, Message, Receipt, kv};
use tryton_rpc::{Client, Session};
/// Tryton's JSON-RPC (answers, decimals, the client), shared with the other Tryton
/// plugins.
pub use tryton_rpc::{RpcError, decimal, parse_answer};

#[cfg(test)]
mod tests;

/// Create the order as a Tryton sale (or the credit note as a Tryton credit note),
/// unless one already carries its id.
#[tenon_sdk::sink(compensate = undo_sale, records = read_records)]
fn create_sale(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    match message.kind.as_str() {
        kinds::CREDIT_ISSUED => {
            let note: CreditNote = message.decode()?;
            let mut rpc = connect()?;
            deliver_document(&mut rpc, &note, Document::CreditNote)
        }
        kinds::INVOICE_VOIDED => {
            let invoice: Invoice = message.decode()?;
            let mut rpc = connect()?;
            deliver_document(&mut rpc, &voiding(&invoice), Document::CreditNote)
        }
        kinds::INVOICE_POSTED => {
            let invoice: Invoice = message.decode()?;
            let mut rpc = connect()?;
            let mut booked = voiding(&invoice);
            booked.id.clone_from(&invoice.id);
            booked.number.clone_from(&invoice.number);
            booked.reason = None;
            deliver_document(&mut rpc, &booked, Document::Invoice)
        }
        _ => {
            let order: Order = message.decode()?;
            let mut rpc = connect()?;
            deliver_order(&mut rpc, &order)
        }
    }
}

/// Undo an order's sale (its transaction failed elsewhere): cancel it while Tryton
/// still can, else book its return.
fn undo_sale(
    message: Message,
    delivered: Receipt,
    _idempotency_key: &str,
) -> Result<Receipt, Failure> {
    if message.kind == kinds::CREDIT_ISSUED || message.kind == kinds::INVOICE_VOIDED {
        return Err(Failure::Invalid(format!(
            "a `{}` delivered as {} is accounting's to reverse: this sink undoes sales only",
            message.kind, delivered.reference
        )));
    }
    let order: Order = message.decode()?;
    let mut rpc = connect()?;
    let id = match delivered
        .reference
        .strip_prefix("sale.sale/")
        .map(str::parse::<i64>)
    {
        Some(Ok(id)) => id,
        _ => {
            return Err(Failure::Invalid(format!(
                "`{}` is not a reference this sink gave (sale.sale/<id>)",
                delivered.reference
            )));
        }
    };
    let sale = rpc.call(
        "model.sale.sale.read",
        vec![json!([id]), json!(["state", "description", "lines"])],
    )?;
    let Some(sale) = sale.get(0) else {
        return Ok(Receipt {
            reference: delivered.reference,
            detail: Some("no such sale: nothing left to undo".into()),
        });
    };
    let sale = Existing::of(sale)?;
    match sale.state.as_str() {
        "cancelled" => Ok(receipt(id, "cancelled", "already cancelled")),
        "draft" | "quotation" => {
            rpc.call("model.sale.sale.cancel", vec![json!([id])])?;
            Ok(receipt(id, "cancelled", "cancelled"))
        }
        _ => return_sale(&mut rpc, &order, &sale),
    }
}

/// The return of everything confirmed sale `sale` sold: a sale of its own (reference
/// `<order>/undo`), taken through the configured workflow.
fn return_sale(rpc: &mut Client, order: &Order, sale: &Existing) -> Result<Receipt, Failure> {
    let workflow = Workflow::configured()?;
    let reference = format!("{}/undo", order.id);
    if let Some((id, state)) = made_before(rpc, &reference, workflow)? {
        return Ok(receipt(
            id,
            &state,
            "already created as the return of the sale",
        ));
    }
    let header = rpc.call(
        "model.sale.sale.read",
        vec![
            json!([sale.id]),
            json!([
                "party",
                "currency",
                "invoice_address",
                "shipment_address",
                "payment_term"
            ]),
        ],
    )?;
    let header = header.get(0).cloned().unwrap_or_default();
    let mut values = json!({
        "party": header["party"],
        "currency": header["currency"],
        "invoice_address": header["invoice_address"],
        "shipment_address": header["shipment_address"],
        "reference": reference,
        "description": format!("Return of {} (sale {}): its transaction failed", order.id, sale.id),
        "lines": [["create", returned_lines(rpc, &sale.lines)?]],
    });
    if !header["payment_term"].is_null() {
        values["payment_term"] = header["payment_term"].clone();
    }
    let id = create(rpc, &values)?;
    let state = advance(rpc, id, "draft", workflow)?;
    Ok(receipt(id, &state, "created as the return of the sale"))
}

/// The sale made before under `reference` (a change order, a return), taken as far as
/// `workflow` (a crash may have stopped it on the way): its id and state.
fn made_before(
    rpc: &mut Client,
    reference: &str,
    workflow: Workflow,
) -> Result<Option<(i64, String)>, Failure> {
    let Some(id) = rpc.search_one("sale.sale", json!([["reference", "=", reference]]))? else {
        return Ok(None);
    };
    let state = rpc
        .call("model.sale.sale.read", vec![json!([id]), json!(["state"])])?
        .pointer("/0/state")
        .and_then(Value::as_str)
        .unwrap_or("draft")
        .to_owned();
    Ok(Some((id, advance(rpc, id, &state, workflow)?)))
}

/// Sale lines `lines` given back: negative quantities at their price and taxes.
fn returned_lines(rpc: &mut Client, lines: &[i64]) -> Result<Vec<Value>, Failure> {
    let booked = rpc.call(
        "model.sale.line.read",
        vec![
            json!(lines),
            json!([
                "sequence",
                "product",
                "unit",
                "quantity",
                "unit_price",
                "description",
                "taxes",
                "type"
            ]),
        ],
    )?;
    let mut returned = Vec::new();
    for line in booked.as_array().into_iter().flatten() {
        if line["type"] != "line" {
            continue;
        }
        let quantity = line["quantity"].as_f64().unwrap_or_default();
        returned.push(json!({
            "type": "line",
            "sequence": line["sequence"],
            "product": line["product"],
            "unit": line["unit"],
            "quantity": -quantity,
            "unit_price": line["unit_price"],
            "description": format!("Returned: {}", line["description"].as_str().unwrap_or_default()),
            "taxes": [["add", line["taxes"]]],
        }));
    }
    Ok(returned)
}

/// A voided invoice as the credit note that undoes all of it (`<invoice>/void`): each
/// line given back with its taxes.
pub fn voiding(invoice: &Invoice) -> CreditNote {
    CreditNote {
        id: format!("{}/void", invoice.id),
        number: Some(format!(
            "void of {}",
            invoice.number.as_deref().unwrap_or(&invoice.id)
        )),
        invoice: Some(invoice.id.clone()),
        customer: invoice.customer.clone(),
        currency: invoice.currency.clone(),
        issued: invoice.issued,
        reason: Some("invoice voided".into()),
        lines: invoice
            .lines
            .iter()
            .map(|line| CreditLine {
                id: line.id.clone(),
                invoice_line: Some(line.id.clone()),
                description: line.description.clone(),
                quantity: line.quantity,
                amount: line.amount.clone(),
                service_period: line.service_period,
                taxes: line.taxes.clone(),
            })
            .collect(),
        total: invoice.total.clone(),
        refund: None,
    }
}

/// A credit note as a Tryton customer credit note: an `out` invoice whose lines give
/// back each credited amount (quantity -1 at the amount, on the revenue account, with
/// the tax of the rate the billing system charged), its `reference` the credit note's
/// id (a redelivery finds it), left a draft for accounting to post.
/// What a customer `account.invoice` books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Document {
    /// A billing system's invoice: its lines sold.
    Invoice,
    /// A credit note: its lines given back.
    CreditNote,
}

impl Document {
    fn noun(self) -> &'static str {
        match self {
            Document::Invoice => "invoice",
            Document::CreditNote => "credit note",
        }
    }
}

/// Book `note` (a credit note, or an invoice in the same shape) as a Tryton customer
/// invoice, unless one already carries its id.
fn deliver_document(
    rpc: &mut Client,
    note: &CreditNote,
    document: Document,
) -> Result<Receipt, Failure> {
    let noun = document.noun();
    if let Some(id) = rpc.search_one("account.invoice", json!([["reference", "=", note.id]]))? {
        return Ok(Receipt {
            reference: format!("account.invoice/{id}"),
            detail: Some(format!("{noun} already created")),
        });
    }
    let mut reasons = Vec::new();
    let party_code = note
        .customer
        .external_ids
        .get("tryton")
        .unwrap_or(&note.customer.id);
    let party = rpc.search_one("party.party", json!([["code", "=", party_code]]))?;
    let address = match party {
        Some(party) => rpc.search_one("party.address", json!([["party", "=", party]]))?,
        None => {
            reasons.push(format!(
                "customer `{}` is not a Tryton party",
                note.customer.id
            ));
            None
        }
    };
    let currency = rpc.search_one(
        "currency.currency",
        json!([["code", "=", note.currency.code()]]),
    )?;
    if currency.is_none() {
        reasons.push(format!("currency {} is not in Tryton", note.currency));
    }
    let journal = rpc.search_one("account.journal", json!([["type", "=", "revenue"]]))?;
    let receivable = rpc.search_one(
        "account.account",
        json!([["type.receivable", "=", true], ["closed", "!=", true]]),
    )?;
    let revenue = rpc.search_one(
        "account.account",
        json!([["type.revenue", "=", true], ["closed", "!=", true]]),
    )?;
    let (Some(journal), Some(receivable), Some(revenue)) = (journal, receivable, revenue) else {
        return Err(Failure::Rejected(vec![
            "Tryton has no revenue journal, receivable or revenue account: set up its chart of accounts".into(),
        ]));
    };
    let mut lines = Vec::new();
    for line in &note.lines {
        let mut values = json!({
            "type": "line",
            "account": revenue,
            "quantity": match document { Document::Invoice => 1.0, Document::CreditNote => -1.0 },
            "unit_price": decimal(line.amount.amount),
            "description": line.description.clone().unwrap_or_else(|| match document {
                Document::Invoice => format!("Line {}", line.id),
                Document::CreditNote => format!("Credit of {}", line.invoice_line.as_deref().unwrap_or(&line.id)),
            }),
        });
        let mut taxes = Vec::new();
        for tax in &line.taxes {
            let Some(percent) = tax.rate_percent else {
                continue;
            };
            let rate = percent / tenon_sdk::model::rust_decimal::Decimal::ONE_HUNDRED;
            match rpc.search_one(
                "account.tax",
                json!([
                    ["type", "=", "percentage"],
                    ["rate", "=", decimal(rate.normalize())]
                ]),
            )? {
                Some(id) => taxes.push(id),
                None => reasons.push(format!("line {}: no Tryton tax at {percent} %", line.id)),
            }
        }
        if !taxes.is_empty() {
            values["taxes"] = json!([["add", taxes]]);
        }
        lines.push(values);
    }
    if !reasons.is_empty() {
        return Err(Failure::Rejected(reasons));
    }
    let mut description = match document {
        Document::Invoice => format!("Invoice {}", note.number.as_deref().unwrap_or(&note.id)),
        Document::CreditNote => {
            format!("Credit note {}", note.number.as_deref().unwrap_or(&note.id))
        }
    };
    if let (Document::CreditNote, Some(invoice)) = (document, &note.invoice) {
        description.push_str(&format!(" of invoice {invoice}"));
    }
    let mut values = json!({
        "type": "out",
        "party": party.unwrap_or_default(),
        "invoice_address": address.unwrap_or_default(),
        "currency": currency.unwrap_or_default(),
        "journal": journal,
        "account": receivable,
        "reference": note.id,
        "description": description,
        "lines": [["create", lines]],
    });
    if let Some(issued) = note.issued.and_then(|d| tryton_rpc::date(&d.to_string())) {
        values["invoice_date"] = issued;
    }
    let ids = rpc.call("model.account.invoice.create", vec![json!([values])])?;
    let id = ids
        .get(0)
        .and_then(Value::as_i64)
        .ok_or_else(|| Failure::Retryable(format!("unexpected create answer: {ids}")))?;
    Ok(Receipt {
        reference: format!("account.invoice/{id}"),
        detail: Some(format!("{noun} created")),
    })
}

/// The customer invoices and credit notes dated in the window, as reconciliation
/// compares them with billing: reference, total with taxes, currency.
fn read_records(
    query: tenon_sdk::records::Query,
) -> Result<Vec<tenon_sdk::records::Entry>, Failure> {
    if query.kind != "invoice" {
        return Err(Failure::Invalid(format!(
            "records of kind `{}`: this sink reads `invoice` (customer invoices and credit notes)",
            query.kind
        )));
    }
    let day = |text: &str| {
        tryton_rpc::date(text)
            .ok_or_else(|| Failure::Invalid(format!("`{text}` is not an ISO 8601 date")))
    };
    let (since, until) = (day(&query.since)?, day(&query.until)?);
    let mut rpc = connect()?;
    let found = rpc.search_read(
        "account.invoice",
        json!([
            ["type", "=", "out"],
            ["invoice_date", ">=", since],
            ["invoice_date", "<=", until],
            ["state", "!=", "cancelled"]
        ]),
        None,
        &["reference", "total_amount", "currency.code", "invoice_date"],
        &Default::default(),
    )?;
    found
        .iter()
        .map(|invoice| {
            let id = invoice
                .get("id")
                .and_then(Value::as_i64)
                .unwrap_or_default();
            let amount = invoice
                .get("total_amount")
                .and_then(tryton_rpc::decimal_text)
                .ok_or_else(|| {
                    Failure::Retryable(format!("invoice {id} has no total: {invoice}"))
                })?;
            let reference = invoice
                .get("reference")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Ok(
                tenon_sdk::records::Entry::new(format!("account.invoice/{id}"), reference)
                    .with("amount", Some(amount))
                    .with(
                        "currency",
                        invoice.pointer("/currency./code").and_then(Value::as_str),
                    )
                    .with(
                        "date",
                        invoice.get("invoice_date").and_then(tryton_rpc::date_text),
                    ),
            )
        })
        .collect()
}

const SESSION_KEY: &str = "session";

/// The JSON-RPC client, with the session kept in kv between deliveries.
fn connect() -> Result<Client, Failure> {
    let session: Option<Session> =
        kv::get(SESSION_KEY)?.and_then(|v| serde_json::from_slice(&v).ok());
    Ok(Client::from_config()?
        .with_session(session)
        .on_login(|session| {
            let stored = serde_json::to_vec(session)
                .map_err(|e| Failure::Invalid(format!("cannot keep the session: {e}")))?;
            kv::set(SESSION_KEY, &stored)
        }))
}

/// How far a new sale goes in Tryton's workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workflow {
    /// Left a draft for someone to check.
    Draft,
    /// Quoted: prices and taxes fixed, awaiting confirmation.
    Quoted,
    /// Confirmed: Tryton processes it (invoice, shipment).
    Confirmed,
}

impl Workflow {
    /// The configured workflow (`workflow`).
    pub fn configured() -> Result<Workflow, Failure> {
        match tenon_sdk::config::get("workflow").as_deref() {
            None | Some("draft") => Ok(Workflow::Draft),
            Some("quoted") => Ok(Workflow::Quoted),
            Some("confirmed") => Ok(Workflow::Confirmed),
            Some(other) => Err(Failure::Invalid(format!(
                "config `workflow` = `{other}`: it is `draft` (the default), `quoted` or `confirmed`"
            ))),
        }
    }

    /// Where a sale in Tryton `state` stands.
    fn of_state(state: &str) -> Workflow {
        match state {
            "draft" => Workflow::Draft,
            "quotation" => Workflow::Quoted,
            _ => Workflow::Confirmed,
        }
    }
}

/// Take sale `id`, now at `state`, as far as `workflow`; the state it ends in.
fn advance(rpc: &mut Client, id: i64, state: &str, workflow: Workflow) -> Result<String, Failure> {
    let mut at = Workflow::of_state(state);
    let mut state = state.to_owned();
    while at < workflow {
        let (method, next, name) = match at {
            Workflow::Draft => ("model.sale.sale.quote", Workflow::Quoted, "quotation"),
            _ => ("model.sale.sale.confirm", Workflow::Confirmed, "confirmed"),
        };
        rpc.call(method, vec![json!([id])])?;
        at = next;
        state = name.to_owned();
    }
    Ok(state)
}

fn deliver_order(rpc: &mut Client, order: &Order) -> Result<Receipt, Failure> {
    let workflow = Workflow::configured()?;
    let existing = rpc.search_read(
        "sale.sale",
        json!([["reference", "=", order.id]]),
        Some(1),
        &["state", "description", "lines"],
        &Default::default(),
    )?;
    let existing = existing.first().map(Existing::of).transpose()?;
    // The same revision again (a redelivery): the sale made of it.
    if let Some(sale) = existing
        .as_ref()
        .filter(|s| s.description == description(order))
    {
        let state = advance(rpc, sale.id, &sale.state, workflow)?;
        return Ok(receipt(sale.id, &state, "already created"));
    }
    let mut reasons = Vec::new();
    // The customer master's Tryton code, else the CRM id (the parties' code).
    let party_code = order
        .customer
        .external_ids
        .get("tryton")
        .unwrap_or(&order.customer.id);
    let party = rpc.search_one("party.party", json!([["code", "=", party_code]]))?;
    if party.is_none() {
        reasons.push(format!(
            "customer `{}` ({}) is not a Tryton party",
            order.customer.id,
            order.customer.name.as_deref().unwrap_or("no name")
        ));
    }
    let currency = rpc.search_one(
        "currency.currency",
        json!([["code", "=", order.currency.code()]]),
    )?;
    if currency.is_none() {
        reasons.push(format!("currency {} is not in Tryton", order.currency));
    }
    // Invoiced and shipped to the party's first address.
    let address = match party {
        Some(party) => {
            let address = rpc.search_one("party.address", json!([["party", "=", party]]))?;
            if address.is_none() {
                reasons.push(format!(
                    "customer `{}` has no address in Tryton to invoice",
                    order.customer.id
                ));
            }
            address
        }
        None => None,
    };
    let payment_term = match &order.payment_terms {
        Some(terms) => {
            let term = rpc.search_one(
                "account.invoice.payment_term",
                json!([["name", "=", terms]]),
            )?;
            if term.is_none() {
                reasons.push(format!(
                    "payment terms `{terms}` are not a Tryton payment term"
                ));
            }
            term
        }
        None => None,
    };
    let codes: Vec<&str> = order.lines.iter().map(|l| l.product.code_or_id()).collect();
    let found = rpc.search_read(
        "product.product",
        json!([["code", "in", codes]]),
        None,
        &[
            "code",
            "sale_uom",
            "default_uom",
            // The taxes of the product's account category (as Tryton's own sale line
            // takes them).
            "template.account_category.customer_taxes_used",
        ],
        &Default::default(),
    )?;
    let products: BTreeMap<String, ProductRef> = found
        .iter()
        .filter_map(|p| {
            let unit = p
                .get("sale_uom")
                .and_then(Value::as_i64)
                .or_else(|| p.get("default_uom").and_then(Value::as_i64))?;
            let taxes = p
                .pointer("/template./account_category./customer_taxes_used")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            Some((
                p.get("code")?.as_str()?.to_owned(),
                ProductRef {
                    id: p.get("id")?.as_i64()?,
                    unit,
                    taxes,
                },
            ))
        })
        .collect();
    let header = Header {
        party: party.unwrap_or_default(),
        currency: currency.unwrap_or_default(),
        address: address.unwrap_or_default(),
        payment_term,
    };
    let values = match sale_values(order, &header, &products) {
        Err(missing) => {
            reasons.extend(missing);
            return Err(Failure::Rejected(reasons));
        }
        Ok(_) if !reasons.is_empty() => return Err(Failure::Rejected(reasons)),
        Ok(values) => values,
    };
    match existing {
        None => {
            let id = create(rpc, &values)?;
            let state = advance(rpc, id, "draft", workflow)?;
            Ok(receipt(id, &state, "created"))
        }
        // Another revision of an order Tryton still lets us change: changed in place.
        Some(sale) if sale.state == "draft" || sale.state == "quotation" => {
            if sale.state == "quotation" {
                rpc.call("model.sale.sale.draft", vec![json!([sale.id])])?;
            }
            let mut changes = values;
            changes["lines"] = json!([["delete", sale.lines], changes["lines"][0].clone()]);
            if let Some(object) = changes.as_object_mut() {
                object.remove("reference");
            }
            rpc.call("model.sale.sale.write", vec![json!([sale.id]), changes])?;
            let state = advance(rpc, sale.id, "draft", workflow)?;
            Ok(receipt(sale.id, &state, "revised"))
        }
        // Confirmed already: a change order, which returns the lines sold and sells
        // the revised ones (what Tryton's sale itself can no longer change).
        Some(sale) => change_order(rpc, order, &sale, values, workflow),
    }
}

/// The sale already booked for an order.
struct Existing {
    id: i64,
    state: String,
    description: String,
    lines: Vec<i64>,
}

impl Existing {
    fn of(sale: &Value) -> Result<Existing, Failure> {
        Ok(Existing {
            id: sale
                .get("id")
                .and_then(Value::as_i64)
                .ok_or_else(|| Failure::Retryable(format!("unexpected search answer: {sale}")))?,
            state: sale
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("draft")
                .to_owned(),
            description: sale
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            lines: sale
                .get("lines")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default(),
        })
    }
}

fn create(rpc: &mut Client, values: &Value) -> Result<i64, Failure> {
    let ids = rpc.call("model.sale.sale.create", vec![json!([values])])?;
    ids.get(0)
        .and_then(Value::as_i64)
        .ok_or_else(|| Failure::Retryable(format!("unexpected create answer: {ids}")))
}

/// A change order for a revision of an order whose sale is confirmed: a sale of its
/// own (reference `<order>@<revision>`, found again on a redelivery) with the booked
/// sale's lines returned (negative quantities, at their price and taxes) and the
/// revised lines sold, so that the two sales together are the revised order.
fn change_order(
    rpc: &mut Client,
    order: &Order,
    sale: &Existing,
    mut values: Value,
    workflow: Workflow,
) -> Result<Receipt, Failure> {
    let revision = order.revision.as_deref().unwrap_or("unstamped");
    let reference = format!("{}@{revision}", order.id);
    if let Some((id, state)) = made_before(rpc, &reference, workflow)? {
        return Ok(receipt(id, &state, "already created as a change order"));
    }
    let returned = returned_lines(rpc, &sale.lines)?;
    let mut lines = returned;
    lines.extend(
        values["lines"][0][1]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    values["lines"] = json!([["create", lines]]);
    values["reference"] = json!(reference);
    values["description"] = json!(format!(
        "Change of {} (sale {}) to {}",
        order.id,
        sale.id,
        description(order)
    ));
    let id = create(rpc, &values)?;
    let state = advance(rpc, id, "draft", workflow)?;
    Ok(receipt(id, &state, "created as a change order"))
}

/// What the sale's description says of the order: the contract it changes (an
/// amendment's or a renewal's), the quote, the customer's PO number and the quote's
/// revision (how a redelivery is told from a revision).
pub fn description(order: &Order) -> String {
    let mut text = String::new();
    if let Some(change) = &order.change {
        text.push_str(&format!(
            "{:?} of contract {}: ",
            change.kind, change.contract
        ));
    }
    text.push_str(&format!(
        "Quote {} ({:?})",
        order.quote_number, order.category
    ));
    if let Some(po) = &order.customer_po {
        text.push_str(&format!(", PO {po}"));
    }
    if let Some(revision) = &order.revision {
        text.push_str(&format!(", revision {revision}"));
    }
    text
}

fn receipt(id: i64, state: &str, what: &str) -> Receipt {
    let state = match state {
        "quotation" => "quoted",
        other => other,
    };
    Receipt {
        reference: format!("sale.sale/{id}"),
        detail: Some(format!("{state} sale {what}")),
    }
}

/// The sale's header records in Tryton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `party.party` id.
    pub party: i64,
    /// `currency.currency` id.
    pub currency: i64,
    /// `party.address` id, invoice and shipment.
    pub address: i64,
    /// `account.invoice.payment_term` id, when the order names one.
    pub payment_term: Option<i64>,
}

/// A product as the sale needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRef {
    /// `product.product` id.
    pub id: i64,
    /// Its sale unit (`product.uom` id).
    pub unit: i64,
    /// Its customer taxes (`account.tax` ids).
    pub taxes: Vec<i64>,
}

/// The `sale.sale.create` values of an order, once its party, currency and products
/// are known. Every missing product is named.
pub fn sale_values(
    order: &Order,
    header: &Header,
    products: &BTreeMap<String, ProductRef>,
) -> Result<Value, Vec<String>> {
    let missing: Vec<String> = order
        .lines
        .iter()
        .filter(|l| !products.contains_key(l.product.code_or_id()))
        .map(|l| {
            format!(
                "line {}: product `{}` is not a Tryton product",
                l.line_number,
                l.product.code_or_id()
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let lines: Vec<Value> = order
        .lines
        .iter()
        .filter_map(|l| Some(line_values(l, products.get(l.product.code_or_id())?)))
        .collect();
    let mut values = json!({
        "party": header.party,
        "invoice_address": header.address,
        "shipment_address": header.address,
        "currency": header.currency,
        "reference": order.id,
        "description": description(order),
        "lines": [["create", lines]],
    });
    if let Some(term) = header.payment_term {
        values["payment_term"] = json!(term);
    }
    Ok(values)
}

fn line_values(line: &OrderLine, product: &ProductRef) -> Value {
    // Tryton's quantity is a float; the exact price is a Decimal.
    let quantity: f64 = line.quantity.to_string().parse().unwrap_or_default();
    let mut description = line
        .product
        .name
        .clone()
        .unwrap_or_else(|| line.product.code_or_id().to_owned());
    if let Some(parent) = line.parent_line_number {
        description = format!("{description} (in bundle line {parent})");
    }
    let mut values = json!({
        "type": "line",
        "sequence": line.line_number,
        "product": product.id,
        "unit": product.unit,
        "quantity": quantity,
        "unit_price": decimal(line.unit_price.amount),
        "description": description,
    });
    if line.taxable != Some(false) && !product.taxes.is_empty() {
        values["taxes"] = json!([["add", product.taxes]]);
    }
    values
}
