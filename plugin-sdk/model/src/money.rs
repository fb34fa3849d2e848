//! Exact money: a decimal amount and an ISO 4217 currency.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 currency code: three ASCII upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("pattern" = "^[A-Za-z]{3}$")))]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

/// A string that is not an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO 4217 currency code (three letters, e.g. EUR)")]
pub struct CurrencyError(pub String);

impl Currency {
    /// Parse a code; lower case is accepted and normalised (Stripe sends `usd`).
    pub fn new(code: &str) -> Result<Self, CurrencyError> {
        let upper = code.trim().to_ascii_uppercase();
        if upper.len() == 3 && upper.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(upper))
        } else {
            Err(CurrencyError(code.to_owned()))
        }
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        &self.0
    }

    /// Digits after the decimal point in the currency's minor unit (ISO 4217):
    /// 0 for JPY, 3 for KWD, 2 for most.
    pub fn minor_digits(&self) -> u32 {
        match self.0.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            "CLF" | "UYW" => 4,
            _ => 2,
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::new(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Arithmetic on money that has no exact answer here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The two amounts are in different currencies.
    #[error("{0} and {1} are in different currencies")]
    MixedCurrencies(Money, Money),
    /// The result is beyond what a decimal holds (about 7.9e28).
    #[error("{0} is too large to compute with")]
    Overflow(Money),
}

/// How an amount finer than its currency's minor unit is rounded to it. The rule is
/// named wherever amounts are rounded (a mapping's config, the docs), so that every
/// system rounding the same amounts agrees to the cent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Rounding {
    /// Half to even ("banker's rounding", IEEE 754's default, Python's `decimal` and
    /// Tryton's default): 0.125 -> 0.12, 0.135 -> 0.14. Unbiased over many amounts.
    #[default]
    HalfEven,
    /// Half away from zero ("commercial rounding", SAP's default): 0.125 -> 0.13,
    /// -0.125 -> -0.13.
    HalfUp,
}

impl Rounding {
    /// The rule named by `half-even` or `half-up`.
    pub fn parse(name: &str) -> Option<Rounding> {
        match name.trim() {
            "half-even" => Some(Rounding::HalfEven),
            "half-up" => Some(Rounding::HalfUp),
            _ => None,
        }
    }

    fn strategy(self) -> RoundingStrategy {
        match self {
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
        }
    }
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rounding::HalfEven => "half-even",
            Rounding::HalfUp => "half-up",
        })
    }
}

/// An exact amount of money. Serialised as `{"amount": "12.50", "currency": "EUR"}`:
/// the amount is a decimal string so that no JSON reader turns it into a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Money {
    /// The amount, exact.
    pub amount: Decimal,
    /// Its currency.
    pub currency: Currency,
}

impl Money {
    /// Money from an amount and a currency.
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Money { amount, currency }
    }

    /// Zero in a currency.
    pub fn zero(currency: Currency) -> Self {
        Money {
            amount: Decimal::ZERO,
            currency,
        }
    }

    /// Money from an integer count of minor units (Stripe's `amount: 1999` is 19.99 USD).
    pub fn from_minor_units(units: i64, currency: Currency) -> Self {
        let amount = Decimal::new(units, currency.minor_digits());
        Money { amount, currency }
    }

    /// The amount rounded half-even to the currency's minor unit.
    pub fn rounded(&self) -> Money {
        self.rounded_by(Rounding::HalfEven)
    }

    /// The amount rounded to the currency's minor unit by `rule`, written with that
    /// many digits (`12.5 JPY` is `12` half-even; `0.125 EUR` is `0.13` half-up).
    pub fn rounded_by(&self, rule: Rounding) -> Money {
        let digits = self.currency.minor_digits();
        let mut amount = self.amount.round_dp_with_strategy(digits, rule.strategy());
        amount.rescale(digits);
        Money {
            amount,
            currency: self.currency.clone(),
        }
    }

    /// The amount written with at least the currency's minor digits (`4245.9 EUR`
    /// becomes `4245.90 EUR`); never rounds, so no value changes.
    pub fn with_currency_scale(mut self) -> Money {
        let digits = self.currency.minor_digits();
        if self.amount.scale() < digits {
            self.amount.rescale(digits);
        }
        self
    }

    /// The sum of two amounts in the same currency.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::MixedCurrencies(self.clone(), other.clone()));
        }
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or_else(|| MoneyError::Overflow(self.clone()))?;
        Ok(Money {
            amount,
            currency: self.currency.clone(),
        })
    }

    /// This amount times `factor` (a quantity, a number of periods).
    pub fn checked_mul(&self, factor: Decimal) -> Result<Money, MoneyError> {
        let amount = self
            .amount
            .checked_mul(factor)
            .ok_or_else(|| MoneyError::Overflow(self.clone()))?;
        Ok(Money {
            amount,
            currency: self.currency.clone(),
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_validated_and_normalised() {
        assert_eq!(Currency::new("usd").unwrap().code(), "USD");
        assert_eq!(
            Currency::new("EURO").unwrap_err().to_string(),
            "`EURO` is not an ISO 4217 currency code (three letters, e.g. EUR)"
        );
        assert!(serde_json::from_str::<Currency>("\"E1R\"").is_err());
    }

    #[test]
    fn minor_units_follow_the_currency() {
        let jpy = Money::from_minor_units(1999, Currency::new("JPY").unwrap());
        let kwd = Money::from_minor_units(1999, Currency::new("KWD").unwrap());
        let usd = Money::from_minor_units(1999, Currency::new("usd").unwrap());
        assert_eq!(jpy.amount.to_string(), "1999");
        assert_eq!(kwd.amount.to_string(), "1.999");
        assert_eq!(usd.amount.to_string(), "19.99");
    }

    #[test]
    fn currency_scale_pads_but_never_rounds() {
        let eur = Currency::new("EUR").unwrap();
        let padded = Money::new(Decimal::new(42459, 1), eur.clone()).with_currency_scale();
        assert_eq!(padded.to_string(), "4245.90 EUR");
        let precise = Money::new(Decimal::new(12345, 4), eur).with_currency_scale();
        assert_eq!(precise.to_string(), "1.2345 EUR");
    }

    #[test]
    fn adding_across_currencies_or_past_a_decimal_is_refused() {
        let eur = Money::from_minor_units(100, Currency::new("EUR").unwrap());
        let usd = Money::from_minor_units(100, Currency::new("USD").unwrap());
        assert_eq!(
            eur.checked_add(&usd).unwrap_err().to_string(),
            "1.00 EUR and 1.00 USD are in different currencies"
        );
        assert_eq!(eur.checked_add(&eur).unwrap().to_string(), "2.00 EUR");
        let huge = Money::new(Decimal::MAX, Currency::new("EUR").unwrap());
        assert!(matches!(
            huge.checked_add(&eur),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            huge.checked_mul(Decimal::TWO),
            Err(MoneyError::Overflow(_))
        ));
        assert_eq!(
            eur.checked_mul(Decimal::new(15, 1)).unwrap().to_string(),
            "1.500 EUR"
        );
    }

    #[test]
    fn each_rounding_rule_rounds_the_midpoint_its_own_way() {
        let eur = Currency::new("EUR").unwrap();
        let jpy = Currency::new("JPY").unwrap();
        let m = |amount: &str, c: &Currency| Money::new(amount.parse().unwrap(), c.clone());
        // (amount, half-even, half-up), worked by hand: only exact midpoints differ.
        for (amount, even, up) in [
            ("0.125", "0.12", "0.13"),
            ("0.135", "0.14", "0.14"),
            ("-0.125", "-0.12", "-0.13"),
            ("2.004", "2.00", "2.00"),
            ("2.006", "2.01", "2.01"),
            ("7", "7.00", "7.00"),
        ] {
            assert_eq!(
                m(amount, &eur)
                    .rounded_by(Rounding::HalfEven)
                    .amount
                    .to_string(),
                even
            );
            assert_eq!(
                m(amount, &eur)
                    .rounded_by(Rounding::HalfUp)
                    .amount
                    .to_string(),
                up
            );
        }
        assert_eq!(
            m("12.5", &jpy)
                .rounded_by(Rounding::HalfEven)
                .amount
                .to_string(),
            "12"
        );
        assert_eq!(
            m("12.5", &jpy)
                .rounded_by(Rounding::HalfUp)
                .amount
                .to_string(),
            "13"
        );
        assert_eq!(Rounding::parse("half-up"), Some(Rounding::HalfUp));
        assert_eq!(Rounding::parse("half-even"), Some(Rounding::HalfEven));
        assert_eq!(Rounding::parse("nearest"), None);
        assert_eq!(Rounding::HalfUp.to_string(), "half-up");
    }
}
