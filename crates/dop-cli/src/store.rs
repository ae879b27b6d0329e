//! The plan commands, one implementation for every tool: `add`, `update`, `list`, `remove`,
//! `versions`, `diff`, `export`, and `import-store`.

use std::io::Write;
use std::path::PathBuf;

use crate::{add_checks, print_json, LookupArgs, PlanCheck, EXIT_FAILURE, EXIT_LOCKED, EXIT_OK};
use clap::{Args, Subcommand};
use dop_core::{load_file, Config};
use serde_json::json;

use dop_core::time::rfc3339;
use dop_store::StoreError;
use dop_store::{Store, Stored};

/// The commands that manage stored plans. `U` is what the tool's `update` may do to the tool's
/// own state with the new iteration (dopi: [`UpdateState`] from `--clear` and `--ignore`).
#[derive(Subcommand, Clone, Debug)]
pub enum PlanCommand<U: UpdateState = NoStateChoice> {
    /// Store a new plan (validated first; its node names must not belong to another plan).
    Add(AddArgs),
    /// Store a new iteration of a plan and show what changed (an unchanged plan is a no-op).
    Update(UpdateArgs<U>),
    /// List the stored plans.
    List(JsonArg),
    /// Remove a plan and its iterations (and its state, unless --keep-state).
    Remove(RemoveArgs),
    /// List the stored iterations of a plan.
    Versions(PlanArg),
    /// Show what changed between two iterations of a plan (default: the last two).
    Diff(DiffArgs),
    /// Print the text of a stored iteration (default: the latest).
    Export(ExportArgs),
}

/// `--json`.
#[derive(Args, Clone, Debug)]
pub struct JsonArg {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// A stored plan's name and `--json`.
#[derive(Args, Clone, Debug)]
pub struct PlanArg {
    /// The plan's name.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `add PLANFILE [--force]`.
#[derive(Args, Clone, Debug)]
pub struct AddArgs {
    /// The plan file (includes are expanded and stored expanded).
    #[arg(value_name = "PLANFILE")]
    pub plan_file: PathBuf,
    /// If a plan of this name is stored, store this as its next iteration instead of refusing.
    #[arg(long, short = 'f', alias = "update")]
    pub force: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// `update PLANFILE`.
#[derive(Args, Clone, Debug)]
pub struct UpdateArgs<U: UpdateState = NoStateChoice> {
    /// The plan file.
    #[arg(value_name = "PLANFILE")]
    pub plan_file: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: U,
}

/// The `update` flags of a tool that changes its own state with a new iteration: clap
/// arguments that are a [`StateChange`].
pub trait UpdateState: StateChange + Args + Clone + std::fmt::Debug {}

impl<T: StateChange + Args + Clone + std::fmt::Debug> UpdateState for T {}

/// What a tool's `plan update` does to the tool's own state along with the new iteration.
pub trait StateChange {
    /// True when the state changes with this update: the new iteration is then stored and the
    /// state changed within one hold of the plan's run lock, so that no run comes between.
    fn changes_state(&self) -> bool;

    /// Changes the state of the plan whose new iteration `plan` is (the lock is held); returns
    /// a line for people saying what changed.
    fn apply(
        &self,
        store: &Store,
        lock: &dop_store::PlanLock,
        plan: &dop_core::Plan,
    ) -> Result<String, StoreError>;
}

/// A tool whose state reconciles itself with the newest iteration (dopv compares every node
/// with it at each command): its `update` has no state options.
#[derive(Args, Clone, Debug, Default)]
pub struct NoStateChoice {}

impl StateChange for NoStateChoice {
    fn changes_state(&self) -> bool {
        false
    }

    fn apply(
        &self,
        _: &Store,
        _: &dop_store::PlanLock,
        _: &dop_core::Plan,
    ) -> Result<String, StoreError> {
        Ok(String::new())
    }
}

/// `remove PLAN`.
#[derive(Args, Clone, Debug)]
pub struct RemoveArgs {
    /// The plan's name.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// Keep the dopi and dopv state, for a plan added again under this name.
    #[arg(long, alias = "keep_state")]
    pub keep_state: bool,
    /// Remove even though dopv still has deployed nodes of the plan (they are forgotten, not
    /// undeployed).
    #[arg(long)]
    pub force: bool,
}

/// `diff PLAN [--from N] [--to M]`.
#[derive(Args, Clone, Debug)]
pub struct DiffArgs {
    /// The plan's name.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// The older iteration [default: the one before --to].
    #[arg(long, value_name = "N")]
    pub from: Option<u64>,
    /// The newer iteration [default: the latest].
    #[arg(long, value_name = "M")]
    pub to: Option<u64>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `export PLAN [--version N]`.
#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// The plan's name.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    /// The iteration [default: the latest].
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
}

/// `import-store DIR`: plans and state of an original DOP store.
#[derive(Args, Clone, Debug)]
pub struct ImportArgs {
    /// The original store directory (its plan_store_dir, e.g. /var/lib/dop/cache).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// Output streams of a command.
pub struct Io<'a> {
    /// Data: the command's result.
    pub out: &'a mut dyn Write,
    /// Findings and messages.
    pub err: &'a mut dyn Write,
}

/// Reports a store error and gives its exit status (3 for a locked plan or busy store).
pub fn fail(io: &mut Io<'_>, e: &StoreError) -> u8 {
    let _ = writeln!(io.err, "error: {e}");
    match e {
        StoreError::Locked { .. } | StoreError::Busy { .. } => EXIT_LOCKED,
        _ => EXIT_FAILURE,
    }
}

fn json_out(io: &mut Io<'_>, value: &serde_json::Value) {
    print_json(io.out, value);
}

/// Opens the configured store (PostgreSQL when `store_url` is set, sled in `store_dir`
/// otherwise), or reports why not.
pub fn open(config: &Config, io: &mut Io<'_>) -> Result<Store, u8> {
    Store::open_at(&config.store_dir, config.store_url.as_deref()).map_err(|e| fail(io, &e))
}

/// What a tool does after a plan command changed the stored plans (the tools write Puppet's
/// Hiera data: `dop_puppet::commands::after_plans_changed`).
pub type AfterChange<'a> = &'a dyn Fn(&Store, &Config, &mut Io<'_>);

/// Runs a plan command; returns the exit status. `check` adds the tool's own checks of a plan
/// before it is stored (dopi: its plugins); `changed` runs after a command that wrote.
pub fn run<U: UpdateState>(
    command: &PlanCommand<U>,
    config: &Config,
    check: PlanCheck<'_>,
    changed: AfterChange<'_>,
    io: &mut Io<'_>,
) -> u8 {
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    let result = match command {
        PlanCommand::Add(a) => store_plan(
            &store,
            config,
            check,
            io,
            &a.plan_file,
            &a.lookup,
            a.json,
            Storing::Add { force: a.force },
        ),
        PlanCommand::Update(u)
            if u.state.changes_state()
                && !u.plan_file.exists()
                && u.plan_file.to_str().is_some_and(|n| store.entry(n).is_ok()) =>
        {
            update_state_only(&store, io, &u.plan_file.to_string_lossy(), &u.state, u.json)
        }
        PlanCommand::Update(u) => store_plan(
            &store,
            config,
            check,
            io,
            &u.plan_file,
            &u.lookup,
            u.json,
            Storing::Update(&u.state),
        ),
        PlanCommand::List(a) => list(&store, io, a.json),
        PlanCommand::Remove(r) => store.remove(&r.plan, r.keep_state, r.force).map(|()| {
            let kept = if r.keep_state {
                " (its state is kept)"
            } else {
                ""
            };
            let _ = writeln!(io.out, "removed plan '{}'{kept}", r.plan);
            EXIT_OK
        }),
        PlanCommand::Versions(v) => versions(&store, io, &v.plan, v.json),
        PlanCommand::Diff(d) => diff(&store, io, d),
        PlanCommand::Export(e) => store.iteration(&e.plan, e.version).map(|it| {
            let _ = io.out.write_all(it.text.as_bytes());
            EXIT_OK
        }),
    };
    let writes = matches!(
        command,
        PlanCommand::Add(_) | PlanCommand::Update(_) | PlanCommand::Remove(_)
    );
    match result {
        Ok(status) => {
            if writes {
                changed(&store, config, io);
            }
            status
        }
        Err(e) => fail(io, &e),
    }
}

/// How [`store_plan`] stores: as `add` (with `--force`: or as the next iteration) or `update`
/// (with what the tool does to its state).
enum Storing<'a> {
    Add { force: bool },
    Update(&'a dyn StateChange),
}

#[allow(clippy::too_many_arguments)]
fn store_plan(
    store: &Store,
    config: &Config,
    check: PlanCheck<'_>,
    io: &mut Io<'_>,
    file: &std::path::Path,
    lookup: &LookupArgs,
    json: bool,
    storing: Storing<'_>,
) -> Result<u8, StoreError> {
    let mut loaded = load_file(file, &lookup.settings(config));
    add_checks(&mut loaded, file, check);
    for d in &loaded.diagnostics {
        let _ = writeln!(io.err, "{d}\n");
    }
    let (Some(plan), Some(expanded)) = (&loaded.plan, &loaded.expanded) else {
        return Err(StoreError::InvalidPlan {
            errors: loaded.errors().count(),
        });
    };
    let mut state_change = None;
    let stored = match storing {
        Storing::Add { force } => store.add(&expanded.text, plan, Some(file), force)?,
        Storing::Update(state) if state.changes_state() => {
            let lock = store.lock(&plan.name, "update")?;
            let stored = store.update_holding(&lock, &expanded.text, plan, Some(file))?;
            state_change = Some(state.apply(store, &lock, plan)?);
            stored
        }
        Storing::Update(_) => store.update(&expanded.text, plan, Some(file))?,
    };
    let (status, info) = match &stored {
        Stored::New(info) if info.number == 1 => ("added", info),
        Stored::New(info) => ("updated", info),
        Stored::Unchanged(info) => ("unchanged", info),
    };
    let diff = match &stored {
        Stored::New(info) if info.number > 1 => Some(store.diff(&plan.name, None, None)?.2),
        _ => None,
    };
    if json {
        json_out(
            io,
            &json!({
                "plan": plan.name, "status": status, "iteration": info, "diff": diff,
                "state": state_change,
            }),
        );
        return Ok(EXIT_OK);
    }
    let _ = match status {
        "added" => writeln!(
            io.out,
            "added plan '{}' as iteration 1 ({} node{})",
            plan.name,
            info.nodes,
            if info.nodes == 1 { "" } else { "s" }
        ),
        "updated" => writeln!(
            io.out,
            "updated plan '{}' to iteration {}:",
            plan.name, info.number
        ),
        _ => writeln!(
            io.out,
            "plan '{}' is unchanged (iteration {})",
            plan.name, info.number
        ),
    };
    if let Some(diff) = diff {
        let _ = write!(io.out, "{diff}");
    }
    if let Some(line) = state_change {
        let _ = writeln!(io.out, "{line}");
    }
    Ok(EXIT_OK)
}

/// `update NAME --clear|--ignore` with a stored plan's name instead of a file (as the original
/// tools took it): the state change alone, on the latest iteration.
fn update_state_only(
    store: &Store,
    io: &mut Io<'_>,
    name: &str,
    state: &dyn StateChange,
    json: bool,
) -> Result<u8, StoreError> {
    let lock = store.lock(name, "update")?;
    let plan = store.iteration(name, None)?.plan;
    let line = state.apply(store, &lock, &plan)?;
    if json {
        json_out(
            io,
            &json!({ "plan": name, "status": "unchanged", "state": line }),
        );
    } else {
        let _ = writeln!(io.out, "{line}");
    }
    Ok(EXIT_OK)
}

fn list(store: &Store, io: &mut Io<'_>, json: bool) -> Result<u8, StoreError> {
    let plans = store.list()?;
    let locks: Vec<Option<dop_store::Holder>> =
        plans.iter().map(|p| store.lock_holder(&p.name)).collect();
    if json {
        let rows: Vec<_> = plans
            .iter()
            .zip(&locks)
            .map(|(p, l)| {
                json!({
                    "name": p.name, "latest": p.latest, "nodes": p.nodes.len(),
                    "created": rfc3339(p.created_ms), "updated": rfc3339(p.updated_ms), "locked_by": l,
                })
            })
            .collect();
        json_out(io, &serde_json::Value::Array(rows));
        return Ok(EXIT_OK);
    }
    if plans.is_empty() {
        let _ = writeln!(io.err, "no plans in {}", store.root().display());
        return Ok(EXIT_OK);
    }
    let width = plans.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        io.out,
        "{:width$}  ITERATION  NODES  UPDATED               LOCKED BY",
        "PLAN"
    );
    for (p, l) in plans.iter().zip(&locks) {
        let locked = l.as_ref().map_or("-".to_string(), ToString::to_string);
        let _ = writeln!(
            io.out,
            "{:width$}  {:>9}  {:>5}  {}  {locked}",
            p.name,
            p.latest,
            p.nodes.len(),
            rfc3339(p.updated_ms)
        );
    }
    Ok(EXIT_OK)
}

fn versions(store: &Store, io: &mut Io<'_>, plan: &str, json: bool) -> Result<u8, StoreError> {
    let versions = store.versions(plan)?;
    if json {
        json_out(io, &serde_json::to_value(&versions).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let _ = writeln!(
        io.out,
        "ITERATION  STORED                HASH          NODES  STEPS  SOURCE"
    );
    for v in versions {
        let _ = writeln!(
            io.out,
            "{:>9}  {}  {}  {:>5}  {:>5}  {}",
            v.number,
            rfc3339(v.time_ms),
            &v.hash[..12.min(v.hash.len())],
            v.nodes,
            v.steps,
            v.source.as_deref().unwrap_or("-")
        );
    }
    Ok(EXIT_OK)
}

fn diff(store: &Store, io: &mut Io<'_>, d: &DiffArgs) -> Result<u8, StoreError> {
    let (from, to, diff) = store.diff(&d.plan, d.from, d.to)?;
    if d.json {
        json_out(
            io,
            &json!({ "plan": d.plan, "from": from, "to": to, "diff": diff }),
        );
    } else {
        let _ = writeln!(io.out, "plan '{}': iteration {from} -> {to}", d.plan);
        let _ = write!(io.out, "{diff}");
    }
    Ok(EXIT_OK)
}

/// Runs `import-store`.
pub fn import(args: &ImportArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    let report = match dop_store::import_store(&store, &args.dir, &args.lookup.settings(config)) {
        Ok(r) => r,
        Err(e) => return fail(io, &e),
    };
    if args.json {
        json_out(io, &serde_json::to_value(&report).unwrap_or_default());
    } else {
        for p in &report.plans {
            let _ = writeln!(
                io.out,
                "imported plan '{}': {} iteration(s), {} dopi and {} dopv state record(s)",
                p.name, p.iterations, p.dopi_records, p.dopv_records
            );
            for s in &p.skipped_versions {
                let _ = writeln!(io.err, "warning: left out {}: {}", s.what, s.reason);
            }
        }
        for s in &report.skipped {
            let _ = writeln!(io.err, "warning: did not import {}: {}", s.what, s.reason);
        }
    }
    if report.plans.is_empty() {
        EXIT_FAILURE
    } else {
        EXIT_OK
    }
}
