//! Scheduling a step set: the steps in order; within a step its pending nodes under
//! `max_in_flight` and `max_per_role`, after a canary when asked; then the run's result.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use dop_core::plan::{Step, StepSet};
use dop_core::{EventKind, Level, NodeFacts, Resolver};
use dop_store::App;
use serde_json::json;
use tokio::task::JoinSet;

use super::defaults::{apply_defaults, effective, Defaults};
use super::node::{run_node, NodeResult};
use super::{read_state, write_state, Ctx, RunError, RunOptions, RunResult, DEFAULT_MAX_IN_FLIGHT};
use crate::plugin::CommandOptions;
use crate::state::{record_key, step_hash, step_keys, NodeStepState, PlanState, RunState};

/// Runs the step set `opts` names, step by step, until a step fails or the run is stopped.
pub(super) async fn run_step_set(ctx: Arc<Ctx>, opts: &RunOptions) -> Result<RunResult, RunError> {
    let set = ctx.plan.step_set(&opts.step_set).expect("checked").clone();
    let mut run = SetRun::start(&ctx, opts, &set).await?;
    let keys = step_keys(&set);
    for (step, key) in set.steps.iter().zip(&keys) {
        if run.step(step, key).await?.is_break() {
            break;
        }
    }
    if set.auto_reset && run.failures.is_empty() && !opts.noop && !ctx.stopping() {
        auto_reset(&ctx, &set, &keys, &run.resolver).await?;
    }
    Ok(run.finish())
}

/// What the steps of one step set share.
struct SetRun<'a> {
    ctx: &'a Arc<Ctx>,
    opts: &'a RunOptions,
    set: &'a StepSet,
    resolver: Resolver<'a>,
    /// Per node (by index): selected on the command line.
    selected: Vec<bool>,
    /// Per node (by index): its role, for `max_per_role`.
    roles: Vec<String>,
    /// The step state as the run found it.
    state: PlanState,
    defaults: Defaults,
    /// `step: node: why`, of the step that failed.
    failures: Vec<String>,
    /// `step: node: what`, for `--noop`.
    noop_lines: Vec<String>,
}

impl<'a> SetRun<'a> {
    /// Selects the nodes and says the run has started.
    async fn start(
        ctx: &'a Arc<Ctx>,
        opts: &'a RunOptions,
        set: &'a StepSet,
    ) -> Result<Self, RunError> {
        let resolver = Resolver::new(&ctx.plan, &opts.settings)?;
        let selection = opts.filter.select(&resolver);
        for pattern in &selection.unmatched {
            ctx.event(
                Level::Warn,
                EventKind::Message,
                None,
                None,
                format!("{pattern} does not match any node"),
                json!({}),
            );
        }
        let mut selected = vec![false; resolver.len()];
        for &i in &selection.nodes {
            selected[i] = true;
        }
        let roles = (0..resolver.len())
            .map(|i| resolver.role(i).to_string())
            .collect();
        let state = read_state(&ctx.state, App::Dopi).await?;
        ctx.event(
            Level::Info,
            EventKind::RunStarted,
            None,
            None,
            format!("run of plan '{}' (iteration {}), step set '{}'{}", ctx.plan_name, ctx.iteration, set.name, if opts.noop { ", noop" } else { "" }),
            json!({"plan": ctx.plan_name, "iteration": ctx.iteration, "step_set": set.name, "noop": opts.noop}),
        );
        Ok(SetRun {
            ctx,
            opts,
            set,
            resolver,
            selected,
            roles,
            state,
            defaults: HashMap::new(),
            failures: Vec::new(),
            noop_lines: Vec::new(),
        })
    }

    /// One step: its defaults take effect on the nodes it selects (selected on the command
    /// line or not), then it runs on those not done yet. Breaks when the step set stops here.
    async fn step(&mut self, step: &Step, key: &str) -> Result<ControlFlow<()>, RunError> {
        let ctx = self.ctx;
        let step_nodes: Vec<usize> = step.filter.select(&self.resolver).nodes;
        let names: Vec<String> = step_nodes
            .iter()
            .map(|&i| self.resolver.name(i).to_string())
            .collect();
        apply_defaults(&mut self.defaults, step, &names, &ctx.registry);
        if ctx.stopping() {
            return Ok(ControlFlow::Break(()));
        }
        let nodes: Vec<usize> = step_nodes
            .into_iter()
            .filter(|&i| self.selected[i])
            .collect();
        let pending = self.pending(step, key, &nodes);
        if nodes.is_empty() {
            ctx.event(
                Level::Info,
                EventKind::StepFinished,
                None,
                Some(key),
                format!("step '{key}': no selected node"),
                json!({"state": "skipped"}),
            );
            return Ok(ControlFlow::Continue(()));
        }
        if pending.is_empty() {
            ctx.event(
                Level::Info,
                EventKind::StepFinished,
                None,
                Some(key),
                format!("step '{key}': already done on its {} node(s)", nodes.len()),
                json!({"state": "done"}),
            );
            return Ok(ControlFlow::Continue(()));
        }
        if self.opts.noop {
            self.describe(step, key, &pending);
            return Ok(ControlFlow::Continue(()));
        }
        let failed = self.run_step(key, step, pending).await?;
        if !failed.is_empty() {
            self.failures.extend(failed);
            ctx.event(
                Level::Error,
                EventKind::StepFinished,
                None,
                Some(key),
                format!("step '{key}' failed; the step set stops here"),
                json!({"state": "failed"}),
            );
            return Ok(ControlFlow::Break(()));
        }
        if ctx.stopping() {
            return Ok(ControlFlow::Break(()));
        }
        ctx.event(
            Level::Info,
            EventKind::StepFinished,
            None,
            Some(key),
            format!("step '{key}' done"),
            json!({"state": "done"}),
        );
        Ok(ControlFlow::Continue(()))
    }

    /// The nodes not done with the step, each with its record (a fresh one when the step
    /// changed since, or never ran).
    fn pending(&self, step: &Step, key: &str, nodes: &[usize]) -> Vec<(usize, NodeStepState)> {
        let hash = step_hash(step);
        nodes
            .iter()
            .map(|&i| {
                let k = record_key(&self.set.name, key, self.resolver.name(i));
                let record = self
                    .state
                    .current(&k, &hash)
                    .cloned()
                    .filter(|r| r.commands.len() == step.commands.len());
                (
                    i,
                    record.unwrap_or_else(|| NodeStepState::ready(step, &hash, self.ctx.iteration)),
                )
            })
            .filter(|(_, r)| r.state != RunState::Done)
            .collect()
    }

    /// `--noop`: what the step would run on each pending node.
    fn describe(&mut self, step: &Step, key: &str, pending: &[(usize, NodeStepState)]) {
        for (i, record) in pending {
            let node = self.resolver.name(*i);
            for (cmd, cs) in step.commands.iter().zip(&record.commands) {
                if cs.state == RunState::Done {
                    continue;
                }
                let plugin = self.ctx.registry.get(&cmd.plugin).expect("checked");
                let verify = if cmd.verify_commands.is_empty() {
                    ""
                } else {
                    " (unless its verify commands pass)"
                };
                self.noop_lines.push(format!(
                    "{key}: {node}: {}: {}{verify}",
                    cmd.title,
                    plugin.describe(&effective(&self.defaults, node, cmd))
                ));
            }
        }
    }

    /// How the run ended, said in the log.
    fn finish(self) -> RunResult {
        let result = if self.opts.noop {
            RunResult::Noop {
                lines: self.noop_lines,
            }
        } else if !self.failures.is_empty() {
            RunResult::Failed {
                failures: self.failures,
            }
        } else if self.ctx.stopping() {
            RunResult::Stopped
        } else {
            RunResult::Done
        };
        let (level, word) = match &result {
            RunResult::Done | RunResult::Noop { .. } => (Level::Info, "done"),
            RunResult::Failed { .. } => (Level::Error, "failed"),
            RunResult::Stopped => (Level::Warn, "stopped"),
        };
        self.ctx.event(
            level,
            EventKind::RunFinished,
            None,
            None,
            format!("run {word}"),
            json!({"result": word}),
        );
        result
    }

    /// Runs one step on its pending nodes; returns the failures (`step: node: why`).
    async fn run_step(
        &self,
        key: &str,
        step: &Step,
        pending: Vec<(usize, NodeStepState)>,
    ) -> Result<Vec<String>, RunError> {
        let limits = Limits::of(self.ctx, step, pending.len());
        self.ctx.event(
            Level::Info,
            EventKind::StepStarted,
            None,
            Some(key),
            format!(
                "step '{key}' on {} node(s), {} at a time{}{}",
                pending.len(),
                limits.max_in_flight,
                if limits.limited_by_connections { " (max_ssh_connections)" } else { "" },
                if limits.canary { ", canary first" } else { "" }
            ),
            json!({"nodes": pending.len(), "commands": step.commands.len(), "max_in_flight": limits.max_in_flight, "max_per_role": limits.max_per_role, "canary": limits.canary}),
        );
        let mut queue: VecDeque<(usize, NodeStepState)> = pending.into();
        if limits.canary && queue.len() > 1 {
            let (i, record) = queue.pop_front().expect("non-empty");
            self.ctx.event(
                Level::Info,
                EventKind::Message,
                Some(self.resolver.name(i)),
                Some(key),
                format!("canary for step '{key}'"),
                json!({}),
            );
            let (_, result) = self.launch(key, step, i, record).await;
            if let Err(why) = result? {
                return Ok(vec![format!("{key}: {}: {why}", self.resolver.name(i))]);
            }
        }
        self.run_queue(key, step, queue, &limits).await
    }

    /// Runs the queued nodes, as many at a time as the limits let, until the queue is empty
    /// (or the run is stopped and the running ones are done).
    async fn run_queue(
        &self,
        key: &str,
        step: &Step,
        mut queue: VecDeque<(usize, NodeStepState)>,
        limits: &Limits,
    ) -> Result<Vec<String>, RunError> {
        let roles = &self.roles;
        let mut failures = Vec::new();
        let mut running: JoinSet<(usize, NodeResult)> = JoinSet::new();
        let mut per_role: HashMap<&str, usize> = HashMap::new();
        loop {
            while running.len() < limits.max_in_flight && !self.ctx.stopping() {
                let fits = |i: &usize| {
                    limits
                        .max_per_role
                        .is_none_or(|m| per_role.get(roles[*i].as_str()).copied().unwrap_or(0) < m)
                };
                let Some(at) = queue.iter().position(|(i, _)| fits(i)) else {
                    break;
                };
                let (i, record) = queue.remove(at).expect("found");
                *per_role.entry(roles[i].as_str()).or_insert(0) += 1;
                running.spawn(self.launch(key, step, i, record));
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
                failures.push(format!("{key}: {}: {why}", self.resolver.name(i)));
            }
        }
        Ok(failures)
    }

    /// A node's commands of the step as a task of their own, with the options in force
    /// for the node now (later steps may change the defaults).
    fn launch(
        &self,
        key: &str,
        step: &Step,
        i: usize,
        record: NodeStepState,
    ) -> impl Future<Output = (usize, NodeResult)> + Send + 'static {
        let ctx = self.ctx.clone();
        let node = ctx.plan.nodes[i].clone();
        let step = step.clone();
        let set = self.set.name.clone();
        let key = key.to_string();
        let opts: Vec<CommandOptions> = step
            .commands
            .iter()
            .map(|c| effective(&self.defaults, &node.name, c))
            .collect();
        let verify: Vec<Vec<CommandOptions>> = step
            .commands
            .iter()
            .map(|c| {
                c.verify_commands
                    .iter()
                    .map(|v| effective(&self.defaults, &node.name, v))
                    .collect()
            })
            .collect();
        async move {
            let result = run_node(&ctx, &set, &key, &step, &node, record, &opts, &verify).await;
            (i, result)
        }
    }
}

/// How many of a step's nodes run at once, and whether a canary goes first.
struct Limits {
    max_in_flight: usize,
    /// `max_in_flight` asked for more than the connections a run may keep open.
    limited_by_connections: bool,
    max_per_role: Option<usize>,
    canary: bool,
}

impl Limits {
    /// The step's run options over the plan's.
    fn of(ctx: &Ctx, step: &Step, pending: usize) -> Self {
        let options = step.run_options.or(&ctx.plan.run_options);
        let asked = match options.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT) {
            -1 => pending.max(1),
            0 => 1,
            n => usize::try_from(n).unwrap_or(1),
        };
        // No more nodes at once than connections may be open: the others would only wait for
        // one, each holding its task, and their commands marked running before they run.
        let max_in_flight = asked.min(ctx.ssh.max_connections());
        let max_per_role = options
            .max_per_role
            .filter(|n| *n > 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Limits {
            max_in_flight,
            limited_by_connections: max_in_flight < asked,
            max_per_role,
            canary: options.canary_host.unwrap_or(false),
        }
    }
}

/// `auto_reset`: when every node of every step of the set is done (not only those this run
/// selected), the set goes back to ready for its next run.
async fn auto_reset(
    ctx: &Ctx,
    set: &StepSet,
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
        Level::Info,
        EventKind::Message,
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
