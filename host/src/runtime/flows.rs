//! Flows resolved against the loaded plugins, their retry policies, and how an
//! emitted message fans out to the flows that subscribe to its kind.

use super::Runtime;
use crate::config::{Config, DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS, RuleAction, SagaPolicy};
use crate::model::{Envelope, StoredMessage, queue_name};
use crate::policy::{Expression, Facts};
use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::Duration;
use tenon_registry::Kind;

/// Backoff before the first retry unless the flow says otherwise (ms).
const RETRY_BASE_MS: u64 = 200;

/// Longest backoff unless the flow says otherwise (ms).
const RETRY_MAX_MS: u64 = 30_000;

/// A flow, resolved against the loaded plugins.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Its name.
    pub name: String,
    /// The source plugin instance, for a flow fed through ingress.
    pub source: Option<String>,
    /// The event kinds it takes from other flows, for a subscribing flow.
    pub subscribe: Vec<String>,
    /// Headers a subscribed message must carry.
    pub when: BTreeMap<String, String>,
    /// Kinds it publishes where they are made, not only at its end.
    pub emit: Vec<String>,
    /// The stage plugin instances: the steps, then the sink.
    pub stages: Vec<String>,
    /// How each stage retries, in the order of `stages`.
    pub retry: Vec<RetryPolicy>,
    /// Workers per stage.
    pub concurrency: u32,
    /// For a subscribing flow: what a message must satisfy to enter (CEL).
    pub filter: Option<Expression>,
    /// The rules checked before stages take messages, in the config's order.
    pub rules: Vec<Rule>,
    /// Whether (and how) its deliveries are undone when their transaction fails.
    pub saga: Option<SagaPolicy>,
    /// Whether consecutive transform steps, and the sink after them, run in one lease
    /// and one commit.
    pub fuse: bool,
}

/// A rule of a flow, compiled: before `stage` takes a message, `when` is checked.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its number in the flow (from 1), as exceptions name it.
    pub number: usize,
    /// The stage (plugin instance) it is checked before.
    pub stage: String,
    /// When it applies.
    pub when: Expression,
    /// What it does then.
    pub then: RuleAction,
    /// Why.
    pub reason: String,
}

/// How a stage retries `retryable` failures, traps and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a dead letter.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per attempt.
    pub backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (from 1): exponential, capped, ±20% jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        let jitter = (uuid::Uuid::now_v7().as_u128() as u64 % 41) as f64 / 100.0 - 0.2;
        capped.mul_f64(1.0 + jitter)
    }
}

/// `OrderAccepted` with its `tenon-*` headers, for an error about routing it.
pub(crate) fn describe_event(message: &StoredMessage) -> String {
    let headers: Vec<String> = message
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("tenon-") && k != tenon_model::MODEL_HEADER)
        .map(|(k, v)| format!("{k} = `{v}`"))
        .collect();
    if headers.is_empty() {
        format!("`{}`", message.kind)
    } else {
        format!("`{}` with {}", message.kind, headers.join(", "))
    }
}

/// Whether `filter`, flow `flow`'s, lets `message` in. One that cannot be evaluated
/// on it lets it in (with a warning): a rule of the flow can hold it, a filter never
/// drops a message silently.
fn admits(filter: &Expression, flow: &Flow, message: &StoredMessage) -> bool {
    let facts = Facts::of(
        &message.kind,
        &message.key,
        &message.headers,
        &message.content_type,
        &message.body,
    );
    match facts.and_then(|facts| filter.holds(&facts)) {
        Ok(admitted) => admitted,
        Err(error) => {
            tracing::warn!(flow = %flow.name, id = %message.id, %error, "the flow's filter cannot be evaluated on this message; it enters the flow");
            true
        }
    }
}

/// Refuse flows in which a plugin writes a canonical model at a version the plugin it
/// feeds reads at another (each side as its manifest's `[models]` declares): within a
/// flow, each stage and the next (the source first); across flows, every plugin that
/// writes a kind and the first stage of each flow subscribing to it. `models` gives
/// an instance's declarations (`None`: unknown, unchecked).
pub(crate) fn check_models(
    flows: &BTreeMap<String, Flow>,
    models: impl Fn(&str) -> Option<tenon_registry::Models>,
) -> Result<(), String> {
    for flow in flows.values() {
        let chain: Vec<&String> = flow.source.iter().chain(&flow.stages).collect();
        for pair in chain.windows(2) {
            if let (Some(writes), Some(reads)) = (models(pair[0]), models(pair[1]))
                && let Some(why) = writes.mismatch(&reads, pair[0], pair[1])
            {
                return Err(format!("flow `{}`: {why}", flow.name));
            }
        }
        let Some(first) = flow.stages.first().filter(|_| !flow.subscribe.is_empty()) else {
            continue;
        };
        let Some(reads) = models(first) else {
            continue;
        };
        for other in flows.values() {
            for writer in other.source.iter().chain(&other.stages) {
                let Some(writes) = models(writer) else {
                    continue;
                };
                let subscribed = tenon_registry::Models {
                    reads: Vec::new(),
                    writes: writes
                        .writes
                        .into_iter()
                        .filter(|w| flow.subscribe.contains(&w.kind))
                        .collect(),
                };
                if let Some(why) = subscribed.mismatch(&reads, writer, first) {
                    return Err(format!(
                        "flow `{}` subscribes to what flow `{}` publishes: {why}",
                        flow.name, other.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The flows of a config, with each stage checked against the kind of its plugin.
pub(crate) fn resolve_flows(
    config: &Config,
    kind_of: impl Fn(&str) -> Option<Kind>,
) -> Result<BTreeMap<String, Flow>, crate::config::ConfigError> {
    let mut flows = BTreeMap::new();
    for (name, entry) in &config.flows {
        let expect = |at: &serde_spanned::Spanned<String>, field: &str, kind: Kind| {
            let actual = kind_of(at.get_ref());
            if actual == Some(kind) {
                return Ok(());
            }
            let what = actual.map_or("an unknown".to_owned(), |k| format!("a {k}"));
            Err(config.error(
                at,
                format!(
                    "flow `{name}`: field `{field}`: `{}` is {what} plugin; {field} must be {kind} plugins",
                    at.get_ref()
                ),
            ))
        };
        if let Some(source) = &entry.source {
            expect(source, "source", Kind::Source)?;
        }
        for step in &entry.steps {
            expect(step, "steps", Kind::Transform)?;
        }
        if let Some(sink) = &entry.sink {
            expect(sink, "sink", Kind::Sink)?;
        }
        let policy = |stage: &str| {
            let own = entry.retry.get(stage).cloned().unwrap_or_default();
            RetryPolicy {
                max_attempts: own
                    .max_attempts
                    .or(entry.max_attempts)
                    .unwrap_or(DEFAULT_MAX_ATTEMPTS),
                backoff: Duration::from_millis(
                    own.backoff_ms.or(entry.backoff_ms).unwrap_or(RETRY_BASE_MS),
                ),
                max_backoff: Duration::from_millis(
                    own.max_backoff_ms
                        .or(entry.max_backoff_ms)
                        .unwrap_or(RETRY_MAX_MS),
                ),
            }
        };
        let stages: Vec<String> = entry.stages().map(|s| s.get_ref().clone()).collect();
        // The expressions were checked with the config: a failure here is a bug.
        let compile = |at: &serde_spanned::Spanned<String>| {
            Expression::compile(at.get_ref()).map_err(|e| config.error(at, e))
        };
        let filter = entry.filter.as_ref().map(compile).transpose()?;
        let mut rules = Vec::with_capacity(entry.rules.len());
        for (n, rule) in entry.rules.iter().enumerate() {
            rules.push(Rule {
                number: n + 1,
                stage: rule
                    .at
                    .as_ref()
                    .map_or_else(|| stages[0].clone(), |at| at.get_ref().clone()),
                when: compile(&rule.when)?,
                then: rule.then,
                reason: rule.reason.clone(),
            });
        }
        let flow = Flow {
            name: name.clone(),
            source: entry.source.as_ref().map(|s| s.get_ref().clone()),
            subscribe: entry
                .subscribe
                .iter()
                .map(|k| k.get_ref().clone())
                .collect(),
            when: entry.when.clone(),
            emit: entry.emit.iter().map(|k| k.get_ref().clone()).collect(),
            retry: stages.iter().map(|s| policy(s)).collect(),
            stages,
            concurrency: entry.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            filter,
            rules,
            saga: entry.saga.as_ref().map(|s| *s.get_ref()),
            fuse: entry.fuse,
        };
        flows.insert(name.clone(), flow);
    }
    Ok(flows)
}

impl Runtime {
    /// The flows.
    pub fn flows(&self) -> Vec<Flow> {
        self.flows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The flows `message`, made in flow `from`, enters as an event. Flow `from`
    /// emits it when it is `at_end` (the last step of a flow without a sink made it) or
    /// when its kind is in `from`'s `emit`; otherwise it reaches no subscriber (an order
    /// the mapping made is not one the gateway accepted). The flows it enters are those
    /// that subscribe to its kind and whose `when` headers it carries, except `from`
    /// and any flow its lineage went through already (no loops). Each gets an envelope
    /// at its first stage, with an id derived from the message's, and the lineage of
    /// `produced` (its root, trail and trace: the message as it was made).
    pub(crate) fn published(
        &self,
        message: &StoredMessage,
        from: &str,
        at_end: bool,
        produced: &Envelope,
    ) -> Vec<(String, Envelope)> {
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        // On every step's every output: read the flows in place, clone none.
        let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
        // A flow no longer in the config (a message in flight across a reload) emits
        // at its end only.
        let emits = at_end
            || flows
                .get(from)
                .is_some_and(|f| f.emit.contains(&message.kind));
        if !emits {
            return Vec::new();
        }
        flows
            .values()
            .filter(|f| f.subscribe.contains(&message.kind))
            .filter(|f| f.when.iter().all(|(k, v)| header(k) == Some(v.as_str())))
            .filter(|f| f.name != from && !message.id.has_entered(&f.name))
            .filter(|f| {
                f.filter
                    .as_ref()
                    .is_none_or(|filter| admits(filter, f, message))
            })
            .map(|f| {
                let mut copy = message.clone();
                copy.id = message.id.entering(&f.name);
                let mut envelope =
                    Envelope::entering(&f.name, &f.stages, copy, produced.accepted_ms);
                envelope.root = produced.root.clone();
                envelope.root_kind = produced.root_kind.clone();
                envelope.trail = produced.trail.clone();
                envelope.trace = produced.trace.clone();
                (queue_name(&f.name, &f.stages[0]), envelope)
            })
            .collect()
    }

    /// How a stage retries: the current flow's policy for it, or the defaults when the
    /// message's route is no longer in the config.
    pub(crate) fn retry_policy(&self, flow: &str, stage: &str) -> RetryPolicy {
        let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
        flows
            .get(flow)
            .and_then(|f| f.stages.iter().position(|s| s == stage).map(|i| f.retry[i]))
            .unwrap_or(RetryPolicy {
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                backoff: Duration::from_millis(RETRY_BASE_MS),
                max_backoff: Duration::from_millis(RETRY_MAX_MS),
            })
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for (attempt, nominal) in [
            (1, 100.0),
            (2, 200.0),
            (3, 400.0),
            (4, 800.0),
            (5, 1000.0),
            (30, 1000.0),
        ] {
            let ms = policy.delay(attempt).as_secs_f64() * 1000.0;
            assert!(
                (nominal * 0.79..=nominal * 1.21).contains(&ms),
                "attempt {attempt}: {ms} ms"
            );
        }
    }
}
