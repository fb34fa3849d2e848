//! The lease index of the queue: which message of each queue a worker may take next.
//!
//! Held in memory, rebuilt from the queue table when the database opens, and changed
//! only after a commit (by the committer) or by a lease. A message may be leased when
//! it is the first of its business key still in its queue (per-key order), is not
//! leased already, and is due (its retry time has come). Those messages are kept
//! ready in sequence order, the others where they will come from (behind their key,
//! or in time order until due), so a lease takes the oldest ready message in
//! O(log n) whatever the length of the queue. A key claimed in a queue (for a
//! step run ahead of it: see [`Index::claim`]) has no takeable message there until
//! the claim is released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// What the index knows of a queued message.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    not_before_ms: u64,
}

/// A message leased to a worker.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    expires: Instant,
    /// Its completion is on its way to the disk: never given to anyone else.
    completing: bool,
}

/// One queue's index.
#[derive(Debug, Default)]
struct QueueIndex {
    /// Every message in the queue, by sequence.
    entries: BTreeMap<u64, Entry>,
    /// The messages of each business key, in sequence order.
    keys: HashMap<String, BTreeSet<u64>>,
    /// First of their key, not leased, due: what a lease takes, oldest first.
    ready: BTreeSet<u64>,
    /// First of their key, not leased, not yet due: (due time, sequence).
    delayed: BTreeSet<(u64, u64)>,
    /// First of their key and leased.
    leased: HashMap<u64, Held>,
    /// Keys claimed for a step run ahead of the queue, with their holder and the
    /// claim's token: their messages wait.
    claimed: HashMap<String, (String, u64)>,
}

/// Why a completion was refused: the lease timed out and the message went to
/// another worker, or is no longer there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stale;

impl QueueIndex {
    /// Make `seq` (the first of its key) takeable: ready, or delayed until due.
    fn schedule(&mut self, seq: u64, now_ms: u64) {
        let Some(entry) = self.entries.get(&seq) else {
            return;
        };
        if entry.not_before_ms <= now_ms {
            self.ready.insert(seq);
        } else {
            self.delayed.insert((entry.not_before_ms, seq));
        }
    }

    fn unschedule(&mut self, seq: u64) {
        self.ready.remove(&seq);
        self.leased.remove(&seq);
        if let Some(entry) = self.entries.get(&seq) {
            self.delayed.remove(&(entry.not_before_ms, seq));
        }
    }

    /// Whether `seq` is the first message of `key` and may be taken (unclaimed).
    fn is_head(&self, seq: u64, key: &str) -> bool {
        !self.claimed.contains_key(key)
            && self
                .keys
                .get(key)
                .and_then(|seqs| seqs.first())
                .is_some_and(|first| *first == seq)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.claimed.is_empty()
    }
}

/// The index of every queue.
#[derive(Debug, Default)]
pub(super) struct Index {
    queues: HashMap<String, QueueIndex>,
}

impl Index {
    /// A message committed into `queue` at `seq`.
    pub(super) fn insert(
        &mut self,
        queue: &str,
        seq: u64,
        key: &str,
        not_before_ms: u64,
        now_ms: u64,
    ) {
        let q = self.queues.entry(queue.to_owned()).or_default();
        q.entries.insert(
            seq,
            Entry {
                key: key.to_owned(),
                not_before_ms,
            },
        );
        q.keys.entry(key.to_owned()).or_default().insert(seq);
        if q.is_head(seq, key) {
            q.schedule(seq, now_ms);
        }
    }

    /// A message that left `queue` (its step committed); the next of its key, if any,
    /// becomes takeable.
    pub(super) fn remove(&mut self, queue: &str, seq: u64, now_ms: u64) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        q.unschedule(seq);
        let Some(entry) = q.entries.remove(&seq) else {
            return;
        };
        let next = match q.keys.get_mut(&entry.key) {
            Some(seqs) => {
                seqs.remove(&seq);
                seqs.first().copied()
            }
            None => None,
        };
        match next {
            Some(next) if !q.claimed.contains_key(&entry.key) => q.schedule(next, now_ms),
            Some(_) => {}
            None => {
                q.keys.remove(&entry.key);
            }
        }
        if q.is_empty() {
            self.queues.remove(queue);
        }
    }

    /// A message that stays in `queue`, to be retried from `not_before_ms`; it keeps
    /// its key's turn.
    pub(super) fn retry(&mut self, queue: &str, seq: u64, not_before_ms: u64, now_ms: u64) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        q.unschedule(seq);
        if let Some(entry) = q.entries.get_mut(&seq) {
            entry.not_before_ms = not_before_ms;
        }
        q.schedule(seq, now_ms);
    }

    /// Lease the oldest takeable message of `queue` under `token` until
    /// `now + visibility`; a lease that expired is takeable again first.
    pub(super) fn lease(
        &mut self,
        queue: &str,
        token: u64,
        visibility: Duration,
        now: Instant,
        now_ms: u64,
    ) -> Option<u64> {
        let q = self.queues.get_mut(queue)?;
        let expired: Vec<u64> = q
            .leased
            .iter()
            .filter(|(_, held)| !held.completing && held.expires <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            tracing::warn!(
                queue,
                seq,
                "lease timed out; message given to another worker"
            );
            q.leased.remove(&seq);
            q.ready.insert(seq);
        }
        while let Some(&(due, seq)) = q.delayed.first() {
            if due > now_ms {
                break;
            }
            q.delayed.pop_first();
            q.ready.insert(seq);
        }
        let seq = q.ready.pop_first()?;
        q.leased.insert(
            seq,
            Held {
                token,
                expires: now + visibility,
                completing: false,
            },
        );
        Some(seq)
    }

    /// A completion is on its way to the disk: the lease must still be this token's,
    /// and not past its hold (the message is then the next lease's to take).
    pub(super) fn begin_complete(
        &mut self,
        queue: &str,
        seq: u64,
        token: u64,
        now: Instant,
    ) -> Result<(), Stale> {
        let held = self
            .queues
            .get_mut(queue)
            .and_then(|q| q.leased.get_mut(&seq))
            .ok_or(Stale)?;
        if held.token != token || held.completing || held.expires <= now {
            return Err(Stale);
        }
        held.completing = true;
        Ok(())
    }

    /// The completion did not commit: the message is takeable again.
    pub(super) fn release(&mut self, queue: &str, seq: u64, now_ms: u64) {
        if let Some(q) = self.queues.get_mut(queue)
            && q.leased.remove(&seq).is_some()
        {
            q.schedule(seq, now_ms);
        }
    }

    /// How many messages each queue holds, leased ones included.
    pub(super) fn depths(&self) -> BTreeMap<String, usize> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.entries.is_empty())
            .map(|(name, q)| (name.clone(), q.entries.len()))
            .collect()
    }

    /// Claim `key` in `queue` for `holder` under `token`: granted (`true`) when the
    /// queue holds no message of it and no claim on it but one of the same holder
    /// (taken over: an earlier lease of that message lapsed). Until [`Index::unclaim`]
    /// with that token, the key's messages committed there are not takeable.
    pub(super) fn claim(&mut self, queue: &str, key: &str, holder: &str, token: u64) -> bool {
        let q = self.queues.entry(queue.to_owned()).or_default();
        let held = q.keys.get(key).is_some_and(|seqs| !seqs.is_empty());
        let other = q.claimed.get(key).is_some_and(|(by, _)| by != holder);
        if held || other {
            return false;
        }
        q.claimed.insert(key.to_owned(), (holder.to_owned(), token));
        true
    }

    /// Release the claim `token` names (not one taken over since): the first message
    /// of its key committed meanwhile, if any, becomes takeable (`true`: a worker has
    /// something to take).
    pub(super) fn unclaim(&mut self, queue: &str, key: &str, token: u64, now_ms: u64) -> bool {
        let Some(q) = self.queues.get_mut(queue) else {
            return false;
        };
        if q.claimed.get(key).is_none_or(|(_, held)| *held != token) {
            return false;
        }
        q.claimed.remove(key);
        let first = q.keys.get(key).and_then(|seqs| seqs.first().copied());
        if let Some(first) = first {
            q.schedule(first, now_ms);
        }
        if q.is_empty() {
            self.queues.remove(queue);
        }
        first.is_some()
    }

    /// When the next message of `queue` waiting for a retry comes due (ms since the
    /// Unix epoch), if one does.
    pub(super) fn next_due(&self, queue: &str) -> Option<u64> {
        self.queues
            .get(queue)
            .and_then(|q| q.delayed.first())
            .map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Duration = Duration::from_secs(60);

    fn lease(index: &mut Index, token: u64) -> Option<u64> {
        index.lease("q", token, V, Instant::now(), 1_000)
    }

    #[test]
    fn oldest_first_one_per_key_in_order() {
        let mut index = Index::default();
        for (seq, key) in [(1, "A"), (2, "A"), (3, "B"), (4, "C")] {
            index.insert("q", seq, key, 0, 1_000);
        }
        assert_eq!(lease(&mut index, 1), Some(1));
        assert_eq!(lease(&mut index, 2), Some(3), "2 waits behind 1");
        assert_eq!(lease(&mut index, 3), Some(4));
        assert_eq!(lease(&mut index, 4), None);
        index.begin_complete("q", 1, 1, Instant::now()).unwrap();
        index.remove("q", 1, 1_000);
        assert_eq!(lease(&mut index, 5), Some(2), "A's next is its turn now");
        assert_eq!(index.depths()["q"], 3);
    }

    #[test]
    fn a_retry_keeps_its_keys_turn_until_due() {
        let mut index = Index::default();
        index.insert("q", 1, "A", 0, 1_000);
        index.insert("q", 2, "A", 0, 1_000);
        assert_eq!(lease(&mut index, 1), Some(1));
        index.begin_complete("q", 1, 1, Instant::now()).unwrap();
        index.retry("q", 1, 5_000, 1_000);
        assert_eq!(lease(&mut index, 2), None, "not due, and 2 waits behind it");
        assert_eq!(
            index.lease("q", 3, V, Instant::now(), 5_000),
            Some(1),
            "due"
        );
    }

    #[test]
    fn a_lease_past_its_hold_cannot_complete() {
        let mut index = Index::default();
        index.insert("q", 1, "A", 0, 1_000);
        let start = Instant::now();
        assert_eq!(index.lease("q", 1, V, start, 1_000), Some(1));
        assert_eq!(index.begin_complete("q", 1, 1, start + V), Err(Stale));
    }

    #[test]
    fn an_expired_lease_goes_to_another_worker_and_the_late_ack_is_stale() {
        let mut index = Index::default();
        index.insert("q", 1, "A", 0, 1_000);
        let start = Instant::now();
        assert_eq!(index.lease("q", 1, V, start, 1_000), Some(1));
        assert_eq!(index.lease("q", 2, V, start, 1_000), None);
        let later = start + V + Duration::from_secs(1);
        assert_eq!(index.lease("q", 2, V, later, 1_000), Some(1));
        assert_eq!(index.begin_complete("q", 1, 1, later), Err(Stale));
        assert_eq!(index.begin_complete("q", 1, 2, later), Ok(()));
        assert_eq!(index.begin_complete("q", 1, 2, later), Err(Stale), "once");
        let much_later = later + V + V;
        assert_eq!(
            index.lease("q", 3, V, much_later, 1_000),
            None,
            "a completing lease never expires"
        );
        index.release("q", 1, 1_000);
        assert_eq!(index.lease("q", 4, V, much_later, 1_000), Some(1));
    }

    #[test]
    fn a_claimed_key_waits_until_released_and_a_held_key_is_not_claimed() {
        let mut index = Index::default();
        index.insert("q", 1, "A", 0, 1_000);
        assert!(!index.claim("q", "A", "h1", 1), "A has a message in q");
        assert!(index.claim("q", "B", "h1", 2));
        assert!(!index.claim("q", "B", "h2", 3), "one holder a key");
        index.insert("q", 2, "B", 0, 1_000);
        index.insert("q", 3, "B", 0, 1_000);
        assert_eq!(lease(&mut index, 1), Some(1));
        assert_eq!(lease(&mut index, 2), None, "B is claimed");
        assert!(index.unclaim("q", "B", 2, 1_000), "B's first is takeable");
        assert_eq!(lease(&mut index, 3), Some(2), "B's first, once released");
        assert_eq!(lease(&mut index, 4), None, "3 behind 2");
        assert!(
            index.claim("other", "A", "h1", 4),
            "same key, another queue"
        );
        assert_eq!(index.depths().len(), 1, "a claim is no message");
        let waiting = index.unclaim("other", "A", 4, 1_000);
        assert!(!waiting, "nothing came meanwhile");
        assert!(index.claim("other", "A", "h2", 5), "released");
    }

    #[test]
    fn a_claim_is_taken_over_by_a_later_lease_of_its_holder() {
        let mut index = Index::default();
        assert!(index.claim("q", "B", "h1", 1));
        // A later lease of h1 (its first lapsed) takes the claim over; the first
        // lease's late release leaves it be.
        assert!(index.claim("q", "B", "h1", 2), "taken over");
        assert!(
            !index.unclaim("q", "B", 1, 1_000),
            "not the first's any more"
        );
        index.insert("q", 1, "B", 0, 1_000);
        assert_eq!(lease(&mut index, 1), None, "B still claimed");
        assert!(!index.claim("q", "B", "h1", 3), "a message of B waits now");
        assert!(index.unclaim("q", "B", 2, 1_000));
        assert_eq!(lease(&mut index, 2), Some(1));
    }

    #[test]
    fn queues_are_apart_and_vanish_when_empty() {
        let mut index = Index::default();
        index.insert("a", 1, "K", 0, 0);
        index.insert("b", 2, "K", 0, 0);
        assert_eq!(index.depths().len(), 2);
        assert_eq!(index.lease("a", 1, V, Instant::now(), 0), Some(1));
        assert_eq!(
            index.lease("b", 2, V, Instant::now(), 0),
            Some(2),
            "same key, other queue"
        );
        index.remove("a", 1, 0);
        assert_eq!(index.depths().len(), 1);
    }
}
