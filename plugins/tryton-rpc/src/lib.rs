//! Tryton's JSON-RPC, shared by the Tryton plugins (`tryton-sink`, `tryton-prices`).
//!
//! - [`parse_answer`]: a JSON-RPC answer's `result`, or its `error` classified
//!   ([`RpcError`], which becomes the plugin's [`Failure`]).
//! - [`decimal`] / [`decimal_text`]: Tryton's `Decimal` as its JSON-RPC carries it
//!   (`{"__class__": "Decimal", "decimal": "12.50"}`), exact both ways.
//! - [`Client`]: the connection to one
//!   database (config `url`, `database`, `user`, secret `tryton_password`), logged in
//!   on first use, with the user's context (company...) added to every call, and an
//!   expired session renewed once.

use base64::Engine as _;
use serde_json::{Value, json};
use tenon_sdk::Failure;

mod client;
pub use client::{Client, Session};

/// What a JSON-RPC call can come to.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcError {
    /// The session is not (or no longer) valid.
    Unauthorized,
    /// Tryton refused the data (`UserError`, `ValidationError`...): the message says why.
    Refused(String),
    /// Anything transient.
    Transient(String),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Failure {
        match e {
            RpcError::Unauthorized => {
                Failure::Retryable("Tryton refused the session twice; check the user".into())
            }
            RpcError::Refused(why) => Failure::Rejected(vec![format!("Tryton: {why}")]),
            RpcError::Transient(why) => Failure::Retryable(format!("Tryton: {why}")),
        }
    }
}

/// Read a JSON-RPC answer: its `result`, or its `error` classified.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Value, RpcError> {
    match status {
        401 | 403 => return Err(RpcError::Unauthorized),
        200..=299 => {}
        _ => {
            let text = format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim());
            return Err(if Failure::is_transient_status(status) {
                RpcError::Transient(text)
            } else {
                RpcError::Refused(text)
            });
        }
    }
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| RpcError::Transient(format!("the answer is not JSON: {e}")))?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        // `["UserError", ["message", "description"]]` or a plain string.
        let kind = error.get(0).and_then(Value::as_str).unwrap_or_default();
        let detail = match error.get(1) {
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            Some(other) => other.to_string(),
            None => error.to_string(),
        };
        return Err(match kind {
            "UserError"
            | "UserWarning"
            | "ValidationError"
            | "RequiredValidationError"
            | "DomainValidationError"
            | "SelectionValidationError"
            | "SizeValidationError"
            | "DigitsValidationError"
            | "ForbiddenCharValidationError" => RpcError::Refused(format!("{kind}: {detail}")),
            "AccessError" | "LoginException" | "RateLimitException" => RpcError::Unauthorized,
            _ => RpcError::Transient(format!("{kind}: {detail}")),
        });
    }
    Ok(answer.get("result").cloned().unwrap_or(Value::Null))
}

/// A Tryton `date` as JSON-RPC carries it, from an ISO 8601 date (`2026-11-01`);
/// `None` unless it is one.
pub fn date(iso: &str) -> Option<Value> {
    let day = tenon_sdk::model::chrono::NaiveDate::parse_from_str(iso, "%Y-%m-%d").ok()?;
    use tenon_sdk::model::chrono::Datelike as _;
    Some(json!({"__class__": "date", "year": day.year(), "month": day.month(), "day": day.day()}))
}

/// The ISO 8601 text of a Tryton `date` as JSON-RPC carries it; `None` for anything else.
pub fn date_text(value: &Value) -> Option<String> {
    if value.get("__class__").and_then(Value::as_str) != Some("date") {
        return None;
    }
    let part = |name: &str| value.get(name).and_then(Value::as_i64);
    Some(format!(
        "{:04}-{:02}-{:02}",
        part("year")?,
        part("month")?,
        part("day")?
    ))
}

/// A Tryton `Decimal` as JSON-RPC carries it.
pub fn decimal(text: impl ToString) -> Value {
    json!({"__class__": "Decimal", "decimal": text.to_string()})
}

/// The exact text of a Tryton `Decimal` as JSON-RPC carries it (`{"__class__":
/// "Decimal", "decimal": "1299.0000"}` is `1299.0000`), in plain notation (Python
/// may write `1.2E+3`). `None` for anything else, a JSON number included: it may
/// not be exact.
pub fn decimal_text(value: &Value) -> Option<String> {
    if value.get("__class__").and_then(Value::as_str) != Some("Decimal") {
        return None;
    }
    plain_decimal(value.get("decimal")?.as_str()?)
}

/// `text` as a plain decimal (`-12.50`, no exponent, no `+`), its digits and scale
/// kept; `None` unless it is a finite decimal number (Python's `Decimal` text:
/// optional sign, digits with an optional fraction, optional exponent).
pub fn plain_decimal(text: &str) -> Option<String> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits_only(whole) || !digits_only(fraction) {
        return None;
    }
    // All the digits, and where the point goes among them.
    let digits = format!("{whole}{fraction}");
    let point = i64::try_from(whole.len()).ok()? + i64::from(exponent);
    // Bounded, so that `1E+999999999` cannot make a gigabyte of zeros.
    if !(-1000..=1000).contains(&point) {
        return None;
    }
    let (whole, fraction) = if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).ok()?);
        ("0".to_owned(), format!("{zeros}{digits}"))
    } else {
        let point = usize::try_from(point).ok()?;
        if point >= digits.len() {
            let zeros = "0".repeat(point - digits.len());
            (format!("{digits}{zeros}"), String::new())
        } else {
            (digits[..point].to_owned(), digits[point..].to_owned())
        }
    };
    let whole = match whole.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let zero = whole == "0" && fraction.bytes().all(|b| b == b'0');
    let sign = if negative && !zero { "-" } else { "" };
    Some(match fraction.is_empty() {
        true => format!("{sign}{whole}"),
        false => format!("{sign}{whole}.{fraction}"),
    })
}

/// The `Authorization` header of a session: `Session base64(user:uid:session)`.
pub fn authorization(user: &str, uid: &Value, session: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{uid}:{session}"));
    format!("Session {token}")
}

/// A JSON-RPC request body.
pub fn request_body(id: u64, method: &str, params: &[Value]) -> Vec<u8> {
    json!({"id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

/// The JSON-RPC endpoint of a database: `<url>/<database>/rpc/`.
pub fn endpoint(url: &str, database: &str) -> String {
    format!("{}/{database}/rpc/", url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_read_exactly_in_plain_notation() {
        let d = |text: &str| decimal_text(&decimal(text));
        assert_eq!(d("1299.0000").as_deref(), Some("1299.0000"));
        assert_eq!(d("1299").as_deref(), Some("1299"));
        assert_eq!(d("-0.50").as_deref(), Some("-0.50"));
        assert_eq!(d("1.2E+3").as_deref(), Some("1200"));
        assert_eq!(d("1.25E+1").as_deref(), Some("12.5"));
        assert_eq!(d("5E-3").as_deref(), Some("0.005"));
        assert_eq!(d("1.2300E-1").as_deref(), Some("0.12300"));
        assert_eq!(d("-0.00").as_deref(), Some("0.00"));
        assert_eq!(d("+7").as_deref(), Some("7"));
        assert_eq!(d(".5").as_deref(), Some("0.5"));
        for bad in [
            "", "-", ".", "NaN", "Infinity", "1.2.3", "1e", "1E+99999", "12a", " 1",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        assert_eq!(decimal_text(&json!(12.5)), None, "floats are never read");
        assert_eq!(decimal_text(&json!({"decimal": "1"})), None);
    }

    #[test]
    fn sessions_and_requests_are_spelled_as_tryton_wants() {
        assert_eq!(
            authorization("admin", &json!(1), "abc"),
            format!(
                "Session {}",
                base64::engine::general_purpose::STANDARD.encode("admin:1:abc")
            )
        );
        assert_eq!(endpoint("http://h:8000/", "db"), "http://h:8000/db/rpc/");
        let body: Value = serde_json::from_slice(&request_body(3, "m", &[json!(1)])).unwrap();
        assert_eq!(body, json!({"id": 3, "method": "m", "params": [1]}));
    }
}
