//! The run engine: a step set, step by step; within a step the selected nodes' commands run
//! concurrently under `max_in_flight` and `max_per_role`, after a canary when asked; every
//! state transition is in the store before the run goes on.
//!
//! `run` reads top to bottom as its phases: the preflight (lock, step set, `checks`), the
//! log, the records made consistent with what happened since the last run (`recover`,
//! `redeploy`), then the steps (`schedule`, one node's commands in `node`) under the
//! run's stop level (`dop_run::RunStop`: signals and the caller's requests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dop_core::{EventKind, Level, LookupSettings, NodeFilter, Plan};
use dop_run::{Escalation, ExecutionLog, RunStop, Stop};
use dop_store::{now_ms, App, Iteration, PlanLock, StateSession, Store, StoreError};
use serde_json::json;
use tokio::sync::watch;

use crate::plugin::Registry;
use crate::state::{NodeStepState, PlanState};

mod checks;
mod defaults;
mod node;
mod recover;
mod redeploy;
mod schedule;

pub use checks::check_commands;

/// Default `max_in_flight` of dopi (as the original).
pub const DEFAULT_MAX_IN_FLIGHT: i64 = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The step set.
    pub step_set: String,
    /// Which nodes (from the command line; all when no include flag).
    pub filter: NodeFilter,
    /// Show what would run; change nothing.
    pub noop: bool,
    /// Role lookup.
    pub settings: LookupSettings,
    /// Where execution logs go.
    pub log_dir: PathBuf,
    /// What to show on standard error while running.
    pub echo: dop_run::logs::Echo,
    /// Handle SIGINT and SIGTERM: the 1st stops starting work, the 2nd terminates running
    /// commands, the 3rd kills them.
    pub handle_signals: bool,
    /// Seconds to wait for a node's SSH server to answer.
    pub connect_timeout: u64,
    /// Node connections kept open at once (`max_ssh_connections`; `None`: the default).
    pub max_connections: Option<usize>,
    /// The time and output limits of programs started on this host (`dop.conf`).
    pub limits: dop_core::ProgramLimits,
    /// What to do with the state of nodes dopv redeployed since dopi last ran on them.
    pub redeployed: Redeployed,
    /// Stop requests from the caller (dopc's cancel), with the levels of the signals.
    pub stop: Option<watch::Receiver<Stop>>,
    /// Write into this execution log instead of a new one (dopc: one log per execution).
    pub log: Option<Arc<ExecutionLog>>,
    /// The plan's run lock, already held by the caller (dopc holds it across the parts of one
    /// execution, so that nothing changes the plan between dopv's part and dopi's); `None`:
    /// the run takes it. A lock of another plan is not used.
    pub lock: Option<PlanLock>,
}

/// What a run does with nodes dopv redeployed since their step state was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Redeployed {
    /// Refuse to run (the default): the operator decides.
    #[default]
    Refuse,
    /// Reset their step state (in every step set): their steps run again.
    Reset,
    /// Keep their step state.
    Ignore,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store refused (no such plan, locked, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state transition could not be saved (the store's disk is full or failing): the run
    /// stops rather than run commands it cannot record.
    #[error(
        "the run stopped: the state of '{key}' could not be saved: {source}. Make the store \
         writable again (free space), then run again: commands whose end was not saved run again"
    )]
    StateWrite {
        /// The record (`set/step/node`).
        key: String,
        /// Why the store refused.
        source: StoreError,
    },
    /// Nodes were redeployed by dopv since their state was written.
    #[error(
        "dopv redeployed {} since dopi last ran on them, so their step state describes machines \
         that are gone. Run again with `--redeployed reset` to run their steps again (what dopc \
         does), or `--redeployed ignore` to keep their state",
        nodes.join(", ")
    )]
    Redeployed {
        /// `node (generation old → new)`.
        nodes: Vec<String>,
    },
    /// No such step set.
    #[error("plan '{plan}' has no step set '{name}'; it has: {}", available.join(", "))]
    NoStepSet {
        /// The plan.
        plan: String,
        /// The name asked for.
        name: String,
        /// The step sets it has.
        available: Vec<String>,
    },
    /// The nodes' roles cannot be resolved through the site's Hiera (`hiera_yaml`): nothing
    /// ran, since a step selecting roles could reach other nodes than Puppet's roles say.
    #[error("nothing ran: {0}")]
    Roles(#[from] dop_core::HieraError),
    /// Commands of the plan use unknown plugins or bad parameters.
    #[error("the plan's commands have problems:\n{}", .0.join("\n"))]
    Plugins(Vec<String>),
    /// Something inside the engine failed (a task panicked, the state writer stopped).
    #[error("internal error: {0}; the state in the store is as last recorded")]
    Internal(String),
    /// The log directory could not be written.
    #[error("cannot write the execution logs in {}: {source}", path.display())]
    Logs {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunResult {
    /// Every selected node finished every step.
    Done,
    /// A step failed on some node: the step set stopped after that step.
    Failed {
        /// `step: node: why` for each failure.
        failures: Vec<String>,
    },
    /// A signal stopped the run; running it again continues.
    Stopped,
    /// `--noop`: what would run.
    Noop {
        /// `step: node: what` in order.
        lines: Vec<String>,
    },
}

/// The outcome of `run`.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The execution's id.
    pub execution_id: String,
    /// Its log directory.
    pub log_dir: PathBuf,
    /// How it ended.
    pub result: RunResult,
    /// Commands found running from a run that died, put back to ready.
    pub recovered: usize,
    /// True when writes to the log failed (a full disk): some log lines are missing.
    pub log_lines_lost: bool,
}

/// What SIGINT and SIGTERM do to a run: 1st stop starting commands, 2nd terminate the running
/// ones' process groups, 3rd kill them.
const SIGNALS: &[Escalation] = &[
    Escalation {
        level: Stop::Graceful,
        severity: Level::Warn,
        message:
            "signal received: no new commands start; running ones finish (again to terminate them)",
    },
    Escalation {
        level: Stop::Terminate,
        severity: Level::Warn,
        message: "second signal: terminating the running commands (again to kill them)",
    },
    Escalation {
        level: Stop::Kill,
        severity: Level::Warn,
        message: "third signal: killing the running commands",
    },
];

/// Runs a step set of a stored plan, as a task of the caller's runtime: dopc awaits it next to
/// the requests it serves, the command line builds a runtime for it
/// ([`dop_run::blocking::runtime`]). The store work before and after the steps runs on the
/// blocking pool.
pub async fn run(
    store: Arc<Store>,
    plan_name: &str,
    opts: &RunOptions,
    registry: &Registry,
) -> Result<RunReport, RunError> {
    let run_stop = RunStop::new();
    let Prepared {
        lock,
        iteration,
        log,
        state,
        recovered,
        reach,
        known,
    } = {
        let (name, opts, registry) = (plan_name.to_string(), opts.clone(), registry.clone());
        dop_run::off_workers(move || prepare(&store, &name, &opts, &registry)).await?
    };
    let ctx = Arc::new(Ctx {
        reach,
        ssh: Arc::new(crate::ssh::SshPool::new(
            known,
            Duration::from_secs(opts.connect_timeout),
            opts.max_connections,
            log.masker().clone(),
        )),
        plan: iteration.plan,
        plan_name: plan_name.to_string(),
        iteration: iteration.info.number,
        _lock: lock,
        registry: registry.clone(),
        log: log.clone(),
        stop: run_stop.subscribe(),
        _stop: run_stop.clone(),
        state,
        limits: opts.limits,
    });
    if opts.handle_signals {
        run_stop.escalate_on_signals(SIGNALS, log.clone());
    }
    if let Some(external) = opts.stop.clone() {
        run_stop.follow(external);
    }
    let result = schedule::run_step_set(ctx.clone(), opts).await;
    // Closing the state database and releasing the run lock (an fsync) block: off the workers.
    dop_run::off_workers(move || drop(ctx)).await;
    Ok(RunReport {
        execution_id: log.id.clone(),
        log_dir: log.dir().to_path_buf(),
        result: result?,
        recovered,
        log_lines_lost: log.lost_lines(),
    })
}

/// What a run has before its first step: the plan taken, its log open, its records made
/// consistent with what happened since the last run.
struct Prepared {
    lock: PlanLock,
    iteration: Iteration,
    log: Arc<ExecutionLog>,
    state: StateSession,
    /// Commands found running from a run that died, put back to ready.
    recovered: usize,
    reach: crate::plugin::Reach,
    /// Host keys recorded for the nodes.
    known: std::collections::HashMap<String, String>,
}

/// The blocking start of a run: preflight, log, state session, recovery, redeploys.
fn prepare(
    store: &Store,
    plan_name: &str,
    opts: &RunOptions,
    registry: &Registry,
) -> Result<Prepared, RunError> {
    let (lock, iteration) = preflight(store, plan_name, opts, registry)?;
    let log = open_log(plan_name, &iteration.plan, opts, &lock)?;
    let state = store.state_session(&lock);
    let recovered = if opts.noop {
        0
    } else {
        recover::recover_interrupted(&state)?
    };
    let (reach, known) = redeploy::reconcile(&state, &iteration.plan, opts, &log)?;
    Ok(Prepared {
        lock,
        iteration,
        log,
        state,
        recovered,
        reach,
        known,
    })
}

/// Takes the plan's run lock and checks what must hold before anything is written: the step
/// set exists and its commands can run here.
fn preflight(
    store: &Store,
    plan_name: &str,
    opts: &RunOptions,
    registry: &Registry,
) -> Result<(PlanLock, Iteration), RunError> {
    let held = opts.lock.as_ref().filter(|l| l.plan() == plan_name);
    let lock = match held {
        Some(held) => held.clone(),
        None => store.lock(
            plan_name,
            if opts.noop {
                "dopi run --noop"
            } else {
                "dopi run"
            },
        )?,
    };
    let iteration = store.iteration(plan_name, None)?;
    let plan = &iteration.plan;
    let Some(set) = plan.step_set(&opts.step_set) else {
        return Err(RunError::NoStepSet {
            plan: plan_name.to_string(),
            name: opts.step_set.clone(),
            available: plan.step_sets.iter().map(|s| s.name.clone()).collect(),
        });
    };
    let problems = checks::refusals(plan, &set.path(), registry);
    if !problems.is_empty() {
        return Err(RunError::Plugins(problems));
    }
    Ok((lock, iteration))
}

/// The execution log (the caller's, or a new one), opened with a word on a lock taken over.
fn open_log(
    plan_name: &str,
    plan: &Plan,
    opts: &RunOptions,
    lock: &PlanLock,
) -> Result<Arc<ExecutionLog>, RunError> {
    let log = ExecutionLog::given_or_new(
        opts.log.as_ref(),
        &opts.log_dir,
        plan_name,
        opts.echo,
        || dop_run::Masker::for_execution(plan),
    )
    .map_err(|source| RunError::Logs {
        path: opts.log_dir.clone(),
        source,
    })?;
    if let Some(h) = lock.took_over_from() {
        log.event(
            Level::Warn,
            EventKind::Message,
            None,
            None,
            format!("took over the plan from {h}, which ended without releasing it"),
            serde_json::Map::new(),
        );
    }
    Ok(log)
}

/// What the phases and the node tasks of a run share.
struct Ctx {
    plan: Plan,
    plan_name: String,
    iteration: u64,
    registry: Registry,
    log: Arc<ExecutionLog>,
    stop: watch::Receiver<Stop>,
    /// Keeps the stop level's channel open for the whole run.
    _stop: RunStop,
    /// The plan's state database, kept open for the run; it commits the transitions that
    /// arrive together in one write. Closed (dropped) before the run lock below.
    state: StateSession,
    /// The plan's run lock, held until the run's context is gone.
    _lock: PlanLock,
    ssh: Arc<crate::ssh::SshPool>,
    /// Where nodes listen, from dopv's state and the plan.
    reach: crate::plugin::Reach,
    /// The limits of programs started on this host.
    limits: dop_core::ProgramLimits,
}

/// The node a record key (`set/step/node`) is about.
fn node_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, node)| node)
}

/// Writes through the run's state session; returns once the records are durable.
async fn write_state(
    state: &StateSession,
    app: App,
    changes: Vec<(String, Option<serde_json::Value>)>,
) -> Result<u64, StoreError> {
    state.write_async(app, changes).await
}

/// Reads through the run's state session.
async fn read_state(state: &StateSession, app: App) -> Result<PlanState, StoreError> {
    let records = state.read_async(app).await?;
    Ok(PlanState::from_records(&records))
}

impl Ctx {
    /// Records host keys seen for the first time (trust on first use).
    async fn save_host_keys(&self) -> Result<(), StoreError> {
        let keys = self.ssh.take_new_keys();
        if keys.is_empty() {
            return Ok(());
        }
        let changes: Vec<(String, Option<serde_json::Value>)> = keys
            .into_iter()
            .map(|(node, fp)| {
                let mut record = json!({"fingerprint": fp, "first_seen_ms": now_ms()});
                if let Some(d) = self.reach.deployed.get(&node) {
                    record["generation"] = json!(d.generation);
                }
                (node, Some(record))
            })
            .collect();
        write_state(&self.state, App::Hosts, changes)
            .await
            .map(|_| ())
    }

    /// Persists a node's record; returns when it is durable. A write that fails is reported
    /// as what it is (a full disk is `No space left on device`), not as a damaged store.
    async fn save(&self, key: String, record: &NodeStepState) -> Result<(), RunError> {
        let mut value = serde_json::to_value(record).unwrap_or_default();
        if let Some(d) = self.reach.deployed.get(node_of(&key)) {
            value["generation"] = json!(d.generation);
        }
        write_state(&self.state, App::Dopi, vec![(key.clone(), Some(value))])
            .await
            .map(|_| ())
            .map_err(|source| RunError::StateWrite { key, source })
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() != Stop::No
    }

    fn event(
        &self,
        level: Level,
        kind: EventKind,
        node: Option<&str>,
        step: Option<&str>,
        message: String,
        fields: serde_json::Value,
    ) {
        self.log
            .event_with(level, kind, node, step, message, fields);
    }
}
