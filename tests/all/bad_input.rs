//! Bad input at every edge, each with its exact status and error.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample, tenon_cli};
use serde_json::json;
use tenon_testkit::mock_erp::MockErp;

const LIMIT: usize = 16 * 1024;

fn config(erp_url: &str) -> String {
    let extra = r#"
[server]
max_body_bytes = 16384

[plugins.cpq-trap]
path = "plugins/cpq-source"
[plugins.cpq-invalid]
path = "plugins/cpq-source"
[plugins.trap]
path = "plugins/misbehave"
config = { mode = "trap" }
[plugins.invalid]
path = "plugins/misbehave"
config = { mode = "invalid" }
[plugins.cpq-badout]
path = "plugins/cpq-source"
[plugins.badout]
path = "plugins/misbehave"
config = { mode = "bad-output" }

[flows.trapping]
source = "cpq-trap"
steps = ["trap"]
sink = "erp-sink"
max_attempts = 3

[flows.bad-output]
source = "cpq-badout"
steps = ["badout"]
sink = "erp-sink"

[flows.invalidating]
source = "cpq-invalid"
steps = ["invalid"]
sink = "erp-sink"
max_attempts = 3
"#;
    quote_to_cash_config(erp_url, extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_input_gets_its_exact_status_and_problem() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&config(&erp.orders_url()));
    let tenon = Tenon::start(&ws);

    let health = tenon.get("/healthz").await;
    assert_eq!(
        (health.status, health.json().unwrap()),
        (200, json!({"status": "ok"}))
    );

    // Malformed JSON: the source says `invalid`, ingress says 400.
    let reply = tenon
        .post(
            "/v1/sources/cpq-source",
            "application/json",
            b"{\"record\": ",
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/problem+json")
    );
    let problem = reply.json().unwrap();
    assert_eq!(problem["type"], "urn:tenon:problem:invalid-payload");
    assert_eq!(problem["status"], 400);
    assert_eq!(
        problem["detail"],
        "source `cpq-source`: request body is not the expected JSON: EOF while parsing a value at line 1 column 11"
    );

    // JSON, but not a QuoteModel.
    let reply = tenon
        .post(
            "/v1/sources/cpq-source",
            "application/json",
            b"{\"lineItems\": []}",
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json().unwrap()["detail"],
        "source `cpq-source`: request body is not the expected JSON: missing field `record` at line 1 column 17"
    );

    // No such source.
    let reply = tenon
        .post("/v1/sources/nope", "application/json", b"{}")
        .await;
    assert_eq!(reply.status, 404);
    let problem = reply.json().unwrap();
    assert_eq!(problem["type"], "urn:tenon:problem:unknown-source");
    assert_eq!(problem["detail"], "no flow has source `nope`");

    // A body one byte over the limit.
    let reply = tenon
        .post(
            "/v1/sources/cpq-source",
            "application/json",
            &vec![b' '; LIMIT + 1],
        )
        .await;
    assert_eq!(reply.status, 413);
    let problem = reply.json().unwrap();
    assert_eq!(problem["type"], "urn:tenon:problem:body-too-large");
    assert_eq!(
        problem["detail"],
        "the body is larger than the limit of 16384 bytes"
    );

    // The wrong method.
    let reply = tenon.get("/v1/sources/cpq-source").await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.json().unwrap()["type"],
        "urn:tenon:problem:method-not-allowed"
    );

    // An unknown message id.
    let reply = tenon.get("/v1/messages/does-not-exist").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json().unwrap()["detail"],
        "no message with id `does-not-exist`"
    );

    // A step that traps: a classified failure on the message, dead-lettered at once
    // without using its 3 attempts (the same code traps on the same input), never a
    // crash; the host keeps serving.
    let ids = tenon.send_quote_to("cpq-trap", sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let outcome = &status["outcomes"][0];
    assert_eq!(outcome["plugin"], "trap");
    let error = outcome["result"]["DeadLetter"]["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!(
            "plugin trapped: wasm trap: wasm `unreachable` instruction executed: panicked: misbehave: trapping on purpose for {}",
            ids[0]
        )
    );
    assert_eq!(outcome["attempts"].as_array().unwrap().len(), 1);

    // A step that says `invalid`: dead letter at once, without using its 3 attempts.
    let ids = tenon
        .send_quote_to("cpq-invalid", sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    let outcome = &status["outcomes"][0];
    assert_eq!(
        outcome["result"],
        json!({"DeadLetter": {"error": "invalid: misbehave: QuoteApproved is invalid"}})
    );
    assert_eq!(outcome["attempts"].as_array().unwrap().len(), 1);

    // A step whose output is in an encoding Tenon does not carry: dead letter.
    let ids = tenon
        .send_quote_to("cpq-badout", sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["DeadLetter"]["error"],
        "invalid output: badout produced a `text/csv` body; messages between steps are application/json or application/msgpack"
    );

    // And the healthy flow still works after all that.
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    assert_eq!(
        erp.received().len(),
        1,
        "the trapping and invalid flows sent nothing"
    );
}

/// `tenon check` on the quote-to-cash config edited by `edit`: its error line.
fn check_error(edit: impl Fn(String) -> String) -> (String, String) {
    let ws = Workspace::new();
    let path = ws.write_config(&edit(quote_to_cash_config("http://127.0.0.1:1/", "")));
    let data = ws.data_dir();
    let (ok, _, stderr) = tenon_cli(&[
        "check",
        "--config",
        &path.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ]);
    assert!(!ok, "the config was accepted");
    (stderr.trim().to_owned(), path.display().to_string())
}

#[test]
fn config_errors_name_file_line_and_field() {
    let (error, path) = check_error(|c| c.replace("sink = \"erp-sink\"", "sink = \"erp-snk\""));
    assert_eq!(
        error,
        format!(
            "error: {path}:17:8: flow `quote-to-order`: field `sink`: no plugin named `erp-snk` (defined: cpq-source, erp-sink, quote-to-order)"
        )
    );
}

#[test]
fn a_step_of_the_wrong_kind_is_refused_at_start() {
    let (error, path) =
        check_error(|c| c.replace("steps = [\"quote-to-order\"]", "steps = [\"erp-sink\"]"));
    assert_eq!(
        error,
        format!(
            "error: {path}:16:10: flow `quote-to-order`: field `steps`: `erp-sink` is a sink plugin; steps must be transform plugins"
        )
    );
}

#[test]
fn an_api_route_names_plugins_of_the_wrong_kind() {
    let (error, _) = check_error(|c| format!("{c}\n[apis.prices]\nplugin = \"erp-sink\"\n"));
    assert!(
        error.ends_with(
            "API `prices`: field `plugin`: `erp-sink` is a sink plugin; plugin must be api plugins"
        ),
        "{error}"
    );
    let (error, _) = check_error(|c| {
        format!("{c}\n[apis.check]\nsource = \"cpq-source\"\nsteps = [\"erp-sink\"]\n")
    });
    assert!(
        error.ends_with(
            "API `check`: field `steps`: `erp-sink` is a sink plugin; steps must be transform plugins"
        ),
        "{error}"
    );
    let (error, _) = check_error(|c| {
        c.replace(
            "path = \"plugins/quote-to-order\"",
            "path = \"plugins/quote-to-order\"\nack = \"validated\"",
        )
    });
    assert!(
        error.contains("`ack = \"validated\"` is for source plugins"),
        "{error}"
    );
}
