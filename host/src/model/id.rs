//! Message ids and their grammar, in one place.
//!
//! | id | what |
//! |---|---|
//! | `0193a…` (a UUIDv7) | a message as ingress accepted it: the root of its lineage |
//! | `<id>.<n>` | the `n`th output of the step that handled `<id>` |
//! | `<id>@<flow>` | `<id>` entering flow `<flow>` as an event it subscribes to |
//! | `<id>.undo` | the undoing of the delivery of `<id>` (a saga's compensation) |
//!
//! Ids are derived, never random past ingress, so a re-run after a crash or a replay
//! produces the same ids, and a sink's idempotency key (the id) stays the same.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A message id; see the module documentation for its grammar.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// A new root id (ingress): a UUIDv7, so ids sort by arrival.
    pub fn root() -> MessageId {
        MessageId(uuid::Uuid::now_v7().to_string())
    }

    /// The smallest root id made at `ms` (ms since the Unix epoch): root ids sort
    /// by the time they were made.
    pub fn earliest_at(ms: u64) -> MessageId {
        let uuid = uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid();
        MessageId(uuid.to_string())
    }

    /// The id of the `n`th output of the step that handles this message.
    pub fn child(&self, n: usize) -> MessageId {
        MessageId(format!("{}.{n}", self.0))
    }

    /// The id of the compensation that undoes this message's delivery.
    pub fn undoing(&self) -> MessageId {
        MessageId(format!("{}.undo", self.0))
    }

    /// The id of this message entering `flow`, which subscribes to its kind.
    pub fn entering(&self, flow: &str) -> MessageId {
        MessageId(format!("{}@{flow}", self.0))
    }

    /// Whether this is a copy of a message entering another flow as an event.
    pub fn is_event_copy(&self) -> bool {
        self.0.contains('@')
    }

    /// Whether this message's lineage already entered `flow` (so it must not again:
    /// no loops between subscribing flows).
    pub fn has_entered(&self, flow: &str) -> bool {
        self.0
            .split('@')
            .skip(1)
            .any(|part| part.split('.').next() == Some(flow))
    }

    /// The flow this message entered last as an event, when it is such a copy and no
    /// step handled it since.
    pub fn entered(&self) -> Option<&str> {
        let (_, flow) = self.0.rsplit_once('@')?;
        (!flow.contains('.')).then_some(flow)
    }

    /// Whether this message is `root` or descends from it.
    pub fn descends_from(&self, root: &MessageId) -> bool {
        match self.0.strip_prefix(root.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('@'),
            None => false,
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for MessageId {
    fn from(id: String) -> MessageId {
        MessageId(id)
    }
}

impl From<&str> for MessageId {
    fn from(id: &str) -> MessageId {
        MessageId(id.to_owned())
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for MessageId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_in_one_place() {
        let root = MessageId::from("r1");
        let order = root.child(0);
        assert_eq!(order, "r1.0");
        let event = order.entering("erp-de");
        assert_eq!(event, "r1.0@erp-de");
        assert!(event.is_event_copy() && !order.is_event_copy());
        assert_eq!(event.entered(), Some("erp-de"));
        assert_eq!(event.child(1).entered(), None, "a step handled it since");
        assert!(event.child(1).has_entered("erp-de"));
        assert!(!event.has_entered("erp"), "a flow name is matched whole");
        assert!(!event.has_entered("erp-d"));
        for id in [&root, &order, &event] {
            assert!(id.descends_from(&root), "{id}");
        }
        assert!(!MessageId::from("r10.0").descends_from(&root));
    }
}
