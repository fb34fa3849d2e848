//! Delivery guarantees: idempotent ingress, and sinks that never deliver a message
//! twice once its outcome is recorded.

use crate::support::{Tenon, Workspace, fused, quote_to_cash_config, sample};
use tenon::config::Config;
use tenon::model::{Envelope, OutcomeKind, StoredMessage, queue_name};
use tenon::server::Server;
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_accepts_a_payload_once() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let tenon = Tenon::start(&ws);
    let url = format!("{}/v1/sources/cpq-source", tenon.base);
    let auth = format!("Bearer {}", tenon.token);
    let send = |key: Option<&'static str>, body: &'static str| {
        let (url, auth) = (url.clone(), auth.clone());
        async move {
            let mut headers: Vec<(&str, &str)> =
                key.map(|k| ("idempotency-key", k)).into_iter().collect();
            headers.push(("authorization", &auth));
            client::request(
                "POST",
                &url,
                &headers,
                Some(("application/json", body.as_bytes().to_vec())),
            )
            .await
            .unwrap()
        }
    };

    let first = send(Some("cpq-Q-00101-r1"), sample("plain.json")).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = send(Some("cpq-Q-00101-r1"), sample("plain.json")).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.json().unwrap(),
        first.json().unwrap(),
        "the original answer"
    );

    let reused = send(Some("cpq-Q-00101-r1"), sample("bundle.json")).await;
    assert_eq!(reused.status, 422);
    let problem = reused.json().unwrap();
    assert_eq!(problem["type"], "urn:tenon:problem:idempotency-key-reused");
    assert_eq!(
        problem["detail"],
        "the Idempotency-Key `cpq-Q-00101-r1` was already used for a different payload"
    );

    // Without a key, each request is its own.
    let a = send(None, sample("plain.json")).await.json().unwrap();
    let b = send(None, sample("plain.json")).await.json().unwrap();
    assert_ne!(a, b);

    let id = first.json().unwrap()["accepted"][0]
        .as_str()
        .unwrap()
        .to_owned();
    tenon.settled(&id).await;
    for other in [&a, &b] {
        tenon.settled(other["accepted"][0].as_str().unwrap()).await;
    }
    let from_key = erp
        .received()
        .iter()
        .filter(|r| {
            r.idempotency_key
                .as_deref()
                .is_some_and(|k| k.starts_with(&id))
        })
        .count();
    assert_eq!(from_key, 1, "two requests with one key made one order");
    assert_eq!(erp.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_returns_its_recorded_outcome_without_calling_the_erp() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let path = ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let config = Config::load(&path).unwrap();
    let local = "127.0.0.1:0".parse().ok();
    let listen = tenon::server::Listen {
        ingest: local,
        admin: local,
    };
    let server = Server::start(config, &ws.data_dir(), listen).await.unwrap();
    let runtime = server.runtime.clone();
    let token = std::fs::read_to_string(server.admin_key_file.as_ref().unwrap()).unwrap();

    let reply = client::request(
        "POST",
        &format!("http://{}/v1/sources/cpq-source", server.addr),
        &[("authorization", &format!("Bearer {}", token.trim()))],
        Some(("application/json", sample("plain.json").as_bytes().to_vec())),
    )
    .await
    .unwrap();
    let root: tenon::model::MessageId = reply.json().unwrap()["accepted"][0]
        .as_str()
        .unwrap()
        .into();
    let delivered = loop {
        let status = runtime.status(&root).await.unwrap();
        if status.is_settled() {
            break status.outcomes[0].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let OutcomeKind::Delivered { reference, .. } = delivered.result.clone() else {
        panic!("{delivered:?}")
    };
    assert_eq!(erp.received().len(), 1);

    // The same message (same id, hence same idempotency key) reaches the sink again,
    // as a redrive or a replay would bring it.
    let order = &erp.received()[0].body;
    let envelope = Envelope {
        message: StoredMessage {
            id: delivered.id.clone(),
            key: delivered.key.clone(),
            kind: delivered.kind.clone(),
            content_type: "application/json".into(),
            headers: vec![],
            body: serde_json::to_vec(order).unwrap(),
        },
        flow: delivered.flow.clone(),
        route: vec!["quote-to-order".into(), "erp-sink".into()],
        stage: 1,
        root: root.clone(),
        accepted_ms: 0,
        trail: vec![],
        attempts: vec![],
        not_before_ms: 0,
        root_kind: delivered.root_kind.clone(),
        trace: Default::default(),
        directive: None,
    };
    runtime
        .store()
        .enqueue(
            vec![(queue_name(&delivered.flow, "erp-sink"), envelope)],
            None,
        )
        .await
        .unwrap();
    let again = loop {
        let status = runtime.status(&root).await.unwrap();
        if status.is_settled() && status.outcomes[0].at_ms != delivered.at_ms {
            break status.outcomes[0].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        again.result,
        OutcomeKind::Delivered {
            reference,
            detail: delivered_detail(&delivered)
        }
    );
    assert_eq!(erp.received().len(), 1, "the ERP was not called again");
    server.stop().await;
}

fn delivered_detail(outcome: &tenon::model::Outcome) -> Option<String> {
    match &outcome.result {
        OutcomeKind::Delivered { detail, .. } => detail.clone(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_shown_redriven_and_discarded() {
    let erp = MockErp::start().await.unwrap();
    erp.set_unavailable(true);
    let ws = Workspace::new();
    // The flow retries 20 times, but its sink stage only once: the stage's own setting wins.
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), "").replace(
        "max_attempts = 20",
        "max_attempts = 20\nretry.erp-sink = { max_attempts = 1, backoff_ms = 10 }",
    ));
    let tenon = Tenon::start(&ws);
    let plain = tenon.send_quote(sample("plain.json")).await.remove(0);
    let bundle = tenon.send_quote(sample("bundle.json")).await.remove(0);
    tenon.settled(&plain).await;
    tenon.settled(&bundle).await;
    // The plain quote's order and the bundle's first were dead-lettered by the sink
    // run in the mapping's lease (fused), the bundle's second at the sink's queue:
    // a redrive puts either back in front of the sink alike.
    let at_sink = fused("quote-to-order", "erp-sink");
    assert_eq!(tenon.metric_reaching(&at_sink, 2).await, 2);

    let (ok, out, _) = tenon.cli(&["dlq", "list"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // The API lists a page at a time, oldest first; the pages make up the whole list.
    let mut paged = Vec::new();
    let mut path = "/v1/dlq?limit=2".to_owned();
    loop {
        let page = tenon.get(&path).await.json().unwrap();
        let ids = page["dead_letters"].as_array().unwrap();
        assert!(ids.len() <= 2, "{page}");
        paged.extend(ids.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/dlq?limit=2&after={next}"),
            None => break,
        }
    }
    let listed: Vec<String> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(paged, listed);
    assert_eq!(tenon.get("/v1/dlq?limit=0").await.status, 400);
    assert_eq!(tenon.get("/v1/dlq?after=nope").await.status, 400);
    for line in &lines {
        assert!(
            line.contains(
                "flow=quote-to-order stage=1 plugin=erp-sink attempts=1  retryable: HTTP 503: "
            ),
            "{line}"
        );
    }

    let plain_order = format!("{plain}.0");
    let (ok, out, _) = tenon.cli(&["dlq", "show", &plain_order]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["key"], "Q-00101");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert!(
        shown["attempts"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(
        shown["body"]["id"], "Q-00101-P",
        "the message itself is kept"
    );

    // The ERP is back: the redriven order is delivered, once.
    erp.set_unavailable(false);
    let (ok, out, _) = tenon.cli(&["dlq", "redrive", &plain_order]);
    assert!(ok);
    assert_eq!(out.trim(), format!("redrive {plain_order}: done"));
    let status = tenon.settled(&plain).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    assert_eq!(erp.received().len(), 1);

    let bundle_orders = [format!("{bundle}.0"), format!("{bundle}.1")];
    let (ok, _, _) = tenon.cli(&["dlq", "discard", &bundle_orders[0], &bundle_orders[1]]);
    assert!(ok);
    let (_, out, _) = tenon.cli(&["dlq", "list"]);
    assert_eq!(out.trim(), "no dead letters");
    let status = tenon.settled(&bundle).await;
    assert!(
        status["outcomes"][0]["result"]["DeadLetter"].is_object(),
        "the outcome stays recorded"
    );

    let (ok, _, err) = tenon.cli(&["dlq", "redrive", "nope"]);
    assert!(!ok);
    assert_eq!(err.trim(), "redrive nope: no dead letter with id `nope`");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reruns_accepted_messages_without_duplicating_effects() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let tenon = Tenon::start(&ws);
    let mut roots = Vec::new();
    for name in ["plain.json", "invalid.json", "bundle.json"] {
        let id = tenon.send_quote(sample(name)).await.remove(0);
        tenon.settled(&id).await;
        roots.push(id);
    }
    assert_eq!(erp.received().len(), 3);

    let events = tenon.get("/v1/events").await.json().unwrap();
    let names: Vec<(u64, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            (1, "QuoteApproved"),
            (2, "QuoteApproved"),
            (3, "Rejected"),
            (4, "QuoteApproved")
        ]
    );
    assert_eq!(events["events"][2]["reasons"].as_array().unwrap().len(), 3);

    let before: Vec<u64> = outcome_times(&tenon, &roots).await;
    let (ok, out, err) = tenon.cli(&["replay", "--flow", "quote-to-order", "--from", "1"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "replayed 3 messages of flow quote-to-order (offsets [1,2,4])"
    );
    // Every root settles again (new outcome times), and the ERP got nothing new.
    for (root, earlier) in roots.iter().zip(before) {
        tenon
            .wait_for(root, |s| {
                s["settled"] == true && s["outcomes"][0]["at_ms"].as_u64().unwrap() > earlier
            })
            .await;
    }
    assert_eq!(
        erp.received().len(),
        3,
        "replayed deliveries returned their recorded outcomes"
    );
    let events = tenon.get("/v1/events?from=5").await.json().unwrap();
    assert_eq!(
        events["events"][0]["event"], "Rejected",
        "the replayed invalid quote is rejected again"
    );

    // A time bound: nothing was accepted after now.
    let now = "2100-01-01T00:00:00Z";
    let (ok, out, _) = tenon.cli(&["replay", "--flow", "quote-to-order", "--from", now]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        "replayed 0 messages of flow quote-to-order (offsets [])"
    );
    let (ok, _, err) = tenon.cli(&["replay", "--flow", "nope", "--from", "1"]);
    assert!(!ok);
    assert_eq!(err.trim(), "error: no flow named `nope`");
}

async fn outcome_times(tenon: &Tenon, roots: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for root in roots {
        let status = tenon.settled(root).await;
        out.push(status["outcomes"][0]["at_ms"].as_u64().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_derived_key_accepts_a_quote_revision_once() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), ""));
    let tenon = Tenon::start(&ws);
    // A webhook body carrying LastModifiedDate: cpq-source keys it `<Id>@<LastModifiedDate>`.
    let revision = |stamp: &str| {
        sample("plain.json").replace(
            "\"Name\": \"Q-00101\",",
            &format!("\"Name\": \"Q-00101\",\n    \"LastModifiedDate\": \"{stamp}\","),
        )
    };
    let tenon = &tenon;
    let post = |body: String| async move {
        tenon
            .post(
                "/v1/sources/cpq-source",
                "application/json",
                body.as_bytes(),
            )
            .await
    };
    let first = post(revision("2026-11-20T10:15:00.000+0000")).await;
    let retry = post(revision("2026-11-20T10:15:00.000+0000")).await;
    assert_eq!((first.status, retry.status), (202, 202));
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.json().unwrap(), retry.json().unwrap());
    let next = post(revision("2026-11-21T08:00:00.000+0000")).await;
    assert_eq!(next.status, 202);
    assert_ne!(
        next.json().unwrap(),
        first.json().unwrap(),
        "a new revision is a new quote event"
    );
    for reply in [&first, &next] {
        tenon
            .settled(reply.json().unwrap()["accepted"][0].as_str().unwrap())
            .await;
    }
    assert_eq!(
        erp.received().len(),
        2,
        "two revisions, two orders; the retry made none"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flows_sink_runs_in_the_lease_of_its_last_transform_and_calls_the_erp_once() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&quote_to_cash_config(&erp.orders_url(), "backoff_ms = 100"));
    let tenon = Tenon::start(&ws);
    let at_sink = async |expected: u64| {
        let series = fused("quote-to-order", "erp-sink");
        tenon.metric_reaching(&series, expected).await
    };
    let ended = async |result: &str, expected: u64| {
        let series = format!(r#"tenon_messages_total{{flow="quote-to-order",result="{result}"}}"#);
        tenon.metric_reaching(&series, expected).await
    };
    let hops = |outcome: &serde_json::Value| -> Vec<String> {
        let trail = outcome["trail"].as_array().unwrap();
        trail
            .iter()
            .map(|h| h["plugin"].as_str().unwrap().to_owned())
            .collect()
    };

    // Delivered in the mapping's lease: its trail and counts as if it had hopped.
    let plain = tenon.send_quote(sample("plain.json")).await.remove(0);
    let status = tenon.settled(&plain).await;
    let outcome = &status["outcomes"][0];
    assert!(outcome["result"]["Delivered"].is_object(), "{status:#}");
    assert_eq!(outcome["plugin"], "erp-sink");
    assert_eq!(hops(outcome), ["cpq-source", "quote-to-order", "erp-sink"]);
    assert_eq!((at_sink(1).await, ended("delivered", 1).await), (1, 1));
    assert_eq!(erp.received().len(), 1);

    // Refused by the ERP: each order rejected, the ERP asked once per order (a fused
    // sink's end is committed, not left for the sink's workers to call again). The
    // sink ends one message a lease: the bundle's second order goes through its queue.
    erp.refuse("/sap/orders", "customer blocked");
    let bundle = tenon.send_quote(sample("bundle.json")).await.remove(0);
    let status = tenon.settled(&bundle).await;
    let outcomes = status["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{status:#}");
    for outcome in outcomes {
        let reasons = outcome["result"]["Rejected"]["reasons"].to_string();
        assert!(reasons.contains("customer blocked"), "{status:#}");
    }
    assert_eq!(erp.received().len(), 3);
    assert_eq!((at_sink(2).await, ended("rejected", 2).await), (2, 2));
    erp.accept_all();

    // Unavailable: the fused delivery fails and the order waits at the sink for its
    // retry, that attempt counted; the sink's own workers deliver it.
    erp.set_unavailable(true);
    let other = sample("plain.json").replace("Q-00101", "Q-00103");
    let other = tenon.send_quote(&other).await.remove(0);
    tenon
        .wait_for(&other, |s| {
            s["pending"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p["stage"] == 1 && p["attempts"].as_array().is_some_and(|a| !a.is_empty())
                })
            })
        })
        .await;
    erp.set_unavailable(false);
    let status = tenon.settled(&other).await;
    let outcome = &status["outcomes"][0];
    assert!(outcome["result"]["Delivered"].is_object(), "{status:#}");
    assert!(
        !outcome["attempts"].as_array().unwrap().is_empty(),
        "{status:#}"
    );
    assert_eq!(ended("delivered", 2).await, 2);
    assert_eq!(
        at_sink(2).await,
        2,
        "a step left queued is not counted as fused"
    );
    assert_eq!(erp.orders(), 2);
}
