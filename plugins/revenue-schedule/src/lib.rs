//! Transform plugin: ratable monthly revenue schedules, for every charge of a contract
//! through its whole life (`ContractActivated`, `ContractAmended`,
//! `ContractCancelled`) and every invoice line with a service period
//! (`InvoicePosted`); each schedule made or changed is a `RevenueScheduleUpdated`
//! message, whole, with its revision and what changed.
//!
//! - Whole months recognise alike; a partial first or last month recognises its
//!   share of a month by days; the periods sum exactly to the line's amount in the
//!   currency's minor units, the rounding remainder in the last period
//!   ([`tenon_sdk::model::revenue`]).
//! - Contract lines that carry a standalone selling price share one price: the sum
//!   of their amounts is allocated among them by standalone price before each is
//!   scheduled.
//! - A contract's schedules are kept in its book ([`book`], key-value data): each
//!   amendment, suspension, resumption, renewal and cancellation changes them from its
//!   effective date, by the modification policy configured (`modification`:
//!   `prospective` by default, or `catch-up`).
//! - A contract line without a price (a catalogue rate plan the order did not
//!   override) cannot be recognised: the message is `rejected`, naming every such
//!   line; so is an amendment of a contract whose activation was never seen.
//! - A voided invoice (`InvoiceVoided`) undoes what it billed: each of its schedules
//!   comes again as a reversal (id `<invoice>/<line>/reversal`), every period's
//!   amount negated, so that per period the schedule and its reversal sum to zero.
//! - Credit notes (`CreditIssued`, `CreditVoided`) and refunds (`PaymentRefunded`)
//!   take back what they give back from the schedules of the invoice they credit
//!   ([`credits`]).

use tenon_sdk::model::revenue::{allocate, ratable_schedule};
use tenon_sdk::model::{Contract, Invoice, Money, MoneyError, Period, RevenueSchedule, kinds};
use tenon_sdk::model::{ContractChange, ContractEvent, LineChange, rust_decimal::Decimal};
use tenon_sdk::{Failure, Message};

pub mod book;
pub mod credits;
#[cfg(test)]
mod tests;

use book::{Book, Policy};

/// The revenue schedules of a contract's or an invoice's lines.
#[tenon_sdk::transform]
fn schedule_revenue(input: Message) -> Result<Vec<Message>, Failure> {
    schedules_of(&input)?
        .iter()
        .map(|s| Message::encode(kinds::REVENUE_SCHEDULE_UPDATED, &input.key, s))
        .collect()
}

/// The schedules a message makes or changes.
pub fn schedules_of(input: &Message) -> Result<Vec<RevenueSchedule>, Failure> {
    match input.kind.as_str() {
        kinds::CONTRACT_ACTIVATED => {
            let contract: Contract = input.decode()?;
            if book::load(&contract.id)?.is_some() {
                return Err(Failure::Rejected(vec![format!(
                    "contract {} is already active: its changes come as ContractAmended",
                    contract.id
                )]));
            }
            let (book, schedules) = Book::open(&contract)?;
            book::save(&book)?;
            Ok(schedules)
        }
        kinds::CONTRACT_AMENDED | kinds::CONTRACT_CANCELLED => {
            let mut contract: Contract = input.decode()?;
            let Some(mut book) = book::load(&contract.id)? else {
                return Err(Failure::Rejected(vec![format!(
                    "contract {}: no activation seen, so there is no schedule to change (send its ContractActivated first)",
                    contract.id
                )]));
            };
            let cancels = |c: &Contract| {
                c.events
                    .iter()
                    .any(|e| matches!(e.change, ContractChange::Cancelled { .. }))
            };
            // A cancellation stated only by its end date.
            if input.kind == kinds::CONTRACT_CANCELLED && !cancels(&contract) {
                let effective = contract.ends.ok_or_else(|| {
                    Failure::Invalid(format!(
                        "contract {}: a cancellation with neither a Cancelled event nor an end date",
                        contract.id
                    ))
                })?;
                contract.events.push(ContractEvent {
                    change: ContractChange::Cancelled { at_term_end: false },
                    effective,
                });
            }
            let schedules = book.amend(&contract, Policy::configured()?)?;
            book::save(&book)?;
            Ok(schedules)
        }
        kinds::INVOICE_POSTED => {
            let invoice: Invoice = input.decode()?;
            let schedules = invoice_schedules(&invoice)?;
            credits::posted(&invoice, &schedules)?;
            Ok(schedules)
        }
        kinds::INVOICE_VOIDED => invoice_reversals(&input.decode()?),
        kinds::CREDIT_ISSUED => credits::issued(&input.decode()?),
        kinds::CREDIT_VOIDED => credits::voided(&input.decode()?),
        kinds::PAYMENT_REFUNDED => credits::refunded(&input.decode()?),
        other => Err(Failure::Invalid(format!(
            "a `{other}` message has no revenue schedule; this step takes ContractActivated, ContractAmended, ContractCancelled, InvoicePosted, InvoiceVoided, CreditIssued, CreditVoided and PaymentRefunded"
        ))),
    }
}

fn schedule(
    id: String,
    line: &str,
    amount: &Money,
    period: Period,
) -> Result<RevenueSchedule, Failure> {
    ratable_schedule(&id, line, amount, period)
        .map_err(|e| Failure::Rejected(vec![format!("line {line}: {e}")]))
}

/// Schedules for a contract's lines in service.
pub fn contract_schedules(contract: &Contract) -> Result<Vec<RevenueSchedule>, Failure> {
    let live: Vec<_> = contract
        .lines
        .iter()
        .filter(|l| l.change != Some(LineChange::Removed))
        .collect();
    let mut reasons = Vec::new();
    for line in &live {
        // A line that shares a price is priced by the allocation.
        if line.amount.is_none() && line.standalone_price.is_none() {
            reasons.push(format!(
                "line {}: no price: the order does not override the catalogue price, so nothing can be recognised",
                line.id
            ));
        }
        if line.service_period.is_none() {
            reasons.push(format!("line {}: no service period", line.id));
        }
    }
    let sharing = live.iter().filter(|l| l.standalone_price.is_some());
    if sharing.clone().count() > 0 && sharing.clone().all(|l| l.amount.is_none()) {
        reasons.push("the lines that share a price carry none".into());
    }
    if !reasons.is_empty() {
        return Err(Failure::Rejected(reasons));
    }
    // The lines with a standalone price share the sum of their amounts.
    let shared: Vec<_> = live
        .iter()
        .filter(|l| l.standalone_price.is_some())
        .collect();
    let mut allocated: Vec<(String, Money)> = Vec::new();
    if !shared.is_empty() {
        let mut total = Money::new(Decimal::ZERO, contract.currency.clone());
        for line in &shared {
            let amount = line
                .amount
                .clone()
                .unwrap_or_else(|| Money::zero(contract.currency.clone()));
            total = total.checked_add(&amount).map_err(|e| match e {
                MoneyError::MixedCurrencies(..) => Failure::Rejected(vec![format!(
                    "line {}: not in {}",
                    line.id, contract.currency
                )]),
                MoneyError::Overflow(_) => Failure::Invalid(format!(
                    "contract {}: the lines' amounts add up past what can be computed ({e})",
                    contract.id
                )),
            })?;
        }
        let prices: Vec<Money> = shared
            .iter()
            .filter_map(|l| l.standalone_price.clone())
            .collect();
        let shares = allocate(&total, &prices)
            .map_err(|e| Failure::Rejected(vec![format!("allocation: {e}")]))?;
        allocated = shared.iter().map(|l| l.id.clone()).zip(shares).collect();
    }
    live.iter()
        .map(|line| {
            // Every live line has both: checked above.
            let missing =
                || Failure::Rejected(vec![format!("line {}: no price or period", line.id)]);
            let amount = allocated
                .iter()
                .find(|(id, _)| *id == line.id)
                .map(|(_, m)| m.clone())
                .or_else(|| line.amount.clone())
                .ok_or_else(missing)?;
            let period = line.service_period.ok_or_else(missing)?;
            schedule(
                format!("{}/{}", contract.id, line.id),
                &line.id,
                &amount,
                period,
            )
        })
        .collect()
}

/// The reversals of a voided invoice's schedules: the same periods, each amount
/// negated (exactly: the posted schedule's own amounts, not a new proration).
pub fn invoice_reversals(invoice: &Invoice) -> Result<Vec<RevenueSchedule>, Failure> {
    let mut schedules = invoice_schedules(invoice)?;
    for schedule in &mut schedules {
        schedule.id.push_str("/reversal");
        schedule.total.amount = -schedule.total.amount;
        for period in &mut schedule.periods {
            period.amount.amount = -period.amount.amount;
        }
    }
    Ok(schedules)
}

/// Schedules for an invoice's lines that bill a service period.
pub fn invoice_schedules(invoice: &Invoice) -> Result<Vec<RevenueSchedule>, Failure> {
    invoice
        .lines
        .iter()
        .filter_map(|line| Some((line, line.service_period?)))
        .map(|(line, period)| {
            schedule(
                format!("{}/{}", invoice.id, line.id),
                &line.id,
                &line.amount,
                period,
            )
        })
        .collect()
}
