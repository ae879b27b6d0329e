//! `logs prune`, one implementation for dopi and dopv: removes old execution logs of their runs
//! with [`dop_run::retention`], asking the store which plans a run holds.

use std::time::Duration;

use clap::{Args, Subcommand};
use dop_core::Config;
use dop_run::retention::{self, PruneError, PruneReport, Retention};

use crate::store::{open, Io};
use crate::{print_json, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

/// The commands on the execution logs.
#[derive(Subcommand, Clone, Debug)]
pub enum LogsCommand {
    /// Remove old execution logs of dopi and dopv runs (never dopc's): all but the newest N of
    /// each plan, or those last written more than DAYS ago, or both (either limit removes).
    ///
    /// An execution log is a directory `<log-dir>/<plan>/<execution-id>/` holding events.jsonl
    /// or all.log; dopi's and dopv's share the tree and are pruned alike. Never touched: dopc's
    /// execution logs (`dopc-*` directories; dopc removes them with its executions), anything
    /// that is not an execution log, and every log of a plan whose run lock is held (a run may
    /// be writing one; the plan is skipped and the output says so).
    #[command(after_help = PRUNE_EXIT_CODES)]
    Prune(PruneArgs),
}

/// The exit codes of `logs prune`, as its help says them.
pub const PRUNE_EXIT_CODES: &str = "Exit status: 0 success (also when nothing was to be removed), \
                                    1 the log directory could not be read (nothing removed) or a \
                                    log could not be removed, 3 the store is busy, 64 usage error \
                                    (neither --keep nor --older-than, a bad plan name).";

/// `logs prune (--keep N | --older-than DAYS) [--plan NAME] [--dry-run] [--json]`.
#[derive(Args, Clone, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: Limits,
    /// Only this plan's logs [default: every plan's].
    #[arg(long, value_name = "NAME")]
    pub plan: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON for scripts: {dry_run, plans: [{plan, removed: [{id, dir, bytes,
    /// last_written, why}], bytes, kept, skipped_running, failed}]}.
    #[arg(long)]
    pub json: bool,
}

/// The limits of `logs prune`: at least one.
#[derive(Args, Clone, Debug, Default)]
#[group(required = true, multiple = true)]
pub struct Limits {
    /// Keep the newest N execution logs of each plan (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
    /// Remove the execution logs last written more than DAYS days ago (at least 1).
    #[arg(long, value_name = "DAYS", alias = "older_than", value_parser = clap::value_parser!(u64).range(1..))]
    pub older_than: Option<u64>,
}

impl Limits {
    /// The retention policy the flags describe.
    pub fn retention(&self) -> Retention {
        Retention {
            keep_per_plan: self.keep.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            older_than: self
                .older_than
                .map(|days| Duration::from_secs(days.saturating_mul(86_400))),
        }
    }
}

/// Runs a logs command; returns the exit status: 0, 64 without a limit or with a bad plan name,
/// 1 when the tree could not be read or a log could not be removed (3 when the store is busy).
pub fn run(command: &LogsCommand, config: &Config, io: &mut Io<'_>) -> u8 {
    match command {
        LogsCommand::Prune(args) => prune(args, config, io),
    }
}

fn prune(args: &PruneArgs, config: &Config, io: &mut Io<'_>) -> u8 {
    let policy = args.limits.retention();
    if let Err(e) = policy.check() {
        let _ = writeln!(io.err, "error: {e}");
        return EXIT_USAGE;
    }
    // The store says which plans a run holds: their logs may be being written.
    let store = match open(config, io) {
        Ok(s) => s,
        Err(status) => return status,
    };
    let running = |plan: &str| store.lock_holder(plan).map(|h| h.to_string());
    let report = match retention::prune(
        &config.log_dir,
        &policy,
        args.plan.as_deref(),
        &running,
        args.dry_run,
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return match e {
                PruneError::NoLimit | PruneError::KeepNone | PruneError::BadPlan(_) => EXIT_USAGE,
                PruneError::Read { .. } => EXIT_FAILURE,
            };
        }
    };
    if args.json {
        print_json(io.out, &report);
    } else {
        summary(&report, config, io);
    }
    for p in &report.plans {
        for f in &p.failed {
            let _ = writeln!(
                io.err,
                "error: cannot remove {}: {}",
                f.dir.display(),
                f.error
            );
        }
    }
    if report.failed() {
        EXIT_FAILURE
    } else {
        EXIT_OK
    }
}

/// `removed 12 execution logs of plan 'web' (3.4 MiB)`, one line per plan with a total when
/// there are several; a dry run lists every directory that would go.
fn summary(report: &PruneReport, config: &Config, io: &mut Io<'_>) {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for p in &report.plans {
        if let Some(holder) = &p.skipped_running {
            let _ = writeln!(
                io.out,
                "skipped plan '{}': its run lock is held by {holder}; none of its {} execution \
                 log{} touched",
                p.plan,
                p.kept,
                plural(p.kept)
            );
            continue;
        }
        if p.removed.is_empty() {
            continue;
        }
        let _ = writeln!(
            io.out,
            "{verb} {} execution log{} of plan '{}' ({})",
            p.removed.len(),
            plural(p.removed.len()),
            p.plan,
            size(p.bytes)
        );
        if report.dry_run {
            for r in &p.removed {
                let _ = writeln!(
                    io.out,
                    "  {}  {}  last written {}",
                    r.dir.display(),
                    size(r.bytes),
                    r.last_written
                );
            }
        }
    }
    let plans = report
        .plans
        .iter()
        .filter(|p| !p.removed.is_empty())
        .count();
    if plans == 0 {
        let _ = writeln!(
            io.out,
            "no execution logs to remove in {}",
            config.log_dir.display()
        );
    } else if plans > 1 {
        let _ = writeln!(
            io.out,
            "{verb} {} execution logs of {plans} plans ({})",
            report.removed(),
            size(report.bytes())
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Bytes for people: `512 B`, `3.4 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Display only: the precision lost above 2^53 bytes does not show in one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(3_565_158), "3.4 MiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn the_flags_make_the_policy_and_need_a_limit() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            logs: LogsCommand,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.logs);
        let Ok(LogsCommand::Prune(args)) = parse(&[
            "t",
            "prune",
            "--keep",
            "3",
            "--older-than",
            "2",
            "--dry-run",
        ]) else {
            panic!("parses");
        };
        assert_eq!(
            args.limits.retention(),
            Retention {
                keep_per_plan: Some(3),
                older_than: Some(Duration::from_secs(2 * 86_400)),
            }
        );
        assert!(args.dry_run);
        for wrong in [
            &["t", "prune"][..],
            &["t", "prune", "--keep", "0"],
            &["t", "prune", "--older-than", "0"],
            &["t", "prune", "--plan", "web"],
        ] {
            assert!(parse(wrong).is_err(), "{wrong:?}");
        }
    }
}
