//! The syntax rules of CloudEvents attribute values, each a plain function answering
//! `Ok` or why not (a phrase that follows "got `value`: ").
//!
//! - [`uri_reference`] and [`absolute_uri`]: RFC 3986 sections 4.1 and 4.3 (`source`
//!   and `dataschema`);
//! - [`media_type`]: RFC 2046 media types as HTTP writes them (`datacontenttype`);
//! - [`timestamp`]: RFC 3339 `date-time` (`time`);
//! - [`string`]: the characters the CloudEvents `String` type allows (every string);
//! - [`attribute_name`]: lower-case letters and digits;
//! - [`header_value`]: a binary-mode header value, unquoted and percent-decoded.

use std::net::Ipv6Addr;

/// A `URI-reference` (RFC 3986 section 4.1): a URI, or a relative reference.
pub fn uri_reference(text: &str) -> Result<(), String> {
    uri(text, false)
}

/// An absolute URI (RFC 3986 section 4.3): a scheme, then `:` and the rest, with no
/// fragment.
pub fn absolute_uri(text: &str) -> Result<(), String> {
    uri(text, true)
}

fn uri(text: &str, absolute: bool) -> Result<(), String> {
    if let Some(c) = text.chars().find(|&c| !is_uri_char(c)) {
        return Err(format!(
            "{} is not allowed in a URI (percent-encode it)",
            describe(c)
        ));
    }
    percent_encodings(text)?;
    let scheme = scheme_length(text);
    if absolute && scheme.is_none() {
        return Err("no scheme (an absolute URI starts with one, like `https:`)".into());
    }
    let (rest, fragment) = match text.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (text, None),
    };
    if let Some(fragment) = fragment {
        if absolute {
            return Err("a fragment (`#...`) is not part of an absolute URI".into());
        }
        if fragment.contains(['#', '[', ']']) {
            return Err("the fragment holds `#`, `[` or `]`".into());
        }
    }
    let (hier, query) = match rest.split_once('?') {
        Some((hier, query)) => (hier, Some(query)),
        None => (rest, None),
    };
    if query.is_some_and(|q| q.contains(['[', ']'])) {
        return Err("the query holds `[` or `]`".into());
    }
    let hier = &hier[scheme.map_or(0, |n| n + 1)..];
    let path = match hier.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            authority(&after[..end])?;
            &after[end..]
        }
        None => {
            let first = hier.split('/').next().unwrap_or_default();
            if scheme.is_none() && first.contains(':') {
                return Err(
                    "a malformed scheme, or a relative reference whose first segment holds `:`"
                        .into(),
                );
            }
            hier
        }
    };
    if path.contains(['[', ']']) {
        return Err("the path holds `[` or `]`".into());
    }
    Ok(())
}

/// Unreserved, reserved (gen-delims and sub-delims) and `%`.
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// Every `%` starts `%XX`, two hexadecimal digits.
fn percent_encodings(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('%') {
        let ok = bytes
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        if !ok {
            return Err(format!(
                "`%` at byte {at} does not start a percent-encoding (`%` and two hexadecimal digits)"
            ));
        }
    }
    Ok(())
}

/// The length of a leading `scheme` (a letter, then letters, digits, `+`, `-`, `.`)
/// followed by `:`.
fn scheme_length(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if !bytes.first()?.is_ascii_alphabetic() {
        return None;
    }
    let length = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))?;
    (bytes[length] == b':').then_some(length)
}

/// `[ userinfo "@" ] host [ ":" port ]`, where host is an IP literal in brackets or a
/// registered name (which IPv4 addresses also are, syntactically).
fn authority(text: &str) -> Result<(), String> {
    let (userinfo, host_port) = match text.split_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, text),
    };
    if userinfo.is_some_and(|u| u.contains(['[', ']'])) || host_port.contains('@') {
        return Err("the authority's user information holds `@`, `[` or `]`".into());
    }
    let port = if let Some(literal) = host_port.strip_prefix('[') {
        let Some((inside, after)) = literal.split_once(']') else {
            return Err("an IP literal opened with `[` is not closed".into());
        };
        ip_literal(inside)?;
        match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("an IP literal is followed by something other than `:port`")?,
            ),
        }
    } else {
        if host_port.contains(['[', ']']) {
            return Err("the host holds `[` or `]` outside an IP literal".into());
        }
        host_port.split_once(':').map(|(_, port)| port)
    };
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err("the port is not a number".into());
    }
    Ok(())
}

/// `IPv6address / IPvFuture` (no zone identifiers: RFC 3986 has none).
fn ip_literal(text: &str) -> Result<(), String> {
    if let Some(future) = text.strip_prefix(['v', 'V']) {
        let valid = future.split_once('.').is_some_and(|(version, rest)| {
            !version.is_empty()
                && version.bytes().all(|b| b.is_ascii_hexdigit())
                && !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:".contains(c))
        });
        return if valid {
            Ok(())
        } else {
            Err(format!("`[{text}]` is not an IPvFuture literal"))
        };
    }
    text.parse::<Ipv6Addr>()
        .map(drop)
        .map_err(|_| format!("`[{text}]` is not an IPv6 address"))
}

/// A media type as RFC 2046 defines it (RFC 2045 section 5.1): `type/subtype`, then
/// `; name=value` parameters, each value a token or a quoted string. Whitespace is
/// allowed around the `;` only, as HTTP writes it (RFC 9110 section 8.3.1).
pub fn media_type(text: &str) -> Result<(), String> {
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default();
    let Some((kind, subtype)) = essence.trim_end_matches([' ', '\t']).split_once('/') else {
        return Err("no `/` between a type and a subtype".into());
    };
    if !is_token(kind) {
        return Err(format!("the type `{kind}` is not a token"));
    }
    if !is_token(subtype) {
        return Err(format!("the subtype `{subtype}` is not a token"));
    }
    // Quoted strings may hold `;`: rejoin what the split cut inside one.
    let mut pending = String::new();
    for part in parts {
        if !pending.is_empty() {
            pending.push(';');
        }
        pending.push_str(part);
        let quotes =
            pending.bytes().filter(|&b| b == b'"').count() - pending.matches("\\\"").count();
        if quotes % 2 == 1 {
            continue;
        }
        parameter(pending.trim_matches([' ', '\t']))?;
        pending.clear();
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err("a quoted parameter value is not closed".into())
    }
}

fn parameter(text: &str) -> Result<(), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!("the parameter `{text}` is not `name=value`"));
    };
    if !is_token(name) {
        return Err(format!("the parameter name `{name}` is not a token"));
    }
    if is_token(value) || is_quoted_string(value) {
        Ok(())
    } else {
        Err(format!(
            "the value of parameter `{name}` is neither a token nor a quoted string"
        ))
    }
}

/// RFC 2045 `token`: US-ASCII but space, controls and `tspecials`.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

fn is_quoted_string(text: &str) -> bool {
    let Some(inside) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| text.len() >= 2)
    else {
        return false;
    };
    let mut escaped = false;
    for b in inside.bytes() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return false,
            (false, b) if b == b'\t' || b == b' ' || b.is_ascii_graphic() => {}
            (false, _) => return false,
        }
    }
    !escaped
}

/// True when a media type declares JSON content: the subtype, parameters aside, is
/// `json` or ends with `+json` (the JSON event format's own test, section 3.1.1).
pub fn is_json(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    essence.split_once('/').is_some_and(|(_, subtype)| {
        let subtype = subtype.to_ascii_lowercase();
        subtype == "json" || subtype.ends_with("+json")
    })
}

/// An RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or `±HH:MM`
/// (`T` and `Z` in either case). The date must exist; second 60 (a leap second) only
/// at 23:59 UTC.
pub fn timestamp(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let shape = "not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`";
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(shape.into());
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't'))
    {
        return Err(shape.into());
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11..13), digits(14..16), digits(17..19))
    else {
        return Err(shape.into());
    };
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return Err(shape.into());
    }
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        let fraction = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if fraction == 0 {
            return Err("a `.` with no fraction of a second after it".into());
        }
        at += 1 + fraction;
    }
    let offset_minutes: i64 = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
            let (Some(h), Some(m)) = (digits(at + 1..at + 3), digits(at + 4..at + 6)) else {
                return Err(shape.into());
            };
            if h > 23 || m > 59 {
                return Err(format!("the offset {h:02}:{m:02} is out of range"));
            }
            let minutes = i64::from(h * 60 + m);
            if *sign == b'+' { minutes } else { -minutes }
        }
        None => return Err("no time zone offset (`Z` or `±HH:MM`)".into()),
        _ => return Err(shape.into()),
    };
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} does not exist"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days {
        return Err(format!("day {day} does not exist in {year}-{month:02}"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day"
        ));
    }
    if second == 60 {
        let utc = (i64::from(hour * 60 + minute) - offset_minutes).rem_euclid(24 * 60);
        if utc != 23 * 60 + 59 {
            return Err("a leap second (second 60) happens only at 23:59 UTC".into());
        }
    }
    Ok(())
}

/// The characters of a CloudEvents `String`: any but the control characters
/// (U+0000-U+001F, U+007F-U+009F) and the Unicode noncharacters (U+FDD0-U+FDEF and
/// the last two code points of each plane). Unpaired surrogates cannot reach a Rust
/// string: a JSON body holding one does not parse.
pub fn string(text: &str) -> Result<(), String> {
    match text.chars().find(|&c| is_disallowed(c)) {
        Some(c) => Err(format!(
            "{} is not allowed in a CloudEvents string",
            describe(c)
        )),
        None => Ok(()),
    }
}

fn is_disallowed(c: char) -> bool {
    let n = u32::from(c);
    c.is_control() || (0xFDD0..=0xFDEF).contains(&n) || (n & 0xFFFE) == 0xFFFE
}

fn describe(c: char) -> String {
    let n = u32::from(c);
    if c.is_control() {
        format!("the control character U+{n:04X}")
    } else if is_disallowed(c) {
        format!("the noncharacter U+{n:04X}")
    } else if c == ' ' {
        "a space".into()
    } else if c.is_ascii() {
        format!("`{c}`")
    } else {
        format!("`{c}` (U+{n:04X})")
    }
}

/// An attribute name: lower-case ASCII letters and digits, at least one. Longer than
/// 20 characters is allowed (the limit is a SHOULD).
pub fn attribute_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err("an attribute name is lower-case letters (a-z) and digits (0-9) only".into())
    }
}

/// The value of a binary-mode `ce-` header: double-quoted strings unescaped (RFC 9110
/// section 5.6.4, for older senders), then one round of percent-decoding; the bytes
/// must be UTF-8 (which refuses overlong encodings such as `%C0%A0`).
pub fn header_value(raw: &str) -> Result<String, String> {
    let mut unquoted = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            unquoted.push(c);
            continue;
        }
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(escaped) => unquoted.push(escaped),
                    None => return Err("a `\\` ends the value".into()),
                },
                Some(c) => unquoted.push(c),
                None => return Err("a double-quoted string is not closed".into()),
            }
        }
    }
    let bytes = unquoted.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes
                .get(at + 1..at + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| {
                    u8::from_str_radix(h, 16)
                        .ok()
                        .filter(|_| !h.starts_with('+'))
                });
            let Some(byte) = hex else {
                return Err(format!(
                    "`%` at byte {at} does not start a percent-encoding (`%` and two hexadecimal digits)"
                ));
            };
            decoded.push(byte);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| "its percent-decoded bytes are not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_references_of_every_shape_are_accepted() {
        for ok in [
            "https://github.com/cloudevents",
            "mailto:cncf-wg-serverless@lists.cncf.io",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "cloudevents/spec/pull/123",
            "/sensors/tn-1234567/alerts",
            "1-555-123-4567",
            "//example.com/a",
            "http://user:pw@example.com:8080/a/b?c=d&e#f",
            "http://[::1]:8080/",
            "http://[2001:db8::7]/c=GB?objectClass?one",
            "http://[v7.fe80::1]/",
            "http://192.0.2.16:80/",
            "a%20b",
            "?q=1",
            "#fragment",
            ".",
            "./a:b",
            "tel:+1-816-555-1212",
            "http://example.com:/",
        ] {
            assert_eq!(uri_reference(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn broken_uri_references_are_refused_with_the_reason() {
        for (bad, why) in [
            ("a b", "a space is not allowed in a URI (percent-encode it)"),
            ("a\"b", "`\"` is not allowed in a URI (percent-encode it)"),
            (
                "é",
                "`é` (U+00E9) is not allowed in a URI (percent-encode it)",
            ),
            (
                "a%2",
                "`%` at byte 1 does not start a percent-encoding (`%` and two hexadecimal digits)",
            ),
            (
                "1:x",
                "a malformed scheme, or a relative reference whose first segment holds `:`",
            ),
            (
                "http://[::1/",
                "an IP literal opened with `[` is not closed",
            ),
            ("http://[::g]/", "`[::g]` is not an IPv6 address"),
            (
                "http://[fe80::1%25eth0]/",
                "`[fe80::1%25eth0]` is not an IPv6 address",
            ),
            ("http://a:b/", "the port is not a number"),
            (
                "http://a@b@c/",
                "the authority's user information holds `@`, `[` or `]`",
            ),
            ("/a[b]", "the path holds `[` or `]`"),
            ("?a]", "the query holds `[` or `]`"),
            ("#a#b", "the fragment holds `#`, `[` or `]`"),
        ] {
            assert_eq!(uri_reference(bad), Err(why.into()), "{bad}");
        }
    }

    #[test]
    fn an_absolute_uri_has_a_scheme_and_no_fragment() {
        assert_eq!(absolute_uri("https://example.com/schema.json"), Ok(()));
        assert_eq!(absolute_uri("urn:example:schema"), Ok(()));
        assert_eq!(
            absolute_uri("/schema.json"),
            Err("no scheme (an absolute URI starts with one, like `https:`)".into())
        );
        assert_eq!(
            absolute_uri("https://example.com/s#defs"),
            Err("a fragment (`#...`) is not part of an absolute URI".into())
        );
    }

    #[test]
    fn media_types_follow_rfc_2046() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=\"utf-8\"",
            "text/plain; charset=us-ascii; format=flowed",
            "application/vnd.apache.thrift.binary",
            "multipart/form-data; boundary=\"a;b\\\"c\"",
            "image/svg+xml",
        ] {
            assert_eq!(media_type(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("json", "no `/` between a type and a subtype"),
            ("", "no `/` between a type and a subtype"),
            ("application/", "the subtype `` is not a token"),
            (
                "appli cation/json",
                "the type `appli cation` is not a token",
            ),
            (
                "application/json; charset",
                "the parameter `charset` is not `name=value`",
            ),
            ("application/json;", "the parameter `` is not `name=value`"),
            (
                "text/plain; a=b c",
                "the value of parameter `a` is neither a token nor a quoted string",
            ),
            (
                "text/plain; a=\"b",
                "a quoted parameter value is not closed",
            ),
        ] {
            assert_eq!(media_type(bad), Err(why.into()), "{bad:?}");
        }
    }

    #[test]
    fn json_media_types_are_json_or_plus_json() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(is_json("text/json"));
        assert!(!is_json("application/xml"));
        assert!(!is_json("application/jsonl"));
        assert!(!is_json("json"));
    }

    #[test]
    fn timestamps_follow_rfc_3339() {
        for ok in [
            "2018-04-05T17:31:00Z",
            "2018-04-05t17:31:00z",
            "2018-04-05T17:31:00.123456789+02:00",
            "2020-02-29T00:00:00-00:00",
            "1998-12-31T23:59:60Z",
            "1998-12-31T15:59:60.123-08:00",
            "2000-02-29T23:59:59+23:59",
        ] {
            assert_eq!(timestamp(ok), Ok(()), "{ok}");
        }
        let shape = "not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`";
        for (bad, why) in [
            ("2018-04-05 17:31:00Z", shape),
            ("2018-04-05", shape),
            ("2018-4-05T17:31:00Z", shape),
            ("2018-04-05T17:31Z", shape),
            (
                "2018-04-05T17:31:00",
                "no time zone offset (`Z` or `±HH:MM`)",
            ),
            ("2018-04-05T17:31:00+0200", shape),
            ("2018-04-05T17:31:00Zx", shape),
            (
                "2018-04-05T17:31:00.Z",
                "a `.` with no fraction of a second after it",
            ),
            ("2018-13-05T17:31:00Z", "month 13 does not exist"),
            ("2019-02-29T17:31:00Z", "day 29 does not exist in 2019-02"),
            ("1900-02-29T17:31:00Z", "day 29 does not exist in 1900-02"),
            ("2018-04-31T17:31:00Z", "day 31 does not exist in 2018-04"),
            ("2018-04-05T24:00:00Z", "24:00:00 is not a time of day"),
            ("2018-04-05T17:60:00Z", "17:60:00 is not a time of day"),
            (
                "2018-04-05T17:31:00+24:00",
                "the offset 24:00 is out of range",
            ),
            (
                "1998-12-31T23:58:60Z",
                "a leap second (second 60) happens only at 23:59 UTC",
            ),
            (
                "1998-12-31T23:59:60+01:00",
                "a leap second (second 60) happens only at 23:59 UTC",
            ),
        ] {
            assert_eq!(timestamp(bad), Err(why.into()), "{bad}");
        }
    }

    #[test]
    fn strings_refuse_control_characters_and_noncharacters() {
        assert_eq!(string("Euro € 😀 \u{A0}"), Ok(()));
        for (bad, why) in [
            ("a\nb", "the control character U+000A"),
            ("a\u{0}b", "the control character U+0000"),
            ("\u{7F}", "the control character U+007F"),
            ("\u{85}", "the control character U+0085"),
            ("\u{9F}", "the control character U+009F"),
            ("\u{FDD0}", "the noncharacter U+FDD0"),
            ("\u{FFFE}", "the noncharacter U+FFFE"),
            ("\u{10FFFF}", "the noncharacter U+10FFFF"),
        ] {
            assert_eq!(
                string(bad),
                Err(format!("{why} is not allowed in a CloudEvents string")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn attribute_names_are_lower_case_alphanumerics_of_any_length() {
        assert_eq!(attribute_name("comexampleextension1"), Ok(()));
        assert_eq!(attribute_name("averyveryverylongextensionname"), Ok(()));
        for bad in ["", "comExample", "com-example", "com_example", "é"] {
            assert!(attribute_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values_are_unquoted_then_percent_decoded() {
        assert_eq!(
            header_value("Euro%20%E2%82%AC%20%F0%9F%98%80").unwrap(),
            "Euro € 😀"
        );
        // Lower-case hex digits and needless encodings are accepted.
        assert_eq!(header_value("%e2%82%ac%41").unwrap(), "€A");
        assert_eq!(header_value("plain/value:1").unwrap(), "plain/value:1");
        // Older senders quote instead of encoding.
        assert_eq!(header_value(r#""a \"b\" c""#).unwrap(), r#"a "b" c"#);
        assert_eq!(header_value(r#"x"y z"%25"#).unwrap(), "xy z%");
        assert_eq!(
            header_value("%C0%A0"),
            Err("its percent-decoded bytes are not UTF-8".into())
        );
        assert_eq!(
            header_value("100%"),
            Err(
                "`%` at byte 3 does not start a percent-encoding (`%` and two hexadecimal digits)"
                    .into()
            )
        );
        assert_eq!(
            header_value("%+1"),
            Err(
                "`%` at byte 0 does not start a percent-encoding (`%` and two hexadecimal digits)"
                    .into()
            )
        );
        assert_eq!(
            header_value("\"open"),
            Err("a double-quoted string is not closed".into())
        );
    }
}
