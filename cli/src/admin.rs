//! The commands that operate a running server, through its admin API with the
//! operator's key. Requests and answers are `tenon::api` types: the same ones the
//! server serialises.

use crate::cli::{DlqAction, ExceptionAction, KeysAction, PluginAction};
use crate::client;
use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tenon::api;
use tenon_model::chrono::{DateTime, SecondsFormat};

/// A running server's admin API, with the operator's key.
#[derive(Debug)]
pub struct Admin {
    base: String,
    token: Option<String>,
}

/// Why an admin call failed: the server's answer, or no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallFailed {
    /// The server answered with a problem.
    #[error("{}{}", .problem.detail, hint(.problem.status, *.anonymous))]
    Problem {
        /// What it said.
        problem: api::Problem,
        /// Whether the call carried no key.
        anonymous: bool,
    },
}

fn hint(status: u16, anonymous: bool) -> &'static str {
    match (status, anonymous) {
        (401, true) => {
            "\nno API key was given: set TENON_TOKEN or --token-file, or point --data-dir at the server's data directory (its admin.key)"
        }
        _ => "",
    }
}

impl Admin {
    /// The server `base`, with the key from `TENON_TOKEN`, else `token_file`, else
    /// `<data_dir>/admin.key` when it exists.
    pub fn new(base: &str, token_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Admin> {
        let token = match (std::env::var("TENON_TOKEN").ok(), token_file) {
            (Some(token), _) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            (_, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the token file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            _ => std::fs::read_to_string(data_dir.join(tenon::auth::ADMIN_KEY_FILE))
                .ok()
                .map(|t| t.trim().to_owned()),
        };
        Ok(Admin {
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let body = body.map(|b| ("application/json", b));
        let url = format!("{}{path}", self.base);
        let reply = client::request(method, &url, &headers, body).await?;
        if (200..300).contains(&reply.status) {
            return serde_json::from_slice(&reply.body)
                .with_context(|| format!("{url}: unexpected answer"));
        }
        let problem = serde_json::from_slice(&reply.body).unwrap_or_else(|_| api::Problem {
            kind: "urn:tenon:problem:unexpected".into(),
            title: "Unexpected answer".into(),
            status: reply.status,
            detail: format!(
                "HTTP {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ),
            reasons: None,
        });
        Err(CallFailed::Problem {
            problem,
            anonymous: self.token.is_none(),
        }
        .into())
    }

    /// `GET` a path of the API.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, None).await
    }

    /// `POST` a JSON body to a path of the API.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call("POST", path, Some(serde_json::to_vec(body)?))
            .await
    }
}

/// A time in ms since the Unix epoch, as RFC 3339.
fn time(ms: u64, format: SecondsFormat) -> String {
    DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(format, true))
        .unwrap_or_default()
}

/// `tenon status`.
pub async fn status(admin: &Admin) -> anyhow::Result<ExitCode> {
    let status: api::Plugins = admin.get("/v1/plugins").await?;
    for p in &status.plugins {
        println!(
            "{:<18} {:<9} {:<8} {}  live since {}  swaps={}",
            p.name,
            p.kind,
            p.version,
            p.digest,
            time(p.live_since_ms, SecondsFormat::Secs),
            p.swaps,
        );
        if let Some(signer) = &p.signer {
            println!("{:<18} signed by {signer}", "");
        }
        if let Some(pending) = &p.pending {
            println!(
                "{:<18} waiting for approval: {} {} (wider grants: {}); `tenon plugin approve {} --digest {}`",
                "",
                pending.version,
                pending.digest,
                pending.widening.join(", "),
                p.name,
                pending.digest,
            );
        }
        if let Some(refused) = &p.refused {
            println!("{:<18} refused: {}", "", refused.reason);
        }
        if let Some(paused) = &p.paused {
            println!(
                "{:<18} paused until {}: {} (its messages wait in place)",
                "",
                time(paused.until_ms, SecondsFormat::Millis),
                paused.reason
            );
        }
    }
    if let Some(refused) = &status.config.refused {
        println!(
            "config {} refused: {}",
            status.config.path.display(),
            refused.reason
        );
    }
    println!();
    for node in &status.nodes {
        // A node running another version than this one shows it.
        let differs: Vec<String> = node
            .plugins
            .iter()
            .filter(|(name, digest)| {
                status
                    .plugins
                    .iter()
                    .any(|p| &p.name == *name && &p.digest != *digest)
            })
            .map(|(name, digest)| format!("{name}={digest}"))
            .collect();
        println!(
            "node {:<24} ingest {:<21} admin {:<21} up since {}  seen {}{}",
            node.name,
            node.ingest,
            node.admin,
            time(node.started_ms, SecondsFormat::Secs),
            time(node.seen_ms, SecondsFormat::Secs),
            if differs.is_empty() {
                String::new()
            } else {
                format!("  runs other versions: {}", differs.join(", "))
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tenon audit`.
pub async fn audit(
    admin: &Admin,
    plugin: Option<String>,
    decision: Option<String>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(plugin) = plugin {
        path.push_str(&format!("&plugin={plugin}"));
    }
    if let Some(decision) = decision {
        path.push_str(&format!("&decision={decision}"));
    }
    let audit: api::Audit = admin.get(&path).await?;
    for r in &audit.records {
        if json {
            println!("{}", serde_json::to_string(r)?);
            continue;
        }
        let who = match &r.key {
            Some(key) => format!("key {key}"),
            None => r.plugin.clone(),
        };
        println!(
            "{} {:<5} {:<16} {:<8} {}{}  [{}]",
            time(r.at_ms, SecondsFormat::Millis),
            r.decision,
            who,
            r.capability,
            r.target,
            r.reason
                .as_deref()
                .map(|s| format!(": {s}"))
                .unwrap_or_default(),
            r.digest.get(..19).unwrap_or(&r.digest),
        );
    }
    if audit.dropped > 0 {
        println!(
            "({} records were dropped because the audit log could not keep up)",
            audit.dropped
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tenon replay`.
pub async fn replay(
    admin: &Admin,
    flow: &str,
    from: String,
    to: Option<String>,
) -> anyhow::Result<ExitCode> {
    let asked = api::Replay {
        from: Some(api::Bound::Text(from)),
        to: to.map(api::Bound::Text),
    };
    let replayed: api::Replayed = admin
        .post(&format!("/v1/flows/{flow}/replay"), &asked)
        .await?;
    println!(
        "replayed {} messages of flow {flow} (offsets {})",
        replayed.replayed,
        serde_json::to_string(&replayed.offsets)?
    );
    Ok(ExitCode::SUCCESS)
}

/// `tenon keys ...`.
pub async fn keys(admin: &Admin, action: KeysAction) -> anyhow::Result<ExitCode> {
    match action {
        KeysAction::Generate(args) => crate::packages::keygen(args),
        KeysAction::Create { scopes, name } => {
            let scopes = scopes
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<tenon::auth::Scope>, _>>()?;
            let created: api::KeyCreated = admin
                .post("/v1/keys", &api::NewKey { name, scopes })
                .await?;
            println!("key {} created", created.key.id);
            println!("token (shown once, keep it secret):");
            println!("{}", created.token);
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::List => {
            let keys: api::Keys = admin.get("/v1/keys").await?;
            for k in &keys.keys {
                let scopes: Vec<String> = k.scopes.iter().map(ToString::to_string).collect();
                println!(
                    "{}  {:<16} {:<48} created {}{}",
                    k.id,
                    k.name,
                    scopes.join(" "),
                    time(k.created_ms, SecondsFormat::Secs),
                    k.revoked_ms
                        .map(|t| format!("  REVOKED {}", time(t, SecondsFormat::Secs)))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::Revoke { ids } => {
            each::<api::KeyRevoked>(admin, &ids, |id| format!("/v1/keys/{id}/revoke"), "revoke")
                .await
        }
    }
}

/// `tenon dlq ...`.
pub async fn dlq(admin: &Admin, action: DlqAction) -> anyhow::Result<ExitCode> {
    match action {
        DlqAction::List => {
            let mut path = "/v1/dlq".to_owned();
            let mut any = false;
            loop {
                let page: api::DeadLetters = admin.get(&path).await?;
                for l in &page.dead_letters {
                    any = true;
                    println!(
                        "{}  flow={} stage={} plugin={} attempts={}  {}",
                        l.id, l.flow, l.stage, l.plugin, l.attempt_count, l.error,
                    );
                }
                match page.next {
                    Some(next) => {
                        let next = percent_encoding::utf8_percent_encode(
                            &next,
                            percent_encoding::NON_ALPHANUMERIC,
                        );
                        path = format!("/v1/dlq?after={next}");
                    }
                    None => break,
                }
            }
            if !any {
                println!("no dead letters");
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { id } => {
            let letter: api::DeadLetterDetail = admin.get(&format!("/v1/dlq/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Redrive { ids } => {
            each::<api::DeadLetterHandled>(
                admin,
                &ids,
                |id| format!("/v1/dlq/{id}/redrive"),
                "redrive",
            )
            .await
        }
        DlqAction::Discard { ids } => {
            each::<api::DeadLetterHandled>(
                admin,
                &ids,
                |id| format!("/v1/dlq/{id}/discard"),
                "discard",
            )
            .await
        }
    }
}

/// `tenon drift`.
pub async fn drift(admin: &Admin, name: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let name = match name {
        Some(name) => name,
        None => {
            let configured: api::DriftChecks = admin.get("/v1/drift").await?;
            let names: Vec<String> = configured.checks.into_iter().map(|c| c.name).collect();
            match names.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("the server's config has no [drift.*]"),
                _ => anyhow::bail!("name the drift check: one of {}", names.join(", ")),
            }
        }
    };
    let report: api::DriftReport = admin
        .post(&format!("/v1/drift/{name}/run"), &serde_json::json!({}))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "drift check {name} against {}: {} customers in the master, {} records there, {} in step",
        report.target, report.customers, report.records, report.in_step
    );
    for d in &report.drifts {
        if d.missing {
            println!("  {}  missing in {}", d.customer, report.target);
            continue;
        }
        let fields: Vec<String> = d
            .fields
            .iter()
            .map(|f| {
                format!(
                    "{}: master {:?}, {} {:?}",
                    f.field,
                    f.master.as_deref().unwrap_or(""),
                    report.target,
                    f.target.as_deref().unwrap_or("")
                )
            })
            .collect();
        println!("  {}  {}", d.customer, fields.join("; "));
    }
    println!(
        "{} drifted; {} published as MasterDataDrift",
        report.drifts.len(),
        report.published
    );
    Ok(ExitCode::SUCCESS)
}

/// `tenon reconcile`.
pub async fn reconcile(
    admin: &Admin,
    name: Option<String>,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let name = match name {
        Some(name) => name,
        None => {
            let configured: api::Reconciliations = admin.get("/v1/reconciliations").await?;
            let names: Vec<String> = configured
                .reconciliations
                .into_iter()
                .map(|r| r.name)
                .collect();
            match names.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("the server's config has no [reconciliations.*]"),
                _ => anyhow::bail!("name the reconciliation: one of {}", names.join(", ")),
            }
        }
    };
    let asked = api::Reconcile {
        since: from,
        until: to,
    };
    let report: api::Reconciled = admin
        .post(&format!("/v1/reconciliations/{name}/run"), &asked)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "reconciliation {name}, documents dated {} to {}: {} billing documents, {} ERP records",
        report.since, report.until, report.billing_documents, report.erp_records
    );
    match report.accuracy {
        Some(rate) => println!(
            "billing accuracy {:.1}% ({} matched of {})",
            rate * 100.0,
            report.matched,
            report.billing_documents
        ),
        None => println!("billing accuracy not measured: no billing document in the window"),
    }
    for m in &report.mismatches {
        let kind = serde_json::to_value(m.kind)?;
        println!("  {:<20} {}", kind.as_str().unwrap_or_default(), m.detail);
    }
    println!(
        "{} mismatches; {} new exceptions (tenon exceptions list)",
        report.mismatches.len(),
        report.raised
    );
    Ok(ExitCode::SUCCESS)
}

/// `tenon exceptions ...`.
pub async fn exceptions(admin: &Admin, action: ExceptionAction) -> anyhow::Result<ExitCode> {
    let (ids, note, decision) = match action {
        ExceptionAction::List => {
            let held: api::Exceptions = admin.get("/v1/exceptions").await?;
            for e in &held.exceptions {
                println!(
                    "{}  key={} flow={} before={} {}  {}",
                    e.id,
                    e.key,
                    e.flow,
                    e.stage,
                    e.rule,
                    e.reasons.join("; "),
                );
                println!("    {}", e.proposed);
            }
            if held.exceptions.is_empty() {
                println!("no exceptions");
            }
            return Ok(ExitCode::SUCCESS);
        }
        ExceptionAction::Show { id } => {
            let held: api::ExceptionDetail = admin.get(&format!("/v1/exceptions/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&held)?);
            return Ok(ExitCode::SUCCESS);
        }
        ExceptionAction::Approve { ids, note } => (ids, note, "approve"),
        ExceptionAction::Reject { ids, note } => (ids, note, "reject"),
    };
    let mut code = ExitCode::SUCCESS;
    for id in &ids {
        let path = format!("/v1/exceptions/{id}/{decision}");
        match admin
            .post::<_, api::Decided>(&path, &api::Decide { note: note.clone() })
            .await
        {
            Ok(done) => println!("{}: {}", done.id, done.decision),
            Err(error) => {
                eprintln!("{id}: {error:#}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// `tenon plugin ...` (but `audit`, which is offline).
pub async fn plugin(admin: &Admin, action: PluginAction) -> anyhow::Result<ExitCode> {
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let (plugin, verb, asked) = match action {
        PluginAction::Try {
            plugin,
            against,
            candidate,
            limit,
        } => (
            plugin,
            "try",
            api::PluginAction {
                candidate: Some(absolute(&candidate)),
                flow: Some(against),
                limit: Some(limit as usize),
                digest: None,
            },
        ),
        PluginAction::Promote { plugin, candidate } => (
            plugin,
            "promote",
            api::PluginAction {
                candidate: Some(absolute(&candidate)),
                ..api::PluginAction::default()
            },
        ),
        PluginAction::Rollback { plugin } => (plugin, "rollback", api::PluginAction::default()),
        PluginAction::Approve { plugin, digest } => (
            plugin,
            "approve",
            api::PluginAction {
                digest: Some(digest),
                ..api::PluginAction::default()
            },
        ),
        PluginAction::Audit { path, json, config } => {
            return audit_plugin(path, json, config).await;
        }
        PluginAction::Pack(args) => return crate::packages::pack(args),
        PluginAction::Keygen(args) => return crate::packages::keygen(args),
        PluginAction::Sign(args) => return crate::packages::sign(args),
        PluginAction::Verify(args) => return crate::packages::verify(args),
        PluginAction::Publish(args) => return crate::packages::publish(args).await,
        PluginAction::Install(args) => return crate::packages::install(args).await,
        PluginAction::New {
            name,
            kind,
            dir,
            sdk_path,
        } => {
            let kind = match kind.as_str() {
                "source" => tenon_registry::Kind::Source,
                "transform" => tenon_registry::Kind::Transform,
                "sink" => tenon_registry::Kind::Sink,
                _ => tenon_registry::Kind::Api,
            };
            let dir = crate::develop::new_plugin(&name, kind, dir.as_deref(), sdk_path.as_deref())?;
            println!(
                "created {} ({kind} plugin `{name}`): cargo test, then tenon plugin build",
                dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        PluginAction::Build { dir } => {
            tokio::task::spawn_blocking(move || crate::develop::build_plugin(&dir)).await??;
            return Ok(ExitCode::SUCCESS);
        }
        PluginAction::Test { dir, cases, bless } => {
            let cases = if cases.is_relative() && !cases.exists() {
                dir.join(cases)
            } else {
                cases
            };
            return crate::develop::test_plugin(&dir, &cases, bless).await;
        }
    };
    let path = format!("/v1/plugins/{plugin}/{verb}");
    if verb != "try" {
        let swap: api::Swap = admin.post(&path, &asked).await?;
        match (swap.swapped, &swap.pending) {
            (true, _) => println!(
                "{plugin}: {} -> {} live",
                swap.from.unwrap_or_default(),
                swap.to.unwrap_or_default()
            ),
            (false, Some(pending)) => println!(
                "{plugin}: {} waits for approval (wider grants: {})",
                pending.digest,
                pending.widening.join(", ")
            ),
            (false, None) => println!("{plugin}: that version is already live"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let tried: api::Tried = admin.post(&path, &asked).await?;
    let mut differing = 0;
    for r in &tried.results {
        let ops = r.differences.as_array().cloned().unwrap_or_default();
        if ops.is_empty() {
            println!("#{} {}: same", r.offset, r.key);
            continue;
        }
        differing += 1;
        println!("#{} {}: {} difference(s)", r.offset, r.key, ops.len());
        for op in ops {
            let value = op
                .get("value")
                .map(|v| format!(" = {v}"))
                .unwrap_or_default();
            println!(
                "    {} {}{value}",
                op["op"].as_str().unwrap_or("?"),
                op["path"].as_str().unwrap_or("?")
            );
        }
    }
    println!(
        "{} of {} recorded inputs differ",
        differing,
        tried.results.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tenon plugin audit`: offline, from the plugin's own files.
async fn audit_plugin(
    path: PathBuf,
    json: bool,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let trust = match config {
        Some(config) => Some(tenon::config::Config::load(&config)?.trust),
        None => None,
    };
    let report = tokio::task::spawn_blocking(move || {
        tenon::sandbox::inspect::AuditReport::of_path_trusting(&path, trust.as_ref())
    })
    .await??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.loadable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// POST to one path per id; report each, fail if any failed.
async fn each<T: DeserializeOwned>(
    admin: &Admin,
    ids: &[String],
    path: impl Fn(&str) -> String,
    action: &str,
) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for id in ids {
        match admin.post::<_, T>(&path(id), &serde_json::json!({})).await {
            Ok(_) => println!("{action} {id}: done"),
            Err(error) => {
                eprintln!("{action} {id}: {error}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// `tenon kpis`.
pub async fn kpis(
    admin: &Admin,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    for (name, value) in [("from", from), ("to", to)] {
        if let Some(value) = value {
            query.push(format!("{name}={}", encode(&value)));
        }
    }
    let path = match query.is_empty() {
        true => "/v1/kpis".to_owned(),
        false => format!("/v1/kpis?{}", query.join("&")),
    };
    let report: api::KpiReport = admin.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "KPIs of the messages accepted from {} to {}",
        time(report.from_ms, SecondsFormat::Secs),
        time(report.to_ms, SecondsFormat::Secs)
    );
    let latency = |l: &api::Latency| match (l.p50_s, l.p95_s, l.p99_s) {
        (Some(p50), Some(p95), Some(p99)) => {
            format!(
                "{} measured; p50 {p50:.3}s  p95 {p95:.3}s  p99 {p99:.3}s",
                l.count
            )
        }
        _ => "none in the window".to_owned(),
    };
    let rate = |r: &api::Rate, what: &str| match r.rate {
        Some(rate) => format!("{:.1}% ({} {what} of {})", rate * 100.0, r.counted, r.total),
        None => "none in the window".to_owned(),
    };
    println!(
        "  quote-to-order latency     {}",
        latency(&report.quote_to_order)
    );
    println!(
        "  order rejection rate       {}",
        rate(&report.order_rejection, "rejected")
    );
    for (rule, n) in &report.order_rejection.by_rule {
        println!("      {n:>5}  {rule}");
    }
    println!(
        "  invoice posting success    {}",
        rate(&report.invoice_posting, "posted")
    );
    println!(
        "  amendment propagation      {}",
        latency(&report.amendment_propagation)
    );
    let billing = &report.billing_accuracy;
    match (billing.rate, &billing.why) {
        (Some(rate), _) => println!(
            "  billing accuracy           {:.1}% ({} matched of {}; {})",
            rate * 100.0,
            billing.matched,
            billing.documents,
            billing.runs.join(", ")
        ),
        (None, why) => println!(
            "  billing accuracy           not measured: {}",
            why.as_deref().unwrap_or_default()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tenon trace`.
pub async fn trace(admin: &Admin, key: &str, json: bool) -> anyhow::Result<ExitCode> {
    let trace: api::BusinessTrace = admin.get(&format!("/v1/trace/{}", encode(key))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{key}");
    if !trace.linked.is_empty() {
        println!("  linked: {}", trace.linked.join(", "));
    }
    for e in &trace.timeline {
        println!(
            "{}  +{:>6} ms  {:<16} {:<24} {:<20} {:<11} {}",
            time(e.at_ms, SecondsFormat::Millis),
            e.latency_ms,
            e.flow,
            e.kind,
            e.key,
            e.result,
            e.detail
        );
        let hops: Vec<String> = e
            .trail
            .iter()
            .map(|h| format!("{}@{} {}µs", h.plugin, h.version, h.micros))
            .collect();
        println!(
            "      {}{}  trace {}",
            hops.join(" -> "),
            match e.retries {
                0 => String::new(),
                n => format!("  ({n} retries)"),
            },
            e.trace_id
        );
    }
    for (id, flow, stage, attempts) in &trace.pending {
        println!("  still queued: {id} in {flow} at stage {stage} ({attempts} failed attempts)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A query-string or path value, percent-encoded.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}
