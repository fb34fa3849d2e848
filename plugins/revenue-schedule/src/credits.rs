//! Credits against invoices: credit notes and refunds take back revenue an invoice
//! scheduled, each in the periods it was scheduled in.
//!
//! Each posted invoice's schedules are kept (key-value data, `invoice/<id>`) with what
//! was credited since:
//! - a **credit note** line that credits an invoice line takes its amount back from
//!   that line's schedule, period by period in proportion to what each period
//!   recognised (schedule `<credit>/<invoice line>`, negative); a line of an invoice
//!   not posted here (a Zuora credit memo's item) over its own service period, ratably;
//!   a line of its own without one (a goodwill credit) on the day the note is issued
//!   (`<credit>/<line>`). A line is never credited past what it billed.
//! - a **voided credit note** gives its schedules again with nothing in them (their next
//!   revision): what it took back is recognised again.
//! - a **refund** takes back the revenue share of what is refunded (refunds are tax
//!   included: the share is the invoice's lines over its total) across the invoice's
//!   lines by their amounts (schedules `<invoice>/<line>/refund`), except what the
//!   invoice's live credit notes already give back: Stripe pays a credit note's refund
//!   as a refund of the charge, so a refund and a credit note of the same invoice are
//!   one reduction up to the larger of the two. Refund amounts are all refunded so far,
//!   so each refund revises the same schedules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tenon_sdk::model::revenue::{allocate, minor_units, ratable_schedule};
use tenon_sdk::model::rust_decimal::{Decimal, RoundingStrategy};
use tenon_sdk::model::{
    CreditLine, CreditNote, Invoice, Money, Payment, Period, RevenuePeriod, RevenueSchedule,
    ScheduleChange,
};
use tenon_sdk::{Failure, kv};

use crate::book::refused;

/// A posted invoice's schedules and what was credited against them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvoiceBook {
    /// The invoice.
    pub invoice: String,
    /// What it billed, tax included.
    pub total: Money,
    /// Its lines' schedules (lines without a service period have none).
    pub lines: Vec<RevenueSchedule>,
    /// Its lines' amounts, by line id (what revenue each can give back).
    pub amounts: BTreeMap<String, Money>,
    /// The live credit notes: their total and their schedules.
    pub credits: BTreeMap<String, Credit>,
    /// All refunded so far.
    pub refunded: Money,
    /// The refund's schedules as they stand, by line.
    pub refund: Vec<RevenueSchedule>,
}

/// A credit note as booked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credit {
    /// What it gives back, tax included.
    pub total: Money,
    /// Its schedules.
    pub schedules: Vec<RevenueSchedule>,
}

fn key(invoice: &str) -> String {
    format!("invoice/{invoice}")
}

fn load(invoice: &str) -> Result<Option<InvoiceBook>, Failure> {
    kv::get(&key(invoice))?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Invalid(format!(
                    "the stored book of invoice {invoice} is unreadable: {e}"
                ))
            })
        })
        .transpose()
}

fn save(book: &InvoiceBook) -> Result<(), Failure> {
    let bytes = serde_json::to_vec(book)
        .map_err(|e| Failure::Invalid(format!("book of {}: {e}", book.invoice)))?;
    kv::set(&key(&book.invoice), &bytes)
}

/// Keep a posted invoice's schedules for the credits to come.
pub fn posted(invoice: &Invoice, schedules: &[RevenueSchedule]) -> Result<(), Failure> {
    let book = InvoiceBook {
        invoice: invoice.id.clone(),
        total: invoice.total.clone(),
        lines: schedules.to_vec(),
        amounts: invoice
            .lines
            .iter()
            .map(|l| (l.id.clone(), l.amount.clone()))
            .collect(),
        credits: BTreeMap::new(),
        refunded: Money::zero(invoice.currency.clone()),
        refund: Vec::new(),
    };
    save(&book)
}

fn unknown(invoice: &str) -> Failure {
    Failure::Rejected(vec![format!(
        "invoice {invoice} was never posted here: there is no schedule to credit (its InvoicePosted comes first)"
    )])
}

/// `amount` taken back from `schedule`'s periods in proportion to what each
/// recognised, as a negative schedule `id`.
fn taken_back(
    id: String,
    schedule: &RevenueSchedule,
    amount: &Money,
) -> Result<RevenueSchedule, Failure> {
    let what = format!("schedule {}", schedule.id);
    let weights: Vec<Money> = schedule.periods.iter().map(|p| p.amount.clone()).collect();
    let shares = allocate(amount, &weights).map_err(|e| refused(&what, e))?;
    let periods = schedule
        .periods
        .iter()
        .zip(shares)
        .map(|(p, share)| RevenuePeriod {
            period: p.period,
            amount: negated(&share),
        })
        .collect();
    Ok(RevenueSchedule {
        id,
        source_line: schedule.source_line.clone(),
        total: negated(amount),
        periods,
        revision: 1,
        change: None,
        held: None,
    })
}

fn negated(money: &Money) -> Money {
    Money::new(-money.amount, money.currency.clone())
}

/// The schedule one credit note line makes: from the invoice line it credits when
/// that invoice was posted here, else over its own service period, else on the day
/// the note is issued. `before` are the schedules already made against the invoice's
/// lines (a line is never credited past what it billed).
fn line_schedule(
    note: &CreditNote,
    line: &CreditLine,
    book: Option<&InvoiceBook>,
    before: &[&RevenueSchedule],
) -> Result<RevenueSchedule, Failure> {
    let what = format!("credit note {} line {}", note.id, line.id);
    let own = || format!("{}/{}", note.id, line.id);
    let on_issue = |id: String, source: &str| {
        let day = note.issued.ok_or_else(|| {
            Failure::Invalid(format!("credit note {} has no issue date", note.id))
        })?;
        on_the_day(id, source, &line.amount, day)
    };
    let (Some(book), Some(invoice_line)) = (book, &line.invoice_line) else {
        return match (line.service_period, &line.invoice_line, &note.invoice) {
            (Some(period), _, _) => {
                let mut schedule = ratable_schedule(&own(), &line.id, &line.amount, period)
                    .map_err(|e| refused(&what, e))?;
                schedule.total = negated(&schedule.total);
                for p in &mut schedule.periods {
                    p.amount = negated(&p.amount);
                }
                Ok(schedule)
            }
            (None, Some(_), Some(invoice)) => Err(unknown(invoice)),
            (None, _, _) => on_issue(own(), &line.id),
        };
    };
    if line.amount.currency != book.total.currency {
        return Err(Failure::Rejected(vec![format!(
            "{what}: in {}, the invoice in {}",
            line.amount.currency, book.total.currency
        )]));
    }
    let billed = book.amounts.get(invoice_line).ok_or_else(|| {
        Failure::Rejected(vec![format!(
            "{what}: invoice {} has no line {invoice_line}",
            book.invoice
        )])
    })?;
    let too_large = || Failure::Invalid(format!("{what}: amounts past what can be computed"));
    let credited = before
        .iter()
        .filter(|s| s.source_line == *invoice_line)
        .try_fold(Decimal::ZERO, |sum, s| sum.checked_sub(s.total.amount))
        .ok_or_else(too_large)?;
    if credited
        .checked_add(line.amount.amount)
        .ok_or_else(too_large)?
        > billed.amount
    {
        return Err(Failure::Rejected(vec![format!(
            "{what}: credits {} of line {invoice_line}, which billed {billed} and has {credited} {} credited already",
            line.amount, billed.currency
        )]));
    }
    let id = format!("{}/{}", note.id, invoice_line);
    match book.lines.iter().find(|s| s.source_line == *invoice_line) {
        Some(schedule) => taken_back(id, schedule, &line.amount),
        // A line without a service period was recognised when billed: taken back on
        // the day.
        None => on_issue(id, invoice_line),
    }
}

/// The schedules a credit note makes.
pub fn issued(note: &CreditNote) -> Result<Vec<RevenueSchedule>, Failure> {
    let mut book = match &note.invoice {
        Some(invoice) => load(invoice)?,
        None => None,
    };
    if let Some(credit) = book.as_ref().and_then(|b| b.credits.get(&note.id)) {
        // A repeat: the same schedules.
        return Ok(credit.schedules.clone());
    }
    let mut reasons = Vec::new();
    let mut schedules: Vec<RevenueSchedule> = Vec::new();
    for line in &note.lines {
        let made = {
            let before: Vec<&RevenueSchedule> = book
                .iter()
                .flat_map(|b| b.credits.values().flat_map(|c| &c.schedules))
                .chain(&schedules)
                .collect();
            line_schedule(note, line, book.as_ref(), &before)
        };
        match made {
            Ok(schedule) => schedules.push(schedule),
            Err(Failure::Rejected(why)) => reasons.extend(why),
            Err(other) => return Err(other),
        }
    }
    if !reasons.is_empty() {
        return Err(Failure::Rejected(reasons));
    }
    if let Some(book) = &mut book {
        book.credits.insert(
            note.id.clone(),
            Credit {
                total: note.total.clone(),
                schedules: schedules.clone(),
            },
        );
        schedules.extend(revise_refund(book)?);
        save(book)?;
    }
    Ok(schedules)
}

/// A voided credit note's schedules, emptied.
pub fn voided(note: &CreditNote) -> Result<Vec<RevenueSchedule>, Failure> {
    let day = note
        .issued
        .ok_or_else(|| Failure::Invalid(format!("credit note {} has no issue date", note.id)))?;
    let mut book = match &note.invoice {
        Some(invoice) => load(invoice)?,
        None => None,
    };
    let Some(book) = &mut book else {
        // Not booked against an invoice here: the same schedules made again, emptied.
        return note
            .lines
            .iter()
            .map(|line| {
                Ok(emptied(
                    &line_schedule(note, line, None, &[])?,
                    "credit voided",
                    day,
                ))
            })
            .collect();
    };
    let Some(credit) = book.credits.remove(&note.id) else {
        return Err(Failure::Rejected(vec![format!(
            "credit note {} of invoice {} was never issued here, or is voided already",
            note.id, book.invoice
        )]));
    };
    let mut schedules: Vec<RevenueSchedule> = credit
        .schedules
        .iter()
        .map(|s| emptied(s, "credit voided", day))
        .collect();
    schedules.extend(revise_refund(book)?);
    save(book)?;
    Ok(schedules)
}

/// What a refund revises.
pub fn refunded(payment: &Payment) -> Result<Vec<RevenueSchedule>, Failure> {
    let invoice = &payment.invoice_id;
    let mut book = load(invoice)?.ok_or_else(|| unknown(invoice))?;
    if payment.amount.currency != book.total.currency {
        return Err(Failure::Rejected(vec![format!(
            "refund of invoice {invoice} in {}, the invoice in {}",
            payment.amount.currency, book.total.currency
        )]));
    }
    // All refunded so far: an older or repeated event changes nothing.
    if payment.amount.amount > book.refunded.amount {
        book.refunded = payment.amount.clone();
    }
    let schedules = revise_refund(&mut book)?;
    save(&book)?;
    Ok(schedules)
}

/// A schedule with nothing in it, one revision further.
fn emptied(
    schedule: &RevenueSchedule,
    reason: &str,
    day: tenon_sdk::model::chrono::NaiveDate,
) -> RevenueSchedule {
    let zero = Money::zero(schedule.total.currency.clone()).with_currency_scale();
    RevenueSchedule {
        total: zero.clone(),
        periods: schedule
            .periods
            .iter()
            .map(|p| RevenuePeriod {
                period: p.period,
                amount: zero.clone(),
            })
            .collect(),
        revision: schedule.revision + 1,
        change: Some(ScheduleChange {
            reason: reason.into(),
            effective: day,
            previous_total: schedule.total.clone(),
            catch_up: None,
        }),
        held: None,
        ..schedule.clone()
    }
}

/// `amount` taken back on `day` alone.
fn on_the_day(
    id: String,
    line: &str,
    amount: &Money,
    day: tenon_sdk::model::chrono::NaiveDate,
) -> Result<RevenueSchedule, Failure> {
    minor_units(amount).map_err(|e| refused(&format!("line {line}"), e))?;
    Ok(RevenueSchedule {
        id,
        source_line: line.to_owned(),
        total: negated(amount),
        periods: vec![RevenuePeriod {
            period: Period {
                start: day,
                end: day,
            },
            amount: negated(amount),
        }],
        revision: 1,
        change: None,
        held: None,
    })
}

/// The refund's schedules again, for what is refunded beyond the live credit notes;
/// those that changed, one revision further.
fn revise_refund(book: &mut InvoiceBook) -> Result<Vec<RevenueSchedule>, Failure> {
    let what = format!("refund of invoice {}", book.invoice);
    let currency = book.total.currency.clone();
    let too_large = || Failure::Invalid(format!("{what}: amounts past what can be computed"));
    let credited = book
        .credits
        .values()
        .try_fold(Decimal::ZERO, |sum, c| sum.checked_add(c.total.amount))
        .ok_or_else(too_large)?;
    let uncovered = book
        .refunded
        .amount
        .checked_sub(credited)
        .ok_or_else(too_large)?
        .max(Decimal::ZERO);
    // The revenue share: the scheduled lines' amounts over the total (tax included).
    let lines: Vec<&RevenueSchedule> = book.lines.iter().collect();
    let net = lines
        .iter()
        .try_fold(Decimal::ZERO, |sum, s| sum.checked_add(s.total.amount))
        .ok_or_else(|| Failure::Invalid(format!("{what}: amounts past what can be computed")))?;
    let share = if book.total.amount.is_zero() || lines.is_empty() {
        Decimal::ZERO
    } else {
        uncovered
            .checked_mul(net)
            .and_then(|n| n.checked_div(book.total.amount))
            .ok_or_else(|| Failure::Invalid(format!("{what}: amounts past what can be computed")))?
            .min(net)
            .round_dp_with_strategy(
                currency.minor_digits(),
                RoundingStrategy::MidpointNearestEven,
            )
    };
    let share = Money::new(share, currency.clone());
    let by_line = if share.amount.is_zero() {
        vec![Money::zero(currency.clone()).with_currency_scale(); lines.len()]
    } else {
        let weights: Vec<Money> = lines.iter().map(|s| s.total.clone()).collect();
        allocate(&share, &weights).map_err(|e| refused(&what, e))?
    };
    let mut changed = Vec::new();
    let mut next = Vec::new();
    for (schedule, amount) in lines.iter().zip(by_line) {
        let id = format!("{}/refund", schedule.id);
        let previous = book.refund.iter().find(|s| s.id == id);
        let mut revised = if amount.amount.is_zero() {
            RevenueSchedule {
                id: id.clone(),
                source_line: schedule.source_line.clone(),
                total: Money::zero(currency.clone()).with_currency_scale(),
                periods: Vec::new(),
                revision: 1,
                change: None,
                held: None,
            }
        } else {
            taken_back(id.clone(), schedule, &amount)?
        };
        match previous {
            Some(before) if before.total == revised.total => {
                next.push(before.clone());
                continue;
            }
            Some(before) => {
                revised.revision = before.revision + 1;
                revised.change = Some(ScheduleChange {
                    reason: "refund revised".into(),
                    effective: schedule
                        .periods
                        .first()
                        .map_or_else(Default::default, |p| p.period.start),
                    previous_total: before.total.clone(),
                    catch_up: None,
                });
            }
            // Nothing refunded yet and nothing now: no schedule.
            None if amount.amount.is_zero() => continue,
            None => {}
        }
        next.push(revised.clone());
        changed.push(revised);
    }
    book.refund = next;
    Ok(changed)
}
