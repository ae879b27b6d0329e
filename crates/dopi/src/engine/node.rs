//! One node's commands of one step, in order, each transition saved before the next: verify
//! commands that make a command unnecessary, the command, and what came of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dop_core::plan::{Command, Node, Step};
use dop_core::{EventKind, Level};
use dop_run::logs::NodeLog;
use dop_store::now_ms;
use serde_json::json;

use super::{Ctx, RunError};
use crate::plugin::{CommandContext, CommandOptions, CommandOutcome, Plugin};
use crate::state::{record_key, NodeStepState, RunState};

/// What running a node's commands of a step gives: `Ok(Err(why))` when the node failed.
pub(super) type NodeResult = Result<Result<(), String>, RunError>;

/// Runs a node's commands of a step, persisting every transition. `Ok(Err(why))` when the node
/// failed; `Ok(Ok(()))` when it is done or was stopped (left ready).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_node(
    ctx: &Arc<Ctx>,
    set: &str,
    key: &str,
    step: &Step,
    node: &Node,
    record: NodeStepState,
    options: &[CommandOptions],
    verify_options: &[Vec<CommandOptions>],
) -> NodeResult {
    let mut run = NodeRun {
        ctx,
        key,
        node,
        record_key: record_key(set, key, &node.name),
        log: ctx.log.node(&node.name),
        record,
    };
    run.record.iteration = ctx.iteration;
    for (ci, cmd) in step.commands.iter().enumerate() {
        if run.record.commands[ci].state == RunState::Done {
            continue;
        }
        if ctx.stopping() {
            break;
        }
        let plugin = ctx.registry.get(&cmd.plugin).expect("checked").clone();
        if !cmd.verify_commands.is_empty() && run.verified(cmd, &verify_options[ci]).await {
            run.skip_verified(ci, cmd).await?;
            continue;
        }
        run.mark_running(ci, cmd).await?;
        let started = Instant::now();
        let mut outcome = run
            .run_one(plugin, options[ci].clone(), cmd.plugin_timeout)
            .await;
        ctx.save_host_keys().await?;
        if outcome.success && cmd.verify_after_run && !run.confirmed(cmd, &verify_options[ci]).await
        {
            outcome.success = false;
            outcome.message = Some("the verify commands did not confirm the run".into());
        }
        match run.record_outcome(ci, cmd, &outcome, started).await? {
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

/// One node's run of a step: where its record is kept, and the record as it goes.
struct NodeRun<'a> {
    ctx: &'a Arc<Ctx>,
    /// The step's key.
    key: &'a str,
    node: &'a Node,
    record_key: String,
    log: Arc<NodeLog>,
    record: NodeStepState,
}

impl NodeRun<'_> {
    /// Runs one command (or verify command) with the plugin's timeout unless it has its own.
    async fn run_one(
        &self,
        plugin: Arc<dyn Plugin>,
        opts: CommandOptions,
        timeout: Option<i64>,
    ) -> CommandOutcome {
        let ctx = self.ctx;
        let cc = CommandContext {
            plan: &ctx.plan_name,
            node: self.node,
            step: self.key,
            options: &opts,
            timeout: Duration::from_secs(
                timeout
                    .and_then(|t| u64::try_from(t).ok())
                    .unwrap_or_else(|| plugin.default_timeout()),
            ),
            log: self.log.clone(),
            stop: ctx.stop.clone(),
            credentials: &ctx.plan.credentials,
            nodes: &ctx.plan.nodes,
            ssh: ctx.ssh.clone(),
            reach: &ctx.reach,
            limits: ctx.limits,
        };
        plugin.run(&cc).await
    }

    /// True when every verify command passes before the command runs: it need not run. A
    /// verify command of an unknown plugin does not pass.
    async fn verified(&self, cmd: &Command, options: &[CommandOptions]) -> bool {
        for (v, vo) in cmd.verify_commands.iter().zip(options) {
            let Some(vp) = self.ctx.registry.get(&v.plugin).cloned() else {
                return false;
            };
            if !self.run_one(vp, vo.clone(), v.plugin_timeout).await.success {
                return false;
            }
        }
        true
    }

    /// False when a verify command fails after the command ran (`verify_after_run`); one of
    /// an unknown plugin is passed over.
    async fn confirmed(&self, cmd: &Command, options: &[CommandOptions]) -> bool {
        for (v, vo) in cmd.verify_commands.iter().zip(options) {
            let Some(vp) = self.ctx.registry.get(&v.plugin).cloned() else {
                continue;
            };
            if !self.run_one(vp, vo.clone(), v.plugin_timeout).await.success {
                return false;
            }
        }
        true
    }

    /// Records the command done without running it: its verify commands passed.
    async fn skip_verified(&mut self, ci: usize, cmd: &Command) -> Result<(), RunError> {
        let c = &mut self.record.commands[ci];
        c.state = RunState::Done;
        c.message = Some("verify commands passed; not run".into());
        c.finished_ms = Some(now_ms());
        self.record.refresh();
        self.ctx.save(self.record_key.clone(), &self.record).await?;
        self.ctx.event(
            Level::Info,
            EventKind::CommandFinished,
            Some(&self.node.name),
            Some(self.key),
            format!("{}: verify commands passed, skipped", cmd.title),
            json!({"state": "done", "skipped": true}),
        );
        Ok(())
    }

    /// Records the command running before it starts, so that a run that dies leaves it
    /// `running` for the next run to recover.
    async fn mark_running(&mut self, ci: usize, cmd: &Command) -> Result<(), RunError> {
        let c = &mut self.record.commands[ci];
        c.state = RunState::Running;
        c.attempts += 1;
        c.started_ms = Some(now_ms());
        c.finished_ms = None;
        c.exit_status = None;
        c.message = None;
        self.record.refresh();
        self.ctx.save(self.record_key.clone(), &self.record).await?;
        self.ctx.event(
            Level::Info,
            EventKind::CommandStarted,
            Some(&self.node.name),
            Some(self.key),
            format!("starting {}", cmd.title),
            json!({"plugin": cmd.plugin, "attempt": self.record.commands[ci].attempts}),
        );
        Ok(())
    }

    /// Records what the command came to (secrets masked); returns the command's new state:
    /// done, failed, or ready again when a signal stopped it.
    async fn record_outcome(
        &mut self,
        ci: usize,
        cmd: &Command,
        outcome: &CommandOutcome,
        started: Instant,
    ) -> Result<RunState, RunError> {
        let masker = self.ctx.log.masker();
        let state = if outcome.success {
            RunState::Done
        } else if outcome.interrupted {
            RunState::Ready
        } else {
            RunState::Failed
        };
        let c = &mut self.record.commands[ci];
        c.state = state;
        c.finished_ms = Some(now_ms());
        c.exit_status = outcome.exit_status;
        c.output_tail = outcome
            .output_tail
            .iter()
            .map(|l| masker.mask(l).into_owned())
            .collect();
        c.message = match state {
            RunState::Ready => Some("stopped by a signal; it runs again on the next run".into()),
            _ => outcome
                .message
                .as_deref()
                .map(|m| masker.mask(m).into_owned()),
        };
        self.record.refresh();
        self.ctx.save(self.record_key.clone(), &self.record).await?;
        let secs = started.elapsed().as_secs_f64();
        let (level, word) = match state {
            RunState::Done => (Level::Info, "OK"),
            RunState::Ready => (Level::Warn, "STOPPED"),
            _ => (Level::Error, "FAILED"),
        };
        let why = outcome
            .message
            .clone()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        self.ctx.event(
            level,
            EventKind::CommandFinished,
            Some(&self.node.name),
            Some(self.key),
            format!("{} [{word}] in {secs:.1}s{why}", cmd.title),
            json!({"state": state.as_str(), "exit_status": outcome.exit_status, "seconds": secs}),
        );
        Ok(state)
    }
}
