//! The driver: one dopv run. It reads the plan and the state, asks the providers how the nodes
//! are, lets the planner decide, and carries the actions out with the generic lifecycle
//! (hooks, disks, rollback) over the provider operations, writing a state transition before
//! and after every step so that a killed run leaves a state the next `sync` completes.
//!
//! A run is four phases, each a module: `preflight` (everything that can refuse the run,
//! before anything is written), `decide` (what the providers report and what the planner
//! makes of it), `act` (the actions, concurrently, under stop requests) and the record of what
//! came of them (`Run::finish`). One node's lifecycle is in `nodes`, its data disks in `disks`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use dop_core::{EventKind, Level, LookupSettings, NodeFilter, Plan};
use dop_run::{Echo, ExecutionLog, Masker};
use dop_store::{App, PlanLock, StateSession, Store, StoreError};
use serde::Serialize;
use serde_json::json;

use crate::planner::{Action, ActionKind, Permissions};
use crate::provider::{NodeSpec, Provider, ProviderOptions};
use crate::state::{DiskRecord, NodeRecord};

mod act;
mod decide;
mod disks;
mod nodes;
mod preflight;

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
pub struct RunOptions {
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
    pub stop: Option<tokio::sync::watch::Receiver<dop_run::Stop>>,
    /// The hooks' time and output limits (`hook_timeout`, `max_program_output` in dop.conf).
    pub limits: dop_core::ProgramLimits,
    /// Write into this execution log instead of a new one (dopc: one log per execution).
    pub log: Option<Arc<ExecutionLog>>,
    /// The plan's run lock, already held by the caller (dopc holds it across the parts of one
    /// execution, previews too); `None`: the run takes it (a preview does not). A lock of
    /// another plan is not used.
    pub lock: Option<PlanLock>,
}

/// How one node's action came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    /// Done.
    Done,
    /// Failed (see the outcome's `error`).
    Failed,
    /// Not started: an earlier node of its infrastructure failed.
    Skipped,
    /// Not started, or dropped mid-way: the run was stopped.
    Stopped,
}

impl std::fmt::Display for ActionResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActionResult::Done => "done",
            ActionResult::Failed => "failed",
            ActionResult::Skipped => "skipped",
            ActionResult::Stopped => "stopped",
        })
    }
}

/// What happened to one node's action.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeOutcome {
    /// The node.
    pub node: String,
    /// The action.
    pub action: ActionKind,
    /// How it came out.
    pub result: ActionResult,
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
    pub outcomes: Vec<NodeOutcome>,
    /// Nodes the provider could not be asked about.
    pub unreadable: Vec<NodeOutcome>,
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
                .any(|o| matches!(o.result, ActionResult::Failed | ActionResult::Skipped))
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
    /// The nodes' roles cannot be resolved through the site's Hiera: nothing was touched.
    #[error("nothing was changed: {0}")]
    Roles(#[from] dop_core::HieraError),
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

/// What a node's action needs of its run; shared by the node tasks.
struct Ctx {
    plan_name: String,
    plan: Plan,
    iteration: u64,
    log: Arc<ExecutionLog>,
    state: Option<StateSession>,
    disks: BTreeMap<String, Vec<DiskRecord>>,
    /// Where created nodes' Puppet autosign challenges are issued, if anywhere.
    puppet_hiera_dir: Option<std::path::PathBuf>,
    /// The hooks' time and output limits.
    limits: dop_core::ProgramLimits,
}

impl Ctx {
    fn event(
        &self,
        level: Level,
        kind: EventKind,
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

/// Runs a dopv command on a stored plan, as a task of the caller's runtime: dopc awaits it
/// next to the requests it serves, the command line builds a runtime for it
/// ([`dop_run::blocking::runtime`]). The phases in order; a `--noop` ends after deciding.
pub async fn run(
    store: Arc<Store>,
    plan_name: &str,
    opts: &RunOptions,
) -> Result<Report, DopvError> {
    let checked = preflight::preflight(&store, plan_name, opts).await?;
    let mut run = Run::start(&store, plan_name, opts, checked)?;
    let (actuals, unreadable) = run.read_nodes().await;
    let (actions, in_sync) = run.decide(&actuals);
    let report = run.report(actions, in_sync, unreadable);
    if opts.noop {
        run.ctx.event(
            Level::Info,
            EventKind::RunFinished,
            None,
            "noop: nothing was changed".into(),
            json!({"result": "noop"}),
        );
        run.close().await;
        return Ok(report);
    }
    if let Err(e) = run.record_reads(&actuals).await {
        run.close().await;
        return Err(e);
    }
    let (outcomes, stopped) = run.act(&report.actions, &actuals).await;
    Ok(run.finish(report, outcomes, stopped).await)
}

/// What the phases of one run share, from the end of the preflight to the report.
struct Run<'a> {
    opts: &'a RunOptions,
    /// `dopv <operation>[ --noop]`, as the lock and the events name the run.
    command: String,
    // Dropped before `_lock`: the state session closes before the plan is released.
    ctx: Arc<Ctx>,
    /// The plan's run lock (none for a preview), held until the run is over.
    _lock: Option<PlanLock>,
    /// The state serial the actions are computed against.
    serial: u64,
    subjects: Vec<Subject>,
    /// Infrastructures whose provider could not be reached (`refresh` only), with why.
    unavailable: HashMap<String, String>,
}

impl<'a> Run<'a> {
    /// Opens the execution log and says what the run is about to look at.
    fn start(
        store: &Store,
        plan_name: &str,
        opts: &'a RunOptions,
        checked: preflight::Checked,
    ) -> Result<Self, DopvError> {
        let preflight::Checked {
            command,
            lock,
            plan,
            iteration,
            state,
            unmatched,
            subjects,
            unavailable,
        } = checked;
        let log = ExecutionLog::given_or_new(
            opts.log.as_ref(),
            &opts.log_dir,
            plan_name,
            opts.echo,
            || Masker::for_execution(&plan),
        )
        .map_err(|source| DopvError::Logs {
            path: opts.log_dir.clone(),
            source,
        })?;
        let ctx = Arc::new(Ctx {
            plan_name: plan_name.to_string(),
            plan,
            iteration,
            log,
            state: lock.as_ref().map(|l| store.state_session(l)),
            disks: state.disks,
            puppet_hiera_dir: opts.providers.puppet_hiera_dir.clone(),
            limits: opts.limits,
        });
        if let Some(h) = lock.as_ref().and_then(|l| l.took_over_from()) {
            ctx.event(
                Level::Warn,
                EventKind::Message,
                None,
                format!("took over the plan from {h}, which ended without releasing it"),
                json!({}),
            );
        }
        for pattern in &unmatched {
            ctx.event(
                Level::Warn,
                EventKind::Message,
                None,
                format!("{pattern} does not match any node"),
                json!({}),
            );
        }
        ctx.event(
            Level::Info,
            EventKind::RunStarted,
            None,
            format!("{command}: plan '{plan_name}' iteration {iteration}, {} node(s) selected", subjects.len()),
            json!({"operation": opts.operation.name(), "iteration": iteration, "serial": state.serial, "noop": opts.noop}),
        );
        Ok(Run {
            opts,
            command,
            ctx,
            _lock: lock,
            serial: state.serial,
            subjects,
            unavailable,
        })
    }

    /// The report of what the run decided; the outcomes are filled in by [`Run::finish`].
    fn report(
        &self,
        actions: Vec<Action>,
        in_sync: Vec<String>,
        unreadable: Vec<NodeOutcome>,
    ) -> Report {
        Report {
            plan: self.ctx.plan_name.clone(),
            operation: self.opts.operation.name(),
            iteration: self.ctx.iteration,
            serial: self.serial,
            noop: self.opts.noop,
            actions,
            in_sync,
            outcomes: Vec::new(),
            unreadable,
            stopped: false,
            execution_id: self.ctx.log.id.clone(),
            log_dir: self.ctx.log.dir().to_path_buf(),
        }
    }

    /// The record: what each action came to, and the run's end in the log. The plan is
    /// released only after that last event is written.
    async fn finish(self, mut report: Report, outcomes: Vec<NodeOutcome>, stopped: bool) -> Report {
        report.outcomes = outcomes;
        report.stopped = stopped;
        let failed = report.failed();
        self.ctx.event(
            if failed { Level::Error } else { Level::Info },
            EventKind::RunFinished,
            None,
            format!(
                "{} {}",
                self.command,
                if failed { "failed" } else { "done" }
            ),
            json!({"result": if failed { "failed" } else { "done" }}),
        );
        self.close().await;
        report
    }

    /// Closes the state database, then releases the plan (an fsync): off the async workers.
    async fn close(self) {
        let Run { ctx, _lock, .. } = self;
        dop_run::off_workers(move || drop((ctx, _lock))).await;
    }
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
