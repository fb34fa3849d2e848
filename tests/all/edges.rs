//! Governance at the edges, through the binary: slow clients closed while others are
//! served, a connection cap, a noisy key beside a quiet one, a source's own limit,
//! and an ERP that answers 429 pausing its sink with nothing lost.

use crate::support::{Tenon, Workspace, quote_to_cash_config, sample};
use serde_json::Value;
use std::time::{Duration, Instant};
use tenon_cli::client;
use tenon_testkit::mock_erp::MockErp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read until the server closes the connection (or `limit` passes); what it sent.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_closed_while_others_are_served() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&format!(
        "[server.limits]\nheader_timeout_ms = 1000\nbody_timeout_ms = 1500\n{}",
        quote_to_cash_config(&erp.orders_url(), "")
    ));
    let tenon = Tenon::start(&ws);
    let addr = tenon.base.trim_start_matches("http://").to_owned();

    // Twenty clients send half a request line, then a byte now and then.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"POST /v1/sources/cpq-sou").await.unwrap();
        slow.push(stream);
    }
    let trickle = {
        let mut streams = std::mem::take(&mut slow);
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for s in &mut streams {
                    let _ = s.write_all(b"r").await;
                }
            }
            streams
        })
    };
    // A body that trickles under a large Content-Length.
    let mut dribble = TcpStream::connect(&addr).await.unwrap();
    dribble
        .write_all(
            format!(
                "POST /v1/sources/cpq-source HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{",
                tenon.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Meanwhile a well-behaved partner is served at once.
    let served = Instant::now();
    let ids = tenon.send_quote(sample("plain.json")).await;
    assert!(served.elapsed() < Duration::from_millis(900));
    tenon.settled(&ids[0]).await;

    // The slow-body client gets a 408 once its body is overdue.
    let answer = until_closed(&mut dribble, Duration::from_secs(5))
        .await
        .expect("the slow body is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("urn:tenon:problem:body-timeout"),
        "{answer}"
    );

    // Every slow-header client is closed, within the header timeout and a margin.
    let mut streams = trickle.await.unwrap();
    for stream in &mut streams {
        let left = Duration::from_secs(4).saturating_sub(started.elapsed());
        assert!(
            until_closed(stream, left.max(Duration::from_millis(100)))
                .await
                .is_some(),
            "a slow-header connection is still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_cap_a_client_waits_its_turn() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&format!(
        "[server.limits]\nheader_timeout_ms = 1500\nmax_connections = 2\n{}",
        quote_to_cash_config(&erp.orders_url(), "")
    ));
    let tenon = Tenon::start(&ws);
    let addr = tenon.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /heal").await.unwrap();
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Not served while both slots are held...
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap");
    // ...then served once the idle ones are closed by the header timeout.
    let answer = until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("served in turn");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(asked.elapsed() >= Duration::from_millis(1000));
}

/// POST a quote with this bearer token; (status, the reply).
async fn post_as(tenon: &Tenon, token: &str, source: &str, n: usize) -> client::Response {
    client::request(
        "POST",
        &format!("{}/v1/sources/{source}", tenon.base),
        &[("authorization", &format!("Bearer {token}"))],
        Some((
            "application/json",
            sample("plain.json")
                .replace("Q-00101", &format!("Q-{source}-{n}"))
                .into_bytes(),
        )),
    )
    .await
    .unwrap()
}

fn header<'a>(reply: &'a client::Response, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_key_is_limited_and_a_quiet_one_is_not() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    let config = quote_to_cash_config(&erp.orders_url(), "")
        + "[plugins.other]\npath = \"plugins/cpq-source\"\nrate_limit = { per_second = 1, burst = 2 }\n\
           [flows.other]\nsource = \"other\"\nsteps = [\"quote-to-order\"]\nsink = \"erp-sink\"\n";
    ws.write_config(&format!(
        "[server.limits]\nper_key = {{ per_second = 2, burst = 5 }}\n{config}"
    ));
    let tenon = Tenon::start(&ws);
    let mut keys = Vec::new();
    for name in ["noisy", "quiet"] {
        let (ok, out, err) = tenon.cli(&["keys", "create", "--name", name, "--scope", "ingest:*"]);
        assert!(ok, "{err}");
        keys.push(out.lines().last().unwrap().trim().to_owned());
    }
    let (noisy, quiet) = (&keys[0], &keys[1]);

    let mut limited = Vec::new();
    for n in 0..20 {
        let reply = post_as(&tenon, noisy, "cpq-source", n).await;
        match reply.status {
            202 => {}
            429 => limited.push(reply),
            other => panic!("{other}: {}", String::from_utf8_lossy(&reply.body)),
        }
        // The quiet key, between the noisy one's requests, is never refused.
        if n % 5 == 0 {
            let reply = post_as(&tenon, quiet, "cpq-source", 100 + n).await;
            assert_eq!(
                reply.status,
                202,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    assert!(limited.len() >= 12, "only {} refused", limited.len());
    let refused = &limited[0];
    let problem: Value = refused.json().unwrap();
    assert_eq!(problem["type"], "urn:tenon:problem:rate-limited");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .ends_with("is over its limit of 2 requests a second (bursts of 5): retry in 1 s"),
        "{problem:#}"
    );
    assert_eq!(header(refused, "retry-after"), Some("1"));
    assert_eq!(header(refused, "ratelimit-policy"), Some("\"key\";q=5;w=3"));
    assert_eq!(header(refused, "ratelimit"), Some("\"key\";r=0;t=1"));
    // After the wait it says, the noisy key is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post_as(&tenon, noisy, "cpq-source", 50).await.status, 202);

    // A source's own limit holds whoever calls it.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for n in 0..4 {
            out.push(post_as(&tenon, quiet, "other", n).await.status);
        }
        out
    };
    assert_eq!(&statuses[..2], [202, 202]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erp_answering_429_pauses_its_sink_and_nothing_is_lost() {
    let erp = MockErp::start().await.unwrap();
    erp.limit(3, Duration::from_secs(2));
    let ws = Workspace::new();
    let config = quote_to_cash_config(&erp.orders_url(), "concurrency = 1").replace(
        "grants = { http = [\"http://127.0.0.1:*\"] }",
        "grants = { http = [\"http://127.0.0.1:*\"] }\noutbound = { concurrency = 1 }",
    );
    assert!(config.contains("outbound"));
    ws.write_config(&config);
    let tenon = Tenon::start(&ws);

    // Eight revisions of one quote: one business key, so one order in which they
    // must reach the ERP (Tenon keeps each key's order, on every store).
    let mut sent = Vec::new();
    for n in 0..8 {
        let quote_id = format!("a0q5g000001Ab{n:02}AAK");
        let ids = tenon
            .send_quote(
                &sample("plain.json")
                    .replace("Q-00101", "Q-00500")
                    .replace("a0q5g000001AbCdAAK", &quote_id),
            )
            .await;
        sent.push((quote_id, ids[0].clone()));
    }
    // While the ERP holds it back, the sink shows the pause.
    let deadline = Instant::now() + Duration::from_secs(10);
    let paused = loop {
        let plugins: Value = tenon.get("/v1/plugins").await.json().unwrap();
        let sink = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "erp-sink")
            .unwrap()
            .clone();
        if !sink["paused"].is_null() {
            break sink["paused"].clone();
        }
        assert!(Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 429 from http://127.0.0.1:"),
        "{paused:#}"
    );
    let (ok, out, _) = tenon.cli(&["status"]);
    assert!(ok);
    assert!(
        out.contains("paused until ") && out.contains("HTTP 429 from"),
        "{out}"
    );

    for (_, id) in &sent {
        tenon.settled(id).await;
    }
    // Every revision delivered once, in the order sent: the one that met the 429
    // kept its place.
    let received: Vec<String> = erp
        .received()
        .into_iter()
        .map(|r| r.body["quote_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let numbers: Vec<String> = sent.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(received, numbers);
    assert_eq!(erp.orders(), 8);
    // After each 429, nothing reached the ERP before its window ended.
    let log = erp.limit_log();
    let refusals: Vec<Instant> = log.iter().filter(|(_, r)| *r).map(|(t, _)| *t).collect();
    assert!(!refusals.is_empty());
    assert!(refusals.len() <= 4, "{} refusals", refusals.len());
    for refused in refusals {
        let next = log.iter().map(|(t, _)| *t).find(|t| *t > refused);
        if let Some(next) = next {
            assert!(
                next.duration_since(refused) >= Duration::from_millis(900),
                "a request {:?} after a 429",
                next.duration_since(refused)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_source_call_bound_a_caller_is_told_to_come_back() {
    let erp = MockErp::start().await.unwrap();
    let ws = Workspace::new();
    ws.write_config(&format!(
        "[server.limits]\nmax_concurrent_ingest = 1\n{}",
        quote_to_cash_config(&erp.orders_url(), "")
    ));
    let tenon = Tenon::start(&ws);
    let addr = tenon.base.trim_start_matches("http://").to_owned();
    // One call under way: its body is still arriving.
    let mut busy = TcpStream::connect(&addr).await.unwrap();
    busy.write_all(
        format!(
            "POST /v1/sources/cpq-source HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{",
            tenon.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = post_as(&tenon, &tenon.token, "cpq-source", 1).await;
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    let problem: Value = refused.json().unwrap();
    assert_eq!(problem["type"], "urn:tenon:problem:busy");
    // Once it is done, the next one is served.
    drop(busy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        post_as(&tenon, &tenon.token, "cpq-source", 2).await.status,
        202
    );
}
