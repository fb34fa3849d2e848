//! Every route of both listeners, as data: the admin API authorizes by this table
//! (a route missing here cannot be reached), and `GET /v1/openapi.json` describes
//! exactly it, with the request and answer bodies' schemas generated from their Rust
//! types. A test calls every route it names.

use super::Plane;
use crate::api;
use crate::auth::Scope;
use hyper::Method;
use schemars::{JsonSchema, SchemaGenerator, generate::Contract, generate::SchemaSettings};
use serde_json::{Map, Value, json};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/healthz`), or the ingest route's own check (a key with
    /// `ingest:<source>`, or the source's signature).
    Open,
    /// `admin:read`.
    Read,
    /// `admin:write`.
    Write,
    /// `plugins:promote`.
    Promote,
}

impl Access {
    /// The scope a key needs.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Access::Open => None,
            Access::Read => Some(Scope::AdminRead),
            Access::Write => Some(Scope::AdminWrite),
            Access::Promote => Some(Scope::PluginsPromote),
        }
    }
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path, with `{parameters}`.
    pub path: &'static str,
    /// The listener that serves it.
    pub plane: Plane,
    /// Who may call it.
    pub access: Access,
    /// What it does.
    pub summary: &'static str,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// The JSON request body's schema.
    pub request: Option<Body>,
    /// The success status and its body's schema (`None`: not JSON).
    pub answer: (u16, Option<Body>),
}

/// A body type: its schema, generated into a shared set of definitions.
pub type Body = fn(&mut SchemaGenerator) -> Value;

fn body<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// Any JSON object (a schema, the health answer).
fn object(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object"})
}

const READ: Access = Access::Read;
const WRITE: Access = Access::Write;
const PROMOTE: Access = Access::Promote;

const fn admin(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        plane: Plane::Admin,
        access,
        summary,
        query: &[],
        request: None,
        answer: (200, None),
    }
}

/// Every route.
pub const ROUTES: &[Route] = &[
    Route {
        query: &[],
        request: None,
        answer: (202, Some(body::<api::Accepted>)),
        ..admin(
            "POST",
            "/v1/sources/{source}",
            Access::Open,
            "Hand the body to the source plugin; 202 with the accepted ids once durable (a key with ingest:<source>, or the source's signature check); a source with ack = \"validated\" answers 201 with what its steps made, or 422 with every reason",
        )
    }
    .on(Plane::Ingest),
    Route {
        answer: (200, Some(object)),
        ..admin("GET", "/healthz", Access::Open, "Liveness: 200 while the store accepts writes")
    }
    .on(Plane::Ingest),
    Route {
        answer: (200, Some(body::<api::MessageStatus>)),
        ..admin("GET", "/v1/messages/{id}", READ, "What happened to an accepted message: outcomes and what is still queued")
    },
    Route {
        query: &[
            ("limit", "at most this many (default 100, at most 1000)"),
            ("after", "the `next` cursor of the previous page"),
        ],
        answer: (200, Some(body::<api::DeadLetters>)),
        ..admin("GET", "/v1/dlq", READ, "The dead letters, oldest first, a page at a time")
    },
    Route {
        answer: (200, Some(body::<api::DeadLetterDetail>)),
        ..admin("GET", "/v1/dlq/{id}", READ, "One dead letter: the message, its stage, every attempt")
    },
    Route {
        answer: (200, Some(body::<api::DeadLetterHandled>)),
        ..admin("POST", "/v1/dlq/{id}/redrive", WRITE, "Back in front of its stage, on that stage's current plugin")
    },
    Route {
        answer: (200, Some(body::<api::DeadLetterHandled>)),
        ..admin("POST", "/v1/dlq/{id}/discard", WRITE, "Forget it (its outcome stays)")
    },
    Route {
        answer: (200, Some(body::<api::Reconciliations>)),
        ..admin("GET", "/v1/reconciliations", READ, "Each reconciliation of billing with the ERP, and its last run on this node")
    },
    Route {
        request: Some(body::<api::Reconcile>),
        answer: (200, Some(body::<api::Reconciled>)),
        ..admin("POST", "/v1/reconciliations/{name}/run", WRITE, "Reconcile now over a window of document dates: matches, every mismatch, the exceptions raised, the billing accuracy")
    },
    Route {
        answer: (200, Some(body::<api::DriftChecks>)),
        ..admin("GET", "/v1/drift", READ, "Each master-data drift check, and its last run on this node")
    },
    Route {
        answer: (200, Some(body::<api::DriftReport>)),
        ..admin("POST", "/v1/drift/{name}/run", WRITE, "Check now: the customer master against the target's copy, field by field; each new drift published as MasterDataDrift")
    },
    Route {
        answer: (200, Some(body::<api::Exceptions>)),
        ..admin("GET", "/v1/exceptions", READ, "Messages held for a person (a rule of their flow, or a saga), oldest first: what, why, the business key, what a decision does")
    },
    Route {
        answer: (200, Some(body::<api::ExceptionDetail>)),
        ..admin("GET", "/v1/exceptions/{id}", READ, "One exception: the message, its reasons, its attempts")
    },
    Route {
        request: Some(body::<api::Decide>),
        answer: (200, Some(body::<api::Decided>)),
        ..admin("POST", "/v1/exceptions/{id}/approve", WRITE, "Approve: back before its stage, which takes it (a failed part is tried again)")
    },
    Route {
        request: Some(body::<api::Decide>),
        answer: (200, Some(body::<api::Decided>)),
        ..admin("POST", "/v1/exceptions/{id}/reject", WRITE, "Reject: it ends rejected, and what its transaction delivered is undone where its flows have a saga")
    },
    Route {
        query: &[("from", "first offset (default 1)"), ("to", "last offset")],
        answer: (200, Some(body::<api::Events>)),
        ..admin("GET", "/v1/events", READ, "The event log between two offsets")
    },
    Route {
        request: Some(body::<api::Replay>),
        answer: (200, Some(body::<api::Replayed>)),
        ..admin("POST", "/v1/flows/{flow}/replay", WRITE, "Re-run the accepted messages of a window on the current plugins")
    },
    Route {
        answer: (200, Some(body::<api::Plugins>)),
        ..admin("GET", "/v1/plugins", READ, "The live version of every plugin, the nodes, the config")
    },
    Route {
        request: Some(body::<api::PluginAction>),
        answer: (200, Some(body::<api::Swap>)),
        ..admin("POST", "/v1/plugins/{name}/reload", WRITE, "Load the version now in the plugin's directory")
    },
    Route {
        request: Some(body::<api::PluginAction>),
        answer: (200, Some(body::<api::Tried>)),
        ..admin("POST", "/v1/plugins/{name}/try", PROMOTE, "A candidate beside the live version on recorded messages: the differences")
    },
    Route {
        request: Some(body::<api::PluginAction>),
        answer: (200, Some(body::<api::Swap>)),
        ..admin("POST", "/v1/plugins/{name}/promote", PROMOTE, "Make a candidate live (and write it into the plugin's directory)")
    },
    Route {
        request: Some(body::<api::PluginAction>),
        answer: (200, Some(body::<api::Swap>)),
        ..admin("POST", "/v1/plugins/{name}/rollback", PROMOTE, "The previous version, from the archive, live again")
    },
    Route {
        request: Some(body::<api::PluginAction>),
        answer: (200, Some(body::<api::Swap>)),
        ..admin("POST", "/v1/plugins/{name}/approve", PROMOTE, "The version waiting for approval (wider grants) goes live, if it is the one named")
    },
    Route {
        query: &[
            ("plugin", "one plugin instance"),
            ("key", "one API key"),
            ("decision", "allow or deny"),
            ("after", "records after this sequence number"),
            ("limit", "at most this many"),
        ],
        answer: (200, Some(body::<api::Audit>)),
        ..admin("GET", "/v1/audit", READ, "The audit log")
    },
    Route {
        answer: (200, Some(body::<api::Keys>)),
        ..admin("GET", "/v1/keys", READ, "The API keys (never their tokens)")
    },
    Route {
        request: Some(body::<api::NewKey>),
        answer: (201, Some(body::<api::KeyCreated>)),
        ..admin("POST", "/v1/keys", WRITE, "A new key (only scopes the caller holds); its token, once")
    },
    Route {
        answer: (200, Some(body::<api::KeyRevoked>)),
        ..admin("POST", "/v1/keys/{id}/revoke", WRITE, "The key stops working")
    },
    Route {
        answer: (200, None),
        ..admin("GET", "/metrics", READ, "The metrics and KPIs, OpenMetrics text for Prometheus")
    },
    Route {
        query: &[
            ("from", "ms since the epoch, an RFC 3339 time, or a span back from now (15m, 24h, 7d)"),
            ("to", "the same forms"),
        ],
        answer: (200, Some(body::<api::KpiReport>)),
        ..admin("GET", "/v1/kpis", READ, "The business KPIs over the messages accepted in a window")
    },
    Route {
        answer: (200, Some(body::<api::BusinessTrace>)),
        ..admin("GET", "/v1/trace/{key}", READ, "A business key's timeline across flows")
    },
    Route {
        answer: (200, Some(object)),
        ..admin("GET", "/v1/schemas", READ, "The canonical models and their versions")
    },
    Route {
        answer: (200, Some(object)),
        ..admin("GET", "/v1/schemas/{kind}/{version}", READ, "The JSON Schema of a canonical model, generated from its types")
    },
    Route {
        answer: (200, Some(object)),
        ..admin("GET", "/v1/openapi.json", READ, "This description")
    },
    Route {
        answer: (200, Some(object)),
        ..admin("GET", "/healthz", Access::Open, "Liveness: 200 while the store accepts writes")
    },
];

impl Route {
    const fn on(self, plane: Plane) -> Route {
        Route { plane, ..self }
    }

    /// Whether a request's method and path segments are this route's.
    pub fn matches(&self, method: &Method, segments: &[&str]) -> bool {
        let template: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        method.as_str() == self.method
            && template.len() == segments.len()
            && template
                .iter()
                .zip(segments)
                .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
    }
}

/// The route of `plane` a request is for, if any.
pub fn route_of(plane: Plane, method: &Method, segments: &[&str]) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.plane == plane && r.matches(method, segments))
}

/// The OpenAPI 3.1 description of every route, generated from [`ROUTES`], the
/// configured synchronous APIs (`[apis.*]`) and the body types.
pub fn openapi(apis: &std::collections::BTreeMap<String, crate::config::ApiEntry>) -> Value {
    let settings = |contract| {
        let mut s = SchemaSettings::draft2020_12();
        s.definitions_path = "/components/schemas".into();
        s.contract = contract;
        s
    };
    let mut answers = SchemaGenerator::new(settings(Contract::Serialize));
    let mut requests = SchemaGenerator::new(settings(Contract::Deserialize));
    let problem = answers.subschema_for::<api::Problem>().to_value();
    let mut paths = Map::new();
    for route in ROUTES {
        let server = match route.plane {
            Plane::Ingest => "ingest",
            Plane::Admin => "admin",
        };
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}})
        }));
        let (status, answer) = route.answer;
        let content = match answer {
            Some(schema) => json!({"application/json": {"schema": schema(&mut answers)}}),
            None => json!({"text/plain": {"schema": {"type": "string"}}}),
        };
        let mut responses = Map::new();
        responses.insert(
            status.to_string(),
            json!({"description": "Success", "content": content}),
        );
        responses.insert(
            "default".into(),
            json!({"description": "A problem (RFC 9457): 400 bad input, 401 no key, 403 missing scope, 404, 408 slow body, 413, 422 rejected, 429 over a rate limit, 503",
                   "content": {"application/problem+json": {"schema": problem.clone()}}}),
        );
        let mut operation = json!({
            "summary": route.summary,
            "tags": [server],
            "operationId": format!("{}{}", route.method.to_lowercase(), route.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": parameters,
            "responses": responses,
            "servers": [{"url": format!("{{{server}}}"), "variables": {server: {"default": match route.plane {
                Plane::Ingest => "http://127.0.0.1:8080",
                Plane::Admin => "http://127.0.0.1:8081",
            }}}}],
        });
        if let Some(scope) = route.access.scope() {
            operation["security"] = json!([{"bearer": []}]);
            operation["description"] = format!("Needs an API key with scope `{scope}`.").into();
        }
        if let Some(request) = route.request {
            operation["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": request(&mut requests)}}});
        }
        if route.path == "/v1/sources/{source}" {
            operation["requestBody"] = json!({"required": true, "description": "What the source plugin reads (its format)", "content": {"*/*": {"schema": {}}}});
        }
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        // /healthz is on both listeners: one operation, both servers.
        if let Some(existing) = item.get_mut(route.method.to_lowercase()) {
            if let Some(servers) = existing["servers"].as_array_mut() {
                servers.extend(operation["servers"].as_array().cloned().unwrap_or_default());
            }
            continue;
        }
        item[route.method.to_lowercase()] = operation;
    }
    for (name, api) in apis {
        let path = format!("/v1/apis/{name}{}", api.path.as_deref().unwrap_or_default());
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let (summary, answer, body) = match (&api.plugin, &api.source) {
            (Some(plugin), _) => (
                format!("Answered by API plugin `{}`", plugin.get_ref()),
                json!({"*/*": {"schema": {}}}),
                "What the plugin reads",
            ),
            (None, source) => (
                format!(
                    "Run at once, nothing queued: source `{}`, then {}; 200 with the outputs, 422 with every reason",
                    source
                        .as_ref()
                        .map(|s| s.get_ref().as_str())
                        .unwrap_or_default(),
                    api.steps
                        .iter()
                        .map(|s| format!("`{}`", s.get_ref()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                json!({"application/json": {"schema": answers.subschema_for::<api::ApiOutputs>().to_value()}}),
                "What the source plugin reads (its format)",
            ),
        };
        let item = paths.entry(path.clone()).or_insert_with(|| json!({}));
        for method in api.methods() {
            let mut operation = json!({
                "summary": summary,
                "description": format!("Needs an API key with scope `api:{name}`. Answers within {} ms or 504.", api.deadline_ms),
                "tags": ["ingest"],
                "operationId": format!("{}_apis_{}", method.to_lowercase(), name.replace('-', "_")),
                "parameters": parameters,
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "The answer", "content": answer},
                    "default": {"description": "A problem (RFC 9457): 400 invalid, 401, 403, 404, 405, 422 rejected (every reason), 429, 502 the plugin failed, 503, 504 past the deadline",
                                "content": {"application/problem+json": {"schema": problem.clone()}}},
                },
                "servers": [{"url": "{ingest}", "variables": {"ingest": {"default": "http://127.0.0.1:8080"}}}],
            });
            if method != "GET" {
                operation["requestBody"] = json!({"required": false, "description": body, "content": {"*/*": {"schema": {}}}});
            }
            item[method.to_lowercase()] = operation;
        }
    }
    let mut schemas = answers.take_definitions(true);
    schemas.extend(requests.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tenon",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Ingestion (partner systems) and the admin API (operators), on two listeners. Errors are application/problem+json.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key's token"}},
        },
    })
}
