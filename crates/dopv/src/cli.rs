//! dopv's own commands: `deploy`, `undeploy`, `refresh`, `sync` and `show`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use dop_cli::shown::field_value;
use dop_cli::store::{fail, open, Io};
use dop_cli::{print_json, LookupArgs, NodeFilterArgs, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use dop_core::Config;
use dop_run::logs::Echo;
use dop_store::{rfc3339, App, Store};
use serde_json::json;

use crate::driver::{self, word, DopvError, Operation, Report, RunOptions};
use crate::planner::{Action, ActionKind, Permissions, Source};
use crate::provider::ProviderOptions;
use crate::state::DopvState;

/// Exit status of `--detailed-exitcode` when changes are pending.
pub const EXIT_PENDING: u8 = 2;

/// What every acting command takes.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The stored plan.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// Show what would be done and why; change nothing.
    #[arg(long, short = 'n')]
    pub noop: bool,
    /// Print the result as JSON: actions with machine-readable reasons, outcomes, the state
    /// serial the actions were computed against.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when nothing is (or was) to do, 2 when changes are pending (held back, or not
    /// applied by --noop), 1 on errors.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Act only if the dopv state is still at this serial (the one a --noop printed).
    #[arg(long, value_name = "SERIAL")]
    pub expect_serial: Option<u64>,
    /// No progress lines on standard error (the logs still get everything).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Where the `local` provider keeps its nodes [default: <store-dir>/local].
    #[arg(
        long,
        value_name = "DIR",
        env = "DOP_LOCAL_DIR",
        hide_env_values = true
    )]
    pub local_dir: Option<PathBuf>,
    /// How long one cloud API request (OpenStack) may take before the node fails with
    /// "did not answer".
    #[arg(long, value_name = "SECONDS", env = "DOPV_API_TIMEOUT", default_value_t = ProviderOptions::API_TIMEOUT.as_secs())]
    pub api_timeout: u64,
    /// How long to wait for a cloud resource to reach a status (a server ACTIVE, a volume
    /// attached) before the node fails with the resource's last status.
    #[arg(long, value_name = "SECONDS", env = "DOPV_WAIT_TIMEOUT", default_value_t = ProviderOptions::WAIT_TIMEOUT.as_secs())]
    pub wait_timeout: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub filter: NodeFilterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// `sync PLAN`.
#[derive(Args, Clone, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Also destroy nodes removed from the plan, redeploy nodes whose change needs it, and
    /// delete data disks removed from the plan.
    #[arg(long)]
    pub destructive: bool,
    /// Also apply changes that reboot nodes.
    #[arg(long)]
    pub interruptive: bool,
}

/// `undeploy PLAN`.
#[derive(Args, Clone, Debug)]
pub struct UndeployArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Also delete the nodes' data disks (and drop them from the disk DB). Without it they are
    /// kept and attached again when the node is deployed again.
    #[arg(long, short = 'r')]
    pub rmdisk: bool,
}

/// `show PLAN`.
#[derive(Args, Clone, Debug)]
pub struct ShowArgs {
    /// The stored plan.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// Print JSON: per node the record, the drift and the pending plan changes.
    #[arg(long)]
    pub json: bool,
    /// Where the `local` provider keeps its nodes [default: <store-dir>/local].
    #[arg(
        long,
        value_name = "DIR",
        env = "DOP_LOCAL_DIR",
        hide_env_values = true
    )]
    pub local_dir: Option<PathBuf>,
}

fn provider_options(config: &Config, local_dir: &Option<PathBuf>) -> ProviderOptions {
    ProviderOptions {
        puppet_hiera_dir: Some(config.hiera_dir()),
        ..ProviderOptions::new(
            local_dir
                .clone()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| config.store_dir.join("local")),
        )
    }
}

/// Runs one of the acting commands.
pub fn run(operation: Operation, args: &RunArgs, config: &Config, io: &mut Io<'_>) -> u8 {
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
    let opts = RunOptions {
        operation,
        filter,
        noop: args.noop,
        settings: args.lookup.settings(config),
        log_dir: config.log_dir.clone(),
        echo: if args.quiet { Echo::Quiet } else { Echo::Lines },
        providers: ProviderOptions {
            api_timeout: std::time::Duration::from_secs(args.api_timeout.max(1)),
            wait_timeout: std::time::Duration::from_secs(args.wait_timeout.max(1)),
            ..provider_options(config, &args.local_dir)
        },
        expect_serial: args.expect_serial,
        limits: config.limits,
        handle_signals: true,
        stop: None,
        log: None,
        lock: None,
    };
    let runtime = match dop_run::blocking::runtime() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(io.err, "error: cannot start the run's threads: {e}");
            return EXIT_FAILURE;
        }
    };
    let report = runtime.block_on(driver::run(Arc::new(store), &args.plan, &opts));
    // After a hard stop, blocking provider calls may still be under way: they are not waited
    // for (a libvirtd that hangs must not hold the operator's terminal).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let report = match report {
        Ok(r) => r,
        Err(DopvError::Store(e)) => return fail(io, &e),
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let status = if report.failed() {
        EXIT_FAILURE
    } else if report.stopped {
        driver::EXIT_STOPPED
    } else if args.detailed_exitcode && report.pending() {
        EXIT_PENDING
    } else {
        EXIT_OK
    };
    if args.json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["result"] = json!(result_word(&report));
        print_json(io.out, &value);
    } else {
        render(&report, io.out);
    }
    if report.failed() {
        let _ = writeln!(
            io.err,
            "error: {} failed on some nodes (details in {}); run `dopv sync {}` to finish what \
             was started",
            report.operation,
            report.log_dir.display(),
            report.plan
        );
    }
    status
}

fn result_word(report: &Report) -> &'static str {
    if report.failed() {
        "failed"
    } else if report.noop {
        "noop"
    } else {
        "done"
    }
}

fn symbol(action: ActionKind) -> &'static str {
    match action {
        ActionKind::Create => "+",
        ActionKind::Adopt => "=",
        ActionKind::Update => "~",
        ActionKind::Redeploy => "-/+",
        ActionKind::Destroy => "-",
    }
}

fn render_action(a: &Action, out: &mut dyn Write) {
    let mut line = format!(
        "  {:<3} {:<8} {}  ({})",
        symbol(a.action),
        word(&a.action),
        a.node,
        word(&a.reason)
    );
    if !a.held_back.is_empty() {
        let flags: Vec<String> = a.held_back.iter().map(ToString::to_string).collect();
        line.push_str(&format!("  HELD BACK: needs {}", flags.join(" and ")));
    }
    if a.out_of_scope {
        line.push_str("  pending: for `dopv sync`");
    }
    let _ = writeln!(out, "{line}");
    for c in &a.changes {
        let source = match c.source {
            Source::Plan => "plan",
            Source::Drift => "drift",
        };
        let _ = writeln!(
            out,
            "        {}: {} -> {}  [{}, {}{}]",
            c.field,
            field_value(&c.field, &c.from),
            field_value(&c.field, &c.to),
            source,
            word(&c.kind),
            if c.destructive { ", destructive" } else { "" }
        );
    }
}

/// Renders a report for people.
pub fn render(report: &Report, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "dopv {}{} '{}': iteration {}, state serial {}",
        report.operation,
        if report.noop { " --noop" } else { "" },
        report.plan,
        report.iteration,
        report.serial
    );
    if report.actions.is_empty() {
        let _ = writeln!(out, "  nothing to do: every selected node is as planned");
    }
    for a in &report.actions {
        render_action(a, out);
    }
    if !report.in_sync.is_empty() {
        let _ = writeln!(out, "  in sync: {}", report.in_sync.join(", "));
    }
    for o in report.unreadable.iter().chain(&report.outcomes) {
        match &o.error {
            Some(e) => {
                let _ = writeln!(out, "{}: {} {}: {e}", o.result, word(&o.action), o.node);
            }
            None => {
                let _ = writeln!(out, "{}: {} {}", o.result, word(&o.action), o.node);
            }
        }
    }
    let count = |k: ActionKind| {
        report
            .actions
            .iter()
            .filter(|a| a.action == k && a.runs())
            .count()
    };
    let held = report
        .actions
        .iter()
        .filter(|a| !a.held_back.is_empty())
        .count();
    let pending = report.actions.iter().filter(|a| a.out_of_scope).count();
    let _ = writeln!(
        out,
        "{}: {} create, {} update, {} redeploy, {} destroy; {} held back, {} pending",
        if report.noop { "would do" } else { "summary" },
        count(ActionKind::Create) + count(ActionKind::Adopt),
        count(ActionKind::Update),
        count(ActionKind::Redeploy),
        count(ActionKind::Destroy),
        held,
        pending
    );
    if report.noop && !report.actions.is_empty() {
        let _ = writeln!(
            out,
            "to apply exactly this state: add --expect-serial {} (refused if the state moved on)",
            report.serial
        );
    }
}

/// Runs `sync`.
pub fn sync(args: &SyncArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    run(
        Operation::Sync(Permissions {
            destructive: args.destructive,
            interruptive: args.interruptive,
        }),
        &args.run,
        config,
        io,
    )
}

/// Runs `undeploy`.
pub fn undeploy(args: &UndeployArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    run(
        Operation::Undeploy {
            rmdisk: args.rmdisk,
        },
        &args.run,
        config,
        io,
    )
}

/// One node in `show`.
#[derive(serde::Serialize)]
struct ShownNode {
    node: String,
    in_plan: bool,
    /// in_sync, pending, drifted or unknown.
    state: crate::standing::SyncState,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<crate::state::Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iteration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refreshed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actual: Option<crate::actual::Actual>,
    drift: Vec<crate::actual::Difference>,
    pending: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `show`: desired against actual per node, from the state (as of the last refresh).
pub fn show(args: &ShowArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    match shown(&store, args, config) {
        Ok((iteration, serial, nodes)) => {
            if args.json {
                print_json(
                    io.out,
                    &json!({"plan": args.plan, "iteration": iteration, "serial": serial, "nodes": nodes}),
                );
                return EXIT_OK;
            }
            let _ = writeln!(
                io.out,
                "plan '{}': iteration {iteration}, dopv state serial {serial}",
                args.plan
            );
            let _ = writeln!(
                io.out,
                "{:<28} {:<11} {:<5} {:<10} {:<15} {:<8} DRIFT / PENDING",
                "NODE", "STATUS", "POWER", "ITERATION", "GENERATION", "STATE"
            );
            let color = dop_cli::colour(&std::io::stdout());
            for n in &nodes {
                let status = n
                    .status
                    .map_or_else(|| "not deployed".to_string(), |s| word(&s));
                let power = n
                    .actual
                    .as_ref()
                    .and_then(|a| a.power)
                    .map_or("-".to_string(), |p| word(&p));
                let mut notes: Vec<String> = n
                    .drift
                    .iter()
                    .map(|d| {
                        format!(
                            "drift {}: {} != {}",
                            d.field,
                            field_value(&d.field, &d.actual),
                            field_value(&d.field, &d.expected)
                        )
                    })
                    .collect();
                if !n.pending.is_empty() {
                    notes.push(format!("pending: {}", n.pending.join(", ")));
                }
                if !n.in_plan {
                    notes.push("removed from the plan".into());
                }
                if let Some(e) = &n.read_error {
                    notes.push(format!("unknown: {e}"));
                }
                if let Some(e) = &n.error {
                    notes.push(format!("error: {e}"));
                }
                let mut note = notes.join("; ");
                if color && !n.drift.is_empty() {
                    note = format!("\x1b[33m{note}\x1b[0m");
                }
                let _ = writeln!(
                    io.out,
                    "{:<28} {:<11} {:<5} {:<10} {:<15} {:<8} {}",
                    n.node,
                    status,
                    power,
                    n.iteration.map_or("-".into(), |i| i.to_string()),
                    n.generation.map_or("-".into(), |g| g.to_string()),
                    n.state.name(),
                    note
                );
            }
            EXIT_OK
        }
        Err(DopvError::Store(e)) => fail(io, &e),
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            EXIT_FAILURE
        }
    }
}

fn shown(
    store: &Store,
    args: &ShowArgs,
    config: &Config,
) -> Result<(u64, u64, Vec<ShownNode>), DopvError> {
    let iteration = store.iteration(&args.plan, None)?;
    let plan = iteration.plan;
    let state =
        DopvState::from_records(&store.state(&args.plan, App::Dopv)?).map_err(|reason| {
            DopvError::State {
                plan: args.plan.clone(),
                reason,
            }
        })?;
    let options = provider_options(config, &args.local_dir);
    let nodes = crate::standing::standings(
        &args.plan,
        &plan,
        &state,
        &options,
        crate::Permissions::default(),
    )
    .into_iter()
    .map(|standing| {
        let record = state.nodes.get(&standing.node);
        ShownNode {
            node: standing.node,
            in_plan: standing.in_plan,
            state: standing.state,
            status: record.map(|r| r.status),
            generation: record.map(|r| r.generation),
            iteration: record.map(|r| r.iteration),
            refreshed: standing.refreshed_ms.map(rfc3339),
            actual: record.and_then(|r| r.actual.clone()),
            drift: standing.drift,
            pending: standing.pending,
            read_error: standing.read_error,
            error: record.and_then(|r| r.error.clone()),
        }
    })
    .collect();
    Ok((iteration.info.number, state.serial, nodes))
}
