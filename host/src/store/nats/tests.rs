//! What the shared store cases (`tests/all/store.rs`) cannot reach through the
//! `Store` trait: a crash between a completion's writes and its ack, and a claim
//! whose holder died.

use super::*;
use crate::model::{OutcomeKind, StoredMessage};
use crate::store::{Completion, Ended};
use tenon_testkit::nats::NatsCluster;

fn envelope(id: &str, route: &[&str], stage: u32) -> Envelope {
    let message = StoredMessage {
        id: id.into(),
        key: "Q-1".into(),
        kind: "OrderAccepted".into(),
        content_type: "application/json".into(),
        headers: vec![],
        body: b"{}".to_vec(),
    };
    let route: Vec<String> = route.iter().map(|s| (*s).to_owned()).collect();
    let mut envelope = Envelope::entering("f", &route, message, 0);
    envelope.root = "m1".into();
    envelope.stage = stage;
    envelope
}

fn delivered(envelope: &Envelope) -> Outcome {
    Outcome {
        id: envelope.message.id.clone(),
        root: envelope.root.clone(),
        flow: envelope.flow.clone(),
        key: envelope.message.key.clone(),
        kind: envelope.message.kind.clone(),
        plugin: "sink".into(),
        accepted_ms: 0,
        root_kind: String::new(),
        trace_id: String::new(),
        trail: vec![],
        attempts: vec![],
        at_ms: now_ms(),
        result: OutcomeKind::Delivered {
            reference: "ERP-1".into(),
            detail: None,
        },
        undo: None,
    }
}

async fn connect(nats: &NatsCluster, prefix: &str) -> NatsStore {
    NatsStore::connect(&NatsOptions {
        servers: nats.urls(),
        replicas: 1,
        prefix: prefix.into(),
        retention: Duration::from_secs(3600),
        idempotency_retention: Duration::from_secs(3600),
    })
    .await
    .unwrap()
}

async fn take(store: &NatsStore, queue: &str) -> Lease {
    store
        .lease(queue, Duration::from_secs(2), Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a message to lease")
}

/// Steps `t1`, `t2` and a sink run fused in `t1`'s lease; the sink publishes an
/// `OrderBooked`, and the node dies before the ack. Run again, `t1` leaves its output
/// queued this time (its key waited at `t2`, say): `t2` and the sink each run in a
/// lease of their own, and the sink publishes the `OrderBooked` again: under the same
/// `Nats-Msg-Id`, so the stream keeps one. (Under each input's own, as before, it
/// kept two.)
#[tokio::test(flavor = "multi_thread")]
async fn what_a_fused_end_publishes_is_written_once_when_a_rerun_leaves_it_queued() {
    let nats = NatsCluster::start(1).unwrap();
    let store = connect(&nats, "crash").await;
    let route = ["t1", "t2", "sink"];
    let input = envelope("m1", &route, 0);
    store
        .enqueue(vec![("f/t1".into(), input)], None)
        .await
        .unwrap();
    let mapped = envelope("m1.0", &route, 1);
    let order = envelope("m1.0.0", &route, 2);
    let booked = || {
        let mut booked = envelope("m1.0", &["w"], 0);
        booked.flow = "g".into();
        booked.message.kind = "OrderBooked".into();
        vec![("g/w".to_owned(), booked)]
    };

    // The fused run: written, never acked (the lease's ticket goes, as with a crash).
    let lease = take(&store, "f/t1").await;
    let Ticket::Nats(ticket) = lease.ticket else {
        unreachable!("a NATS lease")
    };
    let fused = Completion::Forward {
        outputs: vec![],
        ended: vec![Ended {
            envelope: order.clone(),
            outcome: delivered(&order),
            kv: None,
            published: booked(),
        }],
        entered: vec![],
    };
    store
        .write_completion(&lease.envelope, &ticket.incarnation, fused)
        .await
        .unwrap();
    ticket.message.ack_with(AckKind::Nak(None)).await.unwrap();
    drop(ticket);

    // The re-run: hop by hop, through `t2`'s queue and the sink's.
    let lease = take(&store, "f/t1").await;
    let forward =
        |queue: &str, next: &Envelope| Completion::forward(vec![(queue.into(), next.clone())]);
    let completion = forward("f/t2", &mapped);
    store.complete(lease, completion, None).await.unwrap();
    let lease = take(&store, "f/t2").await;
    let completion = forward("f/sink", &order);
    store.complete(lease, completion, None).await.unwrap();
    let lease = take(&store, "f/sink").await;
    assert_eq!(lease.envelope.message.id, order.message.id);
    let finish = Completion::Finish {
        outcome: Box::new(delivered(&order)),
        published: booked(),
    };
    store.complete(lease, finish, None).await.unwrap();

    let depths = store.depths().await.unwrap();
    assert_eq!(depths.get("g/w"), Some(&1), "{depths:?}");
}

/// A node claims a key in a queue and dies before releasing it: the claim holds the
/// key's messages back until its hold is over, then
/// the lease that meets it removes it. Removing a claim removed already is no failure
/// (its holder's release, late), whether it was the stream's first message or not.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_holder_died_lapses_after_its_hold() {
    let nats = NatsCluster::start(1).unwrap();
    let store = connect(&nats, "lapse").await;
    let route = ["t1", "t2"];
    // Another key's message first, kept: the claim's marker is not the stream's first.
    let mut other = envelope("m0", &route, 0);
    other.message.key = "Q-0".into();
    store
        .enqueue(vec![("f/t1".into(), other)], None)
        .await
        .unwrap();
    let claim = store
        .claim("f/t1", "Q-1", &"dead".into(), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("nothing of Q-1 in f/t1");
    let marker = store
        .first_on(&store.work, &store.names.key_subjects("f/t1", "Q-1"), 0)
        .await
        .unwrap()
        .expect("the claim's marker")
        .sequence;
    std::mem::forget(claim);
    store
        .enqueue(vec![("f/t1".into(), envelope("m1", &route, 0))], None)
        .await
        .unwrap();
    let early = take(&store, "f/t1").await;
    assert_eq!(early.envelope.message.id, "m0");
    let held = store
        .lease("f/t1", Duration::from_millis(500), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(held.is_none(), "m1 waits behind the claim");
    let lease = take_within(&store, "f/t1", Duration::from_secs(10)).await;
    assert_eq!(lease.envelope.message.id, "m1");
    let first = store
        .first_on(&store.work, &store.names.key_subjects("f/t1", "Q-1"), 0)
        .await
        .unwrap()
        .expect("m1, leased");
    assert_ne!(first.sequence, marker, "the lapsed claim is gone");
    store
        .remove_claim(marker)
        .await
        .expect("removed already: no failure");
}

async fn take_within(store: &NatsStore, queue: &str, wait: Duration) -> Lease {
    store
        .lease(queue, wait, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a message to lease")
}

/// A node dies holding a claim; the message whose lease took it is leased again
/// (on another node, after the server's ack wait): that lease takes the claim over
/// at once instead of waiting out its hold, and another holder is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_later_lease_of_the_holder_takes_its_claim_over() {
    let nats = NatsCluster::start(1).unwrap();
    let store = connect(&nats, "takeover").await;
    let hold = Duration::from_secs(600);
    let first = |store: NatsStore| async move {
        let subjects = store.names.key_subjects("f/t2", "Q-1");
        let first = store.first_on(&store.work, &subjects, 0).await.unwrap();
        first.map(|m| m.sequence)
    };
    let dead = store
        .claim("f/t2", "Q-1", &"m1".into(), hold)
        .await
        .unwrap();
    std::mem::forget(dead.expect("nothing of Q-1 in f/t2"));
    let old = first(store.clone()).await.expect("the dead claim's marker");
    let other = store
        .claim("f/t2", "Q-1", &"m2".into(), hold)
        .await
        .unwrap();
    assert!(other.is_none(), "another holder waits out the hold");
    let again = store
        .claim("f/t2", "Q-1", &"m1".into(), hold)
        .await
        .unwrap();
    let again = again.expect("taken over by a later lease of m1");
    let new = first(store.clone()).await.expect("the new marker");
    assert_ne!(new, old, "the dead claim's marker is gone");
    drop(again);
    let deadline = Instant::now() + Duration::from_secs(10);
    while first(store.clone()).await.is_some() {
        assert!(Instant::now() < deadline, "the claim was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = store
        .claim("f/t2", "Q-1", &"m2".into(), hold)
        .await
        .unwrap();
    assert!(other.is_some(), "released");
}

/// A queue's consumer made by a version before claims took every subject of its
/// queue, markers included: the store narrows it to its messages' at first use.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_made_before_claims_is_narrowed_to_the_queues_messages() {
    let nats = NatsCluster::start(1).unwrap();
    let store = connect(&nats, "narrow").await;
    let name = store.names.consumer("f/t1");
    let wide = format!(
        "{}.>",
        store.names.queue_subjects("f/t1").trim_end_matches(".*.*")
    );
    store
        .work
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: wide.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut narrowed = store.consumer("f/t1").await.unwrap();
    let filter = narrowed.info().await.unwrap().config.filter_subject.clone();
    assert_ne!(filter, wide);
    assert_eq!(filter, store.names.queue_subjects("f/t1"));
}
