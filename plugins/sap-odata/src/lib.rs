//! What the SAP S/4HANA plugins (`sap-sink`, `sap-simulation`) share: OData V2 error
//! bodies and the failure class each answer stands for, checks of values against
//! their `Edm` types (`MaxLength`, decimal precision and scale), OData V2 dates, and
//! the client of an OData service with SAP's CSRF token flow ([`client`]).

use tenon_sdk::Failure;
use tenon_sdk::model::chrono::{DateTime, NaiveDate};
use tenon_sdk::model::rust_decimal::Decimal;

pub mod client;

/// `text` if it fits `max` characters, else a reason naming `what`.
pub fn fits(what: &str, text: &str, max: usize, reasons: &mut Vec<String>) -> String {
    if text.chars().count() > max {
        reasons.push(format!(
            "{what} `{text}` is longer than SAP's {max} characters"
        ));
    }
    text.to_owned()
}

/// An `Edm.Decimal` with at most `scale` decimals and `precision` digits in all,
/// written as OData V2 JSON writes it (a string, trailing zeros dropped); a value
/// that does not fit is a reason naming `what`.
pub fn decimal(
    what: &str,
    value: Decimal,
    precision: u32,
    scale: u32,
    reasons: &mut Vec<String>,
) -> String {
    let normal = value.normalize();
    let integer_digits = normal
        .trunc()
        .abs()
        .to_string()
        .trim_start_matches('0')
        .len() as u32;
    if normal.scale() > scale || integer_digits > precision - scale {
        reasons.push(format!(
            "{what} {normal} does not fit SAP's Edm.Decimal({precision}, {scale})"
        ));
    }
    normal.to_string()
}

/// A date as an OData V2 `Edm.DateTime` in JSON: `/Date(<ms since 1970, UTC>)/`.
pub fn odata_date(date: NaiveDate) -> String {
    let ms = date
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default();
    format!("/Date({ms})/")
}

/// The date of an OData V2 `Edm.DateTime` (`/Date(1492041600000)/`) or
/// `Edm.DateTimeOffset` (`/Date(1492041600000+0000)/`) in JSON; `None` for anything else.
pub fn parse_odata_date(text: &str) -> Option<NaiveDate> {
    let inner = text.strip_prefix("/Date(")?.strip_suffix(")/")?;
    // The milliseconds, then an optional offset (`+0000`, `-0130`) that does not move
    // the instant: the milliseconds are UTC.
    let end = inner
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map_or(inner.len(), |(i, _)| i);
    let ms: i64 = inner[..end].parse().ok()?;
    DateTime::from_timestamp_millis(ms).map(|t| t.date_naive())
}

/// The failure an SAP answer stands for, with every message of its OData error body.
pub fn failure(status: u16, body: &[u8]) -> Failure {
    let messages = odata_messages(body);
    let text = if messages.is_empty() {
        format!(
            "SAP HTTP {status}: {}",
            String::from_utf8_lossy(body).trim()
        )
    } else {
        format!("SAP HTTP {status}: {}", messages.join("; "))
    };
    match status {
        _ if Failure::is_transient_status(status) => Failure::Retryable(text),
        401 => Failure::Invalid(format!("{text} (check the user and password secrets)")),
        _ if messages.is_empty() => Failure::Rejected(vec![text]),
        _ => Failure::Rejected(messages.iter().map(|m| format!("SAP: {m}")).collect()),
    }
}

/// Every message of an OData V2 error body: the main one, then the details that add
/// something (`innererror.errordetails`), each with its code.
pub fn odata_messages(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let error = &value["error"];
    let mut out = Vec::new();
    let line = |code: &serde_json::Value, message: &serde_json::Value| {
        let message = message["value"]
            .as_str()
            .or_else(|| message.as_str())
            .unwrap_or_default();
        match code.as_str() {
            Some(code) if !code.is_empty() => format!("{message} ({code})"),
            _ => message.to_owned(),
        }
    };
    if error.is_object() {
        out.push(line(&error["code"], &error["message"]));
    }
    for detail in error["innererror"]["errordetails"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = line(&detail["code"], &detail["message"]);
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_dates_both_ways() {
        let day = NaiveDate::from_ymd_opt(2017, 4, 13).unwrap();
        assert_eq!(odata_date(day), "/Date(1492041600000)/");
        assert_eq!(parse_odata_date("/Date(1492041600000)/"), Some(day));
        assert_eq!(parse_odata_date("/Date(1492041600000+0000)/"), Some(day));
        assert_eq!(
            parse_odata_date("/Date(-86400000)/").unwrap().to_string(),
            "1969-12-31"
        );
        assert_eq!(parse_odata_date("2017-04-13"), None);
        assert_eq!(parse_odata_date("/Date(abc)/"), None);
    }

    #[test]
    fn decimals_fit_or_say_why() {
        let mut reasons = Vec::new();
        assert_eq!(
            decimal("q", "2.500".parse().unwrap(), 15, 3, &mut reasons),
            "2.5"
        );
        assert!(reasons.is_empty());
        decimal("q", "1.2345".parse().unwrap(), 15, 3, &mut reasons);
        decimal("q", "1234567890123".parse().unwrap(), 15, 3, &mut reasons);
        assert_eq!(
            reasons,
            [
                "q 1.2345 does not fit SAP's Edm.Decimal(15, 3)",
                "q 1234567890123 does not fit SAP's Edm.Decimal(15, 3)"
            ]
        );
    }
}
