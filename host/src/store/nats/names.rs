//! How Tenon's names become NATS names: subject tokens, key-value keys, stream,
//! bucket and consumer names.
//!
//! Queue names (`quote-to-order/erp-sink`), business keys and message ids may hold any
//! character; NATS allows fewer, and gives `.` a meaning. [`escape`] keeps
//! `[A-Za-z0-9_-]` and writes every other byte as `=HH`, which is valid in a subject
//! token, a key-value key and a consumer name alike, is reversible, and never
//! contains `.`, so `.` stays free as a separator.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// `text` with every byte outside `[A-Za-z0-9_-]` written as `=HH`; the empty string
/// becomes `=`.
pub(super) fn escape(text: &str) -> String {
    if text.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            let _ = write!(out, "={byte:02X}");
        }
    }
    out
}

/// A business key as one subject token: the first 16 hex digits of its sha256.
/// Messages of one key share the token, so "the first message of this key still
/// queued" is one lookup by subject; two keys sharing a token (one chance in 2^64)
/// are merely ordered together.
pub(super) fn key_token(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The last tokens of a claim's subject (no escaped text has a `~`).
const CLAIM: &str = "claim.~";

/// The names of everything one Tenon deployment keeps in NATS, under its prefix
/// (`[A-Za-z0-9_-]+`), so that several deployments (or tests) share a cluster.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The work-queue stream: one subject per queued message's queue, key and root.
    pub(super) fn work_stream(&self) -> String {
        format!("{}_WORK", self.prefix)
    }

    /// The event log stream.
    pub(super) fn event_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix)
    }

    /// A key-value bucket (`idem`, `outcomes`, `dead`, `retry`, `kv`, `kvusage`, `nodes`).
    pub(super) fn bucket(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }

    /// Every subject of the work stream.
    pub(super) fn work_subjects(&self) -> String {
        format!("{}.w.>", self.prefix)
    }

    /// Every message subject of one queue (its claims' subjects are longer).
    pub(super) fn queue_subjects(&self, queue: &str) -> String {
        format!("{}.w.{}.*.*", self.prefix, escape(queue))
    }

    /// The subject of a message of `queue` with business key `key`, descended from
    /// `root`.
    pub(super) fn message_subject(&self, queue: &str, key: &str, root: &str) -> String {
        format!(
            "{}.w.{}.{}.{}",
            self.prefix,
            escape(queue),
            key_token(key),
            escape(root)
        )
    }

    /// Every message of `queue` with the business key of `subject` (a message
    /// subject), and the key's claim there.
    pub(super) fn same_key(subject: &str) -> Option<String> {
        let (key, _root) = subject.rsplit_once('.')?;
        Some(format!("{key}.>"))
    }

    /// Every message of `key` in `queue`, and the key's claim there.
    pub(super) fn key_subjects(&self, queue: &str, key: &str) -> String {
        format!("{}.w.{}.{}.>", self.prefix, escape(queue), key_token(key))
    }

    /// The subject of a claim on `key` in `queue`: among the key's messages (so that
    /// per-key order holds them behind it), one token longer than a message subject
    /// (so that the queue's consumer, which takes `<queue>.*.*`, never delivers it).
    pub(super) fn claim_subject(&self, queue: &str, key: &str) -> String {
        format!(
            "{}.w.{}.{}.{CLAIM}",
            self.prefix,
            escape(queue),
            key_token(key)
        )
    }

    /// Whether `subject` is a claim's.
    pub(super) fn is_claim(subject: &str) -> bool {
        subject
            .strip_suffix(CLAIM)
            .is_some_and(|rest| rest.ends_with('.'))
    }

    /// Scratch subjects of the work stream, named by `nonce`, outside every queue
    /// (no escaped queue name has a `~`): for a check at start.
    pub(super) fn scratch_subjects(&self, nonce: &str) -> String {
        format!("{}.w.~probe.{nonce}", self.prefix)
    }

    /// Every message still queued that descends from `root`, in any queue.
    pub(super) fn lineage_subjects(&self, root: &str) -> String {
        format!("{}.w.*.*.{}", self.prefix, escape(root))
    }

    /// The durable consumer of a queue.
    pub(super) fn consumer(&self, queue: &str) -> String {
        format!("q_{}", escape(queue))
    }

    /// The subject events of `flow` are appended to.
    pub(super) fn event_subject(&self, flow: &str) -> String {
        format!("{}.ev.{}", self.prefix, escape(flow))
    }

    /// Every event subject.
    pub(super) fn event_subjects(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }
}

/// The text [`escape`] made `escaped` from.
pub(super) fn unescape(escaped: &str) -> Option<String> {
    if escaped == "=" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'=' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A key-value key made of parts, each escaped, joined by `.`.
pub(super) fn kv_key(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| escape(p))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_reversible_and_safe_everywhere() {
        for text in [
            "quote-to-order/erp-sink",
            "Q-00101",
            "0193a.1@billing",
            "é = * > . ",
            "",
        ] {
            let escaped = escape(text);
            assert!(
                escaped
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{escaped}"
            );
            assert_eq!(unescape(&escaped).as_deref(), Some(text));
        }
        assert_eq!(escape("a/b.c"), "a=2Fb=2Ec");
    }

    #[test]
    fn a_message_subject_names_its_queue_key_and_lineage() {
        let names = Names::new("t1");
        let subject = names.message_subject("f/erp-sink", "Q-1", "0193a");
        assert!(subject.starts_with("t1.w.f=2Ferp-sink."), "{subject}");
        let same = Names::same_key(&subject).unwrap();
        assert!(same.ends_with(".>") && same.starts_with("t1.w.f=2Ferp-sink."));
        assert_eq!(
            names.message_subject("f/erp-sink", "Q-1", "other")[..same.len() - 1],
            same[..same.len() - 1],
            "same key, another lineage: same key subject"
        );
        assert_eq!(same, names.key_subjects("f/erp-sink", "Q-1"));
    }

    #[test]
    fn a_claim_is_among_its_keys_messages_and_out_of_its_queues_consumer() {
        let names = Names::new("t1");
        let claim = names.claim_subject("f/erp-sink", "Q-1");
        let message = names.message_subject("f/erp-sink", "Q-1", "0193a");
        let same = Names::same_key(&message).unwrap();
        assert!(claim.starts_with(same.trim_end_matches('>')), "{claim}");
        let tokens = |s: &str| s.split('.').count();
        assert_eq!(tokens(&claim), tokens(&message) + 1, "{claim}");
        assert_eq!(
            tokens(&names.queue_subjects("f/erp-sink")),
            tokens(&message),
            "the consumer takes message subjects only"
        );
        assert!(Names::is_claim(&claim));
        assert!(!Names::is_claim(&message));
        assert!(!Names::is_claim(&names.message_subject("q", "k", "claim")));
    }
}
