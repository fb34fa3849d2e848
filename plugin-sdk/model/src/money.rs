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
        let amount = self.amount.round_dp_with_strategy(
            self.currency.minor_digits(),
            RoundingStrategy::MidpointNearestEven,
        );
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

    /// The sum of two amounts, or `None` when their currencies differ.
    pub fn checked_add(&self, other: &Money) -> Option<Money> {
        (self.currency == other.currency).then(|| Money {
            amount: self.amount + other.amount,
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
    fn adding_across_currencies_is_refused() {
        let eur = Money::from_minor_units(100, Currency::new("EUR").unwrap());
        let usd = Money::from_minor_units(100, Currency::new("USD").unwrap());
        assert!(eur.checked_add(&usd).is_none());
        assert_eq!(eur.checked_add(&eur).unwrap().to_string(), "2.00 EUR");
    }
}
