//! Trust boundaries around the sandbox, tried as a security reviewer would, through the
//! binary: the admin plane apart and keyed, plugins kept off the host's own listeners,
//! exact egress exemptions, secrets per instance and never recorded in any form, abuse
//! bounded, a failed attempt leaving nothing behind, no stalls under looping plugins.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample, tenon_cli};
use base64::Engine as _;
use serde_json::Value;
use std::time::{Duration, Instant};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;

/// A request with an explicit `Authorization` (or none).
async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> client::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    client::request(method, url, &headers, body.map(|(ct, b)| (ct, b.to_vec())))
        .await
        .unwrap()
}

fn problem(reply: &client::Response) -> Value {
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/problem+json"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json().unwrap()
}

/// `tenon keys create` against the server; the new key's (id, token).
fn create_key(tenon: &Tenon, name: &str, scopes: &[&str]) -> (String, String) {
    let mut args = vec!["keys", "create", "--name", name];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let (ok, out, err) = tenon.cli(&args);
    assert!(ok, "{err}");
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("key "))
        .and_then(|l| l.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let token = out.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with(&format!("tenon_{id}_")), "{out}");
    (id, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_is_apart_and_every_call_needs_a_key_with_its_scope() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    std::fs::write(ws.path().join("stripe-secret.txt"), "whsec_trust_test_1").unwrap();
    ws.write_config(&quote_to_cash_config(
        &erp.orders_url(),
        r#"
[secrets]
stripe_webhook_secret = { file = "stripe-secret.txt" }
[plugins.stripe]
path = "plugins/stripe-source"
secrets = ["stripe_webhook_secret"]
auth = "signature"
[flows.invoices]
source = "stripe"
sink = "erp-sink"
"#,
    ));
    let tenon = Tenon::start(&ws);
    let (ingest, admin) = (&tenon.base, &tenon.admin);
    assert_ne!(ingest, admin, "two listeners");

    // Without a key: nothing on the admin API, no ingestion.
    let reply = call("GET", &format!("{admin}/v1/plugins"), None, None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"tenon\"")
    );
    assert_eq!(problem(&reply)["type"], "urn:tenon:problem:unauthorized");
    let quote = sample("plain.json").as_bytes();
    let to_cpq = format!("{ingest}/v1/sources/cpq-source");
    let reply = call("POST", &to_cpq, None, Some(("application/json", quote))).await;
    assert_eq!(reply.status, 401, "ingestion needs a key too");
    let reply = call(
        "GET",
        &format!("{admin}/v1/plugins"),
        Some("tenon_k_1_forged"),
        None,
    )
    .await;
    assert_eq!(reply.status, 401);
    // Health needs nothing, on both listeners.
    for base in [ingest, admin] {
        assert_eq!(
            call("GET", &format!("{base}/healthz"), None, None)
                .await
                .status,
            200
        );
    }
    // The admin API is not on the ingest listener, even with the admin key.
    let reply = call(
        "GET",
        &format!("{ingest}/v1/plugins"),
        Some(&tenon.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
    assert!(
        problem(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("the admin API has its own listener")
    );

    // Keys, each with what it needs and no more.
    let (partner_id, partner) = create_key(&tenon, "partner-cpq", &["ingest:cpq-source"]);
    let (reader_id, reader) = create_key(&tenon, "auditor", &["admin:read"]);
    let reply = call(
        "POST",
        &to_cpq,
        Some(&partner),
        Some(("application/json", quote)),
    )
    .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let to_stripe_by_key = format!("{ingest}/v1/sources/cpq-other");
    let reply = call(
        "POST",
        &to_stripe_by_key,
        Some(&partner),
        Some(("application/json", quote)),
    )
    .await;
    assert_eq!(
        reply.status, 403,
        "a key for one source is not a key for another"
    );
    let reply = call("GET", &format!("{admin}/v1/dlq"), Some(&partner), None).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        problem(&reply)["detail"],
        format!("key `{partner_id}` (partner-cpq) does not hold scope `admin:read`")
    );
    let reply = call("GET", &format!("{admin}/v1/plugins"), Some(&reader), None).await;
    assert_eq!(reply.status, 200);
    let redrive = format!("{admin}/v1/dlq/x/redrive");
    let reply = call(
        "POST",
        &redrive,
        Some(&reader),
        Some(("application/json", b"{}")),
    )
    .await;
    assert_eq!(reply.status, 403, "reading is not acting");
    // A key hands on only what it holds.
    let reply = call(
        "POST",
        &format!("{admin}/v1/keys"),
        Some(&reader),
        Some(("application/json", br#"{"scopes": ["admin:read"]}"#)),
    )
    .await;
    assert_eq!(reply.status, 403, "creating keys needs admin:write");

    // JSON endpoints take JSON: a form or text/plain post from a web page is refused.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let reply = call(
            "POST",
            &format!("{admin}/v1/flows/quote-to-order/replay"),
            Some(&tenon.token),
            Some((content_type, br#"{"from": 1}"#)),
        )
        .await;
        assert_eq!(reply.status, 415, "{content_type}");
    }

    // A source that checks its sender's signature takes no key: Stripe's webhook.
    let event =
        crate::support::public_fixture("stripe_invoice_event_invoice_paid.json").to_string();
    let signature = tenon_testkit::stripe_signature("whsec_trust_test_1", event.as_bytes());
    let reply = client::request(
        "POST",
        &format!("{ingest}/v1/sources/stripe"),
        &[("stripe-signature", &signature)],
        Some(("application/json", event.as_bytes().to_vec())),
    )
    .await
    .unwrap();
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = call(
        "POST",
        &format!("{ingest}/v1/sources/stripe"),
        None,
        Some(("application/json", event.as_bytes())),
    )
    .await;
    assert_eq!(
        reply.status, 400,
        "unsigned: refused by the source, not by a key check"
    );

    // Keys are listed without their tokens, and a revoked one stops working at once.
    let (ok, listed, _) = tenon.cli(&["keys", "list"]);
    assert!(ok);
    assert!(
        listed.contains(&partner_id) && listed.contains("ingest:cpq-source"),
        "{listed}"
    );
    assert!(!listed.contains(&partner), "no token in the list");
    let keys = tenon.get("/v1/keys").await.json().unwrap();
    assert!(!keys.to_string().contains(&partner), "no token in the API");
    let (ok, out, _) = tenon.cli(&["keys", "revoke", &partner_id]);
    assert!(ok);
    assert_eq!(out.trim(), format!("revoke {partner_id}: done"));
    let reply = call(
        "POST",
        &to_cpq,
        Some(&partner),
        Some(("application/json", quote)),
    )
    .await;
    assert_eq!(reply.status, 401, "revoked");

    // Every refusal and every admin action is audited with the key's id.
    let audit = tenon
        .get(&format!("/v1/audit?key={reader_id}&limit=100"))
        .await
        .json()
        .unwrap();
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["decision"] == "deny"
            && r["capability"] == "auth"
            && r["target"] == "POST /v1/dlq/x/redrive"
            && r["reason"] == "the key lacks scope `admin:write`"),
        "{audit:#}"
    );
    let admin_id = tenon
        .token
        .split('_')
        .nth(2)
        .map(|id| format!("k_{id}"))
        .unwrap();
    let audit = tenon
        .get(&format!("/v1/audit?key={admin_id}&limit=100"))
        .await
        .json()
        .unwrap();
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["capability"] == "admin"
                && r["target"] == format!("POST /v1/keys/{partner_id}/revoke")
                && r["decision"] == "allow"),
        "{audit:#}"
    );
    let anonymous = tenon
        .get("/v1/audit?decision=deny&limit=1000")
        .await
        .json()
        .unwrap();
    assert!(
        anonymous["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["capability"] == "auth"
                && r["target"] == "GET /v1/plugins"
                && r["reason"] == "no API key"),
        "{anonymous:#}"
    );

    // Anyone who reaches a port cannot fill the audit log: past 60 a minute, refused
    // requests without a key are counted, not recorded one by one.
    for _ in 0..150 {
        call("GET", &format!("{admin}/v1/dlq"), None, None).await;
    }
    let anonymous = tenon
        .get("/v1/audit?decision=deny&limit=10000")
        .await
        .json()
        .unwrap();
    let recorded = anonymous["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["capability"] == "auth" && r["key"].is_null())
        .count();
    assert!(recorded <= 61, "{recorded} anonymous refusals recorded");

    // The CLI without a key says how to give one.
    let (ok, _, err) = tenon_cli(&["status", "--server", admin, "--data-dir", "/nonexistent"]);
    assert!(!ok);
    assert!(
        err.contains("no API key was given: set TENON_TOKEN or --token-file"),
        "{err}"
    );
}

/// A flow `name`: its own CPQ source instance, then `sink`, one attempt.
fn sink_flow(name: &str, sink: &str) -> String {
    format!(
        r#"
[plugins.src-{name}]
path = "plugins/cpq-source"
[flows.{name}]
source = "src-{name}"
sink = "{sink}"
max_attempts = 1
"#
    )
}

async fn dead_letter_of(tenon: &Tenon, flow: &str) -> String {
    let ids = tenon
        .send_quote_to(&format!("src-{flow}"), sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    status["outcomes"][0]["result"]["DeadLetter"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a dead letter: {status:#}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_never_reach_the_hosts_listeners_and_exemptions_are_exact() {
    let erp = MockErp::start().await.unwrap();
    let erp_port = erp.addr.port();
    let ws = Workspace::new();
    let base_config = quote_to_cash_config(&erp.orders_url(), "");
    ws.write_config(&base_config);
    let tenon = Tenon::start(&ws);
    // The plugins' targets are the running server's own addresses: added by a config
    // reload once they are known.
    let mut config = base_config.clone();
    for (name, url, grants) in [
        (
            "to-admin",
            format!("{}/v1/plugins", tenon.admin),
            r#"{ http = ["http://127.0.0.1:*"] }"#.to_owned(),
        ),
        (
            "to-dlq",
            format!("{}/v1/dlq", tenon.admin.replace("127.0.0.1", "localhost")),
            r#"{ http = ["http://localhost:*"] }"#.to_owned(),
        ),
        (
            "to-ingest",
            format!("{}/healthz", tenon.base),
            format!(r#"{{ http = ["{}"] }}"#, tenon.base),
        ),
        (
            "port-9",
            format!("http://localhost:{erp_port}/orders"),
            r#"{ http = ["http://*", "http://localhost:9"] }"#.to_owned(),
        ),
        (
            "nat64",
            format!("http://[64:ff9b::7f00:1]:{erp_port}/orders"),
            r#"{ http = ["http://*"] }"#.to_owned(),
        ),
        (
            "azure-wire",
            "http://168.63.129.16/machine".to_owned(),
            r#"{ http = ["http://*"] }"#.to_owned(),
        ),
    ] {
        config.push_str(&format!(
            "[plugins.{name}]\npath = \"plugins/hostile-sink\"\nconfig = {{ url = \"{url}\" }}\ngrants = {grants}\n"
        ));
        config.push_str(&sink_flow(name, name));
    }
    config.push_str(&format!(
        "[plugins.big-request]\npath = \"plugins/http-sink\"\nconfig = {{ url = \"{}\" }}\ngrants = {{ http = [\"http://127.0.0.1:*\"], max_request_bytes = 100 }}\n",
        erp.orders_url()
    ));
    config.push_str(&sink_flow("big-request", "big-request"));
    tenon.reconfigure(&ws, &config, "big-request").await;

    let admin_port = tenon.admin.rsplit(':').next().unwrap().to_owned();
    let ingest_port = tenon.base.rsplit(':').next().unwrap().to_owned();
    let own = |host: &str, port: &str| {
        format!(
            "sandbox denied: http `http://{host}:{port} (127.0.0.1)`: `{host}` resolves to 127.0.0.1, port {port} of this host, where Tenon itself listens: no plugin may reach it"
        )
    };
    assert_eq!(
        dead_letter_of(&tenon, "to-admin").await,
        own("127.0.0.1", &admin_port)
    );
    let to_dlq = dead_letter_of(&tenon, "to-dlq").await;
    assert!(
        to_dlq.starts_with(&format!(
            "sandbox denied: http `http://localhost:{admin_port} ("
        )),
        "{to_dlq}"
    );
    assert!(
        to_dlq.ends_with("where Tenon itself listens: no plugin may reach it"),
        "{to_dlq}"
    );
    assert_eq!(
        dead_letter_of(&tenon, "to-ingest").await,
        own("127.0.0.1", &ingest_port)
    );
    // `http://localhost:9` exempts localhost on port 9 only.
    let port9 = dead_letter_of(&tenon, "port-9").await;
    assert!(
        port9.contains(&format!(
            "a loopback address, which no grant names on http port {erp_port}"
        )),
        "{port9}"
    );
    assert_eq!(
        dead_letter_of(&tenon, "nat64").await,
        format!(
            "sandbox denied: http `http://[64:ff9b::7f00:1]:{erp_port} (64:ff9b::7f00:1)`: `64:ff9b::7f00:1` resolves to 64:ff9b::7f00:1, a NAT64 address, which no grant names on http port {erp_port}"
        )
    );
    let azure = dead_letter_of(&tenon, "azure-wire").await;
    assert!(azure.contains("a cloud metadata address"), "{azure}");
    // What a sink sends is capped too.
    let big = dead_letter_of(&tenon, "big-request").await;
    assert!(
        big.starts_with("plugin limit: http `http://127.0.0.1:")
            && big.ends_with("`: request body over the 100-byte cap"),
        "{big}"
    );
    assert!(erp.received().is_empty(), "nothing reached the ERP");
    // The admin API saw none of it: no request reached it without a key.
    let denials = tenon
        .get("/v1/audit?decision=deny&limit=1000")
        .await
        .json()
        .unwrap();
    assert!(
        !denials["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["capability"] == "auth"),
        "{denials:#}"
    );
}

const TOKEN: &str = "tok/3n s3cr3t+value";

/// Every form of `TOKEN` a leak could take.
fn token_forms() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        TOKEN.to_owned(),
        b64.encode(TOKEN).trim_end_matches('=').to_owned(),
        hex::encode(TOKEN),
        hex::encode_upper(TOKEN),
        tenon_sdk::url::escape(TOKEN),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_per_instance_and_never_recorded_in_any_form() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    std::fs::write(ws.path().join("token.txt"), TOKEN).unwrap();
    let mut config = quote_to_cash_config(
        &erp.orders_url(),
        r#"
[secrets]
erp_token = { file = "token.txt" }
"#,
    );
    for (name, mode) in [
        ("leak-b64", "fail-base64"),
        ("leak-url", "fail-url"),
        ("leak-hex", "emit-hex"),
        ("headers", "fail-headers"),
    ] {
        config.push_str(&format!(
            "[plugins.{name}]\npath = \"plugins/leaky-source\"\nconfig = {{ mode = \"{mode}\" }}\nsecrets = {{ token = \"erp_token\" }}\n[flows.{name}]\nsource = \"{name}\"\nsink = \"erp-sink\"\n"
        ));
    }
    for (name, mode, mapped) in [
        ("echo-secret", "secret", true),
        ("leak-encoded", "leak-encoded", true),
        ("leak-long", "leak-long", true),
        ("unmapped", "secret", false),
    ] {
        let mapping = if mapped {
            "secrets = [\"erp_token\"]\n"
        } else {
            ""
        };
        config.push_str(&format!(
            "[plugins.{name}]\npath = \"plugins/misbehave\"\nconfig = {{ mode = \"{mode}\", secret = \"erp_token\" }}\n{mapping}[plugins.src-{name}]\npath = \"plugins/cpq-source\"\n[flows.{name}]\nsource = \"src-{name}\"\nsteps = [\"{name}\"]\nsink = \"erp-sink\"\nmax_attempts = 1\n"
        ));
    }
    ws.write_config(&config);
    let tenon = Tenon::start(&ws);

    // A source failing with the secret base64-encoded, or in a URL: the answer to the
    // sender says which secret, never its value.
    let post = |source: &str| {
        let path = format!("/v1/sources/{source}");
        let tenon = &tenon;
        async move { tenon.post(&path, "application/json", b"{}").await }
    };
    let reply = post("leak-b64").await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json().unwrap()["detail"],
        "source `leak-b64`: cannot parse [redacted secret `token`]"
    );
    let reply = post("leak-url").await;
    assert_eq!(
        reply.json().unwrap()["detail"],
        "source `leak-url`: see https://attacker.example/?t=[redacted secret `token`]"
    );
    // A source emitting it (in hex) has its messages refused whole.
    let reply = post("leak-hex").await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.json().unwrap()["detail"],
        "source `leak-hex`: an output message carries the value of secret `token`"
    );
    // So has a transform.
    let ids = tenon
        .send_quote_to("src-echo-secret", sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["DeadLetter"]["error"],
        "sandbox denied: an output message carries the value of secret `erp_token`"
    );
    // Encoded in a failure and a log line: redacted.
    let ids = tenon
        .send_quote_to("src-leak-encoded", sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["DeadLetter"]["error"],
        "invalid: leaking erp_token: [redacted secret `erp_token`]"
    );
    // Across the 4 KiB cut of a log line: redacted whole before the cut.
    let ids = tenon
        .send_quote_to("src-leak-long", sample("plain.json"))
        .await;
    tenon.settled(&ids[0]).await;
    // A source is never handed the sender's API key.
    let reply = post("headers").await;
    let detail = reply.json().unwrap()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with("source `headers`: headers: "),
        "{detail}"
    );
    assert!(detail.contains("content-type=application/json"), "{detail}");
    assert!(
        !detail.to_ascii_lowercase().contains("authorization"),
        "{detail}"
    );
    assert!(!detail.contains(&tenon.token), "{detail}");
    // An instance the operator mapped nothing to sees nothing.
    let ids = tenon
        .send_quote_to("src-unmapped", sample("plain.json"))
        .await;
    let status = tenon.settled(&ids[0]).await;
    assert_eq!(
        status["outcomes"][0]["result"]["DeadLetter"]["error"],
        "invalid: secret `erp_token` is not mapped to this plugin instance by the operator"
    );
    // A canary of the leaking transform shows the refusal, not the value.
    let candidate = ws.path().join("plugins/misbehave");
    let (ok, tried, err) = tenon.cli(&[
        "plugin",
        "try",
        "echo-secret",
        "--against",
        "echo-secret",
        "--candidate",
        &candidate.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    assert!(
        tried.contains("1 recorded inputs differ") || tried.contains("0 of 1"),
        "{tried}"
    );

    // Nowhere the host recorded anything holds the value, in any form.
    let log = std::fs::read_to_string(ws.path().join("tenon.log")).unwrap();
    assert!(
        log.contains("the token in hex is [redacted secret `erp_token`]"),
        "the log line is kept, redacted"
    );
    let mut recorded = log;
    for path in [
        "/v1/dlq",
        "/v1/audit?limit=100000",
        "/v1/events",
        &format!("/v1/messages/{}", ids[0]),
    ] {
        recorded.push_str(&String::from_utf8_lossy(&tenon.get(path).await.body));
    }
    recorded.push_str(&tried);
    for form in token_forms() {
        assert!(!recorded.contains(&form), "`{form}` was recorded");
    }
    assert!(
        !recorded.contains(&TOKEN[..8]),
        "a cut left part of the token"
    );
}

#[test]
fn a_needed_secret_must_be_mapped_and_long_enough() {
    let ws = Workspace::new();
    let check = |extra: &str| {
        let path = ws.write_config(&quote_to_cash_config("http://127.0.0.1:1/", extra));
        let data = ws.data_dir();
        tenon_cli(&[
            "check",
            "--config",
            &path.to_string_lossy(),
            "--data-dir",
            &data.to_string_lossy(),
        ])
    };
    let stripe = |mapping: &str| {
        format!(
            "[secrets]\nwebhook = {{ file = \"w.txt\" }}\n[plugins.stripe]\npath = \"plugins/stripe-source\"\n{mapping}\n[flows.invoices]\nsource = \"stripe\"\nsink = \"erp-sink\"\n"
        )
    };
    std::fs::write(ws.path().join("w.txt"), "whsec_long_enough").unwrap();
    let (ok, _, err) = check(&stripe(""));
    assert!(!ok);
    assert!(
        err.contains("its manifest asks for secret `stripe_webhook_secret`, which the config does not map to it"),
        "{err}"
    );
    let (ok, _, err) = check(&stripe(
        "secrets = { stripe_webhook_secret = \"webhook\", other = \"webhook\" }",
    ));
    assert!(!ok);
    assert!(
        err.contains("the config maps secret `other` to it, which its grants do not ask for"),
        "{err}"
    );
    let (ok, _, err) = check(&stripe("secrets = { stripe_webhook_secret = \"webhook\" }"));
    assert!(ok, "{err}");
    std::fs::write(ws.path().join("w.txt"), "short").unwrap();
    let (ok, _, err) = check(&stripe("secrets = { stripe_webhook_secret = \"webhook\" }"));
    assert!(!ok);
    assert!(
        err.contains(
            "secret `stripe_webhook_secret` is 5 bytes long; secrets must be at least 8 bytes"
        ),
        "{err}"
    );
    assert!(!err.contains("short"), "the value is never printed");
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_is_bounded_and_a_failed_attempt_leaves_nothing_behind() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let mut config = quote_to_cash_config(&erp.orders_url(), "");
    for (name, settings, attempts) in [
        (
            "flood",
            r#"{ mode = "log-flood", lines = "16", size = "4194304" }"#,
            1,
        ),
        ("asks", r#"{ mode = "config-flood", size = "500" }"#, 1),
        ("kv-trap", r#"{ mode = "kv-then-trap" }"#, 3),
        ("huge", r#"{ mode = "huge-failure", size = "1048576" }"#, 2),
    ] {
        config.push_str(&format!(
            "[plugins.{name}]\npath = \"plugins/misbehave\"\nconfig = {settings}\n[plugins.src-{name}]\npath = \"plugins/cpq-source\"\n[flows.{name}]\nsource = \"src-{name}\"\nsteps = [\"{name}\"]\nsink = \"erp-sink\"\nmax_attempts = {attempts}\nbackoff_ms = 10\n"
        ));
    }
    ws.write_config(&config);
    let tenon = Tenon::start(&ws);
    let log = ws.path().join("tenon.log");

    // 16 lines of 4 MiB in one call: each is cut to 4 KiB, and the 64 KiB a call may
    // log take 15 of them; the host log grows by that, not by 64 MiB.
    let before = std::fs::metadata(&log).unwrap().len();
    let ids = tenon.send_quote_to("src-flood", sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
    let grown = std::fs::metadata(&log).unwrap().len() - before;
    assert!(grown < 256 << 10, "the log grew by {grown} bytes");
    let flood = tenon
        .get("/v1/audit?plugin=flood&decision=deny")
        .await
        .json()
        .unwrap();
    let records = flood["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "one record for the drops: {flood:#}");
    assert_eq!(records[0]["capability"], "log");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("1 line ("),
        "{flood:#}"
    );
    let plugins = tenon.get("/v1/plugins").await.json().unwrap();
    let flood_status = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "flood")
        .unwrap();
    assert_eq!(
        flood_status["log_lines_dropped"], 1,
        "the one line over the per-call budget"
    );

    // 500 refused config reads with 64 KiB names: 16 recorded, the rest counted, names cut.
    let ids = tenon.send_quote_to("src-asks", sample("plain.json")).await;
    tenon.settled(&ids[0]).await;
    let asks = tenon
        .get("/v1/audit?plugin=asks&decision=deny&limit=1000")
        .await
        .json()
        .unwrap();
    let records = asks["records"].as_array().unwrap();
    assert_eq!(records.len(), 17, "{}", records.len());
    assert!(
        records
            .iter()
            .all(|r| r["target"].as_str().unwrap().len() < 400)
    );
    assert_eq!(
        records.last().unwrap()["reason"],
        "484 more decisions in this call (484 denials), not recorded one by one"
    );

    // A failure of 1 MiB of text, twice: what the host keeps of it is cut to 4 KiB.
    let before = std::fs::metadata(&log).unwrap().len();
    let ids = tenon.send_quote_to("src-huge", sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    let error = status["outcomes"][0]["result"]["DeadLetter"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status:#}"));
    assert!(
        error.len() < 5000 && error.ends_with("... (1048576 bytes)"),
        "{} bytes",
        error.len()
    );
    let grown = std::fs::metadata(&log).unwrap().len() - before;
    assert!(grown < 64 << 10, "the log grew by {grown} bytes");

    // A transform writes kv, then traps: a dead letter at once, its 3 attempts unused
    // (the same code traps on the same input), and its write discarded with the failed
    // call: the same quote again (same key) finds nothing and traps the same way. Had
    // the write been kept, the second one would pass.
    for round in 0..2 {
        let ids = tenon
            .send_quote_to("src-kv-trap", sample("plain.json"))
            .await;
        let status = tenon.settled(&ids[0]).await;
        let outcome = &status["outcomes"][0];
        let error = outcome["result"]["DeadLetter"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("round {round}: {status:#}"));
        assert!(
            error.contains("misbehave: trapping after a kv write"),
            "{error}"
        );
        assert_eq!(outcome["attempts"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn looping_plugins_do_not_stall_the_host() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    // Four spinning guests per core: more than the async runtime has worker threads.
    let loops = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = quote_to_cash_config(&erp.orders_url(), "");
    for n in 0..loops {
        config.push_str(&format!(
            "[plugins.loop-{n}]\npath = \"plugins/misbehave\"\nconfig = {{ mode = \"loop\" }}\ngrants = {{ timeout_ms = 3000 }}\n[plugins.src-loop-{n}]\npath = \"plugins/cpq-source\"\n[flows.loop-{n}]\nsource = \"src-loop-{n}\"\nsteps = [\"loop-{n}\"]\nsink = \"erp-sink\"\nmax_attempts = 1\n"
        ));
    }
    ws.write_config(&config);
    let tenon = Tenon::start(&ws);
    // Health and ingestion keep answering while the guests spin, because guest code
    // yields at every epoch tick (before, each spinning guest held an async worker
    // thread for its whole deadline, and the requests behind it waited as long).
    let mut slowest = Duration::ZERO;
    let mut loop_ids = Vec::new();
    for n in 0..loops {
        let asked = Instant::now();
        let ids = tenon
            .send_quote_to(&format!("src-loop-{n}"), sample("plain.json"))
            .await;
        slowest = slowest.max(asked.elapsed());
        loop_ids.extend(ids);
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let asked = Instant::now();
        let reply = tenon.get("/healthz").await;
        assert_eq!(reply.status, 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &loop_ids {
        let status = tenon.settled(id).await;
        assert_eq!(
            status["outcomes"][0]["result"]["DeadLetter"]["error"],
            "plugin timed out after 3000 ms"
        );
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?} while guests looped"
    );
    let ids = tenon.send_quote(sample("plain.json")).await;
    let status = tenon.settled(&ids[0]).await;
    assert!(
        status["outcomes"][0]["result"]["Delivered"].is_object(),
        "{status:#}"
    );
}
