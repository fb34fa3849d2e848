//! The workers: each stage of each flow has `concurrency` of them (on the guest
//! threads); a worker leases a message, calls the stage's plugin in a fresh instance,
//! decides what the result means (forward, finish, retry, dead letter) from the failure
//! class alone, and commits that with the input's ack and the call's kv writes. What
//! it forwards to the flow's next transform steps, and then to its sink, runs through
//! them in the same lease and commit, as does what it publishes to the flows that
//! subscribe to it (`Runtime::fuse`).

use super::Runtime;
use super::flows::{RetryPolicy, describe_event};
use crate::config::DEFAULT_CONCURRENCY;
use crate::model::{
    Attempt, Envelope, Hop, MessageId, Outcome, OutcomeKind, StoredMessage, now_ms, queue_name,
};
use crate::sandbox::plugin::{CallError, Failure, Plugin};
use crate::store::{Claim, Completion, Ended, Lease, StoreError};
use crate::telemetry::{self, metrics};
use opentelemetry::context::FutureExt as _;
use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tenon_model::Encoding;
use tenon_registry::Kind;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;

/// How long an idle worker waits for work before it looks again.
pub const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The shortest lease (a stage's is longer when the calls it may make, its plugin's
/// and those of the steps fused after it, may be: `Runtime::lease_hold`).
const MIN_HOLD: Duration = Duration::from_secs(60);

/// What happened to an accepted message and its descendants.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageStatus {
    /// Terminal outcomes reached so far.
    pub outcomes: Vec<Outcome>,
    /// Descendants still queued (waiting, leased or retrying).
    pub pending: Vec<Envelope>,
}

impl MessageStatus {
    /// True when nothing of the message is still in flight and it reached an end.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty() && !self.outcomes.is_empty()
    }
}

/// What became of an output a step forwarded to the next step of its flow, or
/// published to the first step of a subscribing flow.
enum Fused {
    /// The next step, a transform, ran on it in the same lease (`stage`, with its
    /// flow): its outputs.
    Ran {
        stage: (String, String),
        outputs: Vec<(String, Envelope)>,
    },
    /// Its flow's sink ran on it in the same lease (`stage`, with its flow): how it
    /// ended (with what its end publishes), and whether its transaction is looked at
    /// after the commit (a saga's).
    Ended {
        stage: (String, String),
        ended: Box<Ended>,
        settle: bool,
    },
    /// It stays queued for that step's workers (with a retry's attempt, if any).
    Left(Box<Envelope>),
}

/// What [`Runtime::fuse`] ran within a lease, beside the completion it leaves.
#[derive(Default)]
struct FusedRun {
    /// The stages that ran, with their flows, once per message they took.
    stages: Vec<(String, String)>,
    /// The outcomes of the messages that ended at the flow's sink, counted once the
    /// commit is done.
    ended: Vec<Outcome>,
    /// A delivery or failure of a saga's: its transaction is looked at after the commit.
    settle: bool,
    /// The keys claimed in the queues the run skipped (queue, key), released once the
    /// commit is done (or refused).
    claims: Vec<((String, String), Claim)>,
}

/// How long a fused step's claim outlasts its lease, should its holder die: the time
/// the lease's commit may still take (it starts within the lease and writes in a few
/// requests).
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// The lease steps are fused into: its message, and the time it gives them.
#[derive(Clone, Copy)]
struct Window<'a> {
    /// The leased message: what a fused step claims, it claims for it.
    holder: &'a MessageId,
    /// A fused step starts only if its call ends by then (half the lease).
    start_by: Instant,
    /// When the lease ends: what a fused step claims lasts until then.
    ends: Instant,
}

/// What a stage's plugin call produced, before it is classified into a
/// [`Completion`] (what to commit) and, at the end of the line, an [`Outcome`].
enum Produced {
    Delivered(crate::sandbox::plugin::Receipt),
    Compensated(crate::sandbox::plugin::Receipt),
    Outputs(Vec<StoredMessage>),
}

impl Runtime {
    /// Start the workers of every stage of every flow; they stop when `shutdown`
    /// turns true, each after finishing (and committing) its current message.
    pub async fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut workers = JoinSet::new();
        let (store, node, mut stop) = (self.store.clone(), self.node.clone(), shutdown.clone());
        let keep = Duration::from_secs(self.config().server.retention_secs);
        let every = Duration::from_secs(self.config().server.sweep_interval_secs.max(1));
        workers.spawn(async move {
            // Expired idempotency keys, old outcomes, old events and old audit records
            // are removed, so the databases stay bounded under a steady load.
            loop {
                if let Err(error) = store.sweep(keep).await {
                    tracing::warn!(%error, "store sweep failed");
                }
                if let Err(error) = node.sweep_audit(keep) {
                    tracing::warn!(%error, "audit sweep failed");
                }
                tokio::select! {
                                        _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
            }
        });
        let runtime = self.clone();
        workers.spawn(async move {
            // What a crash left of a saga between a commit and its look after it.
            runtime.settle_sagas(keep).await;
        });
        let (runtime, mut stop) = (self.clone(), shutdown.clone());
        workers.spawn(async move {
            // Scheduled reconciliations and drift checks, each when its period has passed.
            loop {
                runtime.reconcile_due().await;
                runtime.check_drift_due().await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
            }
        });
        *self.shutdown.lock().unwrap_or_else(PoisonError::into_inner) = Some(shutdown);
        *self.workers.lock().unwrap_or_else(PoisonError::into_inner) = workers;
        // Queues left by flows no longer in the config drain on their own routes.
        let left = match self.store.depths().await {
            Ok(depths) => depths.into_keys().collect(),
            Err(error) => {
                tracing::error!(%error, "cannot list the queues; only the config's flows get workers");
                Vec::new()
            }
        };
        self.ensure_workers(&left);
    }

    /// Wait until every worker has stopped (after `shutdown` turned true).
    pub async fn stopped(&self) {
        let mut workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        while workers.join_next().await.is_some() {}
    }

    /// Start the workers that are missing: for every stage of every flow, and for
    /// each of `queues` (holding messages of a route no flow may use any more: they
    /// drain on their own route). Workers are never stopped before shutdown: an idle
    /// one costs a wake-up every [`IDLE_WAIT`].
    pub(crate) fn ensure_workers(self: &Arc<Self>, queues: &[String]) {
        let Some(shutdown) = self
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        let mut wanted: Vec<(String, String, u32)> = Vec::new();
        for flow in self.flows() {
            for stage in &flow.stages {
                wanted.push((flow.name.clone(), stage.clone(), flow.concurrency));
            }
        }
        for name in queues {
            if let Some((flow, stage)) = name.split_once('/') {
                wanted.push((flow.to_owned(), stage.to_owned(), DEFAULT_CONCURRENCY));
            }
        }
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        for (flow, stage, concurrency) in wanted {
            if !started.insert(queue_name(&flow, &stage)) {
                continue;
            }
            for _ in 0..concurrency {
                let (runtime, flow, stage) = (self.clone(), flow.clone(), stage.clone());
                let shutdown = shutdown.clone();
                // The workers call plugins: they run on the plugin threads.
                workers.spawn_on(
                    async move { runtime.work(flow, stage, shutdown).await },
                    self.guests.handle(),
                );
            }
        }
    }

    async fn work(
        self: Arc<Self>,
        flow: String,
        stage: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let queue = queue_name(&flow, &stage);
        while !*shutdown.borrow() {
            // A paused instance (a `Retry-After` from the system it calls) takes no
            // work until the pause ends: its messages keep their places.
            let paused = self
                .plugin(&stage)
                .map_or(Duration::ZERO, |p| p.throttle().remaining());
            if !paused.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(paused) => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
            let hold = self.lease_hold(&flow, &stage);
            let lease = tokio::select! {
                lease = self.store.lease(&queue, IDLE_WAIT, hold) => lease,
                _ = shutdown.changed() => break,
            };
            match lease {
                Ok(Some(lease)) => self.process(lease, hold).await,
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%queue, %error, "cannot lease");
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_WAIT) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// How long a lease of `stage`'s messages lasts. It must outlast the longest
    /// calls the lease may make, or a slow but healthy call would see its message
    /// handed to a second worker: twice the stage's plugin's time limit, and, where
    /// the flow fuses, those of the steps after it and of the longest subscribing
    /// flow that fuses (what the flow publishes may run there in the lease), plus
    /// 10 s; at least [`MIN_HOLD`].
    fn lease_hold(&self, flow: &str, stage: &str) -> Duration {
        // The stages' names first: the plugins are looked up with the flows unlocked.
        let (own, entered): (Vec<String>, Vec<Vec<String>>) = {
            let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
            let fused = flows.get(flow).filter(|f| f.fuse).and_then(|f| {
                let at = f.stages.iter().position(|s| s == stage)?;
                Some(f.stages[at..].to_vec())
            });
            let entered = match fused.is_some() {
                true => flows
                    .values()
                    .filter(|f| f.fuse && !f.subscribe.is_empty())
                    .map(|f| f.stages.clone())
                    .collect(),
                false => Vec::new(),
            };
            (fused.unwrap_or_else(|| vec![stage.to_owned()]), entered)
        };
        let calls = |stages: &[String]| -> Duration {
            stages
                .iter()
                .filter_map(|s| self.plugin(s))
                .map(|p| p.timeout())
                .sum()
        };
        let longest = entered.iter().map(|s| calls(s)).max().unwrap_or_default();
        ((calls(&own) + longest) * 2 + Duration::from_secs(10)).max(MIN_HOLD)
    }

    async fn process(&self, lease: Lease, hold: Duration) {
        let env = &lease.envelope;
        let Some(plugin) = env
            .route
            .get(env.stage as usize)
            .and_then(|name| self.plugin(name))
        else {
            tracing::error!(flow = %env.flow, stage = env.stage, "no plugin for this stage; message left queued");
            return;
        };
        let policy = self.retry_policy(&env.flow, plugin.name());
        // Fused steps start only while their calls end within half the lease.
        let now = Instant::now();
        let window = Window {
            holder: &env.message.id,
            start_by: now + hold / 2,
            ends: now + hold,
        };
        let (step, span) = step_span(env, &plugin);
        // The process layer first: a person's rejection or a rule decides without
        // the plugin; then the saga of the message's transaction has its say.
        let mut fused = FusedRun::default();
        let (completion, kv, by_rule) = match self.before_stage(&plugin, env).await {
            Some(completion) => (completion, None, true),
            None => {
                let (completion, kv) = self
                    .run_stage(policy, &plugin, env, &step)
                    .instrument(span.clone())
                    .await;
                let (completion, run) = self.fuse(&env.flow, completion, window).await;
                fused = run;
                (completion, kv, false)
            }
        };
        let (completion, settle) = self
            .saga(&plugin, env, completion, by_rule, &step)
            .instrument(span.clone())
            .await;
        let finished = match &completion {
            Completion::Finish { outcome, .. } => Some((**outcome).clone()),
            _ => None,
        };
        let result = match &completion {
            Completion::Forward { .. } => "forwarded",
            Completion::Finish { outcome, .. } => metrics::result_name(&outcome.result),
            Completion::Retry(_) => "retry",
        };
        let root = (settle || fused.settle).then(|| env.root.clone());
        let commit = telemetry::start("store.commit", &step, vec![]);
        let started = Instant::now();
        let committed = self.store.complete(lease, completion, kv).await;
        // The fused steps' claims end with the commit, or its refusal.
        drop(std::mem::take(&mut fused.claims));
        metrics::commit(started.elapsed(), 1);
        match committed {
            Ok(()) => {
                self.progressed.notify_waiters();
                telemetry::end(&commit, vec![], None);
                telemetry::end(&step, vec![telemetry::attr("tenon.result", result)], None);
                if let Some(outcome) = finished {
                    metrics::finished(&outcome, plugin.kind() == Kind::Sink);
                }
                for outcome in &fused.ended {
                    metrics::finished(outcome, true);
                }
                for (flow, stage) in &fused.stages {
                    metrics::fused(flow, stage);
                }
                if let Some(root) = root {
                    self.settle_saga(&root, &step)
                        .instrument(span.clone())
                        .await;
                }
            }
            Err(error) => {
                telemetry::end(&commit, vec![], Some(error.to_string()));
                telemetry::end(&step, vec![], Some(error.to_string()));
                let _enter = span.enter();
                tracing::error!(%error, "result not committed; the message will be processed again");
            }
        }
    }

    /// Run the stage's plugin on a leased message and decide what its result means;
    /// the key-value writes come back only with a result that commits (outputs
    /// forwarded, a delivery, a message consumed), never with a failure.
    async fn run_stage(
        &self,
        policy: RetryPolicy,
        plugin: &Plugin,
        env: &Envelope,
        step: &opentelemetry::Context,
    ) -> (Completion, Option<crate::store::KvWrites>) {
        let (called, micros) = self.call_measured(plugin, env, step).await;
        let (result, kv) = match called {
            Ok(called) => (Ok(called.value), called.kv),
            Err(error) => (Err(error), None),
        };
        let completion = self.classify(policy, plugin, env, result, micros, step);
        let commits = match &completion {
            Completion::Forward { .. } => true,
            Completion::Finish { outcome, .. } => matches!(
                outcome.result,
                OutcomeKind::Delivered { .. }
                    | OutcomeKind::Consumed
                    | OutcomeKind::Compensated { .. }
            ),
            Completion::Retry(_) => false,
        };
        (completion, kv.filter(|_| commits))
    }

    /// Call the stage's plugin under a `plugin.call` span, timed and counted; the
    /// result and how long the call took, in microseconds.
    async fn call_measured(
        &self,
        plugin: &Plugin,
        env: &Envelope,
        step: &opentelemetry::Context,
    ) -> (
        Result<crate::sandbox::plugin::Called<Produced>, CallError>,
        u64,
    ) {
        let call = telemetry::start(
            "plugin.call",
            step,
            vec![
                telemetry::attr("tenon.plugin", plugin.name().to_owned()),
                telemetry::attr("tenon.plugin.digest", plugin.digest().to_owned()),
                telemetry::attr("tenon.plugin.kind", plugin.kind().to_string()),
            ],
        );
        let started = Instant::now();
        let called = self
            .call_stage(plugin, env)
            .with_context(call.clone())
            .await;
        let elapsed = started.elapsed();
        let outcome = match &called {
            Ok(_) => "ok",
            Err(error) => error.class(),
        };
        metrics::plugin_call(plugin.name(), plugin.digest(), outcome, elapsed);
        telemetry::end(
            &call,
            vec![telemetry::attr("tenon.outcome", outcome)],
            called.as_ref().err().map(ToString::to_string),
        );
        (called, elapsed.as_micros() as u64)
    }

    /// Fewer hops: the outputs a step forwards to the next step of its flow, or
    /// publishes to the first step of a flow that subscribes to them, run through
    /// that step at once, in this lease, when both flows fuse (the lease's `flow` and
    /// the step's) and the step is a transform or its flow's sink with nothing before
    /// it (no rule, no pause), and so on down the flows; only what the last of them
    /// makes is queued, and how the sink ended a message recorded (one a lease: see
    /// `fused_step`), all in one commit. A copy that entered a subscribing flow this
    /// way is logged as that flow's accepted message, as it would have been when
    /// queued, so the flow's replay covers it. A crash before the commit re-runs them
    /// all: their ids are derived and their mappings deterministic, so the re-run makes
    /// the same messages, and the sink delivers again under the same idempotency key,
    /// as a sink re-leased after a crash does.
    ///
    /// Per-key order holds as if every step were a hop: a fused step claims its
    /// output's key in the queue it skips ([`Store::claim`](crate::store::Store::claim))
    /// until the commit, granted only when nothing of that key waits there and no
    /// other run holds it; what comes there meanwhile (another lease's output of that
    /// key, a redrive, a decision, a saga's compensation, a second flow feeding a
    /// subscriber) waits for the release. So no worker, and no other fused run, runs
    /// that step for the key beside this one, whichever feeds the queue (a mapping
    /// that re-keys, a plugin the route lists twice, two routes across a reload, two
    /// flows a subscriber takes from). Nor does an output overtake one of its key this
    /// completion leaves in that queue.
    ///
    /// An output whose transform finishes it or writes key-value data stays queued as
    /// it was, for the step's own workers to run again and commit (the sink's end and
    /// its key-value writes are committed here: it does not deliver twice); after a
    /// transient failure it waits there for its retry, the attempt counted. The steps
    /// count in `tenon_steps_fused_total` once the commit is done.
    async fn fuse(
        &self,
        flow: &str,
        completion: Completion,
        window: Window<'_>,
    ) -> (Completion, FusedRun) {
        let Completion::Forward {
            outputs,
            mut ended,
            mut entered,
        } = completion
        else {
            return (completion, FusedRun::default());
        };
        let mut queued = Vec::with_capacity(outputs.len());
        let mut run = FusedRun::default();
        // The keys left in each queue: what comes after them may not overtake them
        // (per-key order, as if every step were a hop).
        let mut behind: HashSet<(String, String)> = HashSet::new();
        let mut next = outputs;
        while !next.is_empty() {
            // The sinks of a round last: a failing part this round leaves behind is
            // known before a saga's sink would deliver the rest (see `fused_step`).
            next.sort_by_key(|(_, o)| o.stage as usize + 1 == o.route.len());
            let mut made = Vec::new();
            for (queue, output) in next {
                let turn = (queue, output.message.key.clone());
                // As it entered its flow, for the log, should it run there now.
                let entering = output.is_entering().then(|| output.clone());
                let step = match behind.contains(&turn) {
                    true => Fused::Left(Box::new(output)),
                    false => {
                        // One sink end a lease; in a saga's flow, none once an output
                        // was left behind (see `fused_step`).
                        let may_end = run.ended.is_empty()
                            && (behind.is_empty() || !self.has_saga(&output.flow));
                        let claims = &mut run.claims;
                        self.fused_step(flow, &turn.0, output, window, may_end, claims)
                            .await
                    }
                };
                match step {
                    Fused::Ran { stage, outputs } => {
                        run.stages.push(stage);
                        entered.extend(entering);
                        made.extend(outputs);
                    }
                    Fused::Ended {
                        stage,
                        ended: end,
                        settle,
                    } => {
                        run.stages.push(stage);
                        run.ended.push(end.outcome.clone());
                        run.settle |= settle;
                        entered.extend(entering);
                        ended.push(*end);
                    }
                    Fused::Left(output) => {
                        queued.push((turn.0.clone(), *output));
                        behind.insert(turn);
                    }
                }
            }
            next = made;
        }
        let completion = Completion::Forward {
            outputs: queued,
            ended,
            entered,
        };
        (completion, run)
    }

    /// Whether `flow` has a saga.
    fn has_saga(&self, flow: &str) -> bool {
        let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
        flows.get(flow).is_some_and(|f| f.saga.is_some())
    }

    /// Run `output` (bound for `queue`) through its next step in this lease (a
    /// lease of flow `leased`), if it may be fused (see [`Runtime::fuse`]) and its
    /// key can be claimed in that queue (the claim kept in `claims`): what that step
    /// forwards, how the sink ended it, or the output to leave queued (with the
    /// attempt counted, after a transient failure).
    ///
    /// The sink ends at most one message in a lease (`may_end`: none yet): what decides a
    /// delivery reads the store (the saga's look at the transaction's other
    /// outcomes, the sink's own key-value data and its quota), which holds only what
    /// is committed; the other outputs go through the sink's queue, each after the
    /// commit of the one before, as they would hop by hop. In a saga's flow it ends
    /// none once an output of the lease was left behind: a step that finishes a
    /// message (a gateway's rejection) does so in its own commit, after this one, so
    /// the saga would not see that part of the transaction fail before delivering the
    /// rest, and the delivery would be undone right after.
    async fn fused_step(
        &self,
        leased: &str,
        queue: &str,
        output: Envelope,
        window: Window<'_>,
        may_end: bool,
        claims: &mut Vec<((String, String), Claim)>,
    ) -> Fused {
        let Some(stage) = output.route.get(output.stage as usize).cloned() else {
            return Fused::Left(Box::new(output));
        };
        let flow = output.flow.clone();
        if output.directive.is_some()
            || !output.attempts.is_empty()
            || queue != queue_name(&flow, &stage)
        {
            return Fused::Left(Box::new(output));
        }
        let fuses = {
            let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
            flows.get(leased).is_some_and(|f| f.fuse)
                && flows
                    .get(&flow)
                    .is_some_and(|f| f.fuse && !f.rules.iter().any(|r| r.stage == stage))
        };
        let Some(plugin) = self.plugin(&stage).filter(|_| fuses) else {
            return Fused::Left(Box::new(output));
        };
        let at_sink = output.stage as usize + 1 == output.route.len();
        let fusable = match plugin.kind() {
            Kind::Transform => true,
            Kind::Sink => at_sink && may_end,
            _ => false,
        };
        // Within the lease with room to spare (see `Runtime::lease_hold`).
        if !fusable
            || !plugin.throttle().remaining().is_zero()
            || Instant::now() + plugin.timeout() > window.start_by
        {
            return Fused::Left(Box::new(output));
        }
        // The key, claimed in the queue this step skips until the commit: granted
        // when nothing of it waits there and no other run holds it; what is committed
        // there meanwhile waits for the release. One this run claimed there already
        // (a plugin the route lists twice) waits for this run's commit too.
        let turn = (queue.to_owned(), output.message.key.clone());
        if claims.iter().any(|(held, _)| *held == turn) {
            return Fused::Left(Box::new(output));
        }
        let hold = window.ends.saturating_duration_since(Instant::now()) + CLAIM_MARGIN;
        match self.store.claim(queue, &turn.1, window.holder, hold).await {
            Ok(Some(claim)) => claims.push((turn, claim)),
            Ok(None) => return Fused::Left(Box::new(output)),
            Err(error) => {
                tracing::warn!(%error, queue, "cannot claim a key; the step is left queued");
                return Fused::Left(Box::new(output));
            }
        }
        let (step, span) = step_span(&output, &plugin);
        let policy = self.retry_policy(&flow, plugin.name());
        let fused = match plugin.kind() {
            Kind::Sink => {
                self.fused_sink(policy, &plugin, output, &step)
                    .instrument(span.clone())
                    .await
            }
            _ => {
                self.fused_transform(policy, &plugin, output, &step)
                    .instrument(span.clone())
                    .await
            }
        };
        let result = match &fused {
            Fused::Ran { .. } => "fused",
            Fused::Ended { ended, .. } => metrics::result_name(&ended.outcome.result),
            Fused::Left(_) => {
                span.in_scope(|| tracing::debug!("step left to its own workers"));
                "left queued"
            }
        };
        telemetry::end(&step, vec![telemetry::attr("tenon.result", result)], None);
        fused
    }

    /// A fused transform: its outputs, or the output left queued.
    async fn fused_transform(
        &self,
        policy: RetryPolicy,
        plugin: &Plugin,
        output: Envelope,
        step: &opentelemetry::Context,
    ) -> Fused {
        let stage = (output.flow.clone(), plugin.name().to_owned());
        let (called, micros) = self.call_measured(plugin, &output, step).await;
        match called {
            Ok(crate::sandbox::plugin::Called {
                value: Produced::Outputs(outputs),
                kv: None,
            }) if !outputs.is_empty() => {
                let result = Ok(Produced::Outputs(outputs));
                match self.classify(policy, plugin, &output, result, micros, step) {
                    Completion::Forward { outputs, .. } => Fused::Ran { stage, outputs },
                    _ => Fused::Left(Box::new(output)),
                }
            }
            // A transient failure: the output waits for its retry at its stage, as
            // it would have there, this attempt counted.
            Err(error @ (CallError::Failure(Failure::Retryable(_)) | CallError::Timeout(_))) => {
                match self.classify(policy, plugin, &output, Err(error), micros, step) {
                    Completion::Retry(retry) => Fused::Left(retry),
                    _ => Fused::Left(Box::new(output)),
                }
            }
            // It finishes the message, or writes key-value data: its own workers run
            // it again and commit that (mappings are deterministic).
            _ => Fused::Left(Box::new(output)),
        }
    }

    /// A fused sink: the process layer first, as at the sink's own workers (a
    /// transaction that failed already takes no more deliveries), then the delivery
    /// and the saga's say on how it ended; after a transient failure, the output left
    /// queued for its retry.
    async fn fused_sink(
        &self,
        policy: RetryPolicy,
        plugin: &Plugin,
        output: Envelope,
        step: &opentelemetry::Context,
    ) -> Fused {
        let (completion, kv, by_rule) = match self.before_stage(plugin, &output).await {
            Some(completion) => (completion, None, true),
            None => {
                let (completion, kv) = self.run_stage(policy, plugin, &output, step).await;
                (completion, kv, false)
            }
        };
        let (completion, settle) = self.saga(plugin, &output, completion, by_rule, step).await;
        match completion {
            Completion::Finish { outcome, published } => Fused::Ended {
                stage: (output.flow.clone(), plugin.name().to_owned()),
                ended: Box::new(Ended {
                    envelope: output,
                    outcome: *outcome,
                    kv,
                    published,
                }),
                settle,
            },
            Completion::Retry(retry) => Fused::Left(retry),
            // A sink forwards nothing.
            Completion::Forward { .. } => Fused::Left(Box::new(output)),
        }
    }

    /// Call the stage's plugin: a sink delivers (unless the message was delivered
    /// before), a transform maps.
    async fn call_stage(
        &self,
        plugin: &Plugin,
        env: &Envelope,
    ) -> Result<crate::sandbox::plugin::Called<Produced>, CallError> {
        if let Some(crate::model::Directive::Compensate {
            reference, detail, ..
        }) = &env.directive
        {
            // Undone before (a redrive, or a compensation asked for twice): the
            // recorded outcome stands and the target system is not called again.
            if let Ok(Some(Outcome {
                result: OutcomeKind::Compensated { reference, detail },
                ..
            })) = self.store.outcome(&env.message.id).await
            {
                tracing::info!(%reference, "already compensated; recorded outcome returned");
                return Ok(crate::sandbox::plugin::Called {
                    value: Produced::Compensated(crate::sandbox::plugin::Receipt {
                        reference,
                        detail,
                    }),
                    kv: None,
                });
            }
            let delivered = crate::sandbox::plugin::Receipt {
                reference: reference.clone(),
                detail: detail.clone(),
            };
            let called = plugin
                .compensate(&env.message, &delivered, env.message.id.as_str())
                .await?;
            return Ok(crate::sandbox::plugin::Called {
                value: Produced::Compensated(called.value),
                kv: called.kv,
            });
        }
        let is_sink = plugin.kind() == Kind::Sink;
        let recorded = match is_sink {
            true => self.store.outcome(&env.message.id).await.ok().flatten(),
            false => None,
        };
        if let Some(Outcome {
            result: OutcomeKind::Delivered { reference, detail },
            ..
        }) = recorded
        {
            // Delivered before (a redrive or a replay of the same message): the
            // recorded outcome stands and the target system is not called again.
            tracing::info!(%reference, "already delivered; recorded outcome returned");
            return Ok(crate::sandbox::plugin::Called {
                value: Produced::Delivered(crate::sandbox::plugin::Receipt { reference, detail }),
                kv: None,
            });
        }
        if is_sink {
            let called = plugin
                .deliver(&env.message, env.message.id.as_str())
                .await?;
            Ok(crate::sandbox::plugin::Called {
                value: Produced::Delivered(called.value),
                kv: called.kv,
            })
        } else {
            let called = plugin.transform_step(&env.message).await?;
            Ok(crate::sandbox::plugin::Called {
                value: Produced::Outputs(called.value),
                kv: called.kv,
            })
        }
    }

    /// What a sink's delivery of an `OrderAccepted` makes: an `OrderBooked` with the
    /// number the system gave the order, for the flows that subscribe to it, where
    /// the delivering flow `emit`s it (nothing otherwise). Its id is derived from the
    /// order's, so a re-run after a crash makes the same one.
    fn booked(
        &self,
        env: &Envelope,
        system: &str,
        receipt: &crate::sandbox::plugin::Receipt,
        trail: &[Hop],
        step: &opentelemetry::Context,
    ) -> Vec<(String, Envelope)> {
        if env.message.kind != tenon_model::kinds::ORDER_ACCEPTED {
            return Vec::new();
        }
        let order: tenon_model::Order = match Encoding::from_content_type(&env.message.content_type)
            .map_err(|e| e.to_string())
            .and_then(|e| e.decode(&env.message.body).map_err(|e| e.to_string()))
        {
            Ok(order) => order,
            Err(error) => {
                tracing::warn!(%error, "a delivered OrderAccepted is not an order: no OrderBooked");
                return Vec::new();
            }
        };
        let booking = tenon_model::Booking {
            order: order.id,
            quote_id: order.quote_id,
            quote_number: order.quote_number,
            category: order.category,
            customer: order.customer.id,
            system: system.to_owned(),
            reference: receipt.reference.clone(),
            detail: receipt.detail.clone(),
        };
        let body = match Encoding::MsgPack.encode(&booking) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "cannot encode an OrderBooked");
                return Vec::new();
            }
        };
        let mut headers = env.message.headers.clone();
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(tenon_model::MODEL_HEADER));
        headers.push((
            tenon_model::MODEL_HEADER.to_owned(),
            tenon_model::MODEL_VERSION.to_owned(),
        ));
        let message = StoredMessage {
            id: env.message.id.clone(),
            key: env.message.key.clone(),
            kind: tenon_model::kinds::ORDER_BOOKED.to_owned(),
            content_type: Encoding::MsgPack.content_type().to_owned(),
            headers,
            body,
        }
        .made_from(&env.message, 0);
        let produced = Envelope {
            message,
            flow: env.flow.clone(),
            route: env.route.clone(),
            stage: env.stage + 1,
            root: env.root.clone(),
            accepted_ms: env.accepted_ms,
            trail: trail.to_vec(),
            attempts: Vec::new(),
            not_before_ms: 0,
            root_kind: env.root_kind.clone(),
            trace: telemetry::carried(step),
            directive: None,
        };
        self.published(&produced.message, &env.flow, false, &produced)
    }

    /// What a stage's result means: forward the outputs, finish (delivered,
    /// consumed, rejected, dead letter), or retry later.
    fn classify(
        &self,
        policy: RetryPolicy,
        plugin: &Plugin,
        env: &Envelope,
        result: Result<Produced, CallError>,
        micros: u64,
        step: &opentelemetry::Context,
    ) -> Completion {
        let stage = env.stage;
        let hop = Hop {
            plugin: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            digest: plugin.digest().to_owned(),
            micros,
        };
        let mut trail = env.trail.clone();
        trail.push(hop);
        let finish = |result: OutcomeKind, trail: Vec<Hop>, attempts: Vec<Attempt>| {
            Completion::finish(ended(env, plugin, result, trail, attempts))
        };
        // The attempts so far, with this one's error.
        let with_attempt = |error: &str| {
            let mut attempts = env.attempts.clone();
            attempts.push(Attempt {
                at_ms: now_ms(),
                plugin: plugin.name().to_owned(),
                digest: plugin.digest().to_owned(),
                error: error.to_owned(),
            });
            attempts
        };
        // An error no retry can fix: the message goes to the dead letters with it.
        let dead_letter = |error: String, trail: Vec<Hop>| {
            tracing::warn!(outcome = "dead-letter", %error, "message dead-lettered");
            let attempts = with_attempt(&error);
            finish(OutcomeKind::DeadLetter { error }, trail, attempts)
        };
        // Messages between steps travel in a canonical encoding; anything else is the
        // plugin's bug, not something a retry can fix.
        let bad_output = match &result {
            Ok(Produced::Outputs(outputs)) => outputs
                .iter()
                .find(|m| Encoding::from_content_type(&m.content_type).is_err())
                .map(|m| m.content_type.clone()),
            _ => None,
        };
        if let Some(content_type) = bad_output {
            let error = format!(
                "invalid output: {} produced a `{content_type}` body; messages between steps are application/json or application/msgpack",
                plugin.name()
            );
            return dead_letter(error, trail);
        }
        match result {
            Ok(Produced::Delivered(receipt)) => {
                tracing::info!(outcome = "delivered", reference = %receipt.reference, "message delivered");
                // An order booked in a system is news for the flows that want it.
                let booked = self.booked(env, plugin.name(), &receipt, &trail, step);
                let mut completion = finish(
                    OutcomeKind::Delivered {
                        reference: receipt.reference,
                        detail: receipt.detail,
                    },
                    trail,
                    env.attempts.clone(),
                );
                if let Completion::Finish { published, .. } = &mut completion {
                    *published = booked;
                }
                completion
            }
            Ok(Produced::Compensated(receipt)) => {
                tracing::info!(outcome = "compensated", reference = %receipt.reference, "delivery undone");
                finish(
                    OutcomeKind::Compensated {
                        reference: receipt.reference,
                        detail: receipt.detail,
                    },
                    trail,
                    env.attempts.clone(),
                )
            }
            Ok(Produced::Outputs(outputs)) if outputs.is_empty() => {
                tracing::info!(outcome = "consumed", "step produced no output");
                finish(OutcomeKind::Consumed, trail, env.attempts.clone())
            }
            Ok(Produced::Outputs(outputs)) => {
                tracing::debug!(outputs = outputs.len(), "step done");
                let next = stage + 1;
                // What this step made is a child of its span.
                let carried = telemetry::carried(step);
                let outputs: Vec<Envelope> = outputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, message)| {
                        // Derived, not random: a re-run after a crash yields the same ids.
                        Envelope {
                            message: message.made_from(&env.message, i),
                            flow: env.flow.clone(),
                            route: env.route.clone(),
                            stage: next,
                            root: env.root.clone(),
                            accepted_ms: env.accepted_ms,
                            trail: trail.clone(),
                            attempts: Vec::new(),
                            not_before_ms: 0,
                            root_kind: env.root_kind.clone(),
                            trace: carried.clone(),
                            directive: None,
                        }
                    })
                    .collect();
                // After a flow's last step (a flow without a sink), outputs go only
                // to the flows that subscribe to them; one that no flow takes is an
                // error, never a silent drop.
                let queue = env
                    .route
                    .get(next as usize)
                    .map(|stage| queue_name(&env.flow, stage));
                let mut forward = Vec::with_capacity(outputs.len());
                let mut unrouted = Vec::new();
                for output in outputs {
                    let at_end = queue.is_none();
                    let events = self.published(&output.message, &env.flow, at_end, &output);
                    match &queue {
                        Some(queue) => forward.push((queue.clone(), output)),
                        None if events.is_empty() => unrouted.push(describe_event(&output.message)),
                        None => {}
                    }
                    forward.extend(events);
                }
                if !unrouted.is_empty() {
                    let error = format!("no flow subscribes to {}", unrouted.join(", "));
                    return dead_letter(error, trail);
                }
                Completion::forward(forward)
            }
            Err(CallError::Failure(Failure::Rejected(reasons))) => {
                tracing::info!(outcome = "rejected", reasons = %reasons.join("; "), "message rejected");
                finish(
                    OutcomeKind::Rejected { reasons },
                    trail,
                    env.attempts.clone(),
                )
            }
            Err(error) => {
                let attempts = with_attempt(&error.to_string());
                // Retrying cannot change the input, the grants or the limits; nor
                // the code: a trap (a panic, an overflow, an out-of-bounds access)
                // is the same on the same input with the same version. Its dead
                // letter is redriven once a fixed version is live.
                let permanent = matches!(
                    error,
                    CallError::Failure(Failure::Invalid(_))
                        | CallError::Trap(_)
                        | CallError::Denied(_)
                        | CallError::Limit(_)
                );

                if permanent || attempts.len() as u32 >= policy.max_attempts {
                    tracing::warn!(outcome = "dead-letter", %error, attempts = attempts.len(), "message dead-lettered");
                    return finish(
                        OutcomeKind::DeadLetter {
                            error: error.to_string(),
                        },
                        trail,
                        attempts,
                    );
                }
                metrics::retry(&env.flow, plugin.name(), error.class());
                // Not before a pause of the instance ends.
                let delay = policy
                    .delay(attempts.len() as u32)
                    .max(plugin.throttle().remaining());
                tracing::warn!(outcome = "retry", %error, attempt = attempts.len(), delay_ms = delay.as_millis() as u64, "attempt failed; will retry");
                let mut retry = env.clone();
                retry.attempts = attempts;
                retry.not_before_ms = now_ms() + delay.as_millis() as u64;
                Completion::Retry(Box::new(retry))
            }
        }
    }

    /// What happened so far to an accepted message: its outcomes and what is still queued.
    pub async fn status(&self, root: &MessageId) -> Result<MessageStatus, StoreError> {
        // Pending first: a message leaves the queue in the transaction that records
        // its outcome, so outcomes read afterwards include every one that finished.
        // (The other order could see neither a message finishing in between.)
        let pending = self.store.pending(root).await?;
        let outcomes = self.store.outcomes(root).await?;
        Ok(MessageStatus { outcomes, pending })
    }
}

/// The `step` span of `plugin` taking `env` (a child of the span that made it), and
/// the `message` span its logs go under.
fn step_span(env: &Envelope, plugin: &Plugin) -> (opentelemetry::Context, tracing::Span) {
    let step = telemetry::start(
        "step",
        &telemetry::parent(&env.trace),
        vec![
            telemetry::attr("tenon.flow", env.flow.clone()),
            telemetry::attr("tenon.step", plugin.name().to_owned()),
            telemetry::attr("tenon.plugin.digest", plugin.digest().to_owned()),
            telemetry::attr("tenon.message.id", env.message.id.to_string()),
            telemetry::attr("tenon.message.key", env.message.key.clone()),
            telemetry::attr("tenon.message.kind", env.message.kind.clone()),
            telemetry::attr("tenon.attempt", env.attempts.len() as i64 + 1),
        ],
    );
    let (trace_id, span_id) = telemetry::ids(&step);
    let span = tracing::info_span!(
        "message",
        flow = %env.flow,
        step = %plugin.name(),
        plugin = %plugin.name(),
        digest = %plugin.digest(),
        key = %env.message.key,
        id = %env.message.id,
        trace_id,
        span_id,
    );
    (step, span)
}

/// The outcome of `env` ending at `plugin` as `result`.
pub(super) fn ended(
    env: &Envelope,
    plugin: &Plugin,
    result: OutcomeKind,
    trail: Vec<Hop>,
    attempts: Vec<Attempt>,
) -> Outcome {
    Outcome {
        id: env.message.id.clone(),
        root: env.root.clone(),
        flow: env.flow.clone(),
        key: env.message.key.clone(),
        kind: env.message.kind.clone(),
        plugin: plugin.name().to_owned(),
        trail,
        attempts,
        at_ms: now_ms(),
        result,
        accepted_ms: env.accepted_ms,
        root_kind: env.root_kind.clone(),
        trace_id: env.trace.trace_id().unwrap_or_default().to_owned(),
        undo: None,
    }
}
