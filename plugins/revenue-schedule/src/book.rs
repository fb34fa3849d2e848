//! A contract's revenue book: its performance obligations (one per charge) and their
//! schedules as they stand, kept in key-value data under `contract/<id>` and changed by
//! each of the contract's messages in turn (the runtime runs one business key's
//! messages in arrival order, and commits the book with the step's outputs).
//!
//! Every change is dated, and periods before its date stay as they were:
//!
//! | change | schedule from its effective date |
//! |---|---|
//! | charge added | a new obligation over its service period (to the term's end), at its price |
//! | charge removed, contract cancelled | nothing more: the schedule stops the day before |
//! | price updated, renewal | modified by the policy (below) |
//! | suspended | nothing more for now: the rest is `held` |
//! | resumed | the held rest over what remains of the term, moved by the days suspended when the term is extended |
//! | cancelled at term end | nothing changes; a later renewal is refused |
//!
//! **Modification policy** (config `modification`), for a change of price or term on
//! a charge already in service (ASC 606-10-25-10..13):
//! - `prospective` (default, 25-13(a): the remaining services are distinct): the
//!   consideration not yet recognised plus what the change adds is recognised over
//!   what remains of the service, from the change's date. Charges that share a price
//!   (a standalone selling price each) pool their remaining consideration and share it
//!   again by their standalone prices of what remains (the price times the share of the
//!   service left).
//! - `catch-up` (25-13(b): one obligation partly satisfied): the new total is spread
//!   over the whole service as if it had always applied, and the difference between
//!   what that would have recognised before the change and what was recognised is
//!   recognised at once, in the period of the change (`ScheduleChange::catch_up`).
//!
//! An evergreen contract has no end: each charge is scheduled one billing period at a
//! time at its price per period, rolled forward to every later change's date (its
//! invoices are scheduled as they are billed).

use serde::{Deserialize, Serialize};
use tenon_sdk::model::chrono::{Months, NaiveDate};
use tenon_sdk::model::revenue::{
    RevenueError, allocate, consideration, ratable_schedule, split_at, sum,
};
use tenon_sdk::model::{
    Contract, ContractChange, ContractLine, Currency, LineChange, Money, Period, RecurringPrice,
    RevenuePeriod, RevenueSchedule, ScheduleChange,
};
use tenon_sdk::{Failure, config, kv};

/// How a change of price or term on a charge in service is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The rest over what remains, from the change (the default).
    Prospective,
    /// As if it had always applied, the difference at once.
    CatchUp,
}

impl Policy {
    /// The policy the operator configured (`modification`).
    pub fn configured() -> Result<Policy, Failure> {
        match config::get("modification").as_deref() {
            None | Some("prospective") => Ok(Policy::Prospective),
            Some("catch-up") => Ok(Policy::CatchUp),
            Some(other) => Err(Failure::Invalid(format!(
                "config `modification` = `{other}`: it is `prospective` (the default) or `catch-up`"
            ))),
        }
    }
}

/// A contract's obligations and the state of its term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Book {
    /// The contract.
    pub contract: String,
    /// Its currency.
    pub currency: Currency,
    /// The current term's last day; `None` for an evergreen contract.
    pub term_end: Option<NaiveDate>,
    /// The renewal term, in months.
    pub renewal_term_months: Option<u32>,
    /// Since when it is suspended.
    pub suspended: Option<NaiveDate>,
    /// Set once cancelled: it renews no more.
    pub cancelled: bool,
    /// One per charge, in the order they came.
    pub obligations: Vec<Obligation>,
}

/// One charge and its schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Obligation {
    /// The charge (contract line) id.
    pub line: String,
    /// Its first day of service.
    pub start: NaiveDate,
    /// Its last day of service as scheduled now.
    pub end: NaiveDate,
    /// Its price per billing period, when known (renewals, updates and evergreen
    /// periods are priced by it).
    pub recurring: Option<Price>,
    /// Its standalone selling price, when it shares a price with others.
    pub standalone: Option<Money>,
    /// Removed or cancelled: no more changes reach it.
    pub stopped: bool,
    /// One billing period at a time (an evergreen contract's charge).
    pub rolling: bool,
    /// Its schedule as it stands.
    pub schedule: RevenueSchedule,
}

/// A price per billing period.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Price {
    /// The price of one period.
    pub price: Money,
    /// The period, in months.
    pub every_months: u32,
}

impl Price {
    fn of(recurring: &RecurringPrice) -> Option<Price> {
        Some(Price {
            price: recurring.price.clone(),
            every_months: recurring.every_months?,
        })
    }
}

fn key(contract: &str) -> String {
    format!("contract/{contract}")
}

/// The book of `contract`, if it was opened.
pub fn load(contract: &str) -> Result<Option<Book>, Failure> {
    kv::get(&key(contract))?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Invalid(format!(
                    "the stored book of contract {contract} is unreadable: {e}"
                ))
            })
        })
        .transpose()
}

/// Store the book.
pub fn save(book: &Book) -> Result<(), Failure> {
    let bytes = serde_json::to_vec(book)
        .map_err(|e| Failure::Invalid(format!("book of {}: {e}", book.contract)))?;
    kv::set(&key(&book.contract), &bytes)
}

/// A revenue error as a failure: too large is invalid input, the rest is a business
/// refusal naming the charge.
pub fn refused(what: &str, e: RevenueError) -> Failure {
    match e {
        RevenueError::Overflow(_) => Failure::Invalid(format!("{what}: {e}")),
        _ => Failure::Rejected(vec![format!("{what}: {e}")]),
    }
}

fn day_before(day: NaiveDate) -> NaiveDate {
    day.pred_opt().unwrap_or(day)
}

fn months_after(day: NaiveDate, months: u32) -> Result<NaiveDate, Failure> {
    day.checked_add_months(Months::new(months))
        .map(day_before)
        .ok_or_else(|| {
            Failure::Invalid(format!("{months} months after {day} is past the calendar"))
        })
}

/// A schedule whose periods before `from` stay and whose rest is `amount` spread
/// ratably over `from ..= to` (a single day when the service has already ended).
fn place(
    schedule: &RevenueSchedule,
    from: NaiveDate,
    to: NaiveDate,
    amount: &Money,
) -> Result<RevenueSchedule, RevenueError> {
    let (before, _) = split_at(&schedule.periods, from)?;
    let span = Period {
        start: from,
        end: to.max(from),
    };
    let rest = ratable_schedule(&schedule.id, &schedule.source_line, amount, span)?;
    let mut periods = before;
    periods.extend(rest.periods);
    let total = sum(&periods, amount)?;
    Ok(RevenueSchedule {
        total,
        periods,
        held: None,
        ..schedule.clone()
    })
}

/// What `schedule` recognises from `day` on, and what it holds.
fn remaining(schedule: &RevenueSchedule, day: NaiveDate) -> Result<Money, RevenueError> {
    let (_, after) = split_at(&schedule.periods, day)?;
    let rest = sum(&after, &schedule.total)?;
    match &schedule.held {
        Some(held) => rest
            .checked_add(held)
            .map_err(|_| RevenueError::Overflow(held.clone())),
        None => Ok(rest),
    }
}

/// `a + b`, overflow refused.
fn plus(a: &Money, b: &Money) -> Result<Money, RevenueError> {
    a.checked_add(b)
        .map_err(|_| RevenueError::Overflow(a.clone()))
}

/// `a - b`, overflow refused.
fn minus(a: &Money, b: &Money) -> Result<Money, RevenueError> {
    let negated = Money::new(-b.amount, b.currency.clone());
    plus(a, &negated)
}

/// What one message did to one schedule, stamped on its next revision.
struct Change {
    /// The obligation's index.
    at: usize,
    /// What happened, in order.
    reasons: Vec<String>,
    /// The earliest date affected.
    effective: NaiveDate,
    /// The total before the message.
    previous: Money,
    /// A cumulative catch-up recognised.
    catch_up: Option<Money>,
}

/// The changes one message made.
#[derive(Default)]
struct Changes(Vec<Change>);

impl Changes {
    fn note(&mut self, at: usize, reason: &str, effective: NaiveDate, before: &Money) {
        match self.0.iter_mut().find(|c| c.at == at) {
            Some(change) => {
                change.reasons.push(reason.to_owned());
                change.effective = change.effective.min(effective);
            }
            None => self.0.push(Change {
                at,
                reasons: vec![reason.to_owned()],
                effective,
                previous: before.clone(),
                catch_up: None,
            }),
        }
    }

    fn catch_up(&mut self, at: usize, amount: Money) {
        if let Some(change) = self.0.iter_mut().find(|c| c.at == at) {
            change.catch_up = Some(amount);
        }
    }
}

impl Book {
    /// The book of a contract just activated, and its first schedules.
    pub fn open(contract: &Contract) -> Result<(Book, Vec<RevenueSchedule>), Failure> {
        let live: Vec<&ContractLine> = contract
            .lines
            .iter()
            .filter(|l| l.change != Some(LineChange::Removed))
            .collect();
        let start_of = |line: &ContractLine| {
            line.service_period
                .map(|p| p.start)
                .or(line.effective)
                .or(contract.service_activation)
                .or(contract.contract_effective)
        };
        let mut book = Book {
            contract: contract.id.clone(),
            currency: contract.currency.clone(),
            term_end: None,
            renewal_term_months: contract.renewal_term_months,
            suspended: None,
            cancelled: false,
            obligations: Vec::new(),
        };
        let schedules = if contract.evergreen {
            // One billing period at a time, each at its price.
            let mut reasons = Vec::new();
            for line in &live {
                let price = line.recurring.as_ref().and_then(Price::of);
                match (price, start_of(line)) {
                    (Some(price), Some(start)) => {
                        let end = months_after(start, price.every_months)?;
                        let schedule = ratable_schedule(
                            &format!("{}/{}", contract.id, line.id),
                            &line.id,
                            &price.price,
                            Period { start, end },
                        )
                        .map_err(|e| refused(&format!("line {}", line.id), e))?;
                        book.obligations.push(Obligation {
                            line: line.id.clone(),
                            start,
                            end,
                            recurring: Some(price),
                            standalone: None,
                            stopped: false,
                            rolling: true,
                            schedule,
                        });
                    }
                    (None, _) => reasons.push(format!(
                        "line {}: an evergreen charge needs its price per billing period, which the order does not state",
                        line.id
                    )),
                    (_, None) => reasons.push(format!("line {}: no start of service", line.id)),
                }
            }
            if !reasons.is_empty() {
                return Err(Failure::Rejected(reasons));
            }
            book.obligations
                .iter()
                .map(|o| o.schedule.clone())
                .collect()
        } else {
            let schedules = super::contract_schedules(contract)?;
            for (line, schedule) in live.iter().zip(&schedules) {
                // Both are there: `contract_schedules` refuses a line without them.
                let period = line.service_period.ok_or_else(|| {
                    Failure::Rejected(vec![format!("line {}: no service period", line.id)])
                })?;
                book.term_end = book.term_end.max(Some(period.end));
                book.obligations.push(Obligation {
                    line: line.id.clone(),
                    start: period.start,
                    end: period.end,
                    recurring: line.recurring.as_ref().and_then(Price::of),
                    standalone: line.standalone_price.clone(),
                    stopped: false,
                    rolling: false,
                    schedule: schedule.clone(),
                });
            }
            schedules
        };
        Ok((book, schedules))
    }

    /// Apply an amendment or a cancellation; the schedules it changed, each a
    /// revision further.
    pub fn amend(
        &mut self,
        contract: &Contract,
        policy: Policy,
    ) -> Result<Vec<RevenueSchedule>, Failure> {
        if contract.currency != self.currency {
            return Err(Failure::Rejected(vec![format!(
                "contract {} is in {}, this change in {}",
                self.contract, self.currency, contract.currency
            )]));
        }
        let existing = self.obligations.len();
        let mut changes = Changes::default();
        // Evergreen charges run to the latest date this message speaks of.
        let latest = contract
            .lines
            .iter()
            .filter_map(|l| l.effective)
            .chain(contract.events.iter().map(|e| e.effective))
            .max();
        if let Some(latest) = latest {
            self.roll(latest, &mut changes)?;
        }
        for line in &contract.lines {
            self.change_line(contract, line, policy, &mut changes)?;
        }
        for event in &contract.events {
            self.change_contract(event.change, event.effective, policy, &mut changes)?;
        }
        let mut out = Vec::new();
        for change in changes.0 {
            let schedule = &mut self.obligations[change.at].schedule;
            // A new obligation is revision 1; a changed one goes one further.
            if change.at < existing {
                schedule.revision += 1;
                schedule.change = Some(ScheduleChange {
                    reason: change.reasons.join(", "),
                    effective: change.effective,
                    previous_total: change.previous,
                    catch_up: change.catch_up,
                });
            }
            out.push(schedule.clone());
        }
        Ok(out)
    }

    fn find(&self, line: &str) -> Result<usize, Failure> {
        self.obligations
            .iter()
            .rposition(|o| o.line == line && !o.stopped)
            .ok_or_else(|| {
                Failure::Rejected(vec![format!(
                    "line {line} is not in service on contract {}",
                    self.contract
                )])
            })
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.obligations.len()).filter(|i| !self.obligations[*i].stopped)
    }

    fn set(
        &mut self,
        at: usize,
        schedule: RevenueSchedule,
        reason: &str,
        effective: NaiveDate,
        changes: &mut Changes,
    ) {
        let previous = self.obligations[at].schedule.total.clone();
        changes.note(at, reason, effective, &previous);
        self.obligations[at].schedule = schedule;
    }

    /// Evergreen charges scheduled through the billing period holding `day`.
    fn roll(&mut self, day: NaiveDate, changes: &mut Changes) -> Result<(), Failure> {
        if self.suspended.is_some() {
            return Ok(());
        }
        for at in self.live().collect::<Vec<_>>() {
            let o = &self.obligations[at];
            let Some(price) = o.recurring.clone().filter(|_| o.rolling) else {
                continue;
            };
            let mut schedule = o.schedule.clone();
            let mut end = o.end;
            while end < day {
                let start = end.succ_opt().unwrap_or(end);
                end = months_after(start, price.every_months)?;
                let next = ratable_schedule(
                    &schedule.id,
                    &schedule.source_line,
                    &price.price,
                    Period { start, end },
                )
                .map_err(|e| refused(&format!("line {}", o.line), e))?;
                schedule.periods.extend(next.periods);
                schedule.total = plus(&schedule.total, &price.price)
                    .map_err(|e| refused(&format!("line {}", o.line), e))?;
            }
            if end != o.end {
                let effective = o.end.succ_opt().unwrap_or(o.end);
                self.obligations[at].end = end;
                self.set(at, schedule, "next billing period", effective, changes);
            }
        }
        Ok(())
    }

    fn change_line(
        &mut self,
        contract: &Contract,
        line: &ContractLine,
        policy: Policy,
        changes: &mut Changes,
    ) -> Result<(), Failure> {
        let what = format!("line {}", line.id);
        let effective = line
            .effective
            .or(line.service_period.map(|p| p.start))
            .or(contract.service_activation)
            .or(contract.contract_effective)
            .ok_or_else(|| Failure::Rejected(vec![format!("{what}: no effective date")]))?;
        match line.change {
            Some(LineChange::Removed) => {
                let at = self.find(&line.id)?;
                let stopped =
                    stop(&self.obligations[at], effective).map_err(|e| refused(&what, e))?;
                self.set(at, stopped, "removed", effective, changes);
                let o = &mut self.obligations[at];
                o.stopped = true;
                o.end = o.end.min(day_before(effective));
            }
            Some(LineChange::Updated) => {
                let at = self.find(&line.id)?;
                let o = &self.obligations[at];
                let every = line
                    .recurring
                    .as_ref()
                    .and_then(|r| r.every_months)
                    .or(o.recurring.as_ref().map(|r| r.every_months));
                let (Some(recurring), Some(every)) = (&line.recurring, every) else {
                    return Err(Failure::Rejected(vec![format!(
                        "{what}: the update states no price per billing period, and the charge has none to keep its period from"
                    )]));
                };
                let price = Price {
                    price: recurring.price.clone(),
                    every_months: every,
                };
                let end = o.end;
                let rest = consideration(
                    &price.price,
                    every,
                    Period {
                        start: effective,
                        end: end.max(effective),
                    },
                )
                .map_err(|e| refused(&what, e))?;
                let old_rest = remaining(&o.schedule, effective).map_err(|e| refused(&what, e))?;
                let added = minus(&rest, &old_rest).map_err(|e| refused(&what, e))?;
                self.obligations[at].recurring = Some(price);
                self.modify(at, effective, &added, end, policy, "price updated", changes)?;
            }
            Some(LineChange::Added) | None => {
                if self.cancelled {
                    return Err(Failure::Rejected(vec![format!(
                        "{what}: contract {} is cancelled",
                        self.contract
                    )]));
                }
                let price = line.recurring.as_ref().and_then(Price::of);
                let rolling = self.term_end.is_none();
                let (start, end) = match (line.service_period, self.term_end, &price) {
                    (Some(p), _, _) => (p.start, p.end),
                    (None, Some(term_end), _) => (effective, term_end),
                    (None, None, Some(price)) => {
                        (effective, months_after(effective, price.every_months)?)
                    }
                    (None, None, None) => {
                        return Err(Failure::Rejected(vec![format!(
                            "{what}: an evergreen charge needs its price per billing period"
                        )]));
                    }
                };
                let span = Period { start, end };
                let mut amount = match (&line.service_period, &line.amount, &price) {
                    (Some(_), Some(amount), _) => amount.clone(),
                    (_, _, Some(price)) => consideration(&price.price, price.every_months, span)
                        .map_err(|e| refused(&what, e))?,
                    _ => {
                        return Err(Failure::Rejected(vec![format!(
                            "{what}: no price: the order states neither the charge's price nor its price per billing period"
                        )]));
                    }
                };
                // One-time fees of a charge priced by its period come on top.
                if let (None, Some(one_time), Some(_)) =
                    (&line.service_period, &line.amount, &price)
                {
                    amount = plus(&amount, one_time).map_err(|e| refused(&what, e))?;
                }
                // A charge added again (a new rate plan of the same product) gets its own
                // schedule.
                let id = if self.obligations.iter().any(|o| o.line == line.id) {
                    format!("{}/{}/{}", self.contract, line.id, start)
                } else {
                    format!("{}/{}", self.contract, line.id)
                };
                let schedule = ratable_schedule(&id, &line.id, &amount, span)
                    .map_err(|e| refused(&what, e))?;
                self.obligations.push(Obligation {
                    line: line.id.clone(),
                    start,
                    end,
                    recurring: price,
                    standalone: line.standalone_price.clone(),
                    stopped: false,
                    rolling,
                    schedule,
                });
                let at = self.obligations.len() - 1;
                changes.note(at, "added", start, &Money::zero(self.currency.clone()));
                if policy == Policy::Prospective && line.standalone_price.is_some() {
                    self.reallocate(effective, changes)?;
                }
            }
        }
        Ok(())
    }

    /// A change of price or term by `added` from `effective`, the service now ending
    /// on `end`.
    #[allow(clippy::too_many_arguments)]
    fn modify(
        &mut self,
        at: usize,
        effective: NaiveDate,
        added: &Money,
        end: NaiveDate,
        policy: Policy,
        reason: &str,
        changes: &mut Changes,
    ) -> Result<(), Failure> {
        let o = &self.obligations[at];
        let what = format!("line {}", o.line);
        let rest = remaining(&o.schedule, effective).map_err(|e| refused(&what, e))?;
        let new_rest = plus(&rest, added).map_err(|e| refused(&what, e))?;
        let (schedule, catch_up) = match policy {
            Policy::Prospective => (
                place(&o.schedule, effective, end, &new_rest).map_err(|e| refused(&what, e))?,
                None,
            ),
            Policy::CatchUp => {
                let (done, _) =
                    split_at(&o.schedule.periods, effective).map_err(|e| refused(&what, e))?;
                let recognised = sum(&done, &o.schedule.total).map_err(|e| refused(&what, e))?;
                let total = plus(&recognised, &new_rest).map_err(|e| refused(&what, e))?;
                let would = ratable_schedule(
                    &o.schedule.id,
                    &o.line,
                    &total,
                    Period {
                        start: o.start,
                        end: end.max(effective),
                    },
                )
                .map_err(|e| refused(&what, e))?;
                let (would_done, mut rest) =
                    split_at(&would.periods, effective).map_err(|e| refused(&what, e))?;
                let would_recognised = sum(&would_done, &total).map_err(|e| refused(&what, e))?;
                let catch_up =
                    minus(&would_recognised, &recognised).map_err(|e| refused(&what, e))?;
                match rest.first_mut() {
                    Some(first) => {
                        first.amount =
                            plus(&first.amount, &catch_up).map_err(|e| refused(&what, e))?
                    }
                    None => rest.push(RevenuePeriod {
                        period: Period {
                            start: effective,
                            end: effective,
                        },
                        amount: catch_up.clone(),
                    }),
                }
                let mut periods = done;
                periods.extend(rest);
                let schedule = RevenueSchedule {
                    total,
                    periods,
                    held: None,
                    ..o.schedule.clone()
                };
                (schedule, Some(catch_up))
            }
        };
        self.obligations[at].end = end;
        self.set(at, schedule, reason, effective, changes);
        if let Some(catch_up) = catch_up {
            changes.catch_up(at, catch_up);
        }
        Ok(())
    }

    /// Charges that share a price pool what they have not recognised by `effective`
    /// and share it again by their standalone prices of what remains.
    fn reallocate(&mut self, effective: NaiveDate, changes: &mut Changes) -> Result<(), Failure> {
        let sharing: Vec<usize> = self
            .live()
            .filter(|i| self.obligations[*i].standalone.is_some())
            .filter(|i| self.obligations[*i].end >= effective)
            .collect();
        if sharing.len() < 2 {
            return Ok(());
        }
        let what = format!("contract {}", self.contract);
        let mut pool = Money::zero(self.currency.clone());
        let mut weights = Vec::new();
        for at in &sharing {
            let o = &self.obligations[*at];
            pool = plus(
                &pool,
                &remaining(&o.schedule, effective).map_err(|e| refused(&what, e))?,
            )
            .map_err(|e| refused(&what, e))?;
            // The standalone price of what remains: the price times the share of the
            // service left, by days.
            let left = (o.end - effective.max(o.start)).num_days() + 1;
            let all = (o.end - o.start).num_days() + 1;
            let ssp = o
                .standalone
                .clone()
                .unwrap_or_else(|| Money::zero(self.currency.clone()));
            let weight = ssp
                .amount
                .checked_mul(tenon_sdk::model::rust_decimal::Decimal::from(left))
                .and_then(|w| {
                    w.checked_div(tenon_sdk::model::rust_decimal::Decimal::from(all.max(1)))
                })
                .ok_or_else(|| {
                    Failure::Invalid(format!(
                        "{what}: standalone prices past what can be computed"
                    ))
                })?;
            weights.push(Money::new(
                weight.round_dp(self.currency.minor_digits()),
                self.currency.clone(),
            ));
        }
        let shares = allocate(&pool, &weights).map_err(|e| refused(&what, e))?;
        for (at, share) in sharing.into_iter().zip(shares) {
            let o = &self.obligations[at];
            let from = effective.max(o.start);
            let schedule =
                place(&o.schedule, from, o.end, &share).map_err(|e| refused(&what, e))?;
            if schedule != o.schedule {
                self.set(at, schedule, "reallocated", effective, changes);
            }
        }
        Ok(())
    }

    fn change_contract(
        &mut self,
        change: ContractChange,
        effective: NaiveDate,
        policy: Policy,
        changes: &mut Changes,
    ) -> Result<(), Failure> {
        let what = format!("contract {}", self.contract);
        match change {
            ContractChange::Suspended => {
                if self.suspended.is_some() {
                    return Err(Failure::Rejected(vec![format!(
                        "{what} is already suspended"
                    )]));
                }
                for at in self.live().collect::<Vec<_>>() {
                    let o = &self.obligations[at];
                    let rest = remaining(&o.schedule, effective).map_err(|e| refused(&what, e))?;
                    let (done, _) =
                        split_at(&o.schedule.periods, effective).map_err(|e| refused(&what, e))?;
                    let schedule = RevenueSchedule {
                        periods: done,
                        held: Some(rest),
                        ..o.schedule.clone()
                    };
                    self.set(at, schedule, "suspended", effective, changes);
                }
                self.suspended = Some(effective);
            }
            ContractChange::Resumed { extends_term } => {
                let since = self.suspended.ok_or_else(|| {
                    Failure::Rejected(vec![format!("{what} is not suspended: nothing to resume")])
                })?;
                if effective < since {
                    return Err(Failure::Rejected(vec![format!(
                        "{what} resumes on {effective}, before it was suspended ({since})"
                    )]));
                }
                let paused = (effective - since).num_days();
                let later = |day: NaiveDate| {
                    if extends_term {
                        day.checked_add_signed(tenon_sdk::model::chrono::TimeDelta::days(paused))
                            .unwrap_or(day)
                    } else {
                        day
                    }
                };
                for at in self.live().collect::<Vec<_>>() {
                    let o = &self.obligations[at];
                    let held = o
                        .schedule
                        .held
                        .clone()
                        .unwrap_or_else(|| Money::zero(self.currency.clone()));
                    let end = later(o.end);
                    let schedule =
                        place(&o.schedule, effective, end, &held).map_err(|e| refused(&what, e))?;
                    self.obligations[at].end = end;
                    self.set(at, schedule, "resumed", effective, changes);
                }
                self.term_end = self.term_end.map(later);
                self.suspended = None;
            }
            ContractChange::Renewed { term_months } => {
                let Some(term_end) = self.term_end else {
                    return Err(Failure::Rejected(vec![format!(
                        "{what} is evergreen: it has no term to renew"
                    )]));
                };
                if self.cancelled {
                    return Err(Failure::Rejected(vec![format!(
                        "{what} is cancelled: it does not renew"
                    )]));
                }
                let months = term_months.or(self.renewal_term_months).ok_or_else(|| {
                    Failure::Rejected(vec![format!(
                        "{what}: the renewal names no term and the contract has no renewal term"
                    )])
                })?;
                let start = term_end.succ_opt().unwrap_or(term_end);
                let new_end = months_after(start, months)?;
                for at in self.live().collect::<Vec<_>>() {
                    let o = &self.obligations[at];
                    // Charges that run to the term's end go on into the next.
                    if o.end != term_end {
                        continue;
                    }
                    let Some(price) = &o.recurring else {
                        return Err(Failure::Rejected(vec![format!(
                            "line {}: no price per billing period to renew it at",
                            o.line
                        )]));
                    };
                    let span = Period {
                        start,
                        end: new_end,
                    };
                    let added = consideration(&price.price, price.every_months, span)
                        .map_err(|e| refused(&what, e))?;
                    self.modify(at, start, &added, new_end, policy, "renewed", changes)?;
                }
                self.term_end = Some(new_end);
            }
            ContractChange::Cancelled { at_term_end } => {
                self.cancelled = true;
                if at_term_end {
                    return Ok(());
                }
                for at in self.live().collect::<Vec<_>>() {
                    let o = &self.obligations[at];
                    if o.end < effective && o.schedule.held.is_none() {
                        self.obligations[at].stopped = true;
                        continue;
                    }
                    let schedule = stop(o, effective).map_err(|e| refused(&what, e))?;
                    self.set(at, schedule, "cancelled", effective, changes);
                    let o = &mut self.obligations[at];
                    o.stopped = true;
                    o.end = o.end.min(day_before(effective));
                }
                self.term_end = self.term_end.map(|end| end.min(day_before(effective)));
            }
        }
        Ok(())
    }
}

/// A schedule that recognises nothing from `day` on (and holds nothing). With a
/// price per billing period, the billing system credits the service not given at that
/// price: the total becomes what was billed less that credit, and the cents between it
/// and the periods kept (their rounding) go into the last period kept.
fn stop(obligation: &Obligation, day: NaiveDate) -> Result<RevenueSchedule, RevenueError> {
    let schedule = &obligation.schedule;
    let (mut before, _) = split_at(&schedule.periods, day)?;
    let kept = sum(&before, &schedule.total)?;
    let total = match &obligation.recurring {
        Some(price) if day <= obligation.end && schedule.held.is_none() => {
            let unserved = Period {
                start: day.max(obligation.start),
                end: obligation.end,
            };
            let credit = consideration(&price.price, price.every_months, unserved)?;
            let total = minus(&schedule.total, &credit)?;
            let cents = minus(&total, &kept)?;
            match before.last_mut() {
                Some(last) => last.amount = plus(&last.amount, &cents)?,
                None if cents.amount.is_zero() => {}
                None => before.push(RevenuePeriod {
                    period: Period {
                        start: obligation.start,
                        end: obligation.start,
                    },
                    amount: cents,
                }),
            }
            total
        }
        _ => kept,
    };
    Ok(RevenueSchedule {
        total,
        periods: before,
        held: None,
        ..schedule.clone()
    })
}
