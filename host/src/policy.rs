//! Policies without code: the config's expressions, in CEL (the Common Expression
//! Language, through the `cel` crate), compiled once when the config loads and
//! evaluated on messages.
//!
//! An expression sees the message: `kind`, `key`, `headers` (a map), `body` (the
//! decoded body) and, for a canonical kind, the body again under its model's name in
//! lower camel case (`order` for `OrderAccepted`, `quote`, `invoice`, `creditNote`...).
//! Amounts are exact decimals written as strings: compare them with `double(...)`.
//!
//! ```text
//! double(order.total.amount) > 50000.0 || order.lines.exists(l, double(l.discount.percent) > 20.0)
//! ```

use std::fmt;
use std::sync::Arc;

/// The names an expression may use besides its models' names.
const MESSAGE_NAMES: [&str; 4] = ["kind", "key", "headers", "body"];

/// A compiled expression with its source text.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<cel::Program>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

/// The variable naming canonical model `model` (`CreditNote` -> `creditNote`).
fn model_name(model: &str) -> String {
    let mut chars = model.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect::<String>()
    })
}

/// Every name an expression may use.
fn known_names() -> Vec<String> {
    let mut names: Vec<String> = MESSAGE_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for (_, model) in tenon_model::CANONICAL {
        let name = model_name(model);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

impl Expression {
    /// Compile `source`. The error names the position in the expression (line and
    /// column, from 1) and what is wrong there, or a name the expression uses that
    /// no message has.
    pub fn compile(source: &str) -> Result<Expression, String> {
        let program = cel::Program::compile(source).map_err(|errors| {
            errors
                .errors
                .iter()
                .map(|e| {
                    let (line, column) = e.pos;
                    format!("at {}:{}: {}", line.max(1), column + 1, e.msg)
                })
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let known = known_names();
        let references = program.references();
        let mut unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|v| !known.iter().any(|k| k == v))
            .collect();
        unknown.sort_unstable();
        if let Some(name) = unknown.first() {
            return Err(format!(
                "unknown name `{name}`: an expression sees {} and the message under its model's name ({})",
                MESSAGE_NAMES.join(", "),
                known[MESSAGE_NAMES.len()..].join(", ")
            ));
        }
        Ok(Expression {
            source: source.to_owned(),
            program: Arc::new(program),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression holds for `message`; an error when it cannot be
    /// evaluated on it (a field the message lacks, a type mismatch) or does not
    /// give a boolean.
    pub fn holds(&self, message: &Facts) -> Result<bool, String> {
        let mut context = cel::Context::default();
        let body = cel::to_value(&message.body).map_err(|e| e.to_string())?;
        context.add_variable_from_value("kind", message.kind.clone());
        context.add_variable_from_value("key", message.key.clone());
        let headers: std::collections::HashMap<String, String> =
            message.headers.iter().cloned().collect();
        context.add_variable_from_value("headers", headers);
        if let Some((_, model)) = tenon_model::CANONICAL
            .iter()
            .find(|(kind, _)| *kind == message.kind)
        {
            context.add_variable_from_value(model_name(model), body.clone());
        }
        context.add_variable_from_value("body", body);
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "`{}` gave {other:?}, not true or false",
                self.source
            )),
            Err(e) => Err(format!("`{}`: {e}", self.source)),
        }
    }
}

/// What an expression sees of a message.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Its kind.
    pub kind: String,
    /// Its business key.
    pub key: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body, decoded (JSON or MessagePack).
    pub body: serde_json::Value,
}

impl Facts {
    /// The facts of a message with this encoding and body; an error when the body
    /// cannot be decoded.
    pub fn of(
        kind: &str,
        key: &str,
        headers: &[(String, String)],
        content_type: &str,
        body: &[u8],
    ) -> Result<Facts, String> {
        let body = tenon_model::Encoding::from_content_type(content_type)
            .map_err(|e| e.to_string())?
            .decode::<serde_json::Value>(body)
            .map_err(|e| format!("the body cannot be decoded: {e}"))?;
        Ok(Facts {
            kind: kind.to_owned(),
            key: key.to_owned(),
            headers: headers.to_vec(),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(total: &str, discount: &str) -> Facts {
        Facts {
            kind: "OrderAccepted".into(),
            key: "Q-1".into(),
            headers: vec![("tenon-entity".into(), "DE01".into())],
            body: json!({
                "total": {"amount": total, "currency": "EUR"},
                "discount": {"percent": discount},
                "customer": {"country": "DE"},
            }),
        }
    }

    #[test]
    fn thresholds_read_the_model_by_name() {
        let rule = Expression::compile(
            "double(order.total.amount) > 50000.0 || double(order.discount.percent) > 20.0",
        )
        .unwrap();
        assert!(rule.holds(&order("60000.00", "0")).unwrap());
        assert!(rule.holds(&order("100.00", "25")).unwrap());
        assert!(!rule.holds(&order("100.00", "5")).unwrap());
        let route = Expression::compile(
            r#"headers["tenon-entity"] == "DE01" && body.customer.country in ["DE", "AT"]"#,
        )
        .unwrap();
        assert!(route.holds(&order("1", "0")).unwrap());
    }

    #[test]
    fn bad_expressions_are_named_with_their_position() {
        let error = Expression::compile("double(order.total.amount) >").unwrap_err();
        assert!(error.starts_with("at 1:"), "{error}");
        let error = Expression::compile("ordr.total > 1").unwrap_err();
        assert!(error.starts_with("unknown name `ordr`"), "{error}");
        assert!(error.contains("order"), "{error}");
    }

    #[test]
    fn evaluation_errors_are_errors_not_answers() {
        let missing = Expression::compile("double(order.nothing.amount) > 1.0").unwrap();
        assert!(missing.holds(&order("1", "0")).is_err());
        let not_bool = Expression::compile("order.total.amount").unwrap();
        let error = not_bool.holds(&order("1", "0")).unwrap_err();
        assert!(error.contains("not true or false"), "{error}");
    }
}
