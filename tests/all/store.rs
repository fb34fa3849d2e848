//! What every store promises, checked on each: one list of cases, run against the redb
//! store and against the NATS JetStream store (a real `nats-server`, started once for
//! the suite; each case under its own prefix).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tenon::model::{
    DeadLetter, Envelope, EventBody, IdempotencyClaim, MessageId, Outcome, OutcomeKind,
    StoredMessage, now_ms,
};
use tenon::store::nats::{NatsOptions, NatsStore};
use tenon::store::redb::RedbStore;
use tenon::store::{CompleteError, Completion, Ended, Enqueued, KvNamespace, Lease, NodeDb, Store};
use tenon_testkit::nats::NatsCluster;

/// A store under test, and what keeps it alive.
struct Subject {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

fn redb() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeDb::open(dir.path()).unwrap();
    Subject {
        store: Arc::new(RedbStore::open(&node).unwrap()),
        _dir: dir,
    }
}

/// The suite's lone nats-server.
pub fn shared_nats() -> &'static NatsCluster {
    static SERVER: OnceLock<NatsCluster> = OnceLock::new();
    SERVER.get_or_init(|| NatsCluster::start(1).expect("start nats-server"))
}

/// A prefix no other case of this run uses.
pub fn fresh_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn nats() -> Subject {
    let options = NatsOptions {
        servers: shared_nats().urls(),
        replicas: 1,
        prefix: fresh_prefix(),
        retention: Duration::from_secs(3600),
        idempotency_retention: Duration::from_secs(3600),
    };
    Subject {
        store: Arc::new(NatsStore::connect(&options).await.unwrap()),
        _dir: tempfile::tempdir().unwrap(),
    }
}

/// Each case, once per store.
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod redb_store {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(super::redb()).await;
                }
            )*
        }
        mod nats_store {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(super::nats().await).await;
                }
            )*
        }
    };
}

on_every_store!(
    a_message_is_leased_once_and_forwarded_with_its_ack,
    messages_that_end_within_a_lease_are_recorded_with_its_ack,
    a_key_is_processed_in_order_and_a_retry_keeps_its_turn,
    a_claimed_key_waits_in_its_queue_until_released,
    outcomes_are_found_by_lineage,
    an_idempotency_key_lets_one_request_through,
    dead_letters_are_kept_redriven_and_discarded,
    exceptions_are_kept_apart_and_decided_once,
    a_redriven_undoing_stays_an_undoing,
    accepted_messages_are_logged_and_replayed_without_a_new_entry,
    key_value_data_is_per_namespace_and_under_quota,
    a_waiting_lease_wakes_on_new_work,
    a_late_completion_is_refused,
);

const HOLD: Duration = Duration::from_secs(60);

fn envelope(id: &str, key: &str) -> Envelope {
    let message = StoredMessage {
        id: id.into(),
        key: key.into(),
        kind: "QuoteApproved".into(),
        content_type: "application/json".into(),
        headers: vec![],
        body: b"{}".to_vec(),
    };
    Envelope::entering("f", &["s".to_owned(), "t".to_owned()], message, 0)
}

fn outcome(env: &Envelope, result: OutcomeKind) -> Outcome {
    Outcome {
        id: env.message.id.clone(),
        root: env.root.clone(),
        flow: env.flow.clone(),
        key: env.message.key.clone(),
        kind: env.message.kind.clone(),
        plugin: "sink".into(),
        accepted_ms: 0,
        root_kind: String::new(),
        trace_id: String::new(),
        trail: vec![],
        attempts: vec![],
        at_ms: now_ms(),
        result,
        undo: None,
    }
}

/// Lease, waiting a little (a distributed store answers in milliseconds, not at once).
async fn take(store: &dyn Store, queue: &str) -> Option<Lease> {
    store
        .lease(queue, Duration::from_millis(300), HOLD)
        .await
        .unwrap()
}

async fn put(store: &dyn Store, items: Vec<(&str, Envelope)>) {
    let items = items.into_iter().map(|(q, e)| (q.to_owned(), e)).collect();
    assert_eq!(
        store.enqueue(items, None).await.unwrap(),
        Enqueued::Committed
    );
}

async fn depth(store: &dyn Store, queue: &str) -> usize {
    store
        .depths()
        .await
        .unwrap()
        .get(queue)
        .copied()
        .unwrap_or(0)
}

async fn a_message_is_leased_once_and_forwarded_with_its_ack(s: Subject) {
    let store = s.store.as_ref();
    put(store, vec![("f/s", envelope("m1", "k1"))]).await;
    assert_eq!(depth(store, "f/s").await, 1);
    let lease = take(store, "f/s").await.expect("the message is leased");
    assert!(
        take(store, "f/s").await.is_none(),
        "a leased message is not leased twice"
    );
    let mut out = envelope("m1.0", "k1");
    out.root = "m1".into();
    out.stage = 1;
    let outputs = vec![("f/t".to_owned(), out.clone())];
    store
        .complete(lease, Completion::forward(outputs), None)
        .await
        .unwrap();
    assert_eq!(depth(store, "f/s").await, 0);
    let next = take(store, "f/t").await.expect("the output is queued");
    assert_eq!(next.envelope, out);
    let pending = store.pending(&"m1".into()).await.unwrap();
    assert_eq!(pending, vec![out], "the lineage's pending message");
}

/// A sink fused into a transform's lease: the messages it ended were never queued;
/// their ends (and the sink's key-value writes) are recorded in the commit that acks
/// the transform's input, as a sink's own completion records them (a dead letter and
/// an exception keep the message given, which a redrive puts back in its queue).
async fn messages_that_end_within_a_lease_are_recorded_with_its_ack(s: Subject) {
    let store = s.store.as_ref();
    put(store, vec![("f/s", envelope("m1", "k1"))]).await;
    let lease = take(store, "f/s").await.unwrap();
    let child = |n: u32| {
        let mut out = envelope(&format!("m1.{n}"), "k1");
        out.root = "m1".into();
        out.stage = 1;
        out
    };
    let attempt = tenon::model::Attempt {
        at_ms: now_ms(),
        plugin: "t".into(),
        digest: "sha256:0".into(),
        error: "trap".into(),
    };
    let ends = [
        OutcomeKind::Delivered {
            reference: "ERP-1".into(),
            detail: None,
        },
        OutcomeKind::Rejected {
            reasons: vec!["no such customer".into()],
        },
        OutcomeKind::DeadLetter {
            error: "trap".into(),
        },
        OutcomeKind::Held {
            rule: "saga".into(),
            reasons: vec!["part failed".into()],
            proposed: "approve or reject".into(),
        },
    ];
    let mut ended: Vec<Ended> = ends
        .into_iter()
        .zip(0..)
        .map(|(result, n)| {
            let envelope = child(n);
            let mut outcome = outcome(&envelope, result);
            outcome.attempts = vec![attempt.clone()];
            Ended {
                envelope,
                outcome,
                kv: None,
                published: vec![],
            }
        })
        .collect();
    // The delivery's key-value writes go with it and with the step's own, each under
    // its namespace's quota: over one, nothing of the completion is written (not the
    // step's writes either) and the input is leased again.
    let mapping = KvNamespace::new(s.store.clone(), "mapping", None);
    let step_writes = || {
        let mut writes = mapping.writes();
        writes.put("seen/Q-1", Some(b"1".to_vec()));
        writes
    };
    let sink = KvNamespace::new(s.store.clone(), "sink", Some(24));
    let mut too_much = sink.writes();
    too_much.put("sent/Q-1", Some(vec![b'x'; 32]));
    let delivered = &ended[0];
    let over = Completion::Forward {
        outputs: vec![],
        ended: vec![Ended {
            envelope: delivered.envelope.clone(),
            outcome: delivered.outcome.clone(),
            kv: Some(too_much),
            published: vec![],
        }],
        entered: vec![],
    };
    let refused = store
        .complete(lease, over, Some(step_writes()))
        .await
        .unwrap_err();
    assert!(matches!(refused, CompleteError::OverQuota(_)), "{refused}");
    assert_eq!(store.outcome(&"m1.0".into()).await.unwrap(), None);
    assert_eq!(sink.get("sent/Q-1").await.unwrap(), None);
    assert_eq!(mapping.get("seen/Q-1").await.unwrap(), None);
    let lease = take(store, "f/s").await.expect("leased again");
    let mut sent = sink.writes();
    sent.put("sent/Q-1", Some(b"ERP-1".to_vec()));
    ended[0].kv = Some(sent);
    // The delivery publishes (an `OrderBooked`, for another flow).
    let booked = child(4);
    ended[0].published = vec![("g/s".to_owned(), booked.clone())];
    // A copy that entered a subscribing flow `h` and ran there in this lease: `h`
    // accepted it (its log and replay hold it) though it was never queued.
    let mut copy = child(0);
    copy.message.id = copy.message.id.entering("h");
    copy.flow = "h".into();
    copy.stage = 0;
    assert!(copy.is_entering());
    let completion = Completion::Forward {
        outputs: vec![],
        ended,
        entered: vec![copy.clone()],
    };
    store
        .complete(lease, completion, Some(step_writes()))
        .await
        .unwrap();
    assert_eq!(
        sink.get("sent/Q-1").await.unwrap().as_deref(),
        Some(&b"ERP-1"[..])
    );
    assert_eq!(
        mapping.get("seen/Q-1").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(depth(store, "f/s").await, 0, "the input is acked");
    assert_eq!(depth(store, "f/t").await, 0, "nothing ended was queued");
    assert_eq!(store.pending(&"m1".into()).await.unwrap(), vec![booked]);
    let mut outcomes: Vec<String> = (store.outcomes(&"m1".into()).await.unwrap())
        .into_iter()
        .map(|o| {
            format!(
                "{} {}",
                o.id,
                tenon::telemetry::metrics::result_name(&o.result)
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            "m1.0 delivered",
            "m1.1 rejected",
            "m1.2 dead_letter",
            "m1.3 held"
        ]
    );
    let events = store.events(1, u64::MAX).await.unwrap();
    assert!(
        events.iter().any(|e| matches!(
            &e.body,
            EventBody::Rejected { id, reasons, .. } if id == "m1.1" && reasons[0] == "no such customer"
        )),
        "the rejection is logged: {events:?}"
    );
    let accepted: Vec<(&str, &Envelope)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Accepted { envelope } if e.flow == "h" => {
                Some((e.flow.as_str(), &**envelope))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        accepted,
        [("h", &copy)],
        "the copy that entered `h` is logged as `h` accepted it, once"
    );
    let letter = store.dead_letter(&"m1.2".into()).await.unwrap().unwrap();
    assert_eq!(letter.envelope.message.id, "m1.2");
    assert_eq!(letter.envelope.attempts, vec![attempt], "with its attempts");
    assert!(store.redrive(&"m1.2".into()).await.unwrap());
    let back = take(store, "f/t")
        .await
        .expect("redriven to the sink's queue");
    assert_eq!(back.envelope.message.id, "m1.2");
    let delivered = OutcomeKind::Delivered {
        reference: "ERP-2".into(),
        detail: None,
    };
    let done = outcome(&back.envelope, delivered);
    store
        .complete(back, Completion::finish(done), None)
        .await
        .unwrap();
    let held = store.exception(&"m1.3".into()).await.unwrap().unwrap();
    assert_eq!(held.envelope.stage, 1, "held before the sink");
    let approve = tenon::model::Directive::Approve {
        by: "key-1".into(),
        note: "ok".into(),
        waives: "saga".into(),
    };
    assert!(store.decide(&"m1.3".into(), approve.clone()).await.unwrap());
    let back = take(store, "f/t")
        .await
        .expect("approved back to the sink's queue");
    assert_eq!(back.envelope.message.id, "m1.3");
    assert_eq!(back.envelope.directive, Some(approve));
}

async fn a_key_is_processed_in_order_and_a_retry_keeps_its_turn(s: Subject) {
    let store = s.store.as_ref();
    put(
        store,
        vec![
            ("f/s", envelope("a1", "A")),
            ("f/s", envelope("a2", "A")),
            ("f/s", envelope("b1", "B")),
        ],
    )
    .await;
    let a1 = take(store, "f/s").await.unwrap();
    assert_eq!(a1.envelope.message.id, "a1");
    let next = take(store, "f/s").await.unwrap();
    assert_eq!(next.envelope.message.id, "b1", "a2 waits behind a1");
    assert!(take(store, "f/s").await.is_none());
    // a1 fails and waits for its retry: a2 still waits behind it.
    let mut retry = a1.envelope.clone();
    retry.attempts.push(tenon::model::Attempt {
        at_ms: now_ms(),
        plugin: "s".into(),
        digest: "sha256:0".into(),
        error: "retryable: later".into(),
    });
    retry.not_before_ms = now_ms() + 800;
    store
        .complete(a1, Completion::Retry(Box::new(retry)), None)
        .await
        .unwrap();
    assert!(
        take(store, "f/s").await.is_none(),
        "nothing of key A before a1's retry is due"
    );
    let again = store
        .lease("f/s", Duration::from_secs(10), HOLD)
        .await
        .unwrap()
        .expect("a1 again once due");
    assert_eq!(again.envelope.message.id, "a1", "a1 keeps its turn");
    assert_eq!(again.envelope.attempts.len(), 1, "with its attempt");
    let done = outcome(&again.envelope, OutcomeKind::Consumed);
    store
        .complete(again, Completion::finish(done), None)
        .await
        .unwrap();
    let a2 = take(store, "f/s").await.expect("a2 after a1");
    assert_eq!(a2.envelope.message.id, "a2");
    let claim = store.claim("f/s", "A", &"h".into(), HOLD).await.unwrap();
    assert!(claim.is_none(), "a2 is leased: A is not claimed in f/s");
    let done = outcome(&a2.envelope, OutcomeKind::Consumed);
    store
        .complete(a2, Completion::finish(done), None)
        .await
        .unwrap();
    let claim = store.claim("f/s", "A", &"h".into(), HOLD).await.unwrap();
    assert!(claim.is_some(), "nothing of A left");
}

/// What a step run ahead of a queue (fused into another's lease) claims there: its
/// key, while nothing of it waits there; what comes meanwhile waits for the release.
async fn a_claimed_key_waits_in_its_queue_until_released(s: Subject) {
    let store = s.store.as_ref();
    put(store, vec![("f/s", envelope("a1", "A"))]).await;
    let claim = async |queue: &str, key: &str, holder: &str| {
        let holder = MessageId::from(holder);
        store.claim(queue, key, &holder, HOLD).await.unwrap()
    };
    assert!(claim("f/s", "A", "h1").await.is_none(), "a1 waits in f/s");
    let b = claim("f/s", "B", "h1").await.expect("nothing of B in f/s");
    assert!(claim("f/s", "B", "h2").await.is_none(), "one holder a key");
    // A later lease of h1 (the first one's node died, say) takes the claim over;
    // the first one's late release leaves it be.
    let b = {
        let again = claim("f/s", "B", "h1").await.expect("taken over");
        drop(b);
        again
    };
    let elsewhere = claim("f/t", "B", "h2").await;
    assert!(elsewhere.is_some(), "the same key in another queue");
    // What is committed for B meanwhile (a redrive, another lease's output) waits.
    put(
        store,
        vec![("f/s", envelope("b1", "B")), ("f/s", envelope("c1", "C"))],
    )
    .await;
    let mut leases = Vec::new();
    while let Some(lease) = take(store, "f/s").await {
        leases.push(lease);
    }
    let mut taken: Vec<&str> = leases
        .iter()
        .map(|l| l.envelope.message.id.as_str())
        .collect();
    taken.sort();
    assert_eq!(taken, ["a1", "c1"], "b1 waits behind B's claim");
    drop(b);
    let b1 = store
        .lease("f/s", Duration::from_secs(10), HOLD)
        .await
        .unwrap()
        .expect("b1 once B's claim is released");
    assert_eq!(b1.envelope.message.id, "b1");
    assert!(claim("f/s", "B", "h1").await.is_none(), "b1 is leased");
}

async fn outcomes_are_found_by_lineage(s: Subject) {
    let store = s.store.as_ref();
    put(
        store,
        vec![("f/s", envelope("m1", "k")), ("f/s", envelope("m10", "k2"))],
    )
    .await;
    for _ in 0..2 {
        let lease = take(store, "f/s").await.unwrap();
        let mut finished = outcome(&lease.envelope, OutcomeKind::Consumed);
        finished.id = lease.envelope.message.id.child(0);
        store
            .complete(lease, Completion::finish(finished), None)
            .await
            .unwrap();
    }
    let found = store.outcomes(&"m1".into()).await.unwrap();
    assert_eq!(found.len(), 1, "m10's outcome is not m1's: {found:?}");
    assert_eq!(found[0].id, "m1.0");
    let one = store.outcome(&"m10.0".into()).await.unwrap().unwrap();
    assert_eq!(one.root, "m10");
    assert!(store.outcome(&"m2.0".into()).await.unwrap().is_none());
}

async fn an_idempotency_key_lets_one_request_through(s: Subject) {
    let store = s.store.as_ref();
    let claim = |payload: &str| IdempotencyClaim {
        scope: "cpq".into(),
        key: "K/1 é".into(),
        payload: payload.into(),
        expires_ms: now_ms() + 60_000,
    };
    let items = |id: &str| vec![("f/s".to_owned(), envelope(id, id))];
    let first = store.enqueue(items("m1"), Some(claim("a"))).await.unwrap();
    assert_eq!(first, Enqueued::Committed);
    let again = store.enqueue(items("m2"), Some(claim("a"))).await.unwrap();
    assert_eq!(again, Enqueued::Duplicate(vec![MessageId::from("m1")]));
    let other = store.enqueue(items("m3"), Some(claim("b"))).await.unwrap();
    assert_eq!(other, Enqueued::Conflict);
    let record = store.idempotency("cpq", "K/1 é").await.unwrap().unwrap();
    assert_eq!(record.ids, vec![MessageId::from("m1")]);
    assert!(store.idempotency("cpq", "other").await.unwrap().is_none());
    assert_eq!(depth(store, "f/s").await, 1, "one message went in");
}

async fn dead_letters_are_kept_redriven_and_discarded(s: Subject) {
    let store = s.store.as_ref();
    put(
        store,
        vec![("f/s", envelope("d1", "k1")), ("f/s", envelope("d2", "k2"))],
    )
    .await;
    for _ in 0..2 {
        let lease = take(store, "f/s").await.unwrap();
        let mut dead = outcome(
            &lease.envelope,
            OutcomeKind::DeadLetter {
                error: "invalid: no".into(),
            },
        );
        dead.attempts.push(tenon::model::Attempt {
            at_ms: now_ms(),
            plugin: "s".into(),
            digest: "sha256:0".into(),
            error: "invalid: no".into(),
        });
        store
            .complete(lease, Completion::finish(dead), None)
            .await
            .unwrap();
    }
    let letters: Vec<DeadLetter> = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2);
    let d1 = store.dead_letter(&"d1".into()).await.unwrap().unwrap();
    assert_eq!(d1.envelope.attempts.len(), 1, "with its attempts");
    assert!(store.redrive(&"d1".into()).await.unwrap());
    assert!(
        !store.redrive(&"d1".into()).await.unwrap(),
        "gone once redriven"
    );
    assert!(store.outcome(&"d1".into()).await.unwrap().is_none());
    let back = take(store, "f/s").await.expect("d1 is back in its queue");
    assert_eq!(back.envelope.message.id, "d1");
    assert!(back.envelope.attempts.is_empty(), "with a fresh count");
    assert!(store.discard(&"d2".into()).await.unwrap());
    assert!(!store.discard(&"d2".into()).await.unwrap());
    assert!(store.dead_letters().await.unwrap().is_empty());
}

async fn exceptions_are_kept_apart_and_decided_once(s: Subject) {
    let store = s.store.as_ref();
    put(store, vec![("f/s", envelope("h1", "k1"))]).await;
    let lease = take(store, "f/s").await.unwrap();
    let held = outcome(
        &lease.envelope,
        OutcomeKind::Held {
            rule: "rule 1".into(),
            reasons: vec!["over the limit".into()],
            proposed: "approve or reject".into(),
        },
    );
    store
        .complete(lease, Completion::finish(held), None)
        .await
        .unwrap();
    // An exception, not a dead letter; its outcome says it is held.
    assert!(store.dead_letters().await.unwrap().is_empty());
    let listed = store.exceptions().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].envelope.message.id, "h1");
    assert!(store.exception(&"h1".into()).await.unwrap().is_some());
    let recorded = store.outcome(&"h1".into()).await.unwrap().unwrap();
    assert!(matches!(recorded.result, OutcomeKind::Held { .. }));
    assert_eq!(depth(store, "f/s").await, 0);
    // Decided: back before its stage with the decision, its outcome gone; once only.
    let approve = tenon::model::Directive::Approve {
        by: "key-1".into(),
        note: "ok".into(),
        waives: "rule 1".into(),
    };
    assert!(store.decide(&"h1".into(), approve.clone()).await.unwrap());
    assert!(!store.decide(&"h1".into(), approve.clone()).await.unwrap());
    assert!(store.exceptions().await.unwrap().is_empty());
    assert!(store.outcome(&"h1".into()).await.unwrap().is_none());
    let back = take(store, "f/s").await.expect("h1 is back in its queue");
    assert_eq!(back.envelope.directive, Some(approve));
    assert!(
        !store
            .decide(
                &"nothing".into(),
                tenon::model::Directive::Reject {
                    by: "key-1".into(),
                    note: String::new(),
                }
            )
            .await
            .unwrap()
    );
}

async fn a_redriven_undoing_stays_an_undoing(s: Subject) {
    let store = s.store.as_ref();
    let mut undo = envelope("u1.undo", "k1");
    let compensate = tenon::model::Directive::Compensate {
        delivered: "u1".into(),
        reference: "ERP-1".into(),
        detail: None,
        because: "billing refused".into(),
    };
    undo.directive = Some(compensate.clone());
    put(store, vec![("f/s", undo)]).await;
    let lease = take(store, "f/s").await.unwrap();
    let dead = outcome(
        &lease.envelope,
        OutcomeKind::DeadLetter {
            error: "the undoing was refused".into(),
        },
    );
    store
        .complete(lease, Completion::finish(dead), None)
        .await
        .unwrap();
    assert!(store.redrive(&"u1.undo".into()).await.unwrap());
    let back = take(store, "f/s").await.expect("back in its queue");
    assert_eq!(
        back.envelope.directive,
        Some(compensate),
        "still an undoing"
    );
}

async fn accepted_messages_are_logged_and_replayed_without_a_new_entry(s: Subject) {
    let store = s.store.as_ref();
    let before = now_ms();
    put(store, vec![("f/s", envelope("e1", "k1"))]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = now_ms();
    put(store, vec![("f/s", envelope("e2", "k2"))]).await;
    let events = store.events(1, u64::MAX).await.unwrap();
    let ids: Vec<String> = events
        .iter()
        .map(|e| match &e.body {
            EventBody::Accepted { envelope } => envelope.message.id.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert!(events[0].offset < events[1].offset);
    assert_eq!(
        store
            .events(events[1].offset, u64::MAX)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.offset_at(before).await.unwrap(),
        Some(events[0].offset)
    );
    assert_eq!(
        store.offset_at(middle).await.unwrap(),
        Some(events[1].offset)
    );
    assert_eq!(store.offset_at(now_ms() + 60_000).await.unwrap(), None);
    // A replay puts a message back without logging it again.
    store
        .requeue(vec![("f/s".to_owned(), envelope("e1", "k1"))])
        .await
        .unwrap();
    assert_eq!(store.events(1, u64::MAX).await.unwrap().len(), 2);
    assert_eq!(depth(store, "f/s").await, 3);
}

async fn key_value_data_is_per_namespace_and_under_quota(s: Subject) {
    let store = &s.store;
    let a = KvNamespace::new(store.clone(), "plugin-a", Some(20));
    let b = KvNamespace::new(store.clone(), "plugin-b", None);
    a.set("customer/001", b"ACME").await.unwrap();
    assert_eq!(
        a.get("customer/001").await.unwrap().as_deref(),
        Some(&b"ACME"[..])
    );
    assert_eq!(b.get("customer/001").await.unwrap(), None);
    assert_eq!(a.usage().await.unwrap(), 16);
    let refused = a.set("k2", &[0; 8]).await.unwrap_err();
    assert!(matches!(refused, CompleteError::OverQuota(_)), "{refused}");
    assert_eq!(a.get("k2").await.unwrap(), None, "nothing written");
    a.delete("customer/001").await.unwrap();
    assert_eq!(a.usage().await.unwrap(), 0);

    // A step's writes commit with its result, and not without it.
    put(store.as_ref(), vec![("f/s", envelope("k1", "k"))]).await;
    let lease = take(store.as_ref(), "f/s").await.unwrap();
    let mut writes = a.writes();
    writes.put("seen", Some(b"yes".to_vec()));
    let done = outcome(&lease.envelope, OutcomeKind::Consumed);
    store
        .complete(lease, Completion::finish(done), Some(writes))
        .await
        .unwrap();
    assert_eq!(a.get("seen").await.unwrap().as_deref(), Some(&b"yes"[..]));
}

async fn a_waiting_lease_wakes_on_new_work(s: Subject) {
    let store = s.store.clone();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.lease("f/s", Duration::from_secs(20), HOLD).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    put(store.as_ref(), vec![("f/s", envelope("w1", "k"))]).await;
    let lease = waiting.await.unwrap().unwrap();
    assert_eq!(lease.expect("woken").envelope.message.id, "w1");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the new message, not at the end of the wait"
    );
}

async fn a_late_completion_is_refused(s: Subject) {
    let store = s.store.as_ref();
    put(store, vec![("f/s", envelope("l1", "k"))]).await;
    let brief = store
        .lease(
            "f/s",
            Duration::from_millis(300),
            Duration::from_millis(100),
        )
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let done = outcome(&brief.envelope, OutcomeKind::Consumed);
    let refused = store
        .complete(brief, Completion::finish(done), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, CompleteError::Stale { .. }), "{refused}");
    assert!(
        store.outcome(&"l1".into()).await.unwrap().is_none(),
        "nothing of the late completion was written"
    );
}
