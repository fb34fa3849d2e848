//! The process layer: what decides a message's fate beside its plugins.
//!
//! - **Rules** (`[[flows.*.rules]]`, CEL): checked before a stage takes a message; one
//!   that applies holds it for a person (an exception) or rejects it.
//! - **Exceptions**: a held message waits, whole, in the store's exceptions until a
//!   person decides ([`Runtime::decide`]). Approval puts it back before its stage,
//!   where its rules pass it (a failed part is tried again); rejection ends it
//!   rejected, which fails its transaction.
//! - **Sagas**: a business transaction is every message derived from one input (one
//!   root). In a flow with `saga`, each delivery keeps what it delivered with its
//!   outcome (`Outcome::undo`). When a part of the transaction fails for good (a
//!   rejection or a dead letter, in any flow), every delivery of it made in such a
//!   flow is undone: a compensation message (`<id>.undo`, carrying
//!   [`Directive::Compensate`]) goes to the sink's queue in the same commit as the
//!   failure, and the sink's `compensate` export runs on it like any delivery
//!   (retries, dead letter, its outcome recorded once). Where a delivered part's flow
//!   says `saga = "exception"`, the failure is held for a person first.
//!
//! Saga state is the store's: outcomes (with what each delivery did) and queued
//! compensations, written in the transaction that records the failure, so a crash
//! resumes where the commit left off and each undoing runs once. A delivery and a
//! failure committed at the same instant both look again after their commit
//! (`Runtime::settle_saga`), so the later of the two sees the other.

use super::Runtime;
use super::worker::ended;
use crate::config::{RuleAction, SagaPolicy};
use crate::model::{
    DeadLetter, Directive, Envelope, MessageId, Outcome, OutcomeKind, StoredMessage, Undo,
    queue_name,
};
use crate::policy::Facts;
use crate::sandbox::plugin::Plugin;
use crate::store::{Completion, StoreError};
use crate::telemetry;
use std::collections::BTreeSet;
use std::sync::PoisonError;

impl Runtime {
    /// What the process layer decides before a stage runs `env`, if anything: a
    /// person's rejection, a hold asked for, the first of the stage's rules that applies
    /// (but the one a person's approval waives), or, before a sink of a flow with a
    /// saga, a transaction that failed already (then nothing more is delivered into it:
    /// rejected, or held for a person under `saga = "exception"`). `None`: the stage
    /// runs it.
    pub(super) async fn before_stage(&self, plugin: &Plugin, env: &Envelope) -> Option<Completion> {
        let end =
            |result| Completion::finish(ended(env, plugin, result, env.trail.clone(), vec![]));
        let waived = match &env.directive {
            Some(Directive::Reject { by, note }) => {
                tracing::info!(outcome = "rejected", %by, "held message rejected by a person");
                let reasons = vec![format!("rejected by {by}: {note}")];
                return Some(end(OutcomeKind::Rejected { reasons }));
            }
            Some(Directive::Hold {
                rule,
                reasons,
                proposed,
            }) => {
                return Some(end(OutcomeKind::Held {
                    rule: rule.clone(),
                    reasons: reasons.clone(),
                    proposed: proposed.clone(),
                }));
            }
            Some(Directive::Compensate { .. }) => return None,
            Some(Directive::Approve { waives, .. }) => waives.as_str(),
            None => "",
        };
        let stage = env.route.get(env.stage as usize)?;
        let (rules, saga) = {
            let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
            let flow = flows.get(&env.flow)?;
            let rules: Vec<super::flows::Rule> = flow
                .rules
                .iter()
                .filter(|r| &r.stage == stage && format!("rule {}", r.number) != waived)
                .cloned()
                .collect();
            let at_sink = env.stage as usize + 1 == env.route.len()
                && plugin.kind() == tenon_registry::Kind::Sink;
            (rules, flow.saga.filter(|_| at_sink && waived != "saga"))
        };
        if let Some(result) = rules_say(&rules, stage, env) {
            return Some(end(result));
        }
        let policy = saga?;
        let siblings = self.store.outcomes(&env.root).await.ok()?;
        let failed = siblings.iter().find(|o| o.result.fails_transaction())?;
        let why = format!("part of its transaction failed: {}", because(failed));
        tracing::warn!(%why, "not delivered into a failed transaction");
        Some(end(match policy {
            SagaPolicy::Compensate => OutcomeKind::Rejected {
                reasons: vec![format!("not delivered: {why}")],
            },
            SagaPolicy::Exception => OutcomeKind::Held {
                rule: "saga".to_owned(),
                reasons: vec![why],
                proposed: format!(
                    "approve: `{stage}` delivers it all the same; reject: it ends rejected"
                ),
            },
        }))
    }

    /// The saga's say on how `env` ended (before it is committed), and whether to
    /// look at its transaction again after the commit: a delivery in a flow with a
    /// saga keeps what it delivered (and is undone at once if its transaction failed
    /// meanwhile); a failure undoes the transaction's deliveries, or, when the stage
    /// itself failed (`by_rule` false: not a rule's or a person's rejection), is held
    /// for a person where their flows say so.
    pub(super) async fn saga(
        &self,
        plugin: &Plugin,
        env: &Envelope,
        completion: Completion,
        by_rule: bool,
        step: &opentelemetry::Context,
    ) -> (Completion, bool) {
        let Completion::Finish {
            mut outcome,
            mut published,
        } = completion
        else {
            return (completion, false);
        };
        // An undoing does not start another; one the target refuses is a dead letter
        // for a person (the delivery it should undo stands).
        if matches!(env.directive, Some(Directive::Compensate { .. })) {
            if let OutcomeKind::Rejected { reasons } = &outcome.result {
                outcome.result = OutcomeKind::DeadLetter {
                    error: format!("the undoing was refused: {}", reasons.join("; ")),
                };
            }
            return (Completion::Finish { outcome, published }, false);
        }
        let (own, any) = {
            let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
            (
                flows.get(&env.flow).and_then(|f| f.saga),
                flows.values().any(|f| f.saga.is_some()),
            )
        };
        if !any {
            return (Completion::Finish { outcome, published }, false);
        }
        let settle = match &outcome.result {
            OutcomeKind::Delivered { .. } if own.is_some() => {
                let m = &env.message;
                outcome.undo = Some(Undo {
                    kind: m.kind.clone(),
                    content_type: m.content_type.clone(),
                    headers: m.headers.clone(),
                    body: m.body.clone(),
                });
                let siblings = self.store.outcomes(&env.root).await.unwrap_or_default();
                if let Some(failed) = siblings.iter().find(|o| o.result.fails_transaction()) {
                    tracing::warn!(failed = %failed.id, "delivered after its transaction failed: undone at once");
                    published.extend(compensation(&outcome, &because(failed), step));
                }
                true
            }
            result if result.fails_transaction() => {
                let siblings = match self.store.outcomes(&env.root).await {
                    Ok(siblings) => siblings,
                    Err(error) => {
                        tracing::error!(%error, "cannot read the transaction's outcomes; it is looked at again after the commit");
                        Vec::new()
                    }
                };
                let done = undone(&siblings);
                let delivered: Vec<&Outcome> = siblings
                    .iter()
                    .filter(|o| o.undo.is_some() && !done.contains(&o.id))
                    .collect();
                // A person's rejection and a rule's are decided: only a failure of the
                // stage itself is held for a person.
                let hold = !by_rule && !delivered.is_empty() && {
                    let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
                    delivered.iter().any(|d| {
                        flows.get(&d.flow).and_then(|f| f.saga) == Some(SagaPolicy::Exception)
                    })
                };
                if hold {
                    let stage = plugin.name();
                    let parts: Vec<String> = delivered
                        .iter()
                        .map(|d| format!("{} ({})", d.id, reference(d)))
                        .collect();
                    outcome.result = OutcomeKind::Held {
                        rule: "saga".to_owned(),
                        reasons: vec![because(&outcome)],
                        proposed: format!(
                            "approve: `{stage}` tries it again; reject: undo what its transaction delivered: {}",
                            parts.join(", ")
                        ),
                    };
                    tracing::warn!("part of a transaction failed: held for a person");
                    false
                } else {
                    let why = because(&outcome);
                    for d in &delivered {
                        published.extend(compensation(d, &why, step));
                    }
                    if !delivered.is_empty() {
                        tracing::warn!(
                            undone = delivered.len(),
                            "part of a transaction failed: its deliveries are undone"
                        );
                    }
                    true
                }
            }
            _ => false,
        };
        (Completion::Finish { outcome, published }, settle)
    }

    /// After a delivery or a failure in a transaction with sagas is committed: if the
    /// transaction failed, queue the undoing of each of its deliveries not undone nor
    /// queued yet (one committed at the same instant as the failure).
    pub(super) async fn settle_saga(&self, root: &MessageId, step: &opentelemetry::Context) {
        let looked = async {
            let pending = self.store.pending(root).await?;
            let outcomes = self.store.outcomes(root).await?;
            Ok::<_, StoreError>((pending, outcomes))
        };
        let (pending, outcomes) = match looked.await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "cannot look at the transaction again");
                return;
            }
        };
        let Some(failed) = outcomes.iter().find(|o| o.result.fails_transaction()) else {
            return;
        };
        let mut done = undone(&outcomes);
        done.extend(pending.iter().map(|e| e.message.id.clone()));
        let why = because(failed);
        let missing: Vec<(String, Envelope)> = outcomes
            .iter()
            .filter(|o| {
                o.undo.is_some() && !done.contains(&o.id.undoing()) && !done.contains(&o.id)
            })
            .filter_map(|o| compensation(o, &why, step))
            .collect();
        if missing.is_empty() {
            return;
        }
        tracing::warn!(
            undone = missing.len(),
            "a delivery and a failure of one transaction crossed: undone now"
        );
        if let Err(error) = self.store.requeue(missing).await {
            tracing::error!(%error, "cannot queue the undoing of a delivery");
        }
    }

    /// At start: every transaction of the last `keep` that failed with a delivery not
    /// undone nor queued is settled (a crash between a commit and its look after the
    /// commit left it so).
    pub(crate) async fn settle_sagas(&self, keep: std::time::Duration) {
        let now = crate::model::now_ms();
        let since = now.saturating_sub(keep.as_millis() as u64);
        let outcomes = match self.store.outcomes_in(since..now + 1).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::error!(%error, "cannot read the outcomes to settle sagas");
                return;
            }
        };
        let mut failed = BTreeSet::new();
        let mut delivered = BTreeSet::new();
        for outcome in &outcomes {
            if outcome.result.fails_transaction() {
                failed.insert(outcome.root.clone());
            }
            if outcome.undo.is_some() {
                delivered.insert(outcome.root.clone());
            }
        }
        let context = opentelemetry::Context::new();
        for root in failed.intersection(&delivered) {
            self.settle_saga(root, &context).await;
        }
    }

    /// Every exception (a message held for a person), oldest first.
    pub async fn exceptions(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.store.exceptions().await
    }

    /// One exception.
    pub async fn exception(&self, id: &MessageId) -> Result<Option<DeadLetter>, StoreError> {
        self.store.exception(id).await
    }

    /// A person's decision on an exception: approve (it goes back before its stage,
    /// which takes it) or reject (it ends rejected; its transaction is undone where
    /// its flows have a saga). `false` when there is no such exception.
    pub async fn decide(&self, id: &MessageId, directive: Directive) -> Result<bool, StoreError> {
        let decided = self.store.decide(id, directive).await?;
        if decided {
            self.progressed.notify_waiters();
        }
        Ok(decided)
    }
}

/// The key-value namespace where the process layer remembers what it raised
/// (reconciliation mismatches, drift), shared by the nodes of a deployment. No plugin
/// instance can have this name (instance names are plain words).
pub(crate) const PROCESS_NAMESPACE: &str = "@tenon/process";

/// The process layer's memory: what it raised, by key, durable and shared.
pub(crate) fn memory(store: &std::sync::Arc<dyn crate::store::Store>) -> crate::store::KvNamespace {
    crate::store::KvNamespace::new(store.clone(), PROCESS_NAMESPACE, None)
}

/// A store error of a key-value write outside a step.
pub(crate) fn kv_failed(error: crate::store::CompleteError) -> StoreError {
    match error {
        crate::store::CompleteError::Store(error) => error,
        other => StoreError::CommitFailed(other.to_string()),
    }
}

/// What the process layer needs of a plugin instance: that a saga's sink can undo a
/// delivery, that a reconciliation's ERP or a drift check's target can read back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Abilities {
    /// It exports `compensator`.
    pub compensates: bool,
    /// It exports `records`.
    pub reads: bool,
}

impl Abilities {
    /// What `plugin` can do.
    pub(crate) fn of(plugin: &Plugin) -> Abilities {
        Abilities {
            compensates: plugin.compensates(),
            reads: plugin.reads_records(),
        }
    }
}

/// Refuse a config whose process layer needs what its plugins cannot do, each named:
/// a flow with a saga whose sink cannot undo, a reconciliation or a drift check whose
/// plugin cannot read back. `abilities` gives an instance's (`None`: not loaded).
pub(crate) fn check_abilities(
    config: &crate::config::Config,
    flows: &std::collections::BTreeMap<String, super::Flow>,
    abilities: impl Fn(&str) -> Option<Abilities>,
) -> Result<(), String> {
    for flow in flows.values().filter(|f| f.saga.is_some()) {
        let Some(sink) = flow.stages.last() else {
            continue;
        };
        if abilities(sink).is_some_and(|a| !a.compensates) {
            return Err(format!(
                "flow `{}`: `saga` needs a sink that can undo a delivery; `{sink}` does not export `tenon:plugin/compensator`",
                flow.name
            ));
        }
    }
    let readers = config
        .reconciliations
        .iter()
        .map(|(name, r)| (format!("reconciliation `{name}`"), "erp", r.erp.get_ref()))
        .chain(config.drift.iter().map(|(name, d)| {
            (
                format!("drift check `{name}`"),
                "target",
                d.target.get_ref(),
            )
        }));
    for (what, field, plugin) in readers {
        if abilities(plugin).is_some_and(|a| !a.reads) {
            return Err(format!(
                "{what}: `{field} = \"{plugin}\"` cannot read back what its system holds: it does not export `tenon:plugin/records` (a reconciling sink such as tryton-sink, cpq-writeback or http-sink)"
            ));
        }
    }
    Ok(())
}

/// What the first of `rules` that applies to `env` does, before `stage`.
fn rules_say(rules: &[super::flows::Rule], stage: &str, env: &Envelope) -> Option<OutcomeKind> {
    if rules.is_empty() {
        return None;
    }
    let m = &env.message;
    let facts = Facts::of(&m.kind, &m.key, &m.headers, &m.content_type, &m.body);
    for rule in rules {
        let held = |reason: String| OutcomeKind::Held {
            rule: format!("rule {}", rule.number),
            reasons: vec![reason],
            proposed: format!(
                "approve: `{stage}` takes it; reject: it ends rejected (and its transaction is undone where its flows have a saga)"
            ),
        };
        let result = match facts
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|f| rule.when.holds(f))
        {
            Ok(false) => continue,
            Ok(true) => match rule.then {
                RuleAction::Hold => held(rule.reason.clone()),
                RuleAction::Reject => OutcomeKind::Rejected {
                    reasons: vec![format!("rule {}: {}", rule.number, rule.reason)],
                },
            },
            // A rule that cannot say is a person's to decide, never a pass.
            Err(error) => held(format!("rule {} cannot be evaluated: {error}", rule.number)),
        };
        tracing::info!(
            rule = rule.number,
            outcome = telemetry::metrics::result_name(&result),
            "a rule of the flow applies"
        );
        return Some(result);
    }
    None
}

/// The ids of deliveries undone (or being undone) among `outcomes`: each
/// compensation's outcome names the delivery it undid by its id.
fn undone(outcomes: &[Outcome]) -> BTreeSet<MessageId> {
    let mut done = BTreeSet::new();
    for o in outcomes {
        if let Some(delivered) = o.id.as_str().strip_suffix(".undo") {
            done.insert(MessageId::from(delivered));
            done.insert(o.id.clone());
        }
    }
    done
}

/// A failure in words, for what it makes undone.
fn because(failed: &Outcome) -> String {
    let what = match &failed.result {
        OutcomeKind::Rejected { reasons } => format!("rejected: {}", reasons.join("; ")),
        OutcomeKind::DeadLetter { error } => format!("failed: {error}"),
        other => telemetry::metrics::result_name(other).to_owned(),
    };
    format!(
        "{} ({}) at `{}` {what}",
        failed.id, failed.kind, failed.plugin
    )
}

/// What a delivery returned, in words.
fn reference(delivered: &Outcome) -> String {
    match &delivered.result {
        OutcomeKind::Delivered { reference, .. } => format!("{} `{reference}`", delivered.plugin),
        _ => delivered.plugin.clone(),
    }
}

/// The undoing of `delivered` (an outcome with what it delivered), for its sink's
/// queue in its flow.
fn compensation(
    delivered: &Outcome,
    because: &str,
    step: &opentelemetry::Context,
) -> Option<(String, Envelope)> {
    let (undo, OutcomeKind::Delivered { reference, detail }) =
        (delivered.undo.as_ref()?, &delivered.result)
    else {
        return None;
    };
    let message = StoredMessage {
        id: delivered.id.undoing(),
        key: delivered.key.clone(),
        kind: undo.kind.clone(),
        content_type: undo.content_type.clone(),
        headers: undo.headers.clone(),
        body: undo.body.clone(),
    };
    let envelope = Envelope {
        message,
        flow: delivered.flow.clone(),
        route: vec![delivered.plugin.clone()],
        stage: 0,
        root: delivered.root.clone(),
        accepted_ms: delivered.accepted_ms,
        trail: delivered.trail.clone(),
        attempts: Vec::new(),
        not_before_ms: 0,
        root_kind: delivered.root_kind.clone(),
        trace: telemetry::carried(step),
        directive: Some(Directive::Compensate {
            delivered: delivered.id.clone(),
            reference: reference.clone(),
            detail: detail.clone(),
            because: because.to_owned(),
        }),
    };
    Some((queue_name(&delivered.flow, &delivered.plugin), envelope))
}
