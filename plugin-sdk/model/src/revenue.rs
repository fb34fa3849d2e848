//! Revenue recognition arithmetic: ratable monthly schedules and allocation by
//! standalone selling price, exact in the currency's minor units.
//!
//! Both work on integer minor units (cents, yen, fils): every share is truncated
//! toward zero and the remainder goes to the last period (or the last obligation), so
//! the parts always sum to the whole, to the minor unit.

use crate::{Money, Period, RevenuePeriod, RevenueSchedule};
use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;

/// Why a schedule or an allocation cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevenueError {
    /// The period ends before it starts.
    #[error("service period {start} .. {end} ends before it starts")]
    BackwardsPeriod {
        /// First day.
        start: NaiveDate,
        /// Last day.
        end: NaiveDate,
    },
    /// The amount has more digits than the currency's minor unit.
    #[error("{0} has more decimals than its currency's minor unit")]
    SubMinorAmount(Money),
    /// Amounts in different currencies.
    #[error("{0} and {1} are in different currencies")]
    MixedCurrencies(Money, Money),
    /// No obligation, or standalone prices that sum to zero.
    #[error("standalone selling prices must be positive and sum above zero")]
    NoStandalonePrices,
    /// An amount too large for the arithmetic.
    #[error("{0} is too large to schedule")]
    Overflow(Money),
}

/// `money` as an integer count of minor units, refusing sub-minor amounts.
pub fn minor_units(money: &Money) -> Result<i128, RevenueError> {
    let digits = money.currency.minor_digits();
    let scaled = money
        .amount
        .checked_mul(Decimal::from(10i64.pow(digits)))
        .ok_or_else(|| RevenueError::Overflow(money.clone()))?;
    if scaled.fract() != Decimal::ZERO {
        return Err(RevenueError::SubMinorAmount(money.clone()));
    }
    scaled
        .trunc()
        .to_string()
        .parse::<i128>()
        .map_err(|_| RevenueError::Overflow(money.clone()))
}

fn from_minor(units: i128, like: &Money) -> Result<Money, RevenueError> {
    let digits = like.currency.minor_digits();
    let amount = Decimal::try_from_i128_with_scale(units, digits)
        .map_err(|_| RevenueError::Overflow(like.clone()))?;
    Ok(Money::new(amount, like.currency.clone()))
}

/// `total * weight / whole`, truncated toward zero, in exact integer arithmetic.
fn share(total: i128, weight: i128, whole: i128, of: &Money) -> Result<i128, RevenueError> {
    total
        .checked_mul(weight)
        .map(|product| product / whole)
        .ok_or_else(|| RevenueError::Overflow(of.clone()))
}

/// The calendar-month pieces of a period: first and last may be partial.
pub fn month_pieces(period: Period) -> Result<Vec<Period>, RevenueError> {
    if period.end < period.start {
        return Err(RevenueError::BackwardsPeriod {
            start: period.start,
            end: period.end,
        });
    }
    let mut pieces = Vec::new();
    let mut start = period.start;
    loop {
        let month_end = last_day_of_month(start);
        if month_end >= period.end {
            pieces.push(Period {
                start,
                end: period.end,
            });
            return Ok(pieces);
        }
        pieces.push(Period {
            start,
            end: month_end,
        });
        start = month_end.succ_opt().unwrap_or(month_end);
    }
}

fn last_day_of_month(day: NaiveDate) -> NaiveDate {
    let (y, m) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|first| first.pred_opt())
        .unwrap_or(day)
}

fn days(period: &Period) -> i128 {
    i128::from((period.end - period.start).num_days() + 1)
}

fn days_in_month(day: NaiveDate) -> i128 {
    i128::from(last_day_of_month(day).day())
}

/// A month, in the unit pieces of months are weighed in: a piece's weight is its days
/// times this over its month's days, exact since every month length (28..=31) divides
/// it.
const COMMON: i128 = 28 * 29 * 30 * 31;

/// A period's length in months times [`COMMON`]: whole calendar months count one, a
/// partial month its share by days. The measure schedules are made by.
fn month_weight(period: Period) -> Result<i128, RevenueError> {
    Ok(month_pieces(period)?
        .iter()
        .map(|p| days(p) * COMMON / days_in_month(p.start))
        .sum())
}

/// The consideration for `span` at `price` per `every_months` months: the price times
/// the span's length in months (measured as schedules measure them: whole calendar
/// months count one, a partial month its share by days) over `every_months`, rounded
/// half-even to the currency's minor unit. Twelve months at 100.00 a month is 1200.00;
/// 2025-01-15 .. 2025-01-31 at 31.00 a month is 17.00.
pub fn consideration(
    price: &Money,
    every_months: u32,
    span: Period,
) -> Result<Money, RevenueError> {
    let units = minor_units(price)?;
    let num = units
        .checked_mul(month_weight(span)?)
        .ok_or_else(|| RevenueError::Overflow(price.clone()))?;
    let den = i128::from(every_months.max(1)) * COMMON;
    let (q, r) = (num / den, num % den);
    // Half-even on the remainder's magnitude.
    let twice = r.abs() * 2;
    let away = twice > den || (twice == den && q % 2 != 0);
    let rounded = if away { q + num.signum() } else { q };
    from_minor(rounded, price)
}

/// A schedule's periods cut at `day`: those before it, and those from it on. A
/// period holding `day` is split by days, the part before it earning its share of
/// the period's amount truncated toward zero, the part from `day` the rest.
pub fn split_at(
    periods: &[RevenuePeriod],
    day: NaiveDate,
) -> Result<(Vec<RevenuePeriod>, Vec<RevenuePeriod>), RevenueError> {
    let mut before = Vec::new();
    let mut after = Vec::new();
    for p in periods {
        if p.period.end < day {
            before.push(p.clone());
        } else if p.period.start >= day {
            after.push(p.clone());
        } else {
            let units = minor_units(&p.amount)?;
            let head = Period {
                start: p.period.start,
                end: day.pred_opt().unwrap_or(day),
            };
            let tail = Period {
                start: day,
                end: p.period.end,
            };
            let earned = share(units, days(&head), days(&p.period), &p.amount)?;
            before.push(RevenuePeriod {
                period: head,
                amount: from_minor(earned, &p.amount)?,
            });
            after.push(RevenuePeriod {
                period: tail,
                amount: from_minor(units - earned, &p.amount)?,
            });
        }
    }
    Ok((before, after))
}

/// The sum of `periods`, in `like`'s currency (zero for none).
pub fn sum(periods: &[RevenuePeriod], like: &Money) -> Result<Money, RevenueError> {
    let mut units = 0i128;
    for p in periods {
        if p.amount.currency != like.currency {
            return Err(RevenueError::MixedCurrencies(
                like.clone(),
                p.amount.clone(),
            ));
        }
        units = units
            .checked_add(minor_units(&p.amount)?)
            .ok_or_else(|| RevenueError::Overflow(like.clone()))?;
    }
    from_minor(units, like)
}

/// A ratable monthly schedule of `total` over `period`: every whole calendar month
/// recognises the same amount; a partial first or last month recognises its share of
/// a month by days (10 of 31 days is 10/31 of a month). Shares are truncated to the
/// minor unit; the remainder goes to the last period, so the periods sum to `total`
/// exactly.
pub fn ratable_schedule(
    id: &str,
    source_line: &str,
    total: &Money,
    period: Period,
) -> Result<RevenueSchedule, RevenueError> {
    let units = minor_units(total)?;
    let pieces = month_pieces(period)?;
    let weights: Vec<i128> = pieces
        .iter()
        .map(|p| days(p) * COMMON / days_in_month(p.start))
        .collect();
    let whole: i128 = weights.iter().sum();
    let mut periods = Vec::with_capacity(pieces.len());
    let mut given = 0i128;
    for (i, (piece, weight)) in pieces.iter().zip(&weights).enumerate() {
        let amount = if i + 1 == pieces.len() {
            units - given
        } else {
            share(units, *weight, whole, total)?
        };
        given += amount;
        periods.push(RevenuePeriod {
            period: *piece,
            amount: from_minor(amount, total)?,
        });
    }
    Ok(RevenueSchedule {
        id: id.to_owned(),
        source_line: source_line.to_owned(),
        total: from_minor(units, total)?,
        periods,
        revision: 1,
        change: None,
        held: None,
    })
}

/// Split `total` over obligations in proportion to their standalone selling prices.
/// Shares are truncated to the minor unit; the remainder goes to the last obligation.
pub fn allocate(total: &Money, standalone: &[Money]) -> Result<Vec<Money>, RevenueError> {
    let units = minor_units(total)?;
    let mut prices = Vec::with_capacity(standalone.len());
    for price in standalone {
        if price.currency != total.currency {
            return Err(RevenueError::MixedCurrencies(total.clone(), price.clone()));
        }
        let p = minor_units(price)?;
        if p < 0 {
            return Err(RevenueError::NoStandalonePrices);
        }
        prices.push(p);
    }
    let whole = prices
        .iter()
        .try_fold(0i128, |sum, p| sum.checked_add(*p))
        .ok_or_else(|| RevenueError::Overflow(total.clone()))?;
    if whole == 0 {
        return Err(RevenueError::NoStandalonePrices);
    }
    let mut out = Vec::with_capacity(prices.len());
    let mut given = 0i128;
    for (i, p) in prices.iter().enumerate() {
        let amount = if i + 1 == prices.len() {
            units - given
        } else {
            share(units, *p, whole, total)?
        };
        given += amount;
        out.push(from_minor(amount, total)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;

    fn money(amount: &str, currency: &str) -> Money {
        Money::new(amount.parse().unwrap(), Currency::new(currency).unwrap())
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn period(start: &str, end: &str) -> Period {
        Period {
            start: date(start),
            end: date(end),
        }
    }

    fn amounts(schedule: &RevenueSchedule) -> Vec<String> {
        schedule
            .periods
            .iter()
            .map(|p| p.amount.amount.to_string())
            .collect()
    }

    fn sum(schedule: &RevenueSchedule) -> Decimal {
        schedule.periods.iter().map(|p| p.amount.amount).sum()
    }

    #[test]
    fn whole_months_share_alike_and_the_remainder_goes_last() {
        let s = ratable_schedule(
            "s",
            "l",
            &money("1000.00", "EUR"),
            period("2025-01-01", "2025-03-31"),
        )
        .unwrap();
        assert_eq!(amounts(&s), ["333.33", "333.33", "333.34"]);
        assert_eq!(sum(&s), s.total.amount);
    }

    #[test]
    fn a_mid_month_start_prorates_first_and_last_month_by_days() {
        // 2025-01-15 .. 2025-04-14: 17/31 of January, February, March, 14/30 of April.
        let s = ratable_schedule(
            "s",
            "l",
            &money("1200.00", "USD"),
            period("2025-01-15", "2025-04-14"),
        )
        .unwrap();
        let p: Vec<(String, String)> = s
            .periods
            .iter()
            .map(|p| (p.period.start.to_string(), p.period.end.to_string()))
            .collect();
        assert_eq!(
            p,
            [
                ("2025-01-15".into(), "2025-01-31".into()),
                ("2025-02-01".into(), "2025-02-28".into()),
                ("2025-03-01".into(), "2025-03-31".into()),
                ("2025-04-01".into(), "2025-04-14".into()),
            ]
        );
        // Months: 17/31 + 1 + 1 + 14/30 = 3.01505...; 1200 over that is 398.0026 a
        // month: 218.2598 for January (truncated to 218.25), 398.00 for each whole
        // month, and April takes the rest (185.74 and the remainder).
        assert_eq!(amounts(&s), ["218.25", "398.00", "398.00", "185.75"]);
        assert_eq!(sum(&s), "1200.00".parse::<Decimal>().unwrap());
    }

    #[test]
    fn leap_february_counts_29_days() {
        let leap = ratable_schedule(
            "s",
            "l",
            &money("290.00", "EUR"),
            period("2024-02-01", "2024-02-29"),
        )
        .unwrap();
        assert_eq!(amounts(&leap), ["290.00"]);
        // Half of a leap February and half of March: 15/29 vs 16/31 of a month.
        let s = ratable_schedule(
            "s",
            "l",
            &money("100.00", "EUR"),
            period("2024-02-15", "2024-03-16"),
        )
        .unwrap();
        assert_eq!(amounts(&s), ["50.05", "49.95"]);
    }

    #[test]
    fn zero_and_three_decimal_currencies_stay_in_their_minor_units() {
        let jpy = ratable_schedule(
            "s",
            "l",
            &money("100000", "JPY"),
            period("2025-01-01", "2025-03-31"),
        )
        .unwrap();
        assert_eq!(amounts(&jpy), ["33333", "33333", "33334"]);
        let kwd = ratable_schedule(
            "s",
            "l",
            &money("10.000", "KWD"),
            period("2025-01-01", "2025-03-31"),
        )
        .unwrap();
        assert_eq!(amounts(&kwd), ["3.333", "3.333", "3.334"]);
        assert_eq!(
            ratable_schedule(
                "s",
                "l",
                &money("1.5", "JPY"),
                period("2025-01-01", "2025-01-31")
            )
            .unwrap_err()
            .to_string(),
            "1.5 JPY has more decimals than its currency's minor unit"
        );
    }

    #[test]
    fn a_year_at_a_mid_month_start_sums_exactly() {
        let s = ratable_schedule(
            "s",
            "l",
            &money("9999.99", "EUR"),
            period("2024-03-10", "2025-03-09"),
        )
        .unwrap();
        assert_eq!(s.periods.len(), 13);
        assert_eq!(sum(&s), "9999.99".parse::<Decimal>().unwrap());
        let whole: Vec<&RevenuePeriod> = s.periods[1..12].iter().collect();
        assert!(whole.windows(2).all(|w| w[0].amount == w[1].amount));
    }

    #[test]
    fn a_backwards_period_is_refused() {
        assert_eq!(
            ratable_schedule(
                "s",
                "l",
                &money("1", "EUR"),
                period("2025-02-01", "2025-01-01")
            )
            .unwrap_err()
            .to_string(),
            "service period 2025-02-01 .. 2025-01-01 ends before it starts"
        );
    }

    #[test]
    fn allocation_follows_standalone_prices() {
        // A 900 bundle of a licence (SSP 800) and support (SSP 400): 600 and 300.
        let shares = allocate(
            &money("900.00", "EUR"),
            &[money("800.00", "EUR"), money("400.00", "EUR")],
        )
        .unwrap();
        assert_eq!(shares, [money("600.00", "EUR"), money("300.00", "EUR")]);
        // Three equal SSPs of 100.00: 33.33, 33.33, 33.34.
        let shares = allocate(
            &money("100.00", "EUR"),
            &[money("1", "EUR"), money("1", "EUR"), money("1", "EUR")],
        )
        .unwrap();
        let total: Decimal = shares.iter().map(|m| m.amount).sum();
        assert_eq!(shares[2], money("33.34", "EUR"));
        assert_eq!(total, "100.00".parse::<Decimal>().unwrap());
        assert!(matches!(
            allocate(&money("1", "EUR"), &[money("1", "USD")]),
            Err(RevenueError::MixedCurrencies(..))
        ));
        assert_eq!(
            allocate(&money("1", "EUR"), &[]).unwrap_err(),
            RevenueError::NoStandalonePrices
        );
    }

    #[test]
    fn consideration_is_the_price_times_the_months_of_service() {
        let month = money("100.00", "USD");
        // A year: 1200.00. A quarterly price over six months: two quarters.
        assert_eq!(
            consideration(&month, 1, period("2025-01-01", "2025-12-31")).unwrap(),
            money("1200.00", "USD")
        );
        assert_eq!(
            consideration(
                &money("300.00", "USD"),
                3,
                period("2025-01-01", "2025-06-30")
            )
            .unwrap(),
            money("600.00", "USD")
        );
        // 17 of January's 31 days at 31.00 a month: 17.00.
        assert_eq!(
            consideration(
                &money("31.00", "USD"),
                1,
                period("2025-01-15", "2025-01-31")
            )
            .unwrap(),
            money("17.00", "USD")
        );
        // Half of a leap February (15 of 29 days) at 10.00: 5.1724... -> 5.17; the
        // same days of a common February are 15/28: 5.357... -> 5.36.
        assert_eq!(
            consideration(
                &money("10.00", "EUR"),
                1,
                period("2024-02-01", "2024-02-15")
            )
            .unwrap(),
            money("5.17", "EUR")
        );
        assert_eq!(
            consideration(
                &money("10.00", "EUR"),
                1,
                period("2025-02-01", "2025-02-15")
            )
            .unwrap(),
            money("5.36", "EUR")
        );
        // Half a cent rounds to even: 1 day of a 30-day month at 0.15 is 0.005.
        assert_eq!(
            consideration(&money("0.15", "EUR"), 1, period("2025-04-01", "2025-04-01")).unwrap(),
            money("0.00", "EUR")
        );
        assert_eq!(
            consideration(&money("0.45", "EUR"), 1, period("2025-04-01", "2025-04-01")).unwrap(),
            money("0.02", "EUR")
        );
    }

    #[test]
    fn a_schedule_splits_at_a_day_by_days() {
        let s = ratable_schedule(
            "s",
            "l",
            &money("310.00", "EUR"),
            period("2025-01-01", "2025-01-31"),
        )
        .unwrap();
        // The 10th: 9 of 31 days before it, 90.00; the rest 220.00.
        let (before, after) = split_at(&s.periods, date("2025-01-10")).unwrap();
        assert_eq!(
            (before[0].period, before[0].amount.clone()),
            (period("2025-01-01", "2025-01-09"), money("90.00", "EUR"))
        );
        assert_eq!(
            (after[0].period, after[0].amount.clone()),
            (period("2025-01-10", "2025-01-31"), money("220.00", "EUR"))
        );
        // On a period's first day nothing is split; past the end all is before.
        let (before, after) = split_at(&s.periods, date("2025-01-01")).unwrap();
        assert_eq!((before.len(), after.len()), (0, 1));
        let (before, _) = split_at(&s.periods, date("2025-02-01")).unwrap();
        assert_eq!(
            super::sum(&before, &s.total).unwrap(),
            money("310.00", "EUR")
        );
    }

    #[test]
    fn amounts_past_the_arithmetic_are_refused_not_wrapped() {
        // 7e26 EUR is 7e28 cents: it fits a decimal, but allocating it by a price of
        // as many cents multiplies 7e28 by 7e28 (4.9e57), past i128 (1.7e38).
        let huge = money("700000000000000000000000000", "EUR");
        assert!(matches!(
            allocate(&huge, &[huge.clone(), huge.clone()]),
            Err(RevenueError::Overflow(_))
        ));
        // Past a decimal once scaled to cents (7.9e28 is the largest decimal).
        let larger = money("7900000000000000000000000000", "EUR");
        assert!(matches!(
            ratable_schedule("s", "l", &larger, period("2024-01-01", "2024-12-31")),
            Err(RevenueError::Overflow(_))
        ));
    }
}
