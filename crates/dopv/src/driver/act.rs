//! Acting: the runnable actions, at most `max_in_flight` nodes at a time per infrastructure,
//! under the stop requests (signals, the caller's cancel) that may end the run early.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dop_core::{EventKind, Level, Plan};
use dop_run::{Escalation, ExecutionLog, RunStop, Stop};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::decide::Actuals;
use super::{nodes, word, ActionResult, Ctx, NodeOutcome, Operation, Run, RunOptions};
use crate::actual::Actual;
use crate::planner::Action;
use crate::provider::{NodeSpec, Provider};
use crate::state::NodeRecord;

impl Run<'_> {
    /// Carries the runnable actions out. A failure stops new nodes of its infrastructure
    /// from starting (as in the original); the others carry on. Returns the outcomes in the
    /// order of the actions, and whether a stop was asked for.
    pub(super) async fn act(
        &self,
        actions: &[Action],
        actuals: &Actuals,
    ) -> (Vec<NodeOutcome>, bool) {
        let rmdisk = matches!(self.opts.operation, Operation::Undeploy { rmdisk: true });
        let mut limits: HashMap<String, (Arc<Semaphore>, Arc<AtomicBool>)> = HashMap::new();
        let stop = listen_for_stops(self.opts, &self.ctx.log);
        let mut hard_stop = stop.subscribe();
        let mut tasks = JoinSet::new();
        for (index, action) in actions.iter().enumerate() {
            if !action.runs() {
                continue;
            }
            let position = self
                .subjects
                .iter()
                .position(|s| s.spec.node.name == action.node);
            let subject = &self.subjects[position.expect("planned from subjects")];
            let (limit, failed) = limits
                .entry(subject.infrastructure.clone())
                .or_insert_with(|| {
                    let n = max_in_flight(&self.ctx.plan, &subject.infrastructure);
                    (
                        Arc::new(Semaphore::new(n)),
                        Arc::new(AtomicBool::new(false)),
                    )
                })
                .clone();
            let job = Job {
                ctx: self.ctx.clone(),
                index,
                action: action.clone(),
                spec: subject.spec.clone(),
                record: subject.record.clone(),
                provider: subject.provider.clone(),
                actual: actuals[position.unwrap_or(0)].clone().ok(),
                rmdisk,
            };
            tasks.spawn(job.run(limit, failed, stop.clone()));
        }
        let mut outcomes = Vec::new();
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok(o)) => outcomes.push(o),
                    Some(Err(_)) => {}
                    None => break,
                },
                true = dop_run::reached(&mut hard_stop, Stop::Terminate) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // Actions a hard stop dropped mid-way: said as such, for `sync` to finish.
        for (index, action) in actions.iter().enumerate() {
            if action.runs() && !outcomes.iter().any(|(i, _)| *i == index) {
                outcomes.push((
                    index,
                    outcome(
                        action,
                        ActionResult::Stopped,
                        Some(
                            "stopped at once by a second signal, mid-way; `dopv sync` finishes it"
                                .into(),
                        ),
                    ),
                ));
            }
        }
        outcomes.sort_by_key(|(i, _)| *i);
        let outcomes = outcomes.into_iter().map(|(_, o)| o).collect();
        (outcomes, stop.asked())
    }
}

/// What SIGINT and SIGTERM do to a run: the first starts no new node; the second drops the
/// node actions under way where they are, as a killed process would leave them (`sync`
/// finishes them later), and the run returns a stopped report. The library never exits the
/// process.
const SIGNALS: &[Escalation] = &[
    Escalation {
        level: Stop::Graceful,
        severity: Level::Warn,
        message: "signal received: no new node starts; running ones finish (again to stop at \
                  once; the next sync finishes what was under way)",
    },
    Escalation {
        level: Stop::Terminate,
        severity: Level::Error,
        message: "second signal: stopping now",
    },
];

/// The run's stop level, raised by signals (when the run handles them) and by the caller's
/// requests (dopc's cancel: graceful, then terminate). Listening starts before any node
/// starts, so that no signal finds the default action.
fn listen_for_stops(opts: &RunOptions, log: &Arc<ExecutionLog>) -> RunStop {
    let stop = RunStop::new();
    if opts.handle_signals {
        stop.escalate_on_signals(SIGNALS, log.clone());
    }
    if let Some(external) = opts.stop.clone() {
        stop.follow(external);
    }
    stop
}

/// One node's action, with what its task owns.
struct Job {
    ctx: Arc<Ctx>,
    /// The action's place in the plan, for the outcomes' order.
    index: usize,
    action: Action,
    spec: NodeSpec,
    record: Option<NodeRecord>,
    provider: Arc<dyn Provider>,
    actual: Option<Actual>,
    rmdisk: bool,
}

impl Job {
    /// Waits for a place under the limit, then runs the action unless the run was stopped
    /// or an earlier node of its infrastructure failed.
    async fn run(
        self,
        limit: Arc<Semaphore>,
        failed: Arc<AtomicBool>,
        stop: RunStop,
    ) -> (usize, NodeOutcome) {
        let Job {
            ctx, index, action, ..
        } = &self;
        let _permit = limit.acquire_owned().await;
        if stop.asked() {
            let why = "a signal stopped the run before it started";
            return (
                *index,
                outcome(action, ActionResult::Stopped, Some(why.into())),
            );
        }
        if failed.load(Ordering::SeqCst) {
            let why = "an earlier node of its infrastructure failed";
            return (
                *index,
                outcome(action, ActionResult::Skipped, Some(why.into())),
            );
        }
        let node_log = ctx.log.node(&action.node);
        ctx.event(
            Level::Info,
            EventKind::NodeActionStarted,
            Some(&action.node),
            format!("{} started", word(&action.action)),
            json!({"action": action.action, "reason": action.reason}),
        );
        let result = nodes::execute(
            ctx,
            action,
            &self.spec,
            self.record.as_ref(),
            self.actual.as_ref(),
            &*self.provider,
            self.rmdisk,
            &node_log,
        )
        .await;
        let outcome = match result {
            Ok(()) => {
                ctx.event(
                    Level::Info,
                    EventKind::NodeActionFinished,
                    Some(&action.node),
                    format!("{} done", word(&action.action)),
                    json!({"action": action.action, "result": "done"}),
                );
                outcome(action, ActionResult::Done, None)
            }
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                ctx.event(
                    Level::Error,
                    EventKind::NodeActionFinished,
                    Some(&action.node),
                    format!("{} failed: {e}", word(&action.action)),
                    json!({"action": action.action, "result": "failed", "error": e}),
                );
                outcome(action, ActionResult::Failed, Some(e))
            }
        };
        (*index, outcome)
    }
}

fn outcome(action: &Action, result: ActionResult, error: Option<String>) -> NodeOutcome {
    NodeOutcome {
        node: action.node.clone(),
        action: action.action,
        result,
        error,
    }
}

fn max_in_flight(plan: &Plan, infrastructure: &str) -> usize {
    let n = plan
        .infrastructure(infrastructure)
        .and_then(|i| i.run_options.max_in_flight)
        .or(plan.run_options.max_in_flight)
        .unwrap_or(5);
    match n {
        // -1: every node at once; 0: one after the other.
        n if n < 0 => tokio::sync::Semaphore::MAX_PERMITS,
        0 => 1,
        n => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    }
}
