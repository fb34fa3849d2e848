//! Canary: a candidate version run beside the live one on the flow's recent
//! messages (from the event log), their outputs compared; nothing is delivered and
//! nothing written (a canary's kv writes are never committed).

use super::Runtime;
use super::lifecycle::{LifecycleError, Location, archive_dir};
use crate::sandbox::plugin::Plugin;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

impl Runtime {
    /// Run a candidate version of the transform `name` beside its live version on the
    /// last `limit` messages `flow` accepted (the event log), and compare their
    /// outputs. Nothing leaves the process: sinks are not called, and both versions
    /// run with a scratch key-value namespace.
    pub async fn try_candidate(
        &self,
        name: &str,
        flow: &str,
        candidate: &std::path::Path,
        limit: usize,
    ) -> Result<Vec<CanaryResult>, LifecycleError> {
        let flows = self.flows();
        let flow = flows
            .iter()
            .find(|f| f.name == flow)
            .ok_or_else(|| LifecycleError::UnknownFlow(flow.to_owned()))?;
        let stage = flow
            .stages
            .iter()
            .position(|s| s == name)
            .filter(|&i| i + 1 < flow.stages.len())
            .ok_or_else(|| {
                LifecycleError::Conflict(format!(
                    "`{name}` is not a transform step of flow `{}`",
                    flow.name
                ))
            })?;
        let (candidate_root, shown) = self.candidate_dir(candidate)?;
        // Both versions read the instance's own key-value data; neither writes it
        // (a canary's writes are never committed).
        // A candidate of this instance is a version of its plugin.
        let load = |location: Location<'_>| {
            super::lifecycle::load_plugin_at(
                &self.config(),
                self.engine(),
                name,
                name,
                location,
                self.keep(name),
            )
            .map_err(|e| LifecycleError::Refused(format!("{e:#}")))
        };
        let live_digest = self
            .plugin(name)
            .map(|p| p.digest().to_owned())
            .unwrap_or_default();
        let live = load(Location::Path(&archive_dir(
            self.data_dir(),
            name,
            &live_digest,
        )))?;
        let candidate = load(Location::Dir(&candidate_root, &shown))?;
        let before: Vec<Arc<Plugin>> = flow.stages[..stage]
            .iter()
            .filter_map(|s| self.plugin(s))
            .collect();

        let events = self
            .store()
            .events(1, u64::MAX)
            .await
            .map_err(LifecycleError::Store)?;
        let recent = events.into_iter().rev().filter_map(|e| match e.body {
            crate::model::EventBody::Accepted { envelope } if e.flow == flow.name => {
                Some((e.offset, envelope.message))
            }
            _ => None,
        });
        let mut results = Vec::new();
        for (offset, message) in recent.take(limit) {
            // The inputs of this step: the message through the live steps before it.
            let mut inputs = vec![message];
            for step in &before {
                let mut next = Vec::new();
                for input in &inputs {
                    next.extend(step.transform(input).await.unwrap_or_default());
                }
                inputs = next;
            }
            for input in inputs {
                let (live_out, candidate_out) =
                    (run(&live, &input).await, run(&candidate, &input).await);
                let as_json = |r: &Result<Vec<serde_json::Value>, String>| match r {
                    Ok(v) => serde_json::json!({ "outputs": v }),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                let diff = json_patch::diff(&as_json(&live_out), &as_json(&candidate_out));
                results.push(CanaryResult {
                    offset,
                    id: input.id.clone(),
                    key: input.key.clone(),
                    live: live.digest().to_owned(),
                    candidate: candidate.digest().to_owned(),
                    differences: serde_json::to_value(&diff).unwrap_or_default(),
                });
            }
        }
        Ok(results)
    }
}

/// The comparison of a candidate with the live version on one recorded input.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CanaryResult {
    /// The event's offset.
    pub offset: u64,
    /// The input message's id.
    pub id: crate::model::MessageId,
    /// Its business key.
    pub key: String,
    /// The live digest.
    pub live: String,
    /// The candidate's digest.
    pub candidate: String,
    /// What the candidate's result changes, as a JSON Patch (RFC 6902) from the live
    /// result `{"outputs": [...]}` or `{"error": ...}`; empty when they agree.
    pub differences: serde_json::Value,
}

fn body_json(message: &crate::model::StoredMessage) -> serde_json::Value {
    tenon_model::Encoding::from_content_type(&message.content_type)
        .ok()
        .and_then(|enc| enc.decode(&message.body).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Run a transform and decode its outputs, or say why it failed.
async fn run(
    plugin: &Plugin,
    input: &crate::model::StoredMessage,
) -> Result<Vec<serde_json::Value>, String> {
    plugin
        .transform(input)
        .await
        .map(|outs| outs.iter().map(body_json).collect())
        .map_err(|e| e.to_string())
}
