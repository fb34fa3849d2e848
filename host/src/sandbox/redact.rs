//! Secret redaction: a secret's value never reaches anything the host records.
//!
//! A plugin granted a secret can leak it in plain text, or encoded so that a
//! plain-text search misses it: `invalid(base64(secret))`, a hex dump, a URL. The
//! [`Redactor`] of a plugin version knows every granted value in the forms a plugin is
//! likely to produce, and finds them all in one pass (Aho-Corasick):
//!
//! | form | e.g. for `p@ss w/rd!` |
//! |---|---|
//! | as is | `p@ss w/rd!` |
//! | base64, standard and URL-safe, at any alignment inside a longer encoding | `cEBzcyB3L3JkIQ` |
//! | hex, lower and upper case | `704073732077...` |
//! | percent-encoded (RFC 3986, `encodeURIComponent`, forms; either hex case) | `p%40ss%20w%2Frd!`, `p%40ss+w%2Frd%21` |
//! | JSON-escaped (with or without `\/`) | `p@ss w\/rd!` |
//!
//! Text the host records (logs, errors, receipts, audit targets, stderr) is redacted:
//! each match becomes ``[redacted secret `name`]``. Messages a plugin emits are not
//! edited (that would hand a damaged order to the next system): a message carrying a
//! secret is refused whole ([`Redactor::find`]).
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] are refused when a plugin is loaded: they
//! would match ordinary text everywhere and cannot be told apart from it.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::borrow::Cow;

/// Shortest secret value the host accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 8;

/// Why secrets cannot be redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    /// A value too short to be told apart from ordinary text.
    #[error(
        "secret `{name}` is {len} bytes long; secrets must be at least {MIN_SECRET_LEN} bytes to be told apart from ordinary text"
    )]
    TooShort {
        /// The secret's name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The search automaton could not be built.
    #[error("cannot build the secret redactor: {0}")]
    Automaton(String),
}

/// Finds and hides the values of one plugin version's secrets.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Every form of every secret; `None` when the plugin has no secrets.
    automaton: Option<AhoCorasick>,
    /// The secret's name for each pattern of the automaton, and whether the pattern
    /// is a base64 form (whose neighbouring characters carry bits of the secret too).
    owners: Vec<(String, bool)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.owners.len())
            .finish()
    }
}

/// RFC 3986: everything but the unreserved characters.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// JavaScript's `encodeURIComponent` also leaves `!'()*` alone.
const URI_COMPONENT: &AsciiSet = &RFC3986
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*');
/// `application/x-www-form-urlencoded` leaves `*-._` alone (and writes space as `+`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

impl Redactor {
    /// A redactor for these `(name, value)` secrets. A value shorter than
    /// [`MIN_SECRET_LEN`] is refused.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Redactor, RedactError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut owners = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_SECRET_LEN {
                return Err(RedactError::TooShort {
                    name: name.to_owned(),
                    len: value.len(),
                });
            }
            for (form, base64) in forms(value) {
                if !patterns.contains(&form) {
                    patterns.push(form);
                    owners.push((name.to_owned(), base64));
                }
            }
        }
        if patterns.is_empty() {
            return Ok(Redactor::default());
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| RedactError::Automaton(e.to_string()))?;
        Ok(Redactor {
            automaton: Some(automaton),
            owners,
        })
    }

    /// `text` with every form of every secret replaced by ``[redacted secret `name`]``.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(automaton) = &self.automaton else {
            return Cow::Borrowed(text);
        };
        if automaton.find(text).is_none() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for m in automaton.find_iter(text) {
            if m.start() < copied {
                continue; // inside the tail taken by the previous base64 match
            }
            let (name, base64) = self
                .owners
                .get(m.pattern().as_usize())
                .map_or(("?", false), |(n, b)| (n.as_str(), *b));
            out.push_str(&text[copied..m.start()]);
            out.push_str("[redacted secret `");
            out.push_str(name);
            out.push_str("`]");
            copied = m.end();
            if base64 {
                // The character after a base64 form still carries bits of the secret,
                // and padding may follow: take them too.
                let rest = &text.as_bytes()[copied..];
                let mut take = usize::from(rest.first().is_some_and(|b| is_base64(*b)));
                take += rest[take..]
                    .iter()
                    .take(2)
                    .take_while(|b| **b == b'=')
                    .count();
                copied += take;
            }
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    /// The name of a secret whose value (in any form) `bytes` carry, if any.
    pub fn find(&self, bytes: &[u8]) -> Option<&str> {
        let found = self.automaton.as_ref()?.find(bytes)?;
        self.owners
            .get(found.pattern().as_usize())
            .map(|(name, _)| name.as_str())
    }

    /// Whether there is anything to redact.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// The forms of `value` a plugin is likely to produce, each a string to look for and
/// whether it is a base64 form.
fn forms(value: &str) -> Vec<(String, bool)> {
    let bytes = value.as_bytes();
    let mut base64 = Vec::new();
    // Base64 inside a longer encoding: the secret's bytes start at one of three
    // alignments; only the characters whose six bits all come from the secret are
    // the same whatever surrounds it.
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for shift in 0..3usize {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            let start = (8 * shift).div_ceil(6);
            let end = (8 * (shift + bytes.len())) / 6;
            if let Some(inner) = encoded.get(start..end) {
                base64.push((inner.to_owned(), true));
            }
        }
    }
    let mut text = vec![value.to_owned()];
    let hex = hex::encode(bytes);
    text.push(hex.to_ascii_uppercase());
    text.push(hex);
    for set in [RFC3986, URI_COMPONENT] {
        let encoded = utf8_percent_encode(value, set).to_string();
        text.push(lower_escapes(&encoded));
        text.push(encoded);
    }
    let form = utf8_percent_encode(value, FORM)
        .to_string()
        .replace(' ', "+");
    text.push(lower_escapes(&form));
    text.push(form);
    if let Ok(json) = serde_json::to_string(value) {
        let json = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or(&json)
            .to_owned();
        text.push(json.replace('/', "\\/"));
        text.push(json);
    }
    // The exact forms first: a pattern found in both lists keeps its exact meaning.
    let mut out: Vec<(String, bool)> = text.into_iter().map(|t| (t, false)).collect();
    out.extend(base64);
    out.retain(|(f, _)| !f.is_empty());
    out
}

/// `%2F` -> `%2f`: the same percent-encoding with lower-case hex digits.
fn lower_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|d| d.to_ascii_lowercase()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const NAME: &str = "erp_token";
    const VALUE: &str = "p@ss w/rd!+~é-4f9a";

    fn redactor() -> Redactor {
        Redactor::new([(NAME, VALUE)]).unwrap()
    }

    const REDACTED: &str = "[redacted secret `erp_token`]";

    #[test]
    fn every_encoded_form_is_redacted() {
        let r = redactor();
        let b64 = |engine: &dyn Fn(&[u8]) -> String, prefix: &str| {
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(VALUE.as_bytes());
            bytes.extend_from_slice(b"-tail");
            engine(&bytes)
        };
        let std = |b: &[u8]| STANDARD.encode(b);
        let url = |b: &[u8]| URL_SAFE.encode(b);
        let cases: Vec<(&str, String)> = vec![
            ("as is", format!("token={VALUE};")),
            ("base64", STANDARD.encode(VALUE)),
            ("base64, no padding", STANDARD_NO_PAD.encode(VALUE)),
            ("base64 URL-safe", URL_SAFE.encode(VALUE)),
            ("base64 after 1 byte", b64(&std, "x")),
            ("base64 after 2 bytes", b64(&std, "xy")),
            ("base64 after 3 bytes", b64(&std, "xyz")),
            ("base64 URL-safe after 1 byte", b64(&url, "x")),
            ("base64 URL-safe after 2 bytes", b64(&url, "xy")),
            ("basic auth", STANDARD.encode(format!("user:{VALUE}"))),
            ("hex", hex::encode(VALUE)),
            ("HEX", hex::encode_upper(VALUE)),
            (
                "percent-encoded",
                utf8_percent_encode(VALUE, RFC3986).to_string(),
            ),
            (
                "percent-encoded, lower-case",
                lower_escapes(&utf8_percent_encode(VALUE, RFC3986).to_string()),
            ),
            (
                "encodeURIComponent",
                utf8_percent_encode(VALUE, URI_COMPONENT).to_string(),
            ),
            (
                "form-encoded",
                format!(
                    "a=1&token={}",
                    utf8_percent_encode(VALUE, FORM)
                        .to_string()
                        .replace(' ', "+")
                ),
            ),
            (
                "JSON-escaped",
                serde_json::json!({ "t": VALUE }).to_string(),
            ),
            (
                "JSON with escaped slashes",
                serde_json::to_string(VALUE).unwrap().replace('/', "\\/"),
            ),
        ];
        for (form, text) in cases {
            let out = r.redact(&text);
            assert!(out.contains(REDACTED), "{form}: `{text}` -> `{out}`");
            assert!(
                r.find(text.as_bytes()) == Some(NAME),
                "{form}: not found in bytes"
            );
        }
    }

    #[test]
    fn a_base64_form_goes_whole_with_its_padding() {
        let r = redactor();
        for engine in [&STANDARD, &URL_SAFE] {
            let encoded = engine.encode(VALUE);
            assert_eq!(r.redact(&format!("<{encoded}>")), format!("<{REDACTED}>"));
        }
    }

    #[test]
    fn text_without_a_secret_is_untouched() {
        let r = redactor();
        for text in ["", "plain text", "p@ss w/rd", "cEBzcw", "7040"] {
            assert!(
                matches!(r.redact(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
            assert_eq!(r.find(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn each_match_names_its_secret() {
        let r = Redactor::new([("a", "first-secret-1"), ("b", "second-secret-2")]).unwrap();
        assert_eq!(
            r.redact("first-secret-1 and second-secret-2"),
            "[redacted secret `a`] and [redacted secret `b`]"
        );
        assert_eq!(r.find(hex::encode("second-secret-2").as_bytes()), Some("b"));
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = Redactor::new([("pin", "1234")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret `pin` is 4 bytes long; secrets must be at least 8 bytes to be told apart from ordinary text"
        );
        assert!(Redactor::new([("ok", "12345678")]).is_ok());
    }

    #[test]
    fn no_secrets_redact_nothing() {
        let r = Redactor::new([]).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.redact("anything"), "anything");
        assert_eq!(r.find(b"anything"), None);
    }
}
