//! The driver: one dopv run. It reads the plan and the state, asks the providers how the nodes
//! are, lets the planner decide, and carries the actions out with the generic lifecycle
//! (hooks, disks, rollback) over the provider operations, writing a state transition before
//! and after every step so that a killed run leaves a state the next `sync` completes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dop_core::plan::{Node, ProviderKind};
use dop_core::{LookupSettings, NodeFacts, NodeFilter, Plan, Resolver};
use dop_store::logs::{Echo, ExecutionLog, Masker, NodeLog};
use dop_store::{now_ms, App, StateSession, Store, StoreError};
use serde::Serialize;
use serde_json::json;

use crate::actual::Actual;
use crate::hooks::{self, Hook};
use crate::planner::{self, Action, ActionKind, NodeView, Permissions, Reason};
use crate::provider::{self, ChangeKind, NodeSpec, Provider, ProviderOptions};
use crate::standing::{spec_for, ssh_port};
use crate::state::{disks_change, node_change, DiskRecord, DopvState, NodeRecord, Status};

/// The commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Create the selected nodes that do not exist; leave the rest to `sync`.
    Deploy,
    /// Destroy the selected nodes; with `rmdisk` their data disks too.
    Undeploy {
        /// Delete data disks (and drop them from the disk DB).
        rmdisk: bool,
    },
    /// Record how the nodes are; change nothing.
    Refresh,
    /// Make the nodes match the newest plan iteration, within the permissions.
    Sync(Permissions),
}

impl Operation {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Deploy => "deploy",
            Operation::Undeploy { .. } => "undeploy",
            Operation::Refresh => "refresh",
            Operation::Sync(_) => "sync",
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The command.
    pub operation: Operation,
    /// Which nodes.
    pub filter: NodeFilter,
    /// Only show what would be done.
    pub noop: bool,
    /// Role lookup (for `--roles`).
    pub settings: LookupSettings,
    /// Where the execution logs go.
    pub log_dir: PathBuf,
    /// What to show on standard error.
    pub echo: Echo,
    /// What the providers need.
    pub providers: ProviderOptions,
    /// Refuse to act unless the state serial is this one (the one a `--noop` showed).
    pub expect_serial: Option<u64>,
    /// On SIGINT or SIGTERM start no new node (running ones finish); a second signal ends the
    /// process at once (every node's record still says what was under way).
    pub handle_signals: bool,
    /// Stop requests from the caller (dopc's cancel): any level starts no new node.
    pub stop: Option<tokio::sync::watch::Receiver<dop_store::control::Stop>>,
    /// Write into this execution log instead of a new one (dopc: one log per execution).
    pub log: Option<Arc<ExecutionLog>>,
}

/// What happened to one node's action.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The node.
    pub node: String,
    /// The action.
    pub action: ActionKind,
    /// `done`, `failed`, `skipped` (an earlier node of its infrastructure failed) or
    /// `stopped` (a signal stopped the run first).
    pub result: &'static str,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The plan.
    pub plan: String,
    /// The command.
    pub operation: &'static str,
    /// The plan iteration it worked from.
    pub iteration: u64,
    /// The state serial the actions were computed against.
    pub serial: u64,
    /// Nothing was changed.
    pub noop: bool,
    /// What is (or would be) done, node by node, with held-back actions.
    pub actions: Vec<Action>,
    /// Selected nodes that are as planned.
    pub in_sync: Vec<String>,
    /// What each action that ran came to.
    pub outcomes: Vec<Outcome>,
    /// Nodes the provider could not be asked about.
    pub unreadable: Vec<Outcome>,
    /// A signal stopped the run before every action started.
    pub stopped: bool,
    /// The execution id.
    pub execution_id: String,
    /// Its log directory.
    pub log_dir: PathBuf,
}

impl Report {
    /// True when something failed.
    pub fn failed(&self) -> bool {
        !self.unreadable.is_empty()
            || self
                .outcomes
                .iter()
                .any(|o| matches!(o.result, "failed" | "skipped"))
    }

    /// True when actions are pending (held back, out of scope, or not done yet in a noop).
    pub fn pending(&self) -> bool {
        self.actions.iter().any(|a| self.noop || !a.runs())
    }
}

/// Why a run could not start or carry on.
#[derive(Debug, thiserror::Error)]
pub enum DopvError {
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dopv state cannot be read.
    #[error("the dopv state of plan '{plan}' is damaged: {reason}")]
    State {
        /// The plan.
        plan: String,
        /// What is wrong.
        reason: String,
    },
    /// The state moved on since the preview.
    #[error(
        "the dopv state of plan '{plan}' is at serial {actual}, not {expected}: it changed since \
         the preview; run `dopv sync {plan} --noop` again and check what it shows"
    )]
    StaleSerial {
        /// The plan.
        plan: String,
        /// The serial asked for.
        expected: u64,
        /// The serial found.
        actual: u64,
    },
    /// A provider cannot be used, or cannot make a node: nothing was touched.
    #[error("nothing was changed, because:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<String>),
    /// The log directory cannot be written.
    #[error("cannot write the logs under {path}: {source}")]
    Logs {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One node the run looks at.
struct Subject {
    spec: NodeSpec,
    in_plan: bool,
    record: Option<NodeRecord>,
    provider: Arc<dyn Provider>,
    infrastructure: String,
}

struct Ctx {
    plan_name: String,
    plan: Plan,
    iteration: u64,
    log: Arc<ExecutionLog>,
    state: Option<StateSession>,
    disks: BTreeMap<String, Vec<DiskRecord>>,
}

impl Ctx {
    fn event(
        &self,
        level: &str,
        kind: &str,
        node: Option<&str>,
        message: String,
        fields: serde_json::Value,
    ) {
        self.log
            .event_with(level, kind, node, None, message, fields);
    }

    async fn write(&self, changes: Vec<(String, Option<serde_json::Value>)>) -> Result<(), String> {
        match &self.state {
            Some(state) => state
                .write_async(App::Dopv, changes)
                .await
                .map(|_| ())
                .map_err(|e| format!("the state could not be written: {e}")),
            None => Ok(()),
        }
    }
}

/// Runs a dopv command on a stored plan.
pub fn run(store: &Store, plan_name: &str, opts: &Options) -> Result<Report, DopvError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| DopvError::Logs {
            path: opts.log_dir.clone(),
            source,
        })?;
    let result = runtime.block_on(run_async(store, plan_name, opts));
    // After a hard stop, blocking provider calls may still be under way: they are not waited
    // for (a libvirtd that hangs must not hold the operator's terminal).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run_async(store: &Store, plan_name: &str, opts: &Options) -> Result<Report, DopvError> {
    let command = format!(
        "dopv {}{}",
        opts.operation.name(),
        if opts.noop { " --noop" } else { "" }
    );
    // A preview takes no lock: it writes nothing.
    let lock = if opts.noop {
        None
    } else {
        Some(store.lock(plan_name, &command)?)
    };
    let iteration = store.iteration(plan_name, None)?;
    let plan = iteration.plan;
    let records = store.state(plan_name, App::Dopv)?;
    let state = DopvState::from_records(&records).map_err(|reason| DopvError::State {
        plan: plan_name.to_string(),
        reason,
    })?;
    if let Some(expected) = opts.expect_serial.filter(|e| *e != state.serial) {
        return Err(DopvError::StaleSerial {
            plan: plan_name.to_string(),
            expected,
            actual: state.serial,
        });
    }

    // Every node the run may look at: the plan's, then those only the state still knows.
    let mut universe = plan.clone();
    for (name, record) in &state.nodes {
        if plan.node(name).is_none() {
            universe.nodes.push(record.desired.clone());
        }
    }
    let resolver = Resolver::new(&universe, &opts.settings);
    let selection = opts.filter.select(&resolver);

    let mut problems = Vec::new();
    let mut providers: HashMap<(String, ProviderKind), Arc<dyn Provider>> = HashMap::new();
    // `refresh` only looks: a provider that cannot be reached makes its nodes' standing
    // unknown (recorded), where the other commands refuse to start.
    let mut unavailable: HashMap<String, String> = HashMap::new();
    let mut subjects = Vec::new();
    for &i in &selection.nodes {
        let name = resolver.name(i).to_string();
        let record = state.nodes.get(&name).cloned();
        let in_plan = plan.node(&name).is_some();
        let node = universe.nodes[i].clone();
        let (kind, port) = match (plan.infrastructure(&node.infrastructure), &record) {
            (Some(infra), _) if in_plan => (infra.provider, ssh_port(&plan, &infra.name)),
            (_, Some(r)) => (r.provider, r.ssh_port),
            (Some(infra), None) => (infra.provider, ssh_port(&plan, &infra.name)),
            (None, None) => continue,
        };
        let key = (node.infrastructure.clone(), kind);
        let provider = match providers.get(&key) {
            Some(p) => p.clone(),
            None => match provider::for_infrastructure(
                kind,
                &node.infrastructure,
                plan_name,
                &plan,
                &opts.providers,
            ) {
                Ok(p) => {
                    if let Err(e) = p.check().await {
                        let problem = format!("infrastructure '{}': {e}", node.infrastructure);
                        if opts.operation == Operation::Refresh {
                            unavailable.insert(node.infrastructure.clone(), problem);
                        } else {
                            problems.push(problem);
                        }
                    }
                    providers.insert(key, p.clone());
                    p
                }
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            },
        };
        let spec = spec_for(&plan, plan_name, &node, port);
        if in_plan
            && !matches!(
                opts.operation,
                Operation::Undeploy { .. } | Operation::Refresh
            )
        {
            for p in provider.check_node(&spec) {
                problems.push(format!("nodes.{name}: {p}"));
            }
        }
        subjects.push(Subject {
            spec,
            in_plan,
            record,
            provider,
            infrastructure: node.infrastructure.clone(),
        });
    }
    problems.dedup();
    if !problems.is_empty() {
        return Err(DopvError::Preflight(problems));
    }

    let log = ExecutionLog::given_or_new(
        opts.log.as_ref(),
        &opts.log_dir,
        plan_name,
        opts.echo,
        || Masker::for_plan(&plan),
    )
    .map_err(|source| DopvError::Logs {
        path: opts.log_dir.clone(),
        source,
    })?;
    let id = log.id.clone();
    let ctx = Arc::new(Ctx {
        plan_name: plan_name.to_string(),
        plan: plan.clone(),
        iteration: iteration.info.number,
        log: log.clone(),
        state: lock.as_ref().map(|l| store.state_session(l)),
        disks: state.disks.clone(),
    });
    if let Some(h) = lock.as_ref().and_then(|l| l.took_over_from()) {
        ctx.event(
            "warn",
            "message",
            None,
            format!("took over the plan from {h}, which ended without releasing it"),
            json!({}),
        );
    }
    for pattern in &selection.unmatched {
        ctx.event(
            "warn",
            "message",
            None,
            format!("{pattern} does not match any node"),
            json!({}),
        );
    }
    ctx.event(
        "info",
        "run_started",
        None,
        format!("{command}: plan '{plan_name}' iteration {}, {} node(s) selected", iteration.info.number, subjects.len()),
        json!({"operation": opts.operation.name(), "iteration": iteration.info.number, "serial": state.serial, "noop": opts.noop}),
    );

    // Ask the providers how the nodes are.
    // Per subject, in order: the provider's report, or why it could not be had.
    let mut actuals: Vec<Result<Actual, String>> = Vec::new();
    let mut unreadable = Vec::new();
    for s in &subjects {
        let read_spec = match &s.record {
            Some(r) => NodeSpec {
                node: r.desired.clone(),
                ssh_port: r.ssh_port,
                ..s.spec.clone()
            },
            None => s.spec.clone(),
        };
        let read = match unavailable.get(&s.infrastructure) {
            Some(problem) => Err(format!("the provider is unavailable: {problem}")),
            None => s.provider.read(&read_spec).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = &read {
            ctx.event(
                "error",
                "message",
                Some(&s.spec.node.name),
                format!("cannot read the node from its provider: {e}"),
                json!({}),
            );
            unreadable.push(Outcome {
                node: s.spec.node.name.clone(),
                action: ActionKind::Update,
                result: "failed",
                error: Some(format!("cannot read the node: {e}")),
            });
        }
        actuals.push(read);
    }

    // Decide.
    let permissions = match opts.operation {
        Operation::Sync(p) => p,
        _ => Permissions::default(),
    };
    let mut actions = Vec::new();
    let mut in_sync = Vec::new();
    for (s, actual) in subjects.iter().zip(&actuals) {
        let Ok(actual) = actual else { continue };
        let name = s.spec.node.name.as_str();
        let action = if let Operation::Undeploy { .. } = opts.operation {
            (actual.exists || s.record.is_some()).then(|| Action {
                node: name.to_string(),
                action: ActionKind::Destroy,
                reason: Reason::UndeployRequested,
                changes: Vec::new(),
                held_back: Vec::new(),
                out_of_scope: false,
            })
        } else {
            let provider = s.provider.clone();
            let kind_of = move |field: &str, from: &serde_json::Value, to: &serde_json::Value| {
                provider.change_kind_of(field, from, to)
            };
            let planned = s
                .in_plan
                .then(|| serde_json::to_value(&s.spec.node).unwrap_or_default());
            let view = NodeView {
                name,
                planned,
                record: s.record.as_ref(),
                actual,
                expected: s.in_plan.then(|| s.provider.expected(&s.spec)),
                kind_of: &kind_of,
            };
            planner::plan_node(&view, permissions).map(|mut a| {
                a.out_of_scope = match opts.operation {
                    Operation::Refresh => true,
                    Operation::Deploy => {
                        !(matches!(a.action, ActionKind::Create | ActionKind::Adopt)
                            || matches!(a.reason, Reason::Interrupted | Reason::FailedBefore)
                                && s.in_plan)
                    }
                    _ => false,
                };
                if a.out_of_scope {
                    a.held_back.clear();
                }
                a
            })
        };
        match action {
            Some(a) => actions.extend(planner::split_interruptive(a)),
            None => in_sync.push(name.to_string()),
        }
    }
    for a in &actions {
        let level = if a.runs() { "info" } else { "warn" };
        let what = if opts.noop {
            "would"
        } else if a.runs() {
            "will"
        } else {
            "held back:"
        };
        let mut message = format!("{what} {} ({})", word(&a.action), word(&a.reason));
        if !a.held_back.is_empty() {
            message.push_str(&format!(
                "; needs {}",
                a.held_back
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        if a.out_of_scope {
            message.push_str(&format!("; pending, run `dopv sync {plan_name}`"));
        }
        ctx.event(level, "node_planned", Some(&a.node), message, json!({"action": a.action, "reason": a.reason, "changes": a.changes, "held_back": a.held_back}));
    }

    let mut report = Report {
        plan: plan_name.to_string(),
        operation: opts.operation.name(),
        iteration: iteration.info.number,
        serial: state.serial,
        noop: opts.noop,
        actions,
        in_sync,
        outcomes: Vec::new(),
        unreadable,
        stopped: false,
        execution_id: id,
        log_dir: log.dir().to_path_buf(),
    };
    if opts.noop {
        ctx.event(
            "info",
            "run_finished",
            None,
            "noop: nothing was changed".into(),
            json!({"result": "noop"}),
        );
        return Ok(report);
    }

    // Record what the providers said about the nodes dopv knows, or that they could not say.
    let mut refreshed = Vec::new();
    for (s, actual) in subjects.iter_mut().zip(&actuals) {
        let Some(record) = s.record.as_mut() else {
            continue;
        };
        match actual {
            Ok(a) => {
                record.actual = Some(a.clone());
                record.read_error = None;
            }
            Err(e) => record.read_error = Some(e.clone()),
        }
        record.refreshed_ms = Some(now_ms());
        refreshed.push(node_change(&s.spec.node.name, Some(record)));
    }
    if !refreshed.is_empty() {
        if let Err(e) = ctx.write(refreshed).await {
            return Err(DopvError::State {
                plan: plan_name.to_string(),
                reason: e,
            });
        }
    }

    // Act, at most `max_in_flight` nodes at a time per infrastructure; a failure stops new
    // nodes of its infrastructure from starting (as in the original), others carry on.
    let rmdisk = matches!(opts.operation, Operation::Undeploy { rmdisk: true });
    let mut limits: HashMap<String, (Arc<tokio::sync::Semaphore>, Arc<AtomicBool>)> =
        HashMap::new();
    let stop = Arc::new(AtomicBool::new(false));
    // Set by a second signal (or a forceful cancel): the node actions under way are dropped
    // where they are, as a killed process would leave them (`sync` finishes them later), and
    // the run returns a stopped report. The library never exits the process.
    let (hard_stop, mut hard_stopped) = tokio::sync::watch::channel(false);
    let hard_stop = Arc::new(hard_stop);
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
                stop.clone(),
                hard_stop.clone(),
                log.clone(),
            ));
        }
    }
    if let Some(mut external) = opts.stop.clone() {
        let stop = stop.clone();
        let hard_stop = hard_stop.clone();
        tokio::spawn(async move {
            loop {
                let asked = *external.borrow_and_update();
                if asked != dop_store::control::Stop::No {
                    stop.store(true, Ordering::SeqCst);
                }
                if asked >= dop_store::control::Stop::Terminate {
                    let _ = hard_stop.send(true);
                    break;
                }
                if external.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (index, action) in report.actions.iter().enumerate() {
        if !action.runs() {
            continue;
        }
        let subject = subjects
            .iter()
            .find(|s| s.spec.node.name == action.node)
            .expect("planned from subjects");
        let (limit, failed) = limits
            .entry(subject.infrastructure.clone())
            .or_insert_with(|| {
                let n = max_in_flight(&plan, &subject.infrastructure);
                (
                    Arc::new(tokio::sync::Semaphore::new(n)),
                    Arc::new(AtomicBool::new(false)),
                )
            })
            .clone();
        let ctx = ctx.clone();
        let action = action.clone();
        let spec = subject.spec.clone();
        let record = subject.record.clone();
        let provider = subject.provider.clone();
        let actual = actuals[subjects
            .iter()
            .position(|s| s.spec.node.name == action.node)
            .unwrap_or(0)]
        .clone()
        .ok();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            if stop.load(Ordering::SeqCst) {
                return (
                    index,
                    Outcome {
                        node: action.node.clone(),
                        action: action.action,
                        result: "stopped",
                        error: Some("a signal stopped the run before it started".into()),
                    },
                );
            }
            if failed.load(Ordering::SeqCst) {
                return (
                    index,
                    Outcome {
                        node: action.node.clone(),
                        action: action.action,
                        result: "skipped",
                        error: Some("an earlier node of its infrastructure failed".into()),
                    },
                );
            }
            let node_log = ctx.log.node(&action.node);
            ctx.event(
                "info",
                "node_action_started",
                Some(&action.node),
                format!("{} started", word(&action.action)),
                json!({"action": action.action, "reason": action.reason}),
            );
            let result = execute(
                &ctx,
                &action,
                &spec,
                record.as_ref(),
                actual.as_ref(),
                &*provider,
                rmdisk,
                &node_log,
            )
            .await;
            let outcome = match result {
                Ok(()) => {
                    ctx.event(
                        "info",
                        "node_action_finished",
                        Some(&action.node),
                        format!("{} done", word(&action.action)),
                        json!({"action": action.action, "result": "done"}),
                    );
                    Outcome {
                        node: action.node.clone(),
                        action: action.action,
                        result: "done",
                        error: None,
                    }
                }
                Err(e) => {
                    failed.store(true, Ordering::SeqCst);
                    ctx.event(
                        "error",
                        "node_action_finished",
                        Some(&action.node),
                        format!("{} failed: {e}", word(&action.action)),
                        json!({"action": action.action, "result": "failed", "error": e}),
                    );
                    Outcome {
                        node: action.node.clone(),
                        action: action.action,
                        result: "failed",
                        error: Some(e),
                    }
                }
            };
            (index, outcome)
        });
    }
    let mut outcomes = Vec::new();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(o)) => outcomes.push(o),
                Some(Err(_)) => {}
                None => break,
            },
            true = hard_stop_asked(&mut hard_stopped) => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Actions a hard stop dropped mid-way: said as such, for `sync` to finish.
    for (index, action) in report.actions.iter().enumerate() {
        if action.runs() && !outcomes.iter().any(|(i, _)| *i == index) {
            outcomes.push((
                index,
                Outcome {
                    node: action.node.clone(),
                    action: action.action,
                    result: "stopped",
                    error: Some(
                        "stopped at once by a second signal, mid-way; `dopv sync` finishes it"
                            .into(),
                    ),
                },
            ));
        }
    }
    outcomes.sort_by_key(|(i, _)| *i);
    report.outcomes = outcomes.into_iter().map(|(_, o)| o).collect();
    report.stopped = stop.load(Ordering::SeqCst);
    let failed = report.failed();
    ctx.event(
        if failed { "error" } else { "info" },
        "run_finished",
        None,
        format!("{command} {}", if failed { "failed" } else { "done" }),
        json!({"result": if failed { "failed" } else { "done" }}),
    );
    drop(ctx);
    drop(lock);
    Ok(report)
}

/// Resolves to true once a hard stop is asked for (false if it never can be).
async fn hard_stop_asked(asked: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    asked.wait_for(|hard| *hard).await.is_ok()
}

/// The first SIGINT or SIGTERM stops new nodes from starting; the second stops the node
/// actions under way at once (the run then returns, stopped).
async fn stop_on_signals(
    mut int: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
    stop: Arc<AtomicBool>,
    hard_stop: Arc<tokio::sync::watch::Sender<bool>>,
    log: Arc<ExecutionLog>,
) {
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    stop.store(true, Ordering::SeqCst);
    log.event_with(
        "warn",
        "message",
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
        "error",
        "message",
        None,
        None,
        "second signal: stopping now".into(),
        json!({}),
    );
    let _ = hard_stop.send(true);
}

/// Exit status of a run stopped by a signal.
pub const EXIT_STOPPED: u8 = 4;

/// The serialized name of an enum value (`new_in_plan`).
pub(crate) fn word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
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

#[allow(clippy::too_many_arguments)]
async fn execute(
    ctx: &Ctx,
    action: &Action,
    spec: &NodeSpec,
    record: Option<&NodeRecord>,
    actual: Option<&Actual>,
    provider: &dyn Provider,
    rmdisk: bool,
    log: &NodeLog,
) -> Result<(), String> {
    let deployed_spec = record.map(|r| NodeSpec {
        node: r.desired.clone(),
        ssh_port: r.ssh_port,
        ..spec.clone()
    });
    let exists = actual.is_some_and(|a| a.exists);
    match action.action {
        ActionKind::Create => create(ctx, spec, record, provider, log).await,
        ActionKind::Adopt => {
            let actual = provider.read(spec).await.map_err(|e| e.to_string())?;
            let record = NodeRecord {
                actual: Some(actual),
                refreshed_ms: Some(now_ms()),
                ..fresh_record(ctx, spec, Status::Deployed, None)
            };
            ctx.write(vec![node_change(&spec.node.name, Some(&record))])
                .await
        }
        ActionKind::Destroy => {
            let target = deployed_spec.as_ref().unwrap_or(spec);
            destroy(ctx, target, record, provider, rmdisk, exists, log).await
        }
        ActionKind::Redeploy => {
            let target = deployed_spec.as_ref().unwrap_or(spec);
            destroy(ctx, target, record, provider, false, true, log).await?;
            create(ctx, spec, record, provider, log).await
        }
        ActionKind::Update => update(ctx, action, spec, record, provider, log).await,
    }
}

/// A record for a node starting out: the plan entry, a new generation, nothing seen yet.
fn fresh_record(
    ctx: &Ctx,
    spec: &NodeSpec,
    status: Status,
    old: Option<&NodeRecord>,
) -> NodeRecord {
    NodeRecord {
        status,
        desired: spec.node.clone(),
        ssh_port: spec.ssh_port,
        provider: ctx
            .plan
            .infrastructure(&spec.node.infrastructure)
            .map_or(ProviderKind::Baremetal, |i| i.provider),
        iteration: ctx.iteration,
        generation: new_generation(old),
        actual: None,
        refreshed_ms: None,
        read_error: None,
        updated_ms: now_ms(),
        error: None,
    }
}

/// A generation newer than `old`'s: the time in milliseconds, moved past the old one.
fn new_generation(old: Option<&NodeRecord>) -> u64 {
    let now = now_ms();
    old.map_or(now, |r| now.max(r.generation + 1))
}

async fn run_hook(
    ctx: &Ctx,
    hook: Hook,
    spec: &NodeSpec,
    changed: bool,
    log: &NodeLog,
) -> Result<(), String> {
    let warnings = hooks::run(
        &ctx.plan.hooks,
        hook,
        &ctx.plan_name,
        &spec.node,
        changed,
        log,
    )
    .await?;
    for w in warnings {
        ctx.event(
            "warn",
            "message",
            Some(&spec.node.name),
            w,
            json!({"hook": hook.key()}),
        );
    }
    Ok(())
}

fn with_status(base: &NodeRecord, status: Status, error: Option<String>) -> NodeRecord {
    NodeRecord {
        status,
        error,
        updated_ms: now_ms(),
        ..base.clone()
    }
}

async fn create(
    ctx: &Ctx,
    spec: &NodeSpec,
    old: Option<&NodeRecord>,
    provider: &dyn Provider,
    log: &NodeLog,
) -> Result<(), String> {
    run_hook(ctx, Hook::PreCreate, spec, true, log).await?;
    let record = fresh_record(ctx, spec, Status::Creating, old);
    ctx.write(vec![node_change(&spec.node.name, Some(&record))])
        .await?;
    match build(ctx, spec, provider, log).await {
        Ok(actual) => {
            let done = NodeRecord {
                actual: Some(actual),
                refreshed_ms: Some(now_ms()),
                ..with_status(&record, Status::Deployed, None)
            };
            ctx.write(vec![node_change(&spec.node.name, Some(&done))])
                .await?;
            run_hook(ctx, Hook::PostCreate, spec, true, log).await
        }
        Err(e) => {
            // Roll back what was built; recorded disks stay (detached) for the next try.
            log.line(&format!("create failed: {e}; rolling back"));
            for disk in ctx.disks.get(&spec.node.name).into_iter().flatten() {
                let _ = provider.detach_disk(spec, disk).await;
            }
            if let Err(r) = provider.destroy(spec, log).await {
                log.line(&format!("rollback failed too: {r}"));
            }
            let failed = with_status(&record, Status::Failed, Some(e.clone()));
            ctx.write(vec![node_change(&spec.node.name, Some(&failed))])
                .await?;
            Err(e)
        }
    }
}

/// Creates the node, its disks, and starts it; returns how it is.
async fn build(
    ctx: &Ctx,
    spec: &NodeSpec,
    provider: &dyn Provider,
    log: &NodeLog,
) -> Result<Actual, String> {
    // An earlier, interrupted create may have left a half-built node.
    if provider.read(spec).await.map_err(|e| e.to_string())?.exists {
        provider
            .destroy(spec, log)
            .await
            .map_err(|e| e.to_string())?;
    }
    provider
        .create(spec, log)
        .await
        .map_err(|e| e.to_string())?;
    if provider.manages_disks() {
        attach_disks(ctx, spec, provider, log, false).await?;
    }
    provider
        .power(spec, true, log)
        .await
        .map_err(|e| e.to_string())?;
    provider.read(spec).await.map_err(|e| e.to_string())
}

/// The disk algorithm: recorded disks the plan has are attached, plan disks without a record
/// are made and recorded, recorded disks the plan dropped are detached (and, when `drop`,
/// deleted and forgotten).
async fn attach_disks(
    ctx: &Ctx,
    spec: &NodeSpec,
    provider: &dyn Provider,
    log: &NodeLog,
    drop: bool,
) -> Result<(), String> {
    let name = &spec.node.name;
    let mut recorded: Vec<DiskRecord> = current_disks(ctx, name).await;
    for disk in recorded.clone() {
        match spec.node.disks.iter().find(|d| d.name == disk.name) {
            Some(planned) if planned.size.bytes() != disk.size => {
                return Err(format!(
                    "the data disk '{}' is {} bytes, the plan says {}: dopv does not resize disks; add a disk under a new name",
                    disk.name, disk.size, planned.size.bytes()
                ));
            }
            Some(_) => provider
                .attach_disk(spec, &disk)
                .await
                .map_err(|e| e.to_string())?,
            None => {
                provider
                    .detach_disk(spec, &disk)
                    .await
                    .map_err(|e| e.to_string())?;
                if drop {
                    delete_disk(ctx, provider, spec, &mut recorded, &disk, log).await?;
                } else {
                    log.line(&format!(
                        "the data disk '{}' is not in the plan: kept, detached ({})",
                        disk.name, disk.id
                    ));
                }
            }
        }
    }
    for planned in &spec.node.disks {
        if recorded.iter().any(|d| d.name == planned.name) {
            continue;
        }
        let disk = provider
            .add_disk(spec, planned)
            .await
            .map_err(|e| e.to_string())?;
        recorded.push(disk.clone());
        ctx.write(vec![disks_change(name, &recorded)]).await?;
        provider
            .attach_disk(spec, &disk)
            .await
            .map_err(|e| e.to_string())?;
        log.line(&format!("made the data disk '{}' ({})", disk.name, disk.id));
    }
    Ok(())
}

/// Deletes a (detached) disk, then drops it from the node's disk DB entry.
async fn delete_disk(
    ctx: &Ctx,
    provider: &dyn Provider,
    spec: &NodeSpec,
    recorded: &mut Vec<DiskRecord>,
    disk: &DiskRecord,
    log: &NodeLog,
) -> Result<(), String> {
    provider
        .destroy_disk(spec, disk)
        .await
        .map_err(|e| e.to_string())?;
    recorded.retain(|d| d.name != disk.name);
    ctx.write(vec![disks_change(&spec.node.name, recorded)])
        .await?;
    log.line(&format!(
        "deleted the data disk '{}' ({})",
        disk.name, disk.id
    ));
    Ok(())
}

/// The node's disks as the state has them now (other runs' writes included).
async fn current_disks(ctx: &Ctx, node: &str) -> Vec<DiskRecord> {
    if let Some(state) = &ctx.state {
        if let Ok(records) = state.read_async(App::Dopv).await {
            if let Ok(s) = DopvState::from_records(&records) {
                return s.disks.get(node).cloned().unwrap_or_default();
            }
        }
    }
    ctx.disks.get(node).cloned().unwrap_or_default()
}

async fn destroy(
    ctx: &Ctx,
    spec: &NodeSpec,
    record: Option<&NodeRecord>,
    provider: &dyn Provider,
    rmdisk: bool,
    exists: bool,
    log: &NodeLog,
) -> Result<(), String> {
    let name = &spec.node.name;
    run_hook(ctx, Hook::PreDestroy, spec, exists, log).await?;
    if let Some(r) = record {
        ctx.write(vec![node_change(
            name,
            Some(&with_status(r, Status::Destroying, None)),
        )])
        .await?;
    }
    if provider.manages_disks() {
        let mut disks = current_disks(ctx, name).await;
        for disk in disks.clone() {
            if let Err(e) = provider.detach_disk(spec, &disk).await {
                log.line(&format!(
                    "warning: cannot detach the data disk '{}': {e}",
                    disk.name
                ));
            }
            if rmdisk {
                delete_disk(ctx, provider, spec, &mut disks, &disk, log).await?;
            }
        }
    }
    if exists {
        provider
            .destroy(spec, log)
            .await
            .map_err(|e| e.to_string())?;
    }
    ctx.write(vec![node_change(name, None)]).await?;
    run_hook(ctx, Hook::PostDestroy, spec, exists, log).await
}

/// The deployed entry after an update: the old one with the fields the update applied taken
/// from the plan (a held-back part stays pending).
fn applied(old: &Node, new: &Node, action: &Action) -> Result<Node, String> {
    let mut merged = serde_json::to_value(old).map_err(|e| e.to_string())?;
    let planned = serde_json::to_value(new).map_err(|e| e.to_string())?;
    for change in action
        .changes
        .iter()
        .filter(|c| c.source == planner::Source::Plan)
    {
        // `infrastructure_properties.<key>` changes one setting of that map.
        let (parent, key) = match change.field.split_once('.') {
            Some((parent, key)) => (Some(parent), key),
            None => (None, change.field.as_str()),
        };
        let (from, into) = match parent {
            Some(p) => (planned.get(p), merged.get_mut(p)),
            None => (Some(&planned), Some(&mut merged)),
        };
        let value = from.and_then(|f| f.get(key)).cloned();
        match (into, value) {
            (Some(into), Some(v)) if into.is_object() => into[key] = v,
            (Some(into), None) => {
                if let Some(m) = into.as_object_mut() {
                    m.remove(key);
                }
            }
            (None, Some(v)) => {
                if let (Some(p), Some(m)) = (parent, merged.as_object_mut()) {
                    m.insert(p.to_string(), serde_json::json!({ key: v }));
                }
            }
            _ => {}
        }
    }
    serde_json::from_value(merged).map_err(|e| format!("cannot merge the node entry: {e}"))
}

async fn update(
    ctx: &Ctx,
    action: &Action,
    spec: &NodeSpec,
    record: Option<&NodeRecord>,
    provider: &dyn Provider,
    log: &NodeLog,
) -> Result<(), String> {
    let record = record.ok_or("no record of the node to update")?;
    // What the node becomes: only the fields this action applies change.
    let target = NodeSpec {
        node: applied(&record.desired, &spec.node, action)?,
        ..spec.clone()
    };
    let spec = &target;
    run_hook(ctx, Hook::PreUpdate, spec, true, log).await?;
    ctx.write(vec![node_change(
        &spec.node.name,
        Some(&with_status(record, Status::Updating, None)),
    )])
    .await?;
    let result = async {
        let mut reboot = false;
        for change in &action.changes {
            match change.field.as_str() {
                "disks" => attach_disks(ctx, spec, provider, log, true).await?,
                "power" => provider
                    .power(spec, true, log)
                    .await
                    .map_err(|e| e.to_string())?,
                field => provider
                    .apply(spec, field, log)
                    .await
                    .map_err(|e| e.to_string())?,
            }
            reboot |= change.kind == ChangeKind::Reboot;
        }
        if reboot {
            log.line("rebooting to apply the changes");
            provider
                .power(spec, false, log)
                .await
                .map_err(|e| e.to_string())?;
            provider
                .power(spec, true, log)
                .await
                .map_err(|e| e.to_string())?;
        }
        provider.read(spec).await.map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(actual) => {
            let done = NodeRecord {
                status: Status::Deployed,
                desired: spec.node.clone(),
                ssh_port: spec.ssh_port,
                iteration: ctx.iteration,
                actual: Some(actual),
                refreshed_ms: Some(now_ms()),
                read_error: None,
                updated_ms: now_ms(),
                error: None,
                ..record.clone()
            };
            ctx.write(vec![node_change(&spec.node.name, Some(&done))])
                .await?;
            run_hook(ctx, Hook::PostUpdate, spec, true, log).await
        }
        Err(e) => {
            let failed = with_status(record, Status::Updating, Some(e.clone()));
            ctx.write(vec![node_change(&spec.node.name, Some(&failed))])
                .await?;
            Err(e)
        }
    }
}
