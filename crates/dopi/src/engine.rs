//! The run engine: a step set, step by step; within a step the selected nodes' commands run
//! concurrently under `max_in_flight` and `max_per_role`, after a canary when asked; every
//! state transition is in the store before the run goes on.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dop_core::plan::{Command, DeletePluginDefaults, Step};
use dop_core::{LookupSettings, NodeFacts, NodeFilter, Plan, Resolver};
use dop_store::{now_ms, App, PlanLock, StateSession, Store, StoreError};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::exec::Stop;
use crate::logs::ExecutionLog;
use crate::plugin::{CommandContext, Options, Outcome, Registry};
use crate::state::{record_key, step_hash, step_keys, NodeStepState, PlanState, RunState};

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
    pub echo: crate::logs::Echo,
    /// Handle SIGINT and SIGTERM: the 1st stops starting work, the 2nd terminates running
    /// commands, the 3rd kills them.
    pub handle_signals: bool,
    /// Seconds to wait for a node's SSH server to answer.
    pub connect_timeout: u64,
    /// What to do with the state of nodes dopv redeployed since dopi last ran on them.
    pub redeployed: Redeployed,
    /// Stop requests from the caller (dopc's cancel), with the levels of the signals.
    pub stop: Option<watch::Receiver<Stop>>,
    /// Write into this execution log instead of a new one (dopc: one log per execution).
    pub log: Option<Arc<ExecutionLog>>,
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

/// Per node, per plugin name: the defaults in force.
type Defaults = HashMap<String, BTreeMap<String, Options>>;

struct Ctx {
    plan: Plan,
    plan_name: String,
    iteration: u64,
    registry: Registry,
    log: Arc<ExecutionLog>,
    stop: watch::Receiver<Stop>,
    /// The plan's state database, kept open for the run; it commits the transitions that
    /// arrive together in one write. Closed (dropped) before the run lock below.
    state: StateSession,
    /// The plan's run lock, held until the run's context is gone.
    _lock: PlanLock,
    ssh: Arc<crate::ssh::SshPool>,
    /// Where nodes listen, from dopv's state and the plan.
    reach: crate::plugin::Reach,
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
        level: &str,
        kind: &str,
        node: Option<&str>,
        step: Option<&str>,
        message: String,
        fields: serde_json::Value,
    ) {
        self.log
            .event_with(level, kind, node, step, message, fields);
    }
}

/// Checks every command of the plan against the registry: unknown plugins and bad parameters,
/// each with its plan path. Returns `(path, message, warning)`.
pub fn check_commands(plan: &Plan, registry: &Registry) -> Vec<(String, String, bool)> {
    let mut problems = Vec::new();
    for set in &plan.step_sets {
        let set_path = set.path();
        for (i, step) in set.steps.iter().enumerate() {
            let step_path = format!("{set_path}[{i}]");
            let field = if step.commands.len() == 1 {
                "command"
            } else {
                "commands"
            };
            for (j, cmd) in step.commands.iter().enumerate() {
                let path = format!("{step_path}.{field}[{j}]");
                check_command(cmd, &path, registry, plan, &mut problems);
            }
            for (j, d) in step.set_plugin_defaults.iter().enumerate() {
                let defaults_path = format!("{step_path}.set_plugin_defaults[{j}]");
                check_run_on(&d.options, &defaults_path, plan, &mut problems);
                for name in registry.names() {
                    if d.plugins.matches(name) {
                        let plugin = registry.get(name).expect("listed");
                        for p in plugin.check(&d.options).into_iter().filter(|p| !p.warning) {
                            problems.push((
                                format!("{step_path}.set_plugin_defaults[{j}].{}", p.key),
                                format!("{name}: {}", p.message),
                                false,
                            ));
                        }
                    }
                }
            }
        }
    }
    problems
}

/// `run_on` must name a node of the plan.
fn check_run_on(
    options: &crate::plugin::Options,
    path: &str,
    plan: &Plan,
    problems: &mut Vec<(String, String, bool)>,
) {
    if let Some(name) = options.get("run_on").and_then(serde_json::Value::as_str) {
        if !plan.nodes.iter().any(|n| n.name == name) {
            problems.push((
                format!("{path}.run_on"),
                format!("no node '{name}' in the plan to run the command on"),
                false,
            ));
        }
    }
}

fn check_command(
    cmd: &Command,
    path: &str,
    registry: &Registry,
    plan: &Plan,
    problems: &mut Vec<(String, String, bool)>,
) {
    check_run_on(&cmd.options, path, plan, problems);
    match registry.get(&cmd.plugin) {
        None if crate::plugin::NOT_YET_AVAILABLE.contains(&cmd.plugin.as_str()) => problems.push((
            format!("{path}.plugin"),
            format!(
                "the plugin '{}' is not available in this dopi yet (it runs: {}); `dopi run` refuses step sets that use it",
                cmd.plugin,
                registry.names().join(", ")
            ),
            true,
        )),
        None => problems.push((
            format!("{path}.plugin"),
            format!(
                "unknown plugin '{}'; dopi knows: {}",
                cmd.plugin,
                registry.names().join(", ")
            ),
            false,
        )),
        Some(plugin) => {
            for p in plugin.check(&cmd.options) {
                let at = if p.key.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{}", p.key)
                };
                problems.push((at, p.message, p.warning));
            }
        }
    }
    for (k, v) in cmd.verify_commands.iter().enumerate() {
        check_command(
            v,
            &format!("{path}.verify_commands[{k}]"),
            registry,
            plan,
            problems,
        );
    }
}

/// Applies a step's plugin-default changes to the nodes it selects.
fn apply_defaults(defaults: &mut Defaults, step: &Step, nodes: &[String], registry: &Registry) {
    for node in nodes {
        let per_plugin = defaults.entry(node.clone()).or_default();
        match &step.delete_plugin_defaults {
            DeletePluginDefaults::None => {}
            DeletePluginDefaults::All => per_plugin.clear(),
            DeletePluginDefaults::Entries(entries) => {
                for e in entries {
                    for name in registry.names() {
                        if !e.plugins.matches(name) {
                            continue;
                        }
                        match &e.delete_keys {
                            None => {
                                per_plugin.remove(name);
                            }
                            Some(keys) => {
                                if let Some(o) = per_plugin.get_mut(name) {
                                    for k in keys {
                                        o.remove(k.trim_start_matches(':'));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for d in &step.set_plugin_defaults {
            for name in registry.names() {
                if d.plugins.matches(name) {
                    let o = per_plugin.entry(name.to_string()).or_default();
                    for (k, v) in &d.options {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
}

/// The command's options over the defaults of its plugin for the node (shallow, as before).
fn effective(defaults: &Defaults, node: &str, cmd: &Command) -> Options {
    let mut o = defaults
        .get(node)
        .and_then(|p| p.get(&cmd.plugin))
        .cloned()
        .unwrap_or_default();
    for (k, v) in &cmd.options {
        o.insert(k.clone(), v.clone());
    }
    o
}

/// Runs a step set of a stored plan.
pub fn run(
    store: Arc<Store>,
    plan_name: &str,
    opts: &RunOptions,
    registry: &Registry,
) -> Result<RunReport, RunError> {
    let (stop_tx, stop) = watch::channel(Stop::No);
    let lock = store.lock(
        plan_name,
        if opts.noop {
            "dopi run --noop"
        } else {
            "dopi run"
        },
    )?;
    let iteration = store.iteration(plan_name, None)?;
    let plan = iteration.plan;
    if plan.step_set(&opts.step_set).is_none() {
        return Err(RunError::NoStepSet {
            plan: plan_name.to_string(),
            name: opts.step_set.clone(),
            available: plan.step_sets.iter().map(|s| s.name.clone()).collect(),
        });
    }
    let set = plan.step_set(&opts.step_set).expect("checked");
    let set_path = set.path();
    let missing_here = |path: &str, message: &str| {
        path.starts_with(&format!("{set_path}[")) && message.contains("not available")
    };
    let problems: Vec<String> = check_commands(&plan, registry)
        .into_iter()
        .filter(|(path, message, warning)| !warning || missing_here(path, message))
        .map(|(path, message, _)| format!("  {path}: {message}"))
        .collect();
    if !problems.is_empty() {
        return Err(RunError::Plugins(problems));
    }
    let log = ExecutionLog::given_or_new(
        opts.log.as_ref(),
        &opts.log_dir,
        plan_name,
        opts.echo,
        || crate::logs::Masker::for_plan(&plan),
    )
    .map_err(|source| RunError::Logs {
        path: opts.log_dir.clone(),
        source,
    })?;
    let id = log.id.clone();
    if let Some(h) = lock.took_over_from() {
        log.event(
            "warn",
            "message",
            None,
            None,
            format!("took over the plan from {h}, which ended without releasing it"),
            serde_json::Map::new(),
        );
    }
    let state = store.state_session(&lock);
    let recovered = if opts.noop {
        0
    } else {
        recover_interrupted(&state)?
    };
    let deployed = dop_store::deployment::deployed(&state.read(App::Dopv)?);
    redeployments(&state, &plan, opts, &deployed, &log)?;
    let known: HashMap<String, String> = recorded_host_keys(&state)?;
    let reach = crate::plugin::Reach::new(&plan, deployed);
    let ctx = Arc::new(Ctx {
        reach,
        ssh: Arc::new(crate::ssh::SshPool::new(
            known,
            Duration::from_secs(opts.connect_timeout),
        )),
        plan,
        plan_name: plan_name.to_string(),
        iteration: iteration.info.number,
        _lock: lock,
        registry: registry.clone(),
        log: log.clone(),
        stop,
        state,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RunError::Logs {
            path: opts.log_dir.clone(),
            source,
        })?;
    let result = runtime.block_on(async {
        let stop_tx = Arc::new(stop_tx);
        if opts.handle_signals {
            let log = log.clone();
            tokio::spawn(escalate_on_signals(stop_tx.clone(), log));
        }
        if let Some(mut external) = opts.stop.clone() {
            // The caller's requests only ever raise the level.
            tokio::spawn(async move {
                loop {
                    let level = *external.borrow_and_update();
                    stop_tx.send_if_modified(|current| {
                        let raise = level > *current;
                        if raise {
                            *current = level;
                        }
                        raise
                    });
                    if external.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        run_step_set(ctx, opts).await
    })?;
    Ok(RunReport {
        execution_id: id,
        log_dir: log.dir().to_path_buf(),
        result,
        recovered,
        log_lines_lost: log.lost_lines(),
    })
}

/// The host keys recorded for the plan's nodes.
/// Handles nodes dopv redeployed since dopi wrote their state: their host keys are forgotten
/// (a new machine has a new key), and their step state is refused, reset or kept as
/// `opts.redeployed` says.
fn redeployments(
    state: &StateSession,
    plan: &Plan,
    opts: &RunOptions,
    deployed: &BTreeMap<String, dop_store::deployment::Deployed>,
    log: &ExecutionLog,
) -> Result<(), RunError> {
    let generation_of = |node: &str| deployed.get(node).map(|d| d.generation);
    let resolver = Resolver::new(plan, &opts.settings);
    let selected: std::collections::HashSet<&str> = opts
        .filter
        .select(&resolver)
        .nodes
        .into_iter()
        .map(|i| resolver.name(i))
        .collect();
    let records = state.read(App::Dopi)?;
    let mut stale: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut stale_keys = Vec::new();
    for (key, value) in &records.records {
        let node = node_of(key);
        let (Some(old), Some(new)) = (value["generation"].as_u64(), generation_of(node)) else {
            continue;
        };
        if old != new && selected.contains(node) {
            stale.insert(node.to_string(), (old, new));
            stale_keys.push((key.clone(), value.clone(), new));
        }
    }
    if stale.is_empty() {
        return forget_redeployed_host_keys(state, deployed, log, opts.noop);
    }
    let listed: Vec<String> = stale
        .iter()
        .map(|(n, (old, new))| format!("{n} (generation {old} → {new})"))
        .collect();
    match opts.redeployed {
        Redeployed::Refuse => return Err(RunError::Redeployed { nodes: listed }),
        _ if opts.noop => {}
        Redeployed::Reset | Redeployed::Ignore => {
            let reset = opts.redeployed == Redeployed::Reset;
            let changes = stale_keys
                .into_iter()
                .map(|(key, mut value, new)| {
                    if reset {
                        (key, None)
                    } else {
                        value["generation"] = serde_json::json!(new);
                        (key, Some(value))
                    }
                })
                .collect();
            state.write(App::Dopi, changes)?;
            for line in &listed {
                log.event(
                    "warn",
                    "message",
                    None,
                    None,
                    format!(
                        "redeployed by dopv: {line}; its step state was {}",
                        if reset {
                            "reset"
                        } else {
                            "kept (--redeployed ignore)"
                        }
                    ),
                    serde_json::Map::new(),
                );
            }
        }
    }
    forget_redeployed_host_keys(state, deployed, log, opts.noop)
}

/// Forgets host keys recorded under an older dopv generation of their node.
fn forget_redeployed_host_keys(
    state: &StateSession,
    deployed: &BTreeMap<String, dop_store::deployment::Deployed>,
    log: &ExecutionLog,
    noop: bool,
) -> Result<(), RunError> {
    let hosts = state.read(App::Hosts)?;
    let mut forget = Vec::new();
    for (node, value) in &hosts.records {
        let (Some(old), Some(d)) = (value["generation"].as_u64(), deployed.get(node)) else {
            continue;
        };
        if old != d.generation {
            forget.push((node.clone(), None));
            log.event(
                "info",
                "message",
                Some(node),
                None,
                format!(
                    "dopv redeployed the node (generation {old} → {}): its old SSH host key is forgotten",
                    d.generation
                ),
                serde_json::Map::new(),
            );
        }
    }
    if !forget.is_empty() && !noop {
        state.write(App::Hosts, forget)?;
    }
    Ok(())
}

fn recorded_host_keys(state: &StateSession) -> Result<HashMap<String, String>, StoreError> {
    Ok(state
        .read(App::Hosts)?
        .records
        .into_iter()
        .filter_map(|(node, v)| Some((node, v["fingerprint"].as_str()?.to_string())))
        .collect())
}

/// Counts SIGINT/SIGTERM: 1st graceful stop, 2nd terminate, 3rd kill.
async fn escalate_on_signals(stop: Arc<watch::Sender<Stop>>, log: Arc<ExecutionLog>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    for level in [Stop::Graceful, Stop::Terminate, Stop::Kill] {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let message = match level {
            Stop::Graceful => "signal received: no new commands start; running ones finish (again to terminate them)",
            Stop::Terminate => "second signal: terminating the running commands (again to kill them)",
            _ => "third signal: killing the running commands",
        };
        log.event(
            "warn",
            "message",
            None,
            None,
            message.to_string(),
            serde_json::Map::new(),
        );
        let _ = stop.send(level);
    }
}

/// Puts commands found `running` back to ready: the run that started them is gone (we hold the
/// lock), so they were interrupted and must run again.
fn recover_interrupted(session: &StateSession) -> Result<usize, StoreError> {
    let state = PlanState::from_records(&session.read(App::Dopi)?);
    let mut changes = Vec::new();
    let mut count = 0;
    for (key, record) in state.records {
        if !record.commands.iter().any(|c| c.state == RunState::Running) {
            continue;
        }
        let mut record = record;
        for c in &mut record.commands {
            if c.state == RunState::Running {
                c.state = RunState::Ready;
                c.message = Some(
                    "interrupted: the run that started it ended before it finished; it runs again"
                        .into(),
                );
                count += 1;
            }
        }
        record.refresh();
        changes.push((key, Some(serde_json::to_value(&record).unwrap_or_default())));
    }
    if !changes.is_empty() {
        session.write(App::Dopi, changes)?;
    }
    Ok(count)
}

async fn run_step_set(ctx: Arc<Ctx>, opts: &RunOptions) -> Result<RunResult, RunError> {
    let set = ctx.plan.step_set(&opts.step_set).expect("checked").clone();
    let resolver = Resolver::new(&ctx.plan, &opts.settings);
    let selected = opts.filter.select(&resolver);
    for pattern in &selected.unmatched {
        ctx.event(
            "warn",
            "message",
            None,
            None,
            format!("{pattern} does not match any node"),
            json!({}),
        );
    }
    let run_nodes: Vec<bool> = {
        let mut v = vec![false; resolver.len()];
        for &i in &selected.nodes {
            v[i] = true;
        }
        v
    };
    let roles: Vec<String> = (0..resolver.len())
        .map(|i| resolver.role(i).to_string())
        .collect();
    let state = read_state(&ctx.state, App::Dopi).await?;
    ctx.event(
        "info",
        "run_started",
        None,
        None,
        format!("run of plan '{}' (iteration {}), step set '{}'{}", ctx.plan_name, ctx.iteration, set.name, if opts.noop { ", noop" } else { "" }),
        json!({"plan": ctx.plan_name, "iteration": ctx.iteration, "step_set": set.name, "noop": opts.noop}),
    );
    let mut defaults: Defaults = HashMap::new();
    let mut failures = Vec::new();
    let mut noop_lines = Vec::new();
    let keys = step_keys(&set);
    for (step, key) in set.steps.iter().zip(&keys) {
        let step_nodes: Vec<usize> = step.filter.select(&resolver).nodes;
        let names: Vec<String> = step_nodes
            .iter()
            .map(|&i| resolver.name(i).to_string())
            .collect();
        apply_defaults(&mut defaults, step, &names, &ctx.registry);
        if ctx.stopping() {
            break;
        }
        let nodes: Vec<usize> = step_nodes.into_iter().filter(|&i| run_nodes[i]).collect();
        let hash = step_hash(step);
        let pending: Vec<(usize, NodeStepState)> = nodes
            .iter()
            .map(|&i| {
                let k = record_key(&set.name, key, resolver.name(i));
                let record = state
                    .current(&k, &hash)
                    .cloned()
                    .filter(|r| r.commands.len() == step.commands.len());
                (
                    i,
                    record.unwrap_or_else(|| NodeStepState::ready(step, &hash, ctx.iteration)),
                )
            })
            .filter(|(_, r)| r.state != RunState::Done)
            .collect();
        if nodes.is_empty() {
            ctx.event(
                "info",
                "step_finished",
                None,
                Some(key),
                format!("step '{key}': no selected node"),
                json!({"state": "skipped"}),
            );
            continue;
        }
        if pending.is_empty() {
            ctx.event(
                "info",
                "step_finished",
                None,
                Some(key),
                format!("step '{key}': already done on its {} node(s)", nodes.len()),
                json!({"state": "done"}),
            );
            continue;
        }
        if opts.noop {
            for (i, record) in &pending {
                let node = resolver.name(*i);
                for (cmd, cs) in step.commands.iter().zip(&record.commands) {
                    if cs.state == RunState::Done {
                        continue;
                    }
                    let plugin = ctx.registry.get(&cmd.plugin).expect("checked");
                    let verify = if cmd.verify_commands.is_empty() {
                        ""
                    } else {
                        " (unless its verify commands pass)"
                    };
                    noop_lines.push(format!(
                        "{key}: {node}: {}: {}{verify}",
                        cmd.title,
                        plugin.describe(&effective(&defaults, node, cmd))
                    ));
                }
            }
            continue;
        }
        let failed = run_step(
            &ctx, &set.name, key, step, pending, &defaults, &roles, &resolver,
        )
        .await?;
        if !failed.is_empty() {
            failures.extend(failed);
            ctx.event(
                "error",
                "step_finished",
                None,
                Some(key),
                format!("step '{key}' failed; the step set stops here"),
                json!({"state": "failed"}),
            );
            break;
        }
        if ctx.stopping() {
            break;
        }
        ctx.event(
            "info",
            "step_finished",
            None,
            Some(key),
            format!("step '{key}' done"),
            json!({"state": "done"}),
        );
    }
    if set.auto_reset && failures.is_empty() && !opts.noop && !ctx.stopping() {
        auto_reset(&ctx, &set, &keys, &resolver).await?;
    }
    let result = if opts.noop {
        RunResult::Noop { lines: noop_lines }
    } else if !failures.is_empty() {
        RunResult::Failed { failures }
    } else if ctx.stopping() {
        RunResult::Stopped
    } else {
        RunResult::Done
    };
    let (level, word) = match &result {
        RunResult::Done | RunResult::Noop { .. } => ("info", "done"),
        RunResult::Failed { .. } => ("error", "failed"),
        RunResult::Stopped => ("warn", "stopped"),
    };
    ctx.event(
        level,
        "run_finished",
        None,
        None,
        format!("run {word}"),
        json!({"result": word}),
    );
    Ok(result)
}

/// What running a node's commands of a step gives: `Ok(Err(why))` when the node failed.
type NodeResult = Result<Result<(), String>, RunError>;

/// `auto_reset`: when every node of every step of the set is done (not only those this run
/// selected), the set goes back to ready for its next run.
async fn auto_reset(
    ctx: &Arc<Ctx>,
    set: &dop_core::plan::StepSet,
    keys: &[String],
    resolver: &Resolver<'_>,
) -> Result<(), RunError> {
    let state = read_state(&ctx.state, App::Dopi).await?;
    let mut fresh = Vec::new();
    for (step, key) in set.steps.iter().zip(keys) {
        let hash = step_hash(step);
        for i in step.filter.select(resolver).nodes {
            let k = record_key(&set.name, key, resolver.name(i));
            if state
                .current(&k, &hash)
                .is_none_or(|r| r.state != RunState::Done)
            {
                return Ok(());
            }
            let mut ready = NodeStepState::ready(step, &hash, ctx.iteration);
            for c in &mut ready.commands {
                c.message = Some("auto_reset after the whole step set finished".into());
            }
            fresh.push((k, Some(serde_json::to_value(&ready).unwrap_or_default())));
        }
    }
    write_state(&ctx.state, App::Dopi, fresh).await?;
    ctx.event(
        "info",
        "message",
        None,
        None,
        format!(
            "step set '{}' finished on every node; auto_reset made it ready again",
            set.name
        ),
        json!({}),
    );
    Ok(())
}

/// Runs one step on its pending nodes; returns the failures (`step: node: why`).
#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &Arc<Ctx>,
    set: &str,
    key: &str,
    step: &Step,
    pending: Vec<(usize, NodeStepState)>,
    defaults: &Defaults,
    roles: &[String],
    resolver: &Resolver<'_>,
) -> Result<Vec<String>, RunError> {
    let options = step.run_options.or(&ctx.plan.run_options);
    let max_in_flight = match options.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT) {
        -1 => pending.len().max(1),
        0 => 1,
        n => usize::try_from(n).unwrap_or(1),
    };
    let max_per_role = options
        .max_per_role
        .filter(|n| *n > 0)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let canary = options.canary_host.unwrap_or(false);
    ctx.event(
        "info",
        "step_started",
        None,
        Some(key),
        format!("step '{key}' on {} node(s), {max_in_flight} at a time{}", pending.len(), if canary { ", canary first" } else { "" }),
        json!({"nodes": pending.len(), "commands": step.commands.len(), "max_in_flight": max_in_flight, "max_per_role": max_per_role, "canary": canary}),
    );
    let mut queue: std::collections::VecDeque<(usize, NodeStepState)> = pending.into();
    let mut failures = Vec::new();
    let launch = |i: usize, record: NodeStepState| {
        let ctx = ctx.clone();
        let node = ctx.plan.nodes[i].clone();
        let step = step.clone();
        let set = set.to_string();
        let key = key.to_string();
        let opts: Vec<Options> = step
            .commands
            .iter()
            .map(|c| effective(defaults, &node.name, c))
            .collect();
        let verify: Vec<Vec<Options>> = step
            .commands
            .iter()
            .map(|c| {
                c.verify_commands
                    .iter()
                    .map(|v| effective(defaults, &node.name, v))
                    .collect()
            })
            .collect();
        async move {
            let result = run_node(&ctx, &set, &key, &step, &node, record, &opts, &verify).await;
            (i, result)
        }
    };
    if canary && queue.len() > 1 {
        let (i, record) = queue.pop_front().expect("non-empty");
        ctx.event(
            "info",
            "message",
            Some(resolver.name(i)),
            Some(key),
            format!("canary for step '{key}'"),
            json!({}),
        );
        let (_, result) = launch(i, record).await;
        if let Err(why) = result? {
            failures.push(format!("{key}: {}: {why}", resolver.name(i)));
            return Ok(failures);
        }
    }
    let mut running: JoinSet<(usize, NodeResult)> = JoinSet::new();
    let mut per_role: HashMap<&str, usize> = HashMap::new();
    loop {
        while running.len() < max_in_flight && !ctx.stopping() {
            let fits = |i: &usize| {
                max_per_role
                    .is_none_or(|m| per_role.get(roles[*i].as_str()).copied().unwrap_or(0) < m)
            };
            let Some(at) = queue.iter().position(|(i, _)| fits(i)) else {
                break;
            };
            let (i, record) = queue.remove(at).expect("found");
            *per_role.entry(roles[i].as_str()).or_insert(0) += 1;
            running.spawn(launch(i, record));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, result) =
            joined.map_err(|e| RunError::Internal(format!("a node task failed: {e}")))?;
        if let Some(n) = per_role.get_mut(roles[i].as_str()) {
            *n -= 1;
        }
        if let Err(why) = result? {
            failures.push(format!("{key}: {}: {why}", resolver.name(i)));
        }
    }
    Ok(failures)
}

/// Runs a node's commands of a step, persisting every transition. `Ok(Err(why))` when the node
/// failed; `Ok(Ok(()))` when it is done or was stopped (left ready).
#[allow(clippy::too_many_arguments)]
async fn run_node(
    ctx: &Arc<Ctx>,
    set: &str,
    key: &str,
    step: &Step,
    node: &dop_core::plan::Node,
    mut record: NodeStepState,
    options: &[Options],
    verify_options: &[Vec<Options>],
) -> Result<Result<(), String>, RunError> {
    let record_key = record_key(set, key, &node.name);
    let nlog = ctx.log.node(&node.name);
    record.iteration = ctx.iteration;
    for (ci, cmd) in step.commands.iter().enumerate() {
        if record.commands[ci].state == RunState::Done {
            continue;
        }
        if ctx.stopping() {
            break;
        }
        let plugin = ctx.registry.get(&cmd.plugin).expect("checked").clone();
        let run_one =
            |plugin: Arc<dyn crate::plugin::Plugin>, opts: Options, timeout: Option<i64>| {
                let ctx = ctx.clone();
                let node = node.clone();
                let key = key.to_string();
                let log = nlog.clone();
                async move {
                    let cc = CommandContext {
                        plan: &ctx.plan_name,
                        node: &node,
                        step: &key,
                        options: &opts,
                        timeout: Duration::from_secs(
                            timeout
                                .and_then(|t| u64::try_from(t).ok())
                                .unwrap_or_else(|| plugin.default_timeout()),
                        ),
                        log,
                        stop: ctx.stop.clone(),
                        credentials: &ctx.plan.credentials,
                        nodes: &ctx.plan.nodes,
                        ssh: ctx.ssh.clone(),
                        reach: &ctx.reach,
                    };
                    plugin.run(&cc).await
                }
            };
        if !cmd.verify_commands.is_empty() {
            let mut all_ok = true;
            for (v, vo) in cmd.verify_commands.iter().zip(&verify_options[ci]) {
                let Some(vp) = ctx.registry.get(&v.plugin).cloned() else {
                    all_ok = false;
                    break;
                };
                if !run_one(vp, vo.clone(), v.plugin_timeout).await.success {
                    all_ok = false;
                    break;
                }
            }
            if all_ok {
                let c = &mut record.commands[ci];
                c.state = RunState::Done;
                c.message = Some("verify commands passed; not run".into());
                c.finished_ms = Some(now_ms());
                record.refresh();
                ctx.save(record_key.clone(), &record).await?;
                ctx.event(
                    "info",
                    "command_finished",
                    Some(&node.name),
                    Some(key),
                    format!("{}: verify commands passed, skipped", cmd.title),
                    json!({"state": "done", "skipped": true}),
                );
                continue;
            }
        }
        {
            let c = &mut record.commands[ci];
            c.state = RunState::Running;
            c.attempts += 1;
            c.started_ms = Some(now_ms());
            c.finished_ms = None;
            c.exit_status = None;
            c.message = None;
        }
        record.refresh();
        ctx.save(record_key.clone(), &record).await?;
        ctx.event(
            "info",
            "command_started",
            Some(&node.name),
            Some(key),
            format!("starting {}", cmd.title),
            json!({"plugin": cmd.plugin, "attempt": record.commands[ci].attempts}),
        );
        let started = Instant::now();
        let mut outcome: Outcome = run_one(plugin, options[ci].clone(), cmd.plugin_timeout).await;
        ctx.save_host_keys().await?;
        if outcome.success && cmd.verify_after_run {
            for (v, vo) in cmd.verify_commands.iter().zip(&verify_options[ci]) {
                let Some(vp) = ctx.registry.get(&v.plugin).cloned() else {
                    continue;
                };
                if !run_one(vp, vo.clone(), v.plugin_timeout).await.success {
                    outcome.success = false;
                    outcome.message = Some("the verify commands did not confirm the run".into());
                    break;
                }
            }
        }
        let state = if outcome.success {
            RunState::Done
        } else if outcome.interrupted {
            RunState::Ready
        } else {
            RunState::Failed
        };
        {
            let c = &mut record.commands[ci];
            c.state = state;
            c.finished_ms = Some(now_ms());
            c.exit_status = outcome.exit_status;
            c.output_tail = outcome
                .output_tail
                .iter()
                .map(|l| ctx.log.masker().mask(l).into_owned())
                .collect();
            c.message = match state {
                RunState::Ready => {
                    Some("stopped by a signal; it runs again on the next run".into())
                }
                _ => outcome
                    .message
                    .as_deref()
                    .map(|m| ctx.log.masker().mask(m).into_owned()),
            };
        }
        record.refresh();
        ctx.save(record_key.clone(), &record).await?;
        let secs = started.elapsed().as_secs_f64();
        let (level, word) = match state {
            RunState::Done => ("info", "OK"),
            RunState::Ready => ("warn", "STOPPED"),
            _ => ("error", "FAILED"),
        };
        let why = outcome
            .message
            .clone()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        ctx.event(
            level,
            "command_finished",
            Some(&node.name),
            Some(key),
            format!("{} [{word}] in {secs:.1}s{why}", cmd.title),
            json!({"state": state.as_str(), "exit_status": outcome.exit_status, "seconds": secs}),
        );
        match state {
            RunState::Done => {}
            RunState::Failed => {
                return Ok(Err(format!(
                    "{}: {}",
                    cmd.title,
                    outcome.message.unwrap_or_default()
                )))
            }
            _ => break,
        }
    }
    Ok(Ok(()))
}
