//! Acting: the runnable actions, at most `max_in_flight` nodes at a time per infrastructure,
//! under the stop requests (signals, the caller's cancel) that may end the run early.

use dop_core::{EventKind, Level};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dop_core::Plan;
use dop_run::logs::ExecutionLog;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::decide::Actuals;
use super::{nodes, word, Ctx, Operation, Options, Outcome, Run};
use crate::actual::Actual;
use crate::planner::Action;
use crate::provider::{NodeSpec, Provider};
use crate::state::NodeRecord;

impl Run<'_> {
    /// Carries the runnable actions out. A failure stops new nodes of its infrastructure
    /// from starting (as in the original); the others carry on. Returns the outcomes in the
    /// order of the actions, and whether a stop was asked for.
    pub(super) async fn act(&self, actions: &[Action], actuals: &Actuals) -> (Vec<Outcome>, bool) {
        let rmdisk = matches!(self.opts.operation, Operation::Undeploy { rmdisk: true });
        let mut limits: HashMap<String, (Arc<Semaphore>, Arc<AtomicBool>)> = HashMap::new();
        let mut stops = Stops::listen(self.opts, &self.ctx.log);
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
            tasks.spawn(job.run(limit, failed, stops.soft.clone()));
        }
        let mut outcomes = Vec::new();
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok(o)) => outcomes.push(o),
                    Some(Err(_)) => {}
                    None => break,
                },
                true = hard_stop_asked(&mut stops.hard_asked) => {
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
                        "stopped",
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
        (outcomes, stops.soft.load(Ordering::SeqCst))
    }
}

/// The run's stop requests: `soft` starts no new node; a hard stop (a second signal, or a
/// forceful cancel) drops the node actions under way where they are, as a killed process
/// would leave them (`sync` finishes them later), and the run returns a stopped report. The
/// library never exits the process.
struct Stops {
    soft: Arc<AtomicBool>,
    // Kept while the run acts: a hard stop sent to a channel without a receiver is lost.
    hard_asked: watch::Receiver<bool>,
    _hard: Arc<watch::Sender<bool>>,
}

impl Stops {
    /// Listens for signals (when the run handles them) and for the caller's requests.
    fn listen(opts: &Options, log: &Arc<ExecutionLog>) -> Self {
        let soft = Arc::new(AtomicBool::new(false));
        let (hard, hard_asked) = watch::channel(false);
        let hard = Arc::new(hard);
        if opts.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            // Registered before any node starts, so that no signal finds the default action.
            if let (Ok(int), Ok(term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                tokio::spawn(stop_on_signals(
                    int,
                    term,
                    soft.clone(),
                    hard.clone(),
                    log.clone(),
                ));
            }
        }
        if let Some(mut external) = opts.stop.clone() {
            let soft = soft.clone();
            let hard = hard.clone();
            tokio::spawn(async move {
                loop {
                    let asked = *external.borrow_and_update();
                    if asked != dop_run::Stop::No {
                        soft.store(true, Ordering::SeqCst);
                    }
                    if asked >= dop_run::Stop::Terminate {
                        let _ = hard.send(true);
                        break;
                    }
                    if external.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        Stops {
            soft,
            hard_asked,
            _hard: hard,
        }
    }
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
        stop: Arc<AtomicBool>,
    ) -> (usize, Outcome) {
        let Job {
            ctx, index, action, ..
        } = &self;
        let _permit = limit.acquire_owned().await;
        if stop.load(Ordering::SeqCst) {
            let why = "a signal stopped the run before it started";
            return (*index, outcome(action, "stopped", Some(why.into())));
        }
        if failed.load(Ordering::SeqCst) {
            let why = "an earlier node of its infrastructure failed";
            return (*index, outcome(action, "skipped", Some(why.into())));
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
                outcome(action, "done", None)
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
                outcome(action, "failed", Some(e))
            }
        };
        (*index, outcome)
    }
}

fn outcome(action: &Action, result: &'static str, error: Option<String>) -> Outcome {
    Outcome {
        node: action.node.clone(),
        action: action.action,
        result,
        error,
    }
}

/// Resolves to true once a hard stop is asked for (false if it never can be).
async fn hard_stop_asked(asked: &mut watch::Receiver<bool>) -> bool {
    asked.wait_for(|hard| *hard).await.is_ok()
}

/// The first SIGINT or SIGTERM stops new nodes from starting; the second stops the node
/// actions under way at once (the run then returns, stopped).
async fn stop_on_signals(
    mut int: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
    stop: Arc<AtomicBool>,
    hard_stop: Arc<watch::Sender<bool>>,
    log: Arc<ExecutionLog>,
) {
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    stop.store(true, Ordering::SeqCst);
    log.event_with(
        Level::Warn,
        EventKind::Message,
        None,
        None,
        "signal received: no new node starts; running ones finish (again to stop at once; the \
         next sync finishes what was under way)"
            .into(),
        json!({}),
    );
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    log.event_with(
        Level::Error,
        EventKind::Message,
        None,
        None,
        "second signal: stopping now".into(),
        json!({}),
    );
    let _ = hard_stop.send(true);
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
