//! What operators see, through the binary: one quote's spans as one tree in a real
//! OTLP wire format from the caller to the ERP (and the ERP's request carrying it),
//! logs carrying trace ids, the metrics a real Prometheus scrapes with a query for
//! each KPI, `tenon kpis`, and `tenon trace` on a quote split into two orders.

use crate::chain::{STRIPE_SECRET, config, settled_with, stripe_post};
use crate::support::{Tenon, Workspace, public_fixture as fixture, sample};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;
use tenon_testkit::otlp::OtlpReceiver;
use tenon_testkit::prometheus::PrometheusServer;

/// The chain's config against this mock ERP, and its workspace with the Stripe secret.
fn workspace(erp: &MockErp, extra: &str) -> Workspace {
    let base = erp.orders_url();
    let base = base.trim_end_matches("/sap/orders");
    let ws = Workspace::new();
    ws.write_config(&format!("{}{extra}", config(base)));
    std::fs::write(ws.path().join("stripe-secret.txt"), STRIPE_SECRET).unwrap();
    ws
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn one_quote_is_one_trace_tree_from_the_caller_to_the_erp() {
    let collector = OtlpReceiver::start().await.unwrap();
    let erp = MockErp::start().await.unwrap();
    let ws = workspace(
        &erp,
        &format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"tenon-test\"\n",
            collector.endpoint()
        ),
    );
    let tenon = Tenon::start_with_env(&ws, &[("TENON_LOG_FORMAT", "json")]);
    tenon.load_customers().await;

    // The caller's trace is continued, and the answer names it.
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let reply = client::request(
        "POST",
        &format!("{}/v1/sources/cpq-source", tenon.base),
        &[
            ("authorization", &format!("Bearer {}", tenon.token)),
            ("traceparent", &traceparent),
        ],
        Some(("application/json", sample("plain.json").as_bytes().to_vec())),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202);
    let answered = reply
        .headers
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("the answer names the trace");
    assert!(
        answered.starts_with(&format!("00-{CALLER_TRACE}-")),
        "{answered}"
    );
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    settled_with(&tenon, &ids[0], 1).await;

    // The ERP's request carries the trace, from the span of that very request.
    let order = erp
        .received()
        .into_iter()
        .find(|r| r.path == "/de/orders")
        .expect("delivered");
    let sent = order.traceparent.expect("the host injects traceparent");
    assert!(sent.starts_with(&format!("00-{CALLER_TRACE}-")), "{sent}");
    let sent_span = sent.split('-').nth(2).unwrap().to_owned();

    // Every span of the quote, from ingest through three steps in one flow and the
    // delivery in another, hangs from the caller's span in one tree.
    let spans = collector
        .wait_for(Duration::from_secs(60), |spans| {
            spans.iter().any(|s| {
                s.trace_id == CALLER_TRACE
                    && s.name == "step"
                    && s.attributes.get("tenon.step").map(String::as_str) == Some("erp-de")
            })
        })
        .await;
    let trace: Vec<_> = spans
        .into_iter()
        .filter(|s| s.trace_id == CALLER_TRACE)
        .collect();
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    assert_eq!(roots[0].name, "ingest");
    assert_eq!(roots[0].parent_span_id, CALLER_SPAN);
    assert!(trace.iter().all(|s| s.service == "tenon-test"));
    let steps: BTreeSet<(String, String)> = trace
        .iter()
        .filter(|s| s.name == "step")
        .map(|s| {
            (
                s.attributes["tenon.flow"].clone(),
                s.attributes["tenon.step"].clone(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("erp-de", "erp-de"),
            ("quote-to-order", "gateway"),
            ("quote-to-order", "quote-to-order"),
            ("quote-to-order", "router"),
        ]
        .into_iter()
        .map(|(f, s)| (f.to_owned(), s.to_owned()))
        .collect()
    );
    let count = |name: &str| trace.iter().filter(|s| s.name == name).count();
    assert_eq!(count("plugin.call"), 4);
    // The mapping, the gateway and the router run in one lease (fused steps), and
    // so does the delivery of the ERP flow the routed order enters: one commit.
    assert_eq!(count("store.commit"), 1);
    let fused: BTreeSet<&str> = trace
        .iter()
        .filter(|s| s.name == "step")
        .filter(|s| s.attributes.get("tenon.result").map(String::as_str) == Some("fused"))
        .map(|s| s.attributes["tenon.step"].as_str())
        .collect();
    assert_eq!(fused, BTreeSet::from(["gateway", "router"]));
    let request = trace
        .iter()
        .find(|s| s.name == "http.request")
        .expect("the outbound request's span");
    assert_eq!(request.span_id, sent_span);
    assert_eq!(request.attributes["http.response.status"], "201");
    let call = trace
        .iter()
        .find(|s| s.span_id == request.parent_span_id)
        .unwrap();
    assert_eq!(call.name, "plugin.call");
    assert_eq!(call.attributes["tenon.plugin"], "erp-de");
    assert!(collector.errors().is_empty(), "{:?}", collector.errors());

    // The logs, as JSON, carry each message's trace and span ids.
    let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap();
    let delivered: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "message delivered")
        .collect();
    assert!(
        delivered
            .iter()
            .any(|line| line["span"]["trace_id"] == CALLER_TRACE
                && line["span"]["span_id"]
                    .as_str()
                    .is_some_and(|s| s.len() == 16)),
        "{delivered:#?}"
    );
}

/// The subscription Zuora's amendment example changes, created on 2023-01-01 for a
/// year with the plan it removes at 100.00 a month.
fn subscription_amended_later() -> Value {
    let mut order = fixture("zuora_order_create_subscription.json");
    let create = &mut order["subscriptions"][0]["orderActions"][0];
    create["triggerDates"][0]["triggerDate"] = json!("2023-01-01");
    create["createSubscription"]["subscriptionNumber"] = json!("A-S00000272");
    create["createSubscription"]["subscribeToRatePlans"] = json!([{
        "productRatePlanId": "8a90a9b784ae5f180184c6c46a1a46b6",
        "chargeOverrides": [{"billingPeriod": "Month", "pricing": {"recurringFlatFee": {"listPrice": 100}}}]
    }]);
    order["orderNumber"] = json!("OM-KPI");
    order
}

/// Zuora's amendment example with a price on the plan it adds: its schedules reach
/// finance.
fn priced_amendment() -> Value {
    let mut order = fixture("zuora_order_amendment_remove_add_product.json");
    let actions = &mut order["subscriptions"][1]["orderActions"];
    actions[0]["addProduct"]["chargeOverrides"] = json!([{
        "productRatePlanChargeId": "c2", "billingPeriod": "Month",
        "pricing": {"recurringFlatFee": {"listPrice": 50}}
    }]);
    let add = actions[0].clone();
    *actions = json!([{
        "type": "TermsAndConditions",
        "termsAndConditions": {"lastTerm": {"period": 12, "periodType": "Month", "termType": "TERMED"}},
        "triggerDates": add["triggerDates"].clone(),
    }, add]);
    order
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_kpi_and_a_quote_is_traced_across_its_orders() {
    let erp = MockErp::start().await.unwrap();
    let ws = workspace(&erp, "");
    let tenon = Tenon::start(&ws);
    tenon.load_customers().await;

    // The example's traffic: a German quote (one order), a French bundle (split in
    // two orders, one refused by a rule), a quote with an unknown customer (refused),
    // a subscription, an amendment and a posted invoice.
    for (name, outcomes) in [("plain.json", 1), ("bundle.json", 2)] {
        let ids = tenon.send_quote(sample(name)).await;
        settled_with(&tenon, &ids[0], outcomes).await;
    }
    let unknown = sample("plain.json")
        .replace("0015g00000XyZ12AAB", "0015g00000NEW001AAA")
        .replace("\"DE\"", "\"BR\"")
        .replace("Q-00101", "Q-00199");
    let ids = tenon.send_quote(&unknown).await;
    settled_with(&tenon, &ids[0], 1).await;
    let ids = tenon
        .send_quote_to("zuora", &subscription_amended_later().to_string())
        .await;
    settled_with(&tenon, &ids[0], 1).await;
    let ids = tenon
        .send_quote_to("zuora", &priced_amendment().to_string())
        .await;
    let status = settled_with(&tenon, &ids[0], 1).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "the amendment's schedule reached finance: {status:#}"
    );
    let mut finalized = fixture("stripe_invoice_event_invoice_paid.json");
    finalized["type"] = json!("invoice.finalized");
    finalized["id"] = json!("evt_kpi_finalized");
    let reply = stripe_post(&tenon, &finalized.to_string(), STRIPE_SECRET).await;
    let ids: Vec<String> =
        serde_json::from_value(reply.json().unwrap()["accepted"].clone()).unwrap();
    settled_with(&tenon, &ids[0], 2).await;

    // A real Prometheus scrapes the admin listener with an admin:read key.
    let (ok, out, err) = tenon.cli(&["keys", "create", "--scope", "admin:read"]);
    assert!(ok, "{err}");
    let token_file = ws.path().join("prometheus.token");
    std::fs::write(&token_file, out.lines().last().unwrap().trim()).unwrap();
    let target = tenon.admin.trim_start_matches("http://").to_owned();
    let prometheus = PrometheusServer::start(&target, "/metrics", Some(&token_file)).unwrap();
    prometheus.wait_until_up(Duration::from_secs(60)).await;
    let value = |result: &Value| -> f64 {
        result[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value: {result:#}"))
    };
    let wait = Duration::from_secs(30);
    // Quote-to-order latency: the German order and the French physical one.
    let q2o = prometheus
        .wait_for("tenon_kpi_quote_to_order_seconds_count", wait)
        .await;
    assert_eq!(value(&q2o), 2.0);
    let p95 = prometheus
        .wait_for(
            "histogram_quantile(0.95, tenon_kpi_quote_to_order_seconds_bucket)",
            wait,
        )
        .await;
    assert!(value(&p95) > 0.0 && value(&p95) < 60.0, "{p95:#}");
    // Order rejection rate, and by rule.
    let rate = prometheus
        .wait_for(
            "sum(tenon_kpi_orders_total{result=\"rejected\"}) / sum(tenon_kpi_orders_total)",
            wait,
        )
        .await;
    assert_eq!(value(&rate), 0.5);
    let rule = prometheus
        .wait_for(
            "tenon_kpi_order_rejections_total{rule=\"gateway: line …: product … may not be sold in FR\"}",
            wait,
        )
        .await;
    assert_eq!(value(&rule), 1.0);
    // Invoice posting success.
    let posted = prometheus
        .wait_for(
            "sum(tenon_kpi_invoice_postings_total{result=\"posted\"}) / sum(tenon_kpi_invoice_postings_total)",
            wait,
        )
        .await;
    assert_eq!(value(&posted), 1.0);
    // Amendment propagation delay: one measure per schedule the amendment changed
    // (the removed plan's and the added one's).
    let amended = prometheus
        .wait_for("tenon_kpi_amendment_propagation_seconds_count", wait)
        .await;
    assert_eq!(value(&amended), 2.0);
    // And the system's own figures.
    for query in [
        "tenon_plugin_call_duration_seconds_count{plugin=\"gateway\",outcome=\"ok\"}",
        "tenon_outbound_request_duration_seconds_count{plugin=\"erp-de\",status=\"201\"}",
        "tenon_messages_total{flow=\"erp-de\",result=\"delivered\"}",
        "tenon_commit_duration_seconds_count",
    ] {
        let result = prometheus.wait_for(query, wait).await;
        assert!(value(&result) >= 1.0, "{query}: {result:#}");
    }

    // The same KPIs from the API, over the window of this test.
    let (ok, out, err) = tenon.cli(&["kpis", "--from", "1h", "--json"]);
    assert!(ok, "{err}");
    let kpis: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(kpis["quote_to_order"]["count"], 2, "{kpis:#}");
    assert_eq!(kpis["order_rejection"]["total"], 4, "{kpis:#}");
    assert_eq!(kpis["order_rejection"]["counted"], 2, "{kpis:#}");
    assert_eq!(
        kpis["order_rejection"]["by_rule"],
        json!({
            "gateway: line …: product … may not be sold in FR": 1,
            "gateway: no tax nexus in BR: the company is not registered to collect tax there": 1,
            "gateway: sold-to customer … is not in the customer master": 1,
        })
    );
    assert_eq!(kpis["invoice_posting"]["rate"], 1.0, "{kpis:#}");
    assert_eq!(kpis["amendment_propagation"]["count"], 2, "{kpis:#}");
    assert_eq!(kpis["billing_accuracy"]["measured"], false);
    let (ok, out, _) = tenon.cli(&["kpis"]);
    assert!(ok);
    assert!(
        out.contains("quote-to-order latency     2 measured; p50 "),
        "{out}"
    );
    assert!(
        out.contains("order rejection rate       50.0% (2 rejected of 4)"),
        "{out}"
    );
    assert!(
        out.contains("billing accuracy           not measured"),
        "{out}"
    );
    let (ok, _, err) = tenon.cli(&["kpis", "--from", "tomorrow"]);
    assert!(!ok);
    assert!(err.contains("`from=tomorrow`"), "{err}");

    // The bundle quote, end to end: its two orders, the ERP's number for one, the
    // rule that refused the other.
    let (ok, out, err) = tenon.cli(&["trace", "Q-00102", "--json"]);
    assert!(ok, "{err}");
    let trace: Value = serde_json::from_str(&out).unwrap();
    let timeline = trace["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 2, "{trace:#}");
    let delivered = timeline
        .iter()
        .find(|e| e["result"] == "delivered")
        .expect("an order delivered");
    assert_eq!(delivered["flow"], "erp-fr");
    let reference = delivered["detail"].as_str().unwrap();
    assert!(reference.starts_with("ERP-"), "{delivered:#}");
    assert!(
        trace["linked"]
            .as_array()
            .unwrap()
            .contains(&json!(reference))
    );
    let rejected = timeline
        .iter()
        .find(|e| e["result"] == "rejected")
        .expect("an order rejected");
    assert_eq!(
        rejected["detail"],
        "line 20: product `SW-ANL-LIC` may not be sold in FR"
    );
    for entry in timeline {
        assert_eq!(entry["trace_id"].as_str().unwrap().len(), 32);
        assert!(entry["trail"].as_array().unwrap().len() >= 3, "{entry:#}");
    }
    // The ERP's order number leads back to the same quote.
    let (ok, by_reference, _) = tenon.cli(&["trace", reference, "--json"]);
    assert!(ok);
    let by_reference: Value = serde_json::from_str(&by_reference).unwrap();
    assert_eq!(by_reference["timeline"], trace["timeline"]);
    let (ok, out, _) = tenon.cli(&["trace", "Q-00102"]);
    assert!(ok);
    assert!(out.contains("erp-fr") && out.contains("rejected"), "{out}");
    let (ok, _, err) = tenon.cli(&["trace", "Q-NOPE"]);
    assert!(!ok);
    assert!(
        err.contains("no message kept has key or reference `Q-NOPE`"),
        "{err}"
    );
}
