//! dopi's own commands: `run`, `reset`, `show`, and the plugin checks that `validate`, `add`
//! and `update` apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use dop_cli::store::{fail, open, Io};
use dop_cli::{print_json, LookupArgs, NodeFilterArgs, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use dop_core::{Config, Diagnostic, NodeFacts, Plan, Resolver, Severity};
use dop_run::logs::Echo;
use dop_store::{rfc3339, App};
use serde_json::json;

use crate::engine::{self, Redeployed, RunError, RunOptions, RunResult};
use crate::plugin::Registry;
use crate::reset::{self, ResetError, ResetOptions};
use crate::state::{PlanState, RunState};

/// Exit status of a run stopped by a signal before it finished.
pub const EXIT_STOPPED: u8 = 4;

/// `run PLAN`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The stored plan.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// The step set to run.
    #[arg(
        long,
        short = 's',
        default_value = "default",
        alias = "step_set",
        alias = "step-set"
    )]
    pub stepset: String,
    /// Show what would run on which node, in order; run and change nothing.
    #[arg(long, short = 'n')]
    pub noop: bool,
    /// Print the outcome as JSON (progress still goes to standard error).
    #[arg(long)]
    pub json: bool,
    /// No progress on standard error (the logs still get everything).
    #[arg(long, short = 'q', conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also show every output line of every command on standard error.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Nodes dopv redeployed since dopi last ran on them: refuse to run (default), reset their
    /// step state so their steps run again, or ignore (keep it). Their old host keys are
    /// forgotten either way.
    #[arg(long, value_enum, default_value = "refuse", value_name = "WHAT")]
    pub redeployed: RedeployedArg,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub filter: NodeFilterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// `--redeployed`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedeployedArg {
    /// Refuse to run.
    Refuse,
    /// Reset their step state.
    Reset,
    /// Keep their step state.
    Ignore,
}

/// `update PLANFILE [--clear|--ignore]`: what the new iteration does to the step state.
#[derive(Args, Clone, Debug, Default)]
pub struct UpdateStateArgs {
    /// Start the plan over: remove its step state, so every step is ready on every node.
    /// With a stored plan's name instead of a file: on its latest iteration.
    #[arg(long, short = 'c', conflicts_with = "ignore")]
    pub clear: bool,
    /// Keep the state of steps whose definition changed (their done work is not run again;
    /// commands matched by position). Without it a changed step is ready again.
    #[arg(long, short = 'i')]
    pub ignore: bool,
}

impl dop_cli::store::StateChange for UpdateStateArgs {
    fn changes_state(&self) -> bool {
        self.clear || self.ignore
    }

    fn apply(
        &self,
        store: &dop_store::Store,
        lock: &dop_store::PlanLock,
        plan: &dop_core::Plan,
    ) -> Result<String, dop_store::StoreError> {
        let choice = match self.clear {
            true => crate::update::StateChoice::Clear,
            false => crate::update::StateChoice::Keep,
        };
        choice.apply(store, lock, plan)
    }
}

/// `reset PLAN`.
#[derive(Args, Clone, Debug)]
pub struct ResetArgs {
    /// The stored plan.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// Only this step set.
    #[arg(long, short = 's', alias = "step_set", alias = "step-set")]
    pub stepset: Option<String>,
    /// Only this step: its name, or its number (from 1) in the step set.
    #[arg(long, value_name = "N|NAME")]
    pub step: Option<String>,
    /// Reset done work too, not only failed and interrupted work.
    #[arg(long, short = 'f')]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub filter: NodeFilterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// `show PLAN`.
#[derive(Args, Clone, Debug)]
pub struct ShowArgs {
    /// The stored plan.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// Only this step set.
    #[arg(long, short = 's', alias = "step_set", alias = "step-set")]
    pub stepset: Option<String>,
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show every command of every node, not only those that did not finish.
    #[arg(long, short = 'd')]
    pub detailed: bool,
    /// Redraw every second until interrupted (for a run going on in another process).
    #[arg(long, short = 'w', alias = "follow")]
    pub watch: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// `forget-host-key PLAN NODE...`.
#[derive(Args, Clone, Debug)]
pub struct ForgetHostKeyArgs {
    /// The stored plan.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// The nodes whose recorded SSH host key is forgotten (the next connection records the
    /// key it finds).
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

/// Runs `forget-host-key`.
pub fn forget_host_key(args: &ForgetHostKeyArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    let result = (|| {
        let lock = store.lock(&args.plan, "dopi forget-host-key")?;
        let known = store.state(&args.plan, App::Hosts)?;
        let unknown: Vec<&String> = args
            .nodes
            .iter()
            .filter(|n| !known.records.contains_key(*n))
            .collect();
        let changes: Vec<(String, Option<serde_json::Value>)> =
            args.nodes.iter().map(|n| (n.clone(), None)).collect();
        store.write_state(&lock, App::Hosts, &changes, None)?;
        Ok::<_, dop_store::StoreError>(unknown.len())
    })();
    match result {
        Ok(unknown) => {
            let forgotten = args.nodes.len() - unknown;
            let _ = writeln!(
                io.out,
                "forgot the host key of {forgotten} node(s) of plan '{}'",
                args.plan
            );
            EXIT_OK
        }
        Err(e) => fail(io, &e),
    }
}

/// dopi's checks of a plan: every command's plugin exists and its parameters are right.
pub fn plugin_check(plan: &Plan) -> Vec<Diagnostic> {
    engine::check_commands(plan, &Registry::local())
        .into_iter()
        .map(|(path, message, warning)| Diagnostic {
            file: None,
            path,
            line: None,
            column: None,
            message,
            severity: if warning {
                Severity::Warning
            } else {
                Severity::Error
            },
        })
        .collect()
}

/// Runs `run`.
pub fn run(args: &RunArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let filter = match args.filter.to_filter() {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let store = match open(config, io) {
        Ok(s) => Arc::new(s),
        Err(status) => return status,
    };
    let opts = RunOptions {
        step_set: args.stepset.clone(),
        filter,
        noop: args.noop,
        settings: args.lookup.settings(config),
        log_dir: config.log_dir.clone(),
        echo: match (args.quiet, args.verbose) {
            (true, _) => Echo::Quiet,
            (_, true) => Echo::Verbose,
            // A status line updated in place on a terminal that can redraw, plain lines
            // otherwise.
            _ if dop_cli::redraws(&std::io::stderr()) => Echo::Progress,
            _ => Echo::Lines,
        },
        handle_signals: true,
        connect_timeout: config.connection_check_timeout,
        max_connections: config.max_ssh_connections,
        limits: config.limits,
        redeployed: match args.redeployed {
            RedeployedArg::Refuse => Redeployed::Refuse,
            RedeployedArg::Reset => Redeployed::Reset,
            RedeployedArg::Ignore => Redeployed::Ignore,
        },
        stop: None,
        log: None,
        lock: None,
    };
    let progress = opts.echo == Echo::Progress;
    let runtime = match dop_run::blocking::runtime() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(io.err, "error: cannot start the run's threads: {e}");
            return EXIT_FAILURE;
        }
    };
    let report = runtime.block_on(engine::run(
        store.clone(),
        &args.plan,
        &opts,
        &Registry::local(),
    ));
    drop(runtime);
    if progress {
        eprintln!();
    }
    let report = match report {
        Ok(r) => r,
        Err(RunError::Store(e)) => return fail(io, &e),
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let (word, status) = match &report.result {
        RunResult::Done => ("done", EXIT_OK),
        RunResult::Noop { .. } => ("noop", EXIT_OK),
        RunResult::Failed { .. } => ("failed", EXIT_FAILURE),
        RunResult::Stopped => ("stopped", EXIT_STOPPED),
    };
    if args.json {
        let (failures, lines) = match &report.result {
            RunResult::Failed { failures } => (failures.clone(), Vec::new()),
            RunResult::Noop { lines } => (Vec::new(), lines.clone()),
            _ => (Vec::new(), Vec::new()),
        };
        print_json(
            io.out,
            &json!({
                "plan": args.plan, "step_set": args.stepset, "result": word,
                "execution_id": report.execution_id, "log_dir": report.log_dir,
                "failures": failures, "noop": lines, "recovered": report.recovered,
                "log_lines_lost": report.log_lines_lost,
            }),
        );
        return status;
    }
    if report.log_lines_lost {
        let _ = writeln!(
            io.err,
            "warning: some lines of this run's log in {} are missing: writing them failed",
            report.log_dir.display()
        );
    }
    if report.recovered > 0 {
        let _ = writeln!(
            io.out,
            "{} command(s) interrupted by an earlier run were put back to ready",
            report.recovered
        );
    }
    match &report.result {
        RunResult::Noop { lines } => {
            if lines.is_empty() {
                let _ = writeln!(io.out, "nothing would run: every selected node is done");
            }
            for l in lines {
                let _ = writeln!(io.out, "would run: {l}");
            }
            return status;
        }
        RunResult::Failed { failures } => {
            for f in failures {
                let _ = writeln!(io.out, "failed: {f}");
            }
        }
        _ => {}
    }
    let _ = writeln!(
        io.out,
        "run {word}: plan '{}', step set '{}'; logs in {}",
        args.plan,
        args.stepset,
        report.log_dir.display()
    );
    let show = ShowArgs {
        plan: args.plan.clone(),
        stepset: Some(args.stepset.clone()),
        json: false,
        detailed: false,
        watch: false,
        lookup: args.lookup.clone(),
    };
    let _ = render_show(&show, config, &store, io);
    match (status, &report.result) {
        (EXIT_FAILURE, _) => {
            let _ = writeln!(
                io.err,
                "error: the run failed; fix the cause and run `dopi run {}` again: failed commands \
                 run again, done ones do not",
                args.plan
            );
        }
        (_, RunResult::Stopped) => {
            let _ = writeln!(
                io.err,
                "the run was stopped; run it again to continue where it stopped"
            );
        }
        _ => {}
    }
    status
}

/// Runs `reset`.
pub fn reset(args: &ResetArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let filter = match args.filter.to_filter() {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    let opts = ResetOptions {
        step_set: args.stepset.clone(),
        step: args.step.clone(),
        filter,
        force: args.force,
    };
    match reset::reset(&store, &args.plan, &opts, &args.lookup.settings(config)) {
        Ok(n) => {
            let _ = writeln!(io.out, "reset {n} node record(s) of plan '{}'", args.plan);
            EXIT_OK
        }
        Err(ResetError::Store(e)) => fail(io, &e),
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            EXIT_FAILURE
        }
    }
}

/// Runs `show`.
pub fn show(args: &ShowArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    if !args.watch {
        return render_show(args, config, &store, io);
    }
    loop {
        // Clear the screen, then draw; Ctrl-C ends it.
        let _ = write!(io.out, "\x1b[2J\x1b[H");
        let status = render_show(args, config, &store, io);
        let _ = io.out.flush();
        if status != EXIT_OK {
            return status;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn render_show(args: &ShowArgs, config: &Config, store: &dop_store::Store, io: &mut Io<'_>) -> u8 {
    let result = (|| -> Result<u8, dop_store::StoreError> {
        let iteration = store.iteration(&args.plan, None)?;
        let state = PlanState::from_records(&store.state(&args.plan, App::Dopi)?);
        let holder = store.lock_holder(&args.plan);
        let plan = &iteration.plan;
        let settings = args.lookup.settings(config);
        let resolver = match Resolver::new(plan, &settings) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(io.err, "error: {e}");
                return Ok(EXIT_FAILURE);
            }
        };
        let sets: Vec<_> = plan
            .step_sets
            .iter()
            .filter(|s| args.stepset.as_ref().is_none_or(|n| *n == s.name))
            .collect();
        if let Some(name) = args.stepset.as_ref().filter(|_| sets.is_empty()) {
            let _ = writeln!(
                io.err,
                "error: plan '{}' has no step set '{name}'",
                args.plan
            );
            return Ok(EXIT_FAILURE);
        }
        let older: Vec<u64> = state
            .records
            .values()
            .map(|r| r.iteration)
            .filter(|i| *i > 0 && *i < iteration.info.number)
            .collect();
        let views: Vec<_> = sets
            .iter()
            .map(|set| {
                let view = state.step_set_view(set, |step| {
                    step.filter
                        .select(&resolver)
                        .nodes
                        .iter()
                        .map(|&i| resolver.name(i).to_string())
                        .collect()
                });
                (set.name.clone(), view)
            })
            .collect();
        if args.json {
            let step_sets: Vec<_> = views
                .iter()
                .map(|(name, steps)| {
                    let steps: Vec<_> = steps
                        .iter()
                        .map(|(key, nodes)| {
                            let state = RunState::aggregate(nodes.iter().map(|(_, r)| r.state));
                            let nodes: BTreeMap<&str, _> =
                                nodes.iter().map(|(n, r)| (n.as_str(), r)).collect();
                            json!({"name": key, "state": state, "nodes": nodes})
                        })
                        .collect();
                    let state = RunState::aggregate(
                        steps
                            .iter()
                            .filter_map(|s| serde_json::from_value(s["state"].clone()).ok()),
                    );
                    json!({"name": name, "state": state, "steps": steps})
                })
                .collect();
            print_json(
                io.out,
                &json!({
                    "plan": plan.name, "iteration": iteration.info, "serial": state.serial,
                    "locked_by": holder, "step_sets": step_sets,
                }),
            );
            return Ok(EXIT_OK);
        }
        let _ = writeln!(
            io.out,
            "plan '{}': iteration {} stored {}, {} nodes, state serial {}",
            plan.name,
            iteration.info.number,
            rfc3339(iteration.info.time_ms),
            plan.nodes.len(),
            state.serial
        );
        if let Some(h) = &holder {
            let _ = writeln!(io.out, "locked by {h}");
        }
        if let Some(oldest) = older.iter().min() {
            let _ = writeln!(
                io.out,
                "the state was written under iteration {oldest}; steps changed since (`dopi diff {} --from {oldest}`) are ready again",
                plan.name
            );
        }
        for (name, steps) in &views {
            let set_state = RunState::aggregate(
                steps
                    .iter()
                    .flat_map(|(_, n)| n.iter().map(|(_, r)| r.state)),
            );
            let _ = writeln!(io.out, "[{}] step set '{name}'", set_state.as_str());
            for (i, (key, nodes)) in steps.iter().enumerate() {
                let step_state = RunState::aggregate(nodes.iter().map(|(_, r)| r.state));
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for (_, r) in nodes {
                    *counts.entry(r.state.as_str()).or_insert(0) += 1;
                }
                let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                let _ = writeln!(
                    io.out,
                    "  [{}] {}. {key}: {} node(s): {}",
                    step_state.as_str(),
                    i + 1,
                    nodes.len(),
                    counts.join(", ")
                );
                for (node, record) in nodes {
                    let interesting = args.detailed
                        || !matches!(record.state, RunState::Done | RunState::Ready)
                        || record
                            .commands
                            .iter()
                            .any(|c| c.message.is_some() && c.state != RunState::Done);
                    if !interesting {
                        continue;
                    }
                    let _ = writeln!(io.out, "      [{}] {node}", record.state.as_str());
                    for c in &record.commands {
                        let exit = c
                            .exit_status
                            .map(|e| format!(", exit {e}"))
                            .unwrap_or_default();
                        let message = c
                            .message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default();
                        let _ = writeln!(
                            io.out,
                            "          [{}] {} (attempts {}{exit}){message}",
                            c.state.as_str(),
                            c.title,
                            c.attempts
                        );
                    }
                }
            }
        }
        Ok(EXIT_OK)
    })();
    result.unwrap_or_else(|e| fail(io, &e))
}
