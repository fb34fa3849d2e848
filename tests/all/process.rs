//! The process layer through the binary: rules in CEL (hold, reject, a filter),
//! exceptions decided through the API and the CLI, and sagas that undo what a
//! transaction delivered when another part of it fails for good, at once or after a
//! person's decision.

use crate::support::{GATEWAY_AND_MASTER, SETTLE, Tenon, Workspace, fused, sample, tenon_cli};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tenon_testkit::mock_erp::MockErp;

/// A quote's orders published, each category to its own system: the ERP takes the
/// physical ones, billing the subscriptions (filters in CEL). `erp_flow` and
/// `billing_flow` are extra lines of those flows' tables.
fn config(
    erp: &MockErp,
    billing: &MockErp,
    erp_flow: &str,
    billing_flow: &str,
    quotes: &str,
) -> String {
    let plugins = erp_plugins(erp);
    format!(
        r#"
{plugins}
[plugins.billing]
path = "plugins/http-sink"
config = {{ url = "http://{billing}/billing/subscriptions" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[flows.quotes]
source = "cpq-source"
steps = ["quote-to-order"]
{quotes}

[flows.erp]
subscribe = ["OrderDrafted"]
filter = 'order.category == "Physical"'
sink = "erp"
backoff_ms = 20
max_backoff_ms = 100
max_attempts = 200
{erp_flow}

[flows.billing]
subscribe = ["OrderDrafted"]
filter = 'order.category == "Subscription"'
sink = "billing"
backoff_ms = 20
max_backoff_ms = 100
max_attempts = 200
{billing_flow}
"#,
        billing = billing.addr,
    )
}

/// The CPQ source, the mapping and the ERP's sink (which can undo a delivery).
fn erp_plugins(erp: &MockErp) -> String {
    format!(
        r#"
[plugins.cpq-source]
path = "plugins/cpq-source"
[plugins.quote-to-order]
path = "plugins/quote-to-order"
[plugins.erp]
path = "plugins/http-sink"
config = {{ url = "http://{erp}/erp/orders", compensate_url = "http://{erp}/erp/orders/{{ref}}" }}
grants = {{ http = ["http://127.0.0.1:*"] }}
"#,
        erp = erp.addr
    )
}

/// The two systems (an ERP, billing), a workspace with [`config`] and Tenon on it.
async fn started(
    erp_flow: &str,
    billing_flow: &str,
    quotes: &str,
) -> (MockErp, MockErp, Workspace, Tenon) {
    let (erp, billing) = (
        MockErp::start().await.unwrap(),
        MockErp::start().await.unwrap(),
    );
    let ws = Workspace::new();
    ws.write_config(&config(&erp, &billing, erp_flow, billing_flow, quotes));
    let tenon = Tenon::start(&ws);
    (erp, billing, ws, tenon)
}

/// The outcome of the message with this id among a status's.
fn outcome<'a>(status: &'a Value, id_suffix: &str) -> &'a Value {
    status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"].as_str().is_some_and(|id| id.ends_with(id_suffix)))
        .unwrap_or_else(|| panic!("no outcome `*{id_suffix}`: {status:#}"))
}

/// The exceptions the server lists now.
async fn exceptions(tenon: &Tenon) -> Vec<Value> {
    let reply = tenon.get("/v1/exceptions").await;
    assert_eq!(reply.status, 200);
    reply.json().unwrap()["exceptions"]
        .as_array()
        .unwrap()
        .clone()
}

/// Wait until there are `n` exceptions; return them.
async fn await_exceptions(tenon: &Tenon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let held = exceptions(tenon).await;
        if held.len() == n {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "{} exceptions, not {n}: {held:#?}",
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until `erp` received `n` POSTs to paths starting with `prefix`.
async fn await_requests(erp: &MockErp, prefix: &str, n: usize) {
    let deadline = Instant::now() + SETTLE;
    let posts = || {
        erp.received()
            .iter()
            .filter(|r| r.method == "POST" && r.path.starts_with(prefix))
            .count()
    };
    while posts() < n {
        assert!(Instant::now() < deadline, "{:#?}", erp.received());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_hold_reject_and_route_without_code_and_people_decide() {
    let (erp, billing) = (
        MockErp::start().await.unwrap(),
        MockErp::start().await.unwrap(),
    );
    let ws = Workspace::new();
    let hold = |limit: &str| {
        format!(
            r#"
[[flows.erp.rules]]
when = 'double(order.total.amount) > {limit}'
then = "hold"
reason = "orders over {limit} need finance's approval"
"#
        )
    };
    let legal = r#"
[[flows.quotes.rules]]
when = 'quote.number == "Q-00101" && quote.currency == "EUR"'
then = "reject"
reason = "Q-00101 is stopped by legal"
"#;
    ws.write_config(&config(&erp, &billing, &hold("5000.0"), "", legal));
    let tenon = Tenon::start(&ws);

    // A reject rule before the mapping: the plain quote ends there, with its reason.
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["Rejected"]["reasons"],
        json!(["rule 1: Q-00101 is stopped by legal"]),
        "{status:#}"
    );

    // The bundle: the filters send the subscription to billing only, and the hold rule
    // stops the physical order (6600.00) before the ERP: an exception for a person.
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let held = &outcome(&status, "@erp")["result"]["Held"];
    assert_eq!(held["rule"], "rule 1", "{status:#}");
    assert_eq!(
        held["reasons"],
        json!(["orders over 5000.0 need finance's approval"])
    );
    assert!(outcome(&status, "@billing")["result"]["Delivered"].is_object());
    assert_eq!(billing.received().len(), 1);
    assert_eq!(billing.received()[0].body["category"], "Subscription");
    assert!(erp.received().is_empty());
    let listed = await_exceptions(&tenon, 1).await;
    let exception = &listed[0];
    assert_eq!(exception["key"], "Q-00102");
    assert_eq!(exception["flow"], "erp");
    assert_eq!(exception["stage"], "erp");
    assert_eq!(exception["kind"], "OrderDrafted");
    assert!(
        exception["proposed"]
            .as_str()
            .unwrap()
            .starts_with("approve: `erp` takes it")
    );
    let id = exception["id"].as_str().unwrap().to_owned();
    let detail = tenon
        .get(&format!("/v1/exceptions/{id}"))
        .await
        .json()
        .unwrap();
    assert_eq!(detail["body"]["total"]["amount"], "6600.00", "{detail:#}");

    // The CLI lists it, and approves it: the ERP takes the order, once.
    let (ok, out, err) = tenon.cli(&["exceptions", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains("key=Q-00102") && out.contains("rule 1"),
        "{out}"
    );
    let (ok, out, err) = tenon.cli(&["exceptions", "approve", &id, "--note", "CFO agreed"]);
    assert!(ok, "{err}");
    assert!(out.contains("approve"), "{out}");
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true
                && s.to_string().contains("\"Delivered\"")
                && !s.to_string().contains("\"Held\"")
        })
        .await;
    assert!(
        outcome(&status, "@erp")["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    await_requests(&erp, "/erp/orders", 1).await;
    assert_eq!(erp.received()[0].body["id"], "Q-00102-P");
    assert!(exceptions(&tenon).await.is_empty());
    // Decided already: nothing to decide.
    let again = tenon
        .post(
            &format!("/v1/exceptions/{id}/reject"),
            "application/json",
            b"{}",
        )
        .await;
    assert_eq!(again.status, 404);

    // Held again, and rejected through the API: it ends rejected with the note.
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let id = await_exceptions(&tenon, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = tenon
        .post(
            &format!("/v1/exceptions/{id}/reject"),
            "application/json",
            br#"{"note": "customer over its credit limit"}"#,
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let decided = reply.json().unwrap();
    assert_eq!(decided["decision"], "reject");
    let status = tenon
        .wait_for(&ids[0], |s| {
            s.to_string().contains("customer over its credit limit")
        })
        .await;
    let reasons = &outcome(&status, "@erp")["result"]["Rejected"]["reasons"];
    let by = decided["by"].as_str().unwrap();
    assert_eq!(
        reasons,
        &json!([format!("rejected by {by}: customer over its credit limit")])
    );
    assert_eq!(
        erp.received().len(),
        1,
        "the rejected order never reached the ERP"
    );

    // The rules reload with the config: a higher threshold lets the order through.
    let text = config(&erp, &billing, &hold("7000.0"), "", legal);
    ws.write_config(&text);
    let digest = tenon::model::digest(ws.config_text(&text).as_bytes());
    let deadline = Instant::now() + SETTLE;
    while tenon.get("/v1/plugins").await.json().unwrap()["config"]["digest"] != digest.as_str() {
        assert!(Instant::now() < deadline, "the new rules were not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        outcome(&status, "@erp")["result"]["Delivered"].is_object(),
        "{status:#}"
    );

    // An expression that does not compile is refused at load, its place named.
    let bad = config(
        &erp,
        &billing,
        "",
        "",
        &hold("").replace("flows.erp", "flows.quotes"),
    );
    let path = ws.write_config(&bad);
    let (ok, _, err) = tenon_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("flow `quotes`: rule 1: `when = 'double(order.total.amount) > '`: at 1:"),
        "{err}"
    );
    let unknown = config(&erp, &billing, "", "", "filter = 'x'");
    let path = ws.write_config(&unknown);
    let (ok, _, err) = tenon_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("`filter` is for a flow that subscribes to events"),
        "{err}"
    );
    // A saga needs a sink that can undo; a reconciliation, one that reads back.
    let sap = r#"
[plugins.sap]
path = "plugins/sap-sink"
config = { service_url = "http://127.0.0.1:9/sap" }
[flows.sap]
subscribe = ["OrderDrafted"]
filter = 'order.category == "Physical"'
sink = "sap"
saga = "compensate"
"#;
    let path = ws.write_config(&(config(&erp, &billing, "", "", "") + sap));
    let (ok, _, err) = tenon_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("flow `sap`: `saga` needs a sink that can undo a delivery; `sap` does not export `tenon:plugin/compensator`"),
        "{err}"
    );
    let recon = "\n[reconciliations.r]\nerp = \"sap\"\n[flows.mismatches]\nsubscribe = [\"ReconciliationException\"]\nsink = \"erp\"\n";
    let path = ws.write_config(
        &(config(&erp, &billing, "", "", "") + &sap.replace("saga = \"compensate\"", "") + recon),
    );
    let (ok, _, err) = tenon_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("reconciliation `r`: `erp = \"sap\"` cannot read back what its system holds"),
        "{err}"
    );
    let typo = config(&erp, &billing, "", "", "").replace(
        r#"filter = 'order.category == "Physical"'"#,
        r#"filter = 'ordr.category == "Physical"'"#,
    );
    let path = ws.write_config(&typo);
    let (ok, _, err) = tenon_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("unknown name `ordr`"), "{err}");
}

/// Billing answers 503 until the ERP has the physical order, then refuses the
/// subscription (422): the failure comes after the delivery, every time.
async fn billing_fails_after_the_erp_delivered(tenon: &Tenon, root: &str, billing: &MockErp) {
    // Its delivery committed (the outcome recorded), not only received by the ERP:
    // a failure committed at the same instant would not see it.
    tenon
        .wait_for(root, |s| outcome_is(s, "@erp", "Delivered"))
        .await;
    billing.refuse("/billing", "no billing account for this customer");
    billing.set_unavailable(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_part_undoes_what_its_transaction_delivered() {
    let saga = r#"saga = "compensate""#;
    let (erp, billing, _ws, tenon) = started(saga, saga, "").await;

    billing.set_unavailable(true);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    billing_fails_after_the_erp_delivered(&tenon, &ids[0], &billing).await;
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && s.to_string().contains("Compensated")
        })
        .await;
    let number = erp.received()[0].order_number.clone();
    let undone = &outcome(&status, "@erp.undo")["result"]["Compensated"];
    assert_eq!(undone["reference"], number.as_str(), "{status:#}");
    assert!(outcome(&status, "@billing")["result"]["Rejected"].is_object());
    // The ERP order is cancelled, once, by the number it gave.
    tenon.drained().await;
    assert_eq!(erp.cancelled(), vec![number.clone()]);
    let delete = erp
        .received()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(delete.path, format!("/erp/orders/{number}"));
    assert!(delete.idempotency_key.unwrap().ends_with("@erp.undo"));
    assert!(exceptions(&tenon).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_exception_waits_for_a_person_to_undo_or_resume() {
    let (erp, billing) = (
        MockErp::start().await.unwrap(),
        MockErp::start().await.unwrap(),
    );
    let ws = Workspace::new();
    let config = config(&erp, &billing, r#"saga = "exception""#, "", "");
    ws.write_config(&config);
    let tenon = Tenon::start(&ws);

    // The subscription fails after the physical order was booked: held, not undone.
    billing.set_unavailable(true);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    billing_fails_after_the_erp_delivered(&tenon, &ids[0], &billing).await;
    let held = await_exceptions(&tenon, 1).await;
    let number = erp.received()[0].order_number.clone();
    assert_eq!(held[0]["rule"], "saga");
    assert_eq!(held[0]["stage"], "billing");
    assert!(
        held[0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no billing account"),
        "{held:#?}"
    );
    let proposed = held[0]["proposed"].as_str().unwrap();
    assert!(proposed.contains(&format!("erp `{number}`")), "{proposed}");
    assert!(
        erp.cancelled().is_empty(),
        "nothing is undone before a person decides"
    );

    // Rejected through the CLI: the ERP order is cancelled.
    let id = held[0]["id"].as_str().unwrap().to_owned();
    let (ok, _, err) = tenon.cli(&["exceptions", "reject", &id, "--note", "lost deal"]);
    assert!(ok, "{err}");
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && s.to_string().contains("Compensated")
        })
        .await;
    assert!(
        outcome(&status, "@billing")["result"]["Rejected"].is_object(),
        "{status:#}"
    );
    tenon.drained().await;
    assert_eq!(erp.cancelled(), vec![number]);

    // Again, and approved once billing knows the customer: the subscription is tried
    // again and delivered; nothing is undone.
    billing.accept_all();
    billing.set_unavailable(true);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    billing_fails_after_the_erp_delivered(&tenon, &ids[0], &billing).await;
    let id = await_exceptions(&tenon, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    billing.accept_all();
    let (ok, _, err) = tenon.cli(&["exceptions", "approve", &id]);
    assert!(ok, "{err}");
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && outcome_is(s, "@billing", "Delivered")
        })
        .await;
    assert!(!status.to_string().contains("Compensated"), "{status:#}");
    assert_eq!(erp.cancelled().len(), 1);
}

fn outcome_is(status: &Value, id_suffix: &str, result: &str) -> bool {
    status["outcomes"].as_array().is_some_and(|outcomes| {
        outcomes.iter().any(|o| {
            o["id"].as_str().is_some_and(|id| id.ends_with(id_suffix))
                && o["result"].get(result).is_some()
        })
    })
}

/// A saga's undoing is durable: queued with the failure, it survives a kill -9 while
/// the ERP is down, and runs once when it is back.
#[tokio::test(flavor = "multi_thread")]
async fn an_undoing_survives_a_crash_and_runs_once() {
    let saga = r#"saga = "compensate""#;
    let (erp, billing, ws, tenon) = started(saga, saga, "").await;

    billing.set_unavailable(true);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    await_requests(&erp, "/erp/orders", 1).await;
    let number = erp.received()[0].order_number.clone();
    // The ERP goes down, then billing refuses: the undoing is queued and retried.
    erp.set_unavailable(true);
    billing.refuse("/billing", "no billing account for this customer");
    billing.set_unavailable(false);
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["pending"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|e| e["id"].as_str().is_some_and(|id| id.ends_with("@erp.undo")))
            }) && outcome_is(s, "@billing", "Rejected")
        })
        .await;
    assert!(!status.to_string().contains("Compensated"), "{status:#}");
    tenon.kill();

    // Back up, the ERP too: the sale is cancelled, once.
    let tenon = Tenon::start(&ws);
    erp.set_unavailable(false);
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && outcome_is(s, "@erp.undo", "Compensated")
        })
        .await;
    assert_eq!(
        outcome(&status, "@erp.undo")["result"]["Compensated"]["reference"],
        number.as_str()
    );
    tenon.drained().await;
    assert_eq!(erp.cancelled(), vec![number]);
    assert_eq!(
        erp.received()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1,
        "{:#?}",
        erp.received()
    );
}

/// An approval waives what held the message, not the stage's other rules.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_waives_only_what_held_it() {
    let (erp, billing) = (
        MockErp::start().await.unwrap(),
        MockErp::start().await.unwrap(),
    );
    let ws = Workspace::new();
    let rules = r#"
[[flows.erp.rules]]
when = 'double(order.total.amount) > 5000.0'
then = "hold"
reason = "orders over 5000 need finance's approval"
[[flows.erp.rules]]
when = 'order.customer.country == "FR"'
then = "reject"
reason = "no deliveries to France this week"
"#;
    ws.write_config(&config(&erp, &billing, rules, "", ""));
    let tenon = Tenon::start(&ws);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let held = await_exceptions(&tenon, 1).await;
    assert_eq!(held[0]["rule"], "rule 1");
    let id = held[0]["id"].as_str().unwrap().to_owned();
    let reply = tenon
        .post(
            &format!("/v1/exceptions/{id}/approve"),
            "application/json",
            b"{}",
        )
        .await;
    assert_eq!(reply.status, 200);
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && outcome_is(s, "@erp", "Rejected")
        })
        .await;
    assert_eq!(
        outcome(&status, "@erp")["result"]["Rejected"]["reasons"],
        json!(["rule 2: no deliveries to France this week"])
    );
    assert!(erp.received().is_empty());
}

/// Nothing more is delivered into a transaction that failed; an undoing the target
/// refuses is a dead letter for a person.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transaction_takes_no_more_and_a_refused_undoing_is_a_dead_letter() {
    let saga = r#"saga = "compensate""#;
    let (erp, billing, _ws, tenon) = started(saga, saga, "").await;

    // Billing refuses while the ERP is down: the physical order is not delivered later.
    erp.set_unavailable(true);
    billing.refuse("/billing", "no billing account for this customer");
    let ids = tenon.send_quote(sample("bundle.json")).await;
    tenon
        .wait_for(&ids[0], |s| outcome_is(s, "@billing", "Rejected"))
        .await;
    erp.set_unavailable(false);
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && outcome_is(s, "@erp", "Rejected")
        })
        .await;
    let reasons = outcome(&status, "@erp")["result"]["Rejected"]["reasons"].to_string();
    assert!(
        reasons.contains("not delivered: part of its transaction failed"),
        "{reasons}"
    );
    assert!(erp.received().is_empty(), "{:#?}", erp.received());

    // Delivered first, then the ERP refuses to cancel it: a dead letter names why.
    billing.accept_all();
    billing.set_unavailable(true);
    let ids = tenon.send_quote(sample("bundle.json")).await;
    await_requests(&erp, "/erp/orders", 1).await;
    erp.refuse("/erp/orders/", "the order has shipped");
    billing.refuse("/billing", "no billing account for this customer");
    billing.set_unavailable(false);
    let status = tenon
        .wait_for(&ids[0], |s| {
            s["settled"] == true && outcome_is(s, "@erp.undo", "DeadLetter")
        })
        .await;
    let error = outcome(&status, "@erp.undo")["result"]["DeadLetter"]["error"].to_string();
    assert!(
        error.contains("the undoing was refused") && error.contains("the order has shipped"),
        "{error}"
    );
    let (ok, out, _) = tenon.cli(&["dlq", "list"]);
    assert!(ok);
    assert!(out.contains("@erp.undo"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_run_in_its_transforms_lease_sees_the_transaction_as_a_hop_would() {
    // The flow maps a bundle to two orders and delivers them itself: the first in the
    // mapping's lease (fused), the second through the sink's queue after that commit,
    // so the saga sees the first's failure before the second is sent. Fused both in
    // one lease, the second would be sent into the failed transaction.
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let flow = r#"
[flows.orders]
source = "cpq-source"
steps = ["quote-to-order"]
sink = "erp"
saga = "compensate"
"#;
    ws.write_config(&(erp_plugins(&erp) + flow));
    let tenon = Tenon::start(&ws);
    erp.refuse("/erp/orders", "the customer is blocked");
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let outcomes = status["outcomes"].as_array().unwrap();
    let reasons: Vec<&str> = outcomes
        .iter()
        .map(|o| o["result"]["Rejected"]["reasons"][0].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{status:#}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("the customer is blocked")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not delivered: part of its transaction failed")),
        "{reasons:?}"
    );
    assert_eq!(erp.received().len(), 1, "{:#?}", erp.received());
    let at_sink = fused("orders", "erp");
    assert_eq!(tenon.metric_reaching(&at_sink, 1).await, 1);

    // Delivered in the mapping's lease, an order keeps what it delivered, to be
    // undone should its transaction fail (the saga's say, as at the sink's workers).
    erp.accept_all();
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let delivered = &status["outcomes"][0];
    assert!(delivered["result"]["Delivered"].is_object(), "{status:#}");
    assert_eq!(delivered["undo"]["kind"], "OrderDrafted", "{status:#}");
    assert_eq!(tenon.metric_reaching(&at_sink, 2).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_sink_is_not_run_in_a_lease_that_left_a_failing_part_behind() {
    // The gateway refuses one of a bundle's two orders in the mapping's lease: that
    // rejection is committed by the gateway's own workers, after this lease's commit.
    // Fused, the sink would deliver the other order before the saga could see its
    // transaction fail, and undo it right after; it goes through the sink's queue
    // instead, as hop by hop. With nothing left behind, the sink is fused.
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let flows = r#"
[flows.orders]
source = "cpq-source"
steps = ["quote-to-order", "gateway"]
sink = "erp"
saga = "compensate"
"#;
    ws.write_config(&(erp_plugins(&erp) + GATEWAY_AND_MASTER + flows));
    let tenon = Tenon::start(&ws);
    tenon.load_customers().await;
    let at_sink = fused("orders", "erp");

    // (Which comes first then, the rejection's commit or the delivery, is the same
    // race as hop by hop: the other order ends delivered and undone, or unsent.)
    let ids = tenon.send_quote(sample("bundle.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let outcomes = status["outcomes"].as_array().unwrap();
    assert!(
        outcomes
            .iter()
            .any(|o| o["plugin"] == "gateway" && o["result"]["Rejected"].is_object()),
        "{status:#}"
    );
    // The gateway's step ran in the mapping's lease; the sink's did not.
    let gateway = fused("orders", "gateway");
    assert_eq!(tenon.metric_reaching(&gateway, 1).await, 1);
    assert_eq!(tenon.metric(&at_sink).await, 0);

    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    assert_eq!(tenon.metric_reaching(&at_sink, 1).await, 1);
}
